//! Load and soak: 200 concurrent pollers on the Export History of a `data-export
//! serve` process while 10 exports run on it one after another across two orgs. No
//! request fails, the connection pool is never exhausted (a request that waited
//! past the pool's timeout would fail), and the process's memory stays flat.
//!
//! `SOAK_EXPORTS=N` runs N exports instead of 10 (a longer soak; see docs/testing.md).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::helpers::*;

const POLLERS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_pollers_while_ten_exports_run() {
    let exports: usize = std::env::var("SOAK_EXPORTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let app = TestApp::spawn_with(Options { members: 1_000, workers: false, ..Default::default() }).await;
    let serve = app.spawn_serve(&[("RUST_LOG", "warn")]);
    let sessions = [
        login_at(&serve.addr, "admin@acme.test").await,
        login_at(&serve.addr, "admin@globex.test").await,
        login_at(&serve.addr, "admin@acme.test").await,
        login_at(&serve.addr, "admin@globex.test").await,
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, errors, slowest_ms) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    // Warm up, then take the starting figure.
    for (i, s) in sessions.iter().enumerate() {
        let org = if i % 2 == 0 { "acme" } else { "globex" };
        assert_eq!(s.htmx_get(&format!("/orgs/{org}/exports/history")).await.status(), 200);
    }
    let rss_start = serve.rss_kib();
    let mut pollers = Vec::new();
    for i in 0..POLLERS {
        let session = &sessions[i % sessions.len()];
        let org = if i % 2 == 0 { "acme" } else { "globex" };
        let url = format!("{}/orgs/{org}/exports/history", serve.addr);
        let client = session.client.clone();
        let (stop, ok, errors, slowest_ms, first_error) =
            (stop.clone(), ok.clone(), errors.clone(), slowest_ms.clone(), first_error.clone());
        pollers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = client.get(&url).header("HX-Request", "true").send().await;
                let good = match r {
                    Ok(resp) if resp.status() == 200 => resp.text().await.is_ok_and(|b| b.contains(r#"id="history""#)),
                    Ok(resp) => {
                        first_error.lock().unwrap().get_or_insert(format!("status {}", resp.status()));
                        false
                    }
                    Err(e) => {
                        first_error.lock().unwrap().get_or_insert(e.to_string());
                        false
                    }
                };
                slowest_ms.fetch_max(t.elapsed().as_millis() as u64, Ordering::Relaxed);
                if good {
                    ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    errors.fetch_add(1, Ordering::Relaxed)
                };
                // htmx polls every 2 s; these poll as fast as they are answered.
            }
        }));
    }
    let started = Instant::now();
    let tokens = [app.token("admin@acme.test").await, app.token("admin@globex.test").await];
    let api_at = |token: &str| Api { client: app.client(), base: serve.addr.clone(), token: token.to_string() };

    for n in 0..exports {
        let (org, token) = if n % 2 == 0 { ("acme", &tokens[0]) } else { ("globex", &tokens[1]) };
        let resp = api_at(token).post(&format!("/orgs/{org}/exports")).await;
        assert_eq!(resp.status(), 202, "export {n}");
        let id = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
        loop {
            let run = data_export::exports::runs::get_any(app.pool(), &id).await.unwrap().unwrap();
            if !run.is_active() {
                assert_eq!(run.status, "completed", "export {n}: {:?}", run.error);
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(600), "export {n} still {}", run.status);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for p in pollers {
        p.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rss_end = serve.rss_kib();
    let (ok, errors) = (ok.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
    println!(
        "soak: {POLLERS} pollers, {exports} exports in {elapsed:.1} s: {ok} requests answered, {errors} errors, \
         {:.0} requests/s, slowest {} ms; serve's RSS {} MiB at the start, {} MiB at the end",
        ok as f64 / elapsed,
        slowest_ms.load(Ordering::Relaxed),
        rss_start / 1024,
        rss_end / 1024,
    );
    assert_eq!(errors, 0, "no request failed (first: {:?})", first_error.lock().unwrap());
    assert!(ok >= POLLERS as u64, "every poller was answered at least once");
    let logs = serve.logs();
    assert!(!logs.to_lowercase().contains("pool timed out"), "the pool was never exhausted: {logs}");
    assert!(!logs.contains("ERROR"), "serve logged no error: {logs}");
    // Flat: the 10 exports and the requests leave no growth beyond allocator slack.
    assert!(rss_end < rss_start + 96 * 1024, "RSS grew from {} to {} MiB", rss_start / 1024, rss_end / 1024);
}
