//! HTML handlers of `/platform/imports` (platform admins only; everyone else gets
//! 403): the page, a restore from a completed export, a restore from an uploaded
//! file ([`upload`]), and the row a pending or running import polls.

pub mod upload;

use axum::{
    Form,
    extract::{Query, Request, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;

use super::{
    job,
    records::{self, Via},
    views::{self, Typed},
};
use crate::{
    auth::PlatformAdmin,
    error::{AppError, AppResult},
    exports::runs,
    routes,
    state::AppState,
    views::PageCtx,
    web::{
        forms::{field, fields as form_fields},
        path::RecordId,
        respond::no_store,
    },
};

#[derive(Deserialize)]
pub struct Flash {
    notice: Option<String>,
}

/// GET /platform/imports
pub async fn show(
    ctx: PageCtx,
    _admin: PlatformAdmin,
    State(state): State<AppState>,
    Query(f): Query<Flash>,
) -> AppResult<Response> {
    let message = views::notice_text(f.notice.as_deref()).map(|(ok, m)| (ok, m.to_string()));
    render(&ctx, &state, StatusCode::OK, message, &Typed::default()).await
}

async fn render(
    ctx: &PageCtx,
    state: &AppState,
    status: StatusCode,
    message: Option<(bool, String)>,
    typed: &Typed,
) -> AppResult<Response> {
    job::sweep_abandoned(state).await;
    let exports = runs::completed_across_orgs(&state.pool, views::EXPORT_CHOICES).await?;
    let imports = records::list(&state.pool, views::HISTORY_LIMIT).await?;
    let message = message.as_ref().map(|(ok, m)| (*ok, m.as_str()));
    let body = views::imports_page(ctx, &exports, &imports, state.config.import_max_bytes, message, typed);
    let mut resp = no_store(body);
    *resp.status_mut() = status;
    Ok(resp)
}

/// The page again with the reason a request was refused and what was typed, with
/// the refusal's status. Nothing was written. A server error stays one.
async fn refuse(ctx: &PageCtx, state: &AppState, e: AppError, typed: &Typed) -> AppResult<Response> {
    if matches!(e, AppError::Internal(_)) {
        return Err(e);
    }
    render(ctx, state, e.status(), Some((false, e.public_message())), typed).await
}

fn requested(notice: &str) -> Response {
    Redirect::to(&format!("{}?notice={notice}", routes::PLATFORM_IMPORTS)).into_response()
}

/// POST /platform/imports: `source_export_id`, `slug`, `name`.
pub async fn from_export(
    ctx: PageCtx,
    PlatformAdmin(admin): PlatformAdmin,
    State(state): State<AppState>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> AppResult<Response> {
    let mut typed = Typed { form: "export", ..Typed::default() };
    let fields = match form_fields(pairs, &["source_export_id", "slug", "name"]) {
        Ok(f) => f,
        Err(e) => return refuse(&ctx, &state, AppError::BadRequest(e), &typed).await,
    };
    let get = |k: &str| field(&fields, k).unwrap_or("").to_string();
    (typed.source_export_id, typed.slug, typed.name) = (get("source_export_id"), get("slug"), get("name"));
    let created =
        records::request_from_export(&state, admin.id, &typed.source_export_id, &typed.slug, &typed.name, Via::Ui)
            .await;
    match created {
        Ok(_) => Ok(requested("requested")),
        Err(e) => refuse(&ctx, &state, e, &typed).await,
    }
}

/// POST /platform/imports/upload: a multipart form with `slug`, `name`, then `file`
/// (the CSRF token is in the query string; see `crate::auth::csrf`).
pub async fn upload(
    ctx: PageCtx,
    PlatformAdmin(admin): PlatformAdmin,
    State(state): State<AppState>,
    request: Request,
) -> AppResult<Response> {
    let (typed, received) = upload::receive(&state, admin.id, request).await;
    match received {
        Ok(_) => Ok(requested("uploaded")),
        Err(e) => refuse(&ctx, &state, e, &typed).await,
    }
}

/// GET /platform/imports/{id}/row: one import's row, what a pending or running row
/// polls every 2 s.
pub async fn row(_admin: PlatformAdmin, State(state): State<AppState>, id: RecordId) -> AppResult<Response> {
    let import = records::get(&state.pool, id.as_str()).await?.ok_or(AppError::NotFound)?;
    Ok(no_store(views::row(&import)))
}
