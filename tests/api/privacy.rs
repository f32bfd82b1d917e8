//! Data-subject (GDPR / CCPA) exports: the member's own request and download, the
//! 24-hour limit, requests on someone's behalf, what the file holds, expiry.

use std::time::Duration;

use serde_json::Value;

use crate::{exports::decode, helpers::*};

const WAIT: Duration = Duration::from_secs(60);

async fn user_id(app: &TestApp, email: &str) -> i64 {
    sqlx::query_as::<_, (i64,)>("select id from users where email = $1")
        .bind(email)
        .fetch_one(app.pool())
        .await
        .unwrap()
        .0
}

/// Waits for the person's newest request to finish; returns (id, status).
async fn wait_for_request(app: &TestApp, user: i64) -> (String, String) {
    let started = std::time::Instant::now();
    loop {
        let (id, status): (String, String) = sqlx::query_as(
            "select id, status from privacy_requests where user_id = $1 order by created_at desc limit 1",
        )
        .bind(user)
        .fetch_one(app.pool())
        .await
        .unwrap();
        if !matches!(status.as_str(), "pending" | "running") {
            return (id, status);
        }
        assert!(started.elapsed() < WAIT, "request {id} still {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Validates against docs/subject-access.schema.json.
fn assert_valid(file: &Value) {
    let schema: Value = serde_json::from_str(include_str!("../../docs/subject-access.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> =
        validator.iter_errors(file).take(5).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "schema errors: {errors:?}");
}

/// Gives `member@acme.test` rows in a second org (globex) and a third person rows
/// next to theirs; returns (member id, third person's id).
async fn two_orgs_and_a_third_person(app: &TestApp) -> (i64, i64) {
    let member = user_id(app, "member@acme.test").await;
    let acme = app.org_id("acme").await;
    let globex = app.org_id("globex").await;
    let (third,): (i64,) = sqlx::query_as(
        "insert into users (email, display_name, password_hash) values ('third@other.test', 'Thea Third', '!') returning id",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    for (org, user, no) in [(globex, member, "G-MAX"), (acme, third, "A-THIRD"), (globex, third, "G-THIRD")] {
        sqlx::query("insert into memberships (org_id, user_id, member_no) values ($1, $2, $3)")
            .bind(org)
            .bind(user)
            .bind(no)
            .execute(app.pool())
            .await
            .unwrap();
    }
    for (org, user, title) in
        [(acme, member, "Max in acme"), (globex, member, "Max in globex"), (acme, third, "THIRD-PERSON-SECRET-TITLE")]
    {
        sqlx::query("insert into forum_posts (org_id, author_user_id, title, body) values ($1, $2, $3, 'body')")
            .bind(org)
            .bind(user)
            .bind(title)
            .execute(app.pool())
            .await
            .unwrap();
    }
    // An invoice with a line and a payment on the member's acme membership.
    sqlx::query(
        "with i as (insert into invoices (org_id, membership_id, number, issued_on, due_on, total_cents, status)
                    select $1, m.id, 'INV-MAX-1', current_date, current_date + 30, 1200, 'paid'
                    from memberships m where m.org_id = $1 and m.user_id = $2 returning id),
              l as (insert into invoice_lines (org_id, invoice_id, description, quantity, unit_cents)
                    select $1, i.id, 'Dues', 1, 1200 from i returning id)
         insert into payments (org_id, invoice_id, amount_cents, method, reference, paid_at)
         select $1, i.id, 1200, 'card', 'PAY-MAX-1', now() from i",
    )
    .bind(acme)
    .bind(member)
    .execute(app.pool())
    .await
    .unwrap();
    sqlx::query(
        "insert into donations (org_id, fund_id, donor_user_id, amount_cents, donated_at)
         select $1, f.id, $2, 4200, now() from foundation_funds f where f.org_id = $1 limit 1",
    )
    .bind(globex)
    .bind(member)
    .execute(app.pool())
    .await
    .unwrap();
    (member, third)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_requests_and_downloads_their_own_data() {
    let app = TestApp::spawn().await;
    let (member, third) = two_orgs_and_a_third_person(&app).await;
    let s = app.login("member@acme.test").await;
    let page = s.get("/me/privacy").await;
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Request my data"));

    let resp = s.post_form("/me/privacy", &[]).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/me/privacy?done=requested");
    // The history polls while the request is active.
    let frag = s.htmx_get("/me/privacy/history").await.text().await.unwrap();
    assert!(frag.contains("data-request-id"));
    let (id, status) = wait_for_request(&app, member).await;
    assert_eq!(status, "completed");
    let frag = s.htmx_get("/me/privacy/history").await.text().await.unwrap();
    assert!(frag.contains(r#"data-status="completed""#) && !frag.contains("every 2s"), "stops polling: {frag}");
    assert!(frag.contains(&format!("/me/privacy/{id}/download")));

    // Download: 303 to a presigned URL valid 900 s, audit-logged.
    let resp = s.get(&format!("/me/privacy/{id}/download")).await;
    assert_eq!(resp.status(), 303);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(location.contains("X-Amz-Expires=900"), "{location}");
    assert!(location.contains(&format!("/data-export-privacy/privacy/{member}/{id}.json.gz")), "{location}");
    let downloads = app.audits("privacy.downloaded").await;
    assert_eq!(downloads.len(), 1);
    assert_eq!(downloads[0].1, Some(member));
    let gz = app.client().get(&location).send().await.unwrap().bytes().await.unwrap();
    let file = decode(&gz);
    assert_valid(&file);
    assert_eq!(file["format"], "data-export/subject-access");
    assert_eq!(file["version"], 1);
    assert_eq!(file["request_id"], id.as_str());
    assert_eq!(file["subject"]["id"], member);
    assert_eq!(file["subject"]["email"], "member@acme.test");
    assert!(file["subject"].get("password_hash").is_none(), "no secrets");

    // Rows from both orgs, each one the member's own.
    let orgs: Vec<&str> =
        file["organizations"].as_array().unwrap().iter().map(|o| o["slug"].as_str().unwrap()).collect();
    assert_eq!(orgs, vec!["acme", "globex"]);
    let memberships = file["sections"]["memberships"].as_array().unwrap();
    assert_eq!(memberships.len(), 2);
    let posts = file["sections"]["forum_posts"].as_array().unwrap();
    let titles: Vec<&str> = posts.iter().map(|p| p["title"].as_str().unwrap()).collect();
    assert!(titles.contains(&"Max in acme") && titles.contains(&"Max in globex"), "{titles:?}");
    assert_eq!(file["sections"]["donations"].as_array().unwrap().len(), 1);
    let user_columns = [
        "user_id",
        "author_user_id",
        "posted_by",
        "uploaded_by",
        "donor_user_id",
        "voter_user_id",
        "actor_user_id",
        "owner_user_id",
    ];
    for (name, rows) in file["sections"].as_object().unwrap() {
        assert_eq!(file["counts"][name].as_u64().unwrap() as usize, rows.as_array().unwrap().len(), "{name} count");
        for row in rows.as_array().unwrap() {
            for col in user_columns {
                if let Some(v) = row.get(col).filter(|v| !v.is_null()) {
                    assert_eq!(v, &Value::from(member), "{name}.{col} is the member's");
                }
            }
        }
    }
    // Rows hanging off memberships or invoices are the member's own, and there are
    // some (the seeded orgs hold thousands of other people's).
    let (mine,): (Vec<i64>,) = sqlx::query_as("select array_agg(id) from memberships where user_id = $1")
        .bind(member)
        .fetch_one(app.pool())
        .await
        .unwrap();
    let invoice_ids: Vec<Value> =
        file["sections"]["invoices"].as_array().unwrap().iter().map(|i| i["id"].clone()).collect();
    assert_eq!(invoice_ids.len(), 1);
    for name in ["custom_field_values", "member_enrichment", "invoices", "compliance_records"] {
        for row in file["sections"][name].as_array().unwrap() {
            assert!(mine.contains(&row["membership_id"].as_i64().unwrap()), "{name}: {row}");
        }
    }
    for name in ["invoice_lines", "payments"] {
        let rows = file["sections"][name].as_array().unwrap();
        assert_eq!(rows.len(), 1, "{name}");
        assert!(rows.iter().all(|r| invoice_ids.contains(&r["invoice_id"])), "{name}");
    }
    let text = file.to_string();
    assert!(
        !text.contains("THIRD-PERSON-SECRET-TITLE") && !text.contains("third@other.test") && !text.contains("A-THIRD")
    );
    assert!(!text.contains(&format!("\"user_id\":{third}")));
    let request: (Value, i64, String) =
        sqlx::query_as("select counts, size_bytes, sha256 from privacy_requests where id = $1")
            .bind(&id)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(request.0, file["counts"]);
    assert_eq!(request.1 as usize, gz.len());
    use sha2::Digest;
    assert_eq!(request.2, hex::encode(sha2::Sha256::digest(&gz)));

    // Not another person's request: 404, also for a platform admin's own page.
    let other = app.login("admin@acme.test").await;
    assert_eq!(other.get(&format!("/me/privacy/{id}/download")).await.status(), 404);
    assert_eq!(other.get("/me/privacy/01JAAAAAAAAAAAAAAAAAAAAAAA/download").await.status(), 404);
    assert_eq!(other.get("/me/privacy/..%2F..%2Fetc/download").await.status(), 404);
    assert!(!other.htmx_get("/me/privacy/history").await.text().await.unwrap().contains(&id));
    // Members cannot use the platform pages.
    assert_eq!(s.get("/platform/privacy").await.status(), 403);
    assert_eq!(s.get(&format!("/platform/privacy/{id}/download")).await.status(), 403);
    assert_eq!(
        s.post_form("/platform/privacy", &[("email", "admin@acme.test"), ("reason", "ticket 1")]).await.status(),
        403
    );

    // The 24-hour limit: refused with when the next one is possible; nothing created.
    let resp = s.post_form("/me/privacy", &[]).await;
    assert_eq!(resp.status(), 429);
    let body = resp.text().await.unwrap();
    let (created,): (chrono::DateTime<chrono::Utc>,) =
        sqlx::query_as("select created_at from privacy_requests where id = $1")
            .bind(&id)
            .fetch_one(app.pool())
            .await
            .unwrap();
    let next = (created + chrono::Duration::hours(24)).format("%Y-%m-%d %H:%M UTC").to_string();
    assert!(body.contains(&format!("next request is possible after {next}")), "{body}");
    let (n,): (i64,) = sqlx::query_as("select count(*) from privacy_requests where user_id = $1")
        .bind(member)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(n, 1);
    // Bad input changes nothing either.
    assert_eq!(s.post_form("/me/privacy", &[("user_id", "1")]).await.status(), 400);
    assert_eq!(s.post_raw("/me/privacy", &[]).await.status(), 403, "no CSRF token");

    // Expiry: after the retention days the file goes and the request says so.
    let expired =
        data_export::privacy::expire(&app.state, chrono::Utc::now() + chrono::Duration::days(6)).await.unwrap();
    assert_eq!(expired, 0, "kept for 7 days");
    let expired =
        data_export::privacy::expire(&app.state, chrono::Utc::now() + chrono::Duration::days(8)).await.unwrap();
    assert_eq!(expired, 1);
    assert!(app.objects("data-export-privacy").await.is_empty(), "the object is gone");
    let (status,): (String,) = sqlx::query_as("select status from privacy_requests where id = $1")
        .bind(&id)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(status, "expired");
    assert_eq!(app.audits("privacy.expired").await.len(), 1);
    assert_eq!(s.get(&format!("/me/privacy/{id}/download")).await.status(), 404);
    assert_eq!(
        data_export::privacy::expire(&app.state, chrono::Utc::now() + chrono::Duration::days(8)).await.unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_admin_exports_on_a_members_behalf_with_a_reason() {
    let app = TestApp::spawn().await;
    let member = user_id(&app, "member@acme.test").await;
    let admin_id = user_id(&app, "platform@example.test").await;
    let admin = app.login("platform@example.test").await;
    assert_eq!(admin.get("/platform/privacy").await.status(), 200);
    for email in ["admin@acme.test", "member@acme.test"] {
        assert_eq!(app.login(email).await.get("/platform/privacy").await.status(), 403);
    }

    // Bad input: refused with the reason, nothing created.
    for fields in [
        vec![("email", "member@acme.test"), ("reason", "")],
        vec![("email", "member@acme.test"), ("reason", "x")],
        vec![("email", "member@acme.test")],
        vec![("email", "nobody@nowhere.test"), ("reason", "ticket 42")],
        vec![("email", "member@acme.test"), ("reason", "ticket 42"), ("user_id", "1")],
        vec![("email", "member@acme.test"), ("reason", &"r".repeat(501))],
    ] {
        let resp = admin.post_form("/platform/privacy", &fields).await;
        assert_eq!(resp.status(), 400, "{fields:?}");
        assert!(resp.text().await.unwrap().contains("flash-error"));
    }
    for days in ["0", "91", "x", ""] {
        assert_eq!(admin.post_form("/platform/privacy/retention", &[("days", days)]).await.status(), 400, "{days}");
    }
    let (n,): (i64,) = sqlx::query_as("select count(*) from privacy_requests").fetch_one(app.pool()).await.unwrap();
    assert_eq!(n, 0);

    let resp = admin
        .post_form("/platform/privacy", &[("email", "Member@Acme.test"), ("reason", "Ticket #4711 (email)")])
        .await;
    assert_eq!(resp.status(), 303);
    let (id, status) = wait_for_request(&app, member).await;
    assert_eq!(status, "completed");
    let (requested_by, on_behalf, reason): (Option<i64>, bool, Option<String>) =
        sqlx::query_as("select requested_by, on_behalf, reason from privacy_requests where id = $1")
            .bind(&id)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!((requested_by, on_behalf, reason.as_deref()), (Some(admin_id), true, Some("Ticket #4711 (email)")));
    let audits = app.audits("privacy.requested_on_behalf").await;
    assert_eq!(audits.len(), 1);
    assert_eq!(audits[0].1, Some(admin_id));
    assert_eq!(audits[0].3["reason"], "Ticket #4711 (email)");
    assert_eq!(audits[0].3["user_id"], member);

    // The member sees it in their own history, with who and why.
    let s = app.login("member@acme.test").await;
    let frag = s.htmx_get("/me/privacy/history").await.text().await.unwrap();
    assert!(frag.contains(&id) && frag.contains("on your behalf") && frag.contains("Ticket #4711"));
    // A request on their behalf does not use up the member's own daily request.
    assert_eq!(s.post_form("/me/privacy", &[]).await.status(), 303);
    wait_for_request(&app, member).await;
    // The admin can download it (audited with the admin as actor).
    let resp = admin.get(&format!("/platform/privacy/{id}/download")).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(app.audits("privacy.downloaded").await[0].1, Some(admin_id));
    let page = admin.get("/platform/privacy").await.text().await.unwrap();
    assert!(page.contains("Ticket #4711") && page.contains("member@acme.test"));

    // The admin's own export: their on-behalf entries are there without the other
    // person's details.
    let wait = admin.post_form("/me/privacy", &[]).await;
    assert_eq!(wait.status(), 303);
    let (own, status) = wait_for_request(&app, admin_id).await;
    assert_eq!(status, "completed");
    let location =
        admin.get(&format!("/me/privacy/{own}/download")).await.headers()["location"].to_str().unwrap().to_string();
    let gz = app.client().get(&location).send().await.unwrap().bytes().await.unwrap();
    let file = crate::exports::decode(&gz);
    let entries = file["sections"]["audit_log"].as_array().unwrap();
    let behalf =
        entries.iter().find(|e| e["action"] == "privacy.requested_on_behalf").expect("the admin's action is there");
    assert!(behalf["details"].is_null(), "{behalf}");
    assert!(!file.to_string().contains("Ticket #4711"));

    // Retention days: saved and audited.
    let resp = admin.post_form("/platform/privacy/retention", &[("days", "30")]).await;
    assert_eq!(resp.headers()["location"], "/platform/privacy?done=retention");
    let audit = app.audits("privacy.retention_updated").await;
    assert_eq!(audit[0].3, serde_json::json!({ "before": 7, "after": 30 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_active_request_and_failures_leave_no_object() {
    let mut app = TestApp::spawn_with(Options { workers: false, ..Options::default() }).await;
    let member = user_id(&app, "member@acme.test").await;
    let admin_id = user_id(&app, "platform@example.test").await;
    let s = app.login("member@acme.test").await;
    // While the backup configuration is not ready, requests are refused up front.
    sqlx::query("update backup_configuration set active = false").execute(app.pool()).await.unwrap();
    let resp = s.post_form("/me/privacy", &[]).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.text().await.unwrap().contains("paused"));
    sqlx::query("update backup_configuration set active = true").execute(app.pool()).await.unwrap();
    let (n,): (i64,) = sqlx::query_as("select count(*) from privacy_requests").fetch_one(app.pool()).await.unwrap();
    assert_eq!(n, 0);
    // Parallel clicks make one request.
    let (a, b) = tokio::join!(s.post_form("/me/privacy", &[]), s.post_form("/me/privacy", &[]));
    let mut statuses = vec![a.status().as_u16(), b.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses[0], 303);
    assert!(statuses[1] == 409 || statuses[1] == 429, "{statuses:?}");
    // An admin's request while one is pending: refused as a conflict.
    let refused =
        data_export::privacy::requests::create_on_behalf(app.pool(), admin_id, member, "ticket 9", 3).await.unwrap();
    assert!(refused.is_err());
    let (n,): (i64,) = sqlx::query_as("select count(*) from privacy_requests").fetch_one(app.pool()).await.unwrap();
    assert_eq!(n, 1);
    let (jobs,): (i64,) = sqlx::query_as("select count(*) from apalis.jobs where job_type = 'privacy'")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(jobs, 1);

    // Storage down while it runs: failed with a reason, no object, no open upload.
    app.stop_s3().await;
    app.start_workers();
    let (id, status) = wait_for_request(&app, member).await;
    assert_eq!(status, "failed");
    let (error,): (Option<String>,) = sqlx::query_as("select error from privacy_requests where id = $1")
        .bind(&id)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert!(error.is_some());
    app.restart_s3().await;
    assert!(app.objects("data-export-privacy").await.is_empty());
    assert!(app.open_uploads().is_empty(), "{:?}", app.open_uploads());
    // A failed request does not count against the 24 hours: the member can ask again.
    assert_eq!(s.post_form("/me/privacy", &[]).await.status(), 303);
    assert_eq!(wait_for_request(&app, member).await.1, "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_files_object_metadata_names_the_subject_access_format() {
    let app = TestApp::spawn().await;
    let member = user_id(&app, "member@acme.test").await;
    let s = app.login("member@acme.test").await;
    assert_eq!(s.post_form("/me/privacy", &[]).await.status(), 303);
    let (id, status) = wait_for_request(&app, member).await;
    assert_eq!(status, "completed");
    let head = app
        .s3_client()
        .head_object()
        .bucket(app.state.storage.privacy_bucket())
        .key(format!("privacy/{member}/{id}.json.gz"))
        .send()
        .await
        .unwrap();
    let meta = head.metadata().unwrap();
    assert_eq!(meta.get("format").map(String::as_str), Some("data-export/subject-access;version=1"), "{meta:?}");
    assert_eq!(meta.get("request-id"), Some(&id), "{meta:?}");
    assert!(meta.get("sha256").is_some_and(|h| h.len() == 64), "{meta:?}");
}

/// A member's own file holds their own votes, secret ballots included, with the
/// choice, the time and their participation: the org snapshot's pseudonyms are for
/// others, not for the person the votes belong to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_file_holds_their_own_secret_ballot_vote() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let member = user_id(&app, "member@acme.test").await;
    let acme = app.org_id("acme").await;
    let election: i64 = sqlx::query_scalar(
        "insert into elections (org_id, title, opens_at, closes_at, ballot)
         values ($1, 'Secret test ballot', '2031-05-01', '2031-05-31', 'secret') returning id",
    )
    .bind(acme)
    .fetch_one(app.pool())
    .await
    .unwrap();
    let vote: i64 = sqlx::query_scalar(
        "insert into election_votes (org_id, election_id, voter_user_id, choice, cast_at)
         values ($1, $2, $3, 'MY-SECRET-CHOICE', '2031-05-07 09:10:17+00') returning id",
    )
    .bind(acme)
    .bind(election)
    .bind(member)
    .fetch_one(app.pool())
    .await
    .unwrap();
    let snapshot = data_export::privacy::open_snapshot(app.pool(), member).await.unwrap();
    let path = app.storage_dir.join("subject.json.gz");
    let upload = data_export::snapshot::sink::Sink::File(path.clone()).start().await.unwrap();
    snapshot.write("01JAAAAAAAAAAAAAAAAAAAAAAA", upload, &tokio::sync::watch::channel(0).0).await.unwrap();
    let file = decode(&std::fs::read(&path).unwrap());
    assert_valid(&file);
    let votes = file["sections"]["election_votes"].as_array().unwrap();
    let mine = votes.iter().find(|v| v["election_id"] == election).expect("the secret-ballot vote is in the file");
    assert_eq!(mine["id"], vote, "the stored id");
    assert_eq!(mine["voter_user_id"], member);
    assert_eq!(mine["choice"], "MY-SECRET-CHOICE");
    assert_eq!(mine["cast_at"], "2031-05-07T09:10:17+00:00");
    let took_part = file["sections"]["election_participants"].as_array().unwrap();
    assert!(took_part.iter().any(|p| p["election_id"] == election && p["user_id"] == member), "participation");
    let elections = file["sections"]["elections"].as_array().unwrap();
    assert!(elections.iter().any(|e| e["id"] == election && e["ballot"] == "secret"), "the election, as secret");
    println!("data-subject file: {} own votes, the secret-ballot one with voter, choice and time", votes.len());
}
