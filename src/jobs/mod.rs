//! Job plumbing, below every feature: the [`Job`] trait, the job tables' setup,
//! pushing a job inside a transaction, a queue's backend, a supervised worker, and
//! running a job's body on a task of its own. Which queues exist is the registry's
//! business (`crate::workers`), not this module's.

pub mod wake;

use std::time::Duration;

use apalis::prelude::*;
use apalis_postgres::{Config, PgTask, PostgresStorage};
use serde::{Serialize, de::DeserializeOwned};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

use crate::state::AppState;

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

/// A worker's backend: LISTEN/NOTIFY for new jobs ([`wake::inserts`]), with polling
/// as the fallback (a NOTIFY can be missed, and jobs scheduled for later need the poll).
pub type Backend<T> =
    PollWith<PollWith<PostgresStorage<T>, StreamStrategy<futures::stream::BoxStream<'static, ()>>>, IntervalStrategy>;

/// The backend for a worker on `queue`.
pub fn backend<T>(state: &AppState, queue: &str) -> Backend<T> {
    PostgresStorage::<T>::new(&state.pool)
        .with_config(queue_config(state, queue))
        .poll_with_stream(wake::inserts(state.pool.clone(), queue.to_string()))
        .poll_with_interval(Duration::from_secs(2))
}

/// Pushes a job with a known id inside the caller's transaction: it becomes
/// visible to workers only when the transaction commits.
pub async fn push<J: Job>(conn: &mut sqlx::PgConnection, id: Ulid, job: &J, max_attempts: u32) -> anyhow::Result<()> {
    push_after(conn, id, job, max_attempts, Duration::ZERO).await
}

/// [`push`], for a job that no worker takes before `delay` has passed (a retry with
/// backoff that the job schedules itself).
pub async fn push_after<J: Job>(
    conn: &mut sqlx::PgConnection,
    id: Ulid,
    job: &J,
    max_attempts: u32,
    delay: Duration,
) -> anyhow::Result<()> {
    let mut task =
        TaskBuilder::new(serde_json::to_vec(job)?).task_id(TaskId::from_ulid(id)).max_attempts(max_attempts as usize);
    if !delay.is_zero() {
        // apalis keeps the time to run at in whole seconds, rounded down: a second
        // more makes the wait at least `delay` (and at most a second longer).
        task = task.run_after(delay + Duration::from_secs(1));
    }
    let task: PgTask = task.build();
    apalis_postgres::queries::push_tasks(conn, J::QUEUE, vec![task]).await?;
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
    let handle = tokio::spawn(tracing::Instrument::in_current_span(body));
    let _abort = AbortOnDrop(handle.abort_handle());
    match handle.await {
        Ok(out) => Ok(out),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(anyhow::anyhow!("the job's task was cancelled: {e}")),
    }
}

/// A kind of background work: its queue, its arguments (this type, as JSON) and
/// its handler. The queue registry (`crate::workers`) starts a worker for each, and
/// the job board lists them, from the one list there.
pub trait Job: Serialize + DeserializeOwned + Clone + Send + Sync + Unpin + 'static {
    /// The queue name (the job rows' `job_type`).
    const QUEUE: &'static str;
    /// What the registry hands the handler besides the state: calls up into the
    /// layers above the job's own (e.g. what follows a finished export). `()` for none.
    type Context: Clone + Send + Sync + 'static;
    /// Jobs of this queue that one process runs at once.
    fn concurrency(_config: &crate::config::Config) -> usize {
        1
    }
    /// Carries the job out; `attempt` counts from 1. An error is retried (up to the
    /// job's max attempts) unless it is an [`AbortError`].
    fn run(
        self,
        state: AppState,
        context: Self::Context,
        attempt: usize,
    ) -> impl std::future::Future<Output = Result<(), BoxDynError>> + Send;
}

/// What a worker hands each job of `J`'s queue.
#[derive(Clone)]
pub struct Runner<J: Job> {
    pub state: AppState,
    pub context: J::Context,
}

/// The apalis handler of `J`'s queue.
async fn handle<J: Job>(job: J, runner: Data<Runner<J>>, attempt: Attempt) -> Result<(), BoxDynError> {
    let Runner { state, context } = (*runner).clone();
    job.run(state, context, attempt.current()).await
}

/// Runs `J`'s worker until `stop` is cancelled, then lets running jobs finish for up
/// to 30 s. It is supervised: when it stops (its backend lost the database, most
/// often), it is started again after a pause that doubles up to 30 s, so an outage
/// neither spins nor ends the workers.
pub async fn run_queue<J: Job>(state: AppState, context: J::Context, process: String, stop: CancellationToken) {
    let concurrency = J::concurrency(&state.config);
    supervise(J::QUEUE, stop.clone(), move |generation| {
        let (state, context, stop, process) = (state.clone(), context.clone(), stop.clone(), process.clone());
        async move {
            Monitor::new()
                .register(move |restarts| {
                    WorkerBuilder::new(format!("{}-{process}-{generation}-{restarts}", J::QUEUE))
                        .backend(backend::<J>(&state, J::QUEUE))
                        .data(Runner::<J> { state: state.clone(), context: context.clone() })
                        .concurrency(concurrency)
                        .build(handle::<J>)
                })
                .shutdown_timeout(Duration::from_secs(30))
                .run_with_signal(async move {
                    stop.cancelled().await;
                    Ok(())
                })
                .await
        }
    })
    .await
}

/// A name for this process's workers: the host and a fresh ULID.
pub fn process_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    format!("{host}-{}", Ulid::generate())
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
