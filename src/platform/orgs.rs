//! `/platform/orgs` and `GET /api/v1/platform/orgs`: every org's backup state,
//! worst first, filtered by state, searched by slug or name, a page at a time.
//! Platform admins only.

use axum::{
    Json,
    extract::{RawQuery, State},
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use maud::{Markup, html};

use crate::health::{self, Basis, Filter, OrgHealth, STATES};
use crate::{
    auth::{ApiPlatformAdmin, PlatformAdmin},
    error::{ApiResult, AppResult},
    routes,
    state::AppState,
    views::{PageCtx, page},
};

/// Orgs per page of the UI's list.
pub const PAGE_LIMIT: i64 = 50;
/// The API's default page and its largest.
pub const API_DEFAULT: i64 = 100;
pub const API_MAX: i64 = 500;

/// GET /platform/orgs[?state=&q=&before=]
pub async fn show(
    ctx: PageCtx,
    _admin: PlatformAdmin,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> AppResult<Response> {
    let filter = Filter::parse(query.as_deref(), PAGE_LIMIT, PAGE_LIMIT)?;
    let filter = Filter { limit: PAGE_LIMIT, ..filter };
    let basis = Basis::now(&state).await?;
    let (counts, page_of) =
        tokio::try_join!(health::counts(&state.pool, basis), health::page(&state.pool, basis, &filter))?;
    Ok(view(&ctx, &filter, &counts, &page_of).into_response())
}

/// GET /api/v1/platform/orgs[?state=&q=&limit=&before=] -> a JSON array, with
/// `Link: <..>; rel="next"` while more remain.
pub async fn api_list(
    _admin: ApiPlatformAdmin,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let filter = Filter::parse(query.as_deref(), API_DEFAULT, API_MAX)?;
    let basis = Basis::now(&state).await?;
    let page_of = health::page(&state.pool, basis, &filter).await?;
    let body = Json(serde_json::Value::Array(page_of.orgs.iter().map(OrgHealth::api_json).collect()));
    let mut response = body.into_response();
    if let Some(next) = &page_of.next {
        let url = format!(
            "{}{}{}?{}",
            state.config.public_url,
            routes::API_PREFIX,
            routes::API_PLATFORM_ORGS,
            filter.next_query(next)
        );
        if let Ok(link) = HeaderValue::from_str(&format!("<{url}>; rel=\"next\"")) {
            response.headers_mut().insert(header::LINK, link);
        }
    }
    Ok(response)
}

/// `3 h`, `2 d` style ages.
pub fn age(at: DateTime<Utc>) -> String {
    let secs = (Utc::now() - at).num_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 2 * 86_400 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

fn list_url(state: Option<&str>, q: Option<&str>, before: Option<&str>) -> String {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if let Some(s) = state {
        pairs.push(("state", s));
    }
    if let Some(q) = q {
        pairs.push(("q", q));
    }
    if let Some(b) = before {
        pairs.push(("before", b));
    }
    let query = serde_urlencoded::to_string(pairs).unwrap_or_default();
    if query.is_empty() { routes::PLATFORM_ORGS.to_string() } else { format!("{}?{query}", routes::PLATFORM_ORGS) }
}

fn view(ctx: &PageCtx, filter: &Filter, counts: &[(&str, i64)], page_of: &health::Page) -> Markup {
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    let q = filter.q.as_deref();
    page(
        ctx,
        "Organizations",
        html! {
            section.card.mb-6 aria-labelledby="states-h" {
                h2.text-lg.font-semibold.mb-2 #states-h { "Backup state" }
                p.text-sm.text-slate-600.mb-3 { (total) " organizations, worst first. Pick a state to list only those." }
                ul.flex.flex-wrap.gap-2 #state-counts {
                    li { a.btn.btn-secondary href=(list_url(None, q, None)) aria-current=[filter.state.is_none().then_some("true")] { "All " (total) } }
                    @for (s, n) in counts {
                        li { a.btn.btn-secondary href=(list_url(Some(s), q, None)) data-state=(s) title=(health::describe(s))
                            aria-current=[(filter.state.as_deref() == Some(*s)).then_some("true")] {
                            span class=(format!("badge badge-{s}")) { (s) } " " span data-count { (n) }
                        } }
                    }
                }
                form.flex.flex-wrap.items-end.gap-3.mt-4 method="get" action=(routes::PLATFORM_ORGS) role="search" {
                    @if let Some(s) = &filter.state { input type="hidden" name="state" value=(s); }
                    div {
                        label.label for="org-q" { "Search by slug or name" }
                        input.input #org-q type="search" name="q" maxlength="100" value=[q];
                    }
                    button.btn.btn-primary type="submit" { "Search" }
                }
            }
            @if page_of.orgs.is_empty() {
                p.text-slate-600 #orgs-empty { "No organization matches." }
            } @else {
                div.overflow-x-auto { table.table-basic.table-stack.w-full #orgs {
                    thead { tr {
                        th scope="col" { "Organization" } th scope="col" { "State" } th scope="col" { "Last backup" }
                        th scope="col" { "Newest failure" } th scope="col" { "Active export" } th scope="col" { "Failures in a row" }
                        th scope="col" { "Last size" } th scope="col" { "Bucket" } th scope="col" { "Closing" }
                    } }
                    tbody {
                        @for org in &page_of.orgs { (row(org)) }
                    }
                } }
            }
            @if filter.before.is_some() || page_of.next.is_some() {
                nav.flex.gap-2.mt-3 aria-label="Organization pages" {
                    @if filter.before.is_some() {
                        a.btn.btn-secondary #orgs-first href=(list_url(filter.state.as_deref(), q, None)) { "First page" }
                    }
                    @if let Some(next) = &page_of.next {
                        a.btn.btn-secondary #orgs-next href=(list_url(filter.state.as_deref(), q, Some(next))) { "Next" }
                    }
                }
            }
            details.mt-6.text-sm {
                summary { "What the states mean" }
                dl.mt-2.space-y-1 {
                    @for s in STATES { div { dt.inline.font-medium { span class=(format!("badge badge-{s}")) { (s) } } " " dd.inline { (health::describe(s)) } } }
                }
            }
        },
    )
}

fn row(org: &OrgHealth) -> Markup {
    html! {
        tr data-org=(org.slug) data-state=(org.state) {
            td data-label="Organization" { div { span.font-medium { (org.name) } br; code.text-xs { (org.slug) } } }
            td data-label="State" { span class=(format!("badge badge-{}", org.state)) { (org.state) } }
            td data-label="Last backup" {
                @match org.last_success_at {
                    Some(at) => { time datetime=(at.to_rfc3339()) title=(at.format("%Y-%m-%d %H:%M UTC")) { (age(at)) " ago" } }
                    None => { span.text-slate-600 { "never" } }
                }
            }
            td data-label="Newest failure" {
                @if let Some(reason) = &org.last_failure_reason {
                    span.text-xs { (org.last_failure_at.map(|t| format!("{} ago: ", age(t))).unwrap_or_default()) (reason) }
                }
            }
            td data-label="Active export" {
                @if let (Some(id), Some(status)) = (&org.run_id, &org.run_status) {
                    span class=(format!("badge badge-{status}")) { (status) } " " code.text-xs { (id) }
                }
            }
            td data-label="Failures in a row" { @if org.consecutive_failures > 0 { (org.consecutive_failures) } }
            td data-label="Last size" { @if let Some(n) = org.last_size_bytes { span.whitespace-nowrap { (crate::web::format::human_bytes(n)) } } }
            td data-label="Bucket" {
                (org.bucket_state)
                @if let Some(e) = &org.bucket_error { p.text-xs.text-red-700 data-bucket-error { (e) } }
            }
            // Closing an org (the closing module's page): the request, its state, or
            // the receipt once it is erased.
            td data-label="Closing" {
                @let url = routes::path(routes::PLATFORM_ORG_CLOSE, &org.slug, None);
                @match org.state.as_str() {
                    "closed" => { a.text-blue-700.hover:underline href=(url) data-receipt { "Receipt" } }
                    "closing" => { a.text-blue-700.hover:underline href=(url) { "Closing: details" } }
                    _ => { a.text-blue-700.hover:underline href=(url) { "Close…" } }
                }
            }
        }
    }
}
