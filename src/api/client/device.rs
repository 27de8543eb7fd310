//! Device management.

use std::sync::Arc;

use ruma::{
    api::client::device::{
        delete_device, delete_devices, get_device, get_devices, update_device, Device,
    },
    MilliSecondsSinceUnixEpoch, OwnedDeviceId, UInt,
};

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::{sessions::DeviceRecord, Services},
};

pub fn routes(router: &mut Router) {
    router.ruma(list);
    router.ruma(get);
    router.ruma(update);
    router.ruma(delete);
    router.ruma(delete_many);
}

fn to_device(device_id: OwnedDeviceId, record: DeviceRecord) -> Device {
    let mut device = Device::new(device_id);
    device.display_name = record.display_name;
    device.last_seen_ip = record.last_seen_ip;
    device.last_seen_ts = record
        .last_seen_ms
        .and_then(UInt::new)
        .map(MilliSecondsSinceUnixEpoch);
    device
}

async fn list(
    services: Arc<Services>,
    ctx: Ctx,
    _: get_devices::v3::Request,
) -> Result<get_devices::v3::Response> {
    let me = ctx.authed()?;
    let devices = services.sessions.devices(&me.user_id)?;
    Ok(get_devices::v3::Response::new(
        devices
            .into_iter()
            .map(|(id, r)| to_device(id, r))
            .collect(),
    ))
}

async fn get(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_device::v3::Request,
) -> Result<get_device::v3::Response> {
    let me = ctx.authed()?;
    let record = services.sessions.device(&me.user_id, &body.device_id)?;
    let record = record.ok_or_else(|| Error::not_found("Unknown device"))?;
    Ok(get_device::v3::Response::new(to_device(
        body.device_id,
        record,
    )))
}

async fn update(
    services: Arc<Services>,
    ctx: Ctx,
    body: update_device::v3::Request,
) -> Result<update_device::v3::Response> {
    let me = ctx.authed()?;
    services
        .sessions
        .set_display_name(&me.user_id, &body.device_id, body.display_name)
        .await?;
    Ok(update_device::v3::Response::new())
}

async fn delete(
    services: Arc<Services>,
    ctx: Ctx,
    body: delete_device::v3::Request,
) -> Result<delete_device::v3::Response> {
    let me = ctx.authed()?;
    if services
        .sessions
        .device(&me.user_id, &body.device_id)?
        .is_none()
    {
        return Err(Error::not_found("Unknown device"));
    }
    services
        .reauthenticate("delete_device", &me.user_id, body.auth.as_ref())
        .await?;
    let which = [body.device_id];
    services
        .sessions
        .delete_devices(&me.user_id, Some(&which), None)
        .await?;
    Ok(delete_device::v3::Response::new())
}

async fn delete_many(
    services: Arc<Services>,
    ctx: Ctx,
    body: delete_devices::v3::Request,
) -> Result<delete_devices::v3::Response> {
    let me = ctx.authed()?;
    services
        .reauthenticate("delete_devices", &me.user_id, body.auth.as_ref())
        .await?;
    services
        .sessions
        .delete_devices(&me.user_id, Some(&body.devices), None)
        .await?;
    Ok(delete_devices::v3::Response::new())
}
