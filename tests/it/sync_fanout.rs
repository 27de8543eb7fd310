//! `/sync` under fan-out: many receivers in many rooms with concurrent senders must each get
//! every event exactly once (no skipped room, no missed wake-up), incremental syncs of rooms
//! with nothing new stay empty, and what a room's newest position is survives a restart.
//! Every wait is bounded in count and time.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, join, TestServer};

/// A timeline limit no burst below exceeds per room and sync, so nothing is legitimately
/// left out as `limited`.
const FILTER: &str = r#"{"room":{"timeline":{"limit":100}}}"#;

async fn sync(srv: &TestServer, token: &str, since: Option<&str>, timeout_ms: u64) -> Value {
    // Offline: a receiver's own sync does not change its presence, so the only news in a
    // long-poll is what the test writes.
    let mut path = format!(
        "/_matrix/client/v3/sync?timeout={timeout_ms}&set_presence=offline&filter={}",
        enc(FILTER)
    );
    if let Some(since) = since {
        path.push_str(&format!("&since={}", enc(since)));
    }
    let (status, body) = srv.get(&path, Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn send(srv: &TestServer, token: &str, room: &str, txn: &str) -> String {
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

/// The message event ids of a sync response, by room, in order.
fn messages(body: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(join) = body["rooms"]["join"].as_object() {
        for (room, section) in join {
            assert_ne!(
                section["timeline"]["limited"], true,
                "no burst here exceeds the limit: {section}"
            );
            for event in section["timeline"]["events"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if event["type"] == "m.room.message" {
                    let id = event["event_id"].as_str().unwrap().to_owned();
                    out.push((room.clone(), id));
                }
            }
        }
    }
    out
}

/// Receivers long-poll while senders write into many rooms at once: every receiver sees
/// every message of every one of its rooms exactly once, in each room's order.
#[tokio::test]
async fn concurrent_sends_reach_every_receiver_in_every_room() {
    let srv = TestServer::start().await;
    const ROOMS: usize = 10;
    const SENDERS: usize = 3;
    const PER_SENDER_ROOM: usize = 3;
    const RECEIVERS: usize = 6;
    let (_, owner, _) = srv.register("owner", "pw-owner-123").await;
    let mut rooms = Vec::new();
    for _ in 0..ROOMS {
        rooms.push(create_room(&srv, &owner, json!({"preset": "public_chat"})).await);
    }
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let (_, token, _) = srv.register(&format!("sender{s}"), "pw-sender-123").await;
        for room in &rooms {
            join(&srv, &token, room).await;
        }
        senders.push(token);
    }
    // Receivers are each in a different subset of the rooms (every other one for the odd
    // ones), so a room skipped for one user's position but not another's shows.
    let mut receivers = Vec::new();
    for r in 0..RECEIVERS {
        let (_, token, _) = srv.register(&format!("receiver{r}"), "pw-recv-123").await;
        let mine: Vec<String> = rooms
            .iter()
            .enumerate()
            .filter(|(i, _)| r % 2 == 0 || i % 2 == 1)
            .map(|(_, room)| room.clone())
            .collect();
        for room in &mine {
            join(&srv, &token, room).await;
        }
        let since = sync(&srv, &token, None, 0).await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        receivers.push((token, mine, since));
    }

    let sending = async {
        let mut sent: HashMap<String, Vec<String>> = HashMap::new();
        let tasks = senders.iter().enumerate().map(|(s, token)| {
            let rooms = &rooms;
            let srv = &srv;
            async move {
                let mut mine = Vec::new();
                for n in 0..PER_SENDER_ROOM {
                    let round = rooms.iter().map(|room| async move {
                        let id = send(srv, token, room, &format!("s{s}-{n}")).await;
                        (room.clone(), id)
                    });
                    mine.extend(futures_util::future::join_all(round).await);
                }
                mine
            }
        });
        for (room, id) in futures_util::future::join_all(tasks)
            .await
            .into_iter()
            .flatten()
        {
            sent.entry(room).or_default().push(id);
        }
        sent
    };
    let receiving = futures_util::future::join_all(receivers.iter().map(|(token, mine, since)| {
        let srv = &srv;
        async move {
            let expected = mine.len() * SENDERS * PER_SENDER_ROOM;
            let mut got: Vec<(String, String)> = Vec::new();
            let mut since = since.clone();
            let deadline = Instant::now() + Duration::from_secs(60);
            for _ in 0..1_000 {
                if got.len() >= expected || Instant::now() > deadline {
                    break;
                }
                let body = sync(srv, token, Some(&since), 5_000).await;
                got.extend(messages(&body));
                since = body["next_batch"].as_str().unwrap().to_owned();
            }
            (got, since)
        }
    }));
    let (sent, received) = tokio::join!(sending, receiving);

    for ((token, mine, _), (got, since)) in receivers.iter().zip(received) {
        let ids: Vec<&String> = got.iter().map(|(_, id)| id).collect();
        let unique: HashSet<&String> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "an event came twice");
        let expected: HashSet<&String> = mine.iter().flat_map(|room| &sent[room]).collect();
        assert_eq!(
            unique, expected,
            "every message of the receiver's rooms, no other"
        );
        // Each room's messages in the order the room has them.
        for room in mine {
            let order: Vec<&String> = got
                .iter()
                .filter(|(r, _)| r == room)
                .map(|(_, id)| id)
                .collect();
            let (status, page) = srv
                .get(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
                        enc(room)
                    ),
                    Some(token),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{page}");
            let mut stored: Vec<String> = page["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .map(|e| e["event_id"].as_str().unwrap().to_owned())
                .collect();
            stored.reverse();
            assert_eq!(order, stored.iter().collect::<Vec<_>>(), "room order");
        }
        // Nothing more is pending.
        let after = sync(&srv, token, Some(&since), 0).await;
        assert!(messages(&after).is_empty(), "{after}");
    }
}

/// Many long-polling receivers of one room are all woken by one send, and one receiver in
/// many rooms is woken by a send into any of them (the last one joined too).
#[tokio::test]
async fn long_polls_wake_for_sends_in_any_room() {
    let srv = TestServer::start().await;
    let (_, sender, _) = srv.register("sender", "pw-sender-123").await;
    let busy = create_room(&srv, &sender, json!({"preset": "public_chat"})).await;
    let mut tokens = Vec::new();
    for r in 0..12 {
        let (_, token, _) = srv.register(&format!("waiter{r}"), "pw-wait-123").await;
        join(&srv, &token, &busy).await;
        tokens.push(token);
    }
    // Tokens taken once everyone has joined: the send below is the only news.
    let mut receivers = Vec::new();
    for token in tokens {
        let since = sync(&srv, &token, None, 0).await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        receivers.push((token, since));
    }
    // Each long-poll waits far longer than the test's own bound: only a wake-up answers it
    // in time.
    let polls = futures_util::future::join_all(receivers.iter().map(|(token, since)| {
        let srv = &srv;
        async move {
            tokio::time::timeout(
                Duration::from_secs(30),
                sync(srv, token, Some(since), 120_000),
            )
            .await
            .expect("woken by the send")
        }
    }));
    let sending = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        send(&srv, &sender, &busy, "wake-all").await
    };
    let (bodies, sent) = tokio::join!(polls, sending);
    for body in bodies {
        let got: Vec<String> = messages(&body).into_iter().map(|(_, id)| id).collect();
        assert_eq!(got, std::slice::from_ref(&sent), "{body}");
    }

    // One user in many rooms: each room in turn wakes the long-poll.
    let (_, many, _) = srv.register("many", "pw-many-123").await;
    let mut rooms = Vec::new();
    for _ in 0..15 {
        let room = create_room(&srv, &sender, json!({"preset": "public_chat"})).await;
        join(&srv, &many, &room).await;
        rooms.push(room);
    }
    let mut since = sync(&srv, &many, None, 0).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    for (i, room) in rooms.iter().enumerate().rev().step_by(4) {
        let poll = async {
            tokio::time::timeout(
                Duration::from_secs(30),
                sync(&srv, &many, Some(&since), 120_000),
            )
            .await
            .expect("woken by the send")
        };
        let sending = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            send(&srv, &sender, room, &format!("room-{i}")).await
        };
        let (body, sent) = tokio::join!(poll, sending);
        assert_eq!(messages(&body), [(room.clone(), sent)], "{body}");
        since = body["next_batch"].as_str().unwrap().to_owned();
    }
}

/// A long-poll whose token is up to date waits without reading (`sync::nothing_new`); each
/// kind of news still wakes it: a to-device message, the user's own account data, a receipt,
/// a message. With none, it answers at its timeout with a whole body and the same position.
#[tokio::test]
async fn an_up_to_date_long_poll_wakes_for_every_kind_of_news() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw-alice-123").await;
    let (bob_id, bob, bob_device) = srv.register("bob", "pw-bob-123").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &room).await;
    let first = send(&srv, &alice, &room, "first").await;
    let mut since = sync(&srv, &bob, None, 0).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    // Nothing new: the answer comes at the timeout, complete, at the same position.
    let started = Instant::now();
    let body = sync(&srv, &bob, Some(&since), 400).await;
    assert!(started.elapsed() >= Duration::from_millis(400), "{body}");
    assert_eq!(body["next_batch"], since.as_str(), "{body}");
    assert!(body["device_one_time_keys_count"].is_object(), "{body}");
    assert!(body.get("rooms").is_none(), "{body}");

    let kinds: [(&str, &str); 4] = [
        ("to-device", "to_device"),
        ("account data", "account_data"),
        ("receipt", "rooms"),
        ("message", "rooms"),
    ];
    for (kind, section) in kinds {
        let poll = async {
            tokio::time::timeout(
                Duration::from_secs(30),
                sync(&srv, &bob, Some(&since), 120_000),
            )
            .await
            .unwrap_or_else(|_| panic!("woken by the {kind}"))
        };
        let writing = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (path, token, body) = match kind {
                "to-device" => (
                    "/_matrix/client/v3/sendToDevice/m.test/wake".to_owned(),
                    &alice,
                    json!({"messages": {&bob_id: {&bob_device: {"n": 1}}}}),
                ),
                "account data" => (
                    format!("/_matrix/client/v3/user/{bob_id}/account_data/org.example.wake"),
                    &bob,
                    json!({"n": 1}),
                ),
                "receipt" => (
                    format!(
                        "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                        enc(&room),
                        enc(&first)
                    ),
                    &alice,
                    json!({}),
                ),
                _ => {
                    send(&srv, &alice, &room, "wake").await;
                    return;
                }
            };
            let (status, body) = if kind == "receipt" {
                srv.post(&path, Some(token), body).await
            } else {
                srv.put(&path, Some(token), body).await
            };
            assert_eq!(status, StatusCode::OK, "{kind}: {body}");
        };
        let (body, ()) = tokio::join!(poll, writing);
        let news = &body[section];
        let found = match kind {
            "to-device" => news["events"][0]["content"]["n"] == 1,
            "account data" => news["events"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["type"] == "org.example.wake")),
            "receipt" => news["join"][&room]["ephemeral"]["events"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["type"] == "m.receipt")),
            _ => messages(&body).len() == 1,
        };
        assert!(found, "{kind} ({alice_id}): {body}");
        since = body["next_batch"].as_str().unwrap().to_owned();
    }
}

/// Timeline events are serialised once and shared by every receiver's sync
/// (`Rooms::shared_client_json`): each still gets what the single-event endpoint gives it
/// (apart from `age`), the transaction id only on the sending device, `prev_content` of
/// replaced state, `redacted_because`, and bundled aggregations where an event has them.
#[tokio::test]
async fn shared_timeline_json_is_each_viewers_own() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw-alice-123").await;
    let (status, login) = srv.login("alice", "pw-alice-123").await;
    assert_eq!(status, StatusCode::OK, "{login}");
    let alice_other = login["access_token"].as_str().unwrap().to_owned();
    let (_, bob, _) = srv.register("bob", "pw-bob-123").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &room).await;
    let viewers = [&alice, &alice_other, &bob];
    let mut since = Vec::new();
    for token in viewers {
        let body = sync(&srv, token, None, 0).await;
        since.push(body["next_batch"].as_str().unwrap().to_owned());
    }

    let topic = |n: u32| {
        let srv = &srv;
        let (alice, room) = (&alice, &room);
        async move {
            let (status, body) = srv
                .put(
                    &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(room)),
                    Some(alice),
                    json!({"topic": format!("topic {n}")}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["event_id"].as_str().unwrap().to_owned()
        }
    };
    let sent = send(&srv, &alice, &room, "txn-shared").await;
    topic(1).await;
    let second_topic = topic(2).await;
    let redacted = send(&srv, &alice, &room, "txn-redacted").await;
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/r1",
                enc(&room),
                enc(&redacted)
            ),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // An edit of the first message: that one now bundles an `m.replace` aggregation.
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/edit1",
                enc(&room)
            ),
            Some(&alice_other),
            json!({"msgtype": "m.text", "body": "* x", "m.new_content": {"msgtype": "m.text", "body": "x"},
                   "m.relates_to": {"rel_type": "m.replace", "event_id": sent}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The three viewers sync the same events at once (one epoch: one shared serialisation).
    let bodies = futures_util::future::join_all(
        viewers
            .iter()
            .zip(&since)
            .map(|(token, since)| sync(&srv, token, Some(since), 0)),
    )
    .await;
    for (i, body) in bodies.iter().enumerate() {
        let events = body["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .unwrap_or_else(|| panic!("viewer {i}: {body}"));
        assert!(events.len() >= 5, "viewer {i}: {body}");
        for event in events {
            let id = event["event_id"].as_str().unwrap();
            let (status, single) = srv
                .get(
                    &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(id)),
                    Some(viewers[i]),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{single}");
            let mut ours = event.clone();
            let mut theirs = single.clone();
            for value in [&mut ours, &mut theirs] {
                assert!(value["unsigned"]["age"].is_u64(), "viewer {i}: {value}");
                without_ages(value);
            }
            assert_eq!(ours, theirs, "viewer {i}, event {id}");
            let txn = &event["unsigned"]["transaction_id"];
            if id == sent {
                assert_eq!(*txn == "txn-shared", i == 0, "viewer {i}: {event}");
                assert!(
                    event["unsigned"]["m.relations"]["m.replace"].is_object(),
                    "viewer {i}: {event}"
                );
            } else if id == redacted {
                assert!(event["unsigned"]["redacted_because"].is_object(), "{event}");
                assert_eq!(*txn == "txn-redacted", i == 0, "viewer {i}: {event}");
            } else if id == second_topic {
                assert_eq!(event["unsigned"]["prev_content"]["topic"], "topic 1");
            }
        }
    }
}

/// `value` without `unsigned.age` anywhere in it (bundled events have their own).
fn without_ages(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(unsigned)) = map.get_mut("unsigned") {
                unsigned.remove("age");
            }
            map.values_mut().for_each(without_ages);
        }
        Value::Array(items) => items.iter_mut().for_each(without_ages),
        _ => {}
    }
}

/// The per-room newest position starts from the store after a restart: a token from before
/// it still gets the rooms written since (one written before the restart, one after), and a
/// room with nothing new gets no events.
#[tokio::test]
async fn incremental_sync_after_restart_sees_new_events_only() {
    let mut srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw-alice-123").await;
    let quiet = create_room(&srv, &alice, json!({})).await;
    let before = create_room(&srv, &alice, json!({})).await;
    let after = create_room(&srv, &alice, json!({})).await;
    send(&srv, &alice, &quiet, "old").await;
    let token = sync(&srv, &alice, None, 0).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let early = send(&srv, &alice, &before, "before-restart").await;
    srv.restart().await;
    let late = send(&srv, &alice, &after, "after-restart").await;
    let body = sync(&srv, &alice, Some(&token), 0).await;
    let mut got = messages(&body);
    got.sort();
    let mut want = vec![(before.clone(), early), (after.clone(), late)];
    want.sort();
    assert_eq!(got, want, "{body}");
    // (A token from the previous run lists every room once for its typing list; the quiet
    // room's timeline stays empty.)
    let quiet_timeline = &body["rooms"]["join"][&quiet]["timeline"]["events"];
    assert!(
        quiet_timeline.is_null() || quiet_timeline.as_array().is_some_and(Vec::is_empty),
        "{body}"
    );
    // And with nothing new at all, no room section.
    let next = body["next_batch"].as_str().unwrap();
    let empty = sync(&srv, &alice, Some(next), 0).await;
    assert!(empty["rooms"]["join"].is_null(), "{empty}");
}

/// Syncs share the events they read until the next commit (`rooms/recent_events.rs`): a
/// message every receiver has read, then redacted, reaches the next syncs redacted, with
/// the redaction, for every receiver, and a later initial sync serves it redacted too.
#[tokio::test]
async fn a_shared_event_read_before_its_redaction_is_served_redacted_after() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw-alice-123").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    let mut receivers = Vec::new();
    for i in 0..4 {
        let (_, token, _) = srv.register(&format!("r{i}"), "pw-receiver-1").await;
        join(&srv, &token, &room).await;
        let since = sync(&srv, &token, None, 0).await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        receivers.push((token, since));
    }
    let secret = send(&srv, &alice, &room, "secret").await;
    // Every receiver reads it (the first decodes it, the others share it).
    for (token, since) in &mut receivers {
        let body = sync(&srv, token, Some(since), 0).await;
        let events = &body["rooms"]["join"][&room]["timeline"]["events"];
        let got = events
            .as_array()
            .and_then(|e| e.iter().find(|e| e["event_id"] == secret.as_str()))
            .unwrap_or_else(|| panic!("the message reaches every receiver: {body}"));
        assert_eq!(got["content"]["body"], "secret");
        *since = body["next_batch"].as_str().unwrap().to_owned();
    }
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/r1",
                enc(&room),
                enc(&secret)
            ),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (token, since) in &receivers {
        let body = sync(&srv, token, Some(since), 0).await;
        let events = body["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            events
                .iter()
                .any(|e| e["type"] == "m.room.redaction" && e["redacts"] == secret.as_str()),
            "{body}"
        );
        let body = sync(&srv, token, None, 0).await;
        let events = &body["rooms"]["join"][&room]["timeline"]["events"];
        let got = events
            .as_array()
            .and_then(|e| e.iter().find(|e| e["event_id"] == secret.as_str()))
            .unwrap_or_else(|| panic!("the redacted message stays in the timeline: {body}"));
        assert!(
            got["content"].as_object().is_some_and(|c| c.is_empty()),
            "served redacted: {got}"
        );
    }
}
