//! `GET /room_summary/{roomIdOrAlias}`, `GET /mutual_rooms` and the support and policy server
//! well-known URIs.

use hearth::config::SupportContact;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode, join, TestServer};

async fn summary(srv: &TestServer, token: Option<&str>, room: &str) -> (StatusCode, Value) {
    srv.get(
        &format!("/_matrix/client/v1/room_summary/{}", enc(room)),
        token,
    )
    .await
}

fn assert_not_found(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(errcode(body), "M_NOT_FOUND", "{body}");
}

#[tokio::test]
async fn private_room_is_visible_to_members_and_invitees_only() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "password-alice").await;
    let (bob_id, bob, _) = srv.register("bob", "password-bob").await;
    let room = create_room(
        &srv,
        &alice,
        json!({
            "preset": "private_chat",
            "name": "Cheese",
            "topic": "Tasty cheese",
            "initial_state": [{"type": "m.room.encryption", "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]
        }),
    )
    .await;

    let (status, body) = summary(&srv, Some(&alice), &room).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room);
    assert_eq!(body["name"], "Cheese");
    assert_eq!(body["topic"], "Tasty cheese");
    assert_eq!(body["num_joined_members"], 1);
    assert_eq!(body["join_rule"], "invite");
    assert_eq!(body["world_readable"], false);
    assert_eq!(body["guest_can_join"], true);
    assert_eq!(body["encryption"], "m.megolm.v1.aes-sha2");
    assert_eq!(body["room_version"], "12");
    assert_eq!(body["membership"], "join");
    assert!(body.get("room_type").is_none(), "{body}");

    // A stranger, with or without a token, cannot tell the room from an unknown one.
    let (status, body) = summary(&srv, Some(&bob), &room).await;
    assert_not_found(status, &body);
    let (status, body) = summary(&srv, None, &room).await;
    assert_not_found(status, &body);
    let (status, body) = summary(&srv, Some(&bob), "!unknown:localhost").await;
    assert_not_found(status, &body);

    // Once invited, bob sees it, with his membership.
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&alice),
            json!({"user_id": bob_id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = summary(&srv, Some(&bob), &room).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["membership"], "invite");
    assert_eq!(body["name"], "Cheese");
}

#[tokio::test]
async fn public_and_world_readable_rooms_by_id_and_alias() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "password-alice").await;
    let (bob_id, bob, _) = srv.register("bob", "password-bob").await;
    let public = create_room(
        &srv,
        &alice,
        json!({"preset": "public_chat", "room_alias_name": "lobby", "name": "Lobby",
            "creation_content": {"type": "m.space"}}),
    )
    .await;
    let readable = create_room(
        &srv,
        &alice,
        json!({"room_alias_name": "archive", "initial_state": [{
            "type": "m.room.history_visibility", "state_key": "",
            "content": {"history_visibility": "world_readable"}}]}),
    )
    .await;

    // By alias, unauthenticated: no membership field.
    let (status, body) = summary(&srv, None, "#lobby:localhost").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], public);
    assert_eq!(body["canonical_alias"], "#lobby:localhost");
    // Spec (PublishedRoomsChunk): an absent `join_rule` means `public`.
    assert!(
        body.get("join_rule").is_none_or(|rule| rule == "public"),
        "{body}"
    );
    assert_eq!(body["room_type"], "m.space");
    assert!(body.get("membership").is_none(), "{body}");

    // A non-member with a token: membership `leave`; after joining, `join` and the count.
    let (status, body) = summary(&srv, Some(&bob), &public).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["membership"], "leave");
    assert_eq!(body["num_joined_members"], 1);
    join(&srv, &bob, &public).await;
    let (_, body) = summary(&srv, Some(&bob), "#lobby:localhost").await;
    assert_eq!(body["membership"], "join");
    assert_eq!(body["num_joined_members"], 2);

    // World-readable but invite-only: visible to anyone.
    for token in [Some(bob.as_str()), None] {
        let (status, body) = summary(&srv, token, "#archive:localhost").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["room_id"], readable);
        assert_eq!(body["world_readable"], true);
        assert_eq!(body["join_rule"], "invite");
    }

    // Unknown aliases, here and elsewhere, and a malformed id.
    let (status, body) = summary(&srv, Some(&bob), "#nowhere:localhost").await;
    assert_not_found(status, &body);
    let (status, body) = summary(&srv, Some(&bob), "#lobby:elsewhere.example").await;
    assert_not_found(status, &body);
    let (status, body) = summary(&srv, Some(&bob), "lobby").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // A banned user no longer sees the public room.
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&public)),
            Some(&alice),
            json!({"user_id": bob_id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = summary(&srv, Some(&bob), &public).await;
    assert_not_found(status, &body);
}

#[tokio::test]
async fn restricted_room_is_visible_to_members_of_an_allowed_room() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "password-alice").await;
    let (_, bob, _) = srv.register("bob", "password-bob").await;
    let (_, carol, _) = srv.register("carol", "password-carol").await;
    let space = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    let room = create_room(
        &srv,
        &alice,
        json!({"initial_state": [{"type": "m.room.join_rules", "state_key": "",
            "content": {"join_rule": "restricted",
                "allow": [{"type": "m.room_membership", "room_id": space}]}}]}),
    )
    .await;
    join(&srv, &bob, &space).await;

    let (status, body) = summary(&srv, Some(&bob), &room).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["join_rule"], "restricted");
    assert_eq!(body["allowed_room_ids"], json!([space]));
    assert_eq!(body["membership"], "leave");

    let (status, body) = summary(&srv, Some(&carol), &room).await;
    assert_not_found(status, &body);
    let (status, body) = summary(&srv, None, &room).await;
    assert_not_found(status, &body);
}

async fn mutual(srv: &TestServer, token: &str, query: &str) -> (StatusCode, Value) {
    srv.get(
        &format!("/_matrix/client/v1/mutual_rooms?{query}"),
        Some(token),
    )
    .await
}

#[tokio::test]
async fn mutual_rooms_lists_rooms_both_users_joined() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "password-alice").await;
    let (bob_id, bob, _) = srv.register("bob", "password-bob").await;
    let shared1 = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    let shared2 = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    let left = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    create_room(&srv, &alice, json!({})).await;
    create_room(&srv, &bob, json!({})).await;
    for room in [&shared1, &shared2, &left] {
        join(&srv, &bob, room).await;
    }
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&left)),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let mut expected = vec![shared1.clone(), shared2.clone()];
    expected.sort();
    let (status, body) = mutual(&srv, &alice, &format!("user_id={}", enc(&bob_id))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["joined"], json!(expected));
    assert_eq!(body["count"], 2);
    assert!(body.get("next_batch").is_none(), "{body}");
    // The same from bob's side.
    let (_, body) = mutual(&srv, &bob, &format!("user_id={}", enc(&alice_id))).await;
    assert_eq!(body["joined"], json!(expected));

    // An unknown user shares nothing.
    let (status, body) = mutual(
        &srv,
        &alice,
        &format!("user_id={}", enc("@ghost:localhost")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"joined": [], "count": 0}));

    // Refusals: oneself, a missing or malformed user id, a bad token, no access token.
    for query in [
        format!("user_id={}", enc(&alice_id)),
        String::new(),
        "user_id=bob".to_owned(),
        format!("user_id={}&from=garbage", enc(&bob_id)),
    ] {
        let (status, body) = mutual(&srv, &alice, &query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
    }
    let (status, _) = srv
        .get(
            &format!("/_matrix/client/v1/mutual_rooms?user_id={}", enc(&bob_id)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn mutual_rooms_paginates() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "password-alice").await;
    let (bob_id, bob, _) = srv.register("bob", "password-bob").await;
    let page = hearth::service::rooms::summary::MUTUAL_ROOMS_PAGE;
    let mut rooms = Vec::new();
    for _ in 0..page + 2 {
        let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
        join(&srv, &bob, &room).await;
        rooms.push(room);
    }
    rooms.sort();

    let query = format!("user_id={}", enc(&bob_id));
    let (status, first) = mutual(&srv, &alice, &query).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["count"], page + 2);
    assert_eq!(first["joined"], json!(rooms[..page]));
    let token = first["next_batch"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let (status, second) = mutual(&srv, &alice, &format!("{query}&from={}", enc(&token))).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["joined"], json!(rooms[page..]));
    assert_eq!(second["count"], page + 2);
    assert!(second.get("next_batch").is_none(), "{second}");
}

#[tokio::test]
async fn support_well_known_when_configured() {
    let srv = TestServer::start_with(|c| {
        c.well_known.support_page = Some("https://example.org/help".into());
        c.well_known.contacts = vec![
            SupportContact {
                role: "m.role.admin".into(),
                matrix_id: Some("@admin:example.org".into()),
                email_address: Some("admin@example.org".into()),
            },
            SupportContact {
                role: "m.role.security".into(),
                matrix_id: None,
                email_address: Some("security@example.org".into()),
            },
        ];
    })
    .await;
    let (status, body) = srv.get("/.well-known/matrix/support", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({
            "support_page": "https://example.org/help",
            "contacts": [
                {"role": "m.role.admin", "matrix_id": "@admin:example.org",
                    "email_address": "admin@example.org"},
                {"role": "m.role.security", "email_address": "security@example.org"}
            ]
        })
    );
}

#[tokio::test]
async fn support_and_policy_server_are_not_found_by_default() {
    let srv = TestServer::start().await;
    let (status, body) = srv.get("/.well-known/matrix/support", None).await;
    assert_not_found(status, &body);
    let (status, body) = srv.get("/.well-known/matrix/policy_server", None).await;
    assert_not_found(status, &body);
}
