//! The background workers: every queue's worker under one apalis monitor, the job
//! tables' setup, and the helpers every queue shares (pushing a job inside a
//! transaction, the worker's backend).

use std::time::Duration;

use apalis::prelude::*;
use apalis_postgres::{Config, PgTask, PostgresStorage, Pubsub};
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

use crate::{exports, platform, privacy, state::AppState};

/// Runs apalis' own migrations (schema `apalis`).
pub async fn setup(pool: &PgPool) -> anyhow::Result<()> {
    PostgresStorage::<()>::setup(pool).await?;
    Ok(())
}

/// A queue's configuration: its name, and the heartbeat settings from the process
/// config (a job whose worker misses them is re-enqueued by a live worker).
pub fn queue_config(state: &AppState, queue: &str) -> Config {
    Config::default()
        .queue(queue)
        .batch_size(2)
        .heartbeat_interval(Duration::from_secs(state.config.heartbeat_secs))
        .missed_heartbeats(state.config.missed_heartbeats as usize)
}

/// A worker's backend: LISTEN/NOTIFY for new jobs, with polling as the fallback (a
/// NOTIFY can be missed, and jobs scheduled for later need the poll).
pub type Storage<T> = PollWith<PollWith<PostgresStorage<T>, StreamStrategy<Pubsub>>, IntervalStrategy>;

/// The backend for a worker on `queue`.
pub fn storage<T>(state: &AppState, queue: &str) -> Storage<T> {
    PostgresStorage::<T>::new(&state.pool)
        .with_config(queue_config(state, queue))
        .with_pubsub()
        .poll_with_interval(Duration::from_secs(2))
}

/// Pushes a job with a known id inside the caller's transaction: it becomes
/// visible to workers only when the transaction commits.
pub async fn push<T: Serialize>(
    conn: &mut sqlx::PgConnection,
    queue: &str,
    id: Ulid,
    args: &T,
    max_attempts: u32,
) -> anyhow::Result<()> {
    let task: PgTask = TaskBuilder::new(serde_json::to_vec(args)?)
        .task_id(TaskId::from_ulid(id))
        .max_attempts(max_attempts as usize)
        .build();
    apalis_postgres::queries::push_tasks(conn, queue, vec![task]).await?;
    Ok(())
}

/// Runs the workers of every queue until `stop` is cancelled, then lets running
/// jobs finish for up to 30 s.
pub async fn run(state: AppState, stop: CancellationToken) -> anyhow::Result<()> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    let process = format!("{host}-{}", Ulid::generate());
    let concurrency = state.config.worker_concurrency;
    let (s1, s2, s3, s4) = (state.clone(), state.clone(), state.clone(), state.clone());
    let (p1, p2, p3, p4) = (process.clone(), process.clone(), process.clone(), process);
    Monitor::new()
        .register(move |restarts| {
            WorkerBuilder::new(format!("{}-{p1}-{restarts}", exports::job::QUEUE))
                .backend(exports::job::storage(&s1))
                .data(s1.clone())
                .concurrency(concurrency)
                .build(exports::job::run)
        })
        .register(move |restarts| {
            WorkerBuilder::new(format!("{}-{p2}-{restarts}", platform::scheduler::QUEUE))
                .backend(platform::scheduler::storage(&s2))
                .data(s2.clone())
                .concurrency(1)
                .build(platform::scheduler::run)
        })
        .register(move |restarts| {
            WorkerBuilder::new(format!("{}-{p3}-{restarts}", platform::pruner::QUEUE))
                .backend(platform::pruner::storage(&s3))
                .data(s3.clone())
                .concurrency(1)
                .build(platform::pruner::run)
        })
        .register(move |restarts| {
            WorkerBuilder::new(format!("{}-{p4}-{restarts}", privacy::QUEUE))
                .backend(privacy::storage(&s4))
                .data(s4.clone())
                .concurrency(1)
                .build(privacy::run)
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
