//! Tables for analysis (issue 32): a snapshot converted into a zip of CSV or Parquet
//! tables, read back with readers this project did not write (the `csv` crate's
//! reader, the `parquet` crate's), through the CLI, the Export History and the API;
//! the zips' removal with their export (Delete, the pruner); bad input.

use std::{collections::HashMap, io::Read, time::Duration};

use data_export::tables::types::{self, ColType};
use parquet::{
    file::reader::{FileReader, SerializedFileReader},
    record::Field,
};
use serde_json::Value;

use crate::helpers::{TestApp, api};

const WAIT: Duration = Duration::from_secs(60);

/// Text that a CSV writer must quote and a reader must give back whole.
const TRICKY: &str = "Comma, \"quoted\" and\r\nnew lines; ünïcödé ✓ 日本 \u{1F600}";

/// The entries of a zip, by name.
fn unzip(bytes: &[u8]) -> HashMap<String, Vec<u8>> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a zip");
    let mut out = HashMap::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).unwrap();
        let mut body = Vec::new();
        f.read_to_end(&mut body).unwrap();
        out.insert(f.name().unwrap().to_string(), body);
    }
    out
}

/// Puts a row of tricky text into acme (a member's bio and a forum post's title), so
/// that the export holds it.
async fn insert_tricky(app: &TestApp) -> (i64, i64) {
    let acme = app.org_id("acme").await;
    let (profile,): (i64,) = sqlx::query_as(
        "update user_profiles set bio = $2 where id = (select min(id) from user_profiles where org_id = $1) returning id",
    )
    .bind(acme)
    .bind(TRICKY)
    .fetch_one(app.pool())
    .await
    .unwrap();
    let (post,): (i64,) = sqlx::query_as(
        "update forum_posts set title = $2, pinned = true where id = (select min(id) from forum_posts where org_id = $1) returning id",
    )
    .bind(acme)
    .bind(TRICKY)
    .fetch_one(app.pool())
    .await
    .unwrap();
    (profile, post)
}

/// One value of each column type in acme's data, as PostgreSQL has it.
struct Known {
    region: (i64, i64),       // id, created_at (micros)
    membership: (i64, i32),   // id, joined_on (days since 1970)
    invoice_line: (i64, i32), // id, quantity (integer)
    post: (i64, bool),        // id, pinned
    saved_view: (i64, Value), // id, filters (jsonb)
    profile: (i64, String),   // id, bio
}

async fn known(app: &TestApp, profile: i64, post: i64) -> Known {
    let acme = app.org_id("acme").await;
    let region: (i64, i64) = sqlx::query_as(
        "select id, (extract(epoch from created_at) * 1000000)::bigint from regions where org_id = $1 order by id limit 1",
    )
    .bind(acme)
    .fetch_one(app.pool())
    .await
    .unwrap();
    let membership: (i64, i32) = sqlx::query_as(
        "select id, (joined_on - date '1970-01-01')::int from memberships where org_id = $1 order by id limit 1",
    )
    .bind(acme)
    .fetch_one(app.pool())
    .await
    .unwrap();
    let invoice_line: (i64, i32) =
        sqlx::query_as("select id, quantity from invoice_lines where org_id = $1 order by id limit 1")
            .bind(acme)
            .fetch_one(app.pool())
            .await
            .unwrap();
    let saved_view: (i64, Value) =
        sqlx::query_as("select id, filters from saved_views where org_id = $1 order by id limit 1")
            .bind(acme)
            .fetch_one(app.pool())
            .await
            .unwrap();
    Known { region, membership, invoice_line, post: (post, true), saved_view, profile: (profile, TRICKY.to_string()) }
}

/// A CSV table: its header and its rows keyed by the first column (`id`).
fn read_csv(body: &[u8]) -> (Vec<String>, HashMap<String, csv::StringRecord>, usize) {
    let mut r = csv::ReaderBuilder::new().has_headers(true).from_reader(body);
    let header: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    let mut rows = HashMap::new();
    let mut n = 0;
    for rec in r.records() {
        let rec = rec.expect("a valid CSV record");
        assert_eq!(rec.len(), header.len(), "every record has every column");
        rows.insert(rec[0].to_string(), rec);
        n += 1;
    }
    (header, rows, n)
}

/// A Parquet table: its column names and physical types, and its rows keyed by `id`.
/// A Parquet row: its columns' names and values.
type ParquetRow = Vec<(String, Field)>;

fn read_parquet(body: Vec<u8>) -> (Vec<(String, String)>, HashMap<i64, ParquetRow>, i64) {
    let reader = SerializedFileReader::new(bytes::Bytes::from(body)).expect("a Parquet file");
    let meta = reader.metadata();
    let schema = meta.file_metadata().schema_descr();
    let columns: Vec<(String, String)> =
        schema.columns().iter().map(|c| (c.name().to_string(), format!("{:?}", c.physical_type()))).collect();
    let rows_declared = meta.file_metadata().num_rows();
    let mut rows = HashMap::new();
    for row in reader.get_row_iter(None).unwrap() {
        let row = row.unwrap();
        let fields: Vec<(String, Field)> = row.get_column_iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let id = match &fields[0].1 {
            Field::Long(n) => *n,
            other => panic!("id is {other:?}"),
        };
        rows.insert(id, fields);
    }
    (columns, rows, rows_declared)
}

fn field<'a>(row: &'a [(String, Field)], name: &str) -> &'a Field {
    &row.iter().find(|(k, _)| k == name).unwrap_or_else(|| panic!("no column {name}")).1
}

fn physical(ty: ColType) -> &'static str {
    match ty {
        ColType::Int2 | ColType::Int4 | ColType::Date => "INT32",
        ColType::Int8 | ColType::TimestampTz => "INT64",
        ColType::Bool => "BOOLEAN",
        ColType::Text | ColType::Jsonb | ColType::Numeric => "BYTE_ARRAY",
    }
}

/// Checks a zip of tables against the snapshot it came from and the database.
fn check_zip(format: &str, zip: &[u8], snapshot: &Value, sha256: &str, k: &Known) {
    let files = unzip(zip);
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    assert_eq!(manifest["table_format"], format);
    assert_eq!(manifest["source"]["export_id"], snapshot["export_id"]);
    assert_eq!(manifest["source"]["snapshot_at"], snapshot["snapshot_at"]);
    assert_eq!(manifest["source"]["sha256"], sha256);
    assert_eq!(manifest["counts"], snapshot["counts"], "one table per section, each with its rows");
    assert!(String::from_utf8_lossy(&files["README.txt"]).contains(if format == "csv" { "UTF-8" } else { "duckdb" }));
    let counts = snapshot["counts"].as_object().unwrap();
    assert!(counts.len() >= 20, "every module is on in the demo org");
    for (section, n) in counts {
        let table = types::of(section).unwrap();
        let names: Vec<&str> = table.columns.iter().map(|(n, _)| *n).collect();
        let body = files.get(&format!("{section}.{format}")).unwrap_or_else(|| panic!("no {section}.{format}"));
        let mtable = manifest["tables"].as_array().unwrap().iter().find(|t| t["name"] == section.as_str()).unwrap();
        assert_eq!(mtable["rows"], *n);
        assert_eq!(mtable["columns"].as_array().unwrap().len(), names.len());
        if format == "csv" {
            let (header, _, rows) = read_csv(body);
            assert_eq!(header, names, "{section}: the columns in catalog order");
            assert_eq!(rows as u64, n.as_u64().unwrap(), "{section}: rows");
        } else {
            let (columns, rows, declared) = read_parquet(body.clone());
            let want: Vec<(String, String)> =
                table.columns.iter().map(|(n, t)| (n.to_string(), physical(*t).to_string())).collect();
            assert_eq!(columns, want, "{section}: typed columns in catalog order");
            assert_eq!(declared as u64, n.as_u64().unwrap(), "{section}: rows");
            assert_eq!(rows.len() as u64, n.as_u64().unwrap(), "{section}: rows read");
        }
    }
    // One value of every column type, and the tricky text.
    if format == "csv" {
        let get = |section: &str, id: i64, column: &str| -> String {
            let (header, rows, _) = read_csv(&files[&format!("{section}.csv")]);
            let i = header.iter().position(|h| h == column).unwrap();
            rows[&id.to_string()][i].to_string()
        };
        let created = chrono::DateTime::from_timestamp_micros(k.region.1).unwrap();
        let text = get("regions", k.region.0, "created_at");
        assert!(text.ends_with('Z'), "RFC 3339 in UTC: {text}");
        assert_eq!(chrono::DateTime::parse_from_rfc3339(&text).unwrap(), created);
        let joined =
            chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::TimeDelta::days(k.membership.1.into());
        assert_eq!(get("memberships", k.membership.0, "joined_on"), joined.format("%Y-%m-%d").to_string());
        assert_eq!(get("invoice_lines", k.invoice_line.0, "quantity"), k.invoice_line.1.to_string());
        assert_eq!(get("forum_posts", k.post.0, "pinned"), "true");
        assert_eq!(get("forum_posts", k.post.0, "title"), TRICKY);
        let filters: Value = serde_json::from_str(&get("saved_views", k.saved_view.0, "filters")).unwrap();
        assert_eq!(filters, k.saved_view.1, "jsonb as JSON text");
        assert_eq!(get("user_profiles", k.profile.0, "bio"), k.profile.1);
        // Null is an empty field.
        let (header, rows, _) = read_csv(&files["organization.csv"]);
        assert_eq!(header, ["id", "slug", "name", "bucket", "created_at"]);
        assert_eq!(rows.len(), 1);
    } else {
        let get = |section: &str, id: i64, column: &str| -> Field {
            let (_, rows, _) = read_parquet(files[&format!("{section}.parquet")].clone());
            field(&rows[&id], column).clone()
        };
        assert_eq!(get("regions", k.region.0, "created_at"), Field::TimestampMicros(k.region.1));
        assert_eq!(get("memberships", k.membership.0, "joined_on"), Field::Date(k.membership.1));
        assert_eq!(get("invoice_lines", k.invoice_line.0, "quantity"), Field::Int(k.invoice_line.1));
        assert_eq!(get("forum_posts", k.post.0, "pinned"), Field::Bool(true));
        assert_eq!(get("forum_posts", k.post.0, "title"), Field::Str(TRICKY.into()));
        let filters = match get("saved_views", k.saved_view.0, "filters") {
            Field::Str(s) => s,
            Field::Bytes(b) => String::from_utf8(b.data().to_vec()).unwrap(),
            other => panic!("filters is {other:?}"),
        };
        assert_eq!(serde_json::from_str::<Value>(&filters).unwrap(), k.saved_view.1);
        assert_eq!(get("user_profiles", k.profile.0, "bio"), Field::Str(k.profile.1.clone()));
        assert_eq!(get("regions", k.region.0, "id"), Field::Long(k.region.0));
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_converts_a_snapshot_both_ways_and_readers_we_did_not_write_read_it() {
    let app = TestApp::spawn().await;
    let (profile, post) = insert_tricky(&app).await;
    let k = known(&app, profile, post).await;
    let text = app.export_acme_to_file("acme.json.gz");
    let snapshot: Value = serde_json::from_str(&text).unwrap();
    let file = app.storage_dir.join("acme.json.gz");
    let sha = sha256_hex(&std::fs::read(&file).unwrap());
    for format in ["csv", "parquet"] {
        let out = app.storage_dir.join(format!("acme.{format}.zip"));
        let run =
            app.command().args(["convert"]).arg(&file).args(["--to", format, "--out"]).arg(&out).output().unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let line: Value = serde_json::from_slice(&run.stdout).unwrap();
        assert_eq!(line["summary"]["counts"], snapshot["counts"]);
        check_zip(format, &std::fs::read(&out).unwrap(), &snapshot, &sha, &k);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_to_convert_is_refused_and_leaves_no_file() {
    let app = TestApp::spawn_with(crate::helpers::Options { workers: false, ..Default::default() }).await;
    app.export_acme_to_file("good.json.gz");
    let dir = app.storage_dir.join("convert");
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read(app.storage_dir.join("good.json.gz")).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let not_gzip = write("not.json.gz", b"{\"format\":\"data-export/snapshot\"}");
    let truncated = write("truncated.json.gz", &good[..good.len() / 2]);
    let other = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, br#"{"format":"something-else","version":1}"#).unwrap();
        write("other.json.gz", &e.finish().unwrap())
    };
    let good = write("good.json.gz", &good);
    let out = dir.join("out.zip");
    let cases: Vec<(Vec<std::ffi::OsString>, &str)> = vec![
        (
            vec![not_gzip.into(), "--to".into(), "csv".into(), "--out".into(), out.clone().into()],
            "not a whole gzip file",
        ),
        (
            vec![truncated.into(), "--to".into(), "parquet".into(), "--out".into(), out.clone().into()],
            "not a whole gzip file",
        ),
        (vec![other.into(), "--to".into(), "csv".into(), "--out".into(), out.clone().into()], "not an org snapshot"),
        (
            vec![good.clone().into(), "--to".into(), "xlsx".into(), "--out".into(), out.clone().into()],
            "\"csv\" or \"parquet\"",
        ),
        (
            vec![dir.join("missing.json.gz").into(), "--to".into(), "csv".into(), "--out".into(), out.clone().into()],
            "cannot open",
        ),
        (
            vec![good.clone().into(), "--to".into(), "csv".into(), "--out".into(), dir.join("no/such/dir.zip").into()],
            "cannot write in",
        ),
        (vec![good.clone().into(), "--to".into(), "csv".into(), "--out".into(), dir.clone().into()], "is a directory"),
    ];
    for (args, expect) in cases {
        let run = app.command().arg("convert").args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?} left {}", out.display());
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.contains(".part"))
            .collect();
        assert!(left.is_empty(), "{args:?} left {left:?}");
    }
    // An existing zip is replaced only by a whole one: a failed conversion keeps it.
    std::fs::write(&out, b"earlier").unwrap();
    let run = app
        .command()
        .arg("convert")
        .arg(dir.join("truncated.json.gz"))
        .args(["--to", "csv", "--out"])
        .arg(&out)
        .output();
    assert!(!run.unwrap().status.success());
    assert_eq!(std::fs::read(&out).unwrap(), b"earlier");
}

/// The org's export of acme, completed, by the API.
async fn completed_export(app: &TestApp, client: &crate::helpers::Api) -> String {
    let resp = client.post("/orgs/acme/exports").await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_for_run(&id, WAIT).await.status, "completed");
    id
}

async fn wait_tables(client: &crate::helpers::Api, export: &str, format: &str) -> Value {
    let started = std::time::Instant::now();
    loop {
        let resp = client.get(&format!("/orgs/acme/exports/{export}/tables/{format}")).await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        if body["status"] != "pending" && body["status"] != "running" {
            return body;
        }
        assert!(started.elapsed() < WAIT, "tables still {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn tables_jobs(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from apalis.jobs where job_type = 'tables'")
        .fetch_one(app.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_history_and_the_api_make_download_and_delete_an_exports_tables() {
    let app = TestApp::spawn().await;
    let (profile, post) = insert_tricky(&app).await;
    let k = known(&app, profile, post).await;
    let admin = api(&app, &app.token("admin@acme.test").await);
    let export = completed_export(&app, &admin).await;
    let run = data_export::exports::runs::get_any(app.pool(), &export).await.unwrap().unwrap();
    let export_key = run.object_key.clone().unwrap();
    let base = format!("/orgs/acme/exports/{export}/tables");

    // Bad requests change nothing.
    for (body, expect) in [
        (serde_json::json!({ "format": "xlsx" }), "\"csv\" or \"parquet\""),
        (serde_json::json!({}), "format"),
        (serde_json::json!({ "format": "csv", "extra": 1 }), "format"),
    ] {
        let resp = admin.post_json(&base, &body).await;
        assert_eq!(resp.status(), 400, "{body}");
        let err: Value = resp.json().await.unwrap();
        assert!(err["message"].as_str().unwrap().contains(expect), "{err}");
    }
    assert_eq!(admin.post(&base).await.status(), 400, "no body");
    assert_eq!(admin.get(&format!("{base}/xlsx")).await.status(), 400);
    assert_eq!(admin.get(&format!("{base}/csv")).await.status(), 404, "none asked for yet");
    assert_eq!(admin.get(&format!("{base}/csv/download")).await.status(), 409);
    assert_eq!(tables_jobs(&app).await, 0);

    // CSV by the API: a second request while it is made queues nothing more.
    let first = admin.post_json(&base, &serde_json::json!({ "format": "csv" })).await;
    assert_eq!(first.status(), 202);
    let second = admin.post_json(&base, &serde_json::json!({ "format": "csv" })).await;
    assert_eq!(second.status(), 202);
    assert_eq!(tables_jobs(&app).await, 1, "one job for two clicks");
    let done = wait_tables(&admin, &export, "csv").await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"], 1.0);
    // Done: asking again gives the same zip, no new job.
    assert_eq!(admin.post_json(&base, &serde_json::json!({ "format": "csv" })).await.status(), 202);
    assert_eq!(tables_jobs(&app).await, 1);

    // Parquet from the Export History.
    let page = app.login("admin@acme.test").await;
    let history = page.get("/orgs/acme/settings/backups").await.text().await.unwrap();
    assert!(history.contains("Download as spreadsheets (CSV)") && history.contains("Download as Parquet"));
    let resp = page.post_form(&format!("{base}/parquet"), &[]).await;
    assert_eq!(resp.status(), 303);
    let resp = page.post_form(&format!("{base}/parquet"), &[]).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(tables_jobs(&app).await, 2, "the second click queued nothing");
    assert_eq!(wait_tables(&admin, &export, "parquet").await["status"], "completed");
    let history = page.get("/orgs/acme/settings/backups").await.text().await.unwrap();
    assert!(history.contains(&format!("{base}/parquet/download")), "the history links the zip");
    // The row's own poll reads its tables with it.
    let row = page.htmx_get(&format!("/orgs/acme/exports/{export}/row")).await.text().await.unwrap();
    assert!(
        row.contains(&format!("{base}/parquet/download")) && row.contains(&format!("{base}/csv/download")),
        "{row}"
    );

    // Both zips sit beside the export's file and download through presigned URLs.
    let objects = app.objects("org-acme").await;
    let stem = export_key.strip_suffix(".json.gz").unwrap();
    for format in ["csv", "parquet"] {
        assert!(objects.contains(&format!("{stem}.{format}.zip")), "{objects:?}");
    }
    let file = reqwest::get(
        admin.get(&format!("{base}/csv/download")).await.headers()["location"].to_str().unwrap().to_string(),
    )
    .await
    .unwrap();
    let web = page.get(&format!("{base}/parquet/download")).await;
    assert_eq!(web.status(), 303);
    let location = web.headers()["location"].to_str().unwrap().to_string();
    assert!(location.contains("X-Amz-Expires=900"), "{location}");
    let csv_zip = file.bytes().await.unwrap();
    let parquet_zip = reqwest::get(location).await.unwrap().bytes().await.unwrap();
    let snapshot = {
        let body = app.state.storage.read("org-acme", &export_key).await.unwrap().unwrap();
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut Box::pin(body), &mut bytes).await.unwrap();
        bytes
    };
    let mut text = String::new();
    flate2::read::GzDecoder::new(&snapshot[..]).read_to_string(&mut text).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    check_zip("csv", &csv_zip, &doc, &sha256_hex(&snapshot), &k);
    check_zip("parquet", &parquet_zip, &doc, &sha256_hex(&snapshot), &k);
    assert_eq!(app.audits("export.tables_requested").await.len(), 2);
    assert_eq!(app.audits("export.tables_downloaded").await.len(), 2);

    // Tenant isolation: globex's admin and acme's member see nothing of it.
    let globex = api(&app, &app.token("admin@globex.test").await);
    assert_eq!(globex.get(&format!("{base}/csv")).await.status(), 404);
    assert_eq!(globex.get(&format!("{base}/csv/download")).await.status(), 404);
    let member = api(&app, &app.token("member@acme.test").await);
    assert_eq!(member.get(&format!("{base}/csv/download")).await.status(), 403);
    let other = completed_export_of(&app, &globex, "globex").await;
    let resp =
        admin.post_json(&format!("/orgs/acme/exports/{other}/tables"), &serde_json::json!({ "format": "csv" })).await;
    assert_eq!(resp.status(), 404, "another org's export");

    // Deleting the export deletes its tables.
    assert_eq!(admin.delete(&format!("/orgs/acme/exports/{export}")).await.status(), 204);
    let objects = app.objects("org-acme").await;
    assert!(!objects.iter().any(|o| o.starts_with(stem)), "{objects:?}");
    let left: i64 = sqlx::query_scalar("select count(*) from export_tables where export_id = $1")
        .bind(&export)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(admin.post_json(&base, &serde_json::json!({ "format": "csv" })).await.status(), 409, "deleted");
}

async fn completed_export_of(app: &TestApp, client: &crate::helpers::Api, slug: &str) -> String {
    let resp = client.post(&format!("/orgs/{slug}/exports")).await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_for_run(&id, WAIT).await.status, "completed");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_conversion_says_why_and_can_be_retried_and_the_pruner_removes_tables() {
    let app = TestApp::spawn().await;
    let admin = api(&app, &app.token("admin@acme.test").await);
    let export = completed_export(&app, &admin).await;
    let run = data_export::exports::runs::get_any(app.pool(), &export).await.unwrap().unwrap();
    let key = run.object_key.clone().unwrap();
    let base = format!("/orgs/acme/exports/{export}/tables");
    // The file in the bucket is damaged: its SHA-256 no longer matches the run's.
    let good = {
        let body = app.state.storage.read("org-acme", &key).await.unwrap().unwrap();
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut Box::pin(body), &mut bytes).await.unwrap();
        bytes
    };
    let put = |bytes: Vec<u8>| app.s3_client().put_object().bucket("org-acme").key(&key).body(bytes.into()).send();
    put(good[..good.len() - 100].to_vec()).await.unwrap();
    assert_eq!(admin.post_json(&base, &serde_json::json!({ "format": "parquet" })).await.status(), 202);
    let failed = wait_tables(&admin, &export, "parquet").await;
    assert_eq!(failed["status"], "failed");
    assert!(failed["error"].as_str().unwrap().contains("cannot be converted"), "{failed}");
    assert_eq!(admin.get(&format!("{base}/parquet/download")).await.status(), 409);
    let page = app.login("admin@acme.test").await;
    let history = page.get("/orgs/acme/settings/backups").await.text().await.unwrap();
    assert!(history.contains("Try Parquet again") && history.contains("tables failed"), "the row says why");
    let objects = app.objects("org-acme").await;
    assert!(!objects.iter().any(|o| o.ends_with(".zip")), "a failed conversion leaves no zip: {objects:?}");
    assert!(app.open_uploads().is_empty());

    // Repaired, a retry completes it.
    put(good).await.unwrap();
    assert_eq!(admin.post_json(&base, &serde_json::json!({ "format": "parquet" })).await.status(), 202);
    assert_eq!(wait_tables(&admin, &export, "parquet").await["status"], "completed");
    assert_eq!(tables_jobs(&app).await, 2);

    // The pruner removes an export's tables with it: make the export an old
    // scheduled one, with a newer scheduled export that retention keeps.
    let newer = completed_export(&app, &admin).await;
    sqlx::query(
        "update export_runs set trigger = 'scheduled', scheduled_for = now() - ($2 || ' days')::interval
         where id = $1",
    )
    .bind(&export)
    .bind("40")
    .execute(app.pool())
    .await
    .unwrap();
    sqlx::query(
        "update export_runs set trigger = 'scheduled', scheduled_for = now() - interval '1 hour' where id = $1",
    )
    .bind(&newer)
    .execute(app.pool())
    .await
    .unwrap();
    sqlx::query("update platform_settings set retention_daily = 1, retention_weekly = 0, retention_monthly = 0")
        .execute(app.pool())
        .await
        .unwrap();
    let acme = app.org_id("acme").await;
    let removed = data_export::platform::pruner::apply(&app.state, Some(acme)).await.unwrap();
    assert_eq!(removed.len(), 1);
    let objects = app.objects("org-acme").await;
    assert!(!objects.iter().any(|o| o.ends_with(".zip")), "{objects:?}");
    let left: i64 = sqlx::query_scalar("select count(*) from export_tables").fetch_one(app.pool()).await.unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn the_types_are_the_catalogs() {
    let (pool, _) = crate::helpers::fresh_db().await;
    let sections = data_export::orgs::sections::SECTIONS.iter().map(|s| (s.table, s.table));
    for (table, section) in [("organizations", "organization")].into_iter().chain(sections) {
        let classes = data_export::orgs::columns::of(table);
        let catalog: Vec<(String, String)> = sqlx::query_as(
            "select a.attname::text, format_type(a.atttypid, a.atttypmod) from pg_attribute a
             where a.attrelid = $1::regclass and a.attnum > 0 and not a.attisdropped order by a.attnum",
        )
        .bind(table)
        .fetch_all(&pool)
        .await
        .unwrap();
        let written: Vec<(String, String)> =
            catalog.into_iter().filter(|(c, _)| classes.class(c).is_some_and(|k| k.is_written())).collect();
        let listed: Vec<(String, String)> = types::of(section)
            .unwrap_or_else(|| panic!("{section} has no types"))
            .columns
            .iter()
            .map(|(n, t)| (n.to_string(), t.pg_name().to_string()))
            .collect();
        assert_eq!(listed, written, "{section}: src/tables/types.rs must list the written columns in catalog order");
    }
    assert_eq!(types::TABLES.len(), data_export::orgs::sections::SECTIONS.len() + 1);
}
