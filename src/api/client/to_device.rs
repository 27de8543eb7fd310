//! Send-to-device messaging (spec: "Send-to-Device messaging").

use std::sync::Arc;

use ruma::{api::client::to_device::send_event_to_device, to_device::DeviceIdOrAllDevices};

use crate::{
    error::Result,
    http::{Ctx, Router},
    service::{
        e2ee::{
            parse_object,
            to_device::{Messages, Target},
        },
        Services,
    },
};

pub fn routes(router: &mut Router) {
    router.ruma(send);
}

async fn send(
    services: Arc<Services>,
    ctx: Ctx,
    body: send_event_to_device::v3::Request,
) -> Result<send_event_to_device::v3::Response> {
    let me = ctx.authed()?;
    let mut messages = Messages::new();
    for (user_id, devices) in &body.messages {
        for (target, content) in devices {
            let content = parse_object(content.json().get(), "Message content")?;
            let target = match target {
                DeviceIdOrAllDevices::DeviceId(device) => Target::Device(device.clone()),
                DeviceIdOrAllDevices::AllDevices => Target::AllDevices,
            };
            messages.push((user_id.clone(), target, content));
        }
    }
    services
        .e2ee
        .send_to_device(
            &me.user_id,
            &me.device_id,
            &body.event_type.to_string(),
            body.txn_id.as_str(),
            &messages,
        )
        .await?;
    Ok(send_event_to_device::v3::Response::new())
}
