//! Notifications stored when events are persisted: `GET /notifications` and the unread counts
//! of `/sync`, which must agree after sends, receipts and threaded receipts.

use http::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode, join, put_schema_version, TestServer};

async fn send(srv: &TestServer, token: &str, room: &str, txn: &str, content: Value) -> String {
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                enc(room)
            ),
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

async fn receipt(srv: &TestServer, token: &str, room: &str, event: &str, body: Value) {
    let (status, body) = srv
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(room),
                enc(event)
            ),
            Some(token),
            body,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn notifications(srv: &TestServer, token: &str, query: &str) -> Value {
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/notifications?{query}"),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// `(event id, read, highlight)` of each listed notification, newest first.
fn listed(body: &Value) -> Vec<(String, bool, bool)> {
    body["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let highlight = n["actions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["set_tweak"] == "highlight" && a["value"] != json!(false));
            (
                n["event"]["event_id"].as_str().unwrap().to_owned(),
                n["read"].as_bool().unwrap(),
                highlight,
            )
        })
        .collect()
}

/// `(notification_count, highlight_count)` of a joined room in a full sync.
async fn counts(srv: &TestServer, token: &str, room: &str) -> (u64, u64) {
    let (status, body) = srv.get("/_matrix/client/v3/sync", Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let c = &body["rooms"]["join"][room]["unread_notifications"];
    (
        c["notification_count"].as_u64().unwrap(),
        c["highlight_count"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn notifications_list_reads_and_agree_with_sync_counts() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &room).await;

    let first = text(&srv, &bob, &room, "1", "one").await;
    let second = text(&srv, &bob, &room, "2", "two").await;
    let mention = send(
        &srv,
        &bob,
        &room,
        "3",
        json!({"msgtype": "m.text", "body": "hey alice",
               "m.mentions": {"user_ids": [alice_id]}}),
    )
    .await;

    let body = notifications(&srv, &alice, "").await;
    assert_eq!(
        listed(&body),
        [
            (mention.clone(), false, true),
            (second.clone(), false, false),
            (first.clone(), false, false)
        ]
    );
    let n = &body["notifications"][0];
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["event"]["content"]["body"], "hey alice");
    assert!(n["event"].get("room_id").is_none(), "{n}");
    assert!(n["ts"].as_u64().unwrap() > 0);
    assert!(n["actions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a == "notify"));
    assert_eq!(counts(&srv, &alice, &room).await, (3, 1));
    // Bob's own messages never notify him, and he never sees Alice's list.
    assert_eq!(listed(&notifications(&srv, &bob, "").await), []);
    assert_eq!(counts(&srv, &bob, &room).await, (0, 0));

    // Highlights only.
    let body = notifications(&srv, &alice, "only=highlight").await;
    assert_eq!(listed(&body), [(mention.clone(), false, true)]);

    // Pages: limit 1, then on from the token.
    let page = notifications(&srv, &alice, "limit=1").await;
    assert_eq!(listed(&page), [(mention.clone(), false, true)]);
    let token = page["next_token"].as_str().unwrap();
    let page = notifications(&srv, &alice, &format!("limit=2&from={token}")).await;
    assert_eq!(
        listed(&page),
        [
            (second.clone(), false, false),
            (first.clone(), false, false)
        ]
    );

    // A receipt on the second message: both older ones read, counts follow.
    receipt(&srv, &alice, &room, &second, json!({})).await;
    assert_eq!(counts(&srv, &alice, &room).await, (1, 1));
    assert_eq!(
        listed(&notifications(&srv, &alice, "").await),
        [
            (mention.clone(), false, true),
            (second.clone(), true, false),
            (first.clone(), true, false)
        ]
    );

    // An own message reads everything before it.
    text(&srv, &alice, &room, "4", "answer").await;
    assert_eq!(counts(&srv, &alice, &room).await, (0, 0));
    assert!(listed(&notifications(&srv, &alice, "").await)
        .iter()
        .all(|(_, read, _)| *read));

    // Bad parameters.
    for query in ["from=nope", "only=everything"] {
        let (status, body) = srv
            .get(
                &format!("/_matrix/client/v3/notifications?{query}"),
                Some(&alice),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(errcode(&body), "M_INVALID_PARAM", "{query}");
    }
    let (status, _) = srv.get("/_matrix/client/v3/notifications", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn threaded_receipts_clear_their_thread_in_counts_and_list() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &room).await;
    let root = text(&srv, &bob, &room, "1", "root").await;
    let threaded = |n: &str| {
        json!({"msgtype": "m.text", "body": n,
               "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
    };
    let t1 = send(&srv, &bob, &room, "2", threaded("t1")).await;
    let t2 = send(&srv, &bob, &room, "3", threaded("t2")).await;
    let main = text(&srv, &bob, &room, "4", "main again").await;
    assert_eq!(counts(&srv, &alice, &room).await, (4, 0));

    // The thread read up to its last event: main keeps its two.
    receipt(&srv, &alice, &room, &t2, json!({"thread_id": root})).await;
    assert_eq!(counts(&srv, &alice, &room).await, (2, 0));
    let read: Vec<(String, bool)> = listed(&notifications(&srv, &alice, "").await)
        .into_iter()
        .map(|(id, read, _)| (id, read))
        .collect();
    assert_eq!(
        read,
        [
            (main.clone(), false),
            (t2, true),
            (t1, true),
            (root.clone(), false)
        ]
    );
    // Main read up to the root only.
    receipt(&srv, &alice, &room, &root, json!({"thread_id": "main"})).await;
    assert_eq!(counts(&srv, &alice, &room).await, (1, 0));
    // An unthreaded receipt on the latest reads the rest.
    receipt(&srv, &alice, &room, &main, json!({})).await;
    assert_eq!(counts(&srv, &alice, &room).await, (0, 0));
    assert!(listed(&notifications(&srv, &alice, "").await)
        .iter()
        .all(|(_, read, _)| *read));
}

#[tokio::test]
async fn an_invite_notifies_the_invitee() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({})).await;
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&alice),
            json!({"user_id": bob_id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body = notifications(&srv, &bob, "").await;
    let n = &body["notifications"][0];
    assert_eq!(n["event"]["type"], "m.room.member", "{body}");
    assert_eq!(n["event"]["state_key"], bob_id.as_str());
    assert_eq!(n["event"]["content"]["membership"], "invite");
    assert_eq!(n["room_id"], room.as_str());
}

/// Counts are stored, not recomputed from a bounded scan: they survive a restart and are not
/// capped, and a muted room never gets any.
#[tokio::test]
async fn stored_counts_survive_restart_and_are_exact() {
    let mut srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    let muted = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &room).await;
    join(&srv, &bob, &muted).await;
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&muted)),
            Some(&alice),
            json!({"actions": []}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // More than the 200 events the old per-sync scan looked at.
    for i in 0..205 {
        text(&srv, &bob, &room, &format!("m{i}"), "hello").await;
    }
    text(&srv, &bob, &muted, "quiet", "shh").await;
    assert_eq!(counts(&srv, &alice, &room).await, (205, 0));
    srv.restart().await;
    assert_eq!(counts(&srv, &alice, &room).await, (205, 0));
    assert_eq!(counts(&srv, &alice, &muted).await, (0, 0));
    let body = notifications(&srv, &alice, "limit=100").await;
    assert_eq!(body["notifications"].as_array().unwrap().len(), 100);
    assert!(body["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["room_id"] == room.as_str()));
}

/// The retention sweep deletes read notifications older than its cutoff and keeps unread ones
/// (they still count); counts are untouched.
#[tokio::test]
async fn the_retention_sweep_drops_old_read_notifications_only() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let (_, carol, _) = srv.register("carol", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &room).await;
    join(&srv, &carol, &room).await;
    let first = text(&srv, &bob, &room, "1", "one").await;
    let second = text(&srv, &bob, &room, "2", "two").await;
    let third = text(&srv, &bob, &room, "3", "three").await;
    receipt(&srv, &alice, &room, &second, json!({})).await;

    let store = &srv.server.as_ref().unwrap().services.store;
    // Everything so far is "old" for a cutoff in the future.
    let cutoff = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 60_000;
    let removed = hearth::service::push::retention::sweep(store, cutoff)
        .await
        .unwrap();
    assert_eq!(removed, 2);
    assert_eq!(
        listed(&notifications(&srv, &alice, "").await),
        [(third.clone(), false, false)]
    );
    assert_eq!(counts(&srv, &alice, &room).await, (1, 0));
    // Carol read none of the events alice's read notifications were about: hers all stay.
    assert_eq!(
        listed(&notifications(&srv, &carol, "").await),
        [
            (third.clone(), false, false),
            (second.clone(), false, false),
            (first.clone(), false, false)
        ]
    );
    // A cutoff in the past removes nothing more.
    let removed = hearth::service::push::retention::sweep(store, 0)
        .await
        .unwrap();
    assert_eq!(removed, 0);
}

/// `@room` mentions highlight only when the sender's power level allows room notifications
/// (`notifications.room`, 50 by default): the push context carries the room's power levels.
#[tokio::test]
async fn room_mentions_highlight_only_from_senders_allowed_to_notify_the_room() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let (_, carol, _) = srv.register("carol", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &room).await;
    join(&srv, &carol, &room).await;
    let everyone = json!({"msgtype": "m.text", "body": "everyone!", "m.mentions": {"room": true}});
    let from_admin = send(&srv, &alice, &room, "1", everyone.clone()).await;
    let from_member = send(&srv, &bob, &room, "2", everyone).await;
    let body = notifications(&srv, &carol, "").await;
    assert_eq!(
        listed(&body),
        [(from_member, false, false), (from_admin, false, true)]
    );
    assert_eq!(counts(&srv, &carol, &room).await, (2, 1));
}

/// `(event id, highlight)` of the user's newest notification.
async fn newest(srv: &TestServer, token: &str) -> (String, bool) {
    let body = notifications(srv, token, "limit=1").await;
    let (event, _, highlight) = listed(&body).into_iter().next().expect("a notification");
    (event, highlight)
}

/// Persisting an event reuses the room's members and display names and the recipients'
/// ignore lists from memory: a changed display name, a redacted member event and a changed
/// ignore list must each be seen by the next event.
#[tokio::test]
async fn push_evaluation_sees_new_display_names_redactions_and_ignores() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &room).await;
    // The default rules no longer match display names (spec 1.7); Alice's own rule does.
    let (status, body) = srv
        .put(
            "/_matrix/client/v3/pushrules/global/override/by-name",
            Some(&alice),
            json!({"conditions": [{"kind": "contains_display_name"}],
                   "actions": ["notify", {"set_tweak": "highlight"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Warms the caches: the room's members, Alice's (empty) ignore list.
    let plain = text(&srv, &bob, &room, "1", "hello").await;
    assert_eq!(newest(&srv, &alice).await, (plain, false));

    // A new display name: a message with it highlights.
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice_id)),
            Some(&alice),
            json!({"displayname": "Zebulon"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let named = text(&srv, &bob, &room, "2", "dinner, Zebulon?").await;
    assert_eq!(newest(&srv, &alice).await, (named, true));

    // Her member event redacted: the name is gone with it (the localpart is used).
    let (status, body) = srv
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}?format=event",
                enc(&room),
                enc(&alice_id)
            ),
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["content"]["displayname"], "Zebulon", "{body}");
    let member_event = body["event_id"].as_str().expect("event id").to_owned();
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/r1",
                enc(&room),
                enc(&member_event)
            ),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let unnamed = text(&srv, &bob, &room, "3", "Zebulon again").await;
    assert_eq!(newest(&srv, &alice).await, (unnamed.clone(), false));

    // Bob ignored: his messages no longer notify Alice; unignored: they do again.
    let ignore = |users: Value| {
        let srv = &srv;
        let (alice, alice_id) = (alice.clone(), alice_id.clone());
        async move {
            let (status, body) = srv
                .put(
                    &format!(
                        "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
                        enc(&alice_id)
                    ),
                    Some(&alice),
                    json!({"ignored_users": users}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    ignore(json!({ bob_id.clone(): {} })).await;
    text(&srv, &bob, &room, "4", "ignored").await;
    assert_eq!(newest(&srv, &alice).await, (unnamed, false));
    ignore(json!({})).await;
    let heard = text(&srv, &bob, &room, "5", "heard").await;
    assert_eq!(newest(&srv, &alice).await, (heard, false));
}

/// An invite from an ignored user is never shown, so it notifies nobody either.
#[tokio::test]
async fn an_invite_from_an_ignored_user_does_not_notify() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
                enc(&alice_id)
            ),
            Some(&alice),
            json!({"ignored_users": {&bob_id: {}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    create_room(&srv, &bob, json!({"invite": [alice_id]})).await;
    assert_eq!(listed(&notifications(&srv, &alice, "").await), []);
}

/// `GET /notifications` lists a user's notifications from every room they are in (or left)
/// newest first, pages through them without skipping or repeating one whatever the page size,
/// and filters highlights across rooms.
#[tokio::test]
async fn the_list_merges_rooms_newest_first_across_pages() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let mut rooms = Vec::new();
    for _ in 0..3 {
        let room = create_room(&srv, &bob, json!({"preset": "public_chat"})).await;
        join(&srv, &alice, &room).await;
        rooms.push(room);
    }
    // Sent round-robin over the rooms, every third one mentioning alice (a highlight).
    let mut sent = Vec::new();
    for i in 0..11 {
        let room = &rooms[i % 3];
        let mut content = json!({"msgtype": "m.text", "body": "hello"});
        if i % 3 == 1 {
            content["m.mentions"] = json!({"user_ids": [alice_id]});
        }
        let id = send(&srv, &bob, room, &format!("t{i}"), content).await;
        sent.push((id, i % 3 == 1));
    }
    // Alice leaves the last room: what it notified her of stays listed.
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&rooms[2])),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let newest_first: Vec<(String, bool)> = sent.iter().rev().cloned().collect();
    for limit in [1, 2, 4, 11, 50] {
        for only in ["", "&only=highlight"] {
            let mut got = Vec::new();
            let mut from: Option<String> = None;
            for _ in 0..20 {
                let query = match &from {
                    Some(token) => format!("limit={limit}{only}&from={token}"),
                    None => format!("limit={limit}{only}"),
                };
                let body = notifications(&srv, &alice, &query).await;
                let page = listed(&body);
                assert!(page.len() <= limit, "{body}");
                got.extend(page.into_iter().map(|(id, _, highlight)| (id, highlight)));
                match body["next_token"].as_str() {
                    Some(token) => from = Some(token.to_owned()),
                    None => break,
                }
            }
            let expected: Vec<(String, bool)> = newest_first
                .iter()
                .filter(|(_, highlight)| only.is_empty() || *highlight)
                .cloned()
                .collect();
            assert_eq!(got, expected, "limit {limit}{only}");
        }
    }
    // Bob, the sender, was notified of none of his own messages.
    assert!(listed(&notifications(&srv, &bob, "").await).is_empty());
}

hearth::table!(
    /// The version-8 layout: `(user_id, event position) → Notification`.
    Version8Rows: "notifications", (String, u64) => hearth::service::push::notifications::Notification
);

/// Notifications stored by version 8 (one row per user and event) are listed, read and
/// counted as before once a version-9 server has converted them at its first start.
#[tokio::test]
async fn notifications_of_version_8_are_listed_the_same_after_the_upgrade() {
    use hearth::service::push::notifications::NotifiedTable;
    let mut srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let (_, carol, _) = srv.register("carol", "pw").await;
    let room = create_room(&srv, &bob, json!({"preset": "public_chat"})).await;
    let other = create_room(&srv, &bob, json!({"preset": "public_chat"})).await;
    for r in [&room, &other] {
        join(&srv, &alice, r).await;
        join(&srv, &carol, r).await;
    }
    let mut sent = Vec::new();
    for i in 0..6 {
        let r = if i % 2 == 0 { &room } else { &other };
        let mut content = json!({"msgtype": "m.text", "body": format!("m{i}")});
        if i == 3 {
            content["m.mentions"] = json!({"user_ids": [alice_id]});
        }
        sent.push(send(&srv, &bob, r, &format!("t{i}"), content).await);
    }
    receipt(&srv, &alice, &room, &sent[2], json!({})).await;
    let before = [
        listed(&notifications(&srv, &alice, "").await),
        listed(&notifications(&srv, &carol, "").await),
    ];
    assert_eq!(before[0].len(), 6);
    assert!(before[0]
        .iter()
        .any(|(_, read, highlight)| *read && !highlight));
    assert!(before[0].iter().any(|(_, _, highlight)| *highlight));
    let counts_before = counts(&srv, &alice, &other).await;

    // Back to the version-8 layout, as that version left it.
    srv.stop().await;
    {
        let store = srv.open_store();
        let rows = store.range::<NotifiedTable>(None, false, 1000).unwrap();
        assert_eq!(rows.len(), 6);
        let mut b = hearth::store::Batch::new();
        for ((room_id, sid), event) in rows {
            for user in &event.users {
                let row = hearth::service::push::notifications::Notification {
                    room_id: room_id.clone(),
                    event_id: event.event_id.clone(),
                    thread: event.thread.clone(),
                    highlight: user.highlight,
                    actions: event.actions[user.actions as usize].clone(),
                    ts: event.ts,
                };
                b.put::<Version8Rows>(&(user.user_id.clone(), sid), &row);
            }
            b.delete::<NotifiedTable>(&(room_id, sid));
        }
        put_schema_version(&mut b, 8);
        store.commit(b).await.unwrap();
    }
    srv.start_again().await;
    let after = [
        listed(&notifications(&srv, &alice, "").await),
        listed(&notifications(&srv, &carol, "").await),
    ];
    assert_eq!(after, before);
    assert_eq!(counts(&srv, &alice, &other).await, counts_before);
    // A receipt reads the converted rows like any other.
    receipt(&srv, &alice, &other, &sent[3], json!({})).await;
    assert_eq!(counts(&srv, &alice, &other).await, (1, 0));
    let store = &srv.server.as_ref().unwrap().services.store;
    assert!(store
        .range::<Version8Rows>(None, false, 1)
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .range::<NotifiedTable>(None, false, 1000)
            .unwrap()
            .len(),
        6
    );
}
