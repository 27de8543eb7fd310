//! Checks on what local users send, before an event is built: the spec's size limits on `type`
//! and `state_key`, and the content of the well-known state events that clients and the
//! server itself rely on (a power level that is a string, a join rule nobody knows, a name of a
//! megabyte). The authorisation rules accept much of this; a client that stored it would break
//! every other client of the room, so it is refused here with 400 `M_BAD_JSON`.

use ruma::{RoomAliasId, RoomId, UserId};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Spec ("Size limits"): `type` and `state_key` must not exceed 255 bytes.
pub const MAX_TYPE_BYTES: usize = 255;
pub const MAX_STATE_KEY_BYTES: usize = 255;
/// Spec (`m.room.name`): the name must not exceed 255 bytes.
pub const MAX_NAME_BYTES: usize = 255;

const JOIN_RULES: [&str; 6] = [
    "public",
    "knock",
    "invite",
    "private",
    "restricted",
    "knock_restricted",
];
const HISTORY_VISIBILITIES: [&str; 4] = ["invited", "joined", "shared", "world_readable"];
const MEMBERSHIPS: [&str; 5] = ["invite", "join", "knock", "leave", "ban"];
/// The integer fields of `m.room.power_levels`.
const POWER_LEVEL_INTS: [&str; 7] = [
    "ban",
    "events_default",
    "invite",
    "kick",
    "redact",
    "state_default",
    "users_default",
];

fn bad(message: impl Into<String>) -> Error {
    Error::bad_json(message)
}

/// Refuses an event type or state key over the spec's limits (400 `M_INVALID_PARAM`: both come
/// from the request path).
pub fn check_sizes(kind: &str, state_key: Option<&str>) -> Result<()> {
    if kind.len() > MAX_TYPE_BYTES {
        return Err(Error::invalid_param(format!(
            "Event type is longer than {MAX_TYPE_BYTES} bytes"
        )));
    }
    if state_key.is_some_and(|k| k.len() > MAX_STATE_KEY_BYTES) {
        return Err(Error::invalid_param(format!(
            "State key is longer than {MAX_STATE_KEY_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Checks the content of a well-known state event (other types are not looked at).
pub fn check_state_content(kind: &str, content: &Value) -> Result<()> {
    let Some(content) = content.as_object() else {
        return Err(bad("Event content must be a JSON object"));
    };
    match kind {
        "m.room.name" => match content.get("name") {
            // Absent or null: the room has no name (spec).
            None | Some(Value::Null) => Ok(()),
            Some(Value::String(name)) if name.len() <= MAX_NAME_BYTES => Ok(()),
            Some(Value::String(_)) => Err(bad(format!(
                "m.room.name: name is longer than {MAX_NAME_BYTES} bytes"
            ))),
            Some(_) => Err(bad("m.room.name: name must be a string")),
        },
        "m.room.topic" => {
            match content.get("topic") {
                Some(Value::String(_)) => {}
                _ => return Err(bad("m.room.topic: topic must be a string")),
            }
            match content.get("m.topic") {
                None | Some(Value::Object(_)) | Some(Value::Array(_)) => Ok(()),
                Some(_) => Err(bad("m.room.topic: m.topic must be a list of text blocks")),
            }
        }
        "m.room.power_levels" => check_power_levels(content),
        "m.room.join_rules" => check_join_rules(content),
        "m.room.history_visibility" => {
            one_of(content, "history_visibility", &HISTORY_VISIBILITIES, kind)
        }
        "m.room.member" => {
            one_of(content, "membership", &MEMBERSHIPS, kind)?;
            // Clients render these as text and URLs: a number here breaks them for every
            // member of the room.
            optional_string(content, "displayname", kind)?;
            optional_string(content, "avatar_url", kind)
        }
        "m.room.avatar" => optional_string(content, "url", kind),
        "m.room.canonical_alias" => check_canonical_alias(content),
        _ => Ok(()),
    }
}

fn one_of(content: &Map<String, Value>, field: &str, values: &[&str], kind: &str) -> Result<()> {
    match content.get(field).and_then(Value::as_str) {
        Some(value) if values.contains(&value) => Ok(()),
        _ => Err(bad(format!(
            "{kind}: {field} must be one of {}",
            values.join(", ")
        ))),
    }
}

/// An optional string field (absent or null: unset).
fn optional_string(content: &Map<String, Value>, field: &str, kind: &str) -> Result<()> {
    match content.get(field) {
        None | Some(Value::Null | Value::String(_)) => Ok(()),
        Some(_) => Err(bad(format!("{kind}: {field} must be a string"))),
    }
}

/// Power levels are integers (the canonical JSON range; strings were tolerated by old room
/// versions over federation, never from clients).
fn is_int(value: &Value) -> bool {
    value
        .as_i64()
        .is_some_and(|n| (-(1i64 << 53) + 1..=(1i64 << 53) - 1).contains(&n))
}

fn check_power_levels(content: &Map<String, Value>) -> Result<()> {
    for field in POWER_LEVEL_INTS {
        if content.get(field).is_some_and(|v| !is_int(v)) {
            return Err(bad(format!(
                "m.room.power_levels: {field} must be an integer"
            )));
        }
    }
    let int_map = |field: &str, keys_are_users: bool| -> Result<()> {
        let Some(value) = content.get(field) else {
            return Ok(());
        };
        let Some(map) = value.as_object() else {
            return Err(bad(format!(
                "m.room.power_levels: {field} must be an object"
            )));
        };
        for (key, level) in map {
            if !is_int(level) {
                return Err(bad(format!(
                    "m.room.power_levels: {field}.{key} must be an integer"
                )));
            }
            if keys_are_users && UserId::parse(key).is_err() {
                return Err(bad(format!(
                    "m.room.power_levels: {key} in users is not a user id"
                )));
            }
        }
        Ok(())
    };
    int_map("events", false)?;
    int_map("users", true)?;
    int_map("notifications", false)
}

fn check_join_rules(content: &Map<String, Value>) -> Result<()> {
    one_of(content, "join_rule", &JOIN_RULES, "m.room.join_rules")?;
    let Some(allow) = content.get("allow") else {
        return Ok(());
    };
    let Some(allow) = allow.as_array() else {
        return Err(bad("m.room.join_rules: allow must be a list"));
    };
    for rule in allow {
        let Some(kind) = rule.get("type").and_then(Value::as_str) else {
            return Err(bad(
                "m.room.join_rules: each allow rule needs a string type",
            ));
        };
        let valid_room = rule
            .get("room_id")
            .and_then(Value::as_str)
            .is_some_and(|id| RoomId::parse(id).is_ok());
        if kind == "m.room_membership" && !valid_room {
            return Err(bad(
                "m.room.join_rules: an m.room_membership rule needs a valid room_id",
            ));
        }
    }
    Ok(())
}

/// Shape and syntax of the aliases (spec: 400 `M_INVALID_PARAM` for invalid syntax); whether
/// they point to the room is checked where aliases are known.
fn check_canonical_alias(content: &Map<String, Value>) -> Result<()> {
    let valid = |alias: &Value| {
        alias
            .as_str()
            .is_some_and(|a| RoomAliasId::parse(a).is_ok())
    };
    match content.get("alias") {
        None | Some(Value::Null) => {}
        Some(Value::String(_)) if valid(&content["alias"]) => {}
        Some(Value::String(alias)) => {
            return Err(Error::invalid_param(format!("Invalid alias {alias}")))
        }
        Some(_) => return Err(bad("m.room.canonical_alias: alias must be a string")),
    }
    match content.get("alt_aliases") {
        None => Ok(()),
        Some(Value::Array(aliases)) => {
            for alias in aliases {
                if !alias.is_string() {
                    return Err(bad(
                        "m.room.canonical_alias: alt_aliases must be a list of strings",
                    ));
                }
                if !valid(alias) {
                    return Err(Error::invalid_param(format!("Invalid alias {alias}")));
                }
            }
            Ok(())
        }
        Some(_) => Err(bad("m.room.canonical_alias: alt_aliases must be a list")),
    }
}

/// The power level `content` gives `user_id` (its `users` entry, else `users_default`).
fn level_in(content: &Value, user_id: &UserId) -> Option<i64> {
    content
        .get("users")
        .and_then(|u| u.get(user_id.as_str()))
        .or_else(|| content.get("users_default"))
        .map_or(Some(0), Value::as_i64)
}

/// Refuses a power-levels change that lowers the sender's own level without naming them: a
/// `{}` or a `users` map that forgets the sender would silently lock them (often the room's
/// only admin) out of the room's settings for good. Lowering one's own level stays possible
/// by setting it explicitly in `users`, as the spec allows. Creators of v12 rooms have
/// unlimited power that no power-levels event changes, so this only guards explicit levels.
pub fn check_power_levels_keep_sender(
    current: Option<&Value>,
    new: &Value,
    sender: &UserId,
) -> Result<()> {
    let Some(current) = current else {
        return Ok(());
    };
    let named = new
        .get("users")
        .and_then(|u| u.get(sender.as_str()))
        .is_some();
    if named {
        return Ok(());
    }
    let (Some(before), Some(after)) = (level_in(current, sender), level_in(new, sender)) else {
        return Ok(());
    };
    if after < before {
        return Err(bad(format!(
            "This change would lower your own power level from {before} to {after} without \
             naming you in users; to demote yourself, set users[\"{sender}\"] explicitly"
        )));
    }
    Ok(())
}
