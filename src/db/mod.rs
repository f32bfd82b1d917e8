//! Database access: the connection pool, migrations, and the private zero-config cluster.

pub mod cluster;

use std::time::Duration;

use anyhow::Context;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

pub use cluster::PrivateCluster;

/// How long a pooled connection may sit idle before it is checked (pinged) again
/// when it is handed out (see [`connect`]).
pub const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Embedded migrations from `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Runs a database write, retrying with backoff for about half a minute: for marks
/// that must not be lost to a hiccup (a run or request left `running` would block
/// its owner). `what` names it in the log.
pub async fn persist<T, F, Fut>(what: &str, mut write: F) -> sqlx::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = sqlx::Result<T>>,
{
    let mut wait = Duration::from_millis(200);
    for _ in 0..8 {
        match write().await {
            Ok(v) => return Ok(v),
            Err(e) => tracing::warn!(what, error = %e, "database write failed; retrying"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
    write().await
}

/// Opens a pool. Errors are one line naming the fix.
pub async fn connect(options: PgConnectOptions, max_connections: u32) -> anyhow::Result<PgPool> {
    use sqlx::ConnectOptions;
    // sqlx would log whole statements (the seed script, COPY queries) as "slow";
    // our own spans time the work that matters.
    let options = options.disable_statement_logging();
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        // sqlx pings every idle connection it hands out, one extra round trip per
        // query: a polled row (the session, then the user with the run) made four
        // round trips instead of two. A connection idle for PING_IF_IDLE_FOR or
        // longer is still pinged, and dropped for a fresh one if the ping fails, so
        // a server restart or a dropped connection costs no request once the pool
        // has been quiet that long. One in constant use has just answered and is
        // not pinged: if it died within that second, the query that takes it next
        // fails, as one would if it died during that query.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await
        .context("cannot connect to PostgreSQL: check DATABASE_URL (or unset it to use the private cluster) and that the server is running")
}

/// Parses a `DATABASE_URL`.
pub fn parse_url(url: &str) -> anyhow::Result<PgConnectOptions> {
    url.parse::<PgConnectOptions>()
        .with_context(|| format!("DATABASE_URL is not a valid PostgreSQL URL: {}", crate::config::redact_url(url)))
}

/// Runs our migrations and apalis' own (schema `apalis`).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("running migrations")?;
    crate::jobs::setup(pool).await.context("setting up the job queue tables")?;
    Ok(())
}
