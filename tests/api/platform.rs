//! The platform level: settings page and its access, Verify, retention and schedule
//! forms, the scheduler's exactly-once slots, the pruner end to end, the job board.

use std::time::Duration;

use chrono::{DateTime, Utc};
use data_export::platform::{pruner, scheduler};

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(60);
const SETTINGS: &str = "/platform/settings";

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn backup_row(app: &TestApp) -> (bool, Option<DateTime<Utc>>, Option<String>) {
    sqlx::query_as("select active, verified_at, last_error from backup_configuration")
        .fetch_one(app.pool())
        .await
        .unwrap()
}

async fn settings_row(app: &TestApp) -> (i32, i32, i32, String, String) {
    sqlx::query_as(
        "select retention_daily, retention_weekly, retention_monthly, schedule_preset, timezone from platform_settings",
    )
    .fetch_one(app.pool())
    .await
    .unwrap()
}

async fn audit_count(app: &TestApp) -> i64 {
    sqlx::query_as::<_, (i64,)>("select count(*) from audit_log").fetch_one(app.pool()).await.unwrap().0
}

/// Lets slots from the past be due (tests fire slots at chosen instants).
async fn schedule_since(app: &TestApp, at: &str) {
    sqlx::query("update platform_settings set schedule_since = $1").bind(utc(at)).execute(app.pool()).await.unwrap();
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()["location"].to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_settings_are_for_platform_admins_only() {
    let app = TestApp::spawn().await;
    let before = (backup_row(&app).await, settings_row(&app).await);
    for email in ["admin@acme.test", "member@acme.test"] {
        let s = app.login(email).await;
        assert_eq!(s.get(SETTINGS).await.status(), 403, "{email} GET");
        assert_eq!(s.get("/platform/board").await.status(), 403, "{email} board link");
        for (path, fields) in [
            ("/platform/settings/backup", vec![]),
            ("/platform/settings/backup/verify", vec![]),
            ("/platform/settings/retention", vec![("daily", "1"), ("weekly", "1"), ("monthly", "1")]),
            ("/platform/settings/schedule", vec![("preset", "disabled"), ("timezone", "UTC")]),
        ] {
            assert_eq!(s.post_form(path, &fields).await.status(), 403, "{email} POST {path}");
        }
        let home = s.get("/").await.text().await.unwrap();
        assert!(!home.contains("Platform settings"), "no link for {email}");
    }
    // Anonymous: sent to sign in.
    let anon = app.anonymous().await;
    let resp = anon.get(SETTINGS).await;
    assert_eq!(resp.status(), 303);
    assert!(location(&resp).starts_with("/login"));
    assert_eq!((backup_row(&app).await, settings_row(&app).await), before, "nothing changed");

    let s = app.login("platform@example.test").await;
    let page = s.get(SETTINGS).await;
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    for text in ["Backup configuration", "Active and verified", "org-{slug}", "Retention", "Schedule", "Job board"] {
        assert!(page.contains(text), "page shows {text:?}");
    }
    // The endpoint is shown, never a secret.
    let data_export::config::StorageSource::External(s3) = &app.state.config.storage else { unreachable!() };
    assert!(page.contains(&s3.endpoint));
    assert!(!page.contains(&s3.secret_access_key) && !page.contains(&s3.access_key_id));
    assert!(s.get("/").await.text().await.unwrap().contains("Platform settings"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_against_a_working_and_a_stopped_endpoint() {
    let mut app = TestApp::spawn().await;
    let s = app.login("platform@example.test").await;
    let admin_id: (i64,) = sqlx::query_as("select id from users where email = 'platform@example.test'")
        .fetch_one(app.pool())
        .await
        .unwrap();
    let verified_before = backup_row(&app).await.1.unwrap();

    let resp = s.post_form("/platform/settings/backup/verify", &[]).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(location(&resp), "/platform/settings?done=verified");
    let (active, verified_at, error) = backup_row(&app).await;
    assert!(active && verified_at.unwrap() > verified_before && error.is_none());
    // Each org's bucket is checked in the background: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while data_export::platform::buckets::latest(app.pool()).await.unwrap().unwrap().finished_at.is_none() {
        assert!(std::time::Instant::now() < deadline, "the org buckets were never checked");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The probes are gone again from every bucket.
    for bucket in ["org-acme", "org-globex", app.state.storage.privacy_bucket()] {
        let all = app.s3_client().list_objects_v2().bucket(bucket).send().await.unwrap();
        assert!(all.contents().is_empty(), "{bucket} is empty after the probe");
    }
    let audits = app.audits("backup.verified").await;
    let last = audits.last().unwrap();
    assert_eq!(last.1, Some(admin_id.0));
    assert_eq!(last.3["ok"], true);

    app.stop_s3().await;
    let resp = s.post_form("/platform/settings/backup/verify", &[]).await;
    assert_eq!(location(&resp), "/platform/settings?done=verify_failed");
    let (_, verified_at, error) = backup_row(&app).await;
    assert!(verified_at.is_none(), "a failed verify clears verified");
    assert!(error.is_some());
    let page = s.get("/platform/settings?done=verify_failed").await.text().await.unwrap();
    assert!(page.contains("Verification failed") && page.contains("verify-error") && page.contains("Not ready"));
    assert_eq!(app.audits("backup.verified").await.last().unwrap().3["ok"], false);

    // Exports are refused while it is not verified.
    let token = app.token("admin@acme.test").await;
    let resp = api(&app, &token).post("/orgs/acme/exports").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["error"], "backup_not_verified");

    app.restart_s3().await;
    let resp = s.post_form("/platform/settings/backup/verify", &[]).await;
    assert_eq!(location(&resp), "/platform/settings?done=verified");
    assert_eq!(api(&app, &token).post("/orgs/acme/exports").await.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_clears_verification_and_blocks_exports_and_slots() {
    let mut app = TestApp::spawn_with(Options { workers: false, ..Options::default() }).await;
    let s = app.login("platform@example.test").await;
    let token = app.token("admin@acme.test").await;
    // An export queued while it was ready...
    let queued: serde_json::Value = api(&app, &token).post("/orgs/acme/exports").await.json().await.unwrap();
    let queued = queued["id"].as_str().unwrap().to_string();

    // Saving without a change changes nothing (and keeps it verified).
    let resp = s.post_form("/platform/settings/backup", &[("active", "on")]).await;
    assert_eq!(location(&resp), "/platform/settings?done=unchanged");
    assert!(backup_row(&app).await.1.is_some());

    // Switching it off clears "verified", is audited, and blocks exports.
    let resp = s.post_form("/platform/settings/backup", &[]).await;
    assert_eq!(location(&resp), "/platform/settings?done=backup");
    assert_eq!(backup_row(&app).await, (false, None, None));
    let deactivated = app.audits("backup.deactivated").await;
    assert_eq!(deactivated.len(), 1);
    assert_eq!(deactivated[0].3, serde_json::json!({ "before": { "active": true }, "after": { "active": false } }));
    // ...does not run once it is switched off: the job checks again and fails it.
    app.start_workers();
    let run = app.wait_for_run(&queued, WAIT).await;
    assert_eq!(run.status, "failed");
    assert!(run.error.unwrap().contains("not active and verified"));
    assert!(app.objects("org-acme").await.is_empty());
    assert_eq!(api(&app, &token).post("/orgs/acme/exports").await.status(), 503);
    let acme = app.login("admin@acme.test").await;
    assert!(acme.get("/orgs/acme/settings/backups").await.text().await.unwrap().contains("Exports are paused"));

    // A scheduled slot is skipped, logged and audited.
    let slot = utc("2026-11-27T02:00:00Z");
    let outcome = scheduler::fire_slot(&app.state, slot).await.unwrap();
    assert!(outcome.started.is_empty());
    assert!(outcome.reason.unwrap().contains("not active and verified"));
    assert_eq!(app.audits("schedule.slot_skipped").await.len(), 1);
    let runs: (i64,) = sqlx::query_as("select count(*) from export_runs where trigger = 'scheduled'")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(runs.0, 0);

    // Back on: still not verified until Verify.
    s.post_form("/platform/settings/backup", &[("active", "on")]).await;
    assert_eq!(backup_row(&app).await, (true, None, None));
    assert_eq!(app.audits("backup.activated").await.len(), 1);
    assert_eq!(api(&app, &token).post("/orgs/acme/exports").await.status(), 503);
    // The pruner does not delete while it is not ready either.
    let err = pruner::apply(&app.state, None).await.unwrap_err().to_string();
    assert!(err.contains("not pruning"), "{err}");
    s.post_form("/platform/settings/backup/verify", &[]).await;
    let resp = api(&app, &token).post("/orgs/acme/exports").await;
    assert_eq!(resp.status(), 202);
    let id: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(app.wait_for_run(id["id"].as_str().unwrap(), WAIT).await.status, "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_schedule_forms_validate_save_and_audit() {
    let app = TestApp::spawn().await;
    let s = app.login("platform@example.test").await;
    let before = settings_row(&app).await;
    let audits = audit_count(&app).await;
    let bad_retention: &[&[(&str, &str)]] = &[
        &[("daily", "367"), ("weekly", "4"), ("monthly", "6")],
        &[("daily", "-1"), ("weekly", "4"), ("monthly", "6")],
        &[("daily", "7"), ("weekly", "four"), ("monthly", "6")],
        &[("daily", "7"), ("weekly", "4"), ("monthly", "1.5")],
        &[("daily", "7"), ("weekly", "4")],
        &[("daily", "7"), ("weekly", "4"), ("monthly", "6"), ("yearly", "1")],
        &[("daily", "7"), ("daily", "8"), ("weekly", "4"), ("monthly", "6")],
        &[("daily", "99999999999999999999"), ("weekly", "4"), ("monthly", "6")],
    ];
    for fields in bad_retention {
        let resp = s.post_form("/platform/settings/retention", fields).await;
        assert_eq!(resp.status(), 400, "{fields:?}");
        assert!(resp.text().await.unwrap().contains("flash-error"), "{fields:?} explains the error");
    }
    let bad_schedule: &[&[(&str, &str)]] = &[
        &[("preset", "hourly"), ("timezone", "UTC")],
        &[("preset", ""), ("timezone", "UTC")],
        &[("preset", "every_12h"), ("timezone", "Mars/Olympus_Mons")],
        &[("preset", "every_12h"), ("timezone", "")],
        &[("preset", "every_12h")],
        &[("preset", "every_12h"), ("timezone", "UTC"), ("cron", "* * * * *")],
    ];
    for fields in bad_schedule {
        let resp = s.post_form("/platform/settings/schedule", fields).await;
        assert_eq!(resp.status(), 400, "{fields:?}");
    }
    let resp = s.post_form("/platform/settings/backup", &[("active", "maybe")]).await;
    assert_eq!(resp.status(), 400);
    // A POST without the CSRF token is refused.
    let resp = s.post_raw("/platform/settings/retention", &[("daily", "1"), ("weekly", "1"), ("monthly", "1")]).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(settings_row(&app).await, before, "bad input changed nothing");
    assert_eq!(audit_count(&app).await, audits, "and audited nothing");

    let resp = s.post_form("/platform/settings/retention", &[("daily", "7"), ("weekly", "4"), ("monthly", "6")]).await;
    assert_eq!(location(&resp), "/platform/settings?done=unchanged", "7/4/6 is the default");
    let resp =
        s.post_form("/platform/settings/retention", &[("daily", "0"), ("weekly", "366"), ("monthly", "12")]).await;
    assert_eq!(location(&resp), "/platform/settings?done=retention");
    let since_before: (DateTime<Utc>,) =
        sqlx::query_as("select schedule_since from platform_settings").fetch_one(app.pool()).await.unwrap();
    let resp =
        s.post_form("/platform/settings/schedule", &[("preset", "every_12h"), ("timezone", "Europe/Berlin")]).await;
    assert_eq!(location(&resp), "/platform/settings?done=schedule");
    assert_eq!(settings_row(&app).await, (0, 366, 12, "every_12h".into(), "Europe/Berlin".into()));
    let since_after: (DateTime<Utc>,) =
        sqlx::query_as("select schedule_since from platform_settings").fetch_one(app.pool()).await.unwrap();
    assert!(since_after.0 > since_before.0, "a schedule change moves schedule_since");

    let retention = app.audits("retention.updated").await;
    assert_eq!(retention.len(), 1);
    assert_eq!(retention[0].3["before"], serde_json::json!({ "daily": 7, "weekly": 4, "monthly": 6 }));
    assert_eq!(retention[0].3["after"], serde_json::json!({ "daily": 0, "weekly": 366, "monthly": 12 }));
    let schedule = app.audits("schedule.updated").await;
    assert_eq!(schedule.len(), 1);
    assert_eq!(schedule[0].3["after"], serde_json::json!({ "preset": "every_12h", "timezone": "Europe/Berlin" }));

    let page = s.get("/platform/settings?done=schedule").await.text().await.unwrap();
    assert!(page.contains("Schedule saved"));
    assert!(page.contains(r#"value="every_12h" selected"#), "preset shown as selected");
    assert!(page.contains(r#"value="Europe/Berlin""#));
    assert!(page.contains("Next scheduled export:") && (page.contains("CET") || page.contains("CEST")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_runs_once_across_processes() {
    let app = TestApp::spawn_with(Options { workers: false, ..Options::default() }).await;
    let other = app.second_process().await;
    sqlx::query("update platform_settings set schedule_preset = 'daily_2am'").execute(app.pool()).await.unwrap();
    schedule_since(&app, "2026-01-01T00:00:00Z").await;
    let now = utc("2026-11-27T10:15:00Z");

    // Both processes tick at the same instant: one claims each slot.
    let (a, b) = tokio::join!(scheduler::tick(&app.state, now), scheduler::tick(&other, now));
    let (a, b) = (a.unwrap(), b.unwrap());
    let slot = utc("2026-11-27T02:00:00Z");
    let export_claims: Vec<_> = [a.export_slot, b.export_slot].into_iter().flatten().collect();
    assert_eq!(export_claims, vec![slot], "one process claimed the export slot");
    let prune_claims: Vec<_> = [a.prune_slot, b.prune_slot].into_iter().flatten().collect();
    assert_eq!(prune_claims, vec![utc("2026-11-27T10:00:00Z")], "one process claimed the hour's prune");
    let jobs: Vec<(String, i64)> =
        sqlx::query_as("select job_type, count(*) from apalis.jobs group by job_type order by job_type")
            .fetch_all(app.pool())
            .await
            .unwrap();
    assert_eq!(jobs, vec![("pruner".to_string(), 1), ("scheduler".to_string(), 1)]);
    // A later tick within the same slot and hour claims nothing.
    assert_eq!(scheduler::tick(&other, utc("2026-11-27T10:45:00Z")).await.unwrap(), scheduler::Tick::default());

    // The slot's job run twice at once (a retry racing a re-delivery): one run per org.
    let (x, y) = tokio::join!(scheduler::fire_slot(&app.state, slot), scheduler::fire_slot(&other, slot));
    assert_eq!(x.unwrap().started, vec!["acme", "globex"]);
    assert_eq!(y.unwrap().started, vec!["acme", "globex"], "the later one finds the runs there");
    let runs: Vec<(String, String, Option<DateTime<Utc>>)> =
        sqlx::query_as("select o.slug, r.trigger, r.scheduled_for from export_runs r join organizations o on o.id = r.org_id order by 1")
            .fetch_all(app.pool())
            .await
            .unwrap();
    assert_eq!(
        runs,
        vec![
            ("acme".to_string(), "scheduled".to_string(), Some(slot)),
            ("globex".to_string(), "scheduled".to_string(), Some(slot))
        ]
    );
    let export_jobs: (i64,) = sqlx::query_as("select count(*) from apalis.jobs where job_type = 'exports'")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(export_jobs.0, 2, "one job per run");
    assert_eq!(app.audits("export.scheduled").await.len(), 2);

    // The worker processes run the slot's job and the exports; they show as scheduled.
    let mut app = app;
    app.start_workers();
    let ids: Vec<(String,)> = sqlx::query_as("select id from export_runs").fetch_all(app.pool()).await.unwrap();
    for (id,) in &ids {
        assert_eq!(app.wait_for_run(id, WAIT).await.status, "completed");
    }
    let acme = app.login("admin@acme.test").await;
    let history = acme.get("/orgs/acme/exports/history").await.text().await.unwrap();
    assert!(history.contains("Scheduled") || history.contains("scheduled"), "history says scheduled: {history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_slots_skipped_slots_and_a_disabled_schedule() {
    let app = TestApp::spawn_with(Options { workers: false, ..Options::default() }).await;
    sqlx::query("update platform_settings set schedule_preset = 'every_12h'").execute(app.pool()).await.unwrap();
    schedule_since(&app, "2026-11-20T00:00:00Z").await;

    // Before schedule_since nothing is due.
    let t = scheduler::tick(&app.state, utc("2026-11-19T13:00:00Z")).await.unwrap();
    assert_eq!(t.export_slot, None);
    // After downtime only the latest missed slot runs (the 10 slots before it never do).
    let t = scheduler::tick(&app.state, utc("2026-11-25T13:00:00Z")).await.unwrap();
    assert_eq!(t.export_slot, Some(utc("2026-11-25T12:00:00Z")));
    let slots: Vec<(DateTime<Utc>,)> =
        sqlx::query_as("select slot from schedule_slots where kind = 'export'").fetch_all(app.pool()).await.unwrap();
    assert_eq!(slots, vec![(utc("2026-11-25T12:00:00Z"),)]);

    // The slot's job failing for good before the slot finished: the next tick pushes
    // it again (and only once).
    sqlx::query("update apalis.jobs set status = 'Failed', attempts = max_attempts where job_type = 'scheduler'")
        .execute(app.pool())
        .await
        .unwrap();
    let t = scheduler::tick(&app.state, utc("2026-11-25T13:00:30Z")).await.unwrap();
    assert_eq!(t.export_slot, None, "not claimed again");
    let again = scheduler::tick(&app.state, utc("2026-11-25T13:01:00Z")).await.unwrap();
    assert_eq!(again, scheduler::Tick::default());
    let jobs: Vec<(String,)> =
        sqlx::query_as("select status from apalis.jobs where job_type = 'scheduler' order by status")
            .fetch_all(app.pool())
            .await
            .unwrap();
    assert_eq!(jobs, vec![("Failed".to_string(),), ("Pending".to_string(),)]);
    let (job_id,): (String,) =
        sqlx::query_as("select job_id from schedule_slots where kind = 'export'").fetch_one(app.pool()).await.unwrap();
    let (pending,): (String,) =
        sqlx::query_as("select id from apalis.jobs where job_type = 'scheduler' and status = 'Pending'")
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(job_id, pending, "the claim points at the new job");

    // A slot that finds a manual export active skips that org, logged and audited.
    let token = app.token("admin@acme.test").await;
    let manual: serde_json::Value = api(&app, &token).post("/orgs/acme/exports").await.json().await.unwrap();
    let outcome = scheduler::fire_slot(&app.state, utc("2026-11-25T12:00:00Z")).await.unwrap();
    assert_eq!(outcome.started, vec!["globex"]);
    assert_eq!(outcome.skipped.len(), 1);
    assert_eq!(outcome.skipped[0].0, "acme");
    let skipped = app.audits("export.schedule_skipped").await;
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].3["active_export_id"], manual["id"]);
    let recorded: (Option<serde_json::Value>,) =
        sqlx::query_as("select outcome from schedule_slots where kind = 'export'").fetch_one(app.pool()).await.unwrap();
    assert_eq!(recorded.0.unwrap()["started"], serde_json::json!(["globex"]));

    // Orgs with the module off get no scheduled export.
    let globex = app.org_id("globex").await;
    sqlx::query("update org_modules set enabled = false where org_id = $1 and module = 'data_export'")
        .bind(globex)
        .execute(app.pool())
        .await
        .unwrap();
    let outcome = scheduler::fire_slot(&app.state, utc("2026-11-26T00:00:00Z")).await.unwrap();
    assert!(outcome.started.is_empty() && outcome.skipped.len() == 1, "{outcome:?}");

    // Disabled: nothing is ever due.
    sqlx::query("update platform_settings set schedule_preset = 'disabled'").execute(app.pool()).await.unwrap();
    assert_eq!(scheduler::tick(&app.state, utc("2026-11-28T13:00:00Z")).await.unwrap().export_slot, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_end_to_end() {
    let app = TestApp::spawn_with(Options { workers: true, ..Options::default() }).await;
    let other = app.second_process().await;
    let platform = app.login("platform@example.test").await;
    // Keep everything while the exports are made.
    let resp = platform
        .post_form("/platform/settings/retention", &[("daily", "366"), ("weekly", "366"), ("monthly", "366")])
        .await;
    assert_eq!(location(&resp), "/platform/settings?done=retention");
    let globex = app.org_id("globex").await;
    sqlx::query("update org_modules set enabled = false where org_id = $1 and module = 'data_export'")
        .bind(globex)
        .execute(app.pool())
        .await
        .unwrap();
    let acme = app.org_id("acme").await;
    let slots = [
        "2026-10-30T12:00:00Z", // Oct
        "2026-11-20T00:00:00Z", // ISO week 47
        "2026-11-27T00:00:00Z", // week 48
        "2026-11-28T00:00:00Z",
        "2026-11-28T12:00:00Z",
        "2026-11-29T00:00:00Z", // Sunday, still week 48: the newest
    ];
    let mut ids = Vec::new();
    for slot in slots {
        let outcome = scheduler::fire_slot(&app.state, utc(slot)).await.unwrap();
        assert_eq!(outcome.started, vec!["acme"], "{slot}");
        let (id,): (String,) = sqlx::query_as("select id from export_runs where org_id = $1 and scheduled_for = $2")
            .bind(acme)
            .bind(utc(slot))
            .fetch_one(app.pool())
            .await
            .unwrap();
        assert_eq!(app.wait_for_run(&id, WAIT).await.status, "completed");
        ids.push(id);
    }
    // A manual export is never pruned.
    let token = app.token("admin@acme.test").await;
    let manual: serde_json::Value = api(&app, &token).post("/orgs/acme/exports").await.json().await.unwrap();
    let manual = manual["id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_for_run(&manual, WAIT).await.status, "completed");
    // The prune after each scheduled export already ran: a day keeps one export (its
    // newest), so Nov 28's midnight export went when Nov 28's noon one completed.
    app.wait_for_done_jobs("pruner", 6, WAIT).await;
    assert_eq!(data_export::exports::runs::get_any(app.pool(), &ids[3]).await.unwrap().unwrap().status, "pruned");
    assert_eq!(app.audits("export.pruned").await.len(), 1);
    assert_eq!(app.objects("org-acme").await.len(), 6);

    // 2 daily / 1 weekly / 2 monthly keeps Nov 29 (newest, daily, weekly, monthly),
    // Nov 28 noon (daily) and Oct 30 (monthly); Nov 20 and Nov 27 go.
    let resp =
        platform.post_form("/platform/settings/retention", &[("daily", "2"), ("weekly", "1"), ("monthly", "2")]).await;
    assert_eq!(location(&resp), "/platform/settings?done=retention");
    let expect_removed = [&ids[1], &ids[2]];
    let expect_kept = [&ids[0], &ids[4], &ids[5]];

    // The preview (page and CLI) says so, and changes nothing.
    let page = platform.get(SETTINGS).await.text().await.unwrap();
    assert_eq!(page.matches("will be removed").count(), 2, "page preview");
    assert!(page.contains("kept: newest, daily, weekly, monthly") && page.contains("kept: monthly"));
    let out = app.command().args(["prune", "--dry-run"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for id in expect_removed {
        assert!(stdout.lines().any(|l| l.contains(id.as_str()) && l.ends_with("will be removed")), "{stdout}");
    }
    for id in expect_kept {
        assert!(stdout.lines().any(|l| l.contains(id.as_str()) && l.contains("kept:")), "{stdout}");
    }
    assert!(!stdout.contains(&manual), "manual exports are not in the preview");
    assert!(stdout.contains("2 export(s) would be removed"));
    assert_eq!(app.objects("org-acme").await.len(), 6, "dry run removed nothing");

    // A crash after deleting one object but before marking its run: the object is
    // already gone; pruning repeats the delete and marks it.
    let (gone_key,): (String,) = sqlx::query_as("select object_key from export_runs where id = $1")
        .bind(expect_removed[0])
        .fetch_one(app.pool())
        .await
        .unwrap();
    app.state.storage.delete("org-acme", &gone_key).await.unwrap();

    // Two pruners at once: each removal happens once.
    let (x, y) = tokio::join!(pruner::apply(&app.state, None), pruner::apply(&other, None));
    let removed = x.unwrap().len() + y.unwrap().len();
    assert_eq!(removed, 2);
    assert_eq!(app.audits("export.pruned").await.len(), 3);
    for id in expect_removed {
        assert_eq!(data_export::exports::runs::get_any(app.pool(), id).await.unwrap().unwrap().status, "pruned");
    }
    let mut remaining = app.objects("org-acme").await;
    remaining.sort();
    let mut want: Vec<String> = Vec::new();
    for id in expect_kept.into_iter().chain([&manual]) {
        let (k,): (String,) = sqlx::query_as("select object_key from export_runs where id = $1")
            .bind(id)
            .fetch_one(app.pool())
            .await
            .unwrap();
        want.push(k);
    }
    want.sort();
    assert_eq!(remaining, want, "exactly the kept exports and the manual one remain");

    // Idempotent: again, nothing more.
    assert!(pruner::apply(&app.state, None).await.unwrap().is_empty());
    let out = app.command().args(["prune"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 export(s) removed"));
    assert_eq!(app.audits("export.pruned").await.len(), 3);

    // The history shows them as pruned, and a pruned export cannot be downloaded.
    let s = app.login("admin@acme.test").await;
    let history = s.get("/orgs/acme/exports/history").await.text().await.unwrap();
    assert!(history.contains("pruned"));
    assert_eq!(api(&app, &token).get(&format!("/orgs/acme/exports/{}/download", ids[1])).await.status(), 404);

    // Bad CLI input is refused with a clear message.
    let out = app.command().args(["prune", "--org", "No Such"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid org slug"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_board_is_for_platform_admins_only() {
    let app = TestApp::spawn().await;
    let jobs_before: (i64,) = sqlx::query_as("select count(*) from apalis.jobs").fetch_one(app.pool()).await.unwrap();
    let push = |client: &reqwest::Client, origin: Option<&str>| {
        let mut req = client
            .put(app.board_url("/api/v1/queues/exports/tasks"))
            .header("content-type", "application/json")
            .body(r#"{"run_id":"01JAAAAAAAAAAAAAAAAAAAAAAA"}"#);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    let anon = app.client();
    let member = app.login("member@acme.test").await;
    let org_admin = app.login("admin@acme.test").await;
    for (who, client) in [("anonymous", &anon), ("member", &member.client), ("org admin", &org_admin.client)] {
        for path in ["/", "/api/v1/queues", "/api/v1/queues/exports/tasks", "/api/v1/overview", "/index.html"] {
            let resp = client.get(app.board_url(path)).send().await.unwrap();
            assert_eq!(resp.status(), 403, "{who} GET {path}");
        }
        assert_eq!(push(client, None).await.unwrap().status(), 403, "{who} cannot push");
    }
    let jobs_after: (i64,) = sqlx::query_as("select count(*) from apalis.jobs").fetch_one(app.pool()).await.unwrap();
    assert_eq!(jobs_after, jobs_before, "no job was pushed");

    let admin = app.login("platform@example.test").await;
    // The settings page links to it; the link redirects to the board's own port.
    let resp = admin.get("/platform/board").await;
    assert_eq!(resp.status(), 303);
    assert_eq!(location(&resp), app.board_url("/"));
    let ui = admin.client.get(app.board_url("/")).send().await.unwrap();
    assert_eq!(ui.status(), 200);
    assert!(ui.text().await.unwrap().contains("<title>Apalis Board</title>"));
    let queues = admin.client.get(app.board_url("/api/v1/queues")).send().await.unwrap();
    assert_eq!(queues.status(), 200);
    let _: serde_json::Value = queues.json().await.unwrap();
    let tasks = admin.client.get(app.board_url("/api/v1/queues/exports/tasks")).send().await.unwrap();
    assert_eq!(tasks.status(), 200);
    // A push from the board's own origin works (the board's UI does this)...
    let own = format!("http://127.0.0.1:{}", app.state.board_port());
    assert_eq!(push(&admin.client, Some(&own)).await.unwrap().status(), 200);
    let pushed: (i64,) = sqlx::query_as("select count(*) from apalis.jobs").fetch_one(app.pool()).await.unwrap();
    assert_eq!(pushed.0, jobs_before.0 + 1);
    let jobs_before = pushed;
    // ...a cross-origin push is refused even with an admin's cookie.
    assert_eq!(push(&admin.client, Some("https://evil.example")).await.unwrap().status(), 403);
    let jobs_after: (i64,) = sqlx::query_as("select count(*) from apalis.jobs").fetch_one(app.pool()).await.unwrap();
    assert_eq!(jobs_after, jobs_before);
}
