//! The web app's request and body timeouts. A request body that pauses longer than
//! the body-read timeout fails its reader, and the answer becomes a 408 that closes
//! the connection (whatever the handler made of the failed read). A request whose
//! answer has not started within the request timeout gets a 408 when its body was
//! still arriving (a client trickling bytes), else a 503; the routes of
//! [`EXEMPT`] (the streamed snapshot upload) have no request timeout, only the
//! body-read one.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::config::HttpLimits;

/// Routes that stream large bodies for longer than any request timeout: only the
/// body-read timeout applies to them.
pub const EXEMPT: &[&str] = &[crate::routes::PLATFORM_IMPORT_UPLOAD];

/// The body's state, shared between the body and the middleware.
const READING: u8 = 0;
const DONE: u8 = 1;
const STALLED: u8 = 2;

/// The middleware (on the whole app, inside the request-id layer).
pub async fn enforce(State(limits): State<HttpLimits>, req: Request, next: Next) -> Response {
    let state = Arc::new(AtomicU8::new(READING));
    let exempt = EXEMPT.contains(&req.uri().path());
    let api = req.uri().path().starts_with(crate::routes::API_PREFIX);
    let refusal = |status, message| refusal(api, status, message);
    let req = req.map(|body| {
        if body.is_end_stream() {
            state.store(DONE, Ordering::Relaxed);
            body
        } else {
            Body::new(IdleTimeoutBody::new(body, limits.body_read_timeout, state.clone()))
        }
    });
    let answer = if exempt {
        next.run(req).await
    } else {
        match tokio::time::timeout(limits.request_timeout, next.run(req)).await {
            Ok(answer) => answer,
            Err(_) if state.load(Ordering::Relaxed) == DONE => {
                tracing::warn!(timeout = ?limits.request_timeout, "the answer took longer than the request timeout");
                return refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The server took too long to answer. Please try again in a moment.",
                );
            }
            Err(_) => return refusal(StatusCode::REQUEST_TIMEOUT, "The request took too long to arrive."),
        }
    };
    if state.load(Ordering::Relaxed) == STALLED {
        return refusal(StatusCode::REQUEST_TIMEOUT, "The request's body stopped arriving.");
    }
    answer
}

/// A plain answer (the API's JSON error under `/api/v1`) that also closes the
/// connection: after a stalled or trickled body, what is left of the request on it
/// is unknown.
fn refusal(api: bool, status: StatusCode, message: &'static str) -> Response {
    let mut answer = if api {
        let code = if status == StatusCode::REQUEST_TIMEOUT { "request_timeout" } else { "timeout" };
        (status, axum::Json(serde_json::json!({ "error": code, "message": message }))).into_response()
    } else {
        (status, message).into_response()
    };
    answer.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    answer
}

/// A body whose next frame must come within `timeout` of the previous one (or of
/// the first read).
struct IdleTimeoutBody {
    inner: Body,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    state: Arc<AtomicU8>,
}

impl IdleTimeoutBody {
    fn new(inner: Body, timeout: Duration, state: Arc<AtomicU8>) -> Self {
        Self { inner, timeout, sleep: None, state }
    }
}

impl HttpBody for IdleTimeoutBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.sleep = None;
                if frame.is_none() || this.inner.is_end_stream() {
                    let _ = this.state.compare_exchange(READING, DONE, Ordering::Relaxed, Ordering::Relaxed);
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep =
                    this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.state.store(STALLED, Ordering::Relaxed);
                        Poll::Ready(Some(Err(axum::Error::new(BodyStalled(timeout)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error a stalled body's reader sees.
#[derive(Debug, thiserror::Error)]
#[error("the request body paused for more than {0:?}")]
struct BodyStalled(Duration);
