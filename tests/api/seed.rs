//! The seeder fills every section and scales with --members.

use crate::helpers::*;

async fn counts(app: &TestApp, slug: &str) -> Vec<(&'static str, i64)> {
    app.section_counts(app.org_id(slug).await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_section_is_filled_and_scales_with_members() {
    let app = TestApp::spawn_with(Options { workers: false, members: 400, ..Default::default() }).await;
    let small = counts(&app, "acme").await;
    for (table, n) in &small {
        assert!(*n > 0, "{table} is empty");
    }
    assert_eq!(
        small.iter().find(|c| c.0 == "memberships").unwrap().1,
        402,
        "400 members plus the demo admin and member"
    );
    assert!(counts(&app, "globex").await.iter().all(|(_, n)| *n > 0));

    // Re-seeding at 4x recreates the orgs with about 4x the rows.
    let report = data_export::seed::run(app.pool(), &app.state.storage, 1600, PASSWORD).await.unwrap();
    let big = counts(&app, "acme").await;
    let (a, b): (i64, i64) = (small.iter().map(|c| c.1).sum(), big.iter().map(|c| c.1).sum());
    assert!((3.6..=4.4).contains(&(b as f64 / a as f64)), "{a} -> {b}");
    assert_eq!(report.rows, b + counts(&app, "globex").await.iter().map(|c| c.1).sum::<i64>());
    // The demo accounts still sign in after a re-seed.
    app.login("admin@acme.test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_command_reports_and_refuses_bad_counts() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let out = app.command().args(["seed", "--members", "50"]).env("DEMO_PASSWORD", PASSWORD).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["members_per_org"], 50);
    assert!(summary["rows"].as_i64().unwrap() > 1000);
    for bad in ["0", "-1", "abc", "99999999999"] {
        let out = app.command().args(["seed", "--members", bad]).output().unwrap();
        assert!(!out.status.success(), "--members {bad}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
}
