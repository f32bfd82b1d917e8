//! The backup configuration: exports run only while it is active and verified
//! against the storage endpoint in use now.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::state::AppState;

/// The stored configuration row.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct BackupConfig {
    pub active: bool,
    pub verified_at: Option<DateTime<Utc>>,
    pub verified_endpoint: Option<String>,
    pub last_error: Option<String>,
}

impl BackupConfig {
    /// Active, and verified against `endpoint` (the storage identity in use now).
    pub fn is_ready(&self, endpoint: &str) -> bool {
        self.active && self.verified_at.is_some() && self.verified_endpoint.as_deref() == Some(endpoint)
    }
}

/// Loads the configuration.
pub async fn load(pool: &PgPool) -> sqlx::Result<BackupConfig> {
    sqlx::query_as("select active, verified_at, verified_endpoint, last_error from backup_configuration where id = 1")
        .fetch_one(pool)
        .await
}

/// Whether exports may run now.
pub async fn is_ready(state: &AppState) -> sqlx::Result<bool> {
    Ok(load(&state.pool).await?.is_ready(state.storage.identity()))
}

/// Writes, reads back and deletes a probe object in the platform's own bucket (the
/// privacy bucket), which tells that the endpoint and the credentials work, and
/// records the outcome. Returns the error text on failure. Org buckets are checked
/// one by one in the background (`platform::buckets`): one failing org bucket
/// refuses that org's exports, never the platform's.
pub async fn verify(state: &AppState, actor: Option<i64>) -> anyhow::Result<Result<(), String>> {
    let buckets = vec![state.storage.privacy_bucket().to_string()];
    // The result is stored only if the configuration did not change while probing
    // (a switch flipped meanwhile must keep its "cleared").
    let (seen,): (DateTime<Utc>,) =
        sqlx::query_as("select updated_at from backup_configuration where id = 1").fetch_one(&state.pool).await?;
    let mut outcome = state.storage.probe(&buckets).await.map_err(|e| format!("{e:#}"));
    let stored = match &outcome {
        Ok(()) => {
            sqlx::query(
                "update backup_configuration set verified_at = now(), verified_endpoint = $1, last_error = null
             where id = 1 and updated_at = $2",
            )
            .bind(state.storage.identity())
            .bind(seen)
            .execute(&state.pool)
            .await?
        }
        Err(e) => {
            sqlx::query(
                "update backup_configuration set verified_at = null, verified_endpoint = null, last_error = $1
             where id = 1 and updated_at = $2",
            )
            .bind(e)
            .bind(seen)
            .execute(&state.pool)
            .await?
        }
    };
    if stored.rows_affected() == 0 {
        outcome = Err("the configuration changed while it was being verified; verify again".to_string());
    }
    let details = serde_json::json!({ "endpoint": state.storage.identity(), "ok": outcome.is_ok(), "error": outcome.as_ref().err() });
    crate::audit::write(&state.pool, None, actor, "backup.verified", "backup_configuration", details).await?;
    Ok(outcome)
}

/// Switches the configuration on or off. A change clears "verified": the
/// configuration must be verified again before exports run.
pub async fn set_active(pool: &PgPool, actor: i64, active: bool) -> anyhow::Result<bool> {
    let mut tx = pool.begin().await?;
    let changed = sqlx::query(
        "update backup_configuration set active = $1, verified_at = null, verified_endpoint = null,
         updated_at = now(), updated_by = $2 where id = 1 and active <> $1",
    )
    .bind(active)
    .bind(actor)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if changed {
        let action = if active { "backup.activated" } else { "backup.deactivated" };
        let details = serde_json::json!({ "before": { "active": !active }, "after": { "active": active } });
        crate::audit::write(&mut *tx, None, Some(actor), action, "backup_configuration", details).await?;
    }
    tx.commit().await?;
    Ok(changed)
}
