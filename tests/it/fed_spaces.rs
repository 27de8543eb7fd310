//! Space hierarchies across servers: a client `/hierarchy` whose space links rooms on
//! another server (asked with the federation `/hierarchy` of a server in the link's `via`),
//! and the federation `/hierarchy` this server answers.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode};
use crate::fed_common::{start_many, FedServer};
use crate::fed_history::fed_get;

/// Links `child` (on the server `via`) into `space` on `srv`.
async fn link(srv: &FedServer, token: &str, space: &str, child: &str, via: &str) {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
        enc(space),
        enc(child)
    );
    let (status, body) = srv.put(&path, Some(token), json!({"via": [via]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_space_shows_its_children_on_another_server() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice, _) = a.register("alice", "password1").await;
    let (_, bob, _) = b.register("bob", "password1").await;
    // On B: a public space with a public child, and a private room.
    let space_b = create_room(b, &bob, json!({"preset": "public_chat", "name": "Bob's space", "creation_content": {"type": "m.space"}})).await;
    let child_b = create_room(
        b,
        &bob,
        json!({"preset": "public_chat", "name": "Bob's child"}),
    )
    .await;
    let secret_b = create_room(b, &bob, json!({"preset": "private_chat", "name": "Secret"})).await;
    link(b, &bob, &space_b, &child_b, &b.name).await;
    // On A: alice's space links B's space and B's private room.
    let space_a = create_room(a, &alice, json!({"preset": "public_chat", "name": "Alice's space", "creation_content": {"type": "m.space"}})).await;
    link(a, &alice, &space_a, &space_b, &b.name).await;
    link(a, &alice, &space_a, &secret_b, &b.name).await;

    // B serves its space over federation: the room, its child, nothing inaccessible.
    let (status, body) = fed_get(
        a,
        b,
        &format!("/_matrix/federation/v1/hierarchy/{}", enc(&space_b)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room"]["room_id"], json!(space_b));
    assert_eq!(
        body["room"]["children_state"][0]["state_key"],
        json!(child_b)
    );
    assert_eq!(body["children"][0]["name"], json!("Bob's child"));
    assert_eq!(body["inaccessible_children"], json!([]));
    let (status, body) = fed_get(
        a,
        b,
        &format!("/_matrix/federation/v1/hierarchy/{}", enc(&secret_b)),
    )
    .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND"),
        "{body}"
    );

    // Alice's client sees the remote space and its child; the private room is left out.
    let path = format!("/_matrix/client/v1/rooms/{}/hierarchy", enc(&space_a));
    let (status, body) = a.get(&path, Some(&alice)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let names: Vec<&Value> = body["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["name"])
        .collect();
    assert_eq!(
        names,
        vec![
            &json!("Alice's space"),
            &json!("Bob's space"),
            &json!("Bob's child")
        ],
        "{body}"
    );
    assert_eq!(
        body["rooms"][1]["children_state"][0]["state_key"],
        json!(child_b)
    );
}
