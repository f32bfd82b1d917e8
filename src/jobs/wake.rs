//! What wakes a queue's worker when a job is pushed: PostgreSQL's NOTIFY on
//! apalis' channel for new jobs, read on a connection of its own, with a pause
//! between attempts while the database cannot be reached.
//!
//! apalis' own `Pubsub` stream is not used: on sqlx 0.9.1 its listener retries a
//! lost connection in a loop with no pause, and a connect that fails at once (the
//! server's unix socket gone while it restarts, a name that does not resolve) made
//! that loop take a whole core for as long as the database was away. Here every
//! failed attempt waits, from [`FIRST_PAUSE`] doubling up to [`MAX_PAUSE`], and the
//! pauses start over only once a listener has lasted [`STEADY`] (a connection that
//! is dropped as soon as it is made does not bring them back to the shortest). A
//! notification missed meanwhile costs nothing: the worker also polls every 2 s.

use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use sqlx::{PgPool, postgres::PgListener};

/// apalis' channel: its trigger on `apalis.jobs` notifies it of each job inserted
/// to run now (not of one pushed to run later, nor of a job retried or re-enqueued:
/// the worker's 2 s poll finds those), with `{"job_type": <queue>, "id": <task id>,
/// ...}` as the payload.
pub const CHANNEL: &str = "apalis::job::insert";

/// The pause after the first failed attempt to listen.
pub const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause between attempts.
pub const MAX_PAUSE: Duration = Duration::from_secs(5);
/// How long a listener must last before a loss counts as a first failure again.
pub const STEADY: Duration = Duration::from_secs(30);

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
        /// The listener and when it started listening.
        listener: Option<(PgListener, Instant)>,
        pause: Duration,
    }
    impl State {
        /// Counts a failure: the next attempt waits longer (told once per streak at
        /// warn, then at debug).
        fn failed(&mut self, what: &str, error: &dyn std::fmt::Display) {
            self.pause = next_pause(self.pause);
            if self.pause == FIRST_PAUSE {
                tracing::warn!(queue = self.queue, error = %error, retry_in = ?self.pause, "{what}");
            } else {
                tracing::debug!(queue = self.queue, error = %error, retry_in = ?self.pause, "{what}");
            }
        }
    }
    #[derive(serde::Deserialize)]
    struct Insert {
        job_type: String,
    }
    let state = State { pool, queue, listener: None, pause: Duration::ZERO };
    Box::pin(futures::stream::unfold(state, |mut s| async move {
        loop {
            let (listener, since) = match &mut s.listener {
                Some(listening) => listening,
                None => {
                    if !s.pause.is_zero() {
                        tokio::time::sleep(s.pause).await;
                    }
                    match listen(&s.pool).await {
                        Ok(listener) => s.listener.insert((listener, Instant::now())),
                        Err(e) => {
                            s.failed("cannot listen for new jobs; the worker polls meanwhile", &e);
                            continue;
                        }
                    }
                }
            };
            let since = *since;
            let error = match listener.try_recv().await {
                Ok(Some(n)) => {
                    let ours = serde_json::from_str::<Insert>(n.payload()).is_ok_and(|i| i.job_type == s.queue);
                    if ours {
                        return Some(((), s));
                    }
                    continue;
                }
                Ok(None) => "the connection was lost".to_string(),
                Err(e) => e.to_string(),
            };
            // Start over after a pause, from the shortest if the listener had lasted.
            s.listener = None;
            if since.elapsed() >= STEADY {
                s.pause = Duration::ZERO;
            }
            s.failed("stopped listening for new jobs; the worker polls meanwhile", &error);
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
