//! A message the resident sends the instant it has accepted a join, while the joining server
//! is still storing the room, reaches the joining user: held until the join is stored, then
//! received (`pdus/held.rs`), with no later event needed to fetch it.
//!
//! The test holds B's lock of the room: B's join gets its answer from A, checks it, and waits
//! at its store step; meanwhile A has the join, alice sends a message, and A delivers it to B.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use super::{join_via, send_text, services};
use crate::common::{create_room, enc};
use crate::fed_common::start_many;

#[tokio::test]
async fn a_message_sent_as_the_join_is_answered_reaches_the_joining_user() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice, _) = a.register("alice", "password1").await;
    let (bob_id, bob, _) = b.register("bob", "password1").await;
    let room = create_room(a, &alice, json!({"preset": "public_chat"})).await;
    let room_id: ruma::OwnedRoomId = room.parse().unwrap();

    let lock = services(b).rooms.lock_room(&room_id).await;
    let joining = join_via(b, &bob, &room, &a.name);
    let sending = async {
        // A has stored bob's join (it answered, or is about to).
        let deadline = Instant::now() + Duration::from_secs(20);
        let path = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room));
        loop {
            let (status, members) = a.get(&path, Some(&alice)).await;
            assert_eq!(status, StatusCode::OK, "{members}");
            if members["joined"].get(&bob_id).is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "A never stored bob's join");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        send_text(a, &alice, &room, "a1", "welcome, right away").await;
        // B got it while its join waits for the lock: held.
        let deadline = Instant::now() + Duration::from_secs(20);
        while services(b).pdus.held_pdus(&room_id) == 0 {
            assert!(Instant::now() < deadline, "B never received the message");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            services(b).rooms.room(&room_id).unwrap().is_none(),
            "the join is not stored yet"
        );
        drop(lock);
    };
    let ((status, body), ()) = tokio::join!(joining, sending);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(services(b).pdus.held_pdus(&room_id), 0);

    // Received by the time the join returned: in bob's first sync, nothing else sent.
    let (status, sync) = b.get("/_matrix/client/v3/sync?timeout=0", Some(&bob)).await;
    assert_eq!(status, StatusCode::OK, "{sync}");
    let timeline = &sync["rooms"]["join"][&room]["timeline"]["events"];
    assert!(
        timeline
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["content"]["body"] == "welcome, right away"),
        "{sync}"
    );
    // And the room goes on both ways.
    send_text(b, &bob, &room, "b1", "thanks").await;
    super::wait_for_message(a, &alice, &room, "thanks").await;
}
