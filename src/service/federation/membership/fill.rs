//! A local user's member event built from a resident server's template (`make_join`,
//! `make_leave`, `make_knock`): the one way the joining, leaving and knocking sides fill one
//! in and sign it.

use ruma::{
    canonical_json::to_canonical_value,
    room_version_rules::{EventIdFormatVersion, RoomVersionRules},
    signatures::hash_and_sign_event,
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, RoomId, UserId,
};
use serde_json::{value::RawValue as RawJsonValue, Map, Value};

use crate::{
    error::{Error, Result},
    service::{federation::pdus::checks, users::now_ms, Services},
};

/// Fills in and signs `template`, which must be `user_id`'s own `membership` event in
/// `room_id`. The content is `membership` and the user's `content` fields; of the resident's
/// content only `join_authorised_via_users_server` stays (its word for a restricted join).
/// The origin and time are this server's. Returns the event id and the signed event, or what
/// is wrong with the template.
pub fn sign_member_template(
    services: &Services,
    template: &RawJsonValue,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    user_id: &UserId,
    membership: &str,
    content: &Map<String, Value>,
) -> std::result::Result<(OwnedEventId, CanonicalJsonObject), String> {
    let mut value: Value =
        serde_json::from_str(template.get()).map_err(|e| format!("bad template: {e}"))?;
    let Some(map) = value.as_object_mut() else {
        return Err("the template is not an object".to_owned());
    };
    let field = |map: &Map<String, Value>, key: &str| {
        map.get(key).and_then(Value::as_str).map(str::to_owned)
    };
    if field(map, "type").as_deref() != Some("m.room.member")
        || field(map, "sender").as_deref() != Some(user_id.as_str())
        || field(map, "state_key").as_deref() != Some(user_id.as_str())
        || field(map, "room_id").as_deref() != Some(room_id.as_str())
        || map
            .get("content")
            .and_then(|c| c.get("membership"))
            .and_then(Value::as_str)
            != Some(membership)
    {
        return Err(format!(
            "the resident server's template is not a {membership} of this user in this room"
        ));
    }
    for key in ["signatures", "hashes", "unsigned", "event_id"] {
        map.remove(key);
    }
    let own = services.rooms.server_name();
    map.insert("origin".into(), Value::String(own.to_string()));
    map.insert("origin_server_ts".into(), Value::from(now_ms()));
    let fields = map
        .get_mut("content")
        .and_then(Value::as_object_mut)
        .ok_or("the template has no content")?;
    let authoriser = fields.get("join_authorised_via_users_server").cloned();
    fields.clear();
    fields.insert("membership".into(), Value::from(membership));
    for (key, value) in content {
        fields.insert(key.clone(), value.clone());
    }
    if let Some(authoriser) = authoriser {
        fields.insert("join_authorised_via_users_server".into(), authoriser);
    }
    if rules.event_id_format == EventIdFormatVersion::V1 {
        map.insert(
            "event_id".into(),
            Value::String(EventId::new_v1(own).to_string()),
        );
    }
    let CanonicalJsonValue::Object(mut object) =
        to_canonical_value(value).map_err(|e| format!("bad template: {e}"))?
    else {
        return Err("the template is not an object".to_owned());
    };
    hash_and_sign_event(
        own.as_str(),
        &services.keys.keypair,
        &mut object,
        &rules.redaction,
    )
    .map_err(|e| format!("cannot sign the event: {e}"))?;
    checks::check_format(&object, rules)?;
    let event_id = checks::event_id(&object, rules)?;
    Ok((event_id, object))
}

/// An event as the raw JSON a federation request carries.
pub fn raw_object(object: &CanonicalJsonObject) -> Result<Box<RawJsonValue>> {
    let text = serde_json::to_string(object).map_err(|e| Error::unknown(e.to_string()))?;
    RawJsonValue::from_string(text).map_err(|e| Error::unknown(e.to_string()))
}
