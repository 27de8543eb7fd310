//! `GET /_matrix/federation/v1/user/devices/{userId}`, `POST user/keys/query` and
//! `POST user/keys/claim` (spec: Server-Server, End-to-End Encryption); the answers are built
//! in `service::federation::answers`.

use std::{collections::BTreeMap, sync::Arc};

use ruma::api::federation::{
    device::get_devices,
    keys::{claim_keys, get_keys},
};

use crate::{
    api::client::keys::{one_time_keys_of, raw},
    error::Result,
    http::{Ctx, Router},
    service::{federation::answers, Services},
};

pub fn routes(router: &mut Router) {
    router.ruma(devices);
    router.ruma(query);
    router.ruma(claim);
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
    let one_time_keys = one_time_keys_of(claimed)?;
    Ok(claim_keys::v1::Response::new(one_time_keys))
}
