//! Database access: the connection pool, migrations, and the private zero-config cluster.

pub mod cluster;
pub mod listen;
pub mod notified_cache;

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
pub async fn retry_write<T, E, F, Fut>(what: &str, mut write: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
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

/// Runs our migrations (the job queue's own tables are set up by `crate::jobs::setup`).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("running migrations")?;
    Ok(())
}

/// Whether `e` violated the constraint (or unique index) named `name`: the way a
/// write's named constraint becomes a user-facing answer, such as a conflict.
/// Ends a keyset page read with `limit + 1` rows: cuts it to `limit` and returns
/// the last kept row's id (the next page's `before`) when the extra row showed that
/// older ones remain.
pub fn keyset_next<T>(rows: &mut Vec<T>, limit: i64, id: impl Fn(&T) -> &str) -> Option<String> {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit.max(0) as usize);
    more.then(|| rows.last().map(|r| id(r).to_string())).flatten()
}

/// Whether an error is one a retry can clear: a lost connection or pool, a
/// deadlock or serialization failure (class 40), a lock not available, a
/// cancelled statement. Anything else (a constraint, a bug) would fail again.
pub fn is_transient(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Database(db)) => {
            db.code().is_some_and(|c| c.starts_with("40") || c == "55P03" || c == "57014")
        }
        Some(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed) => {
            true
        }
        _ => false,
    }
}

/// Ends a savepoint opened for work that must not undo its caller's transaction
/// (notifications of a run's end): commits it when `result` is Ok; when the error
/// is one a retry can clear ([`is_transient`]), returns it, so the caller's whole
/// transaction is retried; any other error is logged as `what` and the savepoint
/// rolled back, and the caller goes on without that work.
pub async fn settle_savepoint(
    savepoint: sqlx::Transaction<'_, sqlx::Postgres>,
    result: anyhow::Result<()>,
    what: &str,
) -> anyhow::Result<()> {
    match result {
        Ok(()) => Ok(savepoint.commit().await?),
        Err(e) if is_transient(&e) => Err(e),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "{what}: left out");
            Ok(savepoint.rollback().await?)
        }
    }
}

pub fn is_violation_of(e: &sqlx::Error, name: &str) -> bool {
    e.as_database_error().and_then(|d| d.constraint()) == Some(name)
}

/// Declares a status enum stored as lowercase text: `as_str`, `parse`, `Display`,
/// serde as the same words, comparison with `&str`, and the sqlx mapping to a text
/// column (an unknown word in the column is a decode error, not a silent default).
#[macro_export]
macro_rules! text_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident => $text:literal ),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name { $( $(#[$vmeta])* #[serde(rename = $text)] $variant ),+ }

        impl $name {
            /// The stored word.
            pub fn as_str(self) -> &'static str {
                match self { $( $name::$variant => $text ),+ }
            }

            /// The value a stored word names.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $( $text => Some($name::$variant), )+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let s = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                $name::parse(s).ok_or_else(|| format!("unknown {} {s:?}", stringify!($name)).into())
            }
        }

        impl sqlx::Encode<'_, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode_by_ref(&self.as_str(), buf)
            }
        }
    };
}
