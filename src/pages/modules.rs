//! Settings -> Modules: org admins switch the org's modules on and off.

use crate::{
    auth::OrgAdmin,
    error::{AppError, AppResult},
    orgs::modules::{Module, set, states},
    routes,
    state::AppState,
    views::{PageCtx, layout::flash, page},
};
use axum::{
    Form,
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};

/// `?saved=1` after a successful POST.
#[derive(serde::Deserialize)]
pub struct Saved {
    saved: Option<String>,
}

/// GET: the modules form.
pub async fn show(
    ctx: PageCtx,
    OrgAdmin(org): OrgAdmin,
    state: axum::extract::State<AppState>,
    axum::extract::Query(q): axum::extract::Query<Saved>,
) -> AppResult<Markup> {
    let modules = states(&state.pool, org.org.id).await?;
    let message = q.saved.is_some().then(|| (true, "Modules saved.".to_string()));
    Ok(view(&ctx, &org.org.slug, &org.org.name, &modules, message))
}

/// POST: `module=<key>` once per module to switch on; the others are switched off.
pub async fn update(
    ctx: PageCtx,
    OrgAdmin(org): OrgAdmin,
    state: axum::extract::State<AppState>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> AppResult<Response> {
    let mut wanted = Vec::new();
    for (k, v) in &pairs {
        match k.as_str() {
            "module" => match Module::parse(v) {
                Some(m) => wanted.push(m),
                None => {
                    let modules = states(&state.pool, org.org.id).await?;
                    let msg = format!("Unknown module {v:?}; nothing was changed.");
                    let body = view(&ctx, &org.org.slug, &org.org.name, &modules, Some((false, msg)));
                    return Ok((axum::http::StatusCode::BAD_REQUEST, body).into_response());
                }
            },
            crate::auth::csrf::FIELD => {}
            other => {
                return Err(AppError::BadRequest(format!("Unexpected form field {other:?}; nothing was changed.")));
            }
        }
    }
    set(&state.pool, org.org.id, Some(org.user.id), &wanted).await?;
    Ok(Redirect::to(&format!("{}?saved=1", routes::org_modules(&org.org.slug))).into_response())
}

fn view(ctx: &PageCtx, slug: &str, name: &str, modules: &[(Module, bool)], message: Option<(bool, String)>) -> Markup {
    page(
        ctx,
        &format!("{name}: Modules"),
        html! {
            @if let Some((ok, msg)) = &message { (flash(*ok, msg)) }
            form.card.space-y-4 method="post" action=(routes::org_modules(slug)) {
                (ctx.csrf_field())
                p.text-slate-600 { "Core (regions, chapters, members, documents, audit log) is always on." }
                fieldset.space-y-3 {
                    legend.font-medium.mb-2 { "Modules" }
                    @for (m, on) in modules {
                        label.flex.items-start.gap-3 {
                            input.mt-1 type="checkbox" name="module" value=(m.key()) checked[*on];
                            span {
                                span.font-medium { (m.label()) }
                                br;
                                span.text-sm.text-slate-600 { (m.description()) }
                            }
                        }
                    }
                }
                button.btn.btn-primary type="submit" { "Save modules" }
            }
            p.mt-6.text-sm.text-slate-600 {
                "Leaving the platform? "
                a.text-blue-700.hover:underline href=(routes::path(routes::ORG_CLOSE, slug, None)) #close-link { "Close this organization" }
                " (a final export first, then a grace period, then everything is erased)."
            }
        },
    )
}
