//! Every org-scoped table is a section or excluded with a reason; every column of
//! every table a file writes is classified; tenants never mix.

use std::{io::Read, time::Duration};

use data_export::{
    orgs::{
        columns::{self, ALSO_WRITTEN, REGISTRY},
        sections::{EXCLUDED, SECTIONS},
    },
    snapshot::sink::Sink,
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

/// The registry (src/orgs/columns.rs) and the migrated schema agree both ways: every
/// column of every section table (and of the tables whose rows a file writes) is
/// classified, and every classified column exists. A migration that adds a column
/// without classifying it fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_column_of_every_written_table_is_classified() {
    let (pool, _) = fresh_db().await;
    let tables: Vec<&str> = SECTIONS.iter().map(|s| s.table).chain(ALSO_WRITTEN.iter().copied()).collect();
    let schema: Vec<(String, String)> = sqlx::query_as(
        "select table_name::text, column_name::text from information_schema.columns
         where table_schema = 'public' and table_name = any($1) order by 1, ordinal_position",
    )
    .bind(&tables)
    .fetch_all(&pool)
    .await
    .unwrap();
    let unclassified: Vec<String> = schema
        .iter()
        .filter(|(t, c)| !REGISTRY.iter().any(|r| r.table == t && r.class(c).is_some()))
        .map(|(t, c)| format!("{t}.{c}"))
        .collect();
    assert!(unclassified.is_empty(), "columns not classified in src/orgs/columns.rs: {unclassified:?}");
    let mut gone = Vec::new();
    for table in REGISTRY {
        assert!(tables.contains(&table.table), "{} is classified but is not a section", table.table);
        for (column, _) in table.columns {
            if !schema.iter().any(|(t, c)| t == table.table && c == column) {
                gone.push(format!("{}.{column}", table.table));
            }
        }
    }
    assert!(gone.is_empty(), "classified columns that the schema no longer has: {gone:?}");
    let (n, m, exported, secret, pseudonymised) = columns::figures();
    assert_eq!(n, schema.len());
    assert_eq!(m, tables.len());
    assert!(secret >= 1 && pseudonymised >= 1);
    println!(
        "{n} columns in {m} tables classified: {exported} exported, {secret} secret, {pseudonymised} pseudonymised"
    );
}

/// Columns a migration could add without classifying them (in this test's own
/// database) reach neither the org snapshot nor a member's data-subject file, while
/// the tables' classified columns do: the export fails closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_the_registry_does_not_classify_is_never_written() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let planted = [
        ("regions", "api_key"),
        ("documents", "otp_secret"),
        ("user_profiles", "recovery_codes"),
        ("election_votes", "receipt"),
        ("memberships", "password_hash"),
    ];
    for (table, column) in planted {
        assert!(columns::of(table).class(column).is_none(), "{table}.{column} is not classified");
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
    assert!(!text.contains("planted-"), "a planted value is in the org snapshot");

    // The member's own file reads through the same registry.
    let member: i64 = sqlx::query_scalar("select id from users where email = 'member@acme.test'")
        .fetch_one(app.pool())
        .await
        .unwrap();
    let snapshot = data_export::privacy::open_snapshot(app.pool(), member).await.unwrap();
    let file = app.storage_dir.join("subject.json.gz");
    let upload = Sink::File(file.clone()).start().await.unwrap();
    snapshot.write("subject", upload, &tokio::sync::watch::channel(0).0).await.unwrap();
    let mut subject = String::new();
    flate2::read::GzDecoder::new(&std::fs::read(&file).unwrap()[..]).read_to_string(&mut subject).unwrap();
    let subject: Value = serde_json::from_str(&subject).unwrap();
    let rows = |t: &str| subject["sections"][t].as_array().unwrap().clone();
    assert!(!rows("memberships").is_empty() && !rows("user_profiles").is_empty(), "the member has rows");
    assert!(!subject.to_string().contains("planted-"), "a planted value is in the data-subject file");
    println!("unclassified columns: {} planted, 0 written to the org snapshot or the data-subject file", planted.len());
}

/// Six acme members vote in a secret and in an open election, casting in the order
/// of their user ids (so cast order, stored vote ids and voter ids all agree), with
/// choices whose order is not that order. The org snapshot keeps who took part, and
/// for the open ballot who chose what; for the secret ballot nothing links a choice to
/// a voter: no voter, no time, and rows and ids in choice order only, the rows of one
/// choice identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_ballot_links_no_choice_to_a_voter_in_the_org_snapshot() {
    let app = TestApp::spawn_with(Options { workers: false, ..Default::default() }).await;
    let acme = app.org_id("acme").await;
    let pool = app.pool();
    let voters: Vec<i64> =
        sqlx::query_scalar("select user_id from memberships where org_id = $1 order by user_id limit 6")
            .bind(acme)
            .fetch_all(pool)
            .await
            .unwrap();
    let mut elections = Vec::new();
    for (title, ballot) in [("Secret test ballot", "secret"), ("Open test ballot", "open")] {
        let id: i64 = sqlx::query_scalar(
            "insert into elections (org_id, title, opens_at, closes_at, ballot)
             values ($1, $2, '2031-05-01', '2031-05-31', $3) returning id",
        )
        .bind(acme)
        .bind(title)
        .bind(ballot)
        .fetch_one(pool)
        .await
        .unwrap();
        elections.push(id);
    }
    // Cast order = voter id order; the choices in that order are not sorted.
    let choices = ["Zora", "Abel", "Zora", "Mina", "Abel", "Zora"];
    for (&election, minute_base) in elections.iter().zip([10, 40]) {
        for (i, (voter, choice)) in voters.iter().zip(choices).enumerate() {
            sqlx::query(
                "insert into election_votes (org_id, election_id, voter_user_id, choice, cast_at)
                 values ($1, $2, $3, $4, make_timestamptz(2031, 5, 7, 9, $5, 17.123456, 'UTC'))",
            )
            .bind(acme)
            .bind(election)
            .bind(voter)
            .bind(choice)
            .bind(minute_base + i as i32)
            .execute(pool)
            .await
            .unwrap();
        }
    }
    let (secret, open) = (elections[0], elections[1]);
    let stored: Vec<i64> = sqlx::query_scalar("select id from election_votes where election_id = $1 order by id")
        .bind(secret)
        .fetch_all(pool)
        .await
        .unwrap();

    let text = app.export_acme_to_file("ballots.json.gz");
    let snap: Value = serde_json::from_str(&text).unwrap();
    let votes = snap["sections"]["election_votes"].as_array().unwrap();
    let of = |e: i64| -> Vec<&Value> { votes.iter().filter(|v| v["election_id"] == e).collect() };

    // The secret ballot: the choices are all there, with no voter and no time.
    let secret_votes = of(secret);
    assert_eq!(secret_votes.len(), 6);
    for v in &secret_votes {
        assert!(v["voter_user_id"].is_null() && v["cast_at"].is_null(), "secret vote with a voter or time: {v}");
    }
    // Rows (and ids) follow the choices, not the casting: the choices in file order
    // are sorted, where in cast order they were not.
    let in_file: Vec<&str> = secret_votes.iter().map(|v| v["choice"].as_str().unwrap()).collect();
    let mut sorted = in_file.clone();
    sorted.sort();
    assert_eq!(in_file, sorted, "secret votes in choice order");
    assert_ne!(in_file, choices, "the file's order is not the cast order");
    let ids: Vec<i64> = secret_votes.iter().map(|v| v["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids follow the file's (choice) order: {ids:?}");
    assert!(ids.iter().all(|id| !stored.contains(id)), "a stored vote id was written: {ids:?} vs {stored:?}");
    // Votes for one choice are the same row but for the id: nothing tells them apart.
    for choice in ["Abel", "Zora"] {
        let rows: Vec<Value> = secret_votes
            .iter()
            .filter(|v| v["choice"] == choice)
            .map(|v| {
                let mut v = (*v).clone();
                v.as_object_mut().unwrap().remove("id");
                v
            })
            .collect();
        assert!(rows.len() >= 2 && rows.windows(2).all(|w| w[0] == w[1]), "{choice}: {rows:?}");
    }
    // No time of a secret vote is anywhere in the file (to join with audit entries,
    // sign-ins or participation).
    assert!(!text.contains("2031-05-07T09:1"), "a secret vote's time is in the file");

    // The open ballot keeps its voters and times.
    let open_votes = of(open);
    assert_eq!(open_votes.len(), 6);
    for v in &open_votes {
        let voter = v["voter_user_id"].as_i64().expect("open ballot keeps its voter");
        let i = voters.iter().position(|x| *x == voter).unwrap();
        assert_eq!(v["choice"], choices[i]);
        assert!(v["cast_at"].as_str().unwrap().starts_with("2031-05-07T09:4"), "{v}");
    }

    // Who took part is exported, for both, without a time and apart from the votes.
    let participants = snap["sections"]["election_participants"].as_array().unwrap();
    for e in [secret, open] {
        let mut who: Vec<i64> =
            participants.iter().filter(|p| p["election_id"] == e).map(|p| p["user_id"].as_i64().unwrap()).collect();
        who.sort();
        assert_eq!(who, voters, "participants of election {e}");
    }
    assert!(participants.iter().all(|p| p.as_object().unwrap().len() == 4), "id, org_id, election_id, user_id only");
    assert_eq!(snap["counts"]["election_participants"].as_u64().unwrap() as usize, participants.len());
    let elections_rows = snap["sections"]["elections"].as_array().unwrap();
    let ballot_of = |e: i64| elections_rows.iter().find(|r| r["id"] == e).unwrap()["ballot"].clone();
    assert_eq!((ballot_of(secret), ballot_of(open)), ("secret".into(), "open".into()));
    // No audit entry speaks of a vote.
    let audit = serde_json::to_string(&snap["sections"]["audit_log"]).unwrap();
    assert!(!audit.contains("vote") && !audit.contains("ballot"), "an audit entry about votes");
    println!(
        "ballot secrecy: secret ballot 6 votes, 0 voters and 0 cast times written, ids in choice order; open ballot 6 of 6 voters kept; {} participants exported",
        participants.iter().filter(|p| p["election_id"] == secret || p["election_id"] == open).count()
    );
}
