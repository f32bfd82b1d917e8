//! `/me/privacy` (every signed-in person: request my data, my requests, download)
//! and `/platform/privacy` (platform admins: export on someone's behalf with a
//! reason, how long files are kept, recent requests).

use axum::{
    Form,
    extract::{Query, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, Utc};
use maud::{Markup, html};

use super::requests::{self, Refusal, Request, RequestStatus};
use crate::{
    auth::{CurrentUser, PlatformAdmin},
    error::{AppError, AppResult},
    routes,
    state::AppState,
    views::{PageCtx, layout::flash, page},
    web::{
        forms::{field, fields as form_fields},
        paging::Cursor,
        path::RecordId,
        respond::see_other,
    },
};

/// Requests shown in a history.
const HISTORY_LIMIT: i64 = 50;

#[derive(serde::Deserialize)]
pub struct Notice {
    done: Option<String>,
}

async fn retention_days(state: &AppState) -> sqlx::Result<i32> {
    let (days,): (i32,) = sqlx::query_as("select privacy_retention_days from platform_settings where id = 1")
        .fetch_one(&state.pool)
        .await?;
    Ok(days)
}

fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

fn refusal_text(refusal: &Refusal) -> String {
    match refusal {
        Refusal::Active { .. } => "A data export for this account is already pending or running; it is below.".into(),
        Refusal::TooSoon { next } => {
            format!(
                "You can request your data once every 24 hours. Your next request is possible after {}.",
                when(*next)
            )
        }
    }
}

/// GET /me/privacy
pub async fn show(
    ctx: PageCtx,
    CurrentUser(user): CurrentUser,
    State(state): State<AppState>,
    Query(q): Query<Notice>,
    RawQuery(query): RawQuery,
) -> AppResult<Markup> {
    let message = (q.done.as_deref() == Some("requested")).then(|| {
        (true, "Requested. The file appears below when it is ready; this page updates by itself.".to_string())
    });
    let cursor = history_cursor(query.as_deref())?;
    member_page(&ctx, &state, user.id, message, &cursor).await
}

/// The page of a history asked for (`?before=`), [`HISTORY_LIMIT`] long.
fn history_cursor(query: Option<&str>) -> Result<Cursor, AppError> {
    Cursor::fixed(query, HISTORY_LIMIT)
}

/// One page of one person's requests (or everyone's); a `before` that is not in
/// that list is refused.
async fn requests_page(state: &AppState, user_id: Option<i64>, cursor: &Cursor) -> AppResult<requests::Page> {
    requests::page(&state.pool, user_id, cursor.limit, cursor.before.as_ref())
        .await?
        .ok_or_else(|| AppError::BadRequest("That page starts at a request that is not in this list.".into()))
}

/// "Newest" on any page but the first, and "Older" while older requests remain:
/// plain links to `path` with `?before=`.
fn pager(path: &str, cursor: &Cursor, page: &requests::Page) -> Markup {
    html! {
        @if cursor.before.is_some() || page.next.is_some() {
            nav.flex.gap-2.mt-3 aria-label="Pages of requests" {
                @if cursor.before.is_some() { a.btn.btn-secondary data-page="newest" href=(path) { "Newest" } }
                @if let Some(next) = &page.next {
                    a.btn.btn-secondary data-page="older" href=(format!("{path}?before={next}")) { "Older" }
                }
            }
        }
    }
}

async fn member_page(
    ctx: &PageCtx,
    state: &AppState,
    user_id: i64,
    message: Option<(bool, String)>,
    cursor: &Cursor,
) -> AppResult<Markup> {
    let list = requests_page(state, Some(user_id), cursor).await?;
    let days = retention_days(state).await?;
    Ok(page(
        ctx,
        "My data (GDPR / CCPA)",
        html! {
            @if let Some((ok, msg)) = &message { div.mb-6 { (flash(*ok, msg)) } }
            section.card.mb-6 {
                h2.text-lg.font-semibold.mb-2 { "Request a copy of my data" }
                p.text-slate-600.mb-2 {
                    "One gzipped JSON file with your account, your memberships and profiles in every organization, what you wrote, what is recorded about you (invoices, payments, donations, enrollments, votes, compliance records) and your actions in the audit log."
                }
                p.text-slate-600.mb-4 {
                    "You can ask once every 24 hours. Download links are valid for 15 minutes; the file is deleted after " (days) " days."
                }
                form method="post" action=(routes::ME_PRIVACY) {
                    (ctx.csrf_field())
                    button.btn.btn-primary type="submit" { "Request my data" }
                }
            }
            section {
                h2.text-lg.font-semibold.mb-2 { "My requests" }
                (history(&list.requests, days, cursor.before.is_none()))
                (pager(routes::ME_PRIVACY, cursor, &list))
            }
        },
    ))
}

/// The member's history. On the first page it polls itself every 2 s while a
/// request is pending or running, and stops once none is.
pub fn history(list: &[Request], retention_days: i32, first_page: bool) -> Markup {
    let live = first_page && list.iter().any(Request::is_active);
    html! {
        div #privacy-history hx-get=[live.then_some(routes::ME_PRIVACY_HISTORY)] hx-trigger=[live.then_some("every 2s")]
            hx-swap="outerHTML" aria-live="polite" {
            @if list.is_empty() {
                p.text-slate-600 { "No requests yet." }
            } @else {
                div.overflow-x-auto { table.table-basic.w-full {
                    thead { tr { th { "Requested" } th { "By" } th { "Status" } th { "Size" } th { "Available until" } th { "" } } }
                    tbody {
                        @for r in list {
                            tr data-request-id=(r.id) data-status=(r.status.as_str()) {
                                td { (when(r.created_at)) }
                                td {
                                    @if r.on_behalf {
                                        "A platform admin on your behalf"
                                        @if let Some(reason) = &r.reason { br; span.text-xs.text-slate-600 { "Reason: " (reason) } }
                                    } @else { "You" }
                                }
                                td {
                                    span class=(format!("badge badge-{}", r.status)) { (r.status.as_str()) }
                                    // The reason is for platform admins (it can name internals).
                                    @if r.status == RequestStatus::Failed {
                                        br; span.text-xs.text-red-800 { "It could not be completed. Please request it again; if it fails again, contact support." }
                                    }
                                }
                                td { @if let Some(b) = r.size_bytes { (format!("{:.1} KiB", b as f64 / 1024.0)) } }
                                td { @if let Some(at) = r.expires_at(retention_days) { (when(at)) } }
                                td {
                                    @if r.status == RequestStatus::Completed {
                                        a.text-blue-700.hover:underline href=(routes::path(routes::ME_PRIVACY_DOWNLOAD, "", Some(&r.id))) { "Download" }
                                    }
                                }
                            }
                        }
                    }
                } }
            }
        }
    }
}

/// GET /me/privacy/history: the fragment htmx polls.
pub async fn history_fragment(CurrentUser(user): CurrentUser, State(state): State<AppState>) -> AppResult<Markup> {
    let cursor = Cursor::first(HISTORY_LIMIT);
    let list = requests_page(&state, Some(user.id), &cursor).await?;
    Ok(history(&list.requests, retention_days(&state).await?, true))
}

/// POST /me/privacy: the person's own request.
pub async fn request(
    ctx: PageCtx,
    CurrentUser(user): CurrentUser,
    State(state): State<AppState>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> AppResult<Response> {
    if let Err(e) = form_fields(pairs, &[]) {
        return Err(AppError::BadRequest(e));
    }
    if !crate::settings::backup::is_ready(&state).await? {
        let msg = "Data exports are paused by the platform at the moment; please try again later.".to_string();
        let body = member_page(&ctx, &state, user.id, Some((false, msg)), &Cursor::first(HISTORY_LIMIT)).await?;
        return Ok((StatusCode::SERVICE_UNAVAILABLE, body).into_response());
    }
    match requests::create_self(&state.pool, user.id, state.config.export_max_attempts).await? {
        Ok(_) => Ok(Redirect::to(&format!("{}?done=requested", routes::ME_PRIVACY)).into_response()),
        Err(refusal) => {
            let status = if matches!(refusal, Refusal::TooSoon { .. }) {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::CONFLICT
            };
            let first = Cursor::first(HISTORY_LIMIT);
            let body = member_page(&ctx, &state, user.id, Some((false, refusal_text(&refusal))), &first).await?;
            Ok((status, body).into_response())
        }
    }
}

/// A 303 to a fresh presigned URL for a completed request's file, audit-logged.
async fn download_response(state: &AppState, request: Request, actor: i64, via: &str) -> AppResult<Response> {
    let key = match (request.status, &request.object_key) {
        (RequestStatus::Completed, Some(key)) => key.clone(),
        _ => return Err(AppError::NotFound),
    };
    let filename = format!("my-data-{}.json.gz", request.id);
    let url = state.storage.presign_get(state.storage.privacy_bucket(), &key, &filename).await?;
    let details = serde_json::json!({ "user_id": request.user_id, "via": via });
    crate::audit::write(
        &state.pool,
        None,
        Some(actor),
        "privacy.downloaded",
        &format!("privacy_request:{}", request.id),
        details,
    )
    .await?;
    Ok(see_other(&url))
}

/// GET /me/privacy/{id}/download: only the person's own requests (404 otherwise).
pub async fn download(
    CurrentUser(user): CurrentUser,
    State(state): State<AppState>,
    id: RecordId,
) -> AppResult<Response> {
    let request = requests::get_for_user(&state.pool, user.id, &id).await?.ok_or(AppError::NotFound)?;
    download_response(&state, request, user.id, "self").await
}

/// GET /platform/privacy/{id}/download: a platform admin (for a person who cannot
/// sign in, say); audit-logged with the admin as the actor.
pub async fn admin_download(
    PlatformAdmin(admin): PlatformAdmin,
    State(state): State<AppState>,
    id: RecordId,
) -> AppResult<Response> {
    let request = requests::get_any(&state.pool, id.as_str()).await?.ok_or(AppError::NotFound)?;
    download_response(&state, request, admin.id, "platform_admin").await
}

/// GET /platform/privacy
pub async fn platform_show(
    ctx: PageCtx,
    _admin: PlatformAdmin,
    State(state): State<AppState>,
    Query(q): Query<Notice>,
    RawQuery(query): RawQuery,
) -> AppResult<Markup> {
    let cursor = history_cursor(query.as_deref())?;
    let message = match q.done.as_deref() {
        Some("requested") => {
            Some((true, "Export started on the person's behalf; they see it in their own history.".into()))
        }
        Some("retention") => Some((true, "Saved.".to_string())),
        Some("unchanged") => Some((true, "Nothing changed.".to_string())),
        _ => None,
    };
    platform_page(&ctx, &state, message, "", "", &cursor).await
}

async fn platform_page(
    ctx: &PageCtx,
    state: &AppState,
    message: Option<(bool, String)>,
    email: &str,
    reason: &str,
    cursor: &Cursor,
) -> AppResult<Markup> {
    let list = requests_page(state, None, cursor).await?;
    let days = retention_days(state).await?;
    Ok(page(
        ctx,
        "Privacy requests (GDPR / CCPA)",
        html! {
            @if let Some((ok, msg)) = &message { div.mb-6 { (flash(*ok, msg)) } }
            div.grid.grid-cols-1.md:grid-cols-2.gap-6.mb-6 {
                section.card aria-labelledby="behalf-h" {
                    h2.text-lg.font-semibold.mb-2 #behalf-h { "Export a person's data on their behalf" }
                    p.text-sm.text-slate-600.mb-4 {
                        "For a request that came by email or letter, after verifying the person's identity (see the runbook, docs/runbooks/gdpr-data-export.md). The reason is recorded and audit-logged."
                    }
                    form.space-y-3 method="post" action=(routes::PLATFORM_PRIVACY) {
                        (ctx.csrf_field())
                        div {
                            label.label for="behalf-email" { "Their email" }
                            input.input #behalf-email type="email" name="email" required maxlength="254" value=(email);
                        }
                        div {
                            label.label for="behalf-reason" { "Reason (ticket number, date of the request)" }
                            input.input #behalf-reason type="text" name="reason" required minlength="3" maxlength="500" value=(reason);
                        }
                        button.btn.btn-primary type="submit" { "Start export" }
                    }
                }
                section.card aria-labelledby="keep-h" {
                    h2.text-lg.font-semibold.mb-2 #keep-h { "How long files are kept" }
                    form.space-y-3 method="post" action=(routes::PLATFORM_PRIVACY_RETENTION) {
                        (ctx.csrf_field())
                        div {
                            label.label for="privacy-days" { "Days (1 to 90)" }
                            input.input #privacy-days type="number" name="days" min="1" max="90" step="1" required value=(days);
                        }
                        button.btn.btn-secondary type="submit" { "Save" }
                    }
                    p.text-xs.text-slate-600.mt-2 { "After that the file is deleted and the request shows as expired." }
                }
            }
            section.card aria-labelledby="recent-h" {
                h2.text-lg.font-semibold.mb-2 #recent-h { "Recent requests" }
                @if list.requests.is_empty() {
                    p.text-sm { @if cursor.before.is_some() { "No older requests." } @else { "No requests yet." } }
                } @else {
                    div.overflow-x-auto { table.table-basic.w-full #privacy-requests {
                        thead { tr { th { "Person" } th { "Requested" } th { "By" } th { "Reason" } th { "Status" } th { "" } } }
                        tbody {
                            @for r in &list.requests {
                                tr data-request-id=(r.id) data-status=(r.status.as_str()) {
                                    td { (r.user_email) }
                                    td { (when(r.created_at)) }
                                    td { @if r.on_behalf { (r.requested_by_email.as_deref().unwrap_or("(removed)")) } @else { "themselves" } }
                                    td { (r.reason.as_deref().unwrap_or("")) }
                                    td {
                                        span class=(format!("badge badge-{}", r.status)) { (r.status.as_str()) }
                                        @if let Some(e) = &r.error { br; span.text-xs.text-red-800 { (e) } }
                                        @if let Some(d) = r.error_detail.as_deref().filter(|d| Some(*d) != r.error.as_deref()) {
                                            details.text-xs data-error="detail" { summary { "Details" } pre.whitespace-pre-wrap.break-words { (d) } }
                                        }
                                    }
                                    td {
                                        @if r.status == RequestStatus::Completed {
                                            a.text-blue-700.hover:underline href=(routes::path(routes::PLATFORM_PRIVACY_DOWNLOAD, "", Some(&r.id))) { "Download" }
                                        }
                                    }
                                }
                            }
                        }
                    } }
                }
                (pager(routes::PLATFORM_PRIVACY, cursor, &list))
            }
        },
    ))
}

/// POST /platform/privacy: `email` and `reason`.
pub async fn platform_request(
    ctx: PageCtx,
    PlatformAdmin(admin): PlatformAdmin,
    State(state): State<AppState>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> AppResult<Response> {
    let fields = match form_fields(pairs, &["email", "reason"]) {
        Ok(f) => f,
        Err(e) => return refuse(&ctx, &state, StatusCode::BAD_REQUEST, e, "", "").await,
    };
    let get = |k: &str| field(&fields, k).unwrap_or("").trim().to_string();
    let (email, reason) = (get("email").to_lowercase(), get("reason"));
    if email.chars().chain(reason.chars()).any(char::is_control) {
        let e = "The email and the reason must not contain control characters.".to_string();
        return refuse(&ctx, &state, StatusCode::BAD_REQUEST, e, "", "").await;
    }
    if !(3..=500).contains(&reason.chars().count()) {
        let e = "A reason of 3 to 500 characters is required (a ticket number, the date of the request).".to_string();
        return refuse(&ctx, &state, StatusCode::BAD_REQUEST, e, &email, &reason).await;
    }
    let user: Option<(i64,)> =
        sqlx::query_as("select id from users where email = $1").bind(&email).fetch_optional(&state.pool).await?;
    let Some((user_id,)) = user else {
        let e = format!("No account with the email {email:?}.");
        return refuse(&ctx, &state, StatusCode::BAD_REQUEST, e, &email, &reason).await;
    };
    if !crate::settings::backup::is_ready(&state).await? {
        let e =
            "The backup configuration is not active and verified; verify it under Platform settings first.".to_string();
        return refuse(&ctx, &state, StatusCode::SERVICE_UNAVAILABLE, e, &email, &reason).await;
    }
    match requests::create_on_behalf(&state.pool, admin.id, user_id, &reason, state.config.export_max_attempts).await? {
        Ok(_) => Ok(Redirect::to(&format!("{}?done=requested", routes::PLATFORM_PRIVACY)).into_response()),
        Err(refusal) => refuse(&ctx, &state, StatusCode::CONFLICT, refusal_text(&refusal), &email, &reason).await,
    }
}

async fn refuse(
    ctx: &PageCtx,
    state: &AppState,
    status: StatusCode,
    error: String,
    email: &str,
    reason: &str,
) -> AppResult<Response> {
    let first = Cursor::first(HISTORY_LIMIT);
    let body = platform_page(ctx, state, Some((false, error)), email, reason, &first).await?;
    Ok((status, body).into_response())
}

/// POST /platform/privacy/retention: `days` (1 to 90).
pub async fn platform_retention(
    ctx: PageCtx,
    PlatformAdmin(admin): PlatformAdmin,
    State(state): State<AppState>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> AppResult<Response> {
    let days = form_fields(pairs, &["days"]).and_then(|f| {
        let raw = field(&f, "days").unwrap_or("").trim().to_string();
        match raw.parse::<i32>() {
            Ok(d) if (1..=90).contains(&d) => Ok(d),
            _ => Err(format!("Days must be a whole number from 1 to 90; got {raw:?}.")),
        }
    });
    let days = match days {
        Ok(d) => d,
        Err(e) => return refuse(&ctx, &state, StatusCode::BAD_REQUEST, e, "", "").await,
    };
    let mut tx = state.pool.begin().await?;
    let (before,): (i32,) =
        sqlx::query_as("select privacy_retention_days from platform_settings where id = 1 for update")
            .fetch_one(&mut *tx)
            .await?;
    if before == days {
        return Ok(Redirect::to(&format!("{}?done=unchanged", routes::PLATFORM_PRIVACY)).into_response());
    }
    sqlx::query(
        "update platform_settings set privacy_retention_days = $1, updated_at = now(), updated_by = $2 where id = 1",
    )
    .bind(days)
    .bind(admin.id)
    .execute(&mut *tx)
    .await?;
    let details = serde_json::json!({ "before": before, "after": days });
    crate::audit::write(&mut *tx, None, Some(admin.id), "privacy.retention_updated", "platform_settings", details)
        .await?;
    tx.commit().await?;
    Ok(Redirect::to(&format!("{}?done=retention", routes::PLATFORM_PRIVACY)).into_response())
}
