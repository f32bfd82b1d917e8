//! Platform health (issue 30): stuck runs failed by housekeeping, cancel, every
//! org's state in the list and its API at 1,000+ orgs, Verify per org as a job,
//! buckets that are not ours, the scheduler's retries, the manual-export quota,
//! polls that stop, the health mails and `/metrics`.

use std::time::{Duration, Instant};

use data_export::{config::Config, exports::runs, startup};
use reqwest::StatusCode;

use crate::helpers::{Fault, Options, TestApp, api};

const WAIT: Duration = Duration::from_secs(60);

/// Inserts a run of `slug` in `status` with no job behind it (what a worker that
/// lost its job, or a job removed by hand, leaves).
async fn plant_run(app: &TestApp, slug: &str, status: &str) -> String {
    let id = ulid::Ulid::generate().to_string();
    sqlx::query(
        "insert into export_runs (id, org_id, status, trigger, started_at, progress_at)
         select $1, id, $3, 'manual', case when $3 = 'running' then now() end, case when $3 = 'running' then now() end
         from organizations where slug = $2",
    )
    .bind(&id)
    .bind(slug)
    .bind(status)
    .execute(app.pool())
    .await
    .unwrap();
    id
}

async fn state_of(app: &TestApp, token: &str, slug: &str) -> serde_json::Value {
    let list: serde_json::Value =
        api(app, token).get(&format!("/platform/orgs?q={slug}&limit=500")).await.json().await.unwrap();
    list.as_array().unwrap().iter().find(|o| o["slug"] == slug).cloned().unwrap_or_else(|| panic!("{slug} listed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_no_job_holds_is_stuck_then_failed_by_housekeeping_and_the_org_can_export_again() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let admin = api(&app, &app.token("admin@acme.test").await);
    let platform = app.token("platform@example.test").await;
    let planted = plant_run(&app, "acme", "running").await;
    // Blocked: the one-active-export rule holds the org.
    assert_eq!(admin.post("/orgs/acme/exports").await.status(), 409);
    let acme = state_of(&app, &platform, "acme").await;
    assert_eq!(acme["state"], "stuck", "{acme}");
    assert_eq!(acme["active_run"]["id"], planted.as_str());

    startup::health_tick(&app.state).await;
    let run = runs::get_any(app.pool(), &planted).await.unwrap().unwrap();
    assert_eq!(run.status.as_str(), "failed");
    assert!(run.error.as_deref().unwrap().contains("no worker job was left"), "{:?}", run.error);
    let audits = app.audits("export.failed").await;
    assert!(audits.iter().any(|(_, _, target, _)| *target == format!("export:{planted}")), "{audits:?}");
    // Free again.
    assert_eq!(admin.post("/orgs/acme/exports").await.status(), 202);
    let acme = state_of(&app, &platform, "acme").await;
    assert_eq!(acme["consecutive_failures"], 1, "{acme}");
    assert!(acme["last_failure_reason"].as_str().unwrap().contains("stopped"), "{acme}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_job_ended_or_whose_progress_stands_still_is_failed_and_a_live_one_is_not() {
    fn config(c: &mut Config) {
        c.stuck_run_secs = 60;
    }
    let app = TestApp::spawn_with(Options { workers: false, config: Some(config), ..Default::default() }).await;
    let admin = api(&app, &app.token("admin@acme.test").await);
    let globex = api(&app, &app.token("admin@globex.test").await);
    // acme: a run whose job is done (a worker that ended it without ending the run).
    let r = admin.post("/orgs/acme/exports").await.json::<serde_json::Value>().await.unwrap();
    let ended = r["id"].as_str().unwrap().to_string();
    sqlx::query("update apalis.jobs set status = 'Done' where id = $1").bind(&ended).execute(app.pool()).await.unwrap();
    // globex: running, with a job, progress two minutes old.
    let r = globex.post("/orgs/globex/exports").await.json::<serde_json::Value>().await.unwrap();
    let still = r["id"].as_str().unwrap().to_string();
    runs::start(app.pool(), &still, 1).await.unwrap().unwrap();
    sqlx::query("update export_runs set progress_at = now() - interval '2 minutes' where id = $1")
        .bind(&still)
        .execute(app.pool())
        .await
        .unwrap();
    // A third org's pending run with its job waiting is healthy.
    sqlx::query("insert into organizations (slug, name, bucket) values ('third', 'Third', 'org-third')")
        .execute(app.pool())
        .await
        .unwrap();
    let healthy = {
        let org_id = app.org_id("third").await;
        data_export::exports::start::create_manual_unattributed(app.pool(), org_id, 3).await.unwrap().id
    };

    let failed = data_export::exports::stuck::fail_stuck(&app.state).await.unwrap();
    assert!(failed.contains(&ended) && failed.contains(&still), "{failed:?}");
    assert!(!failed.contains(&healthy), "a pending run with its job is not stuck");
    let pool = app.pool().clone();
    let why = |id: String| {
        let pool = pool.clone();
        async move { runs::get_any(&pool, &id).await.unwrap().unwrap().error.unwrap() }
    };
    assert!(why(ended).await.contains("ended without finishing"));
    assert!(why(still.clone()).await.contains("no progress for 1 minutes"));
    assert_eq!(runs::get_any(app.pool(), &healthy).await.unwrap().unwrap().status.as_str(), "pending");
    // Nothing twice.
    assert!(data_export::exports::stuck::fail_stuck(&app.state).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_admin_cancels_a_pending_export_in_the_history_and_through_the_api() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let admin = api(&app, &app.token("admin@acme.test").await);
    let id = admin.post("/orgs/acme/exports").await.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Another org's admin cannot see it; a member may not.
    let other = api(&app, &app.token("admin@globex.test").await);
    assert_eq!(other.post(&format!("/orgs/globex/exports/{id}/cancel")).await.status(), 404);
    let r = admin.post(&format!("/orgs/acme/exports/{id}/cancel")).await;
    assert_eq!(r.status(), 200);
    let run: serde_json::Value = r.json().await.unwrap();
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"], "Cancelled by Ada Acme");
    let audits = app.audits("export.cancelled").await;
    assert_eq!(audits.len(), 1, "{audits:?}");
    assert!(audits[0].1.is_some(), "in the admin's name");
    // Finished: nothing to cancel.
    let again = admin.post(&format!("/orgs/acme/exports/{id}/cancel")).await;
    assert_eq!(again.status(), 409);
    // In the history: the pending row has Cancel; pressing it ends the run.
    let s = app.login("admin@acme.test").await;
    let frag = s.htmx_post("/orgs/acme/exports").await.text().await.unwrap();
    let second = frag.split("data-export-id=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let cancel = format!("/orgs/acme/exports/{second}/cancel");
    assert!(frag.contains(&cancel), "the pending row offers Cancel");
    let answer = s.htmx_post(&cancel).await;
    assert_eq!(answer.status(), 200);
    let body = answer.text().await.unwrap();
    assert!(body.contains("The export was cancelled.") && body.contains("Cancelled by Ada Acme"), "{body}");
    assert_eq!(runs::get_any(app.pool(), &second).await.unwrap().unwrap().status.as_str(), "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writing_job_notices_its_run_was_cancelled_and_stops() {
    use data_export::exports::job::save_progress;
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let admin = api(&app, &app.token("admin@acme.test").await);
    let id = admin.post("/orgs/acme/exports").await.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    runs::start(app.pool(), &id, 1).await.unwrap().unwrap();
    let (rows, watcher) = tokio::sync::watch::channel(0i64);
    let (done, lost) = (tokio_util::sync::CancellationToken::new(), tokio_util::sync::CancellationToken::new());
    let saver = tokio::spawn(save_progress(app.state.clone(), id.clone(), 1, watcher, done.clone(), lost.clone()));
    rows.send_replace(10);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!lost.is_cancelled(), "held while running");
    assert_eq!(admin.post(&format!("/orgs/acme/exports/{id}/cancel")).await.status(), 200);
    rows.send_replace(20);
    tokio::time::timeout(Duration::from_secs(10), lost.cancelled()).await.expect("the write is told to stop");
    tokio::time::timeout(WAIT, saver).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_orgs_are_listed_worst_first_with_their_states_and_verify_checks_each_bucket_as_a_job() {
    let app = TestApp::spawn_with(Options { members: 20, ..Default::default() }).await;
    let report = data_export::seed::tenants(app.pool(), &app.state.storage, 1000).await.unwrap();
    assert_eq!(report.created, 1000);
    let again = data_export::seed::tenants(app.pool(), &app.state.storage, 1000).await.unwrap();
    assert_eq!((again.created, again.existing), (0, 1000), "seeding again adds none");
    let (n,): (i64,) = sqlx::query_as(
        "select count(*) from memberships m join organizations o on o.id = m.org_id
                                      where o.slug = 'tenant-7'",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(n, 10);
    let pool = app.pool();
    let sql = |q: &'static str| async move { sqlx::query(q).execute(pool).await.unwrap() };
    // One of each state.
    sql("update org_modules set enabled = false where module = 'data_export'
         and org_id = (select id from organizations where slug = 'tenant-1')")
    .await;
    plant_run(&app, "tenant-2", "pending").await;
    let failed = plant_run(&app, "tenant-3", "running").await;
    sqlx::query(
        "update export_runs set status = 'failed', finished_at = now(), error = 'the disk was full' where id = $1",
    )
    .bind(&failed)
    .execute(pool)
    .await
    .unwrap();
    for (slug, age) in [("tenant-4", "3 days"), ("tenant-5", "1 hour")] {
        let id = plant_run(&app, slug, "running").await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "update export_runs set status = 'completed', finished_at = now() - interval '{age}', object_key = 'k',
                    sha256 = 'x', size_bytes = 1234 where id = $1"
        )))
        .bind(&id)
        .execute(pool)
        .await
        .unwrap();
    }
    sql("update platform_settings set schedule_preset = 'daily_2am'").await;

    let token = app.token("platform@example.test").await;
    let platform = api(&app, &token);
    let started = Instant::now();
    let r = platform.get("/platform/orgs?limit=3").await;
    let took = started.elapsed();
    assert_eq!(r.status(), 200);
    let next = r.headers().get("link").expect("more remain").to_str().unwrap().to_string();
    let first: Vec<serde_json::Value> = r.json().await.unwrap();
    let states: Vec<(&str, &str)> =
        first.iter().map(|o| (o["slug"].as_str().unwrap(), o["state"].as_str().unwrap())).collect();
    assert_eq!(states, [("tenant-2", "stuck"), ("tenant-3", "failing"), ("tenant-4", "overdue")], "worst first");
    assert_eq!(first[1]["last_failure_reason"], "the disk was full");
    assert_eq!(first[1]["consecutive_failures"], 1);
    assert!(first[0]["active_run"]["id"].is_string());
    eprintln!("org list API, page of 3 at 1,002 orgs: {took:?}");
    // The next page starts where this one ended.
    let next_path = next.split(&format!("{}/api/v1", app.state.config.public_url)).nth(1).unwrap();
    let next_path = next_path.split('>').next().unwrap();
    let second: Vec<serde_json::Value> = platform.get(next_path).await.json().await.unwrap();
    assert_eq!(second.len(), 3);
    assert!(first.iter().all(|a| second.iter().all(|b| a["slug"] != b["slug"])), "no org twice");
    let ok = state_of(&app, &token, "tenant-5").await;
    assert_eq!((ok["state"].as_str(), ok["last_size_bytes"].as_i64()), (Some("ok"), Some(1234)));
    assert_eq!(state_of(&app, &token, "tenant-1").await["state"], "off");
    // Filters: by state, by text; bad ones refused.
    let never: Vec<serde_json::Value> =
        platform.get("/platform/orgs?state=never&limit=500").await.json().await.unwrap();
    assert_eq!(never.len(), 500);
    assert!(never.iter().all(|o| o["state"] == "never"));
    let found: Vec<serde_json::Value> = platform.get("/platform/orgs?q=TENANT-99").await.json().await.unwrap();
    assert_eq!(found.len(), 11, "tenant-99 and tenant-990 ... tenant-999");
    for bad in ["state=fine", "limit=0", "limit=501", "before=x", "q=%25%00"] {
        let r = platform.get(&format!("/platform/orgs?{bad}")).await;
        assert_eq!(r.status(), 400, "{bad}");
    }
    assert_eq!(api(&app, &app.token("admin@acme.test").await).get("/platform/orgs").await.status(), 403);

    // The page: 50 rows, counts, paging; the home page's counts.
    let s = app.login("platform@example.test").await;
    let started = Instant::now();
    let page = s.get("/platform/orgs").await;
    eprintln!("org list page at 1,002 orgs: {:?}", started.elapsed());
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert_eq!(page.matches("<tr data-org=").count(), 50);
    assert!(page.contains("id=\"orgs-next\""));
    let home = s.get("/").await.text().await.unwrap();
    assert!(home.contains("id=\"platform-health\"") && home.contains("need attention"), "{home}");
    assert!(home.contains("href=\"/platform/orgs?state=stuck\""));

    // Verify: answers at once, then checks each bucket in the background. One
    // broken bucket fails its org only.
    let broken = app.storage_dir.join("org-tenant-7");
    std::fs::remove_dir_all(&broken).unwrap();
    std::fs::write(&broken, b"not a bucket").unwrap();
    let started = Instant::now();
    let r = s.post_form("/platform/settings/backup/verify", &[]).await;
    eprintln!("platform Verify answered in {:?}", started.elapsed());
    assert_eq!(r.status(), 303);
    assert!(r.headers()["location"].to_str().unwrap().ends_with("done=verified"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = data_export::platform::buckets::latest(pool).await.unwrap().unwrap();
        if v.finished_at.is_some() {
            assert_eq!((v.checked, v.failed), (1002, 1), "{v:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the bucket checks did not finish: {v:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(data_export::settings::backup::is_ready(&app.state).await.unwrap(), "the platform stays verified");
    let t7 = state_of(&app, &token, "tenant-7").await;
    assert_eq!((t7["state"].as_str(), t7["bucket_state"].as_str()), (Some("failing"), Some("failing")), "{t7}");
    let settings = s.get("/platform/settings").await.text().await.unwrap();
    assert!(settings.contains("id=\"failing-buckets\"") && settings.contains("tenant-7"));
    // tenant-7's exports are refused with the reason; tenant-8's run.
    let t7_admin = data_export::auth::tokens::create(pool, "member1@tenant-7.test", "t").await.unwrap().unwrap().token;
    let r = api(&app, &t7_admin).post("/orgs/tenant-7/exports").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"], "bucket_failing");
    let t8_admin = data_export::auth::tokens::create(pool, "member1@tenant-8.test", "t").await.unwrap().unwrap().token;
    assert_eq!(api(&app, &t8_admin).post("/orgs/tenant-8/exports").await.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_exists_but_is_someone_elses_is_refused_never_counted_as_ours() {
    let app = TestApp::spawn_with(Options { workers: false, fault_proxy: true, ..Default::default() }).await;
    app.proxy.as_ref().unwrap().set(Fault::ForeignBuckets);
    let e = app.state.storage.ensure_bucket("org-taken").await.unwrap_err();
    assert!(format!("{e:#}").contains("belongs to another account"), "{e:#}");
    let e = app.state.storage.probe_bucket("org-taken").await.unwrap_err();
    assert!(format!("{e:#}").contains("belongs to another account"), "{e:#}");
    app.proxy.as_ref().unwrap().set(Fault::None);
    app.state.storage.ensure_bucket("org-taken").await.unwrap();

    // A foreign bucket that lets anyone in answers HeadBucket 200: only
    // S3_EXPECTED_BUCKET_OWNER tells it apart.
    app.state.storage.ensure_bucket("org-open").await.unwrap();
    app.proxy.as_ref().unwrap().set(Fault::OwnedBy("222222222222"));
    app.state.storage.ensure_bucket("org-open").await.expect("without an expected owner, it looks like ours");
    let mut settings = app.s3_settings.clone();
    settings.expected_bucket_owner = Some("111111111111".into());
    let ours = data_export::storage::Storage::new(&settings, "data-export-privacy", settings.endpoint.clone());
    let e = ours.ensure_bucket("org-open").await.unwrap_err();
    assert!(format!("{e:#}").contains("belongs to another account"), "{e:#}");
    let e = ours.probe_bucket("data-export-privacy").await.unwrap_err();
    assert!(format!("{e:#}").contains("belongs to another account"), "{e:#}");
    // Object calls carry it too.
    let e = ours.exists("data-export-privacy", "exports/x.json.gz").await.unwrap_err();
    assert!(format!("{e:#}").contains("cannot read"), "{e:#}");
    assert!(ours.delete("data-export-privacy", "exports/x.json.gz").await.is_err());
    // The right owner passes.
    settings.expected_bucket_owner = Some("222222222222".into());
    let right = data_export::storage::Storage::new(&settings, "data-export-privacy", settings.endpoint.clone());
    right.probe_bucket("data-export-privacy").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_prefix_names_the_org_buckets() {
    fn config(c: &mut Config) {
        c.bucket_prefix = "acct-".into();
    }
    let app = TestApp::spawn_with(Options { workers: false, config: Some(config), ..Default::default() }).await;
    let bucket: String =
        sqlx::query_scalar("select bucket from organizations where slug = 'acme'").fetch_one(app.pool()).await.unwrap();
    assert_eq!(bucket, "acct-acme");
    assert!(app.state.storage.bucket_exists("acct-acme").await.unwrap());
    for bad in ["Org-", "-x", "a_b", &"x".repeat(24), "xn--a", "data-"] {
        let e = Config::from_lookup(|k| (k == "BUCKET_PREFIX").then(|| bad.to_string()));
        let e = e.unwrap_err().to_string();
        assert!(e.contains("BUCKET_PREFIX"), "{bad:?}: {e}");
    }
    // Unset (or empty) is the default.
    let c = Config::from_lookup(|k| (k == "BUCKET_PREFIX").then(String::new)).unwrap();
    assert_eq!(c.bucket_prefix, "org-");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_leaves_retries_to_apalis_pushes_a_lost_slot_job_once_and_finishes_prune_slots() {
    let mut app = TestApp::spawn().await;
    let now = chrono::Utc::now();
    let tick = data_export::platform::scheduler::tick(&app.state, now).await.unwrap();
    let hour = tick.prune_slot.expect("the hour's prune is claimed");
    let job = |pool: &sqlx::PgPool| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (String, Option<chrono::DateTime<chrono::Utc>>)>(
                "select job_id, finished_at from schedule_slots where kind = 'prune' and slot = $1",
            )
            .bind(hour)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let deadline = Instant::now() + WAIT;
    while job(app.pool()).await.1.is_none() {
        assert!(Instant::now() < deadline, "the prune slot never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its job failed with attempts left: apalis retries it; the tick pushes nothing.
    let (first, _) = job(app.pool()).await;
    sqlx::query("update schedule_slots set finished_at = null where kind = 'prune' and slot = $1")
        .bind(hour)
        .execute(app.pool())
        .await
        .unwrap();
    app.stop_workers().await;
    sqlx::query("update apalis.jobs set status = 'Failed', attempts = 1, max_attempts = 3 where id = $1")
        .bind(&first)
        .execute(app.pool())
        .await
        .unwrap();
    data_export::platform::scheduler::tick(&app.state, now).await.unwrap();
    assert_eq!(job(app.pool()).await.0, first, "a job with retries left is apalis' to retry");
    // Failed for good: pushed again, once.
    sqlx::query("update apalis.jobs set attempts = 3 where id = $1").bind(&first).execute(app.pool()).await.unwrap();
    data_export::platform::scheduler::tick(&app.state, now).await.unwrap();
    let (second, _) = job(app.pool()).await;
    assert_ne!(second, first);
    sqlx::query("update apalis.jobs set status = 'Failed', attempts = 3, max_attempts = 3 where id = $1")
        .bind(&second)
        .execute(app.pool())
        .await
        .unwrap();
    for _ in 0..3 {
        data_export::platform::scheduler::tick(&app.state, now).await.unwrap();
    }
    assert_eq!(job(app.pool()).await.0, second, "one push per slot, not one per tick");
    let (pushed,): (i64,) = sqlx::query_as("select count(*) from apalis.jobs where job_type = 'pruner'")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(pushed, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_exports_past_the_daily_limit_get_429_with_retry_after_and_a_message() {
    fn config(c: &mut Config) {
        c.manual_exports_per_day = 2;
    }
    let app = TestApp::spawn_with(Options { config: Some(config), ..Default::default() }).await;
    let admin = api(&app, &app.token("admin@acme.test").await);
    for _ in 0..2 {
        let r = admin.post("/orgs/acme/exports").await;
        assert_eq!(r.status(), 202);
        let id = r.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string();
        app.wait_for_run(&id, WAIT).await;
    }
    let r = admin.post("/orgs/acme/exports").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((86_000..=86_400).contains(&wait), "{wait}");
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"], "quota_reached");
    let s = app.login("admin@acme.test").await;
    let r = s.htmx_post("/orgs/acme/exports").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    assert!(r.text().await.unwrap().contains("used up its manual exports"));
    // globex is not held by acme's count.
    assert_eq!(api(&app, &app.token("admin@globex.test").await).post("/orgs/globex/exports").await.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_with_an_expired_session_is_sent_to_sign_in_and_a_refused_poll_stops_and_says_why() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let s = app.login("admin@acme.test").await;
    let frag = s.htmx_post("/orgs/acme/exports").await.text().await.unwrap();
    let id = frag.split("data-export-id=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    // Demoted: the row's poll and the history's poll stop with the reason (286).
    let before = app.state.session_cache.epoch();
    sqlx::query(
        "update memberships set role = 'member' where user_id = (select id from users where email = 'admin@acme.test')",
    )
    .execute(app.pool())
    .await
    .unwrap();
    app.session_cache_emptied_since(before, "the demotion").await;
    let r = s.htmx_get(&format!("/orgs/acme/exports/{id}/row")).await;
    assert_eq!(r.status().as_u16(), 286);
    let body = r.text().await.unwrap();
    assert!(body.starts_with("<tr") && body.contains("stopped updating"), "{body}");
    let r = s
        .client
        .get(format!("{}/orgs/acme/exports/history?since=0", s.base))
        .header("hx-request", "true")
        .header("hx-target", "history")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 286);
    assert!(r.text().await.unwrap().contains("id=\"history\""));
    // Signed out elsewhere: the poll gets HX-Redirect to sign in, not the sign-in page.
    sqlx::query("delete from sessions").execute(app.pool()).await.unwrap();
    let anon = app.anonymous().await;
    let r = anon.htmx_get("/orgs/acme/exports/history?since=0").await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["hx-redirect"], "/login");
    assert!(r.text().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_admins_are_mailed_once_per_change_in_one_batch() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    plant_run(&app, "acme", "pending").await;
    let failed = plant_run(&app, "globex", "running").await;
    sqlx::query("update export_runs set status = 'failed', finished_at = now(), error = 'boom' where id = $1")
        .bind(&failed)
        .execute(app.pool())
        .await
        .unwrap();
    let mails = |app: &TestApp| {
        let pool = app.pool().clone();
        async move {
            sqlx::query_as::<_, (String, String)>(
                "select m.subject, m.body from mail_messages m join users u on u.id = m.user_id
                 where u.email = 'platform@example.test' and m.subject like 'Backups need attention%'",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(data_export::platform::notices::record(&app.state).await.unwrap(), 2);
    assert_eq!(data_export::platform::notices::record(&app.state).await.unwrap(), 0, "once per change");
    assert_eq!(data_export::platform::notices::mail_batch(&app.state).await.unwrap(), 2);
    let sent = mails(&app).await;
    assert_eq!(sent.len(), 1, "one mail for both");
    assert!(sent[0].1.contains("acme") && sent[0].1.contains("stuck") && sent[0].1.contains("globex"), "{}", sent[0].1);
    // A new change within 15 minutes waits for the next batch.
    sqlx::query("update organizations set bucket_state = 'failing', bucket_error = 'gone' where slug = 'acme'")
        .execute(app.pool())
        .await
        .unwrap();
    startup::health_tick(&app.state).await;
    let (waiting,): (i64,) = sqlx::query_as("select count(*) from health_notices where mailed_at is null")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(waiting, 1, "acme's change to failing waits for the batch");
    assert_eq!(mails(&app).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_only_with_the_token() {
    fn config(c: &mut Config) {
        c.metrics_token = Some("s3cret-metrics".into());
    }
    let app = TestApp::spawn_with(Options { workers: false, config: Some(config), ..Default::default() }).await;
    plant_run(&app, "globex", "pending").await;
    // A pending export with its job waiting (no workers run).
    assert_eq!(api(&app, &app.token("admin@acme.test").await).post("/orgs/acme/exports").await.status(), 202);
    let client = app.client();
    let r = client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client.get(app.url("/metrics")).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client.get(app.url("/metrics")).bearer_auth("s3cret-metrics").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = r.text().await.unwrap();
    for line in [
        "data_export_orgs{state=\"stuck\"} 1",
        "data_export_orgs{state=\"never\"} 1",
        "data_export_storage_verified 1",
        "data_export_export_duration_seconds_count 0",
        "data_export_jobs{queue=\"exports\",status=\"Pending\"}",
        "# TYPE data_export_export_duration_seconds histogram",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}
