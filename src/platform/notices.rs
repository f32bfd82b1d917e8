//! Telling platform admins when an org's backups go wrong: each minute (see
//! `startup::health_loop`) the orgs that are `failing`, `stuck` or `overdue` are
//! compared with what was last noticed of each; a change into one of those states
//! is recorded once (`health_notices`), and the unmailed notices go out together,
//! at most one mail per 15 minutes, to every platform admin who has not switched
//! the platform's backup mails off (the "schedule" kind on `/me/notifications`).

use chrono::{DateTime, Utc};

use crate::health::{self, Basis, OrgHealth};
use crate::state::AppState;

/// The least time between two health mails.
pub const BATCH: chrono::Duration = chrono::Duration::minutes(15);

/// The advisory lock that lets one process at a time compare and record.
const LOCK: (i32, i32) = (1146114129, 31);

/// Why `org` is in its state, in a line.
fn reason(org: &OrgHealth) -> String {
    match org.state.as_str() {
        "stuck" => format!(
            "export {} is {} but cannot end by itself; housekeeping fails it",
            org.run_id.as_deref().unwrap_or("?"),
            org.run_status.as_deref().unwrap_or("active")
        ),
        "failing" => match (&org.last_failure_reason, &org.bucket_error) {
            (_, Some(bucket)) if org.bucket_state == "failing" => format!("its bucket failed its check: {bucket}"),
            (Some(r), _) => format!("{} failed export(s) in a row; the newest: {r}", org.consecutive_failures),
            _ => "its newest export failed".to_string(),
        },
        _ => match org.last_success_at {
            Some(at) => format!("its newest completed export is from {}", at.format("%Y-%m-%d %H:%M UTC")),
            None => "it has no completed export although a scheduled slot has passed".to_string(),
        },
    }
}

/// Records a notice for each org that came into `failing`, `stuck` or `overdue`
/// since it was last noticed, and forgets the state of orgs that left them (so a
/// later change is noticed again). Returns the notices recorded.
pub async fn record(state: &AppState) -> anyhow::Result<usize> {
    let mut tx = state.pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock($1, $2)").bind(LOCK.0).bind(LOCK.1).execute(&mut *tx).await?;
    // Read under the lock (on another connection, which sees what an earlier holder
    // committed), so two processes never compare against a stale list.
    let basis = Basis::now(state).await?;
    let alarming = health::alarming(&state.pool, basis).await?;
    let ids: Vec<i64> = alarming.iter().map(|o| o.id).collect();
    sqlx::query(
        "update org_backup_status s set notified_state = null
         where s.notified_state is not null
           and not exists (select 1 from unnest($1::bigint[]) a(id) where a.id = s.org_id)",
    )
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    let known: Vec<(i64, Option<String>)> =
        sqlx::query_as("select org_id, notified_state from org_backup_status where org_id = any($1)")
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
    let mut recorded = 0;
    for org in &alarming {
        let before = known.iter().find(|(id, _)| *id == org.id).and_then(|(_, s)| s.as_deref());
        if before == Some(org.state.as_str()) {
            continue;
        }
        sqlx::query("insert into health_notices (org_id, state, reason) values ($1, $2, $3)")
            .bind(org.id)
            .bind(&org.state)
            .bind(reason(org))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "insert into org_backup_status as s (org_id, notified_state) values ($1, $2)
             on conflict (org_id) do update set notified_state = excluded.notified_state",
        )
        .bind(org.id)
        .bind(&org.state)
        .execute(&mut *tx)
        .await?;
        recorded += 1;
    }
    tx.commit().await?;
    Ok(recorded)
}

/// An unmailed notice: its id, the org's slug and name, the state, why, and when.
type Notice = (i64, String, String, String, Option<String>, DateTime<Utc>);

/// Mails the unmailed notices to every platform admin in one mail, unless a health
/// mail went out less than [`BATCH`] ago. Returns how many notices it carried.
pub async fn mail_batch(state: &AppState) -> anyhow::Result<usize> {
    let mut tx = state.pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock($1, $2)").bind(LOCK.0).bind(LOCK.1).execute(&mut *tx).await?;
    let (last,): (Option<DateTime<Utc>>,) =
        sqlx::query_as("select max(mailed_at) from health_notices").fetch_one(&mut *tx).await?;
    if last.is_some_and(|at| Utc::now() - at < BATCH) {
        return Ok(0);
    }
    let notices: Vec<Notice> = sqlx::query_as(
        "select n.id, o.slug, o.name, n.state, n.reason, n.noticed_at from health_notices n
         join organizations o on o.id = n.org_id
         where n.mailed_at is null order by n.noticed_at, n.id limit 1000",
    )
    .fetch_all(&mut *tx)
    .await?;
    if notices.is_empty() {
        return Ok(0);
    }
    let lines: Vec<String> = notices
        .iter()
        .map(|(_, slug, name, st, why, at)| {
            format!(
                "- {name} ({slug}) became {st} at {}: {}",
                at.format("%Y-%m-%d %H:%M UTC"),
                why.as_deref().unwrap_or("")
            )
        })
        .collect();
    let public_url = &state.config.public_url;
    let message = crate::mail::Message {
        kind: crate::mail::Kind::ScheduleFailures,
        subject: format!("Backups need attention: {} organization change(s)", notices.len()),
        text: format!(
            "These organizations' backups changed into a state that needs attention:\n\n{}\n\n\
             The organization list shows every org's state, worst first:\n{public_url}{}\n\n\
             You get this mail as a platform admin; switch \"platform backup problems\" off on your Email page.",
            lines.join("\n"),
            crate::routes::PLATFORM_ORGS,
        ),
    };
    for admin in crate::mail::platform_admins(&mut tx).await? {
        crate::mail::enqueue(&mut tx, admin, &message).await?;
    }
    let ids: Vec<i64> = notices.iter().map(|n| n.0).collect();
    sqlx::query("update health_notices set mailed_at = now() where id = any($1)").bind(&ids).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(notices.len())
}
