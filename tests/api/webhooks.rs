//! Webhooks end to end: a real HTTP receiver (scripts/webhook-receiver.py, the one
//! docs/org-admins.md shows, on Python's standard library) checks each signature with its
//! own implementation of the Standard Webhooks spec. Retries after failures, a
//! target that hangs, giving up, refused private addresses, no redirects, secret
//! rotation, and deleting an endpoint while a delivery waits for its retry.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use data_export::config::Config;
use serde_json::{Value, json};

use crate::helpers::*;

/// The receiver script, run as a child process.
struct Receiver {
    child: Child,
    port: u16,
    log: PathBuf,
    secrets: PathBuf,
}

impl Receiver {
    fn start(dir: &Path, name: &str, extra: &[&str]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.join(format!("{name}.jsonl"));
        let secrets = dir.join(format!("{name}.secrets"));
        let mut child = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/webhook-receiver.py"))
            .args(["--port", "0", "--log"])
            .arg(&log)
            .arg("--secrets-file")
            .arg(&secrets)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs the webhook receiver");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        let port = first.trim().strip_prefix("listening on ").expect("the receiver prints its port").parse().unwrap();
        Self { child, port, log, secrets }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn set_secrets(&self, secrets: &[&str]) {
        std::fs::write(&self.secrets, secrets.join("\n")).unwrap();
    }

    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    async fn wait_for(&self, n: usize, within: Duration) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let got = self.requests();
            if got.len() >= n {
                return got;
            }
            assert!(started.elapsed() < within, "{} of {n} requests reached the receiver: {got:?}", got.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Private targets allowed (the receiver is on loopback), a 2 s timeout, and three
/// quick retries.
fn fast_private(c: &mut Config) {
    c.webhooks.allow_private = true;
    c.webhooks.timeout = Duration::from_secs(2);
    c.webhooks.retry_schedule = vec![Duration::from_secs(1); 3];
}

async fn app_with(config: fn(&mut Config)) -> TestApp {
    TestApp::spawn_with(Options { members: 50, config: Some(config), ..Default::default() }).await
}

/// Adds an endpoint through the API; returns (id, secret).
async fn add_endpoint(api: &Api, url: &str) -> (String, String) {
    let r = api.post_json("/orgs/acme/webhooks", &json!({ "url": url })).await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["url"], url);
    (body["id"].as_str().unwrap().to_string(), body["secret"].as_str().unwrap().to_string())
}

/// The delivery rows of an endpoint: (status, attempts).
async fn deliveries(app: &TestApp, endpoint: &str) -> Vec<(String, i32)> {
    sqlx::query_as("select status, attempts from webhook_deliveries where endpoint_id = $1 order by created_at")
        .bind(endpoint)
        .fetch_all(app.pool())
        .await
        .unwrap()
}

async fn wait_for_delivery(app: &TestApp, endpoint: &str, status: &str, within: Duration) -> i32 {
    let started = Instant::now();
    loop {
        if let Some((_, attempts)) = deliveries(app, endpoint).await.into_iter().find(|(s, _)| s == status) {
            return attempts;
        }
        assert!(started.elapsed() < within, "no {status} delivery: {:?}", deliveries(app, endpoint).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_event_is_signed_and_checked_by_an_independent_receiver() {
    let app = app_with(fast_private).await;
    let api = api(&app, &app.token("admin@acme.test").await);
    let receiver = Receiver::start(&app.storage_dir.join("receiver"), "signed", &[]);
    let (id, secret) = add_endpoint(&api, &receiver.url()).await;
    assert!(secret.starts_with("whsec_") && secret.len() > 40, "{secret}");
    receiver.set_secrets(&[&secret]);

    // The list never shows a secret.
    let listed = api.get("/orgs/acme/webhooks").await.text().await.unwrap();
    assert!(listed.contains(&id) && !listed.contains(&secret) && !listed.contains("whsec_"), "{listed}");

    let created: Value = api.post("/orgs/acme/exports").await.json().await.unwrap();
    let run = created["id"].as_str().unwrap();
    app.wait_for_status(run, "completed", Duration::from_secs(60)).await;
    let got = receiver.wait_for(1, Duration::from_secs(30)).await;
    let r = &got[0];
    assert_eq!(r["valid"], true, "the receiver's own HMAC check passed: {r}");
    assert_eq!(r["content_type"], "application/json");
    assert!(r["id"].as_str().unwrap().starts_with("msg_"));
    let event = &r["event"];
    assert_eq!(event["type"], "export.completed");
    assert_eq!(event["data"]["id"], run);
    assert_eq!(event["data"]["status"], "completed");
    assert_eq!(event["data"]["org"], "acme");
    assert!(event["data"]["sha256"].as_str().unwrap().len() == 64);
    let text = event.to_string();
    assert!(!text.contains("X-Amz") && !text.contains("error_detail"), "no presigned URL, no detail: {text}");

    // The attempt is logged, in the API and on the page.
    let attempts: Vec<Value> = api.get(&format!("/orgs/acme/webhooks/{id}/attempts")).await.json().await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (attempts[0]["status_code"].as_i64(), attempts[0]["delivery_status"].as_str()),
        (Some(204), Some("delivered"))
    );
    let s = app.login("admin@acme.test").await;
    let page = s.get("/orgs/acme/settings/notifications").await.text().await.unwrap();
    assert!(page.contains(&receiver.url()) && page.contains("data-result=\"ok\""), "{page}");
    assert!(!page.contains(&secret), "the page never shows a secret again");

    // A failed export is announced too.
    let failed = ulid::Ulid::generate().to_string();
    sqlx::query("insert into export_runs (id, org_id, status, trigger) values ($1, $2, 'running', 'manual')")
        .bind(&failed)
        .bind(app.org_id("acme").await)
        .execute(app.pool())
        .await
        .unwrap();
    let failure = data_export::snapshot::job::Failure::plain("The export failed: a test said so.");
    assert!(
        data_export::exports::runs::fail(app.pool(), &app.state.config.public_url, &failed, None, &failure)
            .await
            .unwrap()
    );
    let got = receiver.wait_for(2, Duration::from_secs(30)).await;
    let event = &got[1]["event"];
    assert_eq!((event["type"].as_str(), event["data"]["id"].as_str()), (Some("export.failed"), Some(failed.as_str())));
    assert_eq!(event["data"]["error"], "The export failed: a test said so.");
    assert_eq!(got[1]["valid"], true);

    let audits = app.audits("webhook.created").await;
    assert_eq!(audits.len(), 1);
    assert_eq!(audits[0].0, Some(app.org_id("acme").await));
    println!("webhooks: export.completed and export.failed delivered, both signatures verified by the receiver");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_until_success_and_a_hanging_target_gives_up() {
    let app = app_with(fast_private).await;
    let api = api(&app, &app.token("admin@acme.test").await);
    let dir = app.storage_dir.join("receiver");

    // Two 500s, then a success: three attempts, one delivery of an export's event.
    let flaky = Receiver::start(&dir, "flaky", &["--fail-first", "2"]);
    let (id, secret) = add_endpoint(&api, &flaky.url()).await;
    flaky.set_secrets(&[&secret]);
    export_and_wait(&app, &api).await;
    assert_eq!(wait_for_delivery(&app, &id, "delivered", Duration::from_secs(30)).await, 3);
    let got = flaky.requests();
    assert_eq!(got.iter().map(|r| r["status"].as_i64().unwrap()).collect::<Vec<_>>(), [500, 500, 204]);
    assert!(got.iter().all(|r| r["valid"] == true && r["event"]["type"] == "export.completed"));
    let ids: std::collections::HashSet<&str> = got.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "every attempt carries the same webhook-id");
    let attempts: Vec<Value> = api.get(&format!("/orgs/acme/webhooks/{id}/attempts")).await.json().await.unwrap();
    let codes: Vec<i64> = attempts.iter().map(|a| a["status_code"].as_i64().unwrap()).collect();
    assert_eq!(codes, [204, 500, 500], "the log, newest first");

    // A target that accepts and never answers: each attempt ends at the 2 s timeout;
    // after the last retry the delivery fails and the endpoint is marked failing.
    let hanging = Receiver::start(&dir, "hanging", &["--hang"]);
    let (hid, hsecret) = add_endpoint(&api, &hanging.url()).await;
    let started = Instant::now();
    export_and_wait(&app, &api).await;
    assert_eq!(wait_for_delivery(&app, &hid, "failed", Duration::from_secs(60)).await, 4);
    let took = started.elapsed();
    let attempts: Vec<Value> = api.get(&format!("/orgs/acme/webhooks/{hid}/attempts")).await.json().await.unwrap();
    assert_eq!(attempts.len(), 4);
    for a in &attempts {
        assert!(a["status_code"].is_null());
        assert!(a["error"].as_str().unwrap().contains("no answer within 2 s"), "{a}");
        assert!((1900..5000).contains(&a["duration_ms"].as_i64().unwrap()), "{a}");
    }
    let listed: Vec<Value> = api.get("/orgs/acme/webhooks").await.json().await.unwrap();
    let failing = listed.iter().find(|e| e["id"] == hid.as_str()).unwrap();
    assert!(failing["failing_since"].is_string(), "{failing}");
    assert!(listed.iter().find(|e| e["id"] == id.as_str()).unwrap()["failing_since"].is_null());
    let s = app.login("admin@acme.test").await;
    assert!(
        s.get("/orgs/acme/settings/notifications")
            .await
            .text()
            .await
            .unwrap()
            .contains("data-endpoint-status=\"failing\"")
    );
    // The org's admin is told once, by email, with a link to the attempts.
    let mails: Vec<(String, String)> = sqlx::query_as(
        "select m.subject, m.body from mail_messages m join users u on u.id = m.user_id
         where m.kind = 'webhook' and u.email = 'admin@acme.test'",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0].1.contains(&format!("http://127.0.0.1:{}/…", hanging.port))
            && mails[0].1.contains("/orgs/acme/settings/notifications"),
        "{:?}",
        mails[0]
    );
    assert!(mails[0].1.contains("after 4 attempts"));

    // The same endpoint succeeding again clears the mark.
    flaky.set_secrets(&[&secret, &hsecret]);
    sqlx::query("update webhook_endpoints set url = $2 where id = $1")
        .bind(&hid)
        .bind(flaky.url())
        .execute(app.pool())
        .await
        .unwrap();
    api.post(&format!("/orgs/acme/webhooks/{hid}/test")).await;
    let started_again = Instant::now();
    loop {
        let listed: Vec<Value> = api.get("/orgs/acme/webhooks").await.json().await.unwrap();
        if listed.iter().find(|e| e["id"] == hid.as_str()).unwrap()["failing_since"].is_null() {
            break;
        }
        assert!(started_again.elapsed() < Duration::from_secs(30), "a success clears failing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "webhook retries: 500, 500, 204 delivered on the 3rd attempt; a hanging target: 4 attempts of 2 s, failed after {:.1} s",
        took.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_targets_are_refused_when_saved_and_when_resolved_and_redirects_are_not_followed() {
    // The product's default: no private targets.
    fn fast(c: &mut Config) {
        c.webhooks.timeout = Duration::from_secs(2);
        c.webhooks.retry_schedule = vec![];
    }
    let app = app_with(fast).await;
    let api = api(&app, &app.token("admin@acme.test").await);
    let receiver = Receiver::start(&app.storage_dir.join("receiver"), "private", &[]);
    for url in [
        receiver.url(),
        format!("http://[::1]:{}/", receiver.port),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        format!("http://localhost:{}/", receiver.port),
        "http://10.0.0.8/hook".to_string(),
        "ftp://example.com/".to_string(),
    ] {
        let r = api.post_json("/orgs/acme/webhooks", &json!({ "url": url })).await;
        assert_eq!(r.status(), 400, "{url}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"] == "bad_request" && body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    }
    for bad in [json!({}), json!({ "url": 5 }), json!({ "url": "https://a.example/", "events": ["x"] })] {
        assert_eq!(api.post_json("/orgs/acme/webhooks", &bad).await.status(), 400, "{bad}");
    }
    let (n,): (i64,) = sqlx::query_as("select count(*) from webhook_endpoints").fetch_one(app.pool()).await.unwrap();
    assert_eq!(n, 0, "nothing refused was saved");

    // A name that resolves to loopback when it is delivered (as after a DNS change),
    // and a literal address put in behind the form's back: both refused at delivery.
    let (id, _) = add_endpoint(&api, "https://hooks.example.com/in").await;
    for url in [format!("http://localhost:{}/hook", receiver.port), format!("http://[::1]:{}/hook", receiver.port)] {
        sqlx::query("update webhook_endpoints set url = $2 where id = $1")
            .bind(&id)
            .bind(&url)
            .execute(app.pool())
            .await
            .unwrap();
        let before = deliveries(&app, &id).await.len();
        api.post(&format!("/orgs/acme/webhooks/{id}/test")).await;
        let started = Instant::now();
        while deliveries(&app, &id).await.iter().filter(|(s, _)| s == "failed").count() <= before {
            assert!(started.elapsed() < Duration::from_secs(20), "the delivery ends");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let attempts: Vec<Value> = api.get(&format!("/orgs/acme/webhooks/{id}/attempts")).await.json().await.unwrap();
        let error = attempts[0]["error"].as_str().unwrap();
        assert!(error.starts_with("refused: ") && error.contains("public address"), "{url}: {error}");
    }
    assert!(receiver.requests().is_empty(), "nothing reached the private address");

    // Redirects are not followed (here with private targets allowed, to reach the receiver).
    fn private(c: &mut Config) {
        c.webhooks.allow_private = true;
        c.webhooks.retry_schedule = vec![];
    }
    let app = app_with(private).await;
    let api = api_for(&app, "admin@acme.test").await;
    let redirecting = Receiver::start(&app.storage_dir.join("receiver"), "redirect", &["--status", "302"]);
    let (id, _) = add_endpoint(&api, &redirecting.url()).await;
    api.post(&format!("/orgs/acme/webhooks/{id}/test")).await;
    wait_for_delivery(&app, &id, "failed", Duration::from_secs(20)).await;
    let got = redirecting.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["path"], "/hook", "the redirect to /elsewhere was not followed");
    let attempts: Vec<Value> = api.get(&format!("/orgs/acme/webhooks/{id}/attempts")).await.json().await.unwrap();
    assert_eq!(attempts[0]["status_code"], 302);
    let listed: Vec<Value> = api.get("/orgs/acme/webhooks").await.json().await.unwrap();
    assert!(listed[0]["failing_since"].is_null(), "a failed test marks nothing: {listed:?}");
    let (mails,): (i64,) = sqlx::query_as("select count(*) from mail_messages where kind = 'webhook'")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(mails, 0, "and mails no one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_at_once_and_a_deleted_endpoint_gets_nothing_more() {
    fn slow_retries(c: &mut Config) {
        c.webhooks.allow_private = true;
        c.webhooks.timeout = Duration::from_secs(2);
        c.webhooks.retry_schedule = vec![Duration::from_secs(3); 3];
    }
    let app = app_with(slow_retries).await;
    let api = api(&app, &app.token("admin@acme.test").await);
    let dir = app.storage_dir.join("receiver");

    let receiver = Receiver::start(&dir, "rotate", &[]);
    let (id, old) = add_endpoint(&api, &receiver.url()).await;
    receiver.set_secrets(&[&old]);
    api.post(&format!("/orgs/acme/webhooks/{id}/test")).await;
    let got = receiver.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got[0]["verified_by"], 0);
    wait_for_delivery(&app, &id, "delivered", Duration::from_secs(20)).await;
    // One test event at a time per endpoint (each gets one attempt: here 2 s).
    let failing = Receiver::start(&dir, "slow", &["--hang"]);
    let (slow, _) = add_endpoint(&api, &failing.url()).await;
    assert_eq!(api.post(&format!("/orgs/acme/webhooks/{slow}/test")).await.status(), 202);
    assert_eq!(api.post(&format!("/orgs/acme/webhooks/{slow}/test")).await.status(), 409, "the first is still pending");
    assert_eq!(api.delete(&format!("/orgs/acme/webhooks/{slow}")).await.status(), 204);

    // The page's Rotate shows the new secret once; the old one no longer verifies.
    let s = app.login("admin@acme.test").await;
    let page = s.post_form(&format!("/orgs/acme/settings/notifications/{id}/rotate"), &[]).await;
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    let new = page.split("data-secret>").nth(1).and_then(|r| r.split('<').next()).unwrap().to_string();
    assert!(new.starts_with("whsec_") && new != old);
    receiver.set_secrets(&[&old, &new]);
    api.post(&format!("/orgs/acme/webhooks/{id}/test")).await;
    let got = receiver.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(got[1]["verified_by"], 1, "signed with the new secret only: {}", got[1]);
    assert_eq!(app.audits("webhook.rotated").await.len(), 1);

    // A delivery waiting for its retry when its endpoint is deleted is never sent again.
    let failing = Receiver::start(&dir, "deleted", &["--status", "500"]);
    let (gone, _) = add_endpoint(&api, &failing.url()).await;
    let created: Value = api.post("/orgs/acme/exports").await.json().await.unwrap();
    app.wait_for_status(created["id"].as_str().unwrap(), "completed", Duration::from_secs(60)).await;
    failing.wait_for(1, Duration::from_secs(20)).await;
    let started = Instant::now();
    while deliveries(&app, &gone).await != [("pending".to_string(), 1)] {
        assert!(started.elapsed() < Duration::from_secs(10), "the first attempt is recorded, a retry due in 3 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(api.delete(&format!("/orgs/acme/webhooks/{gone}")).await.status(), 204);
    assert_eq!(api.delete(&format!("/orgs/acme/webhooks/{gone}")).await.status(), 404);
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(failing.requests().len(), 1, "no attempt after the delete");
    assert!(deliveries(&app, &gone).await.is_empty());
    let (failed_jobs,): (i64,) =
        sqlx::query_as("select count(*) from apalis.jobs where job_type = 'webhooks' and status <> 'Done'")
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(failed_jobs, 0, "the retry's job ended quietly");
    assert_eq!(app.audits("webhook.deleted").await.len(), 2);

    // Another org's admin reaches none of acme's endpoints.
    let globex = api_for(&app, "admin@globex.test").await;
    assert_eq!(globex.delete(&format!("/orgs/globex/webhooks/{id}")).await.status(), 404);
    assert_eq!(globex.post(&format!("/orgs/globex/webhooks/{id}/rotate")).await.status(), 404);
    assert_eq!(globex.get("/orgs/acme/webhooks").await.status(), 404);
}

/// Issue 33, 5.3: one pending test event per endpoint, held by the database: 16
/// requests at once queue exactly one delivery; the others get 409. Once it is no
/// longer pending, the next test is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_test_events_queue_exactly_one_delivery() {
    // No workers: the delivery stays pending.
    let app = TestApp::spawn_with(Options { workers: false, config: Some(fast_private), ..Default::default() }).await;
    let api = api(&app, &app.token("admin@acme.test").await);
    let (id, _) = add_endpoint(&api, "http://127.0.0.1:9/hook").await;
    let path = format!("/orgs/acme/webhooks/{id}/test");
    let answers = futures::future::join_all((0..16).map(|_| async {
        let r = api.post(&path).await;
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    }))
    .await;
    let accepted: Vec<&Value> = answers.iter().filter(|(c, _)| *c == 202).map(|(_, b)| b).collect();
    assert_eq!(accepted.len(), 1, "exactly one queued: {answers:?}");
    assert!(accepted[0]["delivery_id"].as_str().is_some_and(|d| d.starts_with("msg_")), "{answers:?}");
    for (code, body) in answers.iter().filter(|(c, _)| *c != 202) {
        assert_eq!((*code, body["error"].as_str()), (409, Some("conflict")), "{body}");
    }
    assert_eq!(deliveries(&app, &id).await, [("pending".to_string(), 0)]);
    // The page says the same.
    let s = app.login("admin@acme.test").await;
    let page = s.post_form(&format!("/orgs/acme/settings/notifications/{id}/test"), &[]).await;
    assert_eq!(page.status(), 409);
    // Ended (delivered or given up), the next test event is queued.
    sqlx::query("update webhook_deliveries set status = 'failed', finished_at = now() where endpoint_id = $1")
        .bind(&id)
        .execute(app.pool())
        .await
        .unwrap();
    assert_eq!(api.post(&path).await.status(), 202);
    println!("webhook tests: 16 at once: 1 answered 202, 15 answered 409; one pending delivery");
}
async fn api_for(app: &TestApp, email: &str) -> Api {
    api(app, &app.token(email).await)
}

/// The demo's round, as docs/org-admins.md tells it: with the history open, `schedule-now`
/// fires a slot; the scheduled export appears in the open history (its poll stops
/// answering 204), the org's admin, who switched completed scheduled exports on,
/// finds the mail in the outbox (globex's admin, who did not, gets none), and the
/// receiver gets the signed `export.completed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_fired_now_shows_in_the_open_history_is_mailed_and_reaches_the_receiver() {
    let app = app_with(fast_private).await;
    let api = api(&app, &app.token("admin@acme.test").await);
    let receiver = Receiver::start(&app.storage_dir.join("receiver"), "demo", &[]);
    let (_, secret) = add_endpoint(&api, &receiver.url()).await;
    receiver.set_secrets(&[&secret]);
    let s = app.login("admin@acme.test").await;
    let on = [("export_failed", "on"), ("export_completed_mine", "on"), ("export_completed_scheduled", "on")];
    assert_eq!(s.post_form(data_export::routes::ME_NOTIFICATIONS, &on).await.status(), 303);
    let page = s.get("/orgs/acme/settings/backups").await.text().await.unwrap();
    let v = page.split("data-version=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let poll = format!("/orgs/acme/exports/history?since={v}");
    assert_eq!(s.htmx_get(&poll).await.status(), 204);

    let out = tokio::task::block_in_place(|| app.command().arg("schedule-now").output().unwrap());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fired: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(fired["started"], json!(["acme", "globex"]));
    assert_eq!(app.audits("schedule.fired_now").await.len(), 1);

    let r = s.htmx_get(&poll).await;
    assert_eq!(r.status(), 200, "the open history sees the scheduled run");
    let html = r.text().await.unwrap();
    let id = html.split("data-export-id=\"").nth(1).unwrap()[..26].to_string();
    assert!(html.contains(">scheduled<"), "its trigger is shown");
    app.wait_for_status(&id, "completed", Duration::from_secs(60)).await;

    let got = receiver.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(
        (got[0]["valid"].as_bool(), got[0]["event"]["data"]["trigger"].as_str()),
        (Some(true), Some("scheduled"))
    );
    let outbox = app.storage_dir.join("outbox");
    let started = Instant::now();
    let mail = loop {
        let found = std::fs::read_dir(&outbox).into_iter().flatten().flatten().find_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            (text.contains("To: admin@acme.test") && text.contains("Subject: Export of Acme Association completed"))
                .then_some(text)
        });
        if let Some(text) = found {
            break text;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the mail reaches the outbox");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(mail.contains("/orgs/acme/settings/backups"), "{mail}");
    let globex_run: String = sqlx::query_scalar(
        "select r.id from export_runs r join organizations o on o.id = r.org_id where o.slug = 'globex'",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    app.wait_for_status(&globex_run, "completed", Duration::from_secs(60)).await;
    let globex: i64 = sqlx::query_scalar(
        "select count(*) from mail_messages m join users u on u.id = m.user_id where u.email = 'admin@globex.test'",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(globex, 0, "completed scheduled exports are off by default");
    // Run again at once: a second slot, the first's runs already done, is fine; with
    // the backup configuration unverified it is refused with the reason.
    sqlx::query("update backup_configuration set verified_at = null").execute(app.pool()).await.unwrap();
    let out = tokio::task::block_in_place(|| app.command().arg("schedule-now").output().unwrap());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not active and verified"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A delivery or a mail whose job was lost (a database outage while it ran, a job
/// removed by hand) is queued again by housekeeping once it is 15 minutes overdue,
/// and then sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn housekeeping_queues_a_delivery_or_mail_whose_job_was_lost() {
    let app = app_with(fast_private).await;
    let api = api(&app, &app.token("admin@acme.test").await);
    let receiver = Receiver::start(&app.storage_dir.join("receiver"), "lost", &[]);
    let (endpoint, secret) = add_endpoint(&api, &receiver.url()).await;
    receiver.set_secrets(&[&secret]);
    let delivery = format!("msg_{}", ulid::Ulid::generate());
    sqlx::query(
        "insert into webhook_deliveries (id, endpoint_id, org_id, event, body, next_attempt_at)
         select $1, $2, org_id, 'webhook.test', '{\"type\":\"webhook.test\",\"data\":{}}', now() - interval '1 hour'
         from webhook_endpoints where id = $2",
    )
    .bind(&delivery)
    .bind(&endpoint)
    .execute(app.pool())
    .await
    .unwrap();
    let mail = ulid::Ulid::generate().to_string();
    sqlx::query(
        "insert into mail_messages (id, user_id, kind, recipient, subject, body, next_attempt_at)
         select $1, id, 'export_failed', email, 'A lost mail', 'It was lost.', now() - interval '1 hour' from users
         where email = 'admin@acme.test'",
    )
    .bind(&mail)
    .execute(app.pool())
    .await
    .unwrap();
    // Due but not yet 15 minutes overdue: left alone.
    sqlx::query("update webhook_deliveries set next_attempt_at = now() - interval '5 minutes'")
        .execute(app.pool())
        .await
        .unwrap();
    assert_eq!(data_export::webhooks::requeue_lost(app.pool()).await.unwrap(), 0);
    sqlx::query("update webhook_deliveries set next_attempt_at = now() - interval '1 hour'")
        .execute(app.pool())
        .await
        .unwrap();

    assert_eq!(data_export::webhooks::requeue_lost(app.pool()).await.unwrap(), 1);
    assert_eq!(data_export::mail::requeue_lost(app.pool()).await.unwrap(), 1);
    assert_eq!(data_export::webhooks::requeue_lost(app.pool()).await.unwrap(), 0, "queued once");
    let got = receiver.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!((got[0]["id"].as_str(), got[0]["valid"].as_bool()), (Some(delivery.as_str()), Some(true)));
    assert_eq!(wait_for_delivery(&app, &endpoint, "delivered", Duration::from_secs(30)).await, 1);
    let eml = app.storage_dir.join("outbox").join(format!("{mail}.eml"));
    let started = Instant::now();
    while !eml.exists() {
        assert!(started.elapsed() < Duration::from_secs(30), "the lost mail reaches the outbox");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(std::fs::read_to_string(&eml).unwrap().contains("Subject: A lost mail"));
}

/// Starts an export of acme through the API and waits for it to complete.
async fn export_and_wait(app: &TestApp, api: &Api) {
    let created: Value = api.post("/orgs/acme/exports").await.json().await.unwrap();
    app.wait_for_status(created["id"].as_str().unwrap(), "completed", Duration::from_secs(60)).await;
}
