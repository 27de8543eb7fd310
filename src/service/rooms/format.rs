//! Events as clients see them (the spec's ClientEvent format).

use ruma::{CanonicalJsonValue, RoomId, UserId};
use serde_json::{json, Map, Value};

use super::{Rooms, StoredEvent};
use crate::service::users::now_ms;

/// State types shown to invitees and knockers as stripped state (client-server API,
/// "Stripped state"): what a client needs to show a room it is not in.
pub const STRIPPED_STATE: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

/// Who is reading: their transaction ids are echoed back only to the device that sent them.
#[derive(Clone, Copy)]
pub struct Viewer<'a> {
    pub user_id: &'a UserId,
    pub device_id: Option<&'a str>,
}

impl Rooms {
    /// The ClientEvent JSON of a stored event: the PDU's client-visible fields plus `unsigned`
    /// (age, the viewer's own transaction id, `prev_content` for replaced state,
    /// `redacted_because`).
    pub fn client_event(&self, event: &StoredEvent, viewer: Option<Viewer<'_>>) -> Value {
        let mut out = Map::new();
        for key in [
            "content",
            "origin_server_ts",
            "sender",
            "type",
            "state_key",
            "redacts",
        ] {
            if let Some(value) = event.json.get(key) {
                out.insert(key.to_owned(), canonical_to_json(value));
            }
        }
        out.insert("event_id".into(), json!(event.pdu.event_id));
        let room_id = match &event.pdu.room_id {
            Some(room_id) => room_id.to_string(),
            // v12 create events carry no room id; it is their own hash.
            None => format!("!{}", &event.pdu.event_id.as_str()[1..]),
        };
        out.insert("room_id".into(), json!(room_id));
        if let (Some(redacts), false) = (&event.pdu.redacts, out.contains_key("redacts")) {
            // v11+ moved `redacts` into the content; clients still read the top-level key.
            out.insert("redacts".into(), json!(redacts));
        }

        let mut unsigned = Map::new();
        unsigned.insert(
            "age".into(),
            json!(now_ms().saturating_sub(event.meta.origin_server_ts)),
        );
        if let (Some((device, txn)), Some(viewer)) = (&event.meta.txn, viewer) {
            if viewer.user_id.as_str() == event.meta.sender
                && viewer.device_id == Some(device.as_str())
            {
                unsigned.insert("transaction_id".into(), json!(txn));
            }
        }
        if let Some(replaced) = event
            .meta
            .replaces_state
            .and_then(|sid| self.event_by_sid(sid).ok().flatten())
        {
            if let Some(content) = replaced.json.get("content") {
                unsigned.insert("prev_content".into(), canonical_to_json(content));
            }
            unsigned.insert("replaces_state".into(), json!(replaced.pdu.event_id));
        }
        if let Some(redaction) = event
            .meta
            .redacted_by
            .as_deref()
            .and_then(|id| ruma::EventId::parse(id).ok())
        {
            if let Ok(Some(redaction)) = self.event(&redaction) {
                unsigned.insert(
                    "redacted_because".into(),
                    self.client_event(&redaction, None),
                );
            }
        }
        out.insert("unsigned".into(), Value::Object(unsigned));
        Value::Object(out)
    }

    /// The federation form of a stored event (a filter's `event_format: "federation"`): the
    /// PDU exactly as signed (`auth_events`, `prev_events`, `depth`, `hashes`, `signatures`,
    /// ...), so its hashes and signatures check, plus the client form's `unsigned` (which is
    /// outside what is signed). A redacted event is served as its redacted PDU.
    pub fn federation_event(&self, event: &StoredEvent, viewer: Option<Viewer<'_>>) -> Value {
        let mut out: Map<String, Value> = event
            .json
            .iter()
            .filter(|(key, _)| key.as_str() != "unsigned")
            .map(|(key, value)| (key.clone(), canonical_to_json(value)))
            .collect();
        let client = self.client_event(event, viewer);
        if let Some(unsigned) = client.get("unsigned") {
            out.insert("unsigned".into(), unsigned.clone());
        }
        Value::Object(out)
    }

    /// The stripped form of a state event (for invites and knocks).
    pub fn stripped_event(&self, event: &StoredEvent) -> Value {
        let mut out = Map::new();
        for key in ["content", "sender", "type", "state_key"] {
            if let Some(value) = event.json.get(key) {
                out.insert(key.to_owned(), canonical_to_json(value));
            }
        }
        Value::Object(out)
    }

    /// The room id an event belongs to.
    pub fn room_id_of(event: &StoredEvent) -> Option<&RoomId> {
        event.pdu.room_id.as_deref()
    }
}

pub fn canonical_to_json(value: &CanonicalJsonValue) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}
