//! The mail job (queue `mail`): sends one queued mail over SMTP, or writes it as
//! `DATA_DIR/outbox/{id}.eml` when `SMTP_URL` is unset. Each attempt is recorded on
//! the mail's row (`attempts`, `last_error`, then `sent_at` or `failed_at`). A
//! failed attempt queues the next one after the wait `MAIL_RETRY_SCHEDULE_SECS`
//! gives for it (apalis' own retries would come at once); after the last, the mail
//! is given up and logged.

use std::{path::Path, time::Duration};

use anyhow::Context;
use apalis::prelude::BoxDynError;
use chrono::{DateTime, Utc};
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Tokio1Executor,
    message::{Mailbox, header::ContentType},
    transport::smtp::{
        authentication::Credentials,
        client::{Certificate, Tls, TlsParameters},
    },
};
use serde::{Deserialize, Serialize};
use ulid::Ulid;

use super::{JOB_ATTEMPTS, Kind};
use crate::{
    config::{Config, Smtp, SmtpSecurity},
    jobs,
    state::AppState,
};

/// The job's arguments: the `mail_messages` row to send.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MailJob {
    pub message_id: String,
}

impl jobs::Job for MailJob {
    const QUEUE: &'static str = "mail";
    type Context = ();

    async fn run(self, state: AppState, _: (), _attempt: usize) -> Result<(), BoxDynError> {
        // On a task of its own, so a slow SMTP conversation wakes only this task,
        // not the worker's (see `jobs::on_own_task`).
        let work = jobs::on_own_task(async move { send(&state, &self.message_id).await });
        work.await.and_then(|r| r).map_err(|e| format!("{e:#}").into())
    }
}

/// How long one SMTP conversation may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest error kept on a mail's row.
const MAX_ERROR: usize = 1000;

#[derive(sqlx::FromRow)]
struct Queued {
    id: String,
    kind: String,
    recipient: String,
    subject: String,
    body: String,
    created_at: DateTime<Utc>,
    attempts: i32,
}

/// One attempt at the mail `id`, if it is still to be sent and due. The attempt
/// first leases the mail (its next attempt moved past this one's longest time), so
/// a second job for it (queued again by housekeeping while this one was only late,
/// say) finds it not due and sends nothing.
#[tracing::instrument(skip_all, fields(mail_id = %id))]
async fn send(state: &AppState, id: &str) -> anyhow::Result<()> {
    // Whoever it goes to must still be one to get it now, which may be hours after it
    // was queued (the mail server was down): an org's mail only to a person still an
    // active admin of the org, the platform admins' only to a platform admin, and no
    // kind the person has switched off since (or not switched on, for a kind off by
    // default). Otherwise it is given up unsent.
    let off_by_default: Vec<&str> = super::Kind::ALL.iter().filter(|k| !k.on_by_default()).map(|k| k.key()).collect();
    let given_up = sqlx::query(
        "update mail_messages m set failed_at = now(), last_error = 'not sent: no longer a recipient of this mail'
         where m.id = $1 and m.sent_at is null and m.failed_at is null
           and ((m.org_id is not null
                 and not exists (select 1 from memberships s where s.org_id = m.org_id and s.user_id = m.user_id
                                                               and s.status = 'active' and s.role = 'admin'))
                or (m.kind = $3 and not exists (select 1 from platform_admins p where p.user_id = m.user_id))
                or exists (select 1 from mail_opt_outs o where o.user_id = m.user_id and o.kind = m.kind)
                or (m.kind = any($2)
                    and not exists (select 1 from mail_opt_ins i where i.user_id = m.user_id and i.kind = m.kind)))",
    )
    .bind(id)
    .bind(&off_by_default)
    .bind(super::Kind::ScheduleFailures.key())
    .execute(&state.pool)
    .await?;
    if given_up.rows_affected() == 1 {
        tracing::info!("mail given up unsent: its person is no longer one to get it");
        return Ok(());
    }
    // To the person's address as it is now.
    let queued: Option<Queued> = sqlx::query_as(
        "update mail_messages m set next_attempt_at = now() + make_interval(secs => $2)
         where m.id = $1 and m.sent_at is null and m.failed_at is null and m.next_attempt_at <= now() + interval '5 seconds'
         returning m.id, m.kind, coalesce((select u.email from users u where u.id = m.user_id), m.recipient) as recipient,
                   m.subject, m.body, m.created_at, m.attempts",
    )
    .bind(id)
    .bind(SMTP_TIMEOUT.as_secs_f64() + 60.0)
    .fetch_optional(&state.pool)
    .await?;
    // Sent already, given up, its person removed, or another job has it.
    let Some(mail) = queued else { return Ok(()) };
    let attempt = mail.attempts + 1;
    let outcome = match compose(&state.config, &mail) {
        Ok(message) => deliver(&state.config, &mail.id, message).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(to) => {
            sqlx::query("update mail_messages set sent_at = now(), attempts = $2, last_error = null where id = $1")
                .bind(id)
                .bind(attempt)
                .execute(&state.pool)
                .await?;
            tracing::info!(kind = %mail.kind, to = %to, attempt, "mail sent");
        }
        Err(e) => {
            let error: String = format!("{e:#}").chars().take(MAX_ERROR).collect();
            let wait = state.config.mail.retry_schedule.get(mail.attempts as usize).copied();
            let mut tx = state.pool.begin().await?;
            sqlx::query(
                "update mail_messages set attempts = $2, last_error = $3, failed_at = case when $4 then now() end,
                        next_attempt_at = now() + make_interval(secs => $5)
                 where id = $1",
            )
            .bind(id)
            .bind(attempt)
            .bind(&error)
            .bind(wait.is_none())
            .bind(wait.unwrap_or_default().as_secs_f64())
            .execute(&mut *tx)
            .await?;
            match wait {
                Some(wait) => {
                    let retry = MailJob { message_id: id.to_string() };
                    jobs::push_after(&mut tx, Ulid::generate(), &retry, JOB_ATTEMPTS, wait).await?;
                    tracing::warn!(kind = %mail.kind, attempt, error = %error, retry_in = ?wait, "mail not sent; retrying later");
                }
                None => {
                    tracing::error!(kind = %mail.kind, attempt, error = %error, "mail not sent; given up after its last retry")
                }
            }
            tx.commit().await?;
        }
    }
    Ok(())
}

/// The mail as sent: `MAIL_FROM`, the recipient, the queued subject and body with a
/// line on why they get it; its Date is when it was queued, its Message-ID
/// `<{id}@{MAIL_FROM's domain}>`, the same on every attempt.
fn compose(config: &Config, mail: &Queued) -> anyhow::Result<lettre::Message> {
    let from = &config.mail.from;
    let to: Mailbox =
        mail.recipient.parse().with_context(|| format!("the address {:?} is not valid", mail.recipient))?;
    // Only the data-subject mail answers the person's own request; every other kind
    // (and 'export', queued before the kinds were split) can be switched off.
    let why = match Kind::parse(&mail.kind) {
        Some(Kind::PrivacyRequest) => "You get this mail because you asked for a copy of your data.".to_string(),
        Some(Kind::OrgClosed) => {
            "You get this mail because you were an admin of this organization, or are a platform admin: it is the \
             record of its closing."
                .to_string()
        }
        _ => format!(
            "You can switch off mails like this one at\n{}{}",
            config.public_url,
            crate::routes::ME_NOTIFICATIONS
        ),
    };
    lettre::Message::builder()
        .from(from.clone())
        .to(to)
        .subject(&mail.subject)
        .date(mail.created_at.into())
        .message_id(Some(format!("<{}@{}>", mail.id, from.email.domain())))
        .header(ContentType::TEXT_PLAIN)
        .body(format!("{}\n\n-- \n{why}\n", mail.body.trim_end()))
        .context("composing the mail")
}

/// Sends `message` (or writes it to the outbox). Returns where it went, for the log.
async fn deliver(config: &Config, id: &str, message: lettre::Message) -> anyhow::Result<String> {
    let Some(smtp) = &config.mail.smtp else {
        let path = write_to_outbox(&outbox(config), id, &message.formatted()).await?;
        return Ok(path.display().to_string());
    };
    transport(smtp)?.send(message).await.with_context(|| format!("sending through {}:{}", smtp.host, smtp.port))?;
    Ok(format!("{}:{}", smtp.host, smtp.port))
}

/// Where mails go when `SMTP_URL` is unset: `DATA_DIR/outbox`.
pub fn outbox(config: &Config) -> std::path::PathBuf {
    config.data_dir.join("outbox")
}

/// Writes `{id}.eml` whole or not at all: a temporary file, then a rename.
async fn write_to_outbox(dir: &Path, id: &str, bytes: &[u8]) -> anyhow::Result<std::path::PathBuf> {
    tokio::fs::create_dir_all(dir).await.with_context(|| format!("creating the outbox {}", dir.display()))?;
    let (temp, path) = (dir.join(format!(".{id}.eml.tmp")), dir.join(format!("{id}.eml")));
    tokio::fs::write(&temp, bytes).await.with_context(|| format!("writing {}", temp.display()))?;
    tokio::fs::rename(&temp, &path)
        .await
        .with_context(|| format!("renaming {} to {}", temp.display(), path.display()))?;
    Ok(path)
}

/// A transport for one send (no pool: mails are few).
fn transport(smtp: &Smtp) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let tls = || -> anyhow::Result<TlsParameters> {
        let mut params = TlsParameters::builder(smtp.host.clone());
        if let Some(pem) = &smtp.extra_roots_pem {
            params = params.add_root_certificate(Certificate::from_pem(pem).context("reading SMTP_CA_FILE")?);
        }
        params.build_rustls().context("setting up TLS for SMTP")
    };
    let tls = match smtp.security {
        SmtpSecurity::Plain => Tls::None,
        SmtpSecurity::StartTlsWhenOffered => Tls::Opportunistic(tls()?),
        SmtpSecurity::StartTlsRequired => Tls::Required(tls()?),
        SmtpSecurity::ImplicitTls => Tls::Wrapper(tls()?),
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.as_str())
        .port(smtp.port)
        .tls(tls)
        .timeout(Some(SMTP_TIMEOUT));
    if let Some((user, password)) = &smtp.credentials {
        builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
    }
    Ok(builder.build())
}
