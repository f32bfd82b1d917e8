//! API tokens' lifecycle (issue 18, item 5): expiry, an org scope, `token list` and
//! `token revoke`, the `/me/tokens` page, and the migration that gives tokens made
//! before all this an expiry. Real tokens over HTTP, the real binary for the CLI.

use std::time::Instant;

use data_export::routes::{ME_TOKEN_REVOKE, ME_TOKENS, path};
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::*;

/// Runs a command to its end (the S3 endpoint runs on this test's runtime: see restore.rs).
fn run(mut cmd: std::process::Command) -> std::process::Output {
    tokio::task::block_in_place(move || cmd.output().unwrap())
}

/// `data-export token ARGS`: (exit code, stdout, stderr).
fn token_cmd(app: &TestApp, args: &[&str]) -> (i32, String, String) {
    let mut cmd = app.command();
    cmd.arg("token").args(args);
    let out = run(cmd);
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

/// `token create` that must succeed: the token it printed.
fn create(app: &TestApp, args: &[&str]) -> String {
    let (code, out, err) = token_cmd(app, &[&["create"][..], args].concat());
    assert_eq!(code, 0, "token create {args:?}: {err}");
    out.trim().to_string()
}

async fn counts(pool: &PgPool) -> (i64, i64, Option<chrono::DateTime<chrono::Utc>>) {
    sqlx::query_as("select (select count(*) from api_tokens), (select count(*) from audit_log), (select max(revoked_at) from api_tokens)")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn token_row(pool: &PgPool, token: &str) -> (i64, Option<chrono::DateTime<chrono::Utc>>, f64) {
    let prefix = &token[..10];
    sqlx::query_as(
        "select id, last_used_at, extract(epoch from expires_at - now())::float8 / 86400
         from api_tokens where token_prefix = $1",
    )
    .bind(prefix)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_by_the_cli_is_refused_on_its_very_next_request() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let token = create(&app, &["--email", "admin@acme.test", "--name", "nightly"]);
    let client = api(&app, &token);
    assert_eq!(client.get("/orgs/acme/exports").await.status(), 200);
    let (id, used, days_left) = token_row(app.pool(), &token).await;
    assert!(used.is_some(), "the use is recorded");
    assert!((89.99..=90.0).contains(&days_left), "90 days by default: {days_left}");

    // `token list`: one JSON line per token, never the token nor its hash.
    let (code, out, _) = token_cmd(&app, &["list", "--email", "Admin@Acme.test"]);
    assert_eq!(code, 0);
    let (hash,): (String,) =
        sqlx::query_as("select token_hash from api_tokens where id = $1").bind(id).fetch_one(app.pool()).await.unwrap();
    assert!(!out.contains(&token[4..]) && !out.contains(&hash), "no secret listed: {out}");
    let line: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(line["id"], id);
    assert_eq!(line["name"], "nightly");
    assert_eq!(line["org"], Value::Null);
    assert_eq!(line["status"], "active");
    assert!(line["revoked_at"].is_null() && line["last_used_at"].is_string() && line["expires_at"].is_string());
    assert!(line["created_at"].is_string() && line["prefix"].as_str().is_some_and(|p| token.starts_with(p)));

    let (code, out, err) = token_cmd(&app, &["revoke", &id.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("token {id} revoked"));
    let revoked_at = Instant::now();
    let r = client.get("/orgs/acme/exports").await;
    let after = revoked_at.elapsed();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unauthorized");
    let (_, out, _) = token_cmd(&app, &["list", "--email", "admin@acme.test"]);
    let line: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(line["status"], "revoked");
    assert!(line["revoked_at"].is_string());

    // Twice: said, nothing changes; unknown and malformed ids: exit 1, nothing changes.
    let before = counts(app.pool()).await;
    let (code, out, _) = token_cmd(&app, &["revoke", &id.to_string()]);
    assert_eq!(code, 0);
    assert!(out.contains("was already revoked"), "{out}");
    for bad in ["999999", "0", "-3", "abc", "1.5", ""] {
        let (code, _, err) = token_cmd(&app, &["revoke", bad]);
        assert_eq!(code, 1, "revoke {bad:?}");
        assert!(err.contains("no token with id") || err.contains("is not a token id"), "{bad:?}: {err}");
    }
    let (code, _, err) = token_cmd(&app, &["list", "--email", "ghost@example.test"]);
    assert_eq!(code, 1);
    assert!(err.contains("no user with email"), "{err}");
    assert_eq!(counts(app.pool()).await, before, "nothing changed");
    let audits = app.audits("api_token.revoked").await;
    assert_eq!(audits.len(), 1);
    assert_eq!(audits[0].2, format!("api_token:{id}"));
    assert_eq!(audits[0].3["via"], "cli");
    println!(
        "revoked token: 200 before, 401 on the very next request ({} ms after `token revoke` returned)",
        after.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let token = create(&app, &["--email", "admin@acme.test", "--expires-in", "1"]);
    let (id, _, days_left) = token_row(app.pool(), &token).await;
    assert!((0.99..=1.0).contains(&days_left), "--expires-in 1: {days_left}");
    let client = api(&app, &token);
    assert_eq!(client.get("/orgs/acme/exports").await.status(), 200);
    // A day and a second later.
    sqlx::query(
        "update api_tokens set created_at = created_at - interval '1 day 1 second',
                              expires_at = expires_at - interval '1 day 1 second', last_used_at = null where id = $1",
    )
    .bind(id)
    .execute(app.pool())
    .await
    .unwrap();
    let r = client.get("/orgs/acme/exports").await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unauthorized");
    assert_eq!(token_row(app.pool(), &token).await.1, None, "a refused token is not recorded as used");
    let (_, out, _) = token_cmd(&app, &["list", "--email", "admin@acme.test"]);
    assert_eq!(serde_json::from_str::<Value>(out.lines().next().unwrap()).unwrap()["status"], "expired");
    println!("expired token: 200 while live, 401 one second past its expiry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_create_arguments_are_refused_and_write_nothing() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let before = counts(app.pool()).await;
    let cases: &[(&[&str], &str)] = &[
        (&["--expires-in", "0"], "--expires-in"),
        (&["--expires-in", "366"], "--expires-in"),
        (&["--expires-in", "-5"], "--expires-in"),
        (&["--expires-in", "ninety"], "--expires-in"),
        (&["--expires-in", ""], "--expires-in"),
        (&["--org", "Not A Slug"], "not a valid org slug"),
        (&["--org", "no-such-org"], "no organization \"no-such-org\""),
        // admin@acme.test is not a member of globex.
        (&["--org", "globex"], "not an active member of \"globex\""),
        (&["--name", "  "], "--name"),
        (&["--name", "a\u{7}b"], "--name"),
    ];
    for (extra, says) in cases {
        let args = [&["create", "--email", "admin@acme.test"][..], extra].concat();
        let (code, out, err) = token_cmd(&app, &args);
        assert_eq!(code, 1, "{extra:?}: {err}");
        assert!(out.is_empty(), "{extra:?} printed {out}");
        assert!(err.contains(says), "{extra:?}: {err}");
    }
    assert_eq!(counts(app.pool()).await, before, "no token and no audit entry");
    // The bounds themselves are accepted.
    for days in ["1", "365"] {
        create(&app, &["--email", "admin@acme.test", "--expires-in", days]);
    }
    println!("token create: {} bad argument sets refused with exit 1, nothing written", cases.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_token_works_on_its_org_only() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    // admin@acme.test is made an admin of globex too, so that only the scope refuses.
    sqlx::query(
        "insert into memberships (org_id, user_id, role, member_no)
         select o.id, u.id, 'admin', 'T-1' from organizations o, users u where o.slug = 'globex' and u.email = 'admin@acme.test'",
    )
    .execute(app.pool())
    .await
    .unwrap();
    let unscoped = api(&app, &app.token("admin@acme.test").await);
    assert_eq!(unscoped.get("/orgs/acme/exports").await.status(), 200);
    assert_eq!(unscoped.get("/orgs/globex/exports").await.status(), 200);
    assert_eq!(unscoped.get("/orgs/no-such-org/exports").await.status(), 404);

    let token = create(&app, &["--email", "admin@acme.test", "--org", "acme"]);
    let scoped = api(&app, &token);
    assert_eq!(scoped.get("/orgs/acme/exports").await.status(), 200);
    let used = token_row(app.pool(), &token).await.1.unwrap();
    // Another org, one that does not exist: the same refusal, naming the scope only.
    let mut bodies = Vec::new();
    for p in ["/orgs/globex/exports", "/orgs/no-such-org/exports", "/orgs/globex/exports/01J00000000000000000000000"] {
        let r = scoped.get(p).await;
        assert_eq!(r.status(), 403, "{p}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "forbidden");
        assert!(body["message"].as_str().unwrap().contains("\"acme\""), "{body}");
        bodies.push(body);
    }
    assert_eq!(bodies[0], bodies[1], "an unknown org reads as another org");
    let r = scoped.post("/orgs/globex/exports").await;
    assert_eq!(r.status(), 403);
    let (runs,): (i64,) = sqlx::query_as("select count(*) from export_runs").fetch_one(app.pool()).await.unwrap();
    assert_eq!(runs, 0, "a refused trigger started nothing");
    assert_eq!(token_row(app.pool(), &token).await.1.unwrap(), used, "refused requests are not recorded as uses");

    // The platform's routes refuse a scoped token, even a platform admin's.
    sqlx::query(
        "insert into memberships (org_id, user_id, role, member_no)
         select o.id, u.id, 'member', 'T-2' from organizations o, users u where o.slug = 'acme' and u.email = 'platform@example.test'",
    )
    .execute(app.pool())
    .await
    .unwrap();
    let platform_unscoped = api(&app, &app.token("platform@example.test").await);
    assert_eq!(platform_unscoped.get("/platform/imports/01J00000000000000000000000").await.status(), 404);
    let platform_scoped = api(&app, &create(&app, &["--email", "platform@example.test", "--org", "acme"]));
    let r = platform_scoped.get("/platform/imports/01J00000000000000000000000").await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "forbidden");
    assert_eq!(platform_scoped.post("/platform/imports").await.status(), 403);

    // Authorisation is still by membership at the time of use.
    sqlx::query("update memberships set status = 'lapsed' where user_id = (select id from users where email = 'admin@acme.test')")
        .execute(app.pool())
        .await
        .unwrap();
    assert_eq!(scoped.get("/orgs/acme/exports").await.status(), 404, "no longer a member");
    let (_, out, _) = token_cmd(&app, &["list", "--email", "admin@acme.test"]);
    assert!(out.lines().any(|l| serde_json::from_str::<Value>(l).unwrap()["org"] == "acme"), "{out}");
    println!("scoped token: 200 on its org; 403 on another org, an unknown org and the platform's routes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokens_page_creates_lists_and_revokes_only_ones_own_tokens() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let admin = app.login("admin@acme.test").await;
    let page = admin.get(ME_TOKENS).await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["cache-control"], "no-store");
    let html = page.text().await.unwrap();
    assert!(html.contains(&format!("href=\"{ME_TOKENS}\"")), "the menu links the page");
    assert!(html.contains("No tokens yet."));

    // Bad input: 400, the reason, nothing written.
    let before = counts(app.pool()).await;
    let bad: &[(&[(&str, &str)], &str)] = &[
        (&[("name", "x"), ("org", ""), ("expires_in_days", "0")], "from 1 to 365"),
        (&[("name", "x"), ("org", ""), ("expires_in_days", "abc")], "from 1 to 365"),
        (&[("name", ""), ("org", ""), ("expires_in_days", "30")], "The name must be"),
        (&[("name", "x"), ("org", "globex"), ("expires_in_days", "30")], "only to an organization you belong to"),
        (&[("name", "x"), ("org", "no-such-org"), ("expires_in_days", "30")], "only to an organization you belong to"),
        (&[("name", "x"), ("scope", "all")], "Unexpected form field"),
    ];
    for (fields, says) in bad {
        let r = admin.post_form(ME_TOKENS, fields).await;
        assert_eq!(r.status(), 400, "{fields:?}");
        let body = r.text().await.unwrap();
        assert!(body.contains(says), "{fields:?}: {says}");
        assert!(!body.contains("dex_"), "no token shown");
    }
    assert_eq!(counts(app.pool()).await, before, "refused forms wrote nothing");

    // Created: shown once, scoped and dated as asked, and it works.
    let r = admin.post_form(ME_TOKENS, &[("name", "deploy bot"), ("org", "acme"), ("expires_in_days", "30")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body = r.text().await.unwrap();
    let at = body.find("dex_").expect("the new token is shown");
    let token: String =
        body[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect();
    let (id, _, days_left) = token_row(app.pool(), &token).await;
    assert!((29.99..=30.0).contains(&days_left), "{days_left}");
    let client = api(&app, &token);
    assert_eq!(client.get("/orgs/acme/exports").await.status(), 200);
    assert_eq!(client.get("/orgs/globex/exports").await.status(), 403, "scoped to acme");
    let html = admin.get(ME_TOKENS).await.text().await.unwrap();
    assert!(!html.contains(&token), "shown only once");
    let row = html.split(&format!("data-token-id=\"{id}\"")).nth(1).unwrap().split("</tr>").next().unwrap();
    for want in ["deploy bot", &token[..10], "acme", "active", "Revoke"] {
        assert!(row.contains(want), "the row shows {want}: {row}");
    }
    assert!(!row.contains("never"), "last used is shown");

    // Another person's token id: 404, and it still works.
    let revoke = path(ME_TOKEN_REVOKE, "", Some(&id.to_string()));
    let other = app.login("admin@globex.test").await;
    assert_eq!(other.post_form(&revoke, &[]).await.status(), 404);
    assert!(!other.get(ME_TOKENS).await.text().await.unwrap().contains("deploy bot"), "not in another's list");
    for bad in ["999999", "abc", "0"] {
        assert_eq!(admin.post_form(&path(ME_TOKEN_REVOKE, "", Some(bad)), &[]).await.status(), 404, "{bad}");
    }
    // Without the CSRF token: refused.
    assert_eq!(admin.post_raw(&revoke, &[]).await.status(), 403);
    assert_eq!(client.get("/orgs/acme/exports").await.status(), 200);

    // The owner revokes it: 401 at once; twice says so.
    let r = admin.post_form(&revoke, &[]).await;
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (303, "/me/tokens?done=revoked"));
    assert_eq!(client.get("/orgs/acme/exports").await.status(), 401);
    let html = admin.get("/me/tokens?done=revoked").await.text().await.unwrap();
    assert!(html.contains("Token revoked"));
    let row = html.split(&format!("data-token-id=\"{id}\"")).nth(1).unwrap().split("</tr>").next().unwrap();
    assert!(row.contains("revoked") && !row.contains("Revoke</button>"), "{row}");
    let r = admin.post_form(&revoke, &[]).await;
    assert_eq!(r.headers()["location"].to_str().unwrap(), "/me/tokens?done=already");

    let created = app.audits("api_token.created").await;
    let created = created.last().unwrap();
    assert_eq!(
        (created.2.as_str(), &created.3["via"], &created.3["org"]),
        (format!("api_token:{id}").as_str(), &Value::from("ui"), &Value::from("acme"))
    );
    let revoked = app.audits("api_token.revoked").await;
    assert_eq!(revoked.len(), 1, "one revocation recorded");
    let admin_id: (i64,) =
        sqlx::query_as("select id from users where email = 'admin@acme.test'").fetch_one(app.pool()).await.unwrap();
    assert_eq!(revoked[0].1, Some(admin_id.0));
    println!(
        "tokens page: {} bad forms refused, a token created (shown once), another user's revoke 404, the owner's revoke 401 at once",
        bad.len()
    );
}

/// The migration gives tokens made before it 90 days from its run: a year-old
/// token keeps working for 90 days instead of dying at the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_made_before_the_expiry_migration_get_90_days_from_it() {
    const LIFECYCLE: i64 = 20261203000003;
    let server = server_url();
    let admin = data_export::db::connect(data_export::db::parse_url(&server).unwrap(), 2).await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let name = format!("dxtest_{now}_{}", ulid::Ulid::generate().to_string().to_lowercase());
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}"))).execute(&admin).await.unwrap();
    let pool = data_export::db::connect(data_export::db::parse_url(&server).unwrap().database(&name), 2).await.unwrap();
    let migrations: Vec<_> = data_export::db::MIGRATOR.iter().collect();
    assert!(migrations.iter().any(|m| m.version == LIFECYCLE));
    for m in migrations.iter().filter(|m| m.version < LIFECYCLE) {
        sqlx::raw_sql(m.sql.clone()).execute(&pool).await.unwrap();
    }
    // Two tokens of the old schema: one a year old, one revoked.
    sqlx::raw_sql(
        "insert into users (email, display_name, password_hash) values ('old@example.test', 'Old', 'x');
         insert into api_tokens (user_id, name, token_prefix, token_hash, created_at, revoked_at)
         select id, n, 'dex_aaaaaa', n, now() - interval '365 days', r from users,
                (values ('old', null::timestamptz), ('gone', now())) v(n, r)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let ours = migrations.iter().find(|m| m.version == LIFECYCLE).unwrap();
    sqlx::raw_sql(ours.sql.clone()).execute(&pool).await.unwrap();
    let rows: Vec<(String, f64, bool)> = sqlx::query_as(
        "select name, extract(epoch from expires_at - now())::float8 / 86400, revoked_at is not null
         from api_tokens order by name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    for (n, days, _) in &rows {
        assert!((89.99..=90.0).contains(days), "{n}: {days} days left");
    }
    assert!(rows.iter().any(|(n, _, revoked)| n == "gone" && *revoked), "revoked stays revoked");
    let null: Result<_, _> = sqlx::query("update api_tokens set expires_at = null").execute(&pool).await;
    assert!(null.is_err(), "every token has an expiry");
    pool.close().await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("drop database {name}"))).execute(&admin).await;
    println!("migration: a 365-day-old token gets {:.2} days from the upgrade", rows[1].1);
}
