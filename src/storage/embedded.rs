//! The embedded S3-compatible endpoint (s3s + s3s-fs) on loopback.
//!
//! It keeps objects as files under `DATA_DIR/storage`, verifies SigV4 signatures
//! (presigned URLs and their expiry included), and has no size or rate limits, so
//! it is bound to loopback only. Each process that needs it starts its own on a
//! free port over the same directory; the files are the shared state.
//!
//! Browsers never reach that port. The web process signs download links for its own
//! `PUBLIC_URL` and answers them on its own listener ([`Downloads`]): a presigned
//! `GET` or `HEAD` of one object, checked by the same SigV4 code, and nothing else.

use std::{net::SocketAddr, path::Path};

use anyhow::Context;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::Builder as ConnBuilder,
};
use rand::Rng;
use tokio::{net::TcpListener, sync::watch};

use crate::config::S3Settings;

/// A running embedded endpoint; stops when dropped or on [`EmbeddedS3::stop`].
pub struct EmbeddedS3 {
    addr: SocketAddr,
    service: s3s::service::S3Service,
    settings: S3Settings,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl EmbeddedS3 {
    /// Starts the endpoint on `bind` (port 0 picks a free port) over `root`, with
    /// fresh credentials: only this process signs requests for it.
    pub async fn start(root: &Path, bind: SocketAddr) -> anyhow::Result<Self> {
        Self::start_with(root, bind, format!("local{}", random_token(12)), random_token(32)).await
    }

    /// Starts it again where `previous` ran: same address and credentials (tests
    /// stop and restart the endpoint under a running client).
    pub async fn restart(root: &Path, previous: &S3Settings, addr: SocketAddr) -> anyhow::Result<Self> {
        Self::start_with(root, addr, previous.access_key_id.clone(), previous.secret_access_key.clone()).await
    }

    async fn start_with(root: &Path, bind: SocketAddr, access_key: String, secret_key: String) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
        let fs = s3s_fs::FileSystem::new(root)
            .map_err(|e| anyhow::anyhow!("cannot open the storage directory {}: {e:?}", root.display()))?;
        let service = {
            let mut b = s3s::service::S3ServiceBuilder::new(fs);
            b.set_auth(s3s::auth::SimpleAuth::from_single(access_key.clone(), secret_key.clone()));
            b.build()
        };
        let listener =
            TcpListener::bind(bind).await.with_context(|| format!("cannot bind the embedded S3 endpoint to {bind}"))?;
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(false);
        let served = service.clone();
        let task = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            let graceful = hyper_util::server::graceful::GracefulShutdown::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((socket, _)) = accepted else {
                            // Out of file descriptors and the like: wait a moment rather than spin.
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        };
                        // A response written in pieces (a chunked body) is not held
                        // back waiting for the client's delayed ACK (Nagle).
                        let _ = socket.set_nodelay(true);
                        let conn = http.serve_connection(TokioIo::new(socket), service.clone());
                        let conn = graceful.watch(conn.into_owned());
                        tokio::spawn(async move { let _ = conn.await; });
                    }
                    _ = stopped.changed() => break,
                }
            }
            // In-flight requests get a moment; then connections are dropped.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), graceful.shutdown()).await;
        });
        let endpoint = format!("http://{addr}");
        tracing::info!(%endpoint, root = %root.display(), "embedded S3 endpoint started");
        Ok(Self {
            addr,
            service: served,
            settings: S3Settings {
                endpoint,
                region: "us-east-1".into(),
                access_key_id: access_key,
                secret_access_key: secret_key,
                force_path_style: true,
                public_endpoint: None,
                expected_bucket_owner: None,
            },
            stop,
            task: Some(task),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Client settings for it.
    pub fn settings(&self) -> S3Settings {
        self.settings.clone()
    }

    /// The presigned downloads of this endpoint, for the web listener to answer.
    pub fn downloads(&self) -> Downloads {
        Downloads(self.service.clone())
    }

    /// Stops accepting and closes connections.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for EmbeddedS3 {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The embedded endpoint's presigned downloads, answered on the web listener so that
/// a browser on another machine can follow a download link (issue 33): links are
/// signed for `PUBLIC_URL`, whose host the browser sends and the signature covers.
#[derive(Clone)]
pub struct Downloads(s3s::service::S3Service);

impl Downloads {
    /// Whether a request is a presigned download: `GET` or `HEAD` of
    /// `/{bucket}/{key}` with a SigV4 query signature. Nothing of the web UI or API
    /// looks like that (their paths start with a route of their own and none takes
    /// `X-Amz-Signature`), and any other S3 call is left to the web router, which
    /// answers 404.
    pub fn wants(method: &http::Method, uri: &http::Uri) -> bool {
        if method != http::Method::GET && method != http::Method::HEAD {
            return false;
        }
        let signed = uri.query().is_some_and(|q| q.split('&').any(|p| p.starts_with("X-Amz-Signature=")));
        let mut path = uri.path().trim_start_matches('/').splitn(2, '/');
        let (bucket, key) = (path.next().unwrap_or_default(), path.next().unwrap_or_default());
        signed && !bucket.is_empty() && !key.is_empty()
    }

    /// Answers a presigned download (see [`Downloads::wants`]); the signature, its
    /// expiry and the object are the endpoint's to check. The request's body is not
    /// read (a download has none).
    pub async fn answer(&self, mut parts: http::request::Parts) -> http::Response<s3s::Body> {
        // The browser's session cookie is the web UI's, not storage's: it is not
        // passed on (nor logged by the endpoint at debug level).
        parts.headers.remove(http::header::COOKIE);
        let req = http::Request::from_parts(parts, s3s::Body::empty());
        match self.0.call(req).await {
            Ok(mut resp) => {
                // Served beside the pages: the same no-sniff and no-referrer rules.
                let headers = resp.headers_mut();
                headers.insert(http::header::X_CONTENT_TYPE_OPTIONS, http::HeaderValue::from_static("nosniff"));
                headers.insert(http::header::REFERRER_POLICY, http::HeaderValue::from_static("no-referrer"));
                resp
            }
            Err(e) => {
                tracing::debug!(error = ?e, "a download request the storage endpoint could not read");
                let mut resp = http::Response::new(s3s::Body::from("bad download request\n".to_string()));
                *resp.status_mut() = http::StatusCode::BAD_REQUEST;
                resp
            }
        }
    }
}

fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}
