//! The scheduler. Every `serve` and `worker` process ticks every 30 s; a tick claims
//! the latest due slot of the preset (and the current hour's prune) by inserting a
//! `schedule_slots` row, and only the process whose insert wins pushes the slot's
//! job, in the same transaction. The slot's job (queue `scheduler`) then creates one
//! scheduled run per org with Data Export on, and each run's unique
//! `(org_id, scheduled_for)` keeps that exactly-once even when the job is retried.
//!
//! Missed slots: only the latest slot at or before now is ever due, so after
//! downtime the latest missed slot runs once and older ones are dropped. Slots before
//! `schedule_since` (install time, or the last change of preset or timezone) never
//! run.

use std::time::Duration;

use apalis::prelude::*;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

use super::pruner;
use crate::{
    exports::{
        runs,
        start::{self, Scheduled},
    },
    jobs,
    settings::{self, backup},
    state::AppState,
};

/// How often each process looks for a due slot.
pub const TICK: Duration = Duration::from_secs(30);

/// A schedule slot to fire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SlotJob {
    pub slot: DateTime<Utc>,
}

/// What one tick claimed (None: nothing due, or another process claimed it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tick {
    pub export_slot: Option<DateTime<Utc>>,
    pub prune_slot: Option<DateTime<Utc>>,
}

/// One scheduler tick at `now`.
pub async fn tick(state: &AppState, now: DateTime<Utc>) -> anyhow::Result<Tick> {
    let settings = settings::load(&state.pool).await?;
    let mut claimed = Tick::default();
    if let Some(slot) = settings.preset.latest_at_or_before(settings.timezone, now)
        && slot >= settings.schedule_since
        && claim(&state.pool, "export", slot, &SlotJob { slot }).await?
    {
        tracing::info!(%slot, preset = settings.preset.key(), "schedule slot claimed");
        claimed.export_slot = Some(slot);
    }
    let hour = now.duration_trunc(TimeDelta::hours(1))?;
    if claim(&state.pool, "prune", hour, &pruner::PruneJob { org_id: None, slot: Some(hour) }).await? {
        claimed.prune_slot = Some(hour);
    }
    Ok(claimed)
}

/// Inserts the slot's claim and, if this process won it, pushes its job in the
/// same transaction. A slot claimed earlier whose job then failed for good before
/// the slot finished gets a new job (once, by whichever process locks it first).
async fn claim<J: jobs::Job>(pool: &PgPool, kind: &str, slot: DateTime<Utc>, job: &J) -> anyhow::Result<bool> {
    let mut tx = pool.begin().await?;
    let job_id = Ulid::generate();
    let won = sqlx::query("insert into schedule_slots (kind, slot, job_id) values ($1, $2, $3) on conflict do nothing")
        .bind(kind)
        .bind(slot)
        .bind(job_id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if won {
        jobs::push(&mut tx, job_id, job, 3).await?;
        tx.commit().await?;
        return Ok(true);
    }
    // A job that failed with attempts left is apalis' to retry, not lost; one that
    // failed for good (or was killed, or is gone) is pushed again once per slot, not
    // at every tick.
    let lost: Option<(String,)> = sqlx::query_as(
        "select s.job_id from schedule_slots s left join apalis.jobs j on j.id = s.job_id
         where s.kind = $1 and s.slot = $2 and s.finished_at is null and s.repushed_at is null
           and (j.id is null or j.status = 'Killed' or (j.status = 'Failed' and j.attempts >= j.max_attempts))
         for update of s skip locked",
    )
    .bind(kind)
    .bind(slot)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((old,)) = lost {
        tracing::warn!(kind, %slot, old_job = old, "the slot's job failed before the slot finished; pushing it again");
        sqlx::query("update schedule_slots set job_id = $3, repushed_at = now() where kind = $1 and slot = $2")
            .bind(kind)
            .bind(slot)
            .bind(job_id.to_string())
            .execute(&mut *tx)
            .await?;
        jobs::push(&mut tx, job_id, job, 3).await?;
    }
    tx.commit().await?;
    Ok(false)
}

/// What a slot did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SlotOutcome {
    /// Slugs of the orgs whose scheduled export was created (by this or an earlier
    /// attempt of the slot's job).
    pub started: Vec<String>,
    /// (slug, why) of the orgs skipped.
    pub skipped: Vec<(String, String)>,
    /// Why the whole slot was skipped.
    pub reason: Option<String>,
}

/// Fires a slot now, whatever the preset (`data-export schedule-now`): claims it as a
/// tick would, without a job, and fires it in this process.
pub async fn fire_now(state: &AppState) -> anyhow::Result<(DateTime<Utc>, SlotOutcome)> {
    let slot = Utc::now().duration_trunc(TimeDelta::seconds(1))?;
    sqlx::query(
        "insert into schedule_slots (kind, slot, job_id) values ('export', $1, 'schedule-now') on conflict do nothing",
    )
    .bind(slot)
    .execute(&state.pool)
    .await?;
    Ok((slot, fire_slot(state, slot).await?))
}

/// Fires a slot: one scheduled run per org with Data Export on. Safe to repeat.
pub async fn fire_slot(state: &AppState, slot: DateTime<Utc>) -> anyhow::Result<SlotOutcome> {
    let mut outcome = SlotOutcome::default();
    if !backup::is_ready(state).await? {
        let reason = "the backup configuration is not active and verified".to_string();
        tracing::warn!(%slot, reason, "schedule slot skipped");
        let details = serde_json::json!({ "slot": slot, "reason": reason });
        crate::audit::write(&state.pool, None, None, "schedule.slot_skipped", &format!("schedule:{slot}"), details)
            .await?;
        outcome.reason = Some(reason);
    } else {
        let orgs: Vec<(i64, String)> = sqlx::query_as(
            "select o.id, o.slug from organizations o
             join org_modules m on m.org_id = o.id and m.module = 'data_export' and m.enabled
             where o.lifecycle = 'active'
             order by o.slug",
        )
        .fetch_all(&state.pool)
        .await?;
        for (org_id, slug) in orgs {
            match start::create_scheduled(&state.pool, org_id, slot, state.config.export_max_attempts).await? {
                Scheduled::Created(id) => {
                    tracing::info!(%slot, org = slug, export_id = id, "scheduled export created");
                    outcome.started.push(slug);
                }
                Scheduled::AlreadyScheduled(id) => {
                    // An earlier attempt of this slot's job created it.
                    tracing::info!(%slot, org = slug, export_id = id, "slot already has its export");
                    outcome.started.push(slug);
                }
                Scheduled::Skipped { active_export_id } => {
                    let why = format!("export {active_export_id} was still active");
                    tracing::warn!(%slot, org = slug, active_export_id, "scheduled export skipped: another export is active");
                    let details = serde_json::json!({ "slot": slot, "active_export_id": active_export_id });
                    crate::audit::write(
                        &state.pool,
                        Some(org_id),
                        None,
                        "export.schedule_skipped",
                        &format!("schedule:{slot}"),
                        details,
                    )
                    .await?;
                    outcome.skipped.push((slug, why));
                }
            }
        }
    }
    // The slot has fired; if its runs have all ended already (each failed fast, say),
    // no run's end is left to send the platform admins' mail, so this does.
    let mut tx = state.pool.begin().await?;
    runs::lock_slot(&mut tx, slot).await?;
    sqlx::query(
        "update schedule_slots set finished_at = now(), outcome = $2
         where kind = 'export' and slot = $1 and finished_at is null",
    )
    .bind(slot)
    .bind(serde_json::to_value(&outcome)?)
    .execute(&mut *tx)
    .await?;
    let mut savepoint = sqlx::Acquire::begin(&mut *tx).await?;
    let result = runs::slot_digest(&mut savepoint, &state.config.public_url, slot).await;
    crate::db::settle_savepoint(savepoint, result, "the schedule slot's mail").await?;
    tx.commit().await?;
    Ok(outcome)
}

impl jobs::Job for SlotJob {
    const QUEUE: &'static str = "scheduler";
    type Context = ();

    /// Retried on error: firing a slot twice is harmless. It fires only claimed
    /// slots that are due, so a job pushed by hand (say, from the job board) cannot
    /// invent a slot.
    async fn run(self, state: AppState, _: (), _attempt: usize) -> Result<(), BoxDynError> {
        let claimed: Option<(i32,)> =
            sqlx::query_as("select 1 from schedule_slots where kind = 'export' and slot = $1 and slot <= now()")
                .bind(self.slot)
                .fetch_optional(&state.pool)
                .await?;
        if claimed.is_none() {
            tracing::warn!(slot = %self.slot, "refusing a slot job with no claimed, due slot");
            return Err(AbortError::new("no claimed, due slot").into());
        }
        fire_slot(&state, self.slot).await?;
        Ok(())
    }
}

/// Ticks until `stop` is cancelled.
pub async fn run_loop(state: AppState, stop: CancellationToken) {
    loop {
        if let Err(e) = tick(&state, Utc::now()).await {
            tracing::warn!(error = format!("{e:#}"), "scheduler tick failed; trying again at the next tick");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}
