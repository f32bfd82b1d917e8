//! HTML handlers of `/platform/imports` (platform admins only; everyone else gets
//! 403): the page, a check of a completed export, a check of an uploaded file
//! ([`upload`]), the confirmation of a completed check, and the row a pending or
//! running import polls.

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
    auth::{PlatformAdmin, csrf::CsrfToken},
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

/// The page's query: a notice after a redirect, and the export picker's org and page.
#[derive(Deserialize)]
pub struct PageQuery {
    notice: Option<String>,
    /// The org whose completed exports are offered (its slug).
    org: Option<String>,
    /// The export after which the page of exports starts (keyset paging).
    before: Option<String>,
}

/// GET /platform/imports[?org=SLUG[&before=ID]]
pub async fn show(
    ctx: PageCtx,
    _admin: PlatformAdmin,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> AppResult<Response> {
    let message = views::notice_text(q.notice.as_deref()).map(|(ok, m)| (ok, m.to_string()));
    let before = match q.before.as_deref().filter(|b| !b.is_empty()) {
        Some(b) => Some(RecordId::parse(b).ok_or_else(|| {
            AppError::BadRequest("before must be the id of an export (from the Older exports link).".into())
        })?),
        None => None,
    };
    let pick = Pick { org: q.org.filter(|o| !o.is_empty()), before };
    render_picked(&ctx, &state, StatusCode::OK, message, &Typed::default(), &pick).await
}

/// Which org's exports the picker shows, and from where.
#[derive(Default)]
struct Pick {
    org: Option<String>,
    before: Option<RecordId>,
}

async fn render(
    ctx: &PageCtx,
    state: &AppState,
    status: StatusCode,
    message: Option<(bool, String)>,
    typed: &Typed,
) -> AppResult<Response> {
    // After a refusal, the picker shows the org of the export that was chosen.
    let org = match RecordId::parse(typed.source_export_id.trim()) {
        Some(id) => match runs::get_any(&state.pool, id.as_str()).await? {
            Some(run) => crate::orgs::find_by_id(&state.pool, run.org_id).await?.map(|o| o.slug),
            None => None,
        },
        None => None,
    };
    render_picked(ctx, state, status, message, typed, &Pick { org, before: None }).await
}

async fn render_picked(
    ctx: &PageCtx,
    state: &AppState,
    status: StatusCode,
    message: Option<(bool, String)>,
    typed: &Typed,
    pick: &Pick,
) -> AppResult<Response> {
    job::sweep_abandoned(state).await;
    let orgs = runs::orgs_with_completed(&state.pool).await?;
    // The org asked for; else the most recently exported one.
    let chosen = match &pick.org {
        Some(slug) => orgs.iter().find(|o| &o.slug == slug),
        None => orgs.first(),
    };
    let (exports, more) = match chosen {
        Some(o) => runs::completed_of_org(&state.pool, &o.slug, views::EXPORT_PAGE, pick.before.as_ref()).await?,
        None => (Vec::new(), false),
    };
    let picker = views::Picker {
        org: chosen.map(|o| o.slug.clone()),
        unknown_org: pick.org.clone().filter(|_| chosen.is_none()),
        older: more.then(|| exports.last().map(|r| r.id.clone())).flatten(),
        paged: pick.before.is_some(),
        orgs,
        exports,
    };
    let imports = records::list(&state.pool, views::HISTORY_LIMIT).await?;
    let message = message.as_ref().map(|(ok, m)| (*ok, m.as_str()));
    let body = views::imports_page(ctx, &picker, &imports, state.config.import_max_bytes, message, typed);
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
    // Imports whose job ended unfinished must not block their slug.
    job::sweep_abandoned(&state).await;
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
pub async fn row(
    _admin: PlatformAdmin,
    State(state): State<AppState>,
    CsrfToken(csrf): CsrfToken,
    id: RecordId,
) -> AppResult<Response> {
    let import = records::get(&state.pool, id.as_str()).await?.ok_or(AppError::NotFound)?;
    Ok(no_store(views::row(&import, &csrf)))
}

/// POST /platform/imports/{id}/confirm: restores what the completed check `id`
/// reported (the second step). An unknown id is 404; any other refusal shows the
/// page with its reason.
pub async fn confirm(
    ctx: PageCtx,
    PlatformAdmin(admin): PlatformAdmin,
    State(state): State<AppState>,
    id: RecordId,
) -> AppResult<Response> {
    job::sweep_abandoned(&state).await;
    match records::confirm(&state, admin.id, id.as_str(), Via::Ui).await {
        Ok(_) => Ok(requested("confirmed")),
        Err(AppError::NotFound) => Err(AppError::NotFound),
        Err(e) => refuse(&ctx, &state, e, &Typed::default()).await,
    }
}
