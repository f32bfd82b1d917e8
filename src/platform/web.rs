//! `/platform/settings`: the backup configuration and its Verify button, retention,
//! the schedule preset and timezone, the retention preview (a dry run of the
//! pruner), recent schedule slots, and the link to the job board. Platform admins
//! only; everyone else gets 403.

use axum::{
    Form,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, Utc};
use maud::{Markup, html};

use super::pruner::{self, OrgPlan};
use crate::exports::runs::Run;
use crate::{
    auth::PlatformAdmin,
    config::StorageSource,
    error::AppResult,
    routes,
    settings::{
        self, Policy, Settings,
        backup::{self, BackupConfig},
        schedule::{self, Preset},
    },
    state::AppState,
    views::{PageCtx, layout::flash, page},
    web::forms::{field, fields as form_fields},
};

#[derive(serde::Deserialize)]
pub struct Notice {
    done: Option<String>,
}

/// The success message for `?done=...` after a redirect.
fn notice(done: Option<&str>) -> Option<(bool, String)> {
    let text = match done? {
        "backup" => "Backup configuration saved. It must be verified again before exports run.",
        "verified" => {
            "Verified: the probe object was written, read back and deleted in the platform's bucket. Every org's bucket is now being checked in the background; the progress is below."
        }
        "verify_failed" => {
            return Some((false, "Verification failed; see the error below. Exports stay paused.".into()));
        }
        "retention" => "Retention saved.",
        "schedule" => "Schedule saved. Its first slot is the next one after now.",
        "unchanged" => "Nothing changed.",
        _ => return None,
    };
    Some((true, text.to_string()))
}

/// GET: the page.
pub async fn show(
    ctx: PageCtx,
    _admin: PlatformAdmin,
    State(state): State<AppState>,
    Query(q): Query<Notice>,
) -> AppResult<Markup> {
    render(&ctx, &state, notice(q.done.as_deref())).await
}

async fn render(ctx: &PageCtx, state: &AppState, message: Option<(bool, String)>) -> AppResult<Markup> {
    let config = backup::load(&state.pool).await?;
    let (settings, plans, plan_orgs) = pruner::plan_some(&state.pool, PREVIEW_ORGS).await?;
    let verification = super::buckets::latest(&state.pool).await?;
    let failing = super::buckets::failing(&state.pool, FAILING_SHOWN).await?;
    let slots: Vec<SlotRow> = sqlx::query_as(
        "select kind, slot, finished_at, outcome from schedule_slots where kind = 'export' order by slot desc limit 5",
    )
    .fetch_all(&state.pool)
    .await?;
    let failures = crate::exports::runs::recent_failures(&state.pool, 10).await?;
    let recent = Recent { slots: &slots, failures: &failures, verification: verification.as_ref(), failing: &failing };
    Ok(view(ctx, state, &config, &settings, (&plans, plan_orgs), recent, message))
}

/// Orgs the retention preview shows (the page stays the same size at any number of
/// orgs; `data-export prune --dry-run` prints them all).
const PREVIEW_ORGS: i64 = 10;
/// Failing org buckets listed (the org list filters them all).
const FAILING_SHOWN: i64 = 20;

/// A 400 with the page and the error, having changed nothing.
async fn refuse(ctx: &PageCtx, state: &AppState, error: String) -> AppResult<Response> {
    let body = render(ctx, state, Some((false, error))).await?;
    Ok((StatusCode::BAD_REQUEST, body).into_response())
}

fn redirect(done: &str) -> Response {
    Redirect::to(&format!("{}?done={done}", routes::PLATFORM_SETTINGS)).into_response()
}

/// POST: the active switch (`active=on` when checked).
pub async fn save_backup(
    ctx: PageCtx,
    PlatformAdmin(admin): PlatformAdmin,
    State(state): State<AppState>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> AppResult<Response> {
    let fields = match form_fields(pairs, &["active"]) {
        Ok(f) => f,
        Err(e) => return refuse(&ctx, &state, e).await,
    };
    let active = match field(&fields, "active") {
        None => false,
        Some("on" | "true" | "1") => true,
        Some(other) => return refuse(&ctx, &state, format!("Active must be on or off; got {other:?}.")).await,
    };
    let changed = backup::set_active(&state.pool, admin.id, active).await?;
    Ok(redirect(if changed { "backup" } else { "unchanged" }))
}

/// POST: Verify. Writes, reads back and deletes a probe object in the privacy
/// bucket and every org bucket, and stores the time and the result.
pub async fn verify(
    ctx: PageCtx,
    PlatformAdmin(admin): PlatformAdmin,
    State(state): State<AppState>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> AppResult<Response> {
    if let Err(e) = form_fields(pairs, &[]) {
        return refuse(&ctx, &state, e).await;
    }
    let outcome = super::buckets::verify(&state, Some(admin.id)).await?;
    Ok(redirect(match outcome {
        super::buckets::Started::Checking(_) => "verified",
        super::buckets::Started::PlatformFailed(_) => "verify_failed",
    }))
}

/// POST: the retention counts.
pub async fn save_retention(
    ctx: PageCtx,
    PlatformAdmin(admin): PlatformAdmin,
    State(state): State<AppState>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> AppResult<Response> {
    let parsed = form_fields(pairs, &["daily", "weekly", "monthly"]).and_then(|f| {
        let count = |name: &str, label: &str| settings::parse_count(label, field(&f, name).unwrap_or(""));
        Ok(Policy {
            daily: count("daily", "Daily")?,
            weekly: count("weekly", "Weekly")?,
            monthly: count("monthly", "Monthly")?,
        })
    });
    match parsed {
        Ok(policy) => {
            let changed = settings::set_retention(&state.pool, admin.id, policy).await?;
            Ok(redirect(if changed { "retention" } else { "unchanged" }))
        }
        Err(e) => refuse(&ctx, &state, e).await,
    }
}

/// POST: the schedule preset and timezone.
pub async fn save_schedule(
    ctx: PageCtx,
    PlatformAdmin(admin): PlatformAdmin,
    State(state): State<AppState>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> AppResult<Response> {
    let parsed = form_fields(pairs, &["preset", "timezone"]).and_then(|f| {
        let raw = field(&f, "preset").unwrap_or("");
        let preset = Preset::parse(raw).ok_or_else(|| format!("Unknown schedule preset {raw:?}."))?;
        let raw = field(&f, "timezone").unwrap_or("");
        let tz = schedule::parse_timezone(raw).ok_or_else(|| {
            format!("Unknown timezone {raw:?}: use an IANA name such as UTC, Europe/Berlin or America/New_York.")
        })?;
        Ok((preset, tz))
    });
    match parsed {
        Ok((preset, tz)) => {
            let changed = settings::set_schedule(&state.pool, admin.id, preset, tz).await?;
            Ok(redirect(if changed { "schedule" } else { "unchanged" }))
        }
        Err(e) => refuse(&ctx, &state, e).await,
    }
}

fn when(at: DateTime<Utc>, settings: &Settings) -> String {
    at.with_timezone(&settings.timezone).format("%Y-%m-%d %H:%M %Z").to_string()
}

type SlotRow = (String, DateTime<Utc>, Option<DateTime<Utc>>, Option<serde_json::Value>);

/// What happened lately: the schedule's slots and the failed exports of every org.
struct Recent<'a> {
    slots: &'a [SlotRow],
    failures: &'a [(String, Run)],
    /// The org buckets' last verification, and the ones failing.
    verification: Option<&'a super::buckets::Verification>,
    failing: &'a [(String, Option<String>)],
}

fn view(
    ctx: &PageCtx,
    state: &AppState,
    config: &BackupConfig,
    settings: &Settings,
    (plans, plan_orgs): (&[OrgPlan], i64),
    Recent { slots, failures, verification, failing }: Recent<'_>,
    message: Option<(bool, String)>,
) -> Markup {
    let ready = config.is_ready(state.storage.identity());
    let p = settings.retention;
    let next = settings.preset.next_after(settings.timezone, Utc::now().max(settings.schedule_since));
    page(
        ctx,
        "Platform settings",
        html! {
            @if let Some((ok, msg)) = &message { div.mb-6 { (flash(*ok, msg)) } }
            section.card.mb-6 aria-labelledby="backup-h" {
                h2.text-lg.font-semibold.mb-2 #backup-h { "Backup configuration" }
                p.mb-4 {
                    @if ready {
                        span.badge.badge-completed #backup-state { "Active and verified" }
                        " Exports may run."
                    } @else {
                        span.badge.badge-failed #backup-state { "Not ready" }
                        " Exports are paused: manual triggers are refused and scheduled slots are skipped until the configuration is active and verified."
                    }
                }
                dl.grid.grid-cols-1.sm:grid-cols-3.gap-x-4.gap-y-2.text-sm.mb-4 {
                    dt.font-medium { "Storage endpoint" }
                    dd.sm:col-span-2 #endpoint { (storage_description(state)) }
                    dt.font-medium { "Org buckets" }
                    dd.sm:col-span-2 { code { (state.storage.bucket_prefix()) "{slug}" } " (BUCKET_PREFIX; one per org, created when the org is provisioned); keys " code { "exports/{YYYY}/{MM}/{run-id}.json.gz" } }
                    dt.font-medium { "Privacy bucket" }
                    dd.sm:col-span-2 { code { (state.storage.privacy_bucket()) } }
                    dt.font-medium { "Credentials" }
                    dd.sm:col-span-2 { (credentials_description(state)) }
                    dt.font-medium { "Last verified" }
                    dd.sm:col-span-2 #verified-at {
                        @match (config.verified_at, config.verified_endpoint.as_deref()) {
                            (Some(at), Some(endpoint)) if endpoint == state.storage.identity() => { (when(at, settings)) }
                            (Some(at), Some(_)) => { (when(at, settings)) ", against a different endpoint: verify again" }
                            _ => { "Not verified" }
                        }
                    }
                    @if let Some(e) = &config.last_error {
                        dt.font-medium { "Last error" }
                        dd.sm:col-span-2.text-red-800 #verify-error { (e) }
                    }
                }
                div.flex.flex-wrap.items-end.gap-4 {
                    form.flex.items-center.gap-3 method="post" action=(routes::PLATFORM_BACKUP) {
                        (ctx.csrf_field())
                        label.flex.items-center.gap-2 {
                            input type="checkbox" name="active" checked[config.active];
                            span { "Active" }
                        }
                        button.btn.btn-secondary type="submit" { "Save" }
                    }
                    form method="post" action=(routes::PLATFORM_VERIFY) {
                        (ctx.csrf_field())
                        button.btn.btn-primary type="submit" { "Verify" }
                    }
                }
                p.text-xs.text-slate-600.mt-2 {
                    "Verify writes, reads back and deletes a probe object in the platform's bucket, which decides \"verified\", then checks every org's bucket the same way in the background. A failing org bucket pauses only that org's exports. Any change here clears \"verified\"."
                }
                div.mt-4 #bucket-checks {
                    h3.font-medium.mb-1 { "Org buckets" }
                    @match verification {
                        None => { p.text-sm { "Not checked yet: press Verify." } }
                        Some(v) => {
                            p.text-sm #bucket-progress data-checked=(v.checked) data-total=(v.total) {
                                @if let Some(e) = v.error.as_deref().filter(|_| v.finished_at.is_some()) {
                                    "The check begun " (when(v.started_at, settings)) " stopped: " span.text-red-800 { (e) } ". No org was marked for it; press Verify again."
                                } @else if v.finished_at.is_some() {
                                    "Last check " (when(v.started_at, settings)) ": " (v.checked) " of " (v.total) " checked, " (v.failed) " failing."
                                } @else {
                                    "Checking since " (when(v.started_at, settings)) ": " (v.checked) " of " (v.total) " checked so far, " (v.failed) " failing. Reload to follow it."
                                }
                            }
                        }
                    }
                    @if !failing.is_empty() {
                        ul.text-sm.mt-2 #failing-buckets {
                            @for (slug, error) in failing {
                                li.mb-1 { strong { (slug) } ": " span.text-red-800 { (error.as_deref().unwrap_or("")) } }
                            }
                        }
                        p.text-sm.mt-1 { a.text-blue-700.hover:underline href=(format!("{}?state=failing", routes::PLATFORM_ORGS)) { "Every failing org" } }
                    }
                }
            }
            div.grid.grid-cols-1.md:grid-cols-2.gap-6.mb-6 {
                section.card aria-labelledby="retention-h" {
                    h2.text-lg.font-semibold.mb-2 #retention-h { "Retention" }
                    p.text-sm.text-slate-600.mb-4 {
                        "Over each org's completed scheduled exports: keep the newest of each of the last N days, ISO weeks and months that have one (0 turns a rule off). The newest is always kept; manual exports are never pruned."
                    }
                    form.space-y-3 method="post" action=(routes::PLATFORM_RETENTION) {
                        (ctx.csrf_field())
                        @for (name, label, value) in [("daily", "Daily", p.daily), ("weekly", "Weekly", p.weekly), ("monthly", "Monthly", p.monthly)] {
                            div {
                                label.label for=(format!("retention-{name}")) { (label) }
                                input.input #(format!("retention-{name}")) type="number" name=(name) min="0" max=(settings::MAX_RETENTION) step="1" required value=(value);
                            }
                        }
                        button.btn.btn-primary type="submit" { "Save retention" }
                    }
                }
                section.card aria-labelledby="schedule-h" {
                    h2.text-lg.font-semibold.mb-2 #schedule-h { "Schedule" }
                    form.space-y-3 method="post" action=(routes::PLATFORM_SCHEDULE) {
                        (ctx.csrf_field())
                        div {
                            label.label for="schedule-preset" { "Preset" }
                            select.input #schedule-preset name="preset" {
                                @for preset in Preset::ALL {
                                    option value=(preset.key()) selected[preset == settings.preset] { (preset.label()) }
                                }
                            }
                        }
                        div {
                            label.label for="schedule-timezone" { "Timezone (IANA name)" }
                            input.input #schedule-timezone type="text" name="timezone" required maxlength="64" value=(settings.timezone.name()) placeholder="UTC";
                            p.text-xs.text-slate-600.mt-1 { "The presets and the retention periods (days, weeks, months) follow it." }
                        }
                        button.btn.btn-primary type="submit" { "Save schedule" }
                    }
                    p.text-sm.mt-4 #next-slot {
                        @match next {
                            Some(at) => { "Next scheduled export: " (when(at, settings)) }
                            None => { "Scheduled exports are off." }
                        }
                    }
                    @if !slots.is_empty() {
                        h3.font-medium.mt-4.mb-1 { "Recent slots" }
                        ul.text-sm.space-y-1 {
                            @for (_, slot, finished, outcome) in slots {
                                li { (when(*slot, settings)) ": " (slot_summary(*finished, outcome.as_ref())) }
                            }
                        }
                    }
                }
            }
            section.card.mb-6 aria-labelledby="preview-h" {
                h2.text-lg.font-semibold.mb-2 #preview-h { "Retention preview (dry run)" }
                p.text-sm.text-slate-600.mb-4 {
                    "What the pruner would do now with the settings above. It runs hourly and after each scheduled export; "
                    code { "data-export prune --dry-run" } " prints the same."
                }
                @let any = plans.iter().any(|o| !o.decisions.is_empty());
                @if !any {
                    p.text-sm #preview-empty { "No completed scheduled exports yet." }
                } @else {
                    @if plan_orgs > plans.len() as i64 {
                        p.text-sm.mb-2 #preview-partial { "The first " (plans.len()) " of " (plan_orgs) " organizations with scheduled exports, by slug; " code { "data-export prune --dry-run" } " prints them all." }
                    }
                    div.overflow-x-auto { table.table-basic.w-full #preview {
                        thead { tr { th { "Org" } th { "Export" } th { "Slot" } th { "Retention" } } }
                        tbody {
                            @for plan in plans {
                                @for d in &plan.decisions {
                                    tr {
                                        td { (plan.slug) }
                                        td { code { (d.id) } }
                                        td { (when(d.at, settings)) }
                                        td { @if d.is_kept() { (d.describe()) } @else { strong.text-red-800 { (d.describe()) } } }
                                    }
                                }
                            }
                        }
                    } }
                }
            }
            section.card.mb-6 aria-labelledby="failures-h" #recent-failures {
                h2.text-lg.font-semibold.mb-2 #failures-h { "Recent failed exports" }
                p.text-sm.mb-2 {
                    "The newest failures of every organization. Org admins see only the plain reason; the detail (bucket, endpoint, SQL) is for you and the log."
                }
                @if failures.is_empty() {
                    p.text-sm.text-slate-600 { "None." }
                } @else {
                    ul.text-sm {
                        @for (slug, run) in failures {
                            li.mb-2 data-run-id=(run.id) {
                                strong { (slug) } " · " (run.finished_at.map(|t| when(t, settings)).unwrap_or_default()) " · "
                                (run.error.as_deref().unwrap_or(""))
                                @if let Some(d) = run.error_detail.as_deref() {
                                    details data-error="detail" { summary { "Details" } pre.whitespace-pre-wrap.break-words.text-xs { (d) } }
                                }
                            }
                        }
                    }
                }
            }
            section.card aria-labelledby="board-h" {
                h2.text-lg.font-semibold.mb-2 #board-h { "Job board" }
                p.text-sm.mb-2 {
                    "The export, scheduler and pruner queues, on their own listener (BOARD_BIND). Only a platform admin's session reaches it."
                }
                a.btn.btn-secondary #board-link href=(routes::PLATFORM_BOARD) { "Open the job board" }
            }
        },
    )
}

/// GET: a redirect to the job board on its own listener (see [`AppState::board_url`]).
pub async fn board(_admin: PlatformAdmin, State(state): State<AppState>) -> Response {
    Redirect::to(&state.board_url()).into_response()
}

fn slot_summary(finished: Option<DateTime<Utc>>, outcome: Option<&serde_json::Value>) -> String {
    let Some(o) = outcome.filter(|_| finished.is_some()) else { return "claimed, not finished yet".to_string() };
    if let Some(reason) = o.get("reason").and_then(|r| r.as_str()) {
        return format!("skipped: {reason}");
    }
    let list = |key: &str| o.get(key).and_then(|v| v.as_array()).map(Vec::len).unwrap_or(0);
    format!("{} export(s) started, {} org(s) skipped", list("started"), list("skipped"))
}

fn storage_description(state: &AppState) -> String {
    match &state.config.storage {
        StorageSource::Embedded => {
            format!("{} (the embedded endpoint, data under DATA_DIR/storage)", state.storage.endpoint())
        }
        StorageSource::External(s3) => format!(
            "{} (region {}, {} addressing{})",
            s3.endpoint,
            s3.region,
            if s3.force_path_style { "path-style" } else { "virtual-host" },
            s3.public_endpoint.as_deref().map(|p| format!("; downloads via {p}")).unwrap_or_default()
        ),
    }
}

fn credentials_description(state: &AppState) -> &'static str {
    match &state.config.storage {
        StorageSource::Embedded => "Generated for this process (never shown).",
        StorageSource::External(_) => "From S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY (never shown).",
    }
}
