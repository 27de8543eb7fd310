//! The routing table: one path trie for every endpoint, matched on the path first and then on
//! the method, so a known path with the wrong method is a 405 and an unknown path a 404.
//!
//! Endpoints are registered from ruma's request types: the paths come from the type's
//! `PATH_BUILDER`, the method from `METHOD`, the authentication requirement from its
//! `Authentication` scheme, and the handler receives the parsed request and returns the typed
//! response. This keeps warp's filter chain to a single link (see docs/architecture.md, Module map, on compile times).

use std::{collections::HashMap, future::Future, net::IpAddr, pin::Pin, sync::Arc};

use http::Method;
use ruma::api::{
    auth_scheme, error::DeserializationError, error::FromHttpRequestError,
    path_builder::PathBuilder, IncomingRequest, IncomingRequestExt, OutgoingResponseExt,
};
use serde::Deserialize;

pub use crate::service::sessions::Authed;
use crate::{error::Error, service::Services};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
pub type Response = http::Response<Vec<u8>>;
/// A response whose body may be streamed (media downloads).
pub type StreamResponse = warp::reply::Response;
/// A request body read as it arrives (media uploads), for routes registered with
/// [`Router::raw_streaming`].
pub type BodyStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, Error>> + Send + 'static>>;

/// What a handler produced: a buffered body, or a streamed one.
pub enum Outgoing {
    Buffered(Response),
    Streamed(StreamResponse),
}

impl Outgoing {
    pub fn status(&self) -> http::StatusCode {
        match self {
            Outgoing::Buffered(r) => r.status(),
            Outgoing::Streamed(r) => r.status(),
        }
    }

    pub fn headers_mut(&mut self) -> &mut http::HeaderMap {
        match self {
            Outgoing::Buffered(r) => r.headers_mut(),
            Outgoing::Streamed(r) => r.headers_mut(),
        }
    }

    pub fn into_response(self) -> StreamResponse {
        match self {
            Outgoing::Buffered(r) => warp::Reply::into_response(r),
            Outgoing::Streamed(r) => r,
        }
    }
}

/// Who made the request, after authentication.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub ip: IpAddr,
    /// Set when the request carried a valid access token.
    pub user: Option<Authed>,
    /// The access token as sent (only for endpoints that act on the session itself).
    pub access_token: Option<String>,
    /// The server that signed the request (X-Matrix), on routes declared with `Auth::Server`.
    pub origin: Option<ruma::OwnedServerName>,
}

impl Ctx {
    /// The authenticated user; routes declared with `Auth::Required` always have one.
    pub fn authed(&self) -> Result<&Authed, Error> {
        self.user
            .as_ref()
            .ok_or_else(|| Error::missing_token("Missing access token"))
    }

    /// The authenticated origin server; routes declared with `Auth::Server` always have one.
    pub fn origin(&self) -> Result<&ruma::ServerName, Error> {
        self.origin.as_deref().ok_or_else(|| {
            Error::new(
                http::StatusCode::UNAUTHORIZED,
                "M_UNAUTHORIZED",
                "Missing X-Matrix authorization",
            )
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    None,
    Optional,
    Required,
    /// Another homeserver, by an X-Matrix signature (federation endpoints).
    Server,
}

/// Maps ruma's authentication schemes onto what the router enforces.
pub trait AuthRequirement {
    const AUTH: Auth;
}
impl AuthRequirement for auth_scheme::NoAuthentication {
    const AUTH: Auth = Auth::None;
}
impl AuthRequirement for auth_scheme::NoAccessToken {
    const AUTH: Auth = Auth::None;
}
impl AuthRequirement for auth_scheme::AccessToken {
    const AUTH: Auth = Auth::Required;
}
impl AuthRequirement for auth_scheme::AccessTokenOptional {
    const AUTH: Auth = Auth::Optional;
}
impl AuthRequirement for auth_scheme::AppserviceToken {
    const AUTH: Auth = Auth::Required;
}
impl AuthRequirement for auth_scheme::AppserviceTokenOptional {
    const AUTH: Auth = Auth::Optional;
}
impl AuthRequirement for ruma::api::federation::authentication::ServerSignatures {
    const AUTH: Auth = Auth::Server;
}

/// A request after routing: the full HTTP request with its collected body, and the decoded
/// path arguments.
pub struct Incoming {
    pub request: http::Request<Vec<u8>>,
    pub path_args: Vec<String>,
    pub ctx: Ctx,
    /// The unread body, for streaming routes (their `request` body is then empty).
    pub body_stream: Option<BodyStream>,
}

type Handler =
    Arc<dyn Fn(Arc<Services>, Incoming) -> BoxFuture<Result<Outgoing, Error>> + Send + Sync>;

/// Whether a suspended user's request is refused (`M_USER_SUSPENDED`), given the user and the
/// decoded path arguments (some endpoints are refused only for some arguments).
pub type SuspendedRule = fn(&Services, &ruma::UserId, &[String]) -> Result<bool, Error>;

#[derive(Clone)]
pub struct Route {
    pub auth: Auth,
    /// The handler reads the body itself ([`Incoming::body_stream`]), with no size limit
    /// applied by the HTTP layer.
    pub streams_body: bool,
    /// Answered for a locked account too (logout); every other route refuses locked
    /// accounts with `M_USER_LOCKED`.
    pub allowed_while_locked: bool,
    /// Refuses suspended accounts (when the rule says so); `None`: open to them.
    pub denied_while_suspended: Option<SuspendedRule>,
    handler: Handler,
}

/// Path parameters that the spec allows to leave out when they are the last segment: the
/// state key (`/rooms/{roomId}/state/{eventType}[/{stateKey}]`, empty when absent).
const OPTIONAL_LAST_PARAMS: &[&str] = &["state_key", "stateKey"];

#[derive(Default)]
struct Node {
    literal: HashMap<String, Node>,
    param: Option<Box<Node>>,
    /// The parameter child is the last segment of a template and may be omitted (it is then
    /// the empty string); see [`OPTIONAL_LAST_PARAMS`].
    param_optional: bool,
    methods: Vec<(Method, Arc<Route>)>,
}

#[derive(Default)]
pub struct Router {
    root: Node,
}

pub enum Match {
    Found(Arc<Route>, Vec<String>),
    WrongMethod,
    NotFound,
    /// A path argument was not valid percent-encoded UTF-8.
    BadPath,
}

impl Router {
    /// Registers a ruma endpoint on all of its stable paths (r0 and v3 alike).
    pub fn ruma<R, F, Fut>(&mut self, handler: F)
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: AuthRequirement,
        F: Fn(Arc<Services>, Ctx, R) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R::OutgoingResponse, Error>> + Send + 'static,
    {
        self.ruma_checked(|_| Ok(()), handler)
    }

    /// Like [`Router::ruma`], with `check` run on the JSON body before ruma parses it: for
    /// request types whose parser cannot be trusted with every body (it panics on some), the
    /// check refuses those bodies with a Matrix error first.
    pub fn ruma_checked<R, F, Fut>(&mut self, check: fn(&[u8]) -> Result<(), Error>, handler: F)
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: AuthRequirement,
        F: Fn(Arc<Services>, Ctx, R) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R::OutgoingResponse, Error>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let route = Arc::new(Route {
            auth: <R::Authentication as AuthRequirement>::AUTH,
            streams_body: false,
            allowed_while_locked: false,
            denied_while_suspended: None,
            handler: Arc::new(move |services, incoming: Incoming| {
                let handler = handler.clone();
                Box::pin(async move {
                    let args: Vec<&str> = incoming.path_args.iter().map(String::as_str).collect();
                    let (parts, body) = incoming.request.into_parts();
                    check(&body)?;
                    let parsed = if body.is_empty() {
                        parse_without_body::<R>(parts, &args)?
                    } else if has_trailing_garbage(&body) {
                        return Err(Error::not_json(
                            "Request body has content after its JSON value",
                        ));
                    } else {
                        let request = http::Request::from_parts(parts, &body[..]);
                        R::try_from_http_request(request, &args).map_err(request_error)?
                    };
                    let response = handler(services, incoming.ctx, parsed).await?;
                    response
                        .try_into_http_response::<Vec<u8>>()
                        .map(Outgoing::Buffered)
                        .map_err(|e| {
                            log::error!("cannot serialize response: {e}");
                            Error::unknown("Cannot serialize the response")
                        })
                })
            }),
        });
        self.insert_stable::<R>(route);
    }

    /// Inserts `route` on every stable path (r0 and v3 alike) of the ruma endpoint `R`.
    fn insert_stable<R: IncomingRequest>(&mut self, route: Arc<Route>) {
        for path in R::PATH_BUILDER
            .all_paths()
            .filter(|p| !p.contains("/unstable/"))
        {
            self.insert(path, R::METHOD, route.clone());
        }
    }

    /// Registers a handler that works on the raw request (endpoints ruma does not model, or
    /// whose body is not JSON).
    pub fn raw<F, Fut>(&mut self, method: Method, path: &str, auth: Auth, handler: F)
    where
        F: Fn(Arc<Services>, Incoming) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Response, Error>> + Send + 'static,
    {
        self.insert(path, method, raw_route(auth, handler));
    }

    /// Registers a raw handler on a ruma endpoint's stable paths, with its method and
    /// authentication (endpoints whose body ruma parses differently from what the spec asks).
    pub fn raw_ruma<R, F, Fut>(&mut self, handler: F)
    where
        R: IncomingRequest,
        R::Authentication: AuthRequirement,
        F: Fn(Arc<Services>, Incoming) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Response, Error>> + Send + 'static,
    {
        let route = raw_route(<R::Authentication as AuthRequirement>::AUTH, handler);
        self.insert_stable::<R>(route);
    }

    /// Registers a raw handler that reads the request body as a stream
    /// ([`Incoming::body_stream`]) and may answer with a streamed body.
    pub fn raw_streaming<F, Fut>(
        &mut self,
        method: Method,
        path: &str,
        auth: Auth,
        streams_body: bool,
        handler: F,
    ) where
        F: Fn(Arc<Services>, Incoming) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Outgoing, Error>> + Send + 'static,
    {
        let route = Route {
            auth,
            streams_body,
            allowed_while_locked: false,
            denied_while_suspended: None,
            handler: Arc::new(move |s, i| Box::pin(handler(s, i))),
        };
        self.insert(path, method, Arc::new(route));
    }

    /// Lets a locked account call the ruma endpoint `R` (spec: Account locking names logout).
    pub fn allow_while_locked<R: IncomingRequest>(&mut self) {
        self.modify_stable::<R>(|route| route.allowed_while_locked = true);
    }

    /// Refuses the ruma endpoint `R` to suspended accounts where `rule` says so.
    pub fn deny_while_suspended<R: IncomingRequest>(&mut self, rule: SuspendedRule) {
        self.modify_stable::<R>(|route| route.denied_while_suspended = Some(rule));
    }

    /// [`Router::deny_while_suspended`] for a route registered by path.
    pub fn deny_path_while_suspended(&mut self, method: Method, path: &str, rule: SuspendedRule) {
        self.modify(path, &method, &|route| {
            route.denied_while_suspended = Some(rule)
        });
    }

    fn modify_stable<R: IncomingRequest>(&mut self, change: impl Fn(&mut Route)) {
        for path in R::PATH_BUILDER
            .all_paths()
            .filter(|p| !p.contains("/unstable/"))
        {
            self.modify(path, &R::METHOD, &change);
        }
    }

    /// Applies `change` to the route registered for the template `path` and `method`.
    /// Registration happens once at start, so a missing route is a bug in the route table
    /// (every test that starts a server would show it).
    fn modify(&mut self, path: &str, method: &Method, change: &dyn Fn(&mut Route)) {
        let mut node = &mut self.root;
        for segment in path.trim_start_matches('/').split('/') {
            node = if segment.starts_with('{') || segment.starts_with(':') {
                node.param.as_deref_mut()
            } else {
                node.literal.get_mut(segment)
            }
            .unwrap_or_else(|| panic!("no route registered for {path}"));
        }
        let entry = node
            .methods
            .iter_mut()
            .find(|(m, _)| m == method)
            .unwrap_or_else(|| panic!("no route registered for {method} {path}"));
        let mut route = (*entry.1).clone();
        change(&mut route);
        entry.1 = Arc::new(route);
    }

    fn insert(&mut self, path: &str, method: Method, route: Arc<Route>) {
        let mut node = &mut self.root;
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for (i, segment) in segments.iter().enumerate() {
            node = if segment.starts_with('{') || segment.starts_with(':') {
                let name = segment.trim_start_matches([':', '{']).trim_end_matches('}');
                if i + 1 == segments.len() && OPTIONAL_LAST_PARAMS.contains(&name) {
                    node.param_optional = true;
                }
                node.param.get_or_insert_with(Default::default)
            } else {
                node.literal.entry((*segment).to_owned()).or_default()
            };
        }
        // A later registration for the same path and method replaces the earlier one; two
        // ruma types never share both, so this only matters for deliberate overrides.
        node.methods.retain(|(m, _)| *m != method);
        node.methods.push((method, route));
    }

    pub fn find(&self, method: &Method, path: &str) -> Match {
        let mut node = &self.root;
        let mut args = Vec::new();
        for segment in path.trim_start_matches('/').split('/') {
            if let Some(next) = node.literal.get(segment) {
                node = next;
            } else if let Some(next) = &node.param {
                match percent_encoding::percent_decode_str(segment).decode_utf8() {
                    Ok(arg) => args.push(arg.into_owned()),
                    Err(_) => return Match::BadPath,
                }
                node = next;
            } else {
                return Match::NotFound;
            }
        }
        if node.methods.is_empty() {
            // An optional last path parameter may be left out, slash and all: the spec
            // writes `/state/{eventType}/{stateKey}` with an optional empty state key, and
            // clients send `/state/m.room.topic`. Only where the shorter path has no endpoint
            // of its own, so no existing route changes meaning.
            match node.param.as_deref() {
                Some(next) if node.param_optional && !next.methods.is_empty() => {
                    args.push(String::new());
                    node = next;
                }
                _ => return Match::NotFound,
            }
        }
        let wanted = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        match node
            .methods
            .iter()
            .find(|(m, _)| m == method || m == wanted)
        {
            Some((_, route)) => Match::Found(route.clone(), args),
            None => Match::WrongMethod,
        }
    }
}

fn raw_route<F, Fut>(auth: Auth, handler: F) -> Arc<Route>
where
    F: Fn(Arc<Services>, Incoming) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response, Error>> + Send + 'static,
{
    Arc::new(Route {
        auth,
        streams_body: false,
        allowed_while_locked: false,
        denied_while_suspended: None,
        handler: Arc::new(move |s, i| {
            let fut = handler(s, i);
            Box::pin(async move { fut.await.map(Outgoing::Buffered) })
        }),
    })
}

impl Route {
    pub fn call(
        &self,
        services: Arc<Services>,
        incoming: Incoming,
    ) -> BoxFuture<Result<Outgoing, Error>> {
        (self.handler)(services, incoming)
    }
}

/// Parses a request that came without a body. An empty body is `{}` only where the body is a
/// set of named fields that are all optional (join, leave, logout...); where the body is a
/// document of its own (event content, account data) `{}` would be content the client never
/// sent, and where a field is required nothing is missing but the JSON: both are `M_NOT_JSON`.
/// (ruma reads an empty body as `{}` in its generated parsers but not in its hand-written
/// ones, so this decides for all of them.) The request type itself tells which case applies,
/// by probing it:
/// - it parses with a body that is not JSON at all: it has no JSON body (GET requests, raw
///   bytes), nothing is missing;
/// - it parses with an object whose only key cannot be decoded (a lone UTF-16 surrogate): the
///   body keeps its JSON as sent without interpreting the keys, so it is a free-form document
///   (a body of named fields must decode each key to match it and refuses this one);
/// - otherwise it is parsed from `{}`, which fails exactly when a field is required.
fn parse_without_body<R: IncomingRequest>(
    parts: http::request::Parts,
    args: &[&str],
) -> Result<R, Error> {
    let parse = |body: &'static [u8]| {
        R::try_from_http_request(http::Request::from_parts(parts.clone(), body), args)
    };
    let missing = || Error::not_json("This endpoint needs a JSON request body");
    if let Ok(parsed) = parse(b"\0") {
        return Ok(parsed);
    }
    if parse(br#"{"\udc00": 0}"#).is_ok() {
        return Err(missing());
    }
    parse(b"{}").map_err(|e| match e {
        FromHttpRequestError::Deserialization(DeserializationError::Json(_)) => missing(),
        e => request_error(e),
    })
}

/// Whether `body` holds one JSON value followed by more than whitespace. Some of ruma's
/// hand-written parsers read the first value and ignore the rest; a body like `{} x` is not a
/// JSON document and is refused before any parser sees it.
fn has_trailing_garbage(body: &[u8]) -> bool {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde::de::IgnoredAny::deserialize(&mut de).is_ok() && de.end().is_err()
}

/// Parses a raw route's request as the ruma endpoint `R`, with the errors of ruma routes
/// (for endpoints ruma knows on paths the router does not register for it, e.g. unstable ones).
pub fn parse_raw<R: IncomingRequest>(request: http::Request<Vec<u8>>) -> Result<R, Error> {
    let (parts, body) = request.into_parts();
    if body.is_empty() {
        return parse_without_body::<R>(parts, &[]);
    }
    if has_trailing_garbage(&body) {
        return Err(Error::not_json(
            "Request body has content after its JSON value",
        ));
    }
    R::try_from_http_request(http::Request::from_parts(parts, &body[..]), &[] as &[&str])
        .map_err(request_error)
}

/// Maps ruma's request parsing failures onto the spec's error codes: a body that is not JSON
/// at all is `M_NOT_JSON`; JSON of the wrong shape is `M_BAD_JSON`; a bad identifier, query or
/// header is `M_INVALID_PARAM`.
fn request_error(e: FromHttpRequestError) -> Error {
    match e {
        FromHttpRequestError::MethodMismatch { .. } => Error::method_not_allowed(),
        FromHttpRequestError::Deserialization(e) => match e {
            DeserializationError::Json(e) if e.is_syntax() || e.is_eof() => {
                Error::not_json(format!("Request body is not valid JSON: {e}"))
            }
            DeserializationError::Json(e) => {
                Error::bad_json(format!("Malformed request body: {e}"))
            }
            DeserializationError::Query(e) => {
                Error::invalid_param(format!("Invalid query parameter: {e}"))
            }
            DeserializationError::Ident(e) => {
                Error::invalid_param(format!("Invalid identifier: {e}"))
            }
            DeserializationError::Header(e) => {
                Error::missing_param(format!("Invalid or missing header: {e}"))
            }
            other => Error::bad_json(format!("Malformed request: {other}")),
        },
        other => Error::bad_json(format!("Malformed request: {other}")),
    }
}
