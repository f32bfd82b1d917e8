//! The closing's work after the request, run by housekeeping ([`tick`]): the final
//! export verified once it has completed, the grace period started, and then the
//! erasure in two phases. [`erase_rows`] deletes every row of every table with an
//! `org_id` column (found in the catalog, so a new table is covered without a
//! change here), children before parents, and every row that a foreign key to
//! `organizations` would delete with the org (its scoped API tokens), in one
//! transaction that also writes the receipt and queues its mails: state
//! `erased_db` (the tables and their order: `super::tables`). [`remove_bucket`] then empties and removes the org's bucket, stores
//! the receipt in the platform's bucket and marks the org `closed`. Both are
//! idempotent: a crash between them is finished by the next run.

use std::collections::BTreeSet;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::OrgClosing;
use crate::{exports::runs, state::AppState};

/// What one run of [`tick`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tick {
    /// Final exports verified.
    pub verified: usize,
    /// Orgs whose rows were erased.
    pub erased: usize,
    /// Orgs whose bucket was removed (now `closed`).
    pub closed: usize,
    /// Orgs that could not go on (logged; tried again at the next run).
    pub failed: usize,
}

/// Advances every org that is closing or half erased. Run by housekeeping (every 10
/// minutes); an org's failure is logged and does not hold up the others.
pub async fn tick(state: &AppState) -> anyhow::Result<Tick> {
    let open: Vec<(i64, String, String)> = sqlx::query_as(
        "select id, slug, lifecycle from organizations where lifecycle in ('closing', 'erased_db') order by id",
    )
    .fetch_all(&state.pool)
    .await?;
    let mut done = Tick::default();
    for (id, slug, lifecycle) in open {
        let step = async {
            if lifecycle == "closing" {
                match advance(state, id).await? {
                    Advanced::Verified => done.verified += 1,
                    Advanced::Erased => {
                        done.erased += 1;
                        remove_bucket(state, id).await?;
                        done.closed += 1;
                    }
                    Advanced::Waiting => {}
                }
            } else {
                remove_bucket(state, id).await?;
                done.closed += 1;
            }
            anyhow::Ok(())
        };
        if let Err(e) = step.await {
            done.failed += 1;
            tracing::error!(org = %slug, error = format!("{e:#}"), "closing the organization did not go on");
        }
    }
    Ok(done)
}

/// What [`advance`] did for a closing org.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advanced {
    /// Nothing to do yet (the final export runs, the grace period runs, or the
    /// closing is held: `close_error` says why).
    Waiting,
    /// The final export was verified now; the grace period starts.
    Verified,
    /// The rows were erased (the bucket is next).
    Erased,
}

/// One step of a closing org: verify its final export once it has completed (and
/// start the grace period), hold the closing when that export failed or did not
/// verify, and erase its rows once the grace period has passed.
pub async fn advance(state: &AppState, org_id: i64) -> anyhow::Result<Advanced> {
    let org = super::find_by_id(&state.pool, org_id).await?.context("the organization no longer exists")?;
    if org.lifecycle != "closing" {
        return Ok(Advanced::Waiting);
    }
    let final_id = org.final_export_id.clone().unwrap_or_default();
    let Some(run) = runs::get_any(&state.pool, &final_id).await?.filter(|r| r.org_id == org.id) else {
        hold(&state.pool, org.id, &format!("its final export {final_id} is gone; reopen it and close it again"))
            .await?;
        return Ok(Advanced::Waiting);
    };
    let mut verified_now = false;
    match run.status {
        runs::RunStatus::Pending | runs::RunStatus::Running => return Ok(Advanced::Waiting),
        runs::RunStatus::Completed if run.verified_at.is_none() => {
            verify_final(state, &org, &run).await?;
            verified_now = true;
        }
        runs::RunStatus::Completed => {}
        other => {
            let why = run.error.clone().unwrap_or_else(|| other.to_string());
            hold(
                &state.pool,
                org.id,
                &format!("its final export did not complete ({why}); reopen it and close it again"),
            )
            .await?;
            return Ok(Advanced::Waiting);
        }
    }
    let run = runs::get_any(&state.pool, &final_id).await?.context("the final export is gone")?;
    if let Some(error) = &run.verify_error {
        hold(&state.pool, org.id, &format!("its final export did not verify ({error}); reopen it and close it again"))
            .await?;
        return Ok(Advanced::Waiting);
    }
    // The grace period runs from the verification.
    sqlx::query(
        "update organizations o set close_after = r.verified_at + make_interval(days => o.close_grace_days)
         from export_runs r
         where o.id = $1 and o.lifecycle = 'closing' and o.close_after is null and r.id = o.final_export_id
           and r.verified_at is not null",
    )
    .bind(org.id)
    .execute(&state.pool)
    .await?;
    match erase_rows(state, org.id).await? {
        Erasure::Done => Ok(Advanced::Erased),
        Erasure::Refused(_) if verified_now => Ok(Advanced::Verified),
        Erasure::Refused(_) => Ok(Advanced::Waiting),
    }
}

/// Records why the closing cannot go on (shown on its page and the org list).
async fn hold(pool: &PgPool, org_id: i64, why: &str) -> sqlx::Result<()> {
    sqlx::query("update organizations set close_error = $2 where id = $1 and lifecycle = 'closing'")
        .bind(org_id)
        .bind(format!("The closing is held: {why}."))
        .execute(pool)
        .await?;
    Ok(())
}

/// Re-reads the final export from the bucket and checks it against its recorded
/// SHA-256 (`snapshot::verify`), and records the outcome on the run, as the
/// Verify action does.
async fn verify_final(state: &AppState, org: &OrgClosing, run: &runs::Run) -> anyhow::Result<()> {
    let key = run.completed_key().context("the final export has no file")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(state.config.verify_timeout_secs);
    let outcome = crate::snapshot::verify::verify_object_bounded(
        &state.storage,
        &org.bucket,
        key,
        run.sha256.as_deref(),
        Some(deadline),
        (),
    )
    .await?;
    let outcome = outcome.map_err(|e| e.0).and_then(|report| {
        if report.export_id == run.id {
            Ok(())
        } else {
            Err(format!("the file is export {}, not {}", report.export_id, run.id))
        }
    });
    let error = outcome.err();
    runs::set_verified(&state.pool, org.id, &run.id, error.as_deref()).await?;
    let details = serde_json::json!({ "via": "closing", "ok": error.is_none(), "error": error });
    crate::audit::write(&state.pool, Some(org.id), None, "export.verified", &format!("export:{}", run.id), details)
        .await?;
    Ok(())
}

/// Whether [`erase_rows`] erased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Erasure {
    Done,
    /// Why it did not start (nothing was changed).
    Refused(String),
}

/// The database phase: in one transaction, refuses unless the org is `closing`, its
/// grace period has passed and its final export is completed and verified; then
/// deletes every row of the org, writes the receipt on the org's row (`erased_db`),
/// a platform audit entry, and the mails to the org's admins (as they were before
/// the erasure) and the platform admins.
pub async fn erase_rows(state: &AppState, org_id: i64) -> anyhow::Result<Erasure> {
    let mut tx = state.pool.begin().await?;
    let org: Option<OrgClosing> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{} where id = $1 for update", super::SELECT)))
            .bind(org_id)
            .fetch_optional(&mut *tx)
            .await?;
    let org = org.context("the organization no longer exists")?;
    if org.lifecycle != "closing" {
        return Ok(Erasure::Refused(format!("it is {}, not closing", org.lifecycle)));
    }
    let final_id = org.final_export_id.clone().unwrap_or_default();
    let run: Option<FinalExport> = sqlx::query_as(
        "select id, status, size_bytes, sha256, counts, snapshot_at, verified_at, verify_error
         from export_runs where id = $1 and org_id = $2",
    )
    .bind(&final_id)
    .bind(org.id)
    .fetch_optional(&mut *tx)
    .await?;
    let refusal = match (&run, org.close_after) {
        (None, _) => Some("its final export is gone".to_string()),
        (Some(r), _) if r.status != "completed" => Some(format!("its final export is {}", r.status)),
        (Some(r), _) if r.verified_at.is_none() => Some("its final export is not verified yet".into()),
        (Some(r), _) if r.verify_error.is_some() => Some("its final export did not verify".into()),
        (_, None) => Some("its grace period has not started".into()),
        (_, Some(after)) if after > Utc::now() => Some(format!("its grace period runs until {after}")),
        _ => None,
    };
    if let Some(why) = refusal {
        return Ok(Erasure::Refused(why));
    }
    let run = run.context("the final export is gone")?;
    // Who is told: the org's admins as they are before their memberships go.
    let admins: Vec<(i64, String)> = sqlx::query_as(
        "select u.id, u.email from memberships m join users u on u.id = m.user_id
         where m.org_id = $1 and m.role = 'admin' and m.status = 'active' order by u.id",
    )
    .bind(org.id)
    .fetch_all(&mut *tx)
    .await?;
    let erased = super::tables::delete_rows(&mut tx, org.id).await?;
    let erased_at = Utc::now();
    let receipt = serde_json::json!({
        "format": "data-export/closing-receipt",
        "version": 1,
        "organization": { "id": org.id, "slug": org.slug, "name": org.name, "bucket": org.bucket },
        "requested_by": org.close_requested_by_email,
        "requested_via": org.close_via,
        "requested_at": org.close_requested_at,
        "grace_days": org.close_grace_days,
        "erase_after": org.close_after,
        "erased_at": erased_at,
        "final_export": {
            "id": run.id, "size_bytes": run.size_bytes, "sha256": run.sha256, "snapshot_at": run.snapshot_at,
            "verified_at": run.verified_at, "counts": run.counts,
        },
        "erased": { "rows": erased.values().sum::<u64>(), "tables": erased },
        "admins_notified": admins.iter().map(|(_, e)| e).collect::<Vec<_>>(),
        "bucket_removed_at": null,
    });
    sqlx::query(
        "update organizations set lifecycle = 'erased_db', erased_at = $2, close_receipt = $3, close_error = null
         where id = $1",
    )
    .bind(org.id)
    .bind(erased_at)
    .bind(&receipt)
    .execute(&mut *tx)
    .await?;
    let details = serde_json::json!({
        "org_id": org.id, "slug": org.slug, "name": org.name, "final_export_id": run.id,
        "rows": receipt["erased"]["rows"], "requested_by": org.close_requested_by_email,
    });
    crate::audit::write(&mut *tx, None, None, "org.erased", &format!("org:{}", org.slug), details).await?;
    let mut told = BTreeSet::new();
    let platform = crate::mail::platform_admins(&mut tx).await?;
    let message = mail_of(&state.config.public_url, &org, &receipt);
    for user_id in admins.iter().map(|(id, _)| *id).chain(platform) {
        if told.insert(user_id) {
            crate::mail::enqueue(&mut tx, user_id, &message).await?;
        }
    }
    tx.commit().await?;
    tracing::info!(org = %org.slug, rows = %receipt["erased"]["rows"], "organization's rows erased");
    Ok(Erasure::Done)
}

#[derive(sqlx::FromRow)]
struct FinalExport {
    id: String,
    status: String,
    size_bytes: Option<i64>,
    sha256: Option<String>,
    counts: Option<serde_json::Value>,
    snapshot_at: Option<DateTime<Utc>>,
    verified_at: Option<DateTime<Utc>>,
    verify_error: Option<String>,
}

/// The mail with the receipt's summary (the receipt itself is in the platform's bucket).
fn mail_of(public_url: &str, org: &OrgClosing, receipt: &serde_json::Value) -> crate::mail::Message {
    let fe = &receipt["final_export"];
    let text = format!(
        "The organization {name} ({slug}) was closed: its data was erased from this platform on {at}.\n\n\
         Closing asked for by: {who}, on {asked}.\n\
         Rows erased: {rows}.\n\
         Final export: {id}, {size} bytes, SHA-256 {sha}.\n\n\
         Platform admins can read the whole receipt on the organization list:\n{public_url}{list}?q={slug}\n",
        name = org.name,
        slug = org.slug,
        at = receipt["erased_at"].as_str().unwrap_or(""),
        who = org.close_requested_by_email.as_deref().unwrap_or("the command line"),
        asked = org.close_requested_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
        rows = receipt["erased"]["rows"],
        id = fe["id"].as_str().unwrap_or(""),
        size = fe["size_bytes"],
        sha = fe["sha256"].as_str().unwrap_or(""),
        list = crate::routes::PLATFORM_ORGS,
    );
    crate::mail::Message {
        kind: crate::mail::Kind::OrgClosed,
        subject: format!("{} was closed and its data erased", org.name),
        text,
    }
}

/// The bucket phase, after [`erase_rows`] committed: empties and removes the org's
/// bucket (what is gone already is skipped), stores the receipt in the platform's
/// bucket (`closing-receipts/{slug}.json`), then marks the org `closed`. Run again
/// after a crash, it finishes.
pub async fn remove_bucket(state: &AppState, org_id: i64) -> anyhow::Result<()> {
    let org = super::find_by_id(&state.pool, org_id).await?.context("the organization no longer exists")?;
    if org.lifecycle != "erased_db" {
        return Ok(());
    }
    if state.storage.bucket_exists(&org.bucket).await? {
        state.storage.empty_bucket(&org.bucket).await?;
        state.storage.delete_bucket(&org.bucket).await?;
    }
    let removed_at = Utc::now();
    let key = receipt_key(&org.slug);
    let mut receipt = org.close_receipt.clone().context("the erased organization has no receipt")?;
    receipt["bucket_removed_at"] = serde_json::json!(removed_at);
    receipt["stored_at"] = serde_json::json!(format!("{}/{key}", state.storage.privacy_bucket()));
    let body = serde_json::to_vec_pretty(&receipt)?;
    state.storage.put_small(state.storage.privacy_bucket(), &key, body, "application/json").await?;
    sqlx::query(
        "update organizations set lifecycle = 'closed', bucket_removed_at = $2, close_receipt = $3
         where id = $1 and lifecycle = 'erased_db'",
    )
    .bind(org.id)
    .bind(removed_at)
    .bind(&receipt)
    .execute(&state.pool)
    .await?;
    tracing::info!(org = %org.slug, bucket = %org.bucket, "organization closed: bucket removed, receipt stored");
    Ok(())
}

/// Where an org's receipt is kept in the platform's bucket.
pub fn receipt_key(slug: &str) -> String {
    format!("closing-receipts/{slug}.json")
}
