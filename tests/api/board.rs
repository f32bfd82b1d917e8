//! The job board's event stream (`/api/v1/events` on the board's listener): who may
//! open it, that it carries the product's log entries in the board UI's shape and
//! no secret, that it outlives the request and write-stall timeouts, and that a
//! client that never reads costs no memory.

use std::time::{Duration, Instant};

use apalis_board_types::LogEntry;
use data_export::{
    board::events::{KEEP_ALIVE, RECHECK},
    routes::BOARD_EVENTS,
    telemetry::board_log,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

const PLATFORM: &str = "platform@example.test";

/// What a stream has sent so far: its entries, and whether a keep-alive came.
#[derive(Default)]
struct Received {
    text: String,
    entries: Vec<LogEntry>,
    keep_alives: usize,
}

impl Received {
    /// Takes in a chunk; every whole event of `data` must be an entry the board's UI
    /// can read (it stops at the first it cannot).
    fn take(&mut self, chunk: &[u8]) {
        self.text.push_str(&String::from_utf8_lossy(chunk));
        while let Some(end) = self.text.find("\n\n") {
            let block: String = self.text.drain(..end + 2).collect();
            for line in block.lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    let entry =
                        serde_json::from_str(data).unwrap_or_else(|e| panic!("not a board entry ({e}): {data}"));
                    self.entries.push(entry);
                } else if line.starts_with(':') {
                    self.keep_alives += 1;
                }
            }
        }
    }

    fn find(&self, pred: impl Fn(&LogEntry, &str) -> bool) -> Option<&LogEntry> {
        self.entries.iter().find(|e| pred(e, e.entry.message.as_deref().unwrap_or_default()))
    }
}

fn short_timeouts(c: &mut data_export::config::Config) {
    c.http.request_timeout = Duration::from_secs(1);
    c.http.write_stall_timeout = Duration::from_secs(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_is_a_platform_admins_carries_no_secret_and_outlives_the_timeouts() {
    let app = TestApp::spawn_with(Options { members: 2, config: Some(short_timeouts), ..Default::default() }).await;
    let events = app.board_url(BOARD_EVENTS);

    // Refused to everyone but a platform admin, and to another site's page.
    let anonymous = app.anonymous().await;
    assert_eq!(anonymous.client.get(&events).send().await.unwrap().status(), 403, "anonymous");
    let org_admin = app.login("admin@acme.test").await;
    assert_eq!(org_admin.client.get(&events).send().await.unwrap().status(), 403, "an org admin");
    let platform = app.login(PLATFORM).await;
    for (name, value) in
        [("sec-fetch-site", "cross-site"), ("sec-fetch-site", "same-site"), ("origin", "http://evil.example")]
    {
        let r = platform.client.get(&events).header(name, value).send().await.unwrap();
        assert_eq!(r.status(), 403, "{name}: {value}");
    }

    // A platform admin's page gets the stream.
    let started = Instant::now();
    let mut stream = platform.client.get(&events).header("sec-fetch-site", "same-origin").send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let header = |name: &str| stream.headers().get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert_eq!(header("content-type"), "text/event-stream");
    assert_eq!(header("x-accel-buffering"), "no");
    assert!(header("content-security-policy").starts_with("default-src 'none'"), "the board's CSP");

    // A request to the board's API (as its UI polls it).
    let polled = platform.client.get(app.board_url("/api/v1/queues")).send().await.unwrap();
    assert_eq!(polled.status(), 200);

    // While it is open: a webhook endpoint with a secret path (its signing secret in
    // the answer), an export, and its download (a presigned URL in `Location`).
    let token = app.token("admin@acme.test").await;
    let admin = api(&app, &token);
    let hook = admin
        .post_json(
            "/orgs/acme/webhooks",
            &serde_json::json!({ "url": "https://hooks.example.com/services/PATHSECRET" }),
        )
        .await;
    assert_eq!(hook.status(), 201);
    let signing_secret = hook.json::<Value>().await.unwrap()["secret"].as_str().unwrap().to_string();
    let created = admin.post("/orgs/acme/exports").await;
    assert_eq!(created.status(), 202);
    let id = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_for_run(&id, Duration::from_secs(60)).await.status, "completed");
    let download = admin.get(&format!("/orgs/acme/exports/{id}/download")).await;
    assert_eq!(download.status(), 303);
    let presigned = download.headers()["location"].to_str().unwrap().to_string();
    let signature = presigned.split("X-Amz-Signature=").nth(1).expect("a presigned URL").to_string();

    // Read past the request and write-stall timeouts (1 s each) and a keep-alive's
    // interval; a healthy stream is never silent for two intervals.
    let mut got = Received::default();
    let deadline = started + Duration::from_secs(90);
    loop {
        let completed = got.find(|e, m| {
            e.span.as_ref().is_some_and(|s| s.task_id == id && s.name == "export") && m.starts_with("completed ")
        });
        let elapsed = started.elapsed();
        if completed.is_some()
            && elapsed > Duration::from_secs(8)
            && (got.keep_alives > 0 || elapsed > Duration::from_secs(30))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no entry of export {id}'s completion within 90 s");
        match tokio::time::timeout(KEEP_ALIVE * 2, stream.chunk()).await {
            Ok(Ok(Some(chunk))) => got.take(&chunk),
            Ok(Ok(None)) => panic!("the stream ended after {:?}", started.elapsed()),
            Ok(Err(e)) => panic!("the stream broke after {:?}: {e}", started.elapsed()),
            Err(_) => panic!("the stream sent nothing, not even a keep-alive, for {:?}", KEEP_ALIVE * 2),
        }
    }
    let completed = got.find(|e, m| e.span.as_ref().is_some_and(|s| s.task_id == id) && m.starts_with("completed "));
    let message = completed.unwrap().entry.message.clone().unwrap();
    assert!(message.contains("what=export") && message.contains("rows="), "{message}");
    assert!(
        got.find(|_, m| m.starts_with("answered status=202") && m.ends_with("path=/api/v1/orgs/acme/exports"))
            .is_some(),
        "the API request that started it is there too"
    );
    // The stream is everything the process logged at INFO and above, from every test
    // running in it: none of it holds a secret.
    let all: String = got.entries.iter().map(|e| serde_json::to_string(e).unwrap()).collect();
    for secret in [token.as_str(), signing_secret.as_str(), signature.as_str(), "PATHSECRET", "X-Amz-", PASSWORD] {
        assert!(!all.contains(secret), "{secret} reached the stream");
    }
    // The board's own requests (its UI's polls) are left out.
    assert!(got.find(|_, m| m.contains("path=/api/v1/queues")).is_none());
    let open_for = started.elapsed();

    // Signed out, the session no longer opens the stream, and the open one ends.
    assert_eq!(platform.post_form(data_export::routes::LOGOUT, &[]).await.status(), 303);
    let signed_out = Instant::now();
    assert_eq!(platform.client.get(&events).send().await.unwrap().status(), 403, "signed out");
    loop {
        match tokio::time::timeout(RECHECK + KEEP_ALIVE, stream.chunk()).await {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => break,
            Ok(Err(e)) => panic!("the stream broke instead of ending: {e}"),
            Err(_) => panic!("the stream outlived its session by {:?}", signed_out.elapsed()),
        }
        assert!(signed_out.elapsed() < RECHECK + KEEP_ALIVE, "the stream outlived its session");
    }
    println!(
        "event stream: open {:.1} s past a 1 s request and write-stall timeout; {} entries, {} keep-alives, no \
         secret; ended {:.1} s after sign-out",
        open_for.as_secs_f64(),
        got.entries.len(),
        got.keep_alives,
        signed_out.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_ends_when_the_process_stops() {
    let app = TestApp::spawn_with(Options { members: 2, workers: false, ..Default::default() }).await;
    let platform = app.login(PLATFORM).await;
    let mut stream = platform.client.get(app.board_url(BOARD_EVENTS)).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    app.stop.cancel();
    let stopping = Instant::now();
    // Ended, not cut when the shutdown's grace runs out.
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.chunk()).await {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => break,
            Ok(Err(e)) => panic!("the stream was cut, not ended: {e}"),
            Err(_) => panic!("the stream held the shutdown for {:?}", stopping.elapsed()),
        }
    }
    println!("event stream: ended {:?} after the stop", stopping.elapsed());
}

#[test]
fn the_scrubbed_prefixes_are_the_products_secret_prefixes() {
    assert!(board_log::SECRET_PREFIXES.contains(&data_export::auth::tokens::PREFIX));
    assert!(board_log::SECRET_PREFIXES.contains(&"whsec_"), "webhooks::new_secret's prefix");
}

/// The session cookie (`name=value`) of `email`, signed in at `base` over http.
async fn session_cookie(base: &str, email: &str) -> String {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let cookie = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|c| c.starts_with(name))
            .map(|c| c.split(';').next().unwrap().to_string())
    };
    let page = client.get(format!("{base}{LOGIN}")).send().await.unwrap();
    let login = cookie(&page, "dx_login=").expect("a sign-in cookie");
    let csrf = csrf_from(&page.text().await.unwrap()).unwrap();
    let r = client
        .post(format!("{base}{LOGIN}"))
        .header("cookie", login)
        .form(&[("email", email), ("password", PASSWORD), ("csrf_token", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    cookie(&r, "dx_session=").expect("a session cookie")
}

/// A `data-export serve` process with a client on its stream that reads its answer's
/// head, then nothing, while 30,000 requests each log an entry (about 14 MB of
/// entries, far beyond the socket buffers): the process's memory stays flat, and
/// when the client reads again it is told how many entries it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_client_that_never_reads_does_not_grow_the_process() {
    const REQUESTS: usize = 30_000;
    let app = TestApp::spawn_with(Options { members: 2, workers: false, ..Default::default() }).await;
    let board_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let serve = app.spawn_serve(&[
        ("BOARD_BIND", &format!("127.0.0.1:{board_port}")),
        // Only the channel's bound holds memory flat: the write-stall guard, which
        // would end the connection, waits an hour.
        ("WRITE_STALL_TIMEOUT_SECS", "3600"),
        // stderr gets the stream's own lines only; the stream has its own filter.
        ("RUST_LOG", "warn,data_export::board=info"),
    ]);
    let cookie = session_cookie(&serve.addr, PLATFORM).await;

    // A small receive buffer: the kernel holds little on the client's side.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut idle = socket.connect(([127, 0, 0, 1], board_port).into()).await.unwrap();
    let request = format!(
        "GET {BOARD_EVENTS} HTTP/1.1\r\nHost: 127.0.0.1:{board_port}\r\nCookie: {cookie}\r\nAccept: text/event-stream\r\n\r\n"
    );
    idle.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(idle.read(&mut byte).await.unwrap(), 1, "the answer's head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/event-stream"), "{head}");

    // Requests that each log an entry of about 450 bytes (a 200-character path).
    let client = app.client();
    let path = format!("/{}", "p".repeat(199));
    let flood = |n: usize| {
        let (client, url) = (client.clone(), format!("{}{path}", serve.addr));
        async move {
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let (client, url) = (client.clone(), url.clone());
                    tokio::spawn(async move {
                        for _ in 0..n / 8 {
                            let r = client.get(&url).send().await.unwrap();
                            assert_eq!(r.status(), 404);
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    flood(2_000).await; // warm up: connections, buffers, the allocator's arenas
    let rss_start = serve.rss_kib();
    let started = Instant::now();
    flood(REQUESTS).await;
    let rss_end = serve.rss_kib();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "stream client that never read: {REQUESTS} requests in {seconds:.1} s; serve's RSS {} -> {} MiB",
        rss_start / 1024,
        rss_end / 1024
    );
    // Held in full, the entries would take more than 14 MiB.
    assert!(rss_end < rss_start + 8 * 1024, "RSS grew from {rss_start} to {rss_end} KiB");

    // Reading again, the client gets what the socket held, then the notice of what
    // it missed.
    let mut got = Received::default();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut checked = 0;
    let notice = loop {
        let notice = got.entries[checked..]
            .iter()
            .filter_map(|e| e.entry.message.as_deref())
            .find(|m| m.contains("log entries were dropped here"));
        if let Some(m) = notice {
            break m.to_string();
        }
        checked = got.entries.len();
        assert!(Instant::now() < deadline, "no notice of dropped entries; {} entries read", got.entries.len());
        let n = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the stream ended");
        got.take(&buf[..n]);
    };
    let missed: u64 = notice.split(' ').next().unwrap().parse().unwrap();
    drop(idle);
    // Its connection ends at the next keep-alive; the stream logs what it dropped.
    let deadline = Instant::now() + KEEP_ALIVE * 4;
    while !serve.logs().contains("a job board client left") {
        assert!(Instant::now() < deadline, "no line about the client's dropped entries: {}", serve.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("stream client that never read: then it read {} entries, and missed {missed}", got.entries.len());
    assert!(missed > (REQUESTS / 2) as u64, "most entries were dropped, not held: {missed}");
    let logs = strip_colours(&serve.logs());
    let logged: u64 = logs
        .lines()
        .find(|l| l.contains("a job board client left"))
        .and_then(|l| l.split("dropped=").nth(1))
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("the count of dropped entries is logged: {logs}"));
    assert!(logged >= missed, "logged {logged}, told the client {missed}");
}

/// `text` without its terminal colour codes.
fn strip_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}
