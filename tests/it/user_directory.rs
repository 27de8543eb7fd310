//! `POST /user_directory/search` over HTTP.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode, join, TestServer};

const SEARCH: &str = "/_matrix/client/v3/user_directory/search";

async fn set_profile(srv: &TestServer, token: &str, user: &str, key: &str, value: &str) {
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/profile/{}/{key}", enc(user)),
            Some(token),
            json!({ key: value }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn search(srv: &TestServer, token: &str, body: Value) -> Value {
    let (status, body) = srv.post(SEARCH, Some(token), body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn found(srv: &TestServer, token: &str, term: &str) -> Vec<String> {
    let body = search(srv, token, json!({"search_term": term, "limit": 50})).await;
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["user_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn only_users_in_shared_public_or_readable_rooms_are_found() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let (carol_id, carol, _) = srv.register("carol", "pw").await;
    let (_, dave, _) = srv.register("dave", "pw").await;
    let (erin_id, erin, _) = srv.register("erin", "pw").await;
    let (_, _frank, _) = srv.register("frank", "pw").await;

    // Alice and Bob share a private room.
    let private = create_room(&srv, &alice, json!({"invite": [bob_id]})).await;
    join(&srv, &bob, &private).await;
    // Carol is alone in a public room, Erin in a world-readable invite-only room, Dave in a
    // private room; Frank in none.
    create_room(&srv, &carol, json!({"preset": "public_chat"})).await;
    create_room(
        &srv,
        &erin,
        json!({"initial_state": [{"type": "m.room.history_visibility",
            "content": {"history_visibility": "world_readable"}}]}),
    )
    .await;
    create_room(&srv, &dave, json!({})).await;

    assert_eq!(found(&srv, &alice, "bob").await, vec![bob_id.clone()]);
    assert_eq!(found(&srv, &alice, "carol").await, vec![carol_id.clone()]);
    assert_eq!(found(&srv, &alice, "erin").await, vec![erin_id.clone()]);
    assert!(found(&srv, &alice, "dave").await.is_empty());
    assert!(found(&srv, &alice, "frank").await.is_empty());
    // Dave sees the public and readable rooms' members, not Alice's and Bob's room.
    assert!(found(&srv, &dave, "bob").await.is_empty());
    assert_eq!(found(&srv, &dave, "carol").await, vec![carol_id.clone()]);
    // The whole user id matches, server name included.
    let everyone = found(&srv, &alice, ":localhost").await;
    assert_eq!(everyone.len(), 4, "{everyone:?}");

    // Once Bob leaves, they share nothing.
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&private)),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(found(&srv, &alice, "bob").await.is_empty());
    // A blank term finds nobody.
    assert!(found(&srv, &alice, "  ").await.is_empty());
}

#[tokio::test]
async fn display_names_match_case_insensitively_and_results_carry_profiles() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    set_profile(&srv, &bob, &bob_id, "displayname", "Bob the Builder").await;
    set_profile(&srv, &bob, &bob_id, "avatar_url", "mxc://localhost/bobface").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &room).await;

    for term in ["BUILDER", "bob build", "the", "@BOB:"] {
        let body = search(&srv, &alice, json!({"search_term": term})).await;
        assert_eq!(body["limited"], false, "{term}: {body}");
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), 1, "{term}: {body}");
        assert_eq!(results[0]["user_id"], bob_id);
        assert_eq!(results[0]["display_name"], "Bob the Builder");
        assert_eq!(results[0]["avatar_url"], "mxc://localhost/bobface");
    }
    assert!(found(&srv, &alice, "builder carpenter").await.is_empty());
    // Registration sets the display name to the localpart; without one the field is absent.
    set_profile(&srv, &alice, &alice_id, "displayname", "").await;
    let body = search(&srv, &bob, json!({"search_term": "alice"})).await;
    assert_eq!(body["results"][0]["user_id"], alice_id, "{body}");
    assert!(body["results"][0].get("display_name").is_none(), "{body}");
    assert!(body["results"][0].get("avatar_url").is_none(), "{body}");
}

#[tokio::test]
async fn results_are_ranked_and_limited() {
    let srv = TestServer::start().await;
    let (_, owner, _) = srv.register("owner", "pw").await;
    let room = create_room(&srv, &owner, json!({"preset": "public_chat"})).await;
    let mut ids = Vec::new();
    for name in ["joanne", "annabel", "ann", "xann"] {
        let (id, token, _) = srv.register(name, "pw").await;
        join(&srv, &token, &room).await;
        ids.push(id);
    }
    let (joanne, annabel, ann, xann) = (&ids[0], &ids[1], &ids[2], &ids[3]);

    // Exact match, then prefix matches, then other substrings (ties by user id).
    let body = search(&srv, &owner, json!({"search_term": "Ann"})).await;
    let order: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(order, vec![ann, annabel, joanne, xann], "{body}");
    assert_eq!(body["limited"], false);

    let body = search(&srv, &owner, json!({"search_term": "ann", "limit": 2})).await;
    assert_eq!(body["results"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(body["limited"], true);
    assert_eq!(body["results"][0]["user_id"], *ann);

    // Default limit is 10.
    for i in 0..11 {
        let (_, token, _) = srv.register(&format!("many{i}"), "pw").await;
        join(&srv, &token, &room).await;
    }
    let body = search(&srv, &owner, json!({"search_term": "many"})).await;
    assert_eq!(body["results"].as_array().unwrap().len(), 10);
    assert_eq!(body["limited"], true);
}

#[tokio::test]
async fn bad_requests_are_refused() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    for body in [
        json!({}),
        json!({"search_term": 5}),
        json!({"search_term": "a", "limit": "ten"}),
        json!({"search_term": "a", "limit": -1}),
    ] {
        let (status, response) = srv.post(SEARCH, Some(&token), body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {response}");
        assert_eq!(errcode(&response), "M_BAD_JSON", "{body}");
    }
    let (status, body) = srv.post(SEARCH, None, json!({"search_term": "a"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}
