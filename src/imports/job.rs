//! The import job (queue `imports`): takes the record, opens its source as a stream
//! (a completed export's object in its org's bucket, or the uploaded file in the
//! platform bucket), runs the engine on it, and records the outcome. The engine is
//! all or nothing, so a rerun after a crashed worker is safe; bad input is not
//! retried. A check (`dry_run`) runs the engine as a dry run and records its
//! report; a confirmation runs it for real, held to its check's report. Once an
//! import has finished either way (or a check has failed, or can no longer be
//! confirmed), the uploaded file is deleted.

use apalis::prelude::BoxDynError;
use tokio_util::io::SyncIoBridge;

use super::{
    engine::{self, ImportError, Request},
    records::{self, Import, Via},
};
use crate::{exports::runs, jobs, state::AppState};

// The job's arguments live with the record they name (`records::ImportJob`, which
// the record's creation pushes in its transaction); its handler lives here.
pub use super::records::ImportJob;

impl jobs::Job for ImportJob {
    const QUEUE: &'static str = "imports";
    type Context = ();

    async fn run(self, state: AppState, _: (), attempt: usize) -> Result<(), BoxDynError> {
        let attempt = i32::try_from(attempt).unwrap_or(i32::MAX);
        let span = tracing::info_span!("import", import_id = %self.id, attempt);
        let body = tracing::Instrument::instrument(run(state, self.id, attempt), span);
        jobs::on_own_task(body).await??;
        Ok(())
    }
}

/// One attempt. An error is returned only when the outcome could not be recorded
/// (the job is then retried, and the record taken over by the next attempt).
async fn run(state: AppState, id: String, attempt: i32) -> anyhow::Result<()> {
    let Some(import) = records::start(&state.pool, &id, attempt).await? else {
        tracing::info!("the import has finished or a later attempt holds it; nothing to do");
        return Ok(());
    };
    let outcome = import_once(&state, &import, attempt).await;
    let marked = match &outcome {
        // The engine marked the record completed in the transaction that made the org.
        Outcome::Completed => true,
        Outcome::Checked(report) => records::complete_check(&state.pool, &id, attempt, report).await?,
        Outcome::Failed(reason) => records::fail(&state.pool, &id, Some(attempt), reason).await?,
    };
    if !marked {
        tracing::warn!("a later attempt took the import over; this attempt's outcome is not recorded");
        return Ok(());
    }
    // A completed check's upload is what its confirmation reads: it stays until a
    // confirmation completes (a failed one leaves the check to be confirmed again),
    // or until the check can no longer be confirmed (see `sweep_abandoned`).
    let confirmable_again = import.check_id.is_some() && matches!(outcome, Outcome::Failed(_));
    if !matches!(outcome, Outcome::Checked(_)) && !confirmable_again {
        remove_upload(&state, &import).await;
    }
    Ok(())
}

/// How an attempt ended.
enum Outcome {
    /// The org exists and its record says completed (one transaction).
    Completed,
    /// A check's dry run: what the import would do, to be recorded.
    Checked(Box<engine::Report>),
    /// The reason shown on the page and in the API.
    Failed(String),
}

async fn import_once(state: &AppState, import: &Import, attempt: i32) -> Outcome {
    let (bucket, key) = match locate_source(state, import).await {
        Ok(found) => found,
        Err(Refused(reason)) => return Outcome::Failed(reason),
    };
    let stream = match state.storage.read(&bucket, &key).await {
        Ok(Some(stream)) => stream,
        Ok(None) => return Outcome::Failed(format!("the snapshot file {bucket}/{key} is not in storage")),
        Err(e) => return Outcome::Failed(Refused::from(e).0),
    };
    // The engine reads on a blocking thread of its own.
    let input = SyncIoBridge::new(stream);
    let expect = match expected(state, import).await {
        Ok(e) => e,
        Err(Refused(reason)) => return Outcome::Failed(reason),
    };
    let request = Request {
        slug: import.slug.clone(),
        name: Some(import.name.clone()),
        dry_run: import.dry_run,
        actor: import.requested_by,
        via: match import.via {
            Via::Ui => "ui",
            Via::Api => "api",
        },
        source_export_id: import.source_export_id.clone(),
        import_id: Some(import.id.clone()),
        attempt,
        expect,
    };
    match engine::import(state, input, request).await {
        Ok(report) if import.dry_run => {
            tracing::info!(rows = report.rows, matched = report.matched.len(), "import checked");
            Outcome::Checked(Box::new(report))
        }
        Ok(report) => {
            tracing::info!(org = %report.org, rows = report.rows, seconds = report.seconds, "import completed");
            Outcome::Completed
        }
        Err(ImportError::Rejected(reason)) => {
            tracing::info!(reason, "import refused");
            Outcome::Failed(reason)
        }
        Err(ImportError::Failed(e)) => {
            tracing::error!(error = format!("{e:#}"), "import failed");
            let first = e.to_string();
            let first = first.lines().next().unwrap_or("unknown error");
            Outcome::Failed(format!("the import failed: {first}"))
        }
    }
}

/// For a confirmation: what its check reported, which the engine holds the import to.
async fn expected(state: &AppState, import: &Import) -> Result<Option<engine::Expected>, Refused> {
    let Some(check_id) = &import.check_id else { return Ok(None) };
    let check = records::get(&state.pool, check_id).await?;
    let Some(report) = check.as_ref().and_then(Import::report) else {
        return Err(Refused(format!("check {check_id} has no report to confirm")));
    };
    Ok(Some(engine::Expected { sha256: report.source.sha256, matched: report.matched }))
}

/// Why the source could not be opened, for the record.
struct Refused(String);

impl From<anyhow::Error> for Refused {
    fn from(e: anyhow::Error) -> Self {
        tracing::error!(error = format!("{e:#}"), "cannot open the import's source");
        Refused(format!("the snapshot could not be read from storage: {e}"))
    }
}

impl From<sqlx::Error> for Refused {
    fn from(e: sqlx::Error) -> Self {
        anyhow::Error::from(e).into()
    }
}

/// Where the snapshot's compressed bytes are: the bucket and the key.
async fn locate_source(state: &AppState, import: &Import) -> Result<(String, String), Refused> {
    let (bucket, key) = match (&import.source_export_id, &import.upload_key) {
        (Some(export_id), _) => {
            let run = runs::get_any(&state.pool, export_id).await?;
            let Some(run) = run else {
                return Err(Refused(format!("export {export_id} no longer exists")));
            };
            let Some(key) = run.completed_key().map(str::to_string) else {
                return Err(Refused(format!(
                    "export {export_id} is {} now; only a completed export's file can be restored",
                    run.status
                )));
            };
            let Some(org) = crate::orgs::find_by_id(&state.pool, run.org_id).await? else {
                return Err(Refused(format!("the org of export {export_id} no longer exists")));
            };
            (org.bucket, key)
        }
        (None, Some(key)) => (state.storage.privacy_bucket().to_string(), key.clone()),
        (None, None) => return Err(Refused("the import has no source".into())),
    };
    Ok((bucket, key))
}

/// Deletes the uploaded file of a finished import (there is nothing to remove for
/// an export, which stays where it was). A failure is logged; a later look at the
/// bucket's `imports/` prefix finds the file.
pub async fn remove_upload(state: &AppState, import: &Import) {
    let Some(key) = &import.upload_key else { return };
    if let Err(e) = state.storage.delete(state.storage.privacy_bucket(), key).await {
        tracing::warn!(import_id = %import.id, error = format!("{e:#}"), "could not delete the uploaded snapshot");
    }
}

/// Marks failed the imports whose job ended without finishing them, and removes
/// their uploads, so that none blocks its slug (see [`records::fail_abandoned`]).
/// Best effort: a failure is logged.
pub async fn sweep_abandoned(state: &AppState) {
    match records::fail_abandoned(&state.pool).await {
        Ok(abandoned) => {
            for import in &abandoned {
                tracing::warn!(import_id = %import.id, "an import whose job ended unfinished was marked failed");
                remove_upload(state, import).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not look for abandoned imports"),
    }
    match records::expired_checks(&state.pool).await {
        Ok(expired) => {
            for check in &expired {
                remove_upload(state, check).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not look for expired checks"),
    }
}
