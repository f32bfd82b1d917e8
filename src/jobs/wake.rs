//! What wakes a queue's worker when a job is pushed: PostgreSQL's NOTIFY on
//! apalis' channel for new jobs, read on a connection of its own, with a pause
//! between attempts while the database cannot be reached.
//!
//! apalis' own `Pubsub` stream is not used: on sqlx 0.9.1 its listener retries a
//! lost connection in a loop with no pause, and a connect that fails at once (the
//! server's unix socket gone while it restarts, a name that does not resolve) made
//! that loop take a whole core for as long as the database was away. Here every
//! failed attempt waits, from [`FIRST_PAUSE`] doubling up to [`MAX_PAUSE`]. A
//! notification missed meanwhile costs nothing: the worker also polls every 2 s.

use std::time::Duration;

use futures::stream::BoxStream;
use sqlx::{PgPool, postgres::PgListener};

/// apalis' channel: its trigger on `apalis.jobs` notifies it of every new job, with
/// `{"job_type": <queue>, "id": <task id>}` as the payload.
pub const CHANNEL: &str = "apalis::job::insert";

/// The pause after the first failed attempt to listen.
pub const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause between attempts.
pub const MAX_PAUSE: Duration = Duration::from_secs(5);

/// The pause after a failed attempt, given the one before it (zero after a success).
pub fn next_pause(previous: Duration) -> Duration {
    (previous * 2).clamp(FIRST_PAUSE, MAX_PAUSE)
}

/// A stream that yields once for each job pushed onto `queue`, and never ends: a
/// lost connection is opened again after a pause (see the module's comment).
pub fn inserts(pool: PgPool, queue: String) -> BoxStream<'static, ()> {
    struct State {
        pool: PgPool,
        queue: String,
        listener: Option<PgListener>,
        pause: Duration,
    }
    #[derive(serde::Deserialize)]
    struct Insert {
        job_type: String,
    }
    let state = State { pool, queue, listener: None, pause: Duration::ZERO };
    Box::pin(futures::stream::unfold(state, |mut s| async move {
        loop {
            let listener = match &mut s.listener {
                Some(listener) => listener,
                None => {
                    if !s.pause.is_zero() {
                        tokio::time::sleep(s.pause).await;
                    }
                    match listen(&s.pool).await {
                        Ok(listener) => {
                            s.pause = Duration::ZERO;
                            s.listener.insert(listener)
                        }
                        Err(e) => {
                            s.pause = next_pause(s.pause);
                            tracing::debug!(error = %e, retry_in = ?s.pause, "cannot listen for new jobs");
                            continue;
                        }
                    }
                }
            };
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    let ours = serde_json::from_str::<Insert>(n.payload()).is_ok_and(|i| i.job_type == s.queue);
                    if ours {
                        return Some(((), s));
                    }
                }
                // The connection was lost (`None`), or the listener failed: start over
                // after a pause.
                Ok(None) | Err(_) => {
                    s.listener = None;
                    s.pause = next_pause(s.pause);
                }
            }
        }
    }))
}

/// A listener on [`CHANNEL`] that does not reconnect by itself (see the module's
/// comment): [`inserts`] does, with its pauses.
async fn listen(pool: &PgPool) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_from_the_first_up_to_the_longest() {
        assert_eq!(next_pause(Duration::ZERO), FIRST_PAUSE);
        assert_eq!(next_pause(FIRST_PAUSE), FIRST_PAUSE * 2);
        assert_eq!(next_pause(Duration::from_secs(4)), MAX_PAUSE);
        assert_eq!(next_pause(MAX_PAUSE), MAX_PAUSE);
    }
}
