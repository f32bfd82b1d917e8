//! The `org_imports` table (`pending -> running -> completed | failed`), and the
//! checks a new import passes before anything of it is written: the slug, the
//! name, the source export. From the page and the API a restore takes two records:
//! a check (the engine's dry run, its report kept) and the confirmation of it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use ulid::Ulid;

use super::engine::{self, ImportError, Report};
use crate::{
    error::AppError,
    exports::runs::{self, RunStatus},
    jobs,
    orgs::OrgSlug,
    web::path::RecordId,
};

/// Attempts per import: a second one only runs when the first one's worker died
/// (missed heartbeats); an attempt that ends marks the import one way or the other.
pub const MAX_ATTEMPTS: u32 = 2;

/// The import job's arguments (queue `imports`; its handler is `super::job`): which
/// record to carry out. Pushed in the transaction that creates the record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImportJob {
    pub id: String,
}

crate::text_enum! {
    /// Where an import is: `pending -> running -> completed | failed`.
    pub enum ImportStatus {
        Pending => "pending",
        Running => "running",
        Completed => "completed",
        Failed => "failed",
    }
}

impl ImportStatus {
    /// Pending or running: the one import a slug may have at a time.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Pending | Self::Running)
    }
}

crate::text_enum! {
    /// Where the request came from.
    pub enum Via {
        Ui => "ui",
        Api => "api",
    }
}

/// The partial unique index that lets a check be confirmed once.
pub const ONE_CONFIRMATION_INDEX: &str = "org_imports_one_confirmation_per_check";
/// The partial unique index that allows one active import per slug.
pub const ONE_ACTIVE_INDEX: &str = "org_imports_one_active_per_slug";
/// A completed check can be confirmed for this long; then its upload is removed.
pub const CHECK_VALID_HOURS: i64 = 24;
/// A new org's name: 1 to this many characters, after trimming.
pub const MAX_NAME_CHARS: usize = 200;

/// An import as stored, with who asked and the source export's org.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Import {
    pub id: String,
    pub status: ImportStatus,
    pub slug: String,
    pub name: String,
    pub source_export_id: Option<String>,
    /// The slug of the org the source export belongs to.
    pub source_org: Option<String>,
    pub upload_key: Option<String>,
    pub upload_bytes: Option<i64>,
    pub via: Via,
    pub requested_by: Option<i64>,
    pub requested_by_email: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub attempt: i32,
    pub restored_org_id: Option<i64>,
    /// The restored org's slug, while it exists.
    pub restored_org: Option<String>,
    pub report: Option<serde_json::Value>,
    pub error: Option<String>,
    /// A check: the engine's dry run, whose report a confirmation makes real.
    pub dry_run: bool,
    /// For a confirmation: the check it confirms.
    pub check_id: Option<String>,
    /// For a check: the import that confirmed it (pending, running or completed; a
    /// failed confirmation leaves the check to be confirmed again).
    pub confirmed_by: Option<String>,
    /// The step a running import is in (`super::steps`); `None` once it has finished.
    pub step: Option<String>,
}

impl Import {
    pub fn is_active(&self) -> bool {
        self.status.is_active()
    }

    /// The engine's report of a completed import.
    pub fn report(&self) -> Option<Report> {
        serde_json::from_value(self.report.clone()?).ok()
    }

    /// `check` or `import`.
    pub fn kind(&self) -> &'static str {
        if self.dry_run { "check" } else { "import" }
    }

    /// Why this check cannot be confirmed now, if it cannot.
    pub fn unconfirmable(&self) -> Option<String> {
        if !self.dry_run {
            return Some(format!("{} is an import, not a check: only a check is confirmed", self.id));
        }
        if let Some(by) = &self.confirmed_by {
            return Some(format!("check {} was already confirmed (import {by})", self.id));
        }
        match self.status {
            ImportStatus::Pending | ImportStatus::Running => {
                return Some(format!("check {} has not finished yet; confirm it once it has", self.id));
            }
            ImportStatus::Failed => return Some(format!("check {} failed: fix the cause and check again", self.id)),
            ImportStatus::Completed => {}
        }
        if self.finished_at.is_some_and(|at| Utc::now() - at > chrono::Duration::hours(CHECK_VALID_HOURS)) {
            return Some(format!("check {} is older than {CHECK_VALID_HOURS} hours: check again", self.id));
        }
        None
    }

    /// The step to show: only while the import runs.
    pub fn running_step(&self) -> Option<&str> {
        self.step.as_deref().filter(|_| self.status == ImportStatus::Running)
    }

    /// The JSON API's view of an import.
    pub fn api_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "kind": self.kind(),
            "check_id": self.check_id,
            "confirmed_by": self.confirmed_by,
            "status": self.status,
            "step": self.running_step(),
            "slug": self.slug,
            "name": self.name,
            "source_export_id": self.source_export_id,
            "upload_bytes": self.upload_bytes,
            "via": self.via,
            "requested_by": self.requested_by_email,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "report": self.report,
            "error": self.error,
            "org": self.restored_org,
        })
    }
}

const SELECT: &str = "select i.id, i.status, i.slug, i.name, i.source_export_id, so.slug as source_org, i.upload_key,
    i.upload_bytes, i.via, i.requested_by, u.email as requested_by_email, i.created_at, i.started_at, i.finished_at,
    i.attempt, i.restored_org_id, o.slug as restored_org, i.report, i.error, i.dry_run, i.check_id,
    (select c.id from org_imports c where c.check_id = i.id and c.status <> 'failed'
     order by c.created_at desc limit 1) as confirmed_by, i.step
    from org_imports i
    left join users u on u.id = i.requested_by
    left join organizations o on o.id = i.restored_org_id
    left join export_runs r on r.id = i.source_export_id
    left join organizations so on so.id = r.org_id";

/// Where a new import reads its snapshot from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A completed export run of this platform.
    Export(String),
    /// A file uploaded to the platform bucket under `key`.
    Upload { key: String, bytes: i64 },
}

/// What a new import restores into, checked.
#[derive(Clone, Debug)]
pub struct Target {
    pub slug: OrgSlug,
    pub name: String,
}

/// Checks the new org's slug (its format, that no org has it, that no import is
/// already on its way to it) and its name (1 to 200 characters once trimmed, no
/// control characters). Reads only; the errors are the user's to read.
pub async fn check_target(pool: &PgPool, slug: &str, name: &str) -> Result<Target, AppError> {
    let slug = slug.trim();
    if OrgSlug::parse(slug).is_none() {
        return Err(AppError::BadRequest(rejected(engine::check_slug(pool, slug).await)));
    }
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(AppError::BadRequest(format!(
            "The new org's name must be 1 to {MAX_NAME_CHARS} characters (got {chars})."
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(AppError::BadRequest("The new org's name must not contain control characters.".into()));
    }
    let slug = match engine::check_slug(pool, slug).await {
        Ok(s) => s,
        Err(ImportError::Rejected(reason)) => return Err(AppError::InConflict(reason)),
        Err(ImportError::Failed(e)) => return Err(AppError::Internal(e)),
    };
    if let Some(id) = active_for_slug(pool, slug.as_str()).await? {
        return Err(conflict(slug.as_str(), &id));
    }
    Ok(Target { slug, name: name.to_string() })
}

/// The reason of a refused slug (a format error never reaches the database).
fn rejected(checked: Result<OrgSlug, ImportError>) -> String {
    match checked {
        Err(e) => e.to_string(),
        Ok(_) => "the slug is not valid".into(),
    }
}

fn conflict(slug: &str, active_id: &str) -> AppError {
    AppError::InConflict(format!(
        "an import into {slug:?} is already pending or running (import {active_id}); wait for it to finish"
    ))
}

/// Checks that `raw` is the id of a completed export run of any org whose file is
/// still there; returns the run's id.
pub async fn check_export(pool: &PgPool, raw: &str) -> Result<String, AppError> {
    let raw = raw.trim();
    let unknown = || AppError::NoSuch(format!("there is no export with id {raw:?}"));
    let id = RecordId::parse(raw).ok_or_else(unknown)?;
    let run = runs::get_any(pool, id.as_str()).await?.ok_or_else(unknown)?;
    if run.completed_key().is_none() {
        let why = match run.status {
            RunStatus::Pending | RunStatus::Running => "it has not finished yet",
            RunStatus::Failed => "it failed",
            RunStatus::Deleted | RunStatus::Pruned => "its file is gone",
            RunStatus::Completed => "it has no file",
        };
        return Err(AppError::BadRequest(format!(
            "export {} is {} and cannot be restored: {why}; choose a completed export",
            run.id, run.status
        )));
    }
    Ok(run.id)
}

/// The id of the import pending or running for `slug`.
pub async fn active_for_slug(pool: &PgPool, slug: &str) -> sqlx::Result<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("select id from org_imports where slug = $1 and status in ('pending', 'running')")
            .bind(slug)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|r| r.0))
}

/// Creates the check `id` (the first step: a dry run whose report is kept) and its
/// job, with an `org.import_requested` audit entry (platform-level), in one
/// transaction. An active import for the slug (the
/// partial unique index) is [`AppError::InConflict`], and nothing is written.
pub async fn create(
    pool: &PgPool,
    id: Ulid,
    target: &Target,
    source: &Source,
    requested_by: i64,
    via: Via,
) -> Result<Import, AppError> {
    create_step(pool, id, target, source, requested_by, via, None).await
}

/// [`create`] for a check (`confirms` = `None`) or for the confirmation of the
/// check `confirms`.
async fn create_step(
    pool: &PgPool,
    id: Ulid,
    target: &Target,
    source: &Source,
    requested_by: i64,
    via: Via,
    confirms: Option<&str>,
) -> Result<Import, AppError> {
    let (export_id, upload_key, upload_bytes) = match source {
        Source::Export(run) => (Some(run.as_str()), None, None),
        Source::Upload { key, bytes } => (None, Some(key.as_str()), Some(*bytes)),
    };
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "insert into org_imports (id, slug, name, source_export_id, upload_key, upload_bytes, via, requested_by,
                                  dry_run, check_id)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(id.to_string())
    .bind(target.slug.as_str())
    .bind(&target.name)
    .bind(export_id)
    .bind(upload_key)
    .bind(upload_bytes)
    .bind(via)
    .bind(requested_by)
    .bind(confirms.is_none())
    .bind(confirms)
    .execute(&mut *tx)
    .await;
    if let Err(e) = inserted {
        if crate::db::is_violation_of(&e, ONE_CONFIRMATION_INDEX) {
            return Err(AppError::InConflict(format!("check {} was already confirmed", confirms.unwrap_or_default())));
        }
        if crate::db::is_violation_of(&e, ONE_ACTIVE_INDEX) {
            drop(tx);
            let active = active_for_slug(pool, target.slug.as_str()).await?.unwrap_or_default();
            return Err(conflict(target.slug.as_str(), &active));
        }
        return Err(e.into());
    }
    jobs::push(&mut tx, id, &ImportJob { id: id.to_string() }, MAX_ATTEMPTS).await?;
    let details = serde_json::json!({
        "slug": target.slug.as_str(),
        "name": target.name,
        "source_export_id": export_id,
        "upload_bytes": upload_bytes,
        "via": via,
        "check_id": confirms,
    });
    let action = if confirms.is_some() { "org.import_confirmed" } else { "org.import_requested" };
    crate::audit::write(&mut *tx, None, Some(requested_by), action, &format!("import:{id}"), details).await?;
    tx.commit().await?;
    get(pool, &id.to_string()).await?.ok_or(AppError::NotFound)
}

/// An import by id.
pub async fn get(pool: &PgPool, id: &str) -> sqlx::Result<Option<Import>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} where i.id = $1"))).bind(id).fetch_optional(pool).await
}

/// The newest imports first.
pub async fn list(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<Import>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} order by i.created_at desc, i.id desc limit $1")))
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// Takes a pending import (or one left running by a worker that died) for this
/// attempt; `None` when it has finished or a later attempt holds it.
pub async fn start(pool: &PgPool, id: &str, attempt: i32) -> sqlx::Result<Option<Import>> {
    let taken = sqlx::query(
        "update org_imports set status = 'running', started_at = now(), attempt = $2, error = null, step = null
         where id = $1 and status in ('pending', 'running') and attempt < $2",
    )
    .bind(id)
    .bind(attempt)
    .execute(pool)
    .await?;
    if taken.rows_affected() == 0 {
        return Ok(None);
    }
    get(pool, id).await
}

/// Marks the import failed with a readable reason (while `attempt` holds it, or
/// whatever holds it when `None`); retried for a while, so that a database hiccup
/// cannot leave it running and its slug blocked. True when this call marked it.
pub async fn fail(pool: &PgPool, id: &str, attempt: Option<i32>, reason: &str) -> sqlx::Result<bool> {
    let reason: String = reason.chars().take(2000).collect();
    let mark = || async {
        let done = sqlx::query(
            "update org_imports set status = 'failed', finished_at = now(), error = $2, step = null
             where id = $1 and status in ('pending', 'running') and ($3::int is null or attempt = $3)",
        )
        .bind(id)
        .bind(&reason)
        .bind(attempt)
        .execute(pool)
        .await?;
        Ok(done.rows_affected() == 1)
    };
    crate::db::retry_write("marking an import failed", mark).await
}

/// Marks failed the imports left pending or running whose job is over for good (a
/// worker that died on the last attempt, a job removed by hand), so that no import
/// blocks its slug for ever. Returns them, for their uploads to be removed.
pub async fn fail_abandoned(pool: &PgPool) -> sqlx::Result<Vec<Import>> {
    let ids: Vec<(String,)> = sqlx::query_as(
        "update org_imports i set status = 'failed', finished_at = now(), step = null,
                error = 'the import job ended without finishing the import'
         where i.status in ('pending', 'running') and i.created_at < now() - interval '5 minutes'
           and not exists (select 1 from apalis.jobs j where j.id = i.id
                           and (j.status in ('Pending', 'Queued', 'Running')
                                or (j.status = 'Failed' and j.attempts < j.max_attempts)))
         returning i.id",
    )
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(ids.len());
    for (id,) in ids {
        out.extend(get(pool, &id).await?);
    }
    Ok(out)
}

/// Marks a check completed with the engine's report (the dry run wrote nothing),
/// while `attempt` holds it. True when this call marked it.
pub async fn complete_check(pool: &PgPool, id: &str, attempt: i32, report: &Report) -> sqlx::Result<bool> {
    let json = serde_json::to_value(report).unwrap_or_default();
    let done = sqlx::query(
        "update org_imports set status = 'completed', finished_at = now(), report = $3, error = null, step = null
         where id = $1 and status = 'running' and attempt = $2 and dry_run",
    )
    .bind(id)
    .bind(attempt)
    .bind(json)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Confirms the completed check `check_id`: a new import of the same source into
/// the same slug and name, whose engine is refused unless the file and the people
/// it matches are still what the check reported. Every refusal is a 4xx with the
/// reason, and writes nothing. Callers first sweep imports whose job ended
/// unfinished (`job::sweep_abandoned`), so that none blocks the slug.
pub async fn confirm(
    state: &crate::state::AppState,
    requested_by: i64,
    check_id: &str,
    via: Via,
) -> Result<Import, AppError> {
    let check = get(&state.pool, check_id).await?.ok_or(AppError::NotFound)?;
    if let Some(why) = check.unconfirmable() {
        return Err(match check.status {
            ImportStatus::Completed if check.confirmed_by.is_some() => AppError::InConflict(why),
            ImportStatus::Pending | ImportStatus::Running => AppError::InConflict(why),
            _ => AppError::BadRequest(why),
        });
    }
    let target = check_target(&state.pool, &check.slug, &check.name).await?;
    let source = match (&check.source_export_id, &check.upload_key, check.upload_bytes) {
        (Some(export), _, _) => Source::Export(check_export(&state.pool, export).await?),
        (None, Some(key), Some(bytes)) => Source::Upload { key: key.clone(), bytes },
        _ => return Err(AppError::BadRequest(format!("check {} has no source", check.id))),
    };
    create_step(&state.pool, Ulid::generate(), &target, &source, requested_by, via, Some(check.id.as_str())).await
}

/// Completed checks from an upload that can no longer be confirmed (too old, never
/// confirmed), marked as such (once) in `error`: the sweep removes their uploads.
/// Returns them.
pub async fn expired_checks(pool: &PgPool) -> sqlx::Result<Vec<Import>> {
    let ids: Vec<(String,)> = sqlx::query_as(
        "update org_imports i set error = 'the check expired unconfirmed; its uploaded file was removed'
         where i.dry_run and i.upload_key is not null and i.status = 'completed' and i.error is null
           and i.finished_at < now() - make_interval(hours => $1)
           and not exists (select 1 from org_imports c where c.check_id = i.id and c.status <> 'failed')
         returning i.id",
    )
    .bind(CHECK_VALID_HOURS as i32)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(ids.len());
    for (id,) in ids {
        out.extend(get(pool, &id).await?);
    }
    Ok(out)
}

/// A platform admin's request to restore the completed export `export_id` as a new
/// org: checks the slug, the name and the export, then creates the check and its
/// job (see [`confirm`] for the second step). Every refusal is a 4xx with the reason, and writes nothing.
/// Callers first sweep imports whose job ended unfinished (`job::sweep_abandoned`).
pub async fn request_from_export(
    state: &crate::state::AppState,
    requested_by: i64,
    export_id: &str,
    slug: &str,
    name: &str,
    via: Via,
) -> Result<Import, AppError> {
    let target = check_target(&state.pool, slug, name).await?;
    let export = check_export(&state.pool, export_id).await?;
    create(&state.pool, Ulid::generate(), &target, &Source::Export(export), requested_by, via).await
}
