//! A PDU as stored and as the authorization rules see it.

use ruma::{
    events::TimelineEventType, CanonicalJsonObject, EventId, MilliSecondsSinceUnixEpoch,
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
};
use serde::Deserialize;
use serde_json::value::RawValue as RawJsonValue;

/// The fields of a PDU that Hearth reads. The signed canonical JSON is kept beside it, unchanged.
#[derive(Debug, Clone)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    /// Absent only on v12 `m.room.create` events (the room id derives from their hash).
    pub room_id: Option<OwnedRoomId>,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub kind: TimelineEventType,
    pub content: Box<RawJsonValue>,
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub redacts: Option<OwnedEventId>,
    pub depth: u64,
    pub rejected: bool,
}

/// `prev_events`/`auth_events` are plain ids from v3 on, `[id, hashes]` pairs in v1 and v2.
#[derive(Deserialize)]
#[serde(untagged)]
enum EventRef {
    Id(OwnedEventId),
    Pair(OwnedEventId, serde::de::IgnoredAny),
}

impl EventRef {
    fn id(self) -> OwnedEventId {
        match self {
            EventRef::Id(id) | EventRef::Pair(id, _) => id,
        }
    }
}

#[derive(Deserialize)]
struct Wire {
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    kind: TimelineEventType,
    content: Box<RawJsonValue>,
    state_key: Option<String>,
    #[serde(default)]
    prev_events: Vec<EventRef>,
    #[serde(default)]
    auth_events: Vec<EventRef>,
    redacts: Option<OwnedEventId>,
    #[serde(default)]
    depth: u64,
}

#[derive(Deserialize)]
struct Redacts {
    redacts: Option<OwnedEventId>,
}

impl Pdu {
    /// Reads a PDU from its JSON. `event_id` is given by the caller (for v3+ it is not part of
    /// the JSON). `redacts` is read from the top level or, from v11 on, from the content.
    pub fn from_json(event_id: OwnedEventId, json: &str) -> Result<Self, String> {
        let wire: Wire = serde_json::from_str(json).map_err(|e| format!("malformed PDU: {e}"))?;
        let redacts = match wire.redacts {
            Some(id) => Some(id),
            None if wire.kind == TimelineEventType::RoomRedaction => {
                serde_json::from_str::<Redacts>(wire.content.get())
                    .ok()
                    .and_then(|r| r.redacts)
            }
            None => None,
        };
        Ok(Self {
            event_id,
            room_id: wire.room_id,
            sender: wire.sender,
            origin_server_ts: wire.origin_server_ts,
            kind: wire.kind,
            content: wire.content,
            state_key: wire.state_key,
            prev_events: wire.prev_events.into_iter().map(EventRef::id).collect(),
            auth_events: wire.auth_events.into_iter().map(EventRef::id).collect(),
            redacts,
            depth: wire.depth,
            rejected: false,
        })
    }

    pub fn from_object(
        event_id: OwnedEventId,
        object: &CanonicalJsonObject,
    ) -> Result<Self, String> {
        let json = serde_json::to_string(object).map_err(|e| e.to_string())?;
        Self::from_json(event_id, &json)
    }

    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    /// Parses the content as `T`; `None` if it does not fit.
    pub fn content_as<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(self.content.get()).ok()
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.room_id.as_deref()
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawJsonValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        self.rejected
    }
}

#[derive(Deserialize)]
struct AuthRefs {
    #[serde(default)]
    auth_events: Vec<EventRef>,
    #[serde(default)]
    prev_events: Vec<EventRef>,
}

/// The `auth_events` and `prev_events` of a PDU's JSON, without parsing the rest of it (walks
/// of the room's graph read many events and need only these).
pub fn graph_refs(json: &[u8]) -> Result<(Vec<OwnedEventId>, Vec<OwnedEventId>), String> {
    let refs: AuthRefs = serde_json::from_slice(json).map_err(|e| format!("malformed PDU: {e}"))?;
    Ok((
        refs.auth_events.into_iter().map(EventRef::id).collect(),
        refs.prev_events.into_iter().map(EventRef::id).collect(),
    ))
}

/// Borrowed event id helper for lookups keyed by `&EventId`.
pub fn id_str(id: &EventId) -> String {
    id.as_str().to_owned()
}
