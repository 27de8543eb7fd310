//! Server keys (spec: Server-Server API, Retrieving server keys): our own key response at
//! `GET /_matrix/key/v2/server`, and the notary endpoints `GET /_matrix/key/v2/query/{server}`
//! and `POST /_matrix/key/v2/query`. None is authenticated.
//!
//! The `/{keyId}` forms were removed from the spec (v1.7 for `server`); servers written
//! against older versions still call them, and the key id never narrowed the answer, so they
//! are served with the same answer as the plain forms.

use std::{collections::BTreeMap, sync::Arc};

use http::Method;
use ruma::{
    api::federation::discovery::{
        get_remote_server_keys::v2 as query_one, get_remote_server_keys_batch::v2 as query_batch,
        get_server_keys::v2 as server_keys, ServerSigningKeys,
    },
    serde::Raw,
    CanonicalJsonObject, OwnedServerName, ServerName,
};

use crate::{
    error::{Error, Result},
    http::{json_value, Auth, Ctx, Incoming, Response, Router},
    service::{keys::to_raw, users::now_ms, Services},
};

/// Servers one `POST /_matrix/key/v2/query` may ask about.
const MAX_QUERIED_SERVERS: usize = 100;

pub fn routes(router: &mut Router) {
    router.ruma(get_own);
    router.raw(
        Method::GET,
        "/_matrix/key/v2/server/{keyId}",
        Auth::None,
        get_own_by_key_id,
    );
    router.ruma(query);
    router.ruma(query_server);
    router.raw(
        Method::GET,
        "/_matrix/key/v2/query/{serverName}/{keyId}",
        Auth::None,
        query_server_by_key_id,
    );
}

fn own_response(services: &Services) -> CanonicalJsonObject {
    services
        .keys
        .key_response(services.keyring.server_name(), now_ms())
}

async fn get_own(
    services: Arc<Services>,
    _: Ctx,
    _: server_keys::Request,
) -> Result<server_keys::Response> {
    Ok(server_keys::Response::new(to_raw(&own_response(&services))))
}

async fn get_own_by_key_id(services: Arc<Services>, _: Incoming) -> Result<Response> {
    json_response(&own_response(&services))
}

async fn query_server(
    services: Arc<Services>,
    _: Ctx,
    body: query_one::Request,
) -> Result<query_one::Response> {
    let minimum = body.minimum_valid_until_ts.get().into();
    let found = services
        .keyring
        .notary_responses(&body.server_name, minimum)
        .await?;
    Ok(query_one::Response::new(raw_list(&found)))
}

/// The deprecated form: `minimum_valid_until_ts` as in the plain form; the key id is ignored.
async fn query_server_by_key_id(services: Arc<Services>, incoming: Incoming) -> Result<Response> {
    let server = incoming.path_args.first().map(String::as_str).unwrap_or("");
    let server = ServerName::parse(server)
        .map_err(|_| Error::invalid_param(format!("{server:?} is not a server name")))?;
    let minimum = match incoming
        .request
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("minimum_valid_until_ts="))
    {
        Some(value) => value.parse::<u64>().map_err(|_| {
            Error::invalid_param("minimum_valid_until_ts must be a timestamp in milliseconds")
        })?,
        None => now_ms(),
    };
    let found = services.keyring.notary_responses(&server, minimum).await?;
    let mut body = CanonicalJsonObject::new();
    body.insert(
        "server_keys".into(),
        ruma::CanonicalJsonValue::Array(found.into_iter().map(Into::into).collect()),
    );
    json_response(&body)
}

/// Answers for each server asked about; the key ids asked for do not narrow the answer (the
/// spec lets a notary return all keys), their `minimum_valid_until_ts` is the largest given.
async fn query(
    services: Arc<Services>,
    _: Ctx,
    body: query_batch::Request,
) -> Result<query_batch::Response> {
    if body.server_keys.len() > MAX_QUERIED_SERVERS {
        return Err(Error::invalid_param(format!(
            "At most {MAX_QUERIED_SERVERS} servers can be queried at once"
        )));
    }
    let now = now_ms();
    let wanted: BTreeMap<OwnedServerName, u64> = body
        .server_keys
        .iter()
        .map(|(server, ids)| {
            let minimum = ids
                .values()
                .map(|c| c.minimum_valid_until_ts.map_or(now, |ts| ts.get().into()))
                .max()
                .unwrap_or(now);
            (server.clone(), minimum)
        })
        .collect();
    let lookups = wanted
        .iter()
        .map(|(server, minimum)| services.keyring.notary_responses(server, *minimum));
    let mut all = Vec::new();
    for found in futures_util::future::join_all(lookups).await {
        all.extend(found?);
    }
    Ok(query_batch::Response::new(raw_list(&all)))
}

fn raw_list(objects: &[CanonicalJsonObject]) -> Vec<Raw<ServerSigningKeys>> {
    objects.iter().map(to_raw).collect()
}

fn json_response(object: &CanonicalJsonObject) -> Result<Response> {
    let value = serde_json::to_value(object).map_err(|e| Error::unknown(e.to_string()))?;
    Ok(json_value(http::StatusCode::OK, value))
}
