//! GDPR / CCPA data-subject exports: one person's data across the platform, as one
//! gzipped JSON file (`data-export/subject-access`, version 1) in the platform's
//! privacy bucket under `privacy/{user-id}/{request-id}.json.gz`.
//!
//! A request is made by the person (`/me/privacy`, at most one per 24 hours) or by
//! a platform admin on their behalf with a reason. The job (queue `privacy`) reads
//! the person's rows in one consistent snapshot through the same streaming pipeline
//! as the org export. Files expire after the platform's `privacy_retention_days`.

pub mod requests;
pub mod web;

use anyhow::Context;
use apalis::prelude::*;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{
    exports::{
        pipeline::{Snapshot, SubjectSection},
        sink::{self, Sink},
    },
    jobs, orgs,
    state::AppState,
};

/// The queue of data-subject export jobs.
pub const QUEUE: &str = "privacy";

/// The job's arguments.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PrivacyJob {
    pub request_id: String,
}

/// The worker's backend.
pub fn storage(state: &AppState) -> jobs::Storage<PrivacyJob> {
    jobs::storage(state, QUEUE)
}

/// The object key: `privacy/{user-id}/{request-id}.json.gz`.
pub fn object_key(user_id: i64, request_id: &str) -> String {
    format!("privacy/{user_id}/{request_id}.json.gz")
}

/// The account, without secrets (no password hash).
const SUBJECT_SQL: &str =
    "select row_to_json(u)::text from (select id, email, display_name, created_at from users where id = $1) u";

/// What the file holds, section by section: the person's memberships and what hangs
/// off them, what they authored, what is about them, and their audit entries. Every
/// condition selects by the person's id; no other person's rows are read.
pub fn subject_sections(user_id: i64) -> Vec<SubjectSection> {
    let mine = format!("t.membership_id in (select m.id from memberships m where m.user_id = {user_id})");
    let by = |column: &str| format!("t.{column} = {user_id}");
    let s = |name: &'static str, table: &'static str, condition: String| SubjectSection { name, table, condition };
    vec![
        // Membership: each org membership with its profile, custom field values, enrichment.
        s("memberships", "memberships", by("user_id")),
        s("user_profiles", "user_profiles", by("user_id")),
        s("custom_field_values", "custom_field_values", mine.clone()),
        s("member_enrichment", "member_enrichment", mine.clone()),
        s("saved_views", "saved_views", by("owner_user_id")),
        // What they authored.
        s("forum_posts", "forum_posts", by("author_user_id")),
        s("forum_comments", "forum_comments", by("author_user_id")),
        s("career_postings", "career_postings", by("posted_by")),
        s("documents", "documents", by("uploaded_by")),
        // What is about them.
        s("invoices", "invoices", mine.clone()),
        s(
            "invoice_lines",
            "invoice_lines",
            format!(
                "t.invoice_id in (select i.id from invoices i join memberships m on m.id = i.membership_id where m.user_id = {user_id})"
            ),
        ),
        s(
            "payments",
            "payments",
            format!(
                "t.invoice_id in (select i.id from invoices i join memberships m on m.id = i.membership_id where m.user_id = {user_id})"
            ),
        ),
        s("donations", "donations", by("donor_user_id")),
        s("enrollments", "enrollments", by("user_id")),
        s("alumni_profiles", "alumni_profiles", by("user_id")),
        s("compliance_records", "compliance_records", mine),
        s("election_votes", "election_votes", by("voter_user_id")),
        // Their actions.
        s("audit_log", "audit_log", by("actor_user_id")),
    ]
}

/// The job handler: runs the request, recording failures on it. Like the org
/// export, a failure marks the request `failed` with the reason and leaves no object.
pub async fn run(job: PrivacyJob, state: Data<AppState>, attempt: Attempt) -> Result<(), BoxDynError> {
    let attempt = attempt.current() as i32;
    let max = state.config.export_max_attempts as i32;
    if attempt > max {
        requests::fail(&state.pool, &job.request_id, None, &format!("gave up after {max} attempts")).await?;
        return Err(AbortError::new("too many attempts").into());
    }
    let Some(request) = requests::start(&state.pool, &job.request_id, attempt).await? else {
        tracing::info!(request_id = job.request_id, "request is no longer pending; nothing to do");
        return Ok(());
    };
    if !crate::platform::backup::is_ready(&state).await? {
        let reason = crate::error::AppError::BackupNotVerified.to_string();
        requests::fail(&state.pool, &request.id, Some(attempt), &reason).await?;
        return Err(AbortError::new(reason).into());
    }
    let span = tracing::info_span!("privacy_export", request_id = %request.id, user_id = request.user_id, attempt);
    match tracing::Instrument::instrument(execute(&state, &request, attempt), span).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let reason = format!("{e:#}");
            tracing::warn!(request_id = %request.id, reason, "data-subject export failed");
            requests::fail(&state.pool, &request.id, Some(attempt), &reason).await?;
            Err(AbortError::new(reason).into())
        }
    }
}

async fn execute(state: &AppState, request: &requests::Request, attempt: i32) -> anyhow::Result<()> {
    let bucket = state.storage.privacy_bucket().to_string();
    let key = object_key(request.user_id, &request.id);
    let snapshot = Snapshot::open_subject(&state.pool, SUBJECT_SQL, request.user_id, subject_sections(request.user_id))
        .await
        .context("reading the person's data")?;
    let sink = Sink::S3 {
        client: state.storage.client().clone(),
        bucket: bucket.clone(),
        key: key.clone(),
        export_id: request.id.clone(),
    };
    let counts: serde_json::Value = serde_json::from_str(&snapshot.counts_json())?;
    let upload = sink.start().await?;
    let upload_id = upload.upload_id().map(str::to_string);
    let (progress, _watch) = watch::channel(0i64);
    let outcome = match snapshot.write(&request.id, upload, &progress).await {
        Ok(o) => o,
        Err(e) => {
            if let Some(upload_id) = &upload_id {
                sink::abort_upload(state.storage.client(), &bucket, &key, upload_id).await;
            }
            return Err(e);
        }
    };
    let recorded = requests::complete(
        &state.pool,
        &request.id,
        attempt,
        &key,
        outcome.size_bytes as i64,
        &outcome.sha256,
        &counts,
    )
    .await;
    match recorded {
        Ok(true) => {}
        Ok(false) => anyhow::bail!("a newer attempt took this request over"),
        Err(e) => {
            if let Err(del) = state.storage.delete(&bucket, &key).await {
                tracing::warn!(error = %del, key, "could not remove an unrecorded data-subject export");
            }
            return Err(e.into());
        }
    }
    tracing::info!(request_id = %request.id, rows = outcome.rows, bytes = outcome.size_bytes, "data-subject export completed");
    Ok(())
}

/// Removes the files of completed requests older than the platform's
/// `privacy_retention_days` (as of `now`), then marks them `expired`, each with an
/// audit entry. Returns how many expired. Runs with the hourly prune job.
pub async fn expire(state: &AppState, now: DateTime<Utc>) -> anyhow::Result<usize> {
    let due: Vec<(String, i64, String)> = sqlx::query_as(
        "select r.id, r.user_id, r.object_key from privacy_requests r, platform_settings s
         where s.id = 1 and r.status = 'completed' and r.finished_at + make_interval(days => s.privacy_retention_days) <= $1
         order by r.finished_at",
    )
    .bind(now)
    .fetch_all(&state.pool)
    .await?;
    let mut expired = 0;
    for (id, user_id, key) in due {
        state.storage.delete(state.storage.privacy_bucket(), &key).await?;
        let mut tx = state.pool.begin().await?;
        let marked =
            sqlx::query("update privacy_requests set status = 'expired' where id = $1 and status = 'completed'")
                .bind(&id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
        if marked {
            let details = serde_json::json!({ "user_id": user_id });
            orgs::audit(&mut *tx, None, None, "privacy.expired", &format!("privacy_request:{id}"), details).await?;
            expired += 1;
        }
        tx.commit().await?;
    }
    Ok(expired)
}
