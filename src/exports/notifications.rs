//! An org's webhook endpoints, for its admins: the page
//! `/orgs/{org}/settings/notifications` and the JSON API under
//! `/api/v1/orgs/{org}/webhooks`. Each endpoint receives `export.completed` and
//! `export.failed`, signed as the Standard Webhooks spec says (see `crate::webhooks`);
//! the page lists each endpoint's latest attempts and sends a test event.

use axum::{
    Form, Json,
    body::Bytes,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, Utc};
use maud::{Markup, html};

use super::{ApiExportAdmin, ExportAdmin};
use crate::{
    auth::OrgCtx,
    error::{ApiResult, AppError, AppResult},
    routes,
    state::AppState,
    views::{PageCtx, layout::flash, page},
    web::{
        forms::{field, fields as form_fields},
        path::{ApiRecordId, RecordId},
    },
    webhooks::{self, Refused, WithSecret},
};

/// Attempts listed per endpoint on the page.
const ATTEMPTS_SHOWN: i64 = 10;

#[derive(serde::Deserialize)]
pub struct Notice {
    done: Option<String>,
}

/// GET /orgs/{org}/settings/notifications
pub async fn show(
    ctx: PageCtx,
    ExportAdmin(org): ExportAdmin,
    State(state): State<AppState>,
    Query(q): Query<Notice>,
) -> AppResult<Response> {
    let message = match q.done.as_deref() {
        Some("deleted") => Some((true, "Endpoint deleted. Its pending deliveries will not be sent.".to_string())),
        Some("test") => Some((true, "Test event queued; its attempt appears below in a moment.".to_string())),
        _ => None,
    };
    render(&ctx, &state, &org, StatusCode::OK, message, None).await
}

/// POST /orgs/{org}/settings/notifications `url`: a new endpoint, its secret shown
/// once on the page it answers.
pub async fn create(
    ctx: PageCtx,
    ExportAdmin(org): ExportAdmin,
    State(state): State<AppState>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> AppResult<Response> {
    let fields = form_fields(pairs, &["url"]).map_err(AppError::BadRequest)?;
    let url = field(&fields, "url").unwrap_or("");
    match webhooks::create(&state.pool, &state.config.webhooks, org.org.id, org.user.id, url).await? {
        Ok(created) => render(&ctx, &state, &org, StatusCode::OK, None, Some(&created)).await,
        Err(refused) => {
            let message = Some((false, format!("{refused} No endpoint was added.")));
            render(&ctx, &state, &org, StatusCode::BAD_REQUEST, message, None).await
        }
    }
}

/// POST /orgs/{org}/settings/notifications/{id}/rotate: a new secret, shown once.
pub async fn rotate(
    ctx: PageCtx,
    ExportAdmin(org): ExportAdmin,
    State(state): State<AppState>,
    id: RecordId,
    Form(pairs): Form<Vec<(String, String)>>,
) -> AppResult<Response> {
    form_fields(pairs, &[]).map_err(AppError::BadRequest)?;
    let rotated =
        webhooks::rotate(&state.pool, org.org.id, org.user.id, id.as_str()).await?.ok_or(AppError::NotFound)?;
    render(&ctx, &state, &org, StatusCode::OK, None, Some(&rotated)).await
}

/// POST /orgs/{org}/settings/notifications/{id}/delete
pub async fn delete(
    ExportAdmin(org): ExportAdmin,
    State(state): State<AppState>,
    id: RecordId,
    Form(pairs): Form<Vec<(String, String)>>,
) -> AppResult<Response> {
    form_fields(pairs, &[]).map_err(AppError::BadRequest)?;
    if !webhooks::delete(&state.pool, org.org.id, org.user.id, id.as_str()).await? {
        return Err(AppError::NotFound);
    }
    Ok(Redirect::to(&format!("{}?done=deleted", notifications_path(&org))).into_response())
}

/// POST /orgs/{org}/settings/notifications/{id}/test
pub async fn test(
    ExportAdmin(org): ExportAdmin,
    State(state): State<AppState>,
    id: RecordId,
    Form(pairs): Form<Vec<(String, String)>>,
) -> AppResult<Response> {
    form_fields(pairs, &[]).map_err(AppError::BadRequest)?;
    send_test(&state, &org, &id).await?;
    Ok(Redirect::to(&format!("{}?done=test", notifications_path(&org))).into_response())
}

/// Queues a `webhook.test` event for the org's endpoint `id`; its delivery's id.
/// 409 while an earlier one to it is pending.
async fn send_test(state: &AppState, org: &OrgCtx, id: &RecordId) -> Result<String, AppError> {
    let data = serde_json::json!({
        "org": org.org.slug,
        "endpoint_id": id.as_str(),
        "message": "A test event from Data Export: this endpoint receives the organization's export events.",
    });
    match webhooks::queue_test(&state.pool, org.org.id, id.as_str(), &data).await? {
        Ok(Some(delivery)) => Ok(delivery),
        Ok(None) => Err(AppError::NotFound),
        Err(pending) => Err(AppError::InConflict(pending.to_string())),
    }
}

fn notifications_path(org: &OrgCtx) -> String {
    routes::path(routes::ORG_NOTIFICATIONS, &org.org.slug, None)
}

async fn render(
    ctx: &PageCtx,
    state: &AppState,
    org: &OrgCtx,
    status: StatusCode,
    message: Option<(bool, String)>,
    secret: Option<&WithSecret>,
) -> AppResult<Response> {
    let endpoints = webhooks::list(&state.pool, org.org.id).await?;
    let mut shown = Vec::with_capacity(endpoints.len());
    for e in endpoints {
        let attempts = webhooks::attempts(&state.pool, org.org.id, &e.id, ATTEMPTS_SHOWN).await?;
        shown.push((e, attempts));
    }
    Ok((status, view(ctx, org, &shown, message, secret)).into_response())
}

fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn view(
    ctx: &PageCtx,
    org: &OrgCtx,
    endpoints: &[(webhooks::Endpoint, Vec<webhooks::Attempt>)],
    message: Option<(bool, String)>,
    secret: Option<&WithSecret>,
) -> Markup {
    let slug = &org.org.slug;
    let action = |pattern: &str, id: &str| routes::path(pattern, slug, Some(id));
    page(
        ctx,
        &format!("{}: Notifications", org.org.name),
        html! {
            @if let Some((ok, msg)) = &message { div.mb-6 { (flash(*ok, msg)) } }
            @if let Some(s) = secret {
                section.card.mb-6 #new-secret role="status" {
                    h2.text-lg.font-semibold.mb-2 { "Signing secret" }
                    p.mb-2 { "For " code.break-all { (s.url) } ". Copy it now: it is shown only this once. Your receiver checks each event's signature with it." }
                    code.break-all data-endpoint-id=(s.id) data-secret { (s.secret) }
                }
            }
            section.card.mb-6 {
                h2.text-lg.font-semibold.mb-2 { "Webhooks" }
                p.text-sm.text-slate-600.mb-2 {
                    "Each endpoint gets a POST when an export of this organization completes (" code { "export.completed" } ") or fails (" code { "export.failed" } "), "
                    "with the export as the API shows it. Each is signed as the Standard Webhooks spec says ("
                    code { "webhook-id" } ", " code { "webhook-timestamp" } ", " code { "webhook-signature" } "). "
                    "A failed delivery is tried again for about a day; then the endpoint is marked failing and this organization's admins get an email."
                }
                p.text-sm.text-slate-600.mb-4 { "Endpoints must be public addresses; the answer must come within 10 seconds; redirects are not followed." }
                form.space-y-3 method="post" action=(notifications_path(org)) {
                    (ctx.csrf_field())
                    div {
                        label.label for="webhook-url" { "Endpoint URL" }
                        input.input #webhook-url type="url" name="url" required maxlength="2000" placeholder="https://hooks.example.com/data-export";
                    }
                    button.btn.btn-primary type="submit" { "Add endpoint" }
                }
            }
            @if endpoints.is_empty() {
                p.text-slate-600 { "No endpoints yet." }
            }
            @for (e, attempts) in endpoints {
                section.card.mb-6 data-endpoint-id=(e.id) {
                    div.flex.flex-wrap.items-center.gap-2.mb-2 {
                        code.break-all.font-semibold { (e.url) }
                        @match e.failing_since {
                            Some(at) => span.badge.badge-failed data-endpoint-status="failing" title=(format!("since {}", when(at))) { "failing" },
                            None => span.badge.badge-completed data-endpoint-status="ok" { "active" },
                        }
                    }
                    p.text-xs.text-slate-600.mb-3 {
                        "Added " (when(e.created_at))
                        @if let Some(at) = e.rotated_at { " · secret rotated " (when(at)) }
                    }
                    div.flex.flex-wrap.gap-2.mb-3 {
                        form method="post" action=(action(routes::ORG_WEBHOOK_TEST, &e.id)) {
                            (ctx.csrf_field())
                            button.btn.btn-secondary type="submit" { "Send a test event" }
                        }
                        form method="post" action=(action(routes::ORG_WEBHOOK_ROTATE, &e.id)) {
                            (ctx.csrf_field())
                            button.btn.btn-secondary type="submit" { "Rotate secret" }
                        }
                        form method="post" action=(action(routes::ORG_WEBHOOK_DELETE, &e.id)) {
                            (ctx.csrf_field())
                            button.btn.btn-danger type="submit" { "Delete" }
                        }
                    }
                    @if attempts.is_empty() {
                        p.text-sm.text-slate-600 { "No deliveries yet." }
                    } @else {
                        div.overflow-x-auto { table.table-basic.w-full {
                            thead { tr { th { "When" } th { "Event" } th { "Attempt" } th { "Result" } th { "Took" } th { "Delivery" } } }
                            tbody {
                                @for a in attempts {
                                    tr data-delivery-id=(a.delivery_id) data-attempt=(a.attempt) {
                                        td { (when(a.at)) }
                                        td { code { (a.event) } }
                                        td { (a.attempt) }
                                        td {
                                            @match (&a.error, a.status_code) {
                                                (None, Some(code)) => span.text-green-700 data-result="ok" { (code) },
                                                (Some(e), _) => span.text-red-700.break-words data-result="error" { (e) },
                                                (None, None) => span {},
                                            }
                                        }
                                        td { (format!("{} ms", a.duration_ms)) }
                                        td {
                                            (a.delivery_status)
                                            @if let Some(next) = a.next_attempt_at.filter(|_| a.delivery_status == "pending") {
                                                br; span.text-xs.text-slate-600 { "next try " (when(next)) }
                                            }
                                        }
                                    }
                                }
                            }
                        } }
                    }
                }
            }
        },
    )
}

/// GET /api/v1/orgs/{org}/webhooks -> the endpoints (never their secrets).
pub async fn api_list(ApiExportAdmin(org): ApiExportAdmin, State(state): State<AppState>) -> ApiResult<Response> {
    Ok(Json(webhooks::list(&state.pool, org.org.id).await.map_err(AppError::from)?).into_response())
}

/// POST /api/v1/orgs/{org}/webhooks `{"url":U}` -> 201 `{"id","url","secret"}`.
pub async fn api_create(
    ApiExportAdmin(org): ApiExportAdmin,
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<Response> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        url: String,
    }
    let body: Body = serde_json::from_slice(&body)
        .map_err(|e| AppError::BadRequest(format!("The body must be {{\"url\": \"https://...\"}} ({e}).")))?;
    match webhooks::create(&state.pool, &state.config.webhooks, org.org.id, org.user.id, &body.url).await? {
        Ok(created) => Ok((StatusCode::CREATED, Json(created)).into_response()),
        Err(Refused::TooMany) => Err(AppError::InConflict(Refused::TooMany.to_string()).into()),
        Err(refused) => Err(AppError::BadRequest(refused.to_string()).into()),
    }
}

/// DELETE /api/v1/orgs/{org}/webhooks/{id} -> 204.
pub async fn api_delete(
    ApiExportAdmin(org): ApiExportAdmin,
    State(state): State<AppState>,
    ApiRecordId(id): ApiRecordId,
) -> ApiResult<Response> {
    if !webhooks::delete(&state.pool, org.org.id, org.user.id, id.as_str()).await.map_err(AppError::from)? {
        return Err(AppError::NotFound.into());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// POST /api/v1/orgs/{org}/webhooks/{id}/rotate -> `{"id","url","secret"}`.
pub async fn api_rotate(
    ApiExportAdmin(org): ApiExportAdmin,
    State(state): State<AppState>,
    ApiRecordId(id): ApiRecordId,
) -> ApiResult<Response> {
    let rotated = webhooks::rotate(&state.pool, org.org.id, org.user.id, id.as_str())
        .await
        .map_err(AppError::from)?
        .ok_or(AppError::NotFound)?;
    Ok(Json(rotated).into_response())
}

/// POST /api/v1/orgs/{org}/webhooks/{id}/test -> 202 `{"delivery_id"}`.
pub async fn api_test(
    ApiExportAdmin(org): ApiExportAdmin,
    State(state): State<AppState>,
    ApiRecordId(id): ApiRecordId,
) -> ApiResult<Response> {
    let delivery = send_test(&state, &org, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "delivery_id": delivery }))).into_response())
}

/// GET /api/v1/orgs/{org}/webhooks/{id}/attempts -> the endpoint's latest 100
/// attempts, newest first.
pub async fn api_attempts(
    ApiExportAdmin(org): ApiExportAdmin,
    State(state): State<AppState>,
    ApiRecordId(id): ApiRecordId,
) -> ApiResult<Response> {
    webhooks::get(&state.pool, org.org.id, id.as_str()).await.map_err(AppError::from)?.ok_or(AppError::NotFound)?;
    let attempts = webhooks::attempts(&state.pool, org.org.id, id.as_str(), 100).await.map_err(AppError::from)?;
    Ok(Json(attempts).into_response())
}
