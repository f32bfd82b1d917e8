//! Each org's bucket, checked on its own. Platform Verify checks the platform's
//! own bucket and endpoint at once (that decides "verified"), then records a
//! verification and pushes its job (queue `buckets`), which probes every org's
//! bucket in the background, `BUCKET_CHECK_CONCURRENCY` at a time, and records each
//! org's `bucket_state`. A failing bucket refuses only its org's exports.

use anyhow::Context;
use apalis::prelude::BoxDynError;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use ulid::Ulid;

use crate::{jobs, settings::backup, state::AppState};

/// The job: check every org bucket not yet checked since its verification began.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BucketCheckJob {
    pub verification_id: String,
}

/// A verification of the org buckets, with its progress.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Verification {
    pub id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub total: i32,
    /// Org buckets checked since it began.
    pub checked: i64,
    /// Of those, the ones that failed.
    pub failed: i64,
    pub error: Option<String>,
}

/// What Verify did at once.
#[derive(Debug)]
pub enum Started {
    /// The platform's bucket and endpoint work; the org buckets are being checked.
    Checking(String),
    /// The platform's own bucket or endpoint failed: nothing else was started.
    PlatformFailed(String),
}

/// Platform Verify: the platform's own bucket and endpoint now (which decides
/// whether exports may run), then every org's bucket in the background. A
/// verification still running is reused rather than started twice.
pub async fn verify(state: &AppState, actor: Option<i64>) -> anyhow::Result<Started> {
    if let Err(e) = backup::verify(state, actor).await? {
        return Ok(Started::PlatformFailed(e));
    }
    Ok(Started::Checking(start_checks(state, actor).await?))
}

/// Records a verification of every org bucket and pushes its job, in one
/// transaction; an unfinished verification of the last hour is returned instead.
pub async fn start_checks(state: &AppState, actor: Option<i64>) -> anyhow::Result<String> {
    let mut tx = state.pool.begin().await?;
    // One verification at a time, across processes.
    sqlx::query("select pg_advisory_xact_lock(1146114129, 30)").execute(&mut *tx).await?;
    // Reused only while its job can still finish it (waiting, running, or failed
    // with attempts left).
    let running: Option<(String,)> = sqlx::query_as(
        "select v.id from bucket_verifications v join apalis.jobs j on j.id = v.id
         where v.finished_at is null and v.started_at > now() - interval '1 hour'
           and (j.status in ('Pending', 'Queued', 'Running') or (j.status = 'Failed' and j.attempts < j.max_attempts))
         order by v.started_at desc limit 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((id,)) = running {
        return Ok(id);
    }
    let id = Ulid::generate();
    sqlx::query(
        "insert into bucket_verifications (id, started_by, total) values ($1, $2, (select count(*) from organizations where lifecycle in ('active', 'closing')))",
    )
    .bind(id.to_string())
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    jobs::push(&mut tx, id, &BucketCheckJob { verification_id: id.to_string() }, 5).await?;
    tx.commit().await?;
    Ok(id.to_string())
}

/// The newest verification, with its progress.
pub async fn latest(pool: &sqlx::PgPool) -> sqlx::Result<Option<Verification>> {
    sqlx::query_as(
        "select v.id, v.started_at, v.finished_at, v.total, v.error,
                (select count(*) from organizations o where o.bucket_checked_at >= v.started_at) as checked,
                (select count(*) from organizations o where o.bucket_checked_at >= v.started_at
                                                       and o.bucket_state = 'failing') as failed
         from bucket_verifications v order by v.started_at desc limit 1",
    )
    .fetch_optional(pool)
    .await
}

/// Orgs whose bucket failed its last check: (slug, error), by slug, at most `limit`.
pub async fn failing(pool: &sqlx::PgPool, limit: i64) -> sqlx::Result<Vec<(String, Option<String>)>> {
    sqlx::query_as("select slug, bucket_error from organizations where bucket_state = 'failing' order by slug limit $1")
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// Probes the bucket of every org not checked since `since`, `concurrency` at a
/// time, and records each outcome. Returns (checked, failed).
pub async fn check_all(state: &AppState, since: DateTime<Utc>) -> anyhow::Result<(usize, usize)> {
    let orgs: Vec<(i64, String)> = sqlx::query_as(
        // An erased org's bucket is gone for good: a probe would create it again.
        "select id, bucket from organizations
         where lifecycle in ('active', 'closing') and (bucket_checked_at is null or bucket_checked_at < $1) order by id",
    )
    .bind(since)
    .fetch_all(&state.pool)
    .await?;
    check(state, orgs).await
}

/// Probes each of `orgs` (id, bucket), `BUCKET_CHECK_CONCURRENCY` at a time, and
/// records each outcome; stops with an error, marking nobody, when the platform's
/// own bucket fails too.
async fn check(state: &AppState, orgs: Vec<(i64, String)>) -> anyhow::Result<(usize, usize)> {
    let concurrency = state.config.bucket_check_concurrency;
    let mut outcomes = futures::stream::iter(orgs)
        .map(|(id, bucket)| async move { (id, probe_twice(state, &bucket).await) })
        .buffer_unordered(concurrency);
    let (mut checked, mut failed) = (0, 0);
    while let Some((org_id, outcome)) = outcomes.next().await {
        if outcome.is_err() {
            // Not the org's fault when the platform's own bucket fails too (the
            // endpoint is down): stop without marking anyone; the job is retried.
            let platform = state.storage.privacy_bucket().to_string();
            state.storage.probe_bucket(&platform).await.context(
                "the platform's own bucket failed too while the org buckets were checked; no org was marked",
            )?;
        }
        let error = outcome.err().map(|e| format!("{e:#}").chars().take(2000).collect::<String>());
        sqlx::query(
            "update organizations set bucket_state = case when $2::text is null then 'ok' else 'failing' end,
                    bucket_error = $2, bucket_checked_at = now()
             where id = $1",
        )
        .bind(org_id)
        .bind(&error)
        .execute(&state.pool)
        .await?;
        checked += 1;
        if error.is_some() {
            failed += 1;
        }
    }
    Ok((checked, failed))
}

/// A probe, and one more 2 s after a failure: a throttled request or a blip must
/// not pause an org's exports.
async fn probe_twice(state: &AppState, bucket: &str) -> anyhow::Result<()> {
    if state.storage.probe_bucket(bucket).await.is_ok() {
        return Ok(());
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    state.storage.probe_bucket(bucket).await
}

/// Checks again, at most `limit` at a time, the org buckets that failed their last
/// check more than 10 minutes ago (run by housekeeping), so that a bucket that was
/// fixed lets its org export again without a platform admin pressing Verify.
/// Returns (checked, still failing).
pub async fn recheck_failing(state: &AppState, limit: i64) -> anyhow::Result<(usize, usize)> {
    let orgs: Vec<(i64, String)> = sqlx::query_as(
        "select id, bucket from organizations
         where bucket_state = 'failing' and bucket_checked_at < now() - interval '10 minutes'
           and lifecycle in ('active', 'closing')
         order by bucket_checked_at limit $1",
    )
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    if orgs.is_empty() {
        return Ok((0, 0));
    }
    check(state, orgs).await
}

impl jobs::Job for BucketCheckJob {
    const QUEUE: &'static str = "buckets";
    type Context = ();

    /// A retry goes on where the last attempt stopped (orgs checked since the
    /// verification began are skipped).
    async fn run(self, state: AppState, _: (), _attempt: usize) -> Result<(), BoxDynError> {
        let Some((started_at,)): Option<(DateTime<Utc>,)> =
            sqlx::query_as("select started_at from bucket_verifications where id = $1 and finished_at is null")
                .bind(&self.verification_id)
                .fetch_optional(&state.pool)
                .await?
        else {
            return Ok(());
        };
        let (checked, failed, error) = match check_all(&state, started_at).await {
            Ok((checked, failed)) => (checked, failed, None),
            // The endpoint itself failed: nobody was marked for it, and the
            // verification ends saying so (Verify starts a new one).
            Err(e) => (0, 0, Some(format!("{e:#}").chars().take(2000).collect::<String>())),
        };
        sqlx::query("update bucket_verifications set finished_at = now(), error = $2 where id = $1")
            .bind(&self.verification_id)
            .bind(&error)
            .execute(&state.pool)
            .await?;
        tracing::info!(verification = self.verification_id, checked, failed, "org buckets checked");
        let details = serde_json::json!({ "verification": self.verification_id, "failed": failed, "error": error });
        crate::audit::write(&state.pool, None, None, "backup.buckets_checked", "backup_configuration", details).await?;
        Ok(())
    }
}
