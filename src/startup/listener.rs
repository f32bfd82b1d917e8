//! Serving one listener with limits on slow clients: HTTP/1.1 connections whose
//! request head must arrive within the header-read timeout (hyper's, on a tokio
//! timer), whose answers must be read (a write that makes no progress for the
//! write-stall timeout ends the connection), at most `max_connections` of them open
//! at once and at most `max_per_client` from one client address (an IPv6 /64, and
//! a multiple of it from the /56 and the /48 that hold it), and a graceful shutdown
//! that gives open requests a bounded grace.

use std::{
    collections::HashMap,
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::Semaphore,
    time::Sleep,
};
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
    /// Connections open at once from one client address (an IPv6 address counts by
    /// its /64, and its /56 and /48 may hold 4 and 8 times as many, see
    /// [`crate::auth::client_ip::WIDER_V6`]); one more is closed at once. Peers in
    /// `trusted` (reverse proxies, whose connections carry many clients) are not
    /// counted.
    pub max_per_client: usize,
    /// An answer whose writing makes no progress this long (a client that stopped
    /// reading) ends its connection.
    pub write_stall_timeout: Duration,
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
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    trusted: Vec<crate::config::Cidr>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_client = PerClient::default();
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
        // Responses are written as they are ready (a streamed body, a chunked
        // answer): none waits on the client's delayed ACK (Nagle's algorithm).
        let _ = stream.set_nodelay(true);
        let client = (!trusted.iter().any(|c| c.contains(peer.ip()))).then(|| peer.ip());
        let Some(counted) = per_client.enter(client, limits.max_per_client) else {
            tracing::warn!(%peer, max = limits.max_per_client, "too many connections from one client; closed");
            drop(stream);
            continue;
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req)
        });
        let conn = graceful
            .watch(http.serve_connection(TokioIo::new(StallGuard::new(stream, limits.write_stall_timeout)), service));
        connections.spawn(async move {
            // Errors here are the client's doing (a reset, a header timeout, a bad
            // request head); hyper has already answered or closed.
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(counted);
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

/// Open connections per client network: the IPv4 address, or the IPv6 /64, /56
/// and /48 (each network counted under its address and prefix length).
#[derive(Clone, Default)]
pub struct PerClient(Arc<Mutex<HashMap<(IpAddr, u8), usize>>>);

/// One counted connection; uncounted when dropped.
pub struct Counted(Option<(PerClient, Vec<(IpAddr, u8)>)>);

impl PerClient {
    /// Counts a connection from `client` (none: not counted), or `None` when one of
    /// its networks already holds its cap: `max` for the address or /64, and the
    /// multiples of [`crate::auth::client_ip::WIDER_V6`] for the /56 and /48.
    pub fn enter(&self, client: Option<IpAddr>, max: usize) -> Option<Counted> {
        let Some(client) = client else { return Some(Counted(None)) };
        let networks = crate::auth::client_ip::client_networks(client);
        let cap = |bits: u8| {
            let times = crate::auth::client_ip::WIDER_V6.iter().find(|w| w.0 == bits).map_or(1, |w| w.1);
            max.saturating_mul(times)
        };
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if networks.iter().any(|&(net, bits)| open.get(&(net, bits)).copied().unwrap_or(0) >= cap(bits)) {
            return None;
        }
        for &key in &networks {
            *open.entry(key).or_default() += 1;
        }
        Some(Counted(Some((self.clone(), networks))))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some((per_client, networks)) = self.0.take() {
            let mut open = per_client.0.lock().unwrap_or_else(|e| e.into_inner());
            for key in networks {
                if let Some(n) = open.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        open.remove(&key);
                    }
                }
            }
        }
    }
}

/// A connection whose writes must make progress: a write, flush or shutdown that
/// stays pending for `limit` fails with `TimedOut`, so a client that stops reading
/// its answer cannot hold the connection (and its slot) for ever.
struct StallGuard<S> {
    inner: S,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> StallGuard<S> {
    fn new(inner: S, limit: Duration) -> Self {
        Self { inner, limit, stalled: None }
    }

    /// Passes `poll` through, timing how long writing has been pending.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let limit = self.limit;
        let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client read none of its answer for the write-stall timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallGuard<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallGuard<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
