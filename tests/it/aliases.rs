//! Room aliases over HTTP: create, resolve, delete, list a room's aliases, and the canonical
//! alias update on delete.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode, join, TestServer};

fn alias_path(alias: &str) -> String {
    format!("/_matrix/client/v3/directory/room/{}", enc(alias))
}

async fn put_alias(srv: &TestServer, token: &str, alias: &str, room: &str) -> (StatusCode, Value) {
    srv.put(&alias_path(alias), Some(token), json!({"room_id": room}))
        .await
}

async fn delete_alias(srv: &TestServer, token: &str, alias: &str) -> (StatusCode, Value) {
    srv.call(Method::DELETE, &alias_path(alias), Some(token), None)
        .await
}

async fn room_aliases(srv: &TestServer, token: &str, room: &str) -> (StatusCode, Value) {
    srv.get(
        &format!("/_matrix/client/v3/rooms/{room}/aliases"),
        Some(token),
    )
    .await
}

async fn canonical_alias(srv: &TestServer, token: &str, room: &str) -> (StatusCode, Value) {
    srv.get(
        &format!("/_matrix/client/v3/rooms/{room}/state/m.room.canonical_alias/"),
        Some(token),
    )
    .await
}

#[tokio::test]
async fn create_resolve_list_and_delete() {
    let mut srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &token, json!({})).await;

    let (status, body) = put_alias(&srv, &token, "#family:localhost", &room).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({})));

    // Resolving needs no access token.
    let (status, body) = srv.get(&alias_path("#family:localhost"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    assert_eq!(body["servers"], json!(["localhost"]));

    // Taken: 409 M_UNKNOWN, whoever asks and for whichever room.
    let other = create_room(&srv, &token, json!({})).await;
    let (status, body) = put_alias(&srv, &token, "#family:localhost", &other).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::CONFLICT, "M_UNKNOWN")
    );

    put_alias(&srv, &token, "#kin:localhost", &room).await;
    put_alias(&srv, &token, "#elsewhere:localhost", &other).await;
    let (status, body) = room_aliases(&srv, &token, &room).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["aliases"],
        json!(["#family:localhost", "#kin:localhost"])
    );
    let (_, body) = room_aliases(&srv, &token, &other).await;
    assert_eq!(body["aliases"], json!(["#elsewhere:localhost"]));

    // Aliases and the per-room index survive a restart.
    srv.restart().await;
    let (status, body) = srv.get(&alias_path("#kin:localhost"), None).await;
    assert_eq!(
        (status, body["room_id"].as_str()),
        (StatusCode::OK, Some(room.as_str()))
    );

    let (status, body) = delete_alias(&srv, &token, "#family:localhost").await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({})));
    let (status, body) = srv.get(&alias_path("#family:localhost"), None).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    let (status, body) = delete_alias(&srv, &token, "#family:localhost").await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    let (_, body) = room_aliases(&srv, &token, &room).await;
    assert_eq!(body["aliases"], json!(["#kin:localhost"]));

    // A deleted alias is free again, for another room.
    let (status, _) = put_alias(&srv, &token, "#family:localhost", &other).await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = srv.get(&alias_path("#family:localhost"), None).await;
    assert_eq!(body["room_id"], other.as_str());
}

#[tokio::test]
async fn invalid_requests_are_refused() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &token, json!({})).await;

    // Malformed alias (no server part) and an alias of another server.
    for alias in ["#nocolon", "family:localhost"] {
        let (status, body) = put_alias(&srv, &token, alias, &room).await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
            "{alias}: {body}"
        );
    }
    let (status, body) = put_alias(&srv, &token, "#family:example.org", &room).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );
    let (status, body) = srv.get(&alias_path("#nocolon"), None).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );

    // Unknown room, missing or malformed room_id.
    let (status, body) = put_alias(&srv, &token, "#x:localhost", "!nosuchroom:localhost").await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    let (status, body) = srv
        .put(&alias_path("#x:localhost"), Some(&token), json!({}))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_BAD_JSON")
    );
    let (status, _) = srv
        .put(
            &alias_path("#x:localhost"),
            Some(&token),
            json!({"room_id": "nope"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Unknown aliases.
    let (status, body) = srv.get(&alias_path("#nobody:localhost"), None).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    // A remote alias is asked from its server; one that cannot be reached is a 502
    // (fed_queries covers servers that answer).
    let (status, body) = srv.get(&alias_path("#somewhere:127.0.0.1:9"), None).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_GATEWAY, "M_UNKNOWN")
    );
    let (status, body) = delete_alias(&srv, &token, "#nobody:localhost").await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );

    // Creating and deleting need an access token.
    let (status, body) = srv
        .put(&alias_path("#x:localhost"), None, json!({"room_id": room}))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN")
    );
    let (status, _) = srv
        .call(Method::DELETE, &alias_path("#x:localhost"), None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Nothing was created by the refused requests.
    let (_, body) = room_aliases(&srv, &token, &room).await;
    assert_eq!(body["aliases"], json!([]));
}

#[tokio::test]
async fn who_may_delete_an_alias() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let (_, carol, _) = srv.register("carol", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &room).await;

    put_alias(&srv, &alice, "#alices:localhost", &room).await;
    put_alias(&srv, &bob, "#bobs:localhost", &room).await;
    // Carol creates aliases while a member, then leaves.
    join(&srv, &carol, &room).await;
    let (status, _) = put_alias(&srv, &carol, "#carols:localhost", &room).await;
    assert_eq!(status, StatusCode::OK);
    put_alias(&srv, &carol, "#carols2:localhost", &room).await;
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(&carol),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Bob (power 0, m.room.canonical_alias needs 50) may not delete Alice's alias.
    let (status, body) = delete_alias(&srv, &bob, "#alices:localhost").await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    // Carol is not in the room: only her own aliases.
    let (status, _) = delete_alias(&srv, &carol, "#bobs:localhost").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = delete_alias(&srv, &carol, "#carols:localhost").await;
    assert_eq!(status, StatusCode::OK);
    // The creator may always delete; a member with power over the canonical alias may too.
    let (status, _) = delete_alias(&srv, &bob, "#bobs:localhost").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = delete_alias(&srv, &alice, "#carols2:localhost").await;
    assert_eq!(status, StatusCode::OK);

    let (_, body) = room_aliases(&srv, &alice, &room).await;
    assert_eq!(body["aliases"], json!(["#alices:localhost"]));
}

#[tokio::test]
async fn deleting_the_canonical_alias_updates_the_event() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(
        &srv,
        &alice,
        json!({"preset": "public_chat", "room_alias_name": "main"}),
    )
    .await;
    join(&srv, &bob, &room).await;
    put_alias(&srv, &alice, "#alt:localhost", &room).await;
    put_alias(&srv, &bob, "#bobs:localhost", &room).await;
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.canonical_alias/"),
            Some(&alice),
            json!({"alias": "#main:localhost", "alt_aliases": ["#alt:localhost", "#bobs:localhost"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Alice may update the event: the alias leaves it, sent as her.
    let (status, _) = delete_alias(&srv, &alice, "#main:localhost").await;
    assert_eq!(status, StatusCode::OK);
    let (status, content) = canonical_alias(&srv, &alice, &room).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        content,
        json!({"alt_aliases": ["#alt:localhost", "#bobs:localhost"]})
    );
    let (_, event) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.canonical_alias/?format=event"),
            Some(&alice),
        )
        .await;
    assert_eq!(event["sender"], alice_id.as_str());

    // Bob created #bobs but may not send m.room.canonical_alias: the alias is deleted and the
    // event stays as it was (the spec's recommendation).
    let (status, body) = delete_alias(&srv, &bob, "#bobs:localhost").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = srv.get(&alias_path("#bobs:localhost"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, content) = canonical_alias(&srv, &alice, &room).await;
    assert_eq!(
        content,
        json!({"alt_aliases": ["#alt:localhost", "#bobs:localhost"]})
    );

    // The last alias of the event: the event is left with no aliases at all.
    delete_alias(&srv, &alice, "#alt:localhost").await;
    let (_, content) = canonical_alias(&srv, &alice, &room).await;
    assert_eq!(content, json!({"alt_aliases": ["#bobs:localhost"]}));
}

#[tokio::test]
async fn listing_a_rooms_aliases_needs_membership_or_world_readable() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let private = create_room(&srv, &alice, json!({"room_alias_name": "secret"})).await;
    let readable = create_room(
        &srv,
        &alice,
        json!({"room_alias_name": "open", "initial_state": [{"type": "m.room.history_visibility",
            "content": {"history_visibility": "world_readable"}}]}),
    )
    .await;

    let (status, body) = room_aliases(&srv, &alice, &private).await;
    assert_eq!(
        (status, &body["aliases"]),
        (StatusCode::OK, &json!(["#secret:localhost"]))
    );
    let (status, body) = room_aliases(&srv, &bob, &private).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    let (status, body) = room_aliases(&srv, &bob, &readable).await;
    assert_eq!(
        (status, &body["aliases"]),
        (StatusCode::OK, &json!(["#open:localhost"]))
    );
    // Unknown rooms look like rooms one is not in.
    let (status, body) = room_aliases(&srv, &bob, "!unknown:localhost").await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    let (status, _) = srv
        .get(&format!("/_matrix/client/v3/rooms/{private}/aliases"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // After leaving, Alice is no longer a member.
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{private}/leave"),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = room_aliases(&srv, &alice, &private).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// An alias can only be created by a joined member of the room; publishing it as the room's
/// canonical alias needs the power to send `m.room.canonical_alias`.
#[tokio::test]
async fn creating_and_publishing_an_alias_need_membership_and_power() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    let other = create_room(&srv, &alice, json!({})).await;

    // Bob is not in the room: he cannot name it.
    let (status, body) = put_alias(&srv, &bob, "#squat:localhost", &room).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(errcode(&body), "M_FORBIDDEN");
    let (status, _) = srv.get(&alias_path("#squat:localhost"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the alias must not exist");

    // Once joined he may create an alias, but not publish it (power level 0 < 50).
    join(&srv, &bob, &room).await;
    let (status, body) = put_alias(&srv, &bob, "#bobs:localhost", &room).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.canonical_alias/");
    let (status, body) = srv
        .put(&path, Some(&bob), json!({"alias": "#bobs:localhost"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Nor probe where other aliases point: refused before the alias check.
    let (status, body) = put_alias(&srv, &alice, "#elsewhere:localhost", &other).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = srv
        .put(&path, Some(&bob), json!({"alias": "#elsewhere:localhost"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Alice, with the power, publishes bob's alias.
    let (status, body) = srv
        .put(&path, Some(&alice), json!({"alias": "#bobs:localhost"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = canonical_alias(&srv, &alice, &room).await;
    assert_eq!(body["alias"], "#bobs:localhost");
}
