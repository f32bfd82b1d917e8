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
use apalis::prelude::BoxDynError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    jobs,
    orgs::columns,
    settings::backup,
    snapshot::{
        Header, Reader, SectionQuery, Snapshot,
        columns::{Apply, select_list},
        job::{self, Destination, Failure, Lease, Written},
        sink::Label,
    },
    state::AppState,
};

/// The file's `format`.
pub const FORMAT: &str = "data-export/subject-access";

/// The job's arguments.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PrivacyJob {
    pub request_id: String,
}

impl jobs::Job for PrivacyJob {
    const QUEUE: &'static str = "privacy";
    type Context = ();

    async fn run(self, state: AppState, _: (), attempt: usize) -> Result<(), BoxDynError> {
        job::run(RequestLease, state, &self.request_id, attempt).await
    }
}

/// The object key: `privacy/{user-id}/{request-id}.json.gz`.
pub fn object_key(user_id: i64, request_id: &str) -> String {
    format!("privacy/{user_id}/{request_id}.json.gz")
}

/// The account's columns, as the registry writes them (never the password hash).
const SUBJECT_COLUMNS: [&str; 5] = ["id", "email", "display_name", "password_hash", "created_at"];

/// The account, through the registry: without secrets.
fn subject_sql() -> String {
    let catalog: Vec<String> = SUBJECT_COLUMNS.map(String::from).to_vec();
    let (list, _) = select_list(columns::of("users"), &catalog, Apply::AsStored, &[]);
    format!("select row_to_json(u)::text from (select {} from users t where t.id = $1) u", list.join(", "))
}

/// What the file holds, section by section: the person's memberships and what hangs
/// off them, what they authored, what is about them, and their audit entries. Every
/// condition selects by the person's id; no other person's rows are read. A few
/// org definitions (custom fields, chapters, elections, courses, funds) come along,
/// limited to those the person's rows point at, so that the rows make sense.
///
/// Columns are written as the registry (`orgs::columns`) classifies them, with
/// pseudonymised columns as stored: the file holds only the person's own rows, so
/// their own secret-ballot votes keep their voter, time and id.
pub fn subject_sections(user_id: i64) -> Vec<SectionQuery> {
    let memberships = format!("select m.id from memberships m where m.user_id = {user_id}");
    let mine = format!("t.membership_id in ({memberships})");
    let invoices = format!("select i.id from invoices i where i.membership_id in ({memberships})");
    let by = |column: &str| format!("t.{column} = {user_id}");
    let s = |table: &'static str, condition: String| SectionQuery::new(columns::of(table), condition, Apply::AsStored);
    vec![
        // Membership: each org membership with its profile, custom field values, enrichment.
        s("memberships", by("user_id")),
        s("user_profiles", by("user_id")),
        s("custom_field_values", mine.clone()),
        s("member_enrichment", mine.clone()),
        s("saved_views", by("owner_user_id")),
        // What they authored.
        s("forum_posts", by("author_user_id")),
        s("forum_comments", by("author_user_id")),
        s("career_postings", by("posted_by")),
        s("documents", by("uploaded_by")),
        // What is about them.
        s("invoices", mine.clone()),
        s("invoice_lines", format!("t.invoice_id in ({invoices})")),
        s("payments", format!("t.invoice_id in ({invoices})")),
        s("donations", by("donor_user_id")),
        s("enrollments", by("user_id")),
        s("alumni_profiles", by("user_id")),
        s("compliance_records", mine.clone()),
        s("election_votes", by("voter_user_id")),
        s("election_participants", by("user_id")),
        // Their actions. An entry's details name another person (a request made on
        // someone's behalf, a download of their file) are left out.
        SectionQuery {
            overrides: vec![(
                "details",
                format!(
                    "case when t.details->>'user_id' is null or t.details->>'user_id' = '{user_id}' then t.details end"
                ),
            )],
            ..SectionQuery::new(columns::of("audit_log"), by("actor_user_id"), Apply::AsStored)
        },
        // Org definitions the rows above point at.
        s("custom_fields", format!("t.id in (select v.field_id from custom_field_values v where v.membership_id in ({memberships}))")),
        s("chapters", format!("t.id in (select m.chapter_id from memberships m where m.user_id = {user_id})")),
        s("elections", format!("t.id in (select v.election_id from election_votes v where v.voter_user_id = {user_id}
                                                union select p.election_id from election_participants p where p.user_id = {user_id})")),
        s("courses", format!("t.id in (select e.course_id from enrollments e where e.user_id = {user_id})")),
        s("foundation_funds", format!("t.id in (select d.fund_id from donations d where d.donor_user_id = {user_id})")),
    ]
}

/// Opens the consistent read of one person: their account (without secrets), the
/// sections of [`subject_sections`], and the orgs those rows belong to (id, slug,
/// name), so that org ids make sense.
pub async fn open_snapshot(pool: &sqlx::PgPool, user_id: i64) -> anyhow::Result<Snapshot> {
    let mut read = Reader::begin(pool).await?;
    let subject: Option<(String,)> =
        sqlx::query_as(sqlx::AssertSqlSafe(subject_sql())).bind(user_id).fetch_optional(read.conn()).await?;
    let (subject,) = subject.context("the account no longer exists")?;
    let list = subject_sections(user_id);
    let mut org_ids = Vec::new();
    for query in &list {
        read.add(query);
        org_ids.push(format!("select t.org_id from {} t where {}", query.table, query.condition));
    }
    let orgs_sql = format!(
        "select coalesce(json_agg(o order by o.id), '[]')::text from (select id, slug, name from organizations
         where id in ({})) o",
        if org_ids.is_empty() { "select null::bigint".to_string() } else { org_ids.join(" union ") }
    );
    let (organizations,): (String,) = sqlx::query_as(sqlx::AssertSqlSafe(orgs_sql)).fetch_one(read.conn()).await?;
    let header = Header {
        format: FORMAT,
        id_key: "request_id",
        fields: vec![("subject", subject), ("organizations", organizations)],
        lead: None,
    };
    read.finish(header).await
}

/// What the object's metadata says about a data-subject file.
pub fn label(request_id: &str) -> Label {
    Label { format: "data-export/subject-access;version=1", id_key: "request-id", id: request_id.to_string() }
}

/// A privacy request as a snapshot job's lease. Like the org export, a failure
/// marks the request `failed` with the reason and leaves no object (the skeleton
/// removes what an attempt left at its key).
struct RequestLease;

impl Lease for RequestLease {
    type Record = requests::Request;
    const WHAT: &'static str = "data-subject export";

    fn id(request: &requests::Request) -> &str {
        &request.id
    }

    fn upload_id(request: &requests::Request) -> Option<&str> {
        request.upload_id.as_deref()
    }

    fn is_completed(request: &requests::Request) -> bool {
        request.status == requests::RequestStatus::Completed
    }

    fn is_active(request: &requests::Request) -> bool {
        matches!(request.status, requests::RequestStatus::Pending | requests::RequestStatus::Running)
    }

    fn span(request: &requests::Request, attempt: i32) -> tracing::Span {
        tracing::info_span!("privacy_export", request_id = %request.id, user_id = request.user_id, attempt)
    }

    async fn get(&self, state: &AppState, id: &str) -> anyhow::Result<Option<requests::Request>> {
        Ok(requests::get_any(&state.pool, id).await?)
    }

    async fn start(&self, state: &AppState, id: &str, attempt: i32) -> anyhow::Result<Option<requests::Request>> {
        Ok(requests::start(&state.pool, id, attempt).await?)
    }

    async fn refusal(&self, state: &AppState, _: &requests::Request) -> anyhow::Result<Option<String>> {
        Ok((!backup::is_ready(state).await?).then(|| crate::error::AppError::BackupNotVerified.to_string()))
    }

    async fn destination(&self, state: &AppState, request: &requests::Request) -> anyhow::Result<Destination> {
        Ok(Destination {
            bucket: state.storage.privacy_bucket().to_string(),
            key: object_key(request.user_id, &request.id),
            label: label(&request.id),
        })
    }

    async fn set_upload_id(
        &self,
        state: &AppState,
        id: &str,
        attempt: i32,
        upload_id: Option<&str>,
    ) -> anyhow::Result<()> {
        Ok(requests::set_upload_id(&state.pool, id, attempt, upload_id).await?)
    }

    async fn open(&self, state: &AppState, request: &requests::Request, _attempt: i32) -> anyhow::Result<Snapshot> {
        open_snapshot(&state.pool, request.user_id).await.context("reading the person's data")
    }

    async fn complete(
        &self,
        state: &AppState,
        request: &requests::Request,
        attempt: i32,
        w: Written<'_>,
    ) -> anyhow::Result<bool> {
        let counts: serde_json::Value = serde_json::from_str(w.counts)?;
        let written = requests::Written {
            key: w.key,
            size_bytes: w.outcome.size_bytes as i64,
            sha256: &w.outcome.sha256,
            counts: &counts,
            snapshot_at: w.snapshot_at,
        };
        requests::complete(&state.pool, &state.config.public_url, &request.id, attempt, written).await
    }

    async fn fail(&self, state: &AppState, id: &str, attempt: Option<i32>, failure: &Failure) -> anyhow::Result<bool> {
        requests::fail(&state.pool, &state.config.public_url, id, attempt, failure).await
    }
}

/// Removes the files of completed requests older than the platform's
/// `privacy_retention_days` (as of `now`), then marks them `expired`, each with an
/// audit entry; also fails requests whose job ended without finishing them. Returns
/// how many expired. A file that cannot be deleted is logged and tried again next
/// hour; the others go on. Runs with the hourly prune job.
pub async fn expire(state: &AppState, now: DateTime<Utc>) -> anyhow::Result<usize> {
    let abandoned = requests::fail_abandoned(&state.pool, &state.config.public_url).await?;
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
            crate::audit::write(&mut *tx, None, None, "privacy.expired", &format!("privacy_request:{id}"), details)
                .await?;
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
