//! Every org-scoped table is a section or excluded with a reason; tenants never mix.

use std::time::Duration;

use data_export::{
    orgs::sections::{EXCLUDED, SECTIONS},
    snapshot::SECRET_COLUMNS,
};
use serde_json::Value;

use crate::{exports::fetch_snapshot, helpers::*};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_org_scoped_table_is_a_section_or_excluded() {
    let (pool, _) = fresh_db().await;
    let tables: Vec<(String,)> = sqlx::query_as(
        "select table_name::text from information_schema.columns
         where table_schema = 'public' and column_name = 'org_id' order by 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(tables.len() > 20, "the migrated schema has the domain tables");
    let mut missing = Vec::new();
    for (t,) in &tables {
        let listed =
            SECTIONS.iter().any(|s| s.table == t) || EXCLUDED.iter().any(|(e, reason)| e == t && !reason.is_empty());
        if !listed {
            missing.push(t.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "org-scoped tables that are neither a section nor excluded (src/orgs/sections.rs): {missing:?}"
    );
    // And nothing is listed that does not exist.
    for s in SECTIONS {
        assert!(tables.iter().any(|(t,)| t == s.table), "section {} has no table", s.table);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_of_acme_holds_nothing_of_globex_and_no_secrets() {
    let app = TestApp::spawn().await;
    let api = api(&app, &app.token("admin@acme.test").await);
    let id = api.post("/orgs/acme/exports").await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_for_run(&id, Duration::from_secs(60)).await.status, "completed");
    let location =
        api.get(&format!("/orgs/acme/exports/{id}/download")).await.headers()["location"].to_str().unwrap().to_string();
    let (bytes, snap) = fetch_snapshot(&app, &location).await;
    let acme = app.org_id("acme").await;
    let mut rows = 0;
    for (name, section) in snap["sections"].as_object().unwrap() {
        let Some(list) = section.as_array() else {
            continue;
        };
        for row in list {
            assert_eq!(row["org_id"], acme, "{name} row of another org: {row}");
            rows += 1;
        }
    }
    assert!(rows > 100);
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text).unwrap();
    assert!(!text.contains("globex"), "no trace of globex");
    assert!(!text.contains("$argon2"), "no password hash");
}

/// A secret-named column added to section tables (in this test's own database)
/// never reaches the file, while the tables' other columns do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_column_added_to_a_section_table_is_left_out() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let planted = [("regions", "secret"), ("documents", "credentials"), ("user_profiles", "token_hash")];
    for (table, column) in planted {
        assert!(SECRET_COLUMNS.contains(&column));
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "alter table {table} add column {column} text not null default 'planted-{column}-value'"
        )))
        .execute(app.pool())
        .await
        .unwrap();
    }
    let text = app.export_acme_to_file("secrets.json.gz");
    let snap: Value = serde_json::from_str(&text).unwrap();
    for (table, column) in planted {
        let rows = snap["sections"][table].as_array().unwrap();
        assert!(!rows.is_empty(), "{table} has rows to leak from");
        for row in rows {
            assert!(row.get(column).is_none(), "{table}.{column} leaked: {row}");
            assert!(row.get("id").is_some() && row.get("org_id").is_some(), "{table} keeps its other columns");
        }
    }
    assert!(!text.contains("planted-"), "a planted value is in the file");
}
