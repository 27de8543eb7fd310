//! The deprecated sync API: `/events` (and peeking), `/events/{eventId}`, `/initialSync`,
//! `/rooms/{roomId}/initialSync`; and the federation event format of `/sync` filters.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode, join, TestServer};

async fn send(srv: &TestServer, token: &str, room: &str, txn: &str, text: &str) -> String {
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
            Some(token),
            json!({"msgtype": "m.text", "body": text}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

async fn events(srv: &TestServer, token: &str, query: &str) -> Value {
    let (status, body) = srv
        .get(&format!("/_matrix/client/v3/events?{query}"), Some(token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["chunk"].is_array(), "{body}");
    assert!(
        body["start"].is_string() && body["end"].is_string(),
        "{body}"
    );
    body
}

fn bodies(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

fn end_of(body: &Value) -> String {
    body["end"].as_str().unwrap().to_owned()
}

fn world_readable() -> Value {
    json!({
        "preset": "public_chat",
        "initial_state": [{
            "type": "m.room.history_visibility",
            "state_key": "",
            "content": {"history_visibility": "world_readable"},
        }],
    })
}

#[tokio::test]
async fn events_returns_what_came_after_from() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &alice, json!({})).await;
    send(&srv, &alice, &room, "1", "before").await;

    // Without `from`: from now on, so nothing older.
    let first = events(&srv, &alice, "timeout=0").await;
    assert!(bodies(&first["chunk"]).is_empty(), "{first}");

    send(&srv, &alice, &room, "2", "after").await;
    let next = events(&srv, &alice, &format!("from={}&timeout=0", end_of(&first))).await;
    assert_eq!(bodies(&next["chunk"]), ["after"], "{next}");
    assert_eq!(next["start"], first["end"]);
    assert_eq!(next["chunk"][0]["room_id"], json!(room));
    assert!(next["chunk"][0]["event_id"].is_string());

    // Nothing new since: empty chunk, and the tokens still given.
    let again = events(&srv, &alice, &format!("from={}&timeout=0", end_of(&next))).await;
    assert!(bodies(&again["chunk"]).is_empty(), "{again}");

    // A `/sync` token is an `/events` token.
    let (status, sync) = srv
        .get("/_matrix/client/v3/sync?timeout=0", Some(&alice))
        .await;
    assert_eq!(status, StatusCode::OK);
    send(&srv, &alice, &room, "3", "later").await;
    let from_sync = events(
        &srv,
        &alice,
        &format!("from={}&timeout=0", sync["next_batch"].as_str().unwrap()),
    )
    .await;
    assert_eq!(bodies(&from_sync["chunk"]), ["later"]);

    // An invite shows as the user's own member event, none of the room's other events.
    let (_, carol, _) = srv.register("carol", "pw").await;
    let secret = create_room(&srv, &carol, json!({})).await;
    send(&srv, &carol, &secret, "s", "before the invite").await;
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{secret}/invite"),
            Some(&carol),
            json!({"user_id": alice_id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let invited = events(
        &srv,
        &alice,
        &format!("from={}&timeout=0", end_of(&from_sync)),
    )
    .await;
    let from_secret: Vec<&Value> = invited["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["room_id"] == json!(secret))
        .collect();
    assert_eq!(from_secret.len(), 1, "{invited}");
    assert_eq!(from_secret[0]["content"]["membership"], "invite");
    assert_eq!(from_secret[0]["state_key"], json!(alice_id));

    let (status, body) = srv
        .get("/_matrix/client/v3/events?from=nonsense", Some(&alice))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(errcode(&body), "M_INVALID_PARAM");
}

#[tokio::test]
async fn events_long_poll_wakes_on_a_message_and_times_out_empty() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &room).await;
    let from = end_of(&events(&srv, &bob, "timeout=0").await);

    // Nothing arrives: an empty chunk after the timeout, `start` as given.
    let began = Instant::now();
    let quiet = events(&srv, &bob, &format!("from={from}&timeout=300")).await;
    assert!(began.elapsed() >= Duration::from_millis(300));
    assert!(quiet["chunk"].as_array().unwrap().is_empty(), "{quiet}");
    assert_eq!(quiet["start"], json!(from));

    // A message sent while the request waits wakes it long before its timeout.
    let sender = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        send(&srv, &alice, &room, "1", "wake up").await;
    };
    let began = Instant::now();
    let query = format!("from={from}&timeout=20000");
    let (woken, _) = tokio::join!(events(&srv, &bob, &query), sender);
    assert!(began.elapsed() < Duration::from_secs(10));
    assert_eq!(bodies(&woken["chunk"]), ["wake up"], "{woken}");

    // Presence changes of users sharing a room come through the stream too.
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&alice_id)),
            Some(&alice),
            json!({"presence": "unavailable"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let page = events(&srv, &bob, &format!("from={}&timeout=0", end_of(&woken))).await;
    let presence: Vec<&Value> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.presence")
        .collect();
    assert_eq!(presence.len(), 1, "{page}");
    assert_eq!(presence[0]["sender"], json!(alice_id));
    assert_eq!(presence[0]["content"]["presence"], "unavailable");
}

#[tokio::test]
async fn peeking_a_world_readable_room_without_joining() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, world_readable()).await;
    let other = create_room(&srv, &alice, json!({})).await;
    let start = events(&srv, &bob, &format!("room_id={}&timeout=0", enc(&room))).await;
    send(&srv, &alice, &room, "1", "visible").await;
    send(&srv, &alice, &other, "2", "elsewhere").await;

    let page = events(
        &srv,
        &bob,
        &format!("room_id={}&from={}&timeout=0", enc(&room), end_of(&start)),
    )
    .await;
    assert_eq!(bodies(&page["chunk"]), ["visible"], "{page}");

    // The peek waits for the room's next event, though bob is not a member.
    let sender = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        send(&srv, &alice, &room, "3", "peeked live").await;
    };
    let began = Instant::now();
    let query = format!(
        "room_id={}&from={}&timeout=20000",
        enc(&room),
        end_of(&page)
    );
    let (live, _) = tokio::join!(events(&srv, &bob, &query), sender);
    assert!(began.elapsed() < Duration::from_secs(10));
    assert_eq!(bodies(&live["chunk"]), ["peeked live"], "{live}");

    // Bob's own stream does not carry a room he only peeks at.
    let own = events(&srv, &bob, &format!("from={}&timeout=0", end_of(&start))).await;
    assert!(bodies(&own["chunk"]).is_empty(), "{own}");
}

#[tokio::test]
async fn peeking_a_shared_history_room_is_refused() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    // Public to join, but history only `shared`.
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    send(&srv, &alice, &room, "1", "members only").await;
    for query in [
        format!("room_id={}&timeout=0", enc(&room)),
        "room_id=!unknown:localhost&timeout=0".to_owned(),
    ] {
        let (status, body) = srv
            .get(&format!("/_matrix/client/v3/events?{query}"), Some(&bob))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(errcode(&body), "M_FORBIDDEN");
    }
    // A member may use the same form.
    let page = events(
        &srv,
        &alice,
        &format!("room_id={}&from=0&timeout=0", enc(&room)),
    )
    .await;
    assert!(bodies(&page["chunk"]).contains(&"members only".to_owned()));
}

#[tokio::test]
async fn single_event_follows_history_visibility() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility/"),
            Some(&alice),
            json!({"history_visibility": "joined"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let before = send(&srv, &alice, &room, "1", "before bob").await;
    join(&srv, &bob, &room).await;
    let after = send(&srv, &alice, &room, "2", "after bob").await;

    let get = |token: &str, id: &str| {
        let path = format!("/_matrix/client/v3/events/{}", enc(id));
        let token = token.to_owned();
        let srv = &srv;
        async move { srv.get(&path, Some(&token)).await }
    };
    let (status, body) = get(&bob, &after).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["content"]["body"], "after bob");
    assert_eq!(body["event_id"], json!(after));
    assert_eq!(body["room_id"], json!(room));

    let (status, body) = get(&bob, &before).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(errcode(&body), "M_NOT_FOUND");
    // The sender sees it.
    let (status, _) = get(&alice, &before).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = get(&bob, "$doesnotexist").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(errcode(&body), "M_NOT_FOUND");
}

#[tokio::test]
async fn initial_sync_has_rooms_messages_state_and_invites() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (_, carol, _) = srv.register("carol", "pw").await;
    let room = create_room(&srv, &alice, json!({"name": "Kitchen"})).await;
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        send(&srv, &alice, &room, &i.to_string(), text).await;
    }
    let invited = create_room(&srv, &carol, json!({"invite": [alice_id]})).await;
    let left = create_room(&srv, &alice, json!({})).await;
    send(&srv, &alice, &left, "x", "in the left room").await;
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{left}/leave"),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = srv
        .get("/_matrix/client/v3/initialSync?limit=2", Some(&alice))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["end"].is_string() && body["presence"].is_array(),
        "{body}"
    );
    let rooms = body["rooms"].as_array().unwrap();
    let find = |id: &str| rooms.iter().find(|r| r["room_id"] == json!(id)).cloned();

    let joined = find(&room).expect("joined room");
    assert_eq!(joined["membership"], "join");
    assert_eq!(bodies(&joined["messages"]["chunk"]), ["two", "three"]);
    assert_eq!(joined["messages"]["chunk"].as_array().unwrap().len(), 2);
    assert!(joined["messages"]["start"].is_string());
    assert!(joined["messages"]["end"].is_string());
    let state = joined["state"].as_array().unwrap();
    assert!(state.iter().any(|e| e["type"] == "m.room.create"));
    assert!(state
        .iter()
        .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Kitchen"));
    assert_eq!(joined["visibility"], "private");

    // `start` pages back through `/messages` to the older message.
    let (status, older) = srv
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1&from={}",
                joined["messages"]["start"].as_str().unwrap()
            ),
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{older}");
    assert_eq!(bodies(&older["chunk"]), ["one"]);

    let invite = find(&invited).expect("invite");
    assert_eq!(invite["membership"], "invite");
    assert_eq!(invite["invite"]["content"]["membership"], "invite");
    assert_eq!(invite["invite"]["state_key"], json!(alice_id));
    assert!(find(&left).is_none(), "left rooms only with archived");

    let (status, archived) = srv
        .get(
            "/_matrix/client/v3/initialSync?archived=true&limit=5",
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let left_room = archived["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room_id"] == json!(left))
        .cloned()
        .expect("left room with archived=true");
    assert_eq!(left_room["membership"], "leave");
    assert!(bodies(&left_room["messages"]["chunk"]).contains(&"in the left room".to_owned()));

    // The `end` token continues with `/events`.
    send(&srv, &alice, &room, "4", "four").await;
    let next = events(
        &srv,
        &alice,
        &format!("from={}&timeout=0", body["end"].as_str().unwrap()),
    )
    .await;
    assert_eq!(bodies(&next["chunk"]), ["four"]);

    let (status, body) = srv
        .get("/_matrix/client/v3/initialSync?limit=x", Some(&alice))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn room_initial_sync_for_members_and_world_readable_only() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let open = create_room(&srv, &alice, world_readable()).await;
    let private = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    send(&srv, &alice, &open, "1", "hello readers").await;
    send(&srv, &alice, &private, "2", "hello members").await;
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{open}/receipt/m.read/{}", {
                let (_, msgs) = srv
                    .get(
                        &format!("/_matrix/client/v3/rooms/{open}/messages?dir=b&limit=1"),
                        Some(&alice),
                    )
                    .await;
                enc(msgs["chunk"][0]["event_id"].as_str().unwrap())
            }),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let snapshot = |token: String, room: String| {
        let srv = &srv;
        async move {
            srv.get(
                &format!("/_matrix/client/v3/rooms/{room}/initialSync"),
                Some(&token),
            )
            .await
        }
    };
    for (who, token) in [("member", alice.clone()), ("peeker", bob.clone())] {
        let (status, body) = snapshot(token, open.clone()).await;
        assert_eq!(status, StatusCode::OK, "{who}: {body}");
        assert_eq!(body["room_id"], json!(open));
        assert_eq!(
            bodies(&body["messages"]["chunk"]),
            ["hello readers"],
            "{who}"
        );
        assert!(body["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.history_visibility"));
        assert_eq!(body["visibility"], "private");
        assert!(body["presence"].is_array());
        assert!(
            body["receipts"][0]["content"]
                .as_object()
                .is_some_and(|c| c.values().any(|r| r["m.read"].get(&alice_id).is_some())),
            "{who}: {body}"
        );
    }
    let (_, body) = snapshot(alice.clone(), open.clone()).await;
    assert_eq!(body["membership"], "join");

    let (status, body) = snapshot(bob.clone(), private.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(errcode(&body), "M_FORBIDDEN");
    let (status, _) = snapshot(bob.clone(), "!nope:localhost".to_owned()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
