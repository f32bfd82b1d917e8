//! Closing an org (docs/runbooks/offboarding.md): the request and its refusals, the
//! closing rule (members refused, admins may download and cancel), the erasure of
//! every table with an `org_id` column and of the bucket, the receipt, a crash
//! between the two phases, reopening, the slug never reused, and the CLI.

use std::{collections::BTreeMap, time::Duration};

use data_export::closing::{self, erase};
use serde_json::{Value, json};

use crate::helpers::*;

/// Every table of the schema with an `org_id` column.
async fn org_tables(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar(
        "select table_name::text from information_schema.columns
         where table_schema = 'public' and column_name = 'org_id' order by 1",
    )
    .fetch_all(app.pool())
    .await
    .unwrap()
}

/// Rows of `org_id` in each table with an `org_id` column.
async fn rows_of(app: &TestApp, org_id: i64) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for t in org_tables(app).await {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from \"{t}\" where org_id = $1")))
            .bind(org_id)
            .fetch_one(app.pool())
            .await
            .unwrap();
        out.insert(t, n);
    }
    out
}

/// A fingerprint of every other org's rows: each table's rows of orgs other than
/// `org_id`, as text, hashed in order.
async fn others_fingerprint(app: &TestApp, org_id: i64) -> BTreeMap<String, (i64, String)> {
    let mut out = BTreeMap::new();
    for t in org_tables(app).await {
        let row: (i64, Option<String>) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select count(*), md5(string_agg(x::text, '|' order by x::text)) from \"{t}\" x where org_id <> $1"
        )))
        .bind(org_id)
        .fetch_one(app.pool())
        .await
        .unwrap();
        out.insert(t, (row.0, row.1.unwrap_or_default()));
    }
    out
}

async fn lifecycle(app: &TestApp, slug: &str) -> String {
    closing::find(app.pool(), slug).await.unwrap().unwrap().lifecycle
}

async fn export_runs(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from export_runs").fetch_one(app.pool()).await.unwrap()
}

async fn bucket_exists(app: &TestApp, bucket: &str) -> bool {
    app.s3_client().head_bucket().bucket(bucket).send().await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closing_erases_every_row_and_the_bucket_keeps_a_receipt_and_finishes_after_a_crash() {
    let app = TestApp::spawn().await;
    let acme = app.org_id("acme").await;
    let globex = app.org_id("globex").await;
    let admin = api(&app, &app.token("admin@acme.test").await);
    let member = api(&app, &app.token("member@acme.test").await);
    let platform = api(&app, &app.token("platform@example.test").await);
    // A token limited to acme: it goes with the org.
    let scoped = app.token("admin@acme.test").await;
    sqlx::query("update api_tokens set scope_org_id = $1 where id = (select max(id) from api_tokens)")
        .bind(acme)
        .execute(app.pool())
        .await
        .unwrap();
    // A webhook endpoint, so that table has a row of acme too.
    let r = admin.post_json("/orgs/acme/webhooks", &json!({ "url": "https://hooks.example.com/in" })).await;
    assert_eq!(r.status(), 201);
    let users_before: i64 = sqlx::query_scalar("select count(*) from users").fetch_one(app.pool()).await.unwrap();

    // Bad input changes nothing.
    let runs_before = export_runs(&app).await;
    for body in
        [json!({ "confirm": "acme-x" }), json!({ "confirm": "ACME" }), json!({}), json!({ "confirm": "acme", "x": 1 })]
    {
        let r = admin.post_json("/orgs/acme/close", &body).await;
        assert_eq!(r.status(), 400, "{body}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "bad_request");
    }
    assert_eq!(admin.post("/orgs/acme/close").await.status(), 400, "no body");
    assert_eq!(member.post_json("/orgs/acme/close", &json!({ "confirm": "acme" })).await.status(), 403);
    assert_eq!(admin.post("/orgs/acme/reopen").await.status(), 409, "not closing");
    assert_eq!(lifecycle(&app, "acme").await, "active");
    assert_eq!(export_runs(&app).await, runs_before, "no export was started");
    assert!(app.audits("org.closing").await.is_empty());

    // Closing: 202, a final export, and a second request is a conflict.
    let r = admin.post_json("/orgs/acme/close", &json!({ "confirm": "acme" })).await;
    assert_eq!(r.status(), 202);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["state"], "closing");
    assert_eq!(answer["grace_days"], 30);
    let final_id = answer["final_export_id"].as_str().unwrap().to_string();
    assert_eq!(admin.post_json("/orgs/acme/close", &json!({ "confirm": "acme" })).await.status(), 409);
    // Every admin of the org and every platform admin is told at once, once.
    let told: Vec<(String,)> = sqlx::query_as(
        "select u.email from mail_messages m join users u on u.id = m.user_id
         where m.kind = 'org_closed' and m.subject like '% is closing: %' order by u.email",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    let told: Vec<String> = told.into_iter().map(|(e,)| e).collect();
    assert_eq!(told, ["admin@acme.test", "platform@example.test"], "the closing's mail");
    let run = app.wait_for_run(&final_id, Duration::from_secs(60)).await;
    assert_eq!(run.status, "completed");

    // While closing: members refused with a reason, admins may only download and cancel.
    let r = member.get("/orgs/acme/exports").await;
    assert_eq!(r.status(), 403);
    assert!(r.json::<Value>().await.unwrap()["message"].as_str().unwrap().contains("closing"));
    let member_page = app.login("member@acme.test").await;
    let home = member_page.get("/").await.text().await.unwrap();
    assert!(home.contains("it can no longer be used"), "{home}");
    let r = admin.post("/orgs/acme/exports").await;
    assert_eq!(r.status(), 403, "nothing new starts");
    assert!(r.json::<Value>().await.unwrap()["message"].as_str().unwrap().contains("closing"));
    assert_eq!(admin.get("/orgs/acme/webhooks").await.status(), 403);
    assert_eq!(admin.get(&format!("/orgs/acme/exports/{final_id}/download")).await.status(), 303);
    assert_eq!(admin.get("/orgs/acme/exports").await.status(), 200);
    let admin_page = app.login("admin@acme.test").await;
    // The Backups & Export page stays readable (its history has the downloads and
    // the tables buttons); making tables of the final export from the page works.
    assert_eq!(admin_page.get("/orgs/acme/settings/backups").await.status(), 200);
    let tables = admin_page.post_form(&format!("/orgs/acme/exports/{final_id}/tables/csv"), &[]).await;
    assert!(tables.status().is_success() || tables.status().is_redirection(), "{}", tables.status());
    assert_eq!(member_page.get("/orgs/acme/settings/backups").await.status(), 403);
    assert_eq!(member_page.post_form(&format!("/orgs/acme/exports/{final_id}/tables/csv"), &[]).await.status(), 403);
    assert_eq!(admin_page.get("/orgs/acme/settings/modules").await.status(), 403);
    let page = admin_page.get("/orgs/acme/settings/close").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains(&final_id) && html.contains("Cancel the closing"), "{html}");
    assert_eq!(admin_page.get(&format!("/orgs/acme/exports/{final_id}/download")).await.status(), 303);
    // Another org is untouched by the rule.
    let globex_admin = api(&app, &app.token("admin@globex.test").await);
    assert_eq!(globex_admin.get("/orgs/globex/exports").await.status(), 200);

    // Housekeeping verifies the final export and starts the grace period; no erasure yet.
    let done = erase::tick(&app.state).await.unwrap();
    assert_eq!((done.verified, done.erased), (1, 0));
    let org = closing::find(app.pool(), "acme").await.unwrap().unwrap();
    assert_eq!(org.lifecycle, "closing");
    let run = data_export::exports::runs::get_any(app.pool(), &final_id).await.unwrap().unwrap();
    assert!(run.verified_at.is_some() && run.verify_error.is_none());
    let days = (org.close_after.unwrap() - run.verified_at.unwrap()).num_days();
    assert_eq!(days, 30);
    assert_eq!(
        erase::erase_rows(&app.state, acme).await.unwrap(),
        erase::Erasure::Refused(format!("its grace period runs until {}", org.close_after.unwrap()))
    );

    // The grace period passes.
    sqlx::query("update organizations set close_after = now() - interval '1 second' where id = $1")
        .bind(acme)
        .execute(app.pool())
        .await
        .unwrap();
    let before = rows_of(&app, acme).await;
    assert!(before.values().sum::<i64>() > 100);
    let others = others_fingerprint(&app, acme).await;
    assert!(others["memberships"].0 > 0);
    let snapshot_at = run.snapshot_at.unwrap();
    let audit_after_snapshot: i64 =
        sqlx::query_scalar("select count(*) from audit_log where org_id = $1 and created_at > $2")
            .bind(acme)
            .bind(snapshot_at)
            .fetch_one(app.pool())
            .await
            .unwrap();

    // The database phase alone, as if the process died before the bucket's removal.
    assert_eq!(erase::erase_rows(&app.state, acme).await.unwrap(), erase::Erasure::Done);
    assert_eq!(lifecycle(&app, "acme").await, "erased_db");
    assert!(bucket_exists(&app, "org-acme").await, "the bucket is the next phase's");
    for (t, n) in rows_of(&app, acme).await {
        assert_eq!(n, 0, "{t} still holds rows of acme");
    }
    // A second database phase finds nothing to do.
    assert!(matches!(erase::erase_rows(&app.state, acme).await.unwrap(), erase::Erasure::Refused(_)));
    // The next run finishes it.
    let done = erase::tick(&app.state).await.unwrap();
    assert_eq!((done.erased, done.closed, done.failed), (0, 1, 0));
    assert_eq!(lifecycle(&app, "acme").await, "closed");
    assert!(!bucket_exists(&app, "org-acme").await, "the bucket is gone");
    assert_eq!(erase::tick(&app.state).await.unwrap(), erase::Tick::default(), "nothing left to do");

    // Every table with an org_id holds no row of acme; every other org's rows are as they were.
    for (t, n) in rows_of(&app, acme).await {
        assert_eq!(n, 0, "{t} still holds rows of acme");
    }
    assert_eq!(others_fingerprint(&app, acme).await, others, "other orgs' rows changed");
    let scoped_left: i64 = sqlx::query_scalar("select count(*) from api_tokens where scope_org_id = $1")
        .bind(acme)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(scoped_left, 0);
    assert_eq!(api(&app, &scoped).get("/orgs/acme/exports").await.status(), 401, "its token is gone");
    let users_after: i64 = sqlx::query_scalar("select count(*) from users").fetch_one(app.pool()).await.unwrap();
    assert_eq!(users_after, users_before, "platform accounts stay");
    assert_eq!(app.login("admin@acme.test").await.get("/").await.status(), 200);

    // The receipt: what was erased, table by table, equal to the database before
    // and to the final export's counts for every section (the audit log also
    // held the entries written after the export's read).
    let receipt = closing::receipt(app.pool(), "acme").await.unwrap().unwrap();
    let erased = receipt["erased"]["tables"].as_object().unwrap();
    for (t, n) in &before {
        assert_eq!(erased.get(t).and_then(Value::as_i64).unwrap_or(0), *n, "{t}");
    }
    let counts = receipt["final_export"]["counts"].as_object().unwrap();
    let mut compared = 0;
    for (section, n) in counts {
        let Some(erased_n) = erased.get(section) else { continue };
        let extra = if section == "audit_log" { audit_after_snapshot } else { 0 };
        assert_eq!(erased_n.as_i64().unwrap(), n.as_i64().unwrap() + extra, "section {section}");
        compared += 1;
    }
    assert!(compared >= 20, "{compared} sections compared");
    assert_eq!(erased["api_tokens"], 1);
    assert_eq!(receipt["final_export"]["id"], final_id.as_str());
    assert_eq!(receipt["final_export"]["sha256"], run.sha256.clone().unwrap().as_str());
    assert_eq!(receipt["final_export"]["size_bytes"], run.size_bytes.unwrap());
    assert_eq!(receipt["requested_by"], "admin@acme.test");
    assert!(receipt["bucket_removed_at"].is_string());
    // Stored in the platform's bucket, and answered by the API (platform admins only).
    let platform_bucket = app.state.storage.privacy_bucket().to_string();
    assert!(app.objects(&platform_bucket).await.contains(&"closing-receipts/acme.json".to_string()));
    let stored = app.s3_client().get_object().bucket(&platform_bucket).key("closing-receipts/acme.json").send().await;
    let stored: Value = serde_json::from_slice(&stored.unwrap().body.collect().await.unwrap().into_bytes()).unwrap();
    assert_eq!(stored, receipt);
    let r = platform.get("/platform/orgs/acme/receipt").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), receipt);
    assert_eq!(globex_admin.get("/platform/orgs/acme/receipt").await.status(), 403);
    assert_eq!(platform.get("/platform/orgs/globex/receipt").await.status(), 404, "not closed");
    assert_eq!(platform.get("/platform/orgs/nope-org/receipt").await.status(), 404);
    // Shown on the org list, with the state `closed`.
    let listed: Value = platform.get("/platform/orgs?state=closed").await.json().await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["slug"], "acme");
    let platform_page = app.login("platform@example.test").await;
    let list = platform_page.get("/platform/orgs").await.text().await.unwrap();
    assert!(list.contains("/platform/orgs/acme/close") && list.contains("data-receipt"), "{list}");
    let page = platform_page.get("/platform/orgs/acme/close").await.text().await.unwrap();
    assert!(page.contains(run.sha256.as_deref().unwrap()) && page.contains("id=\"receipt\""), "{page}");

    // Mailed to acme's admin (as they were) and the platform admins; audited in the platform's log.
    let mailed: Vec<String> = sqlx::query_scalar(
        "select recipient from mail_messages where kind = 'org_closed' and org_id is null
         and subject like '% was closed and its data erased' order by recipient",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    assert_eq!(mailed, ["admin@acme.test", "platform@example.test"]);
    let erased_audit = app.audits("org.erased").await;
    assert_eq!(erased_audit.len(), 1);
    assert_eq!(erased_audit[0].0, None, "the platform's audit log");
    assert_eq!(erased_audit[0].2, "org:acme");

    // The tombstone's slug is never reused: provisioning, restore, and reopen refuse.
    let slug = data_export::orgs::OrgSlug::parse("acme").unwrap();
    let e = data_export::orgs::provision(app.pool(), &app.state.storage, &slug, "Acme again").await.unwrap_err();
    assert!(e.to_string().contains("never reused"), "{e}");
    let e = data_export::imports::engine::check_slug(app.pool(), "acme").await.unwrap_err();
    assert!(e.to_string().contains("never reused"), "{e}");
    let e = data_export::seed::run(app.pool(), &app.state.storage, 1, PASSWORD).await.unwrap_err();
    assert!(e.to_string().contains("never reused"), "{e}");
    assert_eq!(lifecycle(&app, "acme").await, "closed", "the seeder left the tombstone");
    assert!(!bucket_exists(&app, "org-acme").await, "no bucket was made again");
    let admin_again = api(&app, &app.token("admin@acme.test").await);
    assert_eq!(admin_again.post("/orgs/acme/reopen").await.status(), 404, "no longer a member of anything there");
    let by = closing::Requester { user_id: None, email: None, via: closing::Via::Cli };
    assert!(closing::reopen(&app.state, "acme", &by).await.is_err());
    assert_eq!(lifecycle(&app, "acme").await, "closed");
    let _ = globex;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reopening_returns_everything_as_it_was() {
    let app = TestApp::spawn().await;
    let acme = app.org_id("acme").await;
    let admin = app.login("admin@acme.test").await;
    let before = rows_of(&app, acme).await;

    // The form: a wrong slug is refused on the page, and nothing changes.
    let r = admin.post_form("/orgs/acme/settings/close", &[("confirm", "globex")]).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("type its slug"));
    assert_eq!(admin.post_form("/orgs/acme/settings/close", &[("confirm", "acme"), ("x", "1")]).await.status(), 400);
    assert_eq!(lifecycle(&app, "acme").await, "active");
    assert_eq!(rows_of(&app, acme).await, before);

    let r = admin.post_form("/orgs/acme/settings/close", &[("confirm", "acme")]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(lifecycle(&app, "acme").await, "closing");
    let final_id = closing::find(app.pool(), "acme").await.unwrap().unwrap().final_export_id.unwrap();
    app.wait_for_run(&final_id, Duration::from_secs(60)).await;
    let member = api(&app, &app.token("member@acme.test").await);
    assert_eq!(admin.get("/orgs/acme/settings/modules").await.status(), 403);

    // Cancel: everything as it was (the final export stays as a manual export).
    let r = admin.post_form("/orgs/acme/settings/close/reopen", &[]).await;
    assert_eq!(r.status(), 303);
    let org = closing::find(app.pool(), "acme").await.unwrap().unwrap();
    assert_eq!(org.lifecycle, "active");
    assert!(org.final_export_id.is_none() && org.close_requested_at.is_none() && org.close_after.is_none());
    assert_eq!(admin.get("/orgs/acme/settings/modules").await.status(), 200);
    assert_eq!(admin.get("/orgs/acme/settings/backups").await.status(), 200);
    let r = member.get("/orgs/acme/exports").await;
    assert_eq!(r.status(), 403);
    assert!(!r.json::<Value>().await.unwrap()["message"].as_str().unwrap().contains("closing"));
    let after = rows_of(&app, acme).await;
    for (t, n) in &before {
        // The closing added its audit entries, its export and that export's mail to
        // whoever started it; nothing else moved.
        match t.as_str() {
            "audit_log" | "export_runs" | "export_history_versions" | "org_backup_status" | "mail_messages" => {}
            _ => assert_eq!(after[t], *n, "{t}"),
        }
    }
    assert_eq!(after["export_runs"], before["export_runs"] + 1);
    assert_eq!(app.audits("org.reopened").await.len(), 1);
    assert_eq!(admin.post_form("/orgs/acme/settings/close/reopen", &[]).await.status(), 409);
    // Housekeeping leaves a reopened org alone.
    assert_eq!(erase::tick(&app.state).await.unwrap(), erase::Tick::default());

    // A platform admin closes and reopens from the org list.
    let platform = app.login("platform@example.test").await;
    assert_eq!(platform.get("/platform/orgs/acme/close").await.status(), 200);
    assert_eq!(platform.get("/platform/orgs/nope-org/close").await.status(), 404);
    assert_eq!(platform.post_form("/platform/orgs/acme/close", &[("confirm", "acm")]).await.status(), 400);
    assert_eq!(platform.post_form("/platform/orgs/acme/close", &[("confirm", "acme")]).await.status(), 303);
    let org = closing::find(app.pool(), "acme").await.unwrap().unwrap();
    assert_eq!((org.lifecycle.as_str(), org.close_via.as_deref()), ("closing", Some("platform")));
    app.wait_for_run(org.final_export_id.as_deref().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(platform.post_form("/platform/orgs/acme/reopen", &[]).await.status(), 303);
    assert_eq!(lifecycle(&app, "acme").await, "active");
    // Org admins of another org cannot use the platform's pages.
    let other = app.login("admin@globex.test").await;
    assert_eq!(other.post_form("/platform/orgs/acme/close", &[("confirm", "acme")]).await.status(), 403);
    assert_eq!(lifecycle(&app, "acme").await, "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_closes_reopens_and_prints_the_receipt_and_erasure_waits_for_a_verified_export() {
    let app = TestApp::spawn().await;
    let acme = app.org_id("acme").await;
    let runs_before = export_runs(&app).await;
    // Bad input: a clear error, nothing written.
    for (args, says) in [
        (vec!["org", "close", "nope-org"], "no organization"),
        (vec!["org", "close", "Bad Slug"], "not a valid org slug"),
        (vec!["org", "close", "acme", "--grace-days", "-1"], "from 0 to 3650"),
        (vec!["org", "close", "acme", "--grace-days", "abc"], "from 0 to 3650"),
        (vec!["org", "close", "acme", "--grace-days", "3651"], "from 0 to 3650"),
        (vec!["org", "reopen", "acme"], "not closing"),
        (vec!["org", "receipt", "acme"], "no receipt"),
    ] {
        let out = app.command().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert_eq!(lifecycle(&app, "acme").await, "active");
    assert_eq!(export_runs(&app).await, runs_before);

    let out = app.command().args(["org", "close", "acme", "--grace-days", "0"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((answer["state"].as_str(), answer["grace_days"].as_i64()), (Some("closing"), Some(0)));
    assert_eq!(answer["via"], "cli");
    let final_id = answer["final_export_id"].as_str().unwrap().to_string();
    // Erasure refuses while the final export is not completed and verified.
    assert!(matches!(erase::erase_rows(&app.state, acme).await.unwrap(), erase::Erasure::Refused(_)));
    app.wait_for_run(&final_id, Duration::from_secs(60)).await;
    sqlx::query("update organizations set close_after = now() where id = $1")
        .bind(acme)
        .execute(app.pool())
        .await
        .unwrap();
    assert_eq!(
        erase::erase_rows(&app.state, acme).await.unwrap(),
        erase::Erasure::Refused("its final export is not verified yet".into())
    );
    // A final export that did not verify holds the closing.
    sqlx::query("update export_runs set verified_at = now(), verify_error = 'sha256 differs' where id = $1")
        .bind(&final_id)
        .execute(app.pool())
        .await
        .unwrap();
    let done = erase::tick(&app.state).await.unwrap();
    assert_eq!(done.erased, 0);
    let org = closing::find(app.pool(), "acme").await.unwrap().unwrap();
    assert_eq!(org.lifecycle, "closing");
    assert!(org.close_error.unwrap().contains("did not verify"));
    assert!(rows_of(&app, acme).await["memberships"] > 0, "nothing was erased");

    // Reopen and close again from the command line; with 0 days the next run erases it.
    let out = app.command().args(["org", "reopen", "acme"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["state"], "active");
    let out = app.command().args(["org", "close", "acme", "--grace-days", "0"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let final_id =
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["final_export_id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_for_run(&final_id, Duration::from_secs(60)).await.status, "completed");
    let done = erase::tick(&app.state).await.unwrap();
    assert_eq!((done.verified, done.erased, done.closed, done.failed), (0, 1, 1, 0));
    assert_eq!(lifecycle(&app, "acme").await, "closed");
    let out = app.command().args(["org", "receipt", "acme"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let receipt: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(receipt["final_export"]["id"], final_id.as_str());
    assert_eq!(receipt["requested_via"], "cli");
    assert!(receipt["erased"]["rows"].as_i64().unwrap() > 100);
    let out = app.command().args(["org", "close", "acme"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("erased"));
}
