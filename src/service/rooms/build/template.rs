//! Event templates for another server (`make_join`, `make_leave`, `make_knock`; spec:
//! server-server API, "Joining Rooms"): the event this server would build for the remote
//! user now — `prev_events` (the newest forward extremities), `auth_events` (chosen by ruma's
//! `auth_types_for_event` from the current state), `depth` — unsigned and without hashes. The
//! remote server fills `origin_server_ts`, hashes and signs it, and sends it back.

use ruma::{
    canonical_json::to_canonical_value,
    events::TimelineEventType,
    state_res::{auth_types_for_event, check_state_dependent_auth_rules},
    CanonicalJsonValue, EventId, UserId,
};
use serde_json::{json, Map, Value};

use super::{Staged, MAX_PREV_EVENTS};
use crate::{
    error::{Error, Result},
    service::{rooms::Pdu, users::now_ms},
};

impl Staged<'_> {
    /// The unsigned template of `sender`'s member event with `content`, from the room's
    /// current state. The room must exist (a template is never for a new room).
    pub fn member_template(&self, sender: &UserId, content: &Value) -> Result<Value> {
        let record = self
            .record
            .as_ref()
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let room_id = self
            .room_id
            .as_ref()
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let content_raw =
            serde_json::value::to_raw_value(content).map_err(|e| Error::bad_json(e.to_string()))?;
        let auth_types = auth_types_for_event(
            &TimelineEventType::RoomMember,
            sender,
            Some(sender.as_str()),
            &content_raw,
            &self.rules.authorization,
        )
        .map_err(|e| Error::bad_json(format!("Invalid member content: {e}")))?;
        let mut auth_sids = Vec::new();
        for (kind, state_key) in &auth_types {
            if let Some(sid) = self.state_sid(&kind.to_string(), state_key)? {
                if !auth_sids.contains(&sid) {
                    auth_sids.push(sid);
                }
            }
        }
        let skip = record.extremities.len().saturating_sub(MAX_PREV_EVENTS);
        let prev = record.extremities[skip..].to_vec();
        let mut object = Map::new();
        object.insert("type".into(), json!("m.room.member"));
        object.insert("room_id".into(), json!(room_id));
        object.insert("sender".into(), json!(sender));
        object.insert("state_key".into(), json!(sender));
        object.insert("origin".into(), json!(sender.server_name()));
        object.insert("origin_server_ts".into(), json!(now_ms()));
        object.insert("depth".into(), json!(record.depth + 1));
        object.insert("prev_events".into(), Value::Array(self.references(&prev)?));
        object.insert(
            "auth_events".into(),
            Value::Array(self.references(&auth_sids)?),
        );
        object.insert("content".into(), content.clone());
        Ok(Value::Object(object))
    }

    /// Whether the event built from `template` would pass the authorisation rules against the
    /// current state (403 if not): a `make_*` the rules would refuse is refused at once.
    pub fn check_template(&self, template: &Value) -> Result<()> {
        let CanonicalJsonValue::Object(object) = to_canonical_value(template.clone())
            .map_err(|e| Error::unknown(format!("template is not canonical JSON: {e}")))?
        else {
            return Err(Error::unknown("template is not an object"));
        };
        // The id does not enter the rules; any valid one will do.
        let id = EventId::parse("$template").map_err(|e| Error::unknown(e.to_string()))?;
        let pdu = Pdu::from_object(id, &object).map_err(Error::unknown)?;
        check_state_dependent_auth_rules(&self.rules.authorization, &pdu, |kind, key| {
            self.state_pdu(kind, key)
        })
        .map_err(|e| Error::forbidden(format!("The membership change is not allowed: {e}")))
    }
}
