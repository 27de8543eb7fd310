//! The checks on a received PDU that need no room state (server-server API, "Checks
//! performed on receipt of a PDU", steps 1 to 3): the event format and size limits of its room
//! version, its event id, its signatures, and its content hash.

use std::collections::BTreeMap;

use ruma::{
    canonical_json::redact,
    room_version_rules::{EventIdFormatVersion, RoomVersionRules},
    signatures::{
        reference_hash, required_server_signatures_to_verify_event, verify_event, PublicKeyMap,
        Verified,
    },
    state_res::check_pdu_format,
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedServerName, UInt,
};
use serde_json::value::RawValue as RawJsonValue;

/// Parses a PDU as canonical JSON (integers in range, no floats, an object).
pub fn parse(raw: &RawJsonValue) -> Result<CanonicalJsonObject, String> {
    serde_json::from_str::<CanonicalJsonObject>(raw.get())
        .map_err(|e| format!("PDU is not a canonical JSON object: {e}"))
}

/// The event id: from the JSON in room versions 1 and 2, the reference hash from 3 on.
pub fn event_id(
    object: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<OwnedEventId, String> {
    match rules.event_id_format {
        EventIdFormatVersion::V1 => match object.get("event_id") {
            Some(CanonicalJsonValue::String(id)) => {
                EventId::parse(id).map_err(|e| format!("invalid event_id: {e}"))
            }
            _ => Err("missing event_id".to_owned()),
        },
        _ => {
            let hash = reference_hash(object, rules)
                .map_err(|e| format!("cannot compute the reference hash: {e}"))?;
            EventId::parse(format!("${hash}")).map_err(|e| format!("invalid event id: {e}"))
        }
    }
}

/// Step 1: the event format of the room version with the spec's size limits (the whole PDU,
/// `sender`, `room_id`, `type`, `state_key`, `event_id`, and at most 20 `prev_events` and 10
/// `auth_events`).
pub fn check_format(object: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<(), String> {
    check_pdu_format(object, &rules.event_format)
}

/// The keys step 2 needs: for each server that must have signed the event (the sender's; the
/// event id's in v1 and v2; the authorising server of a restricted join from v8), the key ids
/// it signed with.
pub fn wanted_keys(
    object: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<BTreeMap<OwnedServerName, Vec<String>>, String> {
    let servers = required_server_signatures_to_verify_event(object, &rules.signatures)
        .map_err(|e| format!("cannot tell which servers signed the event: {e}"))?;
    let signatures = match object.get("signatures") {
        Some(CanonicalJsonValue::Object(map)) => map,
        _ => return Err("missing signatures".to_owned()),
    };
    let mut wanted = BTreeMap::new();
    for server in servers {
        let key_ids = match signatures.get(server.as_str()) {
            Some(CanonicalJsonValue::Object(keys)) => keys.keys().cloned().collect(),
            _ => return Err(format!("the event is not signed by {server}")),
        };
        wanted.insert(server, key_ids);
    }
    Ok(wanted)
}

/// The time a signing key must still be valid at (the event's `origin_server_ts`), and
/// whether that is enforced: from room version 5 on a key counts only while its
/// `valid_until_ts` (capped by the keyring at 7 days after it was fetched) is at least that;
/// earlier versions accept any key the server has published.
pub fn key_validity(
    object: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> (MilliSecondsSinceUnixEpoch, bool) {
    let ts = match object.get("origin_server_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => UInt::try_from(i64::from(*ts)).unwrap_or_default(),
        _ => UInt::default(),
    };
    (MilliSecondsSinceUnixEpoch(ts), rules.enforce_key_validity)
}

/// Steps 2 and 3: every required signature verifies with the given keys, else the event is
/// dropped (`Err`); a content hash that does not match means the event is processed (and
/// stored) in its redacted form. Returns the object to process and whether it was redacted.
pub fn verify(
    keys: &PublicKeyMap,
    object: CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<(CanonicalJsonObject, bool), String> {
    match verify_event(keys, &object, rules) {
        Ok(Verified::All) => Ok((object, false)),
        Ok(Verified::Signatures) => {
            let redacted = redact(object, &rules.redaction, None)
                .map_err(|e| format!("cannot redact the event: {e}"))?;
            Ok((redacted, true))
        }
        Err(e) => Err(format!("signature check failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::{
        signatures::{hash_and_sign_event, Ed25519KeyPair},
        RoomVersionId,
    };
    use serde_json::json;

    fn signed(rules: &RoomVersionRules, key: &Ed25519KeyPair) -> CanonicalJsonObject {
        let value = json!({
            "type": "m.room.message",
            "room_id": "!r:remote.test",
            "sender": "@bob:remote.test",
            "origin_server_ts": 1_000_000,
            "depth": 3,
            "prev_events": ["$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"],
            "auth_events": ["$bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"],
            "content": {"msgtype": "m.text", "body": "hello"},
        });
        let mut object: CanonicalJsonObject = serde_json::from_value(value).unwrap();
        hash_and_sign_event("remote.test", key, &mut object, &rules.redaction).unwrap();
        object
    }

    fn key_map(key: &Ed25519KeyPair) -> PublicKeyMap {
        let mut keys = BTreeMap::new();
        keys.insert(
            format!("ed25519:{}", key.version()),
            ruma::serde::Base64::new(key.public_key().to_vec()),
        );
        BTreeMap::from([("remote.test".to_owned(), keys)])
    }

    fn keypair(version: &str) -> Ed25519KeyPair {
        Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), version.into()).unwrap()
    }

    #[test]
    fn a_tampered_content_is_redacted_and_a_forged_signature_dropped() {
        let rules = RoomVersionId::V10.rules().unwrap();
        let key = keypair("k1");
        let object = signed(&rules, &key);
        check_format(&object, &rules).unwrap();
        let wanted = wanted_keys(&object, &rules).unwrap();
        assert_eq!(wanted.len(), 1);
        assert_eq!(
            wanted[&OwnedServerName::try_from("remote.test").unwrap()],
            vec!["ed25519:k1".to_owned()]
        );

        let (same, redacted) = verify(&key_map(&key), object.clone(), &rules).unwrap();
        assert!(!redacted);
        assert_eq!(same, object);

        // The content is not covered by the signature (only by the hash): a changed body keeps
        // the signature valid and loses the content.
        let mut tampered = object.clone();
        tampered.insert(
            "content".into(),
            serde_json::from_value(json!({"msgtype": "m.text", "body": "changed"})).unwrap(),
        );
        let (redacted_object, redacted) = verify(&key_map(&key), tampered, &rules).unwrap();
        assert!(redacted);
        assert_eq!(
            redacted_object.get("content"),
            Some(&CanonicalJsonValue::Object(Default::default()))
        );

        // Another key under the same id: the signature does not verify.
        let other = keypair("k1");
        assert!(verify(&key_map(&other), object.clone(), &rules).is_err());
        // No key at all for the sender's server: dropped as well.
        assert!(verify(&PublicKeyMap::new(), object, &rules).is_err());
    }

    #[test]
    fn event_ids_follow_the_room_version() {
        let key = keypair("k1");
        let v10 = RoomVersionId::V10.rules().unwrap();
        let object = signed(&v10, &key);
        let id = event_id(&object, &v10).unwrap();
        assert_eq!(
            id.as_str(),
            format!("${}", reference_hash(&object, &v10).unwrap())
        );
        let v1 = RoomVersionId::V1.rules().unwrap();
        assert!(
            event_id(&object, &v1).is_err(),
            "v1 needs an event_id field"
        );
        let mut with_id = object.clone();
        with_id.insert(
            "event_id".into(),
            CanonicalJsonValue::String("$abc:remote.test".into()),
        );
        assert_eq!(
            event_id(&with_id, &v1).unwrap().as_str(),
            "$abc:remote.test"
        );
    }

    #[test]
    fn key_validity_applies_from_room_version_5() {
        let key = keypair("k1");
        let v10 = RoomVersionId::V10.rules().unwrap();
        let object = signed(&v10, &key);
        let at = MilliSecondsSinceUnixEpoch(UInt::new(1_000_000).unwrap());
        assert_eq!(key_validity(&object, &v10), (at, true));
        let v4 = RoomVersionId::V4.rules().unwrap();
        assert_eq!(key_validity(&object, &v4), (at, false));
    }

    #[test]
    fn the_authorising_server_of_a_restricted_join_must_sign_too() {
        let rules = RoomVersionId::V10.rules().unwrap();
        let key = keypair("k1");
        let mut object = signed(&rules, &key);
        object.insert(
            "type".into(),
            CanonicalJsonValue::String("m.room.member".into()),
        );
        object.insert(
            "state_key".into(),
            CanonicalJsonValue::String("@bob:remote.test".into()),
        );
        object.insert(
            "content".into(),
            serde_json::from_value(json!({
                "membership": "join",
                "join_authorised_via_users_server": "@alice:home.test",
            }))
            .unwrap(),
        );
        let wanted = wanted_keys(&object, &rules);
        assert!(
            wanted.unwrap_err().contains("home.test"),
            "signed only by remote.test"
        );
    }

    #[test]
    fn non_canonical_json_is_refused() {
        let raw = |s: &str| serde_json::value::RawValue::from_string(s.to_owned()).unwrap();
        assert!(parse(&raw(r#"{"depth": 1.5}"#)).is_err());
        assert!(parse(&raw(r#"{"depth": 9007199254740992}"#)).is_err());
        assert!(parse(&raw(r#"[1]"#)).is_err());
        assert!(parse(&raw(r#"{"depth": 2}"#)).is_ok());
    }

    #[test]
    fn oversized_pdus_fail_the_format_check() {
        let rules = RoomVersionId::V10.rules().unwrap();
        let key = keypair("k1");
        let mut object = signed(&rules, &key);
        object.insert(
            "content".into(),
            serde_json::from_value(json!({"body": "x".repeat(70_000)})).unwrap(),
        );
        assert!(check_format(&object, &rules).is_err());
    }
}
