//! The test harness: a fresh database per test on the server at `DATABASE_URL`,
//! the embedded S3 endpoint over a temp dir, the app on a random port with its
//! workers, and cookie-keeping clients that do not follow redirects.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Once},
    time::{Duration, Instant},
};

use data_export::{
    config::{Config, StorageSource},
    db,
    state::{App, AppState},
    storage::{EmbeddedS3, Storage},
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub const PASSWORD: &str = "test-password-1";
pub const MEMBERS: u32 = 20;

/// The server tests create their databases on.
pub fn server_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

static LOGS: Once = Once::new();

/// Logs to stderr in tests with `TEST_LOG=1`; feeds the job board's log stream always.
pub fn init_logs() {
    LOGS.call_once(|| data_export::telemetry::init_with(std::env::var("TEST_LOG").is_ok()));
}

/// A fresh, migrated database on [`server_url`]; returns its pool and name.
pub async fn fresh_db() -> (PgPool, String) {
    fresh_db_on(&server_url()).await
}

/// A fresh, migrated database on `server`; returns its pool and name.
pub async fn fresh_db_on(server: &str) -> (PgPool, String) {
    let admin = db::connect(db::parse_url(server).unwrap(), 2).await.expect("the test PostgreSQL server is reachable");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let name = format!("dxtest_{now}_{}", ulid::Ulid::generate().to_string().to_lowercase());
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}"))).execute(&admin).await.unwrap();
    drop_stale(&admin, now).await;
    admin.close().await;
    let options = db::parse_url(server).unwrap().database(&name);
    let pool = db::connect(options, 20).await.unwrap();
    data_export::startup::migrate(&pool).await.unwrap();
    (pool, name)
}

/// Drops test databases left by runs more than two hours old.
async fn drop_stale(admin: &PgPool, now: u64) {
    let names: Vec<(String,)> = sqlx::query_as("select datname::text from pg_database where datname like 'dxtest\\_%'")
        .fetch_all(admin)
        .await
        .unwrap_or_default();
    for (name,) in names {
        let ts = name.split('_').nth(1).and_then(|t| t.parse::<u64>().ok()).unwrap_or(now);
        if now.saturating_sub(ts) > 7200 {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!("drop database if exists {name} with (force)")))
                .execute(admin)
                .await;
        }
    }
}

/// How long test clients keep an idle connection: less than the server's idle
/// close (the header-read timeout, 10 s), as any client that pools connections
/// should, so that a request never goes out on a connection the server is closing.
pub const IDLE_POOL: Duration = Duration::from_secs(5);

/// Options for [`TestApp::spawn_with`].
pub struct Options {
    pub members: u32,
    pub workers: bool,
    pub heartbeat_secs: u64,
    pub missed_heartbeats: u32,
    /// Talk to the S3 endpoint through a [`FaultProxy`] (see [`TestApp::proxy`]).
    pub fault_proxy: bool,
    /// The PostgreSQL server to create the test database on (default [`server_url`]).
    pub server: Option<String>,
    /// `IMPORT_MAX_BYTES` (default: the product's).
    pub import_max_bytes: Option<u64>,
    /// `VERIFY_TIMEOUT_SECS` (default: the product's).
    pub verify_timeout_secs: Option<u64>,
    /// Changes to the app's configuration (timeouts, limits, `PUBLIC_URL`, ...),
    /// applied last.
    pub config: Option<fn(&mut Config)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            members: MEMBERS,
            workers: true,
            heartbeat_secs: 1,
            missed_heartbeats: 3,
            fault_proxy: false,
            server: None,
            import_max_bytes: None,
            verify_timeout_secs: None,
            config: None,
        }
    }
}

/// One running app.
pub struct TestApp {
    pub addr: String,
    pub state: AppState,
    pub db_name: String,
    pub storage_dir: PathBuf,
    pub s3: Option<EmbeddedS3>,
    pub s3_addr: SocketAddr,
    pub stop: CancellationToken,
    /// Between the app and the S3 endpoint, with [`Options::fault_proxy`].
    pub proxy: Option<FaultProxy>,
    /// The PostgreSQL server the database is on.
    pub server: String,
    /// The S3 settings the app uses (through the fault proxy when there is one).
    pub s3_settings: data_export::config::S3Settings,
    workers: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(opts: Options) -> Self {
        init_logs();
        let server = opts.server.clone().unwrap_or_else(server_url);
        let (pool, db_name) = fresh_db_on(&server).await;
        let storage_dir = std::env::temp_dir().join(format!("dxtest-s3-{}", ulid::Ulid::generate()));
        let s3 = EmbeddedS3::start(&storage_dir, "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let s3_addr = s3.addr();
        let proxy = if opts.fault_proxy { Some(FaultProxy::start(s3_addr).await) } else { None };
        let mut settings = s3.settings();
        if let Some(p) = &proxy {
            settings.endpoint = format!("http://{}", p.addr);
        }
        let mut config = Config::from_lookup(|_| None).unwrap();
        config.database_url = Some(server.clone());
        config.storage = StorageSource::External(settings.clone());
        config.bind = "127.0.0.1:0".parse().unwrap();
        config.heartbeat_secs = opts.heartbeat_secs;
        config.missed_heartbeats = opts.missed_heartbeats;
        config.data_dir = storage_dir.clone();
        if let Some(n) = opts.import_max_bytes {
            config.import_max_bytes = n;
        }
        if let Some(n) = opts.verify_timeout_secs {
            config.verify_timeout_secs = n;
        }
        // Tests open many connections from one loopback address; the per-client cap
        // has its own test (hardening).
        config.http.max_connections_per_client = 100_000;
        if let Some(change) = opts.config {
            change(&mut config);
        }
        // Configured as an external endpoint, so the CLI (given the same S3_* settings)
        // sees the same storage identity as the verified one.
        let storage = Storage::new(&settings, &config.privacy_bucket, settings.endpoint.clone())
            .with_bucket_prefix(&config.bucket_prefix);
        let state = AppState(Arc::new(App::new(pool, storage, config)));
        data_export::seed::run(&state.pool, &state.storage, opts.members, PASSWORD).await.unwrap();
        data_export::settings::backup::verify(&state, None).await.unwrap().unwrap();
        let app = data_export::startup::Application::build(
            state.clone(),
            state.config.bind,
            Some("127.0.0.1:0".parse().unwrap()),
        )
        .await
        .unwrap();
        let addr = format!("http://127.0.0.1:{}", app.port());
        let stop = CancellationToken::new();
        tokio::spawn(app.run_until_stopped(stop.clone()));
        let mut me = Self {
            addr,
            state,
            db_name,
            storage_dir,
            s3: Some(s3),
            s3_addr,
            stop,
            proxy,
            server,
            s3_settings: settings,
            workers: None,
        };
        if opts.workers {
            me.start_workers();
        }
        me
    }

    /// A raw S3 client, to look into buckets as the app sees them.
    pub fn s3_client(&self) -> aws_sdk_s3::Client {
        data_export::storage::raw_client(&self.s3_settings)
    }

    pub fn pool(&self) -> &PgPool {
        &self.state.pool
    }

    /// Waits until the app's session cache was emptied since it counted `before`
    /// (`state.session_cache.epoch()`): the polled routes take the session from it
    /// between changes, and see a change once its notification has arrived. Fails,
    /// naming `what`, if none comes within 5 s.
    pub async fn session_cache_emptied_since(&self, before: u64, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.state.session_cache.epoch() == before {
            assert!(Instant::now() < deadline, "no notification emptied the session cache after: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Starts this app's workers (a fresh worker identity each time).
    pub fn start_workers(&mut self) {
        let token = CancellationToken::new();
        let handle = tokio::spawn({
            let (state, token) = (self.state.clone(), token.clone());
            async move {
                let _ = data_export::workers::run(state, token, None).await;
            }
        });
        self.workers = Some((token, handle));
    }

    /// Stops this app's workers and waits until they have ended.
    pub async fn stop_workers(&mut self) {
        if let Some((token, handle)) = self.workers.take() {
            token.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(40), handle).await;
        }
    }

    /// Stops the embedded S3 endpoint.
    pub async fn stop_s3(&mut self) {
        if let Some(s3) = self.s3.take() {
            s3.stop().await;
        }
    }

    /// Starts the endpoint again on the same address with the same credentials.
    pub async fn restart_s3(&mut self) {
        let mut settings = match &self.state.config.storage {
            StorageSource::External(s) => s.clone(),
            StorageSource::Embedded => unreachable!(),
        };
        settings.endpoint = format!("http://{}", self.s3_addr);
        let mut last = None;
        for _ in 0..50 {
            match EmbeddedS3::restart(&self.storage_dir, &settings, self.s3_addr).await {
                Ok(s3) => {
                    self.s3 = Some(s3);
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("could not restart the S3 endpoint: {last:?}");
    }

    /// A client with its own cookie jar, not following redirects.
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .pool_idle_timeout(IDLE_POOL)
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr)
    }

    /// A signed-in browser-like session.
    pub async fn login(&self, email: &str) -> Session {
        login_at(&self.addr, email).await
    }

    /// An anonymous session that has loaded the sign-in page (and so holds a CSRF token).
    pub async fn anonymous(&self) -> Session {
        anonymous_at(&self.addr).await
    }

    /// A new API token for `email`.
    pub async fn token(&self, email: &str) -> String {
        data_export::auth::tokens::create(self.pool(), email, "test").await.unwrap().unwrap().token
    }

    pub async fn org_id(&self, slug: &str) -> i64 {
        sqlx::query_as::<_, (i64,)>("select id from organizations where slug = $1")
            .bind(slug)
            .fetch_one(self.pool())
            .await
            .unwrap()
            .0
    }

    /// Each section's row count for an org, in the database now.
    pub async fn section_counts(&self, org_id: i64) -> Vec<(&'static str, i64)> {
        data_export::seed::section_counts(self.pool(), org_id).await.unwrap()
    }

    /// Waits until the run leaves pending/running; returns its final row.
    pub async fn wait_for_run(&self, id: &str, within: Duration) -> data_export::exports::runs::Run {
        let started = Instant::now();
        loop {
            let run = data_export::exports::runs::get_any(self.pool(), id).await.unwrap().expect("run exists");
            if !run.is_active() {
                return run;
            }
            assert!(started.elapsed() < within, "run {id} still {} after {within:?}", run.status);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the run reaches `status`.
    pub async fn wait_for_status(&self, id: &str, status: &str, within: Duration) {
        let started = Instant::now();
        loop {
            let run = data_export::exports::runs::get_any(self.pool(), id).await.unwrap().expect("run exists");
            if run.status == status {
                return;
            }
            assert!(started.elapsed() < within, "run {id} is {} not {status} after {within:?}", run.status);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Objects in a bucket (through the S3 API).
    pub async fn objects(&self, bucket: &str) -> Vec<String> {
        let out = self.s3_client().list_objects_v2().bucket(bucket).send().await.unwrap();
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .filter(|k| !k.starts_with("probes/"))
            .collect()
    }

    /// Open multipart uploads: s3s-fs keeps each as `.upload-<id>.json` (and its
    /// parts as `.upload_id-<id>.part-<n>`) in its root; it has no ListMultipartUploads.
    pub fn open_uploads(&self) -> Vec<String> {
        std::fs::read_dir(&self.storage_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with(".upload"))
            .collect()
    }

    /// The job board's URL for `path`.
    pub fn board_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.state.board_port())
    }

    /// Another process's view of the same database and storage: its own pool (own
    /// connections), as a second `serve` or `worker` process would have.
    pub async fn second_process(&self) -> AppState {
        let options = db::parse_url(&self.server).unwrap().database(&self.db_name);
        let pool = db::connect(options, 5).await.unwrap();
        AppState(Arc::new(App::new(pool, self.state.storage.clone(), self.state.config.clone())))
    }

    /// Waits until `n` jobs of `queue` are done and none is waiting or running.
    pub async fn wait_for_done_jobs(&self, queue: &str, n: i64, within: Duration) {
        let started = Instant::now();
        loop {
            let (done, busy): (i64, i64) = sqlx::query_as(
                "select count(*) filter (where status = 'Done'),
                        count(*) filter (where status in ('Pending', 'Queued', 'Running'))
                 from apalis.jobs where job_type = $1",
            )
            .bind(queue)
            .fetch_one(self.pool())
            .await
            .unwrap();
            if done >= n && busy == 0 {
                return;
            }
            assert!(started.elapsed() < within, "{queue}: {done} of {n} jobs done, {busy} busy after {within:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Audit entries with this action.
    pub async fn audits(&self, action: &str) -> Vec<(Option<i64>, Option<i64>, String, serde_json::Value)> {
        sqlx::query_as("select org_id, actor_user_id, target, details from audit_log where action = $1 order by id")
            .bind(action)
            .fetch_all(self.pool())
            .await
            .unwrap()
    }

    /// Runs `data-export export --org acme --out FILE` (FILE named `file_name` in the
    /// storage dir) and returns the file's JSON text.
    pub fn export_acme_to_file(&self, file_name: &str) -> String {
        let out_file = self.storage_dir.join(file_name);
        let out = self.command().args(["export", "--org", "acme", "--out"]).arg(&out_file).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut text = String::new();
        let gz = std::fs::read(&out_file).unwrap();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text).unwrap();
        text
    }

    /// Runs `data-export` with the app's database and storage.
    pub fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_data-export"));
        let url = self.server.clone();
        let url = match url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{}", self.db_name),
            None => url,
        };
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", url)
            .env("DATA_DIR", &self.storage_dir)
            .env("RUST_LOG", "warn");
        if let StorageSource::External(s) = &self.state.config.storage {
            cmd.env("S3_ENDPOINT", &s.endpoint)
                .env("S3_ACCESS_KEY_ID", &s.access_key_id)
                .env("S3_SECRET_ACCESS_KEY", &s.secret_access_key)
                .env("S3_FORCE_PATH_STYLE", "true");
        }
        cmd
    }
}

/// A `data-export serve` child process on this app's database and storage.
pub struct ServeProcess {
    pub child: std::process::Child,
    /// Its base URL, from the banner it prints.
    pub addr: String,
    /// Everything it logged so far (stderr).
    pub logs: Arc<std::sync::Mutex<String>>,
}

impl ServeProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its resident set, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestApp {
    /// Starts `data-export serve` on free ports with these extra variables, and waits
    /// for its banner.
    pub fn spawn_serve(&self, envs: &[(&str, &str)]) -> ServeProcess {
        use std::io::{BufRead, BufReader, Read};
        let mut child = self
            .command()
            .arg("serve")
            .env("BIND", "127.0.0.1:0")
            .env("BOARD_BIND", "127.0.0.1:0")
            // Every test client connects from 127.0.0.1 (see `spawn_with`).
            .env("MAX_CONNECTIONS_PER_CLIENT", "100000")
            .envs(envs.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(std::sync::Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        std::thread::spawn({
            let logs = logs.clone();
            move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    logs.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("Data Export is running at ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => panic!("serve printed no banner; its log:\n{}", logs.lock().unwrap()),
        };
        ServeProcess { child, addr, logs }
    }
}

/// Signs in at `base` (this app's or another process's address).
pub async fn login_at(base: &str, email: &str) -> Session {
    let mut s = anonymous_at(base).await;
    let resp = s.post_form(LOGIN, &[("email", email), ("password", PASSWORD)]).await;
    assert_eq!(resp.status(), 303, "login as {email}");
    // Sign-in issues a new CSRF token: take it from a page.
    let home = s.get("/").await.text().await.unwrap();
    s.csrf = csrf_from(&home).expect("a signed-in page has a CSRF token");
    s
}

/// An anonymous session at `base` that has loaded the sign-in page (and so holds a
/// CSRF token).
pub async fn anonymous_at(base: &str) -> Session {
    let client = reqwest::Client::builder()
        .pool_idle_timeout(IDLE_POOL)
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = client.get(format!("{base}{LOGIN}")).send().await.unwrap().text().await.unwrap();
    let csrf = csrf_from(&page).expect("the login page has a CSRF token");
    Session { client, csrf, base: base.to_string() }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some((token, _)) = &self.workers {
            token.cancel();
        }
    }
}

pub const LOGIN: &str = "/login";

/// A browser-like session: cookies plus the CSRF token.
pub struct Session {
    pub client: reqwest::Client,
    pub csrf: String,
    pub base: String,
}

impl Session {
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.base)).send().await.unwrap()
    }

    pub async fn htmx_get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.base)).header("HX-Request", "true").send().await.unwrap()
    }

    /// POSTs a form with the CSRF token added.
    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        let mut all: Vec<(&str, &str)> = fields.to_vec();
        all.push(("csrf_token", &self.csrf));
        self.post_raw(path, &all).await
    }

    /// POSTs exactly these fields (no CSRF token added).
    pub async fn post_raw(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        self.client.post(format!("{}{path}", self.base)).form(fields).send().await.unwrap()
    }

    /// POSTs as htmx does: the token in the header.
    pub async fn htmx_post(&self, path: &str) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .header("HX-Request", "true")
            .header("X-CSRF-Token", &self.csrf)
            .send()
            .await
            .unwrap()
    }
}

/// The CSRF token in a page.
pub fn csrf_from(html: &str) -> Option<String> {
    let at = html.find("name=\"csrf_token\" value=\"")? + "name=\"csrf_token\" value=\"".len();
    Some(html[at..].split('"').next()?.to_string())
}

/// An API client.
pub fn api(app: &TestApp, token: &str) -> Api {
    Api { client: app.client(), base: app.addr.clone(), token: token.to_string() }
}

pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Api {
    pub async fn send(&self, method: reqwest::Method, path: &str) -> reqwest::Response {
        self.client
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }
    pub async fn post(&self, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::POST, path).await
    }
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::GET, path).await
    }
    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::DELETE, path).await
    }
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .unwrap()
    }
}

/// What the [`FaultProxy`] does to requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Passes everything through.
    None,
    /// Answers the next `n` UploadPart requests with 500 InternalError.
    PartErrors(u32),
    /// Answers every UploadPart with 500 InternalError.
    PartErrorsAlways,
    /// Holds each UploadPart this long before passing it on.
    SlowParts(Duration),
    /// Holds each object read (a GET of a key) this long before passing it on.
    SlowReads(Duration),
    /// The endpoint is full: every PUT and POST gets 507 (as MinIO answers when its
    /// drives are full). Aborts (DELETE) still pass.
    Full,
    /// Every bucket belongs to another account: HeadBucket gets 403 AccessDenied and
    /// CreateBucket 409 BucketAlreadyExists, as AWS answers for a name taken elsewhere.
    ForeignBuckets,
    /// Every bucket belongs to the account `0`, and lets anyone in: requests pass,
    /// except that one sent with `x-amz-expected-bucket-owner` other than that
    /// account gets 403 AccessDenied (as AWS answers), and CreateBucket gets 409
    /// BucketAlreadyExists.
    OwnedBy(&'static str),
}

/// A reverse proxy in front of the embedded S3 endpoint that injects faults. It
/// keeps the Host header, so SigV4 signatures (made for the proxy's address) verify.
pub struct FaultProxy {
    pub addr: SocketAddr,
    fault: Arc<std::sync::Mutex<Fault>>,
    /// Requests answered with an injected error.
    pub injected: Arc<std::sync::atomic::AtomicU32>,
    /// UploadPart requests passed through.
    pub parts_passed: Arc<std::sync::atomic::AtomicU32>,
}

impl FaultProxy {
    pub async fn start(target: SocketAddr) -> Self {
        use axum::{body::Body, extract::Request, response::IntoResponse};
        use hyper_util::{client::legacy::Client, rt::TokioExecutor};
        use std::sync::atomic::Ordering;
        let fault = Arc::new(std::sync::Mutex::new(Fault::None));
        let injected = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let parts_passed = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build_http();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler = {
            let (fault, injected, parts_passed) = (fault.clone(), injected.clone(), parts_passed.clone());
            move |mut req: Request| {
                let (fault, injected, parts_passed, client) =
                    (fault.clone(), injected.clone(), parts_passed.clone(), client.clone());
                async move {
                    let query = req.uri().query().unwrap_or("").to_string();
                    let is_part = req.method() == http::Method::PUT && query.contains("partNumber=");
                    let is_write = req.method() == http::Method::PUT || req.method() == http::Method::POST;
                    // A GET of an object: a key after the bucket, and no listing query.
                    let is_read = req.method() == http::Method::GET
                        && req.uri().path().trim_start_matches('/').contains('/')
                        && !query.contains("list-type")
                        && !query.contains("uploads");
                    let error = |status: u16, code: &str| {
                        injected.fetch_add(1, Ordering::SeqCst);
                        let body = format!(
                            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test's fault proxy</Message></Error>"
                        );
                        (http::StatusCode::from_u16(status).unwrap(), [("content-type", "application/xml")], body)
                            .into_response()
                    };
                    // A bucket itself (no key, no query): HeadBucket, CreateBucket.
                    let bucket_path = req.uri().path().trim_matches('/');
                    let is_bucket = !bucket_path.is_empty() && !bucket_path.contains('/') && query.is_empty();
                    let now = *fault.lock().unwrap();
                    match now {
                        Fault::PartErrors(n) if is_part && n > 0 => {
                            *fault.lock().unwrap() = Fault::PartErrors(n - 1);
                            return error(500, "InternalError");
                        }
                        Fault::PartErrorsAlways if is_part => return error(500, "InternalError"),
                        Fault::Full if is_write => return error(507, "XMinioStorageFull"),
                        Fault::ForeignBuckets if is_bucket && req.method() == http::Method::HEAD => {
                            return error(403, "AccessDenied");
                        }
                        Fault::ForeignBuckets if is_bucket && req.method() == http::Method::PUT => {
                            return error(409, "BucketAlreadyExists");
                        }
                        Fault::OwnedBy(owner)
                            if req
                                .headers()
                                .get("x-amz-expected-bucket-owner")
                                .is_some_and(|v| v.as_bytes() != owner.as_bytes()) =>
                        {
                            return error(403, "AccessDenied");
                        }
                        Fault::OwnedBy(_) if is_bucket && req.method() == http::Method::PUT => {
                            return error(409, "BucketAlreadyExists");
                        }
                        Fault::SlowParts(d) if is_part => tokio::time::sleep(d).await,
                        Fault::SlowReads(d) if is_read => tokio::time::sleep(d).await,
                        _ => {}
                    }
                    let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
                    *req.uri_mut() = format!("http://{target}{path}").parse().unwrap();
                    match client.request(req).await {
                        Ok(resp) => {
                            if is_part && resp.status().is_success() {
                                parts_passed.fetch_add(1, Ordering::SeqCst);
                            }
                            resp.map(Body::new).into_response()
                        }
                        Err(e) => (http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
                    }
                }
            }
        };
        let app = axum::Router::new().fallback(handler);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, fault, injected, parts_passed }
    }

    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    pub fn injected(&self) -> u32 {
        self.injected.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn parts_passed(&self) -> u32 {
        self.parts_passed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A private CA and a server certificate for 127.0.0.1 signed by it, written as
/// `ca.pem`, `cert.pem` and `key.pem` into a fresh temporary directory (TLS tests of
/// mail and storage).
pub struct PrivateCa {
    pub dir: PathBuf,
    /// The server certificate and its PKCS#8 key, DER.
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

impl PrivateCa {
    pub fn new(prefix: &str) -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Data Export test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server_cert =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&server_key, &ca).unwrap();
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", ulid::Ulid::generate()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), server_cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), server_key.serialize_pem()).unwrap();
        Self { dir, cert_der: server_cert.der().to_vec(), key_der: server_key.serialize_der() }
    }

    /// The path of one of its files, as a string.
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }
}
