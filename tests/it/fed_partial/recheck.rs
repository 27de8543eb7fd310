//! The re-check at the end of a resync: events accepted against the partial state that fail
//! against the full state are rejected after all, never served again, and the state they set
//! goes back.
//!
//! On A, mallory (a user of C) joins, sets the topic, and is banned by alice. Bob of B joins
//! with partial state: the room is named, so B gets no member event but its own — not
//! mallory's ban — while her join is in the auth chain (the topic's auth event). C then sends
//! B, as mallory, a message and a new topic citing her join: B accepts both on their auth
//! events. Once B has the full state, both are rejected, and B's state is A's again.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{has_message, join_via, send_text, services, state_ids, wait_for_full_state};
use crate::common::{create_room, enc};
use crate::fed_common::{start_many_with, FedServer};
use crate::fed_pdus::events::{now_ms, raw, EventSpec, Remote, RoomView};

/// `from` sends `to` these PDUs in one transaction; every one must be accepted.
async fn send_accepted(
    from: &FedServer,
    to: &FedServer,
    txn: &str,
    pdus: &[&ruma::CanonicalJsonObject],
) {
    let pdus: Vec<Value> = pdus
        .iter()
        .map(|o| serde_json::from_str(raw(o).get()).unwrap())
        .collect();
    let body = json!({"origin": from.name, "origin_server_ts": now_ms(), "pdus": pdus});
    let (status, answer) = from
        .signed(
            to,
            &to.name,
            Method::PUT,
            &format!("/_matrix/federation/v1/send/{txn}"),
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

async fn topic(srv: &FedServer, token: &str, room: &str) -> Value {
    let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(room));
    let (status, topic) = srv.get(&path, Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{topic}");
    topic["topic"].clone()
}

#[tokio::test]
async fn events_accepted_against_the_partial_state_are_rejected_against_the_full_state() {
    // B resyncs only after a restart (see the test in `mod.rs`).
    let mut fed = start_many_with(3, |i, config| {
        if i == 1 {
            config.federation.partial_state_resync_delay_secs = 3600;
        }
    })
    .await;
    let (_, alice, _) = fed.servers[0].register("alice", "password1").await;
    let (_, bob, _) = fed.servers[1].register("bob", "password1").await;
    let mallory = fed.servers[2].user_id("mallory");
    let as_c = Remote::server(&fed.servers[2]);
    let (room, mallory_join) = {
        let (a, c) = (&fed.servers[0], &fed.servers[2]);
        let room = create_room(
            a,
            &alice,
            json!({
                "preset": "public_chat",
                "name": "Moderated",
                "power_level_content_override": {"events": {"m.room.topic": 0}},
            }),
        )
        .await;
        let view = RoomView {
            services: services(a),
            room_id: room.clone(),
        };
        let (join_id, join) = view.event(
            &as_c,
            EventSpec::state(
                "m.room.member",
                &mallory,
                &mallory,
                json!({"membership": "join"}),
            ),
        );
        send_accepted(c, a, "c1", &[&join]).await;
        let (_, topic_event) = view.event(
            &as_c,
            EventSpec::state(
                "m.room.topic",
                &mallory,
                "",
                json!({"topic": "first topic"}),
            ),
        );
        send_accepted(c, a, "c2", &[&topic_event]).await;
        let (status, body) = a
            .post(
                &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)),
                Some(&alice),
                json!({"user_id": mallory, "reason": "spam"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (room, join_id)
    };

    let (msg_id, topic_id) = {
        let (a, b, c) = (&fed.servers[0], &fed.servers[1], &fed.servers[2]);
        let (status, body) = join_via(b, &bob, &room, &a.name).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let room_id: ruma::OwnedRoomId = room.parse().unwrap();
        assert!(services(b).rooms.is_partial_state(&room_id));
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(&room),
            enc(&mallory)
        );
        assert_eq!(
            b.get(&path, Some(&bob)).await.0,
            StatusCode::NOT_FOUND,
            "the ban is left out of the partial state"
        );

        // B is no resident to join through yet (Synapse answers the same).
        let carol = c.user_id("carol");
        let path = format!(
            "/_matrix/federation/v1/make_join/{}/{}?ver=12&ver=11",
            enc(&room),
            enc(&carol)
        );
        let (status, body) = c.signed(b, &b.name, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

        // Mallory's server claims her join still holds.
        let view = RoomView {
            services: services(b),
            room_id: room.clone(),
        };
        let mut auth = view.auth_events("m.room.message", &mallory, None, &json!({}));
        auth.push(mallory_join.to_string());
        let mut spec = EventSpec::message(&mallory, "a banned user speaks");
        spec.auth = Some(auth.clone());
        let (msg_id, msg) = view.event(&as_c, spec);
        let mut spec = EventSpec::state(
            "m.room.topic",
            &mallory,
            "",
            json!({"topic": "hijacked topic"}),
        );
        spec.prev = Some(vec![msg_id.to_string()]);
        spec.auth = Some(auth);
        spec.extra_depth = 1;
        let (topic_id, new_topic) = view.event(&as_c, spec);
        send_accepted(c, b, "c3", &[&msg, &new_topic]).await;
        assert!(has_message(b, &bob, &room, "a banned user speaks").await);
        assert_eq!(topic(b, &bob, &room).await, "hijacked topic");
        // Later events build on them: bob's message cites the new topic and reads the state
        // it set.
        send_text(b, &bob, &room, "b1", "bob after the hijack").await;
        (msg_id, topic_id)
    };

    {
        let b = &mut fed.servers[1];
        b.stop().await;
        b.config.federation.partial_state_resync_delay_secs = 0;
        b.start_again().await;
    }
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    wait_for_full_state(b, &room).await;

    // Rejected, never served: not in the timeline, not by id, not in a context.
    assert!(!has_message(b, &bob, &room, "a banned user speaks").await);
    assert!(has_message(b, &bob, &room, "bob after the hijack").await);
    for id in [&msg_id, &topic_id] {
        let rejection = services(b).pdus.rejection(id).unwrap();
        assert!(rejection.is_some(), "{id} is rejected");
        for path in [
            format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room),
                enc(id.as_str())
            ),
            format!(
                "/_matrix/client/v3/rooms/{}/context/{}",
                enc(&room),
                enc(id.as_str())
            ),
        ] {
            let (status, body) = b.get(&path, Some(&bob)).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        }
    }
    // The state it set went back: the topic is mallory's first, she is banned, and B's state
    // is A's.
    assert_eq!(topic(b, &bob, &room).await, "first topic");
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
        enc(&room),
        enc(&mallory)
    );
    let (status, member) = b.get(&path, Some(&bob)).await;
    assert_eq!(
        (status, &member["membership"]),
        (StatusCode::OK, &json!("ban"))
    );
    assert_eq!(
        state_ids(a, &alice, &room).await,
        state_ids(b, &bob, &room).await
    );
    // A fresh sync shows neither the message nor the hijacked topic.
    let (status, sync) = b.get("/_matrix/client/v3/sync?timeout=0", Some(&bob)).await;
    assert_eq!(status, StatusCode::OK, "{sync}");
    let joined = &sync["rooms"]["join"][&room];
    let events = joined["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(joined["state"]["events"].as_array().into_iter().flatten());
    for event in events {
        let id = event["event_id"].as_str().unwrap_or_default();
        assert!(
            id != msg_id.as_str() && id != topic_id.as_str(),
            "{id} served by /sync: {sync}"
        );
    }
    // The room goes on: bob's next message builds on what remains.
    send_text(b, &bob, &room, "b2", "after the re-check").await;
    assert!(has_message(b, &bob, &room, "after the re-check").await);
}
