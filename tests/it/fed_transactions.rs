//! Federation transactions both ways: the durable outbound queue (delivery, backoff and
//! catch-up, restart with the same transaction id) and inbound `/send` (idempotency, EDUs and
//! their origin check), with to-device messages and device lists as the EDUs that show it.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use ruma::{
    api::federation::transactions::send_transaction_message, serde::Raw,
    MilliSecondsSinceUnixEpoch, ServerName, UInt,
};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use hearth::service::{
    federation::{
        devices::DeviceListDirty,
        receive::{self, InboundTxns, Transaction},
    },
    Services,
};

use crate::{
    common::{errcode, TestServer},
    e2ee::Dev,
    fed_common::{start_many, FedServer},
};

fn services(s: &FedServer) -> &Services {
    &s.server.as_ref().expect("running").services
}

fn name(s: &FedServer) -> ruma::OwnedServerName {
    ServerName::parse(&s.name).unwrap()
}

/// Waits (bounded) until `check` holds; panics with `what` otherwise.
async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The device's unacknowledged to-device events (a sync without `since` acknowledges none).
async fn inbox(srv: &TestServer, dev: &Dev) -> Vec<Value> {
    let (status, body) = srv
        .get("/_matrix/client/v3/sync?timeout=0", Some(&dev.token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["to_device"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn send_to_device(srv: &TestServer, from: &Dev, txn: &str, messages: Value) {
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/sendToDevice/m.test/{txn}"),
            Some(&from.token),
            json!({ "messages": messages }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A `/send` body from `origin` with these EDUs.
fn txn_body(origin: &str, edus: Vec<Value>) -> Value {
    json!({
        "origin": origin,
        "origin_server_ts": 1_700_000_000_000u64,
        "pdus": [],
        "edus": edus,
    })
}

fn to_device_edu(sender: &str, message_id: &str, to: &str, n: u64) -> Value {
    json!({
        "edu_type": "m.direct_to_device",
        "content": {
            "sender": sender,
            "type": "m.test",
            "message_id": message_id,
            "messages": { to: { "*": { "n": n } } },
        },
    })
}

#[tokio::test]
async fn to_device_messages_reach_users_of_another_server() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let alice = Dev::register(a, "alice").await;
    let bob1 = Dev::register(b, "bob").await;
    let bob2 = Dev::login(b, "bob").await;

    // One device.
    send_to_device(
        a,
        &alice,
        "t1",
        json!({ &bob1.user: { &bob1.device: { "n": 1 } } }),
    )
    .await;
    wait_until(
        "bob's first device got the message",
        Duration::from_secs(30),
        || async { !inbox(b, &bob1).await.is_empty() },
    )
    .await;
    let got = inbox(b, &bob1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["sender"], json!(alice.user));
    assert_eq!(got[0]["type"], json!("m.test"));
    assert_eq!(got[0]["content"], json!({ "n": 1 }));
    assert!(inbox(b, &bob2).await.is_empty());

    // `*`: every device of the user.
    send_to_device(a, &alice, "t2", json!({ &bob1.user: { "*": { "n": 2 } } })).await;
    wait_until(
        "both of bob's devices got the message",
        Duration::from_secs(30),
        || async { inbox(b, &bob2).await.len() == 1 && inbox(b, &bob1).await.len() == 2 },
    )
    .await;
    assert_eq!(inbox(b, &bob2).await[0]["content"], json!({ "n": 2 }));
    // Delivered transactions leave nothing queued, and an idle destination no task.
    wait_until(
        "A's queue for B is empty",
        Duration::from_secs(10),
        || async { services(a).fed_queue.queued(&name(b), 10).unwrap() == 0 },
    )
    .await;
    wait_until(
        "A's delivery task for B ended",
        Duration::from_secs(10),
        || async { services(a).fed_sender.active_destinations() == 0 },
    )
    .await;
}

#[tokio::test]
async fn a_replayed_transaction_is_not_processed_again() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let bob = Dev::register(b, "bob").await;
    let alice = a.user_id("alice");
    let path = "/_matrix/federation/v1/send/replay-1";
    let first = txn_body(&a.name, vec![to_device_edu(&alice, "m1", &bob.user, 1)]);
    let (status, body) = a
        .signed(b, &b.name, Method::PUT, path, Some(first.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "pdus": {} }));
    // The same transaction again, then the same id with other content (a new message id, so
    // the to-device service's own deduplication would not stop it): the stored answer, and
    // nothing processed.
    let (status, again) = a.signed(b, &b.name, Method::PUT, path, Some(first)).await;
    assert_eq!((status, &again), (StatusCode::OK, &body));
    let other = txn_body(&a.name, vec![to_device_edu(&alice, "m2", &bob.user, 2)]);
    let (status, again) = a.signed(b, &b.name, Method::PUT, path, Some(other)).await;
    assert_eq!((status, &again), (StatusCode::OK, &body));
    let got = inbox(b, &bob).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["content"], json!({ "n": 1 }));

    // A new transaction repeating a message id of the same sender: delivered once only.
    let repeat = txn_body(&a.name, vec![to_device_edu(&alice, "m1", &bob.user, 3)]);
    let (status, _) = a
        .signed(
            b,
            &b.name,
            Method::PUT,
            "/_matrix/federation/v1/send/replay-2",
            Some(repeat),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(inbox(b, &bob).await.len(), 1);
}

#[tokio::test]
async fn forged_and_oversized_transactions() {
    let fed = start_many(3).await;
    let (a, b, c) = (&fed.servers[0], &fed.servers[1], &fed.servers[2]);
    let bob = Dev::register(b, "bob").await;
    let alice = a.user_id("alice");
    let carol = c.user_id("carol");

    // A sends an EDU about a user of C: dropped; A's own EDU in the same transaction lands.
    let body = txn_body(
        &a.name,
        vec![
            to_device_edu(&carol, "forged", &bob.user, 1),
            json!({"edu_type": "m.typing", "content": {
                "room_id": "!nowhere:example.org", "user_id": carol, "typing": true}}),
            json!({"edu_type": "m.presence", "content": {"push": [{
                "user_id": carol, "presence": "online", "last_active_ago": 0}]}}),
            to_device_edu(&alice, "real", &bob.user, 2),
        ],
    );
    let (status, answer) = a
        .signed(
            b,
            &b.name,
            Method::PUT,
            "/_matrix/federation/v1/send/f1",
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let got = inbox(b, &bob).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["sender"], json!(alice));
    assert!(services(b)
        .presence
        .get(&ruma::UserId::parse(&carol).unwrap())
        .unwrap()
        .is_none());

    // A transaction claiming another origin than the signing server.
    let body = txn_body(&c.name, vec![to_device_edu(&carol, "c1", &bob.user, 3)]);
    let (status, answer) = a
        .signed(
            b,
            &b.name,
            Method::PUT,
            "/_matrix/federation/v1/send/f2",
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_eq!(errcode(&answer), "M_FORBIDDEN");

    // More than 100 EDUs (or 50 PDUs): refused whole.
    let edus = (0..101)
        .map(|i| to_device_edu(&alice, &format!("x{i}"), &bob.user, i))
        .collect();
    let (status, answer) = a
        .signed(
            b,
            &b.name,
            Method::PUT,
            "/_matrix/federation/v1/send/f3",
            Some(txn_body(&a.name, edus)),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let mut body = txn_body(&a.name, vec![]);
    body["pdus"] = json!(vec![json!({}); 51]);
    let (status, answer) = a
        .signed(
            b,
            &b.name,
            Method::PUT,
            "/_matrix/federation/v1/send/f4",
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(inbox(b, &bob).await.len(), 1);
}

#[tokio::test]
async fn a_destination_that_was_down_gets_everything_once() {
    let mut fed = start_many(2).await;
    let alice = Dev::register(&fed.servers[0], "alice").await;
    let bob = Dev::register(&fed.servers[1], "bob").await;
    let b_name = name(&fed.servers[1]);
    fed.servers[1].stop().await;

    for n in 1..=3u64 {
        let messages = json!({ &bob.user: { "*": { "n": n } } });
        send_to_device(&fed.servers[0], &alice, &format!("d{n}"), messages).await;
    }
    let a = &fed.servers[0];
    wait_until("A failed to reach B", Duration::from_secs(30), || async {
        services(a)
            .fed_queue
            .destination_state(&b_name)
            .unwrap()
            .failures
            > 0
    })
    .await;
    let state = services(a).fed_queue.destination_state(&b_name).unwrap();
    assert!(state.retry_at_ms > 0, "{state:?}");
    assert_eq!(services(a).fed_queue.queued(&b_name, 10).unwrap(), 3);

    fed.servers[1].start_again().await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    // The next attempt (at most one backoff step away) delivers the backlog.
    wait_until(
        "bob got the three messages",
        Duration::from_secs(60),
        || async { inbox(b, &bob).await.len() >= 3 },
    )
    .await;
    let got: Vec<Value> = inbox(b, &bob)
        .await
        .iter()
        .map(|e| e["content"]["n"].clone())
        .collect();
    assert_eq!(got, vec![json!(1), json!(2), json!(3)]);
    wait_until(
        "A's queue for B is empty",
        Duration::from_secs(10),
        || async { services(a).fed_queue.queued(&b_name, 10).unwrap() == 0 },
    )
    .await;
    let state = services(a).fed_queue.destination_state(&b_name).unwrap();
    assert_eq!((state.failures, state.in_flight), (0, None));
}

#[tokio::test]
async fn a_transaction_from_a_backing_off_destination_resumes_delivery() {
    let mut fed = start_many(2).await;
    let alice = Dev::register(&fed.servers[0], "alice").await;
    let bob = Dev::register(&fed.servers[1], "bob").await;
    let b_name = name(&fed.servers[1]);
    fed.servers[1].stop().await;
    send_to_device(
        &fed.servers[0],
        &alice,
        "c1",
        json!({ &bob.user: { "*": { "n": 1 } } }),
    )
    .await;
    let a = &fed.servers[0];
    wait_until("A failed to reach B", Duration::from_secs(30), || async {
        services(a)
            .fed_queue
            .destination_state(&b_name)
            .unwrap()
            .failures
            > 0
    })
    .await;
    // As after many failures: the next attempt an hour away.
    let in_an_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 3_600_000;
    services(a)
        .fed_queue
        .transaction_failed(&b_name, in_an_hour)
        .await
        .unwrap();

    // B comes back and sends A something: A learns B is up and delivers at once.
    fed.servers[1].start_again().await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    send_to_device(b, &bob, "c2", json!({ &alice.user: { "*": { "n": 2 } } })).await;
    wait_until(
        "alice got bob's message",
        Duration::from_secs(30),
        || async { inbox(a, &alice).await.len() == 1 },
    )
    .await;
    wait_until(
        "bob got alice's queued message",
        Duration::from_secs(30),
        || async { inbox(b, &bob).await.len() == 1 },
    )
    .await;
    assert_eq!(inbox(b, &bob).await[0]["content"], json!({ "n": 1 }));
}

#[tokio::test]
async fn a_restart_resends_the_same_transaction() {
    let mut fed = start_many(2).await;
    let alice = Dev::register(&fed.servers[0], "alice").await;
    let bob = Dev::register(&fed.servers[1], "bob").await;
    let (a_name, b_name) = (name(&fed.servers[0]), name(&fed.servers[1]));
    fed.servers[1].stop().await;
    send_to_device(
        &fed.servers[0],
        &alice,
        "r1",
        json!({ &bob.user: { "*": { "n": 1 } } }),
    )
    .await;
    let a = &fed.servers[0];
    wait_until("A failed to reach B", Duration::from_secs(30), || async {
        services(a)
            .fed_queue
            .destination_state(&b_name)
            .unwrap()
            .failures
            > 0
    })
    .await;
    let in_flight = services(a)
        .fed_queue
        .destination_state(&b_name)
        .unwrap()
        .in_flight
        .expect("a transaction in flight");

    // A restarts with the transaction still in flight: same id, same items.
    fed.servers[0].restart().await;
    let a = &fed.servers[0];
    let after = services(a).fed_queue.destination_state(&b_name).unwrap();
    assert_eq!(after.in_flight.as_ref(), Some(&in_flight));

    // B is back, and gets the transaction as if A had sent it just before the restart and
    // never seen the answer; A's own retry then sends it again under the same id.
    fed.servers[1].start_again().await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (pdus, edus) = services(a)
        .fed_queue
        .transaction_body(&b_name, &in_flight)
        .unwrap();
    let mut request = send_transaction_message::v1::Request::new(
        in_flight.txn_id.clone().into(),
        a_name.clone(),
        MilliSecondsSinceUnixEpoch(UInt::new(in_flight.origin_server_ts).unwrap()),
    );
    request.pdus = pdus;
    request.edus = edus.into_iter().map(Raw::from_json).collect();
    services(a)
        .federation
        .send(&b_name, request)
        .await
        .expect("B takes the transaction");
    let seen = (a_name.to_string(), in_flight.txn_id.clone());
    assert!(services(b)
        .store
        .get::<InboundTxns>(&seen)
        .unwrap()
        .is_some());

    wait_until(
        "A's queue for B is empty",
        Duration::from_secs(60),
        || async { services(a).fed_queue.queued(&b_name, 10).unwrap() == 0 },
    )
    .await;
    let got = inbox(b, &bob).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["content"], json!({ "n": 1 }));
}

#[tokio::test]
async fn device_list_changes_are_announced_and_untracked_users_are_not_cached() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let alice = Dev::register(a, "alice").await;
    let alice_id = ruma::UserId::parse(&alice.user).unwrap();
    // Each new device is a device-list update of its own: the stream id follows.
    wait_until(
        "the first device is announced",
        Duration::from_secs(10),
        || async { services(a).fed_devices.local_stream_id(&alice_id).unwrap() == 1 },
    )
    .await;
    let _second = Dev::login(a, "alice").await;
    wait_until(
        "the second device is announced",
        Duration::from_secs(10),
        || async { services(a).fed_devices.local_stream_id(&alice_id).unwrap() == 2 },
    )
    .await;

    // B shares no room with Alice and never asked about her: her updates are not kept.
    let update = json!({"edu_type": "m.device_list_update", "content": {
        "user_id": alice.user, "device_id": "NEWDEVICE", "stream_id": 3, "prev_id": [2],
    }});
    let (status, _) = a
        .signed(
            b,
            &b.name,
            Method::PUT,
            "/_matrix/federation/v1/send/d1",
            Some(txn_body(&a.name, vec![update])),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(services(b).fed_devices.cached(&alice_id).unwrap().is_none());
}

#[tokio::test]
async fn remote_device_lists_follow_updates_and_resync_on_gaps() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let alice = Dev::register(a, "alice").await;
    alice.upload_device_keys(a).await;
    let alice_id = ruma::UserId::parse(&alice.user).unwrap();
    // Announced once no change of hers is waiting (two changes may make one round).
    let dirty = (alice.user.clone(),);
    wait_until(
        "the keys are announced",
        Duration::from_secs(10),
        || async {
            services(a)
                .store
                .get::<DeviceListDirty>(&dirty.0)
                .unwrap()
                .is_none()
        },
    )
    .await;
    let s = services(a).fed_devices.local_stream_id(&alice_id).unwrap();
    assert!(s >= 1);

    // B asks about Alice: fetched from A and cached, at A's stream id.
    let devices = services(b).fed_devices.devices_of(&alice_id).await.unwrap();
    assert_eq!(devices.stream_id, s);
    assert_eq!(
        devices.devices.keys().collect::<Vec<_>>(),
        vec![&alice.device]
    );

    // The next update (prev_id = what B has) applies to the cache.
    let send = |txn: &'static str, content: Value| {
        let body = txn_body(
            &a.name,
            vec![json!({"edu_type": "m.device_list_update", "content": content})],
        );
        async move {
            let path = format!("/_matrix/federation/v1/send/{txn}");
            let (status, answer) = a.signed(b, &b.name, Method::PUT, &path, Some(body)).await;
            assert_eq!(status, StatusCode::OK, "{answer}");
        }
    };
    send(
        "u1",
        json!({"user_id": alice.user, "device_id": "PHONE", "stream_id": s + 1, "prev_id": [s],
               "device_display_name": "Alice's phone"}),
    )
    .await;
    let cached = services(b).fed_devices.cached(&alice_id).unwrap().unwrap();
    assert_eq!(cached.stream_id, s + 1);
    assert_eq!(
        cached.devices["PHONE"].display_name.as_deref(),
        Some("Alice's phone")
    );
    // An old update is ignored; a deletion applies.
    send(
        "u2",
        json!({"user_id": alice.user, "device_id": "OLD", "stream_id": s, "prev_id": []}),
    )
    .await;
    send(
        "u3",
        json!({"user_id": alice.user, "device_id": "PHONE", "stream_id": s + 2,
               "prev_id": [s + 1], "deleted": true}),
    )
    .await;
    let cached = services(b).fed_devices.cached(&alice_id).unwrap().unwrap();
    assert_eq!(cached.stream_id, s + 2);
    assert_eq!(
        cached.devices.keys().collect::<Vec<_>>(),
        vec![&alice.device]
    );

    // A gap (B never saw s + 3 and s + 4): B fetches Alice's list again, and A's truth
    // replaces the cache (A's stream id, without the device named only in the update).
    send(
        "u4",
        json!({"user_id": alice.user, "device_id": "TABLET", "stream_id": s + 5,
               "prev_id": [s + 4]}),
    )
    .await;
    wait_until(
        "B resynced Alice's devices",
        Duration::from_secs(20),
        || async {
            services(b)
                .fed_devices
                .cached(&alice_id)
                .unwrap()
                .is_some_and(|c| c.stream_id == s)
        },
    )
    .await;
    let cached = services(b).fed_devices.cached(&alice_id).unwrap().unwrap();
    assert_eq!(
        cached.devices.keys().collect::<Vec<_>>(),
        vec![&alice.device]
    );

    // A signing-key update about a user of A from A: cached.
    let master = json!({"user_id": alice.user, "usage": ["master"],
                        "keys": {"ed25519:base64+master+key": "base64+master+key"}});
    let body = txn_body(
        &a.name,
        vec![json!({"edu_type": "m.signing_key_update",
                    "content": {"user_id": alice.user, "master_key": master}})],
    );
    let (status, _) = a
        .signed(
            b,
            &b.name,
            Method::PUT,
            "/_matrix/federation/v1/send/s1",
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let cached = services(b).fed_devices.cached(&alice_id).unwrap().unwrap();
    assert_eq!(cached.master_key, Some(master));
}

/// With a room shared through a remote join, a remote user's typing, read receipt and new
/// device reach the local member's `/sync`.
#[tokio::test]
async fn room_edus_of_a_remote_member_reach_local_syncs() {
    use crate::fed_pdus::events::{raw, EventSpec, Remote, RoomView};
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice_token, _) = a.register("alice", "password1").await;
    let room_id =
        crate::common::create_room(a, &alice_token, json!({"preset": "public_chat"})).await;
    let view = RoomView {
        services: services(a),
        room_id: room_id.clone(),
    };
    let remote = Remote::server(b);
    let bob = b.user_id("bob");
    let send = |txn: &'static str, pdus: Vec<Value>, edus: Vec<Value>| {
        let mut body = txn_body(&b.name, edus);
        body["pdus"] = json!(pdus);
        async move {
            let path = format!("/_matrix/federation/v1/send/{txn}");
            let (status, answer) = b.signed(a, &a.name, Method::PUT, &path, Some(body)).await;
            assert_eq!(status, StatusCode::OK, "{answer}");
        }
    };
    let as_json =
        |o: &ruma::CanonicalJsonObject| -> Value { serde_json::from_str(raw(o).get()).unwrap() };
    let (_, join) = view.event(
        &remote,
        EventSpec::state("m.room.member", &bob, &bob, json!({"membership": "join"})),
    );
    send("j1", vec![as_json(&join)], vec![]).await;
    let (message_id, message) = view.event(&remote, EventSpec::message(&bob, "hi"));
    send("m1", vec![as_json(&message)], vec![]).await;
    let (status, first) = a
        .get("/_matrix/client/v3/sync?timeout=0", Some(&alice_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let since = first["next_batch"].as_str().unwrap().to_owned();

    let edus = vec![
        json!({"edu_type": "m.typing", "content": {
            "room_id": room_id, "user_id": bob, "typing": true}}),
        json!({"edu_type": "m.receipt", "content": { &room_id: { "m.read": { &bob: {
            "data": {"ts": 1}, "event_ids": [message_id.as_str()]}}}}}),
        json!({"edu_type": "m.device_list_update", "content": {
            "user_id": bob, "device_id": "BOBPHONE", "stream_id": 1, "prev_id": []}}),
    ];
    send("e1", vec![], edus).await;
    let (status, next) = a
        .get(
            &format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
            Some(&alice_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{next}");
    let ephemeral = next["rooms"]["join"][&room_id]["ephemeral"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{next}"))
        .clone();
    let of_type = |t: &str| ephemeral.iter().find(|e| e["type"] == t).cloned();
    assert_eq!(
        of_type("m.typing").expect("typing")["content"]["user_ids"],
        json!([bob])
    );
    let receipt = of_type("m.receipt").expect("receipt");
    assert!(
        receipt["content"][message_id.as_str()]["m.read"]
            .get(&bob)
            .is_some(),
        "{receipt}"
    );
    let changed = next["device_lists"]["changed"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(changed.contains(&json!(bob)), "{next}");
}

/// Transactions are cut at 50 PDUs and 100 EDUs in queue order; the one in flight stays
/// the same until it is done; stale typing notifications are dropped, not sent.
#[tokio::test]
async fn transactions_carry_at_most_50_pdus_and_100_edus() {
    use hearth::service::federation::queue::{FedQueue, QueueItem};
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw-alice-123456").await;
    let services = srv.server.as_ref().unwrap().services.clone();
    let room = crate::common::create_room(&srv, &token, json!({})).await;
    let mut sids = Vec::new();
    for i in 0..55 {
        let (status, body) = srv
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t{i}"),
                Some(&token),
                json!({"msgtype": "m.text", "body": format!("{i}")}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let id = ruma::EventId::parse(body["event_id"].as_str().unwrap()).unwrap();
        sids.push(services.rooms.event_sid(&id).unwrap().unwrap());
    }
    // Queued by hand for a destination nobody wakes a sender for.
    let dest = ServerName::parse("unreachable.invalid").unwrap();
    let key = |pos: u64| (dest.to_string(), pos);
    let edu_item = |edu_type: &str, queued_ms: u64| QueueItem::Edu {
        edu_type: edu_type.to_owned(),
        json: json!({"edu_type": edu_type, "content": {}})
            .to_string()
            .into_bytes(),
        queued_ms,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut batch = hearth::store::Batch::new();
    let base = sids.last().unwrap() + 1_000;
    for sid in &sids {
        batch.put::<FedQueue>(&key(*sid), &QueueItem::Pdu);
    }
    batch.put::<FedQueue>(&key(base), &edu_item("m.typing", now - 60_000));
    for i in 1..=120 {
        batch.put::<FedQueue>(&key(base + i), &edu_item("m.presence", now));
    }
    services.store.commit(batch).await.unwrap();

    let (_, first) = services
        .fed_queue
        .next_transaction(&dest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.positions.len(), 150);
    assert_eq!(&first.positions[..50], &sids[..50]);
    assert_eq!(
        first.positions[50],
        base + 1,
        "the stale typing EDU is dropped"
    );
    let (pdus, edus) = services.fed_queue.transaction_body(&dest, &first).unwrap();
    assert_eq!((pdus.len(), edus.len()), (50, 100));
    // Asked again (a retry, or after a restart): the same transaction.
    let (_, again) = services
        .fed_queue
        .next_transaction(&dest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, first);

    services
        .fed_queue
        .transaction_done(&dest, &first)
        .await
        .unwrap();
    let (_, second) = services
        .fed_queue
        .next_transaction(&dest)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(second.txn_id, first.txn_id);
    let (pdus, edus) = services.fed_queue.transaction_body(&dest, &second).unwrap();
    assert_eq!((pdus.len(), edus.len()), (5, 20));
    services
        .fed_queue
        .transaction_done(&dest, &second)
        .await
        .unwrap();
    assert!(services
        .fed_queue
        .next_transaction(&dest)
        .await
        .unwrap()
        .is_none());
    assert_eq!(services.fed_queue.queued(&dest, 10).unwrap(), 0);
}

/// The body of a transaction's EDU.
fn edu(edu_type: &str, content: Value) -> Box<RawValue> {
    RawValue::from_string(json!({"edu_type": edu_type, "content": content}).to_string()).unwrap()
}

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Figure: inbound handling of transactions of 100 EDUs, in process (no HTTP, no X-Matrix:
/// the router's share is measured elsewhere). `cargo test --release --test it
/// fed_transactions::figure_inbound -- --ignored --nocapture`
#[tokio::test]
#[ignore]
async fn figure_inbound_100_edus() {
    let srv = TestServer::start().await;
    let (bob, _, _) = srv.register("bob", "pw-bob-123456").await;
    let services = srv.server.as_ref().unwrap().services.clone();
    let origin = ruma::ServerName::parse("remote.example").unwrap();
    for (label, kind) in [
        ("to-device", "m.direct_to_device"),
        ("unknown type", "x.custom"),
    ] {
        let rounds = 20;
        let start = Instant::now();
        for round in 0..rounds {
            let edus: Vec<_> = (0..100)
                .map(|i| {
                    edu(
                        kind,
                        json!({
                            "sender": "@alice:remote.example",
                            "type": "m.figure",
                            "message_id": format!("{round}-{i}"),
                            "messages": { &bob: { "*": { "n": i } } },
                        }),
                    )
                })
                .collect();
            receive::receive(
                &services,
                Transaction {
                    origin: &origin,
                    txn_id: &format!("{label}-{round}"),
                    body_origin: &origin,
                    pdus: &[],
                    edus: &edus,
                },
            )
            .await
            .unwrap();
        }
        let per_txn = start.elapsed() / rounds;
        println!(
            "inbound transaction of 100 {label} EDUs: {:?} per transaction, {:?} per EDU",
            per_txn,
            per_txn / 100
        );
    }
}

/// Figure: memory of the outbound queue per destination: none for an idle destination (no
/// task, no entry), and what a destination with queued items that is backing off costs.
/// `cargo test --release --test it fed_transactions::figure_queue_memory -- --ignored
/// --nocapture`
#[tokio::test]
#[ignore]
async fn figure_queue_memory() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw-alice-123456").await;
    let services = srv.server.as_ref().unwrap().services.clone();
    let destinations = 1000;
    let before = rss_kb();
    let messages: serde_json::Map<String, Value> = (0..destinations)
        .map(|i| (format!("@u:d{i}.invalid"), json!({ "*": { "n": i } })))
        .collect();
    let (status, body) = srv
        .put(
            "/_matrix/client/v3/sendToDevice/m.figure/t1",
            Some(&token),
            json!({ "messages": messages }),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let deadline = Instant::now() + Duration::from_secs(120);
    // Every destination fails once and backs off, its task sleeping.
    loop {
        let failed = (0..destinations)
            .filter(|i| {
                let name = ruma::ServerName::parse(format!("d{i}.invalid")).unwrap();
                services
                    .fed_queue
                    .destination_state(&name)
                    .is_ok_and(|s| s.failures > 0)
            })
            .count();
        if failed == destinations || Instant::now() > deadline {
            println!("{failed} of {destinations} destinations backing off");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = rss_kb();
    println!(
        "{} delivery tasks; RSS {} KiB -> {} KiB: about {} bytes per backing-off destination \
         (an idle destination has no task and no entry: 0 bytes)",
        services.fed_sender.active_destinations(),
        before,
        after,
        after.saturating_sub(before) * 1024 / destinations as u64
    );
}
