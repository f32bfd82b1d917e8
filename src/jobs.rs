//! The background workers: every queue's worker under one apalis monitor, and the
//! job tables' setup.

use std::time::Duration;

use apalis::prelude::*;
use apalis_postgres::PostgresStorage;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{exports, state::AppState};

/// Runs apalis' own migrations (schema `apalis`).
pub async fn setup(pool: &PgPool) -> anyhow::Result<()> {
    PostgresStorage::<()>::setup(pool).await?;
    Ok(())
}

/// Runs the workers until `stop` is cancelled, then lets running jobs finish for up
/// to 30 s.
pub async fn run(state: AppState, stop: CancellationToken) -> anyhow::Result<()> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    let prefix = format!("{}-{}-{}", exports::job::QUEUE, host, ulid::Ulid::generate());
    let concurrency = state.config.worker_concurrency;
    let export_state = state.clone();
    Monitor::new()
        .register(move |restarts| {
            WorkerBuilder::new(format!("{prefix}-{restarts}"))
                .backend(exports::job::storage(&export_state))
                .data(export_state.clone())
                .concurrency(concurrency)
                .build(exports::job::run)
        })
        .should_restart(|ctx, err| {
            tracing::error!(worker = ctx.name(), %err, "worker stopped with an error; restarting");
            ctx.restarts() < 100
        })
        .shutdown_timeout(Duration::from_secs(30))
        .run_with_signal(async move {
            stop.cancelled().await;
            Ok(())
        })
        .await?;
    Ok(())
}
