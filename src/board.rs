//! The apalis job board on its own listener (`BOARD_BIND`): its UI hard-codes
//! `<base href="/">` and `/api/v1`, so it must sit at the root of a host:port of its
//! own. Every request, UI and API alike, passes the platform-admin guard first: the
//! board's API can push jobs and has no auth of its own. The guard reads the same
//! session cookie as the main site (cookies are per host, not per port).
//!
//! Its pages get a CSP as tight as the embedded UI allows: its one inline script
//! (the wasm loader) by hash, the wasm compiled from its own origin, nothing from
//! elsewhere. A state-changing request must show it comes from the board's own
//! origin (`Origin`, or `Sec-Fetch-Site: same-origin`).
//!
//! Its UI's event stream, `GET /api/v1/events` ([`routes::BOARD_EVENTS`]), is
//! served here ([`events`]), not by apalis-board-api (see `telemetry::board_log` for
//! why). The UI calls the system healthy while that stream is open.

pub mod events;

use apalis_board_api::{framework::ApiBuilder, ui::ServeUI};
use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderName, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio_util::sync::CancellationToken;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::{auth::MaybeUser, routes, state::AppState, telemetry, workers};

/// The board's router: every queue of the registry ([`workers::queues`]). Open event
/// streams end when `stop` is cancelled, so they do not hold up a graceful shutdown.
pub fn router(state: &AppState, stop: CancellationToken) -> Router {
    let api = workers::queues().iter().fold(ApiBuilder::new(Router::new()), |api, q| (q.board)(api, state)).build();
    let csp = HeaderValue::from_str(&csp()).expect("the CSP is ASCII");
    let board = Router::new()
        // Routed before the board's API; apalis-board-api's own `/events` is not built
        // (its `sse` feature is off), so two routes would fail here at start.
        .route(routes::BOARD_EVENTS, get(events::stream).with_state(events::Streams { state: state.clone(), stop }))
        .nest("/api/v1", api)
        .fallback_service(ServeUI::new())
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(crate::auth::session_layer(state))
        .layer(SetResponseHeaderLayer::overriding(header::CONTENT_SECURITY_POLICY, csp))
        .layer(SetResponseHeaderLayer::overriding(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .layer(SetResponseHeaderLayer::overriding(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .layer(SetResponseHeaderLayer::overriding(header::REFERRER_POLICY, HeaderValue::from_static("same-origin")));
    let board = if state.config.sends_hsts() {
        let hsts = HeaderValue::from_static(crate::config::HSTS);
        board.layer(SetResponseHeaderLayer::overriding(header::STRICT_TRANSPORT_SECURITY, hsts))
    } else {
        board
    };
    board.layer(middleware::from_fn(telemetry::board_request_id))
}

/// The board's CSP. Its UI is a wasm app started by one inline module script (allowed
/// by its SHA-256, read from the embedded page so an upgrade cannot leave it stale);
/// `'wasm-unsafe-eval'` lets it compile its wasm; it fetches its API and events from
/// its own origin; its page sets `<base href="/">`. Its UI sets `style` attributes
/// as it draws (progress widths, positions), which only `'unsafe-inline'` in
/// `style-src` allows: styles cannot run code, and scripts stay pinned to the hash.
pub fn csp() -> String {
    let script = ServeUI::get_file("index.html").and_then(|f| inline_script(f.contents_utf8()?)).map(|s| {
        use base64::Engine;
        use sha2::Digest;
        format!(" 'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(s.as_bytes())))
    });
    format!(
        "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'{}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
         font-src 'self'; connect-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'",
        script.unwrap_or_default()
    )
}

/// The text of the first inline `<script ...>` of a page (one without `src`).
pub fn inline_script(page: &str) -> Option<&str> {
    let mut rest = page;
    while let Some(at) = rest.find("<script") {
        let tag_end = at + rest[at..].find('>')?;
        let tag = &rest[at..tag_end];
        let body_start = tag_end + 1;
        let body_end = body_start + rest[body_start..].find("</script>")?;
        if !tag.contains("src=") {
            return Some(&rest[body_start..body_end]);
        }
        rest = &rest[body_end..];
    }
    None
}

/// Lets only a platform admin's session through. A state-changing request must also
/// come from the board's own origin (no cross-site form or fetch can push jobs).
async fn guard(State(state): State<AppState>, MaybeUser(user): MaybeUser, req: Request, next: Next) -> Response {
    let Some(user) = user else {
        return refuse(format!(
            "The job board is for platform admins. Sign in as one at {}/login, then open the board from Platform settings.",
            state.config.public_url
        ));
    };
    if !user.is_platform_admin {
        return refuse("The job board is for platform admins only.".to_string());
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) && !same_origin(&state, &req) {
        return refuse("Cross-origin requests to the job board are refused.".to_string());
    }
    // The stream holds a connection open: another site's page (which could not read
    // it anyway) may not open it with the admin's cookie.
    if req.uri().path() == routes::BOARD_EVENTS && from_elsewhere(&state, &req) {
        return refuse("Cross-origin requests to the job board are refused.".to_string());
    }
    next.run(req).await
}

/// Whether a request says it comes from elsewhere than the board's pages: an
/// `Origin` other than the board's, or a `Sec-Fetch-Site` other than `same-origin`.
/// One with neither header (a browser over plain http to a host other than
/// localhost sends no `Sec-Fetch-*`, and a same-origin GET no `Origin`) does not.
fn from_elsewhere(state: &AppState, req: &Request) -> bool {
    let says = req.headers().contains_key(header::ORIGIN) || req.headers().contains_key("sec-fetch-site");
    says && !same_origin(state, req)
}

/// Whether a request shows it comes from the board's own pages: an `Origin` equal
/// to the board's (as the `Host` it was sent to, or as [`AppState::board_url`]), or,
/// without `Origin`, `Sec-Fetch-Site: same-origin`. A request with neither (a
/// script outside a browser, or an old browser) is refused: a platform admin uses
/// the board from its own page.
fn same_origin(state: &AppState, req: &Request) -> bool {
    let text = |name: HeaderName| req.headers().get(name).map(|v| v.to_str().unwrap_or("\u{0}"));
    match text(header::ORIGIN) {
        Some(origin) => {
            let host = text(header::HOST);
            let authority = origin.split_once("://").map(|(_, rest)| rest);
            let configured = state.board_url();
            (authority.is_some() && authority == host) || origin == configured.trim_end_matches('/')
        }
        None => text(HeaderName::from_static("sec-fetch-site")) == Some("same-origin"),
    }
}

fn refuse(message: String) -> Response {
    (StatusCode::FORBIDDEN, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message).into_response()
}
