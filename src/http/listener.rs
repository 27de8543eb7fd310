//! Accepting and serving connections, the same way for plain HTTP and HTTPS: hyper-util's
//! HTTP/1.1 + HTTP/2 server with the limits every listener needs against slow or idle
//! clients, and a bounded drain at shutdown.
//!
//! - Header-read timeout: a request head must arrive within `limits.read_timeout_secs`.
//!   hyper starts this timer whenever the connection waits for a request head, so it is also
//!   the idle (keep-alive) timeout between requests.
//! - Body-read timeout: each piece of a request body must arrive within the same time (see
//!   `collect_body` in the HTTP layer); a body that stalls answers 408.
//! - Connection cap (`limits.max_connections`, shared by all listeners of a server): at the
//!   cap, listeners stop accepting until a connection closes; new clients wait in the
//!   kernel's listen backlog, they are not refused.
//! - Shutdown: listeners stop accepting, open connections finish their requests (long-polls
//!   are woken by the notifier and answer at once) for at most [`DRAIN_DEADLINE`], then are
//!   closed.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};

use super::tls::{self, TlsServer};

/// How long open connections may finish their requests at shutdown. Below systemd's stop
/// timeout (`TimeoutStopSec` in packaging/hearth.service) with room for closing the store, so
/// `systemctl stop` never ends in SIGKILL.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// The client's address, set on every request as an extension (warp's `addr::remote()` only
/// knows connections that warp itself accepted).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Limits shared by every listener of one server.
#[derive(Clone)]
pub struct ConnLimits {
    pub read_timeout: Duration,
    pub connections: Arc<Semaphore>,
}

impl ConnLimits {
    pub fn new(read_timeout: Duration, max_connections: usize) -> Self {
        Self {
            read_timeout,
            connections: Arc::new(Semaphore::new(max_connections)),
        }
    }
}

/// Serves `service` on `listener` (over TLS when `tls` is set) until `shutdown` resolves, then
/// drains open connections for at most [`DRAIN_DEADLINE`].
pub async fn serve<S>(
    service: S,
    listener: TcpListener,
    tls: Option<Arc<TlsServer>>,
    limits: ConnLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) where
    S: tower_service::Service<
            http::Request<hyper::body::Incoming>,
            Response = warp::reply::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Take a slot before accepting: at the cap, clients wait in the listen backlog.
        let permit = tokio::select! {
            permit = limits.connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    log::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Reap finished connections so the set stays as large as the open ones.
        while connections.try_join_next().is_some() {}
        let (tls, service, watcher) = (tls.clone(), service.clone(), graceful.watcher());
        let read_timeout = limits.read_timeout;
        connections.spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(tcp, peer, service, watcher, read_timeout).await,
                Some(tls) => {
                    let handshake = tls::accept(&tls, tcp, peer);
                    match tokio::time::timeout(read_timeout, handshake).await {
                        Ok(Some(stream)) => {
                            serve_connection(stream, peer, service, watcher, read_timeout).await
                        }
                        Ok(None) => {}
                        Err(_) => log::debug!("TLS handshake with {peer}: timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_DEADLINE, graceful.shutdown())
        .await
        .is_err()
    {
        log::warn!(
            "{} connection(s) still busy after {}s; closing them",
            connections.len(),
            DRAIN_DEADLINE.as_secs()
        );
    }
    connections.shutdown().await;
}

async fn serve_connection<I, S>(
    io: I,
    peer: SocketAddr,
    service: S,
    watcher: hyper_util::server::graceful::Watcher,
    read_timeout: Duration,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower_service::Service<
            http::Request<hyper::body::Incoming>,
            Response = warp::reply::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req| {
        req.extensions_mut().insert(PeerAddr(peer));
        let mut service = service.clone();
        tower_service::Service::call(&mut service, req)
    });
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    // hyper enforces its header-read timeout only with a timer: without one a client could
    // drip request headers forever and hold the connection.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(read_timeout);
    // HTTP/2 has no request-head timer; pings find peers that went away.
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(read_timeout)
        .keep_alive_timeout(read_timeout);
    let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        // Clients hang up, time out and reset connections all the time: not a server error.
        log::debug!("connection from {peer}: {e}");
    }
}
