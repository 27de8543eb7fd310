//! The [`Transport`] of a running server: remote media comes through the federation client
//! (discovery, X-Matrix, TLS) and `Location` URLs through the plain outbound client; both
//! apply the outbound IP policy.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use ruma::ServerName;

use super::remote::{FetchError, Transport};
use crate::{
    http::router::BoxFuture,
    outbound::{Outbound, OutboundError},
    service::{
        federation::client::{FedError, FederationClient},
        Services,
    },
};

pub struct ServerTransport {
    federation: Arc<FederationClient>,
    outbound: Outbound,
}

impl Services {
    /// What fetches remote media for this server.
    pub fn media_transport(&self) -> ServerTransport {
        ServerTransport {
            federation: self.federation.clone(),
            outbound: self.outbound.clone(),
        }
    }
}

fn outbound_error(e: OutboundError) -> FetchError {
    match e {
        OutboundError::TooLarge => FetchError::TooLarge,
        OutboundError::InvalidUrl => FetchError::Response("an invalid URL".into()),
        e => FetchError::Transport(e.to_string()),
    }
}

fn fed_error(e: FedError) -> FetchError {
    match e {
        FedError::Outbound(e) => outbound_error(e),
        FedError::Remote {
            status,
            errcode,
            error,
        } => FetchError::Remote {
            status,
            errcode: Some(errcode),
            error,
        },
        FedError::Response(e) => FetchError::Response(e),
        e => FetchError::Transport(e.to_string()),
    }
}

/// A non-2xx answer as a [`FetchError::Remote`], with the Matrix error if the body is one.
fn remote_error(response: &http::Response<Bytes>) -> FetchError {
    #[derive(serde::Deserialize)]
    struct MatrixError {
        errcode: Option<String>,
        error: Option<String>,
    }
    let body: Option<MatrixError> = serde_json::from_slice(response.body()).ok();
    let (errcode, error) = body.map_or((None, None), |b| (b.errcode, b.error));
    FetchError::Remote {
        status: response.status(),
        errcode,
        error: error.unwrap_or_else(|| "no Matrix error in the answer".into()),
    }
}

impl Transport for ServerTransport {
    fn federation(
        &self,
        destination: &ServerName,
        request: http::Request<Vec<u8>>,
        sign: bool,
        timeout: Duration,
        max_body: usize,
    ) -> BoxFuture<Result<http::Response<Bytes>, FetchError>> {
        let federation = self.federation.clone();
        let destination = destination.to_owned();
        Box::pin(async move {
            let response = federation
                .send_raw(&destination, request, sign, timeout, max_body)
                .await
                .map_err(fed_error)?;
            if response.status().is_success() {
                Ok(response)
            } else {
                Err(remote_error(&response))
            }
        })
    }

    fn get(
        &self,
        url: &str,
        timeout: Duration,
        max_body: usize,
    ) -> BoxFuture<Result<http::Response<Bytes>, FetchError>> {
        let outbound = self.outbound.clone();
        let request = http::Request::get(url).body(Vec::new());
        Box::pin(async move {
            let request =
                request.map_err(|_| FetchError::Response("an invalid Location URL".into()))?;
            outbound
                .request(request, timeout, max_body)
                .await
                .map_err(outbound_error)
        })
    }
}
