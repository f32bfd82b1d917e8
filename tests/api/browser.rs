//! A real browser: headless Chromium driven through ChromeDriver (Debian's chromium
//! and chromium-driver packages), against the app on a random port.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::{exports::assert_valid, exports::decode, helpers::*};

/// A running chromedriver, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (Debian package chromium-driver; scripts/test installs it)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, profile: &Path, downloads: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                format!("--user-data-dir={}", profile.display()),
            ],
            "prefs": {
                "download.default_directory": downloads.display().to_string(),
                "download.prompt_for_download": false,
                "safebrowsing.enabled": false,
            },
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session")
}

/// Saves a screenshot when `SCREENSHOT_DIR` is set (to look at the pages by eye).
async fn screenshot(c: &Client, name: &str) {
    if let Ok(dir) = std::env::var("SCREENSHOT_DIR") {
        c.set_window_size(1280, 2200).await.unwrap();
        let png = c.screenshot().await.unwrap();
        std::fs::write(Path::new(&dir).join(format!("{name}.png")), png).unwrap();
    }
}

/// Waits (up to 30 s) for a finished `.json.gz` download in `dir`.
async fn wait_for_download(dir: &Path) -> PathBuf {
    let started = Instant::now();
    loop {
        if let Some(f) = downloaded(dir) {
            return f;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no download arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn downloaded(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).find(|p| p.to_string_lossy().ends_with(".json.gz"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_admin_triggers_watches_it_complete_live_and_downloads() {
    let app = TestApp::spawn_with(Options { members: 2_000, ..Default::default() }).await;
    let driver = Driver::start();
    let profile = app.storage_dir.join("chromium-profile");
    let downloads = app.storage_dir.join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let c = browser(&driver, &profile, &downloads).await;

    sign_in(&c, &app, "admin@acme.test").await;

    c.goto(&app.url("/orgs/acme/settings/backups")).await.unwrap();
    assert!(c.source().await.unwrap().contains("No exports yet"));
    // A marker that a page load would wipe: it proves the history updates in place.
    c.execute("window.__noReload = 'still here'; return null;", vec![]).await.unwrap();
    let row = trigger_and_wait_for_completed_row(&c, "the row reaches completed without a reload").await;
    let marker = c.execute("return window.__noReload || null;", vec![]).await.unwrap();
    assert_eq!(marker, json!("still here"), "the page was not reloaded");
    assert_eq!(c.current_url().await.unwrap().path(), "/orgs/acme/settings/backups");
    let id = row.attr("data-export-id").await.unwrap().unwrap();

    row.find(Locator::LinkText("Download")).await.unwrap().click().await.unwrap();
    let file = wait_for_download(&downloads).await;
    let snap = decode(&std::fs::read(&file).unwrap());
    assert_valid(&snap);
    assert_eq!(snap["export_id"], id.as_str());
    assert_eq!(snap["counts"]["memberships"], 2_002);

    // Verify re-reads the file in the bucket; the row says it passed.
    let row = c.find(Locator::Css(&format!("tr[data-export-id='{id}']"))).await.unwrap();
    row.find(Locator::XPath(".//button[normalize-space()='Verify']")).await.unwrap().click().await.unwrap();
    let verified = c
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(&format!("tr[data-export-id='{id}'] [data-verified='ok']")))
        .await
        .expect("the row shows the verification");
    assert!(verified.text().await.unwrap().starts_with("Verified"));
    assert!(c.source().await.unwrap().contains("it is whole and matches its schema"));

    // A run started elsewhere (the API) appears in the open page, and completes there.
    let api = api(&app, &app.token("admin@acme.test").await);
    let created: serde_json::Value = api.post("/orgs/acme/exports").await.json().await.unwrap();
    let other = created["id"].as_str().unwrap();
    c.wait()
        .at_most(Duration::from_secs(90))
        .every(Duration::from_millis(250))
        .for_element(Locator::Css(&format!("tr[data-export-id='{other}'][data-status='completed']")))
        .await
        .expect("a run created through the API appears and completes without a reload");
    let marker = c.execute("return window.__noReload || null;", vec![]).await.unwrap();
    assert_eq!(marker, json!("still here"), "the page was not reloaded");
    c.close().await.unwrap();
}

/// The platform admin's round: verify, retention 7 / 4 / 6, every 12 hours, the
/// dry-run preview, the job board; then scheduled exports in acme's history, pruned
/// as the preview said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_admin_configures_backups_retention_and_the_schedule() {
    let app = TestApp::spawn_with(Options { workers: true, ..Default::default() }).await;
    sqlx::query("update platform_settings set retention_daily = 1, retention_weekly = 1, retention_monthly = 1")
        .execute(app.pool())
        .await
        .unwrap();
    sqlx::query("update backup_configuration set verified_at = null, verified_endpoint = null")
        .execute(app.pool())
        .await
        .unwrap();
    let driver = Driver::start();
    let profile = app.storage_dir.join("chromium-profile-platform");
    let downloads = app.storage_dir.join("downloads-platform");
    let c = browser(&driver, &profile, &downloads).await;

    sign_in(&c, &app, "platform@example.test").await;
    c.find(Locator::LinkText("Platform settings")).await.unwrap().click().await.unwrap();
    assert_eq!(c.find(Locator::Css("#backup-state")).await.unwrap().text().await.unwrap(), "Not ready");

    // Verify.
    c.find(Locator::XPath("//button[normalize-space()='Verify']")).await.unwrap().click().await.unwrap();
    // Wait for the new page (its flash), not the old page's badge.
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::XPath("//*[contains(text(),'Verified: the probe object')]"))
        .await
        .unwrap();
    assert_eq!(c.find(Locator::Css("#backup-state")).await.unwrap().text().await.unwrap(), "Active and verified");

    // Retention 7 / 4 / 6.
    for (id, value) in [("#retention-daily", "7"), ("#retention-weekly", "4"), ("#retention-monthly", "6")] {
        let input = c.find(Locator::Css(id)).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys(value).await.unwrap();
    }
    c.find(Locator::XPath("//button[normalize-space()='Save retention']")).await.unwrap().click().await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::XPath("//*[contains(text(),'Retention saved')]"))
        .await
        .unwrap();

    // Every 12 hours.
    c.find(Locator::Css("#schedule-preset option[value='every_12h']")).await.unwrap().click().await.unwrap();
    c.find(Locator::XPath("//button[normalize-space()='Save schedule']")).await.unwrap().click().await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::XPath("//*[contains(text(),'Schedule saved')]"))
        .await
        .unwrap();
    let saved: (i32, i32, i32, String) = sqlx::query_as(
        "select retention_daily, retention_weekly, retention_monthly, schedule_preset from platform_settings",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(saved, (7, 4, 6, "every_12h".to_string()));
    assert!(
        c.find(Locator::Css("#next-slot")).await.unwrap().text().await.unwrap().starts_with("Next scheduled export:")
    );

    // Twelve days of slots, one a day (a day keeps only its newest export, so more
    // than one a day would be pruned as they are made).
    sqlx::query("update platform_settings set schedule_since = '2026-01-01'").execute(app.pool()).await.unwrap();
    let acme = app.org_id("acme").await;
    let slots: Vec<String> = (1..=12).map(|day| format!("2026-11-{day:02}T12:00:00Z")).collect();
    // Keep all while they are made (the pruner runs after each scheduled export).
    sqlx::query("update platform_settings set retention_daily = 366").execute(app.pool()).await.unwrap();
    for slot in &slots {
        let at = chrono::DateTime::parse_from_rfc3339(slot).unwrap().with_timezone(&chrono::Utc);
        data_export::platform::scheduler::fire_slot(&app.state, at).await.unwrap();
        let (id,): (String,) = sqlx::query_as("select id from export_runs where org_id = $1 and scheduled_for = $2")
            .bind(acme)
            .bind(at)
            .fetch_one(app.pool())
            .await
            .unwrap();
        let globex: Vec<(String,)> =
            sqlx::query_as("select id from export_runs where scheduled_for = $1 and org_id <> $2")
                .bind(at)
                .bind(acme)
                .fetch_all(app.pool())
                .await
                .unwrap();
        assert_eq!(app.wait_for_run(&id, Duration::from_secs(60)).await.status, "completed");
        for (g,) in globex {
            app.wait_for_run(&g, Duration::from_secs(60)).await;
        }
    }
    // One prune job per scheduled export (24), all finished, before retention changes.
    app.wait_for_done_jobs("pruner", 24, Duration::from_secs(60)).await;
    sqlx::query("update platform_settings set retention_daily = 7").execute(app.pool()).await.unwrap();

    // The preview: of 12 exports per org, daily keeps Nov 6 to 12; weekly and monthly
    // keep the newest of their periods, which daily already keeps, except ISO week 44
    // (Nov 1, a Sunday): 8 kept, Nov 2 to 5 removed.
    c.goto(&app.url("/platform/settings")).await.unwrap();
    let preview = c.find(Locator::Css("#preview")).await.unwrap().text().await.unwrap();
    let removed_rows = preview.lines().filter(|l| l.contains("will be removed")).count();
    let (_, plans) = data_export::platform::pruner::plan(app.pool(), Some(acme)).await.unwrap();
    let planned_removals = plans[0].removals();
    assert_eq!(planned_removals, 12 - 8, "7 daily + week 44's Sunday");
    assert_eq!(removed_rows, 2 * planned_removals, "the page lists acme's and globex's removals");
    let keep_ids: Vec<String> = plans[0].decisions.iter().filter(|d| d.is_kept()).map(|d| d.id.clone()).collect();

    screenshot(&c, "platform-settings").await;

    // The job board opens from the page.
    c.find(Locator::Css("#board-link")).await.unwrap().click().await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_url(&url::Url::parse(&app.board_url("/")).unwrap())
        .await
        .expect("the board's own listener");
    // The admin's session passed the guard: the board's own page, not the 403 text.
    assert!(c.title().await.unwrap().ends_with("Apalis Board"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    screenshot(&c, "job-board").await;
    c.close().await.unwrap();

    // acme's history shows them as scheduled; pruning removes what the preview said.
    let removed = data_export::platform::pruner::apply(&app.state, Some(acme)).await.unwrap();
    assert_eq!(removed.len(), planned_removals);
    let left: Vec<(String,)> =
        sqlx::query_as("select id from export_runs where org_id = $1 and status = 'completed' order by scheduled_for")
            .bind(acme)
            .fetch_all(app.pool())
            .await
            .unwrap();
    let mut left: Vec<String> = left.into_iter().map(|r| r.0).collect();
    let mut keep_ids = keep_ids;
    left.sort();
    keep_ids.sort();
    assert_eq!(left, keep_ids);
    assert_eq!(app.objects("org-acme").await.len(), keep_ids.len());
    let s = app.login("admin@acme.test").await;
    let history = s.get("/orgs/acme/exports/history").await.text().await.unwrap();
    assert!(history.contains("scheduled") && history.contains("pruned"));
}

/// Signs in through the form and waits for the start page.
/// Presses Trigger export on the open Backups & Export page and waits for a
/// completed row; `expectation` says what a timeout means.
async fn trigger_and_wait_for_completed_row(c: &Client, expectation: &str) -> fantoccini::elements::Element {
    c.find(Locator::XPath("//button[normalize-space()='Trigger export']")).await.unwrap().click().await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(90))
        .every(Duration::from_millis(250))
        .for_element(Locator::Css("tr[data-status='completed']"))
        .await
        .expect(expectation);
    // The run's end also moves the org's history version on, so within one 2 s poll
    // the whole history is swapped in again: the row found first goes stale.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    c.find(Locator::Css("tr[data-status='completed']")).await.expect(expectation)
}

async fn sign_in(c: &Client, app: &TestApp, email: &str) {
    c.goto(&app.url("/login")).await.unwrap();
    c.find(Locator::Css("#email")).await.unwrap().send_keys(email).await.unwrap();
    c.find(Locator::Css("#password")).await.unwrap().send_keys(PASSWORD).await.unwrap();
    c.find(Locator::Css("button[type=submit].btn-primary")).await.unwrap().click().await.unwrap();
    c.wait().at_most(Duration::from_secs(10)).for_url(&url::Url::parse(&app.url("/")).unwrap()).await.unwrap();
}

/// A member requests their data, watches it complete and downloads it; a platform
/// admin exports the same member's data on their behalf with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_downloads_their_data_and_an_admin_exports_it_on_their_behalf() {
    let app = TestApp::spawn().await;
    let driver = Driver::start();
    let profile = app.storage_dir.join("chromium-profile-privacy");
    let downloads = app.storage_dir.join("downloads-privacy");
    std::fs::create_dir_all(&downloads).unwrap();
    let c = browser(&driver, &profile, &downloads).await;

    sign_in(&c, &app, "member@acme.test").await;
    c.find(Locator::LinkText("My data")).await.unwrap().click().await.unwrap();
    assert!(c.source().await.unwrap().contains("No requests yet."));
    c.find(Locator::XPath("//button[normalize-space()='Request my data']")).await.unwrap().click().await.unwrap();
    // The form posts and redirects: plant the marker on the page it lands on, not on
    // the one being left (which raced the navigation).
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_url(&url::Url::parse(&app.url("/me/privacy?done=requested")).unwrap())
        .await
        .expect("the request lands on /me/privacy?done=requested");
    c.execute("window.__noReload = 'still here'; return null;", vec![]).await.unwrap();
    let row = c
        .wait()
        .at_most(Duration::from_secs(60))
        .every(Duration::from_millis(250))
        .for_element(Locator::Css("#privacy-history tr[data-status='completed']"))
        .await
        .expect("the request completes, shown without a reload");
    let marker = c.execute("return window.__noReload || null;", vec![]).await.unwrap();
    assert_eq!(marker, json!("still here"), "the history updated in place");
    let id = row.attr("data-request-id").await.unwrap().unwrap();
    row.find(Locator::LinkText("Download")).await.unwrap().click().await.unwrap();
    let file = wait_for_download(&downloads).await;
    let data = decode(&std::fs::read(&file).unwrap());
    assert_eq!(data["format"], "data-export/subject-access");
    assert_eq!(data["request_id"], id.as_str());
    assert_eq!(data["subject"]["email"], "member@acme.test");
    screenshot(&c, "my-data").await;
    c.delete_all_cookies().await.unwrap();

    sign_in(&c, &app, "platform@example.test").await;
    c.find(Locator::LinkText("Privacy requests")).await.unwrap().click().await.unwrap();
    c.find(Locator::Css("#behalf-email")).await.unwrap().send_keys("member@acme.test").await.unwrap();
    c.find(Locator::Css("#behalf-reason")).await.unwrap().send_keys("Ticket #123, request by email").await.unwrap();
    c.find(Locator::XPath("//button[normalize-space()='Start export']")).await.unwrap().click().await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::XPath("//*[contains(text(),'on the person')]"))
        .await
        .expect("the confirmation");
    let started = Instant::now();
    loop {
        c.refresh().await.unwrap();
        let done = c.find_all(Locator::Css("#privacy-requests tr[data-status='completed']")).await.unwrap().len();
        if done == 2 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the on-behalf request did not complete");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let table = c.find(Locator::Css("#privacy-requests")).await.unwrap().text().await.unwrap();
    assert!(table.contains("Ticket #123, request by email") && table.contains("platform@example.test"));
    screenshot(&c, "privacy-requests").await;
    c.close().await.unwrap();
    let (reason,): (Option<String>,) =
        sqlx::query_as("select reason from privacy_requests where on_behalf order by created_at desc limit 1")
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(reason.as_deref(), Some("Ticket #123, request by email"));
}

/// What a layout check finds wrong with a completed row's actions, as sentences (none
/// when all is well): the page scrolls sideways; an action lies outside
/// [0, innerWidth], is covered, or sits in an ancestor that scrolls or clips sideways.
const ACTIONS_REACHABLE: &str = r#"
const [id] = arguments;
const vw = window.innerWidth;
const problems = [];
const doc = document.documentElement;
if (doc.scrollWidth > vw) problems.push(`the page scrolls sideways: scrollWidth ${doc.scrollWidth} > innerWidth ${vw}`);
const row = document.querySelector(`tr[data-export-id="${id}"]`);
if (!row) return [`no row ${id}`];
const named = (sel, text) => [...row.querySelectorAll(sel)].find(e => e.textContent.trim() === text);
const describe = e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + (e.classList.length ? '.' + [...e.classList].join('.') : '');
for (const [name, el] of [['Download', named('a', 'Download')], ['Delete', named('button', 'Delete')], ['Verify', named('button', 'Verify')]]) {
  if (!el) { problems.push(`${name}: missing`); continue; }
  const r = el.getBoundingClientRect();
  if (r.width === 0 || r.left < 0 || r.right > vw)
    problems.push(`${name}: spans [${r.left.toFixed(1)}, ${r.right.toFixed(1)}], not within [0, ${vw}]`);
  for (let a = el.parentElement; a; a = a.parentElement) {
    if (a.scrollWidth > a.clientWidth + 1)
      problems.push(`${name}: its ancestor ${describe(a)} scrolls sideways: scrollWidth ${a.scrollWidth} > clientWidth ${a.clientWidth}`);
    if (a === document.body) break;
  }
  // Bring it into view vertically only, then check nothing covers its centre.
  window.scrollTo(0, window.scrollY + r.top + r.height / 2 - window.innerHeight / 2);
  const s = el.getBoundingClientRect();
  const hit = document.elementFromPoint(s.left + s.width / 2, s.top + s.height / 2);
  if (!hit || !el.contains(hit)) problems.push(`${name}: its centre shows ${hit ? describe(hit) : 'nothing'}, not the ${name} control`);
}
return problems;
"#;

/// At a desktop window (1280 px) and a phone's (390 px) every action of a completed
/// export (Download, Delete, Verify) is on screen without sideways scrolling: the
/// history's cells wrap, and on a phone each row is a card.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_history_actions_fit_a_desktop_and_a_phone_without_sideways_scrolling() {
    let app = TestApp::spawn().await;
    let driver = Driver::start();
    let profile = app.storage_dir.join("chromium-profile-layout");
    let downloads = app.storage_dir.join("downloads-layout");
    let c = browser(&driver, &profile, &downloads).await;

    // A completed, verified export: every cell of its row filled, the longest row
    // short of a failure.
    sign_in(&c, &app, "admin@acme.test").await;
    c.goto(&app.url("/orgs/acme/settings/backups")).await.unwrap();
    let row = trigger_and_wait_for_completed_row(&c, "the export completes").await;
    let id = row.attr("data-export-id").await.unwrap().unwrap();
    row.find(Locator::XPath(".//button[normalize-space()='Verify']")).await.unwrap().click().await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(&format!("tr[data-export-id='{id}'] [data-verified='ok']")))
        .await
        .expect("the row shows the verification");

    let mut out_of_reach = Vec::new();
    for (width, height) in [(1280, 900), (390, 844)] {
        c.set_window_size(width, height).await.unwrap();
        c.goto(&app.url("/orgs/acme/settings/backups")).await.unwrap();
        c.find(Locator::Css(&format!("tr[data-export-id='{id}'][data-status='completed']"))).await.unwrap();
        let inner = c.execute("return window.innerWidth;", vec![]).await.unwrap();
        assert_eq!(inner, json!(width), "the window is {width} px wide inside");
        let problems = c.execute(ACTIONS_REACHABLE, vec![json!(id)]).await.unwrap();
        let png = app.storage_dir.join(format!("export-history-{width}x{height}.png"));
        std::fs::write(&png, c.screenshot().await.unwrap()).unwrap();
        println!("screenshot at {width}x{height}: {}", png.display());
        if problems != json!([]) {
            out_of_reach.push(format!("at {width}x{height}: {problems:#}"));
        }
    }
    c.close().await.unwrap();
    assert!(out_of_reach.is_empty(), "the completed export's actions are out of reach:\n{}", out_of_reach.join("\n"));
}

/// A platform admin restores acme twice from `/platform/imports` in a real browser:
/// from its completed export, and from the same file uploaded through the form. Each
/// is checked first (its row shows the preview: who gets in, admins marked), then
/// confirmed; each new row goes on to completed without a reload and shows its report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_admin_restores_an_org_from_an_export_and_from_an_upload() {
    let mut app = TestApp::spawn().await;
    app.start_workers();
    let acme = app.org_id("acme").await;
    let run = data_export::exports::start::create_manual_unattributed(app.pool(), acme, 3).await.unwrap();
    let run = app.wait_for_run(&run.id, Duration::from_secs(60)).await;
    let file = app.storage_dir.join("acme-download.json.gz");
    let object =
        app.s3_client().get_object().bucket("org-acme").key(run.object_key.clone().unwrap()).send().await.unwrap();
    std::fs::write(&file, object.body.collect().await.unwrap().into_bytes()).unwrap();

    let driver = Driver::start();
    let profile = app.storage_dir.join("chromium-profile");
    let downloads = app.storage_dir.join("downloads");
    let c = browser(&driver, &profile, &downloads).await;
    sign_in(&c, &app, "platform@example.test").await;
    c.find(Locator::LinkText("Restore")).await.unwrap().click().await.unwrap();
    assert_eq!(c.current_url().await.unwrap().path(), "/platform/imports");

    // From the completed export: the org (acme is the one chosen), then its export.
    let org = c.find(Locator::Css("#import-org")).await.unwrap();
    org.select_by_value("acme").await.unwrap();
    c.find(Locator::XPath("//button[normalize-space()='Show its exports']")).await.unwrap().click().await.unwrap();
    let started = Instant::now();
    while !c.current_url().await.unwrap().query().unwrap_or_default().contains("org=acme") {
        assert!(started.elapsed() < Duration::from_secs(20), "the org's exports were not shown");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.find(Locator::Css(&format!("input[name='source_export_id'][value='{}']", run.id)))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.find(Locator::Css("#export-slug")).await.unwrap().send_keys("acme-from-export").await.unwrap();
    c.find(Locator::Css("#export-name")).await.unwrap().send_keys("Acme from its export").await.unwrap();
    c.find(Locator::XPath("//button[normalize-space()='Check']")).await.unwrap().click().await.unwrap();
    let preview = wait_until_completed(&c, "acme-from-export", "check").await;
    assert!(preview.contains("admin@acme.test") && preview.contains("org admin"), "the preview: {preview}");
    screenshot_at(&c, "imports-preview", 1280).await;
    screenshot_at(&c, "imports-preview-390", 390).await;
    c.find(Locator::XPath("//button[normalize-space()='Confirm restore into acme-from-export']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let first = wait_until_completed(&c, "acme-from-export", "import").await;
    let sections = format!("rows in {} sections", data_export::orgs::sections::SECTIONS.len() + 1); // and `organization`
    assert!(first.contains(&sections), "the report is shown: {first}");

    // From the file, uploaded.
    c.goto(&app.url("/platform/imports")).await.unwrap();
    c.find(Locator::Css("#upload-slug")).await.unwrap().send_keys("acme-from-file").await.unwrap();
    c.find(Locator::Css("#upload-name")).await.unwrap().send_keys("Acme from a file").await.unwrap();
    c.find(Locator::Css("#import-file")).await.unwrap().send_keys(&file.display().to_string()).await.unwrap();
    c.find(Locator::XPath("//button[normalize-space()='Upload and check']")).await.unwrap().click().await.unwrap();
    wait_until_completed(&c, "acme-from-file", "check").await;
    c.find(Locator::XPath("//button[normalize-space()='Confirm restore into acme-from-file']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let second = wait_until_completed(&c, "acme-from-file", "import").await;
    assert!(second.contains(&sections), "{second}");
    screenshot(&c, "imports").await;
    screenshot_at(&c, "imports-390", 390).await;
    for slug in ["acme-from-export", "acme-from-file"] {
        let members: i64 = sqlx::query_scalar(
            "select count(*) from memberships m join organizations o on o.id = m.org_id where o.slug = $1",
        )
        .bind(slug)
        .fetch_one(app.pool())
        .await
        .unwrap();
        assert!(members > 0, "{slug} has its members");
    }
    c.close().await.unwrap();
}

/// Saves a screenshot `width` px wide when `SCREENSHOT_DIR` is set.
async fn screenshot_at(c: &Client, name: &str, width: u32) {
    if let Ok(dir) = std::env::var("SCREENSHOT_DIR") {
        c.set_window_size(width, 2200).await.unwrap();
        let png = c.screenshot().await.unwrap();
        std::fs::write(Path::new(&dir).join(format!("{name}.png")), png).unwrap();
        c.set_window_size(1280, 2200).await.unwrap();
    }
}

/// Waits, on the open imports page and without reloading it, for the row of the
/// `kind` (`check` or `import`) into `slug` to be completed; returns the row's text.
async fn wait_until_completed(c: &Client, slug: &str, kind: &str) -> String {
    // The form's redirect has landed on the page with the new row.
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::XPath(&format!(
            "//tr[@data-import-id][@data-kind='{kind}'][.//*[normalize-space()='{slug}']]"
        )))
        .await
        .expect("the new import's row");
    c.execute("window.__noReload = 'still here'; return null;", vec![]).await.unwrap();
    let row = c
        .wait()
        .at_most(Duration::from_secs(90))
        .every(Duration::from_millis(250))
        .for_element(Locator::XPath(&format!(
            "//tr[@data-status='completed'][@data-kind='{kind}'][.//*[normalize-space()='{slug}']]"
        )))
        .await
        .expect("the row reaches completed without a reload");
    let marker = c.execute("return window.__noReload || null;", vec![]).await.unwrap();
    assert_eq!(marker, json!("still here"), "the page was not reloaded");
    row.text().await.unwrap()
}

/// A platform admin opens Organizations: every org's state, worst first, filtered
/// by a state from the counts; the page fits a desktop and a phone without
/// sideways scrolling. Then an org admin cancels a pending export in the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_admin_reads_every_orgs_state_and_an_org_admin_cancels_an_export() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    data_export::seed::tenants(app.pool(), &app.state.storage, 60).await.unwrap();
    // globex's newest export failed; acme has one pending (its job waits).
    let failed = ulid::Ulid::generate().to_string();
    sqlx::query(
        "insert into export_runs (id, org_id, status, trigger, finished_at, error)
         select $1, id, 'pending', 'manual', null, null from organizations where slug = 'globex'",
    )
    .bind(&failed)
    .execute(app.pool())
    .await
    .unwrap();
    sqlx::query("update export_runs set status = 'failed', finished_at = now(), error = 'The storage refused the upload.' where id = $1")
        .bind(&failed)
        .execute(app.pool())
        .await
        .unwrap();
    let driver = Driver::start();
    let profile = app.storage_dir.join("chromium-profile-orgs");
    let downloads = app.storage_dir.join("downloads-orgs");
    let c = browser(&driver, &profile, &downloads).await;
    sign_in(&c, &app, "platform@example.test").await;
    c.find(Locator::LinkText("Organizations")).await.unwrap().click().await.unwrap();
    let first = c.find(Locator::Css("#orgs tbody tr")).await.unwrap();
    assert_eq!(first.attr("data-org").await.unwrap().as_deref(), Some("globex"), "the failing org first");
    assert_eq!(first.attr("data-state").await.unwrap().as_deref(), Some("failing"));
    assert!(first.text().await.unwrap().contains("The storage refused the upload."));
    let mut wide = Vec::new();
    for (width, height) in [(1280, 900), (390, 844)] {
        c.set_window_size(width, height).await.unwrap();
        c.goto(&app.url("/platform/orgs")).await.unwrap();
        let over = c.execute("return document.documentElement.scrollWidth - window.innerWidth;", vec![]).await.unwrap();
        let png = app.storage_dir.join(format!("platform-orgs-{width}x{height}.png"));
        std::fs::write(&png, c.screenshot().await.unwrap()).unwrap();
        println!("screenshot at {width}x{height}: {}", png.display());
        if over.as_i64().unwrap_or(0) > 0 {
            wide.push(format!("{width} px: {over} px too wide"));
        }
    }
    assert!(wide.is_empty(), "the org list scrolls sideways: {wide:?}");
    // The count of `never` filters the list.
    c.find(Locator::Css("a[data-state='never']")).await.unwrap().click().await.unwrap();
    let rows = c.find_all(Locator::Css("#orgs tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 50, "a page of 50");
    for row in rows {
        assert_eq!(row.attr("data-state").await.unwrap().as_deref(), Some("never"));
    }
    c.find(Locator::Id("orgs-next")).await.unwrap().click().await.unwrap();
    assert_eq!(c.find_all(Locator::Css("#orgs tbody tr")).await.unwrap().len(), 11, "61 never in all");

    // An org admin cancels a pending export in the history.
    c.delete_all_cookies().await.unwrap();
    sign_in(&c, &app, "admin@acme.test").await;
    c.set_window_size(1280, 900).await.unwrap();
    c.goto(&app.url("/orgs/acme/settings/backups")).await.unwrap();
    c.find(Locator::XPath("//button[normalize-space()='Trigger export']")).await.unwrap().click().await.unwrap();
    let cancel = c
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::XPath("//tr[@data-status='pending']//button[normalize-space()='Cancel']"))
        .await
        .expect("the pending row offers Cancel");
    cancel.click().await.unwrap();
    c.accept_alert().await.unwrap();
    let row = c
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("tr[data-status='failed']"))
        .await
        .expect("the row ends failed");
    assert!(row.text().await.unwrap().contains("Cancelled by Ada Acme"));
    c.close().await.unwrap();
}

/// The job board as a platform admin opens it: its footer says the system is
/// healthy (the UI says so while its event stream is open), and an export started
/// meanwhile shows on its Logs page. Screenshots at a desktop's and a phone's width
/// (in `SCREENSHOT_DIR`, else the test's storage dir).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_board_is_healthy_and_its_logs_page_shows_an_export() {
    let app = TestApp::spawn_with(Options { members: 2, ..Default::default() }).await;
    let driver = Driver::start();
    let profile = app.storage_dir.join("chromium-profile-board");
    let downloads = app.storage_dir.join("downloads-board");
    let c = browser(&driver, &profile, &downloads).await;
    sign_in(&c, &app, "platform@example.test").await;
    c.set_window_size(1280, 900).await.unwrap();
    c.goto(&app.board_url("/logs")).await.unwrap();
    let body = || async { c.find(Locator::Css("body")).await.unwrap().text().await.unwrap() };
    let started = Instant::now();
    while !body().await.contains("All systems are operational.") {
        assert!(started.elapsed() < Duration::from_secs(20), "the board did not draw its status: {}", body().await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The UI starts out healthy and turns unhealthy for good when its stream fails
    // (as it did at once when the stream was an HTML page): wait past a keep-alive.
    tokio::time::sleep(data_export::board::events::KEEP_ALIVE + Duration::from_secs(1)).await;
    let text = body().await;
    assert!(text.contains("System Status:") && text.contains("Healthy") && !text.contains("nhealthy"), "{text}");
    assert!(text.contains("All systems are operational."), "{text}");

    let api = api(&app, &app.token("admin@acme.test").await);
    let created: serde_json::Value = api.post("/orgs/acme/exports").await.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let line = loop {
        let text = body().await;
        if let Some(line) = text.lines().find(|l| l.contains(&format!("completed id={id} what=export"))) {
            break line.to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no log entry of export {id} on the Logs page: {text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(line.contains(&format!("[{id}]")) && line.contains("rows="), "{line}");
    let text = body().await;
    assert!(text.contains("All systems are operational.") && !text.contains("nhealthy"), "{text}");

    let dir = std::env::var("SCREENSHOT_DIR").map(PathBuf::from).unwrap_or_else(|_| app.storage_dir.clone());
    for (width, height) in [(1280, 900), (390, 844)] {
        c.set_window_size(width, height).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(body().await.contains("All systems are operational."), "at {width} px");
        let png = dir.join(format!("job-board-logs-{width}.png"));
        std::fs::write(&png, c.screenshot().await.unwrap()).unwrap();
        println!("job board at {width} px: {}", png.display());
    }
    c.close().await.unwrap();
    println!("job board: Healthy; the Logs page shows: {line}");
}
