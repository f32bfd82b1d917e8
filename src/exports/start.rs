//! Starting runs: a run's row and its job, written in one transaction, for a
//! trigger (the page, the API, the command line) and for a schedule slot. It sits
//! above both the run records ([`runs`]) and the job ([`job`]), so that neither
//! reaches for the other.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use ulid::Ulid;

use super::{
    job::{self, ExportJob},
    runs,
};
use crate::error::AppError;

/// Creates a manual run and its job in one transaction. The one-active-export
/// index turns a concurrent trigger into [`AppError::Conflict`].
pub async fn create_manual(pool: &PgPool, org_id: i64, user_id: i64, max_attempts: u32) -> Result<runs::Run, AppError> {
    create(pool, org_id, Some(user_id), max_attempts).await
}

/// A manual run started from the command line (no user).
pub async fn create_manual_unattributed(pool: &PgPool, org_id: i64, max_attempts: u32) -> Result<runs::Run, AppError> {
    create(pool, org_id, None, max_attempts).await
}

async fn create(pool: &PgPool, org_id: i64, user_id: Option<i64>, max_attempts: u32) -> Result<runs::Run, AppError> {
    let mut tx = pool.begin().await?;
    let id = match create_in(&mut tx, org_id, user_id, max_attempts).await {
        Ok(id) => id,
        Err(InsertError::Active) => {
            drop(tx);
            let active = runs::active_id(pool, org_id).await?.unwrap_or_default();
            return Err(AppError::Conflict { active_export_id: active });
        }
        Err(InsertError::Other(e)) => return Err(e),
    };
    tx.commit().await?;
    runs::get_any(pool, &id).await?.ok_or(AppError::NotFound)
}

/// Why [`create_in`] wrote nothing.
#[derive(Debug)]
pub enum InsertError {
    /// Another export of the org is pending or running (the one-active-export
    /// index); the caller's transaction is aborted and must be dropped.
    Active,
    Other(AppError),
}

impl From<sqlx::Error> for InsertError {
    fn from(e: sqlx::Error) -> Self {
        Self::Other(e.into())
    }
}

impl From<anyhow::Error> for InsertError {
    fn from(e: anyhow::Error) -> Self {
        Self::Other(e.into())
    }
}

/// A manual run, its job and its audit entry, inside the caller's transaction (what
/// closing an org writes with the org's new state); returns the run's id.
pub async fn create_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    org_id: i64,
    user_id: Option<i64>,
    max_attempts: u32,
) -> Result<String, InsertError> {
    let id = Ulid::generate();
    let inserted = sqlx::query(
        "insert into export_runs (id, org_id, status, trigger, triggered_by) values ($1, $2, 'pending', 'manual', $3)",
    )
    .bind(id.to_string())
    .bind(org_id)
    .bind(user_id)
    .execute(&mut **tx)
    .await;
    if let Err(e) = inserted {
        if crate::db::is_violation_of(&e, runs::ONE_ACTIVE_INDEX) {
            return Err(InsertError::Active);
        }
        return Err(e.into());
    }
    job::enqueue(tx, id, &ExportJob { run_id: id.to_string() }, max_attempts).await?;
    crate::audit::write(
        &mut **tx,
        Some(org_id),
        user_id,
        "export.triggered",
        &format!("export:{id}"),
        serde_json::json!({}),
    )
    .await?;
    Ok(id.to_string())
}

/// What a schedule slot did for one org.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheduled {
    /// A new scheduled run, with its job.
    Created(String),
    /// The slot already has its run (the slot's job ran before).
    AlreadyScheduled(String),
    /// Another export was pending or running: the slot is skipped for this org.
    Skipped { active_export_id: String },
}

/// Creates the scheduled run of `slot` and its job in one transaction. The unique
/// `(org_id, scheduled_for)` index makes the slot's run exist once, however many
/// processes try; the one-active index turns an active export into a skip.
pub async fn create_scheduled(
    pool: &PgPool,
    org_id: i64,
    slot: DateTime<Utc>,
    max_attempts: u32,
) -> anyhow::Result<Scheduled> {
    // A conflict with a run that then finishes before we look is retried.
    for _ in 0..3 {
        let id = Ulid::generate();
        let mut tx = pool.begin().await?;
        let inserted = sqlx::query(
            "insert into export_runs (id, org_id, status, trigger, scheduled_for)
             values ($1, $2, 'pending', 'scheduled', $3) on conflict do nothing",
        )
        .bind(id.to_string())
        .bind(org_id)
        .bind(slot)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if inserted {
            job::enqueue(&mut tx, id, &ExportJob { run_id: id.to_string() }, max_attempts).await?;
            let details = serde_json::json!({ "scheduled_for": slot });
            crate::audit::write(&mut *tx, Some(org_id), None, "export.scheduled", &format!("export:{id}"), details)
                .await?;
            tx.commit().await?;
            return Ok(Scheduled::Created(id.to_string()));
        }
        drop(tx);
        let existing: Option<(String,)> =
            sqlx::query_as("select id from export_runs where org_id = $1 and scheduled_for = $2")
                .bind(org_id)
                .bind(slot)
                .fetch_optional(pool)
                .await?;
        if let Some((id,)) = existing {
            return Ok(Scheduled::AlreadyScheduled(id));
        }
        if let Some(active_export_id) = runs::active_id(pool, org_id).await? {
            return Ok(Scheduled::Skipped { active_export_id });
        }
    }
    anyhow::bail!("could not create the scheduled run for slot {slot}: it kept conflicting")
}
