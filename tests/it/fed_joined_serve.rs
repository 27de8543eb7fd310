//! A server that joined a room over federation (not its creator) serves the room's history
//! and state to the room's other servers like the creator does: three real Hearth servers on
//! loopback, A creates a public room, B's and then C's users join through A (C's stored state
//! starts at the `send_join` answer, whose events are outliers there), and B asks C for the
//! state at C's events, their auth chains, backfill and missing events by hand-signed requests.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{create_room, enc};
use crate::fed_common::{start_many, FedServer};
use crate::fed_partial::wait_for_full_state;

/// `/join/{room}` through `via`; asserts 200.
async fn join_via(srv: &FedServer, token: &str, room: &str, via: &str) {
    let (status, body) = srv
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(room),
                enc(via)
            ),
            Some(token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Polls `srv` until `user` is joined to `room` there (bounded: 20 s).
async fn wait_joined(srv: &FedServer, token: &str, room: &str, user: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(room),
            enc(user)
        );
        let (status, content) = srv.get(&path, Some(token)).await;
        if status == StatusCode::OK && content["membership"] == "join" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{user} never joined on {}: {status} {content}",
            srv.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fed_get(from: &FedServer, to: &FedServer, path: &str) -> (StatusCode, Value) {
    from.signed(to, &to.name, Method::GET, path, None).await
}

fn ids_of(pdus: &Value) -> Vec<String> {
    pdus.as_array()
        .expect("a list")
        .iter()
        .map(|id| id.as_str().expect("an event id").to_owned())
        .collect()
}

/// Whether the PDUs hold a join of `user` (PDUs of recent room versions carry no event id).
fn has_member(pdus: &Value, user: &str) -> bool {
    pdus.as_array().expect("a list of PDUs").iter().any(|p| {
        p["type"] == "m.room.member"
            && p["state_key"] == user
            && p["content"]["membership"] == "join"
    })
}

#[tokio::test]
async fn a_server_that_joined_over_federation_serves_state_and_history() {
    let fed = start_many(3).await;
    let (a, b, c) = (&fed.servers[0], &fed.servers[1], &fed.servers[2]);
    let (_, alice, _) = a.register("alice", "password1").await;
    let (bob_id, bob, _) = b.register("bob", "password1").await;
    let (carol_id, carol, _) = c.register("carol", "password1").await;
    let room = create_room(a, &alice, json!({"preset": "public_chat"})).await;
    join_via(b, &bob, &room, &a.name).await;
    wait_joined(a, &alice, &room, &bob_id).await;
    // A state change after B's join: the newest event of the state C is sent is not B's
    // member event.
    let (status, body) = a
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                enc(&room)
            ),
            Some(&alice),
            json!({"topic": "after bob"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    join_via(c, &carol, &room, &a.name).await;
    wait_for_full_state(c, &room).await;
    let (status, state) = c
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state", enc(&room)),
            Some(&carol),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{state}");
    let carol_join = state
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == carol_id.as_str())
        .and_then(|e| e["event_id"].as_str())
        .expect("carol's join")
        .to_owned();
    let (status, sent) = c
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/m1",
                enc(&room)
            ),
            Some(&carol),
            json!({"msgtype": "m.text", "body": "hello from C"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    let message = sent["event_id"].as_str().unwrap().to_owned();
    // And a message of B's user, which reaches C over federation.
    let (status, sent) = b
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/b1",
                enc(&room)
            ),
            Some(&bob),
            json!({"msgtype": "m.text", "body": "hello from B"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    let bob_message = sent["event_id"].as_str().unwrap().to_owned();
    let bob_message_id = ruma::EventId::parse(&bob_message).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while c
        .server
        .as_ref()
        .expect("running")
        .services
        .rooms
        .event_sid(&bob_message_id)
        .unwrap()
        .is_none()
    {
        assert!(Instant::now() < deadline, "B's message never reached C");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = enc(&room);

    // The state before C's and B's messages (and before C's join): both users joined in it, so B (whose
    // user is joined there) is served it, like `/event` serves B the events themselves.
    for (event, carol_in_state) in [(&message, true), (&bob_message, true), (&carol_join, false)] {
        let (status, body) = fed_get(
            b,
            c,
            &format!(
                "/_matrix/federation/v1/state_ids/{r}?event_id={}",
                enc(event)
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "state_ids at {event}: {body}");
        let state = ids_of(&body["pdu_ids"]);
        assert!(!body["auth_chain_ids"].as_array().unwrap().is_empty());
        let (status, full) = fed_get(
            b,
            c,
            &format!("/_matrix/federation/v1/state/{r}?event_id={}", enc(event)),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "state at {event}: {full}");
        assert_eq!(full["pdus"].as_array().unwrap().len(), state.len());
        let members: Vec<&str> = full["pdus"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["type"] == "m.room.member" && p["content"]["membership"] == "join")
            .filter_map(|p| p["state_key"].as_str())
            .collect();
        assert!(members.contains(&bob_id.as_str()), "{members:?}");
        assert_eq!(members.contains(&carol_id.as_str()), carol_in_state);
    }

    let (status, body) = fed_get(
        b,
        c,
        &format!("/_matrix/federation/v1/event_auth/{r}/{}", enc(&message)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(has_member(&body["auth_chain"], &carol_id), "{body}");

    // History: the message with its content, by backfill and by get_missing_events.
    let (status, body) = fed_get(
        b,
        c,
        &format!(
            "/_matrix/federation/v1/backfill/{r}?v={}&limit=5",
            enc(&message)
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let served = body["pdus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == "m.room.message")
        .cloned();
    assert_eq!(
        served.map(|p| p["content"]["body"].clone()),
        Some(json!("hello from C")),
        "{body}"
    );
    let (status, body) = b
        .signed(
            c,
            &c.name,
            Method::POST,
            &format!("/_matrix/federation/v1/get_missing_events/{r}"),
            Some(json!({"earliest_events": [], "latest_events": [message], "limit": 5})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(has_member(&body["events"], &carol_id), "{body}");
}
