//! Room tags: `GET /user/{userId}/rooms/{roomId}/tags` and `PUT/DELETE
//! /user/{userId}/rooms/{roomId}/tags/{tag}` (spec: "Room Tagging").
//!
//! Tags are the room's `m.tag` account data entry, so they reach clients through the room's
//! `account_data` in `/sync`. Own user only (403), rooms the user is or was in (403); a tag
//! name is 1 to 255 bytes and its `order` a number from 0 to 1 (400 `M_INVALID_PARAM`).

use std::sync::Arc;

use ruma::{
    api::client::tag::{create_tag, delete_tag, get_tags},
    events::tag::{TagInfo, TagName, Tags},
};
use serde_json::{json, Map};

use super::account_data::check_room;
use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::Services,
};

pub fn routes(router: &mut Router) {
    router.ruma(get);
    router.ruma(put);
    router.ruma(delete);
}

fn check_own(ctx: &Ctx, user_id: &ruma::UserId) -> Result<()> {
    if ctx.authed()?.user_id != user_id {
        return Err(Error::forbidden("Cannot access the tags of other users"));
    }
    Ok(())
}

async fn get(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_tags::v3::Request,
) -> Result<get_tags::v3::Response> {
    check_own(&ctx, &body.user_id)?;
    check_room(&services, &body.room_id, &body.user_id)?;
    let stored = services.account_data.tags(&body.user_id, &body.room_id)?;
    let mut tags = Tags::new();
    for (name, info) in stored {
        // A tag stored through the account data API with a malformed body is shown without
        // its ordering rather than failing the whole list.
        let info = serde_json::from_value::<TagInfo>(info).unwrap_or_default();
        tags.insert(TagName::from(name), info);
    }
    Ok(get_tags::v3::Response::new(tags))
}

async fn put(
    services: Arc<Services>,
    ctx: Ctx,
    body: create_tag::v3::Request,
) -> Result<create_tag::v3::Response> {
    check_own(&ctx, &body.user_id)?;
    check_room(&services, &body.room_id, &body.user_id)?;
    let mut info = Map::new();
    if let Some(order) = body.tag_info.order {
        if !order.is_finite() {
            return Err(Error::invalid_param("order must be a number from 0 to 1"));
        }
        info.insert("order".into(), json!(order));
    }
    services
        .account_data
        .set_tag(&body.user_id, &body.room_id, &body.tag, info)
        .await?;
    Ok(create_tag::v3::Response::new())
}

async fn delete(
    services: Arc<Services>,
    ctx: Ctx,
    body: delete_tag::v3::Request,
) -> Result<delete_tag::v3::Response> {
    check_own(&ctx, &body.user_id)?;
    check_room(&services, &body.room_id, &body.user_id)?;
    services
        .account_data
        .delete_tag(&body.user_id, &body.room_id, &body.tag)
        .await?;
    Ok(delete_tag::v3::Response::new())
}
