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

/// Runs a job's body on a task of its own and waits for it. The worker's task is
/// then woken only when the body ends, not by each of its I/O events: apalis'
/// Postgres backend asks for more jobs (`apalis.get_jobs`) each time the worker's
/// task is polled, so a body polled inside it drove hundreds of fetches a second,
/// which took CPU from the export's own database backend. Dropping the returned
/// future aborts the body, as dropping the body itself would.
pub async fn on_own_task<F>(body: F) -> anyhow::Result<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let handle = tokio::spawn(body);
    let _abort = AbortOnDrop(handle.abort_handle());
    match handle.await {
        Ok(out) => Ok(out),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(anyhow::anyhow!("the job's task was cancelled: {e}")),
    }
}

/// Runs the workers of every queue until `stop` is cancelled, then lets running
/// jobs finish for up to 30 s. Each queue's worker is supervised on its own: when
/// it stops (its backend lost the database, most often), it is started again after
/// a pause that doubles up to 30 s, so an outage neither spins nor ends the workers.
pub async fn run(state: AppState, stop: CancellationToken) -> anyhow::Result<()> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    let process = format!("{host}-{}", Ulid::generate());
    let concurrency = state.config.worker_concurrency;
    // One queue's worker, under a monitor of its own, as a restartable future.
    macro_rules! worker {
        ($queue:expr, $storage:path, $handler:path, $concurrency:expr) => {{
            let (state, stop, process) = (state.clone(), stop.clone(), process.clone());
            supervise($queue, stop.clone(), move |generation| {
                let (state, stop, process) = (state.clone(), stop.clone(), process.clone());
                async move {
                    Monitor::new()
                        .register(move |restarts| {
                            WorkerBuilder::new(format!("{}-{process}-{generation}-{restarts}", $queue))
                                .backend($storage(&state))
                                .data(state.clone())
                                .concurrency($concurrency)
                                .build($handler)
                        })
                        .shutdown_timeout(Duration::from_secs(30))
                        .run_with_signal(async move {
                            stop.cancelled().await;
                            Ok(())
                        })
                        .await
                }
            })
        }};
    }
    tokio::join!(
        worker!(exports::job::QUEUE, exports::job::storage, exports::job::run, concurrency),
        worker!(platform::scheduler::QUEUE, platform::scheduler::storage, platform::scheduler::run, 1),
        worker!(platform::pruner::QUEUE, platform::pruner::storage, platform::pruner::run, 1),
        worker!(privacy::QUEUE, privacy::storage, privacy::run, 1),
    );
    Ok(())
}

/// Runs `start(generation)` again whenever it ends before `stop`, pausing 0.5 s, then
/// twice as long each time up to 30 s (back to 0.5 s after a minute of running).
async fn supervise<F, Fut, E>(queue: &'static str, stop: CancellationToken, start: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    const FIRST: Duration = Duration::from_millis(500);
    let mut pause = FIRST;
    for generation in 0.. {
        let started = std::time::Instant::now();
        let result = start(generation).await;
        if stop.is_cancelled() {
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            pause = FIRST;
        }
        match result {
            Err(e) => {
                tracing::error!(queue, error = %e, retry_in = ?pause, "worker stopped; starting it again after a pause")
            }
            Ok(()) => tracing::warn!(queue, retry_in = ?pause, "worker ended; starting it again after a pause"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}
