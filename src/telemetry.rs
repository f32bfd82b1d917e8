//! Logging to stderr (stdout is for command output): human-readable by default,
//! JSON with `LOG_FORMAT=json`; `RUST_LOG` filters. Also the job board's log stream
//! ([`board_log`], with its own filter), and the request id every answer carries and
//! every request's log lines record.

pub mod board_log;

use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

/// The default filter: our crate at info, noisy dependencies quieter. The embedded
/// S3 endpoint logs refused signatures at ERROR, which are expected (expired links).
const DEFAULT_FILTER: &str = "info,data_export=info,sqlx=error,s3s=off,s3s_fs=warn,aws_smithy_runtime=warn,aws_sdk_s3=warn,apalis=warn,apalis_core=warn,apalis_postgres=warn,tower_sessions=warn,hyper=warn";

/// Installs the global subscriber once (the stderr log and the board's stream);
/// later calls are ignored.
pub fn init() {
    init_with(true);
}

/// [`init`], with the stderr log only when `stderr` (tests log only with
/// `TEST_LOG`, but always feed the board's stream).
pub fn init_with(stderr: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let log = if json {
        fmt::layer().json().with_current_span(true).with_writer(std::io::stderr).boxed()
    } else {
        fmt::layer().with_target(false).with_writer(std::io::stderr).boxed()
    };
    // Each layer has its own filter: `RUST_LOG` says what goes to stderr, never what
    // the board's stream shows.
    let log = stderr.then(|| log.with_filter(filter));
    let _ = tracing_subscriber::registry().with(board_log::layer()).with(log).try_init();
}

/// The request id header: on every answer of both listeners, and a field of each
/// request's span, so every line logged for a request carries it.
pub const REQUEST_ID: &str = "x-request-id";

/// Gives each request an id (the client's `x-request-id` when it is 1 to 64 of
/// `A-Z a-z 0-9 - _ .`, as a proxy in front may set; otherwise a new ULID), runs it
/// in a `request` span that records the id, method and path (never the query, which
/// can carry a token), logs one line when it is answered, and returns the id in the
/// answer's `x-request-id`.
pub async fn request_id(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    with_request_span(
        req,
        next,
        |id, method, path| tracing::info_span!("request", request_id = %id, method = %method, path = %path),
    )
    .await
}

/// [`request_id`] for the job board's listener: its span is named
/// [`board_log::BOARD_REQUEST_SPAN`], so the board's stream leaves out the INFO
/// lines of the board's own requests (its UI polls its API every few seconds).
pub async fn board_request_id(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    with_request_span(req, next, board_span).await
}

fn board_span(id: &str, method: &axum::http::Method, path: &str) -> tracing::Span {
    tracing::info_span!("board_request", request_id = %id, method = %method, path = %path)
}

async fn with_request_span(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
    span: fn(&str, &axum::http::Method, &str) -> tracing::Span,
) -> axum::response::Response {
    use axum::http::HeaderValue;
    use tracing::Instrument;
    let id = req
        .headers()
        .get(REQUEST_ID)
        .filter(|v| acceptable_id(v.as_bytes()))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_str(&ulid::Ulid::generate().to_string()).expect("a ULID is ASCII"));
    req.headers_mut().insert(REQUEST_ID, id.clone());
    let id_text = id.to_str().unwrap_or_default();
    let span = span(id_text, req.method(), req.uri().path());
    let started = std::time::Instant::now();
    let mut answer = next.run(req).instrument(span.clone()).await;
    let (status, ms) = (answer.status().as_u16(), started.elapsed().as_millis() as u64);
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(status, ms, "answered");
        } else {
            tracing::info!(status, ms, "answered");
        }
    });
    answer.headers_mut().insert(REQUEST_ID, id);
    answer
}

/// A client's request id is kept only when short and plain (it ends up in logs).
fn acceptable_id(id: &[u8]) -> bool {
    (1..=64).contains(&id.len()) && id.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_board_requests_span_has_the_name_the_stream_leaves_out() {
        use tracing_subscriber::prelude::*;
        let subscriber = tracing_subscriber::registry().with(super::board_log::layer());
        tracing::subscriber::with_default(subscriber, || {
            let span = super::board_span("01J", &axum::http::Method::GET, "/");
            assert_eq!(span.metadata().map(|m| m.name()), Some(super::board_log::BOARD_REQUEST_SPAN));
        });
    }

    #[test]
    fn only_short_plain_request_ids_are_kept() {
        assert!(super::acceptable_id(b"01JABCDEF-proxy_1.2"));
        assert!(!super::acceptable_id(b""));
        assert!(!super::acceptable_id(&[b'a'; 65]));
        assert!(!super::acceptable_id(b"id with spaces"));
        assert!(!super::acceptable_id(b"id\"=forged"));
    }
}
