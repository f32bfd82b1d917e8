//! Start-up: resolve the database and storage (zero-config or from the
//! environment), migrate, seed the demo on first start, verify storage, then run
//! the web server, the workers, and housekeeping until a shutdown signal.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Config, StorageSource},
    db::{self, PrivateCluster},
    jobs, mail, platform, seed, settings,
    state::{App, AppState},
    storage::{EmbeddedS3, Storage, embedded::Downloads},
    workers,
};

pub mod listener;

/// Runs our migrations and sets up the job queue's tables (schema `apalis`).
pub async fn migrate(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    db::migrate(pool).await?;
    jobs::setup(pool).await.context("setting up the job queue tables")?;
    Ok(())
}

/// The database and storage a process runs against, and what it started for them.
pub struct Services {
    pub state: AppState,
    /// The embedded S3 endpoint, when no `S3_ENDPOINT` is set.
    pub embedded: Option<EmbeddedS3>,
    /// The private cluster, when no `DATABASE_URL` is set.
    pub cluster: Option<PrivateCluster>,
}

impl Services {
    /// Connects (starting the private cluster and embedded endpoint as needed) and migrates.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let (options, cluster) = match &config.database_url {
            Some(url) => (db::parse_url(url)?, None),
            None => {
                let cluster = PrivateCluster::ensure(&config.data_dir.join("postgres")).await?;
                (cluster.connect_options(), Some(cluster))
            }
        };
        let pool = db::connect(options, config.database_pool_size).await?;
        migrate(&pool).await?;
        let (storage, embedded) = match &config.storage {
            StorageSource::External(s3) => {
                let storage = Storage::new(s3, &config.privacy_bucket, s3.endpoint.clone())
                    .with_bucket_prefix(&config.bucket_prefix);
                storage.ping().await.context("check S3_ENDPOINT (or unset it to use the embedded endpoint)")?;
                (storage, None)
            }
            StorageSource::Embedded => {
                let root = config.data_dir.join("storage");
                let embedded = EmbeddedS3::start(&root, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
                let root = std::fs::canonicalize(&root)?;
                let identity = format!("embedded:{}", root.display());
                // Download links are signed for the web UI's own address and answered
                // by its listener (`Application::serve_downloads`), so that they work
                // from wherever the UI does, not only on this machine.
                let mut settings = embedded.settings();
                settings.public_endpoint = Some(config.public_origin());
                let storage =
                    Storage::new(&settings, &config.privacy_bucket, identity).with_bucket_prefix(&config.bucket_prefix);
                (storage, Some(embedded))
            }
        };
        let state = AppState(Arc::new(App::new(pool, storage, config)));
        Ok(Self { state, embedded, cluster })
    }

    /// Stops what this process started.
    pub async fn shutdown(self) {
        self.state.pool.close().await;
        if let Some(e) = self.embedded {
            e.stop().await;
        }
        if let Some(c) = self.cluster
            && let Err(e) = c.stop().await
        {
            tracing::warn!(error = %e, "could not stop the private PostgreSQL cluster");
        }
    }
}

/// The web server and the job board, bound and ready to run.
pub struct Application {
    listener: TcpListener,
    board: Option<TcpListener>,
    state: AppState,
    downloads: Option<Downloads>,
}

impl Application {
    /// Binds `addr`, and `board` for the job board if given (port 0 picks a free port).
    pub async fn build(state: AppState, addr: SocketAddr, board: Option<SocketAddr>) -> anyhow::Result<Self> {
        let listener =
            TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}: is BIND free?"))?;
        let board = match board {
            Some(b) => {
                let l =
                    TcpListener::bind(b).await.with_context(|| format!("cannot listen on {b}: is BOARD_BIND free?"))?;
                let _ = state.board_port.set(l.local_addr()?.port());
                Some(l)
            }
            None => None,
        };
        Ok(Self { listener, board, state, downloads: None })
    }

    /// Answers the embedded storage's presigned download links on this listener
    /// (before the router's layers: a download is as long as the file is, not a request
    /// under the request timeout). The listener's connection caps still apply.
    pub fn serve_downloads(mut self, downloads: Option<Downloads>) -> Self {
        self.downloads = downloads;
        self
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// Serves until `stop` is cancelled, then finishes open requests (for at most
    /// the request timeout, and never more than 30 s). Both listeners close connections that are slow to send
    /// a request head and serve a bounded number at once ([`listener::serve`]).
    pub async fn run_until_stopped(self, stop: CancellationToken) -> anyhow::Result<()> {
        let http = &self.state.config.http;
        let limits = |max_connections| listener::Limits {
            header_read_timeout: http.header_read_timeout,
            max_connections,
            max_per_client: http.max_connections_per_client,
            write_stall_timeout: http.write_stall_timeout,
            shutdown_grace: http.request_timeout.min(Duration::from_secs(30)),
        };
        let trusted = self.state.config.trusted_proxies.clone();
        let board = self.board.map(|l| {
            let app = crate::board::router(&self.state, stop.clone());
            tokio::spawn(listener::serve(l, app, limits(http.board_max_connections), trusted.clone(), stop.clone()))
        });
        // The polls' session cache listens for changes while this listener serves.
        let cache_stop = stop.child_token();
        let _stop_cache = cache_stop.clone().drop_guard();
        tokio::spawn(crate::db::notified_cache::keep_fresh(
            self.state.session_cache.clone(),
            self.state.pool.clone(),
            crate::auth::session_cache::CHANNEL,
            cache_stop,
        ));
        let mut app = crate::router::router(self.state.clone());
        if let Some(downloads) = self.downloads {
            app = app.layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let downloads = downloads.clone();
                    async move {
                        if Downloads::wants(req.method(), req.uri()) {
                            let (parts, _) = req.into_parts();
                            downloads.answer(parts).await.map(axum::body::Body::new)
                        } else {
                            next.run(req).await
                        }
                    }
                },
            ));
        }
        listener::serve(self.listener, app, limits(http.max_connections), trusted, stop).await?;
        if let Some(board) = board {
            board.await??;
        }
        Ok(())
    }
}

/// Periodic housekeeping: expired sessions, sign-in failures past their window (they
/// hold an email and an address: kept only as long as the limits need them), old
/// schedule slot claims.
pub async fn housekeeping(state: AppState, stop: CancellationToken) {
    let store = crate::auth::session_store::PgSessionStore::new(state.pool.clone());
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
        }
        if let Err(e) = store.delete_expired().await {
            tracing::warn!(error = %e, "could not delete expired sessions");
        }
        if let Err(e) = crate::auth::rate_limit::delete_expired(&state.pool).await {
            tracing::warn!(error = %e, "could not delete expired sign-in failures");
        }
        if let Err(e) = crate::webhooks::delete_old(&state.pool).await {
            tracing::warn!(error = %e, "could not delete old webhook deliveries");
        }
        if let Err(e) = crate::webhooks::requeue_lost(&state.pool).await {
            tracing::warn!(error = format!("{e:#}"), "could not queue lost webhook deliveries again");
        }
        if let Err(e) = crate::mail::requeue_lost(&state.pool).await {
            tracing::warn!(error = format!("{e:#}"), "could not queue lost mails again");
        }
        // Closing orgs: final exports verified, grace periods started, erasures
        // (docs/runbooks/offboarding.md); a half-finished erasure is finished.
        if let Err(e) = crate::closing::erase::tick(&state).await {
            tracing::warn!(error = format!("{e:#}"), "could not advance the closing organizations");
        }
        if let Err(e) = crate::exports::runs::overdue_slot_digests(&state.pool, &state.config.public_url).await {
            tracing::warn!(error = format!("{e:#}"), "could not send the mails of finished schedule slots");
        }
        // Slot claims only matter around their slot (the latest slot is never more
        // than a week old), so a month of them is kept for the platform page.
        if let Err(e) = sqlx::query("delete from schedule_slots where claimed_at < now() - interval '30 days'")
            .execute(&state.pool)
            .await
        {
            tracing::warn!(error = %e, "could not delete old schedule slot claims");
        }
    }
}

/// How often the health loop runs.
pub const HEALTH_TICK: Duration = Duration::from_secs(60);

/// Every minute: fails stuck exports (`exports::stuck`), checks failing org buckets
/// again (`platform::buckets`), records orgs whose backup state went wrong and
/// mails platform admins about them (`platform::notices`).
pub async fn health_loop(state: AppState, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(HEALTH_TICK) => {}
        }
        health_tick(&state).await;
    }
}

/// One round of [`health_loop`]; each part's failure is logged and left for the next.
pub async fn health_tick(state: &AppState) {
    if let Err(e) = crate::exports::stuck::fail_stuck(state).await {
        tracing::warn!(error = format!("{e:#}"), "could not fail the stuck exports");
    }
    if let Err(e) = platform::buckets::recheck_failing(state, 50).await {
        tracing::warn!(error = format!("{e:#}"), "could not check the failing org buckets again");
    }
    if let Err(e) = platform::notices::record(state).await {
        tracing::warn!(error = format!("{e:#}"), "could not record the orgs' backup states");
    }
    if let Err(e) = platform::notices::mail_batch(state).await {
        tracing::warn!(error = format!("{e:#}"), "could not mail the platform admins about backup states");
    }
}

/// Cancels `token` on Ctrl-C or SIGTERM.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! { _ = ctrl_c => {}, _ = term => {} }
        tracing::info!("shutting down");
        token.cancel();
    });
}

/// The zero-config first start: seed the demo and remember its password.
async fn first_start(services: &Services) -> anyhow::Result<Option<String>> {
    let state = &services.state;
    let pw_file = state.config.data_dir.join("demo-password");
    if state.config.database_url.is_some() || seed::is_seeded(&state.pool).await? {
        return Ok(state.config.demo_password.clone().or_else(|| std::fs::read_to_string(&pw_file).ok()));
    }
    let password = state.config.demo_password.clone().unwrap_or_else(random_password);
    tracing::info!("first start: seeding the demo organizations");
    let report = seed::run(&state.pool, &state.storage, seed::DEFAULT_MEMBERS, &password).await?;
    tracing::info!(rows = report.rows, seconds = report.seconds, "demo seeded");
    if state.config.demo_password.is_none() {
        write_private(&pw_file, &password)?;
    }
    Ok(Some(password))
}

/// A random password for the demo accounts.
pub fn random_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..16).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(path)?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    Ok(())
}

/// `data-export serve` (web, job board, workers, scheduler, housekeeping) or, without
/// the web, `data-export worker` (workers, scheduler, housekeeping).
pub async fn serve(config: Config, with_web: bool) -> anyhow::Result<()> {
    let services = Services::start(config).await?;
    let state = services.state.clone();
    let password = if with_web { first_start(&services).await? } else { None };
    if services.embedded.is_some() {
        match settings::backup::verify(&state, None).await? {
            Ok(()) => {
                tracing::info!("backup configuration verified against the embedded S3 endpoint")
            }
            Err(e) => tracing::error!(error = e, "the embedded S3 endpoint failed verification"),
        }
    }
    let stop = CancellationToken::new();
    cancel_on_signal(stop.clone());
    let mut tasks = tokio::task::JoinSet::new();
    if with_web {
        let app = Application::build(state.clone(), state.config.bind, Some(state.config.board_bind))
            .await?
            .serve_downloads(services.embedded.as_ref().map(EmbeddedS3::downloads));
        print_banner(&state.config, app.port(), &state.board_url(), password.as_deref());
        tasks.spawn(app.run_until_stopped(stop.clone()));
    }
    tasks.spawn(workers::run(state.clone(), stop.clone(), None));
    tasks.spawn({
        let (state, stop) = (state.clone(), stop.clone());
        async move {
            platform::scheduler::run_loop(state, stop).await;
            Ok(())
        }
    });
    tasks.spawn({
        let (state, stop) = (state.clone(), stop.clone());
        async move {
            housekeeping(state, stop).await;
            Ok(())
        }
    });
    tasks.spawn({
        let (state, stop) = (state.clone(), stop.clone());
        async move {
            health_loop(state, stop).await;
            Ok(())
        }
    });
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        let r = joined.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = r {
            tracing::error!(error = format!("{e:#}"), "a component stopped with an error; shutting down");
            result = Err(e);
        }
        // One part ending ends the process.
        stop.cancel();
    }
    services.shutdown().await;
    result
}

fn print_banner(config: &Config, port: u16, board_url: &str, password: Option<&str>) {
    let url =
        if config.bind.port() == 0 { format!("http://{}:{port}", config.bind.ip()) } else { config.public_url.clone() };
    println!("\nData Export is running at {url}");
    println!("Job board (platform admins): {board_url}");
    match &config.mail.smtp {
        Some(smtp) => println!("Mail: through {}:{} (SMTP_URL), from {}", smtp.host, smtp.port, config.mail.from),
        None => println!(
            "Mail: SMTP_URL is unset, so each mail is written as an .eml file to {}",
            mail::job::outbox(config).display()
        ),
    }
    println!("Demo accounts:");
    for seed::DemoAccount { email, platform_admin, memberships, .. } in seed::DEMO_ACCOUNTS {
        let role = if platform_admin {
            "platform admin".to_string()
        } else {
            memberships.iter().map(|(o, r)| format!("{r} of {o}")).collect::<Vec<_>>().join(", ")
        };
        println!("  {email:<24} {role}");
    }
    match password {
        Some(p) => println!("Password for all of them: {p}\n"),
        None => println!("Password: the DEMO_PASSWORD used when they were seeded\n"),
    }
}
