//! The queue registry: every queue there is, read by worker start-up and by the job
//! board alike. It sits above the features, so it is also where a feature's job
//! gets the calls up into the layers above it (the pruner's run after a scheduled
//! export).

use apalis_board_api::framework::{ApiBuilder, RegisterRoute};
use apalis_postgres::PostgresStorage;
use axum::Router;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::{
    exports::{
        job::{ExportJob, Hooks},
        runs::{Run, Trigger},
    },
    imports::job::ImportJob,
    jobs::{self, Job},
    mail::MailJob,
    platform::{buckets::BucketCheckJob, pruner::PruneJob, scheduler::SlotJob},
    privacy::PrivacyJob,
    state::AppState,
    tables::job::TablesJob,
    webhooks::delivery::DeliveryJob,
};

/// A queue: its name, how its worker starts, and how the board lists it.
pub struct Queue {
    pub name: &'static str,
    /// Runs the queue's worker until the token is cancelled.
    pub start: Box<dyn Fn(AppState, String, CancellationToken) -> BoxFuture<'static, ()> + Send + Sync>,
    /// Adds the queue to the job board's API.
    pub board: fn(ApiBuilder<Router>, &AppState) -> ApiBuilder<Router>,
}

fn queue<J: Job>(context: J::Context) -> Queue {
    Queue {
        name: J::QUEUE,
        start: Box::new(move |state, process, stop| {
            Box::pin(jobs::run_queue::<J>(state, context.clone(), process, stop))
        }),
        board: board_register::<J>,
    }
}

/// Lists `J`'s queue on the job board.
fn board_register<J: Job>(api: ApiBuilder<Router>, state: &AppState) -> ApiBuilder<Router> {
    api.register(J::QUEUE, PostgresStorage::<J>::new(&state.pool).with_config(jobs::queue_config(state, J::QUEUE)))
}

/// Every queue.
pub fn queues() -> Vec<Queue> {
    vec![
        queue::<ExportJob>(export_hooks()),
        queue::<SlotJob>(()),
        queue::<PruneJob>(()),
        queue::<PrivacyJob>(()),
        queue::<ImportJob>(()),
        queue::<DeliveryJob>(()),
        queue::<MailJob>(()),
        queue::<BucketCheckJob>(()),
        queue::<TablesJob>(()),
    ]
}

/// What follows a finished export: retention applies after each scheduled export
/// (and hourly).
fn export_hooks() -> Hooks {
    fn prune_after_scheduled(state: AppState, run: Run) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if run.trigger != Trigger::Scheduled {
                return;
            }
            if let Err(e) = crate::platform::pruner::enqueue(&state.pool, run.org_id).await {
                tracing::warn!(error = format!("{e:#}"), "could not queue the prune after a scheduled export");
            }
        })
    }
    Hooks { completed: vec![std::sync::Arc::new(prune_after_scheduled)] }
}

/// Runs the workers of the queues named in `only` (every queue when `None`) until `stop` is
/// cancelled; each is supervised on its own (see [`jobs::run_queue`]).
pub async fn run(state: AppState, stop: CancellationToken, only: Option<&[&str]>) -> anyhow::Result<()> {
    let process = jobs::process_name();
    let all = queues();
    let chosen = all.iter().filter(|q| only.is_none_or(|names| names.contains(&q.name)));
    futures::future::join_all(chosen.map(|q| (q.start)(state.clone(), process.clone(), stop.clone()))).await;
    Ok(())
}
