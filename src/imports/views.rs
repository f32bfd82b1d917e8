//! The page `/platform/imports`: the two ways to restore an org (a completed export
//! of any org, or an uploaded snapshot file) and the import history, whose pending
//! and running rows poll themselves until the import has finished.

use chrono::{DateTime, Utc};
use maud::{Markup, html};

use super::{
    engine::Report,
    records::{Import, ImportStatus, MAX_NAME_CHARS},
};
use crate::{
    auth::csrf,
    exports::{runs::CompletedRun, views::human_bytes},
    routes,
    views::{PageCtx, layout::flash, page},
};

/// Imports shown in the history.
pub const HISTORY_LIMIT: i64 = 50;
/// Completed exports offered as a source.
pub const EXPORT_CHOICES: i64 = 100;

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
    exports: &[CompletedRun],
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
                "It runs in the background; the history below updates by itself and shows the report when it is done."
            }
            div.grid.grid-cols-1.md:grid-cols-2.gap-6.mb-6 {
                section.card aria-labelledby="from-export-h" {
                    h2.text-lg.font-semibold.mb-2 #from-export-h { "From a completed export" }
                    p.text-sm.text-slate-600.mb-4 {
                        "Any org's export on this platform. Its SHA-256 is checked, and the documents' files are copied to the new org's bucket."
                    }
                    @if exports.is_empty() {
                        p.text-sm #no-exports { "No completed exports yet." }
                    } @else {
                        form.space-y-3 method="post" action=(routes::PLATFORM_IMPORTS) {
                            (ctx.csrf_field())
                            div {
                                label.label for="import-export" { "Export" }
                                select.input #import-export name="source_export_id" required {
                                    @for run in exports {
                                        option value=(run.id) selected[run.id == export_form.source_export_id] {
                                            (run.org_name) " (" (run.org_slug) "): " (run.id)
                                            @if let Some(at) = run.finished_at { ", " (when(at)) }
                                            @if let Some(n) = run.size_bytes { ", " (human_bytes(n)) }
                                        }
                                    }
                                }
                            }
                            (target_fields("export", &export_form))
                            button.btn.btn-primary type="submit" { "Restore" }
                        }
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
                        button.btn.btn-primary type="submit" { "Upload and restore" }
                    }
                }
            }
            section.card aria-labelledby="imports-h" {
                h2.text-lg.font-semibold.mb-2 #imports-h { "Import history" }
                (history(imports))
            }
        },
    )
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
pub fn history(imports: &[Import]) -> Markup {
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
                    tbody { @for import in imports { (row(import)) } }
                } }
            }
        }
    }
}

/// One import's row. While it is pending or running it replaces itself every 2 s
/// with a fresh copy, and stops once the import has finished.
pub fn row(import: &Import) -> Markup {
    let poll = import.is_active().then(|| routes::path(routes::PLATFORM_IMPORT_ROW, "", Some(&import.id)));
    let duration = match (import.started_at, import.finished_at) {
        (Some(s), Some(f)) => Some((f - s).num_milliseconds() as f64 / 1000.0),
        _ => None,
    };
    html! {
        tr data-import-id=(import.id) data-status=(import.status.as_str())
            hx-get=[poll.as_deref()] hx-trigger=[poll.is_some().then_some("every 2s")]
            hx-target=[poll.is_some().then_some("this")] hx-swap=[poll.is_some().then_some("outerHTML")] {
            td data-label="Status" { div {
                span class=(format!("badge badge-{}", import.status)) { (import.status.as_str()) }
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
                        Some(report) => (report_summary(&report)),
                        None => span.text-xs { "Restored (no report was recorded)." },
                    }
                }
            }
        }
    }
}

/// What a completed import did, in a few lines.
fn report_summary(r: &Report) -> Markup {
    let media = &r.media;
    html! {
        ul.text-xs.space-y-1.import-report {
            li { (r.rows) " rows in " (r.sections.len()) " sections" }
            li { "People: " (r.users_matched) " matched, " (r.users_created) " created, " (r.users_without_profile) " without a profile" }
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
        "requested" => Some((true, "Import started. The history below updates by itself.")),
        "uploaded" => Some((true, "File uploaded and import started. The history below updates by itself.")),
        _ => None,
    }
}
