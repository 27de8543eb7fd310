//! Typing, receipts, read markers, presence, room account data, tags and unread counts, over
//! HTTP and through `/sync`.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode, join, TestServer};

async fn sync(srv: &TestServer, token: &str, query: &str) -> Value {
    let (status, body) = srv
        .get(&format!("/_matrix/client/v3/sync?{query}"), Some(token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn next_batch(body: &Value) -> String {
    body["next_batch"].as_str().unwrap().to_owned()
}

async fn send(srv: &TestServer, token: &str, room: &str, txn: &str, content: Value) -> String {
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
            Some(token),
            content,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

async fn text(srv: &TestServer, token: &str, room: &str, txn: &str, body: &str) -> String {
    send(
        srv,
        token,
        room,
        txn,
        json!({"msgtype": "m.text", "body": body}),
    )
    .await
}

/// Alice creates a public room and Bob joins it.
async fn two_in_a_room(srv: &TestServer) -> (String, String, String, String, String) {
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(srv, &alice, json!({"preset": "public_chat"})).await;
    join(srv, &bob, &room).await;
    (alice_id, alice, bob_id, bob, room)
}

async fn typing(
    srv: &TestServer,
    token: &str,
    room: &str,
    user: &str,
    body: Value,
) -> (StatusCode, Value) {
    srv.put(
        &format!("/_matrix/client/v3/rooms/{room}/typing/{user}"),
        Some(token),
        body,
    )
    .await
}

async fn receipt(
    srv: &TestServer,
    token: &str,
    room: &str,
    kind: &str,
    event: &str,
    body: Value,
) -> (StatusCode, Value) {
    srv.post(
        &format!(
            "/_matrix/client/v3/rooms/{room}/receipt/{kind}/{}",
            enc(event)
        ),
        Some(token),
        body,
    )
    .await
}

fn room<'a>(body: &'a Value, room: &str) -> &'a Value {
    &body["rooms"]["join"][room]
}

/// The `m.typing` user list of a room in a sync response, if the event is there.
fn typing_users(body: &Value, room_id: &str) -> Option<Vec<String>> {
    room(body, room_id)["ephemeral"]["events"]
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

/// The `m.receipt` content of a room in a sync response (`Null` when absent).
fn receipts(body: &Value, room_id: &str) -> Value {
    room(body, room_id)["ephemeral"]["events"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["type"] == "m.receipt"))
        .map(|e| e["content"].clone())
        .unwrap_or(Value::Null)
}

fn room_account_data(body: &Value, room_id: &str, kind: &str) -> Option<Value> {
    room(body, room_id)["account_data"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == kind)
        .map(|e| e["content"].clone())
}

fn presence_of(body: &Value, user: &str) -> Option<Value> {
    body["presence"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["sender"] == user)
        .map(|e| {
            assert_eq!(e["type"], "m.presence");
            e["content"].clone()
        })
}

fn unread(body: &Value, room_id: &str) -> (u64, u64) {
    let counts = &room(body, room_id)["unread_notifications"];
    (
        counts["notification_count"].as_u64().unwrap(),
        counts["highlight_count"].as_u64().unwrap(),
    )
}

/// Starts a long poll for `token` in the background.
fn long_poll(
    srv: &TestServer,
    token: &str,
    since: &str,
    timeout_ms: u64,
) -> tokio::task::JoinHandle<(Instant, Value)> {
    let url = format!(
        "{}/_matrix/client/v3/sync?since={since}&timeout={timeout_ms}",
        srv.base
    );
    let http = srv.http.clone();
    let token = token.to_owned();
    tokio::spawn(async move {
        let response = http.get(url).bearer_auth(token).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        (Instant::now(), body)
    })
}

#[tokio::test]
async fn typing_start_stop_and_expiry_reach_sync() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _, bob, room_id) = two_in_a_room(&srv).await;
    let since = next_batch(&sync(&srv, &bob, "").await);
    assert!(
        since.contains('_'),
        "the token carries a typing serial: {since}"
    );

    let (status, body) = typing(
        &srv,
        &alice,
        &room_id,
        &alice_id,
        json!({"typing": true, "timeout": 30000}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body = sync(&srv, &bob, &format!("since={since}")).await;
    assert_eq!(typing_users(&body, &room_id), Some(vec![alice_id.clone()]));
    let since = next_batch(&body);

    // Nothing changed: no m.typing (and no room) in the next sync.
    let body = sync(&srv, &bob, &format!("since={since}")).await;
    assert_eq!(typing_users(&body, &room_id), None, "{body}");
    // An ephemeral filter can leave typing out.
    let filter = enc(r#"{"room":{"ephemeral":{"not_types":["m.typing"]}}}"#);
    let body = sync(&srv, &alice, &format!("filter={filter}")).await;
    assert_eq!(typing_users(&body, &room_id), None, "{body}");
    // A newcomer's initial sync shows who is typing.
    let body = sync(&srv, &alice, "").await;
    assert_eq!(typing_users(&body, &room_id), Some(vec![alice_id.clone()]));

    let (status, _) = typing(&srv, &alice, &room_id, &alice_id, json!({"typing": false})).await;
    assert_eq!(status, StatusCode::OK);
    let body = sync(&srv, &bob, &format!("since={since}")).await;
    assert_eq!(
        typing_users(&body, &room_id),
        Some(vec![]),
        "the stop is sent"
    );
    let since = next_batch(&body);

    // A short timeout lapses on its own, and the lapse wakes a waiting sync.
    typing(
        &srv,
        &alice,
        &room_id,
        &alice_id,
        json!({"typing": true, "timeout": 800}),
    )
    .await;
    let body = sync(&srv, &bob, &format!("since={since}")).await;
    assert_eq!(typing_users(&body, &room_id), Some(vec![alice_id.clone()]));
    let since = next_batch(&body);
    let started = Instant::now();
    let poll = long_poll(&srv, &bob, &since, 20_000);
    let (returned, body) = tokio::time::timeout(Duration::from_secs(15), poll)
        .await
        .expect("long poll returned")
        .unwrap();
    let waited = returned.duration_since(started);
    assert!(
        waited < Duration::from_secs(5),
        "woken by the expiry: {waited:?}"
    );
    assert_eq!(typing_users(&body, &room_id), Some(vec![]), "{body}");
}

#[tokio::test]
async fn typing_is_refused_for_others_and_outsiders() {
    let srv = TestServer::start().await;
    let (alice_id, alice, bob_id, _, room_id) = two_in_a_room(&srv).await;
    let (_, carol, _) = srv.register("carol", "pw").await;
    let (status, body) = typing(
        &srv,
        &alice,
        &room_id,
        &bob_id,
        json!({"typing": true, "timeout": 1000}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(errcode(&body), "M_FORBIDDEN");
    let carol_id = "@carol:localhost";
    let (status, body) = typing(
        &srv,
        &carol,
        &room_id,
        carol_id,
        json!({"typing": true, "timeout": 1000}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = typing(&srv, &alice, &room_id, &alice_id, json!({"typing": true})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "typing without a timeout");
}

#[tokio::test]
async fn long_poll_is_woken_by_typing_and_by_receipts() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _, bob, room_id) = two_in_a_room(&srv).await;
    let event = text(&srv, &bob, &room_id, "1", "hi").await;
    let since = next_batch(&sync(&srv, &bob, "").await);

    let poll = long_poll(&srv, &bob, &since, 30_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    typing(
        &srv,
        &alice,
        &room_id,
        &alice_id,
        json!({"typing": true, "timeout": 30000}),
    )
    .await;
    let (returned, body) = tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .unwrap()
        .unwrap();
    assert!(returned.duration_since(sent) < Duration::from_secs(5));
    assert_eq!(typing_users(&body, &room_id), Some(vec![alice_id.clone()]));

    let since = next_batch(&body);
    let poll = long_poll(&srv, &bob, &since, 30_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    let (status, _) = receipt(&srv, &alice, &room_id, "m.read", &event, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (returned, body) = tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .unwrap()
        .unwrap();
    assert!(returned.duration_since(sent) < Duration::from_secs(5));
    assert!(
        receipts(&body, &room_id)[&event]["m.read"][&alice_id]["ts"].is_u64(),
        "{body}"
    );
}

#[tokio::test]
async fn receipts_public_private_and_threaded_in_sync() {
    let srv = TestServer::start().await;
    let (alice_id, alice, bob_id, bob, room_id) = two_in_a_room(&srv).await;
    let first = text(&srv, &bob, &room_id, "1", "one").await;
    let second = text(&srv, &bob, &room_id, "2", "two").await;
    let alice_since = next_batch(&sync(&srv, &alice, "").await);
    let bob_since = next_batch(&sync(&srv, &bob, "").await);

    let (status, body) = receipt(&srv, &alice, &room_id, "m.read", &first, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
    let (status, _) = receipt(&srv, &alice, &room_id, "m.read.private", &second, json!({})).await;
    assert_eq!(status, StatusCode::OK);

    // Bob sees the public receipt only.
    let body = sync(&srv, &bob, &format!("since={bob_since}")).await;
    let content = receipts(&body, &room_id);
    assert!(
        content[&first]["m.read"][&alice_id]["ts"].is_u64(),
        "{content}"
    );
    assert!(content[&first]["m.read"][&alice_id]
        .get("thread_id")
        .is_none());
    assert!(
        content.get(&second).is_none(),
        "a private receipt is never shown to others: {content}"
    );
    let bob_since = next_batch(&body);
    // Alice sees both.
    let body = sync(&srv, &alice, &format!("since={alice_since}")).await;
    let content = receipts(&body, &room_id);
    assert!(
        content[&first]["m.read"][&alice_id].is_object(),
        "{content}"
    );
    assert!(
        content[&second]["m.read.private"][&alice_id].is_object(),
        "{content}"
    );
    // Only changes since the token: nothing new for Bob now.
    let body = sync(&srv, &bob, &format!("since={bob_since}")).await;
    assert!(receipts(&body, &room_id).is_null(), "{body}");

    // A receipt that moves backwards is accepted and ignored.
    let (status, _) = receipt(&srv, &alice, &room_id, "m.read", &second, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = receipt(&srv, &alice, &room_id, "m.read", &first, json!({})).await;
    assert_eq!(status, StatusCode::OK);

    // Threaded receipts: a thread root, a reply in the thread.
    let root = text(&srv, &bob, &room_id, "3", "root").await;
    let reply = send(
        &srv,
        &bob,
        &room_id,
        "4",
        json!({"msgtype": "m.text", "body": "in thread", "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
    )
    .await;
    let (status, body) = receipt(
        &srv,
        &alice,
        &room_id,
        "m.read",
        &reply,
        json!({"thread_id": root}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = receipt(
        &srv,
        &alice,
        &room_id,
        "m.read",
        &root,
        json!({"thread_id": "main"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body = sync(&srv, &bob, &format!("since={bob_since}")).await;
    let content = receipts(&body, &room_id);
    assert_eq!(
        content[&reply]["m.read"][&alice_id]["thread_id"],
        json!(root),
        "{content}"
    );
    assert_eq!(
        content[&root]["m.read"][&alice_id]["thread_id"], "main",
        "{content}"
    );
    assert!(
        content[&second]["m.read"][&alice_id]["ts"].is_u64(),
        "{content}"
    );

    // A full (initial) sync has every receipt, the latest per user, type and thread.
    let body = sync(&srv, &bob, "").await;
    let content = receipts(&body, &room_id);
    assert!(
        content[&second]["m.read"][&alice_id].is_object(),
        "{content}"
    );
    assert!(content.get(&first).is_none(), "{content}");

    // Errors.
    let (status, body) = receipt(
        &srv,
        &alice,
        &room_id,
        "m.read",
        &reply,
        json!({"thread_id": "main"}),
    )
    .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );
    let (status, body) = receipt(
        &srv,
        &alice,
        &room_id,
        "m.read",
        &second,
        json!({"thread_id": root}),
    )
    .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );
    let (status, body) = receipt(
        &srv,
        &alice,
        &room_id,
        "m.read",
        &second,
        json!({"thread_id": ""}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = receipt(
        &srv,
        &alice,
        &room_id,
        "m.fully_read",
        &second,
        json!({"thread_id": "main"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = receipt(&srv, &alice, &room_id, "m.read", "$nope", json!({})).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    let (status, body) = receipt(&srv, &alice, &room_id, "m.unknown", &second, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (_, carol, _) = srv.register("carol", "pw").await;
    let (status, body) = receipt(&srv, &carol, &room_id, "m.read", &second, json!({})).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    // An event of another room is unknown in this one.
    let other = create_room(&srv, &bob, json!({})).await;
    let elsewhere = text(&srv, &bob, &other, "x", "elsewhere").await;
    let (status, _) = receipt(&srv, &alice, &room_id, "m.read", &elsewhere, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let _ = bob_id;
}

#[tokio::test]
async fn read_markers_set_fully_read_and_receipts() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _, bob, room_id) = two_in_a_room(&srv).await;
    let first = text(&srv, &bob, &room_id, "1", "one").await;
    let second = text(&srv, &bob, &room_id, "2", "two").await;
    let since = next_batch(&sync(&srv, &alice, "").await);
    let bob_since = next_batch(&sync(&srv, &bob, "").await);

    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room_id}/read_markers"),
            Some(&alice),
            json!({"m.fully_read": first, "m.read": first, "m.read.private": second}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body = sync(&srv, &alice, &format!("since={since}")).await;
    assert_eq!(
        room_account_data(&body, &room_id, "m.fully_read"),
        Some(json!({"event_id": first}))
    );
    let content = receipts(&body, &room_id);
    assert!(
        content[&first]["m.read"][&alice_id].is_object(),
        "{content}"
    );
    assert!(
        content[&second]["m.read.private"][&alice_id].is_object(),
        "{content}"
    );
    let since = next_batch(&body);
    // Bob gets the public receipt, not the marker.
    let body = sync(&srv, &bob, &format!("since={bob_since}")).await;
    assert!(receipts(&body, &room_id)[&first]["m.read"][&alice_id].is_object());
    assert!(room_account_data(&body, &room_id, "m.fully_read").is_none());

    // The marker reads like room account data and moves through the receipt API too.
    let path = format!(
        "/_matrix/client/v3/user/{}/rooms/{room_id}/account_data/m.fully_read",
        enc(&alice_id)
    );
    let (status, body) = srv.get(&path, Some(&alice)).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"event_id": first})));
    let (status, _) = receipt(&srv, &alice, &room_id, "m.fully_read", &second, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = srv.get(&path, Some(&alice)).await;
    assert_eq!(body, json!({"event_id": second}));
    let body = sync(&srv, &alice, &format!("since={since}")).await;
    assert_eq!(
        room_account_data(&body, &room_id, "m.fully_read"),
        Some(json!({"event_id": second}))
    );
    assert!(
        receipts(&body, &room_id).is_null(),
        "m.fully_read is not a receipt: {body}"
    );
    // Clients cannot set it directly.
    let (status, body) = srv
        .put(&path, Some(&alice), json!({"event_id": first}))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::METHOD_NOT_ALLOWED, "M_BAD_JSON")
    );

    // Errors: an unknown event, a room the user is not in.
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room_id}/read_markers"),
            Some(&alice),
            json!({"m.fully_read": "$unknown"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, carol, _) = srv.register("carol", "pw").await;
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room_id}/read_markers"),
            Some(&carol),
            json!({"m.fully_read": first}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn unread_counts_follow_push_rules_and_reset_with_receipts() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _, bob, room_id) = two_in_a_room(&srv).await;
    let body = sync(&srv, &alice, "").await;
    assert_eq!(unread(&body, &room_id), (0, 0), "own join ends the count");
    let since = next_batch(&body);

    let first = text(&srv, &bob, &room_id, "1", "one").await;
    let second = text(&srv, &bob, &room_id, "2", "two").await;
    let mention = send(
        &srv,
        &bob,
        &room_id,
        "3",
        json!({"msgtype": "m.text", "body": "hey alice", "m.mentions": {"user_ids": [alice_id]}}),
    )
    .await;
    let body = sync(&srv, &alice, &format!("since={since}")).await;
    assert_eq!(unread(&body, &room_id), (3, 1), "{}", room(&body, &room_id));
    // Bob's own messages never count for him.
    assert_eq!(unread(&sync(&srv, &bob, "").await, &room_id), (0, 0));

    // A public receipt on the second message leaves the mention.
    receipt(&srv, &alice, &room_id, "m.read", &second, json!({})).await;
    let body = sync(&srv, &alice, &format!("since={since}")).await;
    assert_eq!(unread(&body, &room_id), (1, 1));
    // A private receipt further ahead wins.
    receipt(
        &srv,
        &alice,
        &room_id,
        "m.read.private",
        &mention,
        json!({}),
    )
    .await;
    let body = sync(&srv, &alice, &format!("since={since}")).await;
    assert_eq!(unread(&body, &room_id), (0, 0));
    // A public receipt behind the private one does not rewind the count.
    receipt(&srv, &alice, &room_id, "m.read", &first, json!({})).await;
    let body = sync(&srv, &alice, &format!("since={since}")).await;
    assert_eq!(unread(&body, &room_id), (0, 0));

    // New messages count again; an own message marks everything before it as read.
    text(&srv, &bob, &room_id, "4", "four").await;
    assert_eq!(unread(&sync(&srv, &alice, "").await, &room_id), (1, 0));
    text(&srv, &alice, &room_id, "5", "answer").await;
    assert_eq!(unread(&sync(&srv, &alice, "").await, &room_id), (0, 0));

    // A muted room (push rule "dont_notify" for the room) counts nothing.
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/pushrules/global/room/{room_id}"),
            Some(&alice),
            json!({"actions": []}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    text(&srv, &bob, &room_id, "6", "muted").await;
    assert_eq!(unread(&sync(&srv, &alice, "").await, &room_id), (0, 0));
}

#[tokio::test]
async fn thread_notifications_are_partitioned_on_request() {
    let srv = TestServer::start().await;
    let (_, alice, _, bob, room_id) = two_in_a_room(&srv).await;
    let root = text(&srv, &bob, &room_id, "1", "root").await;
    let in_thread = |txn: &'static str, root: String| json!({"msgtype": "m.text", "body": txn, "m.relates_to": {"rel_type": "m.thread", "event_id": root}});
    send(&srv, &bob, &room_id, "2", in_thread("2", root.clone())).await;
    let last_in_thread = send(&srv, &bob, &room_id, "3", in_thread("3", root.clone())).await;

    let body = sync(&srv, &alice, "").await;
    assert_eq!(
        unread(&body, &room_id),
        (3, 0),
        "all together without the filter flag"
    );
    let filter = enc(r#"{"room":{"timeline":{"unread_thread_notifications":true}}}"#);
    let body = sync(&srv, &alice, &format!("filter={filter}")).await;
    assert_eq!(unread(&body, &room_id), (1, 0), "main timeline only");
    assert_eq!(
        room(&body, &room_id)["unread_thread_notifications"][&root],
        json!({"notification_count": 2, "highlight_count": 0})
    );

    // A threaded receipt clears that thread only.
    let (status, body) = receipt(
        &srv,
        &alice,
        &room_id,
        "m.read",
        &last_in_thread,
        json!({"thread_id": root}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body = sync(&srv, &alice, &format!("filter={filter}")).await;
    assert_eq!(unread(&body, &room_id), (1, 0));
    assert!(room(&body, &room_id)
        .get("unread_thread_notifications")
        .is_none());
    let (status, _) = receipt(
        &srv,
        &alice,
        &room_id,
        "m.read",
        &root,
        json!({"thread_id": "main"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let body = sync(&srv, &alice, "").await;
    assert_eq!(unread(&body, &room_id), (0, 0));
}

#[tokio::test]
async fn presence_set_get_visibility_and_sync() {
    let srv = TestServer::start().await;
    let (alice_id, alice, bob_id, bob, _room) = two_in_a_room(&srv).await;
    let (carol_id, carol, _) = srv.register("carol", "pw").await;
    let bob_since = next_batch(&sync(&srv, &bob, "set_presence=offline").await);

    let path = |user: &str| format!("/_matrix/client/v3/presence/{}/status", enc(user));
    let (status, body) = srv
        .put(
            &path(&alice_id),
            Some(&alice),
            json!({"presence": "online", "status_msg": "cooking"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = srv.get(&path(&alice_id), Some(&alice)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["presence"], "online");
    assert_eq!(body["status_msg"], "cooking");
    assert_eq!(body["currently_active"], true);
    assert!(body["last_active_ago"].as_u64().unwrap() < 60_000, "{body}");
    // Bob shares a room: allowed. Carol does not: 403. Nobody: 404.
    let (status, body) = srv.get(&path(&alice_id), Some(&bob)).await;
    assert_eq!(
        (status, body["presence"].clone()),
        (StatusCode::OK, json!("online"))
    );
    let (status, body) = srv.get(&path(&alice_id), Some(&carol)).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    let (status, body) = srv.get(&path("@nobody:localhost"), Some(&alice)).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    // A user who never set a presence reads as offline.
    let (status, body) = srv.get(&path(&carol_id), Some(&carol)).await;
    assert_eq!(
        (status, body["presence"].clone()),
        (StatusCode::OK, json!("offline"))
    );
    // Nobody sets another's presence; unknown states are refused.
    let (status, _) = srv
        .put(&path(&alice_id), Some(&bob), json!({"presence": "offline"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = srv
        .put(&path(&alice_id), Some(&alice), json!({"presence": "busy"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Bob's sync carries Alice's presence; Carol's does not.
    let body = sync(
        &srv,
        &bob,
        &format!("since={bob_since}&set_presence=offline"),
    )
    .await;
    let content = presence_of(&body, &alice_id).expect("alice's presence");
    assert_eq!(content["presence"], "online");
    assert_eq!(content["status_msg"], "cooking");
    assert!(
        presence_of(&body, &bob_id).is_none(),
        "set_presence=offline leaves bob alone"
    );
    let bob_since = next_batch(&body);
    let body = sync(&srv, &carol, "").await;
    assert!(presence_of(&body, &alice_id).is_none(), "{body}");
    assert_eq!(
        presence_of(&body, &carol_id).unwrap()["presence"],
        "online",
        "syncing marks online"
    );

    // Only changes since the token; a change (unavailable via set_presence) is sent.
    let body = sync(
        &srv,
        &bob,
        &format!("since={bob_since}&set_presence=offline"),
    )
    .await;
    assert!(presence_of(&body, &alice_id).is_none(), "{body}");
    sync(&srv, &alice, "set_presence=unavailable").await;
    let body = sync(
        &srv,
        &bob,
        &format!("since={bob_since}&set_presence=offline"),
    )
    .await;
    let content = presence_of(&body, &alice_id).expect("alice's change");
    assert_eq!(content["presence"], "unavailable");
    assert_eq!(content["currently_active"], false);
    assert_eq!(
        content["status_msg"], "cooking",
        "the status message is kept"
    );

    // Presence survives a restart.
    let mut srv = srv;
    srv.restart().await;
    let (status, body) = srv.get(&path(&alice_id), Some(&bob)).await;
    assert_eq!(
        (status, body["presence"].clone()),
        (StatusCode::OK, json!("unavailable"))
    );
    assert_eq!(body["status_msg"], "cooking");
}

#[tokio::test]
async fn room_account_data_and_tags_in_sync() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _, bob, room_id) = two_in_a_room(&srv).await;
    let since = next_batch(&sync(&srv, &alice, "").await);
    let user = enc(&alice_id);
    let data =
        format!("/_matrix/client/v3/user/{user}/rooms/{room_id}/account_data/org.example.colour");
    let (status, body) = srv.get(&data, Some(&alice)).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    let (status, body) = srv
        .put(&data, Some(&alice), json!({"colour": "green"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = srv.get(&data, Some(&alice)).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"colour": "green"})));
    // Room data is not global data.
    let (status, _) = srv
        .get(
            &format!("/_matrix/client/v3/user/{user}/account_data/org.example.colour"),
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let tag = |name: &str| {
        format!(
            "/_matrix/client/v3/user/{user}/rooms/{room_id}/tags/{}",
            enc(name)
        )
    };
    let (status, body) = srv
        .put(&tag("m.favourite"), Some(&alice), json!({"order": 0.25}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = srv.put(&tag("u.work"), Some(&alice), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/user/{user}/rooms/{room_id}/tags"),
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"tags": {"m.favourite": {"order": 0.25}, "u.work": {}}})
    );

    let body = sync(&srv, &alice, &format!("since={since}")).await;
    assert_eq!(
        room_account_data(&body, &room_id, "org.example.colour"),
        Some(json!({"colour": "green"}))
    );
    assert_eq!(
        room_account_data(&body, &room_id, "m.tag"),
        Some(json!({"tags": {"m.favourite": {"order": 0.25}, "u.work": {}}}))
    );
    let since = next_batch(&body);
    // Only changes since the token.
    let (status, _) = srv
        .call(reqwest::Method::DELETE, &tag("u.work"), Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let body = sync(&srv, &alice, &format!("since={since}")).await;
    assert_eq!(
        room_account_data(&body, &room_id, "m.tag"),
        Some(json!({"tags": {"m.favourite": {"order": 0.25}}}))
    );
    assert_eq!(
        room_account_data(&body, &room_id, "org.example.colour"),
        None
    );
    // Deleting a tag the room does not have is fine.
    let (status, _) = srv
        .call(reqwest::Method::DELETE, &tag("u.none"), Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    // An initial sync has all of it.
    let body = sync(&srv, &alice, "").await;
    assert!(room_account_data(&body, &room_id, "org.example.colour").is_some());
    assert!(room_account_data(&body, &room_id, "m.tag").is_some());

    // Errors: order out of range, too long a tag, someone else's data, a room never joined.
    let (status, body) = srv
        .put(&tag("u.x"), Some(&alice), json!({"order": 1.5}))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );
    let (status, _) = srv
        .put(&tag(&"x".repeat(256)), Some(&alice), json!({}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = srv.put(&tag("u.x"), Some(&bob), json!({})).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    let (status, _) = srv.get(&data, Some(&bob)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (carol_id, carol, _) = srv.register("carol", "pw").await;
    let carol_data = format!(
        "/_matrix/client/v3/user/{}/rooms/{room_id}/account_data/org.example.colour",
        enc(&carol_id)
    );
    let (status, _) = srv
        .put(&carol_data, Some(&carol), json!({"colour": "red"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = srv
        .put(&data, Some(&alice), json!(["not", "an", "object"]))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // A left room keeps its data readable.
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room_id}/leave"),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = srv.get(&data, Some(&alice)).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"colour": "green"})));
}

#[tokio::test]
async fn typing_token_survives_a_restart() {
    let mut srv = TestServer::start().await;
    let (alice_id, alice, _, bob, room_id) = two_in_a_room(&srv).await;
    typing(
        &srv,
        &alice,
        &room_id,
        &alice_id,
        json!({"typing": true, "timeout": 60000}),
    )
    .await;
    let first = text(&srv, &bob, &room_id, "1", "before").await;
    receipt(&srv, &alice, &room_id, "m.read", &first, json!({})).await;
    let body = sync(&srv, &bob, "").await;
    assert_eq!(typing_users(&body, &room_id), Some(vec![alice_id.clone()]));
    let since = next_batch(&body);
    let (pos, serial) = since.split_once('_').expect("pos_serial");
    assert!(
        pos.parse::<u64>().is_ok() && serial.parse::<u64>().is_ok(),
        "{since}"
    );

    srv.restart().await;
    // The old token still works: an incremental sync (no timeline repeat), and the typing
    // list the client had is cleared since typing is not kept across restarts.
    let body = sync(&srv, &bob, &format!("since={since}")).await;
    assert_eq!(typing_users(&body, &room_id), Some(vec![]), "{body}");
    assert!(room(&body, &room_id)["timeline"]["events"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(
        receipts(&body, &room_id).is_null(),
        "receipts are not repeated"
    );
    let since = next_batch(&body);
    let body = sync(&srv, &bob, &format!("since={since}")).await;
    assert_eq!(typing_users(&body, &room_id), None, "sent once: {body}");
    let since = next_batch(&body);

    // Typing after the restart, and persisted receipts on an initial sync.
    typing(
        &srv,
        &alice,
        &room_id,
        &alice_id,
        json!({"typing": true, "timeout": 60000}),
    )
    .await;
    let body = sync(&srv, &bob, &format!("since={since}")).await;
    assert_eq!(typing_users(&body, &room_id), Some(vec![alice_id.clone()]));
    let body = sync(&srv, &bob, "").await;
    assert!(
        receipts(&body, &room_id)[&first]["m.read"][&alice_id].is_object(),
        "{body}"
    );
    // A bare position (no typing serial) is still a valid token; junk is not.
    let (status, _) = srv
        .get(&format!("/_matrix/client/v3/sync?since={pos}"), Some(&bob))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = srv
        .get(
            &format!("/_matrix/client/v3/sync?since={pos}_x"),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
