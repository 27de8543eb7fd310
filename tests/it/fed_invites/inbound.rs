//! What B refuses: `/invite` requests that fail a check (signature, room version, sender,
//! server ACL, event id, v12 stripped state), and rescinds from servers with no part in the
//! invite or older than it.

use reqwest::{Method, StatusCode};
use ruma::{signatures::Ed25519KeyPair, CanonicalJsonObject, RoomVersionId};
use serde_json::{json, Value};

use super::{invite, services, sync_token, sync_until};
use crate::common::{create_room, enc, errcode};
use crate::fed_common::{start_many, FedServer};
use crate::fed_pdus::events::{now_ms, Remote};

/// An invite of `invitee` by `@carol` of `remote`'s server, as B would send it.
fn invite_event(remote: &Remote, invitee: &str, version: &RoomVersionId) -> (String, Value) {
    let rules = version.rules().unwrap();
    let room_id = format!("!nowhere:{}", remote.name);
    let value = json!({
        "type": "m.room.member",
        "room_id": room_id,
        "sender": remote.user("carol"),
        "state_key": invitee,
        "origin_server_ts": now_ms(),
        "depth": 7,
        "prev_events": ["$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"],
        "auth_events": ["$bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"],
        "content": {"membership": "invite"},
    });
    let object: CanonicalJsonObject = serde_json::from_value(value).unwrap();
    let (event_id, object) = remote.sign(&rules, object);
    (event_id.to_string(), serde_json::to_value(&object).unwrap())
}

fn stripped_create(remote: &Remote) -> Value {
    json!({"type": "m.room.create", "state_key": "", "sender": remote.user("carol"),
           "content": {"room_version": "10", "creator": remote.user("carol")}})
}

async fn put_invite(
    b: &FedServer,
    a: &FedServer,
    event_id: &str,
    body: Value,
) -> (StatusCode, Value) {
    let room_id = body["event"]["room_id"].as_str().unwrap().to_owned();
    let path = format!(
        "/_matrix/federation/v2/invite/{}/{}",
        enc(&room_id),
        enc(event_id)
    );
    b.signed(a, &a.name, Method::PUT, &path, Some(body)).await
}

#[tokio::test]
async fn inbound_invites_are_checked_before_they_are_signed() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (alice, alice_token, _) = a.register("alice", "password1").await;
    let since = sync_token(a, &alice_token).await;
    let real = Remote::server(b);
    let v10 = RoomVersionId::V10;

    // Signed with a key B never had, under B's key id.
    let forged = Remote {
        name: b.name.clone(),
        key: Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), real.key.version().to_owned())
            .unwrap(),
    };
    let (event_id, event) = invite_event(&forged, &alice, &v10);
    let body = json!({"room_version": "10", "event": event, "invite_room_state": [stripped_create(&real)]});
    let (status, answer) = put_invite(b, a, &event_id, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(errcode(&answer), "M_INVALID_PARAM");

    // A room version A does not know.
    let (event_id, event) = invite_event(&real, &alice, &v10);
    let body =
        json!({"room_version": "org.example.unknown", "event": event, "invite_room_state": []});
    let (status, answer) = put_invite(b, a, &event_id, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(errcode(&answer), "M_INCOMPATIBLE_ROOM_VERSION");
    assert_eq!(answer["room_version"], "org.example.unknown");

    // A sender of another server than the one asking.
    let other = Remote::new("elsewhere.test");
    let (event_id, event) = invite_event(&other, &alice, &v10);
    let body = json!({"room_version": "10", "event": event, "invite_room_state": []});
    let (status, answer) = put_invite(b, a, &event_id, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    // The stripped state's server ACL denies B.
    let (event_id, event) = invite_event(&real, &alice, &v10);
    let acl = json!({"type": "m.room.server_acl", "state_key": "", "sender": real.user("carol"),
                     "content": {"allow": ["*"], "allow_ip_literals": false}});
    let body = json!({"room_version": "10", "event": event, "invite_room_state": [stripped_create(&real), acl]});
    let (status, answer) = put_invite(b, a, &event_id, body).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");

    // An event id that is not the event's.
    let (_, event) = invite_event(&real, &alice, &v10);
    let (other_id, _) = invite_event(&real, &a.user_id("someone"), &v10);
    let body = json!({"room_version": "10", "event": event, "invite_room_state": []});
    let (status, answer) = put_invite(b, a, &other_id, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    // Room version 12: the create event is required, and stripped state must be full events.
    let v12 = RoomVersionId::V12;
    let (event_id, event) = invite_event(&real, &alice, &v12);
    let body = json!({"room_version": "12", "event": event, "invite_room_state": []});
    let (status, answer) = put_invite(b, a, &event_id, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(errcode(&answer), "M_MISSING_PARAM");
    let body = json!({"room_version": "12", "event": event, "invite_room_state": [stripped_create(&real)]});
    let (status, answer) = put_invite(b, a, &event_id, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(errcode(&answer), "M_INVALID_PARAM");

    // Nothing of that reached Alice.
    let (_, sync) = a
        .get(
            &format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
            Some(&alice_token),
        )
        .await;
    assert!(
        sync["rooms"]["invite"]
            .as_object()
            .is_none_or(|m| m.is_empty()),
        "{sync}"
    );

    // The same invite properly signed: A signs it and Alice sees it.
    let (event_id, event) = invite_event(&real, &alice, &v10);
    let body = json!({"room_version": "10", "event": event, "invite_room_state": [stripped_create(&real)]});
    let (status, answer) = put_invite(b, a, &event_id, body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(
        answer["event"]["signatures"][&a.name].is_object(),
        "{answer}"
    );
    assert!(
        answer["event"]["signatures"][&b.name].is_object(),
        "{answer}"
    );
    let room_id = format!("!nowhere:{}", b.name);
    let sync = sync_until(a, &alice_token, &since, "the invite", |s| {
        s["rooms"]["invite"][&room_id].is_object()
    })
    .await;
    let events = &sync["rooms"]["invite"][&room_id]["invite_state"]["events"];
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.create"),
        "{events}"
    );
}

/// A leave of `target` in `room_id` by `sender` of `remote`, at `depth`.
fn leave_event(
    remote: &Remote,
    room_id: &str,
    sender: &str,
    target: &str,
    depth: u64,
) -> (String, Value) {
    let rules = RoomVersionId::V10.rules().unwrap();
    let value = json!({
        "type": "m.room.member",
        "room_id": room_id,
        "sender": sender,
        "state_key": target,
        "origin_server_ts": now_ms(),
        "depth": depth,
        "prev_events": ["$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"],
        "auth_events": ["$bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"],
        "content": {"membership": "leave"},
    });
    let object: CanonicalJsonObject = serde_json::from_value(value).unwrap();
    let (event_id, object) = remote.sign(&rules, object);
    (event_id.to_string(), serde_json::to_value(&object).unwrap())
}

#[tokio::test]
async fn only_the_inviting_side_can_rescind_an_invite() {
    let fed = start_many(3).await;
    let (a, b, c) = (&fed.servers[0], &fed.servers[1], &fed.servers[2]);
    let (alice, alice_token, _) = a.register("alice", "password1").await;
    let (bob, bob_token, _) = b.register("bob", "password1").await;
    let room_id = create_room(
        a,
        &alice_token,
        json!({"preset": "private_chat", "room_version": "10"}),
    )
    .await;
    let since = sync_token(b, &bob_token).await;
    let (status, body) = invite(a, &alice_token, &room_id, &bob).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = sync_until(b, &bob_token, &since, "the invite", |s| {
        s["rooms"]["invite"][&room_id].is_object()
    })
    .await;
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let invite_depth = services(a)
        .rooms
        .room(&ruma::RoomId::parse(&room_id).unwrap())
        .unwrap()
        .unwrap()
        .depth;

    let txn = |origin: &str, pdu: Value| json!({"origin": origin, "origin_server_ts": now_ms(), "pdus": [pdu]});
    // A server with no part in the invite.
    let mallory = c.user_id("mallory");
    let (forged_id, forged) = leave_event(
        &Remote::server(c),
        &room_id,
        &mallory,
        &bob,
        invite_depth + 1,
    );
    let body = txn(&c.name, forged);
    let (status, answer) = c
        .signed(
            b,
            &b.name,
            Method::PUT,
            "/_matrix/federation/v1/send/x1",
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["pdus"][&forged_id]["error"].is_string(), "{answer}");
    // The inviting server, but an event older than the invite.
    let (old_id, old) = leave_event(&Remote::server(a), &room_id, &alice, &bob, invite_depth - 1);
    let body = txn(&a.name, old);
    let (status, answer) = a
        .signed(
            b,
            &b.name,
            Method::PUT,
            "/_matrix/federation/v1/send/x2",
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["pdus"][&old_id]["error"].is_string(), "{answer}");

    // Bob is still invited.
    let (_, sync) = b
        .get(
            &format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
            Some(&bob_token),
        )
        .await;
    assert!(sync["rooms"]["leave"].get(&room_id).is_none(), "{sync}");
    let (_, initial) = b
        .get("/_matrix/client/v3/sync?timeout=0", Some(&bob_token))
        .await;
    assert!(
        initial["rooms"]["invite"][&room_id].is_object(),
        "{initial}"
    );
}
