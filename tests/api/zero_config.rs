//! The private cluster and configuration errors.

use data_export::db::{self, PrivateCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_private_cluster_is_initialised_reused_and_stopped() {
    let dir = std::env::temp_dir().join(format!("dxtest-pg-{}", ulid::Ulid::generate()));
    let cluster = PrivateCluster::ensure(&dir.join("postgres")).await.unwrap();
    assert!(cluster.owned(), "this process started it");
    assert!(cluster.data_dir().join("PG_VERSION").exists());
    let pool = db::connect(cluster.connect_options(), 2).await.unwrap();
    sqlx::raw_sql("create table kept (v int); insert into kept values (42)").execute(&pool).await.unwrap();
    // Nothing listens on TCP.
    let (listen,): (String,) = sqlx::query_as("show listen_addresses").fetch_one(&pool).await.unwrap();
    assert_eq!(listen, "");

    // A second process finds it running and does not own it.
    let second = PrivateCluster::ensure(&dir.join("postgres")).await.unwrap();
    assert!(!second.owned());
    second.stop().await.unwrap();
    sqlx::query("select 1").execute(&pool).await.expect("a non-owner's stop leaves it running");
    pool.close().await;

    cluster.stop().await.unwrap();
    assert!(db::connect(cluster.connect_options(), 1).await.is_err(), "stopped");

    // Started again, the data is still there (reused, not re-initialised).
    let again = PrivateCluster::ensure(&dir.join("postgres")).await.unwrap();
    assert!(again.owned());
    let pool = db::connect(again.connect_options(), 1).await.unwrap();
    let (v,): (i32,) = sqlx::query_as("select v from kept").fetch_one(&pool).await.unwrap();
    assert_eq!(v, 42);
    pool.close().await;
    again.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

fn run(envs: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_data-export"));
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.args(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn bad_configuration_is_one_clear_line_and_a_non_zero_exit() {
    for (envs, needle) in [
        (vec![("DATABASE_URL", "mysql://localhost/x")], "DATABASE_URL"),
        (vec![("DATABASE_URL", "postgres://127.0.0.1:1/none")], "cannot connect to PostgreSQL"),
        (vec![("BIND", "not-an-address")], "BIND"),
        (vec![("S3_ENDPOINT", "http://127.0.0.1:1")], "S3_ACCESS_KEY_ID"),
        (vec![("WORKER_CONCURRENCY", "many")], "WORKER_CONCURRENCY"),
    ] {
        let (code, stderr) = run(&envs, &["migrate"]);
        assert_eq!(code, Some(1), "{envs:?}: {stderr}");
        assert!(stderr.contains(needle), "{envs:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test]
async fn an_unreachable_storage_endpoint_fails_verification_clearly() {
    let (pool, name) = crate::helpers::fresh_db().await;
    pool.close().await;
    let base = crate::helpers::server_url();
    let url = format!("{}/{name}", base.rsplit_once('/').unwrap().0);
    let (code, stderr) = run(
        &[
            ("DATABASE_URL", &url),
            ("S3_ENDPOINT", "http://127.0.0.1:9"),
            ("S3_ACCESS_KEY_ID", "x"),
            ("S3_SECRET_ACCESS_KEY", "y"),
            ("S3_FORCE_PATH_STYLE", "true"),
            ("RUST_LOG", "off"),
        ],
        &["verify-storage"],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("check S3_ENDPOINT") && stderr.contains("no answer from the S3 endpoint"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn zero_config_commands_start_the_private_cluster_and_leave_it_stopped() {
    let dir = std::env::temp_dir().join(format!("dxtest-zero-{}", ulid::Ulid::generate()));
    let data_dir = dir.display().to_string();
    let envs = [("DATA_DIR", data_dir.as_str()), ("RUST_LOG", "info")];
    let (code, stderr) = run(&envs, &["migrate"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("initialising a private PostgreSQL cluster"), "{stderr}");
    assert!(stderr.contains("embedded S3 endpoint started"), "{stderr}");
    assert!(stderr.contains("private PostgreSQL stopped"), "{stderr}");
    assert!(!dir.join("postgres/data/postmaster.pid").exists(), "stopped on exit");
    // The second run reuses the cluster (and its migrated schema).
    let (code, stderr) = run(&envs, &["token", "create", "--email", "nobody@example.test"]);
    assert_eq!(code, Some(1));
    assert!(!stderr.contains("initialising"), "{stderr}");
    assert!(stderr.contains("no user with email"), "the schema is there: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
