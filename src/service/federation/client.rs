//! Requests to other servers: ruma request types in, ruma response types out, X-Matrix signed
//! with our key and carried by the outbound transport (discovery, IP policy, TLS).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use ruma::api::{
    auth_scheme::NoAuthentication, federation::authentication::ServerSignatures,
    federation::authentication::XMatrixSigningInput, path_builder::SinglePath, IncomingResponseExt,
    OutgoingRequest, OutgoingRequestExt,
};
use ruma::{OwnedServerName, ServerName};

use crate::outbound::{Outbound, OutboundError};
use crate::service::keys::ServerKeys;

/// How long one federation request may take, all included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest response body of a typed request (state of large rooms is big).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Why a request to another server failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FedError {
    /// Discovery, connection, TLS, timeout or size limit.
    #[error(transparent)]
    Outbound(#[from] OutboundError),
    /// The other server answered with an error.
    #[error("{status} {errcode}: {error}")]
    Remote {
        status: StatusCode,
        errcode: String,
        error: String,
    },
    /// The answer could not be read (not the endpoint's response format).
    #[error("unreadable response: {0}")]
    Response(String),
    /// The request could not be built (a bug or an invalid argument).
    #[error("cannot build the request: {0}")]
    Request(String),
    /// The destination is this server: nothing goes over the network to ourselves.
    #[error("the destination is this server")]
    ToSelf,
}

impl FedError {
    /// The peer's Matrix error code, when it answered with one.
    pub fn errcode(&self) -> Option<&str> {
        match self {
            FedError::Remote { errcode, .. } => Some(errcode),
            _ => None,
        }
    }
}

/// Sends requests to other servers. Cheap to share; holds no per-destination state (the
/// transaction queue keeps that).
pub struct FederationClient {
    server_name: OwnedServerName,
    keys: Arc<ServerKeys>,
    outbound: Outbound,
}

impl FedError {
    /// Whether the other server does not know the endpoint: 404 or 405 without a Matrix error
    /// of its own or with `M_UNRECOGNIZED` (spec 1.6), or the 400 `M_UNRECOGNIZED` of older
    /// servers. A 404 with another error code (`M_NOT_FOUND`) is an answer of the endpoint.
    pub fn is_unknown_endpoint(&self) -> bool {
        let FedError::Remote {
            status, errcode, ..
        } = self
        else {
            return false;
        };
        match *status {
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
                errcode == "M_UNRECOGNIZED" || errcode == NO_ERRCODE
            }
            StatusCode::BAD_REQUEST => errcode == "M_UNRECOGNIZED",
            _ => false,
        }
    }
}

/// The error code of a [`FedError::Remote`] whose answer named none (not a Matrix error).
const NO_ERRCODE: &str = "M_UNKNOWN";

impl FederationClient {
    pub fn new(server_name: OwnedServerName, keys: Arc<ServerKeys>, outbound: Outbound) -> Self {
        FederationClient {
            server_name,
            keys,
            outbound,
        }
    }

    pub fn server_name(&self) -> &ServerName {
        &self.server_name
    }

    /// A request signed with X-Matrix (with `destination`), as every authenticated federation
    /// endpoint wants.
    pub async fn send<R>(
        &self,
        destination: &ServerName,
        request: R,
    ) -> Result<R::IncomingResponse, FedError>
    where
        R: OutgoingRequest<Authentication = ServerSignatures, PathBuilder = SinglePath>,
    {
        self.send_with_limits(destination, request, REQUEST_TIMEOUT, MAX_RESPONSE_BYTES)
            .await
    }

    /// [`FederationClient::send`] with a tighter time limit and response size than the
    /// defaults (queries made for clients, whose answers are small).
    pub async fn send_with_limits<R>(
        &self,
        destination: &ServerName,
        request: R,
        timeout: Duration,
        max_body: usize,
    ) -> Result<R::IncomingResponse, FedError>
    where
        R: OutgoingRequest<Authentication = ServerSignatures, PathBuilder = SinglePath>,
    {
        self.check_destination(destination)?;
        let input = XMatrixSigningInput::new(
            self.server_name.clone(),
            destination.to_owned(),
            &self.keys.keypair,
        );
        let request = request
            .try_into_http_request::<Vec<u8>>(&base_url(destination), input, ())
            .map_err(|e| FedError::Request(e.to_string()))?;
        let response = self
            .exchange(destination, request, timeout, max_body)
            .await?;
        decode::<R>(response)
    }

    /// A request to an endpoint without authentication (the key endpoints).
    pub async fn send_unauthenticated<R>(
        &self,
        destination: &ServerName,
        request: R,
    ) -> Result<R::IncomingResponse, FedError>
    where
        R: OutgoingRequest<Authentication = NoAuthentication, PathBuilder = SinglePath>,
    {
        self.check_destination(destination)?;
        let request = request
            .try_into_http_request::<Vec<u8>>(&base_url(destination), (), ())
            .map_err(|e| FedError::Request(e.to_string()))?;
        let response = self
            .exchange(destination, request, REQUEST_TIMEOUT, MAX_RESPONSE_BYTES)
            .await?;
        decode::<R>(response)
    }

    /// A raw request (`request`'s URI is the path and query), X-Matrix signed when `sign`. The
    /// response comes back as it is, whatever its status, for callers that read bodies other
    /// than JSON (media).
    pub async fn send_raw(
        &self,
        destination: &ServerName,
        request: http::Request<Vec<u8>>,
        sign: bool,
        timeout: Duration,
        max_body: usize,
    ) -> Result<http::Response<Bytes>, FedError> {
        self.check_destination(destination)?;
        let mut request = request;
        if sign {
            let input = XMatrixSigningInput::new(
                self.server_name.clone(),
                destination.to_owned(),
                &self.keys.keypair,
            );
            let header =
                ruma::api::federation::authentication::XMatrix::sign_http_request(&request, input)
                    .map_err(|e| FedError::Request(e.to_string()))?;
            request.headers_mut().insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from(&header),
            );
        }
        self.exchange(destination, request, timeout, max_body).await
    }

    /// A signed request with a JSON body that ruma's request types cannot carry (the v1
    /// invite's body is the event itself, fields ruma does not model included). Returns the
    /// body of a success; an error status is a [`FedError::Remote`].
    pub async fn send_json(
        &self,
        destination: &ServerName,
        method: http::Method,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Bytes, FedError> {
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|e| FedError::Request(e.to_string()))?;
        let response = self
            .send_raw(destination, request, true, timeout, max_body)
            .await?;
        if !response.status().is_success() {
            return Err(remote_error(&response));
        }
        Ok(response.into_body())
    }

    fn check_destination(&self, destination: &ServerName) -> Result<(), FedError> {
        if destination == self.server_name {
            return Err(FedError::ToSelf);
        }
        Ok(())
    }

    async fn exchange(
        &self,
        destination: &ServerName,
        request: http::Request<Vec<u8>>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<http::Response<Bytes>, FedError> {
        let response = self
            .outbound
            .federation_request(destination, request, timeout, max_body)
            .await;
        if let Err(e) = &response {
            log::debug!("federation request to {destination} failed: {e}");
        }
        Ok(response?)
    }
}

/// The URL ruma builds the request on; only its path and query are sent (the transport finds
/// the address), and only they are signed.
fn base_url(destination: &ServerName) -> String {
    format!("https://{destination}")
}

/// The typed response, or the peer's Matrix error.
fn decode<R: OutgoingRequest>(
    response: http::Response<Bytes>,
) -> Result<R::IncomingResponse, FedError> {
    if !response.status().is_success() {
        return Err(remote_error(&response));
    }
    let (parts, body) = response.into_parts();
    R::IncomingResponse::try_from_http_response(http::Response::from_parts(parts, &body[..]))
        .map_err(|e| FedError::Response(e.to_string()))
}

/// The Matrix error of an error answer (its status, and [`NO_ERRCODE`] when it names none).
fn remote_error(response: &http::Response<Bytes>) -> FedError {
    #[derive(serde::Deserialize)]
    struct MatrixError {
        errcode: Option<String>,
        error: Option<String>,
    }
    let body: Option<MatrixError> = serde_json::from_slice(response.body()).ok();
    let (errcode, error) = body.map_or((None, None), |b| (b.errcode, b.error));
    FedError::Remote {
        status: response.status(),
        errcode: errcode.unwrap_or_else(|| NO_ERRCODE.into()),
        error: error.unwrap_or_else(|| {
            String::from_utf8_lossy(&response.body()[..response.body().len().min(200)]).into_owned()
        }),
    }
}
