//! Settings -> Modules: org admins switch the org's modules on and off.

use axum::{
    Form,
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};
use sqlx::PgPool;

use crate::{
    auth::OrgAdmin,
    error::{AppError, AppResult},
    routes,
    state::AppState,
    views::{PageCtx, layout::flash, page},
};

/// The switchable modules (core is always on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Module {
    DataExport,
    Engage,
    Operations,
    Foundation,
    Learning,
    Alumni,
}

impl Module {
    pub const ALL: [Module; 6] =
        [Self::DataExport, Self::Engage, Self::Operations, Self::Foundation, Self::Learning, Self::Alumni];

    /// The stored key (and the key in a snapshot's `modules`).
    pub fn key(self) -> &'static str {
        match self {
            Self::DataExport => "data_export",
            Self::Engage => "engage",
            Self::Operations => "operations",
            Self::Foundation => "foundation",
            Self::Learning => "learning",
            Self::Alumni => "alumni",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::DataExport => "Data Export",
            Self::Engage => "Engage",
            Self::Operations => "Operations",
            Self::Foundation => "Foundation",
            Self::Learning => "Learning",
            Self::Alumni => "Alumni",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::DataExport => "Org snapshots under Backups & Export, downloadable as one gzipped JSON file.",
            Self::Engage => "Forum posts and comments.",
            Self::Operations => "Compliance records, elections, invoices and payments.",
            Self::Foundation => "Foundation funds and donations.",
            Self::Learning => "Courses and enrollments.",
            Self::Alumni => "Alumni profiles and career postings.",
        }
    }

    pub fn parse(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.key() == key)
    }
}

/// Each module and whether it is on for the org.
pub async fn states(pool: &PgPool, org_id: i64) -> sqlx::Result<Vec<(Module, bool)>> {
    let on: Vec<(String,)> = sqlx::query_as("select module from org_modules where org_id = $1 and enabled")
        .bind(org_id)
        .fetch_all(pool)
        .await?;
    Ok(Module::ALL.into_iter().map(|m| (m, on.iter().any(|(k,)| k == m.key()))).collect())
}

/// Sets modules for an org, auditing each change. Returns the modules that changed.
pub async fn set(
    pool: &PgPool,
    org_id: i64,
    actor: Option<i64>,
    wanted: &[Module],
) -> sqlx::Result<Vec<(Module, bool)>> {
    let mut tx = pool.begin().await?;
    let mut changed = Vec::new();
    for m in Module::ALL {
        let enable = wanted.contains(&m);
        let prev: Option<(bool,)> =
            sqlx::query_as("select enabled from org_modules where org_id = $1 and module = $2 for update")
                .bind(org_id)
                .bind(m.key())
                .fetch_optional(&mut *tx)
                .await?;
        if prev.map(|p| p.0).unwrap_or(false) == enable {
            continue;
        }
        sqlx::query(
            "insert into org_modules (org_id, module, enabled, updated_by) values ($1, $2, $3, $4)
             on conflict (org_id, module) do update set enabled = excluded.enabled, updated_at = now(), updated_by = excluded.updated_by",
        )
        .bind(org_id)
        .bind(m.key())
        .bind(enable)
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        let action = if enable { "module.enabled" } else { "module.disabled" };
        super::audit(&mut *tx, Some(org_id), actor, action, m.key(), serde_json::json!({})).await?;
        changed.push((m, enable));
    }
    tx.commit().await?;
    Ok(changed)
}

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
        },
    )
}
