//! Sign-in rate limits, kept in PostgreSQL so that every web process shares them.
//!
//! The policy (docs/operators.md, "Sign-in and its limits"):
//! - Per network: more than [`MAX_PER_ADDRESS`] failures in the window from an
//!   IPv4 address or an IPv6 /64 (see [`super::client_ip`]), or 4 and 8 times as
//!   many from the IPv6 /56 and /48 that hold it ([`super::client_ip::WIDER_V6`]),
//!   and the network is refused.
//! - Per account *and* address: more than [`MAX_PER_ACCOUNT_AND_ADDRESS`] failures
//!   for one account from one address and that pair is refused.
//! - Per account, from all addresses: a rate. At most [`ACCOUNT_PER_MINUTE`]
//!   attempts at one account go ahead in any minute, from all addresses together;
//!   more are refused with the seconds until the oldest of them is a minute old. No
//!   request waits: twenty parallel guesses from twenty addresses get what twenty
//!   serial ones get. An address that signed in to the account in the last
//!   [`KNOWN_DAYS`] days is not held back by this rate (the limits above still
//!   hold it), so an attack from elsewhere cannot keep the account's owner out.
//! - A refused attempt is not kept: it counts against nothing, so an address over its
//!   limit cannot push an account's count up.

use sqlx::PgPool;

use super::client_ip::{LimitKeys, WIDER_V6};

/// The window failures are counted in, and how long a failure row is kept.
pub const WINDOW_MINUTES: i64 = 15;
/// Failed attempts allowed per address (an IPv4 address or an IPv6 /64) in the
/// window; an IPv6 /56 and /48 are allowed the multiples of [`WIDER_V6`].
pub const MAX_PER_ADDRESS: i64 = 20;
/// Failed attempts allowed per account from one address in the window.
pub const MAX_PER_ACCOUNT_AND_ADDRESS: i64 = 5;
/// Attempts at one account, from all addresses together, that go ahead in any
/// minute (failed ones, and those still being checked).
pub const ACCOUNT_PER_MINUTE: i64 = 10;
/// How long an address that signed in to an account stays known to it.
pub const KNOWN_DAYS: i32 = 30;

/// What to do with a sign-in attempt.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Refuse it (429) with this message and `Retry-After`. Nothing was recorded.
    Refuse { message: String, retry_after_secs: u64 },
    /// Check the password now. The attempt (row `attempt`) is recorded as a failure
    /// until [`succeeded`] or [`withdraw`] says otherwise.
    Proceed { attempt: i64 },
}

/// Decides on an attempt at `account` from the networks of `keys`, recording it
/// when it may go ahead. A network, pair or account already over its limit is
/// refused with one read and no write. Otherwise the attempt is recorded and the
/// counts read again, so a burst of parallel attempts cannot all slip under a limit;
/// one refused then has its row removed again: refused attempts count against
/// nothing.
pub async fn admit(pool: &PgPool, account: &str, keys: &LimitKeys) -> sqlx::Result<Decision> {
    if let Some(refused) = refusal(&counts(pool, account, keys).await?, 1) {
        return Ok(refused);
    }
    let (id,): (i64,) =
        sqlx::query_as("insert into login_failures (account, ip, net56, net48) values ($1, $2, $3, $4) returning id")
            .bind(account)
            .bind(&keys.address)
            .bind(&keys.net56)
            .bind(&keys.net48)
            .fetch_one(pool)
            .await?;
    if let Some(refused) = refusal(&counts(pool, account, keys).await?, 0) {
        sqlx::query("delete from login_failures where id = $1").bind(id).execute(pool).await?;
        return Ok(refused);
    }
    // Failures that aged out go as new ones come (housekeeping covers quiet times).
    delete_expired(pool).await?;
    Ok(Decision::Proceed { attempt: id })
}

/// Failures in the window, and the account's attempts in the last minute.
struct Counts {
    by_address: i64,
    by_net56: i64,
    by_net48: i64,
    by_pair: i64,
    by_account_last_minute: i64,
    /// Seconds until the oldest of the account's attempts in the last minute is a
    /// minute old (at least 1).
    account_frees_in: i64,
    /// The address signed in to the account within [`KNOWN_DAYS`]: the account's
    /// rate does not hold it back.
    known: bool,
}

async fn counts(pool: &PgPool, account: &str, keys: &LimitKeys) -> sqlx::Result<Counts> {
    let row: (i64, i64, i64, i64, i64, i64, bool) = sqlx::query_as(
        "select count(*) filter (where ip = $2),
                count(*) filter (where net56 = $3),
                count(*) filter (where net48 = $4),
                count(*) filter (where ip = $2 and account = $1),
                count(*) filter (where account = $1 and attempted_at > now() - interval '1 minute'),
                greatest(1, coalesce(ceil(extract(epoch from
                    min(attempted_at) filter (where account = $1 and attempted_at > now() - interval '1 minute')
                    + interval '1 minute' - now())), 1))::int8,
                (select exists (select 1 from login_known_addresses k
                                where k.account = $1 and k.address = $2
                                  and k.last_success_at > now() - make_interval(days => $6)))
         from login_failures
         where attempted_at > now() - make_interval(mins => $5)
           and (account = $1 or ip = $2 or net56 = $3 or net48 = $4)",
    )
    .bind(account)
    .bind(&keys.address)
    .bind(&keys.net56)
    .bind(&keys.net48)
    .bind(WINDOW_MINUTES as i32)
    .bind(KNOWN_DAYS)
    .fetch_one(pool)
    .await?;
    let (by_address, by_net56, by_net48, by_pair, by_account_last_minute, account_frees_in, known) = row;
    Ok(Counts { by_address, by_net56, by_net48, by_pair, by_account_last_minute, account_frees_in, known })
}

/// The allowance of a network of `bits` (64 for an IPv4 address or IPv6 /64).
fn network_allowance(bits: u8) -> i64 {
    let times = WIDER_V6.iter().find(|w| w.0 == bits).map_or(1, |w| w.1);
    MAX_PER_ADDRESS * times as i64
}

/// Refuses when, with this attempt (`unrecorded` is 1 while it is not in the
/// counts yet), a count goes above its allowance.
fn refusal(c: &Counts, unrecorded: i64) -> Option<Decision> {
    let window = || (WINDOW_MINUTES * 60) as u64;
    if c.by_address + unrecorded > network_allowance(64) {
        Some(Decision::Refuse {
            message: format!("Too many failed sign-ins from your address. Try again in {WINDOW_MINUTES} minutes."),
            retry_after_secs: window(),
        })
    } else if c.by_net56 + unrecorded > network_allowance(56) || c.by_net48 + unrecorded > network_allowance(48) {
        Some(Decision::Refuse {
            message: format!("Too many failed sign-ins from your network. Try again in {WINDOW_MINUTES} minutes."),
            retry_after_secs: window(),
        })
    } else if c.by_pair + unrecorded > MAX_PER_ACCOUNT_AND_ADDRESS {
        Some(Decision::Refuse {
            message: format!(
                "Too many failed sign-ins for this account from your address. Try again in {WINDOW_MINUTES} minutes."
            ),
            retry_after_secs: window(),
        })
    } else if !c.known && c.by_account_last_minute + unrecorded > ACCOUNT_PER_MINUTE {
        let secs = c.account_frees_in.clamp(1, 60) as u64;
        Some(Decision::Refuse {
            message: format!("Too many sign-in attempts at this account just now. Try again in {secs} seconds."),
            retry_after_secs: secs,
        })
    } else {
        None
    }
}

/// A successful sign-in clears the account's failures from this address (its own
/// typos); failures from other addresses stay until they age out, so an attack that
/// is still running keeps counting against the account's rate.
/// The address becomes known to the account (see [`KNOWN_DAYS`]).
pub async fn succeeded(pool: &PgPool, account: &str, address: &str) -> sqlx::Result<()> {
    sqlx::query("delete from login_failures where account = $1 and ip = $2")
        .bind(account)
        .bind(address)
        .execute(pool)
        .await?;
    sqlx::query(
        "insert into login_known_addresses (account, address) values ($1, $2)
         on conflict (account, address) do update set last_success_at = now()",
    )
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
    sqlx::query("delete from login_known_addresses where last_success_at < now() - make_interval(days => $1)")
        .bind(KNOWN_DAYS)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}
