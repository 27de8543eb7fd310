//! Push delivery to a real HTTP push gateway that the test runs on loopback: what arrives for
//! a DM, a mention, a call, an encrypted message, a muted room and a receipt; retries with
//! backoff; delivery after a restart; a rejected pushkey; the outbound IP policy.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::common::{create_room, enc, join, TestServer};

/// A push gateway: records every `/notify` body, answers from a script (then 200 `{"rejected":
/// []}`).
#[derive(Clone)]
pub(crate) struct Gateway {
    addr: SocketAddr,
    /// When each request came, its body, and the status it was answered with.
    received: Arc<Mutex<Vec<(Instant, Value, u16)>>>,
    script: Arc<Mutex<VecDeque<(u16, Value)>>>,
}

impl Gateway {
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = Gateway {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            script: Arc::default(),
        };
        let shared = gateway.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(shared.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        gateway
    }

    async fn handle(&self, req: http::Request<Incoming>) -> http::Response<Full<Bytes>> {
        let path_ok = req.uri().path() == "/_matrix/push/v1/notify";
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let (status, answer) = if path_ok {
            self.script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or((200, json!({"rejected": []})))
        } else {
            (404, json!({"errcode": "M_UNRECOGNIZED"}))
        };
        self.received
            .lock()
            .unwrap()
            .push((Instant::now(), body, status));
        http::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(answer.to_string())))
            .unwrap()
    }

    pub(crate) fn url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/_matrix/push/v1/notify",
            self.addr.port()
        )
    }

    fn answer(&self, status: u16, body: Value) {
        self.script.lock().unwrap().push_back((status, body));
    }

    /// The notification bodies received so far.
    pub(crate) fn notifications(&self) -> Vec<Value> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(_, body, _)| body["notification"].clone())
            .collect()
    }

    /// Waits (at most 10 s) until `count` requests arrived; returns all received.
    pub(crate) async fn wait_for(&self, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.notifications();
            if got.len() >= count || Instant::now() > deadline {
                assert!(got.len() >= count, "expected {count} pushes, got {got:#?}");
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the notification about `event_id`.
    pub(crate) async fn wait_for_event(&self, event_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(n) = self
                .notifications()
                .into_iter()
                .find(|n| n["event_id"] == event_id)
            {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "no push for {event_id}: {:#?}",
                self.notifications()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub(crate) async fn set_pusher(srv: &TestServer, token: &str, pushkey: &str, data: Value) {
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/pushers/set",
            Some(token),
            json!({
                "kind": "http",
                "app_id": "org.example.app",
                "pushkey": pushkey,
                "app_display_name": "Example",
                "device_display_name": "Phone",
                "lang": "en",
                "data": data,
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn send(srv: &TestServer, token: &str, room: &str, kind: &str, content: Value) -> String {
    let txn = format!("t{}", rand_id());
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/{kind}/{txn}", enc(room)),
            Some(token),
            content,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

async fn text(srv: &TestServer, token: &str, room: &str, body: &str) -> String {
    send(
        srv,
        token,
        room,
        "m.room.message",
        json!({"msgtype": "m.text", "body": body}),
    )
    .await
}

/// A direct chat: `inviter` creates it and invites `invitee`, who joins.
async fn dm(srv: &TestServer, inviter: &str, invitee: &str, invitee_id: &str) -> String {
    let room = create_room(
        srv,
        inviter,
        json!({"preset": "trusted_private_chat", "is_direct": true, "invite": [invitee_id]}),
    )
    .await;
    join(srv, invitee, &room).await;
    room
}

#[tokio::test]
async fn gateway_receives_dm_mention_call_and_encrypted_notifications() {
    let srv = TestServer::start().await;
    let gateway = Gateway::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let (_, carol, _) = srv.register("carol", "pw").await;
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&bob_id)),
            Some(&bob),
            json!({"displayname": "Bobby"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    set_pusher(
        &srv,
        &alice,
        "alice-phone",
        json!({"url": gateway.url(), "custom": "kept"}),
    )
    .await;

    // A direct message: the one-to-one rule, with a sound, so high priority.
    let room = dm(&srv, &bob, &alice, &alice_id).await;
    let message = text(&srv, &bob, &room, "hi alice").await;
    let n = gateway.wait_for_event(&message).await;
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["type"], "m.room.message");
    assert_eq!(n["sender"], bob_id.as_str());
    assert_eq!(n["sender_display_name"], "Bobby");
    assert_eq!(n["content"]["body"], "hi alice");
    assert_eq!(n["prio"], "high");
    assert_eq!(n["counts"]["unread"], 1);
    let device = &n["devices"][0];
    assert_eq!(device["app_id"], "org.example.app");
    assert_eq!(device["pushkey"], "alice-phone");
    assert_eq!(device["data"], json!({"custom": "kept"}), "url is not sent");
    assert!(device["pushkey_ts"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(device["tweaks"]["sound"], "default");
    assert_eq!(n["devices"].as_array().unwrap().len(), 1);

    // A call invite rings: high priority, a missed call in the counts.
    let call = send(
        &srv,
        &bob,
        &room,
        "m.call.invite",
        json!({"call_id": "c1", "version": "1", "lifetime": 60000,
               "offer": {"type": "offer", "sdp": "v=0"}}),
    )
    .await;
    let n = gateway.wait_for_event(&call).await;
    assert_eq!(n["type"], "m.call.invite");
    assert_eq!(n["prio"], "high");
    assert_eq!(n["devices"][0]["tweaks"]["sound"], "ring");
    assert_eq!(n["counts"], json!({"unread": 2, "missed_calls": 1}));

    // A group room: a plain message is low priority without tweaks; a mention highlights.
    let group = create_room(
        &srv,
        &carol,
        json!({"preset": "public_chat", "name": "Family"}),
    )
    .await;
    join(&srv, &alice, &group).await;
    join(&srv, &bob, &group).await;
    let plain = text(&srv, &carol, &group, "dinner at 7").await;
    let n = gateway.wait_for_event(&plain).await;
    assert_eq!(n["prio"], "low");
    assert_eq!(n["room_name"], "Family");
    assert_eq!(n["devices"][0]["tweaks"], json!({}));
    let mention = send(
        &srv,
        &carol,
        &group,
        "m.room.message",
        json!({"msgtype": "m.text", "body": "alice?", "m.mentions": {"user_ids": [alice_id]}}),
    )
    .await;
    let n = gateway.wait_for_event(&mention).await;
    assert_eq!(n["prio"], "high");
    assert_eq!(n["devices"][0]["tweaks"]["highlight"], true);
    assert_eq!(n["counts"]["unread"], 4);

    // An encrypted message: the server cannot read it, the encrypted rule notifies.
    let encrypted = send(
        &srv,
        &carol,
        &group,
        "m.room.encrypted",
        json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgA", "sender_key": "k",
               "session_id": "s", "device_id": "D"}),
    )
    .await;
    let n = gateway.wait_for_event(&encrypted).await;
    assert_eq!(n["type"], "m.room.encrypted");
    assert_eq!(n["prio"], "high");

    // A muted room notifies nothing: the next push after it is the DM's.
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&group)),
            Some(&alice),
            json!({"actions": []}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let muted = text(&srv, &carol, &group, "muted").await;
    let after = text(&srv, &bob, &room, "after the muted one").await;
    gateway.wait_for_event(&after).await;
    assert!(
        gateway
            .notifications()
            .iter()
            .all(|n| n["event_id"] != muted.as_str()),
        "{:#?}",
        gateway.notifications()
    );
    // Bob and Carol have no pusher; only Alice's notifications were sent.
    assert!(gateway
        .notifications()
        .iter()
        .all(|n| n["devices"][0]["pushkey"] == "alice-phone"));
}

#[tokio::test]
async fn event_id_only_pushers_get_ids_and_counts_only() {
    let srv = TestServer::start().await;
    let gateway = Gateway::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    set_pusher(
        &srv,
        &alice,
        "ids-only",
        json!({"url": gateway.url(), "format": "event_id_only"}),
    )
    .await;
    let room = dm(&srv, &bob, &alice, &alice_id).await;
    let message = text(&srv, &bob, &room, "secret words").await;
    let n = gateway.wait_for_event(&message).await;
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["counts"]["unread"], 1);
    assert_eq!(n["devices"][0]["data"], json!({"format": "event_id_only"}));
    for absent in ["content", "sender", "type", "sender_display_name"] {
        assert!(n.get(absent).is_none(), "{absent} in {n}");
    }
}

#[tokio::test]
async fn a_receipt_lowers_the_badge() {
    let srv = TestServer::start().await;
    let gateway = Gateway::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    set_pusher(&srv, &alice, "phone", json!({"url": gateway.url()})).await;
    let room = dm(&srv, &bob, &alice, &alice_id).await;
    text(&srv, &bob, &room, "one").await;
    let second = text(&srv, &bob, &room, "two").await;
    let n = gateway.wait_for_event(&second).await;
    assert_eq!(n["counts"]["unread"], 2);
    let before = gateway.notifications().len();

    let (status, body) = srv
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&room),
                enc(&second)
            ),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let got = gateway.wait_for(before + 1).await;
    let badge = &got[before];
    assert!(badge.get("event_id").is_none(), "{badge}");
    assert_eq!(badge["counts"]["unread"], 0);
    assert_eq!(badge["prio"], "low");
    assert_eq!(badge["devices"][0]["pushkey"], "phone");
}

#[tokio::test]
async fn a_failing_gateway_gets_the_notification_once_after_backoff() {
    let srv = TestServer::start().await;
    let gateway = Gateway::start().await;
    gateway.answer(500, json!({"error": "try later"}));
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    // Set after the invite: a pusher only gets what notified after it was created.
    let room = dm(&srv, &bob, &alice, &alice_id).await;
    set_pusher(&srv, &alice, "phone", json!({"url": gateway.url()})).await;
    let message = text(&srv, &bob, &room, "are you there").await;

    gateway.wait_for(2).await;
    // Nothing more comes: the 200 was the end of it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let received = gateway.received.lock().unwrap().clone();
    assert_eq!(received.len(), 2, "{received:#?}");
    for (_, body, _) in &received {
        assert_eq!(body["notification"]["event_id"], message.as_str());
    }
    assert_eq!((received[0].2, received[1].2), (500, 200));
    let waited = received[1].0 - received[0].0;
    assert!(
        waited >= Duration::from_millis(900),
        "retried after {waited:?}"
    );
}

#[tokio::test]
async fn notifications_queued_before_a_restart_are_delivered_after_it() {
    let mut srv = TestServer::start().await;
    let gateway = Gateway::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let room = dm(&srv, &bob, &alice, &alice_id).await;
    set_pusher(&srv, &alice, "phone", json!({"url": gateway.url()})).await;
    // The gateway fails everything for now.
    for _ in 0..50 {
        gateway.answer(503, json!({}));
    }
    let message = text(&srv, &bob, &room, "while it was down").await;
    gateway.wait_for(1).await;
    srv.restart().await;
    gateway.script.lock().unwrap().clear();
    let n = gateway.wait_for_event(&message).await;
    assert_eq!(n["counts"]["unread"], 1);
    // Delivered once: later messages follow without a resend of it.
    let next = text(&srv, &bob, &room, "back").await;
    gateway.wait_for_event(&next).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = gateway.received.lock().unwrap().clone();
    let accepted: Vec<&Value> = received
        .iter()
        .filter(|(_, _, status)| *status == 200)
        .map(|(_, body, _)| &body["notification"]["event_id"])
        .collect();
    assert_eq!(accepted, [&json!(message), &json!(next)], "{received:#?}");
}

#[tokio::test]
async fn a_rejected_pushkey_removes_the_pusher() {
    let srv = TestServer::start().await;
    let gateway = Gateway::start().await;
    gateway.answer(200, json!({"rejected": ["stale-key"]}));
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let room = dm(&srv, &bob, &alice, &alice_id).await;
    set_pusher(&srv, &alice, "stale-key", json!({"url": gateway.url()})).await;
    text(&srv, &bob, &room, "hello").await;
    gateway.wait_for(1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = srv.get("/_matrix/client/v3/pushers", Some(&alice)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["pushers"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "pusher still there: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing is sent to it any more.
    text(&srv, &bob, &room, "again").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gateway.notifications().len(), 1);
}

#[tokio::test]
async fn the_outbound_policy_keeps_pushes_off_refused_addresses() {
    // The default policy: loopback is refused.
    let srv = TestServer::start_with(|c| c.outbound.allow_networks.clear()).await;
    let gateway = Gateway::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    set_pusher(&srv, &alice, "phone", json!({"url": gateway.url()})).await;
    let room = dm(&srv, &bob, &alice, &alice_id).await;
    text(&srv, &bob, &room, "hello").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(gateway.notifications().is_empty());
}

/// Delivery across rooms: each notification is pushed once, in order, whichever of the
/// user's rooms it is in, also after everything in one room was read and that room has
/// nothing unread left.
#[tokio::test]
async fn notifications_of_several_rooms_are_pushed_once_each_in_order() {
    let srv = TestServer::start().await;
    let gateway = Gateway::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let first = dm(&srv, &bob, &alice, &alice_id).await;
    let second = dm(&srv, &bob, &alice, &alice_id).await;
    set_pusher(&srv, &alice, "phone", json!({"url": gateway.url()})).await;
    let mut sent = Vec::new();
    for (i, room) in [&first, &second, &first, &second].into_iter().enumerate() {
        let id = text(&srv, &bob, room, &format!("m{i}")).await;
        gateway.wait_for_event(&id).await;
        sent.push(id);
    }
    // Alice reads the first room: it has nothing unread any more.
    let (status, body) = srv
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&first),
                enc(&sent[2])
            ),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for room in [&second, &first] {
        let id = text(&srv, &bob, room, "later").await;
        gateway.wait_for_event(&id).await;
        sent.push(id);
    }
    // Every event pushed once, in the order sent (badge-only pushes have no event id).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pushed: Vec<String> = gateway
        .notifications()
        .iter()
        .filter_map(|n| n["event_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(pushed, sent);
}
