//! The production [`KeyFetcher`]: the federation client, with small bounds of its own (key
//! responses are a few hundred bytes; nobody should make us read megabytes for them).

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use ruma::{
    api::{
        federation::discovery::{
            get_remote_server_keys_batch::v2 as batch, get_server_keys::v2 as server_keys,
            ServerSigningKeys,
        },
        IncomingResponse, IncomingResponseExt, OutgoingRequest, OutgoingRequestExt,
    },
    serde::Raw,
    ServerName,
};

use super::KeyFetcher;
use crate::service::federation::client::FederationClient;

const TIMEOUT: Duration = Duration::from_secs(15);
/// Our own response is ~400 bytes; Synapse's with a few old keys stays below 4 KiB.
const MAX_SERVER_KEYS_BYTES: usize = 64 * 1024;
/// A notary answers with one response per server asked about (we ask about one).
const MAX_NOTARY_BYTES: usize = 256 * 1024;

impl KeyFetcher for FederationClient {
    fn server_keys<'a>(
        &'a self,
        server: &'a ServerName,
    ) -> BoxFuture<'a, Result<Raw<ServerSigningKeys>, String>> {
        Box::pin(async move {
            let response: server_keys::Response = call(
                self,
                server,
                server_keys::Request::new(),
                MAX_SERVER_KEYS_BYTES,
            )
            .await?;
            Ok(response.server_key)
        })
    }

    fn query_notary<'a>(
        &'a self,
        notary: &'a ServerName,
        request: batch::Request,
    ) -> BoxFuture<'a, Result<Vec<Raw<ServerSigningKeys>>, String>> {
        Box::pin(async move {
            let response: batch::Response = call(self, notary, request, MAX_NOTARY_BYTES).await?;
            Ok(response.server_keys)
        })
    }
}

async fn call<R>(
    client: &FederationClient,
    destination: &ServerName,
    request: R,
    max_body: usize,
) -> Result<R::IncomingResponse, String>
where
    R: OutgoingRequest<
        Authentication = ruma::api::auth_scheme::NoAuthentication,
        PathBuilder = ruma::api::path_builder::SinglePath,
    >,
{
    let mut http_request = request
        .try_into_http_request::<Vec<u8>>(&format!("https://{destination}"), (), ())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    // The transport wants the path and query only; it finds the address itself.
    let path = http_request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    *http_request.uri_mut() = path.parse().map_err(|_| "bad request path".to_owned())?;
    let response = client
        .send_raw(destination, http_request, false, TIMEOUT, max_body)
        .await
        .map_err(|e| e.to_string())?;
    decode::<R::IncomingResponse>(response)
}

fn decode<T: IncomingResponse>(response: http::Response<Bytes>) -> Result<T, String> {
    let status = response.status();
    if !status.is_success() {
        let body = response.body();
        let snippet = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Err(format!("answered {status}: {snippet}"));
    }
    let (parts, body) = response.into_parts();
    T::try_from_http_response(http::Response::from_parts(parts, &body[..]))
        .map_err(|e| format!("unreadable key response: {e}"))
}
