//! Sign-in, sessions, CSRF, roles, tokens, rate limits.

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sets_a_hardened_cookie_and_logout_ends_the_session() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let s = app.anonymous().await;
    let resp = s.post_form(LOGIN, &[("email", "admin@acme.test"), ("password", PASSWORD)]).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/");
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.starts_with("dx_session="), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"), "{cookie}");
    assert!(!cookie.contains("Secure"), "plain http must not set Secure: {cookie}");
    let home = s.get("/").await;
    assert_eq!(home.status(), 200);
    assert!(home.text().await.unwrap().contains("admin@acme.test"));
    let session_id = cookie.split(';').next().unwrap().to_string();

    let out = s.post_form("/logout", &[]).await;
    assert_eq!(out.status(), 303);
    assert_eq!(s.get("/").await.headers()["location"], "/login");
    // The old cookie no longer works: the session was deleted from the store.
    let replay = app.client().get(app.url("/")).header("cookie", session_id).send().await.unwrap();
    assert_eq!(replay.headers()["location"], "/login");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_id_changes_at_login() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let client = app.client();
    let page = client.get(app.url(LOGIN)).send().await.unwrap();
    let before = page.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let csrf = csrf_from(&page.text().await.unwrap()).unwrap();
    let resp = client
        .post(app.url(LOGIN))
        .form(&[("email", "admin@acme.test"), ("password", PASSWORD), ("csrf_token", &csrf)])
        .send()
        .await
        .unwrap();
    let after = resp.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    assert_ne!(before, after);
    // The pre-login id is not signed in.
    let fixated = app.client().get(app.url("/")).header("cookie", before).send().await.unwrap();
    assert_eq!(fixated.status(), 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_are_refused_and_rate_limited() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let s = app.anonymous().await;
    for _ in 0..5 {
        let r = s.post_form(LOGIN, &[("email", "admin@acme.test"), ("password", "nope")]).await;
        assert_eq!(r.status(), 401);
        assert!(r.text().await.unwrap().contains("do not match"));
    }
    // Now even the right password is refused for this account.
    let r = s.post_form(LOGIN, &[("email", "admin@acme.test"), ("password", PASSWORD)]).await;
    assert_eq!(r.status(), 429);
    assert!(r.text().await.unwrap().contains("Too many failed sign-ins"));
    // Another account from the same address is still fine (the per-IP limit is higher).
    let r = s.post_form(LOGIN, &[("email", "admin@globex.test"), ("password", PASSWORD)]).await;
    assert_eq!(r.status(), 303);
    // Unknown accounts and seeded members (who cannot sign in) look the same.
    let t = app.anonymous().await;
    let r = t.post_form(LOGIN, &[("email", "nobody@example.test"), ("password", "x")]).await;
    assert_eq!(r.status(), 401);
    let r = t.post_form(LOGIN, &[("email", "member1@acme.test"), ("password", "!")]).await;
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_address_limit_holds_across_accounts() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let s = app.anonymous().await;
    for i in 0..20 {
        let email = format!("guess{i}@example.test");
        let r = s.post_form(LOGIN, &[("email", &email), ("password", "nope")]).await;
        assert_eq!(r.status(), 401);
    }
    let r = s.post_form(LOGIN, &[("email", "admin@acme.test"), ("password", PASSWORD)]).await;
    assert_eq!(r.status(), 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_login_forms_get_a_clear_400() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let s = app.anonymous().await;
    let long = "a".repeat(300);
    for fields in [
        vec![("email", "")],
        vec![("email", "a@b.c"), ("password", "")],
        vec![("email", long.as_str()), ("password", "x")],
    ] {
        let r = s.post_form(LOGIN, &fields).await;
        assert_eq!(r.status(), 400);
        assert!(r.text().await.unwrap().contains("Enter your email and password"));
    }
    let (n,): (i64,) = sqlx::query_as("select count(*) from login_failures").fetch_one(app.pool()).await.unwrap();
    assert_eq!(n, 0, "bad forms change nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changing_requests_need_the_csrf_token() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let anon = app.anonymous().await;
    let r = anon.post_raw(LOGIN, &[("email", "admin@acme.test"), ("password", PASSWORD)]).await;
    assert_eq!(r.status(), 403, "login without the token");
    let s = app.login("admin@acme.test").await;
    for (path, fields) in [
        ("/orgs/acme/settings/modules", vec![("module", "engage")]),
        ("/orgs/acme/exports", vec![]),
        ("/logout", vec![]),
    ] {
        let r = s.post_raw(path, &fields).await;
        assert_eq!(r.status(), 403, "{path} without a token");
        assert!(r.text().await.unwrap().contains("CSRF"));
        let mut wrong = fields.clone();
        wrong.push(("csrf_token", "forged"));
        assert_eq!(s.post_raw(path, &wrong).await.status(), 403, "{path} with a forged token");
    }
    // htmx sends the token as a header; a wrong header is refused too.
    let r = s.client.post(app.url("/orgs/acme/exports")).header("X-CSRF-Token", "forged").send().await.unwrap();
    assert_eq!(r.status(), 403);
    let (runs,): (i64,) = sqlx::query_as("select count(*) from export_runs").fetch_one(app.pool()).await.unwrap();
    assert_eq!(runs, 0, "refused requests change nothing");
    // Still signed in: logout was refused.
    assert_eq!(s.get("/").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_orgs_are_kept_apart() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let anon = app.client();
    let r = anon.get(app.url("/orgs/acme/settings/modules")).send().await.unwrap();
    assert_eq!(r.status(), 303, "anonymous users are sent to sign in");
    assert_eq!(r.headers()["location"], "/login");

    let member = app.login("member@acme.test").await;
    assert_eq!(member.get("/orgs/acme/settings/modules").await.status(), 403);
    assert_eq!(member.get("/orgs/acme/settings/backups").await.status(), 403);
    assert_eq!(member.get("/orgs/globex/settings/modules").await.status(), 404);

    let globex = app.login("admin@globex.test").await;
    assert_eq!(globex.get("/orgs/globex/settings/modules").await.status(), 200);
    for path in [
        "/orgs/acme/settings/modules",
        "/orgs/acme/settings/backups",
        "/orgs/acme/exports/history",
        "/orgs/nope/settings/modules",
        "/orgs/..%2F/settings/modules",
    ] {
        assert_eq!(globex.get(path).await.status(), 404, "{path}");
    }
    // A platform admin is not implicitly an org admin.
    let platform = app.login("platform@example.test").await;
    assert_eq!(platform.get("/orgs/acme/settings/modules").await.status(), 404);

    // Membership changes apply to sessions already open, on the next request.
    let admin = app.login("admin@acme.test").await;
    assert_eq!(admin.get("/orgs/acme/exports/history").await.status(), 200);
    let set = |status: &'static str, role: &'static str| {
        sqlx::query(
            "update memberships set status = $1, role = $2
             where org_id = (select id from organizations where slug = 'acme')
               and user_id = (select id from users where email = 'admin@acme.test')",
        )
        .bind(status)
        .bind(role)
        .execute(app.pool())
    };
    set("lapsed", "admin").await.unwrap();
    assert_eq!(admin.get("/orgs/acme/exports/history").await.status(), 404, "a lapsed admin is not a member");
    set("active", "member").await.unwrap();
    assert_eq!(admin.get("/orgs/acme/exports/history").await.status(), 403, "demoted to member");
    set("active", "admin").await.unwrap();
    assert_eq!(admin.get("/orgs/acme/exports/history").await.status(), 200);
    // A session whose user is gone counts as signed out.
    sqlx::query("update sessions set data = jsonb_set(data, '{user_id}', '999999999')")
        .execute(app.pool())
        .await
        .unwrap();
    let r = admin.get("/orgs/acme/exports/history").await;
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (303, "/login"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_authenticate_and_nothing_else_does() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let token = app.token("admin@acme.test").await;
    assert!(token.starts_with("dex_"));
    let (stored,): (String,) = sqlx::query_as("select token_hash from api_tokens").fetch_one(app.pool()).await.unwrap();
    assert_ne!(stored, token, "only the hash is stored");
    assert!(!stored.contains(&token[4..]));

    assert_eq!(api(&app, &token).get("/orgs/acme/exports").await.status(), 200);
    for bad in ["", "dex_wrong", "not-even-prefixed", &"x".repeat(5000)] {
        let r = api(&app, bad).get("/orgs/acme/exports").await;
        assert_eq!(r.status(), 401, "{bad:.20}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
    }
    // The session cookie does not authenticate the API (so the API needs no CSRF token).
    let s = app.login("admin@acme.test").await;
    let r = s.client.get(app.url("/api/v1/orgs/acme/exports")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Unknown API paths answer JSON.
    let r = api(&app, &token).get("/nope").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_create_command_prints_a_working_token_once() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let out = app.command().args(["token", "create", "--email", "Admin@Acme.test", "--name", "ci"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("dex_"), "stdout is just the token: {token}");
    assert_eq!(api(&app, &token).get("/orgs/acme/exports").await.status(), 200);
    let out = app.command().args(["token", "create", "--email", "ghost@example.test"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user with email"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_carry_security_headers_and_assets_are_cached() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let r = app.client().get(app.url(LOGIN)).send().await.unwrap();
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'") && !csp.contains("unsafe-inline")
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let body = r.text().await.unwrap();
    assert!(!body.contains("<script>") && !body.contains("style=\""), "no inline script or style");
    for (path, ct) in [("/assets/app.css", "text/css"), ("/assets/htmx.min.js", "text/javascript")] {
        let r = app.client().get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(ct));
        assert!(r.headers()["cache-control"].to_str().unwrap().contains("max-age"));
    }
    assert_eq!(app.client().get(app.url("/healthz")).send().await.unwrap().status(), 200);
    let ready = app.client().get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"database": "ok", "storage": "ok"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_requests_write_no_session_except_on_the_sign_in_page() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let sessions = || async {
        sqlx::query_as::<_, (i64,)>("select count(*) from sessions").fetch_one(app.pool()).await.unwrap().0
    };
    for path in ["/", "/orgs/acme/settings/modules", "/no/such/page", "/orgs/acme/exports/history"] {
        let r = app.client().get(app.url(path)).send().await.unwrap();
        assert!(r.headers().get("set-cookie").is_none(), "{path} set a cookie");
    }
    assert_eq!(sessions().await, 0);
    // Anonymous POSTs are refused by CSRF and write nothing lasting either.
    let r = app.client().post(app.url("/orgs/acme/exports")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    app.anonymous().await;
    assert_eq!(sessions().await, 1, "the sign-in page starts one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_tokens_and_keys_never_reach_the_logs() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    // The most verbose level an operator would turn on.
    let serve = app.spawn_serve(&[("RUST_LOG", "debug")]);
    let wrong = "Wrong-Secret-4711";
    let s = anonymous_at(&serve.addr).await;
    let r = s.post_form(LOGIN, &[("email", "admin@acme.test"), ("password", wrong)]).await;
    assert_eq!(r.status(), 401);
    let r = s.post_form(LOGIN, &[("email", "admin@acme.test"), ("password", PASSWORD)]).await;
    assert_eq!(r.status(), 303);
    let cookie =
        r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().split('=').nth(1).unwrap().to_string();
    // A token, used for a whole export and its download.
    let token = app.token("admin@acme.test").await;
    let api = Api { client: app.client(), base: serve.addr.clone(), token: token.clone() };
    let created = api.post("/orgs/acme/exports").await;
    assert_eq!(created.status(), 202);
    let id = created.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_for_run(&id, std::time::Duration::from_secs(60)).await.status, "completed");
    let location =
        api.get(&format!("/orgs/acme/exports/{id}/download")).await.headers()["location"].to_str().unwrap().to_string();
    let signature = location.split("X-Amz-Signature=").nth(1).unwrap().split('&').next().unwrap().to_string();
    assert_eq!(app.client().get(&location).send().await.unwrap().status(), 200);
    // A bad token, too.
    let forged = format!("{token}x");
    assert_eq!(Api { token: forged.clone(), ..api }.get("/orgs/acme/exports").await.status(), 401);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let secret_key = match &app.state.config.storage {
        data_export::config::StorageSource::External(s3) => s3.secret_access_key.clone(),
        data_export::config::StorageSource::Embedded => unreachable!(),
    };
    let logs = serve.logs();
    // The log was captured, at debug level, and covers what happened.
    assert!(logs.contains("sign-in failed") && logs.contains(&id), "captured logs:\n{logs}");
    for (what, secret) in [
        ("the right password", PASSWORD),
        ("a wrong password", wrong),
        ("the API token", token.as_str()),
        ("a forged token", forged.as_str()),
        ("the session id", cookie.as_str()),
        ("the CSRF token", s.csrf.as_str()),
        ("a presigned URL's signature", signature.as_str()),
        ("the S3 secret key", secret_key.as_str()),
    ] {
        assert!(!logs.contains(secret), "{what} is in the log");
    }
    println!("secrets: {} lines of debug log checked for 8 secrets", logs.lines().count());
    drop(serve);

    // Cookies are Secure once the public URL is https.
    let https = app.spawn_serve(&[("PUBLIC_URL", "https://export.example.test")]);
    let r = app.client().get(format!("{}{LOGIN}", https.addr)).send().await.unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("Secure") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"), "{cookie}");
}
