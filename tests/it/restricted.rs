//! Restricted rooms (join rules `restricted` and `knock_restricted`): joins are authorised by
//! the server after checking the allow conditions; clients cannot authorise themselves.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode, join, TestServer};

/// A room of `version` whose join rule `rule` allows members of `allowed`.
async fn restricted_room(
    srv: &TestServer,
    token: &str,
    version: &str,
    rule: &str,
    allowed: &str,
) -> String {
    create_room(
        srv,
        token,
        json!({
            "room_version": version,
            "initial_state": [{
                "type": "m.room.join_rules",
                "state_key": "",
                "content": {
                    "join_rule": rule,
                    "allow": [{"type": "m.room_membership", "room_id": allowed}]
                }
            }]
        }),
    )
    .await
}

async fn post_join(srv: &TestServer, token: &str, room: &str) -> (StatusCode, Value) {
    srv.post(
        &format!("/_matrix/client/v3/join/{}", enc(room)),
        Some(token),
        json!({}),
    )
    .await
}

async fn own_member(srv: &TestServer, token: &str, room: &str, user: &str) -> Value {
    let (status, body) = srv
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{room}/state/m.room.member/{}",
                enc(user)
            ),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn restricted_join_needs_membership_of_an_allowed_room() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let (carol_id, carol, _) = srv.register("carol", "pw").await;
    let space = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &space).await;
    let room = restricted_room(&srv, &alice, "10", "restricted", &space).await;

    // Carol names alice as her authoriser herself: the field is not hers to set.
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{room}/state/m.room.member/{}",
                enc(&carol_id)
            ),
            Some(&carol),
            json!({"membership": "join", "join_authorised_via_users_server": alice_id}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(errcode(&body), "M_FORBIDDEN");
    // Nor through /join: she is in none of the allowed rooms.
    let (status, body) = post_join(&srv, &carol, &room).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(errcode(&body), "M_FORBIDDEN");
    let (status, _) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/state"),
            Some(&carol),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "carol must not have joined");

    // Bob is in the allowed room: /join succeeds, authorised by a local user with invite power.
    let (status, body) = post_join(&srv, &bob, &room).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let member = own_member(&srv, &bob, &room, &bob_id).await;
    assert_eq!(member["membership"], "join");
    assert_eq!(
        member["join_authorised_via_users_server"],
        alice_id.as_str()
    );

    // A client-supplied member event goes through the same check: bob leaves and rejoins with
    // PUT state, naming a user who may not invite; the server replaces it with its own choice.
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{room}/state/m.room.member/{}",
                enc(&bob_id)
            ),
            Some(&bob),
            json!({"membership": "join", "join_authorised_via_users_server": carol_id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let member = own_member(&srv, &alice, &room, &bob_id).await;
    assert_eq!(
        member["join_authorised_via_users_server"],
        alice_id.as_str()
    );
}

#[tokio::test]
async fn knock_restricted_join_and_spoofed_third_party_invite() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let (_, carol, _) = srv.register("carol", "pw").await;
    let space = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &space).await;
    let room = restricted_room(&srv, &alice, "12", "knock_restricted", &space).await;
    let (status, body) = post_join(&srv, &carol, &room).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = post_join(&srv, &bob, &room).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // `third_party_invite` is a server's proof of an invite; a client's is dropped.
    let public = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{public}/state/m.room.member/{}",
                enc(&bob_id)
            ),
            Some(&bob),
            json!({"membership": "join", "third_party_invite": {"display_name": "x", "signed": {}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let member = own_member(&srv, &bob, &public, &bob_id).await;
    assert!(member.get("third_party_invite").is_none(), "{member}");
}
