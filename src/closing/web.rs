//! The closing's pages: Settings -> Close organization for org admins
//! (`/orgs/{org}/settings/close`, with its cancel), and one org's closing from the
//! org list for platform admins (`/platform/orgs/{org}/close`: the request, the
//! state, the cancel, and the receipt once it is erased).

use axum::{
    Form,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use maud::{Markup, html};

use super::{OrgClosing, Requester, Via};
use crate::{
    auth::{OrgAdmin, PlatformAdmin},
    error::{AppError, AppResult},
    exports::runs,
    orgs::OrgSlug,
    routes,
    state::AppState,
    views::{PageCtx, layout::flash, page},
    web::respond::see_other,
};

/// The typed slug of a close form; any other field is refused.
fn confirm_of(fields: &[(String, String)]) -> Result<String, AppError> {
    let mut confirm = None;
    for (k, v) in fields {
        match k.as_str() {
            "confirm" if confirm.is_none() => confirm = Some(v.clone()),
            crate::auth::csrf::FIELD => {}
            other => {
                return Err(AppError::BadRequest(format!("Unexpected form field {other:?}; nothing was changed.")));
            }
        }
    }
    confirm.ok_or_else(|| AppError::BadRequest("Type the organization's slug to confirm; nothing was changed.".into()))
}

/// Refuses anything but an empty form (its CSRF token aside).
fn empty_form(fields: &[(String, String)]) -> Result<(), AppError> {
    match fields.iter().find(|(k, _)| k != crate::auth::csrf::FIELD) {
        Some((other, _)) => Err(AppError::BadRequest(format!("Unexpected form field {other:?}; nothing was changed."))),
        None => Ok(()),
    }
}

/// GET /orgs/{org}/settings/close: the form, or the closing's state.
pub async fn show(ctx: PageCtx, OrgAdmin(org): OrgAdmin, State(state): State<AppState>) -> AppResult<Response> {
    let closing = super::find(&state.pool, &org.org.slug).await?.ok_or(AppError::NotFound)?;
    let body = view(&ctx, &state, &closing, Side::Org, None).await?;
    Ok(body.into_response())
}

/// POST /orgs/{org}/settings/close `confirm=SLUG`: closes it, then back to the page.
pub async fn close(
    ctx: PageCtx,
    OrgAdmin(org): OrgAdmin,
    State(state): State<AppState>,
    Form(fields): Form<Vec<(String, String)>>,
) -> AppResult<Response> {
    let confirm = confirm_of(&fields)?;
    let by = Requester { user_id: Some(org.user.id), email: Some(org.user.email.clone()), via: Via::Settings };
    let closing = super::find(&state.pool, &org.org.slug).await?.ok_or(AppError::NotFound)?;
    close_and_answer(&ctx, &state, &closing, Side::Org, &confirm, &by).await
}

/// Closes `org` as `by` asked on the `side`'s page: back to that page, or the page
/// again with a bad input's reason (400); other refusals are the usual answers.
async fn close_and_answer(
    ctx: &PageCtx,
    state: &AppState,
    org: &OrgClosing,
    side: Side,
    confirm: &str,
    by: &Requester,
) -> AppResult<Response> {
    match super::close(state, &org.slug, confirm, None, by).await {
        Ok(_) => {
            let page = if side == Side::Org { routes::ORG_CLOSE } else { routes::PLATFORM_ORG_CLOSE };
            Ok(see_other(&routes::path(page, &org.slug, None)))
        }
        Err(e @ AppError::BadRequest(_)) => {
            let body = view(ctx, state, org, side, Some(e.public_message())).await?;
            Ok((StatusCode::BAD_REQUEST, body).into_response())
        }
        Err(e) => Err(e),
    }
}

/// POST /orgs/{org}/settings/close/reopen: cancels the closing.
pub async fn reopen(
    OrgAdmin(org): OrgAdmin,
    State(state): State<AppState>,
    Form(fields): Form<Vec<(String, String)>>,
) -> AppResult<Response> {
    empty_form(&fields)?;
    let by = Requester { user_id: Some(org.user.id), email: Some(org.user.email.clone()), via: Via::Settings };
    super::reopen(&state, &org.org.slug, &by).await?;
    Ok(see_other(&routes::path(routes::ORG_CLOSE, &org.org.slug, None)))
}

/// The org of a platform route's `{org}`: 404 for a malformed or unknown slug.
async fn platform_org(state: &AppState, raw: &str) -> Result<OrgClosing, AppError> {
    let slug = OrgSlug::parse(raw).ok_or(AppError::NotFound)?;
    super::find(&state.pool, slug.as_str()).await?.ok_or(AppError::NotFound)
}

/// GET /platform/orgs/{org}/close: the form, the closing's state, or the receipt.
pub async fn platform_show(
    ctx: PageCtx,
    _admin: PlatformAdmin,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> AppResult<Response> {
    let closing = platform_org(&state, &slug).await?;
    Ok(view(&ctx, &state, &closing, Side::Platform, None).await?.into_response())
}

/// POST /platform/orgs/{org}/close `confirm=SLUG`.
pub async fn platform_close(
    ctx: PageCtx,
    PlatformAdmin(user): PlatformAdmin,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    Form(fields): Form<Vec<(String, String)>>,
) -> AppResult<Response> {
    let org = platform_org(&state, &slug).await?;
    let confirm = confirm_of(&fields)?;
    let by = Requester { user_id: Some(user.id), email: Some(user.email.clone()), via: Via::Platform };
    close_and_answer(&ctx, &state, &org, Side::Platform, &confirm, &by).await
}

/// POST /platform/orgs/{org}/reopen.
pub async fn platform_reopen(
    PlatformAdmin(user): PlatformAdmin,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    Form(fields): Form<Vec<(String, String)>>,
) -> AppResult<Response> {
    let org = platform_org(&state, &slug).await?;
    empty_form(&fields)?;
    let by = Requester { user_id: Some(user.id), email: Some(user.email.clone()), via: Via::Platform };
    super::reopen(&state, &org.slug, &by).await?;
    Ok(see_other(&routes::path(routes::PLATFORM_ORG_CLOSE, &org.slug, None)))
}

/// Whose page it is: the org admin's or the platform admin's.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Org,
    Platform,
}

async fn view(
    ctx: &PageCtx,
    state: &AppState,
    org: &OrgClosing,
    side: Side,
    error: Option<String>,
) -> AppResult<Markup> {
    let run = match &org.final_export_id {
        Some(id) if org.lifecycle == "closing" => runs::get_any(&state.pool, id).await?,
        _ => None,
    };
    let (close_url, reopen_url) = match side {
        Side::Org => {
            (routes::path(routes::ORG_CLOSE, &org.slug, None), routes::path(routes::ORG_REOPEN, &org.slug, None))
        }
        Side::Platform => (
            routes::path(routes::PLATFORM_ORG_CLOSE, &org.slug, None),
            routes::path(routes::PLATFORM_ORG_REOPEN, &org.slug, None),
        ),
    };
    let grace = state.config.close_grace_days;
    let body = html! {
        @if let Some(e) = &error { (flash(false, e)) }
        section.card.mb-6 #closing data-state=(org.lifecycle) aria-labelledby="closing-h" {
            h2.text-lg.font-semibold.mb-2 #closing-h {
                (org.name) " " code.text-sm { (org.slug) } " "
                @if org.lifecycle != "active" { span class=(format!("badge badge-{}", badge(&org.lifecycle))) { (org.lifecycle) } }
            }
            @match org.lifecycle.as_str() {
                "active" => {
                    p.text-sm.text-slate-700.mb-2 {
                        "Closing an organization is for good. First a final export is made and verified. Then, for "
                        strong { (grace) " days" } ", the organization is closing: its members can no longer use it, "
                        "and its admins can only download the final export (and its tables) or cancel the closing. Every "
                        "admin of it and the platform admins are mailed at once. After that, every row "
                        "of the organization and its storage bucket are erased; people's accounts stay. A receipt is "
                        "kept and mailed to its admins and the platform admins. The slug is never given to another "
                        "organization."
                    }
                    form.flex.flex-wrap.items-end.gap-3 method="post" action=(close_url) {
                        (ctx.csrf_field())
                        div {
                            label.label for="close-confirm" { "Type the slug " code { (org.slug) } " to confirm" }
                            input.input #close-confirm type="text" name="confirm" autocomplete="off" required;
                        }
                        button.btn.btn-danger type="submit" { "Close organization" }
                    }
                }
                "closing" => {
                    dl.grid.grid-cols-1.sm:grid-cols-3.gap-x-4.gap-y-1.text-sm.mb-4 {
                        dt.font-medium { "Asked for by" } dd.sm:col-span-2 { (org.close_requested_by_email.as_deref().unwrap_or("the command line")) }
                        dt.font-medium { "Asked on" } dd.sm:col-span-2 { (at(org.close_requested_at)) }
                        dt.font-medium { "Final export" }
                        dd.sm:col-span-2 #final-export {
                            @match &run {
                                Some(r) => {
                                    code.text-xs { (r.id) } " "
                                    span class=(format!("badge badge-{}", r.status)) { (r.status) }
                                    @if r.verified_at.is_some() && r.verify_error.is_none() { " verified" }
                                    @if r.status == runs::RunStatus::Completed && side == Side::Org {
                                        " · " a.text-blue-700.hover:underline href=(routes::path(routes::ORG_EXPORT_DOWNLOAD, &org.slug, Some(&r.id))) { "Download" }
                                    }
                                }
                                None => { "none" }
                            }
                        }
                        dt.font-medium { "Erased after" }
                        dd.sm:col-span-2 #erase-after {
                            @match org.close_after {
                                Some(t) => { (t.format("%Y-%m-%d %H:%M UTC")) }
                                None => { (org.close_grace_days.unwrap_or(0)) " days after the final export is verified" }
                            }
                        }
                    }
                    @if let Some(e) = &org.close_error { p.text-sm.text-red-700.mb-3 data-close-error { (e) } }
                    @if side == Side::Org {
                        p.text-sm.text-slate-600.mb-3 {
                            "The download link is made for you when you click it and works for 15 minutes. The final export's tables (CSV or Parquet) are on "
                            a.text-blue-700.hover:underline href=(routes::path(routes::ORG_BACKUPS, &org.slug, None)) { "Backups & Export" }
                            ". Members can no longer use the organization."
                        }
                    }
                    form method="post" action=(reopen_url) {
                        (ctx.csrf_field())
                        button.btn.btn-secondary type="submit" { "Cancel the closing" }
                    }
                }
                _ => {
                    p.text-sm.mb-2 { "Erased on " (at(org.erased_at)) "."
                        @if org.lifecycle == "erased_db" { " Its bucket is removed at the next housekeeping run." } }
                    @if let Some(receipt) = &org.close_receipt { (receipt_view(receipt)) }
                }
            }
        }
    };
    Ok(page(ctx, "Close organization", body))
}

/// The receipt, as the platform's pages show it.
pub fn receipt_view(receipt: &serde_json::Value) -> Markup {
    let fe = &receipt["final_export"];
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    html! {
        dl.grid.grid-cols-1.sm:grid-cols-3.gap-x-4.gap-y-1.text-sm #receipt {
            dt.font-medium { "Asked for by" } dd.sm:col-span-2 { (text(&receipt["requested_by"])) " (" (text(&receipt["requested_via"])) ") on " (text(&receipt["requested_at"])) }
            dt.font-medium { "Erased at" } dd.sm:col-span-2 { (text(&receipt["erased_at"])) }
            dt.font-medium { "Rows erased" } dd.sm:col-span-2 data-rows { (text(&receipt["erased"]["rows"])) }
            dt.font-medium { "Final export" } dd.sm:col-span-2 { code.text-xs { (text(&fe["id"])) } ", " (text(&fe["size_bytes"])) " bytes" }
            dt.font-medium { "Its SHA-256" } dd.sm:col-span-2 { code.text-xs.break-all { (text(&fe["sha256"])) } }
            dt.font-medium { "Bucket removed at" } dd.sm:col-span-2 { (text(&receipt["bucket_removed_at"])) }
        }
        details.mt-3.text-sm {
            summary { "Rows erased per table" }
            table.table-basic.mt-2 {
                thead { tr { th scope="col" { "Table" } th scope="col" { "Rows" } } }
                tbody {
                    @if let Some(tables) = receipt["erased"]["tables"].as_object() {
                        @for (t, n) in tables { tr { td { code { (t) } } td { (n) } } }
                    }
                }
            }
        }
    }
}

fn at(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_else(|| "-".into())
}

/// The badge of a lifecycle state: `closing`, or `closed` for both erased states.
pub fn badge(lifecycle: &str) -> &'static str {
    if lifecycle == "closing" { "closing" } else { "closed" }
}
