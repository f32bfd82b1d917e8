//! The HTML layout. Pages work without JavaScript; htmx only makes them live. No
//! inline script or style, so the Content-Security-Policy can forbid both.

use axum::{extract::FromRequestParts, http::request::Parts};
use maud::{DOCTYPE, Markup, html};

use crate::{
    auth::{MaybeUser, User, csrf::CsrfToken},
    error::AppError,
    routes,
    state::AppState,
};

/// What the layout needs about the request: who, their orgs, and the CSRF token.
#[derive(Clone, Debug)]
pub struct PageCtx {
    pub user: Option<User>,
    /// The user's orgs, for navigation.
    pub orgs: Vec<crate::orgs::OrgLink>,
    pub csrf: String,
}

impl FromRequestParts<AppState> for PageCtx {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let MaybeUser(user) = MaybeUser::from_request_parts(parts, state).await?;
        let CsrfToken(csrf) = CsrfToken::from_request_parts(parts, state).await?;
        let orgs = match &user {
            Some(u) => crate::orgs::memberships_of(&state.pool, u.id).await?,
            None => Vec::new(),
        };
        Ok(Self { user, orgs, csrf })
    }
}

impl PageCtx {
    /// The hidden CSRF field for a form.
    pub fn csrf_field(&self) -> Markup {
        crate::auth::csrf::hidden_field(&self.csrf)
    }
}

/// A whole page.
pub fn page(ctx: &PageCtx, title: &str, content: Markup) -> Markup {
    let hx_headers = serde_json::json!({ crate::auth::csrf::HEADER: ctx.csrf }).to_string();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // htmx must not inject its indicator <style>: the CSP forbids inline styles.
                // Escaped as an attribute (`&quot;`), so the browser reads the JSON whole: htmx
                // then injects no indicator `<style>`, which the CSP would refuse.
                // It also swaps a 429 (a refusal with its reason, such as the daily limit of
                // manual exports) and a 286 (a poll that stops, with why), and no other 4xx/5xx.
                meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"responseHandling":[{"code":"204","swap":false},{"code":"286","swap":true},{"code":"[23]..","swap":true},{"code":"429","swap":true,"error":false},{"code":"[45]..","swap":false,"error":true},{"code":"...","swap":false}]}"#;
                title { (title) " · Data Export" }
                link rel="stylesheet" href=(routes::ASSET_CSS);
                script src=(routes::ASSET_HTMX) defer {}
            }
            body.bg-slate-50.text-slate-900.min-h-screen hx-headers=(hx_headers) {
                (nav(ctx))
                main.max-w-5xl.mx-auto.px-4.py-8 {
                    h1.text-2xl.font-semibold.mb-6 { (title) }
                    (content)
                }
            }
        }
    }
}

fn nav(ctx: &PageCtx) -> Markup {
    html! {
        header.bg-white.border-b.border-slate-200 {
            nav.max-w-5xl.mx-auto.px-4.py-3.flex.flex-wrap.items-center.gap-4 aria-label="Main" {
                a.font-semibold.text-slate-900 href=(routes::HOME) { "Data Export" }
                @if let Some(user) = &ctx.user {
                    @for org in ctx.orgs.iter().filter(|o| o.is_admin()) {
                        span.text-slate-400 { "|" }
                        span.text-sm.text-slate-600 { (org.name) ":" }
                        @if org.closing {
                            // While it is closing, its admins can only see the closing.
                            a.text-sm.text-blue-700.hover:underline href=(routes::path(routes::ORG_CLOSE, &org.slug, None)) data-closing { "Closing" }
                        } @else {
                        a.text-sm.text-blue-700.hover:underline href=(routes::org_modules(&org.slug)) { "Modules" }
                        // While Data Export is off the page still lists the org's files
                        // (nothing new can start), and the link says it is off.
                        @if org.data_export {
                            a.text-sm.text-blue-700.hover:underline href=(routes::org_backups(&org.slug)) { "Backups & Export" }
                            a.text-sm.text-blue-700.hover:underline href=(routes::path(routes::ORG_NOTIFICATIONS, &org.slug, None)) { "Notifications" }
                        } @else {
                            a.text-sm.text-blue-700.hover:underline href=(routes::org_backups(&org.slug)) data-off { "Backups & Export (off)" }
                        }
                        }
                    }
                    @if user.is_platform_admin {
                        span.text-slate-400 { "|" }
                        a.text-sm.text-blue-700.hover:underline href=(routes::PLATFORM_ORGS) { "Organizations" }
                        a.text-sm.text-blue-700.hover:underline href=(routes::PLATFORM_SETTINGS) { "Platform settings" }
                        a.text-sm.text-blue-700.hover:underline href=(routes::PLATFORM_PRIVACY) { "Privacy requests" }
                        a.text-sm.text-blue-700.hover:underline href=(routes::PLATFORM_IMPORTS) { "Restore" }
                    }
                    span.text-slate-400 { "|" }
                    a.text-sm.text-blue-700.hover:underline href=(routes::ME_PRIVACY) { "My data" }
                    a.text-sm.text-blue-700.hover:underline href=(routes::ME_TOKENS) { "API tokens" }
                    a.text-sm.text-blue-700.hover:underline href=(routes::ME_NOTIFICATIONS) { "Email" }
                    span.ml-auto.text-sm.text-slate-600 { (user.display_name) " (" (user.email) ")" }
                    form method="post" action=(routes::LOGOUT) {
                        (ctx.csrf_field())
                        button.btn.btn-secondary type="submit" { "Sign out" }
                    }
                } @else {
                    a.ml-auto.text-sm.text-blue-700.hover:underline href=(routes::LOGIN) { "Sign in" }
                }
            }
        }
    }
}

/// An error or success message.
pub fn flash(ok: bool, message: &str) -> Markup {
    html! {
        @if ok { div.flash-ok role="status" { (message) } }
        @else { div.flash-error role="alert" { (message) } }
    }
}
