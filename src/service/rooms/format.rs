//! Events as clients see them (the spec's ClientEvent format).

use ruma::{CanonicalJsonValue, RoomId, UserId};
use serde_json::{json, Map, Value};

use super::{Rooms, StoredEvent};
use crate::error::Result;
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
        let mut out = client_fields(event);
        let mut unsigned = self.shared_unsigned(event);
        unsigned.insert("age".into(), json!(age(event)));
        if let Some(txn) = own_transaction_id(event, viewer) {
            unsigned.insert("transaction_id".into(), json!(txn));
        }
        out.insert("unsigned".into(), Value::Object(unsigned));
        Value::Object(out)
    }

    /// What every viewer's [`Rooms::client_event`] of `event` has in common, serialised.
    pub fn client_json_parts(&self, event: &StoredEvent) -> Result<ClientJsonParts> {
        Ok(ClientJsonParts {
            unsigned_rest: members_json(&self.shared_unsigned(event)),
            fields: members_json(&client_fields(event)),
            has_relations: self.bundles_aggregations(event)?,
        })
    }

    /// The members of `unsigned` that are the same for every viewer: `prev_content` and
    /// `replaces_state` for replaced state, `redacted_because`.
    fn shared_unsigned(&self, event: &StoredEvent) -> Map<String, Value> {
        let mut unsigned = Map::new();
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
        unsigned
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

/// The client-visible fields of an event (all but `unsigned`).
fn client_fields(event: &StoredEvent) -> Map<String, Value> {
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
    out.insert(
        "event_id".into(),
        Value::String(event.pdu.event_id.to_string()),
    );
    let room_id = match &event.pdu.room_id {
        Some(room_id) => room_id.to_string(),
        // v12 create events carry no room id; it is their own hash.
        None => format!("!{}", &event.pdu.event_id.as_str()[1..]),
    };
    out.insert("room_id".into(), Value::String(room_id));
    if let (Some(redacts), false) = (&event.pdu.redacts, out.contains_key("redacts")) {
        // v11+ moved `redacts` into the content; clients still read the top-level key.
        out.insert("redacts".into(), json!(redacts));
    }
    out
}

/// `unsigned.age`: milliseconds since the event was sent, as of now.
fn age(event: &StoredEvent) -> u64 {
    now_ms().saturating_sub(event.meta.origin_server_ts)
}

/// The transaction id of `event` if `viewer` is the device that sent it.
fn own_transaction_id<'e>(event: &'e StoredEvent, viewer: Option<Viewer<'_>>) -> Option<&'e str> {
    let ((device, txn), viewer) = (event.meta.txn.as_ref()?, viewer?);
    (viewer.user_id.as_str() == event.meta.sender && viewer.device_id == Some(device.as_str()))
        .then_some(txn.as_str())
}

/// `,"key":value` for each member of `map`, serialised.
fn members_json(map: &Map<String, Value>) -> String {
    let mut out = Vec::new();
    for (key, value) in map {
        out.push(b',');
        // Writing into a Vec cannot fail, and a Value always serialises.
        let _ = serde_json::to_writer(&mut out, key);
        out.push(b':');
        let _ = serde_json::to_writer(&mut out, value);
    }
    // serde_json writes UTF-8 only.
    String::from_utf8(out).unwrap_or_default()
}

/// An event's client form as far as it is the same for every viewer, serialised once and
/// shared by the syncs one event wakes ([`Rooms::shared_client_json`]). Each viewer's copy is
/// [`ClientJsonParts::for_viewer`]: `unsigned` with its own `age` and transaction id, and
/// these parts copied in.
pub struct ClientJsonParts {
    /// `,"key":value` for each viewer-independent member of `unsigned`.
    unsigned_rest: String,
    /// `,"key":value` for each field besides `unsigned`.
    fields: String,
    /// [`Rooms::bundles_aggregations`]: timelines then bundle aggregations, which differ by
    /// viewer, with the event.
    pub has_relations: bool,
}

impl ClientJsonParts {
    /// The JSON text of [`Rooms::client_event`] of `event` (the one these parts were made of)
    /// for `viewer`.
    pub fn for_viewer(&self, event: &StoredEvent, viewer: Option<Viewer<'_>>) -> String {
        let txn = own_transaction_id(event, viewer);
        let mut out = String::with_capacity(self.unsigned_rest.len() + self.fields.len() + 40);
        out.push_str("{\"unsigned\":{\"age\":");
        out.push_str(&age(event).to_string());
        if let Some(txn) = txn {
            out.push_str(",\"transaction_id\":");
            out.push_str(&serde_json::to_string(txn).unwrap_or_default());
        }
        out.push_str(&self.unsigned_rest);
        out.push('}');
        out.push_str(&self.fields);
        out.push('}');
        out
    }
}

/// A stored event's field as a JSON value, converted directly (every canonical JSON value
/// is a JSON value; going through a serializer cost as much as the copy).
pub fn canonical_to_json(value: &CanonicalJsonValue) -> Value {
    match value {
        CanonicalJsonValue::Null => Value::Null,
        CanonicalJsonValue::Bool(b) => Value::Bool(*b),
        CanonicalJsonValue::Integer(i) => Value::Number(i64::from(*i).into()),
        CanonicalJsonValue::String(s) => Value::String(s.clone()),
        CanonicalJsonValue::Array(items) => {
            Value::Array(items.iter().map(canonical_to_json).collect())
        }
        CanonicalJsonValue::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| (key.clone(), canonical_to_json(value)))
                .collect(),
        ),
    }
}

/// A JSON object of these fields, moved in. (`json!` serialises each value it is given into a
/// new one: for a built list of events, a deep copy.)
pub fn object<'a>(fields: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect(),
    )
}
