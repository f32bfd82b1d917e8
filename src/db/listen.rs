//! PostgreSQL's NOTIFY on one channel, read on a connection of its own, with a
//! pause between attempts while the database cannot be reached. Used by the job
//! queues (`jobs::wake`) and by the cache of sessions (`auth::session_cache`).
//!
//! sqlx's `PgListener` is not left to reconnect by itself: on sqlx 0.9.1 it retries a
//! lost connection in a loop with no pause, and a connect that fails at once (the
//! server's unix socket gone while it restarts, a name that does not resolve) made
//! that loop take a whole core for as long as the database was away. Here every
//! failed attempt waits, from [`FIRST_PAUSE`] doubling up to [`MAX_PAUSE`], and the
//! pauses start over only once a listener has lasted [`STEADY`] (a connection that
//! is dropped as soon as it is made does not bring them back to the shortest).

use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use sqlx::{PgPool, postgres::PgListener};

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

/// What a listener heard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heard {
    /// It listens (again): from now on every notification on the channel reaches
    /// it. Any sent while it did not listen were missed.
    Listening,
    /// A notification, with its payload.
    Message(String),
    /// Its connection was lost, or (with a heartbeat) stopped delivering: until the
    /// next [`Heard::Listening`], notifications are missed.
    Lost,
}

/// How long a listener with a heartbeat waits for its own heartbeat to come back.
pub const BEAT_WAIT: Duration = Duration::from_secs(2);
/// The payloads of heartbeats start with this; they are never yielded.
const BEAT_PREFIX: &str = "heartbeat:";

/// What the channel `channel` hears, as a stream that never ends: a lost connection
/// is opened again after a pause (see the module's comment). `missed` says in the
/// log what a failure costs ("the worker polls meanwhile").
///
/// With `heartbeat`, a listener that has heard nothing for that long notifies the
/// channel itself, on its own connection, and counts as lost (and is opened again)
/// unless that round trip and the notification come back within [`BEAT_WAIT`]: a
/// connection that stopped answering (a network that dropped it without a word) is
/// noticed within `heartbeat` + [`BEAT_WAIT`] rather than never. (PostgreSQL hands
/// a session its own notification with the answer to its query, so this proves
/// the connection answers, not that other sessions' notifications reach it: a
/// pooler in transaction mode, which does not carry LISTEN, is not supported.)
/// Heartbeats (any process's) are not yielded; they go to every listener of the
/// channel.
pub fn notifications(
    pool: PgPool,
    channel: &'static str,
    missed: &'static str,
    heartbeat: Option<Duration>,
) -> BoxStream<'static, Heard> {
    struct Listening {
        listener: PgListener,
        since: Instant,
        /// The heartbeat sent and not yet back, with when it is late.
        awaiting: Option<(String, Instant)>,
    }
    struct State {
        pool: PgPool,
        channel: &'static str,
        missed: &'static str,
        heartbeat: Option<Duration>,
        /// Tells this stream's heartbeats from other listeners'.
        nonce: String,
        beats: u64,
        listening: Option<Listening>,
        pause: Duration,
    }
    impl State {
        /// Counts a failure: the next attempt waits longer (told once per streak at
        /// warn, then at debug).
        fn failed(&mut self, what: &str, error: &dyn std::fmt::Display) {
            self.pause = next_pause(self.pause);
            let (channel, missed) = (self.channel, self.missed);
            if self.pause == FIRST_PAUSE {
                tracing::warn!(channel, error = %error, retry_in = ?self.pause, "{what}; {missed}");
            } else {
                tracing::debug!(channel, error = %error, retry_in = ?self.pause, "{what}; {missed}");
            }
        }
    }
    enum Got {
        Note(String),
        Failed(String),
        /// Nothing within the wait.
        Quiet,
    }
    let nonce = ulid::Ulid::generate().to_string();
    let state = State { pool, channel, missed, heartbeat, nonce, beats: 0, listening: None, pause: Duration::ZERO };
    Box::pin(futures::stream::unfold(state, |mut s| async move {
        loop {
            let Some(l) = &mut s.listening else {
                if !s.pause.is_zero() {
                    tokio::time::sleep(s.pause).await;
                }
                match listen(&s.pool, s.channel).await {
                    Ok(listener) => {
                        s.listening = Some(Listening { listener, since: Instant::now(), awaiting: None });
                        return Some((Heard::Listening, s));
                    }
                    Err(e) => {
                        s.failed("cannot listen for notifications", &e);
                        continue;
                    }
                }
            };
            let wait = match (&l.awaiting, s.heartbeat) {
                (Some((_, late)), _) => Some(late.saturating_duration_since(Instant::now())),
                (None, every) => every,
            };
            let recv = async {
                match l.listener.try_recv().await {
                    Ok(Some(n)) => Got::Note(n.payload().to_string()),
                    Ok(None) => Got::Failed("the connection was lost".into()),
                    Err(e) => Got::Failed(e.to_string()),
                }
            };
            // `try_recv` is cancel-safe: a notification half read stays buffered.
            let got = match wait {
                Some(wait) => tokio::time::timeout(wait, recv).await.unwrap_or(Got::Quiet),
                None => recv.await,
            };
            let error = match got {
                Got::Note(payload) if s.heartbeat.is_some() && payload.starts_with(BEAT_PREFIX) => {
                    if l.awaiting.as_ref().is_some_and(|(sent, _)| *sent == payload) {
                        l.awaiting = None;
                    }
                    continue;
                }
                Got::Note(payload) => return Some((Heard::Message(payload), s)),
                Got::Quiet if l.awaiting.is_some() => {
                    format!("its own heartbeat did not come back within {BEAT_WAIT:?}")
                }
                Got::Quiet => {
                    s.beats += 1;
                    let payload = format!("{BEAT_PREFIX}{}:{}", s.nonce, s.beats);
                    let sent = sqlx::query("select pg_notify($1, $2)").bind(s.channel).bind(&payload);
                    match tokio::time::timeout(BEAT_WAIT, sent.execute(&mut l.listener)).await {
                        Ok(Ok(_)) => {
                            l.awaiting = Some((payload, Instant::now() + BEAT_WAIT));
                            continue;
                        }
                        Ok(Err(e)) => format!("cannot send its heartbeat: {e}"),
                        Err(_) => format!("its heartbeat was not answered within {BEAT_WAIT:?}"),
                    }
                }
                Got::Failed(e) => e,
            };
            // Start over after a pause, from the shortest if the listener had lasted.
            let since = l.since;
            s.listening = None;
            if since.elapsed() >= STEADY {
                s.pause = Duration::ZERO;
            }
            s.failed("stopped listening for notifications", &error);
            return Some((Heard::Lost, s));
        }
    }))
}

/// A listener on `channel` that does not reconnect by itself (see the module's
/// comment): [`notifications`] does, with its pauses. Its connection is its own, out
/// of a pool of one made for it, not one of `pool`'s: it takes none of the
/// requests' connections, and a connection that stopped answering is dropped with
/// its pool rather than handed back.
async fn listen(pool: &PgPool, channel: &str) -> sqlx::Result<PgListener> {
    let wait = pool.options().get_acquire_timeout();
    let options = (*pool.connect_options()).clone().application_name(&format!("{APPLICATION_NAME} {channel}"));
    let own = sqlx::postgres::PgPoolOptions::new().max_connections(1).acquire_timeout(wait).connect_lazy_with(options);
    // Connecting is bounded by the acquire timeout; LISTEN on a connection that goes
    // silent at once would not be.
    let listening = async {
        let mut listener = PgListener::connect_with(&own).await?;
        listener.eager_reconnect(false);
        listener.listen(channel).await?;
        Ok(listener)
    };
    tokio::time::timeout(wait + BEAT_WAIT, listening).await.unwrap_or(Err(sqlx::Error::PoolTimedOut))
}

/// The `application_name` of a listener's connection, followed by its channel: what
/// tells it apart in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "data-export listener";

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
