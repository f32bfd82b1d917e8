//! The platform's stored settings, which features read and the platform settings
//! page edits: the backup configuration ([`backup`]), the retention counts, and the
//! schedule preset and timezone ([`schedule`]). Every change is audit-logged with
//! the values before and after.

pub mod backup;
pub mod schedule;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use sqlx::PgPool;

use schedule::Preset;

/// The three counts (0 turns a rule off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

/// The largest retention count (a year of days).
pub const MAX_RETENTION: u32 = 366;

/// The settings as stored (the constraints in the schema match the parsers here).
#[derive(Clone, Debug)]
pub struct Settings {
    pub retention: Policy,
    pub preset: Preset,
    pub timezone: Tz,
    /// Slots before this instant are not due (set when preset or timezone change).
    pub schedule_since: DateTime<Utc>,
}

type Row = (i32, i32, i32, String, String, DateTime<Utc>);

/// Loads the settings. A stored value the code does not know (edited by hand) falls
/// back to the safe choice: schedule disabled, UTC.
pub async fn load<'e, E: sqlx::PgExecutor<'e>>(db: E) -> sqlx::Result<Settings> {
    let (daily, weekly, monthly, preset, timezone, schedule_since): Row = sqlx::query_as(
        "select retention_daily, retention_weekly, retention_monthly, schedule_preset, timezone, schedule_since
         from platform_settings where id = 1",
    )
    .fetch_one(db)
    .await?;
    let count = |n: i32| u32::try_from(n).unwrap_or(0).min(MAX_RETENTION);
    Ok(Settings {
        retention: Policy { daily: count(daily), weekly: count(weekly), monthly: count(monthly) },
        preset: Preset::parse(&preset).unwrap_or_else(|| {
            tracing::warn!(preset, "unknown schedule preset in platform_settings; treating it as disabled");
            Preset::Disabled
        }),
        timezone: schedule::parse_timezone(&timezone).unwrap_or_else(|| {
            tracing::warn!(timezone, "unknown timezone in platform_settings; using UTC");
            chrono_tz::UTC
        }),
        schedule_since,
    })
}

/// Parses one retention count from a form: a whole number 0..=366.
pub fn parse_count(label: &str, raw: &str) -> Result<u32, String> {
    let raw = raw.trim();
    match raw.parse::<u32>() {
        Ok(n) if n <= MAX_RETENTION => Ok(n),
        _ => Err(format!("{label} must be a whole number from 0 to {MAX_RETENTION}; got {raw:?}.")),
    }
}

/// Locks the settings row for the transaction, so concurrent saves take turns and
/// each audits the true "before".
async fn lock(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>) -> sqlx::Result<()> {
    sqlx::query("select 1 from platform_settings where id = 1 for update").execute(&mut **tx).await?;
    Ok(())
}

/// Saves the retention counts. Returns whether anything changed.
pub async fn set_retention(pool: &PgPool, actor: i64, policy: Policy) -> anyhow::Result<bool> {
    let mut tx = pool.begin().await?;
    lock(&mut tx).await?;
    let before = load(&mut *tx).await?.retention;
    if before == policy {
        return Ok(false);
    }
    sqlx::query(
        "update platform_settings set retention_daily = $1, retention_weekly = $2, retention_monthly = $3,
         updated_at = now(), updated_by = $4 where id = 1",
    )
    .bind(policy.daily as i32)
    .bind(policy.weekly as i32)
    .bind(policy.monthly as i32)
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    let json = |p: Policy| serde_json::json!({ "daily": p.daily, "weekly": p.weekly, "monthly": p.monthly });
    let details = serde_json::json!({ "before": json(before), "after": json(policy) });
    crate::audit::write(&mut *tx, None, Some(actor), "retention.updated", "platform_settings", details).await?;
    tx.commit().await?;
    Ok(true)
}

/// Saves the schedule preset and timezone. A change moves `schedule_since` to now,
/// so the new schedule's first slot is its next one, not one from the past.
pub async fn set_schedule(pool: &PgPool, actor: i64, preset: Preset, timezone: Tz) -> anyhow::Result<bool> {
    let mut tx = pool.begin().await?;
    lock(&mut tx).await?;
    let before = load(&mut *tx).await?;
    if before.preset == preset && before.timezone == timezone {
        return Ok(false);
    }
    sqlx::query(
        "update platform_settings set schedule_preset = $1, timezone = $2, schedule_since = now(),
         updated_at = now(), updated_by = $3 where id = 1",
    )
    .bind(preset.key())
    .bind(timezone.name())
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    let details = serde_json::json!({
        "before": { "preset": before.preset.key(), "timezone": before.timezone.name() },
        "after": { "preset": preset.key(), "timezone": timezone.name() },
    });
    crate::audit::write(&mut *tx, None, Some(actor), "schedule.updated", "platform_settings", details).await?;
    tx.commit().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::parse_count;

    #[test]
    fn counts() {
        assert_eq!(parse_count("Daily", "0"), Ok(0));
        assert_eq!(parse_count("Daily", " 7 "), Ok(7));
        assert_eq!(parse_count("Daily", "366"), Ok(366));
        for bad in ["", "367", "-1", "1.5", "seven", "99999999999", "1e2"] {
            assert!(parse_count("Daily", bad).is_err(), "{bad}");
        }
    }
}
