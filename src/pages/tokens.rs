//! `/me/tokens`: a signed-in person's own API tokens. They see each one (name,
//! prefix, org, created, last used, expires, status), revoke it, and create a new
//! one, shown once. Another person's token id is no token (404).

use axum::{
    Form,
    extract::{Path, Query, State, rejection::PathRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, Utc};
use maud::{Markup, html};

use crate::{
    auth::{
        CurrentUser,
        tokens::{
            self, DEFAULT_DAYS, ExpiryDays, MAX_DAYS, MAX_NAME, NewToken, Refusal, Revocation, Spec, TokenStatus,
        },
    },
    error::{AppError, AppResult},
    orgs::OrgSlug,
    routes,
    state::AppState,
    views::{PageCtx, layout::flash, page},
    web::forms::{field, fields as form_fields},
};

#[derive(serde::Deserialize)]
pub struct Notice {
    done: Option<String>,
}

/// GET /me/tokens
pub async fn show(
    ctx: PageCtx,
    CurrentUser(user): CurrentUser,
    State(state): State<AppState>,
    Query(q): Query<Notice>,
) -> AppResult<Response> {
    let message = match q.done.as_deref() {
        Some("revoked") => Some((true, "Token revoked. It is refused from its next request.".to_string())),
        Some("already") => Some((true, "That token was already revoked; nothing changed.".to_string())),
        _ => None,
    };
    render(&ctx, &state, user.id, StatusCode::OK, message, None).await
}

/// POST /me/tokens `name`, `org` (a slug of one of the person's orgs, or empty for
/// all of them), `expires_in_days`: the new token, shown once on the page it answers.
pub async fn create(
    ctx: PageCtx,
    CurrentUser(user): CurrentUser,
    State(state): State<AppState>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> AppResult<Response> {
    let refuse = |msg: String| (StatusCode::BAD_REQUEST, Some((false, format!("{msg} No token was created."))));
    let fields = match form_fields(pairs, &["name", "org", "expires_in_days"]) {
        Ok(f) => f,
        Err(e) => return Err(AppError::BadRequest(e)),
    };
    let spec = parse_spec(&fields);
    let (status, message, created) = match spec {
        Err(e) => {
            let (s, m) = refuse(e);
            (s, m, None)
        }
        Ok(spec) => match tokens::issue(&state.pool, user.id, &spec, "ui").await? {
            Ok(t) => (StatusCode::OK, None, Some(t)),
            // Not a member and no such org read alike: the form names only the person's orgs.
            Err(Refusal::NoSuchOrg(_) | Refusal::NotAMember(_) | Refusal::NoSuchUser(_)) => {
                let (s, m) = refuse("A token can be limited only to an organization you belong to.".into());
                (s, m, None)
            }
        },
    };
    render(&ctx, &state, user.id, status, message, created.as_ref()).await
}

fn parse_spec(fields: &[(String, String)]) -> Result<Spec, String> {
    let name = tokens::parse_name(field(fields, "name").unwrap_or("")).map_err(|e| capitalised(&e))?;
    let org = match field(fields, "org").map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(raw) => Some(OrgSlug::parse(raw).ok_or("A token can be limited only to an organization you belong to.")?),
    };
    let expires_in = match field(fields, "expires_in_days").map(str::trim).filter(|s| !s.is_empty()) {
        None => ExpiryDays::default(),
        Some(raw) => ExpiryDays::parse(raw).map_err(|e| capitalised(&e))?,
    };
    Ok(Spec { name, org, expires_in })
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => format!("{}{}.", first.to_uppercase(), c.as_str()),
        None => String::new(),
    }
}

/// POST /me/tokens/{id}/revoke: the person's own token only.
pub async fn revoke(
    CurrentUser(user): CurrentUser,
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> AppResult<Response> {
    let id = id.ok().and_then(|Path(raw)| raw.parse::<i64>().ok()).filter(|n| *n > 0).ok_or(AppError::NotFound)?;
    form_fields(pairs, &[]).map_err(AppError::BadRequest)?;
    let done = match tokens::revoke(&state.pool, id, Some(user.id), Some(user.id), "ui").await? {
        Revocation::Revoked => "revoked",
        Revocation::Already(_) => "already",
        Revocation::NotFound => return Err(AppError::NotFound),
    };
    Ok(Redirect::to(&format!("{}?done={done}", routes::ME_TOKENS)).into_response())
}

async fn render(
    ctx: &PageCtx,
    state: &AppState,
    user_id: i64,
    status: StatusCode,
    message: Option<(bool, String)>,
    created: Option<&NewToken>,
) -> AppResult<Response> {
    let list = tokens::list_for_user(&state.pool, user_id).await?;
    let body = view(ctx, &list, message, created, Utc::now());
    // The page holds a CSRF token, and once a new token: never cached.
    Ok((status, [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], body).into_response())
}

fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

fn badge(status: TokenStatus) -> &'static str {
    match status {
        TokenStatus::Active => "badge badge-completed",
        TokenStatus::Expired => "badge badge-pruned",
        TokenStatus::Revoked => "badge badge-deleted",
    }
}

fn view(
    ctx: &PageCtx,
    list: &[tokens::TokenInfo],
    message: Option<(bool, String)>,
    created: Option<&NewToken>,
    now: DateTime<Utc>,
) -> Markup {
    page(
        ctx,
        "API tokens",
        html! {
            @if let Some((ok, msg)) = &message { div.mb-6 { (flash(*ok, msg)) } }
            @if let Some(t) = created {
                section.card.mb-6 #new-token role="status" {
                    h2.text-lg.font-semibold.mb-2 { "Your new token" }
                    p.mb-2 { "Copy it now: it is shown only this once. It expires " (when(t.expires_at)) "." }
                    code.break-all data-token-id=(t.id) { (t.token) }
                }
            }
            section.card.mb-6 {
                h2.text-lg.font-semibold.mb-2 { "Create a token" }
                p.text-sm.text-slate-600.mb-4 {
                    "A token lets a script use the JSON API (" code { (routes::API_PREFIX) } ") as you, with "
                    code { "Authorization: Bearer <token>" } ". It can do what you can do, in every organization you belong to unless you limit it to one; a limited token is refused everywhere else, the platform's routes included."
                }
                form.space-y-3 method="post" action=(routes::ME_TOKENS) {
                    (ctx.csrf_field())
                    div {
                        label.label for="token-name" { "Name" }
                        input.input #token-name type="text" name="name" required maxlength=(MAX_NAME) placeholder="e.g. nightly backup script";
                    }
                    div {
                        label.label for="token-org" { "Organization" }
                        select.input #token-org name="org" {
                            option value="" { "All my organizations" }
                            @for org in &ctx.orgs { option value=(org.slug) { (org.name) } }
                        }
                    }
                    div {
                        label.label for="token-days" { "Expires after (days)" }
                        input.input #token-days type="number" name="expires_in_days" min="1" max=(MAX_DAYS) step="1" required value=(DEFAULT_DAYS);
                    }
                    button.btn.btn-primary type="submit" { "Create token" }
                }
            }
            section {
                h2.text-lg.font-semibold.mb-2 { "My tokens" }
                @if list.is_empty() {
                    p.text-slate-600 { "No tokens yet." }
                } @else {
                    div.overflow-x-auto { table.table-basic.w-full {
                        thead { tr { th { "Name" } th { "Token" } th { "Organization" } th { "Created" } th { "Last used" } th { "Expires" } th { "Status" } th { "" } } }
                        tbody {
                            @for t in list {
                                @let status = t.status(now);
                                tr data-token-id=(t.id) data-status=(status.as_str()) {
                                    td { (t.name) }
                                    td { code { (t.prefix) "…" } }
                                    td { @match &t.org { Some(slug) => { (slug) }, None => { "All my organizations" } } }
                                    td { (when(t.created_at)) }
                                    td { @match t.last_used_at { Some(at) => { (when(at)) }, None => { "never" } } }
                                    td { (when(t.expires_at)) }
                                    td { span class=(badge(status)) { (status.as_str()) } }
                                    td {
                                        @if status == TokenStatus::Active {
                                            form method="post" action=(routes::path(routes::ME_TOKEN_REVOKE, "", Some(&t.id.to_string()))) {
                                                (ctx.csrf_field())
                                                button.btn.btn-danger type="submit" { "Revoke" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    } }
                }
            }
        },
    )
}
