//! The apalis job board on its own listener (`BOARD_BIND`): its UI hard-codes
//! `<base href="/">` and `/api/v1`, so it must sit at the root of a host:port of its
//! own. Every request, UI and API alike, passes the platform-admin guard first: the
//! board's API can push jobs and has no auth of its own. The guard reads the same
//! session cookie as the main site (cookies are per host, not per port).

use apalis_board_api::{framework::ApiBuilder, ui::ServeUI};
use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::{auth::MaybeUser, state::AppState, workers};

/// The board's router: every queue of the registry ([`workers::queues`]).
pub fn router(state: &AppState) -> Router {
    let api = workers::queues().iter().fold(ApiBuilder::new(Router::new()), |api, q| (q.board)(api, state)).build();
    Router::new()
        .nest("/api/v1", api)
        .fallback_service(ServeUI::new())
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(crate::auth::session_layer(state))
        .layer(SetResponseHeaderLayer::overriding(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .layer(SetResponseHeaderLayer::overriding(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .layer(SetResponseHeaderLayer::overriding(header::REFERRER_POLICY, HeaderValue::from_static("same-origin")))
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
    if !matches!(*req.method(), Method::GET | Method::HEAD) && !same_origin(&req) {
        return refuse("Cross-origin requests to the job board are refused.".to_string());
    }
    next.run(req).await
}

fn same_origin(req: &Request) -> bool {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
    match req.headers().get(header::ORIGIN).map(|o| o.to_str().ok()) {
        // No Origin header: not a browser's cross-site request.
        None => true,
        Some(Some(origin)) => {
            let authority = origin.split_once("://").map(|(_, rest)| rest);
            authority.is_some() && authority == host
        }
        Some(None) => false,
    }
}

fn refuse(message: String) -> Response {
    (StatusCode::FORBIDDEN, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message).into_response()
}
