//! Concurrent `createRoom` requests: creations without an alias never clash with each other;
//! two creations claiming one alias leave exactly one winner.

use std::collections::BTreeSet;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{enc, errcode, TestServer};

const CREATE: &str = "/_matrix/client/v3/createRoom";

/// How many rooms each concurrent burst creates.
const BURST: usize = 16;

async fn joined_rooms(srv: &TestServer, token: &str) -> BTreeSet<String> {
    let (status, body) = srv
        .get("/_matrix/client/v3/joined_rooms", Some(token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["joined_rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect()
}

/// Sends all `(token, body)` creations at once and returns each answer, in order.
async fn create_all(srv: &TestServer, requests: &[(String, Value)]) -> Vec<(StatusCode, Value)> {
    join_all(
        requests
            .iter()
            .map(|(token, body)| srv.post(CREATE, Some(token), body.clone())),
    )
    .await
}

fn room_ids(answers: &[(StatusCode, Value)]) -> Vec<String> {
    answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, StatusCode::OK, "{body}");
            body["room_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn concurrent_creations_by_one_user_all_succeed() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    // Identical bodies: the creations differ only in when they run.
    let requests: Vec<_> = (0..BURST).map(|_| (token.clone(), json!({}))).collect();
    let rooms = room_ids(&create_all(&srv, &requests).await);
    let distinct: BTreeSet<String> = rooms.iter().cloned().collect();
    assert_eq!(distinct.len(), BURST, "room ids repeat: {rooms:?}");
    assert_eq!(joined_rooms(&srv, &token).await, distinct);
}

#[tokio::test]
async fn concurrent_creations_by_several_users_all_succeed() {
    let srv = TestServer::start().await;
    let mut tokens = Vec::new();
    for i in 0..4 {
        let (_, token, _) = srv.register(&format!("user{i}"), "pw").await;
        tokens.push(token);
    }
    let requests: Vec<_> = (0..BURST)
        .map(|i| {
            let body = if i % 2 == 0 {
                json!({})
            } else {
                json!({"preset": "public_chat", "name": format!("room {i}")})
            };
            (tokens[i % tokens.len()].clone(), body)
        })
        .collect();
    let rooms = room_ids(&create_all(&srv, &requests).await);
    let distinct: BTreeSet<String> = rooms.iter().cloned().collect();
    assert_eq!(distinct.len(), BURST, "room ids repeat: {rooms:?}");
    for (u, token) in tokens.iter().enumerate() {
        let own: BTreeSet<String> = rooms
            .iter()
            .enumerate()
            .filter(|(i, _)| i % tokens.len() == u)
            .map(|(_, room)| room.clone())
            .collect();
        assert_eq!(joined_rooms(&srv, token).await, own);
    }
}

#[tokio::test]
async fn concurrent_creations_with_one_alias_leave_one_winner() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let body = json!({"room_alias_name": "contested"});
    let answers = create_all(&srv, &[(alice, body.clone()), (bob, body)]).await;
    let winners: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    let (status, loser) = answers
        .iter()
        .find(|(status, _)| *status != StatusCode::OK)
        .unwrap();
    assert_eq!(*status, StatusCode::BAD_REQUEST, "{loser}");
    assert_eq!(errcode(loser), "M_ROOM_IN_USE");
    let server = alice_id.split_once(':').unwrap().1;
    let alias = enc(&format!("#contested:{server}"));
    let (status, resolved) = srv
        .get(&format!("/_matrix/client/v3/directory/room/{alias}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert_eq!(resolved["room_id"], winners[0]["room_id"]);
}
