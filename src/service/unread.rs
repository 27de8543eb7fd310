//! Unread notification counts (spec: "Receiving notifications", "Marking notifications as
//! read"), computed when `/sync` builds a joined room.
//!
//! The user's push rules are evaluated (`ruma::push::Ruleset::get_actions`) over the room's
//! events after where the user has read up to: the later of their `m.read` and `m.read.private`
//! receipts, unthreaded or for the event's thread (`main` or a thread root, see
//! [`super::receipts::thread_of`]). Sending an event also marks what came before it as read: an
//! own event in the main timeline ends the count, an own event in a thread ends that thread's.
//! The user's own events never count. An event whose actions contain `notify` counts as a
//! notification, one that also sets the `highlight` tweak as a highlight.
//!
//! Bound: at most [`MAX_SCAN`] events are looked at per room, newest first, so a room with more
//! unread events than that reports the counts of its newest `MAX_SCAN` (a lower bound, which
//! clients show as "many"). Receipts, own messages and the user's own join event all end the
//! walk early, so the usual cost is a handful of events. Nothing is stored: counts always follow
//! the current push rules and reset as soon as a receipt moves.

use std::collections::{BTreeMap, HashSet};

use ruma::{
    events::{
        room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent},
        StateEventType,
    },
    push::{PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset},
    serde::Raw,
    OwnedUserId, RoomId, UInt, UserId,
};
use serde_json::{json, Value};

use super::{
    receipts::{thread_of, Receipts},
    rooms::{RoomRecord, Rooms},
};
use crate::error::Result;

/// Most events looked at per room and sync.
pub const MAX_SCAN: usize = 200;
const PAGE: usize = 25;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub notifications: u64,
    pub highlights: u64,
}

impl Counts {
    pub fn json(&self) -> Value {
        json!({"notification_count": self.notifications, "highlight_count": self.highlights})
    }
}

/// A room's counts: the main timeline's and each thread's (by root id).
#[derive(Debug, Default, Clone)]
pub struct RoomCounts {
    pub main: Counts,
    pub threads: BTreeMap<String, Counts>,
}

impl RoomCounts {
    /// Main timeline and threads together.
    pub fn total(&self) -> Counts {
        self.threads.values().fold(self.main, |a, b| Counts {
            notifications: a.notifications + b.notifications,
            highlights: a.highlights + b.highlights,
        })
    }
}

/// The push-rule context of a room for `user_id`.
fn push_context(
    rooms: &Rooms,
    room_id: &RoomId,
    room: &RoomRecord,
    user_id: &UserId,
) -> Result<PushConditionRoomCtx> {
    let members = rooms.members(room.sid)?;
    let joined = members.iter().filter(|(_, m)| m == "join").count();
    let display_name = rooms
        .state_event(room.sid, &StateEventType::RoomMember, user_id.as_str())?
        .and_then(|e| e.pdu.content_as::<Value>())
        .and_then(|c| {
            c.get("displayname")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| user_id.localpart().to_owned());
    let ctx = PushConditionRoomCtx::new(
        room_id.to_owned(),
        UInt::try_from(joined).unwrap_or(UInt::MAX),
        user_id.to_owned(),
        display_name,
    );
    let Some(rules) = rooms.room_version(room)?.rules() else {
        return Ok(ctx);
    };
    let creators: Vec<OwnedUserId> =
        match rooms.state_event(room.sid, &StateEventType::RoomCreate, "")? {
            Some(create) => {
                let content = create.pdu.content_as::<Value>().unwrap_or(Value::Null);
                let mut creators = vec![create.pdu.sender.clone()];
                let additional = content
                    .get("additional_creators")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .filter_map(|u| UserId::parse(u).ok());
                creators.extend(additional);
                creators
            }
            None => Vec::new(),
        };
    let content = rooms
        .state_event(room.sid, &StateEventType::RoomPowerLevels, "")?
        .and_then(|e| e.pdu.content_as::<RoomPowerLevelsEventContent>());
    let power = RoomPowerLevels::new(content.into(), &rules.authorization, creators);
    Ok(ctx.with_power_levels(PushConditionPowerLevelsCtx::from(power)))
}

/// The unread counts of `user_id` in a room, over the timeline up to position `upto`.
/// Non-state events from `ignored` senders (`m.ignored_user_list`) are never delivered to the
/// user, so they never count either.
pub async fn room_counts(
    rooms: &Rooms,
    receipts: &Receipts,
    ruleset: &Ruleset,
    user_id: &UserId,
    room_id: &RoomId,
    upto: u64,
    ignored: &HashSet<String>,
) -> Result<RoomCounts> {
    let mut out = RoomCounts::default();
    let Some(room) = rooms.room(room_id)? else {
        return Ok(out);
    };
    let mut read = receipts.read_up_to(room_id, user_id)?;
    let mut ctx = None;
    let mut scanned = 0;
    let mut cursor = Some(upto);
    'walk: while let Some(from) = cursor {
        let page = rooms.timeline(room.sid, Some(from), true, PAGE)?;
        if page.is_empty() {
            break;
        }
        for event in page {
            cursor = event.sid.checked_sub(1);
            if event.sid <= read.unthreaded || scanned == MAX_SCAN {
                break 'walk;
            }
            scanned += 1;
            if event.pdu.rejected || event.meta.redacted_by.is_some() {
                continue;
            }
            let thread = thread_of(rooms, &event)?;
            if event.pdu.sender == user_id {
                if thread == "main" {
                    break 'walk;
                }
                let slot = read.threads.entry(thread).or_default();
                *slot = (*slot).max(event.sid);
                continue;
            }
            let from_ignored =
                event.meta.state_key.is_none() && ignored.contains(event.pdu.sender.as_str());
            if read.is_read(event.sid, &thread) || from_ignored {
                continue;
            }
            let ctx = match &mut ctx {
                Some(ctx) => ctx,
                None => ctx.insert(push_context(rooms, room_id, &room, user_id)?),
            };
            let Ok(json) = serde_json::value::to_raw_value(&event.json) else {
                continue;
            };
            let raw = Raw::<Value>::from_json(json);
            let actions = ruleset.get_actions(&raw, ctx).await;
            if !actions.iter().any(|a| a.should_notify()) {
                continue;
            }
            let counts = if thread == "main" {
                &mut out.main
            } else {
                out.threads.entry(thread).or_default()
            };
            counts.notifications += 1;
            if actions.iter().any(|a| a.is_highlight()) {
                counts.highlights += 1;
            }
        }
    }
    Ok(out)
}
