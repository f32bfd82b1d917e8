//! The `export_runs` table: the run's state machine
//! `pending -> running -> completed | failed`, then `completed -> deleted | pruned`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::{error::AppError, snapshot::job::Failure, web::path::RecordId};

crate::text_enum! {
    /// Where a run is: `pending -> running -> completed | failed`, then
    /// `completed -> deleted | pruned`.
    pub enum RunStatus {
        Pending => "pending",
        Running => "running",
        Completed => "completed",
        Failed => "failed",
        Deleted => "deleted",
        Pruned => "pruned",
    }
}

impl RunStatus {
    /// Pending or running: the one export an org may have at a time.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Pending | Self::Running)
    }
}

crate::text_enum! {
    /// Who started a run.
    pub enum Trigger {
        Manual => "manual",
        Scheduled => "scheduled",
    }
}

/// The name of the partial unique index that allows one active export per org.
pub const ONE_ACTIVE_INDEX: &str = "export_runs_one_active_per_org";

/// A run as stored.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Run {
    pub id: String,
    #[serde(skip)]
    pub org_id: i64,
    pub status: RunStatus,
    pub trigger: Trigger,
    #[serde(skip)]
    pub triggered_by: Option<i64>,
    /// The email of who triggered it (for the history).
    #[serde(skip)]
    pub triggered_by_email: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub snapshot_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub object_key: Option<String>,
    #[serde(skip)]
    pub upload_id: Option<String>,
    pub size_bytes: Option<i64>,
    pub sha256: Option<String>,
    pub counts: Option<serde_json::Value>,
    #[serde(skip)]
    pub rows_total: Option<i64>,
    #[serde(skip)]
    pub rows_written: i64,
    /// Why it failed, in plain words (what the org's admins see).
    pub error: Option<String>,
    /// The whole error chain of a failure (bucket, endpoint, SQL): for platform
    /// admins and the log, never shown to an org admin who is not one.
    #[serde(skip)]
    pub error_detail: Option<String>,
    /// When the object was last re-read by the Verify action, and why it failed.
    pub verified_at: Option<DateTime<Utc>>,
    pub verify_error: Option<String>,
    /// Who cancelled it (an org admin), when it was cancelled.
    #[serde(skip)]
    pub cancelled_by: Option<i64>,
    /// Its conversions into tables, as a JSON array, where the query reads them with
    /// the run ([`in_org_select`], the row's poll); `None` elsewhere.
    #[serde(skip)]
    #[sqlx(default)]
    pub tables_json: Option<serde_json::Value>,
}

impl Run {
    /// Progress from 0.0 to 1.0, when known.
    pub fn progress(&self) -> Option<f64> {
        use RunStatus::*;
        match (self.status, self.rows_total) {
            (Completed | Deleted | Pruned, _) => Some(1.0),
            (_, Some(total)) if total > 0 => Some((self.rows_written as f64 / total as f64).clamp(0.0, 1.0)),
            _ => None,
        }
    }

    /// The object key of a completed run's file (none before completion, or once
    /// the file was deleted or pruned).
    pub fn completed_key(&self) -> Option<&str> {
        self.object_key.as_deref().filter(|_| self.status == RunStatus::Completed)
    }

    pub fn is_active(&self) -> bool {
        self.status.is_active()
    }

    /// Seconds from start to finish.
    pub fn duration_secs(&self) -> Option<f64> {
        Some((self.finished_at? - self.started_at?).num_milliseconds() as f64 / 1000.0)
    }

    /// The JSON API's view of a run; `error_detail` only for a platform admin.
    pub fn api_json(&self, platform_admin: bool) -> serde_json::Value {
        let mut json = self.api_json_for_org();
        if platform_admin {
            json["error_detail"] = serde_json::json!(self.error_detail);
        }
        json
    }

    fn api_json_for_org(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "status": self.status,
            "trigger": self.trigger,
            "triggered_by": self.triggered_by_email,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "snapshot_at": self.snapshot_at,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "counts": self.counts,
            "rows_total": self.rows_total,
            "rows_written": self.rows_written,
            "progress": self.progress(),
            "error": self.error,
            "verified_at": self.verified_at,
            "verify_error": self.verify_error,
        })
    }
}

const SELECT: &str = "select r.id, r.org_id, r.status, r.trigger, r.triggered_by, u.email as triggered_by_email,
    r.created_at, r.started_at, r.finished_at, r.snapshot_at, r.object_key, r.upload_id, r.size_bytes, r.sha256, r.counts,
    r.rows_total, r.rows_written, r.error, r.error_detail, r.verified_at, r.verify_error, r.cancelled_by
    from export_runs r left join users u on u.id = r.triggered_by";

/// The object key for a run: `exports/{YYYY}/{MM}/{run-id}.json.gz`.
pub fn object_key(id: &str, at: DateTime<Utc>) -> String {
    format!("exports/{}/{id}.json.gz", at.format("%Y/%m"))
}

/// When the org has started `limit` manual exports in the last 24 hours: the
/// seconds until the oldest of them leaves the window (the `Retry-After`).
pub async fn manual_quota_wait(pool: &PgPool, org_id: i64, limit: u32) -> sqlx::Result<Option<u64>> {
    let (count, oldest): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
        "select count(*), min(created_at) from (
           select created_at from export_runs
           where org_id = $1 and trigger = 'manual' and created_at > now() - interval '24 hours'
           order by created_at desc limit $2) recent",
    )
    .bind(org_id)
    .bind(i64::from(limit))
    .fetch_one(pool)
    .await?;
    if count < i64::from(limit) {
        return Ok(None);
    }
    let free_at = oldest.unwrap_or_else(Utc::now) + chrono::Duration::hours(24);
    Ok(Some((free_at - Utc::now()).num_seconds().max(1) as u64))
}

/// The id of the org's pending or running export.
pub async fn active_id(pool: &PgPool, org_id: i64) -> sqlx::Result<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("select id from export_runs where org_id = $1 and status in ('pending', 'running')")
            .bind(org_id)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|r| r.0))
}

/// A run of the org; `None` for another org's run, or no run.
pub async fn get(pool: &PgPool, org_id: i64, id: &RecordId) -> sqlx::Result<Option<Run>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} where r.id = $1 and r.org_id = $2")))
        .bind(id.as_str())
        .bind(org_id)
        .fetch_optional(pool)
        .await
}

/// What [`crate::auth::membership::user_membership_and_row`] selects for the run `$3`
/// of the org `o.id`: the row a running export's page polls comes with the user in
/// one query.
pub fn in_org_select() -> String {
    let tables = crate::tables::records::json_of_export("x.id", "x.org_id");
    format!("select x.*, {tables} as tables_json from ({SELECT} where r.id = $3 and r.org_id = o.id) x")
}

/// A run by id, whatever its org (for the job).
pub async fn get_any(pool: &PgPool, id: &str) -> sqlx::Result<Option<Run>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} where r.id = $1"))).bind(id).fetch_optional(pool).await
}

/// A completed run of some org, as a restore offers it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct CompletedRun {
    pub id: String,
    pub org_slug: String,
    pub org_name: String,
    pub finished_at: Option<DateTime<Utc>>,
    pub size_bytes: Option<i64>,
}

/// An org with completed runs (whose files are still there), as a restore offers it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OrgWithExports {
    pub slug: String,
    pub name: String,
    pub completed: i64,
    pub newest: Option<DateTime<Utc>>,
}

/// Every org with completed runs whose files are still there, the most recently
/// exported first.
pub async fn orgs_with_completed(pool: &PgPool) -> sqlx::Result<Vec<OrgWithExports>> {
    sqlx::query_as(
        "select o.slug, o.name, count(*) as completed, max(r.finished_at) as newest
         from export_runs r join organizations o on o.id = r.org_id
         where r.status = 'completed' and r.object_key is not null
         group by o.id order by max(r.finished_at) desc nulls last, o.slug",
    )
    .fetch_all(pool)
    .await
}

/// One page of the org `slug`'s completed runs (whose files are still there), newest
/// first, after the run `before` (keyset on `(created_at, id)`, as the history
/// pages). Returns up to `limit` runs, and whether older ones remain.
pub async fn completed_of_org(
    pool: &PgPool,
    slug: &str,
    limit: i64,
    before: Option<&RecordId>,
) -> sqlx::Result<(Vec<CompletedRun>, bool)> {
    let mut runs: Vec<CompletedRun> = sqlx::query_as(
        "select r.id, o.slug as org_slug, o.name as org_name, r.finished_at, r.size_bytes
         from export_runs r join organizations o on o.id = r.org_id
         where o.slug = $1 and r.status = 'completed' and r.object_key is not null
           and ($3::text is null
                or (r.created_at, r.id) < (select b.created_at, b.id from export_runs b
                                           where b.id = $3 and b.org_id = o.id))
         order by r.created_at desc, r.id desc limit $2",
    )
    .bind(slug)
    .bind(limit + 1)
    .bind(before.map(RecordId::as_str))
    .fetch_all(pool)
    .await?;
    let more = runs.len() as i64 > limit;
    runs.truncate(usize::try_from(limit).unwrap_or(0));
    Ok((runs, more))
}

/// The org's runs, newest first.
pub async fn list(pool: &PgPool, org_id: i64, limit: i64) -> sqlx::Result<Vec<Run>> {
    Ok(page(pool, org_id, limit, None).await?.map(|p| p.runs).unwrap_or_default())
}

/// The org's history version: it grows with each run created or deleted anywhere,
/// and with each change of a run's status, verification or row total (a trigger
/// keeps it, see the migration `export_history_version`). 0 before the first run.
pub async fn history_version(pool: &PgPool, org_id: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar(HISTORY_VERSION).bind(org_id).fetch_one(pool).await
}

/// [`history_version`] of the org `$1`.
const HISTORY_VERSION: &str =
    "select coalesce(max(v.version), 0) as version from export_history_versions v where v.org_id = $1";

/// [`HISTORY_VERSION`] as an [`crate::auth::membership::OrgRowQuery`]: the org is `o.id`
/// there, and `$3` (unused, but typed) is its parameter.
pub fn history_version_in_org() -> String {
    HISTORY_VERSION.replace("$1", "o.id and $3::text is not null")
}

/// One page of an org's history, newest first.
#[derive(Debug)]
pub struct Page {
    pub runs: Vec<Run>,
    /// The last run's id while older runs remain: the next page's `before`.
    pub next: Option<String>,
    /// The runs' conversions into tables (read in the same statement).
    pub tables: Vec<crate::tables::records::Tables>,
}

/// The conversions into tables read with `runs` (`Run::tables_json`).
pub fn tables_of(runs: &[Run]) -> sqlx::Result<Vec<crate::tables::records::Tables>> {
    let mut out = Vec::new();
    for json in runs.iter().filter_map(|r| r.tables_json.as_ref()).filter(|j| !j.is_null()) {
        let some: Vec<crate::tables::records::Tables> =
            serde_json::from_value(json.clone()).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        out.extend(some);
    }
    Ok(out)
}

/// At most `limit` of the org's runs, newest first, and only those older than the
/// run `before` (keyset paging on `(created_at, id)`, so runs created meanwhile
/// shift nothing). `None` when `before` is not a run of this org.
pub async fn page(pool: &PgPool, org_id: i64, limit: i64, before: Option<&RecordId>) -> sqlx::Result<Option<Page>> {
    // With each run's conversions into tables, in the same statement.
    let tables = crate::tables::records::json_of_export("x.id", "x.org_id");
    let mut runs: Vec<Run> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select x.*, {tables} as tables_json from ({SELECT} where r.org_id = $1
           and ($3::text is null
                or (r.created_at, r.id) < (select b.created_at, b.id from export_runs b where b.id = $3 and b.org_id = $1))
         order by r.created_at desc, r.id desc limit $2) x
         order by x.created_at desc, x.id desc"
    )))
    .bind(org_id)
    .bind(limit + 1)
    .bind(before.map(RecordId::as_str))
    .fetch_all(pool)
    .await?;
    if let (true, Some(before)) = (runs.is_empty(), before) {
        // Nothing older, or no such run of this org: only the second is an error.
        let known: bool = sqlx::query_scalar("select exists (select 1 from export_runs where id = $1 and org_id = $2)")
            .bind(before.as_str())
            .bind(org_id)
            .fetch_one(pool)
            .await?;
        if !known {
            return Ok(None);
        }
    }
    let next = crate::db::keyset_next(&mut runs, limit, |r| &r.id);
    let tables = tables_of(&runs)?;
    Ok(Some(Page { runs, next, tables }))
}

/// The newest failed runs of every org with their org's slug, newest first: what a
/// platform admin reads on the platform settings page, the detail included.
pub async fn recent_failures(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<(String, Run)>> {
    let runs: Vec<Run> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} where r.status = 'failed' order by r.finished_at desc nulls last, r.id desc limit $1"
    )))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let ids: Vec<i64> = runs.iter().map(|r| r.org_id).collect();
    let slugs: std::collections::HashMap<i64, String> =
        sqlx::query_as("select id, slug from organizations where id = any($1)")
            .bind(&ids)
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    Ok(runs.into_iter().map(|r| (slugs.get(&r.org_id).cloned().unwrap_or_default(), r)).collect())
}

/// Moves a pending run (or one left running by a worker that died) to running.
/// `None` when the run is gone or already finished: nothing to do.
pub async fn start(pool: &PgPool, id: &str, attempt: i32) -> sqlx::Result<Option<Run>> {
    let row: Option<(String,)> = sqlx::query_as(
        "update export_runs set status = 'running', started_at = now(), progress_at = now(), attempts = $2,
                rows_written = 0, rows_total = null, counts = null, error = null
         where id = $1 and status in ('pending', 'running') returning id",
    )
    .bind(id)
    .bind(attempt)
    .fetch_optional(pool)
    .await?;
    match row {
        Some(_) => get_any(pool, id).await,
        None => Ok(None),
    }
}

// Every update made by an attempt carries its number (`attempts` is the attempt's
// lease): if a worker that missed its heartbeats is still running while the
// re-enqueued job has taken the run over, the older attempt can no longer change it.

/// Records the multipart upload of the current attempt.
pub async fn set_upload_id(pool: &PgPool, id: &str, attempt: i32, upload_id: Option<&str>) -> sqlx::Result<()> {
    sqlx::query("update export_runs set upload_id = $3 where id = $1 and attempts = $2")
        .bind(id)
        .bind(attempt)
        .bind(upload_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Records the counts, known before any row is written.
pub async fn set_counts(
    pool: &PgPool,
    id: &str,
    attempt: i32,
    counts: &str,
    total: i64,
    snapshot_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "update export_runs set counts = $2::jsonb, rows_total = $3, snapshot_at = $4, progress_at = now()
         where id = $1 and status = 'running' and attempts = $5",
    )
    .bind(id)
    .bind(counts)
    .bind(total)
    .bind(snapshot_at)
    .bind(attempt)
    .execute(pool)
    .await?;
    Ok(())
}

/// Saves progress (and when it moved, which tells a stuck run). `false` when the
/// attempt no longer holds the run: it was cancelled or failed meanwhile, or a
/// newer attempt took it over.
pub async fn set_progress(pool: &PgPool, id: &str, attempt: i32, rows_written: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "update export_runs set rows_written = $2, progress_at = now()
         where id = $1 and status = 'running' and attempts = $3",
    )
    .bind(id)
    .bind(rows_written)
    .bind(attempt)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether `attempt` still holds the run (it is running under that attempt).
pub async fn is_held(pool: &PgPool, id: &str, attempt: i32) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "select exists (select 1 from export_runs where id = $1 and status = 'running' and attempts = $2)",
    )
    .bind(id)
    .bind(attempt)
    .fetch_one(pool)
    .await
}

/// What a completed attempt wrote.
pub struct Written<'a> {
    pub key: &'a str,
    pub size_bytes: i64,
    pub sha256: &'a str,
    pub rows: i64,
}

/// Marks a run completed with its file, with an `export.completed` audit entry and
/// its notifications ([`announce`]); `false` when the attempt lost its lease.
/// `public_url` starts the mails' links.
pub async fn complete(pool: &PgPool, public_url: &str, id: &str, attempt: i32, w: Written<'_>) -> anyhow::Result<bool> {
    let mut tx = pool.begin().await?;
    let done: Option<(i64,)> = sqlx::query_as(
        "update export_runs set status = 'completed', finished_at = now(), object_key = $2, size_bytes = $3,
                sha256 = $4, rows_written = $5, upload_id = null
         where id = $1 and status = 'running' and attempts = $6 returning org_id",
    )
    .bind(id)
    .bind(w.key)
    .bind(w.size_bytes)
    .bind(w.sha256)
    .bind(w.rows)
    .bind(attempt)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((org_id,)) = done else { return Ok(false) };
    let details = serde_json::json!({ "size_bytes": w.size_bytes, "sha256": w.sha256, "rows": w.rows });
    crate::audit::write(&mut *tx, Some(org_id), None, "export.completed", &format!("export:{id}"), details).await?;
    announce_in_savepoint(&mut tx, public_url, org_id, id).await?;
    tx.commit().await?;
    Ok(true)
}

/// The advisory lock class that serialises the end of a schedule slot's runs (the
/// second key is the slot's Unix time), so that exactly one of them sees the slot
/// finished.
const SLOT_LOCK_CLASS: i32 = 0x4458_5052 + 2;

/// [`announce`] and then, for a scheduled run, [`slot_digest`], each in a savepoint
/// of the transaction that ends the run: when either cannot be done for a reason a
/// retry would not clear (a bug, a constraint), that is logged and left out, but
/// the run's end is still recorded. Nothing about telling people may keep a run
/// `running` or fail an export that worked. A transient error (a deadlock, a lost
/// connection) fails the whole transaction, which its caller retries.
async fn announce_in_savepoint(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    public_url: &str,
    org_id: i64,
    id: &str,
) -> anyhow::Result<()> {
    let (slug, name, slot): (String, String, Option<DateTime<Utc>>) = sqlx::query_as(
        "select o.slug, o.name, r.scheduled_for from organizations o join export_runs r on r.org_id = o.id
         where r.id = $1",
    )
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    let mut savepoint = sqlx::Acquire::begin(&mut **tx).await?;
    let result = announce(&mut savepoint, public_url, org_id, id, &slug, &name).await;
    crate::db::settle_savepoint(savepoint, result, "the export's notifications").await?;
    if let Some(slot) = slot {
        let mut savepoint = sqlx::Acquire::begin(&mut **tx).await?;
        let result = slot_digest(&mut savepoint, public_url, slot).await;
        crate::db::settle_savepoint(savepoint, result, "the schedule slot's mail").await?;
    }
    Ok(())
}

/// Tells whoever listens that the run `id` ended, in the transaction that ended it,
/// so that nothing is told of an end that did not happen, and nothing is lost:
/// - the org's webhooks get `export.completed` or `export.failed` with the run as the
///   API shows it to the org (never a download URL, never the platform admins'
///   error detail): machines get every event;
/// - people get an email linking to the history, each kind to its own people (and
///   each person's choice applied by `mail::enqueue`): a failure to the org's active
///   admins; a completed manual run to who started it, only while still an active
///   admin of the org (a run started from the command line has nobody); a
///   completed scheduled run to the org's active admins who switched that kind on.
async fn announce(
    tx: &mut sqlx::PgConnection,
    public_url: &str,
    org_id: i64,
    id: &str,
    slug: &str,
    name: &str,
) -> anyhow::Result<()> {
    let run: Run =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} where r.id = $1"))).bind(id).fetch_one(&mut *tx).await?;
    let completed = run.status == RunStatus::Completed;
    let mut data = run.api_json(false);
    data["org"] = serde_json::json!(slug);
    let event = if completed { crate::webhooks::EXPORT_COMPLETED } else { crate::webhooks::EXPORT_FAILED };
    crate::webhooks::enqueue(tx, org_id, event, &data, None).await?;

    // A cancelled run is no failure to tell people of: the admin who cancelled it
    // saw it end, and the history says who did (webhooks still get the event).
    if run.cancelled_by.is_some() {
        return Ok(());
    }
    let message = export_mail(public_url, &run, slug, name);
    let mut to = crate::mail::org_admins(tx, org_id).await?;
    if message.kind == crate::mail::Kind::ExportCompletedMine {
        to.retain(|admin| Some(*admin) == run.triggered_by);
    }
    for person in to {
        crate::mail::enqueue_to_admin(tx, person, org_id, &message).await?;
    }
    Ok(())
}

/// The mail about a run that ended, of the kind its end and trigger give: failed,
/// a manual run completed (to its starter), or a scheduled run completed.
fn export_mail(public_url: &str, run: &Run, slug: &str, name: &str) -> crate::mail::Message {
    use crate::mail::Kind;
    let when = |at: Option<DateTime<Utc>>| at.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_default();
    let history = format!("{public_url}{}", crate::routes::org_backups(slug));
    let kind = match (run.status, run.trigger) {
        (RunStatus::Completed, Trigger::Manual) => Kind::ExportCompletedMine,
        (RunStatus::Completed, _) => Kind::ExportCompletedScheduled,
        _ => Kind::ExportFailed,
    };
    let (subject, outcome) = if run.status == RunStatus::Completed {
        (
            format!("Export of {name} completed"),
            format!(
                "completed at {}: {} rows, {}.\n\nDownload or verify it in the Export History (a download link is made \
                 when you ask for it, and is valid for 15 minutes):",
                when(run.finished_at),
                run.rows_written,
                crate::web::format::human_bytes(run.size_bytes.unwrap_or(0)),
            ),
        )
    } else {
        (
            format!("Export of {name} failed"),
            format!(
                "failed at {}: {}\n\nThe Export History has its row; you can trigger a new export there:",
                when(run.finished_at),
                run.error.as_deref().unwrap_or("no reason was recorded.")
            ),
        )
    };
    let trigger = if run.trigger == Trigger::Scheduled { "The scheduled" } else { "The" };
    let why = match kind {
        Kind::ExportCompletedMine => {
            format!("You get this mail because you started this export, as an admin of {name}.")
        }
        Kind::ExportCompletedScheduled => {
            format!("You get this mail as an admin of {name} who asked for completed scheduled exports.")
        }
        _ => format!("You get this mail as an admin of {name}."),
    };
    let text = format!(
        "{trigger} export {} of {name} ({slug}), requested {}, {outcome}\n{history}\n\n{why}",
        run.id,
        when(Some(run.created_at)),
    );
    crate::mail::Message { kind, subject, text }
}

/// Takes the schedule slot's lock until the transaction ends (see [`slot_digest`]).
/// Whoever also changes the slot's `schedule_slots` row takes this first, so that
/// the row lock and this one are always taken in the same order.
pub async fn lock_slot(tx: &mut sqlx::PgConnection, slot: DateTime<Utc>) -> sqlx::Result<()> {
    sqlx::query("select pg_advisory_xact_lock($1, ($2 % 2147483647)::int)")
        .bind(SLOT_LOCK_CLASS)
        .bind(slot.timestamp())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Sends the mail of each schedule slot of the last two days that has not had it
/// and whose runs have all ended (a slot whose job stopped part-way, with no run
/// ending after the hour it is given): run by housekeeping.
pub async fn overdue_slot_digests(pool: &PgPool, public_url: &str) -> anyhow::Result<()> {
    let slots: Vec<(DateTime<Utc>,)> = sqlx::query_as(
        "select slot from schedule_slots
         where kind = 'export' and digest_sent_at is null and claimed_at > now() - interval '2 days'
           and (finished_at is not null or claimed_at < now() - interval '1 hour')",
    )
    .fetch_all(pool)
    .await?;
    for (slot,) in slots {
        let mut tx = pool.begin().await?;
        slot_digest(&mut tx, public_url, slot).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// When the schedule slot `slot` has fired (its `schedule_slots` row finished) and
/// every one of its runs has ended, and any failed: one mail to each platform admin
/// listing the orgs whose export failed, once. Called by each run of a slot that
/// ends and by the slot's job when it has created them all; the advisory lock lets
/// each see the others' committed work, and `digest_sent_at` is set by the one that
/// sends.
pub async fn slot_digest(tx: &mut sqlx::PgConnection, public_url: &str, slot: DateTime<Utc>) -> anyhow::Result<()> {
    lock_slot(tx, slot).await?;
    let (active, total, failed): (i64, i64, Vec<String>) = sqlx::query_as(
        "select count(*) filter (where r.status in ('pending', 'running')), count(*),
                coalesce(array_agg(o.name || ' (' || o.slug || '): ' || coalesce(r.error, 'no reason recorded')
                                   order by o.slug) filter (where r.status = 'failed'), '{}')
         from export_runs r join organizations o on o.id = r.org_id where r.scheduled_for = $1",
    )
    .bind(slot)
    .fetch_one(&mut *tx)
    .await?;
    if active > 0 || failed.is_empty() {
        return Ok(());
    }
    // A slot whose job never finished (it failed for good part-way) counts as fired
    // an hour after its claim, so its mail is still sent (by housekeeping, if no
    // run ends after that).
    let claimed = sqlx::query(
        "update schedule_slots set digest_sent_at = now()
         where kind = 'export' and slot = $1 and digest_sent_at is null
           and (finished_at is not null or claimed_at < now() - interval '1 hour')",
    )
    .bind(slot)
    .execute(&mut *tx)
    .await?;
    if claimed.rows_affected() == 0 {
        return Ok(());
    }
    let message = crate::mail::Message {
        kind: crate::mail::Kind::ScheduleFailures,
        subject: format!(
            "Scheduled exports of {}: {} of {total} failed",
            slot.format("%Y-%m-%d %H:%M UTC"),
            failed.len()
        ),
        text: format!(
            "The scheduled exports of the slot {} have all ended; {} of {total} failed:\n\n{}\n\n\
             The details of each failure are on the platform settings page:\n{public_url}{}",
            slot.format("%Y-%m-%d %H:%M UTC"),
            failed.len(),
            failed.iter().map(|f| format!("- {f}")).collect::<Vec<_>>().join("\n"),
            crate::routes::PLATFORM_SETTINGS,
        ),
    };
    for admin in crate::mail::platform_admins(tx).await? {
        crate::mail::enqueue(tx, admin, &message).await?;
    }
    Ok(())
}

/// Marks a run failed with the failure's plain reason and its detail, with an
/// `export.failed` audit entry (the plain reason: the audit log belongs to the org).
/// With `attempt`, only while that attempt holds the run. True when this call marked
/// it. Its notifications as [`complete`]'s.
pub async fn fail(
    pool: &PgPool,
    public_url: &str,
    id: &str,
    attempt: Option<i32>,
    failure: &Failure,
) -> anyhow::Result<bool> {
    Ok(end_failed(pool, public_url, id, attempt, failure, Ending::Failed).await?.is_some())
}

/// How a run came to fail, for its audit entry.
#[derive(Clone, Copy, Debug)]
pub enum Ending {
    /// Its attempt failed, or housekeeping found it stuck: `export.failed`.
    Failed,
    /// An org admin cancelled it: `export.cancelled`, in their name.
    Cancelled { by: i64 },
}

/// [`fail`] with the audit entry `ending` says; the org's id when this call marked
/// the run.
async fn end_failed(
    pool: &PgPool,
    public_url: &str,
    id: &str,
    attempt: Option<i32>,
    failure: &Failure,
    ending: Ending,
) -> anyhow::Result<Option<i64>> {
    let (reason, detail) = failure.bounded();
    let mut tx = pool.begin().await?;
    let done: Option<(i64,)> = sqlx::query_as(
        "update export_runs set status = 'failed', finished_at = now(), error = $2, error_detail = $4,
                cancelled_by = $5
         where id = $1 and status in ('pending', 'running') and ($3::int is null or attempts = $3) returning org_id",
    )
    .bind(id)
    .bind(&reason)
    .bind(attempt)
    .bind(&detail)
    .bind(match ending {
        Ending::Cancelled { by } => Some(by),
        Ending::Failed => None,
    })
    .fetch_optional(&mut *tx)
    .await?;
    let Some((org_id,)) = done else { return Ok(None) };
    let details = serde_json::json!({ "error": reason });
    let (action, actor) = match ending {
        Ending::Failed => ("export.failed", None),
        Ending::Cancelled { by } => ("export.cancelled", Some(by)),
    };
    crate::audit::write(&mut *tx, Some(org_id), actor, action, &format!("export:{id}"), details).await?;
    announce_in_savepoint(&mut tx, public_url, org_id, id).await?;
    tx.commit().await?;
    Ok(Some(org_id))
}

/// Cancels the org's pending or running run `id` in `by`'s name: it ends `failed`
/// with the reason "Cancelled by NAME" (an `export.cancelled` audit entry and the
/// usual notifications), and its job, if it is writing, notices within a second and
/// stops, aborting its upload. `Ok(None)` for no such run of the org; an
/// [`AppError::InConflict`] when it has already finished.
pub async fn cancel(
    pool: &PgPool,
    public_url: &str,
    org_id: i64,
    id: &RecordId,
    by: &crate::auth::User,
) -> Result<Option<Run>, AppError> {
    let Some(run) = get(pool, org_id, id).await? else { return Ok(None) };
    let name = if by.display_name.trim().is_empty() { by.email.as_str() } else { by.display_name.as_str() };
    let failure = Failure::plain(format!("Cancelled by {name}"));
    let ended = end_failed(pool, public_url, &run.id, None, &failure, Ending::Cancelled { by: by.id }).await?;
    if ended.is_none() {
        // It had finished (or did between the read and the update).
        let now = get(pool, org_id, id).await?.ok_or(AppError::NotFound)?;
        return Err(AppError::InConflict(format!(
            "This export has already finished ({}); there is nothing to cancel.",
            now.status
        )));
    }
    Ok(get(pool, org_id, id).await?)
}

/// An active run that cannot end by itself, and why (see [`stuck`]).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Stuck {
    pub id: String,
    pub org_id: i64,
    /// The attempt that held it when it was found: it is failed only if that one
    /// still does (an attempt that took it over meanwhile is left alone).
    pub attempts: i32,
    pub upload_id: Option<String>,
    pub object_key: Option<String>,
    pub created_at: DateTime<Utc>,
    /// `job_ended`, `no_job` or `no_progress`.
    pub why: String,
}

impl Stuck {
    /// The plain reason the run is failed with.
    pub fn reason(&self, stuck_secs: u64) -> String {
        match self.why.as_str() {
            "no_job" => {
                "The export was stopped: no worker job was left to carry it out. You can start a new one.".into()
            }
            "job_ended" => {
                "The export was stopped: its worker job ended without finishing it. You can start a new one.".into()
            }
            _ => format!(
                "The export was stopped: it made no progress for {} minutes. You can start a new one.",
                stuck_secs.div_ceil(60)
            ),
        }
    }
}

/// Every active run that is stuck (see [`crate::health::STUCK_WHY`]).
pub async fn stuck(pool: &PgPool, stuck_secs: u64) -> sqlx::Result<Vec<Stuck>> {
    let why = crate::health::STUCK_WHY;
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select * from (
           select r.id, r.org_id, r.attempts, r.upload_id, r.object_key, r.created_at, {why} as why
           from export_runs r left join apalis.jobs j on j.id = r.id
           where r.status in ('pending', 'running')) s
         where s.why is not null"
    )))
    .bind(stuck_secs as f64)
    .fetch_all(pool)
    .await
}

/// [`fail`], retried for a while: a run must not stay `running` because the
/// database hiccuped at the moment of failure.
pub async fn fail_persistently(
    pool: &PgPool,
    public_url: &str,
    id: &str,
    attempt: Option<i32>,
    failure: &Failure,
) -> anyhow::Result<bool> {
    crate::db::retry_write("marking an export run failed", || fail(pool, public_url, id, attempt, failure)).await
}

/// Records the outcome of re-reading a completed run's object.
pub async fn set_verified(pool: &PgPool, org_id: i64, id: &str, error: Option<&str>) -> sqlx::Result<()> {
    sqlx::query("update export_runs set verified_at = now(), verify_error = $3 where id = $1 and org_id = $2")
        .bind(id)
        .bind(org_id)
        .bind(error)
        .execute(pool)
        .await?;
    Ok(())
}

/// Marks a completed run deleted (after its object is gone).
pub async fn mark_deleted(pool: &PgPool, org_id: i64, id: &str) -> sqlx::Result<bool> {
    let done =
        sqlx::query("update export_runs set status = 'deleted' where id = $1 and org_id = $2 and status = 'completed'")
            .bind(id)
            .bind(org_id)
            .execute(pool)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// A completed scheduled run, as retention weighs it: (id, slot, object key).
pub type Candidate = (String, DateTime<Utc>, String);

/// The org's completed scheduled runs (manual ones are never pruned).
pub async fn completed_scheduled(pool: &PgPool, org_id: i64) -> sqlx::Result<Vec<Candidate>> {
    sqlx::query_as(
        "select id, scheduled_for, object_key from export_runs
         where org_id = $1 and trigger = 'scheduled' and status = 'completed'",
    )
    .bind(org_id)
    .fetch_all(pool)
    .await
}

/// Marks a completed run pruned (after its object is gone), inside the caller's
/// transaction; `false` when it was no longer completed.
pub async fn mark_pruned(conn: &mut sqlx::PgConnection, id: &str) -> sqlx::Result<bool> {
    let done = sqlx::query("update export_runs set status = 'pruned' where id = $1 and status = 'completed'")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}
