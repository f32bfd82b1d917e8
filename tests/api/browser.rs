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

    c.goto(&app.url("/login")).await.unwrap();
    c.find(Locator::Css("#email")).await.unwrap().send_keys("admin@acme.test").await.unwrap();
    c.find(Locator::Css("#password")).await.unwrap().send_keys(PASSWORD).await.unwrap();
    c.find(Locator::Css("button[type=submit].btn-primary")).await.unwrap().click().await.unwrap();
    c.wait().at_most(Duration::from_secs(10)).for_url(&url::Url::parse(&app.url("/")).unwrap()).await.unwrap();

    c.goto(&app.url("/orgs/acme/settings/backups")).await.unwrap();
    assert!(c.source().await.unwrap().contains("No exports yet"));
    // A marker that a page load would wipe: it proves the history updates in place.
    c.execute("window.__noReload = 'still here'; return null;", vec![]).await.unwrap();
    c.find(Locator::XPath("//button[normalize-space()='Trigger export']")).await.unwrap().click().await.unwrap();
    let row = c
        .wait()
        .at_most(Duration::from_secs(90))
        .every(Duration::from_millis(250))
        .for_element(Locator::Css("tr[data-status='completed']"))
        .await
        .expect("the row reaches completed without a reload");
    let marker = c.execute("return window.__noReload || null;", vec![]).await.unwrap();
    assert_eq!(marker, json!("still here"), "the page was not reloaded");
    assert_eq!(c.current_url().await.unwrap().path(), "/orgs/acme/settings/backups");
    let id = row.attr("data-export-id").await.unwrap().unwrap();

    row.find(Locator::LinkText("Download")).await.unwrap().click().await.unwrap();
    let started = Instant::now();
    let file = loop {
        if let Some(f) = downloaded(&downloads) {
            break f;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no download arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let snap = decode(&std::fs::read(&file).unwrap());
    assert_valid(&snap);
    assert_eq!(snap["export_id"], id.as_str());
    assert_eq!(snap["counts"]["memberships"], 2_002);
    c.close().await.unwrap();
}
