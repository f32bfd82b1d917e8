//! Sign-in rate limits, per account and per client address, kept in PostgreSQL so
//! that every web process shares them.

use sqlx::PgPool;

/// The window failures are counted in.
pub const WINDOW_MINUTES: i64 = 15;
/// Failed attempts allowed per account in the window.
pub const MAX_PER_ACCOUNT: i64 = 5;
/// Failed attempts allowed per address in the window.
pub const MAX_PER_IP: i64 = 20;

/// `Some(message)` when a sign-in for `account` from `ip` must be refused now. The
/// current attempt is already recorded (see [`record_attempt`]), so a count above the
/// allowance refuses.
pub async fn check(pool: &PgPool, account: &str, ip: &str) -> sqlx::Result<Option<String>> {
    let (by_account, by_ip): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where account = $1), count(*) filter (where ip = $2)
         from login_failures
         where attempted_at > now() - make_interval(mins => $3) and (account = $1 or ip = $2)",
    )
    .bind(account)
    .bind(ip)
    .bind(WINDOW_MINUTES as i32)
    .fetch_one(pool)
    .await?;
    Ok(if by_account > MAX_PER_ACCOUNT {
        Some(format!("Too many failed sign-ins for this account. Try again in {WINDOW_MINUTES} minutes."))
    } else if by_ip > MAX_PER_IP {
        Some(format!("Too many failed sign-ins from your address. Try again in {WINDOW_MINUTES} minutes."))
    } else {
        None
    })
}

/// Records an attempt as failed until it succeeds (and forgets ones older than the
/// window). Refused attempts count too, so hammering a locked account keeps it locked.
pub async fn record_attempt(pool: &PgPool, account: &str, ip: &str) -> sqlx::Result<()> {
    sqlx::query("insert into login_failures (account, ip) values ($1, $2)")
        .bind(account)
        .bind(ip)
        .execute(pool)
        .await?;
    sqlx::query("delete from login_failures where attempted_at < now() - make_interval(mins => $1)")
        .bind(WINDOW_MINUTES as i32)
        .execute(pool)
        .await?;
    Ok(())
}

/// A successful sign-in clears the account's failures.
pub async fn clear(pool: &PgPool, account: &str) -> sqlx::Result<()> {
    sqlx::query("delete from login_failures where account = $1").bind(account).execute(pool).await?;
    Ok(())
}
