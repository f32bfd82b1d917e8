//! The `export_tables` table: one conversion of a completed export into tables per
//! format, `pending -> running -> completed | failed`, a failed one retried on the
//! same row with a new job. Its job (`job_id`) is its lease: only that job's worker
//! moves a row on, and a row whose job is over for good reads as failed.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::Format;

crate::text_enum! {
    /// Where a conversion is.
    pub enum TablesStatus {
        Pending => "pending",
        Running => "running",
        Completed => "completed",
        Failed => "failed",
    }
}

impl TablesStatus {
    pub fn is_active(self) -> bool {
        matches!(self, Self::Pending | Self::Running)
    }
}

/// The unique key that allows one conversion per export and format.
pub const ONE_PER_FORMAT: &str = "export_tables_one_per_format";

/// What a row shows when its job ended without finishing it (a worker that died on
/// the last attempt, a job removed by hand).
pub const JOB_ENDED: &str = "the conversion's job ended without finishing it; try again";

/// A conversion, as its org's admins see it.
#[derive(Clone, Debug, sqlx::FromRow, serde::Deserialize)]
pub struct Tables {
    pub id: String,
    pub org_id: i64,
    pub export_id: String,
    pub format: String,
    /// Failed when the stored state is pending or running but its job is over.
    pub status: TablesStatus,
    pub job_id: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub object_key: Option<String>,
    pub size_bytes: Option<i64>,
    pub rows_total: Option<i64>,
    pub rows_written: i64,
    pub error: Option<String>,
}

impl Tables {
    pub fn format(&self) -> Format {
        Format::parse(&self.format).unwrap_or(Format::Csv)
    }

    /// Progress from 0.0 to 1.0, when known.
    pub fn progress(&self) -> Option<f64> {
        match (self.status, self.rows_total) {
            (TablesStatus::Completed, _) => Some(1.0),
            (_, Some(total)) if total > 0 => Some((self.rows_written as f64 / total as f64).clamp(0.0, 1.0)),
            _ => None,
        }
    }

    /// The object key of a completed conversion's zip.
    pub fn completed_key(&self) -> Option<&str> {
        self.object_key.as_deref().filter(|_| self.status == TablesStatus::Completed)
    }

    /// The JSON API's view.
    pub fn api_json(&self) -> serde_json::Value {
        serde_json::json!({
            "export_id": self.export_id,
            "format": self.format,
            "status": self.status,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "size_bytes": self.size_bytes,
            "rows_total": self.rows_total,
            "rows_written": self.rows_written,
            "progress": self.progress(),
            "error": self.error,
        })
    }
}

/// Whether the job `t.job_id` can still run (or run again).
pub const JOB_ALIVE: &str = "exists (select 1 from apalis.jobs j where j.id = t.job_id
        and (j.status in ('Pending', 'Queued', 'Running') or (j.status = 'Failed' and j.attempts < j.max_attempts)))";

fn select() -> String {
    let job_ended = JOB_ENDED.replace('\'', "''");
    format!(
        "select t.id, t.org_id, t.export_id, t.format,
                case when t.status in ('pending', 'running') and not {JOB_ALIVE} then 'failed' else t.status end as status,
                t.job_id, t.created_at, t.started_at, t.finished_at, t.object_key, t.size_bytes, t.rows_total,
                t.rows_written,
                case when t.status in ('pending', 'running') and not {JOB_ALIVE} then '{job_ended}' else t.error end as error
         from export_tables t"
    )
}

/// An SQL expression: the conversions of the export whose id and org are the
/// expressions `export_id` and `org_id`, as a JSON array of [`Tables`] (null for none),
/// so that a query of the export reads them in the same statement.
pub fn json_of_export(export_id: &str, org_id: &str) -> String {
    format!(
        "(select json_agg(j order by j.format) from ({} where t.export_id = {export_id} and t.org_id = {org_id}) j)",
        select()
    )
}

/// The conversion of the org's export `export_id` into `format`.
pub async fn get(pool: &PgPool, org_id: i64, export_id: &str, format: Format) -> sqlx::Result<Option<Tables>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{} where t.org_id = $1 and t.export_id = $2 and t.format = $3",
        select()
    )))
    .bind(org_id)
    .bind(export_id)
    .bind(format.as_str())
    .fetch_optional(pool)
    .await
}

/// A conversion by id, whatever its org (for the job).
pub async fn get_any(pool: &PgPool, id: &str) -> sqlx::Result<Option<Tables>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{} where t.id = $1", select()))).bind(id).fetch_optional(pool).await
}

/// A conversion to create.
#[derive(Clone, Copy, Debug)]
pub struct New<'a> {
    pub id: &'a str,
    pub org_id: i64,
    pub export_id: &'a str,
    pub format: Format,
    pub user_id: i64,
    pub job_id: &'a str,
    /// The export's rows (for the progress).
    pub rows_total: Option<i64>,
}

/// Creates the conversion row in the caller's transaction; `None` when the export
/// has one in this format already.
pub async fn insert(conn: &mut sqlx::PgConnection, new: &New<'_>) -> sqlx::Result<bool> {
    let New { id, org_id, export_id, format, user_id, job_id, rows_total } = *new;
    let done = sqlx::query(
        "insert into export_tables (id, org_id, export_id, format, requested_by, job_id, rows_total)
         values ($1, $2, $3, $4, $5, $6, $7)
         on conflict on constraint export_tables_one_per_format do nothing",
    )
    .bind(id)
    .bind(org_id)
    .bind(export_id)
    .bind(format.as_str())
    .bind(user_id)
    .bind(job_id)
    .bind(rows_total)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Sets a failed conversion (or one whose job is over) pending again under a new
/// job, in the caller's transaction; false when it is not failed (a second click
/// while it is pending or running, or a completed one).
pub async fn retry(
    conn: &mut sqlx::PgConnection,
    org_id: i64,
    export_id: &str,
    format: Format,
    user_id: i64,
    job_id: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "update export_tables t set status = 'pending', job_id = $4, requested_by = $5, created_at = now(),
                started_at = null, finished_at = null, object_key = null, size_bytes = null, rows_written = 0,
                error = null
         where t.org_id = $1 and t.export_id = $2 and t.format = $3
           and (t.status = 'failed' or (t.status in ('pending', 'running') and not {JOB_ALIVE}))"
    )))
    .bind(org_id)
    .bind(export_id)
    .bind(format.as_str())
    .bind(job_id)
    .bind(user_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Takes the conversion for its job `job_id`: running, from the start. `None` when
/// the row is gone, finished, or another job's.
pub async fn start(pool: &PgPool, id: &str, job_id: &str) -> sqlx::Result<Option<Tables>> {
    let taken = sqlx::query(
        "update export_tables set status = 'running', started_at = now(), rows_written = 0, error = null
         where id = $1 and job_id = $2 and status in ('pending', 'running')",
    )
    .bind(id)
    .bind(job_id)
    .execute(pool)
    .await?;
    if taken.rows_affected() == 0 {
        return Ok(None);
    }
    get_any(pool, id).await
}

/// Saves the rows written so far; false once the job no longer holds the row.
pub async fn set_progress(pool: &PgPool, id: &str, job_id: &str, rows: i64) -> sqlx::Result<bool> {
    let done =
        sqlx::query("update export_tables set rows_written = $3 where id = $1 and job_id = $2 and status = 'running'")
            .bind(id)
            .bind(job_id)
            .bind(rows)
            .execute(pool)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks the conversion completed with its zip; false once the job no longer holds it.
pub async fn complete(pool: &PgPool, id: &str, job_id: &str, key: &str, size: i64, rows: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "update export_tables set status = 'completed', finished_at = now(), object_key = $3, size_bytes = $4,
                rows_written = $5, rows_total = $5, error = null
         where id = $1 and job_id = $2 and status = 'running'",
    )
    .bind(id)
    .bind(job_id)
    .bind(key)
    .bind(size)
    .bind(rows)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks the conversion failed with the reason; false once the job no longer holds it.
pub async fn fail(pool: &PgPool, id: &str, job_id: &str, error: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "update export_tables set status = 'failed', finished_at = now(), error = $3
         where id = $1 and job_id = $2 and status in ('pending', 'running')",
    )
    .bind(id)
    .bind(job_id)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether a completed conversion's zip is at `key` (so a job that lost its row
/// must not remove it).
pub async fn is_completed_at(pool: &PgPool, key: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("select exists (select 1 from export_tables where object_key = $1 and status = 'completed')")
        .bind(key)
        .fetch_one(pool)
        .await
}

/// Removes the conversions of an export, returning the object keys their zips
/// have or may have (a running one's is known by the export's key).
pub async fn remove_of_export(pool: &PgPool, export_id: &str) -> sqlx::Result<Vec<(String, Option<String>)>> {
    sqlx::query_as("delete from export_tables where export_id = $1 returning format, object_key")
        .bind(export_id)
        .fetch_all(pool)
        .await
}
