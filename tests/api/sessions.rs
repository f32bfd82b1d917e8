//! What an open Backups & Export page polls (a running export's row, the history's
//! idle `?since=`) reads the session, its user, their membership of the org and the
//! row in one query, without tower-sessions loading the session first. These tests
//! hold that count, with a proxy that counts the statements the app sends to
//! PostgreSQL, and the answers: a session that expired or was deleted, a role that
//! changed, a cookie that is missing or malformed, each on the next poll once the
//! change's notification reached the process's session cache (`auth::session_cache`),
//! which the polls use between changes.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::helpers::*;

/// acme's admin signed in, with a running export.
struct Polling {
    app: TestApp,
    admin: Session,
    /// The running run's id.
    id: String,
    /// The running run's row, as its page polls it.
    row: String,
    /// The history's idle poll (`?since=` the current version).
    idle: String,
}

async fn polling(server: Option<String>) -> Polling {
    let app = TestApp::spawn_with(Options { members: 10, workers: false, server, ..Default::default() }).await;
    let admin = app.login("admin@acme.test").await;
    let frag = admin.htmx_post("/orgs/acme/exports").await.text().await.unwrap();
    let id = frag.split("data-export-id=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    sqlx::query("update export_runs set status = 'running' where id = $1").bind(&id).execute(app.pool()).await.unwrap();
    let history = admin.htmx_get("/orgs/acme/exports/history").await.text().await.unwrap();
    let at = history.find("history?since=").unwrap() + "history?since=".len();
    let version: i64 = history[at..history[at..].find('"').unwrap() + at].parse().unwrap();
    let row = format!("/orgs/acme/exports/{id}/row");
    let idle = format!("/orgs/acme/exports/history?since={version}");
    let p = Polling { app, admin, id, row, idle };
    p.listening().await;
    p
}

impl Polling {
    /// The session cookie of `email`'s newest session, as a `Cookie` header.
    async fn cookie_of(&self, email: &str) -> String {
        let id: String = sqlx::query_scalar(
            "select s.id from sessions s join users u on u.id = (s.data->>'user_id')::bigint
             where u.email = $1 order by s.expiry_date desc limit 1",
        )
        .bind(email)
        .fetch_one(self.app.pool())
        .await
        .unwrap();
        format!("dx_session={id}")
    }

    /// `path` as htmx polls it from another tab of the same browser: `cookie`
    /// sent by hand (or none), from a client that keeps no cookies of its own.
    async fn poll(&self, cookie: Option<&str>, path: &str) -> reqwest::Response {
        let mut req = self.app.client().get(self.app.url(path)).header("HX-Request", "true");
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send().await.unwrap()
    }

    /// Runs SQL on the app's database.
    async fn sql(&self, sql: &str) {
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(self.app.pool()).await.unwrap();
    }

    /// Runs SQL that changes what a session's answer is, and waits until its
    /// notification has emptied the app's session cache (it fails if none comes:
    /// the change's trigger is missing).
    async fn change(&self, sql: &str) {
        let before = self.app.state.session_cache.epoch();
        self.sql(sql).await;
        self.emptied_since(before, sql).await;
    }

    /// Waits until the app's session cache listens (it empties itself then).
    async fn listening(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.app.state.session_cache.listening() {
            assert!(std::time::Instant::now() < deadline, "the session cache did not listen within 10 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until the app's session cache was emptied since it counted `before`.
    async fn emptied_since(&self, before: u64, what: &str) {
        self.app.session_cache_emptied_since(before, what).await;
    }
}

/// Asserts the answer of an htmx poll without a live signed-in session: sent to
/// sign in with `HX-Redirect` (the browser goes there; htmx does not swap the
/// sign-in page into the history), no body to swap in.
async fn assert_sent_to_sign_in(resp: reqwest::Response, what: &str) {
    assert_eq!(resp.status(), 204, "{what}");
    assert_eq!(resp.headers()["hx-redirect"], LOGIN, "{what}");
    assert!(resp.headers().get("location").is_none(), "{what}");
    assert!(resp.text().await.unwrap().is_empty(), "{what}: no body");
}

/// The `Set-Cookie` of `resp` for the session cookie, if any.
fn session_set_cookie(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("dx_session="))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_row_and_an_idle_history_poll_are_one_query_each() {
    let counter = StatementCounter::start(&server_url()).await;
    let p = polling(Some(counter.url(&server_url()))).await;
    let (admin, row, idle) = (&p.admin, p.row.clone(), p.idle.clone());
    // What each request sends to PostgreSQL, once the page is open.
    let cost = |path: String, status: u16| {
        let counter = &counter;
        async move {
            let before = counter.statements();
            let resp = admin.htmx_get(&path).await;
            assert_eq!(resp.status(), status, "{path}");
            let body = resp.text().await.unwrap();
            (counter.statements() - before, body)
        }
    };
    for _ in 0..5 {
        let (n, body) = cost(row.clone(), 200).await;
        assert_eq!(n, 1, "the running row's poll: {body}");
        assert!(body.contains("data-status=\"running\""), "{body}");
        let (n, body) = cost(idle.clone(), 204).await;
        assert_eq!(n, 1, "the history's idle poll");
        assert!(body.is_empty());
    }
    // A finished row offers forms: their token came with the session, in the same query.
    p.sql(&format!(
        "update export_runs set status = 'completed', finished_at = now(), object_key = 'exports/x.json.gz',
                size_bytes = 10, sha256 = repeat('a', 64), rows_total = 1, rows_written = 1 where id = '{}'",
        p.id
    ))
    .await;
    let (n, body) = cost(row.clone(), 200).await;
    assert_eq!(n, 1, "the finished row: {body}");
    assert!(body.contains("data-status=\"completed\"") && body.contains("Delete"), "{body}");
    assert_eq!(
        csrf_from(&body).as_deref(),
        Some(admin.csrf.as_str()),
        "the row's forms carry the session's token: {body}"
    );
    // The whole fragment: the same query, then the page of runs.
    let (n, body) = cost("/orgs/acme/exports/history".into(), 200).await;
    assert_eq!(n, 2, "the whole history fragment");
    assert_eq!(csrf_from(&body).as_deref(), Some(admin.csrf.as_str()), "its forms carry the session's token");
    // A request of no org reads the session with its user in one query too: the
    // privacy history a member's page polls is that, its page of requests and the
    // retention setting.
    let (n, _) = cost("/me/privacy/history".into(), 200).await;
    assert_eq!(n, 3, "the privacy history's poll");
    // And the token is still the one a POST is checked against.
    let resp = admin.htmx_post(&format!("/orgs/acme/exports/{}/delete", p.id)).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    println!(
        "queries per poll: the running row 1, the idle history 1 (5 times each), the finished row 1, the whole history fragment 2, the privacy history 3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_expired_or_was_deleted_is_refused_on_the_next_poll() {
    let p = polling(None).await;
    let cookie = p.cookie_of("admin@acme.test").await;
    let id = cookie.trim_start_matches("dx_session=");
    let (row, idle) = (p.row.as_str(), p.idle.as_str());
    assert_eq!(p.poll(Some(&cookie), row).await.status(), 200);
    assert_eq!(p.poll(Some(&cookie), idle).await.status(), 204);

    // Expired (the housekeeping has not deleted it yet): refused, and the cookie is
    // cleared, as when tower-sessions loaded every request's session.
    p.change(&format!("update sessions set expiry_date = now() - interval '1 second' where id = '{id}'")).await;
    for path in [row, idle] {
        let resp = p.poll(Some(&cookie), path).await;
        let cleared = session_set_cookie(&resp).unwrap_or_else(|| panic!("{path}: the dead cookie is cleared"));
        assert!(cleared.contains("Max-Age=0"), "{cleared}");
        assert_sent_to_sign_in(resp, &format!("{path} with an expired session")).await;
    }
    // Only the expiry refused it.
    p.sql(&format!("update sessions set expiry_date = now() + interval '1 hour' where id = '{id}'")).await;
    assert_eq!(p.poll(Some(&cookie), row).await.status(), 200);

    // Deleted from the store.
    p.change(&format!("delete from sessions where id = '{id}'")).await;
    for path in [row, idle] {
        assert_sent_to_sign_in(p.poll(Some(&cookie), path).await, &format!("{path} with a deleted session")).await;
    }

    // Signed out in another tab of the same browser.
    let other = p.app.login("admin@acme.test").await;
    let cookie = p.cookie_of("admin@acme.test").await;
    assert_eq!(p.poll(Some(&cookie), row).await.status(), 200);
    let before = p.app.state.session_cache.epoch();
    assert_eq!(other.post_form("/logout", &[]).await.status(), 303);
    p.emptied_since(before, "signing out").await;
    for path in [row, idle] {
        assert_sent_to_sign_in(p.poll(Some(&cookie), path).await, &format!("{path} after signing out")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_role_is_seen_on_the_next_poll() {
    let p = polling(None).await;
    let (row, idle) = (p.row.as_str(), p.idle.as_str());
    let membership = "from users u where memberships.user_id = u.id and u.email = 'admin@acme.test'
                      and memberships.org_id = (select id from organizations where slug = 'acme')";
    assert_eq!(p.admin.htmx_get(row).await.status(), 200);

    // Demoted to member: 403, with the reason; htmx's poll stops there (286) and
    // says why in place of the row or the history.
    p.change(&format!("update memberships set role = 'member' {membership}")).await;
    for path in [row, idle] {
        let resp = p.admin.get(path).await;
        assert_eq!(resp.status(), 403, "{path} as a member");
        let body = resp.text().await.unwrap();
        assert!(body.contains("Only admins of this organization can do this."), "{body}");
        let resp = p.admin.htmx_get(path).await;
        assert_eq!(resp.status().as_u16(), 286, "{path} polled as a member");
        let body = resp.text().await.unwrap();
        assert!(body.contains("can no longer manage this organization"), "{body}");
    }
    // Admin again: the row is back on the next poll.
    p.change(&format!("update memberships set role = 'admin' {membership}")).await;
    assert_eq!(p.admin.htmx_get(row).await.status(), 200);
    assert_eq!(p.admin.htmx_get(idle).await.status(), 204);

    // No longer an active member: the org is as unknown as one that does not exist.
    p.change(&format!("update memberships set status = 'lapsed' {membership}")).await;
    for path in [row, idle] {
        let resp = p.admin.get(path).await;
        assert_eq!(resp.status(), 404, "{path} as a lapsed member");
        let body = resp.text().await.unwrap();
        assert!(body.contains("Not Found") && body.contains("Not found"), "{body}");
        assert_eq!(p.admin.htmx_get(path).await.status().as_u16(), 286, "{path} polled as a lapsed member");
    }
    // Removed from the org.
    p.change(&format!("update memberships set status = 'active' {membership}")).await;
    assert_eq!(p.admin.htmx_get(row).await.status(), 200);
    p.change(&format!("delete from memberships using {}", membership.trim_start_matches("from "))).await;
    for path in [row, idle] {
        assert_eq!(p.admin.get(path).await.status(), 404, "{path} once removed");
        assert_eq!(p.admin.htmx_get(path).await.status().as_u16(), 286, "{path} polled once removed");
    }
    // Still signed in: the start page knows them.
    let home = p.admin.get("/").await;
    assert_eq!(home.status(), 200);
    assert!(home.text().await.unwrap().contains("admin@acme.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn between_changes_a_poll_takes_its_session_from_the_cache_and_reads_its_row() {
    let p = polling(None).await;
    let cookie = p.cookie_of("admin@acme.test").await;
    let id = cookie.trim_start_matches("dx_session=").to_string();
    let cache = &p.app.state.session_cache;
    // Deletes the session's record with its trigger off for the statement (only the
    // table's owner can), so that no notification tells the cache.
    let delete_silently = || async {
        let mut tx = p.app.pool().begin().await.unwrap();
        sqlx::query("alter table sessions disable trigger sessions_auth_change").execute(&mut *tx).await.unwrap();
        sqlx::query("delete from sessions where id = $1").bind(&id).execute(&mut *tx).await.unwrap();
        sqlx::query("alter table sessions enable always trigger sessions_auth_change").execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
    };
    let restore =
        || async { p.sql(&format!("insert into sessions select * from saved_session where id = '{id}'")).await };
    p.sql(&format!("create table saved_session as select * from sessions where id = '{id}'")).await;

    // A poll that fills the cache: one during which nothing emptied it (a late
    // notification of the setup's sign-in would have refused its answer).
    for attempt in 0.. {
        let before = cache.epoch();
        assert_eq!(p.poll(Some(&cookie), &p.row).await.status(), 200);
        if cache.epoch() == before && cache.listening() {
            break;
        }
        assert!(attempt < 20, "the cache kept being emptied");
    }
    delete_silently().await;
    p.sql(&format!("update export_runs set rows_total = 1000, rows_written = 420 where id = '{}'", p.id)).await;
    let resp = p.poll(Some(&cookie), &p.row).await;
    assert_eq!(resp.status(), 200, "answered from the cache");
    let body = resp.text().await.unwrap();
    assert!(body.contains("aria-valuenow=\"42\""), "the row itself is read each time (420 of 1000 rows): {body}");
    // The history too (its version moved with the run's progress: the whole fragment).
    assert_eq!(p.poll(Some(&cookie), &p.idle).await.status(), 200, "the history's poll too");

    // Any notification on the channel empties it: the next poll reads the session
    // and finds it gone.
    let before = cache.epoch();
    sqlx::query("select pg_notify($1, '')")
        .bind(data_export::auth::session_cache::CHANNEL)
        .execute(p.app.pool())
        .await
        .unwrap();
    p.emptied_since(before, "pg_notify").await;
    for path in [&p.row, &p.idle] {
        assert_sent_to_sign_in(p.poll(Some(&cookie), path).await, &format!("{path} once the cache was emptied")).await;
    }

    // The listener's connection is cut: the cache empties itself, and keeps nothing
    // until it listens again (then a poll reads the session once more).
    restore().await;
    assert_eq!(p.poll(Some(&cookie), &p.row).await.status(), 200, "the session is back");
    let pids: Vec<i32> = sqlx::query_scalar(
        "select pid from pg_stat_activity where datname = current_database() and application_name = $1",
    )
    .bind(format!("{} {}", data_export::db::listen::APPLICATION_NAME, data_export::auth::session_cache::CHANNEL))
    .fetch_all(p.app.pool())
    .await
    .unwrap();
    assert_eq!(pids.len(), 1, "one session cache listener: {pids:?}");
    let pid = pids[0];
    let before = cache.epoch();
    sqlx::query("select pg_terminate_backend($1)").bind(pid).execute(p.app.pool()).await.unwrap();
    p.emptied_since(before, "the listener's connection cut").await;
    delete_silently().await;
    assert_sent_to_sign_in(p.poll(Some(&cookie), &p.row).await, "a poll after the listener's connection was lost")
        .await;
    p.listening().await;
    restore().await;
    assert_eq!(p.poll(Some(&cookie), &p.row).await.status(), 200, "listening again, it reads the session");
}

/// The payload of the next notification within `within` that is no listener's
/// heartbeat (the app's session cache sends them on the same channel).
async fn next_change(listener: &mut sqlx::postgres::PgListener, within: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let n = tokio::time::timeout_at(deadline, listener.recv()).await.ok()?.unwrap();
        if !n.payload().starts_with("heartbeat:") {
            return Some(n.payload().to_string());
        }
    }
}

/// The triggers behind the session cache: each change to what a session's answer
/// is read from notifies its channel, and what cannot change an answer does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_change_to_a_sessions_answer_notifies_the_cache_and_nothing_else_does() {
    use sqlx::postgres::PgListener;
    let p = polling(None).await;
    let mut listener = PgListener::connect_with(p.app.pool()).await.unwrap();
    listener.listen(data_export::auth::session_cache::CHANNEL).await.unwrap();
    let admin = "(select id from users where email = 'admin@acme.test')";
    let acme = "(select id from organizations where slug = 'acme')";
    let live = "(select id from sessions order by expiry_date desc limit 1)";
    let (notifying, quiet): (Vec<String>, Vec<String>) = (
        vec![
            format!("update users set display_name = 'A. Admin' where id = {admin}"),
            format!("insert into platform_admins (user_id) values ({admin})"),
            format!("delete from platform_admins where user_id = {admin}"),
            format!("update organizations set name = 'Acme Two' where id = {acme}"),
            format!("update memberships set role = 'admin' where user_id = {admin} and org_id = {acme}"),
            format!(
                "insert into org_modules (org_id, module, enabled) values ({acme}, 'engage', false)
                     on conflict (org_id, module) do update set enabled = not org_modules.enabled"
            ),
            format!("update sessions set data = data || '{{\"x\": 1}}' where id = {live}"),
            format!("update sessions set expiry_date = expiry_date - interval '1 minute' where id = {live}"),
            "insert into sessions (id, data, expiry_date) values ('gone-soon', '{}', now() + interval '1 hour')
             ; delete from sessions where id = 'gone-soon'"
                .to_string(),
        ],
        vec![
            format!("update sessions set expiry_date = expiry_date + interval '1 hour' where id = {live}"),
            "insert into sessions (id, data, expiry_date) values ('new-one', '{}', now() + interval '1 hour')"
                .to_string(),
            "insert into sessions (id, data, expiry_date) values ('expired', '{}', now() - interval '1 hour')
             ; delete from sessions where id = 'expired'"
                .to_string(),
            format!("update export_runs set rows_written = 7 where id = '{}'", p.id),
        ],
    );
    for sql in &notifying {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.as_str())).execute(p.app.pool()).await.unwrap();
        let n = next_change(&mut listener, Duration::from_secs(5)).await;
        assert_eq!(n.as_deref(), Some(""), "a notification after: {sql}");
        // Any more of the same change (none is expected) must not be taken for the next one's.
        while next_change(&mut listener, Duration::from_millis(50)).await.is_some() {}
    }
    for sql in &quiet {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.as_str())).execute(p.app.pool()).await.unwrap();
        let n = next_change(&mut listener, Duration::from_millis(300)).await;
        assert_eq!(n, None, "no notification after: {sql}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_malformed_or_unknown_cookie_is_anonymous() {
    let p = polling(None).await;
    let (row, idle) = (p.row.as_str(), p.idle.as_str());
    let unknown = format!("dx_session={}", tower_sessions::session::Id::default());
    for path in [row, idle] {
        // No cookie: nothing to clear.
        let resp = p.poll(None, path).await;
        assert!(session_set_cookie(&resp).is_none(), "{path}");
        assert_sent_to_sign_in(resp, &format!("{path} without a cookie")).await;
        // A cookie that is no session id, or the id of no session: cleared, as before.
        for cookie in ["dx_session=not-a-session-id", "dx_session=", unknown.as_str()] {
            let resp = p.poll(Some(cookie), path).await;
            let cleared = session_set_cookie(&resp).unwrap_or_else(|| panic!("{path} with {cookie}: cleared"));
            assert!(cleared.contains("Max-Age=0"), "{cleared}");
            assert_sent_to_sign_in(resp, &format!("{path} with {cookie}")).await;
        }
    }
    // The admin's own cookie still works, and none of this wrote a session.
    assert_eq!(p.admin.htmx_get(row).await.status(), 200);
    let sessions: i64 = sqlx::query_scalar("select count(*) from sessions").fetch_one(p.app.pool()).await.unwrap();
    assert_eq!(sessions, 1, "only the admin's");
}

/// A TCP proxy in front of PostgreSQL that counts the statements its clients send:
/// each Execute of the extended protocol and each simple Query (a connection's ping
/// is a Sync alone, and no statement), except those of a connection that LISTENs.
/// It answers a client's TLS request with "no",
/// so that it can read the messages.
struct StatementCounter {
    addr: SocketAddr,
    statements: Arc<AtomicU64>,
}

impl StatementCounter {
    /// A proxy to the server of the URL `server`.
    async fn start(server: &str) -> Self {
        let url = url::Url::parse(server).unwrap();
        let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let statements = Arc::new(AtomicU64::new(0));
        let counted = statements.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream.clone(), counted.clone()));
            }
        });
        Self { addr, statements }
    }

    /// `server` with this proxy's address.
    fn url(&self, server: &str) -> String {
        let mut url = url::Url::parse(server).unwrap();
        url.set_host(Some(&self.addr.ip().to_string())).unwrap();
        url.set_port(Some(self.addr.port())).unwrap();
        url.to_string()
    }

    fn statements(&self) -> u64 {
        self.statements.load(Ordering::SeqCst)
    }
}

/// Relays one connection, counting the client's statements.
async fn relay(mut client: TcpStream, upstream: String, statements: Arc<AtomicU64>) -> std::io::Result<()> {
    const SSL_REQUEST: u32 = 80877103;
    const GSSENC_REQUEST: u32 = 80877104;
    let mut server = TcpStream::connect(&upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    // The start-up messages have no type byte. Encryption requests are refused; the
    // client then sends its StartupMessage in the clear.
    loop {
        let len = client.read_u32().await?;
        let mut body = vec![0; (len as usize).saturating_sub(4)];
        client.read_exact(&mut body).await?;
        let code = body.get(..4).map(|b| u32::from_be_bytes(b.try_into().unwrap()));
        if len == 8 && matches!(code, Some(SSL_REQUEST | GSSENC_REQUEST)) {
            client.write_all(b"N").await?;
            continue;
        }
        server.write_all(&[&len.to_be_bytes()[..], &body].concat()).await?;
        break;
    }
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let answers = tokio::spawn(async move { tokio::io::copy(&mut from_server, &mut to_client).await });
    // Then every message is a type byte and a length (itself included). Whole
    // messages are counted, and passed on as they were read.
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut listener = false;
    loop {
        if from_client.read_buf(&mut buf).await? == 0 {
            break;
        }
        let mut whole = 0;
        while buf.len() >= whole + 5 {
            let len = u32::from_be_bytes(buf[whole + 1..whole + 5].try_into().unwrap()) as usize;
            if buf.len() < whole + 1 + len {
                break;
            }
            // A connection that LISTENs is a listener's (the session cache's, a
            // queue's), not the pool's: its statements are no request's.
            if buf[whole] == b'Q' && buf[whole + 5..whole + 1 + len].to_ascii_uppercase().starts_with(b"LISTEN") {
                listener = true;
            }
            if matches!(buf[whole], b'E' | b'Q') && !listener {
                statements.fetch_add(1, Ordering::SeqCst);
            }
            whole += 1 + len;
        }
        to_server.write_all(&buf[..whole]).await?;
        buf.drain(..whole);
    }
    let _ = to_server.shutdown().await;
    let _ = answers.await;
    Ok(())
}
