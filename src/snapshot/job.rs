//! The skeleton every snapshot job shares (the org export, the data-subject
//! export): take the record for this attempt, refuse it when it may not run, abort
//! what an earlier attempt left open, write the snapshot to its object on a task of
//! its own, record the file only while this attempt still holds the record, and
//! remove a file that could not be recorded. What differs between the jobs is a
//! [`Lease`]: how the record is taken, checked, opened, completed and failed.

use std::{future::Future, sync::Arc, time::Duration};

use apalis::prelude::{AbortError, BoxDynError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    Outcome, Snapshot,
    sink::{Label, Sink},
};
use crate::{jobs, state::AppState, storage::Multipart};

/// Where a job's file goes.
pub struct Destination {
    pub bucket: String,
    pub key: String,
    pub label: Label,
}

/// What a finished write left, for [`Lease::complete`].
pub struct Written<'a> {
    pub key: &'a str,
    pub outcome: &'a Outcome,
    /// The sections' counts as JSON text, in file order.
    pub counts: &'a str,
    pub snapshot_at: chrono::DateTime<chrono::Utc>,
}

/// Why a record failed, told twice: `reason` in plain words for the people who
/// asked for the file (an org's admins, a member), without bucket names, endpoints,
/// keys or SQL; and `detail`, the whole error chain, for platform admins and the log.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub reason: String,
    pub detail: String,
}

/// An error whose text is already plain, meant for the people who asked (a refusal:
/// the backup configuration is not verified, the module was switched off).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Plain(pub String);

impl Failure {
    /// The reason and the detail cut to what a record keeps: 2,000 and 8,000
    /// characters.
    pub fn bounded(&self) -> (String, String) {
        (self.reason.chars().take(2000).collect(), self.detail.chars().take(8000).collect())
    }

    /// A failure whose reason is plain already: told as it is to everyone.
    pub fn plain(reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Self { detail: reason.clone(), reason }
    }

    /// The failure of `what` ("export", ...) that `error` describes: a [`Plain`]
    /// error is told as it is; any other gets a plain reason by where it came from
    /// (the storage endpoint, the database, or the platform otherwise), and its chain
    /// becomes the detail.
    pub fn of(error: &anyhow::Error, what: &str) -> Self {
        let detail = format!("{error:#}");
        if let Some(Plain(reason)) = error.downcast_ref::<Plain>() {
            return Self { reason: reason.clone(), detail };
        }
        let from_storage = error.downcast_ref::<crate::storage::Failed>().is_some();
        let from_database =
            error.downcast_ref::<sqlx::Error>().is_some() || error.chain().any(|e| e.is::<sqlx::Error>());
        let why = if from_storage {
            "the file could not be written to storage (the storage service refused it or did not answer)"
        } else if from_database {
            "the data could not be read from the database"
        } else {
            "of an error on the platform's side"
        };
        let why =
            if from_storage || from_database { format!("failed: {why}") } else { format!("failed because {why}") };
        Self { reason: format!("The {what} {why}. A platform admin can see the details."), detail }
    }
}

/// The record a snapshot job carries out (an export run, a privacy request). Every
/// update made by an attempt carries its number, the attempt's lease: once a newer
/// attempt has taken the record over (this worker missed its heartbeats), the older
/// one can no longer change it.
pub trait Lease: Send + Sync + 'static {
    /// The record as loaded.
    type Record: Clone + Send + Sync + 'static;
    /// What the work is called in logs ("export", "data-subject export").
    const WHAT: &'static str;
    /// Whether [`Self::save_progress`] is called while the file is written.
    const TRACKS_PROGRESS: bool = false;

    fn id(record: &Self::Record) -> &str;
    /// The multipart upload that an attempt recorded, if any.
    fn upload_id(record: &Self::Record) -> Option<&str>;
    /// Whether the record is completed (its file recorded).
    fn is_completed(record: &Self::Record) -> bool;
    /// Whether the record is still to be carried out (pending or running).
    fn is_active(record: &Self::Record) -> bool;
    /// A span for the attempt's logs.
    fn span(record: &Self::Record, attempt: i32) -> tracing::Span;

    /// The record as stored now, whatever its state.
    fn get(&self, state: &AppState, id: &str) -> impl Future<Output = anyhow::Result<Option<Self::Record>>> + Send;
    /// Takes the record for `attempt` (pending, or left running by a worker that
    /// died); `None` when there is nothing to do.
    fn start(
        &self,
        state: &AppState,
        id: &str,
        attempt: i32,
    ) -> impl Future<Output = anyhow::Result<Option<Self::Record>>> + Send;
    /// Why the record may not run now (the backup configuration, a switched-off
    /// module), if so. It is then failed with that reason.
    fn refusal(
        &self,
        state: &AppState,
        record: &Self::Record,
    ) -> impl Future<Output = anyhow::Result<Option<String>>> + Send;
    /// Where the file goes.
    fn destination(
        &self,
        state: &AppState,
        record: &Self::Record,
    ) -> impl Future<Output = anyhow::Result<Destination>> + Send;
    /// Records (or clears) this attempt's open multipart upload.
    fn set_upload_id(
        &self,
        state: &AppState,
        id: &str,
        attempt: i32,
        upload_id: Option<&str>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Opens the consistent read, recording what is known before any row is written.
    fn open(
        &self,
        state: &AppState,
        record: &Self::Record,
        attempt: i32,
    ) -> impl Future<Output = anyhow::Result<Snapshot>> + Send;
    /// Saves the rows written so far (only with [`Self::TRACKS_PROGRESS`]); `false`
    /// when `attempt` no longer holds the record (it was cancelled, failed by
    /// housekeeping, or taken over), which stops the write.
    fn save_progress(
        &self,
        _state: &AppState,
        _id: &str,
        _attempt: i32,
        _rows: i64,
    ) -> impl Future<Output = anyhow::Result<bool>> + Send {
        async { Ok(true) }
    }
    /// Whether `attempt` still holds the record (asked while progress stands still,
    /// only with [`Self::TRACKS_PROGRESS`]).
    fn is_held(
        &self,
        _state: &AppState,
        _id: &str,
        _attempt: i32,
    ) -> impl Future<Output = anyhow::Result<bool>> + Send {
        async { Ok(true) }
    }
    /// Records the published file, only while `attempt` holds the record: `false`
    /// when a newer attempt took it over.
    fn complete(
        &self,
        state: &AppState,
        record: &Self::Record,
        attempt: i32,
        written: Written<'_>,
    ) -> impl Future<Output = anyhow::Result<bool>> + Send;
    /// Marks the record failed with the failure's reason and detail, only while
    /// `attempt` holds it (any attempt when `None`), retried so that it cannot stay
    /// running. `true` when this call marked it.
    fn fail(
        &self,
        state: &AppState,
        id: &str,
        attempt: Option<i32>,
        failure: &Failure,
    ) -> impl Future<Output = anyhow::Result<bool>> + Send;
    /// Called once the record was completed.
    fn completed(&self, _state: &AppState, _record: &Self::Record) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Runs attempt `attempt` (from 1) of the record `id`. Errors are recorded on the
/// record; the job itself is then finished (aborted) rather than retried, except
/// when the record could not even be updated. Worker crashes re-enqueue the job, up
/// to the configured attempts.
pub async fn run<L: Lease>(lease: L, state: AppState, id: &str, attempt: usize) -> Result<(), BoxDynError> {
    let attempt = attempt as i32;
    let max = state.config.export_max_attempts as i32;
    if attempt > max {
        let reason = format!("Gave up after {max} attempts: the worker stopped mid-{} each time.", L::WHAT);
        fail(&lease, &state, id, None, &Failure::plain(reason)).await?;
        return Err(AbortError::new("too many attempts").into());
    }
    let Some(record) = lease.start(&state, id, attempt).await? else {
        tracing::info!(id, what = L::WHAT, "no longer pending; nothing to do");
        return Ok(());
    };
    let lease = Arc::new(lease);
    let refusal = match lease.refusal(&state, &record).await {
        Ok(refusal) => refusal.map(|reason| Ok(Plain(reason))),
        // Retried, unless this is the last attempt: then the record is failed rather
        // than left running with no job to finish it.
        Err(e) if attempt < max => return Err(e.into()),
        Err(e) => Some(Err(e)),
    };
    let outcome = match refusal {
        Some(Ok(plain)) => Err(anyhow::Error::new(plain)),
        Some(Err(e)) => Err(e),
        None => {
            let span = L::span(&record, attempt);
            let body = {
                let (lease, state, record) = (lease.clone(), state.clone(), record.clone());
                async move { write(&*lease, &state, &record, attempt).await }
            };
            jobs::on_own_task(tracing::Instrument::instrument(body, span)).await.and_then(|r| r)
        }
    };
    finish(&*lease, &state, &record, attempt, outcome).await
}

async fn finish<L: Lease>(
    lease: &L,
    state: &AppState,
    record: &L::Record,
    attempt: i32,
    outcome: anyhow::Result<()>,
) -> Result<(), BoxDynError> {
    match outcome {
        Ok(()) => {
            lease.completed(state, record).await;
            Ok(())
        }
        Err(e) => {
            let failure = Failure::of(&e, L::WHAT);
            tracing::warn!(id = L::id(record), what = L::WHAT, reason = failure.detail, "failed");
            fail(lease, state, L::id(record), Some(attempt), &failure).await?;
            Err(AbortError::new(failure.detail).into())
        }
    }
}

/// Fails the record and, when this call marked it, removes what an attempt may
/// have left at its key: an open upload, or an object that an older attempt
/// published after it lost its lease. A failed record never keeps a file.
async fn fail<L: Lease>(
    lease: &L,
    state: &AppState,
    id: &str,
    attempt: Option<i32>,
    failure: &Failure,
) -> anyhow::Result<()> {
    if !lease.fail(state, id, attempt, failure).await? {
        return Ok(());
    }
    let Some(record) = lease.get(state, id).await? else { return Ok(()) };
    let Destination { bucket, key, .. } = lease.destination(state, &record).await?;
    remove_left(state, L::WHAT, id, &bucket, &key, L::upload_id(&record)).await;
    Ok(())
}

/// Removes what an attempt may have left at a failed record's key (`what` record
/// `id`): its open upload, and an object it published without recording it. Also
/// for a record failed from outside its job (a stuck or cancelled export). Best
/// effort: a failure is logged.
pub async fn remove_left(state: &AppState, what: &str, id: &str, bucket: &str, key: &str, upload_id: Option<&str>) {
    if let Some(upload_id) = upload_id {
        let open = Multipart { bucket: bucket.to_string(), key: key.to_string(), upload_id: upload_id.to_string() };
        state.storage.abort_multipart(&open).await;
    }
    if let Err(e) = state.storage.delete(bucket, key).await {
        tracing::warn!(id, what, error = format!("{e:#}"), "could not remove a failed record's object");
    }
}

/// Writes the record's file and records it.
async fn write<L: Lease>(lease: &L, state: &AppState, record: &L::Record, attempt: i32) -> anyhow::Result<()> {
    let id = L::id(record);
    let Destination { bucket, key, label } = lease.destination(state, record).await?;
    if let Some(previous) = L::upload_id(record) {
        // An earlier attempt died mid-upload: abort what it left open.
        tracing::info!(id, upload_id = previous, "aborting the upload of an earlier attempt");
        let open = Multipart { bucket: bucket.clone(), key: key.clone(), upload_id: previous.to_string() };
        state.storage.abort_multipart(&open).await;
        lease.set_upload_id(state, id, attempt, None).await?;
    }
    let opening = std::time::Instant::now();
    let snapshot = lease.open(state, record, attempt).await?.with_level(state.config.export_gzip_level);
    let (open_seconds, connections) = (opening.elapsed().as_secs_f64(), snapshot.connections());
    let (snapshot_at, counts) = (snapshot.snapshot_at, snapshot.counts_json());
    let sink = Sink::Object { storage: state.storage.clone(), bucket: bucket.clone(), key: key.clone(), label };
    let upload = sink.start().await?;
    let open = upload.upload_id().map(|u| Multipart { bucket: bucket.clone(), key: key.clone(), upload_id: u.into() });
    let (progress, watcher) = watch::channel(0i64);
    let done = CancellationToken::new();
    // Cancelled by the saver when the attempt no longer holds the record (an org
    // admin cancelled it, or housekeeping failed it): the write then stops.
    let lost = CancellationToken::new();
    // Dropped with this future too, so an aborted attempt's saver ends as well.
    let ended = done.clone().drop_guard();
    let saver = L::TRACKS_PROGRESS.then(|| save_progress(lease, state, id, attempt, watcher, done, lost.clone()));
    let writing = async {
        lease.set_upload_id(state, id, attempt, open.as_ref().map(|o| o.upload_id.as_str())).await?;
        let outcome = tokio::select! {
            outcome = snapshot.write(id, upload, &progress) => outcome,
            _ = lost.cancelled() => Err(anyhow::anyhow!("this attempt no longer holds the {}: it was cancelled or stopped", L::WHAT)),
        };
        drop(ended);
        outcome
    };
    let outcome = match saver {
        Some(saver) => futures::join!(writing, saver).0,
        None => writing.await,
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            // The pipeline aborts its own upload; this also covers a stage that
            // panicked before it could (an upload already gone counts as aborted).
            if let Some(open) = &open {
                state.storage.abort_multipart(open).await;
            }
            return Err(e);
        }
    };
    let written = Written { key: &key, outcome: &outcome, counts: &counts, snapshot_at };
    match lease.complete(state, record, attempt, written).await {
        Ok(true) => {}
        // A newer attempt took the record over. The key is shared, so the object is
        // the newer attempt's to publish, unless the record has ended without a
        // file (it was cancelled or failed meanwhile): then nobody else will publish
        // or remove it, and it goes.
        Ok(false) => {
            let now = lease.get(state, id).await?;
            if now.as_ref().is_some_and(|r| !L::is_completed(r) && !L::is_active(r))
                && let Err(e) = state.storage.delete(&bucket, &key).await
            {
                tracing::warn!(error = format!("{e:#}"), key, "could not remove the file of an ended record");
            }
            anyhow::bail!("this attempt no longer holds the {}", L::WHAT)
        }
        // The error hid a completion after all (a commit whose answer was lost, or
        // a newer attempt's file at the shared key): that file stays.
        Err(_) if matches!(lease.get(state, id).await, Ok(Some(now)) if L::is_completed(&now)) => {}
        Err(e) => {
            // Published but not recorded: remove it rather than leave an orphan.
            if let Err(del) = state.storage.delete(&bucket, &key).await {
                tracing::warn!(error = format!("{del:#}"), key, "could not remove an unrecorded file");
            }
            return Err(e);
        }
    }
    tracing::info!(
        id,
        what = L::WHAT,
        rows = outcome.rows,
        bytes = outcome.size_bytes,
        seconds = outcome.seconds,
        open_seconds,
        connections,
        stages = outcome.timeline.summary(),
        "completed"
    );
    Ok(())
}

/// Saves the progress figure (rows written, from `rows`) about once a second
/// while the file is written, and the last figure once `done` is cancelled, then
/// ends at once: the record is completed only after this, so it must not sit out a
/// pause (it did: half a second at the end of every export).
///
/// It also watches the lease: when a save finds that the attempt no longer holds
/// the record, or (while progress stands still) a look every 5 s does, it cancels
/// `lost` and ends.
pub async fn save_progress<L: Lease>(
    lease: &L,
    state: &AppState,
    id: &str,
    attempt: i32,
    rows: watch::Receiver<i64>,
    done: CancellationToken,
    lost: CancellationToken,
) {
    let mut saved = -1;
    let mut still = 0u32;
    loop {
        let ended = tokio::select! {
            _ = done.cancelled() => true,
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
        };
        let now = *rows.borrow();
        let held = if now != saved {
            saved = now;
            still = 0;
            lease.save_progress(state, id, attempt, now).await
        } else {
            still += 1;
            if still.is_multiple_of(5) && !ended { lease.is_held(state, id, attempt).await } else { Ok(true) }
        };
        match held {
            Ok(true) => {}
            Ok(false) => {
                if !ended {
                    tracing::info!(id, what = L::WHAT, attempt, "the record was cancelled or taken over; stopping");
                    lost.cancel();
                }
                return;
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "could not save progress"),
        }
        if ended {
            return;
        }
    }
}
