//! Receipts and read markers: `POST /rooms/{roomId}/receipt/{receiptType}/{eventId}` and
//! `POST /rooms/{roomId}/read_markers` (spec: "Receipts", "Fully read markers").
//!
//! The user must be joined (403). The event must be in the room and visible to the user (404
//! otherwise). A `thread_id` must be `main` or the root of the event's thread, and is refused
//! with `m.fully_read` (400 `M_INVALID_PARAM`).

use std::sync::Arc;

use ruma::{
    api::client::{
        read_marker::set_read_marker,
        receipt::create_receipt::{self, v3::ReceiptType},
    },
    events::receipt::ReceiptThread,
    EventId, RoomId, UserId,
};

use super::typing::joined_members;
use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::{
        receipts::{Mark, Receipts, FULLY_READ, READ, READ_PRIVATE},
        rooms::StoredEvent,
        Services,
    },
};

pub fn routes(router: &mut Router) {
    router.ruma(post_receipt);
    router.ruma(set_read_marker);
}

/// An event of the room that the user may see, or 404.
fn room_event(
    services: &Services,
    room_id: &RoomId,
    user_id: &UserId,
    event_id: &EventId,
) -> Result<StoredEvent> {
    let not_found = || Error::not_found("Unknown event in this room");
    let room = services.rooms.room(room_id)?.ok_or_else(not_found)?;
    let event = services.rooms.event(event_id)?.ok_or_else(not_found)?;
    if event.meta.room_sid != room.sid
        || !services.rooms.reader(room_id, user_id)?.may_see(&event)?
    {
        return Err(not_found());
    }
    Ok(event)
}

async fn post_receipt(
    services: Arc<Services>,
    ctx: Ctx,
    body: create_receipt::v3::Request,
) -> Result<create_receipt::v3::Response> {
    let me = ctx.authed()?;
    let receipt_type = match body.receipt_type {
        ReceiptType::Read => READ,
        ReceiptType::ReadPrivate => READ_PRIVATE,
        ReceiptType::FullyRead => FULLY_READ,
        other => {
            return Err(Error::invalid_param(format!(
                "Unknown receipt type {}; use m.read, m.read.private or m.fully_read",
                other.as_str()
            )))
        }
    };
    let thread = match &body.thread {
        ReceiptThread::Unthreaded => String::new(),
        ReceiptThread::Main => "main".to_owned(),
        ReceiptThread::Thread(root) => root.to_string(),
        _ => {
            return Err(Error::invalid_param(
                "thread_id must be \"main\" or the event id of a thread root",
            ))
        }
    };
    if receipt_type == FULLY_READ && !thread.is_empty() {
        return Err(Error::invalid_param(
            "thread_id cannot be used with m.fully_read",
        ));
    }
    let members = joined_members(&services, &body.room_id, &me.user_id)?;
    let event = room_event(&services, &body.room_id, &me.user_id, &body.event_id)?;
    Receipts::check_thread(&services.rooms, &thread, &event)?;
    services
        .receipts
        .update(
            &services.rooms,
            &services.account_data,
            &body.room_id,
            &me.user_id,
            &[Mark {
                receipt_type,
                thread,
                event: &event,
            }],
            &members,
        )
        .await?;
    Ok(create_receipt::v3::Response::new())
}

async fn set_read_marker(
    services: Arc<Services>,
    ctx: Ctx,
    body: set_read_marker::v3::Request,
) -> Result<set_read_marker::v3::Response> {
    let me = ctx.authed()?;
    let members = joined_members(&services, &body.room_id, &me.user_id)?;
    let mut events = Vec::new();
    for (receipt_type, event_id) in [
        (FULLY_READ, &body.fully_read),
        (READ, &body.read_receipt),
        (READ_PRIVATE, &body.private_read_receipt),
    ] {
        if let Some(event_id) = event_id {
            let event = room_event(&services, &body.room_id, &me.user_id, event_id)?;
            events.push((receipt_type, event));
        }
    }
    let marks: Vec<Mark<'_>> = events
        .iter()
        .map(|(receipt_type, event)| Mark {
            receipt_type,
            thread: String::new(),
            event,
        })
        .collect();
    services
        .receipts
        .update(
            &services.rooms,
            &services.account_data,
            &body.room_id,
            &me.user_id,
            &marks,
            &members,
        )
        .await?;
    Ok(set_read_marker::v3::Response::new())
}
