//! Building and signing remote events for the inbound PDU tests: a remote server (a name and a
//! signing key, possibly a real test server's), a view of a room on the receiving server for
//! prev and auth events, and a key source handing the remote key to the PDU service.

use std::collections::BTreeMap;

use hearth::service::{
    federation::pdus::{KeysFuture, SigningKeys},
    Services,
};
use ruma::{
    events::{StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    serde::Base64,
    signatures::{hash_and_sign_event, reference_hash, Ed25519KeyPair, PublicKeyMap},
    state_res::auth_types_for_event,
    CanonicalJsonObject, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedServerName, RoomId, UserId,
};
use serde_json::{json, value::RawValue, Value};

use crate::fed_common::FedServer;

/// Keys handed to the PDU service directly (the keyring's job in production).
pub struct StaticKeys(pub PublicKeyMap);

impl SigningKeys for StaticKeys {
    fn public_key_map<'a>(
        &'a self,
        wanted: &'a BTreeMap<OwnedServerName, Vec<String>>,
        _valid_at: MilliSecondsSinceUnixEpoch,
        _enforce_validity: bool,
    ) -> KeysFuture<'a> {
        let map = self
            .0
            .iter()
            .filter(|(server, _)| wanted.keys().any(|w| w.as_str() == server.as_str()))
            .map(|(s, k)| (s.clone(), k.clone()))
            .collect();
        Box::pin(async move { Ok(map) })
    }
}

/// A remote server as the test plays it: a name and a signing key.
pub struct Remote {
    pub name: String,
    pub key: Ed25519KeyPair,
}

impl Remote {
    pub fn new(name: &str) -> Self {
        let der = Ed25519KeyPair::generate();
        Self {
            name: name.to_owned(),
            key: Ed25519KeyPair::from_der(&der, "t1".into()).unwrap(),
        }
    }

    /// A real test server, signing with its own key (read from its data directory).
    pub fn server(server: &FedServer) -> Self {
        Self {
            name: server.name.clone(),
            key: server.signing_key().keypair,
        }
    }

    pub fn public_keys(&self) -> PublicKeyMap {
        let keys = BTreeMap::from([(
            format!("ed25519:{}", self.key.version()),
            Base64::new(self.key.public_key().to_vec()),
        )]);
        BTreeMap::from([(self.name.clone(), keys)])
    }

    pub fn user(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.name)
    }

    /// Hashes and signs `object` (no `hashes`/`signatures` yet); returns its id and JSON.
    pub fn sign(
        &self,
        rules: &RoomVersionRules,
        mut object: CanonicalJsonObject,
    ) -> (OwnedEventId, CanonicalJsonObject) {
        hash_and_sign_event(&self.name, &self.key, &mut object, &rules.redaction).unwrap();
        let id = format!("${}", reference_hash(&object, rules).unwrap());
        (OwnedEventId::try_from(id).unwrap(), object)
    }
}

/// Server A's view of a room, for building remote events that cite its events.
pub struct RoomView<'a> {
    pub services: &'a Services,
    pub room_id: String,
}

impl RoomView<'_> {
    pub fn rules(&self) -> RoomVersionRules {
        let room = self.record();
        let version = self.services.rooms.room_version(&room).unwrap();
        version.rules().unwrap()
    }

    fn record(&self) -> hearth::service::rooms::RoomRecord {
        let room_id = RoomId::parse(&self.room_id).unwrap();
        self.services.rooms.room(&room_id).unwrap().unwrap()
    }

    /// The room's newest events (its forward extremities).
    pub fn latest(&self) -> Vec<String> {
        self.record()
            .extremities
            .iter()
            .map(|sid| {
                let event = self.services.rooms.event_by_sid(*sid).unwrap().unwrap();
                event.pdu.event_id.to_string()
            })
            .collect()
    }

    /// The current state event id for a key.
    pub fn state_id(&self, kind: &str, state_key: &str) -> Option<String> {
        let record = self.record();
        self.services
            .rooms
            .state_event(record.sid, &StateEventType::from(kind), state_key)
            .unwrap()
            .map(|e| e.pdu.event_id.to_string())
    }

    /// The auth events the spec selects for an event, from the room's current state.
    pub fn auth_events(
        &self,
        kind: &str,
        sender: &str,
        state_key: Option<&str>,
        content: &Value,
    ) -> Vec<String> {
        let rules = self.rules();
        let content = serde_json::value::to_raw_value(content).unwrap();
        let sender = UserId::parse(sender).unwrap();
        auth_types_for_event(
            &TimelineEventType::from(kind),
            &sender,
            state_key,
            &content,
            &rules.authorization,
        )
        .unwrap()
        .into_iter()
        .filter_map(|(kind, key)| self.state_id(&kind.to_string(), &key))
        .collect()
    }

    /// A PDU of this room from `remote`, citing the given prev and auth events.
    pub fn event(
        &self,
        remote: &Remote,
        spec: EventSpec<'_>,
    ) -> (OwnedEventId, CanonicalJsonObject) {
        let rules = self.rules();
        let auth = spec.auth.unwrap_or_else(|| {
            self.auth_events(spec.kind, spec.sender, spec.state_key, &spec.content)
        });
        let prev = spec.prev.unwrap_or_else(|| self.latest());
        let depth = self.record().depth + 1 + spec.extra_depth;
        let mut value = json!({
            "type": spec.kind,
            "room_id": self.room_id,
            "sender": spec.sender,
            "origin_server_ts": now_ms(),
            "depth": depth,
            "prev_events": prev,
            "auth_events": auth,
            "content": spec.content,
        });
        if let Some(state_key) = spec.state_key {
            value["state_key"] = json!(state_key);
        }
        let object: CanonicalJsonObject = serde_json::from_value(value).unwrap();
        remote.sign(&rules, object)
    }
}

/// What a remote event should be; `None` for prev/auth means "the room's latest / the spec's
/// selection from the current state".
pub struct EventSpec<'a> {
    pub kind: &'a str,
    pub sender: &'a str,
    pub state_key: Option<&'a str>,
    pub content: Value,
    pub prev: Option<Vec<String>>,
    pub auth: Option<Vec<String>>,
    /// Added to the depth after the room's newest event (for events following others that
    /// are not stored yet).
    pub extra_depth: u64,
}

impl<'a> EventSpec<'a> {
    pub fn message(sender: &'a str, body: &str) -> Self {
        Self {
            kind: "m.room.message",
            sender,
            state_key: None,
            content: json!({"msgtype": "m.text", "body": body}),
            prev: None,
            auth: None,
            extra_depth: 0,
        }
    }
    pub fn state(kind: &'a str, sender: &'a str, state_key: &'a str, content: Value) -> Self {
        Self {
            kind,
            sender,
            state_key: Some(state_key),
            content,
            prev: None,
            auth: None,
            extra_depth: 0,
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn raw(object: &CanonicalJsonObject) -> Box<RawValue> {
    serde_json::value::to_raw_value(object).unwrap()
}
