//! `GET /_matrix/federation/v1/user/devices/{userId}`, `POST user/keys/query` and
//! `POST user/keys/claim` (spec: Server-Server, End-to-End Encryption); the answers are built
//! in `service::federation::answers`.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    api::federation::{
        device::get_devices,
        keys::{claim_keys, get_keys},
    },
    serde::Raw,
};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::{federation::answers, Services},
};

pub fn routes(router: &mut Router) {
    router.ruma(devices);
    router.ruma(query);
    router.ruma(claim);
}

fn raw<T>(value: &Value) -> Result<Raw<T>> {
    serde_json::value::to_raw_value(value)
        .map(Raw::from_json)
        .map_err(|_| Error::unknown("Cannot serialize a key"))
}

async fn devices(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_devices::v1::Request,
) -> Result<get_devices::v1::Response> {
    ctx.origin()?;
    answers::user_devices(&services, &body.user_id)
}

async fn query(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_keys::v1::Request,
) -> Result<get_keys::v1::Response> {
    ctx.origin()?;
    let keys = answers::query_keys(&services, &body.device_keys)?;
    let mut response = get_keys::v1::Response::new(BTreeMap::new());
    for (user, devices) in keys.device_keys {
        let devices = devices
            .iter()
            .map(|(device, keys)| Ok((device.clone(), raw(keys)?)))
            .collect::<Result<_>>()?;
        response.device_keys.insert(user, devices);
    }
    for (from, to) in [
        (keys.master_keys, &mut response.master_keys),
        (keys.self_signing_keys, &mut response.self_signing_keys),
    ] {
        for (user, key) in from {
            to.insert(user, raw(&key)?);
        }
    }
    Ok(response)
}

async fn claim(
    services: Arc<Services>,
    ctx: Ctx,
    body: claim_keys::v1::Request,
) -> Result<claim_keys::v1::Response> {
    ctx.origin()?;
    let claimed = answers::claim_keys(&services, &body.one_time_keys).await?;
    let mut one_time_keys = BTreeMap::new();
    for (user, devices) in claimed {
        let mut by_device = BTreeMap::new();
        for (device, keys) in devices {
            let mut by_id = BTreeMap::new();
            for (id, key) in keys {
                let id = id
                    .as_str()
                    .try_into()
                    .map_err(|_| Error::unknown("Stored key id is invalid"))?;
                by_id.insert(id, raw(&key)?);
            }
            by_device.insert(device, by_id);
        }
        one_time_keys.insert(user, by_device);
    }
    Ok(claim_keys::v1::Response::new(one_time_keys))
}
