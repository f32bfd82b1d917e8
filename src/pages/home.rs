//! The start page: where a signed-in user can go.

use axum::{
    extract::State,
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};

use crate::{
    auth::MaybeUser,
    error::AppError,
    health::{self, Basis},
    orgs::Role,
    routes,
    state::AppState,
    views::{PageCtx, page},
};

/// The start page: where a signed-in user can go; a platform admin also sees how
/// many orgs are in each backup state.
pub async fn show(
    ctx: PageCtx,
    MaybeUser(user): MaybeUser,
    State(state): State<AppState>,
) -> Result<Response, AppError> {
    let Some(user) = user else {
        return Ok(Redirect::to(routes::LOGIN).into_response());
    };
    let platform =
        if user.is_platform_admin { Some(health::counts(&state.pool, Basis::now(&state).await?).await?) } else { None };
    let body = html! {
        @if let Some(counts) = &platform { (platform_health(counts)) }
        div.card.space-y-3 {
            p { "Signed in as " strong { (user.email) } "." }
            @if ctx.orgs.is_empty() {
                p.text-slate-600 { "You are not a member of any organization." }
            }
            ul.space-y-2 {
                @for org in &ctx.orgs {
                    li {
                        span.font-medium { (org.name) } " · " (Role::parse(&org.role).map(|r| r.label()).unwrap_or("Member"))
                        @if org.closing {
                            " · " span.badge.badge-closing data-closing { "closing" }
                            @if org.is_admin() {
                                " · " a.text-blue-700.hover:underline href=(routes::path(routes::ORG_CLOSE, &org.slug, None)) { "Download the final export or cancel the closing" }
                            } @else {
                                " · " span.text-slate-600 { "This organization is being closed; it can no longer be used." }
                            }
                        } @else if org.is_admin() {
                            " · " a.text-blue-700.hover:underline href=(routes::org_modules(&org.slug)) { "Modules" }
                            @if org.data_export {
                                " · " a.text-blue-700.hover:underline href=(routes::org_backups(&org.slug)) { "Backups & Export" }
                            } @else {
                                " · " a.text-blue-700.hover:underline href=(routes::org_backups(&org.slug)) { "Backups & Export (off: files only)" }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&ctx, "Data Export", body).into_response())
}

/// The platform admin's summary: orgs per backup state, each a link to the list.
fn platform_health(counts: &[(&str, i64)]) -> Markup {
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    let attention: i64 =
        counts.iter().filter(|(s, _)| matches!(*s, "stuck" | "failing" | "overdue")).map(|(_, n)| n).sum();
    html! {
        section.card.mb-6 #platform-health aria-labelledby="health-h" {
            h2.text-lg.font-semibold.mb-2 #health-h { "Backups across the platform" }
            p.text-sm.mb-3 {
                @if attention == 0 { (total) " organizations; none needs attention." }
                @else { strong { (attention) } " of " (total) " organizations need attention." }
            }
            ul.flex.flex-wrap.gap-2 {
                @for (s, n) in counts {
                    li { a.btn.btn-secondary href=(format!("{}?state={s}", routes::PLATFORM_ORGS)) data-state=(s) title=(health::describe(s)) {
                        span class=(format!("badge badge-{s}")) { (s) } " " span data-count { (n) }
                    } }
                }
            }
            p.text-sm.mt-3 { a.text-blue-700.hover:underline href=(routes::PLATFORM_ORGS) { "Every organization, worst first" } }
        }
    }
}
