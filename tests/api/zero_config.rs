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

/// Issue 33: in the zero-config run (embedded storage), a download link works from
/// another machine. The server listens on 127.0.0.2, a second loopback address, and
/// `PUBLIC_URL` names it; the client reaches it only there. The link points at the
/// web address (not the embedded endpoint's 127.0.0.1 port), serves the file, and
/// stays a signed, single-object link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_config_download_links_work_through_the_public_address() {
    let dir = std::env::temp_dir().join(format!("dxtest-zero-dl-{}", ulid::Ulid::generate()));
    let data_dir = dir.display().to_string();
    let port = std::net::TcpListener::bind("127.0.0.2:0").unwrap().local_addr().unwrap().port();
    let board_port = std::net::TcpListener::bind("127.0.0.2:0").unwrap().local_addr().unwrap().port();
    let public = format!("http://127.0.0.2:{port}");
    let (bind, board_bind) = (format!("127.0.0.2:{port}"), format!("127.0.0.2:{board_port}"));
    let envs = [
        ("DATA_DIR", data_dir.as_str()),
        ("BIND", bind.as_str()),
        ("BOARD_BIND", board_bind.as_str()),
        ("PUBLIC_URL", public.as_str()),
        ("DEMO_PASSWORD", "zero-config-password"),
        ("RUST_LOG", "warn"),
    ];
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_data-export"));
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).envs(envs).arg("serve");
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            // SIGTERM: the server stops its private cluster on the way out.
            let _ = std::process::Command::new("kill").arg(self.0.id().to_string()).status();
            let _ = self.0.wait();
        }
    }
    let server = Killed(cmd.spawn().unwrap());
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let ready = async {
        loop {
            if let Ok(r) = client.get(format!("{public}/readyz")).send().await
                && r.status().is_success()
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(180), ready).await.expect("the server came up on 127.0.0.2");

    // A token for the demo org's admin, from the CLI against the same data directory.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_data-export"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATA_DIR", &data_dir)
        .args(["token", "create", "--email", "admin@acme.test"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let api = format!("{public}/api/v1/orgs/acme/exports");
    let started: serde_json::Value = client.post(&api).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    let id = started["id"].as_str().expect("an export id").to_string();
    let done = async {
        loop {
            let run: serde_json::Value =
                client.get(format!("{api}/{id}")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
            match run["status"].as_str() {
                Some("completed") => break run,
                Some("failed") => panic!("the export failed: {run}"),
                _ => tokio::time::sleep(std::time::Duration::from_millis(300)).await,
            }
        }
    };
    let run = tokio::time::timeout(std::time::Duration::from_secs(120), done).await.expect("the export completed");

    let redirect = client.get(format!("{api}/{id}/download")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(redirect.status(), 303);
    let link = redirect.headers()["location"].to_str().unwrap().to_string();
    assert!(link.starts_with(&format!("{public}/")), "the link names the public address: {link}");
    assert!(link.contains("X-Amz-Expires=900"), "15 minutes: {link}");

    // Followed from "the other machine": the file, byte for byte what was recorded.
    let file = client.get(&link).send().await.unwrap();
    assert_eq!(file.status(), 200, "{link}");
    let bytes = file.bytes().await.unwrap();
    assert_eq!(bytes.len() as i64, run["size_bytes"].as_i64().unwrap());
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), run["sha256"].as_str().unwrap());
    // The signature covers the method: a GET link does not answer a HEAD.
    assert_eq!(client.head(&link).send().await.unwrap().status(), 403);

    // Still signed and single-object: another key, a changed signature, another
    // method or no signature at all get no file.
    let (path, query) = link.split_once('?').unwrap();
    let other_key = format!("{path}x?{query}");
    assert_eq!(client.get(&other_key).send().await.unwrap().status(), 403);
    let (signed, signature) = link.rsplit_once("X-Amz-Signature=").unwrap();
    let flipped = if signature.starts_with('0') { "1" } else { "0" };
    let forged = format!("{signed}X-Amz-Signature={flipped}{}", &signature[1..]);
    assert_eq!(client.get(&forged).send().await.unwrap().status(), 403);
    let put = client.put(&link).body("overwritten").send().await.unwrap();
    assert!(!put.status().is_success(), "a PUT is not passed to storage: {}", put.status());
    let unsigned = client.get(path).send().await.unwrap();
    assert_eq!(unsigned.status(), 404, "an unsigned path is the web UI's 404");
    let again = client.get(&link).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(again, bytes, "the PUT changed nothing");

    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 33: the S3 client speaks HTTPS with the project's one crypto provider
/// (rustls with ring; aws-lc is no longer built). An https endpoint (TLS in front of
/// the embedded one, with a private CA that the CLI trusts through `SSL_CERT_FILE`,
/// which the client's root store reads) verifies; without the CA the certificate
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storage_client_speaks_https_with_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = crate::helpers::PrivateCa::new("dxtest-s3tls");
    let dir = ca.dir.clone();

    // TLS in front of an embedded endpoint: every connection is decrypted and passed on.
    let s3 =
        data_export::storage::EmbeddedS3::start(&dir.join("storage"), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let plain = s3.addr();
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![ca.cert_der.clone().into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(ca.key_der.clone().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else { return };
                let mut upstream = tokio::net::TcpStream::connect(plain).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });

    let (pool, name) = crate::helpers::fresh_db().await;
    pool.close().await;
    let base = crate::helpers::server_url();
    let url = format!("{}/{name}", base.rsplit_once('/').unwrap().0);
    let settings = s3.settings();
    let endpoint = format!("https://127.0.0.1:{port}");
    let ca_path = ca.path("ca.pem");
    let envs = |ca: Option<&str>| {
        let mut v = vec![
            ("DATABASE_URL", url.clone()),
            ("S3_ENDPOINT", endpoint.clone()),
            ("S3_ACCESS_KEY_ID", settings.access_key_id.clone()),
            ("S3_SECRET_ACCESS_KEY", settings.secret_access_key.clone()),
            ("S3_FORCE_PATH_STYLE", "true".into()),
            ("RUST_LOG", "off".into()),
        ];
        if let Some(ca) = ca {
            v.push(("SSL_CERT_FILE", ca.to_string()));
        }
        v
    };
    let verify = |v: Vec<(&str, String)>| {
        let refs: Vec<(&str, &str)> = v.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run(&refs, &["verify-storage"])
    };
    let (code, stderr) = verify(envs(Some(&ca_path)));
    assert_eq!(code, Some(0), "verified over https: {stderr}");
    let (code, stderr) = verify(envs(None));
    assert_eq!(code, Some(1), "an unknown CA is refused: {stderr}");
    s3.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
