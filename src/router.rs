//! The HTTP surface: the route table that builds the router with every feature's
//! routes, the session and CSRF layers, security headers, request ids, the request
//! and body timeouts, assets and health checks.

mod timeouts;

use axum::{
    Router,
    extract::{DefaultBodyLimit, State},
    http::{HeaderValue, StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::{
    auth, closing,
    error::{ApiError, AppError},
    exports, imports, pages, platform, privacy,
    routes::*,
    state::AppState,
    telemetry,
};

/// The CSP: no inline script or style, no framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// Declares routes once: the router is built from the same list that
/// [`ROUTES`] publishes, so the access-matrix test sees every route there is.
macro_rules! route_table {
    ($table:ident, $build:ident: $( $pattern:expr => [ $( $method:ident $handler:expr ),+ ] ),+ $(,)?) => {
        /// Every route of this part, as `(method, pattern)`.
        pub const $table: &[(&str, &str)] = &[ $( $( (route_table!(@upper $method), $pattern) ),+ ),+ ];
        fn $build(router: Router<AppState>) -> Router<AppState> {
            router $( .route($pattern, axum::routing::MethodRouter::new() $( .$method($handler) )+) )+
        }
    };
    (@upper get) => { "GET" };
    (@upper post) => { "POST" };
    (@upper delete) => { "DELETE" };
}

route_table!(HTML_ROUTES, html_routes:
    HOME => [get pages::home::show],
    LOGIN => [get pages::login::show, post pages::login::submit],
    LOGOUT => [post pages::login::logout],
    ORG_MODULES => [get pages::modules::show, post pages::modules::update],
    ORG_BACKUPS => [get exports::web::page],
    ORG_EXPORTS => [post exports::web::trigger],
    ORG_EXPORT_HISTORY => [get exports::web::history],
    ORG_EXPORT_DOWNLOAD => [get exports::web::download],
    ORG_EXPORT_DELETE => [post exports::web::delete],
    ORG_EXPORT_VERIFY => [post exports::web::verify],
    ORG_EXPORT_ROW => [get exports::web::row],
    ORG_EXPORT_CANCEL => [post exports::web::cancel],
    ORG_EXPORT_TABLES_DOWNLOAD => [get exports::web::tables_download],
    ORG_EXPORT_TABLES => [post exports::web::tables_request],
    ORG_NOTIFICATIONS => [get exports::notifications::show, post exports::notifications::create],
    ORG_WEBHOOK_TEST => [post exports::notifications::test],
    ORG_WEBHOOK_ROTATE => [post exports::notifications::rotate],
    ORG_WEBHOOK_DELETE => [post exports::notifications::delete],
    ORG_CLOSE => [get closing::web::show, post closing::web::close],
    ORG_REOPEN => [post closing::web::reopen],
    PLATFORM_SETTINGS => [get platform::web::show],
    PLATFORM_BACKUP => [post platform::web::save_backup],
    PLATFORM_VERIFY => [post platform::web::verify],
    PLATFORM_RETENTION => [post platform::web::save_retention],
    PLATFORM_SCHEDULE => [post platform::web::save_schedule],
    PLATFORM_ORGS => [get platform::orgs::show],
    PLATFORM_ORG_CLOSE => [get closing::web::platform_show, post closing::web::platform_close],
    PLATFORM_ORG_REOPEN => [post closing::web::platform_reopen],
    PLATFORM_BOARD => [get platform::web::board],
    ME_PRIVACY => [get privacy::web::show, post privacy::web::request],
    ME_PRIVACY_HISTORY => [get privacy::web::history_fragment],
    ME_PRIVACY_DOWNLOAD => [get privacy::web::download],
    ME_TOKENS => [get pages::tokens::show, post pages::tokens::create],
    ME_TOKEN_REVOKE => [post pages::tokens::revoke],
    ME_NOTIFICATIONS => [get pages::notifications::show, post pages::notifications::save],
    PLATFORM_PRIVACY => [get privacy::web::platform_show, post privacy::web::platform_request],
    PLATFORM_PRIVACY_RETENTION => [post privacy::web::platform_retention],
    PLATFORM_PRIVACY_DOWNLOAD => [get privacy::web::admin_download],
    PLATFORM_IMPORTS => [get imports::web::show, post imports::web::from_export],
    PLATFORM_IMPORT_UPLOAD => [post imports::web::upload],
    PLATFORM_IMPORT_ROW => [get imports::web::row],
    PLATFORM_IMPORT_CONFIRM => [post imports::web::confirm],
);

// Patterns relative to API_PREFIX.
route_table!(API_ROUTES, api_routes:
    API_EXPORTS => [get exports::api::list, post exports::api::create],
    API_EXPORT => [get exports::api::get, delete exports::api::delete],
    API_EXPORT_DOWNLOAD => [get exports::api::download],
    API_EXPORT_VERIFY => [post exports::api::verify],
    API_EXPORT_CANCEL => [post exports::api::cancel],
    API_EXPORT_TABLES => [post exports::api::tables_request],
    API_EXPORT_TABLE => [get exports::api::tables_status],
    API_EXPORT_TABLE_DOWNLOAD => [get exports::api::tables_download],
    API_WEBHOOKS => [get exports::notifications::api_list, post exports::notifications::api_create],
    API_WEBHOOK => [delete exports::notifications::api_delete],
    API_WEBHOOK_ROTATE => [post exports::notifications::api_rotate],
    API_WEBHOOK_TEST => [post exports::notifications::api_test],
    API_WEBHOOK_ATTEMPTS => [get exports::notifications::api_attempts],
    API_IMPORTS => [post imports::api::create],
    API_IMPORT => [get imports::api::get],
    API_IMPORT_CONFIRM => [post imports::api::confirm],
    API_PLATFORM_ORGS => [get platform::orgs::api_list],
    API_ORG_CLOSE => [post closing::api::close],
    API_ORG_REOPEN => [post closing::api::reopen],
    API_PLATFORM_ORG_RECEIPT => [get closing::api::receipt],
    API_OPENAPI => [get || async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }],
);

/// The OpenAPI 3.1 document of every route of [`API_ROUTES`], kept by hand in
/// docs/openapi.json (a test fails when a route is missing from it, and checks real
/// answers against its schemas). Public: it describes the API and holds no data.
pub const OPENAPI: &str = include_str!("../docs/openapi.json");

route_table!(OPS_ROUTES, ops_routes:
    HEALTHZ => [get || async { "ok" }],
    READYZ => [get readyz],
    METRICS => [get platform::metrics::serve],
    ASSET_CSS => [get || async { asset(APP_CSS, "text/css; charset=utf-8") }],
    ASSET_HTMX => [get || async { asset(HTMX_JS, "text/javascript; charset=utf-8") }],
);

/// Every route of the product.
pub fn router(state: AppState) -> Router {
    let sessions = auth::session_layer(&state);
    let html = html_routes(Router::new())
        .fallback(|| async { AppError::NotFound })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), auth::csrf::protect))
        .layer(sessions)
        .layer(middleware::from_fn(exports::web::stop_dead_polls))
        .layer(middleware::from_fn(crate::web::respond::htmx_sign_in));
    let api = api_routes(Router::new())
        .fallback(|| async { ApiError(AppError::NotFound) })
        .method_not_allowed_fallback(|| async { ApiError(AppError::MethodNotAllowed) });
    let app = Router::new()
        .merge(ops_routes(Router::new()))
        .nest(API_PREFIX, api)
        .merge(html)
        .layer(DefaultBodyLimit::max(256 * 1024))
        .layer(middleware::from_fn_with_state(state.config.http.clone(), timeouts::enforce))
        .layer(SetResponseHeaderLayer::overriding(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)))
        .layer(SetResponseHeaderLayer::overriding(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .layer(SetResponseHeaderLayer::overriding(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        // Pages link to downloads that redirect to presigned URLs: no page's URL (nor a
        // presigned one) is ever sent on as a Referer.
        .layer(SetResponseHeaderLayer::overriding(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
        // Pages carry personal data and the CSRF token; only the static assets (which
        // set their own) may be cached.
        .layer(SetResponseHeaderLayer::if_not_present(header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
    let app = if state.config.sends_hsts() {
        app.layer(SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(crate::config::HSTS),
        ))
    } else {
        app
    };
    app.layer(middleware::from_fn(telemetry::request_id)).with_state(state)
}

const APP_CSS: &[u8] = include_bytes!("../assets/app.css");
const HTMX_JS: &[u8] = include_bytes!("../assets/htmx.min.js");

fn asset(body: &'static [u8], content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Names are not content-hashed, so revalidate hourly rather than cache forever.
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600")),
        ],
        body,
    )
        .into_response()
}

/// Ready when the database and the storage endpoint both answer.
async fn readyz(State(state): State<AppState>) -> Response {
    let db = sqlx::query("select 1").execute(&state.pool).await;
    let storage = state.storage.ping().await;
    // Details go to the log only: this route is unauthenticated.
    if let Err(e) = &db {
        tracing::warn!(error = %e, "readiness: database unavailable");
    }
    if let Err(e) = &storage {
        tracing::warn!(error = format!("{e:#}"), "readiness: storage unavailable");
    }
    let ok = db.is_ok() && storage.is_ok();
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let body = serde_json::json!({ "database": word(db.is_ok()), "storage": word(storage.is_ok()) });
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}
