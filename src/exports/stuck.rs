//! Runs that cannot end by themselves, failed by housekeeping (every minute, see
//! `startup::health_loop`): a pending or running export whose job has ended or is
//! gone, or a running one whose progress has not moved for `STUCK_RUN_SECS`. Left
//! alone, such a run would block its org's manual and scheduled exports for ever
//! (one active export per org).

use super::runs;
use crate::{snapshot::job::Failure, state::AppState};

/// Fails every stuck run with a plain reason (its `export.failed` audit entry and
/// the usual notifications), and aborts the upload it left open. Returns the ids
/// of the runs it failed.
pub async fn fail_stuck(state: &AppState) -> anyhow::Result<Vec<String>> {
    let secs = state.config.stuck_run_secs;
    let mut failed = Vec::new();
    for run in runs::stuck(&state.pool, secs).await? {
        let reason = run.reason(secs);
        let failure = Failure { detail: format!("{reason} (housekeeping: {})", run.why), reason };
        // Only while the attempt found still holds it: one that a worker took over
        // since (apalis re-queued the job) is alive.
        let held = Some(run.attempts);
        if !runs::fail_persistently(&state.pool, &state.config.public_url, &run.id, held, &failure).await? {
            continue;
        }
        tracing::warn!(export_id = run.id, org_id = run.org_id, why = run.why, "a stuck export was failed");
        if let Some(org) = crate::orgs::find_by_id(&state.pool, run.org_id).await? {
            remove_files(state, &org.bucket, &run.id, run.created_at, run.upload_id.clone()).await;
        }
        failed.push(run.id);
    }
    Ok(failed)
}

/// Removes what a run that was failed from outside its job (stuck, or cancelled)
/// may have left at its key (see [`crate::snapshot::job::remove_left`]). A failed
/// run never keeps a file.
pub async fn remove_files(
    state: &AppState,
    bucket: &str,
    id: &str,
    created_at: chrono::DateTime<chrono::Utc>,
    upload_id: Option<String>,
) {
    let key = runs::object_key(id, created_at);
    crate::snapshot::job::remove_left(state, "export", id, bucket, &key, upload_id.as_deref()).await;
}
