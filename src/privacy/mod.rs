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
/// condition selects by the person's id; no other person's rows are read. A few
/// org definitions (custom fields, chapters, elections, courses, funds) come along,
/// limited to those the person's rows point at, so that the rows make sense.
pub fn subject_sections(user_id: i64) -> Vec<SubjectSection> {
    let memberships = format!("select m.id from memberships m where m.user_id = {user_id}");
    let mine = format!("t.membership_id in ({memberships})");
    let invoices = format!("select i.id from invoices i where i.membership_id in ({memberships})");
    let by = |column: &str| format!("t.{column} = {user_id}");
    let s = |name: &'static str, table: &'static str, condition: String| SubjectSection {
        name,
        table,
        condition,
        columns: None,
    };
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
        s("invoice_lines", "invoice_lines", format!("t.invoice_id in ({invoices})")),
        s("payments", "payments", format!("t.invoice_id in ({invoices})")),
        s("donations", "donations", by("donor_user_id")),
        s("enrollments", "enrollments", by("user_id")),
        s("alumni_profiles", "alumni_profiles", by("user_id")),
        s("compliance_records", "compliance_records", mine.clone()),
        s("election_votes", "election_votes", by("voter_user_id")),
        // Their actions. An entry's details name another person (a request made on
        // someone's behalf, a download of their file) are left out.
        SubjectSection {
            name: "audit_log",
            table: "audit_log",
            condition: by("actor_user_id"),
            columns: Some(format!(
                "t.id, t.org_id, t.actor_user_id, t.action, t.target,
                 case when t.details->>'user_id' is null or t.details->>'user_id' = '{user_id}' then t.details end as details,
                 t.created_at"
            )),
        },
        // Org definitions the rows above point at.
        s("custom_fields", "custom_fields", format!("t.id in (select v.field_id from custom_field_values v where v.membership_id in ({memberships}))")),
        s("chapters", "chapters", format!("t.id in (select m.chapter_id from memberships m where m.user_id = {user_id})")),
        s("elections", "elections", format!("t.id in (select v.election_id from election_votes v where v.voter_user_id = {user_id})")),
        s("courses", "courses", format!("t.id in (select e.course_id from enrollments e where e.user_id = {user_id})")),
        s("foundation_funds", "foundation_funds", format!("t.id in (select d.fund_id from donations d where d.donor_user_id = {user_id})")),
    ]
}

/// The job handler: runs the request, recording failures on it. Like the org
/// export, a failure marks the request `failed` with the reason and leaves no object.
pub async fn run(job: PrivacyJob, state: Data<AppState>, attempt: Attempt) -> Result<(), BoxDynError> {
    let attempt = attempt.current() as i32;
    let max = state.config.export_max_attempts as i32;
    if attempt > max {
        let reason = format!("gave up after {max} attempts: the worker stopped mid-export each time");
        if requests::fail(&state.pool, &job.request_id, None, &reason).await? {
            discard(&state, &job.request_id).await;
        }
        return Err(AbortError::new("too many attempts").into());
    }
    let Some(request) = requests::start(&state.pool, &job.request_id, attempt).await? else {
        tracing::info!(request_id = job.request_id, "request is no longer pending; nothing to do");
        return Ok(());
    };
    let outcome = if crate::platform::backup::is_ready(&state).await? {
        let span = tracing::info_span!("privacy_export", request_id = %request.id, user_id = request.user_id, attempt);
        let body = {
            let (state, request) = ((*state).clone(), request.clone());
            async move { execute(&state, &request, attempt).await }
        };
        crate::jobs::on_own_task(tracing::Instrument::instrument(body, span)).await.and_then(|r| r)
    } else {
        Err(anyhow::anyhow!(crate::error::AppError::BackupNotVerified.to_string()))
    };
    match outcome {
        Ok(()) => Ok(()),
        Err(e) => {
            let reason = format!("{e:#}");
            tracing::warn!(request_id = %request.id, reason, "data-subject export failed");
            if requests::fail(&state.pool, &request.id, Some(attempt), &reason).await? {
                discard(&state, &request.id).await;
            }
            Err(AbortError::new(reason).into())
        }
    }
}

/// Removes whatever a failed request may have left at its key (an older attempt
/// that lost its lease can still have published it). Never a completed one's file:
/// only called after this call marked the request failed.
async fn discard(state: &AppState, request_id: &str) {
    let Ok(Some(r)) = requests::get_any(&state.pool, request_id).await else { return };
    let bucket = state.storage.privacy_bucket();
    let key = object_key(r.user_id, &r.id);
    if let Some(upload_id) = &r.upload_id {
        sink::abort_upload(state.storage.client(), bucket, &key, upload_id).await;
    }
    if let Err(e) = state.storage.delete(bucket, &key).await {
        tracing::warn!(request_id, error = format!("{e:#}"), "could not remove a failed request's object");
    }
}

async fn execute(state: &AppState, request: &requests::Request, attempt: i32) -> anyhow::Result<()> {
    let bucket = state.storage.privacy_bucket().to_string();
    let key = object_key(request.user_id, &request.id);
    if let Some(previous) = &request.upload_id {
        // An earlier attempt died mid-upload: abort what it left open.
        sink::abort_upload(state.storage.client(), &bucket, &key, previous).await;
        requests::set_upload_id(&state.pool, &request.id, attempt, None).await?;
    }
    let snapshot = Snapshot::open_subject(&state.pool, SUBJECT_SQL, request.user_id, subject_sections(request.user_id))
        .await
        .context("reading the person's data")?;
    let snapshot_at = snapshot.snapshot_at;
    let counts: serde_json::Value = serde_json::from_str(&snapshot.counts_json())?;
    let sink = Sink::S3 {
        client: state.storage.client().clone(),
        bucket: bucket.clone(),
        key: key.clone(),
        export_id: request.id.clone(),
    };
    let upload = sink.start().await?;
    let upload_id = upload.upload_id().map(str::to_string);
    requests::set_upload_id(&state.pool, &request.id, attempt, upload_id.as_deref()).await?;
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
    let written = requests::Written {
        key: &key,
        size_bytes: outcome.size_bytes as i64,
        sha256: &outcome.sha256,
        counts: &counts,
        snapshot_at,
    };
    match requests::complete(&state.pool, &request.id, attempt, written).await {
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
/// audit entry; also fails requests whose job ended without finishing them. Returns
/// how many expired. A file that cannot be deleted is logged and tried again next
/// hour; the others go on. Runs with the hourly prune job.
pub async fn expire(state: &AppState, now: DateTime<Utc>) -> anyhow::Result<usize> {
    let abandoned = requests::fail_abandoned(&state.pool).await?;
    if abandoned > 0 {
        tracing::warn!(abandoned, "data-subject requests whose job ended unfinished were marked failed");
    }
    let due: Vec<(String, i64, String)> = sqlx::query_as(
        "select r.id, r.user_id, r.object_key from privacy_requests r, platform_settings s
         where s.id = 1 and r.status = 'completed' and r.finished_at + make_interval(days => s.privacy_retention_days) <= $1
         order by r.finished_at",
    )
    .bind(now)
    .fetch_all(&state.pool)
    .await?;
    let mut expired = 0;
    let mut failures = 0;
    for (id, user_id, key) in due {
        if let Err(e) = state.storage.delete(state.storage.privacy_bucket(), &key).await {
            tracing::warn!(
                request_id = id,
                error = format!("{e:#}"),
                "could not delete an expired data-subject export"
            );
            failures += 1;
            continue;
        }
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
    if failures > 0 {
        anyhow::bail!(
            "expired {expired} data-subject export(s); {failures} could not be deleted and stay for the next run"
        );
    }
    Ok(expired)
}
