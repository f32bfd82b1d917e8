//! The Backups & Export page and its live Export History fragment.

use maud::{Markup, html};

use super::runs::{Page, Run, RunStatus};
use crate::{
    routes,
    tables::{
        Format,
        records::{Tables, TablesStatus},
    },
    views::PageCtx,
};

/// Rows shown in the history.
pub const HISTORY_LIMIT: i64 = 50;

/// The whole page.
pub fn backups_page(
    ctx: &PageCtx,
    org_name: &str,
    ready: bool,
    page: &Page,
    message: Option<(bool, &str)>,
    viewer: Viewer<'_>,
    version: i64,
) -> Markup {
    let org_slug = viewer.org_slug;
    crate::views::page(
        ctx,
        &format!("{org_name}: Backups & Export"),
        html! {
            section.card.mb-6 {
                h2.text-lg.font-semibold.mb-2 { "Export all data" }
                p.text-slate-600.mb-4 {
                    "One gzipped JSON snapshot of everything this organization holds, read at a single instant and written to its own storage bucket. "
                    "Media files are not copied; documents are listed with their storage keys."
                }
                @if !viewer.on {
                    div.flash-error role="status" #data-export-off {
                        "Data Export is switched off for this organization, so no new export can start. The exports below stay: you can still download or delete them. "
                        a.underline href=(routes::org_modules(org_slug)) { "Switch it on again under Modules." }
                    }
                } @else {
                    @if !ready {
                        div.flash-error role="alert" {
                            "Exports are paused: the platform's backup configuration is not active and verified. A platform admin must verify it first."
                        }
                    }
                    form method="post" action=(routes::path(routes::ORG_EXPORTS, org_slug, None))
                        hx-post=(routes::path(routes::ORG_EXPORTS, org_slug, None)) hx-target="#history" hx-swap="outerHTML" {
                        (ctx.csrf_field())
                        button.btn.btn-primary type="submit" disabled[!ready] { "Trigger export" }
                    }
                }
            }
            section {
                h2.text-lg.font-semibold.mb-2 { "Export History" }
                (history(viewer, page, message, version))
            }
        },
    )
}

/// Who looks at the history, and which page of it: what every row needs.
#[derive(Clone, Copy, Debug)]
pub struct Viewer<'a> {
    pub csrf: &'a str,
    pub org_slug: &'a str,
    /// A platform admin: a failed run also shows its whole error chain.
    pub detail: bool,
    /// The page shown holds the runs older than this one (none: the newest). The
    /// rows' actions keep it, so that their answer is the same page.
    pub before: Option<&'a str>,
    /// Data Export is on: new exports and verifications may start. Off, the page
    /// still lists, downloads, deletes and cancels the existing ones.
    pub on: bool,
}

impl Viewer<'_> {
    /// `path` of the org, with this page's `before` when it is not the first.
    fn on_this_page(&self, route: &str, id: Option<&str>) -> String {
        let path = routes::path(route, self.org_slug, id);
        match self.before {
            Some(before) => format!("{path}?before={before}"),
            None => path,
        }
    }
}

/// The history fragment: one page of runs, newest first, with "Older" while older
/// runs remain (keyset paging: `?before=` the last run shown) and "Newest" on any
/// page but the first. The rows' forms inherit `hx-target`/`hx-swap` from it, so an
/// action answers with the whole refreshed page.
///
/// It stays live in two ways. Each pending or running row polls its own URL for
/// its progress (see [`row`]). And the fragment itself asks every 2 s whether the
/// org's history changed since `version` (a run created anywhere, deleted, or
/// moved on): the answer is 204 with no body while nothing did, else this fragment
/// again, which htmx swaps in.
pub fn history(viewer: Viewer<'_>, page: &Page, message: Option<(bool, &str)>, version: i64) -> Markup {
    let backups = routes::path(routes::ORG_BACKUPS, viewer.org_slug, None);
    let fragment = routes::path(routes::ORG_EXPORT_HISTORY, viewer.org_slug, None);
    let poll = match viewer.before {
        Some(before) => format!("{fragment}?since={version}&before={before}"),
        None => format!("{fragment}?since={version}"),
    };
    html! {
        div #history hx-target="#history" hx-swap="outerHTML" aria-live="polite" data-before=[viewer.before]
            data-version=(version) hx-get=(poll) hx-trigger="every 2s" {
            @if let Some((ok, msg)) = message { (crate::views::layout::flash(ok, msg)) }
            @if page.runs.is_empty() {
                p.text-slate-600 { @if viewer.before.is_some() { "No older exports." } @else { "No exports yet." } }
            } @else {
                // No sideways scrolling at any width: the cells wrap, and below `lg` each
                // row is a card whose cells are labelled by `data-label` (see
                // `.table-stack` in assets/input.css).
                div.overflow-x-auto { table.table-basic.table-stack.w-full {
                    thead { tr {
                        th scope="col" { "Status" } th scope="col" { "Trigger" } th scope="col" { "By" }
                        th scope="col" { "Requested" } th scope="col" { "Duration" } th scope="col" { "Size" }
                        th scope="col" { "Rows" } th scope="col" { span.sr-only { "Actions" } }
                    } }
                    tbody {
                        @for run in &page.runs { (row(viewer, run, &page.tables)) }
                    }
                } }
            }
            @if viewer.before.is_some() || page.next.is_some() {
                nav.flex.gap-2.mt-3 aria-label="Export History pages" {
                    @if viewer.before.is_some() {
                        a.btn.btn-secondary #history-newest href=(backups) hx-get=(fragment) hx-push-url=(backups) { "Newest" }
                    }
                    @if let Some(next) = &page.next {
                        @let older = format!("{backups}?before={next}");
                        a.btn.btn-secondary #history-older href=(older) hx-get=(format!("{fragment}?before={next}")) hx-push-url=(older) { "Older" }
                    }
                }
            }
        }
    }
}

/// One run's row. While the run is pending or running the row replaces itself with
/// a fresh copy every 2 s, and stops once the run has finished: a poll is one row,
/// not the whole history.
/// `tables` may hold other runs' conversions: the row shows its own. A completed
/// export offers its tables (CSV, Parquet), and polls while one is being made.
pub fn row(viewer: Viewer<'_>, run: &Run, tables: &[Tables]) -> Markup {
    let Viewer { csrf, org_slug, detail, .. } = viewer;
    let badge = format!("badge badge-{}", run.status);
    let own: Vec<&Tables> = tables.iter().filter(|t| t.export_id == run.id).collect();
    let converting = own.iter().any(|t| t.status.is_active());
    let poll = (run.is_active() || converting).then(|| routes::path(routes::ORG_EXPORT_ROW, org_slug, Some(&run.id)));
    html! {
        tr data-export-id=(run.id) data-status=(run.status.as_str())
            hx-get=[poll.as_deref()] hx-trigger=[poll.is_some().then_some("every 2s")] hx-target=[poll.is_some().then_some("this")] {
            td data-label="Status" { div {
                span class=(badge) { (run.status.as_str()) }
                @if run.status == RunStatus::Running {
                    @if let Some(p) = run.progress() {
                        div.progress.mt-1 role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow=(format!("{:.0}", p * 100.0)) {
                            // Width in steps of 5 % from classes, since the CSP forbids inline styles.
                            div class=(format!("progress-bar w-pct-{}", ((p * 20.0).floor() as u32) * 5)) {}
                        }
                        span.text-xs.text-slate-600 { (format!("{:.0}%", p * 100.0)) }
                    }
                }
                @if let Some(e) = run.error.as_deref().filter(|_| run.status == RunStatus::Failed) {
                    p.text-xs.text-red-700.mt-1 data-error="reason" { (e) }
                    @if let Some(d) = run.error_detail.as_deref().filter(|d| detail && *d != e) {
                        details.text-xs.mt-1 data-error="detail" {
                            summary { "Details (platform admins)" }
                            pre.whitespace-pre-wrap.break-words { (d) }
                        }
                    }
                }
                @if let Some(at) = run.verified_at.filter(|_| run.status == RunStatus::Completed) {
                    @match run.verify_error.as_deref() {
                        None => p.text-xs.text-green-700.mt-1 data-verified="ok" { "Verified " (at.format("%Y-%m-%d %H:%M UTC")) },
                        Some(e) => p.text-xs.text-red-700.mt-1 data-verified="failed" { "Verification failed: " (e) },
                    }
                }
            } }
            td data-label="Trigger" { (run.trigger.as_str()) }
            td data-label="By" { (run.triggered_by_email.as_deref().unwrap_or("schedule")) }
            td data-label="Requested" { time datetime=(run.created_at.to_rfc3339()) { (run.created_at.format("%Y-%m-%d %H:%M:%S UTC")) } }
            // Short values stay whole; an empty cell stays empty (a card leaves it out).
            td data-label="Duration" { @if let Some(s) = run.duration_secs() { span.whitespace-nowrap { (format!("{s:.1} s")) } } }
            td data-label="Size" { @if let Some(n) = run.size_bytes { span.whitespace-nowrap { (human_bytes(n)) } } }
            td data-label="Rows" { @if let Some(n) = run.rows_total { span.whitespace-nowrap { (n) } } }
            // The actions wrap onto more lines rather than push the table wider.
            td {
                @if run.is_active() {
                    form method="post" action=(viewer.on_this_page(routes::ORG_EXPORT_CANCEL, Some(&run.id)))
                        hx-post=(viewer.on_this_page(routes::ORG_EXPORT_CANCEL, Some(&run.id))) hx-target="#history" hx-swap="outerHTML"
                        hx-confirm="Cancel this export? It stops and ends as failed." {
                        (crate::auth::csrf::hidden_field(csrf))
                        button.btn.btn-secondary type="submit" { "Cancel" }
                    }
                }
                @if run.status == RunStatus::Completed {
                    div.flex.flex-wrap.items-center.gap-2 {
                        a.btn.btn-secondary href=(routes::path(routes::ORG_EXPORT_DOWNLOAD, org_slug, Some(&run.id))) rel="noreferrer" { "Download" }
                        form method="post" action=(viewer.on_this_page(routes::ORG_EXPORT_DELETE, Some(&run.id)))
                            hx-post=(viewer.on_this_page(routes::ORG_EXPORT_DELETE, Some(&run.id)))
                            hx-confirm="Delete this export's file? This cannot be undone." {
                            (crate::auth::csrf::hidden_field(csrf))
                            button.btn.btn-danger type="submit" { "Delete" }
                        }
                        @for format in Format::ALL {
                            (tables_action(viewer, run, format, own.iter().copied().find(|t| t.format() == format)))
                        }
                        @if viewer.on {
                            form method="post" action=(viewer.on_this_page(routes::ORG_EXPORT_VERIFY, Some(&run.id)))
                                hx-post=(viewer.on_this_page(routes::ORG_EXPORT_VERIFY, Some(&run.id))) {
                                (crate::auth::csrf::hidden_field(csrf))
                                button.btn.btn-secondary type="submit" title="Re-read the file and check its gzip, schema, counts and SHA-256" { "Verify" }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A completed export's tables in one format: a button that asks for them, their
/// progress while they are made, their download once made, or why they failed with a
/// button that tries again.
fn tables_action(viewer: Viewer<'_>, run: &Run, format: Format, tables: Option<&Tables>) -> Markup {
    let path = routes::path(routes::ORG_EXPORT_TABLES, viewer.org_slug, Some(&run.id));
    let request = routes::with_format(&path, format.as_str());
    let action = match viewer.before {
        Some(before) => format!("{request}?before={before}"),
        None => request,
    };
    let download = routes::with_format(
        &routes::path(routes::ORG_EXPORT_TABLES_DOWNLOAD, viewer.org_slug, Some(&run.id)),
        format.as_str(),
    );
    let ask = |label: String| {
        html! {
            form method="post" action=(action) hx-post=(action) data-tables=(format.as_str()) {
                (crate::auth::csrf::hidden_field(viewer.csrf))
                button.btn.btn-secondary type="submit" title="Made once, then kept beside the export until it is deleted" { (label) }
            }
        }
    };
    match tables {
        None => ask(format!("Download as {}", format.label())),
        Some(t) if t.status == TablesStatus::Completed => html! {
            a.btn.btn-secondary href=(download) rel="noreferrer" data-tables=(format.as_str()) data-status="completed" {
                "Download as " (format.label())
                @if let Some(n) = t.size_bytes { " (" (human_bytes(n)) ")" }
            }
        },
        Some(t) if t.status.is_active() => html! {
            span.text-xs.text-slate-600.whitespace-nowrap data-tables=(format.as_str()) data-status=(t.status.as_str()) {
                (format.as_str().to_uppercase()) " tables: " (t.status.as_str())
                @if let Some(p) = t.progress().filter(|_| t.status == TablesStatus::Running) { " " (format!("{:.0}%", p * 100.0)) }
            }
        },
        Some(t) => html! {
            div data-tables=(format.as_str()) data-status="failed" {
                (ask(format!("Try {} again", format.label())))
                @if let Some(e) = t.error.as_deref() {
                    p.text-xs.text-red-700.mt-1 data-error="tables" { (format.as_str().to_uppercase()) " tables failed: " (e) }
                }
            }
        },
    }
}

/// `1.2 MB` style sizes (kept here for the pages that import it from the history).
pub use crate::web::format::human_bytes;
