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
async fn backups_and_export_is_linked_only_while_data_export_is_on() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let s = app.login("admin@acme.test").await;
    let link = r#"href="/orgs/acme/settings/backups""#;
    let home = s.get("/").await.text().await.unwrap();
    assert_eq!(home.matches(link).count(), 2, "navigation and start page link it while it is on");
    // Everything but Data Export stays on.
    let others = ["engage", "operations", "foundation", "learning", "alumni"].map(|m| ("module", m));
    assert_eq!(s.post_form("/orgs/acme/settings/modules", &others).await.status(), 303);
    for page in ["/", "/orgs/acme/settings/modules", "/me/privacy"] {
        let body = s.get(page).await.text().await.unwrap();
        assert!(!body.contains(link), "{page} links to a page that answers 404");
    }
    assert_eq!(s.get("/orgs/acme/settings/backups").await.status(), 404);
    // globex's admin still sees globex's.
    let g = app.login("admin@globex.test").await;
    assert!(g.get("/").await.text().await.unwrap().contains(r#"href="/orgs/globex/settings/backups""#));
}
