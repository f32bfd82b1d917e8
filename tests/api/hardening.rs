//! Slow clients and headers (issue 18, items 1 and 9): the header-read timeout on
//! both listeners, the connection cap, the body-read and request timeouts (the
//! streamed upload exempt from the latter), HSTS, `Cache-Control`, request ids in
//! answers and in the log, the job board's CSP and its same-origin rule. Real TCP:
//! the slow clients are raw sockets that send part of a request and wait.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::*;

const PLATFORM: &str = "platform@example.test";

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// Reads until the server closes the connection (EOF or reset); returns what was
/// read, or `None` if it is still open after `within`.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read_all).await.ok().map(|()| got)
}

/// 100 connections that each send half a request line to `port`; at the same time
/// `normal` (a request by a well-behaved client) is timed. Returns (cut off,
/// earliest and latest cut-off, the normal request's time).
async fn slow_clients<F: Future<Output = u16>>(
    port: u16,
    timeout: Duration,
    normal: F,
    want: u16,
) -> (usize, Duration, Duration, Duration) {
    const SLOW: usize = 100;
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"GET /healthz HT").await.unwrap();
        slow.push(s);
    }
    let watchers: Vec<_> = slow
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                until_closed(&mut s, timeout + Duration::from_secs(3)).await.map(|_| started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    assert_eq!(normal.await, want, "the normal client is served while the slow ones wait");
    let normal_took = t.elapsed();
    let mut cut = Vec::new();
    for w in watchers {
        if let Some(at) = w.await.unwrap() {
            cut.push(at);
        }
    }
    let (first, last) = (cut.iter().min().copied().unwrap_or_default(), cut.iter().max().copied().unwrap_or_default());
    (cut.len(), first, last, normal_took)
}

fn short_timeouts(c: &mut data_export::config::Config) {
    c.http.header_read_timeout = Duration::from_secs(2);
    // Above the 100 slow clients: this test is about the timeout, not the cap.
    c.http.board_max_connections = 200;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_are_cut_off_at_the_header_timeout_on_both_listeners_while_others_are_served() {
    let app =
        TestApp::spawn_with(Options { members: 2, workers: false, config: Some(short_timeouts), ..Default::default() })
            .await;
    let timeout = app.state.config.http.header_read_timeout;
    let client = app.client();
    for (name, port, url, want) in [
        ("web app", port_of(&app.addr), app.url(LOGIN), 200),
        // Anonymous: the board's guard answers (403), which is what a client gets.
        ("job board", app.state.board_port(), app.board_url("/"), 403),
    ] {
        let normal = async { client.get(&url).send().await.unwrap().status().as_u16() };
        let (cut, first, last, normal_took) = slow_clients(port, timeout, normal, want).await;
        println!(
            "slow clients ({name}): 100 opened, {cut} cut off between {:.1} s and {:.1} s (header timeout {:.0} s); \
             a normal client served in {} ms meanwhile",
            first.as_secs_f64(),
            last.as_secs_f64(),
            timeout.as_secs_f64(),
            normal_took.as_millis()
        );
        assert_eq!(cut, 100, "{name}: every slow client is cut off within the timeout plus 3 s");
        assert!(
            first >= timeout - Duration::from_millis(100),
            "{name}: cut off by the timeout, not at once: {first:?}"
        );
        assert!(last <= timeout + Duration::from_secs(2), "{name}: the last one at {last:?}");
        assert!(normal_took < Duration::from_secs(1), "{name}: the normal client waited {normal_took:?}");
    }
}

fn per_client_limits(c: &mut data_export::config::Config) {
    c.http.max_connections_per_client = 4;
    c.http.write_stall_timeout = Duration::from_secs(2);
    c.http.header_read_timeout = Duration::from_secs(30);
}

/// A connection from `ip` (a loopback address of this machine).
async fn connect_from(ip: &str, port: u16) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    socket.connect(format!("127.0.0.1:{port}").parse().unwrap()).await.unwrap()
}

/// One client address cannot take every connection (over MAX_CONNECTIONS_PER_CLIENT
/// its next one is closed at once, while other addresses are served), nor hold one
/// by never reading its answers (the write-stall timeout ends it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_client_can_neither_take_every_connection_nor_hold_one_by_not_reading() {
    let app = TestApp::spawn_with(Options {
        members: 2,
        workers: false,
        config: Some(per_client_limits),
        ..Default::default()
    })
    .await;
    let port = port_of(&app.addr);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from("127.0.0.7", port).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fifth = connect_from("127.0.0.7", port).await;
    let t = Instant::now();
    assert!(until_closed(&mut fifth, Duration::from_secs(5)).await.is_some(), "the fifth connection is closed");
    let closed_after = t.elapsed();
    assert!(closed_after < Duration::from_secs(2), "closed at once, not by a timeout: {closed_after:?}");
    let mut other = connect_from("127.0.0.8", port).await;
    other
        .write_all(format!("GET /login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let answer = until_closed(&mut other, Duration::from_secs(10)).await.expect("answered");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "another address is served");
    drop(held);

    // 400 pipelined requests for a 50 kB asset (20 MB of answers, far beyond the
    // socket buffers), and then no reading at all.
    let mut greedy = connect_from("127.0.0.9", port).await;
    let one = format!("GET /assets/htmx.min.js HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    greedy.write_all(one.repeat(400).as_bytes()).await.unwrap();
    let asset_len = app.client().get(app.url("/assets/htmx.min.js")).send().await.unwrap().bytes().await.unwrap().len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let got = until_closed(&mut greedy, Duration::from_secs(20)).await.expect("the stalled connection was closed");
    assert!(
        got.len() < 400 * asset_len,
        "the connection was ended at the write-stall timeout, not served to the end ({} of {} bytes)",
        got.len(),
        400 * asset_len
    );
    println!(
        "per client: 4 connections from one address held, the 5th closed after {} ms, another address served; \
         a client that stopped reading was cut off after {:.1} MB of {:.1} MB (write-stall timeout 2 s)",
        closed_after.as_millis(),
        got.len() as f64 / 1e6,
        (400 * asset_len) as f64 / 1e6
    );
}

fn small_caps(c: &mut data_export::config::Config) {
    c.http.max_connections = 5;
    c.http.board_max_connections = 3;
}

/// A whole request on a new connection; returns its status line.
async fn request_on_new_connection(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let got = until_closed(&mut s, Duration::from_secs(30)).await.expect("answered and closed");
    String::from_utf8_lossy(&got).lines().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_over_the_cap_wait_until_one_closes() {
    let app =
        TestApp::spawn_with(Options { members: 2, workers: false, config: Some(small_caps), ..Default::default() })
            .await;
    let http = app.state.config.http.clone();
    for (name, port, cap) in [
        ("web app", port_of(&app.addr), http.max_connections),
        ("job board", app.state.board_port(), http.board_max_connections),
    ] {
        // `cap` idle connections hold every slot (the header timeout is 10 s).
        let mut idle = Vec::new();
        for _ in 0..cap {
            idle.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        const EXTRA: usize = 3;
        let extra: Vec<_> = (0..EXTRA)
            .map(|_| tokio::spawn(async move { request_on_new_connection(port, "/healthz").await }))
            .collect();
        let held = Duration::from_millis(1500);
        tokio::time::sleep(held).await;
        let answered_early = extra.iter().filter(|h| h.is_finished()).count();
        assert_eq!(answered_early, 0, "{name}: over the cap of {cap}, no extra connection is served");
        let freed = Instant::now();
        drop(idle);
        for h in extra {
            let status =
                tokio::time::timeout(Duration::from_secs(2), h).await.expect("served once slots free").unwrap();
            assert!(status.starts_with("HTTP/1.1 "), "{name}: {status}");
        }
        let after = freed.elapsed();
        println!(
            "connection cap ({name}): cap {cap}, {EXTRA} more connections not served for {:.1} s while {cap} idle ones \
             held the slots, all served {} ms after those closed",
            held.as_secs_f64(),
            after.as_millis()
        );
        assert!(after < Duration::from_secs(1));
    }
}

fn short_body_timeouts(c: &mut data_export::config::Config) {
    c.http.body_read_timeout = Duration::from_secs(1);
    c.http.request_timeout = Duration::from_secs(3);
}

/// Sends the head of a JSON POST to the API's restore route (a platform admin's
/// token: the handler reads the body), and `first` bytes of its body, then `more`
/// bytes one at a time every `every`; returns the answer's status line and when
/// it came.
async fn slow_post(app: &TestApp, first: usize, more: usize, every: Duration) -> (String, Duration) {
    let port = port_of(&app.addr);
    let token = app.token(PLATFORM).await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST /api/v1/platform/imports HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&vec![b' '; first]).await.unwrap();
    let started = Instant::now();
    let (mut read, mut write) = s.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..more {
            tokio::time::sleep(every).await;
            if write.write_all(b" ").await.is_err() {
                return;
            }
        }
        // Then stall, holding the connection open.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(write);
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let took = started.elapsed();
    trickle.abort();
    assert!(closed.is_ok(), "the server closed the connection within 10 s; got {:?}", String::from_utf8_lossy(&got));
    let text = String::from_utf8_lossy(&got).to_string();
    (text.lines().next().unwrap_or_default().to_string(), took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_or_trickled_body_gets_408_and_the_upload_outlasts_the_request_timeout() {
    let app = TestApp::spawn_with(Options {
        members: 2,
        workers: false,
        config: Some(short_body_timeouts),
        ..Default::default()
    })
    .await;
    // Headers and 10 bytes, then nothing: cut at the body-read timeout (1 s).
    let (status, stalled) = slow_post(&app, 10, 0, Duration::ZERO).await;
    assert_eq!(status, "HTTP/1.1 408 Request Timeout");
    assert!(stalled >= Duration::from_millis(900) && stalled < Duration::from_millis(2500), "{stalled:?}");
    // A byte every 300 ms never pauses 1 s, but the whole request is cut at 3 s.
    let (status, trickled) = slow_post(&app, 0, 1000, Duration::from_millis(300)).await;
    assert_eq!(status, "HTTP/1.1 408 Request Timeout");
    assert!(trickled >= Duration::from_millis(2900) && trickled < Duration::from_millis(4500), "{trickled:?}");

    // The streamed upload has no request timeout: 4.5 s of a slow (but never stalled)
    // upload reaches its handler, whose answer is about the file.
    let (status, body, took) = slow_upload(&app, Duration::from_millis(4500)).await;
    println!(
        "body timeouts: a stalled body got 408 after {:.1} s (body-read timeout 1 s); a trickled one after {:.1} s \
         (request timeout 3 s); an upload taking {:.1} s was answered by its handler ({status})",
        stalled.as_secs_f64(),
        trickled.as_secs_f64(),
        took.as_secs_f64()
    );
    assert_eq!(status, "HTTP/1.1 400 Bad Request", "{body}");
    assert!(body.contains("The file is empty"), "{body}");
}

/// A platform admin's session as a cookie header, and the upload form's action.
async fn platform_admin_cookie(app: &TestApp) -> (String, String) {
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let client = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = client.get(app.url(LOGIN)).send().await.unwrap().text().await.unwrap();
    let csrf = csrf_from(&page).unwrap();
    let form = [("email", PLATFORM), ("password", PASSWORD), ("csrf_token", csrf.as_str())];
    assert_eq!(client.post(app.url(LOGIN)).form(&form).send().await.unwrap().status(), 303);
    let page = client.get(app.url("/platform/imports")).send().await.unwrap().text().await.unwrap();
    let at = page.find("action=\"/platform/imports/upload?").expect("the upload form") + "action=\"".len();
    let action = page[at..].split('"').next().unwrap().replace("&amp;", "&");
    use reqwest::cookie::CookieStore;
    let cookie = jar.cookies(&app.url("/").parse().unwrap()).unwrap().to_str().unwrap().to_string();
    (cookie, action)
}

/// Uploads an empty file, its multipart body sent in pieces over `spread`.
async fn slow_upload(app: &TestApp, spread: Duration) -> (String, String, Duration) {
    const BOUNDARY: &str = "dxtest-hardening-boundary";
    let (cookie, action) = platform_admin_cookie(app).await;
    let body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"slug\"\r\n\r\nslow-upload\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nSlow Upload\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"s.json.gz\"\r\n\
         Content-Type: application/gzip\r\n\r\n\r\n--{BOUNDARY}--\r\n"
    );
    let port = port_of(&app.addr);
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST {action} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\nConnection: close\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let pieces: Vec<&[u8]> = body.as_bytes().chunks(body.len().div_ceil(15)).collect();
    let pause = spread / pieces.len() as u32;
    for piece in pieces {
        tokio::time::sleep(pause).await;
        s.write_all(piece).await.unwrap();
    }
    let got = until_closed(&mut s, Duration::from_secs(20)).await.expect("answered");
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&got).to_string();
    (text.lines().next().unwrap_or_default().to_string(), text, took)
}

fn https_site(c: &mut data_export::config::Config) {
    c.public_url = "https://data-export.example".into();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_carry_no_store_and_a_request_id_and_hsts_only_on_an_https_site() {
    let app = TestApp::spawn_with(Options { members: 2, workers: false, ..Default::default() }).await;
    let client = app.client();
    let page = client.get(app.url(LOGIN)).send().await.unwrap();
    let h = page.headers();
    assert_eq!(h["cache-control"], "no-store", "a page with a CSRF token");
    assert!(h.get("strict-transport-security").is_none(), "no HSTS on an http site");
    let first = h["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(first.len(), 26, "a ULID: {first}");
    // Static assets stay cacheable; the JSON API and redirects are not cached.
    let css = client.get(app.url(data_export::routes::ASSET_CSS)).send().await.unwrap();
    assert_eq!(css.headers()["cache-control"], "public, max-age=3600");
    let home = client.get(app.url("/")).send().await.unwrap();
    assert_eq!((home.status().as_u16(), home.headers()["cache-control"].to_str().unwrap()), (303, "no-store"));
    // Every answer has its own id; a short, plain one from the client (a proxy's) is
    // kept, anything else replaced.
    let mut ids = std::collections::HashSet::from([first]);
    for _ in 0..20 {
        let r = client.get(app.url("/healthz")).send().await.unwrap();
        assert!(ids.insert(r.headers()["x-request-id"].to_str().unwrap().to_string()), "ids are unique");
    }
    let kept = client.get(app.url("/healthz")).header("x-request-id", "proxy-7f3a.1_b").send().await.unwrap();
    assert_eq!(kept.headers()["x-request-id"], "proxy-7f3a.1_b");
    for bad in ["a b", "x\"=forged", &"9".repeat(65)] {
        let r = client.get(app.url("/healthz")).header("x-request-id", bad).send().await.unwrap();
        assert_eq!(r.headers()["x-request-id"].len(), 26, "{bad:?} is replaced");
    }
    let board = client.get(app.board_url("/")).send().await.unwrap();
    assert_eq!(board.headers()["x-request-id"].len(), 26, "the board's answers too");
    assert!(board.headers().get("strict-transport-security").is_none());

    // The id is logged with the request: a `serve` process, its log captured.
    let serve = app.spawn_serve(&[("RUST_LOG", "info")]);
    let r = client.get(format!("{}{LOGIN}", serve.addr)).send().await.unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Without the terminal's colour codes.
    let logs: String = serve
        .logs()
        .split('\x1b')
        .map(|p| if p.starts_with('[') { p.split_once('m').map_or(p, |(_, r)| r) } else { p })
        .collect();
    let line = logs.lines().find(|l| l.contains(&id)).unwrap_or_else(|| panic!("{id} is not in the log:\n{logs}"));
    assert!(line.contains("path=/login") && line.contains("status=200"), "{line}");
    println!("request ids: 24 answers, 24 distinct ids; the log line of one: {}", line.trim());
    drop(serve);

    // An https site: HSTS on every answer of both listeners.
    let secure =
        TestApp::spawn_with(Options { members: 2, workers: false, config: Some(https_site), ..Default::default() })
            .await;
    for url in [secure.url(LOGIN), secure.url("/healthz"), secure.url("/nope"), secure.board_url("/")] {
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000; includeSubDomains", "{url}");
    }
}

/// The board's page and its CSP, fetched with a platform admin's cookie.
async fn board_page(app: &TestApp) -> (String, String) {
    let s = app.login(PLATFORM).await;
    // Cookies are per host, not per port: the same client is signed in on the board.
    let r = s.client.get(app.board_url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_string();
    (csp, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_board_has_a_tight_csp_that_still_lets_its_page_run() {
    use base64::Engine;
    use sha2::Digest;
    let app = TestApp::spawn_with(Options { members: 2, workers: false, ..Default::default() }).await;
    let (csp, page) = board_page(&app).await;
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    // Inline styles only (the UI sets style attributes); never inline or eval'd script.
    let script_src = csp.split(';').find(|d| d.trim().starts_with("script-src")).unwrap_or("");
    assert!(!script_src.contains("unsafe-inline") && !csp.contains("'unsafe-eval'") && !csp.contains('*'), "{csp}");
    assert!(csp.contains("style-src 'self' 'unsafe-inline'"), "{csp}");
    // The page's one inline script is allowed by its hash, computed here on its own.
    let start = page.find("<script type=\"module\">").expect("the loader script") + "<script type=\"module\">".len();
    let script = &page[start..start + page[start..].find("</script>").unwrap()];
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script.as_bytes()));
    assert!(csp.contains(&format!("'sha256-{hash}'")), "{csp}");
    // Everything it loads is from its own origin.
    for attr in ["src=", "href="] {
        for at in page.match_indices(attr).map(|(i, _)| i + attr.len()) {
            let value = page[at..].trim_start_matches(['"', '\'']);
            assert!(value.starts_with('/'), "same-origin only: {}", &page[at..at + 40.min(page.len() - at)]);
        }
    }
    println!("board CSP: {csp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_board_refuses_state_changing_requests_not_from_its_own_origin() {
    let app = TestApp::spawn_with(Options { members: 2, workers: false, ..Default::default() }).await;
    let s = app.login(PLATFORM).await;
    let url = app.board_url("/api/v1/queues/exports/tasks");
    let own = app.board_url("");
    let own = own.trim_end_matches('/');
    let put = |headers: &[(&str, &str)]| {
        let mut req = s.client.put(&url).header("content-type", "application/json").body("{\"not\":\"a job\"}");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    let mut refused = 0;
    for headers in [
        vec![],
        vec![("origin", "http://evil.example")],
        vec![("origin", "null")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site")],
        vec![("origin", "http://evil.example"), ("sec-fetch-site", "same-origin")],
    ] {
        let r = put(&headers).await.unwrap();
        assert_eq!(r.status(), 403, "{headers:?}");
        assert!(r.text().await.unwrap().contains("Cross-origin"), "{headers:?}");
        refused += 1;
    }
    let mut allowed = 0;
    for headers in [vec![("origin", own)], vec![("sec-fetch-site", "same-origin")]] {
        let r = put(&headers).await.unwrap();
        assert_ne!(r.status(), 403, "{headers:?}: {}", r.text().await.unwrap());
        allowed += 1;
    }
    // Reading needs neither.
    assert_eq!(s.client.get(app.board_url("/api/v1/queues")).send().await.unwrap().status(), 200);
    let (jobs,): (i64,) = sqlx::query_as("select count(*) from apalis.jobs").fetch_one(app.pool()).await.unwrap();
    println!(
        "board origin rule: {refused} state-changing requests refused (403), {allowed} from its own origin passed"
    );
    assert_eq!(jobs, 0, "no refused request pushed a job");
}

/// ChromeDriver's log of the browser's console (CSP violations are reported there).
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_string()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_board_runs_in_a_browser_under_its_csp_with_no_violation() {
    use fantoccini::{ClientBuilder, Locator};
    let app = TestApp::spawn_with(Options { members: 2, workers: false, ..Default::default() }).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    struct Driver(std::process::Child);
    impl Drop for Driver {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _driver = Driver(
        std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver is installed (Debian package chromium-driver; scripts/test installs it)"),
    );
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let profile = app.storage_dir.join("chromium-profile-csp");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--no-first-run", "--disable-background-networking", "--disable-sync",
                     format!("--user-data-dir={}", profile.display())],
        }),
    );
    caps.insert("goog:loggingPrefs".into(), serde_json::json!({ "browser": "ALL" }));
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session");
    c.goto(&app.url(LOGIN)).await.unwrap();
    c.find(Locator::Css("#email")).await.unwrap().send_keys(PLATFORM).await.unwrap();
    c.find(Locator::Css("#password")).await.unwrap().send_keys(PASSWORD).await.unwrap();
    c.find(Locator::Css("button[type=submit].btn-primary")).await.unwrap().click().await.unwrap();
    c.wait().at_most(Duration::from_secs(10)).for_url(&url::Url::parse(&app.url("/")).unwrap()).await.unwrap();
    c.goto(&app.board_url("/")).await.unwrap();
    assert!(c.title().await.unwrap().ends_with("Apalis Board"));
    // The wasm app started (its loader ran, its wasm compiled) and drew the queues it
    // fetched from its API.
    let started = Instant::now();
    let text = loop {
        let text: String = c.find(Locator::Css("body")).await.unwrap().text().await.unwrap();
        if text.contains("Backend stats overview") || started.elapsed() > Duration::from_secs(20) {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let log = c.issue_cmd(BrowserLog).await.unwrap();
    c.close().await.unwrap();
    let entries: Vec<String> =
        log.as_array().into_iter().flatten().filter_map(|e| e["message"].as_str().map(str::to_string)).collect();
    let violations: Vec<&String> =
        entries.iter().filter(|m| m.contains("Content Security Policy") || m.contains("Refused to")).collect();
    println!(
        "board in Chromium: rendered its overview ({} characters); {} console entries, {} CSP violations",
        text.len(),
        entries.len(),
        violations.len()
    );
    assert!(text.contains("Backend stats overview"), "the board drew its overview: {text:?}");
    assert!(violations.is_empty(), "CSP violations: {violations:#?}");
}

/// Issue 33, 5.1: connections are capped per IPv6 /56 and /48 as well as per /64
/// (an ISP customer's /56 holds 256 /64s, each of which could otherwise hold the
/// whole per-client cap): the /56 may hold 4 times the cap, the /48 8 times.
#[test]
fn ipv6_connections_are_capped_per_56_and_48_as_well_as_per_64() {
    use data_export::startup::listener::PerClient;
    let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
    let per = PerClient::default();
    let max = 2;
    let mut held = Vec::new();
    let mut open = |addr: &str| match per.enter(ip(addr), max) {
        Some(c) => {
            held.push(c);
            true
        }
        None => false,
    };
    assert!(open("2001:db8:1:100::1") && open("2001:db8:1:100::2"));
    assert!(!open("2001:db8:1:100::3"), "the /64 holds its 2");
    // Three more /64s of the same /56: 8 in all, its cap.
    for net in ["101", "1a0", "1ff"] {
        assert!(open(&format!("2001:db8:1:{net}::1")) && open(&format!("2001:db8:1:{net}::2")), "{net}");
    }
    assert!(!open("2001:db8:1:1fe::1"), "a fresh /64 of a /56 that holds its 8");
    // A second /56 of the /48: the /48 holds 16, its cap.
    for net in ["200", "201", "202", "203"] {
        assert!(open(&format!("2001:db8:1:{net}::1")) && open(&format!("2001:db8:1:{net}::2")), "{net}");
    }
    assert!(!open("2001:db8:1:300::1"), "a fresh /56 of a /48 that holds its 16");
    assert!(open("2001:db8:2::1"), "another /48");
    assert!(open("192.0.2.1") && open("192.0.2.1") && !open("192.0.2.1"), "IPv4: 2 per address");
    assert!(open("192.0.2.2"), "IPv4 has no wider network");
    assert!(per.enter(None, max).is_some(), "a trusted proxy is not counted");
    // A connection that closes frees its place in every network that held it.
    held.remove(0);
    let again = per.enter(ip("2001:db8:1:100::9"), max);
    assert!(again.is_some(), "the /64, /56 and /48 each have one free");
    assert!(per.enter(ip("2001:db8:1:300::1"), max).is_none(), "the /48 is full again while that one is open");
    drop(again);
    assert!(per.enter(ip("2001:db8:1:300::1"), max).is_some(), "and has one free once it closes");
}
