//! Serving one listener with limits on slow clients: HTTP/1.1 connections whose
//! request head must arrive within the header-read timeout (hyper's, on a tokio
//! timer), at most `max_connections` of them open at once, and a graceful shutdown
//! that gives open requests a bounded grace.

use std::{sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// What [`serve`] enforces on one listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A connection that has not sent a whole request head this long after it opened,
    /// or after its previous answer when kept alive, is closed.
    pub header_read_timeout: Duration,
    /// Connections served at once. The next one is accepted only when one closes:
    /// until then it waits in the kernel's listen backlog.
    pub max_connections: usize,
    /// After `stop`, how long open connections may take to finish before they are dropped.
    pub shutdown_grace: Duration,
}

/// Serves `app` on `listener` until `stop` is cancelled, then stops accepting, lets
/// open requests finish (at most [`Limits::shutdown_grace`]) and returns. Each
/// request carries the peer's address as `ConnectInfo<SocketAddr>`.
///
/// HTTP/1.1 only: hyper's header-read timeout is an HTTP/1 setting, and the
/// protocol sniffing of an h1/h2 server would wait for an HTTP/2 preface with no
/// timeout at all. A TLS proxy in front can speak HTTP/2 to browsers.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, stop: CancellationToken) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        // A slot first: over the cap, connections are not accepted (they wait in the
        // backlog), so no file descriptor is spent on them here.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = stop.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req)
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        connections.spawn(async move {
            // Errors here are the client's doing (a reset, a header timeout, a bad
            // request head); hyper has already answered or closed.
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(grace = ?limits.shutdown_grace, "open connections outlived the shutdown grace; dropped");
    }
    connections.shutdown().await;
    Ok(())
}
