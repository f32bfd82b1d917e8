//! Faults during an export: the storage endpoint answers with errors, slowly, or
//! refuses writes (full); PostgreSQL restarts mid-export; two `serve` processes and
//! one `worker` share the database. Each run ends `completed` or `failed` with a
//! reason, leaves no partial or orphaned object and no open multipart upload (every
//! object left re-reads whole with `verify`), and the next export works.
//! (The endpoint stopped mid-upload and a worker killed with SIGKILL are in exports.rs.)

use std::time::Duration;

use data_export::exports::runs::Run;
use serde_json::Value;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(90);

async fn trigger(app: &TestApp) -> String {
    let api = api(app, &app.token("admin@acme.test").await);
    let resp = api.post("/orgs/acme/exports").await;
    assert_eq!(resp.status(), 202);
    resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
}

/// The run ended cleanly: completed, or failed with a reason; the bucket holds
/// exactly the completed runs' objects, each of which verifies; no upload is open.
pub async fn assert_clean(app: &TestApp, id: &str) -> Run {
    let run = app.wait_for_run(id, WAIT).await;
    match run.status.as_str() {
        "completed" => {}
        "failed" => assert!(run.error.as_deref().is_some_and(|e| !e.trim().is_empty()), "a failure says why"),
        other => panic!("run {id} ended {other}"),
    }
    let completed: Vec<(String, String)> = sqlx::query_as(
        "select r.object_key, r.sha256 from export_runs r join organizations o on o.id = r.org_id
         where o.slug = 'acme' and r.status = 'completed'",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    let mut objects = app.objects("org-acme").await;
    objects.sort();
    let mut keys: Vec<String> = completed.iter().map(|(k, _)| k.clone()).collect();
    keys.sort();
    assert_eq!(objects, keys, "the bucket holds exactly the completed exports: no partial or orphaned object");
    for (key, sha) in &completed {
        let report =
            data_export::snapshot::verify::verify_object(&app.state.storage, "org-acme", key, Some(sha)).await.unwrap();
        assert!(report.is_ok(), "{key} verifies: {report:?}");
    }
    assert!(app.open_uploads().is_empty(), "no open multipart upload: {:?}", app.open_uploads());
    run
}

/// A failed run tells the org's admins a plain reason (containing `plain`) that
/// names no bucket, endpoint, key or SQL, on the page, in the API and in the audit
/// log; a platform admin sees the whole error chain beside it. Returns the detail.
pub async fn assert_told_plainly(app: &TestApp, run: &Run, plain: &str) -> String {
    let reason = run.error.clone().expect("a reason");
    let detail = run.error_detail.clone().expect("a detail");
    assert!(reason.contains(plain), "the plain reason: {reason}");
    assert!(reason.contains("A platform admin can see the details"), "{reason}");
    let endpoint = app.s3_settings.endpoint.trim_start_matches("http://").to_string();
    for secret in ["org-acme", "exports/", endpoint.as_str(), "127.0.0.1", "select ", "copy ", "SQL", "relation"] {
        assert!(!reason.contains(secret), "the plain reason names {secret:?}: {reason}");
    }
    assert_ne!(reason, detail, "the detail keeps the chain");
    // The org admin: the reason only, on the page and in the API.
    let admin = app.login("admin@acme.test").await;
    let page = admin.htmx_get("/orgs/acme/exports/history").await.text().await.unwrap();
    assert!(page.contains(&html_escape(&reason)), "the history shows the reason");
    assert!(!page.contains("data-error=\"detail\""), "an org admin sees no detail");
    assert!(!page.contains(&html_escape(&detail)), "an org admin sees no detail");
    let api_admin = api(app, &app.token("admin@acme.test").await);
    let one: Value = api_admin.get(&format!("/orgs/acme/exports/{}", run.id)).await.json().await.unwrap();
    assert_eq!(one["error"], reason.as_str());
    assert!(one.get("error_detail").is_none(), "no detail for an org admin: {one}");
    let failed = app.audits("export.failed").await;
    let entry = failed.iter().find(|e| e.2 == format!("export:{}", run.id)).expect("an export.failed entry");
    assert_eq!(entry.3["error"], reason.as_str(), "the org's audit log keeps the plain reason");
    // A platform admin: the detail on the platform settings page (no membership
    // needed) and, as an admin of the org, beside the reason in its history and API.
    let platform = app.login("platform@example.test").await;
    let settings = platform.get("/platform/settings").await.text().await.unwrap();
    assert!(settings.contains(&html_escape(&detail)), "the platform page lists the failure with its detail");
    sqlx::query(
        "insert into memberships (org_id, user_id, role, member_no)
         select o.id, u.id, 'admin', 'PLATFORM-1' from organizations o, users u
         where o.slug = 'acme' and u.email = 'platform@example.test' on conflict do nothing",
    )
    .execute(app.pool())
    .await
    .unwrap();
    let page = platform.htmx_get("/orgs/acme/exports/history").await.text().await.unwrap();
    assert!(
        page.contains("data-error=\"detail\"") && page.contains(&html_escape(&detail)),
        "a platform admin sees the detail"
    );
    let api_platform = api(app, &app.token("platform@example.test").await);
    let one: Value = api_platform.get(&format!("/orgs/acme/exports/{}", run.id)).await.json().await.unwrap();
    assert_eq!(one["error_detail"], detail.as_str());
    println!(
        "a failed run told plainly: org admins see {reason:?}; platform admins also see {} characters of detail",
        detail.len()
    );
    detail
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The next export completes and verifies.
async fn next_export_works(app: &TestApp) {
    let id = trigger(app).await;
    let run = assert_clean(app, &id).await;
    assert_eq!(run.status, "completed", "the next export works: {:?}", run.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_storage_errors_are_retried_and_the_export_completes() {
    let app = TestApp::spawn_with(Options { members: 2_000, fault_proxy: true, ..Default::default() }).await;
    let proxy = app.proxy.as_ref().unwrap();
    proxy.set(Fault::PartErrors(2));
    let id = trigger(&app).await;
    let run = assert_clean(&app, &id).await;
    assert_eq!(run.status, "completed", "{:?}", run.error);
    assert_eq!(proxy.injected(), 2, "both injected 500s were met, and retried");
    assert!(proxy.parts_passed() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_storage_errors_fail_the_run_with_the_reason_and_leave_nothing() {
    let app = TestApp::spawn_with(Options { members: 2_000, fault_proxy: true, ..Default::default() }).await;
    let proxy = app.proxy.as_ref().unwrap();
    proxy.set(Fault::PartErrorsAlways);
    let id = trigger(&app).await;
    let run = assert_clean(&app, &id).await;
    assert_eq!(run.status, "failed");
    let detail = assert_told_plainly(&app, &run, "could not be written to storage").await;
    assert!(detail.contains("part"), "the detail names the step: {detail}");
    // The SDK's standard retry: 4 attempts of the part, then the run fails.
    assert_eq!(proxy.injected(), 4, "retried with backoff, then given up");
    proxy.set(Fault::None);
    next_export_works(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_still_completes() {
    let app = TestApp::spawn_with(Options { members: 2_000, fault_proxy: true, ..Default::default() }).await;
    let proxy = app.proxy.as_ref().unwrap();
    proxy.set(Fault::SlowParts(Duration::from_millis(1500)));
    let id = trigger(&app).await;
    let run = assert_clean(&app, &id).await;
    assert_eq!(run.status, "completed", "{:?}", run.error);
    assert!(run.duration_secs().unwrap() >= 1.5, "the part was held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_bucket_fails_fast_with_the_reason() {
    let app = TestApp::spawn_with(Options { members: 2_000, fault_proxy: true, ..Default::default() }).await;
    let proxy = app.proxy.as_ref().unwrap();
    proxy.set(Fault::Full);
    let id = trigger(&app).await;
    let run = assert_clean(&app, &id).await;
    assert_eq!(run.status, "failed");
    let detail = assert_told_plainly(&app, &run, "could not be written to storage").await;
    assert!(detail.contains("XMinioStorageFull") || detail.contains("507"), "the endpoint's reason: {detail}");
    // A refusal that is not transient is not retried.
    assert_eq!(proxy.injected(), 1, "failed fast: one refused request");
    proxy.set(Fault::None);
    next_export_works(&app).await;
}

/// The export's database connection is cut mid-read (its backend terminated, as a
/// failover or an operator would): the run fails, its org admins read that the data
/// could not be read from the database, and only platform admins see PostgreSQL's
/// own message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_failure_mid_export_is_told_plainly_with_the_detail_for_platform_admins() {
    let app = TestApp::spawn_with(Options { members: 15_000, ..Default::default() }).await;
    let id = trigger(&app).await;
    app.wait_for_status(&id, "running", WAIT).await;
    // Terminate the backend that runs the export's read (its COPY of a section).
    let started = std::time::Instant::now();
    let mut terminated = 0;
    while terminated == 0 {
        let run = data_export::exports::runs::get_any(app.pool(), &id).await.unwrap().unwrap();
        assert!(run.is_active(), "the export finished before its read could be cut: make it bigger");
        assert!(started.elapsed() < WAIT);
        terminated = sqlx::query_scalar::<_, i64>(
            "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity
             where datname = current_database() and pid <> pg_backend_pid() and query ilike 'copy%') t",
        )
        .fetch_one(app.pool())
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run = assert_clean(&app, &id).await;
    assert_eq!(run.status, "failed", "{:?}", run.error_detail);
    let detail = assert_told_plainly(&app, &run, "could not be read from the database").await;
    assert!(
        detail.contains("reading ") && detail.contains("database"),
        "the detail names the section and the cause: {detail}"
    );
    next_export_works(&app).await;
}

/// The test's own PostgreSQL cluster (so restarting it disturbs no other test).
struct OwnCluster {
    dir: std::path::PathBuf,
    cluster: data_export::db::PrivateCluster,
}

impl OwnCluster {
    async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("dxtest-pg-{}", ulid::Ulid::generate()));
        let cluster = data_export::db::PrivateCluster::ensure(&dir).await.unwrap();
        Self { dir, cluster }
    }

    /// A URL for it (the socket directory, percent-encoded as the host).
    fn url(&self) -> String {
        let socket = self.cluster.connect_options().get_socket().cloned().unwrap();
        let host = socket.display().to_string().replace('/', "%2F");
        format!("postgres://postgres@{host}:5432/postgres")
    }

    async fn restart(&mut self) {
        self.cluster.stop().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.cluster = data_export::db::PrivateCluster::ensure(&self.dir).await.unwrap();
    }
}

impl Drop for OwnCluster {
    /// Stops the server even when the test failed (as root it runs as `postgres`).
    fn drop(&mut self) {
        let pg_ctl = data_export::db::cluster::find_bin_dir().unwrap().join("pg_ctl");
        let data = self.cluster.data_dir().display().to_string();
        let root = std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
        let mut cmd = if root {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            std::process::Command::new(&pg_ctl)
        };
        let _ = cmd.args(["-D", &data, "-m", "immediate", "-w", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_mid_export() {
    let mut pg = OwnCluster::start().await;
    let app = TestApp::spawn_with(Options { members: 15_000, server: Some(pg.url()), ..Default::default() }).await;
    let id = trigger(&app).await;
    app.wait_for_status(&id, "running", WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg.restart().await;
    let run = assert_clean(&app, &id).await;
    println!("after a PostgreSQL restart the run ended {}: {:?}", run.status, run.error);
    next_export_works(&app).await;
}

/// The pool does not ping a connection in constant use (one round trip less per
/// query), but one left idle is pinged before it is handed out: after PostgreSQL
/// restarts under a pool full of dead connections, no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_postgresql_restart_no_request_fails() {
    let mut pg = OwnCluster::start().await;
    // No workers: they too would take (and drop) the dead connections.
    let options = Options { members: 10, workers: false, server: Some(pg.url()), ..Default::default() };
    let app = TestApp::spawn_with(options).await;
    let admin = app.login("admin@acme.test").await;
    let page = "/orgs/acme/exports/history";
    // Open several connections, so that several are dead after the restart.
    let answers = futures::future::join_all((0..8).map(|_| admin.htmx_get(page))).await;
    assert!(answers.iter().all(|r| r.status() == 200));
    let open = app.pool().size();
    assert!(open >= 4, "the pool holds several connections: {open}");
    pg.restart().await;
    assert!(app.pool().num_idle() >= 4, "the dead connections are still in the pool");
    tokio::time::sleep(data_export::db::PING_IF_IDLE_FOR + Duration::from_millis(200)).await;
    for i in 0..(2 * open) {
        let resp = admin.htmx_get(page).await;
        assert_eq!(resp.status(), 200, "request {i} after the restart: {}", resp.text().await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_serve_processes_and_one_worker_share_the_database() {
    use data_export::startup::Application;
    // serve #1 (this TestApp, its workers off), serve #2 (a second web app on its
    // own pool), and a separate `worker` process.
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let second = app.second_process().await;
    let web2 = Application::build(second.clone(), "127.0.0.1:0".parse().unwrap(), None).await.unwrap();
    let addr2 = format!("http://127.0.0.1:{}", web2.port());
    tokio::spawn(web2.run_until_stopped(app.stop.clone()));
    let mut worker = app
        .command()
        .arg("worker")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    let token = app.token("admin@acme.test").await;
    let client = app.client();
    let triggers = (0..20).map(|i| {
        let base = if i % 2 == 0 { app.addr.clone() } else { addr2.clone() };
        let (client, token) = (client.clone(), token.clone());
        async move { client.post(format!("{base}/api/v1/orgs/acme/exports")).bearer_auth(token).send().await.unwrap() }
    });
    let answers = futures::future::join_all(triggers).await;
    let accepted: Vec<_> = answers.iter().filter(|r| r.status() == 202).collect();
    let conflicts = answers.iter().filter(|r| r.status() == 409).count();
    assert_eq!((accepted.len(), conflicts), (1, 19), "{:?}", answers.iter().map(|r| r.status()).collect::<Vec<_>>());
    let (runs_n,): (i64,) = sqlx::query_as("select count(*) from export_runs").fetch_one(app.pool()).await.unwrap();
    assert_eq!(runs_n, 1);
    let id: String =
        sqlx::query_as::<_, (String,)>("select id from export_runs").fetch_one(app.pool()).await.unwrap().0;
    let run = assert_clean(&app, &id).await;
    assert_eq!(run.status, "completed", "the worker process ran it: {:?}", run.error);

    // A schedule slot fired by both serve processes (and the worker's own loop) at
    // once runs exactly once.
    sqlx::query("update platform_settings set schedule_since = now() - interval '2 days'")
        .execute(app.pool())
        .await
        .unwrap();
    let now = chrono::Utc::now();
    let (a, b) = tokio::join!(
        data_export::platform::scheduler::tick(&app.state, now),
        data_export::platform::scheduler::tick(&second, now)
    );
    a.unwrap();
    b.unwrap();
    let started = std::time::Instant::now();
    loop {
        let (scheduled, active): (i64, i64) = sqlx::query_as(
            "select count(*) filter (where trigger = 'scheduled'),
                    count(*) filter (where status in ('pending', 'running'))
             from export_runs",
        )
        .fetch_one(app.pool())
        .await
        .unwrap();
        if scheduled == 2 && active == 0 {
            break;
        }
        assert!(started.elapsed() < WAIT, "{scheduled} scheduled runs, {active} active");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (slots,): (i64,) = sqlx::query_as("select count(*) from schedule_slots where kind = 'export'")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(slots, 1, "one slot claimed");
    let per_org: Vec<(String, i64)> = sqlx::query_as(
        "select o.slug, count(*) from export_runs r join organizations o on o.id = r.org_id
         where r.trigger = 'scheduled' and r.status = 'completed' group by o.slug order by o.slug",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    assert_eq!(per_org, vec![("acme".to_string(), 1), ("globex".to_string(), 1)]);
    worker.kill().unwrap();
    worker.wait().unwrap();
}

/// What wakes a queue's worker when a job is pushed (`jobs::wake::inserts`): a job
/// pushed onto its queue wakes it and one pushed onto another queue does not; a
/// listener whose connection is lost listens again; and while the database cannot
/// be reached it waits between attempts. (On sqlx 0.9.1, apalis' own listener
/// retried a connect that failed at once with no pause: a worker process took a
/// whole core while its database's unix socket was gone.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_job_wakes_its_queue_and_an_unreachable_database_is_retried_without_spinning() {
    use data_export::{jobs, mail::MailJob, webhooks::delivery::DeliveryJob};
    use futures::{StreamExt, stream::BoxStream};

    /// The pid of a backend of this database listening for new jobs, other than
    /// `not`, once there is one. The stream is polled meanwhile (it connects and
    /// listens only while polled), and must not be woken.
    async fn listening(pool: &sqlx::PgPool, wake: &mut BoxStream<'static, ()>, not: Option<i32>) -> i32 {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            assert!(tokio::time::timeout(Duration::from_millis(100), wake.next()).await.is_err(), "woken with no job");
            let pid: Option<i32> = sqlx::query_scalar(
                "select pid from pg_stat_activity
                 where datname = current_database() and query like 'LISTEN %' and pid is distinct from $1 limit 1",
            )
            .bind(not)
            .fetch_optional(pool)
            .await
            .unwrap();
            if let Some(pid) = pid {
                return pid;
            }
            assert!(std::time::Instant::now() < deadline, "nothing listened within 10 s");
        }
    }

    let (pool, _) = fresh_db().await;
    let mut wake = jobs::wake::inserts(pool.clone(), <MailJob as jobs::Job>::QUEUE.to_string());
    let first = listening(&pool, &mut wake, None).await;
    let mut conn = pool.acquire().await.unwrap();
    jobs::push(&mut conn, ulid::Ulid::generate(), &DeliveryJob { delivery_id: "d".into() }, 1).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), wake.next()).await.is_err(),
        "woken by another queue's job"
    );
    jobs::push(&mut conn, ulid::Ulid::generate(), &MailJob { message_id: "m".into() }, 1).await.unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(5), wake.next()).await;
    assert_eq!(woken.expect("a job on its queue wakes it within 5 s"), Some(()));

    // The listener's connection is cut: it listens again, and is woken again.
    sqlx::query("select pg_terminate_backend($1)").bind(first).execute(&pool).await.unwrap();
    listening(&pool, &mut wake, Some(first)).await;
    jobs::push(&mut conn, ulid::Ulid::generate(), &MailJob { message_id: "m2".into() }, 1).await.unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(5), wake.next()).await;
    assert_eq!(woken.expect("after listening again, a job wakes it within 5 s"), Some(()));
    drop(conn);

    // A socket directory that does not exist: every connect fails at once, as when
    // the server's unix socket is gone during a restart. The stream runs alone on a
    // thread of its own for 2 s, and that thread's CPU time is measured.
    let gone = sqlx::postgres::PgPoolOptions::new().acquire_timeout(Duration::from_secs(1)).connect_lazy_with(
        sqlx::postgres::PgConnectOptions::new().socket("/nonexistent-dx-socket-dir").username("postgres"),
    );
    let ticks = std::thread::spawn(move || {
        // utime + stime of this thread, in clock ticks (1/100 s).
        let cpu = || {
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            let fields: Vec<u64> = stat
                .rsplit_once(')')
                .unwrap()
                .1
                .split_whitespace()
                .skip(11)
                .take(2)
                .map(|f| f.parse().unwrap())
                .collect();
            fields[0] + fields[1]
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let before = cpu();
        runtime.block_on(async {
            let mut wake = jobs::wake::inserts(gone, <MailJob as jobs::Job>::QUEUE.to_string());
            assert!(tokio::time::timeout(Duration::from_secs(2), wake.next()).await.is_err(), "woken with no database");
        });
        cpu() - before
    })
    .join()
    .unwrap();
    assert!(ticks < 20, "retrying an unreachable database for 2 s took {ticks} ticks (1/100 s) of CPU");
}

/// A TCP relay to PostgreSQL that can go silent: while frozen it passes nothing on
/// in either direction and closes nothing, as a network that drops packets does.
struct SilentRelay {
    addr: std::net::SocketAddr,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SilentRelay {
    async fn start(upstream: String) -> Self {
        use std::sync::{Arc, atomic::AtomicBool};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let gate = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, gate) = (upstream.clone(), gate.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                    let (c_read, c_write) = client.into_split();
                    let (s_read, s_write) = server.into_split();
                    tokio::join!(pass(c_read, s_write, gate.clone()), pass(s_read, c_write, gate));
                });
            }
        });
        Self { addr, frozen }
    }

    fn freeze(&self, on: bool) {
        self.frozen.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, holding what it read while `gate` is closed.
async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    gate: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while gate.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A listener with a heartbeat (the session cache's, `db::listen`) whose connection
/// goes silent, as one a network drops without a word does, counts as lost within
/// its heartbeat and the wait for it, and listens again once the way is clear;
/// heartbeats, its own and others', are never yielded as notifications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_whose_connection_goes_silent_counts_as_lost_and_listens_again() {
    use data_export::db::listen::{self, BEAT_WAIT, Heard};
    use futures::StreamExt;
    const CHANNEL: &str = "dx_test_silence";
    let (pool, name) = fresh_db().await;
    let url = url::Url::parse(&server_url()).unwrap();
    let relay = SilentRelay::start(format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432))).await;
    let via_relay = sqlx::postgres::PgPoolOptions::new().acquire_timeout(Duration::from_secs(2)).connect_lazy_with(
        data_export::db::parse_url(&server_url()).unwrap().host("127.0.0.1").port(relay.addr.port()).database(&name),
    );
    let beat = Duration::from_millis(300);
    let mut heard = listen::notifications(via_relay, CHANNEL, "test", Some(beat));
    async fn next(heard: &mut futures::stream::BoxStream<'static, Heard>, within: Duration) -> Option<Heard> {
        tokio::time::timeout(within, heard.next()).await.ok().flatten()
    }
    assert_eq!(next(&mut heard, Duration::from_secs(10)).await, Some(Heard::Listening));
    sqlx::query("select pg_notify($1, 'hello')").bind(CHANNEL).execute(&pool).await.unwrap();
    assert_eq!(next(&mut heard, Duration::from_secs(5)).await, Some(Heard::Message("hello".into())));
    // Quiet for several heartbeats (and another listener's heartbeat on the channel):
    // nothing is yielded, and it does not count itself lost.
    sqlx::query("select pg_notify($1, 'heartbeat:someone-else:1')").bind(CHANNEL).execute(&pool).await.unwrap();
    assert_eq!(next(&mut heard, beat * 5).await, None, "heartbeats are not notifications");

    relay.freeze(true);
    let frozen_at = std::time::Instant::now();
    assert_eq!(next(&mut heard, Duration::from_secs(10)).await, Some(Heard::Lost), "a silent connection is lost");
    let took = frozen_at.elapsed();
    // At most a heartbeat's wait and the wait for its answer, with room for a busy machine.
    assert!(took <= beat + BEAT_WAIT + Duration::from_secs(2), "noticed after {took:?}");
    relay.freeze(false);
    assert_eq!(next(&mut heard, Duration::from_secs(10)).await, Some(Heard::Listening), "listens again");
    sqlx::query("select pg_notify($1, 'again')").bind(CHANNEL).execute(&pool).await.unwrap();
    assert_eq!(next(&mut heard, Duration::from_secs(5)).await, Some(Heard::Message("again".into())));
    println!("a silent listener counted lost after {} ms", took.as_millis());
}
