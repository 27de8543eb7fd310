//! Ephemeral and device traffic of a room shared by two real Hearth servers after a real
//! federation join (a user of B joins A's room through the client API): typing and read
//! receipts both ways (private receipts stay home), presence to servers sharing a room only,
//! device-list changes and leaves, to-device messages, and a server ACL dropping a denied
//! server's typing and receipts.
//!
//! Absence is proven with a fence: after the thing that must not arrive, the same sender sends
//! a to-device message, which travels in the same ordered outbound queue; once it has arrived,
//! anything staged before it has been delivered (or dropped) too.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{enc, TestServer};
use crate::e2ee::Dev;
use crate::fed_common::{start_many, Fed, FedServer};

/// A sync token for "now" on `srv`.
async fn since_now(srv: &TestServer, token: &str) -> String {
    let (status, body) = srv
        .get("/_matrix/client/v3/sync?timeout=0", Some(token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["next_batch"].as_str().unwrap().to_owned()
}

/// Long-polls /sync from `since` (advancing it) until `found` picks something out of a
/// response. Bounded: 20 s, polls of at most 1 s.
async fn sync_until<T>(
    srv: &FedServer,
    token: &str,
    since: &mut String,
    what: &str,
    found: impl Fn(&Value) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    for _ in 0..200 {
        let (status, body) = srv
            .get(
                &format!("/_matrix/client/v3/sync?timeout=1000&since={since}"),
                Some(token),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        *since = body["next_batch"].as_str().unwrap().to_owned();
        if let Some(t) = found(&body) {
            return t;
        }
        if Instant::now() > deadline {
            break;
        }
    }
    panic!("{what} never showed on {}", srv.name);
}

/// The `m.typing` user ids of `room` in a sync response, if it carries them.
fn typing_users(sync: &Value, room: &str) -> Option<Vec<String>> {
    sync["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == "m.typing")
        .map(|e| {
            e["content"]["user_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u.as_str().unwrap().to_owned())
                .collect()
        })
}

/// The merged `m.receipt` content of `room` in a sync response.
fn receipts(sync: &Value, room: &str) -> Value {
    let mut all = serde_json::Map::new();
    for e in sync["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.receipt")
    {
        for (k, v) in e["content"].as_object().unwrap() {
            all.insert(k.clone(), v.clone());
        }
    }
    Value::Object(all)
}

async fn set_typing(srv: &FedServer, dev: &Dev, room: &str, typing: bool) {
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/typing/{}",
                enc(room),
                enc(&dev.user)
            ),
            Some(&dev.token),
            json!({"typing": typing, "timeout": 30000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn send_receipt(srv: &FedServer, dev: &Dev, room: &str, kind: &str, event: &str) {
    let (status, body) = srv
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/{kind}/{}",
                enc(room),
                enc(event)
            ),
            Some(&dev.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn send_text(srv: &FedServer, dev: &Dev, room: &str, txn: &str, text: &str) -> String {
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                enc(room)
            ),
            Some(&dev.token),
            json!({"msgtype": "m.text", "body": text}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

/// Sends a to-device message `{"n": n}` from `from` to `to`'s device.
async fn to_device(srv: &FedServer, from: &Dev, to: &Dev, n: u64) {
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/sendToDevice/org.example.fence/edus{n}"),
            Some(&from.token),
            json!({"messages": {&to.user: {&to.device: {"n": n}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Waits for the to-device message `n` (see [`to_device`]) on `srv`; returns that sync.
async fn wait_to_device(srv: &FedServer, dev: &Dev, since: &mut String, n: u64) -> Value {
    sync_until(srv, &dev.token, since, "a to-device message", |s| {
        s["to_device"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["type"] == "org.example.fence" && e["content"]["n"] == n)
            .then(|| s.clone())
    })
    .await
}

/// Alice of A creates a public room (encrypted or not); Bob of B joins it through A with the
/// client API. Returns once A has Bob's join.
async fn joined(a: &FedServer, b: &FedServer, encrypted: bool) -> (String, Dev, Dev) {
    let alice = Dev::register(a, "alice").await;
    let bob = Dev::register(b, "bob").await;
    let mut body = json!({"preset": "public_chat"});
    if encrypted {
        body["initial_state"] = json!([{"type": "m.room.encryption", "state_key": "",
            "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]);
    }
    let room = crate::common::create_room(a, &alice.token, body).await;
    let (status, body) = b
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(&room),
                enc(&a.name)
            ),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, member) = a
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                    enc(&room),
                    enc(&bob.user)
                ),
                Some(&alice.token),
            )
            .await;
        if status == StatusCode::OK && member["membership"] == "join" {
            break;
        }
        assert!(Instant::now() < deadline, "A never saw Bob join");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (room, alice, bob)
}

#[tokio::test]
async fn typing_and_receipts_cross_both_ways_until_an_acl_denies_the_server() {
    let fed: Fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (room, alice, bob) = joined(a, b, false).await;
    let mut a_since = since_now(a, &alice.token).await;
    let mut b_since = since_now(b, &bob.token).await;

    // Typing on A shows on B, and stops.
    set_typing(a, &alice, &room, true).await;
    sync_until(b, &bob.token, &mut b_since, "Alice typing", |s| {
        typing_users(s, &room).filter(|u| u.contains(&alice.user))
    })
    .await;
    set_typing(a, &alice, &room, false).await;
    sync_until(b, &bob.token, &mut b_since, "Alice stopping", |s| {
        typing_users(s, &room).filter(|u| !u.contains(&alice.user))
    })
    .await;
    // And the other way round.
    set_typing(b, &bob, &room, true).await;
    sync_until(a, &alice.token, &mut a_since, "Bob typing", |s| {
        typing_users(s, &room).filter(|u| u.contains(&bob.user))
    })
    .await;
    set_typing(b, &bob, &room, false).await;
    sync_until(a, &alice.token, &mut a_since, "Bob stopping", |s| {
        typing_users(s, &room).filter(|u| !u.contains(&bob.user))
    })
    .await;

    // A read receipt by Bob on Alice's message shows on A.
    let first = send_text(a, &alice, &room, "m1", "first").await;
    let second = send_text(a, &alice, &room, "m2", "second").await;
    sync_until(b, &bob.token, &mut b_since, "Alice's second message", |s| {
        s["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["event_id"] == second.as_str())
            .then_some(())
    })
    .await;
    send_receipt(b, &bob, &room, "m.read", &first).await;
    sync_until(a, &alice.token, &mut a_since, "Bob's receipt", |s| {
        let r = receipts(s, &room);
        r[&first]["m.read"][&bob.user]["ts"].as_u64()
    })
    .await;
    // A private receipt stays on B: after it, a fence; A never shows a receipt of Bob's on
    // the second message.
    send_receipt(b, &bob, &room, "m.read.private", &second).await;
    to_device(b, &bob, &alice, 1).await;
    let mut seen = Vec::new();
    let fence_since = a_since.clone();
    let mut probe = fence_since.clone();
    seen.push(wait_to_device(a, &alice, &mut probe, 1).await);
    let (_, whole) = a
        .get(
            &format!("/_matrix/client/v3/sync?timeout=0&since={fence_since}"),
            Some(&alice.token),
        )
        .await;
    seen.push(whole);
    for s in &seen {
        let r = receipts(s, &room);
        assert!(r.get(&second).is_none(), "a private receipt left B: {r}");
    }
    a_since = probe;
    // Alice's receipt on Bob's message shows on B.
    let from_bob = send_text(b, &bob, &room, "m3", "from bob").await;
    sync_until(a, &alice.token, &mut a_since, "Bob's message", |s| {
        s["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["event_id"] == from_bob.as_str())
            .then_some(())
    })
    .await;
    send_receipt(a, &alice, &room, "m.read", &from_bob).await;
    sync_until(b, &bob.token, &mut b_since, "Alice's receipt", |s| {
        receipts(s, &room)[&from_bob]["m.read"][&alice.user]["ts"].as_u64()
    })
    .await;

    // An ACL allowing only A's name: ACLs match hosts without the port, so it matches no
    // server and denies B (every test server shares the host 127.0.0.1, so B cannot be denied
    // alone). B's typing and receipts are then dropped on A; A's own client keeps working.
    let (status, body) = a
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.server_acl/",
                enc(&room)
            ),
            Some(&alice.token),
            json!({"allow": [a.name], "deny": [], "allow_ip_literals": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let acl_id = body["event_id"].as_str().unwrap().to_owned();
    sync_until(b, &bob.token, &mut b_since, "the ACL", |s| {
        s["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["event_id"] == acl_id.as_str())
            .then_some(())
    })
    .await;
    let before = a_since.clone();
    set_typing(b, &bob, &room, true).await;
    send_receipt(b, &bob, &room, "m.read", &second).await;
    to_device(b, &bob, &alice, 2).await;
    let mut probe = before.clone();
    let fenced = wait_to_device(a, &alice, &mut probe, 2).await;
    let (_, whole) = a
        .get(
            &format!("/_matrix/client/v3/sync?timeout=0&since={before}"),
            Some(&alice.token),
        )
        .await;
    for s in [&fenced, &whole] {
        assert!(
            typing_users(s, &room).is_none_or(|u| !u.contains(&bob.user)),
            "typing from a denied server: {s}"
        );
        assert!(
            receipts(s, &room).get(&second).is_none(),
            "a receipt from a denied server: {s}"
        );
    }
}

#[tokio::test]
async fn presence_reaches_servers_sharing_a_room_only() {
    let fed = start_many(3).await;
    let (a, b, c) = (&fed.servers[0], &fed.servers[1], &fed.servers[2]);
    let (_room, alice, bob) = joined(a, b, false).await;
    let carol = Dev::register(c, "carol").await;
    let mut b_since = since_now(b, &bob.token).await;
    let mut c_since = since_now(c, &carol.token).await;

    let (status, body) = a
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&alice.user)),
            Some(&alice.token),
            json!({"presence": "online", "status_msg": "by the hearth"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let event = sync_until(b, &bob.token, &mut b_since, "Alice's presence", |s| {
        s["presence"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["sender"] == alice.user.as_str() && e["content"]["status_msg"].is_string())
            .cloned()
    })
    .await;
    assert_eq!(event["type"], "m.presence");
    assert_eq!(event["content"]["presence"], "online", "{event}");
    assert_eq!(event["content"]["status_msg"], "by the hearth", "{event}");
    let (status, body) = b
        .get(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&alice.user)),
            Some(&bob.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["presence"], "online", "{body}");
    assert_eq!(body["status_msg"], "by the hearth", "{body}");

    // C shares no room with Alice: after a fence from Alice, C knows nothing of her status.
    to_device(a, &alice, &carol, 1).await;
    let fenced = wait_to_device(c, &carol, &mut c_since, 1).await;
    assert!(
        !fenced["presence"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["sender"] == alice.user.as_str()),
        "{fenced}"
    );
    let c_services = &c.server.as_ref().unwrap().services;
    let user = ruma::UserId::parse(&alice.user).unwrap();
    let known = c_services.presence.get(&user).unwrap();
    assert!(
        known
            .as_ref()
            .is_none_or(|p| p.status_msg.as_deref() != Some("by the hearth")),
        "C got Alice's presence without sharing a room"
    );
    let (status, body) = c
        .get(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&alice.user)),
            Some(&carol.token),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

#[tokio::test]
async fn device_lists_and_to_device_follow_a_shared_encrypted_room() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (room, alice, bob) = joined(a, b, true).await;
    alice.upload_device_keys(a).await;
    bob.upload_device_keys(b).await;
    let mut b_since = since_now(b, &bob.token).await;

    // Alice adds a device and uploads its keys: Bob sees her in `changed`, and B's query
    // returns the new device.
    let phone = Dev::login(a, "alice").await;
    phone.upload_device_keys(a).await;
    sync_until(b, &bob.token, &mut b_since, "Alice's device change", |s| {
        s["device_lists"]["changed"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|u| u == alice.user.as_str())
            .then_some(())
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = crate::e2ee::query(b, &bob.token, json!({ &alice.user: [] })).await;
        let devices = &body["device_keys"][&alice.user];
        if devices.get(&phone.device).is_some() {
            assert_eq!(devices[&phone.device]["keys"], phone.device_keys()["keys"]);
            assert_eq!(
                devices[&phone.device]["signatures"],
                phone.device_keys()["signatures"]
            );
            assert!(devices.get(&alice.device).is_some(), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B's query never had the new device: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // To-device from A to B and back after the join.
    let mut a_since = since_now(a, &alice.token).await;
    to_device(a, &alice, &bob, 7).await;
    wait_to_device(b, &bob, &mut b_since, 7).await;
    to_device(b, &bob, &phone, 8).await;
    wait_to_device(a, &phone, &mut a_since, 8).await;

    // Alice leaves the only room shared with Bob: Bob sees her in `left`.
    let (status, body) = a
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    sync_until(
        b,
        &bob.token,
        &mut b_since,
        "Alice in device_lists.left",
        |s| {
            s["device_lists"]["left"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|u| u == alice.user.as_str())
                .then_some(())
        },
    )
    .await;
}
