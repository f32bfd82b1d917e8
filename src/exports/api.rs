//! The JSON API under `/api/v1` (bearer tokens; the same rules as the UI).

use axum::{
    Json,
    body::Bytes,
    extract::{RawQuery, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{ApiExportAdmin, ApiFilesAdmin, runs};
use crate::{
    error::{ApiResult, AppError},
    routes,
    state::AppState,
    web::{paging::Cursor, path::ApiRecordId, respond::see_other},
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

/// Runs per page of the API's list unless `limit` says otherwise, and the most.
pub const LIST_DEFAULT: i64 = 100;
pub const LIST_MAX: i64 = 500;

/// GET /api/v1/orgs/{org}/exports[?limit=N&before=ID] -> one page of runs, newest
/// first, with a `Link: <..>; rel="next"` header while older runs remain.
pub async fn list(
    ApiFilesAdmin(org): ApiFilesAdmin,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let cursor = Cursor::parse(query.as_deref(), LIST_DEFAULT, LIST_MAX)?;
    let page = runs::page(&state.pool, org.org.id, cursor.limit, cursor.before.as_ref())
        .await?
        .ok_or_else(|| AppError::BadRequest("before must be the id of an export of this organization.".into()))?;
    let detail = org.user.is_platform_admin;
    let body = Json(serde_json::Value::Array(page.runs.iter().map(|r| r.api_json(detail)).collect()));
    let mut response = body.into_response();
    if let Some(next) = page.next {
        let url = format!(
            "{}{}{}?limit={}&before={next}",
            state.config.public_url,
            routes::API_PREFIX,
            routes::path(routes::API_EXPORTS, &org.org.slug, None),
            cursor.limit
        );
        if let Ok(link) = HeaderValue::from_str(&format!("<{url}>; rel=\"next\"")) {
            response.headers_mut().insert(header::LINK, link);
        }
    }
    Ok(response)
}

/// GET /api/v1/orgs/{org}/exports/{id}
pub async fn get(
    ApiFilesAdmin(org): ApiFilesAdmin,
    State(state): State<AppState>,
    ApiRecordId(id): ApiRecordId,
) -> ApiResult<Json<serde_json::Value>> {
    let run = runs::get(&state.pool, org.org.id, &id).await?.ok_or(AppError::NotFound)?;
    Ok(Json(run.api_json(org.user.is_platform_admin)))
}

/// GET /api/v1/orgs/{org}/exports/{id}/download -> 303 to a presigned URL.
pub async fn download(
    ApiFilesAdmin(org): ApiFilesAdmin,
    State(state): State<AppState>,
    ApiRecordId(id): ApiRecordId,
) -> ApiResult<Response> {
    let url = super::download_url(&state, &org, &id, "api").await?;
    Ok(see_other(&url))
}

/// DELETE /api/v1/orgs/{org}/exports/{id} -> 204.
pub async fn delete(
    ApiFilesAdmin(org): ApiFilesAdmin,
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

/// POST /api/v1/orgs/{org}/exports/{id}/cancel -> 200 with the run (now `failed`,
/// "Cancelled by NAME"); 409 when it has already finished.
pub async fn cancel(
    ApiFilesAdmin(org): ApiFilesAdmin,
    State(state): State<AppState>,
    ApiRecordId(id): ApiRecordId,
) -> ApiResult<Json<serde_json::Value>> {
    let run = super::cancel(&state, &org, &id).await?;
    Ok(Json(run.api_json(org.user.is_platform_admin)))
}

/// The body of a request for tables.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TablesBody {
    format: String,
}

/// POST /api/v1/orgs/{org}/exports/{id}/tables `{"format":"csv"|"parquet"}` -> 202
/// with the conversion (queued now, or the one already queued, running or
/// completed; a failed one is queued again). 400 for another body; 409 while the
/// export is not completed.
pub async fn tables_request(
    ApiFilesAdmin(org): ApiFilesAdmin,
    State(state): State<AppState>,
    ApiRecordId(id): ApiRecordId,
    body: Bytes,
) -> ApiResult<Response> {
    // An unknown export first: another org's id is 404 whatever the body.
    super::tables::check_export(&state, &org, &id).await?;
    let format = match serde_json::from_slice::<TablesBody>(&body) {
        Ok(b) => data_format(&b.format)?,
        Err(e) => {
            return Err(AppError::BadRequest(format!(
                "The body must be {{\"format\": \"csv\"}} or {{\"format\": \"parquet\"}} ({e})."
            ))
            .into());
        }
    };
    let (tables, _queued) = super::tables::request(&state, &org, &id, format, "api").await?;
    Ok((StatusCode::ACCEPTED, Json(tables.api_json())).into_response())
}

fn data_format(raw: &str) -> Result<crate::tables::Format, AppError> {
    crate::tables::Format::parse(raw)
        .ok_or_else(|| AppError::BadRequest(format!("Unknown format {raw:?}: {}.", crate::tables::FORMAT_HELP)))
}

/// GET /api/v1/orgs/{org}/exports/{id}/tables/{format} -> 200 the conversion's state;
/// 404 when none was asked for.
pub async fn tables_status(
    ApiFilesAdmin(org): ApiFilesAdmin,
    State(state): State<AppState>,
    ApiRecordId(id): ApiRecordId,
    super::tables::ApiFormatParam(format): super::tables::ApiFormatParam,
) -> ApiResult<Json<serde_json::Value>> {
    let tables = super::tables::status(&state, &org, &id, format).await?;
    Ok(Json(tables.api_json()))
}

/// GET /api/v1/orgs/{org}/exports/{id}/tables/{format}/download -> 303 to a presigned
/// URL of the zip once the conversion has completed; 409 before.
pub async fn tables_download(
    ApiFilesAdmin(org): ApiFilesAdmin,
    State(state): State<AppState>,
    ApiRecordId(id): ApiRecordId,
    super::tables::ApiFormatParam(format): super::tables::ApiFormatParam,
) -> ApiResult<Response> {
    let url = super::tables::download_url(&state, &org, &id, format, "api").await?;
    Ok(see_other(&url))
}
