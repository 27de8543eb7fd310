//! Concurrent sends to one room share commits (`rooms/build/queue.rs`): each is answered with
//! its own event; refused ones (a non-member, a redaction of an unknown event or of someone
//! else's) fail alone without taking the others with them; a retransmitted transaction is one
//! event; and the room's history holds exactly the accepted events, each once.

use std::collections::{HashMap, HashSet};

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode, join, TestServer};

/// Sends per member in the burst; with three members and the refused requests, well over
/// what one commit takes while the next batch queues.
const PER_MEMBER: usize = 16;

async fn send(srv: &TestServer, token: &str, room: &str, txn: &str) -> (StatusCode, Value) {
    srv.put(
        &format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
            enc(room)
        ),
        Some(token),
        json!({"msgtype": "m.text", "body": txn}),
    )
    .await
}

async fn redact(
    srv: &TestServer,
    token: &str,
    room: &str,
    target: &str,
    txn: &str,
) -> (StatusCode, Value) {
    srv.put(
        &format!(
            "/_matrix/client/v3/rooms/{}/redact/{}/{txn}",
            enc(room),
            enc(target)
        ),
        Some(token),
        json!({}),
    )
    .await
}

/// The bodies and ids of the room's messages, newest first, read back with `/messages`.
async fn history(srv: &TestServer, token: &str, room: &str) -> Vec<(String, String)> {
    let (status, body) = srv
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000",
                enc(room)
            ),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["end"].is_null(), "everything fits one page: {body}");
    body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| {
            (
                // A redacted message has no body.
                e["content"]["body"].as_str().unwrap_or("").to_owned(),
                e["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn concurrent_sends_to_one_room_each_land_once() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let (_, carol, _) = srv.register("carol", "pw").await;
    let (_, mallory, _) = srv.register("mallory", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &room).await;
    join(&srv, &carol, &room).await;
    let (status, body) = send(&srv, &alice, &room, "target").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let target = body["event_id"].as_str().unwrap().to_owned();

    // Every request at once: (label, token, what).
    enum What {
        Send(String),
        Redact(String, String),
    }
    let mut requests: Vec<(String, &str, What)> = Vec::new();
    for (name, token) in [("alice", &alice), ("bob", &bob), ("carol", &carol)] {
        for i in 0..PER_MEMBER {
            let txn = format!("{name}-{i}");
            requests.push((txn.clone(), token, What::Send(txn)));
        }
        // A retransmission racing its original.
        let txn = format!("{name}-0");
        requests.push((format!("{txn}-again"), token, What::Send(txn)));
    }
    for i in 0..3 {
        let txn = format!("mallory-{i}");
        requests.push((txn.clone(), &mallory, What::Send(txn)));
    }
    requests.push((
        "bob-redacts-unknown".into(),
        &bob,
        What::Redact(
            "$doesnotexist0000000000000000000000000000000".into(),
            "r1".into(),
        ),
    ));
    requests.push((
        "carol-redacts-alice".into(),
        &carol,
        What::Redact(target.clone(), "r2".into()),
    ));
    let (srv_ref, room_ref) = (&srv, room.as_str());
    let answers = join_all(requests.iter().map(|(label, token, what)| async move {
        let answer = match what {
            What::Send(txn) => send(srv_ref, token, room_ref, txn).await,
            What::Redact(target, txn) => redact(srv_ref, token, room_ref, target, txn).await,
        };
        (label.clone(), answer)
    }))
    .await;
    let answers: HashMap<String, (StatusCode, Value)> = answers.into_iter().collect();

    let mut sent = HashMap::new();
    for (label, (status, body)) in &answers {
        if label.starts_with("mallory") {
            assert_eq!(*status, StatusCode::FORBIDDEN, "{label}: {body}");
            assert_eq!(errcode(body), "M_FORBIDDEN", "{label}: {body}");
        } else if label == "bob-redacts-unknown" {
            assert_eq!(*status, StatusCode::NOT_FOUND, "{label}: {body}");
            assert_eq!(errcode(body), "M_NOT_FOUND", "{label}: {body}");
        } else if label == "carol-redacts-alice" {
            assert_eq!(*status, StatusCode::FORBIDDEN, "{label}: {body}");
            assert_eq!(errcode(body), "M_FORBIDDEN", "{label}: {body}");
        } else {
            assert_eq!(*status, StatusCode::OK, "{label}: {body}");
            let id = body["event_id"].as_str().unwrap().to_owned();
            if !label.ends_with("-again") {
                sent.insert(label.clone(), id);
            }
        }
    }
    for name in ["alice", "bob", "carol"] {
        let again = &answers[&format!("{name}-0-again")].1["event_id"];
        assert_eq!(
            again.as_str(),
            Some(sent[&format!("{name}-0")].as_str()),
            "a retransmission is the same event"
        );
    }
    let distinct: HashSet<&String> = sent.values().collect();
    assert_eq!(distinct.len(), 3 * PER_MEMBER, "one event per send");

    // The history holds each accepted send once, and nothing refused.
    let history = history(&srv, &alice, &room).await;
    let mut seen = HashMap::new();
    for (body, id) in &history {
        assert!(
            seen.insert(id.clone(), body.clone()).is_none(),
            "{id} twice"
        );
    }
    assert_eq!(seen.len(), 3 * PER_MEMBER + 1, "{history:?}");
    for (txn, id) in &sent {
        assert_eq!(seen.get(id), Some(txn), "{txn} is in the history as sent");
    }
    assert_eq!(
        seen.get(&target).map(String::as_str),
        Some("target"),
        "not redacted"
    );

    // A later send still builds on the room (its lock and queue were left clean).
    let (status, body) = send(&srv, &bob, &room, "after").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
