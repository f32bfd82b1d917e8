//! The access matrix: every route of the router (read from the same tables the
//! router is built from) tried as anonymous, a member, an admin of the other org,
//! an org admin and a platform admin, with each answer asserted. A route added
//! without an entry here fails the test.

use std::time::Duration;

use data_export::{router, routes::*};
use reqwest::Method;

use crate::helpers::{PASSWORD, TestApp, api};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Role {
    Anonymous,
    Member,
    OtherAdmin,
    Admin,
    Platform,
}

const ROLES: [Role; 5] = [Role::Anonymous, Role::Member, Role::OtherAdmin, Role::Admin, Role::Platform];

impl Role {
    fn email(self) -> Option<&'static str> {
        match self {
            Role::Anonymous => None,
            Role::Member => Some("member@acme.test"),
            Role::OtherAdmin => Some("admin@globex.test"),
            Role::Admin => Some("admin@acme.test"),
            Role::Platform => Some("platform@example.test"),
        }
    }
}

/// The expected status of `method pattern` for `role`, on org acme with acme's
/// export id (and member@acme.test's privacy request id). Panics for a route
/// with no entry.
fn expected(kind: Kind, method: &str, pattern: &str, role: Role) -> u16 {
    use Role::*;
    let signed_in = role != Anonymous;
    let to_login = 303;
    match kind {
        // Without METRICS_TOKEN, /metrics does not exist (its test sets one).
        Kind::Ops if pattern == METRICS => 404,
        Kind::Ops => 200,
        Kind::Board => {
            if role == Platform {
                200
            } else {
                403
            }
        }
        // The API's description is public.
        Kind::Api if pattern == API_OPENAPI => 200,
        // Restore's API is the platform admin's: every other token gets 403.
        Kind::Api if pattern.starts_with("/platform/") => match role {
            Anonymous => 401,
            Member | OtherAdmin | Admin => 403,
            Platform => match (method, pattern) {
                // No body: refused before anything is written.
                ("POST", API_IMPORTS) => 400,
                // The id is acme's export's, which no check has.
                ("POST", API_IMPORT_CONFIRM) => 404,
                // The id is acme's export's, which no import has.
                ("GET", API_IMPORT) => 404,
                ("GET", API_PLATFORM_ORGS) => 200,
                // acme is not closed: it has no receipt.
                ("GET", API_PLATFORM_ORG_RECEIPT) => 404,
                _ => panic!("no access expectation for API {method} {pattern}: add one to tests/api/access.rs"),
            },
        },
        Kind::Api => match role {
            Anonymous => 401,
            // Not a member of acme: the org is as unknown as one that does not exist.
            OtherAdmin | Platform => 404,
            Member => 403,
            Admin => match (method, pattern) {
                ("GET", API_EXPORTS) | ("GET", API_EXPORT) | ("POST", API_EXPORT_VERIFY) => 200,
                ("POST", API_EXPORTS) => 202,
                // The export has finished: nothing to cancel.
                ("POST", API_EXPORT_CANCEL) => 409,
                ("GET", API_EXPORT_DOWNLOAD) => 303,
                ("DELETE", API_EXPORT) => 204,
                // Tables: no body (no format); none asked for yet, so no status and no zip.
                ("POST", API_EXPORT_TABLES) => 400,
                ("GET", API_EXPORT_TABLE) => 404,
                ("GET", API_EXPORT_TABLE_DOWNLOAD) => 409,
                // The webhook routes' id is acme's first endpoint's.
                ("GET", API_WEBHOOKS) | ("GET", API_WEBHOOK_ATTEMPTS) | ("POST", API_WEBHOOK_ROTATE) => 200,
                ("POST", API_WEBHOOK_TEST) => 202,
                ("DELETE", API_WEBHOOK) => 204,
                // No body.
                ("POST", API_WEBHOOKS) => 400,
                // No body (no confirmation): nothing changes.
                ("POST", API_ORG_CLOSE) => 400,
                // acme is not closing.
                ("POST", API_ORG_REOPEN) => 409,
                _ => panic!("no access expectation for API {method} {pattern}: add one to tests/api/access.rs"),
            },
        },
        Kind::Html => match (method, pattern) {
            ("GET", HOME) => {
                if signed_in {
                    200
                } else {
                    to_login
                }
            }
            // Signed-in users are sent home; anonymous ones get the form.
            ("GET", LOGIN) => {
                if signed_in {
                    303
                } else {
                    200
                }
            }
            // Wrong credentials for everyone (the body below).
            ("POST", LOGIN) => 401,
            ("POST", LOGOUT) => 303,
            (
                "GET" | "POST",
                ORG_MODULES
                | ORG_BACKUPS
                | ORG_EXPORTS
                | ORG_EXPORT_HISTORY
                | ORG_EXPORT_ROW
                | ORG_EXPORT_DOWNLOAD
                | ORG_EXPORT_DELETE
                | ORG_EXPORT_VERIFY
                | ORG_EXPORT_CANCEL
                | ORG_EXPORT_TABLES
                | ORG_EXPORT_TABLES_DOWNLOAD,
            ) => match role {
                Anonymous => to_login,
                Member => 403,
                OtherAdmin | Platform => 404,
                // Tried before the tables are asked for (the route table lists it first).
                Admin if pattern == ORG_EXPORT_TABLES_DOWNLOAD => 409,
                // The modules form gets a field it does not know: refused after the role check.
                Admin if pattern == ORG_MODULES && method == "POST" => 400,
                Admin if method == "GET" && pattern != ORG_EXPORT_DOWNLOAD => 200,
                Admin => 303,
            },
            ("GET" | "POST", ORG_CLOSE | ORG_REOPEN) => match role {
                Anonymous => to_login,
                Member => 403,
                OtherAdmin | Platform => 404,
                Admin if method == "GET" => 200,
                // No slug typed: refused, nothing changes.
                Admin if pattern == ORG_CLOSE => 400,
                // acme is not closing.
                Admin => 409,
            },
            ("GET" | "POST", PLATFORM_ORG_CLOSE | PLATFORM_ORG_REOPEN) => match role {
                Anonymous => to_login,
                Member | OtherAdmin | Admin => 403,
                Platform if method == "GET" => 200,
                // No slug typed.
                Platform if pattern == PLATFORM_ORG_CLOSE => 400,
                // acme is not closing.
                Platform => 409,
            },
            // The ids are acme's second endpoint's (the API deletes the first).
            ("GET" | "POST", ORG_NOTIFICATIONS | ORG_WEBHOOK_TEST | ORG_WEBHOOK_ROTATE | ORG_WEBHOOK_DELETE) => {
                match role {
                    Anonymous => to_login,
                    Member => 403,
                    OtherAdmin | Platform => 404,
                    // No URL.
                    Admin if method == "POST" && pattern == ORG_NOTIFICATIONS => 400,
                    // The page, with the new secret.
                    Admin if method == "GET" || pattern == ORG_WEBHOOK_ROTATE => 200,
                    Admin => 303,
                }
            }
            (
                "GET" | "POST",
                PLATFORM_SETTINGS
                | PLATFORM_BACKUP
                | PLATFORM_VERIFY
                | PLATFORM_RETENTION
                | PLATFORM_SCHEDULE
                | PLATFORM_BOARD
                | PLATFORM_PRIVACY
                | PLATFORM_PRIVACY_RETENTION
                | PLATFORM_PRIVACY_DOWNLOAD
                | PLATFORM_ORGS,
            ) => match role {
                Anonymous => to_login,
                Member | OtherAdmin | Admin => 403,
                // Forms get a field they do not know: refused after the role check.
                Platform if method == "POST" && pattern != PLATFORM_VERIFY => 400,
                Platform if pattern == PLATFORM_SETTINGS || pattern == PLATFORM_PRIVACY || pattern == PLATFORM_ORGS => {
                    200
                }
                Platform => 303,
            },
            (
                "GET" | "POST",
                PLATFORM_IMPORTS | PLATFORM_IMPORT_UPLOAD | PLATFORM_IMPORT_ROW | PLATFORM_IMPORT_CONFIRM,
            ) => match role {
                Anonymous => to_login,
                Member | OtherAdmin | Admin => 403,
                Platform if method == "GET" && pattern == PLATFORM_IMPORTS => 200,
                // The id is acme's export's, which no import has.
                Platform if pattern == PLATFORM_IMPORT_ROW || pattern == PLATFORM_IMPORT_CONFIRM => 404,
                // No slug, name or source (and no multipart body for the upload).
                Platform => 400,
            },
            ("GET" | "POST", ME_PRIVACY | ME_PRIVACY_HISTORY) => match role {
                Anonymous => to_login,
                // The member already made their one self-service request of the day.
                Member if method == "POST" => 429,
                _ if method == "POST" => 303,
                _ => 200,
            },
            ("GET" | "POST", ME_NOTIFICATIONS) => match role {
                Anonymous => to_login,
                // No box ticked: every kind that can be is switched off, then back to the page.
                _ if method == "POST" => 303,
                _ => 200,
            },
            ("GET", ME_TOKENS) => match role {
                Anonymous => to_login,
                _ => 200,
            },
            // No name: refused after the sign-in check.
            ("POST", ME_TOKENS) => match role {
                Anonymous => to_login,
                _ => 400,
            },
            // The id is one of member@acme.test's tokens: revoked by its owner, no
            // token of anyone else's.
            ("POST", ME_TOKEN_REVOKE) => match role {
                Anonymous => to_login,
                Member => 303,
                _ => 404,
            },
            // The id is member@acme.test's request: anyone else's id space does not hold it.
            ("GET", ME_PRIVACY_DOWNLOAD) => match role {
                Anonymous => to_login,
                Member => 303,
                _ => 404,
            },
            _ => panic!("no access expectation for {method} {pattern}: add one to tests/api/access.rs"),
        },
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Html,
    Api,
    Ops,
    Board,
}

/// The job board's routes tried (its own listener; its router comes from apalis-board-api).
const BOARD_ROUTES: &[(&str, &str)] =
    &[("GET", "/"), ("GET", "/api/v1/queues"), ("GET", "/api/v1/overview"), ("GET", BOARD_EVENTS)];

/// Requests that change something run last, in this order, so the others see the
/// export and the session still there.
fn order(method: &str, pattern: &str) -> u8 {
    match (method, pattern) {
        ("DELETE", _) => 1,
        (_, ORG_EXPORT_DELETE | ORG_WEBHOOK_DELETE) => 2,
        (_, LOGOUT) => 3,
        _ => 0,
    }
}

fn fill(pattern: &str, export_id: &str, privacy_id: &str, token_id: &str, webhook_ids: &[String; 2]) -> String {
    let id = if pattern.contains("/webhooks/") {
        &webhook_ids[0]
    } else if pattern.contains("/notifications/") {
        &webhook_ids[1]
    } else if pattern.contains("privacy") {
        privacy_id
    } else if pattern.contains("tokens") {
        token_id
    } else {
        export_id
    };
    with_format(&path(pattern, "acme", Some(id)), "csv")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_answers_each_role_as_expected() {
    let app = TestApp::spawn().await;
    // A completed export of each org, and a completed privacy request of the member.
    let acme_admin = api(&app, &app.token("admin@acme.test").await);
    let globex_admin = api(&app, &app.token("admin@globex.test").await);
    let mut ids = Vec::new();
    for client in [&acme_admin, &globex_admin] {
        let slug = if std::ptr::eq(client, &acme_admin) { "acme" } else { "globex" };
        let resp = client.post(&format!("/orgs/{slug}/exports")).await;
        assert_eq!(resp.status(), 202);
        let id = resp.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string();
        assert_eq!(app.wait_for_run(&id, Duration::from_secs(60)).await.status, "completed");
        ids.push(id);
    }
    let (acme_export, globex_export) = (ids[0].clone(), ids[1].clone());
    let member = app.login("member@acme.test").await;
    assert_eq!(member.post_form(ME_PRIVACY, &[]).await.status(), 303);
    let privacy_id: String = loop {
        let row: Option<(String, String)> =
            sqlx::query_as("select id, status from privacy_requests where status not in ('pending', 'running')")
                .fetch_optional(app.pool())
                .await
                .unwrap();
        if let Some((id, status)) = row {
            assert_eq!(status, "completed");
            break id;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // One of the member's API tokens, for the revoke route.
    let token_id = data_export::auth::tokens::create(app.pool(), "member@acme.test", "matrix")
        .await
        .unwrap()
        .unwrap()
        .id
        .to_string();
    // Two endpoints of acme's: the API's routes use the first, the pages the second.
    let mut webhook_ids = [String::new(), String::new()];
    for id in &mut webhook_ids {
        let r = acme_admin
            .post_json("/orgs/acme/webhooks", &serde_json::json!({ "url": "https://hooks.example.com/in" }))
            .await;
        assert_eq!(r.status(), 201);
        *id = r.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    }

    let mut routes: Vec<(Kind, &str, String)> = Vec::new();
    for (m, p) in router::OPS_ROUTES {
        routes.push((Kind::Ops, m, p.to_string()));
    }
    // The API first: its trigger must not meet the one the HTML form starts.
    for (m, p) in router::API_ROUTES {
        routes.push((Kind::Api, m, p.to_string()));
    }
    for (m, p) in router::HTML_ROUTES {
        routes.push((Kind::Html, m, p.to_string()));
    }
    for (m, p) in BOARD_ROUTES {
        routes.push((Kind::Board, m, p.to_string()));
    }
    routes.sort_by_key(|(_, m, p)| order(m, p));

    let mut tried = 0;
    let mut failures = Vec::new();
    for role in ROLES {
        let session = match role.email() {
            Some(email) => app.login(email).await,
            None => app.anonymous().await,
        };
        let token = match role.email() {
            Some(email) => app.token(email).await,
            None => String::new(),
        };
        let nobody = format!("nobody-{role:?}@example.test");
        for (kind, method, pattern) in &routes {
            let want = expected(*kind, method, pattern, role);
            let url = match kind {
                Kind::Board => app.board_url(pattern),
                Kind::Api => app
                    .url(&format!("{API_PREFIX}{}", fill(pattern, &acme_export, &privacy_id, &token_id, &webhook_ids))),
                _ => app.url(&fill(pattern, &acme_export, &privacy_id, &token_id, &webhook_ids)),
            };
            let mut req = session.client.request(Method::from_bytes(method.as_bytes()).unwrap(), &url);
            if *kind == Kind::Api && !token.is_empty() {
                req = req.bearer_auth(&token);
            }
            if *method == "POST" && *kind == Kind::Html {
                let mut form = vec![("csrf_token", session.csrf.as_str())];
                match pattern.as_str() {
                    LOGIN => form.extend([("email", nobody.as_str()), ("password", "wrong-password")]),
                    ORG_MODULES
                    | PLATFORM_BACKUP
                    | PLATFORM_RETENTION
                    | PLATFORM_SCHEDULE
                    | PLATFORM_PRIVACY
                    | PLATFORM_PRIVACY_RETENTION => form.push(("bogus", "1")),
                    _ => {}
                }
                req = req.form(&form);
            }
            let got = req.send().await.unwrap();
            let status = got.status().as_u16();
            tried += 1;
            if status != want {
                failures.push(format!("{role:?} {method} {pattern}: {status}, expected {want}"));
            }
            if status >= 500 {
                failures.push(format!("{role:?} {method} {pattern}: a server error"));
            }
            if *kind != Kind::Board {
                let h = got.headers();
                let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                if !header("content-security-policy").contains("frame-ancestors 'none'")
                    || header("x-content-type-options") != "nosniff"
                    || header("referrer-policy") != "no-referrer"
                {
                    failures.push(format!("{role:?} {method} {pattern}: security headers missing"));
                }
            }
            if *kind != Kind::Board && want == 303 && !signed_in_redirect_is_safe(&got, &app) {
                failures.push(format!("{role:?} {method} {pattern}: redirect to an unexpected place"));
            }
        }
        // Let a trigger from this role finish before the next role's requests.
        wait_idle(&app).await;
    }
    assert!(
        failures.is_empty(),
        "{} of {tried} requests answered unexpectedly:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!("access matrix: {tried} requests over {} routes and {} roles", routes.len(), ROLES.len());

    // Another org's ids answer 404, in the UI and the API, even to an admin of the
    // org in the path.
    let admin = app.login("admin@acme.test").await;
    let token = app.token("admin@acme.test").await;
    let api_admin = api(&app, &token);
    for (method, pattern) in router::HTML_ROUTES.iter().chain(router::API_ROUTES).filter(|(_, p)| p.contains("{id}")) {
        // Not org-scoped: a platform admin's (restore's row and API answer 403 here).
        if pattern.contains("privacy") || pattern.starts_with("/platform/") {
            continue;
        }
        let p = with_format(&path(pattern, "acme", Some(&globex_export)), "csv");
        let status = if router::API_ROUTES.contains(&(*method, *pattern)) {
            api_admin.send(Method::from_bytes(method.as_bytes()).unwrap(), &p).await.status()
        } else if *method == "POST" {
            admin.post_form(&p, &[]).await.status()
        } else {
            admin.get(&p).await.status()
        };
        assert_eq!(status, 404, "{method} {p} with globex's export id");
    }
    // Every POST of the UI, by the role allowed to make it, is refused without the
    // CSRF token or with a wrong one, before it does anything.
    let platform = app.login("platform@example.test").await;
    let counts = "select (select count(*) from audit_log), (select count(*) from export_runs),
                         (select count(*) from org_imports),
                         (select count(*) from api_tokens where revoked_at is null)";
    let before: (i64, i64, i64, i64) = sqlx::query_as(counts).fetch_one(app.pool()).await.unwrap();
    let mut posts = 0;
    for (method, pattern) in router::HTML_ROUTES.iter().filter(|(m, _)| *m == "POST") {
        let who = if pattern.starts_with("/platform") { &platform } else { &admin };
        let url = format!("{}{}", who.base, fill(pattern, &acme_export, &privacy_id, &token_id, &webhook_ids));
        for token in [None, Some("forged-token")] {
            let mut form = vec![("email", "admin@acme.test"), ("password", PASSWORD)];
            if let Some(t) = token {
                form.push(("csrf_token", t));
            }
            let status = who.client.post(&url).form(&form).send().await.unwrap().status();
            assert_eq!(status, 403, "{method} {pattern} with CSRF token {token:?}");
            posts += 1;
        }
    }
    let after: (i64, i64, i64, i64) = sqlx::query_as(counts).fetch_one(app.pool()).await.unwrap();
    assert_eq!(before, after, "refused POSTs wrote nothing");
    println!("CSRF: {posts} POSTs without a valid token refused");

    // And globex's export is untouched by all of that.
    let run = data_export::exports::runs::get_any(app.pool(), &globex_export).await.unwrap().unwrap();
    assert_eq!(run.status, "completed");
    assert!(run.verified_at.is_none());
}

/// A 303 goes to the sign-in page, within the app, or to the storage endpoint
/// (a presigned URL); never elsewhere.
fn signed_in_redirect_is_safe(resp: &reqwest::Response, app: &TestApp) -> bool {
    let Some(to) = resp.headers().get("location").and_then(|v| v.to_str().ok()) else { return false };
    to.starts_with('/') || to.starts_with(&format!("http://{}", app.s3_addr)) || to.starts_with("http://127.0.0.1:")
}

async fn wait_idle(app: &TestApp) {
    for _ in 0..600 {
        let (n,): (i64,) = sqlx::query_as("select count(*) from export_runs where status in ('pending', 'running')")
            .fetch_one(app.pool())
            .await
            .unwrap();
        if n == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("exports still active after a minute");
}
