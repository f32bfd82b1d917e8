//! The conversion job (queue `tables`) and the service around it: queueing a
//! conversion of a completed export (once per export and format; a failed one again),
//! carrying it out (the export's file streamed from the org's bucket through
//! [`super::convert`] into a temporary zip on disk, then uploaded beside the file),
//! the download link, and removing the zips with their export.

use std::time::Duration;

use anyhow::Context;
use apalis::prelude::{AbortError, BoxDynError};
use serde::{Deserialize, Serialize};
use ulid::Ulid;

use super::{
    ConvertError, Format,
    records::{self, Tables},
};
use crate::{jobs, state::AppState, storage::Multipart};

/// The job's arguments: which conversion, and the job it is (its lease).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TablesJob {
    pub tables_id: String,
    pub job_id: String,
}

/// Attempts of one job (a storage failure is worth another; a bad file is not).
pub const MAX_ATTEMPTS: u32 = 3;

/// The content type of the zips.
pub const CONTENT_TYPE: &str = "application/zip";

/// Parts of the upload (S3 wants at least 5 MiB for all but the last).
const PART_SIZE: usize = 8 * 1024 * 1024;

impl jobs::Job for TablesJob {
    const QUEUE: &'static str = "tables";
    type Context = ();

    async fn run(self, state: AppState, _: (), attempt: usize) -> Result<(), BoxDynError> {
        let span = tracing::info_span!("tables", tables_id = %self.tables_id, attempt);
        let last = attempt >= MAX_ATTEMPTS as usize;
        let body = tracing::Instrument::instrument(run(state, self, last), span);
        match jobs::on_own_task(body).await? {
            Ok(()) => Ok(()),
            Err(Failure::Retry(e)) => Err(e.into()),
            Err(Failure::Final) => Err(AbortError::new(anyhow::anyhow!("the conversion failed")).into()),
        }
    }
}

/// How an attempt ended when it did not complete.
enum Failure {
    /// Worth another attempt (the row stays running).
    Retry(anyhow::Error),
    /// Recorded as failed: no other attempt.
    Final,
}

/// What an export's conversion needs of the export.
#[derive(sqlx::FromRow)]
struct Source {
    status: String,
    object_key: Option<String>,
    sha256: Option<String>,
    bucket: String,
}

async fn source(state: &AppState, export_id: &str) -> sqlx::Result<Option<Source>> {
    sqlx::query_as(
        "select r.status, r.object_key, r.sha256, o.bucket from export_runs r
         join organizations o on o.id = r.org_id where r.id = $1",
    )
    .bind(export_id)
    .fetch_optional(&state.pool)
    .await
}

async fn run(state: AppState, job: TablesJob, last: bool) -> Result<(), Failure> {
    let taken = records::start(&state.pool, &job.tables_id, &job.job_id).await;
    let tables = match taken {
        Ok(Some(t)) => t,
        Ok(None) => {
            tracing::info!("the conversion is finished, gone, or another job's; nothing to do");
            return Ok(());
        }
        Err(e) => return Err(Failure::Retry(e.into())),
    };
    let started = std::time::Instant::now();
    match convert_and_upload(&state, &tables).await {
        Ok(Some((key, size, rows))) => {
            let marked = records::complete(&state.pool, &tables.id, &job.job_id, &key, size, rows)
                .await
                .map_err(|e| Failure::Retry(e.into()))?;
            if marked {
                tracing::info!(
                    export_id = tables.export_id,
                    format = tables.format,
                    rows,
                    size_bytes = size,
                    seconds = started.elapsed().as_secs_f64(),
                    "tables completed"
                );
            } else {
                // The export was deleted meanwhile (its conversions went with it).
                let bucket = source(&state, &tables.export_id).await.ok().flatten().map(|s| s.bucket);
                if let Some(bucket) = bucket
                    && !records::is_completed_at(&state.pool, &key).await.unwrap_or(true)
                {
                    let _ = state.storage.delete(&bucket, &key).await;
                }
                tracing::info!("the conversion was removed while it ran; its zip is not kept");
            }
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(Step::Bad(why)) => {
            tracing::warn!(reason = why, "tables failed");
            records::fail(&state.pool, &tables.id, &job.job_id, &why).await.map_err(|e| Failure::Retry(e.into()))?;
            Err(Failure::Final)
        }
        Err(Step::Transient(e)) if last => {
            tracing::warn!(error = format!("{e:#}"), "tables failed on the last attempt");
            let why = if e.downcast_ref::<crate::storage::Failed>().is_some() {
                "the storage could not be read or written; try again later".to_string()
            } else {
                "the conversion could not finish; try again later".to_string()
            };
            records::fail(&state.pool, &tables.id, &job.job_id, &why).await.map_err(|e| Failure::Retry(e.into()))?;
            Err(Failure::Final)
        }
        Err(Step::Transient(e)) => Err(Failure::Retry(e)),
    }
}

/// Why a step stopped.
enum Step {
    /// For good, with the reason the org's admins see.
    Bad(String),
    /// Perhaps not next time.
    Transient(anyhow::Error),
}

impl From<anyhow::Error> for Step {
    fn from(e: anyhow::Error) -> Self {
        Self::Transient(e)
    }
}

impl From<sqlx::Error> for Step {
    fn from(e: sqlx::Error) -> Self {
        Self::Transient(e.into())
    }
}

/// Converts the export's file and uploads the zip: `(key, size, rows)`, or `None`
/// when the job lost the row meanwhile.
async fn convert_and_upload(state: &AppState, tables: &Tables) -> Result<Option<(String, i64, i64)>, Step> {
    let format = tables.format();
    let Some(source) = source(state, &tables.export_id).await? else {
        return Err(Step::Bad("the export no longer exists".into()));
    };
    let (Some(export_key), "completed") = (source.object_key.as_deref(), source.status.as_str()) else {
        return Err(Step::Bad(format!("the export is {}, so its file is gone", source.status)));
    };
    let Some(body) = state.storage.read(&source.bucket, export_key).await? else {
        return Err(Step::Bad("the export's file is missing from storage: it was removed outside Data Export".into()));
    };
    let temp = std::env::temp_dir().join(format!("data-export-tables-{}-{}.zip", tables.id, Ulid::generate()));
    let _remove = RemoveOnDrop(temp.clone());
    let (progress_tx, progress_rx) = tokio::sync::watch::channel(0i64);
    let saver = tokio::spawn(save_progress(state.clone(), tables.id.clone(), tables.job_id.clone(), progress_rx));
    let converted = {
        let (temp, expected) = (temp.clone(), source.sha256.clone());
        let reader = tokio_util::io::SyncIoBridge::new(body);
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::create_new(&temp).map_err(|e| ConvertError::Output(e.to_string()))?;
            let mut progress = |rows: u64| {
                let _ = progress_tx.send(i64::try_from(rows).unwrap_or(i64::MAX));
            };
            let (summary, file) = super::convert(
                std::io::BufReader::with_capacity(256 * 1024, reader),
                expected.as_deref(),
                format,
                file,
                &mut progress,
            )?;
            file.sync_all().map_err(|e| ConvertError::Output(e.to_string()))?;
            Ok::<_, ConvertError>(summary)
        })
        .await
        .context("the conversion's thread ended")?
    };
    saver.abort();
    let summary = match converted {
        Ok(s) => s,
        Err(ConvertError::Input(why)) => {
            return Err(Step::Bad(format!("the export's file cannot be converted: {why}")));
        }
        // A read from storage that broke shows as an input error too; a disk that is
        // full or a temp dir that cannot be written is worth another attempt.
        Err(ConvertError::Output(why)) => return Err(Step::Transient(anyhow::anyhow!("writing the zip: {why}"))),
    };
    if !records::set_progress(&state.pool, &tables.id, &tables.job_id, summary.rows as i64).await? {
        return Ok(None);
    }
    let key = super::object_key(export_key, format);
    let size = upload(state, &temp, &source.bucket, &key, tables).await?;
    Ok(Some((key, size as i64, summary.rows as i64)))
}

/// Saves the rows converted so far, once a second while they change.
async fn save_progress(state: AppState, id: String, job_id: String, mut rows: tokio::sync::watch::Receiver<i64>) {
    loop {
        if rows.changed().await.is_err() {
            return;
        }
        let n = *rows.borrow_and_update();
        if let Err(e) = records::set_progress(&state.pool, &id, &job_id, n).await {
            tracing::debug!(error = %e, "could not save the conversion's progress");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Uploads the zip at `path` to `bucket/key` in parts; an upload that fails is
/// aborted, so nothing is left behind. Returns its size.
async fn upload(
    state: &AppState,
    path: &std::path::Path,
    bucket: &str,
    key: &str,
    tables: &Tables,
) -> anyhow::Result<u64> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path).await.context("opening the zip")?;
    let metadata = [("export-id", tables.export_id.as_str()), ("format", tables.format.as_str())];
    let upload_id = state.storage.create_multipart(bucket, key, CONTENT_TYPE, &metadata).await?;
    let upload = Multipart { bucket: bucket.to_string(), key: key.to_string(), upload_id };
    let sent = async {
        let mut parts = Vec::new();
        let mut size = 0u64;
        loop {
            let mut buf = Vec::with_capacity(PART_SIZE);
            (&mut file).take(PART_SIZE as u64).read_to_end(&mut buf).await.context("reading the zip")?;
            if buf.is_empty() && !parts.is_empty() {
                break;
            }
            size += buf.len() as u64;
            let number = i32::try_from(parts.len() + 1).unwrap_or(i32::MAX);
            let last = buf.len() < PART_SIZE;
            parts.push(state.storage.upload_part(&upload, number, bytes::Bytes::from(buf)).await?);
            if last {
                break;
            }
        }
        Ok::<_, anyhow::Error>((parts, size))
    }
    .await;
    match sent {
        Ok((parts, size)) => {
            state.storage.complete_multipart(&upload, parts).await?;
            Ok(size)
        }
        Err(e) => {
            state.storage.abort_multipart(&upload).await;
            Err(e)
        }
    }
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Why a conversion cannot be requested.
#[derive(Debug)]
pub enum Refused {
    /// No such export in this org.
    NotFound,
    /// The export is not completed (its status).
    NotCompleted(String),
}

/// Queues the conversion of the org's export into `format` unless it is queued,
/// running or completed already (a failed one is queued again). Returns the
/// conversion and whether this call queued it. The database decides: one row per
/// export and format, and a retry only of a failed one.
pub async fn request(
    state: &AppState,
    org_id: i64,
    export_id: &str,
    format: Format,
    user_id: i64,
    via: &str,
) -> anyhow::Result<Result<(Tables, bool), Refused>> {
    let mut tx = state.pool.begin().await?;
    // Under a share lock: a delete or prune of the export waits for this to commit.
    let export: Option<(String, Option<i64>)> =
        sqlx::query_as("select status, rows_total from export_runs where id = $1 and org_id = $2 for share")
            .bind(export_id)
            .bind(org_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((status, rows_total)) = export else { return Ok(Err(Refused::NotFound)) };
    if status != "completed" {
        return Ok(Err(Refused::NotCompleted(status)));
    }
    let job_id = Ulid::generate();
    let tables_id = Ulid::generate().to_string();
    let job_text = job_id.to_string();
    let new = records::New { id: &tables_id, org_id, export_id, format, user_id, job_id: &job_text, rows_total };
    let inserted = records::insert(&mut tx, &new).await?;
    let queued = inserted || records::retry(&mut tx, org_id, export_id, format, user_id, &job_id.to_string()).await?;
    if queued {
        let id = if inserted {
            tables_id
        } else {
            sqlx::query_scalar("select id from export_tables where export_id = $1 and format = $2")
                .bind(export_id)
                .bind(format.as_str())
                .fetch_one(&mut *tx)
                .await?
        };
        let job = TablesJob { tables_id: id, job_id: job_id.to_string() };
        jobs::push(&mut tx, job_id, &job, MAX_ATTEMPTS).await.context("enqueueing the tables job")?;
        crate::audit::write(
            &mut *tx,
            Some(org_id),
            Some(user_id),
            "export.tables_requested",
            &format!("export:{export_id}"),
            serde_json::json!({ "format": format.as_str(), "via": via, "retry": !inserted }),
        )
        .await?;
    }
    tx.commit().await?;
    let tables = records::get(&state.pool, org_id, export_id, format).await?.context("the conversion is gone")?;
    Ok(Ok((tables, queued)))
}

/// A presigned URL of a completed conversion's zip (`None` while it is not
/// completed), with an audit entry for the download.
pub async fn download_url(
    state: &AppState,
    org: (i64, &str, &str),
    user_id: i64,
    tables: &Tables,
    via: &str,
) -> anyhow::Result<Option<String>> {
    let (org_id, slug, bucket) = org;
    let Some(key) = tables.completed_key() else { return Ok(None) };
    let filename = format!("{slug}-export-{}-{}.zip", tables.export_id, tables.format);
    let url = state.storage.presign_get(bucket, key, &filename).await?;
    crate::audit::write(
        &state.pool,
        Some(org_id),
        Some(user_id),
        "export.tables_downloaded",
        &format!("export:{}", tables.export_id),
        serde_json::json!({ "format": tables.format, "via": via }),
    )
    .await?;
    Ok(Some(url))
}

/// Removes an export's conversions: their zips beside `export_key` in `bucket`
/// (both formats, whether or not they were made: a delete of nothing is fine), then
/// their rows. A conversion running meanwhile finds its row gone and removes its own
/// zip.
pub async fn remove_of_export(state: &AppState, bucket: &str, export_key: &str, export_id: &str) -> anyhow::Result<()> {
    // The rows first: a conversion that finishes after this finds its row gone and
    // removes its own zip; the objects second, so a zip completed just before is gone
    // too (the other order left such a zip with no row to find it by).
    records::remove_of_export(&state.pool, export_id).await?;
    for format in Format::ALL {
        state.storage.delete(bucket, &super::object_key(export_key, format)).await?;
    }
    Ok(())
}
