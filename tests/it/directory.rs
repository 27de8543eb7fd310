//! The published room directory over HTTP: visibility, listing, pagination, filters.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode, join, TestServer};

const PUBLIC_ROOMS: &str = "/_matrix/client/v3/publicRooms";

fn visibility_path(room: &str) -> String {
    format!("/_matrix/client/v3/directory/list/room/{room}")
}

fn ids(body: &Value) -> Vec<String> {
    body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn room_visibility_in_the_directory() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let (_, carol, _) = srv.register("carol", "pw").await;
    let published = create_room(&srv, &alice, json!({"visibility": "public"})).await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &room).await;

    // Reading needs no token.
    let (status, body) = srv.get(&visibility_path(&published), None).await;
    assert_eq!(
        (status, &body),
        (StatusCode::OK, &json!({"visibility": "public"}))
    );
    let (_, body) = srv.get(&visibility_path(&room), None).await;
    assert_eq!(body, json!({"visibility": "private"}));
    let (status, body) = srv.get(&visibility_path("!nope:localhost"), None).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );

    // Only the room's administrators may change it: not a member with power 0, not an
    // outsider, not without a token.
    let (status, body) = srv
        .put(
            &visibility_path(&room),
            Some(&bob),
            json!({"visibility": "public"}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    let (status, _) = srv
        .put(
            &visibility_path(&room),
            Some(&carol),
            json!({"visibility": "public"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = srv
        .put(
            &visibility_path(&room),
            None,
            json!({"visibility": "public"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = srv
        .put(
            &visibility_path("!nope:localhost"),
            Some(&alice),
            json!({"visibility": "public"}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    let (_, body) = srv.get(&visibility_path(&room), None).await;
    assert_eq!(body["visibility"], "private");

    let (status, body) = srv
        .put(
            &visibility_path(&room),
            Some(&alice),
            json!({"visibility": "public"}),
        )
        .await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({})));
    let (_, body) = srv.get(&visibility_path(&room), None).await;
    assert_eq!(body["visibility"], "public");
    let (_, body) = srv.get(PUBLIC_ROOMS, None).await;
    let listed = ids(&body);
    assert!(
        listed.contains(&room) && listed.contains(&published),
        "{body}"
    );

    // Bob becomes an admin (Alice, the v12 creator, is not listed) and hides it again.
    let (status, _) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/"),
            Some(&alice),
            json!({"users": {"@bob:localhost": 100}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = srv
        .put(
            &visibility_path(&room),
            Some(&bob),
            json!({"visibility": "private"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = srv.get(PUBLIC_ROOMS, None).await;
    assert_eq!(ids(&body), vec![published.clone()]);

    // `visibility` defaults to public; other values are refused.
    let (status, _) = srv
        .put(&visibility_path(&room), Some(&bob), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = srv.get(&visibility_path(&room), None).await;
    assert_eq!(body["visibility"], "public");
    let (status, body) = srv
        .put(
            &visibility_path(&room),
            Some(&bob),
            json!({"visibility": "secret"}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );
    let (status, body) = srv
        .put(
            &visibility_path(&room),
            Some(&bob),
            json!({"visibility": 1}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_BAD_JSON")
    );
    let (status, body) = srv
        .put(&visibility_path("not-a-room"), Some(&bob), json!({}))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );
    let (_, body) = srv.get(&visibility_path(&room), None).await;
    assert_eq!(body["visibility"], "public");
}

#[tokio::test]
async fn public_rooms_entries_describe_the_room() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;

    // Nothing published yet: an empty directory, without a token.
    let (status, body) = srv.get(PUBLIC_ROOMS, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["chunk"], json!([]));
    assert_eq!(body["total_room_count_estimate"], 0);
    assert!(body.get("next_batch").is_none() && body.get("prev_batch").is_none());

    let room = create_room(
        &srv,
        &alice,
        json!({
            "visibility": "public",
            "preset": "public_chat",
            "name": "Garden",
            "topic": "Plants and seeds",
            "room_alias_name": "garden",
            "initial_state": [
                {"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}},
                {"type": "m.room.guest_access", "content": {"guest_access": "can_join"}},
                {"type": "m.room.avatar", "content": {"url": "mxc://localhost/leaf"}},
            ],
        }),
    )
    .await;
    join(&srv, &bob, &room).await;
    let space = create_room(
        &srv,
        &alice,
        json!({"visibility": "public", "preset": "private_chat", "name": "Allotments",
               "creation_content": {"type": "m.space"}}),
    )
    .await;

    let (status, body) = srv.get(PUBLIC_ROOMS, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total_room_count_estimate"], 2);
    let chunk = body["chunk"].as_array().unwrap();
    // Most joined members first.
    assert_eq!(chunk[0]["room_id"], room.as_str());
    assert_eq!(
        chunk[0],
        json!({
            "room_id": room,
            "name": "Garden",
            "topic": "Plants and seeds",
            "canonical_alias": "#garden:localhost",
            "num_joined_members": 2,
            "world_readable": true,
            "guest_can_join": true,
            "avatar_url": "mxc://localhost/leaf",
        }),
        "public join rule is the default and so omitted"
    );
    assert_eq!(
        chunk[1],
        json!({
            "room_id": space,
            "name": "Allotments",
            "num_joined_members": 1,
            "world_readable": false,
            "guest_can_join": true,
            "join_rule": "invite",
            "room_type": "m.space",
        })
    );

    // The authenticated POST lists the same.
    let (status, posted) = srv.post(PUBLIC_ROOMS, Some(&alice), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(posted["chunk"], body["chunk"]);
    let (status, body) = srv.post(PUBLIC_ROOMS, None, json!({})).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN")
    );
}

#[tokio::test]
async fn pagination_is_ordered_and_tokens_go_both_ways() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let mut others = Vec::new();
    for name in ["u1", "u2", "u3", "u4"] {
        others.push(srv.register(name, "pw").await.1);
    }
    // Rooms with 1..=5 members, and two more with 1 member (ties ordered by room id).
    let mut rooms = Vec::new();
    for members in 1..=5usize {
        let room = create_room(
            &srv,
            &alice,
            json!({"visibility": "public", "preset": "public_chat"}),
        )
        .await;
        for token in &others[..members - 1] {
            join(&srv, token, &room).await;
        }
        rooms.push((members, room));
    }
    for _ in 0..2 {
        let room = create_room(&srv, &alice, json!({"visibility": "public"})).await;
        rooms.push((1, room));
    }
    // An unpublished room never appears.
    create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    rooms.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let expected: Vec<String> = rooms.iter().map(|(_, r)| r.clone()).collect();

    let (_, body) = srv.get(PUBLIC_ROOMS, None).await;
    assert_eq!(ids(&body), expected);

    // Forwards in pages of 3: 3 + 3 + 1.
    let mut seen = Vec::new();
    let mut tokens = Vec::new();
    let mut since: Option<String> = None;
    loop {
        let path = match &since {
            Some(t) => format!("{PUBLIC_ROOMS}?limit=3&since={}", enc(t)),
            None => format!("{PUBLIC_ROOMS}?limit=3"),
        };
        let (status, body) = srv.get(&path, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["total_room_count_estimate"], 7);
        assert_eq!(body.get("prev_batch").is_some(), since.is_some(), "{body}");
        seen.extend(ids(&body));
        tokens.push(body.clone());
        match body["next_batch"].as_str() {
            Some(next) => since = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, expected);
    assert_eq!(tokens.len(), 3);

    // Backwards from the last page: the page before it.
    let prev = tokens[2]["prev_batch"].as_str().unwrap();
    let (_, body) = srv
        .get(&format!("{PUBLIC_ROOMS}?limit=3&since={}", enc(prev)), None)
        .await;
    assert_eq!(ids(&body), expected[3..6]);
    let prev = body["prev_batch"].as_str().unwrap();
    let (_, body) = srv
        .get(&format!("{PUBLIC_ROOMS}?limit=3&since={}", enc(prev)), None)
        .await;
    assert_eq!(ids(&body), expected[0..3]);
    assert!(body.get("prev_batch").is_none(), "{body}");
    assert!(body.get("next_batch").is_some());

    // The POST form takes the same tokens in its body.
    let next = tokens[0]["next_batch"].as_str().unwrap();
    let (_, body) = srv
        .post(
            PUBLIC_ROOMS,
            Some(&alice),
            json!({"limit": 2, "since": next}),
        )
        .await;
    assert_eq!(ids(&body), expected[3..5]);

    // A room published between pages does not shift the others: the next page continues
    // right after the last room seen, in the new order.
    let newcomer = create_room(&srv, &alice, json!({"visibility": "public"})).await;
    rooms.push((1, newcomer));
    rooms.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let now: Vec<String> = rooms.iter().map(|(_, r)| r.clone()).collect();
    let (_, body) = srv
        .get(&format!("{PUBLIC_ROOMS}?limit=3&since={}", enc(next)), None)
        .await;
    assert_eq!(ids(&body), now[3..6]);

    // limit=0: only the count.
    let (_, body) = srv.get(&format!("{PUBLIC_ROOMS}?limit=0"), None).await;
    assert_eq!(body["chunk"], json!([]));
    assert_eq!(body["total_room_count_estimate"], 8);

    // Bad tokens are refused.
    for bad in ["garbage", "x1.!a:b", "n1", "nabc.!room:localhost"] {
        let (status, body) = srv
            .get(&format!("{PUBLIC_ROOMS}?since={}", enc(bad)), None)
            .await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn filters_search_terms_room_types_and_servers() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let garden = create_room(
        &srv,
        &alice,
        json!({"visibility": "public", "name": "Garden Club", "topic": "roses"}),
    )
    .await;
    let kitchen = create_room(
        &srv,
        &alice,
        json!({"visibility": "public", "name": "Kitchen", "topic": "Recipes with ROSEMARY"}),
    )
    .await;
    let aliased = create_room(
        &srv,
        &alice,
        json!({"visibility": "public", "room_alias_name": "greenhouse"}),
    )
    .await;
    let space = create_room(
        &srv,
        &alice,
        json!({"visibility": "public", "name": "Neighbourhood",
               "creation_content": {"type": "m.space"}}),
    )
    .await;

    let search = |term: &str| json!({"filter": {"generic_search_term": term}});
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    // Case-insensitive, in names, topics and aliases.
    let (_, body) = srv.post(PUBLIC_ROOMS, Some(&alice), search("ROSE")).await;
    assert_eq!(
        sorted(ids(&body)),
        sorted(vec![garden.clone(), kitchen.clone()])
    );
    assert_eq!(body["total_room_count_estimate"], 2);
    let (_, body) = srv.post(PUBLIC_ROOMS, Some(&alice), search("club")).await;
    assert_eq!(ids(&body), vec![garden.clone()]);
    let (_, body) = srv
        .post(PUBLIC_ROOMS, Some(&alice), search("greenhouse"))
        .await;
    assert_eq!(ids(&body), vec![aliased.clone()]);
    let (_, body) = srv
        .post(PUBLIC_ROOMS, Some(&alice), search("nothing"))
        .await;
    assert_eq!(body["chunk"], json!([]));
    assert_eq!(body["total_room_count_estimate"], 0);

    // Room types: `null` is rooms without a type.
    let (_, body) = srv
        .post(
            PUBLIC_ROOMS,
            Some(&alice),
            json!({"filter": {"room_types": ["m.space"]}}),
        )
        .await;
    assert_eq!(ids(&body), vec![space.clone()]);
    let (_, body) = srv
        .post(
            PUBLIC_ROOMS,
            Some(&alice),
            json!({"filter": {"room_types": [null]}}),
        )
        .await;
    assert_eq!(
        sorted(ids(&body)),
        sorted(vec![garden.clone(), kitchen.clone(), aliased.clone()])
    );
    let (_, body) = srv
        .post(
            PUBLIC_ROOMS,
            Some(&alice),
            json!({"filter": {"room_types": [null, "m.space"], "generic_search_term": "neigh"}}),
        )
        .await;
    assert_eq!(ids(&body), vec![space.clone()]);

    // Search with pagination: tokens page through the filtered list.
    let (_, body) = srv
        .post(
            PUBLIC_ROOMS,
            Some(&alice),
            json!({"limit": 1, "filter": {"generic_search_term": "ros"}}),
        )
        .await;
    let first = ids(&body);
    let next = body["next_batch"].as_str().unwrap().to_owned();
    let (_, body) = srv
        .post(
            PUBLIC_ROOMS,
            Some(&alice),
            json!({"limit": 1, "since": next, "filter": {"generic_search_term": "ros"}}),
        )
        .await;
    assert!(body.get("next_batch").is_none(), "{body}");
    assert_eq!(
        sorted([first, ids(&body)].concat()),
        sorted(vec![garden.clone(), kitchen.clone()])
    );

    // Networks: all networks is the Matrix one here; a third-party network has no rooms.
    let (_, body) = srv
        .post(
            PUBLIC_ROOMS,
            Some(&alice),
            json!({"include_all_networks": true}),
        )
        .await;
    assert_eq!(body["total_room_count_estimate"], 4);
    let (status, body) = srv
        .post(
            PUBLIC_ROOMS,
            Some(&alice),
            json!({"third_party_instance_id": "irc"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["chunk"], json!([]));

    // Our own server by name is ours; another server is asked over federation (one that
    // cannot be reached here; fed_queries covers servers that answer).
    let (status, body) = srv
        .get(&format!("{PUBLIC_ROOMS}?server=localhost"), None)
        .await;
    assert_eq!(
        (status, body["total_room_count_estimate"].as_u64()),
        (StatusCode::OK, Some(4))
    );
    let (status, body) = srv
        .get(&format!("{PUBLIC_ROOMS}?server=127.0.0.1:9"), None)
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_GATEWAY, "M_UNKNOWN")
    );
    let (status, body) = srv
        .post(
            &format!("{PUBLIC_ROOMS}?server=127.0.0.1:9"),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_GATEWAY, "M_UNKNOWN")
    );
}
