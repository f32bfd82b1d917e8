//! Settings -> Modules.

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_switch_modules_and_each_change_is_audited() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let s = app.login("admin@acme.test").await;
    let page = s.get("/orgs/acme/settings/modules").await.text().await.unwrap();
    for label in ["Data Export", "Engage", "Operations", "Foundation", "Learning", "Alumni"] {
        assert!(page.contains(label), "{label}");
    }
    // Keep data_export and learning; switch the other four off.
    let r = s.post_form("/orgs/acme/settings/modules", &[("module", "data_export"), ("module", "learning")]).await;
    assert_eq!(r.status(), 303);
    let acme = app.org_id("acme").await;
    let on: Vec<(String,)> =
        sqlx::query_as("select module from org_modules where org_id = $1 and enabled order by module")
            .bind(acme)
            .fetch_all(app.pool())
            .await
            .unwrap();
    assert_eq!(on.into_iter().map(|r| r.0).collect::<Vec<_>>(), ["data_export", "learning"]);
    let audited: Vec<(String, String)> = sqlx::query_as(
        "select action, target from audit_log where org_id = $1 and action like 'module.%' and actor_user_id is not null order by target",
    )
    .bind(acme)
    .fetch_all(app.pool())
    .await
    .unwrap();
    assert_eq!(
        audited,
        [
            ("module.disabled", "alumni"),
            ("module.disabled", "engage"),
            ("module.disabled", "foundation"),
            ("module.disabled", "operations")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    // The form shows the new state.
    let page = s.get("/orgs/acme/settings/modules").await.text().await.unwrap();
    assert!(page.contains(r#"value="learning" checked"#));
    assert!(!page.contains(r#"value="engage" checked"#));
    // globex is untouched.
    let globex = app.org_id("globex").await;
    let (n,): (i64,) = sqlx::query_as("select count(*) from org_modules where org_id = $1 and enabled")
        .bind(globex)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(n, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_module_forms_change_nothing() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let s = app.login("admin@acme.test").await;
    let acme = app.org_id("acme").await;
    let before: (i64,) = sqlx::query_as("select count(*) from audit_log where org_id = $1")
        .bind(acme)
        .fetch_one(app.pool())
        .await
        .unwrap();
    let r = s.post_form("/orgs/acme/settings/modules", &[("module", "engage"), ("module", "bitcoin")]).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("Unknown module"));
    let r = s.post_form("/orgs/acme/settings/modules", &[("surprise", "1")]).await;
    assert_eq!(r.status(), 400);
    let after: (i64,) = sqlx::query_as("select count(*) from audit_log where org_id = $1")
        .bind(acme)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(before, after);
    let (n,): (i64,) = sqlx::query_as("select count(*) from org_modules where org_id = $1 and enabled")
        .bind(acme)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(n, 6, "all modules still on");
    // A member cannot change modules.
    let m = app.login("member@acme.test").await;
    assert_eq!(m.post_form("/orgs/acme/settings/modules", &[("module", "engage")]).await.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_data_export_off_existing_files_stay_listed_downloadable_and_deletable_and_nothing_new_starts() {
    let app = TestApp::spawn().await;
    let s = app.login("admin@acme.test").await;
    // Two completed exports before the switch.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let frag = s.htmx_post("/orgs/acme/exports").await.text().await.unwrap();
        let id = frag.split("data-export-id=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
        assert_eq!(app.wait_for_run(&id, std::time::Duration::from_secs(60)).await.status.as_str(), "completed");
        ids.push(id);
    }
    let link = r#"href="/orgs/acme/settings/backups""#;
    let home = s.get("/").await.text().await.unwrap();
    assert_eq!(home.matches(link).count(), 2, "navigation and start page link it while it is on");
    // Everything but Data Export stays on.
    let others = ["engage", "operations", "foundation", "learning", "alumni"].map(|m| ("module", m));
    assert_eq!(s.post_form("/orgs/acme/settings/modules", &others).await.status(), 303);
    let home = s.get("/").await.text().await.unwrap();
    assert!(home.contains("Backups &amp; Export (off)"), "the navigation says it is off");
    let page = s.get("/orgs/acme/settings/backups").await;
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("data-export-off") && !page.contains("Trigger export"), "no new export can start");
    for id in &ids {
        assert!(page.contains(id.as_str()), "the export {id} is still listed");
    }
    assert!(!page.contains("/verify\""), "no verification starts while it is off");
    // Download and delete still work; trigger and verify do not.
    let d = s.get(&format!("/orgs/acme/exports/{}/download", ids[0])).await;
    assert_eq!(d.status(), 303);
    assert_eq!(s.post_form(&format!("/orgs/acme/exports/{}/delete", ids[1]), &[]).await.status(), 303);
    assert_eq!(s.post_form("/orgs/acme/exports", &[]).await.status(), 404);
    assert_eq!(s.post_form(&format!("/orgs/acme/exports/{}/verify", ids[0]), &[]).await.status(), 404);
    // The API the same way.
    let api = crate::helpers::api(&app, &app.token("admin@acme.test").await);
    let list: serde_json::Value = api.get("/orgs/acme/exports").await.json().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["status"], "deleted");
    assert_eq!(api.get(&format!("/orgs/acme/exports/{}/download", ids[0])).await.status(), 303);
    assert_eq!(api.post("/orgs/acme/exports").await.status(), 404);
    // globex's admin still sees globex's, on.
    let g = app.login("admin@globex.test").await;
    let home = g.get("/").await.text().await.unwrap();
    assert!(home.contains(r#"href="/orgs/globex/settings/backups""#) && !home.contains("(off)"));
}
