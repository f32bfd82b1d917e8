//! The JSON API of restore, for platform admins' tokens (anyone else: 403):
//! `POST /api/v1/platform/imports` restores a completed export as a new org,
//! `GET /api/v1/platform/imports/{id}` tells how it went.

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::records::{self, Via};
use crate::{
    auth::ApiPlatformAdmin,
    error::{ApiResult, AppError},
    state::AppState,
    web::path::ApiRecordId,
};

/// The body of `POST /api/v1/platform/imports`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewImport {
    source_export_id: String,
    slug: String,
    name: String,
}

/// POST /api/v1/platform/imports `{"source_export_id","slug","name"}` -> 202
/// `{"id","status":"pending"}`.
pub async fn create(
    ApiPlatformAdmin(admin): ApiPlatformAdmin,
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<Response> {
    let new: NewImport = serde_json::from_slice(&body).map_err(|e| {
        AppError::BadRequest(format!(
            "The body must be a JSON object {{\"source_export_id\": ID, \"slug\": SLUG, \"name\": NAME}} ({e})."
        ))
    })?;
    let import =
        records::request_from_export(&state, admin.id, &new.source_export_id, &new.slug, &new.name, Via::Api).await?;
    // A worker may already have taken it; the answer reports the state it was created in.
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "id": import.id, "status": "pending" }))).into_response())
}

/// GET /api/v1/platform/imports/{id}
pub async fn get(
    _admin: ApiPlatformAdmin,
    State(state): State<AppState>,
    ApiRecordId(id): ApiRecordId,
) -> ApiResult<Json<serde_json::Value>> {
    let import = records::get(&state.pool, id.as_str()).await?.ok_or(AppError::NotFound)?;
    Ok(Json(import.api_json()))
}
