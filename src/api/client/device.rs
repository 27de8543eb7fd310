//! Device management.
//!
//! `GET /devices` and `GET /devices/{deviceId}` are raw routes, to control which keys are sent:
//! every device logged in since last-seen data is recorded at login has `last_seen_ts` and
//! `last_seen_ip`; older records that have none leave the keys out (ruma's `Device` would send
//! `"last_seen_ip": null`). `display_name` is the one key always sent, `null` when the user set
//! no name: matrix-nio's response schema requires the key (allowing null) and rejects the
//! whole list without it, and `null` there is what other homeservers send too.

use std::sync::Arc;

use http::StatusCode;
use ruma::{
    api::client::device::{delete_device, delete_devices, get_device, get_devices, update_device},
    OwnedDeviceId,
};
use serde_json::{json, Map, Value};

use crate::{
    error::{Error, Result},
    http::{json_value, Ctx, Incoming, Response, Router},
    service::{sessions::DeviceRecord, Services},
};

pub fn routes(router: &mut Router) {
    router.raw_ruma::<get_devices::v3::Request, _, _>(list);
    router.raw_ruma::<get_device::v3::Request, _, _>(get);
    router.ruma(update);
    router.ruma(delete);
    router.ruma(delete_many);
}

/// A device as the spec's `Device` object (see the module documentation for absent values).
fn device_json(device_id: &str, record: DeviceRecord) -> Value {
    let mut device = Map::new();
    device.insert("device_id".into(), device_id.into());
    device.insert("display_name".into(), record.display_name.into());
    if let Some(ip) = record.last_seen_ip {
        device.insert("last_seen_ip".into(), ip.into());
    }
    if let Some(ts) = record.last_seen_ms {
        device.insert("last_seen_ts".into(), ts.into());
    }
    Value::Object(device)
}

async fn list(services: Arc<Services>, incoming: Incoming) -> Result<Response> {
    let me = incoming.ctx.authed()?;
    let devices: Vec<Value> = services
        .sessions
        .devices(&me.user_id)?
        .into_iter()
        .map(|(id, record)| device_json(id.as_str(), record))
        .collect();
    Ok(json_value(StatusCode::OK, json!({ "devices": devices })))
}

async fn get(services: Arc<Services>, incoming: Incoming) -> Result<Response> {
    let me = incoming.ctx.authed()?;
    let device_id = incoming
        .path_args
        .first()
        .ok_or_else(|| Error::missing_param("Missing device id"))?;
    let record = services
        .sessions
        .device(&me.user_id, &OwnedDeviceId::from(device_id.as_str()))?
        .ok_or_else(|| Error::not_found("Unknown device"))?;
    Ok(json_value(StatusCode::OK, device_json(device_id, record)))
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
        .reauthenticate(
            "delete_device",
            &me.user_id,
            ctx.ip,
            &json!({ "device_id": body.device_id }),
            body.auth.as_ref(),
        )
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
    // The same set of devices in any order is the same operation.
    let mut devices: Vec<&str> = body.devices.iter().map(|d| d.as_str()).collect();
    devices.sort_unstable();
    devices.dedup();
    services
        .reauthenticate(
            "delete_devices",
            &me.user_id,
            ctx.ip,
            &json!({ "devices": devices }),
            body.auth.as_ref(),
        )
        .await?;
    services
        .sessions
        .delete_devices(&me.user_id, Some(&body.devices), None)
        .await?;
    Ok(delete_devices::v3::Response::new())
}
