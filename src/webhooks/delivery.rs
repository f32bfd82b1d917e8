//! Sending one delivery: the job on queue `webhooks`. Each attempt is logged, and a
//! failed one schedules the next after the pause `WEBHOOK_RETRY_SCHEDULE_SECS` names
//! (a new job that waits, so the job's own retries are never used). After the last
//! one the delivery fails, the endpoint is marked failing and the org's admins are
//! told by email, once until the endpoint succeeds again.

use std::time::{Duration, Instant};

use apalis::prelude::BoxDynError;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use ulid::Ulid;

use super::target::{GuardedResolver, is_public, literal_ip};
use crate::{config::WebhookSettings, jobs, state::AppState};

/// The most of an answer's body that is read (and kept in the log, as text).
const BODY_LIMIT: usize = 1024;

/// Runs apalis makes of one delivery job when it errs (the database, not the
/// receiver: a receiver's failure is an attempt, retried by a new job after its
/// pause). Running it again is safe: an attempt is recorded only by the run that
/// finds the delivery as it read it.
pub const JOB_ATTEMPTS: u32 = 5;

/// Sends the delivery `delivery_id` once.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeliveryJob {
    pub delivery_id: String,
}

impl jobs::Job for DeliveryJob {
    const QUEUE: &'static str = "webhooks";
    type Context = ();

    fn concurrency(_config: &crate::config::Config) -> usize {
        8
    }

    async fn run(self, state: AppState, _: (), _attempt: usize) -> Result<(), BoxDynError> {
        // On a task of its own, so a receiver that trickles its answer wakes only
        // this task, not the worker's (see `jobs::on_own_task`).
        let work = jobs::on_own_task(async move { attempt(&state, &self.delivery_id).await });
        work.await.and_then(|r| r).map_err(|e| e.into_boxed_dyn_error())
    }
}

/// What one attempt got.
#[derive(Debug)]
pub struct Outcome {
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration: Duration,
}

impl Outcome {
    fn delivered(&self) -> bool {
        self.error.is_none() && self.status_code.is_some_and(|c| (200..300).contains(&c))
    }
}

#[derive(sqlx::FromRow)]
struct Pending {
    org_id: i64,
    endpoint_id: String,
    url: String,
    secret: String,
    body: String,
    attempts: i32,
    /// The endpoint is marked failing: a delivery gets one attempt, no retries,
    /// until one succeeds (a dead endpoint costs one attempt an event, not eight).
    failing: bool,
    event: String,
}

/// Makes the next attempt of a pending delivery, if there still is one (its
/// endpoint may have been deleted meanwhile) and it is due, and records it. The
/// attempt first leases the delivery (its next attempt moved past this one's
/// longest time), so a second job for it (queued again by housekeeping while this
/// one was only late, say) finds it not due and sends nothing.
async fn attempt(state: &AppState, delivery_id: &str) -> anyhow::Result<()> {
    let lease = state.config.webhooks.timeout.as_secs_f64() + 60.0;
    let pending: Option<Pending> = sqlx::query_as(
        "with leased as (
             update webhook_deliveries set next_attempt_at = now() + make_interval(secs => $2)
             where id = $1 and status = 'pending' and next_attempt_at <= now() + interval '5 seconds'
             returning id, org_id, endpoint_id, body, attempts, event)
         select d.org_id, d.endpoint_id, e.url, e.secret, d.body, d.attempts, d.event,
                e.failing_since is not null as failing
         from leased d join webhook_endpoints e on e.id = d.endpoint_id",
    )
    .bind(delivery_id)
    .bind(lease)
    .fetch_optional(&state.pool)
    .await?;
    let Some(p) = pending else { return Ok(()) };
    let outcome = send(&state.config.webhooks, delivery_id, &p.url, &p.secret, &p.body).await;
    record(state, delivery_id, &p, &outcome).await
}

/// Logs the attempt and moves the delivery on, in one transaction, only if no other
/// worker recorded this attempt first (a job run twice after a lost heartbeat).
async fn record(state: &AppState, delivery_id: &str, p: &Pending, outcome: &Outcome) -> anyhow::Result<()> {
    let settings = &state.config.webhooks;
    let number = p.attempts + 1;
    let mut tx = state.pool.begin().await?;
    // A test event gets one attempt: its answer is what the admin wants to see, and
    // one pending test at a time must not hold the next for a day.
    let retry_in = (!outcome.delivered() && !p.failing && p.event != super::TEST)
        .then(|| settings.retry_schedule.get(p.attempts as usize).copied())
        .flatten();
    let status = match (outcome.delivered(), retry_in) {
        (true, _) => "delivered",
        (false, Some(_)) => "pending",
        (false, None) => "failed",
    };
    let next_at = retry_in.map(|d| Utc::now() + d);
    let moved = sqlx::query(
        "update webhook_deliveries set attempts = $2, status = $3, next_attempt_at = $4,
                finished_at = case when $3 = 'pending' then null else now() end
         where id = $1 and status = 'pending' and attempts = $5",
    )
    .bind(delivery_id)
    .bind(number)
    .bind(status)
    .bind(next_at)
    .bind(p.attempts)
    .execute(&mut *tx)
    .await?;
    if moved.rows_affected() == 0 {
        return Ok(());
    }
    sqlx::query(
        "insert into webhook_attempts (delivery_id, endpoint_id, attempt, status_code, duration_ms, error)
         values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(delivery_id)
    .bind(&p.endpoint_id)
    .bind(number)
    .bind(outcome.status_code.map(i32::from))
    .bind(outcome.duration.as_millis().min(i32::MAX as u128) as i32)
    .bind(&outcome.error)
    .execute(&mut *tx)
    .await?;
    match (status, retry_in) {
        ("delivered", _) => {
            sqlx::query("update webhook_endpoints set failing_since = null where id = $1")
                .bind(&p.endpoint_id)
                .execute(&mut *tx)
                .await?;
        }
        (_, Some(pause)) => {
            let job = DeliveryJob { delivery_id: delivery_id.to_string() };
            jobs::push_after(&mut tx, Ulid::generate(), &job, JOB_ATTEMPTS, pause).await?;
        }
        // A test that failed is its own answer, on the page: it marks nothing and
        // mails no one.
        _ if p.event == super::TEST => {}
        _ => mark_failing(&mut tx, state, p).await?,
    }
    tx.commit().await?;
    Ok(())
}

/// The endpoint gave up on a delivery: it is marked failing, and when it was not
/// already, its org's admins get one email.
async fn mark_failing(tx: &mut sqlx::PgConnection, state: &AppState, p: &Pending) -> anyhow::Result<()> {
    let newly: Option<(String,)> = sqlx::query_as(
        "update webhook_endpoints e set failing_since = now()
         from organizations o where e.id = $1 and o.id = e.org_id and e.failing_since is null
         returning o.slug",
    )
    .bind(&p.endpoint_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((slug,)) = newly else { return Ok(()) };
    tell_admins_failing(tx, state, p.org_id, &slug, &p.url).await
}

/// The email to the org's admins about an endpoint that gave up.
async fn tell_admins_failing(
    tx: &mut sqlx::PgConnection,
    state: &AppState,
    org_id: i64,
    slug: &str,
    url: &str,
) -> anyhow::Result<()> {
    let url = super::target::redacted(url);
    tracing::warn!(org_id, org = slug, url, "a webhook endpoint is failing");
    let attempts = state.config.webhooks.retry_schedule.len() + 1;
    let message = crate::mail::Message {
        kind: crate::mail::Kind::WebhookFailing,
        subject: format!("A webhook of {slug} is failing"),
        text: format!(
            "An event for the webhook endpoint\n{url}\nwas not delivered after {attempts} attempts, so the endpoint \
             is now marked failing. Later events are still sent to it, and the next one it accepts clears the mark.\n\n\
             Each attempt, with the answer or the error, is listed on the organization's notifications page:\n{}{}\n\n\
             You get this mail as an admin of the organization {slug}.",
            state.config.public_url,
            crate::routes::path(crate::routes::ORG_NOTIFICATIONS, slug, None),
        ),
    };
    for admin in crate::mail::org_admins(tx, org_id).await? {
        crate::mail::enqueue_or_log(tx, admin, &message).await?;
    }
    Ok(())
}

/// One POST of `body` to `url`, signed, within the configured timeout, with no
/// redirect followed and at most [`BODY_LIMIT`] bytes of the answer read.
pub async fn send(settings: &WebhookSettings, id: &str, url: &str, secret: &str, body: &str) -> Outcome {
    let started = Instant::now();
    let result = tokio::time::timeout(settings.timeout, post(settings, id, url, secret, body)).await;
    let (status_code, error) = match result {
        Ok(Ok((code, _))) if (200..300).contains(&code) => (Some(code), None),
        Ok(Ok((code, answer))) => (Some(code), Some(format!("answered {code}: {}", answer.trim()))),
        Ok(Err(e)) => (None, Some(e)),
        Err(_) => (None, Some(format!("no answer within {} s", settings.timeout.as_secs()))),
    };
    Outcome { status_code, error: error.map(|e| e.chars().take(500).collect()), duration: started.elapsed() }
}

/// The request itself: the status and the start of the answer's body, or why
/// there was no answer.
async fn post(
    settings: &WebhookSettings,
    id: &str,
    url: &str,
    secret: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("the URL is malformed: {e}"))?;
    if let Some(ip) = literal_ip(&parsed).filter(|ip| !settings.allow_private && !is_public(*ip)) {
        return Err(format!("refused: {ip} is not a public address"));
    }
    let client = reqwest::Client::builder()
        .dns_resolver(std::sync::Arc::new(GuardedResolver { allow_private: settings.allow_private }))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(settings.timeout)
        .user_agent(concat!("data-export-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("could not make the HTTP client: {e}"))?;
    let timestamp = Utc::now().timestamp();
    let signature =
        super::signature(secret, id, timestamp, body).map_err(|e| format!("the secret is unusable: {e}"))?;
    let mut answer = client
        .post(parsed)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| describe(&e))?;
    let code = answer.status().as_u16();
    let mut head = Vec::new();
    while head.len() < BODY_LIMIT {
        match answer.chunk().await {
            Ok(Some(chunk)) => head.extend_from_slice(&chunk[..chunk.len().min(BODY_LIMIT - head.len())]),
            Ok(None) | Err(_) => break,
        }
    }
    Ok((code, String::from_utf8_lossy(&head).into_owned()))
}

/// An error's whole chain on one line (reqwest's own message is only its top),
/// or only the address guard's refusal when that is what stopped it.
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let message = s.to_string();
        if message.starts_with("refused: ") {
            return message;
        }
        text.push_str(": ");
        text.push_str(&message);
        source = s.source();
    }
    text
}
