//! `/me/notifications`: which kinds of mail a signed-in person gets, each with when
//! it is sent. Each kind but the data-subject mail can be switched off (that one
//! answers their own request), and on: completed scheduled exports are off until
//! ticked. Their recent mails are listed with how their sending went.

use axum::{
    Form,
    extract::{Query, State},
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, Utc};
use maud::{Markup, html};

use crate::{
    auth::CurrentUser,
    error::{AppError, AppResult},
    mail::{self, Kind},
    routes,
    state::AppState,
    views::{PageCtx, layout::flash, page},
    web::forms::fields as form_fields,
};

#[derive(serde::Deserialize)]
pub struct Notice {
    done: Option<String>,
}

/// What each kind is and when it is sent, as the page says it.
fn describe(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::ExportFailed => (
            "Failed exports",
            "When an export of an organization you administer fails, started by hand or by the schedule. \
             Every admin of the organization gets it.",
        ),
        Kind::ExportCompletedMine => (
            "My completed exports",
            "When an export you started (on the Backups & Export page or with the API) completes, while you are \
             still an admin of its organization. Only you get it, not the other admins.",
        ),
        Kind::ExportCompletedScheduled => (
            "Completed scheduled exports",
            "When a scheduled export of an organization you administer completes: with a daily schedule, one mail \
             a day per organization. Off until you tick it; failures come as Failed exports either way.",
        ),
        Kind::WebhookFailing => (
            "Webhooks",
            "When a webhook endpoint of an organization you administer has failed an event after all its retries; \
             once, until it succeeds again.",
        ),
        Kind::ScheduleFailures => (
            "Platform backup problems (platform admins)",
            "When every export of a scheduled slot has ended and any failed: one mail per slot, listing the \
             organizations. And when organizations become failing, stuck or overdue: one mail per change of each, \
             at most one mail every 15 minutes.",
        ),
        Kind::PrivacyRequest => (
            "My data requests",
            "When a copy of your data you asked for (or a platform admin asked for on your behalf) is ready, or \
             could not be made. Always sent: it answers your own request.",
        ),
        Kind::OrgClosed => (
            "Closed organizations",
            "When an organization you administer (or, for platform admins, any organization) has been closed and \
             its data erased, with the receipt's summary. Always sent: it is the record of the erasure.",
        ),
    }
}

/// GET /me/notifications
pub async fn show(
    ctx: PageCtx,
    CurrentUser(user): CurrentUser,
    State(state): State<AppState>,
    Query(q): Query<Notice>,
) -> AppResult<Markup> {
    let message = (q.done.as_deref() == Some("saved")).then_some("Saved. Mails already queued are still sent.");
    let on = mail::wanted(&state.pool, user.id).await?;
    let recent = mail::recent_for_user(&state.pool, user.id, 10).await?;
    Ok(view(&ctx, &user.email, &on, &recent, message))
}

/// POST /me/notifications: one checkbox (`on`) per kind that can be switched off;
/// a ticked one switches it on, an absent one off. Any other field or value is
/// refused (400) and nothing changes.
pub async fn save(
    CurrentUser(user): CurrentUser,
    State(state): State<AppState>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> AppResult<Response> {
    let keys: Vec<&str> = Kind::ALL.iter().filter(|k| k.can_opt_out()).map(|k| k.key()).collect();
    let fields = form_fields(pairs, &keys).map_err(AppError::BadRequest)?;
    if let Some((k, v)) = fields.iter().find(|(_, v)| v != "on") {
        return Err(AppError::BadRequest(format!(
            "The field {k:?} must be \"on\" or absent (got {v:?}); nothing was changed."
        )));
    }
    let on: Vec<Kind> =
        Kind::ALL.into_iter().filter(|k| k.can_opt_out() && fields.iter().any(|(f, _)| f == k.key())).collect();
    mail::set_wanted(&state.pool, user.id, &on).await?;
    Ok(Redirect::to(&format!("{}?done=saved", routes::ME_NOTIFICATIONS)).into_response())
}

fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

fn view(ctx: &PageCtx, email: &str, on: &[Kind], recent: &[mail::Sent], message: Option<&str>) -> Markup {
    page(
        ctx,
        "Email",
        html! {
            @if let Some(msg) = message { div.mb-6 role="status" { (flash(true, msg)) } }
            section.card.mb-6 {
                h2.text-lg.font-semibold.mb-2 { "Mails I get" }
                p.text-sm.text-slate-600.mb-4 { "Mails go to " strong { (email) } ". Tick the kinds you want; each says when it is sent." }
                form.space-y-3 method="post" action=(routes::ME_NOTIFICATIONS) {
                    (ctx.csrf_field())
                    @for kind in Kind::ALL {
                        @let (title, text) = describe(kind);
                        @let id = format!("mail-{}", kind.key());
                        div.flex.items-start.gap-2 {
                            @if kind.can_opt_out() {
                                input id=(id) type="checkbox" name=(kind.key()) value="on" checked[on.contains(&kind)];
                            } @else {
                                input id=(id) type="checkbox" checked disabled;
                            }
                            label for=(id) {
                                span.font-medium { (title) }
                                span.block.text-sm.text-slate-600 { (text) }
                            }
                        }
                    }
                    button.btn.btn-primary type="submit" { "Save" }
                }
            }
            section {
                h2.text-lg.font-semibold.mb-2 { "My recent mails" }
                @if recent.is_empty() {
                    p.text-slate-600 { "No mails yet." }
                } @else {
                    div.overflow-x-auto { table.table-basic.w-full {
                        thead { tr { th { "Queued" } th { "Subject" } th { "Status" } } }
                        tbody {
                            @for m in recent {
                                @let (badge, status) = m.status();
                                tr data-mail-id=(m.id) {
                                    td { (when(m.created_at)) }
                                    td { (m.subject) }
                                    td { span class=(format!("badge badge-{badge}")) { (status) } }
                                }
                            }
                        }
                    } }
                }
            }
        },
    )
}
