//! The federation transport: one unsigned HTTPS request to another homeserver, found by
//! server discovery (`discovery.rs`), with the certificate checked for the name discovery
//! gives (SNI for names, none for IP literals) and its `Host` header. Signing (X-Matrix) is
//! the caller's business (`service::federation::client`); this is the plumbing under it.
//!
//! Every address still goes through the outbound IP policy, and TLS uses the same roots as
//! every outbound request (the public web PKI plus `outbound.extra_ca_file`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use ruma::ServerName;
use tokio::net::TcpStream;

use super::discovery::{self, Host, Lookups, Route, SrvRecord, WellKnownOutcome};
use super::{Outbound, OutboundError};

/// The time one well-known fetch may take, redirects included.
pub const WELL_KNOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest well-known body accepted (the real ones are a few dozen bytes).
pub const WELL_KNOWN_MAX_BODY: usize = 16 * 1024;
/// Redirects followed for one well-known fetch.
pub const WELL_KNOWN_MAX_REDIRECTS: usize = 5;

/// Changes to discovery for tests, which cannot listen on 443 and 8448 nor answer for real
/// DNS names. Not a setting: nothing in the configuration reaches it.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct TestHooks {
    /// The port of `https://<host>/.well-known/matrix/server` instead of 443.
    pub well_known_port: Option<u16>,
    /// The federation port instead of 8448.
    pub default_port: Option<u16>,
    /// These DNS servers instead of the system's (`/etc/resolv.conf`).
    pub name_servers: Vec<SocketAddr>,
    /// Every connection goes to this address, whatever the name (`hearth check --connect`,
    /// to check a server before its DNS records exist).
    pub connect_to: Option<SocketAddr>,
}

impl Outbound {
    /// One request to the federation API of `destination`: `req`'s URI is a path and query
    /// (`/_matrix/...`); the server is found by discovery (the well-known answer cached per
    /// its headers), the certificate must be valid for the name discovery says, and `Host` is
    /// set as the spec wants. Redirects are not followed; the body is capped at `max_body`;
    /// everything, discovery included, is bounded by `timeout`.
    pub async fn federation_request(
        &self,
        destination: &ServerName,
        req: Request<Vec<u8>>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Response<Bytes>, OutboundError> {
        let exchange = async {
            let route = self.discover(destination.as_str()).await?;
            self.exchange_route(&route, req, max_body).await
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(OutboundError::Timeout))
    }

    /// Server discovery for `server_name`: where to connect, the certificate name and the
    /// `Host` header. The well-known answer comes from the cache when it is fresh.
    pub async fn discover(&self, server_name: &str) -> Result<Route, OutboundError> {
        let default_port = self
            .inner
            .hooks
            .default_port
            .unwrap_or(discovery::DEFAULT_PORT);
        discovery::discover(server_name, &RealLookups(self), default_port).await
    }

    /// Sends `req` along `route`: the first target that accepts a connection (each name
    /// resolved, each address checked by the IP policy), TLS for the route's name.
    pub(super) async fn exchange_route(
        &self,
        route: &Route,
        req: Request<Vec<u8>>,
        max_body: usize,
    ) -> Result<Response<Bytes>, OutboundError> {
        let host =
            HeaderValue::from_str(&route.host_header).map_err(|_| OutboundError::InvalidUrl)?;
        let req = self.prepare(req, host);
        let tcp = self.connect_route(route).await?;
        let name = match &route.tls_name {
            Host::Ip(ip) => rustls::pki_types::ServerName::IpAddress((*ip).into()),
            Host::Name(name) => rustls::pki_types::ServerName::try_from(name.clone())
                .map_err(|_| OutboundError::InvalidUrl)?,
        };
        let tls = self.tls_connect(name, tcp, &route.host_header).await?;
        super::send(tls, req, max_body).await
    }

    /// A connection to the first target of `route` that takes one. When every target fails,
    /// the error says the most useful thing: a refusal by the policy only if that is all
    /// that happened.
    async fn connect_route(&self, route: &Route) -> Result<TcpStream, OutboundError> {
        let mut error = OutboundError::Connect;
        for (i, (host, port)) in route.targets.iter().enumerate() {
            let attempt = match host {
                Host::Ip(ip) => self.connect(&ip.to_string(), Some(*ip), *port).await,
                Host::Name(name) => self.connect(name, None, *port).await,
            };
            match attempt {
                Ok(tcp) => return Ok(tcp),
                Err(e) if i == 0 || e != OutboundError::Refused => error = e,
                Err(_) => {}
            }
        }
        Err(error)
    }

    /// `https://<host>/.well-known/matrix/server`, following up to
    /// [`WELL_KNOWN_MAX_REDIRECTS`] redirects (to `https` URLs only, never twice to one), with
    /// the lifetime its `Cache-Control` gives. Not cached here.
    pub async fn fetch_well_known(&self, host: &str) -> (WellKnownOutcome, Option<Duration>) {
        let port = self
            .inner
            .hooks
            .well_known_port
            .map_or(String::new(), |p| format!(":{p}"));
        let fetch = async {
            let start: Uri = format!("https://{host}{port}/.well-known/matrix/server")
                .parse()
                .map_err(|_| WellKnownOutcome::Invalid("not a valid host name".into()))?;
            let mut url = start.clone();
            let mut seen = vec![start];
            for _ in 0..=WELL_KNOWN_MAX_REDIRECTS {
                let req = Request::get(url.clone())
                    .body(Vec::new())
                    .map_err(|e| WellKnownOutcome::Invalid(e.to_string()))?;
                let response = match self
                    .request(req, WELL_KNOWN_TIMEOUT, WELL_KNOWN_MAX_BODY)
                    .await
                {
                    Ok(r) => r,
                    Err(OutboundError::TooLarge) => {
                        return Err(WellKnownOutcome::Invalid(format!(
                            "larger than {WELL_KNOWN_MAX_BODY} bytes"
                        )))
                    }
                    Err(e) => return Err(WellKnownOutcome::Unreachable(e.to_string())),
                };
                let status = response.status();
                let ttl = discovery::cache_control_ttl(
                    response
                        .headers()
                        .get(http::header::CACHE_CONTROL)
                        .and_then(|v| v.to_str().ok()),
                );
                if status.is_redirection() {
                    let next = response
                        .headers()
                        .get(http::header::LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|l| discovery::redirect_target(&url, l))
                        .ok_or_else(|| {
                            WellKnownOutcome::Invalid(format!(
                                "HTTP {status} without a usable https Location"
                            ))
                        })?;
                    if seen.contains(&next) {
                        return Err(WellKnownOutcome::Invalid("redirect loop".into()));
                    }
                    seen.push(next.clone());
                    url = next;
                    continue;
                }
                let outcome = if status.is_server_error() {
                    WellKnownOutcome::Unreachable(format!("HTTP {status}"))
                } else if status != StatusCode::OK {
                    WellKnownOutcome::Invalid(format!("HTTP {status}"))
                } else {
                    match discovery::parse_well_known(response.body()) {
                        Ok(server) => WellKnownOutcome::Delegated(server),
                        Err(e) => WellKnownOutcome::Invalid(e),
                    }
                };
                return Ok((outcome, ttl));
            }
            Err(WellKnownOutcome::Invalid(format!(
                "more than {WELL_KNOWN_MAX_REDIRECTS} redirects"
            )))
        };
        match tokio::time::timeout(WELL_KNOWN_TIMEOUT, fetch).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(outcome)) => (outcome, None),
            Err(_) => (WellKnownOutcome::Unreachable("timed out".into()), None),
        }
    }

    /// Well-known answers held in the cache (for figures and tests).
    pub fn cached_well_known(&self) -> usize {
        self.inner.well_known.len()
    }
}

/// Discovery's lookups with the real client: the cached well-known fetch and hickory's SRV.
struct RealLookups<'a>(&'a Outbound);

impl Lookups for RealLookups<'_> {
    fn well_known(&self, host: &str) -> impl std::future::Future<Output = WellKnownOutcome> + Send {
        let outbound = self.0.clone();
        let host = host.to_owned();
        async move {
            let fetch = || outbound.fetch_well_known(&host);
            outbound
                .inner
                .well_known
                .get_or_fetch(&host, Instant::now(), fetch)
                .await
        }
    }

    fn srv(
        &self,
        name: &str,
    ) -> impl std::future::Future<Output = Result<Vec<SrvRecord>, String>> + Send {
        let resolver = self.0.inner.resolver.clone();
        let name = name.to_owned();
        async move { resolver.srv(&name).await }
    }

    fn random(&self, max: u32) -> u32 {
        rand::random_range(0..=max)
    }
}
