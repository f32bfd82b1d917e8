//! The export module end to end: trigger, job, history, download, delete, API, CLI, faults.

use std::{io::Read, time::Duration};

use data_export::snapshot::{
    Header, Reader, SectionQuery,
    columns::{Apply, Class, Classes, select_list},
    sink::Sink,
};
use serde_json::Value;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(60);

/// Downloads through a presigned URL and decodes the snapshot.
pub async fn fetch_snapshot(app: &TestApp, location: &str) -> (Vec<u8>, Value) {
    let resp = app.client().get(location).send().await.unwrap();
    assert_eq!(resp.status(), 200, "presigned GET");
    let bytes = resp.bytes().await.unwrap().to_vec();
    (bytes.clone(), decode(&bytes))
}

/// gunzips (exactly one member, nothing after it) and parses.
pub fn decode(gz: &[u8]) -> Value {
    let mut d = flate2::read::GzDecoder::new(gz);
    let mut json = String::new();
    d.read_to_string(&mut json).unwrap();
    let rest = d.into_inner();
    assert!(rest.is_empty(), "one gzip member and nothing after it");
    serde_json::from_str(&json).unwrap()
}

/// Validates against docs/snapshot.schema.json.
pub fn assert_valid(snapshot: &Value) {
    let schema: Value = serde_json::from_str(include_str!("../../docs/snapshot.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> =
        validator.iter_errors(snapshot).take(5).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "schema errors: {errors:?}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_watch_download_and_delete_in_the_ui() {
    let app = TestApp::spawn().await;
    let s = app.login("admin@acme.test").await;
    let page = s.get("/orgs/acme/settings/backups").await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let page = page.text().await.unwrap();
    assert!(page.contains("Trigger export") && page.contains("No exports yet"));

    // htmx trigger answers with the history fragment (its polling is tested in
    // an_active_run_polls_its_own_row_and_stops_when_it_finishes).
    let frag = s.htmx_post("/orgs/acme/exports").await;
    assert_eq!(frag.status(), 200);
    let frag = frag.text().await.unwrap();
    assert!(frag.contains(r#"id="history""#) && frag.contains("Export started"));
    let id = frag.split("data-export-id=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let run = app.wait_for_run(&id, WAIT).await;
    assert_eq!(run.status, "completed", "{:?}", run.error);

    // Once nothing is active no row polls (the history itself only asks whether
    // anything changed), and the row offers Download and Delete.
    let frag = s.htmx_get("/orgs/acme/exports/history").await.text().await.unwrap();
    assert_eq!(frag.matches("hx-trigger").count(), 1, "only the history's own poll: {frag}");
    assert!(tag_with(&frag, r#"id="history""#).contains("/orgs/acme/exports/history?since="), "{frag}");
    assert!(frag.contains(r#"data-status="completed""#) && frag.contains("Download") && frag.contains("Delete"));
    // Without JavaScript, a reload shows the same truth.
    assert!(s.get("/orgs/acme/settings/backups").await.text().await.unwrap().contains(r#"data-status="completed""#));

    // Counts as of now: the download below adds an audit entry of its own, and the
    // run's `export.completed` entry was written after its snapshot.
    let acme = app.org_id("acme").await;
    let mut expected = app.section_counts(acme).await;
    expected.iter_mut().filter(|(t, _)| *t == "audit_log").for_each(|(_, n)| *n -= 1);
    let dl = s.get(&format!("/orgs/acme/exports/{id}/download")).await;
    assert_eq!(dl.status(), 303);
    assert_eq!(dl.headers()["referrer-policy"], "no-referrer");
    let location = dl.headers()["location"].to_str().unwrap().to_string();
    assert!(location.contains("X-Amz-Expires=900"), "{location}");
    assert!(
        location.contains(&format!("/org-acme/exports/{}/{id}.json.gz", run.created_at.format("%Y/%m"))),
        "{location}"
    );
    let (bytes, snap) = fetch_snapshot(&app, &location).await;
    assert_eq!(sha256_hex(&bytes), run.sha256.clone().unwrap());
    assert_eq!(bytes.len() as i64, run.size_bytes.unwrap());
    assert_valid(&snap);
    assert_eq!(snap["export_id"], id.as_str());
    let head =
        app.s3_client().head_object().bucket("org-acme").key(run.object_key.clone().unwrap()).send().await.unwrap();
    let meta = head.metadata().unwrap();
    assert_eq!(meta.get("sha256"), run.sha256.as_ref(), "the object's metadata carries the hash");
    assert_eq!(meta.get("size-bytes"), Some(&run.size_bytes.unwrap().to_string()));
    assert_eq!(meta.get("export-id"), Some(&id));
    for (table, n) in expected {
        assert_eq!(snap["counts"][table], n, "{table} count");
        assert_eq!(snap["sections"][table].as_array().unwrap().len() as i64, n, "{table} rows");
    }
    let (downloads,): (i64,) =
        sqlx::query_as("select count(*) from audit_log where action = 'export.downloaded' and target = $1")
            .bind(format!("export:{id}"))
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(downloads, 1);

    // Delete removes the object and marks the run.
    let frag = s.post_form(&format!("/orgs/acme/exports/{id}/delete"), &[]).await;
    assert_eq!(frag.status(), 303);
    assert!(app.objects("org-acme").await.is_empty());
    assert_eq!(app.wait_for_run(&id, WAIT).await.status, "deleted");
    assert_eq!(s.get(&format!("/orgs/acme/exports/{id}/download")).await.status(), 404);
    let (deleted,): (i64,) = sqlx::query_as("select count(*) from audit_log where action = 'export.deleted'")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    // The old presigned URL no longer finds the object.
    assert_eq!(app.client().get(&location).send().await.unwrap().status(), 404);
}

/// The opening tag of the first element of `html` that contains `needle`.
fn tag_with<'a>(html: &'a str, needle: &str) -> &'a str {
    let at = html.find(needle).unwrap_or_else(|| panic!("no {needle} in {html}"));
    let start = html[..=at].rfind('<').unwrap();
    &html[start..start + html[start..].find('>').unwrap() + 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_run_polls_its_own_row_and_stops_when_it_finishes() {
    // No workers: the triggered run stays pending for as long as the test needs.
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let s = app.login("admin@acme.test").await;
    let frag = s.htmx_post("/orgs/acme/exports").await.text().await.unwrap();
    let id = frag.split("data-export-id=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let row_url = format!("/orgs/acme/exports/{id}/row");

    // The history itself polls only whether anything changed (`?since=` its version,
    // 204 while nothing did); the pending row polls its own URL, into itself.
    assert!(tag_with(&frag, r#"id="history""#).contains(r#"hx-get="/orgs/acme/exports/history?since="#), "{frag}");
    let tr = tag_with(&frag, &format!(r#"data-export-id="{id}""#));
    for attr in [format!(r#"hx-get="{row_url}""#), r#"hx-trigger="every 2s""#.into(), r#"hx-target="this""#.into()] {
        assert!(tr.contains(&attr), "{attr} in {tr}");
    }

    // The row URL answers that one row, still polling while the run is active.
    for status in ["pending", "running"] {
        sqlx::query("update export_runs set status = $2 where id = $1")
            .bind(&id)
            .bind(status)
            .execute(app.pool())
            .await
            .unwrap();
        let resp = s.htmx_get(&row_url).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let row = resp.text().await.unwrap();
        assert!(row.starts_with("<tr") && row.ends_with("</tr>") && row.matches("<tr").count() == 1, "{row}");
        assert!(tag_with(&row, "<tr").contains(&format!(r#"data-status="{status}""#)), "{row}");
        assert!(tag_with(&row, "<tr").contains(r#"hx-trigger="every 2s""#), "{row}");
    }

    // Finished: the row stops polling and offers its actions, which still target the
    // whole history (inherited from it).
    sqlx::query(
        "update export_runs set status = 'completed', finished_at = now(), object_key = 'exports/x.json.gz',
                size_bytes = 10, sha256 = repeat('a', 64), rows_total = 1, rows_written = 1 where id = $1",
    )
    .bind(&id)
    .execute(app.pool())
    .await
    .unwrap();
    let row = s.htmx_get(&row_url).await.text().await.unwrap();
    assert!(!row.contains("hx-trigger") && !row.contains("hx-target"), "stops polling: {row}");
    assert!(row.contains(r#"data-status="completed""#) && row.contains("Download") && row.contains("Delete"), "{row}");
    let history = s.htmx_get("/orgs/acme/exports/history").await.text().await.unwrap();
    let container = tag_with(&history, r#"id="history""#);
    assert!(container.contains(r##"hx-target="#history""##) && container.contains(r#"hx-swap="outerHTML""#));

    // Ids that are not acme's runs answer 404; htmx's poll of one gets 286 (htmx
    // stops polling) with the reason in place of the row.
    for bad in ["01ARZ3NDEKTSV4RRFFQ69G5FAV", "not-an-id"] {
        assert_eq!(s.get(&format!("/orgs/acme/exports/{bad}/row")).await.status(), 404, "{bad}");
        let poll = s.htmx_get(&format!("/orgs/acme/exports/{bad}/row")).await;
        assert_eq!(poll.status().as_u16(), 286, "{bad}");
        assert!(poll.text().await.unwrap().contains("stopped updating"), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_progress_saver_records_the_figure_while_running_and_the_last_one_when_the_export_ends() {
    use data_export::exports::{job::save_progress, runs};
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let s = app.login("admin@acme.test").await;
    let frag = s.htmx_post("/orgs/acme/exports").await.text().await.unwrap();
    let id = frag.split("data-export-id=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    runs::start(app.pool(), &id, 1).await.unwrap().expect("the run starts");
    let written = || async {
        let (n,): (i64,) = sqlx::query_as("select rows_written from export_runs where id = $1")
            .bind(&id)
            .fetch_one(app.pool())
            .await
            .unwrap();
        n
    };

    let (rows, watcher) = tokio::sync::watch::channel(0i64);
    let done = tokio_util::sync::CancellationToken::new();
    let saver =
        tokio::spawn(save_progress(app.state.clone(), id.clone(), 1, watcher, done.clone(), Default::default()));
    // While it runs: the figure reaches the row within a few of its one-second rounds.
    rows.send_replace(1_234);
    let deadline = std::time::Instant::now() + WAIT;
    while written().await != 1_234 {
        assert!(std::time::Instant::now() < deadline, "progress never saved");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The export ends: the last figure is saved and the saver ends (it does not wait
    // for its next round: the run's completion waits for it).
    rows.send_replace(5_678);
    done.cancel();
    tokio::time::timeout(WAIT, saver).await.expect("the saver ends when the export does").unwrap();
    assert_eq!(written().await, 5_678);

    // Dropping the export (an aborted job) ends it too.
    let (_rows, watcher) = tokio::sync::watch::channel(0i64);
    let done = tokio_util::sync::CancellationToken::new();
    let saver =
        tokio::spawn(save_progress(app.state.clone(), id.clone(), 1, watcher, done.clone(), Default::default()));
    drop(done.drop_guard());
    tokio::time::timeout(WAIT, saver).await.expect("the saver ends with its export").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_follows_the_contract() {
    let app = TestApp::spawn().await;
    let api = api(&app, &app.token("admin@acme.test").await);
    let r = api.post("/orgs/acme/exports").await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "pending");
    let id = body["id"].as_str().unwrap().to_string();
    app.wait_for_run(&id, WAIT).await;

    let one: Value = api.get(&format!("/orgs/acme/exports/{id}")).await.json().await.unwrap();
    for field in [
        "id",
        "status",
        "trigger",
        "created_at",
        "started_at",
        "finished_at",
        "size_bytes",
        "sha256",
        "counts",
        "progress",
        "error",
    ] {
        assert!(one.get(field).is_some(), "missing {field}: {one}");
    }
    assert_eq!(one["status"], "completed");
    assert_eq!(one["trigger"], "manual");
    assert_eq!(one["progress"], 1.0);
    assert!(one["error"].is_null());

    let second: Value = api.post("/orgs/acme/exports").await.json().await.unwrap();
    let second_id = second["id"].as_str().unwrap().to_string();
    app.wait_for_run(&second_id, WAIT).await;
    let list: Vec<Value> = api.get("/orgs/acme/exports").await.json().await.unwrap();
    assert_eq!(
        list.iter().map(|r| r["id"].as_str().unwrap()).collect::<Vec<_>>(),
        [second_id.as_str(), id.as_str()],
        "newest first"
    );

    let dl = api.get(&format!("/orgs/acme/exports/{id}/download")).await;
    assert_eq!(dl.status(), 303);
    let location = dl.headers()["location"].to_str().unwrap().to_string();
    assert!(location.contains("X-Amz-Expires=900"));
    let (_, snap) = fetch_snapshot(&app, &location).await;
    assert_valid(&snap);

    assert_eq!(api.delete(&format!("/orgs/acme/exports/{id}")).await.status(), 204);
    let gone: Value = api.get(&format!("/orgs/acme/exports/{id}")).await.json().await.unwrap();
    assert_eq!(gone["status"], "deleted");
    assert_eq!(api.get(&format!("/orgs/acme/exports/{id}/download")).await.status(), 404);
    // Deleting again is harmless; a pending/failed run cannot be "deleted".
    assert_eq!(api.delete(&format!("/orgs/acme/exports/{id}")).await.status(), 204);
    for bad in ["not-a-ulid", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "%2e%2e", "x'; drop table export_runs; --"] {
        let r = api.get(&format!("/orgs/acme/exports/{bad}")).await;
        assert_eq!(r.status(), 404, "{bad}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_triggers_give_one_export_and_nineteen_conflicts() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let token = app.token("admin@acme.test").await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let api = api(&app, &token);
        set.spawn(async move {
            let r = api.post("/orgs/acme/exports").await;
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        });
    }
    let answers: Vec<(u16, Value)> = set.join_all().await;
    let accepted: Vec<&Value> = answers.iter().filter(|a| a.0 == 202).map(|a| &a.1).collect();
    assert_eq!(accepted.len(), 1, "{answers:?}");
    let id = accepted[0]["id"].as_str().unwrap();
    let conflicts: Vec<&Value> = answers.iter().filter(|a| a.0 == 409).map(|a| &a.1).collect();
    assert_eq!(conflicts.len(), 19, "{answers:?}");
    for c in conflicts {
        assert_eq!(c["error"], "conflict");
        assert_eq!(c["active_export_id"], id);
    }
    let (runs, jobs): (i64, i64) =
        sqlx::query_as("select (select count(*) from export_runs), (select count(*) from apalis.jobs)")
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!((runs, jobs), (1, 1), "one run and exactly its job");
    // The UI says the same, without an error page.
    let s = app.login("admin@acme.test").await;
    let r = s.post_form("/orgs/acme/exports", &[]).await;
    assert_eq!(r.status(), 303);
    assert!(r.headers()["location"].to_str().unwrap().ends_with("notice=conflict"));
    let frag = s.htmx_post("/orgs/acme/exports").await.text().await.unwrap();
    assert!(frag.contains("already pending or running"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_module_off_backup_unverified_member_and_other_org() {
    let app = TestApp::spawn().await;
    let admin = api(&app, &app.token("admin@acme.test").await);
    let member = api(&app, &app.token("member@acme.test").await);
    let globex = api(&app, &app.token("admin@globex.test").await);

    assert_eq!(member.post("/orgs/acme/exports").await.status(), 403);
    assert_eq!(member.get("/orgs/acme/exports").await.status(), 403);
    assert_eq!(globex.get("/orgs/acme/exports").await.status(), 404);
    assert_eq!(admin.get("/orgs/nope/exports").await.status(), 404);

    // Another org's export id answers 404 on every route.
    let id = admin.post("/orgs/acme/exports").await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    app.wait_for_run(&id, WAIT).await;
    for path in [format!("/orgs/globex/exports/{id}"), format!("/orgs/globex/exports/{id}/download")] {
        assert_eq!(globex.get(&path).await.status(), 404, "{path}");
    }
    assert_eq!(globex.delete(&format!("/orgs/globex/exports/{id}")).await.status(), 404);
    let gs = app.login("admin@globex.test").await;
    assert_eq!(gs.get(&format!("/orgs/globex/exports/{id}/download")).await.status(), 404);
    assert_eq!(gs.post_form(&format!("/orgs/globex/exports/{id}/delete"), &[]).await.status(), 404);
    // The polled row (user, org and run in one query) too (htmx's poll stops: 286,
    // saying nothing of acme), and acme's admin sees it.
    assert_eq!(gs.get(&format!("/orgs/globex/exports/{id}/row")).await.status(), 404);
    let poll = gs.htmx_get(&format!("/orgs/globex/exports/{id}/row")).await;
    assert_eq!(poll.status().as_u16(), 286);
    assert!(!poll.text().await.unwrap().contains("acme"));
    assert_eq!(
        app.login("admin@acme.test").await.htmx_get(&format!("/orgs/acme/exports/{id}/row")).await.status(),
        200
    );
    assert_eq!(app.wait_for_run(&id, WAIT).await.status, "completed", "untouched");

    // Backup configuration switched off: 503 and a clear UI message, nothing created.
    sqlx::query("update backup_configuration set active = false").execute(app.pool()).await.unwrap();
    let r = admin.post("/orgs/acme/exports").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "backup_not_verified");
    let s = app.login("admin@acme.test").await;
    let page = s.get("/orgs/acme/settings/backups").await.text().await.unwrap();
    assert!(page.contains("Exports are paused"));
    let frag = s.htmx_post("/orgs/acme/exports").await.text().await.unwrap();
    assert!(frag.contains("until a platform admin verifies"));
    // Verified against another endpoint counts as unverified too.
    sqlx::query("update backup_configuration set active = true, verified_endpoint = 'http://elsewhere'")
        .execute(app.pool())
        .await
        .unwrap();
    assert_eq!(admin.post("/orgs/acme/exports").await.status(), 503);
    let (runs,): (i64,) = sqlx::query_as("select count(*) from export_runs").fetch_one(app.pool()).await.unwrap();
    assert_eq!(runs, 1);

    // Module off: nothing new starts (404), but the existing exports stay readable
    // (see modules::with_data_export_off_...).
    s.post_form("/orgs/acme/settings/modules", &[("module", "engage")]).await;
    assert_eq!(admin.post("/orgs/acme/exports").await.status(), 404);
    assert_eq!(admin.post(&format!("/orgs/acme/exports/{id}/verify")).await.status(), 404);
    assert_eq!(admin.get(&format!("/orgs/acme/exports/{id}")).await.status(), 200);
    assert_eq!(s.get("/orgs/acme/settings/backups").await.status(), 200);
    assert_eq!(s.htmx_get(&format!("/orgs/acme/exports/{id}/row")).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sections_of_modules_that_are_off_are_left_out() {
    let app = TestApp::spawn().await;
    let s = app.login("admin@acme.test").await;
    s.post_form("/orgs/acme/settings/modules", &[("module", "data_export"), ("module", "learning")]).await;
    let api = api(&app, &app.token("admin@acme.test").await);
    let id = api.post("/orgs/acme/exports").await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_for_run(&id, WAIT).await.status, "completed");
    let location =
        api.get(&format!("/orgs/acme/exports/{id}/download")).await.headers()["location"].to_str().unwrap().to_string();
    let (_, snap) = fetch_snapshot(&app, &location).await;
    assert_valid(&snap);
    assert_eq!(snap["modules"]["learning"], true);
    assert_eq!(snap["modules"]["engage"], false);
    assert!(snap["sections"].get("courses").is_some() && snap["sections"].get("enrollments").is_some());
    for off in ["forum_posts", "invoices", "donations", "alumni_profiles"] {
        assert!(snap["sections"].get(off).is_none() && snap["counts"].get(off).is_none(), "{off}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_urls_are_refused_when_tampered_with_or_expired() {
    let app = TestApp::spawn().await;
    let api = api(&app, &app.token("admin@acme.test").await);
    let id = api.post("/orgs/acme/exports").await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let run = app.wait_for_run(&id, WAIT).await;
    let location =
        api.get(&format!("/orgs/acme/exports/{id}/download")).await.headers()["location"].to_str().unwrap().to_string();
    let sig_at = location.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let mut tampered = location.clone();
    let flipped = if &location[sig_at..sig_at + 1] == "a" { "b" } else { "a" };
    tampered.replace_range(sig_at..sig_at + 1, flipped);
    assert_eq!(app.client().get(&tampered).send().await.unwrap().status(), 403);
    let other_key = location.replace(&id, "01ARZ3NDEKTSV4RRFFQ69G5FAV");
    assert_eq!(app.client().get(&other_key).send().await.unwrap().status(), 403, "the signature covers the key");

    // A URL signed for one second is refused once it has expired.
    let short = app
        .s3_client()
        .get_object()
        .bucket("org-acme")
        .key(run.object_key.unwrap())
        .presigned(aws_sdk_s3::presigning::PresigningConfig::expires_in(Duration::from_secs(1)).unwrap())
        .await
        .unwrap();
    assert_eq!(app.client().get(short.uri()).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(app.client().get(short.uri()).send().await.unwrap().status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_stopped_mid_upload_fails_cleanly_and_the_next_export_works() {
    let mut app = TestApp::spawn_with(Options { members: 15_000, ..Default::default() }).await;
    let api = api(&app, &app.token("admin@acme.test").await);
    let id = api.post("/orgs/acme/exports").await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    app.wait_for_status(&id, "running", WAIT).await;
    app.stop_s3().await;
    // Keep it down long enough for the SDK's retries to give up, then bring it back
    // so the pipeline's abort can reach it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    app.restart_s3().await;
    let run = crate::faults::assert_clean(&app, &id).await;
    assert_eq!(run.status, "failed");
    let error = run.error.unwrap();
    assert!(!error.contains("stage stopped early"), "a readable root cause: {error}");
    assert!(app.objects("org-acme").await.is_empty(), "no partial object");

    let next = api.post("/orgs/acme/exports").await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(crate::faults::assert_clean(&app, &next).await.status, "completed");
    assert_eq!(app.objects("org-acme").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_export_is_recovered_by_another() {
    let mut app = TestApp::spawn_with(Options { members: 15_000, workers: false, ..Default::default() }).await;
    let api = api(&app, &app.token("admin@acme.test").await);
    let id = api.post("/orgs/acme/exports").await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    // A separate worker process takes the job...
    let mut worker = app
        .command()
        .arg("worker")
        .env("HEARTBEAT_SECS", "1")
        .env("MISSED_HEARTBEATS", "3")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    app.wait_for_status(&id, "running", WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...and dies with SIGKILL mid-export.
    worker.kill().unwrap();
    worker.wait().unwrap();
    let stuck = data_export::exports::runs::get_any(app.pool(), &id).await.unwrap().unwrap();
    assert_eq!(stuck.status, "running", "the dead worker left it running");
    // A new worker re-enqueues the orphan after the heartbeat timeout and finishes it.
    app.start_workers();
    // Completed, its object whole (verified against the recorded hash), the dead
    // attempt's upload aborted.
    let run = crate::faults::assert_clean(&app, &id).await;
    assert_eq!(run.status, "completed", "{:?}", run.error);
    assert_eq!(app.objects("org-acme").await.len(), 1);
    let (attempts,): (i32,) =
        sqlx::query_as("select attempts from export_runs where id = $1").bind(&id).fetch_one(app.pool()).await.unwrap();
    assert_eq!(attempts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_command_writes_a_file_or_a_recorded_run() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let out_file = app.storage_dir.join("acme.json.gz");
    let out = app.command().args(["export", "--org", "acme", "--out"]).arg(&out_file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes = std::fs::read(&out_file).unwrap();
    assert_eq!(summary["sha256"], sha256_hex(&bytes));
    assert_eq!(summary["bytes"], bytes.len());
    let snap = decode(&bytes);
    assert_valid(&snap);
    assert_eq!(summary["rows"], snap["counts"].as_object().unwrap().values().map(|v| v.as_i64().unwrap()).sum::<i64>());
    let (runs,): (i64,) = sqlx::query_as("select count(*) from export_runs").fetch_one(app.pool()).await.unwrap();
    assert_eq!(runs, 0, "--out records no run");
    // No leftovers beside the file.
    let names: Vec<String> = std::fs::read_dir(&app.storage_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".partial-")), "{names:?}");
    // Where each stage spent its time: in the summary, and as a chart with --timeline.
    let stages: Vec<&str> =
        summary["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["read", "render", "deflate 1", "deflate 2", "gzip", "write"]);
    for s in summary["stages"].as_array().unwrap() {
        let total: f64 = ["busy", "waiting_on_input", "waiting_on_output"].iter().map(|k| s[k].as_f64().unwrap()).sum();
        assert!(total > 0.0 && total <= summary["seconds"].as_f64().unwrap() + 0.01, "{s}");
    }
    // Before the pipeline (describing and counting, on two connections) and after it.
    assert_eq!(summary["connections"], 2, "{summary}");
    assert!(summary["open_seconds"].as_f64().is_some_and(|s| s > 0.0), "{summary}");
    let publish = summary["publish_seconds"].as_f64().unwrap();
    assert!(publish >= 0.0 && publish <= summary["seconds"].as_f64().unwrap(), "{summary}");
    let charted =
        app.command().args(["export", "--org", "acme", "--timeline", "--out"]).arg(&out_file).output().unwrap();
    assert!(charted.status.success());
    let chart = String::from_utf8_lossy(&charted.stderr);
    assert!(chart.starts_with("stage") && chart.contains("\ndeflate 2") && chart.contains("|"), "{chart}");
    assert!(chart.contains("\npublish ") && chart.contains("after the last byte"), "{chart}");
    let alone = app.command().args(["export", "--org", "acme", "--timeline"]).output().unwrap();
    assert!(!alone.status.success() && String::from_utf8_lossy(&alone.stderr).contains("--out"));

    // Without --out it records a run in the bucket, through the job.
    let out = app.command().args(["export", "--org", "acme"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = data_export::exports::runs::get_any(app.pool(), summary["id"].as_str().unwrap()).await.unwrap().unwrap();
    assert_eq!(run.status, "completed");
    assert_eq!(app.objects("org-acme").await.len(), 1);

    for (args, needle) in [
        (vec!["export", "--org", "Not A Slug"], "not a valid org slug"),
        (vec!["export", "--org", "nope"], "no organization"),
        (vec!["export", "--org", "acme", "--out", "/nonexistent/dir/x.json.gz"], "does not exist"),
    ] {
        let out = app.command().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The regression guard for memory, by counts rather than time: the pipeline hands
/// the renderer batches of about COPY_BATCH, the compressor chunks of about RAW_CHUNK
/// and the sink parts of at most PART_SIZE,
/// however large the org, so with its bounded queues its buffers stay under a fixed
/// budget. Holding a whole section (or the whole file) in memory would fail here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_buffers_stay_bounded_whatever_the_size() {
    use data_export::{
        exports::org_snapshot,
        snapshot::{pipeline, sink},
    };
    let app = TestApp::spawn_with(Options { members: 3_000, workers: false, ..Options::default() }).await;
    let org = app.org_id("acme").await;
    let snapshot = org_snapshot::open(app.pool(), org).await.unwrap();
    let rows = snapshot.rows_total();
    let path = app.storage_dir.join("bounded.json.gz");
    let upload = sink::Sink::File(path.clone()).start().await.unwrap();
    let (progress, _rx) = tokio::sync::watch::channel(0);
    let outcome = snapshot.write("01JAAAAAAAAAAAAAAAAAAAAAAA", upload, &progress).await.unwrap();
    let json_bytes = decode(&std::fs::read(&path).unwrap()).to_string().len();
    let b = outcome.buffers;
    assert_eq!(outcome.rows, rows);
    assert!(json_bytes > 8 * pipeline::RAW_CHUNK, "the org is large enough to need many chunks ({json_bytes} bytes)");
    assert!(b.chunks as usize >= json_bytes / pipeline::RAW_CHUNK / 2, "{b:?}");
    // A batch of COPY bytes is sent once it passes COPY_BATCH: at most one COPY
    // message (one row) over; a chunk of JSON once it passes RAW_CHUNK: one row over.
    assert!(b.batches >= 2 && b.max_batch_bytes <= pipeline::COPY_BATCH + 128 * 1024, "{b:?}");
    assert!(b.max_chunk_bytes <= pipeline::RAW_CHUNK + 128 * 1024, "{b:?}");
    assert!(b.max_part_bytes <= sink::PART_SIZE, "{b:?}");
    assert_eq!(b.parts, (outcome.size_bytes as usize).div_ceil(sink::PART_SIZE) as u64, "{b:?}");
    // The budget those bounds give (chunks queued + in hand on each side, parts
    // queued + in hand + uploading) stays well under the 64 MiB target.
    // Chunks: those queued for each compressing thread, the one each is deflating and
    // its deflated block queued for the gzip thread (smaller, counted whole), and
    // the one the renderer is filling.
    let chunks = pipeline::COMPRESS_THREADS * (pipeline::RAW_QUEUE + 1 + pipeline::BLOCK_QUEUE) + 1;
    let budget = (pipeline::COPY_QUEUE + 2) * (pipeline::COPY_BATCH + 128 * 1024)
        + chunks * (pipeline::RAW_CHUNK + 128 * 1024)
        + (pipeline::PART_QUEUE + 2 + sink::PARTS_IN_FLIGHT) * sink::PART_SIZE;
    assert!(budget <= 48 * 1024 * 1024, "buffer budget {budget} bytes");
}

/// A client that goes away does not free Verify's one permit: the verification runs
/// on a task of its own that holds the permit until the work has ended and records
/// its outcome; and a verification that outlives `VERIFY_TIMEOUT_SECS` is stopped
/// without a verdict. (Before: the permit was the request's, so each abandoned
/// request let one more verification start beside the ones still running.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_verifications_never_run_side_by_side_and_stop_at_their_time_limit() {
    let app =
        TestApp::spawn_with(Options { fault_proxy: true, verify_timeout_secs: Some(2), ..Default::default() }).await;
    let proxy = app.proxy.as_ref().unwrap();
    let token = app.token("admin@acme.test").await;
    let api = api(&app, &token);
    let id = api.post("/orgs/acme/exports").await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_for_run(&id, WAIT).await.status, "completed");
    let verified_at = || async {
        sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
            "select verified_at from export_runs where id = $1",
        )
        .bind(&id)
        .fetch_one(app.pool())
        .await
        .unwrap()
    };

    // Each read of the object takes 1.5 s. Four clients in a row each give up after
    // 200 ms: the first starts the one verification, the other three are refused
    // while it still runs, although its client is gone.
    let hold = Duration::from_millis(1500);
    proxy.set(Fault::SlowReads(hold));
    let url = format!("{}/api/v1/orgs/acme/exports/{id}/verify", app.addr);
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(200)).build().unwrap();
    let started = std::time::Instant::now();
    let first = impatient.post(&url).bearer_auth(&token).send().await;
    assert!(first.as_ref().is_err_and(|e| e.is_timeout()), "the first client gave up: {first:?}");
    let mut refused = 0;
    for _ in 0..3 {
        let r = impatient.post(&url).bearer_auth(&token).send().await.expect("answered at once");
        assert_eq!(r.status(), 429, "an abandoned verification still holds the permit");
        refused += 1;
    }
    assert!(started.elapsed() < hold, "the refusals came while the first read was still held");
    // The abandoned work ends and records its outcome.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while verified_at().await.is_none() || app.audits("export.verified").await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the abandoned verification recorded its outcome");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_done = started.elapsed();
    assert_eq!(app.audits("export.verified").await.len(), 1, "one verification ran, not four");

    // A read that takes longer than the 2 s limit is stopped: 503, no verdict.
    proxy.set(Fault::SlowReads(Duration::from_secs(4)));
    let before = verified_at().await;
    let t = std::time::Instant::now();
    let r = api.post(&format!("/orgs/acme/exports/{id}/verify")).await;
    let stopped_after = t.elapsed();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unavailable");
    assert!(body["message"].as_str().unwrap().contains("did not finish within 2 seconds"), "{body}");
    assert!(stopped_after < Duration::from_millis(3500), "stopped at the limit, after {stopped_after:?}");
    assert_eq!(verified_at().await, before, "a stopped verification judges nothing");
    // The permit came back: the next verification runs.
    proxy.set(Fault::None);
    let r = api.post(&format!("/orgs/acme/exports/{id}/verify")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["ok"], true);
    println!(
        "verify under abandonment: 4 clients that gave up after 200 ms started 1 verification ({refused} refused with 429); \
         the abandoned one held the permit until it recorded its outcome at {:.1} s; a 4 s read stopped at the 2 s limit after {:.1} s (503)",
        first_done.as_secs_f64(),
        stopped_after.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_rereads_a_snapshot_by_command_api_and_ui() {
    let app = TestApp::spawn().await;
    let api = api(&app, &app.token("admin@acme.test").await);
    let id = api.post("/orgs/acme/exports").await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let run = app.wait_for_run(&id, WAIT).await;
    assert_eq!(run.status, "completed");
    let sha = run.sha256.clone().unwrap();

    // The API's Verify re-reads the object: whole, valid, counts and hash as recorded.
    let r = api.post(&format!("/orgs/acme/exports/{id}/verify")).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["ok"], true, "{body}");
    assert_eq!(body["report"]["sha256"], sha.as_str());
    assert_eq!(body["report"]["export_id"], id.as_str());
    assert_eq!(body["report"]["rows"], run.rows_total.unwrap());
    let one: Value = api.get(&format!("/orgs/acme/exports/{id}")).await.json().await.unwrap();
    assert!(one["verified_at"].is_string() && one["verify_error"].is_null(), "{one}");
    assert_eq!(app.audits("export.verified").await.len(), 1);

    // The command, on the downloaded file, with and without the recorded hash.
    let location =
        api.get(&format!("/orgs/acme/exports/{id}/download")).await.headers()["location"].to_str().unwrap().to_string();
    let (bytes, _) = fetch_snapshot(&app, &location).await;
    let file = app.storage_dir.join("downloaded.json.gz");
    std::fs::write(&file, &bytes).unwrap();
    let out = app.command().arg("verify").arg(&file).args(["--sha256", &sha]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["report"]["counts"], run.counts.clone().unwrap());
    let wrong = "0".repeat(64);
    let damaged = app.storage_dir.join("damaged.json.gz");
    std::fs::write(&damaged, &bytes[..bytes.len() - 100]).unwrap();
    for (args, needle) in [
        (vec![file.display().to_string(), "--sha256".into(), wrong.clone()], "was recorded"),
        (vec![file.display().to_string(), "--sha256".into(), "xyz".into()], "64 hexadecimal"),
        (vec![damaged.display().to_string()], "not a whole gzip file"),
        (vec!["/no/such/file.json.gz".into()], "cannot open"),
    ] {
        let out = app.command().arg("verify").args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }

    // The object damaged in the bucket: the Verify action says so, in the API and
    // on the run's row in the UI.
    app.s3_client()
        .put_object()
        .bucket("org-acme")
        .key(run.object_key.clone().unwrap())
        .body(bytes[..bytes.len() / 2].to_vec().into())
        .send()
        .await
        .unwrap();
    let body: Value = api.post(&format!("/orgs/acme/exports/{id}/verify")).await.json().await.unwrap();
    assert_eq!(body["ok"], false);
    assert!(body["error"].as_str().unwrap().contains("not a whole gzip file"), "{body}");
    let s = app.login("admin@acme.test").await;
    let frag = s.htmx_post(&format!("/orgs/acme/exports/{id}/verify")).await;
    assert_eq!(frag.status(), 200);
    let frag = frag.text().await.unwrap();
    assert!(frag.contains(r#"data-verified="failed""#) && frag.contains("failed verification"), "{frag}");
    // An object removed from the bucket behind the product's back is reported, not a 500.
    app.state.storage.delete("org-acme", run.object_key.as_deref().unwrap()).await.unwrap();
    let body: Value = api.post(&format!("/orgs/acme/exports/{id}/verify")).await.json().await.unwrap();
    assert_eq!(body["ok"], false);
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("missing from storage") && !error.contains("org-acme") && !error.contains("exports/"),
        "{body}"
    );
    // A run that is not completed cannot be verified.
    assert_eq!(api.delete(&format!("/orgs/acme/exports/{id}")).await.status(), 204);
    assert_eq!(api.post(&format!("/orgs/acme/exports/{id}/verify")).await.status(), 400);
}

/// The rows of one section as the file has them, one JSON text per row: each row is
/// on a line of its own, followed by `,` or, for the last, by the section's `]`.
fn section_rows<'a>(text: &'a str, table: &str) -> Vec<&'a str> {
    let head = format!("\n\"{table}\":[");
    let start = text.find(&head).unwrap_or_else(|| panic!("no section {table}")) + head.len();
    let mut rows = Vec::new();
    if text[start..].starts_with(']') {
        return rows;
    }
    for line in text[start..].lines().skip(1) {
        let line = line.strip_suffix(',').unwrap_or(line);
        if let Some(last) = line.strip_suffix(']') {
            rows.push(last);
            return rows;
        }
        rows.push(line);
    }
    panic!("section {table} never ends");
}

/// The snapshot builds each row's JSON itself from PostgreSQL's binary values. It
/// must be what `row_to_json` gives for the same row, byte for byte: in every
/// section, for edge values of the types it renders (control characters, infinities,
/// BC dates, microseconds, nested jsonb), and for columns of types it leaves to
/// PostgreSQL (a migration may add any type).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_is_exported_exactly_as_row_to_json_renders_it() {
    let app = TestApp::spawn_with(Options { members: 200, workers: false, ..Default::default() }).await;
    let org = app.org_id("acme").await;
    let pool = app.pool();
    let edge_text = "quote\" back\\ nl\n cr\r tab\t bs\u{8} ff\u{c} ctl\u{1}\u{1f}\u{7f} é ✓ 𝄞 </script>";
    for (target, details, at) in [
        (Some(edge_text), r#"{"a": [1, 2.50, null, {"b": "\u00e9"}], "c": true, "": -0.0}"#, "infinity"),
        (None, "[]", "-infinity"),
        (Some(""), r#""s""#, "0044-03-15 12:00:00.5 BC"),
        (Some(" "), "{}", "1999-12-31 23:59:59.999999+00"),
        (Some("x"), "1e3", "294276-12-31 23:59:59.999999+00"),
        (Some("y"), "null", "4713-11-24 00:00:00 BC"),
        (Some("z"), "false", "2024-02-29 13:05:09.1+05:30"),
    ] {
        sqlx::query(
            "insert into audit_log (org_id, action, target, details, created_at)
             values ($1, 'edge.values', $2, $3::jsonb, $4::timestamptz)",
        )
        .bind(org)
        .bind(target)
        .bind(details)
        .bind(at)
        .execute(pool)
        .await
        .unwrap();
    }
    for (issued, due) in [("infinity", "-infinity"), ("0001-01-01 BC", "0001-01-01"), ("5874897-12-31", "1970-01-01")] {
        sqlx::query(
            "update invoices set issued_on = $2::date, due_on = $3::date
             where id = (select min(id) from invoices where org_id = $1 and issued_on > '1990-01-01')",
        )
        .bind(org)
        .bind(issued)
        .bind(due)
        .execute(pool)
        .await
        .unwrap();
    }
    // Columns of types the snapshot does not render itself.
    sqlx::query(
        r#"alter table regions add column n numeric, add column f float8, add column ts timestamp,
           add column tm time, add column iv interval, add column u uuid, add column b bytea, add column ch char(4),
           add column ia int[], add column ta text[], add column ip inet, add column vc varchar(8), add column js json,
           add column "Odd ""name""" smallint, add column big int"#,
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        r#"update regions set n = 1.50, f = 'Infinity', ts = '2024-01-01 10:00:00.25', tm = '10:00:01.5',
           iv = '1 day 02:00:00', u = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', b = '\x00ff', ch = 'ab',
           ia = '{1,NULL,3}', ta = '{"a","b\"c"}', ip = '10.0.0.1/8', vc = 'v"', js = '{"k" : 1 }',
           "Odd ""name""" = -32768, big = 2147483647
           where id = (select min(id) from regions where org_id = $1)"#,
    )
    .bind(org)
    .execute(pool)
    .await
    .unwrap();

    let text = app.export_acme_to_file("exact.json.gz");
    let snapshot: Value = serde_json::from_str(&text).unwrap();

    // Each section holds what the column registry writes, as `row_to_json` renders it.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("set local timezone = 'UTC'").execute(&mut *tx).await.unwrap();
    let tables: Vec<String> =
        snapshot["counts"].as_object().unwrap().keys().filter(|k| *k != "organization").cloned().collect();
    assert!(tables.len() >= 20, "all modules on: {tables:?}");
    let mut compared = 0;
    for table in &tables {
        let classes = data_export::orgs::columns::of(table);
        let cols = registry_select(&mut tx, classes).await;
        let join = classes.join.unwrap_or_default();
        let mut expected: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "select row_to_json(r)::text from (select {cols} from {table} t {join} where t.org_id = {org}) r"
        )))
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        let mut got = section_rows(&text, table);
        assert_eq!(got.len() as i64, snapshot["counts"][table].as_i64().unwrap(), "{table}");
        expected.sort();
        got.sort();
        assert_eq!(got, expected, "{table}");
        compared += got.len();
    }
    tx.rollback().await.unwrap();
    assert!(compared > 1_000, "{compared} rows compared");
    // The edge values are in: the infinities and BC.
    assert!(text.contains(r#""created_at":"-infinity""#) && text.contains("4713-11-24T00:00:00+00:00 BC"), "edges");
    // The columns added above are classified nowhere, so the org export leaves them out.
    assert!(!text.contains(r#""Odd \"name\"":"#) && !text.contains(r#""big":"#), "an unclassified column was exported");

    // The engine renders the added types exactly too, once a classification names them.
    let regions = data_export::orgs::columns::of("regions");
    let mut classified: Vec<(&'static str, Class)> = regions.columns.to_vec();
    for c in ["n", "f", "ts", "tm", "iv", "u", "b", "ch", "ia", "ta", "ip", "vc", "js", "Odd \"name\"", "big"] {
        classified.push((c, Class::Exported));
    }
    let classes: &'static Classes =
        Box::leak(Box::new(Classes { table: "regions", columns: classified.leak(), order: None, join: None }));
    let mut read = Reader::begin(pool).await.unwrap();
    read.add(&SectionQuery::new(classes, format!("t.org_id = {org}"), Apply::Pseudonyms));
    let header = Header { format: "test", id_key: "export_id", fields: vec![], lead: None };
    let file = app.storage_dir.join("typed.json.gz");
    let upload = Sink::File(file.clone()).start().await.unwrap();
    read.finish(header).await.unwrap().write("typed", upload, &tokio::sync::watch::channel(0).0).await.unwrap();
    let mut typed = String::new();
    flate2::read::GzDecoder::new(&std::fs::read(&file).unwrap()[..]).read_to_string(&mut typed).unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("set local timezone = 'UTC'").execute(&mut *tx).await.unwrap();
    let mut expected: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "select row_to_json(t)::text from regions t where t.org_id = {org}"
    )))
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let mut got = section_rows(&typed, "regions");
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "regions with every other type");
    assert!(typed.contains(r#""Odd \"name\"":-32768"#) && typed.contains(r#""f":"Infinity""#), "other types");
}

/// The select list the registry gives `classes`'s table, for an org snapshot.
async fn registry_select(tx: &mut sqlx::PgConnection, classes: &Classes) -> String {
    let catalog: Vec<String> = sqlx::query_scalar(
        "select column_name::text from information_schema.columns
         where table_schema = current_schema() and table_name = $1 order by ordinal_position",
    )
    .bind(classes.table)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    select_list(classes, &catalog, Apply::Pseudonyms, &[]).0.join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_run_fails_once_data_export_is_switched_off_and_finished_runs_are_audited() {
    let mut app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let api = api(&app, &app.token("admin@acme.test").await);
    let pending =
        api.post("/orgs/acme/exports").await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    // The admin switches Data Export off while the run waits for a worker.
    let s = app.login("admin@acme.test").await;
    let others = ["engage", "operations", "foundation", "learning", "alumni"].map(|m| ("module", m));
    assert_eq!(s.post_form("/orgs/acme/settings/modules", &others).await.status(), 303);
    // What an earlier attempt could have left at the run's key: an open multipart
    // upload it recorded, and an object (published after it lost its lease).
    let run = data_export::exports::runs::get_any(app.pool(), &pending).await.unwrap().unwrap();
    let key = format!("exports/{}/{pending}.json.gz", run.created_at.format("%Y/%m"));
    let s3 = app.s3_client();
    let upload = s3.create_multipart_upload().bucket("org-acme").key(&key).send().await.unwrap();
    sqlx::query("update export_runs set upload_id = $2 where id = $1")
        .bind(&pending)
        .bind(upload.upload_id().unwrap())
        .execute(app.pool())
        .await
        .unwrap();
    let body = aws_sdk_s3::primitives::ByteStream::from_static(b"left by an older attempt");
    s3.put_object().bucket("org-acme").key(&key).body(body).send().await.unwrap();
    assert_eq!(app.objects("org-acme").await, [key]);
    assert_eq!(app.open_uploads().len(), 1);
    app.start_workers();
    let run = app.wait_for_run(&pending, WAIT).await;
    assert_eq!(run.status, "failed");
    assert_eq!(run.error.as_deref(), Some("Data Export was switched off"));
    assert_eq!(run.object_key, None);
    // The cleanup follows the mark (it runs only once this attempt marked the run).
    let deadline = std::time::Instant::now() + WAIT;
    while !app.open_uploads().is_empty() || !app.objects("org-acme").await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the leftovers at the failed run's key stayed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(app.open_uploads().is_empty(), "the recorded upload was aborted");
    assert!(app.objects("org-acme").await.is_empty(), "nothing was written");
    let failed = app.audits("export.failed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].2, format!("export:{pending}"));
    assert_eq!(failed[0].3["error"], "Data Export was switched off");

    // Switched on again, an export completes, with its entry.
    let all = ["data_export", "engage", "operations", "foundation", "learning", "alumni"].map(|m| ("module", m));
    assert_eq!(s.post_form("/orgs/acme/settings/modules", &all).await.status(), 303);
    let id = api.post("/orgs/acme/exports").await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let run = app.wait_for_run(&id, WAIT).await;
    assert_eq!(run.status, "completed");
    let completed = app.audits("export.completed").await;
    assert_eq!(completed.len(), 1, "{completed:?}");
    assert_eq!(completed[0].0, Some(app.org_id("acme").await));
    assert_eq!(completed[0].2, format!("export:{id}"));
    assert_eq!(completed[0].3["sha256"], run.sha256.unwrap().as_str());
    assert_eq!(completed[0].3["rows"], run.rows_written);
    assert_eq!(app.audits("export.failed").await.len(), 1, "the completed run added no failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_command_starts_only_the_export_queues_workers() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let out = app.command().args(["export", "--org", "acme"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let kinds: Vec<(String,)> = sqlx::query_as("select distinct worker_type from apalis.workers order by 1")
        .fetch_all(app.pool())
        .await
        .unwrap();
    assert_eq!(kinds.into_iter().map(|k| k.0).collect::<Vec<_>>(), ["exports"]);
}

/// The sections are described and counted on two connections, the second on the
/// first one's exported snapshot: rows deleted after the read began are still in
/// every count and every section, whichever connection counted their table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_shared_over_two_connections_see_the_one_instant_of_the_read() {
    let app = TestApp::spawn_with(Options { members: 40, workers: false, ..Options::default() }).await;
    let (pool, org) = (app.pool(), app.org_id("acme").await);
    let tables = ["regions", "audit_log", "saved_views", "custom_field_values", "member_enrichment", "documents"];
    let mut before = serde_json::Map::new();
    for t in tables {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {t} where org_id = $1")))
            .bind(org)
            .fetch_one(pool)
            .await
            .unwrap();
        before.insert(t.to_string(), Value::from(n));
    }
    let mut read = Reader::begin(pool).await.unwrap();
    for t in tables {
        read.add(&SectionQuery::new(data_export::orgs::columns::of(t), format!("t.org_id = {org}"), Apply::Pseudonyms));
    }
    // Committed after the read began, before anything is counted.
    let mut deleted = 0;
    for t in &tables[1..] {
        let gone = sqlx::query(sqlx::AssertSqlSafe(format!("delete from {t} where org_id = $1")))
            .bind(org)
            .execute(pool)
            .await
            .unwrap()
            .rows_affected();
        assert!(gone > 0, "{t} had rows of the org to delete");
        deleted += gone;
    }
    let header = Header { format: "test", id_key: "export_id", fields: vec![], lead: None };
    let snapshot = read.finish(header).await.unwrap();
    assert_eq!(snapshot.connections(), 2, "a second connection shared the snapshot");
    assert_eq!(serde_json::from_str::<Value>(&snapshot.counts_json()).unwrap(), Value::Object(before.clone()));
    let file = app.storage_dir.join("shared.json.gz");
    let upload = Sink::File(file.clone()).start().await.unwrap();
    let outcome = snapshot.write("shared", upload, &tokio::sync::watch::channel(0).0).await.unwrap();
    let json = decode(&std::fs::read(&file).unwrap());
    for t in tables {
        let rows = json["sections"][t].as_array().unwrap_or_else(|| panic!("section {t}")).len();
        assert_eq!(Value::from(rows), before[t], "{t}: the rows of the read's instant");
    }
    assert_eq!(outcome.rows, before.values().map(|v| v.as_i64().unwrap()).sum::<i64>());
    assert!(deleted > 0);

    // With no second connection to be had, everything is counted on the read's own,
    // and the read still works (now without the deleted rows).
    let options = pool.connect_options().as_ref().clone();
    let one = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect_with(options).await.unwrap();
    let mut read = Reader::begin(&one).await.unwrap();
    for t in tables {
        read.add(&SectionQuery::new(data_export::orgs::columns::of(t), format!("t.org_id = {org}"), Apply::Pseudonyms));
    }
    let header = Header { format: "test", id_key: "export_id", fields: vec![], lead: None };
    let snapshot = read.finish(header).await.unwrap();
    assert_eq!(snapshot.connections(), 1);
    let counts: Value = serde_json::from_str(&snapshot.counts_json()).unwrap();
    assert_eq!(counts["regions"], before["regions"]);
    for t in &tables[1..] {
        assert_eq!(counts[*t], 0, "{t}");
    }
    let file = app.storage_dir.join("alone.json.gz");
    let upload = Sink::File(file.clone()).start().await.unwrap();
    let outcome = snapshot.write("alone", upload, &tokio::sync::watch::channel(0).0).await.unwrap();
    assert_eq!(Value::from(outcome.rows), before["regions"]);
}

/// `EXPORT_GZIP_LEVEL` trades size for speed and nothing else: the same JSON at
/// every level; a value out of 1..=9 is refused before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gzip_level_changes_the_size_not_the_content() {
    let app = TestApp::spawn_with(Options { members: 300, workers: false, ..Options::default() }).await;
    // `export --out path` with EXPORT_GZIP_LEVEL=level.
    let export_at = |level: &str, path: &std::path::Path| {
        app.command()
            .env("EXPORT_GZIP_LEVEL", level)
            .args(["export", "--org", "acme", "--out"])
            .arg(path)
            .output()
            .unwrap()
    };
    let mut files = Vec::new();
    for level in ["1", "5", "9"] {
        let path = app.storage_dir.join(format!("level-{level}.json.gz"));
        let out = export_at(level, &path);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let bytes = std::fs::read(&path).unwrap();
        let mut json = decode(&bytes);
        assert_valid(&json);
        for volatile in ["export_id", "generated_at", "snapshot_at"] {
            json.as_object_mut().unwrap().remove(volatile);
        }
        files.push((bytes.len(), json));
    }
    assert_eq!(files[0].1, files[1].1, "level 1 wrote other JSON than level 5");
    assert_eq!(files[2].1, files[1].1, "level 9 wrote other JSON than level 5");
    assert!(
        files[0].0 > files[1].0 && files[1].0 >= files[2].0,
        "sizes at 1, 5, 9: {:?}",
        (files[0].0, files[1].0, files[2].0)
    );

    let refused = app.storage_dir.join("refused.json.gz");
    for bad in ["0", "10", "fast"] {
        let out = export_at(bad, &refused);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("EXPORT_GZIP_LEVEL"), "{bad}");
        assert!(!refused.exists(), "{bad}: a file was written");
    }
}
