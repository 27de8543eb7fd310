//! `createRoom`: the creation events in the spec's order, built on each other and committed
//! as one batch.

use ruma::{events::TimelineEventType, OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomVersionId};
use serde_json::{json, Map, Value};

use std::sync::atomic::{AtomicU64, Ordering};

use super::{build::Staged, directory::PublicRooms, NewEvent, Rooms};
use crate::{
    error::{Error, Result},
    service::users::now_ms,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    PrivateChat,
    TrustedPrivateChat,
    PublicChat,
}

pub struct CreateRoom {
    pub creator: OwnedUserId,
    pub version: RoomVersionId,
    pub preset: Preset,
    pub publish: bool,
    pub creation_content: Map<String, Value>,
    pub power_level_override: Option<Map<String, Value>>,
    /// `(type, state_key, content)` in request order.
    pub initial_state: Vec<(String, String, Value)>,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub invite: Vec<OwnedUserId>,
    pub is_direct: bool,
    pub alias: Option<OwnedRoomAliasId>,
    /// Profile fields (`displayname`, `avatar_url`) copied into the creator's join and the
    /// invitees' member events.
    pub member_profiles: std::collections::BTreeMap<OwnedUserId, Map<String, Value>>,
}

/// Event types whose state the creation request may not set through `initial_state`: the
/// server builds them itself.
const RESERVED_INITIAL_STATE: &[&str] = &["m.room.create", "m.room.member", "m.room.power_levels"];

/// How often a creation whose commit met contention (not a taken alias) is rebuilt.
const CREATE_ATTEMPTS: usize = 4;

/// The last `origin_server_ts` claimed by a creation in this process (see [`claim_ts`]).
static LAST_CREATE_TS: AtomicU64 = AtomicU64::new(0);

/// A creation time no other creation of this process has: the clock, or one past the last
/// claim. A v12 room id is the hash of its create event, which holds only the creator, the
/// content and this time; distinct times keep same-content creations by one user apart.
fn claim_ts() -> u64 {
    let now = now_ms();
    let last = LAST_CREATE_TS
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(last.saturating_add(1).max(now))
        })
        .unwrap_or_else(|last| last);
    last.saturating_add(1).max(now)
}

fn alias_taken() -> Error {
    Error::new(
        http::StatusCode::BAD_REQUEST,
        "M_ROOM_IN_USE",
        "Room alias already taken",
    )
}

impl Rooms {
    /// Creates the room. Its batch's preconditions are that the room (id, record, create
    /// event) is new and, with an alias, that the alias is free. A conflict on a taken alias
    /// answers `M_ROOM_IN_USE`; any other conflict is contention with another creation and the
    /// room is rebuilt (new time, new id), a bounded number of times.
    pub async fn create_room(&self, request: CreateRoom) -> Result<OwnedRoomId> {
        for _ in 0..CREATE_ATTEMPTS {
            if let Some(alias) = &request.alias {
                if self.alias_room(alias)?.is_some() {
                    return Err(alias_taken());
                }
            }
            let staged = self.stage_creation(&request).await?;
            if let Some(room_id) = staged.try_commit().await? {
                return Ok(room_id);
            }
        }
        match &request.alias {
            Some(alias) if self.alias_room(alias)?.is_some() => Err(alias_taken()),
            _ => Err(Error::unknown(
                "room creation kept conflicting with concurrent writes",
            )),
        }
    }

    /// Builds the creation events and extra writes of `request`, uncommitted.
    async fn stage_creation(&self, request: &CreateRoom) -> Result<Staged<'_>> {
        let creator = &request.creator;
        let mut staged = self.stage_new_room(request.version.clone()).await?;
        staged.set_origin_server_ts(claim_ts());
        let rules = staged.rules().clone();
        let v12 = rules.authorization.explicitly_privilege_room_creators;

        // 1. m.room.create
        let mut create = request.creation_content.clone();
        create.insert("room_version".into(), json!(request.version));
        if !rules.authorization.use_room_create_sender {
            create.insert("creator".into(), json!(creator));
        } else {
            create.remove("creator");
        }
        let mut additional_creators: Vec<Value> = create
            .get("additional_creators")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if v12 && request.preset == Preset::TrustedPrivateChat {
            for user in &request.invite {
                if !additional_creators.contains(&json!(user)) && user != creator {
                    additional_creators.push(json!(user));
                }
            }
        }
        if v12 && !additional_creators.is_empty() {
            create.insert(
                "additional_creators".into(),
                Value::Array(additional_creators.clone()),
            );
        }
        staged.add(
            creator,
            NewEvent::state(TimelineEventType::RoomCreate, "", Value::Object(create)),
        )?;

        // 2. the creator joins
        let member_content = |user: &OwnedUserId, membership: &str| {
            let mut content = request
                .member_profiles
                .get(user)
                .cloned()
                .unwrap_or_default();
            content.insert("membership".into(), json!(membership));
            content
        };
        let join = member_content(creator, "join");
        staged.add(
            creator,
            NewEvent::state(
                TimelineEventType::RoomMember,
                creator.as_str(),
                Value::Object(join),
            ),
        )?;

        // 3. power levels
        let mut users = Map::new();
        if !v12 {
            users.insert(creator.to_string(), json!(100));
            if request.preset == Preset::TrustedPrivateChat {
                for user in &request.invite {
                    users.insert(user.to_string(), json!(100));
                }
            }
        }
        let mut power_levels = json!({
            "users": users,
            "users_default": 0,
            "events": {
                "m.room.name": 50,
                "m.room.power_levels": 100,
                "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50,
                "m.room.avatar": 50,
                "m.room.tombstone": if v12 { 150 } else { 100 },
                "m.room.server_acl": 100,
                "m.room.encryption": 100,
            },
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": if request.preset == Preset::PublicChat { 50 } else { 0 },
            "notifications": {"room": 50},
        });
        if let (Some(overrides), Some(target)) =
            (&request.power_level_override, power_levels.as_object_mut())
        {
            for (key, value) in overrides {
                target.insert(key.clone(), value.clone());
            }
        }
        staged.add(
            creator,
            NewEvent::state(TimelineEventType::RoomPowerLevels, "", power_levels),
        )?;

        // 4. canonical alias
        if let Some(alias) = &request.alias {
            staged.add(
                creator,
                NewEvent::state(
                    TimelineEventType::RoomCanonicalAlias,
                    "",
                    json!({"alias": alias}),
                ),
            )?;
        }

        // 5. preset
        let (join_rule, guest_access) = match request.preset {
            Preset::PublicChat => ("public", "forbidden"),
            Preset::PrivateChat | Preset::TrustedPrivateChat => ("invite", "can_join"),
        };
        let preset_events = [
            (
                TimelineEventType::RoomJoinRules,
                json!({"join_rule": join_rule}),
            ),
            (
                TimelineEventType::RoomHistoryVisibility,
                json!({"history_visibility": "shared"}),
            ),
            (
                TimelineEventType::RoomGuestAccess,
                json!({"guest_access": guest_access}),
            ),
        ];
        for (kind, content) in preset_events {
            // initial_state wins over the preset for the same key.
            let overridden = request
                .initial_state
                .iter()
                .any(|(k, s, _)| *k == kind.to_string() && s.is_empty());
            if !overridden {
                staged.add(creator, NewEvent::state(kind, "", content))?;
            }
        }

        // 6. initial_state
        for (kind, state_key, content) in &request.initial_state {
            if RESERVED_INITIAL_STATE.contains(&kind.as_str()) {
                return Err(Error::new(
                    http::StatusCode::BAD_REQUEST,
                    "M_INVALID_ROOM_STATE",
                    format!("{kind} cannot be set through initial_state"),
                ));
            }
            staged.add(
                creator,
                NewEvent::state(kind.as_str(), state_key.clone(), content.clone()),
            )?;
        }

        // 7. name and topic
        if let Some(name) = &request.name {
            staged.add(
                creator,
                NewEvent::state(TimelineEventType::RoomName, "", json!({"name": name})),
            )?;
        }
        if let Some(topic) = &request.topic {
            let content = json!({"topic": topic, "m.topic": {"m.text": [{"mimetype": "text/plain", "body": topic}]}});
            staged.add(
                creator,
                NewEvent::state(TimelineEventType::RoomTopic, "", content),
            )?;
        }

        // 8. invites of local users; users of other servers are invited once the room exists,
        // through their servers (`federation::invite`), by the caller.
        for user in request
            .invite
            .iter()
            .filter(|u| u.server_name() == self.server_name())
        {
            let mut content = member_content(user, "invite");
            if request.is_direct {
                content.insert("is_direct".into(), json!(true));
            }
            staged.add(
                creator,
                NewEvent::state(
                    TimelineEventType::RoomMember,
                    user.as_str(),
                    Value::Object(content),
                ),
            )?;
        }

        let room_id = staged
            .room_id()
            .map(ToOwned::to_owned)
            .ok_or_else(|| Error::unknown("no room id"))?;
        if let Some(alias) = &request.alias {
            Rooms::stage_alias(staged.batch_mut(), alias, &room_id, creator);
        }
        if request.publish {
            staged
                .batch_mut()
                .put::<PublicRooms>(&room_id.to_string(), &true);
        }
        Ok(staged)
    }
}

#[cfg(test)]
mod tests {
    use super::claim_ts;

    #[test]
    fn claimed_times_are_distinct_and_increasing() {
        let mut last = 0;
        for _ in 0..1000 {
            let ts = claim_ts();
            assert!(ts > last, "{ts} after {last}");
            last = ts;
        }
    }
}
