//! Accepting and serving connections, the same way for plain HTTP and HTTPS: hyper-util's
//! HTTP/1.1 + HTTP/2 server with the limits every listener needs against slow or idle
//! clients, and a bounded drain at shutdown.
//!
//! - Header-read timeout: a request head must arrive within `limits.read_timeout_secs`.
//!   hyper starts this timer whenever the connection waits for a request head, so it is also
//!   the idle (keep-alive) timeout between requests on HTTP/1.1.
//! - Idle timeout: a connection with no request in flight for the same time is closed
//!   gracefully (HTTP/2 answers pings forever otherwise).
//! - Body-read timeout: each piece of a request body must arrive within the same time (see
//!   `collect_body` in the HTTP layer); a body that stalls answers 408.
//! - Connection cap (`limits.max_connections`, shared by all listeners of a server): at the
//!   cap, each listener holds the one connection it accepted last, unserved, and stops
//!   accepting until a connection closes; new clients wait in the kernel's listen backlog,
//!   they are not refused. A slot is taken only for a connection that arrived: taken before
//!   accepting, a freed slot would wait on a listener nobody connects to while another
//!   listener's clients wait (with fewer slots than listeners, for good).
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
    // Turned true at shutdown: every connection finishes its requests and closes.
    let (drain, draining) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
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
        // A slot for the connection that arrived; at the cap it waits here unserved, and
        // later clients wait in the listen backlog.
        let permit = tokio::select! {
            permit = limits.connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        // Reap finished connections so the set stays as large as the open ones.
        while connections.try_join_next().is_some() {}
        let (tls, service, draining) = (tls.clone(), service.clone(), draining.clone());
        let read_timeout = limits.read_timeout;
        connections.spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(tcp, peer, service, draining, read_timeout).await,
                Some(tls) => {
                    let handshake = tls::accept(&tls, tcp, peer);
                    match tokio::time::timeout(read_timeout, handshake).await {
                        Ok(Some(stream)) => {
                            serve_connection(stream, peer, service, draining, read_timeout).await
                        }
                        Ok(None) => {}
                        Err(_) => log::debug!("TLS handshake with {peer}: timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = drain.send(true);
    let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        log::warn!(
            "{} connection(s) still busy after {}s; closing them",
            connections.len(),
            DRAIN_DEADLINE.as_secs()
        );
    }
    connections.shutdown().await;
}

/// Requests in flight on one connection and when the last one ended: a connection with none
/// for the read timeout is idle and closed (HTTP/1.1 has hyper's head timer for this; HTTP/2
/// has nothing else).
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    last: std::sync::Mutex<tokio::time::Instant>,
}

/// Counts one request in flight until dropped (also when the request is cancelled).
struct InFlight(Arc<Activity>);

impl Activity {
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// When the connection becomes idle if nothing else happens; `None` while requests run.
    fn idle_at(&self, timeout: Duration) -> Option<tokio::time::Instant> {
        let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        (self.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0).then_some(last + timeout)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn serve_connection<I, S>(
    io: I,
    peer: SocketAddr,
    service: S,
    mut draining: tokio::sync::watch::Receiver<bool>,
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
    let activity = Arc::new(Activity {
        in_flight: Default::default(),
        last: std::sync::Mutex::new(tokio::time::Instant::now()),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut req| {
            req.extensions_mut().insert(PeerAddr(peer));
            let in_flight = activity.begin();
            let call = tower_service::Service::call(&mut service.clone(), req);
            async move {
                let response = call.await;
                drop(in_flight);
                response
            }
        })
    };
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    // hyper enforces its header-read timeout only with a timer: without one a client could
    // drip request headers forever and hold the connection.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(read_timeout);
    // HTTP/2 has no request-head timer; pings find peers that went away, and the idle check
    // below closes connections that stay open without requests.
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(read_timeout)
        .keep_alive_timeout(read_timeout);
    let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    // Once closing (shutdown or idle), the connection finishes the requests it has and ends.
    let mut closing = false;
    loop {
        let idle_at = activity
            .idle_at(read_timeout)
            .unwrap_or_else(|| tokio::time::Instant::now() + read_timeout);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    // Clients hang up, time out and reset connections all the time: not a
                    // server error.
                    log::debug!("connection from {peer}: {e}");
                }
                return;
            }
            _ = draining.wait_for(|d| *d), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(idle_at), if !closing => {
                if activity.idle_at(read_timeout).is_some_and(|at| at <= tokio::time::Instant::now()) {
                    log::debug!("connection from {peer}: idle, closing");
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
