//! The page `/platform/imports`: the two ways to restore an org (a completed export
//! of any org, or an uploaded snapshot file), each in two steps (check, then
//! confirm the check's preview), and the import history, whose pending and running
//! rows poll themselves until they have finished.

use chrono::{DateTime, Utc};
use maud::{Markup, html};

use super::{
    engine::{Matched, Report},
    records::{Import, ImportStatus, MAX_NAME_CHARS},
};
use crate::{
    auth::csrf,
    exports::{
        runs::{CompletedRun, OrgWithExports},
        views::human_bytes,
    },
    routes,
    views::{PageCtx, layout::flash, page},
};

/// Imports shown in the history.
pub const HISTORY_LIMIT: i64 = 50;
/// Completed exports of the chosen org per page of the picker.
pub const EXPORT_PAGE: i64 = 20;

/// The export picker: the orgs with completed exports, the one chosen, and a page of
/// its completed exports, newest first.
pub struct Picker {
    pub orgs: Vec<OrgWithExports>,
    pub org: Option<String>,
    /// An org asked for that has no completed export (or does not exist).
    pub unknown_org: Option<String>,
    pub exports: Vec<CompletedRun>,
    /// The next (older) page's `before`, while older exports remain.
    pub older: Option<String>,
    /// This is not the first page.
    pub paged: bool,
}

/// What the forms show again after a refusal, and which form it was.
#[derive(Clone, Debug, Default)]
pub struct Typed {
    /// `export` or `upload`: the form the values belong to.
    pub form: &'static str,
    pub source_export_id: String,
    pub slug: String,
    pub name: String,
}

fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The whole page.
pub fn imports_page(
    ctx: &PageCtx,
    picker: &Picker,
    imports: &[Import],
    max_upload_bytes: u64,
    message: Option<(bool, &str)>,
    typed: &Typed,
) -> Markup {
    let export_form = if typed.form == "export" { typed.clone() } else { Typed::default() };
    let upload_form = if typed.form == "upload" { typed.clone() } else { Typed::default() };
    // A multipart body is not read for the token: it rides in the query string.
    let upload_action = format!("{}?{}={}", routes::PLATFORM_IMPORT_UPLOAD, csrf::FIELD, url_escape(&ctx.csrf));
    page(
        ctx,
        "Restore an organization",
        html! {
            @if let Some((ok, msg)) = message { div.mb-6 #import-notice { (flash(ok, msg)) } }
            p.text-slate-600.mb-6 {
                "Load an org snapshot back into a new organization: every section's rows with new ids, people matched to existing accounts by email (others get accounts that cannot sign in), all or nothing. "
                "It takes two steps: Check reads the whole file and shows who would get in, with which role; nothing is written until you confirm that preview. "
                "People matched from a file that is not a recorded export of this platform, and people no longer active members of the source org, join suspended until a platform admin activates them. "
                "The history below updates by itself."
            }
            div.grid.grid-cols-1.md:grid-cols-2.gap-6.mb-6 {
                section.card aria-labelledby="from-export-h" {
                    h2.text-lg.font-semibold.mb-2 #from-export-h { "From a completed export" }
                    p.text-sm.text-slate-600.mb-4 {
                        "Any org's export on this platform. Its SHA-256 is checked, and the documents' files are copied to the new org's bucket."
                    }
                    @if picker.orgs.is_empty() {
                        p.text-sm #no-exports { "No completed exports yet." }
                    } @else {
                        (export_picker(ctx, picker, &export_form))
                    }
                }
                section.card aria-labelledby="from-upload-h" {
                    h2.text-lg.font-semibold.mb-2 #from-upload-h { "From a snapshot file" }
                    p.text-sm.text-slate-600.mb-4 {
                        "A " code { ".json.gz" } " as downloaded from Backups & Export or written by " code { "data-export export --out" }
                        ", at most " (limit_text(max_upload_bytes)) ". The documents' files are copied only when the file is an export of this platform (same id and SHA-256). The file is deleted once the import has finished."
                    }
                    form.space-y-3 method="post" action=(upload_action) enctype="multipart/form-data" {
                        (target_fields("upload", &upload_form))
                        div {
                            label.label for="import-file" { "Snapshot file (.json.gz)" }
                            input.input #import-file type="file" name="file" required accept=".gz,.json.gz,application/gzip";
                        }
                        button.btn.btn-primary type="submit" { "Upload and check" }
                    }
                }
            }
            section.card aria-labelledby="imports-h" {
                h2.text-lg.font-semibold.mb-2 #imports-h { "Import history" }
                (history(imports, &ctx.csrf))
            }
        },
    )
}

/// Step one of a restore from an export: the org (a GET form), then a page of its
/// completed exports, newest first, with dates and sizes, and the new org's fields.
fn export_picker(ctx: &PageCtx, picker: &Picker, typed: &Typed) -> Markup {
    let page_of = |before: Option<&str>| {
        let org = url_escape(picker.org.as_deref().unwrap_or_default());
        match before {
            Some(b) => format!("{}?org={org}&before={}#from-export-h", routes::PLATFORM_IMPORTS, url_escape(b)),
            None => format!("{}?org={org}#from-export-h", routes::PLATFORM_IMPORTS),
        }
    };
    html! {
        form.flex.flex-wrap.items-end.gap-2.mb-4 method="get" action=(routes::PLATFORM_IMPORTS) {
            div.grow {
                label.label for="import-org" { "Organization" }
                select.input #import-org name="org" {
                    @for o in &picker.orgs {
                        option value=(o.slug) selected[picker.org.as_deref() == Some(o.slug.as_str())] {
                            (o.name) " (" (o.slug) "), " (o.completed) " completed"
                        }
                    }
                }
            }
            button.btn.btn-secondary type="submit" { "Show its exports" }
        }
        @if let Some(asked) = &picker.unknown_org {
            p.text-sm.text-red-700.mb-2 { "No org " code { (asked) } " with completed exports; choose one above." }
        }
        @if picker.org.is_some() {
            @if picker.exports.is_empty() {
                p.text-sm.mb-2 #no-exports { "No older completed exports." }
            } @else {
                form.space-y-3 method="post" action=(routes::PLATFORM_IMPORTS) {
                    (ctx.csrf_field())
                    fieldset {
                        legend.label { "Completed export, newest first" }
                        ul.space-y-1.text-sm #import-exports {
                            @for (i, run) in picker.exports.iter().enumerate() {
                                li { label.flex.items-start.gap-2 {
                                    input type="radio" name="source_export_id" value=(run.id) required
                                        checked[run.id == typed.source_export_id || (typed.source_export_id.is_empty() && i == 0)];
                                    span {
                                        @match run.finished_at { Some(at) => (when(at)), None => "(no date)" }
                                        @if let Some(n) = run.size_bytes { ", " (human_bytes(n)) }
                                        br; code.text-xs.break-all.text-slate-600 { (run.id) }
                                    }
                                } }
                            }
                        }
                    }
                    div.flex.gap-4.text-sm {
                        @if picker.paged { a.text-blue-700.hover:underline href=(page_of(None)) { "Newest" } }
                        @if let Some(older) = &picker.older {
                            a.text-blue-700.hover:underline href=(page_of(Some(older))) { "Older exports" }
                        }
                    }
                    (target_fields("export", typed))
                    button.btn.btn-primary type="submit" { "Check" }
                }
            }
        }
    }
}

/// The slug and name fields of a form (`prefix` keeps the two forms' ids apart).
fn target_fields(prefix: &str, typed: &Typed) -> Markup {
    html! {
        div {
            label.label for=(format!("{prefix}-slug")) { "New org's slug" }
            input.input #(format!("{prefix}-slug")) type="text" name="slug" required minlength="3" maxlength="40"
                pattern="[a-z0-9][a-z0-9-]{1,38}[a-z0-9]" value=(typed.slug) placeholder="acme-restored";
            p.text-xs.text-slate-600.mt-1 { "3 to 40 of a-z, 0-9 and '-'; no org may have it yet." }
        }
        div {
            label.label for=(format!("{prefix}-name")) { "New org's name" }
            input.input #(format!("{prefix}-name")) type="text" name="name" required maxlength=(MAX_NAME_CHARS) value=(typed.name);
        }
    }
}

/// Percent-encodes everything but unreserved characters (the CSRF token is
/// URL-safe base64 already; this keeps the URL right whatever it holds).
fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The upload limit as people write it: `4 GiB`, `512 MiB`, else `1.2 MB`.
pub fn limit_text(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    match bytes {
        b if b % (1024 * MIB) == 0 => format!("{} GiB", b / (1024 * MIB)),
        b if b % MIB == 0 => format!("{} MiB", b / MIB),
        b => human_bytes(i64::try_from(b).unwrap_or(i64::MAX)),
    }
}

/// The history table.
pub fn history(imports: &[Import], csrf: &str) -> Markup {
    html! {
        div #imports aria-live="polite" {
            @if imports.is_empty() {
                p.text-slate-600 { "No imports yet." }
            } @else {
                div.overflow-x-auto { table.table-basic.table-stack.w-full {
                    thead { tr {
                        th scope="col" { "Status" } th scope="col" { "New org" } th scope="col" { "Source" }
                        th scope="col" { "Requested" } th scope="col" { "Report" }
                    } }
                    tbody { @for import in imports { (row(import, csrf)) } }
                } }
            }
        }
    }
}

/// One import's row. While it is pending or running it replaces itself every 2 s
/// with a fresh copy, and stops once the import has finished. A completed check
/// shows its preview and, while it can be confirmed, the Confirm button (`csrf` is
/// the form's token).
pub fn row(import: &Import, csrf: &str) -> Markup {
    let poll = import.is_active().then(|| routes::path(routes::PLATFORM_IMPORT_ROW, "", Some(&import.id)));
    let duration = match (import.started_at, import.finished_at) {
        (Some(s), Some(f)) => Some((f - s).num_milliseconds() as f64 / 1000.0),
        _ => None,
    };
    html! {
        tr data-import-id=(import.id) data-status=(import.status.as_str()) data-kind=(import.kind())
            hx-get=[poll.as_deref()] hx-trigger=[poll.is_some().then_some("every 2s")]
            hx-target=[poll.is_some().then_some("this")] hx-swap=[poll.is_some().then_some("outerHTML")] {
            td data-label="Status" { div {
                span class=(format!("badge badge-{}", import.status)) {
                    @if import.dry_run && import.status == ImportStatus::Completed { "checked" } @else { (import.status.as_str()) }
                }
                @if let Some(step) = import.running_step() { br; span.text-xs.text-slate-600.import-step { (step) } }
                @if import.dry_run { br; span.text-xs.text-slate-600 { "check" } }
                @if let Some(check) = &import.check_id { br; span.text-xs.text-slate-600 { "confirms " code.break-all { (check) } } }
                @if let Some(e) = import.error.as_deref().filter(|_| import.status == ImportStatus::Failed) {
                    p.text-xs.text-red-700.mt-1.import-error { (e) }
                }
            } }
            td data-label="New org" { div {
                @match import.restored_org.as_deref().filter(|_| import.status == ImportStatus::Completed) {
                    // Plain text: the org's pages are for its members, which the
                    // platform admin may not be.
                    Some(slug) => span.font-medium.restored-org { (slug) },
                    None => span { (import.slug) },
                }
                br; span.text-xs.text-slate-600 { (import.name) }
            } }
            td data-label="Source" { div {
                @match (&import.source_export_id, import.upload_bytes) {
                    (Some(id), _) => {
                        "Export"
                        @if let Some(org) = &import.source_org { " of " (org) }
                        br; code.text-xs.break-all { (id) }
                    }
                    (None, Some(n)) => { "Uploaded file, " span.whitespace-nowrap { (human_bytes(n)) } }
                    (None, None) => { "Uploaded file" }
                }
            } }
            td data-label="Requested" { div {
                time datetime=(import.created_at.to_rfc3339()) { (when(import.created_at)) }
                br; span.text-xs.text-slate-600 {
                    "by " (import.requested_by_email.as_deref().unwrap_or("(removed)")) " via " (import.via.as_str())
                }
                @if let Some(s) = duration { br; span.text-xs.text-slate-600 { "took " (format!("{s:.1} s")) } }
            } }
            td data-label="Report" {
                @if import.status == ImportStatus::Completed {
                    @match import.report() {
                        Some(report) if import.dry_run => (preview(import, &report, csrf)),
                        Some(report) => (report_summary(&report)),
                        None => span.text-xs { "Restored (no report was recorded)." },
                    }
                }
            }
        }
    }
}

/// Matched accounts listed in full on the page; the report has them all.
const MATCHED_SHOWN: usize = 200;

/// A completed check: what the import would do, who the file matches (admins and
/// platform admins first and marked), and the Confirm button while it can be
/// confirmed.
fn preview(import: &Import, r: &Report, csrf: &str) -> Markup {
    let admins: Vec<&Matched> =
        r.matched.iter().filter(|m| m.platform_admin || m.role.as_deref() == Some("admin")).collect();
    let confirm = routes::path(routes::PLATFORM_IMPORT_CONFIRM, "", Some(&import.id));
    html! {
        div.import-preview {
            ul.text-xs.space-y-1 {
                li { "Would restore " (r.rows) " rows in " (r.sections.len()) " sections" }
                li { "People: " (r.matched.len()) " existing accounts matched, " (r.users_created) " would be created (they cannot sign in)" }
                li.font-semibold { (r.users_suspended) " matched accounts would join suspended" }
                @if !r.source.recorded_run {
                    li.text-red-800 { "Not a recorded export of this platform: every matched account joins suspended." }
                }
            }
            @if !admins.is_empty() {
                p.text-xs.font-semibold.mt-2 { "Admins the file names" }
                ul.text-xs.import-admins { @for m in &admins { li { (matched_line(m)) } } }
            }
            @if !r.matched.is_empty() {
                details.text-xs.mt-2 {
                    summary { "Every matched account (" (r.matched.len()) ")" }
                    ul.import-matched { @for m in r.matched.iter().take(MATCHED_SHOWN) { li { (matched_line(m)) } } }
                    @if r.matched.len() > MATCHED_SHOWN { p { "… and " (r.matched.len() - MATCHED_SHOWN) " more (all in the API's report)." } }
                }
            }
            @match (&import.confirmed_by, import.unconfirmable()) {
                (Some(by), _) => p.text-xs.mt-2 { "Confirmed: import " code.break-all { (by) } },
                (None, Some(why)) => p.text-xs.mt-2.text-slate-600 { (why) },
                (None, None) => form.mt-2 method="post" action=(confirm) {
                    (crate::auth::csrf::hidden_field(csrf))
                    button.btn.btn-primary.text-sm type="submit" { "Confirm restore into " (import.slug) }
                },
            }
        }
    }
}

/// One matched account: email, role, membership, and a platform admin's mark.
fn matched_line(m: &Matched) -> Markup {
    html! {
        span.break-all { (m.email) }
        " — " (m.role.as_deref().unwrap_or("no membership"))
        @if let Some(status) = &m.membership { ", " (status) }
        @if m.platform_admin { " " span.badge.badge-failed { "platform admin" } }
        @else if m.role.as_deref() == Some("admin") { " " span.badge.badge-running { "org admin" } }
    }
}

/// What a completed import did, in a few lines.
fn report_summary(r: &Report) -> Markup {
    let media = &r.media;
    html! {
        ul.text-xs.space-y-1.import-report {
            li { (r.rows) " rows in " (r.sections.len()) " sections" }
            li { "People: " (r.users_matched) " matched, " (r.users_created) " created, " (r.users_without_profile) " without a profile" }
            @if r.users_suspended > 0 {
                li { (r.users_suspended) " joined suspended (activate: data-export activate --org " (r.org) ")" }
            }
            @if r.user_references_cleared > 0 {
                li { (r.user_references_cleared) " references to people without a profile cleared" }
            }
            li {
                "Media: "
                @match &media.not_copied {
                    Some(why) => { "not copied (" (why) ")" }
                    None => { (media.copied) " copied, " (media.missing) " missing" }
                }
            }
            @if !media.missing_keys.is_empty() {
                li.text-red-700.break-all {
                    "Missing: " (media.missing_keys.iter().take(3).cloned().collect::<Vec<_>>().join(", "))
                    @if media.missing_keys.len() > 3 { ", …" }
                }
            }
            @if r.source.recorded_run {
                li { "The file's SHA-256 matched its export's." }
            }
        }
    }
}

/// The message for `?notice=...` after a redirect.
pub fn notice_text(code: Option<&str>) -> Option<(bool, &'static str)> {
    match code? {
        "requested" => Some((
            true,
            "Check started: nothing is written until you confirm its preview. The history below updates by itself.",
        )),
        "uploaded" => Some((
            true,
            "File uploaded and check started: nothing is written until you confirm its preview. The history below updates by itself.",
        )),
        "confirmed" => Some((true, "Restore confirmed and started. The history below updates by itself.")),
        _ => None,
    }
}
