//! Simplified sliding sync (MSC4186): lists, ordering, ranges, incremental responses,
//! required state, positions, long-polling, invites, filters and read rules. Extensions are in
//! `extensions.rs`.

mod extensions;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode, join, TestServer};

pub const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

/// One sliding sync request; returns status and body.
pub async fn ss_raw(
    srv: &TestServer,
    token: &str,
    pos: Option<&str>,
    timeout_ms: u64,
    body: Value,
) -> (StatusCode, Value) {
    let mut path = format!("{PATH}?timeout={timeout_ms}");
    if let Some(pos) = pos {
        path.push_str(&format!("&pos={}", enc(pos)));
    }
    srv.post(&path, Some(token), body).await
}

/// One sliding sync request that must succeed.
pub async fn ss(srv: &TestServer, token: &str, pos: Option<&str>, body: Value) -> Value {
    let (status, body) = ss_raw(srv, token, pos, 0, body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["pos"].is_string(), "{body}");
    body
}

pub fn pos(body: &Value) -> String {
    body["pos"].as_str().unwrap().to_owned()
}

pub async fn send(srv: &TestServer, token: &str, room: &str, txn: &str, text: &str) -> String {
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                enc(room)
            ),
            Some(token),
            json!({"msgtype": "m.text", "body": text}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

/// The bodies of a room's timeline messages in a response.
pub fn bodies(body: &Value, room: &str) -> Vec<String> {
    body["rooms"][room]["timeline"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn rooms_of(body: &Value) -> Vec<String> {
    body["rooms"]
        .as_object()
        .map(|r| r.keys().cloned().collect())
        .unwrap_or_default()
}

fn list(ranges: Value, timeline_limit: u64, required_state: Value) -> Value {
    json!({"ranges": ranges, "timeline_limit": timeline_limit, "required_state": required_state})
}

#[tokio::test]
async fn versions_advertise_simplified_sliding_sync() {
    let srv = TestServer::start().await;
    let (status, body) = srv.get("/_matrix/client/versions", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["unstable_features"]["org.matrix.simplified_msc3575"], true,
        "{body}"
    );
}

#[tokio::test]
async fn lists_are_ordered_by_activity_and_cut_by_ranges() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let first = create_room(&srv, &alice, json!({"name": "First"})).await;
    let second = create_room(&srv, &alice, json!({"name": "Second"})).await;
    let third = create_room(&srv, &alice, json!({"name": "Third"})).await;
    for i in 0..3 {
        send(
            &srv,
            &alice,
            &first,
            &format!("f{i}"),
            &format!("first {i}"),
        )
        .await;
    }
    // A state change does not move a room up; a message does.
    let (status, _) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.topic",
                enc(&second)
            ),
            Some(&alice),
            json!({"topic": "quiet"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let request = json!({
        "conn_id": "room-list",
        "lists": {"all": list(json!([[0, 1]]), 2, json!([["m.room.create", ""], ["m.room.member", "$ME"]]))},
    });
    let body = ss(&srv, &alice, None, request.clone()).await;
    assert_eq!(body["lists"]["all"]["count"], 3, "{body}");
    let mut sent = rooms_of(&body);
    sent.sort();
    let mut expected = vec![first.clone(), third.clone()];
    expected.sort();
    assert_eq!(sent, expected, "the two most recent rooms: {body}");
    let room = &body["rooms"][&first];
    assert_eq!(room["initial"], true);
    assert_eq!(room["name"], "First");
    assert_eq!(bodies(&body, &first), vec!["first 1", "first 2"]);
    assert_eq!(room["limited"], true);
    assert!(room["prev_batch"].is_string());
    assert_eq!(room["joined_count"], 1);
    assert_eq!(room["num_live"], 0);
    let required: Vec<(&str, &str)> = room["required_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["state_key"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(required.contains(&("m.room.create", "")), "{required:?}");
    assert!(required.contains(&("m.room.member", alice_id.as_str())));
    assert_eq!(required.len(), 2, "{required:?}");
    let (a, b) = (
        body["rooms"][&first]["bump_stamp"].as_u64().unwrap(),
        body["rooms"][&third]["bump_stamp"].as_u64().unwrap(),
    );
    assert!(a > b, "the room with the newest message first: {a} {b}");

    // The client can page back from `prev_batch` with /messages.
    let (status, page) = srv
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1&from={}",
                enc(&first),
                room["prev_batch"].as_str().unwrap()
            ),
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["chunk"][0]["content"]["body"], "first 0", "{page}");

    // A message in the oldest room moves it into the range; it is new to the connection.
    send(&srv, &alice, &second, "s1", "second wakes").await;
    let next = ss(&srv, &alice, Some(&pos(&body)), request).await;
    assert_eq!(rooms_of(&next), vec![second.clone()], "{next}");
    assert_eq!(next["rooms"][&second]["initial"], true);
    assert_eq!(bodies(&next, &second), vec!["second wakes"]);
}

#[tokio::test]
async fn incremental_responses_carry_only_changes() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let busy = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    let calm = create_room(&srv, &alice, json!({})).await;
    join(&srv, &bob, &busy).await;
    let request = json!({
        "conn_id": "c",
        "lists": {"all": list(json!([[0, 10]]), 5, json!([["m.room.name", ""]]))},
    });
    let first = ss(&srv, &alice, None, request.clone()).await;
    assert_eq!(rooms_of(&first).len(), 2, "{first}");

    // Nothing happened: nothing is sent again.
    let quiet = ss(&srv, &alice, Some(&pos(&first)), request.clone()).await;
    assert!(rooms_of(&quiet).is_empty(), "{quiet}");
    assert_eq!(quiet["lists"]["all"]["count"], 2);

    send(&srv, &bob, &busy, "b1", "hi alice").await;
    let news = ss(&srv, &alice, Some(&pos(&quiet)), request.clone()).await;
    assert_eq!(rooms_of(&news), vec![busy.clone()], "{news}");
    let room = &news["rooms"][&busy];
    assert_eq!(bodies(&news, &busy), vec!["hi alice"]);
    assert!(room.get("initial").is_none(), "{room}");
    assert_eq!(room["num_live"], 1);
    assert_eq!(room["limited"], false);
    assert_eq!(room["notification_count"], 1);

    // A retry from the earlier position (the response was lost) gets the same news again.
    let retry = ss(&srv, &alice, Some(&pos(&quiet)), request.clone()).await;
    assert_eq!(bodies(&retry, &busy), vec!["hi alice"], "{retry}");

    // Reading the room changes its counts: the room comes again with them, no events.
    let event = room["timeline"][0]["event_id"].as_str().unwrap();
    let (status, _) = srv
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&busy),
                enc(event)
            ),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let read = ss(&srv, &alice, Some(&pos(&retry)), request).await;
    assert_eq!(rooms_of(&read), vec![busy.clone()], "{read}");
    assert_eq!(read["rooms"][&busy]["notification_count"], 0);
    assert!(bodies(&read, &busy).is_empty());
    let _ = calm;
}

/// A room's place in the list follows its newest message on every request of a connection,
/// not only the first: one that was below the window comes into it with its new bump stamp.
#[tokio::test]
async fn a_new_message_brings_its_room_into_the_window() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let older = create_room(&srv, &alice, json!({"name": "Older"})).await;
    let newer = create_room(&srv, &alice, json!({"name": "Newer"})).await;
    let request = json!({
        "conn_id": "top",
        "lists": {"top": list(json!([[0, 0]]), 1, json!([]))},
    });
    let first = ss(&srv, &alice, None, request.clone()).await;
    assert_eq!(rooms_of(&first), vec![newer.clone()], "{first}");
    let before = first["rooms"][&newer]["bump_stamp"].as_u64().unwrap();
    // Asked again with nothing new: the same room stays on top.
    let quiet = ss(&srv, &alice, Some(&pos(&first)), request.clone()).await;
    assert!(rooms_of(&quiet).is_empty(), "{quiet}");
    send(&srv, &alice, &older, "o1", "back again").await;
    let moved = ss(&srv, &alice, Some(&pos(&quiet)), request.clone()).await;
    assert_eq!(rooms_of(&moved), vec![older.clone()], "{moved}");
    let after = moved["rooms"][&older]["bump_stamp"].as_u64().unwrap();
    assert!(after > before, "{before} {after}");
    // And back: a message in the other room puts it on top again.
    send(&srv, &alice, &newer, "n1", "me too").await;
    let back = ss(&srv, &alice, Some(&pos(&moved)), request).await;
    assert_eq!(rooms_of(&back), vec![newer.clone()], "{back}");
    assert!(back["rooms"][&newer]["bump_stamp"].as_u64().unwrap() > after);
}

#[tokio::test]
async fn newly_required_state_is_sent() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &alice, json!({"name": "Den", "topic": "books"})).await;
    let narrow = json!({
        "lists": {"all": list(json!([[0, 0]]), 1, json!([["m.room.name", ""]]))},
    });
    let first = ss(&srv, &alice, None, narrow).await;
    let kinds = |body: &Value| -> Vec<String> {
        body["rooms"][&room]["required_state"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["type"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(kinds(&first), vec!["m.room.name"]);
    let wide = json!({
        "lists": {"all": list(json!([[0, 0]]), 1, json!([["m.room.name", ""], ["m.room.topic", ""]]))},
    });
    let more = ss(&srv, &alice, Some(&pos(&first)), wide.clone()).await;
    assert_eq!(
        kinds(&more),
        vec!["m.room.topic"],
        "only the new state: {more}"
    );
    assert!(bodies(&more, &room).is_empty());
    let again = ss(&srv, &alice, Some(&pos(&more)), wide).await;
    assert!(rooms_of(&again).is_empty(), "{again}");

    // `*` types: everything.
    let all = json!({
        "lists": {"all": list(json!([[0, 0]]), 1, json!([["*", "*"]]))},
    });
    let everything = ss(&srv, &alice, None, all).await;
    let kinds = kinds(&everything);
    for kind in [
        "m.room.create",
        "m.room.power_levels",
        "m.room.member",
        "m.room.topic",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
}

#[tokio::test]
async fn lazy_members_come_once_per_connection() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let (carol_id, carol, _) = srv.register("carol", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &room).await;
    join(&srv, &carol, &room).await;
    send(&srv, &bob, &room, "b1", "from bob").await;
    let request = json!({
        "conn_id": "lazy",
        "lists": {"all": list(json!([[0, 0]]), 1, json!([["m.room.member", "$LAZY"]]))},
    });
    let members = |body: &Value| -> Vec<String> {
        body["rooms"][&room]["required_state"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e["type"] == "m.room.member")
                    .map(|e| e["state_key"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let first = ss(&srv, &alice, None, request.clone()).await;
    assert_eq!(members(&first), vec![bob_id.clone()], "{first}");
    send(&srv, &bob, &room, "b2", "bob again").await;
    send(&srv, &carol, &room, "c1", "from carol").await;
    let next = ss(&srv, &alice, Some(&pos(&first)), request).await;
    assert_eq!(
        members(&next),
        vec![carol_id],
        "bob's was sent already: {next}"
    );
    let _ = alice_id;
}

#[tokio::test]
async fn unknown_positions_are_refused() {
    let mut srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    create_room(&srv, &alice, json!({})).await;
    let request = json!({"conn_id": "a", "lists": {"all": list(json!([[0, 5]]), 1, json!([]))}});
    for bad in ["garbage", "0_0", "ffffffff_1"] {
        let (status, body) = ss_raw(&srv, &alice, Some(bad), 0, request.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(errcode(&body), "M_UNKNOWN_POS");
    }
    let first = ss(&srv, &alice, None, request.clone()).await;
    // Another connection's position is unknown to this one.
    let (status, body) = ss_raw(
        &srv,
        &alice,
        Some(&pos(&first)),
        0,
        json!({"conn_id": "b", "lists": {}}),
    )
    .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_UNKNOWN_POS")
    );
    // Positions live in memory: after a restart the client starts again.
    srv.restart().await;
    let (status, body) = ss_raw(&srv, &alice, Some(&pos(&first)), 0, request.clone()).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_UNKNOWN_POS")
    );
    let again = ss(&srv, &alice, None, request).await;
    assert_eq!(again["lists"]["all"]["count"], 1);
    // Bad input is a Matrix error.
    let (status, body) = ss_raw(
        &srv,
        &alice,
        None,
        0,
        json!({"lists": {"x": {"ranges": "no"}}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(errcode(&body), "M_BAD_JSON");
}

#[tokio::test]
async fn a_waiting_request_wakes_for_a_new_message() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &room).await;
    let request = json!({"lists": {"all": list(json!([[0, 5]]), 3, json!([]))}});
    let first = ss(&srv, &alice, None, request.clone()).await;
    let at = pos(&first);
    let waiting = {
        let srv = &srv;
        let alice = alice.clone();
        async move { ss_raw(srv, &alice, Some(&at), 30_000, request).await }
    };
    let sender = async {
        // Give the request time to start waiting (not needed for correctness).
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        send(&srv, &bob, &room, "w1", "wake up").await;
    };
    let ((status, body), ()) = tokio::join!(waiting, sender);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(bodies(&body, &room), vec!["wake up"], "{body}");
}

#[tokio::test]
async fn invites_show_stripped_state_then_the_joined_room() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(
        &srv,
        &bob,
        json!({"name": "Party", "is_direct": true, "invite": [alice_id]}),
    )
    .await;
    send(&srv, &bob, &room, "p1", "before the join").await;
    let request = json!({
        "lists": {
            "invites": {"ranges": [[0, 9]], "timeline_limit": 5, "required_state": [], "filters": {"is_invite": true}},
            "joined": {"ranges": [[0, 9]], "timeline_limit": 5, "required_state": [], "filters": {"is_invite": false}},
        },
    });
    let first = ss(&srv, &alice, None, request.clone()).await;
    assert_eq!(first["lists"]["invites"]["count"], 1, "{first}");
    assert_eq!(first["lists"]["joined"]["count"], 0);
    let invited = &first["rooms"][&room];
    assert_eq!(invited["name"], "Party");
    assert_eq!(invited["is_dm"], true, "is_direct invite: {invited}");
    let stripped = invited["invite_state"].as_array().unwrap();
    assert!(stripped
        .iter()
        .any(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "invite"));
    assert!(invited.get("timeline").is_none());

    join(&srv, &alice, &room).await;
    let joined = ss(&srv, &alice, Some(&pos(&first)), request).await;
    assert_eq!(joined["lists"]["invites"]["count"], 0, "{joined}");
    assert_eq!(joined["lists"]["joined"]["count"], 1);
    let room_body = &joined["rooms"][&room];
    assert_eq!(
        room_body["initial"], true,
        "a joined invite is new: {room_body}"
    );
    assert!(room_body.get("invite_state").is_none());
    assert!(bodies(&joined, &room).contains(&"before the join".to_owned()));
}

#[tokio::test]
async fn filters_select_rooms() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let plain = create_room(&srv, &alice, json!({})).await;
    let secret = create_room(
        &srv,
        &alice,
        json!({"initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]}),
    )
    .await;
    let space = create_room(
        &srv,
        &alice,
        json!({"creation_content": {"type": "m.space"}}),
    )
    .await;
    let dm = create_room(&srv, &alice, json!({})).await;
    let (status, _) = srv
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.direct",
                enc(&alice_id)
            ),
            Some(&alice),
            json!({"@bob:elsewhere": [dm]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let filtered =
        |filters: Value| json!({"ranges": [[0, 9]], "timeline_limit": 0, "filters": filters});
    let body = ss(
        &srv,
        &alice,
        None,
        json!({"lists": {
            "encrypted": filtered(json!({"is_encrypted": true})),
            "spaces": filtered(json!({"room_types": ["m.space"]})),
            "not_spaces": filtered(json!({"not_room_types": ["m.space"]})),
            "default": filtered(json!({"room_types": [null]})),
            "dms": filtered(json!({"is_dm": true})),
        }}),
    )
    .await;
    let lists = &body["lists"];
    assert_eq!(lists["encrypted"]["count"], 1, "{body}");
    assert_eq!(lists["spaces"]["count"], 1);
    assert_eq!(lists["not_spaces"]["count"], 3);
    assert_eq!(lists["default"]["count"], 3);
    assert_eq!(lists["dms"]["count"], 1);
    assert_eq!(body["rooms"][&dm]["is_dm"], true);
    assert!(body["rooms"][&plain].get("is_dm").is_none());
    let _ = (secret, space);
}

#[tokio::test]
async fn subscriptions_serve_rooms_outside_the_ranges() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let old = create_room(&srv, &alice, json!({"name": "Old"})).await;
    send(&srv, &alice, &old, "o1", "old news").await;
    let new = create_room(&srv, &alice, json!({"name": "New"})).await;
    let body = ss(
        &srv,
        &alice,
        None,
        json!({
            "lists": {"top": list(json!([[0, 0]]), 1, json!([]))},
            "room_subscriptions": {old.clone(): {"timeline_limit": 5, "required_state": [["m.room.name", ""]]}},
        }),
    )
    .await;
    let mut sent = rooms_of(&body);
    sent.sort();
    let mut expected = vec![old.clone(), new];
    expected.sort();
    assert_eq!(sent, expected, "{body}");
    assert!(bodies(&body, &old).contains(&"old news".to_owned()));
    // A raised timeline limit (the client opens a room) serves the timeline anew.
    let list_only = json!({"lists": {"top": list(json!([[0, 1]]), 1, json!([]))}});
    let second = ss(&srv, &alice, Some(&pos(&body)), list_only).await;
    let third = ss(
        &srv,
        &alice,
        Some(&pos(&second)),
        json!({"lists": {"top": list(json!([[0, 1]]), 10, json!([]))}}),
    )
    .await;
    assert_eq!(
        third["rooms"][&old]["unstable_expanded_timeline"], true,
        "{third}"
    );
    assert!(bodies(&third, &old).contains(&"old news".to_owned()));
}

#[tokio::test]
async fn history_visibility_and_ignored_users_apply() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let (carol_id, carol, _) = srv.register("carol", "pw").await;
    let room = create_room(
        &srv,
        &bob,
        json!({"preset": "public_chat", "initial_state": [{"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}]}),
    )
    .await;
    send(&srv, &bob, &room, "secret", "before alice").await;
    join(&srv, &carol, &room).await;
    join(&srv, &alice, &room).await;
    send(&srv, &bob, &room, "m1", "after alice").await;
    send(&srv, &carol, &room, "m2", "from carol").await;
    let (status, _) = srv
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
                enc(&alice_id)
            ),
            Some(&alice),
            json!({"ignored_users": {carol_id: {}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let body = ss(
        &srv,
        &alice,
        None,
        json!({"lists": {"all": list(json!([[0, 0]]), 20, json!([]))}}),
    )
    .await;
    assert_eq!(bodies(&body, &room), vec!["after alice"], "{body}");
    assert_eq!(
        body["rooms"][&room]["limited"], true,
        "history before the join is cut"
    );
}

#[tokio::test]
async fn leaving_a_room_is_sent_once() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &alice, json!({})).await;
    let request =
        json!({"lists": {"all": list(json!([[0, 5]]), 5, json!([["m.room.member", "$ME"]]))}});
    let first = ss(&srv, &alice, None, request.clone()).await;
    assert_eq!(first["lists"]["all"]["count"], 1);
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let left = ss(&srv, &alice, Some(&pos(&first)), request.clone()).await;
    let timeline = left["rooms"][&room]["timeline"].as_array().unwrap();
    assert!(
        timeline.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == alice_id.as_str()
            && e["content"]["membership"] == "leave"),
        "{left}"
    );
    let after = ss(&srv, &alice, Some(&pos(&left)), request).await;
    assert_eq!(after["lists"]["all"]["count"], 0, "{after}");
    assert!(rooms_of(&after).is_empty());
}

#[tokio::test]
async fn a_rejected_invite_shows_only_the_user_s_membership() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &bob, json!({"name": "Secret", "invite": [alice_id]})).await;
    let request = json!({"lists": {"all": list(json!([[0, 5]]), 5, json!([["*", "*"]]))}});
    let first = ss(&srv, &alice, None, request.clone()).await;
    assert!(first["rooms"][&room]["invite_state"].is_array(), "{first}");
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let rejected = ss(&srv, &alice, Some(&pos(&first)), request).await;
    let section = &rejected["rooms"][&room];
    let state = section["required_state"].as_array().unwrap();
    assert_eq!(state.len(), 1, "{section}");
    assert_eq!(state[0]["state_key"], alice_id.as_str());
    assert_eq!(state[0]["content"]["membership"], "leave");
    assert!(
        section.get("name").is_none() && section.get("joined_count").is_none(),
        "{section}"
    );
    for event in section["timeline"].as_array().unwrap() {
        assert_eq!(
            event["state_key"],
            alice_id.as_str(),
            "only own membership: {event}"
        );
    }
}

#[tokio::test]
async fn knocks_show_their_stripped_state() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(
        &srv,
        &alice,
        json!({"name": "Club", "initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]}),
    )
    .await;
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/knock/{}", enc(&room)),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body = ss(
        &srv,
        &bob,
        None,
        json!({"lists": {"all": list(json!([[0, 5]]), 1, json!([]))}}),
    )
    .await;
    let section = &body["rooms"][&room];
    assert_eq!(section["name"], "Club", "{section}");
    for field in ["invite_state", "knock_state"] {
        let events = section[field]
            .as_array()
            .unwrap_or_else(|| panic!("{field}: {section}"));
        assert!(events
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "knock"));
    }
    assert!(section.get("timeline").is_none());
}
