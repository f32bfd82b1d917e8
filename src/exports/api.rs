//! The JSON API under `/api/v1` (bearer tokens; the same rules as the UI).

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};

use super::{ApiExportAdmin, runs};
use crate::{
    error::{ApiResult, AppError},
    state::AppState,
    web::{path::ApiRecordId, respond::see_other},
};

/// POST /api/v1/orgs/{org}/exports -> 202 `{"id","status"}`. Takes no body (an
/// empty one or `{}`); anything else is refused, so a client that thinks it is
/// passing options learns that it is not.
pub async fn create(
    ApiExportAdmin(org): ApiExportAdmin,
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<Response> {
    let empty = body.trim_ascii().is_empty()
        || serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body).is_ok_and(|m| m.is_empty());
    if !empty {
        return Err(AppError::BadRequest("This request takes no body (send none, or {}).".into()).into());
    }
    let run = super::trigger(&state, &org).await?;
    // A worker may already have picked it up; the answer reports the state it was created in.
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "id": run.id, "status": "pending" }))).into_response())
}

/// GET /api/v1/orgs/{org}/exports -> the runs, newest first.
pub async fn list(
    ApiExportAdmin(org): ApiExportAdmin,
    State(state): State<AppState>,
) -> ApiResult<Json<serde_json::Value>> {
    let runs = runs::list(&state.pool, org.org.id, 500).await?;
    let detail = org.user.is_platform_admin;
    Ok(Json(serde_json::Value::Array(runs.iter().map(|r| r.api_json(detail)).collect())))
}

/// GET /api/v1/orgs/{org}/exports/{id}
pub async fn get(
    ApiExportAdmin(org): ApiExportAdmin,
    State(state): State<AppState>,
    ApiRecordId(id): ApiRecordId,
) -> ApiResult<Json<serde_json::Value>> {
    let run = runs::get(&state.pool, org.org.id, &id).await?.ok_or(AppError::NotFound)?;
    Ok(Json(run.api_json(org.user.is_platform_admin)))
}

/// GET /api/v1/orgs/{org}/exports/{id}/download -> 303 to a presigned URL.
pub async fn download(
    ApiExportAdmin(org): ApiExportAdmin,
    State(state): State<AppState>,
    ApiRecordId(id): ApiRecordId,
) -> ApiResult<Response> {
    let url = super::download_url(&state, &org, &id, "api").await?;
    Ok(see_other(&url))
}

/// DELETE /api/v1/orgs/{org}/exports/{id} -> 204.
pub async fn delete(
    ApiExportAdmin(org): ApiExportAdmin,
    State(state): State<AppState>,
    ApiRecordId(id): ApiRecordId,
) -> ApiResult<StatusCode> {
    super::delete(&state, &org, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// POST /api/v1/orgs/{org}/exports/{id}/verify -> 200 `{"ok": true, "report": {..}}`
/// or `{"ok": false, "error": ".."}` (the file was read; it is damaged).
pub async fn verify(
    ApiExportAdmin(org): ApiExportAdmin,
    State(state): State<AppState>,
    ApiRecordId(id): ApiRecordId,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(match super::verify_run(&state, &org, &id, "api").await? {
        Ok(report) => serde_json::json!({ "ok": true, "report": report }),
        Err(e) => serde_json::json!({ "ok": false, "error": e.0 }),
    }))
}
