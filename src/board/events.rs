//! The board UI's event stream (`GET /api/v1/events`, behind the board's guard):
//! each log entry of `telemetry::board_log` as a `message` event of JSON (its Logs
//! page), a comment line every [`KEEP_ALIVE`], and an end once its session is no
//! longer a platform admin's or the process stops.
//!
//! Bounds: a client that reads too slowly misses the oldest entries and is told how
//! many; nothing queues up for it beyond the channel's `board_log::CAPACITY`
//! entries, which all clients share. Connections count against the board
//! listener's caps. The listener applies no request timeout, and its write-stall
//! timeout only ends a connection whose client stopped reading: the keep-alives
//! show an idle proxy or browser that the stream is alive.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Extension,
    extract::State,
    http::{HeaderName, HeaderValue},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use tokio::{
    sync::broadcast::{Receiver, error::RecvError},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tower_sessions::Session;

use crate::{
    auth::membership::{self, Caller},
    state::AppState,
    telemetry::board_log,
};

/// How often an idle stream sends a comment line: well within any proxy's idle
/// timeout, so a healthy stream is never cut for silence.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// How often an open stream asks whether its session is still a platform admin's:
/// a sign-out, an expired session or a removed platform admin ends it within this.
pub const RECHECK: Duration = Duration::from_secs(10);
/// Rechecks in a row the database may leave unanswered before the stream ends.
const UNCHECKED_MAX: u32 = 3;

/// What the streams need: the state, and the process's stop (a stream never ends on
/// its own, and an open one would hold a graceful shutdown for its whole grace).
#[derive(Clone)]
pub struct Streams {
    pub state: AppState,
    pub stop: CancellationToken,
}

/// The stream (the guard has let only a platform admin's session through).
pub async fn stream(State(streams): State<Streams>, Extension(session): Extension<Session>) -> Response {
    let client = Client {
        receiver: board_log::subscribe(),
        dropped: 0,
        session: session.id().map(|id| id.to_string()),
        streams,
        recheck_at: Instant::now() + RECHECK,
        unchecked: 0,
    };
    let events = futures::stream::unfold(client, |mut client| async {
        let entry = client.next().await?;
        Some((Ok::<_, Infallible>(Event::default().data(&*entry)), client))
    });
    // Proxies that buffer answers (nginx) would hold the entries back.
    let no_buffering = [(HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no"))];
    (no_buffering, Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))).into_response()
}

/// One client of the stream.
struct Client {
    receiver: Receiver<Arc<str>>,
    /// Entries it missed.
    dropped: u64,
    /// Its session's id (the cookie's value).
    session: Option<String>,
    streams: Streams,
    recheck_at: Instant,
    /// Rechecks in a row that the database could not answer.
    unchecked: u32,
}

impl Client {
    /// The next entry, or the notice of those it missed; `None` ends the stream (the
    /// session is no longer a platform admin's, the process stops, or the channel
    /// closed).
    async fn next(&mut self) -> Option<Arc<str>> {
        loop {
            // Biased, the stop and the session's recheck first: a client that comes
            // back after reading nothing for a while is rechecked before it gets
            // another entry.
            tokio::select! {
                biased;
                _ = self.streams.stop.cancelled() => return None,
                _ = tokio::time::sleep_until(self.recheck_at) => {
                    if !self.still_a_platform_admin().await {
                        return None;
                    }
                    self.recheck_at = Instant::now() + RECHECK;
                }
                received = self.receiver.recv() => return match received {
                    Ok(entry) => Some(entry),
                    Err(RecvError::Lagged(n)) => {
                        board_log::count_dropped(n);
                        self.dropped += n;
                        Some(board_log::dropped_notice(n).into())
                    }
                    Err(RecvError::Closed) => None,
                },
            }
        }
    }

    /// Whether the session is still live and a platform admin's. While the database
    /// cannot answer, the stream goes on for up to [`UNCHECKED_MAX`] rechecks in a
    /// row; then it ends (the board's UI opens it again, and is checked then).
    async fn still_a_platform_admin(&mut self) -> bool {
        let Some(id) = &self.session else { return false };
        match membership::user(&self.streams.state.pool, Caller::Session(id)).await {
            Ok(found) => {
                self.unchecked = 0;
                found.is_some_and(|f| f.user.is_platform_admin)
            }
            Err(e) => {
                tracing::warn!(error = %e, "the job board's stream could not check its session");
                self.unchecked += 1;
                self.unchecked < UNCHECKED_MAX
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if self.dropped > 0 {
            let total = board_log::dropped();
            tracing::info!(
                dropped = self.dropped,
                total,
                "a job board client left; it read too slowly to get every log entry"
            );
        }
    }
}
