//! The closing's JSON API: `POST /api/v1/orgs/{org}/close` and `.../reopen` (org
//! admins), `GET /api/v1/platform/orgs/{org}/receipt` (platform admins).

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};

use super::{Requester, Via};
use crate::{
    auth::{ApiOrgAdmin, ApiPlatformAdmin},
    error::{ApiResult, AppError},
    state::AppState,
};

/// The body of a close request.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CloseBody {
    /// The org's slug, typed again.
    confirm: String,
}

/// POST /api/v1/orgs/{org}/close `{"confirm": SLUG}` -> 202 with the closing's
/// state; 400 when `confirm` is not the slug (nothing changes), 409 when the org is
/// closing already or another export is active.
pub async fn close(ApiOrgAdmin(ctx): ApiOrgAdmin, State(state): State<AppState>, body: Bytes) -> ApiResult<Response> {
    let body: CloseBody = serde_json::from_slice(&body).map_err(|e| {
        AppError::BadRequest(format!(
            "The body must be {{\"confirm\": \"{}\"}}, the organization's slug typed again ({e}).",
            ctx.org.slug
        ))
    })?;
    let by = Requester { user_id: Some(ctx.user.id), email: Some(ctx.user.email.clone()), via: Via::Api };
    let org = super::close(&state, &ctx.org.slug, &body.confirm, None, &by).await?;
    Ok((StatusCode::ACCEPTED, Json(org.api_json())).into_response())
}

/// POST /api/v1/orgs/{org}/reopen -> 200 with the org's state (`active`); 409 when
/// it is not closing. Takes no body.
pub async fn reopen(ApiOrgAdmin(ctx): ApiOrgAdmin, State(state): State<AppState>, body: Bytes) -> ApiResult<Response> {
    let empty = body.trim_ascii().is_empty()
        || serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body).is_ok_and(|m| m.is_empty());
    if !empty {
        return Err(AppError::BadRequest("This request takes no body (send none, or {}).".into()).into());
    }
    let by = Requester { user_id: Some(ctx.user.id), email: Some(ctx.user.email.clone()), via: Via::Api };
    let org = super::reopen(&state, &ctx.org.slug, &by).await?;
    Ok(Json(org.api_json()).into_response())
}

/// GET /api/v1/platform/orgs/{org}/receipt -> 200, the receipt of an erased org;
/// 404 for an unknown org or one that is not erased.
pub async fn receipt(
    _admin: ApiPlatformAdmin,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let slug = crate::orgs::OrgSlug::parse(&slug).ok_or(AppError::NotFound)?;
    let org = super::find(&state.pool, slug.as_str()).await?.ok_or(AppError::NotFound)?;
    let receipt = org.close_receipt.ok_or_else(|| {
        AppError::NoSuch(format!("The organization {:?} is {}: it has no receipt yet.", org.slug, org.lifecycle))
    })?;
    Ok(Json(receipt))
}
