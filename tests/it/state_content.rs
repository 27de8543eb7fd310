//! Content of well-known state events, and the size limits on event types and state keys, are
//! checked before anything is stored.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode, TestServer};

async fn put_state(
    srv: &TestServer,
    token: &str,
    room: &str,
    kind: &str,
    key: &str,
    content: Value,
) -> (StatusCode, Value) {
    srv.put(
        &format!(
            "/_matrix/client/v3/rooms/{room}/state/{}/{}",
            enc(kind),
            enc(key)
        ),
        Some(token),
        content,
    )
    .await
}

async fn room_name(srv: &TestServer, token: &str, room: &str) -> Value {
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["name"].clone()
}

#[tokio::test]
async fn malformed_well_known_state_is_refused() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &alice, json!({"name": "Original"})).await;
    let cases = [
        ("m.room.name", "", json!({"name": "x".repeat(256)})),
        ("m.room.name", "", json!({"name": "é".repeat(128)})),
        ("m.room.name", "", json!({"name": 5})),
        ("m.room.topic", "", json!({"topic": ["a"]})),
        ("m.room.topic", "", json!({})),
        ("m.room.power_levels", "", json!({"ban": "50"})),
        ("m.room.power_levels", "", json!({"kick": 1.5})),
        (
            "m.room.power_levels",
            "",
            json!({"users": {alice_id.clone(): "100"}}),
        ),
        ("m.room.power_levels", "", json!({"users": {"nobody": 5}})),
        (
            "m.room.power_levels",
            "",
            json!({"events": {"m.room.name": null}}),
        ),
        ("m.room.power_levels", "", json!({"notifications": []})),
        ("m.room.join_rules", "", json!({"join_rule": "everyone"})),
        ("m.room.join_rules", "", json!({})),
        (
            "m.room.join_rules",
            "",
            json!({"join_rule": "restricted", "allow": "all"}),
        ),
        (
            "m.room.join_rules",
            "",
            json!({"join_rule": "restricted", "allow": [{"type": "m.room_membership"}]}),
        ),
        (
            "m.room.history_visibility",
            "",
            json!({"history_visibility": "sometimes"}),
        ),
        ("m.room.canonical_alias", "", json!({"alias": 5})),
        ("m.room.canonical_alias", "", json!({"alt_aliases": "x"})),
        ("m.room.canonical_alias", "", json!({"alt_aliases": [5]})),
        (
            "m.room.member",
            alice_id.as_str(),
            json!({"membership": "dancing"}),
        ),
        ("m.room.member", alice_id.as_str(), json!({})),
        (
            "m.room.member",
            alice_id.as_str(),
            json!({"membership": "join", "displayname": 5}),
        ),
        (
            "m.room.member",
            alice_id.as_str(),
            json!({"membership": "join", "avatar_url": {"url": "mxc://x/y"}}),
        ),
        ("m.room.avatar", "", json!({"url": ["mxc://x/y"]})),
    ];
    for (kind, key, content) in cases {
        let (status, body) = put_state(&srv, &alice, &room, kind, key, content.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{kind} {content}: {body}");
        assert_eq!(errcode(&body), "M_BAD_JSON", "{kind} {content}: {body}");
    }
    // Nothing was stored; well-formed content still goes through.
    assert_eq!(room_name(&srv, &alice, &room).await, "Original");
    // A per-room display name, a cleared one and an avatar are fine.
    for content in [
        json!({"membership": "join", "displayname": "Alice here"}),
        json!({"membership": "join", "displayname": null}),
    ] {
        let (status, body) =
            put_state(&srv, &alice, &room, "m.room.member", &alice_id, content).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = put_state(
        &srv,
        &alice,
        &room,
        "m.room.avatar",
        "",
        json!({"url": "mxc://localhost/abc"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = put_state(
        &srv,
        &alice,
        &room,
        "m.room.name",
        "",
        json!({"name": "é".repeat(127)}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = put_state(
        &srv,
        &alice,
        &room,
        "m.room.join_rules",
        "",
        json!({"join_rule": "public"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn event_type_and_state_key_are_limited_to_255_bytes() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &alice, json!({})).await;
    let long = "t".repeat(256);
    let fits = "t".repeat(255);
    let (status, body) = put_state(&srv, &alice, &room, &long, "", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = put_state(&srv, &alice, &room, "org.example", &long, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/{long}/t1"),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = put_state(&srv, &alice, &room, &fits, &fits, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/{fits}/t2"),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// `{}` as power levels would drop the sender's own level to `users_default` (0) and leave a
/// v10 room without an admin: refused. An explicit self-demotion is still the user's right.
/// In v12 rooms the creator's power comes from the create event, so `{}` cannot lock them out.
#[tokio::test]
async fn empty_power_levels_do_not_lock_the_sender_out() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &alice, json!({"room_version": "10"})).await;
    let (status, body) = put_state(&srv, &alice, &room, "m.room.power_levels", "", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(errcode(&body), "M_BAD_JSON");
    let (status, body) = put_state(
        &srv,
        &alice,
        &room,
        "m.room.name",
        "",
        json!({"name": "still admin"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Explicitly lowering oneself is allowed.
    let (status, body) = put_state(
        &srv,
        &alice,
        &room,
        "m.room.power_levels",
        "",
        json!({"users": {alice_id.clone(): 10}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let v12 = create_room(&srv, &alice, json!({})).await;
    let (status, body) = put_state(&srv, &alice, &v12, "m.room.power_levels", "", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = put_state(
        &srv,
        &alice,
        &v12,
        "m.room.name",
        "",
        json!({"name": "creator keeps power"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
