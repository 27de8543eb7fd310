//! Outbound HTTP: the one client for every request the server makes itself (push gateways now;
//! federation and URL previews later), so they all share the same IP policy, DNS and TLS roots.
//!
//! A request goes: URL → host (an IP literal is used as is; a name goes through
//! [`resolve::Resolver`]) → every address is checked against the [`IpPolicy`] → a TCP
//! connection to one of the addresses that passed (the checked address itself: nothing is
//! resolved again between the check and the connect, so DNS rebinding cannot slip a refused
//! address in) → TLS for `https` → one HTTP/1.1 exchange.
//!
//! Federation requests (`federation.rs`) take the same path, except that the address, the
//! certificate name and the `Host` header come from server discovery (`discovery.rs`) rather
//! than from a URL.
//!
//! Each request opens its own connection (sent with `Connection: close`) and drops it after
//! the response. There is no pooling: the callers are background deliveries of a few requests
//! per minute, where a handshake per request costs nothing noticeable and saves a pool's
//! bookkeeping and its stale-connection failures.

pub mod discovery;
mod federation;
pub mod policy;
mod resolve;

pub use discovery::DEFAULT_PORT as DEFAULT_FEDERATION_PORT;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub use federation::TestHooks;
pub use policy::IpPolicy;

/// The timeout of [`Outbound::post_json`].
pub const POST_JSON_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest response body [`Outbound::post_json`] accepts.
pub const POST_JSON_MAX_BODY: usize = 1024 * 1024;
/// When a name has several permitted addresses, the time one connection attempt may take
/// before the next address is tried (the last one gets whatever time is left).
const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many addresses of one name are tried.
const MAX_ADDRESSES: usize = 4;

/// Why an outbound request failed. The `Display` text never includes the URL (its userinfo,
/// path or query can hold secrets, like a pushkey); the details of DNS, connect and TLS
/// failures are logged at debug level with the host name only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// Not an absolute `http`/`https` URL with a host (userinfo is refused too).
    #[error("invalid URL for an outbound request")]
    InvalidUrl,
    /// Every address of the host is refused by the outbound IP policy.
    #[error("the destination address is not allowed by the outbound IP policy")]
    Refused,
    /// The host name did not resolve.
    #[error("DNS lookup failed")]
    Dns,
    /// No TCP connection could be made.
    #[error("cannot connect")]
    Connect,
    /// The TLS handshake failed (e.g. an untrusted certificate or a wrong name).
    #[error("TLS handshake failed")]
    Tls,
    /// The whole exchange did not finish within its timeout.
    #[error("timed out")]
    Timeout,
    /// The response body is larger than the caller's limit.
    #[error("response body too large")]
    TooLarge,
    /// The HTTP exchange failed (malformed response, connection closed mid-way, ...).
    #[error("HTTP error: {0}")]
    Http(String),
    /// The client could not be built at start (an unreadable `outbound.extra_ca_file`, ...).
    #[error("outbound HTTP: {0}")]
    Setup(String),
}

/// The outbound HTTP client. Cheap to clone; all clones share one resolver and TLS config.
#[derive(Clone)]
pub struct Outbound {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

struct Inner {
    policy: IpPolicy,
    resolver: resolve::Resolver,
    tls: tokio_rustls::TlsConnector,
    user_agent: HeaderValue,
    /// The well-known answers of federation destinations.
    well_known: discovery::WellKnownCache,
    hooks: TestHooks,
}

/// Where a request goes, taken from its URL.
struct Target {
    https: bool,
    /// The host without brackets: a name, or an IP literal.
    host: String,
    ip: Option<IpAddr>,
    port: u16,
    /// `host[:port]` as the URL wrote it.
    host_header: HeaderValue,
}

impl Outbound {
    /// Builds the client from `[outbound]`: the allow list, the public web roots plus
    /// `extra_ca_file`, and the system's DNS configuration.
    pub fn new(config: &crate::config::Outbound) -> Result<Self, OutboundError> {
        Outbound::with_hooks(config, TestHooks::default())
    }

    /// [`Outbound::new`] with the test hooks of discovery (other ports than 443 and 8448,
    /// other DNS servers).
    #[doc(hidden)]
    pub fn with_hooks(
        config: &crate::config::Outbound,
        hooks: TestHooks,
    ) -> Result<Self, OutboundError> {
        let tls = tls_config(config.extra_ca_file.as_deref())?;
        let resolver = if hooks.name_servers.is_empty() {
            resolve::Resolver::from_system()
        } else {
            resolve::Resolver::with_name_servers(&hooks.name_servers)
        }
        .map_err(OutboundError::Setup)?;
        let user_agent = HeaderValue::from_static(concat!("Hearth/", env!("CARGO_PKG_VERSION")));
        Ok(Outbound {
            inner: Arc::new(Inner {
                policy: IpPolicy::new(config.allow_networks()),
                resolver,
                tls: tokio_rustls::TlsConnector::from(tls),
                user_agent,
                well_known: discovery::WellKnownCache::new(discovery::WELL_KNOWN_MAX_ENTRIES),
                hooks,
            }),
        })
    }

    /// The IP policy, for callers that check addresses they obtained some other way.
    pub fn policy(&self) -> &IpPolicy {
        &self.inner.policy
    }

    /// One request; never follows redirects (a 3xx is returned as it is); body capped at
    /// `max_body` bytes; the whole exchange (DNS, connect, TLS, request, response body) is
    /// bounded by `timeout`. `Host`, `User-Agent` (unless the caller set one) and
    /// `Connection: close` are set here; the URL must be absolute.
    pub async fn request(
        &self,
        req: Request<Vec<u8>>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Response<Bytes>, OutboundError> {
        match tokio::time::timeout(timeout, self.exchange(req, max_body)).await {
            Ok(result) => result,
            Err(_) => Err(OutboundError::Timeout),
        }
    }

    /// POSTs a JSON body (`Content-Type: application/json`) with a 30 s timeout and a 1 MiB
    /// response cap.
    pub async fn post_json(
        &self,
        url: &str,
        body: Vec<u8>,
    ) -> Result<Response<Bytes>, OutboundError> {
        let req = Request::post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|_| OutboundError::InvalidUrl)?;
        self.request(req, POST_JSON_TIMEOUT, POST_JSON_MAX_BODY)
            .await
    }

    async fn exchange(
        &self,
        req: Request<Vec<u8>>,
        max_body: usize,
    ) -> Result<Response<Bytes>, OutboundError> {
        let target = target(req.uri())?;
        let req = self.prepare(req, target.host_header.clone());
        let tcp = self.connect(&target.host, target.ip, target.port).await?;
        if !target.https {
            return send(tcp, req, max_body).await;
        }
        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|_| OutboundError::InvalidUrl)?;
        let tls = self.tls_connect(name, tcp, &target.host).await?;
        send(tls, req, max_body).await
    }

    /// The request as it goes on the wire: path-and-query URI, HTTP/1.1, `Host`,
    /// `Connection: close` and a `User-Agent` unless the caller set one.
    fn prepare(&self, req: Request<Vec<u8>>, host: HeaderValue) -> Request<Full<Bytes>> {
        let (mut parts, body) = req.into_parts();
        parts.uri = parts
            .uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
        parts.version = http::Version::HTTP_11;
        let headers = &mut parts.headers;
        headers.insert(header::HOST, host);
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        if !headers.contains_key(header::USER_AGENT) {
            headers.insert(header::USER_AGENT, self.inner.user_agent.clone());
        }
        Request::from_parts(parts, Full::new(Bytes::from(body)))
    }

    /// The TLS handshake on `tcp`, verifying the certificate for `name` (sent as SNI when it
    /// is a DNS name; rustls sends none for an IP address).
    async fn tls_connect(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        tcp: TcpStream,
        host: &str,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, OutboundError> {
        self.inner.tls.connect(name, tcp).await.map_err(|e| {
            log::debug!("outbound {host}: TLS: {e}");
            OutboundError::Tls
        })
    }

    /// Resolves `host` (unless `ip` is given), keeps the addresses the policy permits and
    /// connects to the first of them that answers on `port`.
    async fn connect(
        &self,
        host: &str,
        ip: Option<IpAddr>,
        port: u16,
    ) -> Result<TcpStream, OutboundError> {
        if let Some(addr) = self.inner.hooks.connect_to {
            return TcpStream::connect(addr).await.map_err(|e| {
                log::debug!("outbound {host}: connect to {addr}: {e}");
                OutboundError::Connect
            });
        }
        let addrs = match ip {
            Some(ip) => vec![ip],
            None => self.lookup(host).await?,
        };
        let permitted: Vec<IpAddr> = addrs
            .into_iter()
            .filter(|ip| {
                let ok = self.inner.policy.permits(*ip);
                if !ok {
                    log::debug!("outbound {host}: {ip} refused by the IP policy");
                }
                ok
            })
            .take(MAX_ADDRESSES)
            .collect();
        if permitted.is_empty() {
            return Err(OutboundError::Refused);
        }
        let last = permitted.len() - 1;
        for (i, ip) in permitted.into_iter().enumerate() {
            let attempt = TcpStream::connect(SocketAddr::new(ip, port));
            let result = if i == last {
                attempt.await
            } else {
                tokio::time::timeout(CONNECT_ATTEMPT_TIMEOUT, attempt)
                    .await
                    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            };
            match result {
                Ok(stream) => {
                    // Small requests: send them at once rather than waiting for more.
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => log::debug!("outbound {host}: connect to {ip}: {e}"),
            }
        }
        Err(OutboundError::Connect)
    }

    /// The addresses of a host name, in the resolver's order (not yet checked by the policy).
    pub async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, OutboundError> {
        self.inner.resolver.lookup(host).await.map_err(|e| {
            log::debug!("outbound {host}: DNS: {e}");
            OutboundError::Dns
        })
    }
}

/// The parts of an absolute `http(s)://host[:port]/...` URL a connection needs.
fn target(uri: &Uri) -> Result<Target, OutboundError> {
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(OutboundError::InvalidUrl),
    };
    let authority = uri.authority().ok_or(OutboundError::InvalidUrl)?;
    // Userinfo would be sent nowhere (there is no basic auth here) and may be a secret.
    if authority.as_str().contains('@') {
        return Err(OutboundError::InvalidUrl);
    }
    let host = authority.host();
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let bare = bracketed.unwrap_or(host);
    let ip = bare.parse::<IpAddr>().ok();
    let valid_ip = match bracketed {
        Some(_) => matches!(ip, Some(IpAddr::V6(_))),
        None => !matches!(ip, Some(IpAddr::V6(_))),
    };
    if bare.is_empty() || !valid_ip {
        return Err(OutboundError::InvalidUrl);
    }
    let port = match authority.port_u16() {
        Some(0) => return Err(OutboundError::InvalidUrl),
        Some(port) => port,
        None if https => 443,
        None => 80,
    };
    Ok(Target {
        https,
        host: bare.to_owned(),
        ip,
        port,
        host_header: HeaderValue::from_str(authority.as_str())
            .map_err(|_| OutboundError::InvalidUrl)?,
    })
}

/// The rustls client config: the ring provider, the public web roots plus the PEM
/// certificates of `extra_ca`, HTTP/1.1 over ALPN.
fn tls_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, OutboundError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let setup = |e: String| {
            OutboundError::Setup(format!("outbound.extra_ca_file {}: {e}", path.display()))
        };
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| setup(e.to_string()))?;
        if certs.is_empty() {
            return Err(setup("holds no PEM certificate".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| setup(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| OutboundError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// One HTTP/1.1 exchange on `io`: sends `req`, reads the response and at most `max_body`
/// bytes of its body. The connection is driven here (not spawned), so dropping this future,
/// as the timeout does, closes the socket.
async fn send<S>(
    io: S,
    req: Request<Full<Bytes>>,
    max_body: usize,
) -> Result<Response<Bytes>, OutboundError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http_err = |e: hyper::Error| OutboundError::Http(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(http_err)?;
    let mut conn = std::pin::pin!(conn);
    let mut exchange = std::pin::pin!(async move {
        let response = sender.send_request(req).await.map_err(http_err)?;
        read_body(response, max_body).await
    });
    tokio::select! {
        biased;
        result = &mut exchange => return result,
        // The connection ended (or failed): the exchange now finishes with what it got.
        _ = &mut conn => {}
    }
    exchange.await
}

/// The response with its body collected, refused once it passes `max_body` bytes (at once when
/// `Content-Length` already says so).
async fn read_body(
    response: Response<hyper::body::Incoming>,
    max_body: usize,
) -> Result<Response<Bytes>, OutboundError> {
    let declared = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body as u64) {
        return Err(OutboundError::TooLarge);
    }
    let (parts, mut body) = response.into_parts();
    // Sized up front when declared (within the cap): growing by doubling would hold up to
    // twice a large body (media) while it arrives.
    let mut buf = Vec::with_capacity(declared.map_or(0, |len| len as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| OutboundError::Http(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max_body {
                return Err(OutboundError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Response::from_parts(parts, Bytes::from(buf)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_parsed_from_absolute_urls() {
        let t = |url: &str| target(&url.parse::<Uri>().unwrap());
        let a = t("https://push.example.org/_matrix/push/v1/notify").unwrap();
        assert!(a.https && a.ip.is_none());
        assert_eq!((a.host.as_str(), a.port), ("push.example.org", 443));
        assert_eq!(a.host_header, "push.example.org");
        let b = t("http://[::1]:8080/x?y=z").unwrap();
        assert_eq!((b.ip, b.port), (Some("::1".parse().unwrap()), 8080));
        assert_eq!(b.host_header, "[::1]:8080");
        let c = t("http://127.0.0.1/").unwrap();
        assert_eq!((c.ip, c.port), (Some("127.0.0.1".parse().unwrap()), 80));
        for bad in [
            "/relative/path",
            "ftp://example.org/",
            "http://user:secret@example.org/",
            "http://example.org:0/",
            "http://[example.org]/",
            "http://[127.0.0.1]/",
        ] {
            let uri = bad.parse::<Uri>();
            assert!(
                uri.map_or(true, |u| target(&u).is_err()),
                "{bad} should be refused"
            );
        }
    }
}
