//! The presence section of a sync.

use std::collections::BTreeSet;

use ruma::{OwnedRoomId, OwnedUserId, UserId};
use serde_json::{json, Value};

use super::{
    filters::{filter_passes, limit_of},
    Sources, SyncRequest,
};
use crate::{
    error::Result,
    service::{
        presence::{co_members, View},
        users::now_ms,
    },
};

/// The `m.presence` events of a sync: users sharing a room with the syncing user (and the user
/// themself) whose presence changed since the token, everyone's on an initial sync, and the
/// members of rooms joined since the token.
pub(super) fn presence_events(
    sources: &Sources<'_>,
    request: &SyncRequest<'_>,
    now: u64,
    newly_joined: &[OwnedRoomId],
) -> Result<Vec<Value>> {
    let filter = &request.filter.presence;
    if !filter_passes(filter, "m.presence", None) {
        return Ok(Vec::new());
    }
    let rooms = sources.rooms;
    let mut wanted: BTreeSet<OwnedUserId> = BTreeSet::new();
    match request.since {
        None => wanted = co_members(rooms, request.user_id)?,
        Some(since) => {
            let changes = sources.presence.changes_since(since, now)?;
            if !changes.is_empty() {
                let members = co_members(rooms, request.user_id)?;
                wanted.extend(
                    changes
                        .into_iter()
                        .filter_map(|(user, _)| UserId::parse(user).ok())
                        .filter(|user| members.contains(user)),
                );
            }
            for room_id in newly_joined {
                let Some(room) = rooms.room(room_id)? else {
                    continue;
                };
                for (member, membership) in rooms.members(room.sid)? {
                    if membership == "join" {
                        if let Ok(member) = UserId::parse(member) {
                            wanted.insert(member);
                        }
                    }
                }
            }
        }
    }
    let now_ms = now_ms();
    let limit = limit_of(filter.limit);
    let mut events = Vec::new();
    for user in wanted {
        if events.len() >= limit {
            break;
        }
        if !filter_passes(filter, "m.presence", Some(user.as_str())) {
            continue;
        }
        let Some(record) = sources.presence.get(&user)? else {
            continue;
        };
        if record.pos > now {
            // Changed after this pass's position: the next sync sends it.
            continue;
        }
        let view = View::of(Some(&record), now_ms);
        events.push(json!({"type": "m.presence", "sender": user, "content": view.content()}));
    }
    Ok(events)
}
