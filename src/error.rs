//! The application error: details are logged; the user gets a clear message and the
//! right status, as an HTML page ([`AppError`]) or JSON ([`ApiError`]).

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use maud::html;

/// Anything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("not found")]
    NotFound,
    #[error("sign in required")]
    Unauthorized,
    #[error("this address does not take that method")]
    MethodNotAllowed,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("an export is already pending or running for this organization")]
    Conflict { active_export_id: String },
    #[error("{0}")]
    RateLimited(String),
    /// A 404 that says what is missing (an id given in a body, say).
    #[error("{0}")]
    NoSuch(String),
    /// A 409 that says what it conflicts with.
    #[error("{0}")]
    InConflict(String),
    /// A 413 that says what the limit is.
    #[error("{0}")]
    TooLarge(String),
    #[error("the backup configuration is not active and verified; a platform admin must verify it first")]
    BackupNotVerified,
    /// The org's bucket failed its last check: its exports are refused (503).
    #[error("{0}")]
    BucketFailing(String),
    /// A quota is used up (429, with `Retry-After`).
    #[error("{message}")]
    QuotaReached { message: String, retry_after_secs: u64 },
    /// A 503 that says what is busy or too slow and when to try again.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Shorthand for handlers.
pub type AppResult<T> = Result<T, AppError>;

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.into())
    }
}

impl From<tower_sessions::session::Error> for AppError {
    fn from(e: tower_sessions::session::Error) -> Self {
        Self::Internal(anyhow::anyhow!("session: {e}"))
    }
}

impl AppError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::NoSuch(_) => StatusCode::NOT_FOUND,
            Self::InConflict(_) => StatusCode::CONFLICT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BackupNotVerified => StatusCode::SERVICE_UNAVAILABLE,
            Self::BucketFailing(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::QuotaReached { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code of the JSON API.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::Unauthorized => "unauthorized",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Forbidden(_) => "forbidden",
            Self::BadRequest(_) => "bad_request",
            Self::Conflict { .. } => "conflict",
            Self::RateLimited(_) => "rate_limited",
            Self::NoSuch(_) => "not_found",
            Self::InConflict(_) => "conflict",
            Self::TooLarge(_) => "too_large",
            Self::BackupNotVerified => "backup_not_verified",
            Self::BucketFailing(_) => "bucket_failing",
            Self::QuotaReached { .. } => "quota_reached",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    /// The message shown to people; internal details stay in the log.
    pub fn public_message(&self) -> String {
        match self {
            Self::Internal(_) => "Something went wrong on our side. It has been logged; please try again.".into(),
            other => {
                let msg = other.to_string();
                let mut chars = msg.chars();
                match chars.next() {
                    Some(first) => first.to_uppercase().chain(chars).collect(),
                    None => msg,
                }
            }
        }
    }

    fn log(&self) {
        if let Self::Internal(e) = self {
            tracing::error!(error = format!("{e:#}"), "request failed");
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        self.log();
        if matches!(self, Self::Unauthorized) {
            // HTML pages send anonymous visitors to sign in.
            return axum::response::Redirect::to(crate::routes::LOGIN).into_response();
        }
        let status = self.status();
        let retry_after = self.retry_after();
        let body = html! {
            (maud::DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { (status.as_u16()) " · Data Export" }
                    link rel="stylesheet" href=(crate::routes::ASSET_CSS);
                }
                body.bg-slate-50.text-slate-900 {
                    main.max-w-xl.mx-auto.p-8 {
                        div.card role="alert" {
                            h1.text-xl.font-semibold.mb-2 { (status.canonical_reason().unwrap_or("Error")) }
                            p.mb-4 { (self.public_message()) }
                            a.btn.btn-secondary href="/" { "Back to the start page" }
                        }
                    }
                }
            }
        };
        with_retry_after((status, body).into_response(), retry_after)
    }
}

impl AppError {
    /// The `Retry-After` seconds of an error that has one.
    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::QuotaReached { retry_after_secs, .. } => Some(*retry_after_secs),
            _ => None,
        }
    }
}

fn with_retry_after(mut response: Response, secs: Option<u64>) -> Response {
    if let Some(secs) = secs {
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(secs));
    }
    response
}

/// The JSON API's error: `{"error": code, "message": text}` (plus `active_export_id` on 409).
#[derive(Debug)]
pub struct ApiError(pub AppError);

impl<E: Into<AppError>> From<E> for ApiError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        e.log();
        let mut body = serde_json::json!({ "error": e.code(), "message": e.public_message() });
        if let AppError::Conflict { active_export_id } = &e {
            body["active_export_id"] = serde_json::Value::String(active_export_id.clone());
        }
        with_retry_after((e.status(), Json(body)).into_response(), e.retry_after())
    }
}

/// Shorthand for API handlers.
pub type ApiResult<T> = Result<T, ApiError>;
