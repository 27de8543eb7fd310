//! Rooms over HTTP: creation, events, state, timeline, membership, power levels, visibility.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode, TestServer};

const CREATE: &str = "/_matrix/client/v3/createRoom";

async fn send_text(
    srv: &TestServer,
    token: &str,
    room: &str,
    txn: &str,
    text: &str,
) -> (StatusCode, Value) {
    srv.put(
        &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
        Some(token),
        json!({"msgtype": "m.text", "body": text}),
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

fn find<'a>(state: &'a [Value], kind: &str, key: &str) -> Option<&'a Value> {
    state
        .iter()
        .find(|e| e["type"] == kind && e["state_key"] == key)
}

#[tokio::test]
async fn create_room_default_is_v12_private_chat() {
    let srv = TestServer::start().await;
    let (alice, token, _) = srv.register("alice", "pw").await;
    let room = create_room(
        &srv,
        &token,
        json!({"name": "Family", "topic": "Dinner plans"}),
    )
    .await;
    assert!(
        !room.contains(':'),
        "v12 room ids are hashes without a server name: {room}"
    );
    let state = state(&srv, &token, &room).await;
    let create = find(&state, "m.room.create", "").unwrap();
    assert_eq!(create["content"]["room_version"], "12");
    assert!(
        create["content"].get("creator").is_none(),
        "v11+ has no creator field"
    );
    assert_eq!(create["sender"], alice);
    assert_eq!(
        find(&state, "m.room.join_rules", "").unwrap()["content"]["join_rule"],
        "invite"
    );
    assert_eq!(
        find(&state, "m.room.history_visibility", "").unwrap()["content"]["history_visibility"],
        "shared"
    );
    assert_eq!(
        find(&state, "m.room.guest_access", "").unwrap()["content"]["guest_access"],
        "can_join"
    );
    assert_eq!(
        find(&state, "m.room.name", "").unwrap()["content"]["name"],
        "Family"
    );
    assert_eq!(
        find(&state, "m.room.topic", "").unwrap()["content"]["topic"],
        "Dinner plans"
    );
    let member = find(&state, "m.room.member", &alice).unwrap();
    assert_eq!(member["content"]["membership"], "join");
    assert_eq!(member["content"]["displayname"], "alice");
    let power = &find(&state, "m.room.power_levels", "").unwrap()["content"];
    assert!(
        power["users"].get(&alice).is_none(),
        "v12 creators are not listed in users"
    );
    assert_eq!(power["events"]["m.room.tombstone"], 150);

    let (status, rooms) = srv
        .get("/_matrix/client/v3/joined_rooms", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rooms["joined_rooms"], json!([room]));
}

#[tokio::test]
async fn every_room_version_can_be_created_and_used() {
    let srv = TestServer::start().await;
    let (alice, token, _) = srv.register("alice", "pw").await;
    for version in 1..=12 {
        let (status, body) = srv
            .post(
                CREATE,
                Some(&token),
                json!({"room_version": version.to_string(), "preset": "public_chat"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "v{version}: {body}");
        let room = body["room_id"].as_str().unwrap();
        let state = state(&srv, &token, room).await;
        let create = &find(&state, "m.room.create", "").unwrap()["content"];
        assert_eq!(create["room_version"], version.to_string());
        if version <= 10 {
            assert_eq!(create["creator"], alice, "v{version}");
        } else {
            assert!(create.get("creator").is_none(), "v{version}");
        }
        let power = &find(&state, "m.room.power_levels", "").unwrap()["content"];
        assert_eq!(
            power["users"].get(&alice).is_some(),
            version < 12,
            "v{version}"
        );
        let (status, sent) = send_text(&srv, &token, room, "t1", "hello").await;
        assert_eq!(status, StatusCode::OK, "v{version}: {sent}");
        let event_id = sent["event_id"].as_str().unwrap();
        if version <= 2 {
            assert!(
                event_id.ends_with(":localhost"),
                "v{version} ids are server-assigned: {event_id}"
            );
        } else {
            assert!(
                !event_id.contains(':'),
                "v{version} ids are hashes: {event_id}"
            );
        }
        let (status, event) = srv
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/event/{}", enc(event_id)),
                Some(&token),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "v{version} {event_id}: {event}");
        assert_eq!(event["content"]["body"], "hello");
    }
    let (status, body) = srv
        .post(CREATE, Some(&token), json!({"room_version": "99"}))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_UNSUPPORTED_ROOM_VERSION")
    );
}

#[tokio::test]
async fn presets_set_join_rules_and_power_levels() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let (bob, _, _) = srv.register("bob", "pw").await;
    let public = create_room(
        &srv,
        &token,
        json!({"preset": "public_chat", "room_version": "11"}),
    )
    .await;
    let s = state(&srv, &token, &public).await;
    assert_eq!(
        find(&s, "m.room.join_rules", "").unwrap()["content"]["join_rule"],
        "public"
    );
    assert_eq!(
        find(&s, "m.room.guest_access", "").unwrap()["content"]["guest_access"],
        "forbidden"
    );

    let trusted = create_room(&srv, &token, json!({"preset": "trusted_private_chat", "invite": [bob], "is_direct": true, "room_version": "11"})).await;
    let s = state(&srv, &token, &trusted).await;
    assert_eq!(
        find(&s, "m.room.power_levels", "").unwrap()["content"]["users"][&bob],
        100
    );
    let invite = find(&s, "m.room.member", &bob).unwrap();
    assert_eq!(invite["content"]["membership"], "invite");
    assert_eq!(invite["content"]["is_direct"], true);

    // v12 trusted_private_chat: invitees become additional creators.
    let trusted12 = create_room(
        &srv,
        &token,
        json!({"preset": "trusted_private_chat", "invite": [bob]}),
    )
    .await;
    let s = state(&srv, &token, &trusted12).await;
    assert_eq!(
        find(&s, "m.room.create", "").unwrap()["content"]["additional_creators"],
        json!([bob])
    );

    let overridden = create_room(&srv, &token, json!({"power_level_content_override": {"events_default": 20},
        "initial_state": [{"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}]})).await;
    let s = state(&srv, &token, &overridden).await;
    assert_eq!(
        find(&s, "m.room.power_levels", "").unwrap()["content"]["events_default"],
        20
    );
    assert_eq!(
        find(&s, "m.room.history_visibility", "").unwrap()["content"]["history_visibility"],
        "joined"
    );

    let (status, body) = srv
        .post(
            CREATE,
            Some(&token),
            json!({"initial_state": [{"type": "m.room.create", "content": {}}]}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_ROOM_STATE")
    );
    let (status, _) = srv.post(CREATE, Some(&token), json!({"invite_3pid": [{"id_server": "x", "id_access_token": "y", "medium": "email", "address": "a@b.c"}]})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn send_is_idempotent_per_device_and_state_round_trips() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &token, json!({})).await;
    let (_, first) = send_text(&srv, &token, &room, "same", "once").await;
    let (_, again) = send_text(&srv, &token, &room, "same", "once").await;
    assert_eq!(first["event_id"], again["event_id"]);
    let (_, other_device) = srv.login("alice", "pw").await;
    let (_, third) = send_text(
        &srv,
        other_device["access_token"].as_str().unwrap(),
        &room,
        "same",
        "once",
    )
    .await;
    assert_ne!(first["event_id"], third["event_id"]);

    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/");
    let (status, _) = srv
        .put(&path, Some(&token), json!({"topic": "New topic"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, content) = srv.get(&path, Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content, json!({"topic": "New topic"}));
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.nothing/"),
            Some(&token),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );

    // The sending device sees its transaction id; the event carries prev_content when replaced.
    let (_, event) = srv
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{room}/event/{}",
                first["event_id"].as_str().unwrap()
            ),
            Some(&token),
        )
        .await;
    assert_eq!(event["unsigned"]["transaction_id"], "same");
    let (_, state_event) = srv.get(&format!("{path}?format=event"), Some(&token)).await;
    assert!(
        state_event["unsigned"].get("prev_content").is_none()
            || state_event["unsigned"]["prev_content"].is_object()
    );
}

#[tokio::test]
async fn power_levels_are_enforced() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let (carol_id, carol, _) = srv.register("carol", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    for token in [&bob, &carol] {
        let (status, body) = srv
            .post(
                &format!("/_matrix/client/v3/join/{room}"),
                Some(token),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Bob (power 0) cannot change the name (50), kick or ban.
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"),
            Some(&bob),
            json!({"name": "x"}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    assert!(
        body["error"].as_str().unwrap().len() > 10,
        "a reason is given: {body}"
    );
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/kick"),
            Some(&bob),
            json!({"user_id": carol_id}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/ban"),
            Some(&bob),
            json!({"user_id": carol_id}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Alice bans Bob: he is out, cannot rejoin, and can be unbanned.
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/ban"),
            Some(&alice),
            json!({"user_id": bob_id, "reason": "spam"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = send_text(&srv, &bob, &room, "b1", "let me back").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/join/{room}"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, member) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{bob_id}"),
            Some(&alice),
        )
        .await;
    assert_eq!(member, json!({"membership": "ban", "reason": "spam"}));
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/unban"),
            Some(&alice),
            json!({"user_id": bob_id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/join/{room}"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Kick Carol.
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/kick"),
            Some(&alice),
            json!({"user_id": carol_id, "reason": "bye"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send_text(&srv, &carol, &room, "c1", "hi").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn invite_only_rooms_need_an_invite_and_leave_forget() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({})).await;
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/join"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            Some(&alice),
            json!({"user_id": bob_id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/join"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/joined_members"),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["joined"].as_object().unwrap().len(), 2);
    assert_eq!(body["joined"][&bob_id]["display_name"], "bob");

    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/forget"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(&bob),
            json!({"reason": "busy"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, rooms) = srv.get("/_matrix/client/v3/joined_rooms", Some(&bob)).await;
    assert_eq!(rooms["joined_rooms"], json!([]));
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/forget"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/members?membership=join"),
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["chunk"].as_array().unwrap().len(), 1);
    let (_, body) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/members?not_membership=join"),
            Some(&alice),
        )
        .await;
    assert_eq!(body["chunk"][0]["state_key"], bob_id);
}

async fn page(
    srv: &TestServer,
    token: &str,
    room: &str,
    dir: &str,
    from: Option<&str>,
    limit: u32,
) -> (Vec<String>, Option<String>) {
    let from = from.map(|f| format!("&from={f}")).unwrap_or_default();
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir={dir}&limit={limit}{from}"),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ids = body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    (ids, body["end"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn pagination_over_150_events_has_no_gaps_or_duplicates() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &token, json!({})).await;
    let mut sent = Vec::new();
    for i in 0..150 {
        let (status, body) = send_text(
            &srv,
            &token,
            &room,
            &format!("t{i}"),
            &format!("message {i}"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        sent.push(body["event_id"].as_str().unwrap().to_owned());
    }
    // Backwards from the end, 7 at a time.
    let mut back = Vec::new();
    let mut from = None;
    for _ in 0..100 {
        let (ids, end) = page(&srv, &token, &room, "b", from.as_deref(), 7).await;
        back.extend(ids);
        match end {
            Some(end) => from = Some(end),
            None => break,
        }
    }
    let messages: Vec<&String> = back.iter().filter(|id| sent.contains(id)).collect();
    let expected: Vec<&String> = sent.iter().rev().collect();
    assert!(
        messages == expected,
        "backwards: every message once, newest first ({} of {})",
        messages.len(),
        expected.len()
    );
    let total = back.len();
    let unique: std::collections::HashSet<_> = back.iter().collect();
    assert_eq!(unique.len(), total, "no duplicates");

    // Forwards from the start, 11 at a time.
    let mut forward = Vec::new();
    let mut from = Some("0".to_owned());
    for _ in 0..100 {
        let (ids, end) = page(&srv, &token, &room, "f", from.as_deref(), 11).await;
        forward.extend(ids);
        match end {
            Some(end) => from = Some(end),
            None => break,
        }
    }
    let reversed: Vec<String> = back.iter().rev().cloned().collect();
    assert!(
        forward == reversed,
        "both directions see the same timeline: {} vs {} events",
        forward.len(),
        reversed.len()
    );
}

#[tokio::test]
async fn history_visibility_between_users_who_joined_at_different_times() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let (_, carol, _) = srv.register("carol", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat",
        "initial_state": [{"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}]})).await;
    let (_, early) = send_text(&srv, &alice, &room, "e", "before bob").await;
    srv.post(
        &format!("/_matrix/client/v3/join/{room}"),
        Some(&bob),
        json!({}),
    )
    .await;
    let (_, middle) = send_text(&srv, &alice, &room, "m", "bob is here").await;
    let early = early["event_id"].as_str().unwrap();
    let middle = middle["event_id"].as_str().unwrap();

    // Bob sees what came after his join, not before.
    let (status, _) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/event/{early}"),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/event/{middle}"),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (ids, _) = page(&srv, &bob, &room, "b", None, 50).await;
    assert!(
        ids.contains(&middle.to_owned()) && !ids.contains(&early.to_owned()),
        "{ids:?}"
    );

    // Switch to shared: Carol, joining later, sees the history from then on...
    srv.put(
        &format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility/"),
        Some(&alice),
        json!({"history_visibility": "shared"}),
    )
    .await;
    let (_, shared) = send_text(&srv, &alice, &room, "s", "shared era").await;
    let shared = shared["event_id"].as_str().unwrap();
    // ...but only once she has joined.
    let (status, _) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/event/{shared}"),
            Some(&carol),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    srv.post(
        &format!("/_matrix/client/v3/join/{room}"),
        Some(&carol),
        json!({}),
    )
    .await;
    let (status, _) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/event/{shared}"),
            Some(&carol),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/event/{middle}"),
            Some(&carol),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "joined-era events stay hidden"
    );

    // world_readable: anyone may read, even without joining.
    let (_, dave, _) = srv.register("dave", "pw").await;
    srv.put(
        &format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility/"),
        Some(&alice),
        json!({"history_visibility": "world_readable"}),
    )
    .await;
    let (_, open) = send_text(&srv, &alice, &room, "w", "for everyone").await;
    let (status, _) = srv
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{room}/event/{}",
                open["event_id"].as_str().unwrap()
            ),
            Some(&dave),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/state"),
            Some(&dave),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn rooms_survive_restart() {
    let mut srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &token, json!({"name": "Kept"})).await;
    let (_, sent) = send_text(&srv, &token, &room, "k", "persisted").await;
    srv.restart().await;
    let (status, event) = srv
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{room}/event/{}",
                sent["event_id"].as_str().unwrap()
            ),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(event["content"]["body"], "persisted");
    let (status, _) = send_text(&srv, &token, &room, "k2", "after restart").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn deactivated_users_leave_their_rooms() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let joined = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    srv.post(
        &format!("/_matrix/client/v3/join/{joined}"),
        Some(&bob),
        json!({}),
    )
    .await;
    let invited = create_room(&srv, &alice, json!({"invite": [bob_id]})).await;

    let (_, challenge) = srv
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&bob),
            json!({}),
        )
        .await;
    let auth = TestServer::password_auth("bob", "pw", challenge["session"].as_str().unwrap());
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&bob),
            json!({"auth": auth}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for room in [&joined, &invited] {
        let (_, member) = srv
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{bob_id}"),
                Some(&alice),
            )
            .await;
        assert_eq!(member["membership"], "leave", "{room}");
    }
}

#[tokio::test]
async fn stored_events_are_signed_pdus_and_the_key_survives_restart() {
    use ruma::{
        serde::Base64,
        signatures::{verify_event, Verified},
        RoomVersionId,
    };

    let mut srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let key_id = srv.server.as_ref().unwrap().services.keys.key_id();
    for version in ["1", "3", "10", "11", "12"] {
        let room = create_room(&srv, &token, json!({"room_version": version})).await;
        let (_, sent) = send_text(&srv, &token, &room, &format!("sig{version}"), "signed").await;
        let services = &srv.server.as_ref().unwrap().services;
        let event_id = ruma::EventId::parse(sent["event_id"].as_str().unwrap()).unwrap();
        let stored = services.rooms.event(&event_id).unwrap().expect("stored");
        let public = services.keys.keypair.public_key();
        let keys = [(key_id.clone(), Base64::new(public.to_vec()))]
            .into_iter()
            .collect();
        let map = [("localhost".to_owned(), keys)].into_iter().collect();
        let rules = RoomVersionId::try_from(version).unwrap().rules().unwrap();
        let verified = verify_event(&map, &stored.json, &rules).expect("valid signature and hash");
        assert_eq!(verified, Verified::All, "v{version}: content hash matches");
        // prev_events chain to the previous event, auth events are present, depth grows.
        assert!(
            !stored.pdu.prev_events.is_empty() && !stored.pdu.auth_events.is_empty(),
            "v{version}"
        );
        assert!(stored.pdu.depth > 1);
    }
    srv.restart().await;
    assert_eq!(
        srv.server.as_ref().unwrap().services.keys.key_id(),
        key_id,
        "key id stable across restarts"
    );
}

#[tokio::test]
async fn knocking_works_where_the_room_version_allows_it() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]})).await;
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/knock/{room}"),
            Some(&bob),
            json!({"reason": "let me in"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    let (_, member) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{bob_id}"),
            Some(&alice),
        )
        .await;
    assert_eq!(member["membership"], "knock");
    assert_eq!(member["reason"], "let me in");
    // Knocking is not joining; an invite lets Bob in.
    let (status, _) = send_text(&srv, &bob, &room, "k1", "hi").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    srv.post(
        &format!("/_matrix/client/v3/rooms/{room}/invite"),
        Some(&alice),
        json!({"user_id": bob_id}),
    )
    .await;
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/join/{room}"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // v6 has no knocking; a public room cannot be knocked on.
    let old = create_room(&srv, &alice, json!({"room_version": "6"})).await;
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/knock/{old}"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let public = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/knock/{public}"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn members_at_a_point_and_message_filters() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    send_text(&srv, &alice, &room, "a1", "before bob").await;
    // The token after alice's message: bob has not joined yet.
    let (_, page) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1"),
            Some(&alice),
        )
        .await;
    let before_bob = page["start"].as_str().unwrap().to_owned();
    srv.post(
        &format!("/_matrix/client/v3/join/{room}"),
        Some(&bob),
        json!({}),
    )
    .await;
    send_text(&srv, &bob, &room, "b1", "from bob").await;
    srv.put(
        &format!("/_matrix/client/v3/rooms/{room}/send/org.example.custom/c1"),
        Some(&alice),
        json!({"x": 1}),
    )
    .await;

    let (_, now) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/members"),
            Some(&alice),
        )
        .await;
    assert_eq!(now["chunk"].as_array().unwrap().len(), 2);
    let (status, then) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/members?at={before_bob}"),
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{then}");
    let members: Vec<&str> = then["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    assert_eq!(
        members,
        vec![alice_id.as_str()],
        "membership as it was at the token"
    );

    let filter = enc(r#"{"types":["m.room.message"],"senders":["@bob:localhost"]}"#);
    let (status, page) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&filter={filter}"),
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let chunk = page["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 1);
    assert_eq!(chunk[0]["sender"], bob_id.as_str());
    let filter = enc(r#"{"not_types":["m.room.*"]}"#);
    let (_, page) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&filter={filter}"),
            Some(&alice),
        )
        .await;
    let types: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["org.example.custom"]);
}

#[tokio::test]
async fn a_user_who_left_can_still_page_back_to_what_they_saw() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat",
        "initial_state": [{"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}]})).await;
    srv.post(
        &format!("/_matrix/client/v3/join/{room}"),
        Some(&bob),
        json!({}),
    )
    .await;
    let (_, seen) = send_text(&srv, &alice, &room, "s", "bob saw this").await;
    srv.post(
        &format!("/_matrix/client/v3/rooms/{room}/leave"),
        Some(&bob),
        json!({}),
    )
    .await;
    for i in 0..5 {
        send_text(&srv, &alice, &room, &format!("after{i}"), "after bob left").await;
    }
    let (status, page) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=10"),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let bodies: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert!(bodies.contains(&"bob saw this"), "{bodies:?}");
    assert!(!bodies.contains(&"after bob left"), "{bodies:?}");
    assert!(page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event_id"] == seen["event_id"]));
}

/// `/members` with both `membership` and `not_membership`: the spec makes them an "or" (the
/// membership is `membership`, or it is not `not_membership`); each alone filters as usual.
#[tokio::test]
async fn members_filters_combine_as_the_spec_says() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, _, _) = srv.register("bob", "pw").await;
    let (carol_id, carol, _) = srv.register("carol", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    srv.post(
        &format!("/_matrix/client/v3/join/{room}"),
        Some(&carol),
        json!({}),
    )
    .await;
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(&carol),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            Some(&alice),
            json!({"user_id": bob_id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let members = |query: &'static str| {
        let (srv, alice, room) = (&srv, &alice, &room);
        async move {
            let (status, body) = srv
                .get(
                    &format!("/_matrix/client/v3/rooms/{room}/members?{query}"),
                    Some(alice),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{query}: {body}");
            let mut users: Vec<String> = body["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["state_key"].as_str().unwrap().to_owned())
                .collect();
            users.sort();
            users
        }
    };
    let mut invited_or_left = vec![bob_id.clone(), carol_id.clone()];
    invited_or_left.sort();
    assert_eq!(
        members("membership=leave&not_membership=join").await,
        invited_or_left
    );
    assert_eq!(members("membership=join").await, vec![alice_id.clone()]);
    assert_eq!(members("not_membership=join").await, invited_or_left);
    assert_eq!(members("membership=leave").await, vec![carol_id.clone()]);
    assert_eq!(
        members("membership=join&not_membership=join").await.len(),
        3
    );
}
