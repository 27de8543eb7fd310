//! Joins over federation between real Hearth servers on loopback: a user of B joins a room of
//! A (`make_join`/`send_join` v2, B verifying A's answer and storing the room in one batch),
//! after which the room works on both sides — messages both ways through /sync, the same
//! state, leaves and kicks delivered. Plus the resident side's refusals (unsupported room
//! version, forged events), `omit_members`, restricted joins, and knocks on A by hand-signed
//! requests.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use ruma::{CanonicalJsonObject, RoomVersionId};
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode};
use crate::fed_common::{start_many, FedServer};
use crate::fed_pdus::events::Remote;

fn services(s: &FedServer) -> &hearth::service::Services {
    &s.server.as_ref().expect("running").services
}

/// `/join/{room}` with `server_name`/`via` servers.
async fn join_via(srv: &FedServer, token: &str, room: &str, via: &[&str]) -> (StatusCode, Value) {
    let query: Vec<String> = via
        .iter()
        .map(|s| format!("server_name={}", enc(s)))
        .collect();
    srv.post(
        &format!("/_matrix/client/v3/join/{}?{}", enc(room), query.join("&")),
        Some(token),
        json!({}),
    )
    .await
}

async fn send_text(srv: &FedServer, token: &str, room: &str, txn: &str, body: &str) -> String {
    let (status, sent) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                enc(room)
            ),
            Some(token),
            json!({"msgtype": "m.text", "body": body}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    sent["event_id"].as_str().unwrap().to_owned()
}

/// Syncs until the room's timeline shows a message with `body` (bounded: 20 s).
async fn wait_for_message(srv: &FedServer, token: &str, room: &str, body: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut since: Option<String> = None;
    loop {
        let path = match &since {
            Some(s) => format!("/_matrix/client/v3/sync?timeout=2000&since={s}"),
            None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
        };
        let (status, sync) = srv.get(&path, Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{sync}");
        let found = sync["rooms"]["join"][room]["timeline"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["content"]["body"] == body);
        if found {
            return;
        }
        since = sync["next_batch"].as_str().map(str::to_owned);
        assert!(
            Instant::now() < deadline,
            "{body:?} never reached {} in {room}",
            srv.name
        );
    }
}

/// Polls until `check` holds for the room's member list on `srv` (bounded: 20 s).
async fn wait_for_membership(srv: &FedServer, token: &str, room: &str, user: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(room),
            enc(user)
        );
        let (status, content) = srv.get(&path, Some(token)).await;
        if status == StatusCode::OK && content["membership"] == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{user} never became {want} on {}: {status} {content}",
            srv.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The room's state on `srv` as `(type, state_key) → event_id`, sorted.
async fn state_ids(srv: &FedServer, token: &str, room: &str) -> Vec<(String, String, String)> {
    let (status, state) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state", enc(room)),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{state}");
    let mut out: Vec<_> = state
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["state_key"].as_str().unwrap().to_owned(),
                e["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_remote_user_joins_by_id_and_both_sides_talk() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice, _) = a.register("alice", "password1").await;
    let (bob_id, bob, _) = b.register("bob", "password1").await;
    let room = create_room(
        a,
        &alice,
        json!({"preset": "public_chat", "name": "Hearth"}),
    )
    .await;
    send_text(a, &alice, &room, "a0", "before bob").await;

    // B is not in the room and, without a server to ask, cannot join it.
    let (status, body) = join_via(b, &bob, &room, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let (status, body) = join_via(b, &bob, &room, &[&a.name]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room);
    // Joining again changes nothing (B is now in the room).
    let (status, body) = join_via(b, &bob, &room, &[&a.name]).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    wait_for_membership(a, &alice, &room, &bob_id, "join").await;
    assert_eq!(
        state_ids(a, &alice, &room).await,
        state_ids(b, &bob, &room).await
    );

    // The room on B shows its name and members to Bob's sync.
    let (status, sync) = b.get("/_matrix/client/v3/sync?timeout=0", Some(&bob)).await;
    assert_eq!(status, StatusCode::OK);
    let joined = &sync["rooms"]["join"][&room];
    let state_types: Vec<&str> = joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .chain(joined["timeline"]["events"].as_array().unwrap())
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(state_types.contains(&"m.room.name"), "{joined}");
    assert!(state_types.contains(&"m.room.create"), "{joined}");

    send_text(b, &bob, &room, "b1", "hello from B").await;
    wait_for_message(a, &alice, &room, "hello from B").await;
    send_text(a, &alice, &room, "a1", "hello from A").await;
    wait_for_message(b, &bob, &room, "hello from A").await;
    // The history before the join is not in B's timeline until B's /messages pages past the
    // join: then it is backfilled from A (`pdus/backfill.rs`), older than the join.
    let (status, page) = b
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
                enc(&room)
            ),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let chunk = page["chunk"].as_array().unwrap();
    let position = |test: &dyn Fn(&Value) -> bool| chunk.iter().position(test);
    let before = position(&|e| e["content"]["body"] == "before bob").expect("backfilled");
    let join = position(&|e| e["type"] == "m.room.member" && e["state_key"] == bob_id.as_str())
        .expect("bob's join");
    assert!(join < before, "newest first: {page}");

    // Bob leaves: A sees it.
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_for_membership(a, &alice, &room, &bob_id, "leave").await;
}

#[tokio::test]
async fn joins_by_alias_in_every_room_version_and_kicks_reach_the_joiner() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice, _) = a.register("alice", "password1").await;
    let (bob_id, bob, _) = b.register("bob", "password1").await;
    for version in 1..=12 {
        let alias_name = format!("v{version}");
        let room = create_room(
            a,
            &alice,
            json!({
                "preset": "public_chat",
                "room_version": version.to_string(),
                "room_alias_name": alias_name,
            }),
        )
        .await;
        // By alias: A's directory answer names A as a server in the room.
        let alias = format!("#{alias_name}:{}", a.name);
        let (status, body) = b
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&alias)),
                Some(&bob),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "version {version}: {body}");
        assert_eq!(body["room_id"], room, "version {version}");
        wait_for_membership(a, &alice, &room, &bob_id, "join").await;
        assert_eq!(
            state_ids(a, &alice, &room).await,
            state_ids(b, &bob, &room).await,
            "version {version}"
        );
        let text = format!("bob in v{version}");
        send_text(b, &bob, &room, &format!("t{version}"), &text).await;
        wait_for_message(a, &alice, &room, &text).await;
        if version == 12 {
            // Alice kicks Bob: B learns it and Bob can no longer send.
            let (status, body) = a
                .post(
                    &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room)),
                    Some(&alice),
                    json!({"user_id": bob_id, "reason": "test"}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            wait_for_membership(b, &bob, &room, &bob_id, "leave").await;
            let (status, body) = b
                .put(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/send/m.room.message/after-kick",
                        enc(&room)
                    ),
                    Some(&bob),
                    json!({"msgtype": "m.text", "body": "still here?"}),
                )
                .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        }
    }
}

/// `origin` asks `to` for a join template of `user` in `room` (hand-signed request).
async fn make_join(
    from: &FedServer,
    to: &FedServer,
    room: &str,
    user: &str,
    ver: &[&str],
) -> (StatusCode, Value) {
    let query: Vec<String> = ver.iter().map(|v| format!("ver={v}")).collect();
    from.signed(
        to,
        &to.name,
        Method::GET,
        &format!(
            "/_matrix/federation/v1/make_join/{}/{}?{}",
            enc(room),
            enc(user),
            query.join("&")
        ),
        None,
    )
    .await
}

/// The template of a `make_*` answer, signed by `remote` as the joining server would:
/// `(event id, event)`.
fn sign_template(
    remote: &Remote,
    version: &str,
    template: &Value,
) -> (ruma::OwnedEventId, CanonicalJsonObject) {
    let rules = RoomVersionId::try_from(version).unwrap().rules().unwrap();
    let mut value = template.clone();
    value["origin_server_ts"] = json!(crate::fed_pdus::events::now_ms());
    let object: CanonicalJsonObject = serde_json::from_value(value).unwrap();
    remote.sign(&rules, object)
}

fn value_of(object: &CanonicalJsonObject) -> Value {
    serde_json::to_value(object).unwrap()
}

async fn send_join(
    from: &FedServer,
    to: &FedServer,
    room: &str,
    event_id: &str,
    event: Value,
    omit_members: bool,
) -> (StatusCode, Value) {
    from.signed(
        to,
        &to.name,
        Method::PUT,
        &format!(
            "/_matrix/federation/v2/send_join/{}/{}?omit_members={omit_members}",
            enc(room),
            enc(event_id)
        ),
        Some(event),
    )
    .await
}

#[tokio::test]
async fn the_resident_refuses_bad_requests_and_forged_joins() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice, _) = a.register("alice", "password1").await;
    let room = create_room(a, &alice, json!({"preset": "public_chat"})).await;
    let bob = b.user_id("bob");

    // The room is version 12; B says it supports 10 and 11 only.
    let (status, body) = make_join(b, a, &room, &bob, &["10", "11"]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(errcode(&body), "M_INCOMPATIBLE_ROOM_VERSION");
    assert_eq!(body["room_version"], "12");
    // Only the user's own server may ask.
    let (status, body) = make_join(b, a, &room, &a.user_id("mallory"), &["12"]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // An unknown room.
    let (status, body) = make_join(b, a, "!nope:example.org", &bob, &["12"]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let (status, made) = make_join(b, a, &room, &bob, &["11", "12"]).await;
    assert_eq!(status, StatusCode::OK, "{made}");
    assert_eq!(made["room_version"], "12");
    assert_eq!(made["event"]["type"], "m.room.member");
    assert_eq!(made["event"]["content"]["membership"], "join");
    let remote = Remote::server(b);
    let (event_id, event) = sign_template(&remote, "12", &made["event"]);

    // Content changed after signing: the hash does not match.
    let mut tampered = value_of(&event);
    tampered["content"]["displayname"] = json!("Mallory");
    let (status, body) = send_join(b, a, &room, event_id.as_str(), tampered, false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Signed by another key under B's key id.
    let forger = Remote {
        name: b.name.clone(),
        key: {
            let der = ruma::signatures::Ed25519KeyPair::generate();
            ruma::signatures::Ed25519KeyPair::from_der(&der, remote.key.version().into()).unwrap()
        },
    };
    let (forged_id, forged) = sign_template(&forger, "12", &made["event"]);
    let (status, body) = send_join(b, a, &room, forged_id.as_str(), value_of(&forged), false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // The path names another event.
    let (status, body) = send_join(b, a, &room, "$other", value_of(&event), false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // A join of a user of another server, sent by B.
    let mut foreign = made["event"].clone();
    foreign["sender"] = json!(a.user_id("mallory"));
    foreign["state_key"] = json!(a.user_id("mallory"));
    let (foreign_id, foreign) = sign_template(&remote, "12", &foreign);
    let (status, body) =
        send_join(b, a, &room, foreign_id.as_str(), value_of(&foreign), false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Not a join.
    let mut leave = made["event"].clone();
    leave["content"]["membership"] = json!("leave");
    let (leave_id, leave) = sign_template(&remote, "12", &leave);
    let (status, body) = send_join(b, a, &room, leave_id.as_str(), value_of(&leave), false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // None of them was stored.
    let rooms = &services(a).rooms;
    for id in [&forged_id, &foreign_id, &leave_id, &event_id] {
        assert!(rooms.event_sid(id).unwrap().is_none(), "{id} stored");
    }
    let path = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room));
    let (_, members) = a.get(&path, Some(&alice)).await;
    assert!(members["joined"].get(&bob).is_none(), "{members}");

    // The genuine one is accepted, and a resend answered the same.
    let (status, answer) = send_join(b, a, &room, event_id.as_str(), value_of(&event), false).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["state"].as_array().unwrap().len() >= 5, "{answer}");
    assert!(
        !answer["auth_chain"].as_array().unwrap().is_empty(),
        "{answer}"
    );
    let (status, again) = send_join(b, a, &room, event_id.as_str(), value_of(&event), false).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    let (_, members) = a.get(&path, Some(&alice)).await;
    assert!(members["joined"].get(&bob).is_some(), "{members}");
}

#[tokio::test]
async fn restricted_rooms_are_joined_through_a_resident_that_vouches() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (alice_id, alice, _) = a.register("alice", "password1").await;
    let (bob_id, bob, _) = b.register("bob", "password1").await;
    let space = create_room(
        a,
        &alice,
        json!({"preset": "public_chat", "room_version": "10"}),
    )
    .await;
    let restricted = |allowed: &str| {
        json!({
            "room_version": "10",
            "initial_state": [{
                "type": "m.room.join_rules",
                "state_key": "",
                "content": {
                    "join_rule": "restricted",
                    "allow": [{"type": "m.room_membership", "room_id": allowed}],
                },
            }],
        })
    };
    let room = create_room(a, &alice, restricted(&space)).await;

    // Bob is in none of the allowed rooms yet: refused.
    let (status, body) = join_via(b, &bob, &room, &[&a.name]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let room_id: &ruma::RoomId = room.as_str().try_into().unwrap();
    assert!(services(b).rooms.room(room_id).unwrap().is_none());

    let (status, body) = join_via(b, &bob, &space, &[&a.name]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_for_membership(a, &alice, &space, &bob_id, "join").await;
    let (status, body) = join_via(b, &bob, &room, &[&a.name]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_for_membership(a, &alice, &room, &bob_id, "join").await;

    // The join names Alice and carries A's signature beside B's, on both servers.
    for (srv, token) in [(a, &alice), (b, &bob)] {
        let rooms = &services(srv).rooms;
        let room_id: &ruma::RoomId = room.as_str().try_into().unwrap();
        let record = rooms.room(room_id).unwrap().unwrap();
        let join = rooms
            .state_event(
                record.sid,
                &ruma::events::StateEventType::RoomMember,
                &bob_id,
            )
            .unwrap()
            .unwrap();
        let json = serde_json::to_value(&join.json).unwrap();
        assert_eq!(
            json["content"]["join_authorised_via_users_server"], alice_id,
            "{json}"
        );
        assert!(json["signatures"][&a.name].is_object(), "{json}");
        assert!(json["signatures"][&b.name].is_object(), "{json}");
        let _ = token;
    }
    assert_eq!(
        state_ids(a, &alice, &room).await,
        state_ids(b, &bob, &room).await
    );

    // A room allowing members of a room A is not in: A cannot tell.
    let elsewhere = create_room(b, &bob, json!({"preset": "public_chat"})).await;
    let unknown = create_room(a, &alice, restricted(&elsewhere)).await;
    let carol = b.user_id("carol");
    let (status, body) = make_join(b, a, &unknown, &carol, &["10"]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(errcode(&body), "M_UNABLE_TO_AUTHORISE_JOIN");
    // Bob meets the condition, but nobody on A may invite.
    let mut no_inviter = restricted(&space);
    no_inviter["power_level_content_override"] = json!({"invite": 101});
    let no_inviter = create_room(a, &alice, no_inviter).await;
    let (status, body) = make_join(b, a, &no_inviter, &bob_id, &["10"]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(errcode(&body), "M_UNABLE_TO_GRANT_JOIN");
}

#[tokio::test]
async fn a_resident_answering_with_a_forged_state_event_fails_the_join() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice, _) = a.register("alice", "password1").await;
    let (_, bob, _) = b.register("bob", "password1").await;
    let room = create_room(
        a,
        &alice,
        json!({"preset": "public_chat", "topic": "the real topic"}),
    )
    .await;
    let room_id: &ruma::RoomId = room.as_str().try_into().unwrap();
    // A's stored topic event is changed behind its back: its signature no longer holds.
    let rooms = &services(a).rooms;
    let record = rooms.room(room_id).unwrap().unwrap();
    let topic = rooms
        .state_event(record.sid, &ruma::events::StateEventType::RoomTopic, "")
        .unwrap()
        .unwrap();
    let mut forged = serde_json::to_value(&topic.json).unwrap();
    forged["origin_server_ts"] = json!(forged["origin_server_ts"].as_u64().unwrap() + 1);
    let mut batch = hearth::store::Batch::new();
    batch.put::<hearth::service::rooms::Pdus>(
        &topic.sid,
        &hearth::store::Raw(serde_json::to_vec(&forged).unwrap()),
    );
    services(a).store.commit(batch).await.unwrap();

    let (status, body) = join_via(b, &bob, &room, &[&a.name]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    // Nothing of the room is stored on B.
    let b_rooms = &services(b).rooms;
    assert!(b_rooms.room(room_id).unwrap().is_none());
    let create = rooms
        .state_event(record.sid, &ruma::events::StateEventType::RoomCreate, "")
        .unwrap()
        .unwrap();
    assert!(b_rooms.event_sid(&create.pdu.event_id).unwrap().is_none());
    let (status, sync) = b.get("/_matrix/client/v3/sync?timeout=0", Some(&bob)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(sync["rooms"]["join"].get(&room).is_none(), "{sync}");
}

#[tokio::test]
async fn omit_members_leaves_out_members_but_heroes_and_names_the_servers() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (alice_id, alice, _) = a.register("alice", "password1").await;
    let (_, carol, _) = a.register("carol", "password1").await;
    let remote = Remote::server(b);
    for named in [true, false] {
        let mut body = json!({"preset": "public_chat"});
        if named {
            body["name"] = json!("named");
        }
        let room = create_room(a, &alice, body).await;
        crate::common::join(a, &carol, &room).await;
        let user = b.user_id(if named { "bob" } else { "dan" });
        let (status, made) = make_join(b, a, &room, &user, &["12"]).await;
        assert_eq!(status, StatusCode::OK, "{made}");
        let (event_id, event) = sign_template(&remote, "12", &made["event"]);
        let (status, answer) =
            send_join(b, a, &room, event_id.as_str(), value_of(&event), true).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        // Named: every member is left out; unnamed: both members are heroes, so none is.
        assert_eq!(answer["members_omitted"] == true, named, "{answer}");
        assert_eq!(answer["servers_in_room"], json!([a.name]), "{answer}");
        let state = answer["state"].as_array().unwrap();
        let members: Vec<&str> = state
            .iter()
            .filter(|e| e["type"] == "m.room.member")
            .filter_map(|e| e["state_key"].as_str())
            .collect();
        if named {
            assert!(members.is_empty(), "{members:?}");
            // Alice's member event is in the auth chain of the power levels.
            assert!(answer["auth_chain"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["type"] == "m.room.member" && e["state_key"] == alice_id));
        } else {
            // No name: the heroes' member events stay.
            let mut sorted = members.clone();
            sorted.sort();
            let mut want = vec![alice_id.as_str(), a.user_id("carol").leak() as &str];
            want.sort();
            assert_eq!(sorted, want);
        }
        assert!(
            state.iter().any(|e| e["type"] == "m.room.create"),
            "{answer}"
        );
        // What is in `state` is not repeated in `auth_chain`.
        let in_state: std::collections::HashSet<String> =
            state.iter().map(|e| e.to_string()).collect();
        for event in answer["auth_chain"].as_array().unwrap() {
            assert!(!in_state.contains(&event.to_string()), "{event}");
        }
    }
    // Without omit_members every member is there and nothing is said to be omitted.
    let room = create_room(a, &alice, json!({"preset": "public_chat", "name": "n"})).await;
    let (_, made) = make_join(b, a, &room, &b.user_id("erin"), &["12"]).await;
    let (event_id, event) = sign_template(&remote, "12", &made["event"]);
    let (status, answer) = send_join(b, a, &room, event_id.as_str(), value_of(&event), false).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer.get("members_omitted").is_none() || answer["members_omitted"] == false);
    assert!(answer["state"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.member" && e["state_key"] == alice_id));
}

#[tokio::test]
async fn remote_users_knock_and_leave_through_the_resident() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice, _) = a.register("alice", "password1").await;
    let remote = Remote::server(b);
    let bob = b.user_id("bob");
    let room = create_room(
        a,
        &alice,
        json!({"initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}]}),
    )
    .await;
    let path = |what: &str, event: Option<&str>| match event {
        None => format!(
            "/_matrix/federation/v1/make_{what}/{}/{}?ver=11&ver=12",
            enc(&room),
            enc(&bob)
        ),
        Some(id) => format!(
            "/_matrix/federation/{}/send_{what}/{}/{}",
            if what == "knock" { "v1" } else { "v2" },
            enc(&room),
            enc(id)
        ),
    };
    // Joining is not allowed (knock rule): the template is refused.
    let (status, body) = make_join(b, a, &room, &bob, &["12"]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let (status, made) = b
        .signed(a, &a.name, Method::GET, &path("knock", None), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{made}");
    assert_eq!(made["event"]["content"]["membership"], "knock");
    let (knock_id, knock) = sign_template(&remote, "12", &made["event"]);
    let (status, answer) = b
        .signed(
            a,
            &a.name,
            Method::PUT,
            &path("knock", Some(knock_id.as_str())),
            Some(value_of(&knock)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let stripped = answer["knock_room_state"].as_array().unwrap();
    let types: Vec<&str> = stripped.iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(types.contains(&"m.room.create"), "{answer}");
    assert!(types.contains(&"m.room.join_rules"), "{answer}");
    wait_for_membership(a, &alice, &room, &bob, "knock").await;

    // The knock is withdrawn with make_leave/send_leave.
    let (status, made) = b
        .signed(
            a,
            &a.name,
            Method::GET,
            &format!(
                "/_matrix/federation/v1/make_leave/{}/{}",
                enc(&room),
                enc(&bob)
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{made}");
    assert_eq!(made["event"]["content"]["membership"], "leave");
    let (leave_id, leave) = sign_template(&remote, "12", &made["event"]);
    let (status, answer) = b
        .signed(
            a,
            &a.name,
            Method::PUT,
            &path("leave", Some(leave_id.as_str())),
            Some(value_of(&leave)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, json!({}));
    wait_for_membership(a, &alice, &room, &bob, "leave").await;

    // A version without knocking.
    let old = create_room(a, &alice, json!({"room_version": "6"})).await;
    let (status, body) = b
        .signed(
            a,
            &a.name,
            Method::GET,
            &format!(
                "/_matrix/federation/v1/make_knock/{}/{}?ver=6",
                enc(&old),
                enc(&bob)
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(errcode(&body), "M_INCOMPATIBLE_ROOM_VERSION");
}

#[tokio::test]
async fn an_outlier_received_again_as_history_is_promoted_in_place() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice, _) = a.register("alice", "password1").await;
    let (_, bob, _) = b.register("bob", "password1").await;
    let room = create_room(
        a,
        &alice,
        json!({"preset": "public_chat", "name": "old name"}),
    )
    .await;
    let (status, body) = join_via(b, &bob, &room, &[&a.name]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let room_id: &ruma::RoomId = room.as_str().try_into().unwrap();

    // On B the name event is an outlier of the state: readable as state, not in the timeline.
    let a_rooms = &services(a).rooms;
    let record = a_rooms.room(room_id).unwrap().unwrap();
    let name = a_rooms
        .state_event(record.sid, &ruma::events::StateEventType::RoomName, "")
        .unwrap()
        .unwrap();
    let b_rooms = &services(b).rooms;
    let sid = b_rooms.event_sid(&name.pdu.event_id).unwrap().unwrap();
    assert!(b_rooms.is_outlier(sid).unwrap());
    let messages = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
        enc(&room)
    );
    let names_in = |page: &Value| {
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.name")
            .count()
    };
    // (Not read through /messages here: paging past the join would backfill it.)
    let b_room_sid = b_rooms.room(room_id).unwrap().unwrap().sid;
    let row = services(b)
        .store
        .get::<hearth::service::rooms::Timeline>(&(b_room_sid, sid))
        .unwrap();
    assert!(row.is_none(), "not in the timeline");

    // A sends it as a PDU (as backfill or missing events would bring it): promoted where it
    // is, before the join; the current state and the join stay as they were.
    let body = json!({
        "origin": a.name,
        "origin_server_ts": crate::fed_pdus::events::now_ms(),
        "pdus": [value_of(&name.json)],
    });
    let (status, answer) = a
        .signed(
            b,
            &b.name,
            Method::PUT,
            "/_matrix/federation/v1/send/p1",
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["pdus"][name.pdu.event_id.as_str()],
        json!({}),
        "{answer}"
    );
    assert_eq!(b_rooms.event_sid(&name.pdu.event_id).unwrap(), Some(sid));
    assert!(!b_rooms.is_outlier(sid).unwrap());
    let (_, page) = b.get(&messages, Some(&bob)).await;
    assert_eq!(names_in(&page), 1, "{page}");
    let b_record = b_rooms.room(room_id).unwrap().unwrap();
    assert_eq!(b_record.extremities.len(), 1);
    assert!(b_record.extremities[0] > sid);
}
