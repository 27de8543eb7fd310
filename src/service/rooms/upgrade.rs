//! Room upgrades (spec: client-server API, "Room Upgrades", server behaviour).
//!
//! In the spec's order: check that the user may send `m.room.tombstone`; create the
//! replacement room (create event with `predecessor`, copying `type` and `m.federate`);
//! replicate the transferable state; move the local aliases (and the directory listing); send
//! the tombstone in the old room; raise the old room's `events_default` and `invite` so it
//! can no longer be used.
//!
//! Both rooms are staged under their locks before anything is written, so every authorisation
//! failure is found while nothing has been stored; then the new room, its alias moves, and the
//! old room's tombstone and power levels commit as one atomic batch.

use ruma::{
    events::{room::member::MembershipState, StateEventType, TimelineEventType},
    OwnedRoomId, OwnedUserId, RoomVersionId, UserId,
};
use serde_json::{json, Map, Value};

use super::{
    build::Staged,
    directory::{creators_of, PublicRooms},
    NewEvent, Rooms,
};
use crate::error::{Error, Result};

/// State copied to the replacement room, in this order (after its power levels).
const TRANSFERRED_STATE: &[StateEventType] = &[
    StateEventType::RoomJoinRules,
    StateEventType::RoomHistoryVisibility,
    StateEventType::RoomGuestAccess,
    StateEventType::RoomName,
    StateEventType::RoomTopic,
    StateEventType::RoomAvatar,
    StateEventType::RoomEncryption,
    StateEventType::RoomServerAcl,
    StateEventType::RoomCanonicalAlias,
];

/// The lowest level the old room's `events_default` and `invite` are raised to.
const RESTRICTED_LEVEL: i64 = 50;

pub struct UpgradeRoom {
    pub room_id: OwnedRoomId,
    pub user_id: OwnedUserId,
    pub new_version: RoomVersionId,
    /// Extra creators of the new room (room versions that privilege creators only).
    pub additional_creators: Vec<OwnedUserId>,
    /// Profile fields for the upgrading user's join event in the new room.
    pub member_content: Map<String, Value>,
}

/// A power level in a power levels content (integers, or numeric strings in old rooms).
fn level(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn level_or(content: &Map<String, Value>, key: &str, default: i64) -> i64 {
    level(content.get(key)).unwrap_or(default)
}

/// The level a power levels content requires to send state of `kind`.
fn state_level(content: &Map<String, Value>, kind: &StateEventType) -> i64 {
    level(content.get("events").and_then(|e| e.get(kind.to_string())))
        .unwrap_or_else(|| level_or(content, "state_default", 50))
}

fn user_level(content: &Map<String, Value>, user: &str) -> i64 {
    level(content.get("users").and_then(|u| u.get(user)))
        .unwrap_or_else(|| level_or(content, "users_default", 0))
}

/// The highest level named anywhere in a power levels content.
fn max_level(content: &Map<String, Value>) -> i64 {
    let mut max = 0;
    for (key, value) in content {
        match value {
            Value::Object(map) if key == "events" || key == "users" => {
                for value in map.values() {
                    max = max.max(level(Some(value)).unwrap_or(0));
                }
            }
            Value::Object(_) => {}
            value => max = max.max(level(Some(value)).unwrap_or(0)),
        }
    }
    max
}

fn users_mut(content: &mut Map<String, Value>) -> &mut Map<String, Value> {
    let users = content
        .entry("users")
        .or_insert_with(|| Value::Object(Map::new()));
    if !users.is_object() {
        *users = Value::Object(Map::new());
    }
    users.as_object_mut().expect("made an object above")
}

fn content_of(staged: &Staged<'_>, kind: &StateEventType, state_key: &str) -> Option<Value> {
    staged
        .state_pdu(kind, state_key)
        .and_then(|pdu| pdu.content_as::<Value>())
}

impl Rooms {
    /// Upgrades a room; returns the replacement room's id.
    pub async fn upgrade_room(&self, request: UpgradeRoom) -> Result<OwnedRoomId> {
        let user = &request.user_id;
        let new_rules = request.new_version.rules().ok_or_else(|| {
            Error::new(
                http::StatusCode::BAD_REQUEST,
                "M_UNSUPPORTED_ROOM_VERSION",
                "This server does not support that room version",
            )
        })?;
        let mut old = self.stage(&request.room_id).await?;
        let old_record = self
            .room(&request.room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;

        // 1. Permission to send the tombstone.
        if !self.can_send_state(
            &request.room_id,
            &old_record,
            user,
            StateEventType::RoomTombstone,
        )? {
            return Err(Error::forbidden(
                "You need to be joined and allowed to send m.room.tombstone to upgrade the room",
            ));
        }

        let old_rules = old.rules().authorization.clone();
        let old_create = old
            .state_pdu(&StateEventType::RoomCreate, "")
            .ok_or_else(|| Error::unknown("room has no create event"))?;
        let old_creators = creators_of(&old_create, &old_rules);
        let old_create_content = old_create.content_as::<Value>().unwrap_or(Value::Null);
        let old_power_levels = content_of(&old, &StateEventType::RoomPowerLevels, "");
        let last_event = self
            .timeline(old_record.sid, None, true, 1)?
            .into_iter()
            .next()
            .map(|e| e.pdu.event_id);

        // 2. The replacement room's create event. Where the new room's id is known before its
        // create event (before v12), the tombstone (step 5) is staged first, so that the
        // create event's `predecessor.event_id` names it: clients follow it to the exact
        // point where the old room was replaced. A v12 room id is the
        // hash of its create event, which would need the tombstone's id while the tombstone
        // needs the room id; there the predecessor names the last event before the upgrade
        // (the spec lets v12 omit it). Both rooms commit in one batch either way.
        let mut new = self.stage_new_room(request.new_version.clone()).await?;
        let tombstone = match new.room_id().map(ToOwned::to_owned) {
            Some(new_room_id) => Some(add_tombstone(&mut old, user, &new_room_id)?),
            None => None,
        };
        let v12 = new_rules.authorization.explicitly_privilege_room_creators;
        let mut create = Map::new();
        create.insert("room_version".into(), json!(request.new_version));
        if !new_rules.authorization.use_room_create_sender {
            create.insert("creator".into(), json!(user));
        }
        for field in ["type", "m.federate"] {
            if let Some(value) = old_create_content.get(field) {
                create.insert(field.into(), value.clone());
            }
        }
        let mut predecessor = Map::new();
        predecessor.insert("room_id".into(), json!(request.room_id));
        if let Some(event_id) = tombstone.as_ref().or(last_event.as_ref()) {
            predecessor.insert("event_id".into(), json!(event_id));
        }
        create.insert("predecessor".into(), Value::Object(predecessor));
        let mut new_creators: Vec<&UserId> = vec![user];
        if v12 {
            for extra in &request.additional_creators {
                if !new_creators.contains(&extra.as_ref()) {
                    new_creators.push(extra);
                }
            }
            if new_creators.len() > 1 {
                create.insert("additional_creators".into(), json!(new_creators[1..]));
            }
        }
        new.add(
            user,
            NewEvent::state(TimelineEventType::RoomCreate, "", Value::Object(create)),
        )?;
        let mut join = request.member_content.clone();
        join.insert("membership".into(), json!("join"));
        new.add(
            user,
            NewEvent::state(
                TimelineEventType::RoomMember,
                user.as_str(),
                Value::Object(join),
            ),
        )?;

        // 3. Transferable state: power levels first, adapted to the new version's creators.
        let mut power_levels = match &old_power_levels {
            Some(Value::Object(map)) => map.clone(),
            _ => Map::new(),
        };
        let had_power_levels = old_power_levels.is_some();
        if v12 {
            // Creators are privileged by the create event and may not appear in `users`.
            let users = users_mut(&mut power_levels);
            for creator in &new_creators {
                users.remove(creator.as_str());
            }
        } else if old_rules.explicitly_privilege_room_creators || !had_power_levels {
            // The old room's creators had the highest power (privileged, or 100 without a
            // power levels event); keep it.
            let top = max_level(&power_levels).max(100);
            let users = users_mut(&mut power_levels);
            for creator in &old_creators {
                let current = level(users.get(creator.as_str())).unwrap_or(0);
                users.insert(creator.to_string(), json!(current.max(top)));
            }
        }
        // State the new room could not take from a client is not copied: a redacted topic
        // (content `{}`) means the old room has no topic, and data stored before today's
        // content checks must not make the room impossible to upgrade.
        let transferred: Vec<(StateEventType, Value)> = TRANSFERRED_STATE
            .iter()
            .filter_map(|kind| content_of(&old, kind, "").map(|c| (kind.clone(), c)))
            .filter(|(kind, content)| {
                let fits = super::validate::check_state_content(&kind.to_string(), content);
                if let Err(e) = &fits {
                    log::info!("upgrade of {}: not copying {kind}: {e}", request.room_id);
                }
                fits.is_ok()
            })
            .collect();
        let mut bans: Vec<(String, Value)> = Vec::new();
        for (banned, membership) in self.members(old_record.sid)? {
            if membership != MembershipState::Ban.as_str()
                || new_creators.iter().any(|c| c.as_str() == banned)
            {
                continue;
            }
            let content = content_of(&old, &StateEventType::RoomMember, &banned);
            bans.push((banned, content.unwrap_or(Value::Null)));
        }

        // Before v12 the upgrading user needs enough power for everything copied below; if
        // the copied levels give less, the first power levels event raises them and a last
        // one restores the copy.
        let mut final_power_levels = None;
        if !v12 {
            let mut needed = state_level(&power_levels, &StateEventType::RoomPowerLevels);
            for (kind, _) in &transferred {
                needed = needed.max(state_level(&power_levels, kind));
            }
            if !bans.is_empty() {
                needed = needed.max(level_or(&power_levels, "ban", 50));
                for (banned, _) in &bans {
                    needed = needed.max(user_level(&power_levels, banned).saturating_add(1));
                }
            }
            if user_level(&power_levels, user.as_str()) < needed {
                final_power_levels = Some(power_levels.clone());
                users_mut(&mut power_levels).insert(user.to_string(), json!(needed));
            }
        }
        new.add(
            user,
            NewEvent::state(
                TimelineEventType::RoomPowerLevels,
                "",
                Value::Object(power_levels),
            ),
        )?;
        for (kind, content) in transferred {
            new.add(user, NewEvent::state(kind.to_string(), "", content))?;
        }
        for (banned, content) in bans {
            let mut ban = Map::new();
            ban.insert("membership".into(), json!("ban"));
            if let Some(reason) = content.get("reason").filter(|r| r.is_string()) {
                ban.insert("reason".into(), reason.clone());
            }
            new.add(
                user,
                NewEvent::state(TimelineEventType::RoomMember, banned, Value::Object(ban)),
            )?;
        }
        if let Some(content) = final_power_levels {
            new.add(
                user,
                NewEvent::state(
                    TimelineEventType::RoomPowerLevels,
                    "",
                    Value::Object(content),
                ),
            )?;
        }
        let new_room_id = new
            .room_id()
            .map(ToOwned::to_owned)
            .ok_or_else(|| Error::unknown("no room id"))?;

        // 4. Local aliases (and the directory listing) move to the new room.
        for alias in self.local_aliases(&request.room_id)? {
            if let Some(record) = self.alias_record(&alias)? {
                Self::stage_alias_move(new.batch_mut(), &alias, &record, &new_room_id);
            }
        }
        if self.is_published(&request.room_id)? {
            new.batch_mut()
                .delete::<PublicRooms>(&request.room_id.to_string())
                .put::<PublicRooms>(&new_room_id.to_string(), &true);
        }

        // 5. The tombstone, unless staged before the create event (see step 2).
        if tombstone.is_none() {
            add_tombstone(&mut old, user, &new_room_id)?;
        }

        // 6. Restrict the old room, if the user's power allows it.
        if let Some(Value::Object(mut content)) = old_power_levels {
            let floor = RESTRICTED_LEVEL.max(level_or(&content, "users_default", 0) + 1);
            let mut changed = false;
            for (key, default) in [("events_default", 0), ("invite", 0)] {
                if level_or(&content, key, default) < floor {
                    content.insert(key.into(), json!(floor));
                    changed = true;
                }
            }
            if changed {
                let event = NewEvent::state(
                    TimelineEventType::RoomPowerLevels,
                    "",
                    Value::Object(content),
                );
                match old.add(user, event) {
                    Ok(_) => {}
                    Err(e) if e.errcode == "M_FORBIDDEN" => {
                        log::info!(
                            "{user} upgraded {} but may not restrict its power levels",
                            request.room_id
                        );
                    }
                    Err(e) => return Err(e),
                }
            }
        }

        // One batch for both rooms: a crash leaves either the finished upgrade or nothing.
        new.absorb(old)?;
        new.commit_with(|| {
            Error::new(
                http::StatusCode::CONFLICT,
                "M_UNKNOWN",
                "An alias of the room changed during the upgrade; retry it",
            )
        })
        .await?;
        Ok(new_room_id)
    }
}

/// Stages the old room's tombstone pointing at its replacement.
fn add_tombstone(
    old: &mut super::build::Staged<'_>,
    user: &UserId,
    new_room_id: &ruma::RoomId,
) -> Result<ruma::OwnedEventId> {
    old.add(
        user,
        NewEvent::state(
            TimelineEventType::RoomTombstone,
            "",
            json!({
                "body": "This room has been replaced",
                "replacement_room": new_room_id,
            }),
        ),
    )
}
