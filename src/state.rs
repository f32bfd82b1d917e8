//! The shared application state handed to every handler and job.

use std::{
    ops::Deref,
    sync::{Arc, OnceLock},
};

use sqlx::PgPool;

use crate::{config::Config, db::notified_cache::NotifiedCache, storage::Storage};

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
    /// The job board's port once its listener is bound (BOARD_BIND may say 0).
    pub board_port: OnceLock<u16>,
    /// Verifications of stored exports at once in this process: one per core, since
    /// each takes a core while it decompresses and parses. The permit is held by the
    /// work itself (not by the request), so a client that goes away does not free
    /// it early.
    pub verify_permits: Arc<tokio::sync::Semaphore>,
    /// The orgs with a verification running in this process: one per org at a
    /// time, so that one org cannot take every core's slot.
    pub verifying_orgs: Arc<std::sync::Mutex<std::collections::HashSet<i64>>>,
    /// What the polled requests of an open page read about their session, its user
    /// and their org (`auth::session_cache`). It keeps nothing until its listener
    /// runs (`startup` starts it with the web listener).
    pub session_cache: NotifiedCache,
    /// The last `/metrics` text and when it was read: scrapes within
    /// `platform::metrics::FRESH` of it get it again rather than new queries.
    pub metrics_cache: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

impl App {
    pub fn new(pool: PgPool, storage: Storage, config: Config) -> Self {
        Self {
            pool,
            storage,
            config,
            board_port: OnceLock::new(),
            verify_permits: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            )),
            verifying_orgs: Arc::default(),
            session_cache: NotifiedCache::default(),
            metrics_cache: std::sync::Mutex::new(None),
        }
    }

    /// The job board's port: the bound one, else the configured one.
    pub fn board_port(&self) -> u16 {
        self.board_port.get().copied().unwrap_or(self.config.board_bind.port())
    }

    /// Where platform admins open the job board: `BOARD_PUBLIC_URL`, else the scheme
    /// and host of `PUBLIC_URL` with the board's port (the session cookie is per
    /// host, so the board must be reached by the site's host name).
    pub fn board_url(&self) -> String {
        if let Some(u) = &self.config.board_public_url {
            return format!("{u}/");
        }
        let uri: Option<http::Uri> = self.config.public_url.parse().ok();
        let scheme = uri.as_ref().and_then(|u| u.scheme_str()).unwrap_or("http").to_string();
        let host = uri.as_ref().and_then(|u| u.host()).map(str::to_string);
        let host = host.unwrap_or_else(|| self.config.board_bind.ip().to_string());
        format!("{scheme}://{host}:{}/", self.board_port())
    }
}

impl Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}
