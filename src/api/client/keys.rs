//! End-to-end encryption keys: upload, query, claim, changes, cross-signing keys and
//! signatures (spec: "Key management API", "Cross-signing").

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    api::client::keys::{
        claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys,
    },
    serde::Raw,
    OneTimeKeyAlgorithm, OwnedDeviceId, OwnedUserId, UInt,
};
use serde_json::{value::to_raw_value, Value};

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::{
        e2ee::{
            keys::{parse_device_keys, parse_key, split_key_id, Upload},
            parse_object,
            signing::CrossSigningUpload,
        },
        federation::queries::{Requester, DEFAULT_KEYS_TIMEOUT},
        sync::SyncToken,
        Services,
    },
};

pub fn routes(router: &mut Router) {
    router.ruma(upload);
    router.ruma(query);
    router.ruma(claim);
    router.ruma(changes);
    router.ruma(upload_cross_signing);
    router.ruma(upload_signatures_handler);
}

/// A JSON value as a ruma `Raw`.
/// Claimed keys of this server's users as the client and federation APIs answer them.
pub(crate) fn one_time_keys_of(
    claimed: crate::service::e2ee::keys::Claimed,
) -> Result<ruma::api::federation::keys::claim_keys::v1::OneTimeKeys> {
    let mut one_time_keys = BTreeMap::new();
    for (user_id, devices) in claimed {
        let mut by_device = BTreeMap::new();
        for (device_id, keys) in devices {
            let mut by_id = BTreeMap::new();
            for (id, key) in keys {
                let id = id
                    .as_str()
                    .try_into()
                    .map_err(|_| Error::unknown("Stored key id is invalid"))?;
                by_id.insert(id, raw(&key)?);
            }
            by_device.insert(device_id, by_id);
        }
        one_time_keys.insert(user_id, by_device);
    }
    Ok(one_time_keys)
}

pub(crate) fn raw<T>(value: &Value) -> Result<Raw<T>> {
    to_raw_value(value)
        .map(Raw::from_json)
        .map_err(|_| Error::unknown("Cannot serialize a key"))
}

fn uint(n: u64) -> UInt {
    UInt::new(n).unwrap_or(UInt::MAX)
}

async fn upload(
    services: Arc<Services>,
    ctx: Ctx,
    body: upload_keys::v3::Request,
) -> Result<upload_keys::v3::Response> {
    let me = ctx.authed()?;
    let mut request = Upload {
        device_keys: body
            .device_keys
            .as_ref()
            .map(|keys| parse_device_keys(keys.json().get()))
            .transpose()?,
        ..Upload::default()
    };
    for (id, key) in &body.one_time_keys {
        let (algorithm, name) = split_key_id(id.as_str())?;
        let value = parse_key(key.json().get(), id.as_str())?;
        request.one_time_keys.push((algorithm, name, value));
    }
    for (id, key) in &body.fallback_keys {
        let (algorithm, name) = split_key_id(id.as_str())?;
        let value = parse_key(key.json().get(), id.as_str())?;
        request.fallback_keys.push((algorithm, name, value));
    }
    let counts = services
        .e2ee
        .upload_keys(&me.user_id, &me.device_id, request)
        .await?;
    Ok(upload_keys::v3::Response::new(
        counts
            .into_iter()
            .map(|(algorithm, n)| (OneTimeKeyAlgorithm::from(algorithm.as_str()), uint(n)))
            .collect(),
    ))
}

async fn query(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_keys::v3::Request,
) -> Result<get_keys::v3::Response> {
    let me = ctx.authed()?;
    let e2ee = &services.e2ee;
    let result = e2ee.query_keys(&me.user_id, &body.device_keys)?;
    let remote_users: BTreeMap<_, _> = body
        .device_keys
        .iter()
        .filter(|(user_id, _)| !e2ee.is_local(user_id))
        .map(|(user_id, devices)| (user_id.clone(), devices.clone()))
        .collect();
    let mut response = get_keys::v3::Response::new();
    if !remote_users.is_empty() {
        let timeout = body.timeout.unwrap_or(DEFAULT_KEYS_TIMEOUT);
        let remote = services
            .queries
            .query_keys(Requester::User(&me.user_id), remote_users, timeout)
            .await;
        response.failures = remote.failures;
        response.device_keys = remote.device_keys;
        response.master_keys = remote.master_keys;
        response.self_signing_keys = remote.self_signing_keys;
    }
    for (user_id, devices) in result.device_keys {
        // Users of this server that do not exist are left out (spec: unknown users are
        // missing from the result, not failures).
        if devices.is_empty() && services.users.get(&user_id)?.is_none() {
            continue;
        }
        let devices = devices
            .iter()
            .map(|(device, keys)| Ok((device.clone(), raw(keys)?)))
            .collect::<Result<BTreeMap<OwnedDeviceId, _>>>()?;
        response.device_keys.insert(user_id, devices);
    }
    for (from, to) in [
        (result.master_keys, &mut response.master_keys),
        (result.self_signing_keys, &mut response.self_signing_keys),
        (result.user_signing_keys, &mut response.user_signing_keys),
    ] {
        for (user_id, key) in from {
            to.insert(user_id, raw(&key)?);
        }
    }
    Ok(response)
}

async fn claim(
    services: Arc<Services>,
    ctx: Ctx,
    body: claim_keys::v3::Request,
) -> Result<claim_keys::v3::Response> {
    let me = ctx.authed()?;
    let e2ee = &services.e2ee;
    let mut remote_wanted = BTreeMap::new();
    let mut wanted = Vec::new();
    for (user_id, devices) in &body.one_time_keys {
        if !e2ee.is_local(user_id) {
            remote_wanted.insert(user_id.clone(), devices.clone());
            continue;
        }
        for (device_id, algorithm) in devices {
            wanted.push((user_id.clone(), device_id.clone(), algorithm.to_string()));
        }
    }
    let timeout = body.timeout.unwrap_or(DEFAULT_KEYS_TIMEOUT);
    // Remote claims run while the local ones commit.
    let (claimed, remote) = tokio::join!(
        e2ee.claim_keys(&wanted),
        services
            .queries
            .claim_keys(Requester::User(&me.user_id), remote_wanted, timeout)
    );
    let mut one_time_keys = remote.one_time_keys;
    one_time_keys.extend(one_time_keys_of(claimed?)?);
    let mut response = claim_keys::v3::Response::new(one_time_keys);
    response.failures = remote.failures;
    Ok(response)
}

async fn changes(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_key_changes::v3::Request,
) -> Result<get_key_changes::v3::Response> {
    let me = ctx.authed()?;
    let parse = |token: &str, name: &str| {
        SyncToken::parse(token)
            .map(|t| t.pos)
            .ok_or_else(|| Error::invalid_param(format!("{name} is not a valid sync token")))
    };
    let from = parse(&body.from, "from")?;
    let to = parse(&body.to, "to")?.min(services.stream.current());
    let (changed, left) = if to > from {
        services
            .e2ee
            .device_list_changes(&services.rooms, &me.user_id, from, to)?
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(get_key_changes::v3::Response::new(changed, left))
}

fn cross_signing_key(
    key: Option<&Raw<ruma::encryption::CrossSigningKey>>,
    name: &str,
) -> Result<Option<serde_json::Map<String, Value>>> {
    key.map(|k| parse_object(k.json().get(), name)).transpose()
}

async fn upload_cross_signing(
    services: Arc<Services>,
    ctx: Ctx,
    body: upload_signing_keys::v3::Request,
) -> Result<upload_signing_keys::v3::Response> {
    let me = ctx.authed()?;
    let master = cross_signing_key(body.master_key.as_ref(), "master_key")?;
    let self_signing = cross_signing_key(body.self_signing_key.as_ref(), "self_signing_key")?;
    let user_signing = cross_signing_key(body.user_signing_key.as_ref(), "user_signing_key")?;
    let upload = |authorized| {
        services.e2ee.upload_cross_signing(
            &me.user_id,
            master.clone(),
            self_signing.clone(),
            user_signing.clone(),
            authorized,
        )
    };
    if upload(false).await? == CrossSigningUpload::NeedsAuth {
        services
            .reauthenticate(
                "device_signing_upload",
                &me.user_id,
                ctx.ip,
                &serde_json::json!([master, self_signing, user_signing]),
                body.auth.as_ref(),
            )
            .await?;
        upload(true).await?;
    }
    Ok(upload_signing_keys::v3::Response::new())
}

async fn upload_signatures_handler(
    services: Arc<Services>,
    ctx: Ctx,
    body: upload_signatures::v3::Request,
) -> Result<upload_signatures::v3::Response> {
    let me = ctx.authed()?;
    let mut signed = Vec::new();
    for (user_id, keys) in &body.signed_keys {
        for (key_id, object) in keys.iter() {
            signed.push((
                user_id.clone(),
                key_id.to_owned(),
                parse_object(object.get(), "A signed key"),
            ));
        }
    }
    let failures = services
        .e2ee
        .upload_signatures(&me.user_id, &signed)
        .await?;
    let mut response = upload_signatures::v3::Response::new();
    for (user_id, by_key) in failures {
        let mut converted = BTreeMap::new();
        for (key_id, failure) in by_key {
            let failure = serde_json::from_value(failure)
                .map_err(|_| Error::unknown("Cannot build a signature failure"))?;
            converted.insert(key_id, failure);
        }
        response.failures.insert(user_id as OwnedUserId, converted);
    }
    Ok(response)
}
