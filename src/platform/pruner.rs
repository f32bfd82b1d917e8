//! The retention pruner: applies [`retention::decide`] to each org's completed
//! scheduled exports. For each export to remove it deletes the object first, then
//! marks the run `pruned` (with an audit entry), so a crash between the two only
//! repeats the delete. Per org it holds an advisory lock, so two pruners running at
//! once take turns and the second finds nothing left to do.
//! Manual exports are never touched.

use std::collections::HashMap;

use apalis::prelude::*;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use ulid::Ulid;

use super::retention::{self, Decision};
use crate::{
    jobs,
    settings::{self, Settings},
    state::AppState,
};

/// The advisory lock class of the per-org prune lock (the second key is the org id).
const LOCK_CLASS: i32 = 0x4458_5052; // "DXPR"

/// Prune one org, or all of them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PruneJob {
    pub org_id: Option<i64>,
    /// The hourly prune slot this job fires (none for a prune after an export);
    /// marked finished when the job has run.
    #[serde(default)]
    pub slot: Option<DateTime<Utc>>,
}

/// Queues a prune of one org (after its scheduled export completed).
pub async fn enqueue(pool: &PgPool, org_id: i64) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    jobs::push(&mut conn, Ulid::generate(), &PruneJob { org_id: Some(org_id), slot: None }, 3).await
}

/// One org's plan.
#[derive(Clone, Debug)]
pub struct OrgPlan {
    pub slug: String,
    pub decisions: Vec<Decision<String>>,
}

impl OrgPlan {
    pub fn removals(&self) -> usize {
        self.decisions.iter().filter(|d| !d.is_kept()).count()
    }
}

use crate::exports::runs::{self, Candidate};

/// An org's completed scheduled exports.
async fn candidates(pool: &PgPool, org_id: i64) -> sqlx::Result<Vec<Candidate>> {
    runs::completed_scheduled(pool, org_id).await
}

fn decide(settings: &Settings, rows: &[Candidate]) -> Vec<Decision<String>> {
    let items: Vec<(String, DateTime<Utc>)> = rows.iter().map(|(id, at, _)| (id.clone(), *at)).collect();
    retention::decide(&items, settings.retention, settings.timezone)
}

async fn orgs_to_prune(pool: &PgPool, org_id: Option<i64>) -> sqlx::Result<Vec<(i64, String, String)>> {
    sqlx::query_as("select id, slug, bucket from organizations where $1::bigint is null or id = $1 order by slug")
        .bind(org_id)
        .fetch_all(pool)
        .await
}

/// The dry run: for each org, each completed scheduled export with the rules that
/// keep it or "will be removed". Changes nothing.
pub async fn plan(pool: &PgPool, org_id: Option<i64>) -> anyhow::Result<(Settings, Vec<OrgPlan>)> {
    let settings = settings::load(pool).await?;
    let mut plans = Vec::new();
    for (org_id, slug, _) in orgs_to_prune(pool, org_id).await? {
        let rows = candidates(pool, org_id).await?;
        plans.push(OrgPlan { slug, decisions: decide(&settings, &rows) });
    }
    Ok((settings, plans))
}

/// The dry run of at most `limit` orgs (by slug) that have completed scheduled
/// exports, and how many such orgs there are: what the platform settings page
/// shows, so that it does not grow with the number of orgs.
pub async fn plan_some(pool: &PgPool, limit: i64) -> anyhow::Result<(Settings, Vec<OrgPlan>, i64)> {
    let settings = settings::load(pool).await?;
    let (total,): (i64,) = sqlx::query_as(
        "select count(distinct org_id) from export_runs where trigger = 'scheduled' and status = 'completed'",
    )
    .fetch_one(pool)
    .await?;
    let orgs: Vec<(i64, String)> = sqlx::query_as(
        "select o.id, o.slug from organizations o
         where exists (select 1 from export_runs r
                       where r.org_id = o.id and r.trigger = 'scheduled' and r.status = 'completed')
         order by o.slug limit $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut plans = Vec::new();
    for (org_id, slug) in orgs {
        let rows = candidates(pool, org_id).await?;
        plans.push(OrgPlan { slug, decisions: decide(&settings, &rows) });
    }
    Ok((settings, plans, total))
}

/// One removal that was carried out.
#[derive(Clone, Debug, Serialize)]
pub struct Removed {
    pub org: String,
    pub export_id: String,
    pub scheduled_for: DateTime<Utc>,
}

/// Applies retention to one org or all. Returns what it removed. Refused while the
/// backup configuration is not active and verified (the storage in use may not be
/// the one the exports were written to). An object that cannot be deleted leaves
/// its run `completed` for the next prune, and the error is returned after the
/// other orgs were pruned.
pub async fn apply(state: &AppState, org_id: Option<i64>) -> anyhow::Result<Vec<Removed>> {
    if !crate::settings::backup::is_ready(state).await? {
        anyhow::bail!("not pruning: the backup configuration is not active and verified against this storage");
    }
    let settings = settings::load(&state.pool).await?;
    let mut removed = Vec::new();
    let mut failures = Vec::new();
    for (org_id, slug, bucket) in orgs_to_prune(&state.pool, org_id).await? {
        // The org's lock lives on one connection for the whole org; each removal
        // commits on its own, so a later error cannot undo an earlier mark.
        let mut lock = state.pool.acquire().await?;
        sqlx::query("select pg_advisory_lock($1, ($2 % 2147483647)::int)")
            .bind(LOCK_CLASS)
            .bind(org_id)
            .execute(&mut *lock)
            .await?;
        // The connection is closed rather than returned to the pool, which releases
        // the lock whatever happens below (an error, a panic, a cancelled job).
        lock.close_on_drop();
        let outcome = prune_org(state, &settings, org_id, &slug, &bucket, &mut removed, &mut failures).await;
        drop(lock);
        outcome?;
    }
    if !failures.is_empty() {
        anyhow::bail!(
            "pruned {} export(s); could not delete {}: {}",
            removed.len(),
            failures.len(),
            failures.join("; ")
        );
    }
    Ok(removed)
}

async fn prune_org(
    state: &AppState,
    settings: &Settings,
    org_id: i64,
    slug: &str,
    bucket: &str,
    removed: &mut Vec<Removed>,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    // Read under the lock: what another pruner removed is no longer a candidate.
    let rows = candidates(&state.pool, org_id).await?;
    let keys: HashMap<&str, (&DateTime<Utc>, &str)> =
        rows.iter().map(|(id, at, key)| (id.as_str(), (at, key.as_str()))).collect();
    for d in decide(settings, &rows).into_iter().filter(|d| !d.is_kept()) {
        let Some((at, key)) = keys.get(d.id.as_str()) else { continue };
        // Its tables (CSV, Parquet zips) first: a failure leaves the export, and so
        // both, to the next prune.
        if let Err(e) = crate::tables::job::remove_of_export(state, bucket, key, &d.id).await {
            tracing::warn!(
                org = slug,
                export_id = d.id,
                error = format!("{e:#}"),
                "could not remove a pruned export's tables"
            );
            failures.push(format!("{slug}/{} (tables): {e:#}", d.id));
            continue;
        }
        if let Err(e) = state.storage.delete(bucket, key).await {
            tracing::warn!(
                org = slug,
                export_id = d.id,
                error = format!("{e:#}"),
                "could not delete a pruned export's object"
            );
            failures.push(format!("{slug}/{}: {e:#}", d.id));
            continue;
        }
        let mut tx = state.pool.begin().await?;
        let marked = runs::mark_pruned(&mut tx, &d.id).await?;
        if marked {
            let p = settings.retention;
            let details = serde_json::json!({
                "scheduled_for": at,
                "retention": { "daily": p.daily, "weekly": p.weekly, "monthly": p.monthly },
                "timezone": settings.timezone.name(),
            });
            crate::audit::write(&mut *tx, Some(org_id), None, "export.pruned", &format!("export:{}", d.id), details)
                .await?;
        }
        tx.commit().await?;
        // Tables asked for while it was being removed go too (best effort: see above).
        if let Err(e) = crate::tables::job::remove_of_export(state, bucket, key, &d.id).await {
            tracing::warn!(
                org = slug,
                export_id = d.id,
                error = format!("{e:#}"),
                "could not remove a pruned export's tables"
            );
        }
        if marked {
            tracing::info!(org = slug, export_id = d.id, scheduled_for = %at, "export pruned");
            removed.push(Removed { org: slug.to_string(), export_id: d.id.clone(), scheduled_for: **at });
        }
    }
    Ok(())
}

impl jobs::Job for PruneJob {
    const QUEUE: &'static str = "pruner";
    type Context = ();

    /// Hourly for every org, and after each scheduled export for its org.
    async fn run(self, state: AppState, _: (), _attempt: usize) -> Result<(), BoxDynError> {
        if self.org_id.is_none() {
            // The hourly run also removes expired data-subject export files.
            match crate::privacy::expire(&state, chrono::Utc::now()).await {
                Ok(0) => {}
                Ok(expired) => tracing::info!(expired, "expired data-subject exports removed"),
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "expiring data-subject exports failed; pruning goes on")
                }
            }
        }
        if !crate::settings::backup::is_ready(&state).await? {
            // Expected while an admin has paused backups or not verified a new endpoint:
            // a skip, not a job failure to retry.
            tracing::warn!(org_id = self.org_id, "prune skipped: the backup configuration is not active and verified");
        } else {
            let removed = apply(&state, self.org_id).await?;
            tracing::info!(org_id = self.org_id, removed = removed.len(), "prune finished");
        }
        if let Some(slot) = self.slot {
            sqlx::query("update schedule_slots set finished_at = now() where kind = 'prune' and slot = $1")
                .bind(slot)
                .execute(&state.pool)
                .await?;
        }
        Ok(())
    }
}
