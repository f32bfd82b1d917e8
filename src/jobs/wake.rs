//! What wakes a queue's worker when a job is pushed: PostgreSQL's NOTIFY on
//! apalis' channel for new jobs, read by [`crate::db::listen`] on a connection of
//! its own, with a pause between attempts while the database cannot be reached.
//!
//! apalis' own `Pubsub` stream is not used: on sqlx 0.9.1 its listener retries a
//! lost connection in a loop with no pause (see [`crate::db::listen`]). A
//! notification missed while not listening costs nothing: the worker also polls
//! every 2 s.

use futures::{StreamExt, stream::BoxStream};
use sqlx::PgPool;

use crate::db::listen::{self, Heard};

/// apalis' channel: its trigger on `apalis.jobs` notifies it of each job inserted
/// to run now (not of one pushed to run later, nor of a job retried or re-enqueued:
/// the worker's 2 s poll finds those), with `{"job_type": <queue>, "id": <task id>,
/// ...}` as the payload.
pub const CHANNEL: &str = "apalis::job::insert";

/// A stream that yields once for each job pushed onto `queue`, and never ends: a
/// lost connection is opened again after a pause.
pub fn inserts(pool: PgPool, queue: String) -> BoxStream<'static, ()> {
    #[derive(serde::Deserialize)]
    struct Insert {
        job_type: String,
    }
    let heard = listen::notifications(pool, CHANNEL, "the workers poll for new jobs meanwhile", None);
    Box::pin(heard.filter_map(move |heard| {
        let ours = match heard {
            Heard::Message(payload) => serde_json::from_str::<Insert>(&payload).is_ok_and(|i| i.job_type == queue),
            Heard::Listening | Heard::Lost => false,
        };
        futures::future::ready(ours.then_some(()))
    }))
}
