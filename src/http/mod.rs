//! The HTTP layer: warp serves, one routing table dispatches. Here live the concerns every
//! request shares — CORS, body limits, authentication, rate limiting and the request log —
//! so handlers only decode, call a service and encode.

pub mod guests;
pub mod listener;
pub mod proxy;
pub mod query;
/// Rate limiting is a service (it is charged per user or IP); the HTTP layer applies it.
pub use crate::service::ratelimit;
pub mod router;
pub mod tls;

use std::{net::SocketAddr, sync::Arc, time::Instant};

use bytes::Buf;
use futures_util::{FutureExt, Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use warp::Filter;

use crate::{error::Error, service::Services};
pub use router::{
    Auth, Authed, BodyStream, Ctx, Incoming, Outgoing, Response, Router, StreamResponse,
};

/// Serves `router` on `listener` (HTTPS when `tls` is set) until `shutdown` resolves.
pub async fn serve(
    services: Arc<Services>,
    router: Arc<Router>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<tls::TlsServer>>,
    limits: listener::ConnLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let proxies = Arc::new(proxy::TrustedProxies::new(
        services.config.trusted_proxies(),
    ));
    let filter = warp::any()
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(
            warp::ext::optional::<listener::PeerAddr>()
                .map(|p: Option<listener::PeerAddr>| p.map(|p| p.0)),
        )
        .and(warp::body::stream())
        .then(
            move |method, path: warp::path::FullPath, query, headers, remote, body| {
                let request = RawRequest {
                    method,
                    path: path.as_str().to_owned(),
                    query,
                    headers,
                    remote,
                };
                dispatch(
                    services.clone(),
                    router.clone(),
                    proxies.clone(),
                    request,
                    body,
                )
            },
        );
    listener::serve(warp::service(filter), listener, tls, limits, shutdown).await
}

/// The least body size a federation request may have: a transaction carries up to 50 PDUs of
/// up to 64 KiB each plus 100 EDUs, more than a client request needs.
const FEDERATION_MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

struct RawRequest {
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
    remote: Option<SocketAddr>,
}

async fn dispatch<S, B>(
    services: Arc<Services>,
    router: Arc<Router>,
    proxies: Arc<proxy::TrustedProxies>,
    raw: RawRequest,
    body: S,
) -> StreamResponse
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf + Send + 'static,
{
    let started = Instant::now();
    let (method, path) = (raw.method.clone(), raw.path.clone());
    // The client: the TCP peer, or behind a trusted reverse proxy the address it reports.
    let peer = raw
        .remote
        .map(|a| a.ip())
        .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
    let ip = proxies.client_ip(peer, &raw.headers);
    let mut response = match route(&services, &router, ip, raw, body).await {
        Ok(response) => response,
        Err(error) => {
            if error.status.is_server_error() {
                log::error!("{method} {path}: {error}");
            }
            Outgoing::Buffered(error.into_response())
        }
    };
    add_cors(response.headers_mut());
    // The path may carry ids but never a token (those travel in a header or the query string,
    // which is not logged).
    log::info!(
        "{ip} {method} {path} {} {:.1}ms",
        response.status().as_u16(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    response.into_response()
}

async fn route<S, B>(
    services: &Arc<Services>,
    router: &Router,
    ip: std::net::IpAddr,
    raw: RawRequest,
    body: S,
) -> Result<Outgoing, Error>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf + Send + 'static,
{
    // Preflight: answered for every path, with no endpoint logic (spec: Web Browser Clients).
    if raw.method == Method::OPTIONS {
        let mut response = Response::new(Vec::new());
        *response.status_mut() = StatusCode::NO_CONTENT;
        return Ok(Outgoing::Buffered(response));
    }
    let (route, path_args) = match router.find(&raw.method, &raw.path) {
        router::Match::Found(route, args) => (route, args),
        router::Match::WrongMethod => return Err(Error::method_not_allowed()),
        router::Match::NotFound => return Err(Error::unrecognized("Unrecognized request")),
        router::Match::BadPath => return Err(Error::invalid_param("Path is not valid UTF-8")),
    };

    // Server routes carry an X-Matrix `Authorization` header, checked below, not a token.
    // Unauthenticated routes ignore the header: servers sign even their key requests (Synapse
    // sends X-Matrix to `/_matrix/key/v2/server`), and no token is used there anyway.
    let token = if matches!(route.auth, Auth::Server | Auth::None) {
        None
    } else {
        access_token(&raw.headers, &raw.query)?
    };
    let limited = |user: Option<&ruma::OwnedUserId>| match services.rate_limiter.check(user, ip) {
        Ok(()) => Ok(()),
        Err(wait) => Err(Error::limit_exceeded(wait.as_millis().max(1) as u64)),
    };
    let user = match (route.auth, &token) {
        (Auth::None | Auth::Server, _) | (_, None) => None,
        // The steps before the handler are boxed: inline, their futures would stay allocated
        // in every open request for as long as it lasts (a long-poll: minutes).
        (_, Some(token)) => match Box::pin(services.sessions.authenticate(
            token,
            ip,
            user_agent(&raw.headers),
        ))
        .await
        {
            Ok(user) => Some(user),
            Err(e) => {
                // Failed authentications are charged to the IP too: guessing tokens is not free.
                limited(None)?;
                return Err(e);
            }
        },
    };
    if route.auth == Auth::Required && user.is_none() {
        limited(None)?;
        return Err(Error::missing_token("Missing access token"));
    }
    // Servers are charged only when their signature fails (below): one busy peer behind an
    // address must not be throttled like one client.
    if route.auth != Auth::Server {
        limited(user.as_ref().map(|u| &u.user_id))?;
    }
    if let Some(user) = &user {
        check_moderation(services, &route, user, &path_args)?;
    }
    if let (Auth::Required, Some(user)) = (route.auth, &user) {
        guests::check(services, &raw.method, &raw.path, &user.user_id)?;
    }
    query::check_enums(&raw.query)?;

    let read_timeout = services.config.limits.read_timeout();
    let (body, body_stream) = if route.streams_body {
        let stream = timed_body(body, read_timeout)
            .map(|chunk| chunk.map(|mut chunk| chunk.copy_to_bytes(chunk.remaining())));
        (Vec::new(), Some(Box::pin(stream) as BodyStream))
    } else {
        let mut limit = services.config.limits.max_request_bytes as usize;
        if route.auth == Auth::Server {
            limit = limit.max(FEDERATION_MAX_REQUEST_BYTES);
        }
        (
            Box::pin(collect_body(timed_body(body, read_timeout), limit)).await?,
            None,
        )
    };
    let uri = if raw.query.is_empty() {
        raw.path
    } else {
        format!("{}?{}", raw.path, raw.query)
    };
    let mut request = http::Request::new(body);
    *request.method_mut() = raw.method;
    *request.uri_mut() = uri
        .parse()
        .map_err(|_| Error::invalid_param("Malformed request URI"))?;
    *request.headers_mut() = raw.headers;
    let origin = if route.auth == Auth::Server {
        match Box::pin(crate::service::federation::auth::authenticate(
            &services.keyring,
            services.federation.server_name(),
            &request,
        ))
        .await
        {
            Ok(origin) => Some(origin),
            Err(e) => {
                limited(None)?;
                return Err(e);
            }
        }
    } else {
        None
    };
    let ctx = Ctx {
        ip,
        user,
        access_token: token,
        origin,
    };
    let handling = route.call(
        services.clone(),
        Incoming {
            request,
            path_args,
            ctx,
            body_stream,
        },
    );
    // Unwind safety: after a panic the future is never polled again; it is only dropped.
    match std::panic::AssertUnwindSafe(handling).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            // A last net: no request may reach a panic (bodies that make a parser panic are
            // refused before it), but if one does, the client gets an answer instead of a
            // reset connection.
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            log::error!("request handler panicked: {message}");
            Err(Error::unknown("Internal error"))
        }
    }
}

/// Account moderation, for every authenticated request in this one place: a locked account
/// is refused everything but the routes allowed while locked (logout); a suspended one the
/// routes whose rule refuses it.
fn check_moderation(
    services: &Services,
    route: &router::Route,
    user: &Authed,
    path_args: &[String],
) -> Result<(), Error> {
    let status = services.moderation.status(&user.user_id)?;
    if status.locked && !route.allowed_while_locked {
        return Err(Error::user_locked());
    }
    if let Some(rule) = route.denied_while_suspended.filter(|_| status.suspended) {
        if rule(services, &user.user_id, path_args)? {
            return Err(Error::user_suspended());
        }
    }
    Ok(())
}

/// The client's `User-Agent`, if it is readable text (recorded per device for whois).
fn user_agent(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

/// A JSON response with `body` (already encoded): raw handlers answer through this, as ruma's
/// typed responses do.
pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// [`json_response`] for a JSON value.
pub fn json_value(status: StatusCode, body: serde_json::Value) -> Response {
    json_response(status, body.to_string().into_bytes())
}

/// The access token from `Authorization: Bearer` or, deprecated, the `access_token` query
/// parameter. Both at once is ambiguous and refused.
fn access_token(headers: &HeaderMap, query: &str) -> Result<Option<String>, Error> {
    let from_header = match headers.get(http::header::AUTHORIZATION) {
        Some(value) => {
            let value = value
                .to_str()
                .map_err(|_| Error::missing_token("Malformed Authorization header"))?;
            match value.strip_prefix("Bearer ") {
                Some(token) => Some(token.trim().to_owned()),
                None => {
                    return Err(Error::missing_token(
                        "Authorization header must use the Bearer scheme",
                    ))
                }
            }
        }
        None => None,
    };
    let from_query = query::value(query, "access_token");
    match (from_header, from_query) {
        (Some(_), Some(_)) => Err(Error::invalid_param(
            "Access token given both in header and query",
        )),
        (token, None) | (None, token) => Ok(token),
    }
}

/// The request body as it arrives, failing when a piece takes longer than `timeout` (a client
/// that stalls mid-body must not hold its connection forever) or the client goes away.
fn timed_body<S, B>(
    body: S,
    timeout: std::time::Duration,
) -> impl Stream<Item = Result<B, Error>> + Send + 'static
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf + Send + 'static,
{
    futures_util::stream::unfold(Some(Box::pin(body)), move |body| async move {
        let mut body = body?;
        match tokio::time::timeout(timeout, body.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(body))),
            Ok(Some(Err(e))) => {
                // Almost always the client hanging up: nobody is left to read an answer.
                log::debug!("cannot read request body: {e}");
                Some((
                    Err(Error::bad_json(format!("Cannot read request body: {e}"))),
                    None,
                ))
            }
            Ok(None) => None,
            Err(_) => Some((
                Err(Error::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "M_UNKNOWN",
                    format!("No request body data for {}s", timeout.as_secs_f64()),
                )),
                None,
            )),
        }
    })
}

/// Reads the body, refusing it with 413 as soon as it passes `limit` (whatever the declared
/// Content-Length says).
async fn collect_body<S, B>(body: S, limit: usize) -> Result<Vec<u8>, Error>
where
    S: Stream<Item = Result<B, Error>> + Send,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk?;
        if out.len() + chunk.remaining() > limit {
            return Err(Error::too_large(format!(
                "Request body is larger than {limit} bytes"
            )));
        }
        while chunk.has_remaining() {
            let piece = chunk.chunk();
            out.extend_from_slice(piece);
            let n = piece.len();
            chunk.advance(n);
        }
    }
    Ok(out)
}

fn add_cors(headers: &mut HeaderMap) {
    headers.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    headers.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS"),
    );
    headers.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("X-Requested-With, Content-Type, Authorization"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The last net: a handler that panics yields an error value instead of unwinding
    /// through the connection task.
    #[tokio::test]
    async fn catch_unwind_turns_a_panic_into_an_error() {
        let panicking: router::BoxFuture<u32> = Box::pin(async { panic!("boom") });
        let caught = std::panic::AssertUnwindSafe(panicking)
            .catch_unwind()
            .await
            .unwrap_err();
        assert_eq!(caught.downcast_ref::<&str>(), Some(&"boom"));
        let fine: router::BoxFuture<u32> = Box::pin(async { 7 });
        let fine = std::panic::AssertUnwindSafe(fine).catch_unwind().await;
        assert_eq!(fine.unwrap(), 7);
    }
}
