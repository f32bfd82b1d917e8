//! The export job (queue `exports`): carries out one run through the snapshot job
//! skeleton ([`crate::snapshot::job`]), with the run as its lease.

use std::sync::Arc;

use anyhow::Context;
use apalis::prelude::BoxDynError;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use ulid::Ulid;

use super::{org_snapshot, runs};
use crate::{
    jobs,
    orgs::modules::Module,
    settings::backup,
    snapshot::{
        Snapshot,
        job::{self, Destination, Failure, Lease, Written},
    },
    state::AppState,
};

/// The job's arguments: which run to carry out.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExportJob {
    pub run_id: String,
}

/// Called with each run that completed. The layers above exports subscribe through
/// the queue registry (the pruner prunes after a scheduled export).
pub type AfterRun = Arc<dyn Fn(AppState, runs::Run) -> BoxFuture<'static, ()> + Send + Sync>;

/// What the registry hands the export job.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Called, in order, after a run completed.
    pub completed: Vec<AfterRun>,
}

impl jobs::Job for ExportJob {
    const QUEUE: &'static str = "exports";
    type Context = Hooks;

    fn concurrency(config: &crate::config::Config) -> usize {
        config.worker_concurrency
    }

    async fn run(self, state: AppState, hooks: Hooks, attempt: usize) -> Result<(), BoxDynError> {
        job::run(ExportLease { hooks }, state, &self.run_id, attempt).await
    }
}

/// Adds the job for a run inside the caller's transaction, with the run's id.
pub async fn enqueue(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: Ulid,
    job: &ExportJob,
    max_attempts: u32,
) -> anyhow::Result<()> {
    jobs::push(tx, id, job, max_attempts).await.context("enqueueing the export job")
}

/// Saves the run's progress figure while its file is written, and cancels `lost`
/// once the attempt no longer holds the run (see [`job::save_progress`]).
pub async fn save_progress(
    state: AppState,
    id: String,
    attempt: i32,
    rows: tokio::sync::watch::Receiver<i64>,
    done: tokio_util::sync::CancellationToken,
    lost: tokio_util::sync::CancellationToken,
) {
    job::save_progress(&ExportLease { hooks: Hooks::default() }, &state, &id, attempt, rows, done, lost).await
}

/// The reason a pending run fails when its org switched Data Export off.
pub const SWITCHED_OFF: &str = "Data Export was switched off";

/// An export run as a snapshot job's lease.
struct ExportLease {
    hooks: Hooks,
}

impl Lease for ExportLease {
    type Record = runs::Run;
    const WHAT: &'static str = "export";
    const TRACKS_PROGRESS: bool = true;

    fn id(run: &runs::Run) -> &str {
        &run.id
    }

    fn upload_id(run: &runs::Run) -> Option<&str> {
        run.upload_id.as_deref()
    }

    fn is_completed(run: &runs::Run) -> bool {
        run.status == runs::RunStatus::Completed
    }

    fn is_active(run: &runs::Run) -> bool {
        run.is_active()
    }

    fn span(run: &runs::Run, attempt: i32) -> tracing::Span {
        tracing::info_span!("export", export_id = %run.id, org_id = run.org_id, attempt)
    }

    async fn get(&self, state: &AppState, id: &str) -> anyhow::Result<Option<runs::Run>> {
        Ok(runs::get_any(&state.pool, id).await?)
    }

    async fn start(&self, state: &AppState, id: &str, attempt: i32) -> anyhow::Result<Option<runs::Run>> {
        Ok(runs::start(&state.pool, id, attempt).await?)
    }

    async fn refusal(&self, state: &AppState, run: &runs::Run) -> anyhow::Result<Option<String>> {
        // Both may have changed since the run was created.
        if !backup::is_ready(state).await? {
            return Ok(Some(crate::error::AppError::BackupNotVerified.to_string()));
        }
        let on = crate::orgs::modules::states(&state.pool, run.org_id).await?;
        if !on.contains(&(Module::DataExport, true)) {
            return Ok(Some(SWITCHED_OFF.to_string()));
        }
        Ok(crate::orgs::bucket_refusal(&state.pool, run.org_id).await?)
    }

    async fn destination(&self, state: &AppState, run: &runs::Run) -> anyhow::Result<Destination> {
        let org =
            crate::orgs::find_by_id(&state.pool, run.org_id).await?.context("the organization no longer exists")?;
        Ok(Destination {
            bucket: org.bucket,
            key: runs::object_key(&run.id, run.created_at),
            label: org_snapshot::label(&run.id),
        })
    }

    async fn set_upload_id(
        &self,
        state: &AppState,
        id: &str,
        attempt: i32,
        upload_id: Option<&str>,
    ) -> anyhow::Result<()> {
        Ok(runs::set_upload_id(&state.pool, id, attempt, upload_id).await?)
    }

    async fn open(&self, state: &AppState, run: &runs::Run, attempt: i32) -> anyhow::Result<Snapshot> {
        let snapshot = org_snapshot::open(&state.pool, run.org_id).await?;
        let (counts, total) = (snapshot.counts_json(), snapshot.rows_total());
        runs::set_counts(&state.pool, &run.id, attempt, &counts, total, snapshot.snapshot_at).await?;
        Ok(snapshot)
    }

    async fn save_progress(&self, state: &AppState, id: &str, attempt: i32, rows: i64) -> anyhow::Result<bool> {
        Ok(runs::set_progress(&state.pool, id, attempt, rows).await?)
    }

    async fn is_held(&self, state: &AppState, id: &str, attempt: i32) -> anyhow::Result<bool> {
        Ok(runs::is_held(&state.pool, id, attempt).await?)
    }

    async fn complete(&self, state: &AppState, run: &runs::Run, attempt: i32, w: Written<'_>) -> anyhow::Result<bool> {
        let written = runs::Written {
            key: w.key,
            size_bytes: w.outcome.size_bytes as i64,
            sha256: &w.outcome.sha256,
            rows: w.outcome.rows,
        };
        runs::complete(&state.pool, &state.config.public_url, &run.id, attempt, written).await
    }

    async fn fail(&self, state: &AppState, id: &str, attempt: Option<i32>, failure: &Failure) -> anyhow::Result<bool> {
        runs::fail_persistently(&state.pool, &state.config.public_url, id, attempt, failure).await
    }

    async fn completed(&self, state: &AppState, run: &runs::Run) {
        for hook in &self.hooks.completed {
            hook(state.clone(), run.clone()).await;
        }
    }
}
