//! The start page: where a signed-in user can go.

use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use crate::{
    auth::MaybeUser,
    error::AppError,
    orgs::Role,
    routes,
    views::{PageCtx, page},
};

/// The start page: where a signed-in user can go.
pub async fn show(ctx: PageCtx, MaybeUser(user): MaybeUser) -> Result<Response, AppError> {
    let Some(user) = user else {
        return Ok(Redirect::to(routes::LOGIN).into_response());
    };
    let body = html! {
        div.card.space-y-3 {
            p { "Signed in as " strong { (user.email) } "." }
            @if ctx.orgs.is_empty() {
                p.text-slate-600 { "You are not a member of any organization." }
            }
            ul.space-y-2 {
                @for org in &ctx.orgs {
                    li {
                        span.font-medium { (org.name) } " · " (Role::parse(&org.role).map(|r| r.label()).unwrap_or("Member"))
                        @if org.is_admin() {
                            " · " a.text-blue-700.hover:underline href=(routes::org_modules(&org.slug)) { "Modules" }
                            @if org.data_export {
                                " · " a.text-blue-700.hover:underline href=(routes::org_backups(&org.slug)) { "Backups & Export" }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&ctx, "Data Export", body).into_response())
}
