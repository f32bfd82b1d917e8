//! Sign-in rate limits, kept in PostgreSQL so that every web process shares them.
//!
//! The policy (README, "Sign-in"): nobody can lock an account they do not hold.
//! - Per address (an IPv4 address or an IPv6 /64, see [`super::client_ip`]): more
//!   than [`MAX_PER_ADDRESS`] failures in the window and the address is refused.
//! - Per account *and* address: more than [`MAX_PER_ACCOUNT_AND_ADDRESS`] failures
//!   for one account from one address and that pair is refused.
//! - Per account, from all addresses: no refusal, but once the account has more
//!   than [`ACCOUNT_DELAY_AFTER`] failures in the window every attempt at it waits a
//!   delay that doubles with each further failure, up to [`ACCOUNT_DELAY_MAX`]. The
//!   right password from a clean address still gets in while an attack runs.
//! - A refused attempt is not kept: it counts against nothing, so an address over its
//!   limit cannot push an account's count (or delay) up.

use std::time::Duration;

use sqlx::PgPool;

/// The window failures are counted in, and how long a failure row is kept.
pub const WINDOW_MINUTES: i64 = 15;
/// Failed attempts allowed per address in the window.
pub const MAX_PER_ADDRESS: i64 = 20;
/// Failed attempts allowed per account from one address in the window.
pub const MAX_PER_ACCOUNT_AND_ADDRESS: i64 = 5;
/// Failures of an account (from any address) before its attempts are slowed down.
pub const ACCOUNT_DELAY_AFTER: i64 = 5;
/// The first delay; it doubles with each further failure.
pub const ACCOUNT_DELAY_FIRST: Duration = Duration::from_millis(250);
/// The longest delay.
pub const ACCOUNT_DELAY_MAX: Duration = Duration::from_secs(2);

/// What to do with a sign-in attempt.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Refuse it (429) with this message. Nothing was recorded.
    Refuse(String),
    /// Check the password after waiting `delay`. The attempt (row `attempt`) is
    /// recorded as a failure until [`succeeded`] or [`withdraw`] says otherwise.
    Proceed { delay: Duration, attempt: i64 },
}

/// Decides on an attempt at `account` from the address keyed `address`, recording
/// it when it may go ahead. An address or pair already over its limit is refused
/// with one read and no write. Otherwise the attempt is recorded and the counts read
/// again, so a burst of parallel attempts cannot all slip under a limit; one refused
/// then has its row removed again: refused attempts count against nothing.
pub async fn admit(pool: &PgPool, account: &str, address: &str) -> sqlx::Result<Decision> {
    if let Some(message) = refusal(&counts(pool, account, address).await?, 1) {
        return Ok(Decision::Refuse(message));
    }
    let (id,): (i64,) = sqlx::query_as("insert into login_failures (account, ip) values ($1, $2) returning id")
        .bind(account)
        .bind(address)
        .fetch_one(pool)
        .await?;
    let now = counts(pool, account, address).await?;
    if let Some(message) = refusal(&now, 0) {
        sqlx::query("delete from login_failures where id = $1").bind(id).execute(pool).await?;
        return Ok(Decision::Refuse(message));
    }
    // Failures that aged out go as new ones come (housekeeping covers quiet times).
    delete_expired(pool).await?;
    // This attempt's own row is not one of the failures that slow it down.
    Ok(Decision::Proceed { delay: account_delay(now.by_account - 1), attempt: id })
}

/// Failures in the window.
struct Counts {
    by_address: i64,
    by_pair: i64,
    by_account: i64,
}

async fn counts(pool: &PgPool, account: &str, address: &str) -> sqlx::Result<Counts> {
    let (by_address, by_pair, by_account): (i64, i64, i64) = sqlx::query_as(
        "select count(*) filter (where ip = $2),
                count(*) filter (where ip = $2 and account = $1),
                count(*) filter (where account = $1)
         from login_failures
         where attempted_at > now() - make_interval(mins => $3) and (account = $1 or ip = $2)",
    )
    .bind(account)
    .bind(address)
    .bind(WINDOW_MINUTES as i32)
    .fetch_one(pool)
    .await?;
    Ok(Counts { by_address, by_pair, by_account })
}

/// Refuses when, with this attempt (`unrecorded` is 1 while it is not in the
/// counts yet), a count goes above its allowance.
fn refusal(c: &Counts, unrecorded: i64) -> Option<String> {
    if c.by_address + unrecorded > MAX_PER_ADDRESS {
        Some(format!("Too many failed sign-ins from your address. Try again in {WINDOW_MINUTES} minutes."))
    } else if c.by_pair + unrecorded > MAX_PER_ACCOUNT_AND_ADDRESS {
        Some(format!(
            "Too many failed sign-ins for this account from your address. Try again in {WINDOW_MINUTES} minutes."
        ))
    } else {
        None
    }
}

/// The wait before checking a password for an account with `failures` in the window.
pub fn account_delay(failures: i64) -> Duration {
    let over = failures - ACCOUNT_DELAY_AFTER;
    if over <= 0 {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(over - 1).unwrap_or(u32::MAX).min(16);
    ACCOUNT_DELAY_FIRST.saturating_mul(1 << doublings).min(ACCOUNT_DELAY_MAX)
}

/// A successful sign-in clears the account's failures from this address (its own
/// typos); failures from other addresses stay until they age out, so an attack that
/// is still running keeps its delay.
pub async fn succeeded(pool: &PgPool, account: &str, address: &str) -> sqlx::Result<()> {
    sqlx::query("delete from login_failures where account = $1 and ip = $2")
        .bind(account)
        .bind(address)
        .execute(pool)
        .await?;
    Ok(())
}

/// Forgets an attempt whose password was never checked (the server was too busy).
pub async fn withdraw(pool: &PgPool, attempt: i64) -> sqlx::Result<()> {
    sqlx::query("delete from login_failures where id = $1").bind(attempt).execute(pool).await?;
    Ok(())
}

/// Deletes failures older than the window: they count for nothing, and they hold an
/// email and an address (personal data kept no longer than needed). Housekeeping
/// calls this every few minutes; the index on `attempted_at` keeps it cheap.
pub async fn delete_expired(pool: &PgPool) -> sqlx::Result<u64> {
    let done = sqlx::query("delete from login_failures where attempted_at < now() - make_interval(mins => $1)")
        .bind(WINDOW_MINUTES as i32)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_delay_doubles_up_to_its_cap() {
        let ms = |n| account_delay(n).as_millis();
        assert_eq!(
            [ms(0), ms(5), ms(6), ms(7), ms(8), ms(9), ms(10), ms(1000)],
            [0, 0, 250, 500, 1000, 2000, 2000, 2000]
        );
    }
}
