//! Restore from the UI and the API: `/platform/imports` (from a completed export, or
//! an uploaded snapshot file streamed to the platform bucket), its live history and
//! report, `POST /api/v1/platform/imports` and `GET .../{id}`; every refusal is a
//! 4xx with its reason and leaves nothing (no record, job, object or open upload);
//! nobody but a platform admin gets in.

use std::time::{Duration, Instant};

use data_export::routes::*;
use serde_json::{Value, json};

use crate::helpers::{Options, Session, TestApp, api};

const WAIT: Duration = Duration::from_secs(120);
const PLATFORM: &str = "platform@example.test";
const BOUNDARY: &str = "dxtest-boundary-7MA4YWxkTrZu0gW";

/// A completed export of acme, made through the API; returns its id.
async fn completed_acme_export(app: &TestApp) -> String {
    let admin = api(app, &app.token("admin@acme.test").await);
    let resp = admin.post("/orgs/acme/exports").await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_for_run(&id, Duration::from_secs(60)).await.status, "completed");
    id
}

/// Waits until the import leaves pending/running; returns (status, error).
async fn wait_for_import(app: &TestApp, id: &str) -> (String, Option<String>) {
    let started = Instant::now();
    loop {
        let (status, error): (String, Option<String>) =
            sqlx::query_as("select status, error from org_imports where id = $1")
                .bind(id)
                .fetch_one(app.pool())
                .await
                .unwrap();
        if status != "pending" && status != "running" {
            return (status, error);
        }
        assert!(started.elapsed() < WAIT, "import {id} still {status} after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The import of `slug` (the newest), once there is one.
async fn import_of(app: &TestApp, slug: &str) -> Option<String> {
    sqlx::query_as::<_, (String,)>("select id from org_imports where slug = $1 order by created_at desc limit 1")
        .bind(slug)
        .fetch_optional(app.pool())
        .await
        .unwrap()
        .map(|r| r.0)
}

/// What any import leaves: records, jobs on queue `imports`, `org.import_requested`
/// entries, objects under `imports/` in the platform bucket, open uploads.
async fn leftovers(app: &TestApp) -> (i64, i64, usize, Vec<String>, Vec<String>) {
    let (records, jobs): (i64, i64) = sqlx::query_as(
        "select (select count(*) from org_imports), (select count(*) from apalis.jobs where job_type = 'imports')",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    let audits = app.audits("org.import_requested").await.len();
    let objects = app
        .objects(app.state.storage.privacy_bucket())
        .await
        .into_iter()
        .filter(|k| k.starts_with("imports/"))
        .collect();
    (records, jobs, audits, objects, app.open_uploads())
}

async fn assert_nothing_left(app: &TestApp, what: &str) {
    assert_eq!(leftovers(app).await, (0, 0, 0, vec![], vec![]), "{what} left something behind");
}

/// A `multipart/form-data` body: the text fields in order, then the file (if any).
fn multipart(fields: &[(&str, &str)], file: Option<&[u8]>) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
    }
    if let Some(bytes) = file {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"snapshot.json.gz\"\r\n\
                 Content-Type: application/gzip\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// The upload form's action, as the page renders it (the CSRF token in its query).
async fn upload_action(s: &Session) -> String {
    let page = s.get(PLATFORM_IMPORTS).await.text().await.unwrap();
    let marker = format!("action=\"{PLATFORM_IMPORT_UPLOAD}?");
    let at = page.find(&marker).expect("the page has the upload form") + "action=\"".len();
    let action = page[at..].split('"').next().unwrap().replace("&amp;", "&");
    assert!(action.contains(&format!("csrf_token={}", s.csrf)), "the action carries the token: {action}");
    action
}

/// POSTs a multipart body to `action`; returns (status, body).
async fn post_multipart(s: &Session, action: &str, body: Vec<u8>) -> (u16, String) {
    let resp = s
        .client
        .post(format!("{}{action}", s.base))
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap_or_default())
}

/// A platform admin's API client: POST a JSON body.
async fn api_post(app: &TestApp, token: &str, body: &str) -> (u16, Value) {
    let resp = app
        .client()
        .post(app.url(&format!("{API_PREFIX}{API_IMPORTS}")))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Confirms the check `id` through the API.
async fn api_confirm(app: &TestApp, token: &str, id: &str) -> (u16, Value) {
    let resp = app
        .client()
        .post(app.url(&format!("{API_PREFIX}{}", path(API_IMPORT_CONFIRM, "", Some(id)))))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn api_get(app: &TestApp, token: &str, id: &str) -> (u16, Value) {
    let resp = app
        .client()
        .get(app.url(&format!("{API_PREFIX}{}", path(API_IMPORT, "", Some(id)))))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn members(app: &TestApp, org_id: i64) -> i64 {
    sqlx::query_as::<_, (i64,)>("select count(*) from memberships where org_id = $1")
        .bind(org_id)
        .fetch_one(app.pool())
        .await
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_platform_admin_restores_a_completed_export_from_the_page_and_the_api() {
    let app = TestApp::spawn().await;
    let export_id = completed_acme_export(&app).await;
    let acme = app.org_id("acme").await;
    let s = app.login(PLATFORM).await;

    // The page offers the export, and the navigation links to the page.
    let page = s.get(PLATFORM_IMPORTS).await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["cache-control"], "no-store");
    let page = page.text().await.unwrap();
    assert!(page.contains(&format!("value=\"{export_id}\"")), "the export is a choice");
    assert!(page.contains(&format!("href=\"{PLATFORM_IMPORTS}\"")), "the navigation links to the page");
    assert!(page.contains("No imports yet."));

    // From the page's form.
    let resp = s
        .post_form(
            PLATFORM_IMPORTS,
            &[("source_export_id", &export_id), ("slug", "acme-restored"), ("name", "  Acme Restored  ")],
        )
        .await;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], &format!("{PLATFORM_IMPORTS}?notice=requested"));
    // The first step is a check: it writes nothing, and its row shows who would get in.
    let check = import_of(&app, "acme-restored").await.expect("the check is recorded");
    let (status, error) = wait_for_import(&app, &check).await;
    assert_eq!((status.as_str(), error), ("completed", None));
    let none: Option<(i64,)> = sqlx::query_as("select id from organizations where slug = 'acme-restored'")
        .fetch_optional(app.pool())
        .await
        .unwrap();
    assert!(none.is_none(), "a check creates no org");
    let preview = s.htmx_get(&path(PLATFORM_IMPORT_ROW, "", Some(&check))).await.text().await.unwrap();
    assert!(preview.contains("data-kind=\"check\"") && preview.contains(">checked<"), "{preview}");
    assert!(preview.contains("admin@acme.test") && preview.contains("org admin"), "admins are marked: {preview}");
    let confirm = path(PLATFORM_IMPORT_CONFIRM, "", Some(&check));
    assert!(preview.contains(&format!("action=\"{confirm}\"")), "the Confirm button: {preview}");
    let resp = s.post_form(&confirm, &[]).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], &format!("{PLATFORM_IMPORTS}?notice=confirmed"));
    let id = import_of(&app, "acme-restored").await.unwrap();
    assert_ne!(id, check, "the confirmation is an import of its own");
    let (status, error) = wait_for_import(&app, &id).await;
    assert_eq!((status.as_str(), error), ("completed", None));
    // Confirmed once only.
    let again = s.post_form(&confirm, &[]).await;
    assert_eq!(again.status(), 409);
    assert!(again.text().await.unwrap().contains("already confirmed"));
    let restored = app.org_id("acme-restored").await;
    let (name, via, restored_id): (String, String, Option<i64>) =
        sqlx::query_as("select name, via, restored_org_id from org_imports where id = $1")
            .bind(&id)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!((name.as_str(), via.as_str(), restored_id), ("Acme Restored", "ui", Some(restored)));
    let (org_name,): (String,) = sqlx::query_as("select name from organizations where id = $1")
        .bind(restored)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(org_name, "Acme Restored");
    assert_eq!(members(&app, restored).await, members(&app, acme).await, "every membership came back");
    let acme_counts = app.section_counts(acme).await;
    for ((section, n), (_, in_acme)) in app.section_counts(restored).await.into_iter().zip(acme_counts) {
        if section != "audit_log" {
            assert_eq!(n, in_acme, "{section}");
        }
    }
    let platform_id: (i64,) =
        sqlx::query_as("select id from users where email = $1").bind(PLATFORM).fetch_one(app.pool()).await.unwrap();
    let requested = app.audits("org.import_requested").await;
    assert_eq!(requested.len(), 1);
    let (org, actor, target, details) = &requested[0];
    assert_eq!((*org, *actor, target.as_str()), (None, Some(platform_id.0), format!("import:{check}").as_str()));
    assert_eq!(details["source_export_id"], export_id.as_str());
    assert_eq!(details["slug"], "acme-restored");
    let confirmed = app.audits("org.import_confirmed").await;
    assert_eq!(confirmed.len(), 1);
    let (org, actor, target, details) = &confirmed[0];
    assert_eq!((*org, *actor, target.as_str()), (None, Some(platform_id.0), format!("import:{id}").as_str()));
    assert_eq!(details["check_id"], check.as_str());

    // The page shows it with its report, no longer polling; the row alone says the same.
    let page = s.get(&format!("{PLATFORM_IMPORTS}?notice=requested")).await.text().await.unwrap();
    assert!(page.contains("Check started"), "the notice");
    let row_start = page.find(&format!("data-import-id=\"{id}\"")).expect("the import's row");
    let row = &page[row_start..page[row_start..].find("</tr>").unwrap() + row_start];
    assert!(row.contains("data-status=\"completed\""), "{row}");
    assert!(!row.contains("hx-get"), "a finished row does not poll: {row}");
    assert!(row.contains("rows in") && row.contains("matched") && row.contains("Media:"), "the report: {row}");
    assert!(row.contains("restored-org\">acme-restored<"), "names the new org: {row}");
    assert!(row.contains(&export_id) && row.contains(" of acme"), "the source: {row}");
    let fragment = s.htmx_get(&path(PLATFORM_IMPORT_ROW, "", Some(&id))).await;
    assert_eq!(fragment.status(), 200);
    let fragment = fragment.text().await.unwrap();
    assert!(fragment.trim_start().starts_with("<tr") && fragment.contains("data-status=\"completed\""));

    // From the API.
    let token = app.token(PLATFORM).await;
    let body = json!({ "source_export_id": export_id, "slug": "acme-api", "name": "Acme via API" }).to_string();
    let (status, created) = api_post(&app, &token, &body).await;
    assert_eq!(status, 202, "{created}");
    assert_eq!((created["status"].as_str(), created["kind"].as_str()), (Some("pending"), Some("check")));
    let api_check = created["id"].as_str().unwrap().to_string();
    assert_eq!(wait_for_import(&app, &api_check).await, ("completed".to_string(), None));
    let (_, checked) = api_get(&app, &token, &api_check).await;
    assert_eq!(checked["kind"], "check");
    assert!(checked["org"].is_null() && checked["report"]["dry_run"] == true, "{checked}");
    let admin = checked["report"]["matched"].as_array().unwrap().iter().find(|m| m["email"] == "admin@acme.test");
    assert_eq!(admin.unwrap()["role"], "admin", "{checked}");
    let (status, confirmed) = api_confirm(&app, &token, &api_check).await;
    assert_eq!(status, 202, "{confirmed}");
    assert_eq!(
        (confirmed["kind"].as_str(), confirmed["check_id"].as_str()),
        (Some("import"), Some(api_check.as_str()))
    );
    let api_id = confirmed["id"].as_str().unwrap().to_string();
    assert_eq!(wait_for_import(&app, &api_id).await, ("completed".to_string(), None));
    assert_eq!(api_confirm(&app, &token, &api_check).await.0, 409, "confirmed once only");
    assert_eq!(api_confirm(&app, &token, &api_id).await.0, 400, "an import is not a check");
    assert_eq!(api_confirm(&app, &token, "01JAAAAAAAAAAAAAAAAAAAAAAA").await.0, 404);
    let (status, got) = api_get(&app, &token, &api_id).await;
    assert_eq!(status, 200);
    for key in ["id", "status", "slug", "name", "source_export_id", "created_at", "started_at", "finished_at"] {
        assert!(!got[key].is_null(), "{key} in {got}");
    }
    assert_eq!(got["status"], "completed");
    assert_eq!(got["org"], "acme-api");
    assert_eq!(got["source_export_id"], export_id.as_str());
    assert!(got["error"].is_null());
    assert!(got["report"]["rows"].as_u64().unwrap() > 100, "{got}");
    assert_eq!(got["report"]["org_id"], app.org_id("acme-api").await);
    assert_eq!(got["report"]["source"]["recorded_run"], true);
    assert!(got["report"]["media"]["not_copied"].is_null(), "an export's media is copied: {got}");
    let via: (String,) =
        sqlx::query_as("select via from org_imports where id = $1").bind(&api_id).fetch_one(app.pool()).await.unwrap();
    assert_eq!(via.0, "api");
    // An unknown id, and one that is not an id.
    assert_eq!(api_get(&app, &token, "01JAAAAAAAAAAAAAAAAAAAAAAA").await.0, 404);
    assert_eq!(api_get(&app, &token, "not-an-id").await.0, 404);
    assert_eq!(s.get(&path(PLATFORM_IMPORT_ROW, "", Some("01JAAAAAAAAAAAAAAAAAAAAAAA"))).await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pending_row_polls_until_its_import_has_finished() {
    let mut app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    // An export made by the command line (no workers are running).
    let out = app.command().args(["export", "--org", "acme"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (export_id,): (String,) =
        sqlx::query_as("select id from export_runs where status = 'completed'").fetch_one(app.pool()).await.unwrap();
    let token = app.token(PLATFORM).await;
    let body = json!({ "source_export_id": export_id, "slug": "acme-later", "name": "Acme Later" }).to_string();
    let (status, created) = api_post(&app, &token, &body).await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let s = app.login(PLATFORM).await;
    let row_url = path(PLATFORM_IMPORT_ROW, "", Some(&id));
    let row = s.htmx_get(&row_url).await.text().await.unwrap();
    assert!(row.contains("data-status=\"pending\""), "{row}");
    assert!(row.contains(&format!("hx-get=\"{row_url}\"")) && row.contains("hx-trigger=\"every 2s\""), "{row}");
    let (status, got) = api_get(&app, &token, &id).await;
    assert_eq!((status, got["status"].as_str()), (200, Some("pending")));
    assert!(got["org"].is_null() && got["report"].is_null());

    // A second import into the same slug while this one is pending: refused.
    let (status, refused) = api_post(&app, &token, &body).await;
    assert_eq!(status, 409, "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("already pending or running"), "{refused}");
    let resp =
        s.post_form(PLATFORM_IMPORTS, &[("source_export_id", &export_id), ("slug", "acme-later"), ("name", "x")]).await;
    assert_eq!(resp.status(), 409);
    assert!(resp.text().await.unwrap().contains("already pending or running"));
    let (status, refused) = api_confirm(&app, &token, &id).await;
    assert_eq!(status, 409, "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("has not finished yet"), "{refused}");
    let (n,): (i64,) = sqlx::query_as("select count(*) from org_imports").fetch_one(app.pool()).await.unwrap();
    assert_eq!(n, 1, "the refusals wrote nothing");

    app.start_workers();
    assert_eq!(wait_for_import(&app, &id).await, ("completed".to_string(), None));
    let row = s.htmx_get(&row_url).await.text().await.unwrap();
    assert!(row.contains("data-status=\"completed\"") && !row.contains("hx-get"), "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_uploaded_snapshot_streams_to_storage_and_is_restored() {
    let app = TestApp::spawn().await;
    let text = app.export_acme_to_file("upload.json.gz");
    assert!(text.contains("\"format\""));
    let file = std::fs::read(app.storage_dir.join("upload.json.gz")).unwrap();
    let s = app.login(PLATFORM).await;
    let action = upload_action(&s).await;

    let body = multipart(&[("slug", "acme-uploaded"), ("name", "Acme Uploaded")], Some(&file));
    let (status, page) = post_multipart(&s, &action, body).await;
    assert_eq!(status, 303, "{page}");
    let id = import_of(&app, "acme-uploaded").await.expect("the import is recorded");
    let (key, bytes, export): (Option<String>, Option<i64>, Option<String>) =
        sqlx::query_as("select upload_key, upload_bytes, source_export_id from org_imports where id = $1")
            .bind(&id)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(key.as_deref(), Some(format!("imports/{id}.json.gz").as_str()));
    assert_eq!(bytes, Some(file.len() as i64));
    assert!(export.is_none());
    let (status, error) = wait_for_import(&app, &id).await;
    assert_eq!((status.as_str(), error), ("completed", None));
    // A checked upload stays in storage for its confirmation.
    assert_eq!(leftovers(&app).await.3, vec![format!("imports/{id}.json.gz")]);
    let resp = s.post_form(&path(PLATFORM_IMPORT_CONFIRM, "", Some(&id)), &[]).await;
    assert_eq!(resp.status(), 303);
    let check = id;
    let id = import_of(&app, "acme-uploaded").await.unwrap();
    assert_ne!(id, check);
    let (status, error) = wait_for_import(&app, &id).await;
    assert_eq!((status.as_str(), error), ("completed", None));
    let restored = app.org_id("acme-uploaded").await;
    assert_eq!(members(&app, restored).await, members(&app, app.org_id("acme").await).await);
    let token = app.token(PLATFORM).await;
    let (_, got) = api_get(&app, &token, &id).await;
    assert!(got["source_export_id"].is_null());
    assert!(got["report"]["media"]["not_copied"].as_str().is_some_and(|s| !s.is_empty()), "{got}");
    let page = s.get(PLATFORM_IMPORTS).await.text().await.unwrap();
    assert!(page.contains("Uploaded file") && page.contains("not copied"), "the row says so");

    // The uploaded file goes once the import has finished; no upload stays open.
    let started = Instant::now();
    while !leftovers(&app).await.3.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "the uploaded file was not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(app.open_uploads().is_empty(), "{:?}", app.open_uploads());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_over_the_limit_empty_or_not_gzip_are_refused_and_leave_nothing() {
    const LIMIT: u64 = 9 * 1024 * 1024;
    let app =
        TestApp::spawn_with(Options { import_max_bytes: Some(LIMIT), workers: false, ..Default::default() }).await;
    let s = app.login(PLATFORM).await;
    let action = upload_action(&s).await;
    let page = s.get(PLATFORM_IMPORTS).await.text().await.unwrap();
    assert!(page.contains("at most 9 MiB"), "the page states the limit");
    let target = [("slug", "too-big"), ("name", "Too Big")];
    let gzip_like = |len: usize| {
        let mut bytes: Vec<u8> = (0..len).map(|i| (i * 7919 % 251) as u8).collect();
        bytes[..2].copy_from_slice(&[0x1f, 0x8b]);
        bytes
    };

    // Just over the limit: the first 8 MiB part is already stored when the limit is
    // passed, and that upload is aborted.
    let (status, body) = post_multipart(&s, &action, multipart(&target, Some(&gzip_like(LIMIT as usize + 1)))).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("larger than the upload limit") && body.contains("IMPORT_MAX_BYTES"), "{body}");
    assert_nothing_left(&app, "a file over the limit").await;

    // Far over, by its Content-Length: refused before the body is read.
    let resp = s
        .client
        .post(format!("{}{action}", s.base))
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(multipart(&target, Some(&gzip_like(3 * LIMIT as usize))))
        .send()
        .await;
    match resp {
        Ok(resp) => {
            assert_eq!(resp.status(), 413);
            assert!(resp.text().await.unwrap_or_default().contains("larger than the upload limit"));
        }
        // The server answered and closed while the client was still sending.
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    assert_nothing_left(&app, "a file far over the limit").await;

    // Empty, not gzip, no file, the file before the slug, an unknown field.
    for (what, body, reason) in [
        ("an empty file", multipart(&target, Some(b"")), "The file is empty"),
        ("one byte", multipart(&target, Some(b"\x1f")), "not gzip"),
        ("not gzip", multipart(&target, Some(b"{\"format\": 1}")), "not gzip"),
        ("no file", multipart(&target, None), "no file"),
        ("the file first", multipart(&[], Some(&gzip_like(100))), "must come before"),
        ("an unknown field", multipart(&[("slug", "x"), ("bogus", "1")], Some(&gzip_like(100))), "bogus"),
        ("a repeated field", multipart(&[("slug", "abc"), ("slug", "abd")], None), "repeated"),
    ] {
        let (status, page) = post_multipart(&s, &action, body).await;
        assert_eq!(status, 400, "{what}: {page}");
        assert!(page.contains(reason), "{what}: {reason:?} not in the page");
        assert_nothing_left(&app, what).await;
    }
    // Not multipart at all.
    let resp =
        s.client.post(format!("{}{action}", s.base)).header("content-type", "application/gzip").body("x").send().await;
    assert_eq!(resp.unwrap().status(), 403, "no token where a non-multipart body would carry it");
    // No CSRF token in the URL, or a wrong one.
    let body = || multipart(&target, Some(&gzip_like(100)));
    let (status, _) = post_multipart(&s, PLATFORM_IMPORT_UPLOAD, body()).await;
    assert_eq!(status, 403);
    let (status, _) = post_multipart(&s, &format!("{PLATFORM_IMPORT_UPLOAD}?csrf_token=forged"), body()).await;
    assert_eq!(status, 403);
    assert_nothing_left(&app, "a forged upload").await;

    // Within the limit, the same form is taken (and runs once workers start).
    let (status, page) = post_multipart(&s, &action, multipart(&target, Some(&gzip_like(100)))).await;
    assert_eq!(status, 303, "{page}");
    let objects = leftovers(&app).await.3;
    assert_eq!(objects.len(), 1, "{objects:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_slugs_names_and_exports_are_refused_with_the_reason_and_write_nothing() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let out = app.command().args(["export", "--org", "acme"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (export_id,): (String,) =
        sqlx::query_as("select id from export_runs where status = 'completed'").fetch_one(app.pool()).await.unwrap();
    // A run that is not completed.
    let failed_id = ulid::Ulid::generate().to_string();
    sqlx::query(
        "insert into export_runs (id, org_id, status, trigger, error) values ($1, $2, 'failed', 'manual', 'x')",
    )
    .bind(&failed_id)
    .bind(app.org_id("globex").await)
    .execute(app.pool())
    .await
    .unwrap();
    let s = app.login(PLATFORM).await;
    let token = app.token(PLATFORM).await;
    let action = upload_action(&s).await;
    let unknown = "01JAAAAAAAAAAAAAAAAAAAAAAA";
    let long_name = "n".repeat(201);
    let cases: Vec<(&str, &str, &str, &str, u16, &str)> = vec![
        ("a malformed slug", &export_id, "Bad Slug!", "Name", 400, "not a valid org slug"),
        ("a slug with a NUL", &export_id, "ab\u{0}c", "Name", 400, "not a valid org slug"),
        ("a taken slug", &export_id, "acme", "Name", 409, "taken by an existing org"),
        ("an empty name", &export_id, "new-org", "   ", 400, "1 to 200 characters"),
        ("a long name", &export_id, "new-org", &long_name, 400, "1 to 200 characters"),
        ("a name with a control character", &export_id, "new-org", "a\u{7}b", 400, "control characters"),
        ("an unknown export", unknown, "new-org", "Name", 404, "no export with id"),
        ("a malformed export id", "../etc", "new-org", "Name", 404, "no export with id"),
        ("an empty export id", "", "new-org", "Name", 404, "no export with id"),
        ("a failed export", &failed_id, "new-org", "Name", 400, "choose a completed export"),
    ];
    for (what, export, slug, name, want, reason) in &cases {
        let resp = s.post_form(PLATFORM_IMPORTS, &[("source_export_id", export), ("slug", slug), ("name", name)]).await;
        assert_eq!(resp.status().as_u16(), *want, "page, {what}");
        let page = resp.text().await.unwrap();
        assert!(page.contains(reason), "page, {what}: {reason:?} not in it");
        if *slug == "acme" {
            assert!(page.contains("value=\"acme\""), "{what}: the form keeps what was typed");
        }
        let body = json!({ "source_export_id": export, "slug": slug, "name": name }).to_string();
        let (status, json) = api_post(&app, &token, &body).await;
        assert_eq!(status, *want, "API, {what}: {json}");
        assert!(json["message"].as_str().unwrap().contains(reason), "API, {what}: {json}");
        // Uploads check the same slug and name before storing a byte.
        if !export.is_empty() && *export == export_id.as_str() {
            let (status, page) =
                post_multipart(&s, &action, multipart(&[("slug", slug), ("name", name)], Some(b"\x1f\x8bxx"))).await;
            assert_eq!(status, *want, "upload, {what}");
            assert!(page.contains(reason), "upload, {what}: {reason:?} not in it");
        }
        assert_nothing_left(&app, what).await;
    }
    // Bodies the API does not take.
    for body in [
        "",
        "{}",
        "[1]",
        "{\"slug\": 1}",
        &json!({ "source_export_id": export_id, "slug": "new-org" }).to_string(),
        &json!({ "source_export_id": export_id, "slug": "new-org", "name": "N", "dry_run": true }).to_string(),
    ] {
        let (status, json) = api_post(&app, &token, body).await;
        assert_eq!(status, 400, "{body}: {json}");
        assert!(json["message"].as_str().unwrap().contains("source_export_id"), "{json}");
    }
    // Unknown and repeated form fields.
    let resp = s
        .post_form(
            PLATFORM_IMPORTS,
            &[("source_export_id", &export_id), ("slug", "new-org"), ("name", "N"), ("x", "1")],
        )
        .await;
    assert_eq!(resp.status(), 400);
    assert_nothing_left(&app, "bad bodies").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nobody_but_a_platform_admin_gets_in() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let out = app.command().args(["export", "--org", "acme"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (export_id,): (String,) =
        sqlx::query_as("select id from export_runs where status = 'completed'").fetch_one(app.pool()).await.unwrap();
    let form = [("source_export_id", export_id.as_str()), ("slug", "stolen"), ("name", "Stolen")];
    let row = path(PLATFORM_IMPORT_ROW, "", Some("01JAAAAAAAAAAAAAAAAAAAAAAA"));
    let body = json!({ "source_export_id": export_id, "slug": "stolen", "name": "Stolen" }).to_string();
    for email in [None, Some("member@acme.test"), Some("admin@acme.test"), Some("admin@globex.test")] {
        let s = match email {
            Some(e) => app.login(e).await,
            None => app.anonymous().await,
        };
        let (html, api_status) = if email.is_some() { (403, 403) } else { (303, 401) };
        assert_eq!(s.get(PLATFORM_IMPORTS).await.status(), html, "{email:?} page");
        assert_eq!(s.get(&row).await.status(), html, "{email:?} row");
        assert_eq!(s.post_form(PLATFORM_IMPORTS, &form).await.status(), html, "{email:?} from an export");
        let upload = format!("{PLATFORM_IMPORT_UPLOAD}?csrf_token={}", s.csrf);
        let (status, _) = post_multipart(&s, &upload, multipart(&form[1..], Some(b"\x1f\x8bxx"))).await;
        assert_eq!(status, html, "{email:?} upload");
        if email.is_none() {
            let home = s.get(PLATFORM_IMPORTS).await;
            assert_eq!(home.headers()["location"], LOGIN);
        } else {
            let home = s.get(HOME).await.text().await.unwrap();
            assert!(!home.contains(&format!("href=\"{PLATFORM_IMPORTS}\"")), "{email:?} sees no link");
        }
        let token = match email {
            Some(e) => app.token(e).await,
            None => String::new(),
        };
        let (status, json) = api_post(&app, &token, &body).await;
        assert_eq!(status, api_status, "{email:?} API POST");
        if email.is_some() {
            assert_eq!(json["error"], "forbidden", "{json}");
        }
        assert_eq!(api_get(&app, &token, "01JAAAAAAAAAAAAAAAAAAAAAAA").await.0, api_status, "{email:?} API GET");
    }
    assert_nothing_left(&app, "refused requests").await;
    let (n,): (i64,) =
        sqlx::query_as("select count(*) from organizations where slug = 'stolen'").fetch_one(app.pool()).await.unwrap();
    assert_eq!(n, 0);
}

/// The CSRF token in a URL is taken only by the upload route: a multipart POST
/// elsewhere with `?csrf_token=` is refused, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_upload_takes_its_csrf_token_from_the_url() {
    let app = TestApp::spawn().await;
    let admin = app.login("admin@acme.test").await;
    let before: i64 = sqlx::query_scalar("select count(*) from export_runs").fetch_one(app.pool()).await.unwrap();
    let action = format!("{}?csrf_token={}", path(ORG_EXPORTS, "acme", None), admin.csrf);
    let (status, body) = post_multipart(&admin, &action, multipart(&[("x", "y")], None)).await;
    assert_eq!(status, 403, "{body}");
    let after: i64 = sqlx::query_scalar("select count(*) from export_runs").fetch_one(app.pool()).await.unwrap();
    assert_eq!(after, before, "no export was triggered");
    // The same token in a form field is what that route takes.
    let resp = admin.post_form(&path(ORG_EXPORTS, "acme", None), &[]).await;
    assert!(resp.status().is_success() || resp.status().is_redirection(), "{}", resp.status());
}

/// Issue 31, 5: the restore page offered only the 100 newest exports of all orgs.
/// Now it takes the org first, then pages through that org's completed exports,
/// newest first, with dates and sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_restore_page_picks_the_org_then_pages_its_completed_exports() {
    let app = TestApp::spawn_with(Options { workers: false, members: 2, ..Default::default() }).await;
    let (acme, globex) = (app.org_id("acme").await, app.org_id("globex").await);
    let mut globex_runs = Vec::new();
    for i in 0..25i64 {
        let id = ulid::Ulid::generate().to_string();
        sqlx::query(
            "insert into export_runs (id, org_id, status, trigger, created_at, finished_at, object_key, sha256, size_bytes)
             values ($1, $2, 'completed', 'manual', now() - make_interval(days => 30 - $3::int),
                     now() - make_interval(days => 30 - $3::int), 'exports/x/' || $1, 'ab', 1000 + $3)",
        )
        .bind(&id)
        .bind(globex)
        .bind(i as i32)
        .execute(app.pool())
        .await
        .unwrap();
        globex_runs.push(id);
    }
    globex_runs.reverse(); // newest first
    let acme_run = ulid::Ulid::generate().to_string();
    sqlx::query(
        "insert into export_runs (id, org_id, status, trigger, finished_at, object_key, sha256, size_bytes)
         values ($1, $2, 'completed', 'manual', now(), 'exports/y', 'cd', 5)",
    )
    .bind(&acme_run)
    .bind(acme)
    .execute(app.pool())
    .await
    .unwrap();
    let s = app.login(PLATFORM).await;
    let radios = |page: &str| -> Vec<String> {
        page.match_indices("name=\"source_export_id\" value=\"")
            .map(|(at, m)| page[at + m.len()..].split('"').next().unwrap().to_string())
            .collect()
    };

    // The most recently exported org is chosen first; both are offered.
    let page = s.get(PLATFORM_IMPORTS).await.text().await.unwrap();
    assert!(page.contains("value=\"globex\"") && page.contains("value=\"acme\""), "both orgs are offered");
    assert_eq!(radios(&page), vec![acme_run.clone()]);

    let page = s.get(&format!("{PLATFORM_IMPORTS}?org=globex")).await.text().await.unwrap();
    assert_eq!(radios(&page), globex_runs[..20].to_vec(), "the newest 20, newest first");
    assert!(page.contains("1.0 kB"), "sizes");
    let older = format!("{PLATFORM_IMPORTS}?org=globex&amp;before={}", globex_runs[19]);
    assert!(page.contains(&older), "the Older link: {older}");
    let page = s.get(&older.replace("&amp;", "&")).await.text().await.unwrap();
    assert_eq!(radios(&page), globex_runs[20..].to_vec(), "then the rest");
    assert!(page.contains("Newest") && !page.contains("Older exports"));

    // An org without exports, and a cursor that is not an id.
    let page = s.get(&format!("{PLATFORM_IMPORTS}?org=nope")).await;
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("No org"));
    assert_eq!(s.get(&format!("{PLATFORM_IMPORTS}?org=globex&before=../x")).await.status(), 400);
}

/// Issue 31, 2: the confirmation restores what its check showed, or nothing. When
/// who gets in has changed since the check, the confirmation fails and writes
/// nothing; a failed confirmation leaves the check to be confirmed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_confirmation_does_only_what_its_check_showed() {
    let app = TestApp::spawn_with(Options { members: 4, ..Default::default() }).await;
    let export_id = completed_acme_export(&app).await;
    let token = app.token(PLATFORM).await;
    let body = json!({ "source_export_id": export_id, "slug": "acme-checked", "name": "Acme Checked" }).to_string();
    let (status, created) = api_post(&app, &token, &body).await;
    assert_eq!(status, 202, "{created}");
    let check = created["id"].as_str().unwrap().to_string();
    assert_eq!(wait_for_import(&app, &check).await, ("completed".to_string(), None));
    let set_member = |status: &'static str| {
        sqlx::query(
            "update memberships set status = $1 where org_id = (select id from organizations where slug = 'acme')
             and user_id = (select id from users where email = 'member@acme.test')",
        )
        .bind(status)
    };
    // Since the check, a member was suspended in acme: the preview said active.
    set_member("suspended").execute(app.pool()).await.unwrap();
    let (status, confirmed) = api_confirm(&app, &token, &check).await;
    assert_eq!(status, 202, "{confirmed}");
    let first = confirmed["id"].as_str().unwrap().to_string();
    let (status, error) = wait_for_import(&app, &first).await;
    assert_eq!(status, "failed");
    assert!(error.as_deref().unwrap_or_default().contains("changed since the check"), "{error:?}");
    let none: Option<(i64,)> = sqlx::query_as("select id from organizations where slug = 'acme-checked'")
        .fetch_optional(app.pool())
        .await
        .unwrap();
    assert!(none.is_none(), "a refused confirmation writes nothing");
    // As it was at the check: confirmed again, it restores.
    set_member("active").execute(app.pool()).await.unwrap();
    let (status, confirmed) = api_confirm(&app, &token, &check).await;
    assert_eq!(status, 202, "a failed confirmation leaves the check confirmable: {confirmed}");
    let second = confirmed["id"].as_str().unwrap().to_string();
    assert_eq!(wait_for_import(&app, &second).await, ("completed".to_string(), None));
    assert_eq!(api_confirm(&app, &token, &check).await.0, 409);
    let (_, got) = api_get(&app, &token, &check).await;
    assert_eq!(got["confirmed_by"], second.as_str());
}

/// A running import shows the step it is in, on its row and in the API, while its
/// one transaction is still open: here it is held at the documents' write by a lock
/// on that table. Every step is recorded in order (by a trigger of this test's on
/// the record), and none is left once the import has finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_import_shows_its_step_on_its_row_and_in_the_api() {
    let app = TestApp::spawn().await;
    let export_id = completed_acme_export(&app).await;
    sqlx::raw_sql(
        "create table steps_seen (n bigserial primary key, import_id text not null, step text);
         create function record_step() returns trigger language plpgsql as $$
         begin insert into steps_seen (import_id, step) values (new.id, new.step); return null; end $$;
         create trigger org_imports_steps_seen after update of step on org_imports
             for each row when (new.step is distinct from old.step) execute function record_step();",
    )
    .execute(app.pool())
    .await
    .unwrap();
    let counts: Value = sqlx::query_scalar("select counts from export_runs where id = $1")
        .bind(&export_id)
        .fetch_one(app.pool())
        .await
        .unwrap();
    let present: Vec<&str> =
        data_export::orgs::sections::SECTIONS.iter().map(|s| s.table).filter(|t| counts.get(*t).is_some()).collect();
    let writing: Vec<String> = present
        .iter()
        .enumerate()
        .map(|(i, t)| format!("writing section {} of {}: {t}", i + 1, present.len()))
        .collect();
    let held_at = writing.iter().find(|s| s.ends_with(": documents")).unwrap().clone();

    // Inserts into documents wait for this transaction.
    let mut blocker = app.pool().begin().await.unwrap();
    sqlx::query("lock table documents in share mode").execute(&mut *blocker).await.unwrap();
    let token = app.token(PLATFORM).await;
    let body = json!({ "source_export_id": export_id, "slug": "acme-steps", "name": "Acme Steps" }).to_string();
    let (status, created) = api_post(&app, &token, &body).await;
    assert_eq!(status, 202, "{created}");
    let check = created["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    loop {
        let (_, got) = api_get(&app, &token, &check).await;
        if got["step"] == held_at.as_str() {
            assert_eq!(got["status"], "running", "{got}");
            break;
        }
        assert!(["pending", "running"].contains(&got["status"].as_str().unwrap()), "{got}");
        assert!(started.elapsed() < WAIT, "the check never showed {held_at:?}: {got}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = app.login(PLATFORM).await;
    let row = s.htmx_get(&path(PLATFORM_IMPORT_ROW, "", Some(&check))).await.text().await.unwrap();
    assert!(row.contains(&format!("import-step\">{held_at}<")), "the row shows the step: {row}");
    assert!(row.contains("hx-get") && row.contains("data-status=\"running\""), "and keeps polling: {row}");
    blocker.commit().await.unwrap();
    assert_eq!(wait_for_import(&app, &check).await, ("completed".to_string(), None));
    let (_, got) = api_get(&app, &token, &check).await;
    assert!(got["step"].is_null(), "no step once finished: {got}");
    let row = s.htmx_get(&path(PLATFORM_IMPORT_ROW, "", Some(&check))).await.text().await.unwrap();
    assert!(!row.contains("import-step"), "{row}");

    let seen = |id: String| {
        let pool = app.pool().clone();
        async move {
            sqlx::query_scalar::<_, Option<String>>("select step from steps_seen where import_id = $1 order by n")
                .bind(id)
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };
    let mut want: Vec<Option<String>> =
        ["reading the file", "checking the file", "matching people"].iter().map(|s| Some(s.to_string())).collect();
    want.extend(writing.iter().cloned().map(Some));
    // A check writes nothing for good: no media, no audit entry, and its record is
    // completed after the engine.
    let mut check_want = want.clone();
    check_want.push(None);
    assert_eq!(seen(check.clone()).await, check_want);

    let (status, confirmed) = api_confirm(&app, &token, &check).await;
    assert_eq!(status, 202, "{confirmed}");
    let id = confirmed["id"].as_str().unwrap().to_string();
    assert_eq!(wait_for_import(&app, &id).await, ("completed".to_string(), None));
    want.extend([Some("copying media".to_string()), Some("finishing".to_string()), None]);
    assert_eq!(seen(id.clone()).await, want);
    assert_eq!(api_get(&app, &token, &id).await.1["report"]["write_path"], "fast");
}
