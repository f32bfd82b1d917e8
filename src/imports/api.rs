//! The JSON API of restore, for platform admins' tokens (anyone else: 403), in two
//! steps: `POST /api/v1/platform/imports` checks a completed export as a new org (a
//! dry run whose report lists the accounts it matches), `POST
//! /api/v1/platform/imports/{id}/confirm` restores it as checked, and
//! `GET /api/v1/platform/imports/{id}` tells how either went.

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::{
    job,
    records::{self, Via},
};
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
/// `{"id","status":"pending","kind":"check"}`: a check; nothing is written until
/// it is confirmed.
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
    // Imports whose job ended unfinished must not block their slug.
    job::sweep_abandoned(&state).await;
    let import =
        records::request_from_export(&state, admin.id, &new.source_export_id, &new.slug, &new.name, Via::Api).await?;
    // A worker may already have taken it; the answer reports the state it was created in.
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "id": import.id, "status": "pending", "kind": "check" })))
        .into_response())
}

/// POST /api/v1/platform/imports/{id}/confirm (no body) -> 202
/// `{"id","status":"pending","kind":"import","check_id"}`: restores what the
/// completed check `id` reported. 404 unknown check; 409 not finished or already
/// confirmed; 400 failed, expired, or not a check.
pub async fn confirm(
    ApiPlatformAdmin(admin): ApiPlatformAdmin,
    State(state): State<AppState>,
    ApiRecordId(id): ApiRecordId,
) -> ApiResult<Response> {
    job::sweep_abandoned(&state).await;
    let import = records::confirm(&state, admin.id, id.as_str(), Via::Api).await?;
    let body = serde_json::json!({ "id": import.id, "status": "pending", "kind": "import", "check_id": id.as_str() });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
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
