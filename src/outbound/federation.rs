//! The transport of federation requests: from a destination server name to an HTTPS exchange.
//!
//! This first version knows the two forms of server name that need no lookup beyond the host:
//! an IP literal or a host name, each with an optional port (8448 when absent). The TLS name is
//! the host (rustls sends no SNI for an IP address, as the spec asks) and the `Host` header is
//! the server name as written. `.well-known` delegation and SRV records come with the full
//! discovery.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use ruma::ServerName;

use super::{Outbound, OutboundError};

/// The port of a server name that names none (spec: resolving server names).
pub const DEFAULT_FEDERATION_PORT: u16 = 8448;

impl Outbound {
    /// One HTTPS request to `destination`; `req`'s URI is the path and query only. Bounded by
    /// `timeout` and `max_body` as [`Outbound::request`] is; never follows redirects.
    pub async fn federation_request(
        &self,
        destination: &ServerName,
        req: Request<Vec<u8>>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Response<Bytes>, OutboundError> {
        let authority = match destination.port() {
            Some(_) => destination.as_str().to_owned(),
            None => format!("{destination}:{DEFAULT_FEDERATION_PORT}"),
        };
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        parts.uri = format!("https://{authority}{path}")
            .parse()
            .map_err(|_| OutboundError::InvalidUrl)?;
        let mut req = Request::from_parts(parts, body);
        // The spec's Host: the server name as written (the port only when it names one).
        if let Ok(host) = http::HeaderValue::from_str(destination.as_str()) {
            req.headers_mut().insert(http::header::HOST, host);
        }
        self.request(req, timeout, max_body).await
    }
}
