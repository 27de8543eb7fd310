//! Send-to-device messaging: delivery to one or all devices, idempotent transactions,
//! acknowledgement, persistence across a restart, and what is dropped.
//!
//! The inbox is read as clients read it: `GET /sync` (`to_device.events`), whose `since`
//! token acknowledges what the previous response delivered.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{
    common::{errcode, TestServer},
    e2ee::Dev,
};

/// One `/sync` of the device (no wait): its to-device events and the next batch token.
async fn sync(srv: &TestServer, dev: &Dev, since: Option<&str>) -> (Vec<Value>, String) {
    let path = match since {
        Some(since) => format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
        None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
    };
    let (status, body) = srv.get(&path, Some(&dev.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let events = body["to_device"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("to_device.events in {body}"))
        .clone();
    let next = body["next_batch"].as_str().expect("next_batch").to_owned();
    (events, next)
}

/// The device's to-device events in a `/sync` from `since` (an initial sync with `None`).
async fn inbox(srv: &TestServer, dev: &Dev, since: Option<&str>) -> Vec<Value> {
    sync(srv, dev, since).await.0
}

async fn send(srv: &TestServer, from: &Dev, kind: &str, txn: &str, messages: Value) {
    let (status, body) = send_raw(srv, from, kind, txn, messages).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
}

async fn send_raw(
    srv: &TestServer,
    from: &Dev,
    kind: &str,
    txn: &str,
    messages: Value,
) -> (StatusCode, Value) {
    srv.put(
        &format!("/_matrix/client/v3/sendToDevice/{kind}/{txn}"),
        Some(&from.token),
        json!({ "messages": messages }),
    )
    .await
}

#[tokio::test]
async fn messages_reach_the_addressed_devices() {
    let srv = TestServer::start().await;
    let alice = Dev::register(&srv, "alice").await;
    let bob = Dev::register(&srv, "bob").await;
    let bob2 = Dev::login(&srv, "bob").await;

    send(
        &srv,
        &alice,
        "m.room_key_request",
        "t1",
        json!({ &bob.user: { &bob.device: {"action": "request", "n": 1} } }),
    )
    .await;
    assert_eq!(
        inbox(&srv, &bob, None).await,
        vec![json!({
            "type": "m.room_key_request",
            "sender": alice.user,
            "content": {"action": "request", "n": 1},
        })]
    );
    assert!(inbox(&srv, &bob2, None).await.is_empty());
    assert!(inbox(&srv, &alice, None).await.is_empty());

    // `*`: every device of the user; an explicit device keeps its own content.
    send(
        &srv,
        &alice,
        "m.dummy",
        "t2",
        json!({ &bob.user: { "*": {"to": "all"}, &bob2.device: {"to": "bob2"} } }),
    )
    .await;
    let contents = |events: Vec<Value>| -> Vec<Value> {
        events.into_iter().map(|m| m["content"].clone()).collect()
    };
    assert_eq!(
        contents(inbox(&srv, &bob, None).await)[1],
        json!({"to": "all"})
    );
    assert_eq!(
        contents(inbox(&srv, &bob2, None).await),
        vec![json!({"to": "bob2"})]
    );
}

#[tokio::test]
async fn transaction_ids_make_sends_idempotent() {
    let srv = TestServer::start().await;
    let alice = Dev::register(&srv, "alice").await;
    let alice2 = Dev::login(&srv, "alice").await;
    let bob = Dev::register(&srv, "bob").await;
    let message = json!({ &bob.user: { &bob.device: {"n": 1} } });

    send(&srv, &alice, "m.dummy", "same", message.clone()).await;
    send(&srv, &alice, "m.dummy", "same", message.clone()).await;
    assert_eq!(inbox(&srv, &bob, None).await.len(), 1);
    // Concurrent retries too.
    let retries = (0..5).map(|_| send(&srv, &alice, "m.dummy", "concurrent", message.clone()));
    futures_util::future::join_all(retries).await;
    assert_eq!(inbox(&srv, &bob, None).await.len(), 2);
    // Another transaction id, or the same id from another device, is another message.
    send(&srv, &alice, "m.dummy", "other", message.clone()).await;
    send(&srv, &alice2, "m.dummy", "same", message.clone()).await;
    assert_eq!(inbox(&srv, &bob, None).await.len(), 4);
}

#[tokio::test]
async fn messages_stay_until_acknowledged_and_survive_a_restart() {
    let mut srv = TestServer::start().await;
    let alice = Dev::register(&srv, "alice").await;
    let bob = Dev::register(&srv, "bob").await;

    for n in 0..3 {
        send(
            &srv,
            &alice,
            "m.dummy",
            &format!("t{n}"),
            json!({ &bob.user: { &bob.device: {"n": n} } }),
        )
        .await;
    }
    srv.restart().await;
    let delivered = inbox(&srv, &bob, None).await;
    assert_eq!(
        delivered
            .iter()
            .map(|m| m["content"]["n"].clone())
            .collect::<Vec<_>>(),
        vec![json!(0), json!(1), json!(2)]
    );

    // The next sync, from the first one's token, acknowledges those three: they are not
    // delivered again, also across another restart; a message sent meanwhile is.
    let (_, first) = sync(&srv, &bob, None).await;
    send(
        &srv,
        &alice,
        "m.dummy",
        "t3",
        json!({ &bob.user: { &bob.device: {"n": 3} } }),
    )
    .await;
    let (rest, second) = sync(&srv, &bob, Some(&first)).await;
    assert_eq!(
        rest.iter()
            .map(|m| m["content"]["n"].clone())
            .collect::<Vec<_>>(),
        vec![json!(3)]
    );
    srv.restart().await;
    // Retrying the same `since` (the client lost the response) delivers it again…
    let again = inbox(&srv, &bob, Some(&first)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["content"]["n"], 3);
    assert_eq!(inbox(&srv, &bob, None).await.len(), 1);
    // …until a sync from the later token acknowledges it.
    assert!(inbox(&srv, &bob, Some(&second)).await.is_empty());
    assert!(inbox(&srv, &bob, None).await.is_empty());
    // A retried send after the restart is still recognised.
    send(
        &srv,
        &alice,
        "m.dummy",
        "t0",
        json!({ &bob.user: { &bob.device: {"n": 0} } }),
    )
    .await;
    assert!(inbox(&srv, &bob, None).await.is_empty());
}

#[tokio::test]
async fn unknown_remote_and_deleted_recipients() {
    let srv = TestServer::start().await;
    let alice = Dev::register(&srv, "alice").await;
    let bob = Dev::register(&srv, "bob").await;
    let bob2 = Dev::login(&srv, "bob").await;

    // Unknown devices and users are skipped, users of other servers are queued for their
    // server (fed_transactions.rs); the rest is delivered.
    send(
        &srv,
        &alice,
        "m.dummy",
        "t1",
        json!({
            &bob.user: { "NOSUCHDEVICE": {}, &bob.device: {"ok": true} },
            "@nobody:localhost": { "*": {} },
            "@carol:elsewhere.example": { "X": {} },
        }),
    )
    .await;
    assert_eq!(inbox(&srv, &bob, None).await.len(), 1);

    // Content must be an object; the body needs `messages`.
    let (status, body) = send_raw(
        &srv,
        &alice,
        "m.dummy",
        "t2",
        json!({ &bob.user: { &bob.device: "text" } }),
    )
    .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_BAD_JSON")
    );
    let (status, _) = srv
        .put(
            "/_matrix/client/v3/sendToDevice/m.dummy/t3",
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = srv
        .put(
            "/_matrix/client/v3/sendToDevice/m.dummy/t4",
            None,
            json!({"messages": {}}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN")
    );

    // A deleted device's inbox goes with it; later sends to it are dropped.
    send(
        &srv,
        &alice,
        "m.dummy",
        "t5",
        json!({ &bob.user: { &bob2.device: {} } }),
    )
    .await;
    assert_eq!(inbox(&srv, &bob2, None).await.len(), 1);
    let (status, _) = srv
        .post("/_matrix/client/v3/logout", Some(&bob2.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    send(
        &srv,
        &alice,
        "m.dummy",
        "t6",
        json!({ &bob.user: { &bob2.device: {} } }),
    )
    .await;
    // A device logged in again under that id starts with an empty inbox: neither the message
    // sent before the logout nor the one sent after it reaches it.
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"},
                   "password": "correct horse", "device_id": bob2.device}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let again = Dev {
        token: body["access_token"].as_str().unwrap().to_owned(),
        ..bob2
    };
    assert_eq!(again.device, body["device_id"]);
    assert!(inbox(&srv, &again, None).await.is_empty());
}

/// One `/sync` of `dev` from `since`: its `next_batch` and the `n` of each to-device message.
async fn sync_to_device(srv: &TestServer, dev: &Dev, since: Option<&str>) -> (String, Vec<u64>) {
    let (events, next) = sync(srv, dev, since).await;
    let ns = events
        .iter()
        .map(|e| e["content"]["n"].as_u64().expect("n"))
        .collect();
    (next, ns)
}

/// Sends messages `ns` from `from` to `to`'s device, one send each, in order, each padded with
/// `pad` bytes.
async fn send_each(srv: &TestServer, from: &Dev, to: &Dev, ns: std::ops::Range<u64>, pad: usize) {
    let padding = "x".repeat(pad);
    for n in ns {
        send(
            srv,
            from,
            "m.dummy",
            &format!("f{n}"),
            json!({ &to.user: { &to.device: {"n": n, "pad": padding} } }),
        )
        .await;
    }
}

#[tokio::test]
async fn sync_delivers_at_most_100_to_device_messages_in_order_across_a_restart() {
    let mut srv = TestServer::start().await;
    let alice = Dev::register(&srv, "alice").await;
    let bob = Dev::register(&srv, "bob").await;
    send_each(&srv, &alice, &bob, 0..250, 0).await;

    let (t1, first) = sync_to_device(&srv, &bob, None).await;
    assert_eq!(first, (0..100).collect::<Vec<_>>());
    // A response lost on the way is sent again by a sync from the same token.
    let (again_t1, again) = sync_to_device(&srv, &bob, None).await;
    assert_eq!((again_t1.as_str(), &again), (t1.as_str(), &first));

    let (t2, second) = sync_to_device(&srv, &bob, Some(&t1)).await;
    assert_eq!(second, (100..200).collect::<Vec<_>>());
    srv.restart().await;
    let (t3, third) = sync_to_device(&srv, &bob, Some(&t2)).await;
    assert_eq!(third, (200..250).collect::<Vec<_>>());
    let (again_t3, again) = sync_to_device(&srv, &bob, Some(&t2)).await;
    assert_eq!((again_t3.as_str(), &again), (t3.as_str(), &third));
    let (_, rest) = sync_to_device(&srv, &bob, Some(&t3)).await;
    assert!(rest.is_empty(), "{rest:?}");
    // The token acknowledged everything: the inbox is empty.
    assert!(inbox(&srv, &bob, None).await.is_empty());
}

#[tokio::test]
async fn a_full_inbox_drops_its_oldest_messages() {
    use hearth::service::e2ee::to_device::MAX_INBOX_MESSAGES;
    let srv = TestServer::start().await;
    let alice = Dev::register(&srv, "alice").await;
    let bob = Dev::register(&srv, "bob").await;
    let total = MAX_INBOX_MESSAGES + 5;
    send_each(&srv, &alice, &bob, 0..total, 0).await;

    let mut since: Option<String> = None;
    let mut got = Vec::new();
    for _ in 0..20 {
        let (next, ns) = sync_to_device(&srv, &bob, since.as_deref()).await;
        since = Some(next);
        if ns.is_empty() {
            break;
        }
        assert!(ns.len() <= 100, "{}", ns.len());
        got.extend(ns);
    }
    assert_eq!(got, (5..total).collect::<Vec<_>>());
}

#[tokio::test]
async fn large_to_device_messages_are_bounded_per_inbox_and_per_sync() {
    use hearth::service::e2ee::to_device::{MAX_INBOX_BYTES, SYNC_MAX_BYTES};
    let srv = TestServer::start().await;
    let alice = Dev::register(&srv, "alice").await;
    let bob = Dev::register(&srv, "bob").await;
    let pad = 900 * 1024;
    let total = 24;
    send_each(&srv, &alice, &bob, 0..total, pad).await;

    let kept = MAX_INBOX_BYTES / (pad as u64 + 100);
    let mut since: Option<String> = None;
    let mut got = Vec::new();
    for _ in 0..40 {
        let (next, ns) = sync_to_device(&srv, &bob, since.as_deref()).await;
        since = Some(next);
        if ns.is_empty() {
            break;
        }
        assert!(
            ns.len() * pad <= SYNC_MAX_BYTES,
            "{} large messages",
            ns.len()
        );
        got.extend(ns);
    }
    // The newest messages that fit the inbox, in order; the oldest were dropped.
    assert_eq!(got, (total - kept..total).collect::<Vec<_>>());
}
