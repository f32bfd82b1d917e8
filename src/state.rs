//! The shared application state handed to every handler and job.

use std::{ops::Deref, sync::Arc};

use sqlx::PgPool;

use crate::{config::Config, storage::Storage};

/// Everything a request or job needs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState(pub Arc<App>);

/// The contents of [`AppState`].
#[derive(Debug)]
pub struct App {
    /// The one pool, shared with the apalis job backend.
    pub pool: PgPool,
    /// Object storage (the embedded endpoint or an external one).
    pub storage: Storage,
    /// The process configuration.
    pub config: Config,
}

impl Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}
