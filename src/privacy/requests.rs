//! The `privacy_requests` table: `pending -> running -> completed | failed`, then
//! `completed -> expired`.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sqlx::PgPool;
use ulid::Ulid;

use super::PrivacyJob;
use crate::{jobs, mail, snapshot::job::Failure, web::path::RecordId};

crate::text_enum! {
    /// Where a request is: `pending -> running -> completed | failed`, then
    /// `completed -> expired`.
    pub enum RequestStatus {
        Pending => "pending",
        Running => "running",
        Completed => "completed",
        Failed => "failed",
        Expired => "expired",
    }
}

/// Self-service requests allowed per person in this window.
pub const SELF_SERVICE_WINDOW_HOURS: i64 = 24;
/// The advisory lock class serialising one person's request creation.
const LOCK_CLASS: i32 = 0x4458_5052 + 1;
const ONE_ACTIVE_INDEX: &str = "privacy_requests_one_active_per_user";

/// A request as stored, with who it is for and who asked.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Request {
    pub id: String,
    pub user_id: i64,
    pub user_email: String,
    pub requested_by: Option<i64>,
    pub requested_by_email: Option<String>,
    pub on_behalf: bool,
    pub reason: Option<String>,
    pub status: RequestStatus,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub object_key: Option<String>,
    #[serde(skip)]
    pub upload_id: Option<String>,
    pub snapshot_at: Option<DateTime<Utc>>,
    pub size_bytes: Option<i64>,
    pub sha256: Option<String>,
    pub counts: Option<serde_json::Value>,
    /// Why it failed, in plain words (what the member sees).
    pub error: Option<String>,
    /// The whole error chain of a failure, for platform admins only.
    #[serde(skip)]
    pub error_detail: Option<String>,
}

impl Request {
    pub fn is_active(&self) -> bool {
        matches!(self.status, RequestStatus::Pending | RequestStatus::Running)
    }

    /// When the file goes, for a completed request.
    pub fn expires_at(&self, retention_days: i32) -> Option<DateTime<Utc>> {
        (self.status == RequestStatus::Completed).then_some(self.finished_at? + Duration::days(retention_days.into()))
    }
}

const SELECT: &str = "select r.id, r.user_id, u.email as user_email, r.requested_by, b.email as requested_by_email,
    r.on_behalf, r.reason, r.status, r.created_at, r.started_at, r.finished_at, r.object_key, r.upload_id, r.snapshot_at, r.size_bytes, r.sha256,
    r.counts, r.error, r.error_detail
    from privacy_requests r join users u on u.id = r.user_id left join users b on b.id = r.requested_by";

/// Why a request was not created.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// One is already pending or running.
    Active { id: String },
    /// The person asked within the last 24 hours; the next request is possible then.
    TooSoon { next: DateTime<Utc> },
}

/// The person's own request: at most one per 24 hours (failed ones do not count),
/// and one active at a time. Serialised per person, so parallel clicks make one.
pub async fn create_self(pool: &PgPool, user_id: i64, max_attempts: u32) -> anyhow::Result<Result<Request, Refusal>> {
    create(pool, user_id, user_id, None, max_attempts).await
}

/// A platform admin's request on someone's behalf, with its reason (3 to 500
/// characters). Not limited to one per 24 hours, but one active at a time.
pub async fn create_on_behalf(
    pool: &PgPool,
    admin_id: i64,
    user_id: i64,
    reason: &str,
    max_attempts: u32,
) -> anyhow::Result<Result<Request, Refusal>> {
    create(pool, user_id, admin_id, Some(reason), max_attempts).await
}

async fn create(
    pool: &PgPool,
    user_id: i64,
    requested_by: i64,
    reason: Option<&str>,
    max_attempts: u32,
) -> anyhow::Result<Result<Request, Refusal>> {
    let mut tx = pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock($1, ($2 % 2147483647)::int)")
        .bind(LOCK_CLASS)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    let active: Option<(String,)> =
        sqlx::query_as("select id from privacy_requests where user_id = $1 and status in ('pending', 'running')")
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some((id,)) = active {
        return Ok(Err(Refusal::Active { id }));
    }
    if reason.is_none() {
        let last: Option<(DateTime<Utc>,)> = sqlx::query_as(
            "select created_at from privacy_requests
             where user_id = $1 and not on_behalf and status <> 'failed' and created_at > now() - make_interval(hours => $2)
             order by created_at desc limit 1",
        )
        .bind(user_id)
        .bind(SELF_SERVICE_WINDOW_HOURS as i32)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((at,)) = last {
            return Ok(Err(Refusal::TooSoon { next: at + Duration::hours(SELF_SERVICE_WINDOW_HOURS) }));
        }
    }
    let id = Ulid::generate();
    let inserted = sqlx::query(
        "insert into privacy_requests (id, user_id, requested_by, on_behalf, reason) values ($1, $2, $3, $4, $5)",
    )
    .bind(id.to_string())
    .bind(user_id)
    .bind(requested_by)
    .bind(reason.is_some())
    .bind(reason.map(str::trim))
    .execute(&mut *tx)
    .await;
    if let Err(e) = inserted {
        if crate::db::is_violation_of(&e, ONE_ACTIVE_INDEX) {
            return Ok(Err(Refusal::Active { id: String::new() }));
        }
        return Err(e.into());
    }
    jobs::push(&mut tx, id, &PrivacyJob { request_id: id.to_string() }, max_attempts).await?;
    let (action, details) = match reason {
        Some(r) => ("privacy.requested_on_behalf", serde_json::json!({ "user_id": user_id, "reason": r.trim() })),
        None => ("privacy.requested", serde_json::json!({ "user_id": user_id })),
    };
    crate::audit::write(&mut *tx, None, Some(requested_by), action, &format!("privacy_request:{id}"), details).await?;
    tx.commit().await?;
    let request = get_any(pool, &id.to_string()).await?.ok_or_else(|| anyhow::anyhow!("the new request vanished"))?;
    Ok(Ok(request))
}

/// One page of requests, newest first.
#[derive(Debug)]
pub struct Page {
    pub requests: Vec<Request>,
    /// The last request's id while older ones remain: the next page's `before`.
    pub next: Option<String>,
}

/// At most `limit` requests of one person (or of everyone, with `None`), newest
/// first, older than the request `before` (keyset paging on `(created_at, id)`).
/// `None` when `before` is no request of that list.
pub async fn page(
    pool: &PgPool,
    user_id: Option<i64>,
    limit: i64,
    before: Option<&RecordId>,
) -> sqlx::Result<Option<Page>> {
    let mut requests: Vec<Request> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} where ($1::bigint is null or r.user_id = $1)
           and ($3::text is null
                or (r.created_at, r.id) < (select b.created_at, b.id from privacy_requests b
                                           where b.id = $3 and ($1::bigint is null or b.user_id = $1)))
         order by r.created_at desc, r.id desc limit $2"
    )))
    .bind(user_id)
    .bind(limit + 1)
    .bind(before.map(RecordId::as_str))
    .fetch_all(pool)
    .await?;
    if requests.is_empty() && before.is_some() {
        // Nothing older, or no such request: only the second is an error.
        let known: bool = sqlx::query_scalar(
            "select exists (select 1 from privacy_requests where id = $1 and ($2::bigint is null or user_id = $2))",
        )
        .bind(before.map(RecordId::as_str))
        .bind(user_id)
        .fetch_one(pool)
        .await?;
        if !known {
            return Ok(None);
        }
    }
    let next = crate::db::keyset_next(&mut requests, limit, |r| &r.id);
    Ok(Some(Page { requests, next }))
}

/// One of the person's requests (None for anyone else's).
pub async fn get_for_user(pool: &PgPool, user_id: i64, id: &RecordId) -> sqlx::Result<Option<Request>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} where r.id = $1 and r.user_id = $2")))
        .bind(id.as_str())
        .bind(user_id)
        .fetch_optional(pool)
        .await
}

/// Any request by id.
pub async fn get_any(pool: &PgPool, id: &str) -> sqlx::Result<Option<Request>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} where r.id = $1"))).bind(id).fetch_optional(pool).await
}

/// Takes a pending request (or one whose worker died) for this attempt.
pub async fn start(pool: &PgPool, id: &str, attempt: i32) -> sqlx::Result<Option<Request>> {
    let taken = sqlx::query(
        "update privacy_requests set status = 'running', started_at = coalesce(started_at, now()), attempts = $2
         where id = $1 and status in ('pending', 'running') and attempts < $2",
    )
    .bind(id)
    .bind(attempt)
    .execute(pool)
    .await?;
    if taken.rows_affected() == 0 {
        return Ok(None);
    }
    get_any(pool, id).await
}

/// Records (or clears) this attempt's open multipart upload.
pub async fn set_upload_id(pool: &PgPool, id: &str, attempt: i32, upload_id: Option<&str>) -> sqlx::Result<()> {
    sqlx::query("update privacy_requests set upload_id = $3 where id = $1 and attempts = $2")
        .bind(id)
        .bind(attempt)
        .bind(upload_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// What a completed attempt wrote.
pub struct Written<'a> {
    pub key: &'a str,
    pub size_bytes: i64,
    pub sha256: &'a str,
    pub counts: &'a serde_json::Value,
    pub snapshot_at: DateTime<Utc>,
}

/// Records the file of this attempt and, in the same transaction, queues the
/// person's "your data is ready" mail (a link to their privacy page, built on
/// `public_url`). False when a newer attempt took over.
pub async fn complete(pool: &PgPool, public_url: &str, id: &str, attempt: i32, w: Written<'_>) -> anyhow::Result<bool> {
    let mut tx = pool.begin().await?;
    let done: Option<(i64, DateTime<Utc>)> = sqlx::query_as(
        "update privacy_requests set status = 'completed', finished_at = now(), object_key = $3, size_bytes = $4,
         sha256 = $5, counts = $6, snapshot_at = $7, upload_id = null, error = null
         where id = $1 and status = 'running' and attempts = $2
         returning user_id, created_at",
    )
    .bind(id)
    .bind(attempt)
    .bind(w.key)
    .bind(w.size_bytes)
    .bind(w.sha256)
    .bind(w.counts)
    .bind(w.snapshot_at)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((user_id, asked)) = done else { return Ok(false) };
    mail::enqueue_or_log(&mut tx, user_id, &ready_mail(public_url, asked)).await?;
    tx.commit().await?;
    Ok(true)
}

/// The person's privacy page, where the file is downloaded after signing in (a
/// mail never carries a presigned URL: it would outlive its 15 minutes).
fn privacy_page(public_url: &str) -> String {
    format!("{public_url}{}", crate::routes::ME_PRIVACY)
}

fn ready_mail(public_url: &str, asked: DateTime<Utc>) -> mail::Message {
    mail::Message {
        kind: mail::Kind::PrivacyRequest,
        subject: "Your data is ready".into(),
        text: format!(
            "The copy of your data requested on {} is ready.\n\n\
             Sign in and download it from your privacy page:\n{}\n\n\
             The download link on that page is valid for 15 minutes each time you open it; \
             the file itself is deleted after the platform's retention period.",
            asked.format("%Y-%m-%d %H:%M UTC"),
            privacy_page(public_url)
        ),
    }
}

fn failed_mail(public_url: &str, asked: DateTime<Utc>) -> mail::Message {
    mail::Message {
        kind: mail::Kind::PrivacyRequest,
        subject: "Your data request could not be completed".into(),
        text: format!(
            "The copy of your data requested on {} could not be made.\n\n\
             You can request it again on your privacy page:\n{}\n\n\
             If it fails again, please contact support.",
            asked.format("%Y-%m-%d %H:%M UTC"),
            privacy_page(public_url)
        ),
    }
}

/// Marks the request failed with the failure's plain reason (what the member sees)
/// and its detail (for platform admins), for this attempt, or any when None, and
/// queues the person's mail saying so in the same transaction; retried for a while,
/// so a database hiccup cannot leave it `running` (which would block the person's
/// next request). True when this call marked it.
pub async fn fail(
    pool: &PgPool,
    public_url: &str,
    id: &str,
    attempt: Option<i32>,
    failure: &Failure,
) -> anyhow::Result<bool> {
    let (reason, detail) = failure.bounded();
    let mark = || async {
        let mut tx = pool.begin().await?;
        let done: Option<(i64, DateTime<Utc>)> = sqlx::query_as(
            "update privacy_requests set status = 'failed', finished_at = now(), error = $2, error_detail = $4
             where id = $1 and status in ('pending', 'running') and ($3::int is null or attempts = $3)
             returning user_id, created_at",
        )
        .bind(id)
        .bind(&reason)
        .bind(attempt)
        .bind(&detail)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((user_id, asked)) = done else { return Ok(false) };
        mail::enqueue_or_log(&mut tx, user_id, &failed_mail(public_url, asked)).await?;
        tx.commit().await?;
        anyhow::Ok(true)
    };
    crate::db::retry_write("marking a data-subject request failed", mark).await
}

/// Marks failed the requests left pending or running whose job is over for good
/// (a worker that died on the last attempt, a job removed by hand), so that no
/// request blocks its person for ever, and queues each person's mail saying so.
/// Returns how many.
pub async fn fail_abandoned(pool: &PgPool, public_url: &str) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    let done: Vec<(i64, DateTime<Utc>)> = sqlx::query_as(
        "update privacy_requests r set status = 'failed', finished_at = now(),
                error = 'The export job ended without finishing the request.'
         where r.status in ('pending', 'running') and r.created_at < now() - interval '5 minutes'
           and not exists (select 1 from apalis.jobs j where j.id = r.id
                           and (j.status in ('Pending', 'Queued', 'Running')
                                or (j.status = 'Failed' and j.attempts < j.max_attempts)))
         returning r.user_id, r.created_at",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (user_id, asked) in &done {
        mail::enqueue_or_log(&mut tx, *user_id, &failed_mail(public_url, *asked)).await?;
    }
    tx.commit().await?;
    Ok(done.len() as u64)
}
