//! HTML handlers of Backups & Export.

use axum::{
    extract::{FromRequestParts, Query, RawQuery, State},
    http::{HeaderMap, request::Parts},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::{ExportAdmin, FilesAdmin, runs, views};
use crate::{
    auth::{OrgCtx, csrf::CsrfToken, membership::OrgRowQuery},
    error::{AppError, AppResult},
    routes,
    state::AppState,
    views::PageCtx,
    web::{
        paging::Cursor,
        path::RecordId,
        respond::{htmx_or_redirect, no_store, see_other},
    },
};

#[derive(Deserialize)]
pub struct Flash {
    notice: Option<String>,
}

/// The history page asked for (`?before=`), its length fixed at
/// [`views::HISTORY_LIMIT`].
fn history_cursor(query: Option<&str>) -> Result<Cursor, AppError> {
    Cursor::fixed(query, views::HISTORY_LIMIT)
}

/// One page of the org's history; an id in `before` that is no run of this org is
/// refused.
async fn history_page(state: &AppState, org: &OrgCtx, cursor: &Cursor) -> Result<runs::Page, AppError> {
    runs::page(&state.pool, org.org.id, cursor.limit, cursor.before.as_ref()).await?.ok_or_else(|| {
        AppError::BadRequest("That page of the history starts at an export this organization does not have.".into())
    })
}

fn viewer<'a>(csrf: &'a CsrfToken, org: &'a OrgCtx, cursor: &'a Cursor) -> views::Viewer<'a> {
    views::Viewer {
        csrf: &csrf.0,
        org_slug: &org.org.slug,
        detail: org.user.is_platform_admin,
        before: cursor.before.as_ref().map(RecordId::as_str),
        on: org.has_module(crate::orgs::modules::Module::DataExport),
    }
}

fn notice_text(code: Option<&str>) -> Option<(bool, &'static str)> {
    match code? {
        "triggered" => Some((true, "Export started. This list updates by itself.")),
        "deleted" => Some((true, "The export's file was deleted.")),
        "verified" => {
            Some((true, "The export's file was re-read: it is whole and matches its schema, counts and SHA-256."))
        }
        "verify_failed" => Some((false, "The export's file failed verification; the reason is in its row.")),
        "conflict" => {
            Some((false, "An export is already pending or running for this organization. Wait for it to finish."))
        }
        "not_verified" => Some((false, "Exports are paused until a platform admin verifies the backup configuration.")),
        "cancelled" => Some((true, "The export was cancelled.")),
        "bucket_failing" => Some((
            false,
            "This organization's exports are paused: its storage bucket failed its last check. It is checked again every 10 minutes; a platform admin can see why.",
        )),
        "quota" => Some((
            false,
            "This organization has used up its manual exports for the last 24 hours. The scheduled exports go on; try again later.",
        )),
        "already_finished" => Some((false, "That export had already finished; there was nothing to cancel.")),
        "tables_queued" => {
            Some((true, "The tables are being made. Their row shows the progress; download them when it says so."))
        }
        "tables_already" => Some((true, "Those tables are being made already.")),
        "tables_ready" => Some((true, "Those tables are ready: use their download link.")),
        "tables_not_completed" => Some((false, "Only a completed export can be converted into tables.")),
        _ => None,
    }
}

/// GET /orgs/{org}/settings/backups
pub async fn page(
    ctx: PageCtx,
    FilesAdmin(org): FilesAdmin,
    State(state): State<AppState>,
    Query(f): Query<Flash>,
    RawQuery(query): RawQuery,
) -> AppResult<Response> {
    let cursor = history_cursor(query.as_deref())?;
    let ready = crate::settings::backup::is_ready(&state).await?;
    // The version before the page: a change in between is caught by the next poll.
    let version = runs::history_version(&state.pool, org.org.id).await?;
    let page = history_page(&state, &org, &cursor).await?;
    let notice = notice_text(f.notice.as_deref());
    let csrf = CsrfToken(ctx.csrf.clone());
    let body = views::backups_page(&ctx, &org.org.name, ready, &page, notice, viewer(&csrf, &org, &cursor), version);
    Ok(body.into_response())
}

/// GET /orgs/{org}/exports/history: the history fragment (what htmx swaps in after
/// an action). With `?since=V`, what an open history polls: 204 and no body while
/// the org's history version is still `V`, so an idle poll costs one query (the
/// session, the user, the org and the version together); the whole fragment one
/// more, for the page of runs.
pub async fn history(
    // Before the token: it reads the token with the session (see `CsrfToken`).
    AdminHistory(org, version): AdminHistory,
    csrf: CsrfToken,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> AppResult<Response> {
    let cursor = history_cursor(query.as_deref())?;
    if since(query.as_deref())? == Some(version) {
        return Ok(axum::http::StatusCode::NO_CONTENT.into_response());
    }
    let page = history_page(&state, &org, &cursor).await?;
    Ok(no_store(views::history(viewer(&csrf, &org, &cursor), &page, None, version)))
}

/// `since` of the query: the history version the page shows.
fn since(query: Option<&str>) -> Result<Option<i64>, AppError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|_| AppError::BadRequest("The query string is malformed.".into()))?;
    match pairs.iter().find(|(k, _)| k == "since").map(|(_, v)| v.as_str()) {
        None | Some("") => Ok(None),
        Some(raw) => raw.parse::<i64>().ok().filter(|v| *v >= 0).map(Some).ok_or_else(|| {
            AppError::BadRequest(format!("since must be a history version, a whole number (got {raw:?})."))
        }),
    }
}

/// The org of the path and its history version, for an org admin with the module on,
/// in one query with the session and its user (see [`AdminRun`]).
pub struct AdminHistory(pub OrgCtx, pub i64);

#[derive(sqlx::FromRow)]
struct Version {
    version: i64,
}

impl FromRequestParts<AppState> for AdminHistory {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let sql = runs::history_version_in_org();
        let (org, version) =
            OrgCtx::admin_of_session_with_row::<Version>(parts, state, OrgRowQuery { sql: &sql, param: "" }).await?;
        // Module on or off: an org that switched Data Export off still sees its files.
        Ok(AdminHistory(org, version.map_or(0, |v| v.version)))
    }
}

async fn history_response(
    csrf: &CsrfToken,
    state: &AppState,
    org: &OrgCtx,
    notice: Option<&str>,
    cursor: &Cursor,
) -> AppResult<Response> {
    let version = runs::history_version(&state.pool, org.org.id).await?;
    let page = history_page(state, org, cursor).await?;
    Ok(no_store(views::history(viewer(csrf, org, cursor), &page, notice_text(notice), version)))
}

/// GET /orgs/{org}/exports/{id}/row: one run's row, what a pending or running row
/// polls every 2 s: one query. `AdminRun` comes before the token: it reads the
/// token with the session (see `CsrfToken`).
pub async fn row(AdminRun(org, run): AdminRun, csrf: CsrfToken) -> AppResult<Response> {
    // Its tables came with the run, in the same query.
    let tables = runs::tables_of(std::slice::from_ref(&run))?;
    Ok(no_store(views::row(viewer(&csrf, &org, &Cursor::first(views::HISTORY_LIMIT)), &run, &tables)))
}

/// POST /orgs/{org}/exports/{id}/tables/{format}: asks for the export's tables (a
/// second click while they are being made changes nothing); the row then shows
/// their progress.
pub async fn tables_request(
    csrf: CsrfToken,
    headers: HeaderMap,
    FilesAdmin(org): FilesAdmin,
    State(state): State<AppState>,
    id: RecordId,
    super::tables::FormatParam(format): super::tables::FormatParam,
    RawQuery(query): RawQuery,
) -> AppResult<Response> {
    let cursor = history_cursor(query.as_deref())?;
    let notice = match super::tables::request(&state, &org, &id, format, "web").await {
        Ok((_, true)) => "tables_queued",
        Ok((t, false)) if t.status == crate::tables::records::TablesStatus::Completed => "tables_ready",
        Ok(_) => "tables_already",
        Err(AppError::InConflict(_)) => "tables_not_completed",
        Err(e) => return Err(e),
    };
    answer(&csrf, &headers, &state, &org, notice, &cursor).await
}

/// GET /orgs/{org}/exports/{id}/tables/{format}/download: 303 to a fresh presigned
/// URL of the zip; 409 while it is not made.
pub async fn tables_download(
    FilesAdmin(org): FilesAdmin,
    State(state): State<AppState>,
    id: RecordId,
    super::tables::FormatParam(format): super::tables::FormatParam,
) -> AppResult<Response> {
    let url = super::tables::download_url(&state, &org, &id, format, "web").await?;
    Ok(see_other(&url))
}

/// The run `{id}` of the org in the path, for an org admin with the module on, as
/// [`ExportAdmin`] and [`runs::get`] would give them, but with the session, the user,
/// the org and the run in one query: each open page polls a running export's row
/// every 2 s.
pub struct AdminRun(pub OrgCtx, pub runs::Run);

impl FromRequestParts<AppState> for AdminRun {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        // A malformed id is no run, but the caller is still checked first.
        let id = RecordId::from_request_parts(parts, state).await.ok();
        let sql = runs::in_org_select();
        let row = OrgRowQuery { sql: &sql, param: id.as_ref().map_or("", RecordId::as_str) };
        let (org, run) = OrgCtx::admin_of_session_with_row(parts, state, row).await?;
        Ok(AdminRun(org, run.ok_or(AppError::NotFound)?))
    }
}

/// POST /orgs/{org}/exports: htmx gets the refreshed history, a plain form a redirect.
pub async fn trigger(
    csrf: CsrfToken,
    headers: HeaderMap,
    ExportAdmin(org): ExportAdmin,
    State(state): State<AppState>,
) -> AppResult<Response> {
    let notice = match super::trigger(&state, &org).await {
        Ok(_) => "triggered",
        Err(AppError::Conflict { .. }) => "conflict",
        Err(AppError::BackupNotVerified) => "not_verified",
        Err(AppError::BucketFailing(_)) => "bucket_failing",
        Err(AppError::QuotaReached { message, retry_after_secs }) => {
            // The history with the reason, as 429 with `Retry-After` (the layout's
            // `htmx-config` swaps 429s); a plain form is redirected to the page that says it.
            let mut answer = answer(&csrf, &headers, &state, &org, "quota", &history_cursor(None)?).await?;
            if answer.status().is_success() {
                *answer.status_mut() = axum::http::StatusCode::TOO_MANY_REQUESTS;
            }
            answer
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(retry_after_secs));
            tracing::info!(org = org.org.slug, message, "manual export refused: the daily quota is used up");
            return Ok(answer);
        }
        Err(e) => return Err(e),
    };
    answer(&csrf, &headers, &state, &org, notice, &history_cursor(None)?).await
}

/// GET /orgs/{org}/exports/{id}/download: 303 to a fresh presigned URL.
pub async fn download(FilesAdmin(org): FilesAdmin, State(state): State<AppState>, id: RecordId) -> AppResult<Response> {
    let url = super::download_url(&state, &org, &id, "web").await?;
    Ok(see_other(&url))
}

/// POST /orgs/{org}/exports/{id}/delete
pub async fn delete(
    csrf: CsrfToken,
    headers: HeaderMap,
    FilesAdmin(org): FilesAdmin,
    State(state): State<AppState>,
    id: RecordId,
    RawQuery(query): RawQuery,
) -> AppResult<Response> {
    let cursor = history_cursor(query.as_deref())?;
    super::delete(&state, &org, &id).await?;
    answer(&csrf, &headers, &state, &org, "deleted", &cursor).await
}

/// POST /orgs/{org}/exports/{id}/cancel: ends a pending or running export.
pub async fn cancel(
    csrf: CsrfToken,
    headers: HeaderMap,
    FilesAdmin(org): FilesAdmin,
    State(state): State<AppState>,
    id: RecordId,
    RawQuery(query): RawQuery,
) -> AppResult<Response> {
    let cursor = history_cursor(query.as_deref())?;
    let notice = match super::cancel(&state, &org, &id).await {
        Ok(_) => "cancelled",
        Err(AppError::InConflict(_)) => "already_finished",
        Err(e) => return Err(e),
    };
    answer(&csrf, &headers, &state, &org, notice, &cursor).await
}

/// POST /orgs/{org}/exports/{id}/verify: re-reads the file; the row shows the outcome.
pub async fn verify(
    csrf: CsrfToken,
    headers: HeaderMap,
    ExportAdmin(org): ExportAdmin,
    State(state): State<AppState>,
    id: RecordId,
    RawQuery(query): RawQuery,
) -> AppResult<Response> {
    let cursor = history_cursor(query.as_deref())?;
    let notice = match super::verify_run(&state, &org, &id, "web").await? {
        Ok(_) => "verified",
        Err(_) => "verify_failed",
    };
    answer(&csrf, &headers, &state, &org, notice, &cursor).await
}

/// After a POST: htmx gets the refreshed history with the notice, a plain form a
/// redirect to the page that shows it.
async fn answer(
    csrf: &CsrfToken,
    headers: &HeaderMap,
    state: &AppState,
    org: &OrgCtx,
    notice: &str,
    cursor: &Cursor,
) -> AppResult<Response> {
    let mut page = format!("{}?notice={notice}", routes::org_backups(&org.org.slug));
    if let Some(before) = &cursor.before {
        page.push_str(&format!("&before={}", before.as_str()));
    }
    htmx_or_redirect(headers, &page, history_response(csrf, state, org, Some(notice), cursor)).await
}

/// Middleware on the pages: a poll of an Export History or of one of its rows that
/// is answered 403 or 404 (the person is no longer an admin of the org, the org
/// switched Data Export off, the run is gone) stops polling and says why: htmx
/// stops a poll answered 286, and swaps in what that answer holds.
pub async fn stop_dead_polls(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let poll = crate::web::respond::is_htmx(req.headers()) && req.method() == axum::http::Method::GET && {
        let path = req.uri().path();
        let mut segs = path.trim_start_matches('/').split('/');
        matches!(
            (segs.next(), segs.next(), segs.next(), segs.next(), segs.next(), segs.next()),
            (Some("orgs"), Some(_), Some("exports"), Some("history"), None, None)
                | (Some("orgs"), Some(_), Some("exports"), Some(_), Some("row"), None)
        )
    };
    let whole = req.headers().get("hx-target").is_some_and(|t| t.as_bytes() == b"history");
    let answer = next.run(req).await;
    let status = answer.status();
    if !poll || !matches!(status.as_u16(), 403 | 404) {
        return answer;
    }
    let why = if status.as_u16() == 403 {
        "You can no longer manage this organization's exports, so this list stopped updating. Reload the page to see where you stand."
    } else {
        "This organization's exports are no longer there for you (you left the organization, or the export was removed), so this list stopped updating. Reload the page."
    };
    let body = if whole {
        maud::html! { div #history role="alert" data-stopped=(status.as_u16()) { (crate::views::layout::flash(false, why)) } }
    } else {
        maud::html! { tr data-stopped=(status.as_u16()) { td colspan="8" { (crate::views::layout::flash(false, why)) } } }
    };
    let mut r = no_store(body);
    *r.status_mut() = axum::http::StatusCode::from_u16(286).unwrap_or(axum::http::StatusCode::OK);
    r
}
