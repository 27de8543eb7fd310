//! `GET /rooms/{roomId}/timestamp_to_event` over HTTP.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode, TestServer};

async fn send_text(srv: &TestServer, token: &str, room: &str, txn: &str) -> String {
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                enc(room)
            ),
            Some(token),
            json!({"msgtype": "m.text", "body": txn}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

/// Every event of the room as (event_id, origin_server_ts), in timeline order.
async fn timeline(srv: &TestServer, token: &str, room: &str) -> Vec<(String, u64)> {
    let (status, body) = srv
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=f&limit=1000",
                enc(room)
            ),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event_id"].as_str().unwrap().to_owned(),
                e["origin_server_ts"].as_u64().unwrap(),
            )
        })
        .collect()
}

async fn at(srv: &TestServer, token: &str, room: &str, ts: u64, dir: &str) -> (StatusCode, Value) {
    srv.get(
        &format!(
            "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={ts}&dir={dir}",
            enc(room)
        ),
        Some(token),
    )
    .await
}

async fn found(srv: &TestServer, token: &str, room: &str, ts: u64, dir: &str) -> (String, u64) {
    let (status, body) = at(srv, token, room, ts, dir).await;
    assert_eq!(status, StatusCode::OK, "ts={ts} dir={dir}: {body}");
    (
        body["event_id"].as_str().unwrap().to_owned(),
        body["origin_server_ts"].as_u64().unwrap(),
    )
}

fn assert_not_found(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(errcode(body), "M_NOT_FOUND", "{body}");
}

#[tokio::test]
async fn finds_the_closest_event_in_either_direction() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &token, json!({})).await;
    let mut sent = Vec::new();
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        sent.push(send_text(&srv, &token, &room, &format!("m{i}")).await);
    }
    let events = timeline(&srv, &token, &room).await;
    let ts_of = |id: &str| events.iter().find(|(e, _)| e == id).unwrap().1;
    let (t1, t2, t3) = (ts_of(&sent[0]), ts_of(&sent[1]), ts_of(&sent[2]));
    assert!(t1 < t2 && t2 < t3);

    // Exactly at an event's time: that event both ways.
    assert_eq!(
        found(&srv, &token, &room, t2, "f").await,
        (sent[1].clone(), t2)
    );
    assert_eq!(
        found(&srv, &token, &room, t2, "b").await,
        (sent[1].clone(), t2)
    );
    // Between two events.
    assert_eq!(found(&srv, &token, &room, t2 - 1, "f").await.0, sent[1]);
    assert_eq!(found(&srv, &token, &room, t2 - 1, "b").await.0, sent[0]);
    // After the last event / before the first.
    let (status, body) = at(&srv, &token, &room, t3 + 60_000, "f").await;
    assert_not_found(status, &body);
    assert_eq!(
        found(&srv, &token, &room, t3 + 60_000, "b").await.0,
        sent[2]
    );
    let (status, body) = at(&srv, &token, &room, 0, "b").await;
    assert_not_found(status, &body);
    assert_eq!(
        found(&srv, &token, &room, 0, "f").await.0,
        events[0].0,
        "the create event"
    );
}

#[tokio::test]
async fn binary_search_agrees_with_a_linear_scan() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &token, json!({})).await;
    // Other rooms' events interleave in the stream positions.
    let other = create_room(&srv, &token, json!({})).await;
    for i in 0..40 {
        send_text(&srv, &token, &room, &format!("m{i}")).await;
        if i % 3 == 0 {
            send_text(&srv, &token, &other, &format!("o{i}")).await;
        }
        if i % 7 == 0 {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
    let events = timeline(&srv, &token, &room).await;
    let first = events.first().unwrap().1;
    let last = events.last().unwrap().1;
    for ts in (first.saturating_sub(2)..=last + 2).step_by(1) {
        let forward = events.iter().find(|(_, t)| *t >= ts);
        let backward = events.iter().rev().find(|(_, t)| *t <= ts);
        for (dir, expected) in [("f", forward), ("b", backward)] {
            let (status, body) = at(&srv, &token, &room, ts, dir).await;
            match expected {
                Some((id, t)) => {
                    assert_eq!(status, StatusCode::OK, "ts={ts} {dir}: {body}");
                    assert_eq!(body["event_id"], *id, "ts={ts} dir={dir}");
                    assert_eq!(body["origin_server_ts"], *t);
                }
                None => assert_not_found(status, &body),
            }
        }
    }
}

#[tokio::test]
async fn only_visible_events_are_found_and_access_is_checked() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let (_, carol, _) = srv.register("carol", "pw").await;
    let room = create_room(
        &srv,
        &alice,
        json!({"preset": "public_chat", "initial_state": [{"type": "m.room.history_visibility",
            "content": {"history_visibility": "joined"}}]}),
    )
    .await;
    let before = send_text(&srv, &alice, &room, "before").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let after = send_text(&srv, &alice, &room, "after").await;
    let events = timeline(&srv, &alice, &room).await;
    let before_ts = events.iter().find(|(e, _)| *e == before).unwrap().1;

    // Alice finds the early message. For Bob it is invisible (history is `joined` from the
    // visibility change on), so the search passes over it: forwards to his own join,
    // backwards to the visibility change itself (visible since the `shared` before it lets
    // him see it, spec: "before *or* after").
    assert_eq!(found(&srv, &alice, &room, before_ts, "b").await.0, before);
    let (bob_back, bob_back_ts) = found(&srv, &bob, &room, before_ts, "b").await;
    assert_ne!(bob_back, before);
    assert!(bob_back_ts <= before_ts);
    let (status, body) = srv
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room),
                enc(&bob_back)
            ),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["type"], "m.room.history_visibility", "{body}");
    assert_eq!(body["content"]["history_visibility"], "joined", "{body}");
    let (bob_next, _) = found(&srv, &bob, &room, before_ts, "f").await;
    let (status, body) = srv
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room),
                enc(&bob_next)
            ),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["type"], "m.room.member", "{body}");
    assert_eq!(body["state_key"], bob_id, "{body}");
    assert_eq!(
        found(&srv, &bob, &room, u64::from(u32::MAX) * 1000, "b")
            .await
            .0,
        after
    );

    // Never in the room (and not world-readable): 403. Unknown room: 404.
    let (status, body) = at(&srv, &carol, &room, 0, "f").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(errcode(&body), "M_FORBIDDEN");
    let (status, body) = at(&srv, &alice, "!nowhere:localhost", 0, "f").await;
    assert_not_found(status, &body);

    // Bad parameters.
    for query in ["ts=1&dir=x", "ts=abc&dir=f", "dir=f", "ts=1"] {
        let (status, body) = srv
            .get(
                &format!(
                    "/_matrix/client/v1/rooms/{}/timestamp_to_event?{query}",
                    enc(&room)
                ),
                Some(&alice),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(errcode(&body), "M_INVALID_PARAM", "{query}");
    }
    let (status, _) = srv
        .get(
            &format!(
                "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts=1&dir=f",
                enc(&room)
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
