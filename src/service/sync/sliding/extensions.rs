//! The extensions of a sliding sync response: to-device messages (MSC3885), end-to-end
//! encryption (MSC3884), account data (MSC3959), receipts (MSC3960) and typing (MSC3961).
//! Each is served when the request enables it; the room-scoped ones cover the rooms of the
//! lists and subscriptions they name (all of them when they name none).

use std::collections::{HashMap, HashSet};

use ruma::{
    api::client::sync::sync_events::v5::request::{ExtensionRoomConfig, Extensions},
    events::room::member::MembershipState,
    DeviceId, OwnedRoomId,
};
use serde_json::{json, Map, Value};

use super::{super::Sources, connections::Snapshot};
use crate::error::{Error, Result};

/// Which rooms each list and subscription of this response covers.
pub struct Scope<'a> {
    pub lists: &'a HashMap<String, Vec<OwnedRoomId>>,
    pub subscriptions: &'a [OwnedRoomId],
    /// Every room of the response's lists and subscriptions.
    pub all: &'a HashSet<OwnedRoomId>,
    /// For each room of the response the connection knew, the position up to which it was
    /// sent. A room missing here is new to the connection: its extension data comes in full.
    /// A room whose position is older than the previous response's was out of view since, so
    /// its receipts come from that position on, its account data and typing list in full.
    pub room_upto: &'a HashMap<OwnedRoomId, u64>,
}

impl Scope<'_> {
    /// Whether the room was in view in the previous response (its extension data since
    /// then is what is new).
    fn live(&self, room: &OwnedRoomId, previous: Option<&Snapshot>) -> bool {
        previous.is_some_and(|p| self.room_upto.get(room) == Some(&p.stream))
    }

    /// The rooms an extension with these `lists` and `rooms` settings covers.
    fn rooms(
        &self,
        lists: Option<&Vec<String>>,
        rooms: Option<&Vec<ExtensionRoomConfig>>,
    ) -> Vec<OwnedRoomId> {
        let mut out: Vec<OwnedRoomId> = Vec::new();
        let mut seen = HashSet::new();
        let mut add = |room: &OwnedRoomId| {
            if seen.insert(room.clone()) {
                out.push(room.clone());
            }
        };
        match lists {
            None => self.lists.values().flatten().for_each(&mut add),
            Some(names) => names
                .iter()
                .filter_map(|name| self.lists.get(name))
                .flatten()
                .for_each(&mut add),
        }
        match rooms {
            None => self.subscriptions.iter().for_each(&mut add),
            Some(configs) => {
                for config in configs {
                    match config {
                        ExtensionRoomConfig::AllSubscribed => {
                            self.subscriptions.iter().for_each(&mut add)
                        }
                        ExtensionRoomConfig::Room(room) if self.all.contains(room) => add(room),
                        _ => {}
                    }
                }
            }
        }
        out
    }
}

/// The extensions' response and whether it carries anything new; `typing_rooms` gets the
/// rooms whose typing lists the response follows (a lapsing notification wakes the wait).
#[allow(clippy::too_many_arguments)]
pub async fn extensions(
    sources: &Sources<'_>,
    user_id: &ruma::UserId,
    device_id: &str,
    request: &Extensions,
    scope: &Scope<'_>,
    previous: Option<&Snapshot>,
    ignored: &HashSet<String>,
    now: u64,
    typing_rooms: &mut Vec<OwnedRoomId>,
) -> Result<(Value, bool)> {
    let mut out = Map::new();
    let mut news = false;
    let device: &DeviceId = device_id.into();
    let since = previous.map(|p| p.stream);
    let enabled = |flag: Option<bool>| flag == Some(true);
    let from_ignored = |event: &Value| {
        event["sender"]
            .as_str()
            .is_some_and(|sender| ignored.contains(sender))
    };

    if enabled(request.to_device.enabled) {
        // Its own token: messages up to it were received, so they are deleted now.
        let to_device_since = match request.to_device.since.as_deref() {
            Some(token) => Some(
                token
                    .parse::<u64>()
                    .map_err(|_| Error::invalid_param("Invalid to_device since token"))?
                    .min(now),
            ),
            None => None,
        };
        if let Some(since) = to_device_since {
            sources
                .e2ee
                .acknowledge_to_device(user_id, device, since)
                .await?;
        }
        let batch = sources
            .e2ee
            .to_device_batch(user_id, device, to_device_since, now)?;
        news |= batch.upto < now || !batch.events.is_empty();
        let events: Vec<Value> = batch
            .events
            .into_iter()
            .filter(|e| !from_ignored(e))
            .collect();
        out.insert(
            "to_device".into(),
            json!({"next_batch": batch.upto.to_string(), "events": events}),
        );
    }

    if enabled(request.e2ee.enabled) {
        let e2ee = sources.e2ee;
        let mut body = json!({
            "device_one_time_keys_count": e2ee.one_time_key_counts(user_id, device)?,
            "device_unused_fallback_key_types": e2ee.unused_fallback_key_types(user_id, device)?,
        });
        if let Some(since) = since {
            let (changed, left) = e2ee.device_list_changes(sources.rooms, user_id, since, now)?;
            if !changed.is_empty() || !left.is_empty() {
                news = true;
                body["device_lists"] = json!({"changed": changed, "left": left});
            }
        }
        out.insert("e2ee".into(), body);
    }

    if enabled(request.account_data.enabled) {
        let rooms = scope.rooms(
            request.account_data.lists.as_ref(),
            request.account_data.rooms.as_ref(),
        );
        let body = account_data(sources, user_id, &rooms, scope, previous, now)?;
        news |= body.get("global").is_some() || body.get("rooms").is_some();
        out.insert("account_data".into(), Value::Object(body));
    }

    if enabled(request.receipts.enabled) {
        let mut by_room = Map::new();
        for room in scope.rooms(
            request.receipts.lists.as_ref(),
            request.receipts.rooms.as_ref(),
        ) {
            if !joined(sources, user_id, &room)? {
                continue;
            }
            let since = scope.room_upto.get(&room).copied();
            if let Some(content) = sources.receipts.room_since(&room, since, now, user_id)? {
                by_room.insert(
                    room.to_string(),
                    json!({"type": "m.receipt", "content": content}),
                );
            }
        }
        news |= !by_room.is_empty();
        out.insert("receipts".into(), json!({ "rooms": by_room }));
    }

    if enabled(request.typing.enabled) {
        let mut by_room = Map::new();
        let known_serial = previous
            .map(|p| p.typing)
            .filter(|serial| sources.typing.is_current_run(*serial));
        for room in scope.rooms(request.typing.lists.as_ref(), request.typing.rooms.as_ref()) {
            if !joined(sources, user_id, &room)? {
                continue;
            }
            typing_rooms.push(room.clone());
            // A room new to the connection: who types now, if anyone. A room back in view:
            // the list as it is. Otherwise the list when it changed (or, the serial being from
            // another run, in any case).
            let (since, send_empty) = if scope.live(&room, previous) {
                (known_serial, true)
            } else {
                (None, scope.room_upto.contains_key(&room))
            };
            let Some(users) = sources.typing.room_since(&room, since) else {
                continue;
            };
            let mut shown = Vec::with_capacity(users.len());
            for user in users {
                if !ignored.contains(user.as_str())
                    && sources.rooms.membership(&room, &user)? == Some(MembershipState::Join)
                {
                    shown.push(user);
                }
            }
            if send_empty || !shown.is_empty() {
                by_room.insert(
                    room.to_string(),
                    json!({"type": "m.typing", "content": {"user_ids": shown}}),
                );
            }
        }
        news |= !by_room.is_empty();
        out.insert("typing".into(), json!({ "rooms": by_room }));
    }
    Ok((Value::Object(out), news))
}

fn joined(sources: &Sources<'_>, user_id: &ruma::UserId, room: &OwnedRoomId) -> Result<bool> {
    Ok(sources.rooms.membership(room, user_id)? == Some(MembershipState::Join))
}

/// Global account data (with `m.push_rules`) and that of the rooms in scope: all of it for a
/// new connection or a room new to it or back in view, else what changed since the snapshot.
fn account_data(
    sources: &Sources<'_>,
    user_id: &ruma::UserId,
    rooms: &[OwnedRoomId],
    scope: &Scope<'_>,
    previous: Option<&Snapshot>,
    now: u64,
) -> Result<Map<String, Value>> {
    let since = previous.map(|p| p.stream);
    let event = |kind: String, content: Vec<u8>| {
        let content: Value = serde_json::from_slice(&content).ok()?;
        Some(json!({"type": kind, "content": content}))
    };
    let mut global = Vec::new();
    let mut changed_rooms: HashMap<String, Vec<(String, Vec<u8>)>> = HashMap::new();
    let rules_changed = match since {
        None => {
            global.extend(
                sources
                    .account_data
                    .global(user_id)?
                    .into_iter()
                    .filter_map(|(k, c)| event(k, c)),
            );
            true
        }
        Some(since) => {
            for (room, kind, content) in sources.account_data.changes_since(user_id, since, now)? {
                if room.is_empty() {
                    global.extend(event(kind, content));
                } else {
                    changed_rooms.entry(room).or_default().push((kind, content));
                }
            }
            sources.push_rules.changed_since(user_id, since, now)?
        }
    };
    if rules_changed {
        let rules = sources.push_rules.ruleset(user_id)?;
        global.push(json!({"type": "m.push_rules", "content": {"global": rules}}));
    }
    let mut by_room = Map::new();
    for room in rooms {
        let entries = if !scope.live(room, previous) {
            sources.account_data.room(user_id, room)?
        } else {
            changed_rooms.remove(room.as_str()).unwrap_or_default()
        };
        let events: Vec<Value> = entries
            .into_iter()
            .filter_map(|(k, c)| event(k, c))
            .collect();
        if !events.is_empty() {
            by_room.insert(room.to_string(), Value::Array(events));
        }
    }
    let mut body = Map::new();
    if !global.is_empty() {
        body.insert("global".into(), json!(global));
    }
    if !by_room.is_empty() {
        body.insert("rooms".into(), Value::Object(by_room));
    }
    Ok(body)
}
