//! Webhooks: an org's endpoints, its events queued for them, and their signatures.
//! Events are signed as the Standard Webhooks spec says (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`), queued in the
//! transaction that records what happened, and sent by [`delivery::DeliveryJob`]
//! with retries. Where an endpoint may point is [`target`]'s business.

pub mod delivery;
pub mod target;

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use ulid::Ulid;

use crate::{config::WebhookSettings, jobs};

/// The events an endpoint receives (every one of them: there is no per-event choice).
pub const EXPORT_COMPLETED: &str = "export.completed";
pub const EXPORT_FAILED: &str = "export.failed";
/// What "Send a test event" sends.
pub const TEST: &str = "webhook.test";

/// Endpoints one org may have.
pub const MAX_ENDPOINTS: i64 = 10;

/// An endpoint as its org sees it (never its secret, which is shown once).
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    pub created_at: DateTime<Utc>,
    pub rotated_at: Option<DateTime<Utc>>,
    /// When a delivery last gave up after its last retry; cleared by a success.
    pub failing_since: Option<DateTime<Utc>>,
}

/// A new endpoint or a rotated secret: the one time the secret is shown.
#[derive(Debug, Serialize)]
pub struct WithSecret {
    pub id: String,
    pub url: String,
    pub secret: String,
}

/// A fresh signing secret: `whsec_` and the base64 of 32 random bytes.
fn new_secret() -> String {
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>()))
}

/// The key bytes of a `whsec_` secret.
fn secret_key(secret: &str) -> anyhow::Result<Vec<u8>> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    Ok(base64::engine::general_purpose::STANDARD.decode(encoded)?)
}

/// The `webhook-signature` header for a message: `v1,` and the base64 HMAC-SHA256 of
/// `{id}.{timestamp}.{body}` keyed with the secret's bytes.
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &str) -> anyhow::Result<String> {
    let key = secret_key(secret)?;
    let mac = crate::auth::csrf::hmac_sha256(&key, format!("{id}.{timestamp}.{body}").as_bytes());
    Ok(format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac)))
}

/// Why an endpoint could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Url(String),
    #[error("An organization can have at most {MAX_ENDPOINTS} webhook endpoints; delete one first.")]
    TooMany,
}

/// The org's endpoints, oldest first.
pub async fn list(pool: &PgPool, org_id: i64) -> sqlx::Result<Vec<Endpoint>> {
    sqlx::query_as(
        "select id, url, created_at, rotated_at, failing_since from webhook_endpoints
         where org_id = $1 order by created_at, id",
    )
    .bind(org_id)
    .fetch_all(pool)
    .await
}

/// One endpoint of the org (None for another org's).
pub async fn get(pool: &PgPool, org_id: i64, id: &str) -> sqlx::Result<Option<Endpoint>> {
    sqlx::query_as(
        "select id, url, created_at, rotated_at, failing_since from webhook_endpoints where org_id = $1 and id = $2",
    )
    .bind(org_id)
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Adds an endpoint for `url` (checked by [`target::check_url`]) with a fresh
/// secret, audit-logged as `webhook.created`.
pub async fn create(
    pool: &PgPool,
    settings: &WebhookSettings,
    org_id: i64,
    actor: i64,
    url: &str,
) -> anyhow::Result<Result<WithSecret, Refused>> {
    let url = match target::check_url(url, settings.allow_private) {
        Ok(url) => url,
        Err(e) => return Ok(Err(Refused::Url(e))),
    };
    let mut tx = pool.begin().await?;
    // One org's endpoints are added one at a time, so the cap holds.
    sqlx::query("select 1 from organizations where id = $1 for update").bind(org_id).execute(&mut *tx).await?;
    let (count,): (i64,) = sqlx::query_as("select count(*) from webhook_endpoints where org_id = $1")
        .bind(org_id)
        .fetch_one(&mut *tx)
        .await?;
    if count >= MAX_ENDPOINTS {
        return Ok(Err(Refused::TooMany));
    }
    let id = Ulid::generate().to_string();
    let secret = new_secret();
    sqlx::query("insert into webhook_endpoints (id, org_id, url, secret, created_by) values ($1, $2, $3, $4, $5)")
        .bind(&id)
        .bind(org_id)
        .bind(&url)
        .bind(&secret)
        .bind(actor)
        .execute(&mut *tx)
        .await?;
    let details = serde_json::json!({ "url": target::redacted(&url) });
    crate::audit::write(&mut *tx, Some(org_id), Some(actor), "webhook.created", &format!("webhook:{id}"), details)
        .await?;
    tx.commit().await?;
    Ok(Ok(WithSecret { id, url, secret }))
}

/// Gives the endpoint a fresh secret, at once: every attempt from now on, retries
/// of earlier events included, is signed with it. Audit-logged as
/// `webhook.rotated`. None when the org has no such endpoint.
pub async fn rotate(pool: &PgPool, org_id: i64, actor: i64, id: &str) -> sqlx::Result<Option<WithSecret>> {
    let mut tx = pool.begin().await?;
    let secret = new_secret();
    let row: Option<(String,)> = sqlx::query_as(
        "update webhook_endpoints set secret = $3, rotated_at = now() where org_id = $1 and id = $2 returning url",
    )
    .bind(org_id)
    .bind(id)
    .bind(&secret)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((url,)) = row else { return Ok(None) };
    let details = serde_json::json!({ "url": target::redacted(&url) });
    crate::audit::write(&mut *tx, Some(org_id), Some(actor), "webhook.rotated", &format!("webhook:{id}"), details)
        .await?;
    tx.commit().await?;
    Ok(Some(WithSecret { id: id.to_string(), url, secret }))
}

/// Deletes the endpoint with its deliveries and their log (pending deliveries are
/// then never sent), audit-logged as `webhook.deleted`. False when the org has no
/// such endpoint.
pub async fn delete(pool: &PgPool, org_id: i64, actor: i64, id: &str) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let row: Option<(String,)> =
        sqlx::query_as("delete from webhook_endpoints where org_id = $1 and id = $2 returning url")
            .bind(org_id)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((url,)) = row else { return Ok(false) };
    let details = serde_json::json!({ "url": target::redacted(&url) });
    crate::audit::write(&mut *tx, Some(org_id), Some(actor), "webhook.deleted", &format!("webhook:{id}"), details)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// Queues `event` with `data` for every endpoint of the org (or only `only`), in
/// the caller's transaction: the deliveries exist, and their jobs start, only if it
/// commits. The body is fixed here, so every attempt sends and signs the same bytes.
/// Returns the deliveries' ids.
pub async fn enqueue(
    conn: &mut PgConnection,
    org_id: i64,
    event: &str,
    data: &serde_json::Value,
    only: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let endpoints: Vec<(String,)> =
        sqlx::query_as("select id from webhook_endpoints where org_id = $1 and ($2::text is null or id = $2)")
            .bind(org_id)
            .bind(only)
            .fetch_all(&mut *conn)
            .await?;
    let timestamp = Utc::now();
    let body = serde_json::json!({
        "type": event,
        "timestamp": timestamp.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    })
    .to_string();
    let mut ids = Vec::with_capacity(endpoints.len());
    for (endpoint,) in endpoints {
        let id = Ulid::generate();
        sqlx::query(
            "insert into webhook_deliveries (id, endpoint_id, org_id, event, body, next_attempt_at)
             values ($1, $2, $3, $4, $5, now())",
        )
        .bind(format!("msg_{id}"))
        .bind(&endpoint)
        .bind(org_id)
        .bind(event)
        .bind(&body)
        .execute(&mut *conn)
        .await?;
        let job = delivery::DeliveryJob { delivery_id: format!("msg_{id}") };
        jobs::push(conn, Ulid::generate(), &job, delivery::JOB_ATTEMPTS).await?;
        ids.push(format!("msg_{id}"));
    }
    Ok(ids)
}

/// One attempt as the notifications page lists it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Attempt {
    pub delivery_id: String,
    pub event: String,
    pub attempt: i32,
    pub at: DateTime<Utc>,
    pub status_code: Option<i32>,
    pub duration_ms: i32,
    pub error: Option<String>,
    /// The delivery's state now: pending (a retry is due), delivered or failed.
    pub delivery_status: String,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// The newest attempts to the org's endpoint `id`, newest first.
pub async fn attempts(pool: &PgPool, org_id: i64, id: &str, limit: i64) -> sqlx::Result<Vec<Attempt>> {
    sqlx::query_as(
        "select a.delivery_id, d.event, a.attempt, a.at, a.status_code, a.duration_ms, a.error,
                d.status as delivery_status, d.next_attempt_at
         from webhook_attempts a join webhook_deliveries d on d.id = a.delivery_id
         where a.endpoint_id = $2 and d.org_id = $1
         order by a.at desc, a.id desc limit $3",
    )
    .bind(org_id)
    .bind(id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Queues a new job for each pending delivery whose attempt is more than 15 minutes
/// overdue (its job was lost: a database outage while it ran, say). Run by
/// housekeeping; returns how many were queued again.
pub async fn requeue_lost(pool: &PgPool) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    let lost: Vec<(String,)> = sqlx::query_as(
        "update webhook_deliveries set next_attempt_at = now() where id in (
             select id from webhook_deliveries
             where status = 'pending' and next_attempt_at < now() - interval '15 minutes'
             order by next_attempt_at limit 500 for update skip locked)
         returning id",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (id,) in &lost {
        jobs::push(
            &mut tx,
            Ulid::generate(),
            &delivery::DeliveryJob { delivery_id: id.clone() },
            delivery::JOB_ATTEMPTS,
        )
        .await?;
    }
    tx.commit().await?;
    if !lost.is_empty() {
        tracing::warn!(deliveries = lost.len(), "queued webhook deliveries whose job was lost again");
    }
    Ok(lost.len() as u64)
}

/// The partial unique index that allows one pending test event per endpoint
/// (migration `20261207000041_one_pending_test_delivery`).
pub const ONE_PENDING_TEST: &str = "webhook_deliveries_one_pending_test";

/// Queues a `webhook.test` event for the org's endpoint `endpoint_id` with `data`:
/// its delivery's id, `Ok(None)` when the org has no such endpoint, or
/// `Err(TestPending)` while an earlier test event to it is still pending. One at a
/// time, so "Send a test event" cannot pile up deliveries; the database holds it
/// ([`ONE_PENDING_TEST`]), so requests at the same moment queue one between them.
pub async fn queue_test(
    pool: &PgPool,
    org_id: i64,
    endpoint_id: &str,
    data: &serde_json::Value,
) -> anyhow::Result<Result<Option<String>, TestPending>> {
    let mut tx = pool.begin().await?;
    let ids = match enqueue(&mut tx, org_id, TEST, data, Some(endpoint_id)).await {
        Ok(ids) => ids,
        Err(e) if e.downcast_ref::<sqlx::Error>().is_some_and(|e| crate::db::is_violation_of(e, ONE_PENDING_TEST)) => {
            return Ok(Err(TestPending));
        }
        Err(e) => return Err(e),
    };
    tx.commit().await?;
    Ok(Ok(ids.into_iter().next()))
}

/// An endpoint's earlier test event is still pending.
#[derive(Debug, thiserror::Error)]
#[error("A test event for this endpoint is still being delivered; send the next once its attempt has ended.")]
pub struct TestPending;

/// Deletes deliveries (and their attempts) older than 30 days: the page shows the
/// recent ones, and a month covers every retry schedule.
pub async fn delete_old(pool: &PgPool) -> sqlx::Result<u64> {
    let done = sqlx::query("delete from webhook_deliveries where created_at < now() - interval '30 days'")
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks spec (its reference libraries' test).
    #[test]
    fn signs_as_the_standard_webhooks_example() {
        let sig = signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_are_fresh_and_decode_to_32_bytes() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(a.starts_with("whsec_"));
        assert_eq!(secret_key(&a).unwrap().len(), 32);
    }
}
