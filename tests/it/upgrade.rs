//! Room upgrades over HTTP: the replacement room, transferred state, aliases, the tombstone
//! and the restricted old room.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode, join, TestServer};

async fn upgrade(srv: &TestServer, token: &str, room: &str, body: Value) -> (StatusCode, Value) {
    srv.post(
        &format!("/_matrix/client/v3/rooms/{room}/upgrade"),
        Some(token),
        body,
    )
    .await
}

async fn state(srv: &TestServer, token: &str, room: &str) -> Vec<Value> {
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/state"),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body.as_array().unwrap().clone()
}

fn find<'a>(state: &'a [Value], kind: &str, key: &str) -> &'a Value {
    state
        .iter()
        .find(|e| e["type"] == kind && e["state_key"] == key)
        .unwrap_or_else(|| panic!("no {kind}/{key} in the state"))
}

fn content<'a>(state: &'a [Value], kind: &str) -> &'a Value {
    &find(state, kind, "")["content"]
}

async fn put_state(srv: &TestServer, token: &str, room: &str, kind: &str, body: Value) {
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/{kind}/"),
            Some(token),
            body,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn send_text(srv: &TestServer, token: &str, room: &str, txn: &str) -> (StatusCode, Value) {
    srv.put(
        &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
        Some(token),
        json!({"msgtype": "m.text", "body": "hello"}),
    )
    .await
}

fn alias_path(alias: &str) -> String {
    format!("/_matrix/client/v3/directory/room/{}", enc(alias))
}

#[tokio::test]
async fn upgrade_v10_to_v12_replaces_the_room() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let (carol_id, carol, _) = srv.register("carol", "pw").await;
    let (_, dave, _) = srv.register("dave", "pw").await;
    let (erin_id, _, _) = srv.register("erin", "pw").await;
    let acl = json!({"allow": ["*"], "deny": ["evil.example"], "allow_ip_literals": false});
    let old = create_room(
        &srv,
        &alice,
        json!({
            "room_version": "10",
            "visibility": "public",
            "preset": "public_chat",
            "name": "Book club",
            "topic": "Novels",
            "room_alias_name": "books",
            "creation_content": {"m.federate": false},
            "initial_state": [
                {"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
                {"type": "m.room.server_acl", "content": acl},
            ],
        }),
    )
    .await;
    for token in [&bob, &carol, &dave] {
        join(&srv, token, &old).await;
    }
    // A member's alias moves with the room too.
    let (status, _) = srv
        .put(
            &alias_path("#novels:localhost"),
            Some(&bob),
            json!({"room_id": old}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    put_state(
        &srv,
        &alice,
        &old,
        "m.room.power_levels",
        json!({"users": {&alice_id: 100, &bob_id: 50}, "events": {"m.room.tombstone": 100}}),
    )
    .await;
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{old}/ban"),
            Some(&alice),
            json!({"user_id": carol_id, "reason": "spam"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, sent) = send_text(&srv, &bob, &old, "t1").await;
    let last_event = sent["event_id"].as_str().unwrap().to_owned();
    let old_state = state(&srv, &alice, &old).await;

    let (status, body) = upgrade(&srv, &alice, &old, json!({"new_version": "12"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert!(!new.contains(':'), "a v12 room id: {new}");

    // The replacement room: create event with the predecessor and copied fields.
    let s = state(&srv, &alice, &new).await;
    let create = find(&s, "m.room.create", "");
    assert_eq!(create["sender"], alice_id.as_str());
    assert_eq!(
        create["content"],
        json!({
            "room_version": "12",
            "m.federate": false,
            "predecessor": {"room_id": old, "event_id": last_event},
        })
    );
    // Transferred state, unchanged.
    for kind in [
        "m.room.name",
        "m.room.topic",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.guest_access",
        "m.room.encryption",
        "m.room.server_acl",
        "m.room.canonical_alias",
    ] {
        assert_eq!(content(&s, kind), content(&old_state, kind), "{kind}");
    }
    assert_eq!(content(&s, "m.room.name")["name"], "Book club");
    assert_eq!(
        content(&s, "m.room.canonical_alias")["alias"],
        "#books:localhost"
    );
    // Power levels: the creator is privileged by the create event, not listed.
    let pl = content(&s, "m.room.power_levels");
    assert_eq!(pl["users"], json!({&bob_id: 50}));
    assert_eq!(pl["events"]["m.room.tombstone"], 100);
    // Bans carry over; nobody but the upgrader is a member.
    let ban = &find(&s, "m.room.member", &carol_id)["content"];
    assert_eq!(ban, &json!({"membership": "ban", "reason": "spam"}));
    assert_eq!(
        find(&s, "m.room.member", &alice_id)["content"]["membership"],
        "join"
    );
    assert!(!s
        .iter()
        .any(|e| e["type"] == "m.room.member" && e["state_key"] == bob_id.as_str()));

    // Aliases moved, the old room lists none.
    for alias in ["#books:localhost", "#novels:localhost"] {
        let (_, body) = srv.get(&alias_path(alias), None).await;
        assert_eq!(body["room_id"], new.as_str(), "{alias}");
    }
    let (_, body) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{new}/aliases"),
            Some(&alice),
        )
        .await;
    assert_eq!(
        body["aliases"],
        json!(["#books:localhost", "#novels:localhost"])
    );
    let (_, body) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{old}/aliases"),
            Some(&alice),
        )
        .await;
    assert_eq!(body["aliases"], json!([]));
    // Bob's alias is still Bob's: he may delete it.
    let (status, _) = srv
        .call(
            reqwest::Method::DELETE,
            &alias_path("#novels:localhost"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // The directory lists the new room instead of the old one.
    let (_, body) = srv
        .get(
            &format!("/_matrix/client/v3/directory/list/room/{old}"),
            None,
        )
        .await;
    assert_eq!(body["visibility"], "private");
    let (_, body) = srv
        .get(
            &format!("/_matrix/client/v3/directory/list/room/{new}"),
            None,
        )
        .await;
    assert_eq!(body["visibility"], "public");

    // The old room: tombstone, then restricted power levels.
    let s = state(&srv, &alice, &old).await;
    let tombstone = find(&s, "m.room.tombstone", "");
    assert_eq!(tombstone["sender"], alice_id.as_str());
    assert_eq!(tombstone["content"]["replacement_room"], new.as_str());
    assert!(tombstone["content"]["body"].is_string());
    let pl = content(&s, "m.room.power_levels");
    assert_eq!(
        (pl["events_default"].as_i64(), pl["invite"].as_i64()),
        (Some(50), Some(50))
    );
    assert_eq!(pl["users"], json!({&alice_id: 100, &bob_id: 50}));
    // Dave (power 0) can no longer talk or invite there; Bob (50) still can talk.
    let (status, body) = send_text(&srv, &dave, &old, "t2").await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{old}/invite"),
            Some(&dave),
            json!({"user_id": erin_id}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = send_text(&srv, &bob, &old, "t3").await;
    assert_eq!(status, StatusCode::OK);

    // Members follow the tombstone into the new room.
    join(&srv, &bob, &new).await;
    let (status, _) = send_text(&srv, &bob, &new, "t4").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn upgrade_v11_to_v12_with_additional_creators() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let (carol_id, carol, _) = srv.register("carol", "pw").await;
    let old = create_room(
        &srv,
        &alice,
        json!({"room_version": "11", "preset": "public_chat", "name": "Projects",
               "creation_content": {"type": "m.space"}}),
    )
    .await;
    join(&srv, &bob, &old).await;
    join(&srv, &carol, &old).await;
    put_state(
        &srv,
        &alice,
        &old,
        "m.room.power_levels",
        json!({"users": {&alice_id: 100, &bob_id: 100, &carol_id: 20}}),
    )
    .await;

    let (status, body) = upgrade(
        &srv,
        &alice,
        &old,
        json!({"new_version": "12", "additional_creators": [bob_id]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    let s = state(&srv, &alice, &new).await;
    let create = content(&s, "m.room.create");
    assert_eq!(create["room_version"], "12");
    assert_eq!(create["type"], "m.space");
    assert_eq!(create["additional_creators"], json!([bob_id]));
    assert_eq!(create["predecessor"]["room_id"], old.as_str());
    assert!(create.get("creator").is_none());
    // Both creators leave `users`; the others keep their levels.
    assert_eq!(
        content(&s, "m.room.power_levels")["users"],
        json!({&carol_id: 20})
    );
    assert_eq!(content(&s, "m.room.name")["name"], "Projects");

    // Bob, a creator, joins and administers the new room.
    join(&srv, &bob, &new).await;
    put_state(
        &srv,
        &bob,
        &new,
        "m.room.name",
        json!({"name": "Projects 2"}),
    )
    .await;

    let s = state(&srv, &alice, &old).await;
    assert_eq!(
        content(&s, "m.room.tombstone")["replacement_room"],
        new.as_str()
    );
    assert_eq!(content(&s, "m.room.power_levels")["events_default"], 50);
    // Carol (20) can no longer write in the old room.
    let (status, _) = send_text(&srv, &carol, &old, "t1").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn upgrade_by_a_moderator_keeps_the_copied_power_levels() {
    // Bob may send the tombstone (50) but not power levels or history visibility (100). The
    // new room still gets every transferred event, and ends with the old room's levels.
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let old = create_room(
        &srv,
        &alice,
        json!({"room_version": "10", "preset": "public_chat", "name": "Chess"}),
    )
    .await;
    join(&srv, &bob, &old).await;
    let levels = json!({
        "users": {&alice_id: 100, &bob_id: 50},
        "events": {"m.room.tombstone": 50, "m.room.power_levels": 100,
                   "m.room.history_visibility": 100},
    });
    put_state(&srv, &alice, &old, "m.room.power_levels", levels.clone()).await;

    let (status, body) = upgrade(&srv, &bob, &old, json!({"new_version": "11"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    let s = state(&srv, &bob, &new).await;
    assert_eq!(find(&s, "m.room.create", "")["sender"], bob_id.as_str());
    assert_eq!(content(&s, "m.room.create")["room_version"], "11");
    assert_eq!(
        content(&s, "m.room.history_visibility")["history_visibility"],
        "shared"
    );
    let pl = find(&s, "m.room.power_levels", "");
    assert_eq!(pl["content"], levels);
    assert_eq!(pl["sender"], bob_id.as_str());
    // The first power levels event raised Bob for the copy; the last one restored him.
    assert_eq!(pl["unsigned"]["prev_content"]["users"][&bob_id], 100);

    // In the old room Bob could send the tombstone but not restrict the power levels.
    let s = state(&srv, &alice, &old).await;
    assert_eq!(
        content(&s, "m.room.tombstone")["replacement_room"],
        new.as_str()
    );
    assert_eq!(content(&s, "m.room.power_levels"), &levels);
}

#[tokio::test]
async fn upgrade_from_v12_keeps_creators_powerful() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let old = create_room(&srv, &alice, json!({"name": "Twelve"})).await;
    let (status, body) = upgrade(&srv, &alice, &old, json!({"new_version": "11"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    let s = state(&srv, &alice, &new).await;
    let pl = content(&s, "m.room.power_levels");
    // As high as the highest level of the room (v12 rooms put the tombstone at 150).
    assert_eq!(pl["users"][&alice_id], 150);
    put_state(&srv, &alice, &new, "m.room.name", json!({"name": "Eleven"})).await;
    // And the new room can be upgraded again.
    let (status, body) = upgrade(&srv, &alice, &new, json!({"new_version": "12"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let newest = body["replacement_room"].as_str().unwrap();
    let s = state(&srv, &alice, newest).await;
    assert_eq!(content(&s, "m.room.name")["name"], "Eleven");
    assert_eq!(content(&s, "m.room.power_levels")["users"], json!({}));
}

#[tokio::test]
async fn refused_upgrades_change_nothing() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let (_, carol, _) = srv.register("carol", "pw").await;
    let old = create_room(
        &srv,
        &alice,
        json!({"preset": "public_chat", "room_alias_name": "stay"}),
    )
    .await;
    join(&srv, &bob, &old).await;

    let (status, body) = upgrade(&srv, &alice, &old, json!({"new_version": "99"})).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_UNSUPPORTED_ROOM_VERSION")
    );
    // Bob is a member without power over the tombstone; Carol is not in the room.
    let (status, body) = upgrade(&srv, &bob, &old, json!({"new_version": "12"})).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    let (status, body) = upgrade(&srv, &carol, &old, json!({"new_version": "12"})).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    let (status, body) = upgrade(
        &srv,
        &alice,
        "!unknown:localhost",
        json!({"new_version": "12"}),
    )
    .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    let (status, body) = upgrade(&srv, &alice, &old, json!({})).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_BAD_JSON")
    );
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{old}/upgrade"),
            None,
            json!({"new_version": "12"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // No tombstone, the alias still points here, and nobody is in any other room.
    let (status, _) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{old}/state/m.room.tombstone/"),
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, body) = srv.get(&alias_path("#stay:localhost"), None).await;
    assert_eq!(body["room_id"], old.as_str());
    let (_, body) = srv
        .get("/_matrix/client/v3/joined_rooms", Some(&alice))
        .await;
    assert_eq!(body["joined_rooms"], json!([old]));
}

/// The replacement room's `predecessor.event_id` is the old room's tombstone, where the room
/// ids allow it (targets before v12).
#[tokio::test]
async fn predecessor_names_the_tombstone() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let old = create_room(&srv, &alice, json!({"room_version": "10"})).await;
    send_text(&srv, &alice, &old, "t1").await;
    let (status, body) = upgrade(&srv, &alice, &old, json!({"new_version": "11"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["replacement_room"].as_str().unwrap();
    let tombstone = find(&state(&srv, &alice, &old).await, "m.room.tombstone", "").clone();
    assert_eq!(tombstone["content"]["replacement_room"], new);
    let s = state(&srv, &alice, new).await;
    assert_eq!(
        content(&s, "m.room.create")["predecessor"],
        json!({"room_id": old, "event_id": tombstone["event_id"]})
    );
}

/// A redacted topic (content `{}`, as the redaction algorithm leaves it) is part of the state an
/// upgrade copies: the upgrade must not fail on it as if a client had sent it.
#[tokio::test]
async fn upgrade_copies_a_redacted_topic() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &alice, json!({"room_version": "10", "topic": "old"})).await;
    let topic = find(&state(&srv, &alice, &room).await, "m.room.topic", "")["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/redact/{}/r1", enc(&topic)),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        content(&state(&srv, &alice, &room).await, "m.room.topic"),
        &json!({})
    );
    let (status, body) = upgrade(&srv, &alice, &room, json!({"new_version": "11"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new_room = body["replacement_room"].as_str().unwrap();
    // The old room had no topic any more, and neither has the new one.
    let new_state = state(&srv, &alice, new_room).await;
    assert!(
        !new_state.iter().any(|e| e["type"] == "m.room.topic"),
        "{new_state:?}"
    );
}
