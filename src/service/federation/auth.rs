//! Inbound request authentication (spec: Server-Server API, Request Authentication): the
//! `Authorization: X-Matrix origin=…,destination=…,key=…,sig=…` header must carry the origin's
//! signature, with a key the keyring vouches for, over the method, the URI as sent, origin,
//! destination and the JSON body.

use std::collections::BTreeMap;

use http::StatusCode;
use ruma::api::federation::authentication::{XMatrix, XMatrixVerificationError};
use ruma::{MilliSecondsSinceUnixEpoch, OwnedServerName, ServerName};

use super::keyring::KeyRing;
use crate::error::Error;

fn unauthorized(message: impl Into<String>) -> Error {
    Error::new(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", message)
}

/// The verified origin of `request` (whose body is complete), or 401 `M_UNAUTHORIZED` saying
/// what is wrong. A request without a destination is accepted (the spec asks receivers to,
/// for older senders); one naming another destination is not.
pub async fn authenticate(
    keyring: &KeyRing,
    our_name: &ServerName,
    request: &http::Request<Vec<u8>>,
) -> Result<OwnedServerName, Error> {
    let header = XMatrix::extract_from_http_headers(request.headers()).map_err(|e| {
        unauthorized(format!(
            "Missing or malformed X-Matrix Authorization header: {e}"
        ))
    })?;
    if header.destination.as_deref().is_some_and(|d| d != our_name) {
        return Err(unauthorized(format!(
            "The request is addressed to another server, not {our_name}"
        )));
    }
    if header.origin == our_name {
        return Err(unauthorized("The origin is this server"));
    }
    let key_id = header.key.to_string();
    let keys = keyring
        .verify_keys(
            &header.origin,
            std::slice::from_ref(&key_id),
            MilliSecondsSinceUnixEpoch::now(),
        )
        .await
        .map_err(|e| {
            unauthorized(format!(
                "Cannot get the key {key_id} of {}: {}",
                header.origin, e.message
            ))
        })?;
    if !keys.contains_key(&key_id) {
        return Err(unauthorized(format!(
            "{} has no valid key {key_id}",
            header.origin
        )));
    }
    let map = BTreeMap::from([(header.origin.to_string(), keys)]);
    match header.verify_http_request(request, our_name, &map) {
        Ok(()) => Ok(header.origin),
        Err(XMatrixVerificationError::Signature(ruma::signatures::VerificationError::Json(_))) => {
            Err(Error::new(
                StatusCode::BAD_REQUEST,
                "M_NOT_JSON",
                "The request body is not valid canonical JSON",
            ))
        }
        Err(e) => Err(unauthorized(format!(
            "The X-Matrix signature does not verify: {e}"
        ))),
    }
}
