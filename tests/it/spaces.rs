//! Spaces over HTTP: `GET /rooms/{roomId}/hierarchy`.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode, TestServer};

async fn create_space(srv: &TestServer, token: &str, name: &str, preset: &str) -> String {
    create_room(
        srv,
        token,
        json!({"name": name, "preset": preset, "creation_content": {"type": "m.space"}}),
    )
    .await
}

async fn add_child(srv: &TestServer, token: &str, space: &str, child: &str, content: Value) {
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
                enc(space),
                enc(child)
            ),
            Some(token),
            content,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn hierarchy(srv: &TestServer, token: &str, room: &str, query: &str) -> (StatusCode, Value) {
    srv.get(
        &format!("/_matrix/client/v1/rooms/{}/hierarchy{query}", enc(room)),
        Some(token),
    )
    .await
}

fn ids(body: &Value) -> Vec<String> {
    body["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room_id"].as_str().unwrap().to_owned())
        .collect()
}

fn room<'a>(body: &'a Value, id: &str) -> &'a Value {
    body["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room_id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {body}"))
}

async fn post_ok(srv: &TestServer, token: &str, path: &str, body: Value) {
    let (status, body) = srv.post(path, Some(token), body).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
}

/// space ─┬─ general (public, order "a")
///        ├─ sub (space, public, order "b") ── deep (public)
///        └─ secret (invite-only, no order)
struct Tree {
    space: String,
    general: String,
    sub: String,
    deep: String,
    secret: String,
}

async fn tree(srv: &TestServer, token: &str) -> Tree {
    let space = create_space(srv, token, "Family", "public_chat").await;
    let general = create_room(
        srv,
        token,
        json!({"name": "General", "topic": "Anything", "preset": "public_chat",
               "room_alias_name": "general"}),
    )
    .await;
    let sub = create_space(srv, token, "Sub", "public_chat").await;
    let deep = create_room(srv, token, json!({"name": "Deep", "preset": "public_chat"})).await;
    let secret = create_room(srv, token, json!({"name": "Secret"})).await;
    add_child(srv, token, &space, &secret, json!({"via": ["localhost"]})).await;
    add_child(
        srv,
        token,
        &space,
        &sub,
        json!({"via": ["localhost"], "order": "b"}),
    )
    .await;
    add_child(
        srv,
        token,
        &space,
        &general,
        json!({"via": ["localhost"], "order": "a", "suggested": true}),
    )
    .await;
    add_child(srv, token, &sub, &deep, json!({"via": ["localhost"]})).await;
    Tree {
        space,
        general,
        sub,
        deep,
        secret,
    }
}

#[tokio::test]
async fn hierarchy_walks_depth_first_in_child_order_with_summaries() {
    let srv = TestServer::start().await;
    let (alice, token, _) = srv.register("alice", "pw").await;
    let t = tree(&srv, &token).await;

    let (status, body) = hierarchy(&srv, &token, &t.space, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Pre-order: the root, then children by `order` ("a" < "b"), recursing into the
    // sub-space before the next child; children without `order` come last.
    assert_eq!(
        ids(&body),
        vec![
            t.space.clone(),
            t.general.clone(),
            t.sub.clone(),
            t.deep.clone(),
            t.secret.clone()
        ]
    );
    assert!(body.get("next_batch").is_none(), "{body}");

    let root = room(&body, &t.space);
    assert_eq!(root["name"], "Family");
    assert_eq!(root["room_type"], "m.space");
    assert_eq!(root["num_joined_members"], 1);
    assert_eq!(root["world_readable"], false);
    assert_eq!(root["guest_can_join"], false);
    assert_eq!(root["room_version"], "12");
    // Public is the default of `join_rule` in a room summary, so it may be omitted.
    assert!(
        root.get("join_rule").is_none() || root["join_rule"] == "public",
        "{root}"
    );
    let children = root["children_state"].as_array().unwrap();
    assert_eq!(children.len(), 3, "{root}");
    for child in children {
        assert_eq!(child["type"], "m.space.child");
        assert_eq!(child["sender"], alice);
        assert!(child["origin_server_ts"].as_u64().unwrap() > 0, "{child}");
        assert!(child["content"]["via"].is_array());
        assert!(child.get("event_id").is_none(), "stripped: {child}");
    }

    let general = room(&body, &t.general);
    assert_eq!(general["name"], "General");
    assert_eq!(general["topic"], "Anything");
    assert_eq!(general["canonical_alias"], "#general:localhost");
    assert!(general.get("room_type").is_none());
    assert_eq!(general["children_state"], json!([]), "not a space");

    let secret = room(&body, &t.secret);
    assert_eq!(secret["join_rule"], "invite");
    assert_eq!(secret["guest_can_join"], true, "private_chat allows guests");
    assert_eq!(
        room(&body, &t.sub)["children_state"][0]["state_key"],
        t.deep
    );
}

#[tokio::test]
async fn hierarchy_shows_only_rooms_the_user_may_see() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let t = tree(&srv, &alice).await;

    // Bob is in no room: public rooms are visible, the invite-only one is not.
    let (status, body) = hierarchy(&srv, &bob, &t.space, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        ids(&body),
        vec![
            t.space.clone(),
            t.general.clone(),
            t.sub.clone(),
            t.deep.clone()
        ]
    );

    // An invite makes the room visible.
    post_ok(
        &srv,
        &alice,
        &format!("/_matrix/client/v3/rooms/{}/invite", enc(&t.secret)),
        json!({"user_id": bob_id}),
    )
    .await;
    let (_, body) = hierarchy(&srv, &bob, &t.space, "").await;
    assert!(ids(&body).contains(&t.secret), "{body}");

    // A world-readable private room is visible too.
    let readable = create_room(
        &srv,
        &alice,
        json!({"initial_state": [{"type": "m.room.history_visibility",
            "content": {"history_visibility": "world_readable"}}]}),
    )
    .await;
    add_child(
        &srv,
        &alice,
        &t.space,
        &readable,
        json!({"via": ["localhost"]}),
    )
    .await;
    let (_, body) = hierarchy(&srv, &bob, &t.space, "").await;
    assert_eq!(room(&body, &readable)["world_readable"], true);

    // An invite-only root the user has no part in: 403; so is an unknown room.
    let (status, body) = hierarchy(&srv, &bob, &t.deep, "").await;
    assert_eq!(status, StatusCode::OK, "public root: {body}");
    let private = create_space(&srv, &alice, "Private", "private_chat").await;
    let (status, body) = hierarchy(&srv, &bob, &private, "").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(errcode(&body), "M_FORBIDDEN");
    let (status, body) = hierarchy(&srv, &bob, "!unknown:localhost", "").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(errcode(&body), "M_FORBIDDEN");

    // A banned user cannot view even a public space.
    post_ok(
        &srv,
        &alice,
        &format!("/_matrix/client/v3/rooms/{}/ban", enc(&t.space)),
        json!({"user_id": bob_id}),
    )
    .await;
    let (status, body) = hierarchy(&srv, &bob, &t.space, "").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

#[tokio::test]
async fn hierarchy_breaks_loops_and_skips_unknown_and_removed_children() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let a = create_space(&srv, &token, "A", "public_chat").await;
    let b = create_space(&srv, &token, "B", "public_chat").await;
    let removed = create_room(&srv, &token, json!({"preset": "public_chat"})).await;
    add_child(&srv, &token, &a, &b, json!({"via": ["localhost"]})).await;
    add_child(&srv, &token, &b, &a, json!({"via": ["localhost"]})).await;
    add_child(&srv, &token, &a, &a, json!({"via": ["localhost"]})).await;
    add_child(
        &srv,
        &token,
        &a,
        "!elsewhere:remote.example",
        json!({"via": ["remote.example"]}),
    )
    .await;
    // A child whose `via` is empty or missing is not a child.
    add_child(&srv, &token, &a, &removed, json!({"via": []})).await;
    add_child(&srv, &token, &b, &removed, json!({})).await;

    let (status, body) = hierarchy(&srv, &token, &a, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ids(&body), vec![a.clone(), b.clone()]);
    // The remote child is listed among A's children but not described.
    let children: Vec<&str> = room(&body, &a)["children_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state_key"].as_str().unwrap())
        .collect();
    assert!(children.contains(&"!elsewhere:remote.example"), "{body}");
    assert!(!children.contains(&removed.as_str()), "{body}");
}

#[tokio::test]
async fn hierarchy_max_depth_and_suggested_only() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let t = tree(&srv, &token).await;

    let (_, body) = hierarchy(&srv, &token, &t.space, "?max_depth=0").await;
    assert_eq!(ids(&body), vec![t.space.clone()]);
    let (_, body) = hierarchy(&srv, &token, &t.space, "?max_depth=1").await;
    assert_eq!(
        ids(&body),
        vec![
            t.space.clone(),
            t.general.clone(),
            t.sub.clone(),
            t.secret.clone()
        ]
    );
    let (_, body) = hierarchy(&srv, &token, &t.space, "?suggested_only=true").await;
    assert_eq!(ids(&body), vec![t.space.clone(), t.general.clone()]);
    assert_eq!(
        room(&body, &t.space)["children_state"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "{body}"
    );

    let (status, body) = hierarchy(&srv, &token, &t.space, "?max_depth=-1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(errcode(&body), "M_INVALID_PARAM");
}

#[tokio::test]
async fn hierarchy_paginates_without_gaps_and_checks_tokens() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let t = tree(&srv, &token).await;

    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..10 {
        let query = match &from {
            Some(f) => format!("?limit=2&from={}", enc(f)),
            None => "?limit=2".to_owned(),
        };
        let (status, body) = hierarchy(&srv, &token, &t.space, &query).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let page = ids(&body);
        assert!(page.len() <= 2 && !page.is_empty(), "{body}");
        seen.extend(page);
        match body["next_batch"].as_str() {
            Some(next) => from = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec![t.space, t.general, t.sub.clone(), t.deep, t.secret]
    );

    // The second page with a changed max_depth or suggested_only: 400.
    let (_, first) = hierarchy(&srv, &token, &t.sub, "?limit=1").await;
    let next = enc(first["next_batch"].as_str().unwrap());
    for query in [
        format!("?limit=1&from={next}&max_depth=1"),
        format!("?limit=1&from={next}&suggested_only=true"),
        "?from=garbage".to_owned(),
        "?limit=0".to_owned(),
    ] {
        let (status, body) = hierarchy(&srv, &token, &t.sub, &query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(errcode(&body), "M_INVALID_PARAM", "{query}");
    }
    let (status, body) = hierarchy(&srv, &token, &t.sub, &format!("?limit=1&from={next}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ids(&body).len(), 1);
    assert!(body.get("next_batch").is_none(), "{body}");

    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v1/rooms/{}/hierarchy", enc(&t.sub)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}
