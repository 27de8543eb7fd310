//! Partial-state joins between real Hearth servers on loopback: A has a named room with
//! hundreds of members (users of a third server C, joined by PDUs C signs and sends A); a user
//! of B joins with `omit_members`, reads and sends at once while B knows few member events,
//! messages from a member whose event B has only in the auth chain are accepted; the full
//! state fetched in the background (resumed after a restart of B) makes B's members and state
//! those of A.

mod held;
mod recheck;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{create_room, enc};
use crate::fed_common::{start_many_with, FedServer};
use crate::fed_pdus::events::{now_ms, EventSpec, Remote, RoomView};

const PER_TRANSACTION: usize = 50;

fn services(s: &FedServer) -> &hearth::service::Services {
    &s.server.as_ref().expect("running").services
}

/// Waits until `srv` has the full state of `room` (bounded: 30 s); at once for a room not
/// joined with partial state.
pub async fn wait_for_full_state(srv: &FedServer, room: &str) {
    let Ok(room_id) = ruma::OwnedRoomId::try_from(room) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while services(srv).rooms.is_partial_state(&room_id) {
        assert!(
            Instant::now() < deadline,
            "{} never got the full state of {room}",
            srv.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Joins `members` users of `c` to `room` on `a` by PDUs signed as `c` (transactions of
/// [`PER_TRANSACTION`]).
async fn add_remote_members(a: &FedServer, c: &FedServer, room: &str, members: usize) {
    let view = RoomView {
        services: services(a),
        room_id: room.to_owned(),
    };
    let remote = Remote::server(c);
    let mut prev = view.latest();
    let mut n = 0;
    for t in 0..members.div_ceil(PER_TRANSACTION) {
        let probe = remote.user("probe");
        let auth = view.auth_events(
            "m.room.member",
            &probe,
            Some(&probe),
            &json!({"membership": "join"}),
        );
        let mut pdus = Vec::new();
        for i in 0..PER_TRANSACTION.min(members - n) {
            let user = remote.user(&format!("member{n}"));
            let mut spec = EventSpec::state(
                "m.room.member",
                &user,
                &user,
                json!({"membership": "join", "displayname": format!("Member {n}")}),
            );
            spec.prev = Some(prev.clone());
            spec.auth = Some(auth.clone());
            spec.extra_depth = i as u64;
            let (id, object) = view.event(&remote, spec);
            prev = vec![id.to_string()];
            pdus.push(serde_json::to_value(&object).unwrap());
            n += 1;
        }
        let body = json!({"origin": c.name, "origin_server_ts": now_ms(), "pdus": pdus});
        let (status, answer) = c
            .signed(
                a,
                &a.name,
                Method::PUT,
                &format!("/_matrix/federation/v1/send/m{t}"),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert!(
            answer["pdus"]
                .as_object()
                .unwrap()
                .values()
                .all(|r| r.get("error").is_none()),
            "{answer}"
        );
    }
}

async fn joined_count(srv: &FedServer, token: &str, room: &str) -> usize {
    let path = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room));
    let (status, members) = srv.get(&path, Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{members}");
    members["joined"].as_object().unwrap().len()
}

async fn members_count(srv: &FedServer, token: &str, room: &str) -> usize {
    let path = format!("/_matrix/client/v3/rooms/{}/members", enc(room));
    let (status, members) = srv.get(&path, Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{members}");
    members["chunk"].as_array().unwrap().len()
}

async fn send_text(srv: &FedServer, token: &str, room: &str, txn: &str, body: &str) {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
        enc(room)
    );
    let (status, sent) = srv
        .put(
            &path,
            Some(token),
            json!({"msgtype": "m.text", "body": body}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
}

/// Whether the room's recent timeline on `srv` (`/messages` backwards) has `body`.
async fn has_message(srv: &FedServer, token: &str, room: &str, body: &str) -> bool {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
        enc(room)
    );
    let (status, page) = srv.get(&path, Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["content"]["body"] == body)
}

/// Polls until `body` is in the room's timeline on `srv` (bounded: 20 s).
async fn wait_for_message(srv: &FedServer, token: &str, room: &str, body: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !has_message(srv, token, room, body).await {
        assert!(
            Instant::now() < deadline,
            "{body:?} never reached {}",
            srv.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The room's state on `srv` as sorted `(type, state_key, event_id)`.
async fn state_ids(srv: &FedServer, token: &str, room: &str) -> Vec<(String, String, String)> {
    let path = format!("/_matrix/client/v3/rooms/{}/state", enc(room));
    let (status, state) = srv.get(&path, Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{state}");
    let mut out: Vec<_> = state
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap().to_owned();
            (s("type"), s("state_key"), s("event_id"))
        })
        .collect();
    out.sort();
    out
}

async fn join_via(srv: &FedServer, token: &str, room: &str, via: &str) -> (StatusCode, Value) {
    let path = format!(
        "/_matrix/client/v3/join/{}?server_name={}",
        enc(room),
        enc(via)
    );
    srv.post(&path, Some(token), json!({})).await
}

#[tokio::test]
async fn a_large_room_is_joined_with_partial_state_and_resynced_after_a_restart() {
    const MEMBERS: usize = 300;
    // B waits an hour before resyncing: the room stays partial until B restarts without the
    // wait, so what B does meanwhile is observed without a race.
    let mut fed = start_many_with(3, |i, config| {
        if i == 1 {
            config.federation.partial_state_resync_delay_secs = 3600;
        }
    })
    .await;
    let (alice_id, alice, room) = {
        let a = &fed.servers[0];
        let (alice_id, alice, _) = a.register("alice", "password1").await;
        // A name: no heroes are needed, so the resident leaves out every other member.
        let room = create_room(
            a,
            &alice,
            json!({"preset": "public_chat", "name": "Big room"}),
        )
        .await;
        add_remote_members(a, &fed.servers[2], &room, MEMBERS).await;
        assert_eq!(joined_count(a, &alice, &room).await, MEMBERS + 1);
        (alice_id, alice, room)
    };
    let (bob_id, bob, _) = fed.servers[1].register("bob", "password1").await;
    {
        let (a, b) = (&fed.servers[0], &fed.servers[1]);
        let (status, body) = join_via(b, &bob, &room, &a.name).await;
        assert_eq!(status, StatusCode::OK, "{body}");

        // Partial: B knows its own member event and few others, and the room's other state.
        let room_id: ruma::OwnedRoomId = room.parse().unwrap();
        let partial = services(b).rooms.partial_state(&room_id).unwrap().unwrap();
        assert!(partial.servers.contains(&a.name), "{partial:?}");
        assert!(
            partial.servers.contains(&fed.servers[2].name),
            "{partial:?}"
        );
        let known = members_count(b, &bob, &room).await;
        assert!(known < 10, "B knows {known} members right after the join");
        assert!(joined_count(b, &bob, &room).await < 10);
        let (status, name) = b
            .get(
                &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
                Some(&bob),
            )
            .await;
        assert_eq!(
            (status, &name["name"]),
            (StatusCode::OK, &json!("Big room"))
        );

        // Sync does not claim to know the membership.
        let (status, sync) = b.get("/_matrix/client/v3/sync?timeout=0", Some(&bob)).await;
        assert_eq!(status, StatusCode::OK, "{sync}");
        let summary = &sync["rooms"]["join"][&room]["summary"];
        assert!(summary.is_object(), "{sync}");
        assert!(summary.get("m.joined_member_count").is_none(), "{summary}");

        // Bob reads and sends at once; A gets it.
        send_text(b, &bob, &room, "b1", "hello from a partial room").await;
        assert!(has_message(b, &bob, &room, "hello from a partial room").await);
        wait_for_message(a, &alice, &room, "hello from a partial room").await;
        // Alice's member event is not in B's state (only in the auth chain): her message is
        // authorised on its auth events and shown.
        send_text(a, &alice, &room, "a1", "hello from the resident").await;
        wait_for_message(b, &bob, &room, "hello from the resident").await;
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(&room),
            enc(&alice_id)
        );
        assert_eq!(b.get(&path, Some(&bob)).await.0, StatusCode::NOT_FOUND);
    }

    // A restart resumes the resync.
    {
        let b = &mut fed.servers[1];
        b.stop().await;
        b.config.federation.partial_state_resync_delay_secs = 0;
        b.start_again().await;
    }
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    wait_for_full_state(b, &room).await;
    assert_eq!(joined_count(b, &bob, &room).await, MEMBERS + 2);
    assert_eq!(members_count(b, &bob, &room).await, MEMBERS + 2);
    assert_eq!(
        state_ids(a, &alice, &room).await,
        state_ids(b, &bob, &room).await
    );
    let (_, sync) = b.get("/_matrix/client/v3/sync?timeout=0", Some(&bob)).await;
    assert_eq!(
        sync["rooms"]["join"][&room]["summary"]["m.joined_member_count"],
        json!(MEMBERS + 2),
        "{sync}"
    );
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
        enc(&room),
        enc(&fed.servers[2].user_id("member7"))
    );
    let (status, member) = b.get(&path, Some(&bob)).await;
    assert_eq!(
        (status, &member["displayname"]),
        (StatusCode::OK, &json!("Member 7"))
    );

    // The room works as any other afterwards, both ways.
    send_text(b, &bob, &room, "b2", "after the resync").await;
    wait_for_message(a, &alice, &room, "after the resync").await;
    send_text(a, &alice, &room, "a2", "resident after the resync").await;
    wait_for_message(b, &bob, &room, "resident after the resync").await;
    let _ = bob_id;
}

/// Figures for the report: join time and growth of the test process's resident memory for a
/// partial and a full join of a room with `FIGURE_MEMBERS` (default 1000) members. Run with
/// `cargo test --test it fed_partial::figure -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn figure_partial_and_full_join() {
    let members: usize = std::env::var("FIGURE_MEMBERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let fed = start_many_with(4, |i, config| {
        if i == 3 {
            config.federation.partial_state_joins = false;
        }
        if i == 1 {
            config.federation.partial_state_resync_delay_secs = 3600;
        }
    })
    .await;
    let (a, partial_b, c, full_b) = (
        &fed.servers[0],
        &fed.servers[1],
        &fed.servers[2],
        &fed.servers[3],
    );
    let (_, alice, _) = a.register("alice", "password1").await;
    let room = create_room(a, &alice, json!({"preset": "public_chat", "name": "Big"})).await;
    add_remote_members(a, c, &room, members).await;
    for (label, b) in [("partial", partial_b), ("full", full_b)] {
        let (_, bob, _) = b.register("bob", "password1").await;
        let rss_before = rss_kib();
        reset_peak();
        let started = Instant::now();
        let (status, body) = join_via(b, &bob, &room, &a.name).await;
        let took = started.elapsed();
        assert_eq!(status, StatusCode::OK, "{body}");
        let rss_after = rss_kib();
        let peak = status_kib("VmHWM:");
        // What the allocator keeps after the join that is not live data: the RSS once glibc
        // has returned its free pages.
        // SAFETY: `malloc_trim` (glibc) only releases free memory; no pointer is involved.
        let trimmed = unsafe { malloc_trim(0) };
        let rss_trimmed = rss_kib();
        println!(
            "FIGURE: {label} join of a room of {} members: {took:?}, process RSS {} -> {} KiB \
             (peak {peak} KiB; {rss_trimmed} KiB after malloc_trim, released: {trimmed})",
            members + 1,
            rss_before,
            rss_after
        );
    }
}

extern "C" {
    /// glibc: returns free memory of the heap and arenas to the system (1 if any was).
    fn malloc_trim(pad: usize) -> i32;
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS (Linux `clear_refs`, 5).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
