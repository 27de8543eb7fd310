//! Joins over federation between real Hearth servers on loopback: a user of B joins a room of
//! A (`make_join`/`send_join` v2, B verifying A's answer and storing the room in one batch),
//! after which the room works on both sides — messages both ways through /sync, the same
//! state, leaves and kicks delivered. Plus the resident side's refusals (unsupported room
//! version, forged events), `omit_members`, restricted joins, and knocks on A by hand-signed
//! requests.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, RoomVersionId};
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode};
use crate::fed_common::{start_many, FedServer};
use crate::fed_pdus::events::Remote;

fn services(s: &FedServer) -> &hearth::service::Services {
    &s.server.as_ref().expect("running").services
}

/// `/join/{room}` with `server_name`/`via` servers.
async fn join_via(srv: &FedServer, token: &str, room: &str, via: &[&str]) -> (StatusCode, Value) {
    let query: Vec<String> = via
        .iter()
        .map(|s| format!("server_name={}", enc(s)))
        .collect();
    srv.post(
        &format!("/_matrix/client/v3/join/{}?{}", enc(room), query.join("&")),
        Some(token),
        json!({}),
    )
    .await
}

async fn send_text(srv: &FedServer, token: &str, room: &str, txn: &str, body: &str) -> String {
    let (status, sent) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                enc(room)
            ),
            Some(token),
            json!({"msgtype": "m.text", "body": body}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    sent["event_id"].as_str().unwrap().to_owned()
}

/// Syncs until the room's timeline shows a message with `body` (bounded: 20 s).
async fn wait_for_message(srv: &FedServer, token: &str, room: &str, body: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut since: Option<String> = None;
    loop {
        let path = match &since {
            Some(s) => format!("/_matrix/client/v3/sync?timeout=2000&since={s}"),
            None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
        };
        let (status, sync) = srv.get(&path, Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{sync}");
        let found = sync["rooms"]["join"][room]["timeline"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["content"]["body"] == body);
        if found {
            return;
        }
        since = sync["next_batch"].as_str().map(str::to_owned);
        assert!(
            Instant::now() < deadline,
            "{body:?} never reached {} in {room}",
            srv.name
        );
    }
}

/// Polls until `check` holds for the room's member list on `srv` (bounded: 20 s).
async fn wait_for_membership(srv: &FedServer, token: &str, room: &str, user: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(room),
            enc(user)
        );
        let (status, content) = srv.get(&path, Some(token)).await;
        if status == StatusCode::OK && content["membership"] == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{user} never became {want} on {}: {status} {content}",
            srv.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The room's state on `srv` as `(type, state_key) → event_id`, sorted.
async fn state_ids(srv: &FedServer, token: &str, room: &str) -> Vec<(String, String, String)> {
    let (status, state) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state", enc(room)),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{state}");
    let mut out: Vec<_> = state
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["state_key"].as_str().unwrap().to_owned(),
                e["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_remote_user_joins_by_id_and_both_sides_talk() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice, _) = a.register("alice", "password1").await;
    let (bob_id, bob, _) = b.register("bob", "password1").await;
    let room = create_room(a, &alice, json!({"preset": "public_chat", "name": "Hearth"})).await;
    send_text(a, &alice, &room, "a0", "before bob").await;

    // B is not in the room and, without a server to ask, cannot join it.
    let (status, body) = join_via(b, &bob, &room, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let (status, body) = join_via(b, &bob, &room, &[&a.name]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room);
    // Joining again changes nothing (B is now in the room).
    let (status, body) = join_via(b, &bob, &room, &[&a.name]).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    wait_for_membership(a, &alice, &room, &bob_id, "join").await;
    assert_eq!(state_ids(a, &alice, &room).await, state_ids(b, &bob, &room).await);

    // The room on B shows its name and members to Bob's sync.
    let (status, sync) = b.get("/_matrix/client/v3/sync?timeout=0", Some(&bob)).await;
    assert_eq!(status, StatusCode::OK);
    let joined = &sync["rooms"]["join"][&room];
    let state_types: Vec<&str> = joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .chain(joined["timeline"]["events"].as_array().unwrap())
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(state_types.contains(&"m.room.name"), "{joined}");
    assert!(state_types.contains(&"m.room.create"), "{joined}");

    send_text(b, &bob, &room, "b1", "hello from B").await;
    wait_for_message(a, &alice, &room, "hello from B").await;
    send_text(a, &alice, &room, "a1", "hello from A").await;
    wait_for_message(b, &bob, &room, "hello from A").await;
    // The history before the join is not in B's timeline (not backfilled), and no outlier
    // appears there as a message.
    let (status, page) = b
        .get(
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(&room)),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        !page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["content"]["body"] == "before bob"),
        "{page}"
    );

    // Bob leaves: A sees it.
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_for_membership(a, &alice, &room, &bob_id, "leave").await;
}
