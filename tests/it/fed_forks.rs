//! A state fork between two real Hearth servers, resolved the same way on both: each server
//! changes the room's state while the other is down, so neither branch cites the other, and
//! once they talk again each server resolves the two branches (room version 1: state
//! resolution v1, `rooms/resolve/v1.rs`).

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{create_room, enc};
use crate::fed_common::FedServer;
use crate::fed_joins::{join_via, send_text, state_ids, wait_for_message};

async fn put_state(srv: &FedServer, token: &str, room: &str, kind: &str, content: Value) -> String {
    let path = format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(room));
    let (status, body) = srv.put(&path, Some(token), content).await;
    assert_eq!(status, StatusCode::OK, "{kind} on {}: {body}", srv.name);
    body["event_id"].as_str().unwrap().to_owned()
}

async fn state_content(srv: &FedServer, token: &str, room: &str, kind: &str) -> Value {
    let path = format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(room));
    let (status, body) = srv.get(&path, Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{kind} on {}: {body}", srv.name);
    body
}

/// Polls (bounded: 20 s) until `srv` shows the event to `token`.
async fn wait_for_event(srv: &FedServer, token: &str, room: &str, event_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let path = format!(
        "/_matrix/client/v3/rooms/{}/event/{}",
        enc(room),
        enc(event_id)
    );
    loop {
        let (status, body) = srv.get(&path, Some(token)).await;
        if status == StatusCode::OK {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{event_id} never reached {}: {status} {body}",
            srv.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A transaction with no PDUs from `from` to `to`: it tells `to` that `from` is up, which ends
/// `to`'s backoff for it and sends what `to` queued for it at once.
async fn knock_on(from: &FedServer, to: &FedServer, txn: &str) {
    let body = json!({
        "origin": from.name,
        "origin_server_ts": crate::fed_pdus::events::now_ms(),
        "pdus": [],
    });
    let path = format!("/_matrix/federation/v1/send/{txn}");
    let (status, answer) = from
        .signed(to, &to.name, Method::PUT, &path, Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

/// Alice (A, power 100) demotes bob and renames the room while B is down; bob (B, power 50)
/// sets the topic and renames the room while A is down. On both servers the resolution keeps
/// alice's power levels, which take away bob's power to set the topic and name on his branch:
/// the topic goes back to the one before the fork and the name is alice's. Without the
/// resolution, B would keep bob's topic (it applied it first) and A would not.
#[tokio::test]
async fn a_state_fork_in_room_version_1_is_resolved_alike_on_both_servers() {
    fork_in_room_version_1(false).await;
}

/// The same while B's state is partial (its join left out alice's member event, which the
/// resolution reads): B fetches the full state only after the fork, and keeps the resolution.
#[tokio::test]
async fn a_state_fork_while_the_state_is_partial_is_resolved_alike() {
    fork_in_room_version_1(true).await;
}

async fn fork_in_room_version_1(partial: bool) {
    let mut fed = crate::fed_common::start_many_with(2, |i, config| {
        if partial && i == 1 {
            // No resync until the test allows it.
            config.federation.partial_state_resync_delay_secs = 3600;
        }
    })
    .await;
    let (alice, bob_id, bob, room) = {
        let (a, b) = (&fed.servers[0], &fed.servers[1]);
        let (alice_id, alice, _) = a.register("alice", "password1").await;
        let (bob_id, bob, _) = b.register("bob", "password1").await;
        let room = create_room(
            a,
            &alice,
            json!({
                "room_version": "1",
                "preset": "public_chat",
                "name": "before the fork",
                "topic": "before the fork",
                "power_level_content_override": {
                    "users": {alice_id.clone(): 100, bob_id.clone(): 50},
                    "state_default": 50,
                },
            }),
        )
        .await;
        let (status, body) = join_via(b, &bob, &room, &[&a.name]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let room_id = ruma::OwnedRoomId::try_from(room.as_str()).unwrap();
        let services = &b.server.as_ref().unwrap().services;
        if partial {
            assert!(services.rooms.is_partial_state(&room_id));
        } else {
            crate::fed_partial::wait_for_full_state(b, &room).await;
        }
        (alice, bob_id, bob, room)
    };

    // A's branch, B down.
    fed.servers[1].stop().await;
    let a = &fed.servers[0];
    let levels_path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
        enc(&room)
    );
    let (_, mut levels) = a.get(&levels_path, Some(&alice)).await;
    levels["users"][&bob_id] = json!(0);
    let demote = put_state(a, &alice, &room, "m.room.power_levels", levels).await;
    let alice_name = put_state(a, &alice, &room, "m.room.name", json!({"name": "alice's"})).await;
    fed.servers[0].stop().await;

    // B's branch, A down.
    fed.servers[1].start_again().await;
    let b = &fed.servers[1];
    let bob_topic = put_state(b, &bob, &room, "m.room.topic", json!({"topic": "bob's"})).await;
    put_state(b, &bob, &room, "m.room.name", json!({"name": "bob's"})).await;
    assert_eq!(
        state_content(b, &bob, &room, "m.room.topic").await["topic"],
        "bob's"
    );

    // Both up: each sends the other its branch.
    fed.servers[0].start_again().await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    knock_on(b, a, "fork-1").await;
    knock_on(a, b, "fork-2").await;
    wait_for_event(b, &bob, &room, &demote).await;
    wait_for_event(b, &bob, &room, &alice_name).await;
    // Bob's next event cites both branches; once A has it, A has bob's branch too.
    send_text(b, &bob, &room, "after-1", "bob after the fork").await;
    wait_for_message(a, &alice, &room, "bob after the fork").await;
    send_text(a, &alice, &room, "after-2", "alice after the fork").await;
    wait_for_message(b, &bob, &room, "alice after the fork").await;

    for (srv, token) in [(a, &alice), (b, &bob)] {
        let topic = state_content(srv, token, &room, "m.room.topic").await;
        assert_eq!(topic["topic"], "before the fork", "on {}", srv.name);
        let name = state_content(srv, token, &room, "m.room.name").await;
        assert_eq!(name["name"], "alice's", "on {}", srv.name);
        let levels = state_content(srv, token, &room, "m.room.power_levels").await;
        assert_eq!(levels["users"][&bob_id], 0, "on {}", srv.name);
    }
    // Bob's topic stays in B's timeline: it is only out of the state.
    wait_for_event(b, &bob, &room, &bob_topic).await;

    if partial {
        // B fetches the full state at its join; what the fork resolved stays.
        let b = &mut fed.servers[1];
        b.stop().await;
        b.config.federation.partial_state_resync_delay_secs = 0;
        b.start_again().await;
    }
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let on_a = state_ids(a, &alice, &room).await;
    assert_eq!(on_a, state_ids(b, &bob, &room).await);
    assert!(!on_a.iter().any(|(_, _, id)| *id == bob_topic));
}
