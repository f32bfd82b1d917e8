//! The snapshot job: an apalis-postgres worker on the `exports` queue.

use std::time::Duration;

use anyhow::Context;
use apalis::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

use super::{pipeline::Snapshot, runs, sink::Sink};
use crate::{jobs, state::AppState};

/// The queue name (the job rows' `job_type`).
pub const QUEUE: &str = "exports";

/// The job's arguments: which run to carry out.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExportJob {
    pub run_id: String,
}

/// Adds the job for a run inside the caller's transaction, with the run's id.
pub async fn enqueue(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: Ulid,
    job: &ExportJob,
    max_attempts: u32,
) -> anyhow::Result<()> {
    jobs::push(tx, QUEUE, id, job, max_attempts).await.context("enqueueing the export job")
}

/// The worker's backend.
pub fn storage(state: &AppState) -> jobs::Storage<ExportJob> {
    jobs::storage(state, QUEUE)
}

/// The handler. Errors are recorded on the run; the job itself is then finished
/// (aborted) rather than retried, except when the run could not even be updated.
pub async fn run(job: ExportJob, state: Data<AppState>, attempt: Attempt) -> Result<(), BoxDynError> {
    let attempt = attempt.current() as i32;
    let max = state.config.export_max_attempts as i32;
    if attempt > max {
        // Re-enqueued after worker crashes more often than allowed.
        runs::fail_persistently(
            &state.pool,
            &job.run_id,
            None,
            &format!("gave up after {max} attempts: the worker stopped mid-export each time"),
        )
        .await?;
        return Err(AbortError::new("too many attempts").into());
    }
    let Some(run) = runs::start(&state.pool, &job.run_id, attempt).await? else {
        tracing::info!(run_id = job.run_id, "run is no longer pending; nothing to do");
        return Ok(());
    };
    if !crate::platform::backup::is_ready(&state).await? {
        // Switched off (or the storage changed) after the run was created.
        let reason = crate::error::AppError::BackupNotVerified.to_string();
        runs::fail_persistently(&state.pool, &run.id, Some(attempt), &reason).await?;
        return Err(AbortError::new(reason).into());
    }
    let span = tracing::info_span!("export", export_id = %run.id, org_id = run.org_id, attempt);
    let body = {
        let (state, run) = ((*state).clone(), run.clone());
        async move { execute(&state, &run, attempt).await }
    };
    let outcome = crate::jobs::on_own_task(tracing::Instrument::instrument(body, span)).await;
    match outcome.and_then(|r| r) {
        Ok(()) => Ok(()),
        Err(e) => {
            let reason = format!("{e:#}");
            tracing::warn!(export_id = %run.id, reason, "export failed");
            runs::fail_persistently(&state.pool, &run.id, Some(attempt), &reason).await?;
            Err(AbortError::new(reason).into())
        }
    }
}

async fn execute(state: &AppState, run: &runs::Run, attempt: i32) -> anyhow::Result<()> {
    let org: crate::orgs::Org = sqlx::query_as("select id, slug, name, bucket from organizations where id = $1")
        .bind(run.org_id)
        .fetch_one(&state.pool)
        .await?;
    let key = runs::object_key(&run.id, run.created_at);
    if let Some(previous) = &run.upload_id {
        // An earlier attempt died mid-upload: abort what it left open.
        tracing::info!(export_id = %run.id, upload_id = previous, "aborting the upload of an earlier attempt");
        super::sink::abort_upload(state.storage.client(), &org.bucket, &key, previous).await;
        runs::set_upload_id(&state.pool, &run.id, attempt, None).await?;
    }
    let snapshot = Snapshot::open(&state.pool, org.id).await?;
    runs::set_counts(
        &state.pool,
        &run.id,
        attempt,
        &snapshot.counts_json(),
        snapshot.rows_total(),
        snapshot.snapshot_at,
    )
    .await?;
    let sink = Sink::S3 {
        client: state.storage.client().clone(),
        bucket: org.bucket.clone(),
        key: key.clone(),
        export_id: run.id.clone(),
    };
    let upload = sink.start().await?;
    let upload_id = upload.upload_id().map(str::to_string);
    let (progress, watcher) = watch::channel(0i64);
    let done = CancellationToken::new();
    // Dropped with this future too, so an aborted export's saver ends as well.
    let ended = done.clone().drop_guard();
    let saver = tokio::spawn(save_progress(state.clone(), run.id.clone(), attempt, watcher, done));
    let outcome = async {
        runs::set_upload_id(&state.pool, &run.id, attempt, upload_id.as_deref()).await?;
        snapshot.write(&run.id, upload, &progress).await
    }
    .await;
    drop(ended);
    let _ = saver.await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            // The pipeline aborts its own upload; this also covers a stage that
            // panicked before it could (an upload already gone counts as aborted).
            if let Some(upload_id) = &upload_id {
                super::sink::abort_upload(state.storage.client(), &org.bucket, &key, upload_id).await;
            }
            return Err(e);
        }
    };
    let completed =
        runs::complete(&state.pool, &run.id, attempt, &key, outcome.size_bytes as i64, &outcome.sha256, outcome.rows)
            .await;
    match completed {
        Ok(true) => {}
        Ok(false) => {
            // A newer attempt took the run over (this worker missed its heartbeats).
            // The key is shared, so the object is the newer attempt's to publish.
            anyhow::bail!("a newer attempt took this export over");
        }
        Err(e) => {
            // Published but not recorded: remove it rather than leave an orphan.
            if let Err(del) = state.storage.delete(&org.bucket, &key).await {
                tracing::warn!(error = %del, key, "could not remove an unrecorded export object");
            }
            return Err(e.into());
        }
    }
    tracing::info!(export_id = %run.id, rows = outcome.rows, bytes = outcome.size_bytes, seconds = outcome.seconds, "export completed");
    if run.trigger == "scheduled" {
        // Retention applies after each scheduled export (and hourly).
        if let Err(e) = crate::platform::pruner::enqueue(&state.pool, org.id).await {
            tracing::warn!(error = format!("{e:#}"), "could not queue the prune after a scheduled export");
        }
    }
    Ok(())
}

/// Saves the progress figure (rows written, from `rows`) about once a second
/// while the export runs, and the last figure once `done` is cancelled, then ends
/// at once: the run is marked completed only after this, so it must not sit out a
/// pause (it did: half a second at the end of every export).
pub async fn save_progress(
    state: AppState,
    id: String,
    attempt: i32,
    rows: watch::Receiver<i64>,
    done: CancellationToken,
) {
    let mut saved = -1;
    loop {
        let ended = tokio::select! {
            _ = done.cancelled() => true,
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
        };
        let now = *rows.borrow();
        if now != saved {
            if let Err(e) = runs::set_progress(&state.pool, &id, attempt, now).await {
                tracing::warn!(error = %e, "could not save progress");
            }
            saved = now;
        }
        if ended {
            return;
        }
    }
}
