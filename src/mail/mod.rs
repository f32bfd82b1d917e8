//! Mail to people: what is queued (a row of `mail_messages` and its job, in the
//! caller's transaction), who switched which kind off (`mail_opt_outs`) or on
//! (`mail_opt_ins`), and who an org's or the platform's admins are. The job (`job.rs`, queue `mail`) sends each
//! mail over SMTP, or writes it under `DATA_DIR/outbox` when `SMTP_URL` is unset,
//! and retries on its own schedule: a failing mail server never holds up the work
//! that queued the mail.

pub mod job;

use sqlx::{PgConnection, PgPool};
use ulid::Ulid;

pub use job::MailJob;

use crate::jobs;

/// Kinds of mail. Each but PrivacyRequest is a person's choice: most are on until
/// they switch them off (`mail_opt_outs`), ExportCompletedScheduled is off until
/// they switch it on (`mail_opt_ins`). [`enqueue`] applies the choice; the caller
/// picks who may get the kind at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An org's export failed, however it was started (to the org's active admins).
    ExportFailed,
    /// A manual export completed (to the person who started it, while still an active
    /// admin of the org; an export started from the command line has nobody).
    ExportCompletedMine,
    /// A scheduled export completed (to the org's active admins who switched it on).
    ExportCompletedScheduled,
    /// A webhook endpoint is failing (to the org's admins).
    WebhookFailing,
    /// Platform backup problems (to platform admins): a scheduled slot had
    /// failures, or orgs became failing, stuck or overdue (`platform::notices`).
    ScheduleFailures,
    /// The person's data-subject request completed or failed: the answer to their
    /// own request, so it cannot be switched off.
    PrivacyRequest,
    /// An org was closed and its data erased, with the receipt's summary (to its
    /// admins as they were before the erasure, and to the platform admins): a
    /// record, so it cannot be switched off.
    OrgClosed,
}

impl Kind {
    /// Every kind, in the order the settings page lists them.
    pub const ALL: [Kind; 7] = [
        Kind::ExportFailed,
        Kind::ExportCompletedMine,
        Kind::ExportCompletedScheduled,
        Kind::WebhookFailing,
        Kind::ScheduleFailures,
        Kind::PrivacyRequest,
        Kind::OrgClosed,
    ];

    /// The stored name (`mail_messages.kind`, `mail_opt_outs.kind`,
    /// `mail_opt_ins.kind`, the form's field). Stable: the database's checks and
    /// whoever counts mails by kind use them.
    pub fn key(self) -> &'static str {
        match self {
            Kind::ExportFailed => "export_failed",
            Kind::ExportCompletedMine => "export_completed_mine",
            Kind::ExportCompletedScheduled => "export_completed_scheduled",
            Kind::WebhookFailing => "webhook",
            Kind::ScheduleFailures => "schedule",
            Kind::PrivacyRequest => "privacy",
            Kind::OrgClosed => "org_closed",
        }
    }

    /// The kind named `key`.
    pub fn parse(key: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.key() == key)
    }

    /// Whether a person may switch this kind off (and on).
    pub fn can_opt_out(self) -> bool {
        !matches!(self, Kind::PrivacyRequest | Kind::OrgClosed)
    }

    /// Whether a person gets this kind before they choose: false for the routine
    /// mail of every scheduled export, which a daily schedule would send every day.
    pub fn on_by_default(self) -> bool {
        self != Kind::ExportCompletedScheduled
    }
}

/// One mail's content; the recipient is given to [`enqueue`], the sender is
/// `MAIL_FROM`.
#[derive(Clone, Debug)]
pub struct Message {
    pub kind: Kind,
    pub subject: String,
    /// The plain-text body; links in it are built from `PUBLIC_URL` by the caller.
    pub text: String,
}

/// Attempts apalis makes of one mail job (a database error); the SMTP retries are
/// new jobs of their own, scheduled by the job after a wait.
const JOB_ATTEMPTS: u32 = 3;

/// Queues a new job for each mail still to be sent whose attempt is more than 15
/// minutes overdue (its job was lost: a database outage while it ran, a job removed
/// by hand), and deletes mails older than 90 days. Run by housekeeping; returns how
/// many were queued again.
pub async fn requeue_lost(pool: &sqlx::PgPool) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    let lost: Vec<(String,)> = sqlx::query_as(
        "update mail_messages set next_attempt_at = now() where id in (
             select id from mail_messages
             where sent_at is null and failed_at is null and next_attempt_at < now() - interval '15 minutes'
             order by next_attempt_at limit 500 for update skip locked)
         returning id",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (id,) in &lost {
        jobs::push(&mut tx, ulid::Ulid::generate(), &MailJob { message_id: id.clone() }, JOB_ATTEMPTS).await?;
    }
    sqlx::query("delete from mail_messages where created_at < now() - interval '90 days'").execute(&mut *tx).await?;
    tx.commit().await?;
    if !lost.is_empty() {
        tracing::warn!(mails = lost.len(), "queued mails whose job was lost again");
    }
    Ok(lost.len() as u64)
}

/// [`enqueue`] in a savepoint of the caller's transaction: a mail that cannot be
/// queued for a reason a retry would not clear is logged and left out (Ok(false)),
/// and the caller's change still commits (see `db::settle_savepoint`). For mails about a state change that must not be lost to them (a data
/// request's end, say).
pub async fn enqueue_or_log(conn: &mut PgConnection, user_id: i64, message: &Message) -> anyhow::Result<bool> {
    let mut savepoint = sqlx::Acquire::begin(&mut *conn).await?;
    let result = enqueue(&mut savepoint, user_id, message).await;
    let queued = matches!(result, Ok(true));
    crate::db::settle_savepoint(savepoint, result.map(|_| ()), "a mail").await?;
    Ok(queued)
}

/// Queues `message` for user `user_id` inside the caller's transaction (the mail job
/// becomes visible when it commits), if they get this kind: always for one that
/// cannot be switched off, unless switched off for one on by default, only when
/// switched on for one off by default. Ok(false) when skipped (their choice, or no
/// such user). Whether `user_id` may get the kind at all (an org's admin, say) is
/// the caller's to decide.
pub async fn enqueue(conn: &mut PgConnection, user_id: i64, message: &Message) -> anyhow::Result<bool> {
    insert(conn, user_id, None, message).await
}

/// [`enqueue`] for a mail to an admin of the org `org_id` about it (its exports,
/// its webhooks): when it is sent, the person must still be an active admin of the
/// org (and still want the kind), or it is given up unsent.
pub async fn enqueue_to_admin(
    conn: &mut PgConnection,
    user_id: i64,
    org_id: i64,
    message: &Message,
) -> anyhow::Result<bool> {
    insert(conn, user_id, Some(org_id), message).await
}

async fn insert(conn: &mut PgConnection, user_id: i64, org_id: Option<i64>, message: &Message) -> anyhow::Result<bool> {
    let id = Ulid::generate();
    let inserted = sqlx::query(
        "insert into mail_messages (id, user_id, kind, recipient, subject, body, org_id)
         select $1, u.id, $3, u.email, $4, $5, $8 from users u
         where u.id = $2
           and case when not $6 then true
                    when $7 then not exists (select 1 from mail_opt_outs o where o.user_id = u.id and o.kind = $3)
                    else exists (select 1 from mail_opt_ins i where i.user_id = u.id and i.kind = $3) end",
    )
    .bind(id.to_string())
    .bind(user_id)
    .bind(message.kind.key())
    .bind(&message.subject)
    .bind(&message.text)
    .bind(message.kind.can_opt_out())
    .bind(message.kind.on_by_default())
    .bind(org_id)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    jobs::push(conn, id, &MailJob { message_id: id.to_string() }, JOB_ATTEMPTS).await?;
    Ok(true)
}

/// user ids of the org's admins (memberships.role = 'admin', status active)
pub async fn org_admins(conn: &mut PgConnection, org_id: i64) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "select user_id from memberships where org_id = $1 and role = 'admin' and status = 'active' order by user_id",
    )
    .bind(org_id)
    .fetch_all(conn)
    .await
}

/// user ids of platform admins (table platform_admins)
pub async fn platform_admins(conn: &mut PgConnection) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar("select user_id from platform_admins order by user_id").fetch_all(conn).await
}

/// The kinds `user_id` chose to get (or cannot switch off), in [`Kind::ALL`]'s
/// order: those on by default they did not switch off, those off by default they
/// switched on, and the data-subject mail. Whether they are among a kind's
/// people (an org's admins, say) is decided when a mail is sent.
pub async fn wanted(pool: &PgPool, user_id: i64) -> sqlx::Result<Vec<Kind>> {
    let (off, on): (Vec<String>, Vec<String>) = sqlx::query_as(
        "select array(select kind from mail_opt_outs where user_id = $1),
                array(select kind from mail_opt_ins where user_id = $1)",
    )
    .bind(user_id)
    .fetch_one(pool)
    .await?;
    let chosen = |k: Kind, keys: &[String]| keys.iter().any(|key| key == k.key());
    Ok(Kind::ALL
        .into_iter()
        .filter(|&k| !k.can_opt_out() || if k.on_by_default() { !chosen(k, &off) } else { chosen(k, &on) })
        .collect())
}

/// Makes `user_id` get exactly the kinds in `on` of those they may choose (each
/// other one is switched off), in one transaction; a kind that cannot be switched
/// off is always on. Kinds on by default are stored as opt-outs, kinds off by
/// default as opt-ins, so a default applies to whoever never chose.
pub async fn set_wanted(pool: &PgPool, user_id: i64, on: &[Kind]) -> sqlx::Result<()> {
    let choosable = Kind::ALL.into_iter().filter(|k| k.can_opt_out());
    let (opted_out, opted_in): (Vec<&str>, Vec<&str>) = (
        choosable.clone().filter(|k| k.on_by_default() && !on.contains(k)).map(Kind::key).collect(),
        choosable.filter(|k| !k.on_by_default() && on.contains(k)).map(Kind::key).collect(),
    );
    let mut tx = pool.begin().await?;
    for (table, keys) in [("mail_opt_outs", &opted_out), ("mail_opt_ins", &opted_in)] {
        sqlx::query(sqlx::AssertSqlSafe(format!("delete from {table} where user_id = $1 and kind <> all($2)")))
            .bind(user_id)
            .bind(keys)
            .execute(&mut *tx)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "insert into {table} (user_id, kind) select $1, k from unnest($2::text[]) k on conflict do nothing"
        )))
        .bind(user_id)
        .bind(keys)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// A mail as its recipient's page lists it.
#[derive(sqlx::FromRow)]
pub struct Sent {
    pub id: String,
    pub subject: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub attempts: i32,
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
    pub failed_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Sent {
    /// The badge's class suffix and the words: sent, queued, retrying, or given up.
    pub fn status(&self) -> (&'static str, String) {
        match (self.sent_at, self.failed_at, self.attempts) {
            (Some(_), _, _) => ("completed", "sent".into()),
            (None, Some(_), n) => ("failed", format!("not delivered after {n} attempts")),
            (None, None, 0) => ("pending", "queued".into()),
            (None, None, n) => ("running", format!("retrying ({n} failed attempts)")),
        }
    }
}

/// `user_id`'s latest mails, newest first.
pub async fn recent_for_user(pool: &PgPool, user_id: i64, limit: i64) -> sqlx::Result<Vec<Sent>> {
    sqlx::query_as(
        "select id, subject, created_at, attempts, sent_at, failed_at from mail_messages
         where user_id = $1 order by id desc limit $2",
    )
    .bind(user_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}
