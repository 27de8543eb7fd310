//! `/sync` room sections: rooms left inside the window, timeline tokens, lazy-loaded
//! members, profile changes reaching rooms, ignored users.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, join, TestServer};

async fn sync(srv: &TestServer, token: &str, query: &str) -> Value {
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/sync?timeout=0&{query}"),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn next_batch(body: &Value) -> String {
    body["next_batch"].as_str().expect("next_batch").to_owned()
}

async fn send(srv: &TestServer, token: &str, room: &str, text: &str) -> String {
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                enc(room),
                enc(text)
            ),
            Some(token),
            json!({"msgtype": "m.text", "body": text}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

async fn leave(srv: &TestServer, token: &str, room: &str) {
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(room)),
            Some(token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn set_name(srv: &TestServer, token: &str, room: &str, name: &str) {
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(room)),
            Some(token),
            json!({ "name": name }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn events<'a>(section: &'a Value, part: &str) -> &'a Vec<Value> {
    section[part]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{part}.events in {section}"))
}

fn texts(section: &Value) -> Vec<&str> {
    events(section, "timeline")
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect()
}

fn has_state(section: &Value, kind: &str, key: &str) -> bool {
    events(section, "state")
        .iter()
        .any(|e| e["type"] == kind && e["state_key"] == key)
}

#[tokio::test]
async fn a_room_left_inside_the_window_comes_with_its_state_up_to_the_leave() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &room).await;
    let since = next_batch(&sync(&srv, &bob, "").await);

    // Inside the window: a renamed room, more messages than the timeline limit, the leave,
    // then more that bob must not see.
    set_name(&srv, &alice, &room, "Renamed").await;
    for n in 0..3 {
        send(&srv, &alice, &room, &format!("m{n}")).await;
    }
    leave(&srv, &bob, &room).await;
    set_name(&srv, &alice, &room, "After").await;
    send(&srv, &alice, &room, "after").await;

    let filter = enc(&json!({"room": {"timeline": {"limit": 2}}}).to_string());
    let body = sync(&srv, &bob, &format!("since={since}&filter={filter}")).await;
    let left = &body["rooms"]["leave"][&room];
    let timeline = events(left, "timeline");
    assert_eq!(texts(left), ["m2"], "{left}");
    let last = timeline.last().unwrap();
    assert_eq!(
        (
            &last["type"],
            &last["state_key"],
            &last["content"]["membership"]
        ),
        (&json!("m.room.member"), &json!(bob_id), &json!("leave"))
    );
    assert_eq!(left["timeline"]["limited"], true);
    // The rename happened before the timeline's start: it is in `state`, as of the leave.
    let names: Vec<&Value> = events(left, "state")
        .iter()
        .filter(|e| e["type"] == "m.room.name")
        .map(|e| &e["content"]["name"])
        .collect();
    assert_eq!(names, [&json!("Renamed")], "{left}");
    assert!(body["rooms"]["join"].get(&room).is_none());
}

#[tokio::test]
async fn a_room_joined_and_left_inside_the_window_comes_in_full() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(
        &srv,
        &alice,
        json!({"preset": "public_chat", "name": "Lobby", "topic": "Chat"}),
    )
    .await;
    send(&srv, &alice, &room, "before").await;
    let since = next_batch(&sync(&srv, &bob, "").await);

    join(&srv, &bob, &room).await;
    send(&srv, &alice, &room, "hello bob").await;
    leave(&srv, &bob, &room).await;
    set_name(&srv, &alice, &room, "After").await;

    let body = sync(&srv, &bob, &format!("since={since}")).await;
    let left = &body["rooms"]["leave"][&room];
    // The client never saw this room: it gets the room's state (as of the start of the
    // timeline), not only what changed since its token.
    let in_state_or_timeline = |kind: &str, key: &str| {
        has_state(left, kind, key)
            || events(left, "timeline")
                .iter()
                .any(|e| e["type"] == kind && e["state_key"] == key)
    };
    for kind in [
        "m.room.create",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.name",
    ] {
        assert!(in_state_or_timeline(kind, ""), "{kind} missing: {left}");
    }
    assert!(texts(left).contains(&"hello bob"), "{left}");
    let last = events(left, "timeline").last().unwrap();
    assert_eq!(
        (&last["state_key"], &last["content"]["membership"]),
        (&json!(bob_id), &json!("leave"))
    );
    // Nothing after the leave: the later rename is not there.
    let all = [events(left, "state"), events(left, "timeline")];
    assert!(
        !all.iter()
            .flat_map(|e| e.iter())
            .any(|e| e["content"]["name"] == "After"),
        "{left}"
    );
}

#[tokio::test]
async fn a_rejected_invite_shows_no_room_state() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"name": "Private"})).await;
    send(&srv, &alice, &room, "secret").await;
    let since = next_batch(&sync(&srv, &bob, "").await);
    set_name(&srv, &alice, &room, "Still private").await;
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&alice),
            json!({"user_id": bob_id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    leave(&srv, &bob, &room).await;
    let body = sync(&srv, &bob, &format!("since={since}")).await;
    let left = &body["rooms"]["leave"][&room];
    assert!(events(left, "state").is_empty(), "{left}");
    assert!(texts(left).is_empty(), "{left}");
}

async fn messages_back(srv: &TestServer, token: &str, room: &str, from: &str) -> Value {
    let (status, body) = srv
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50&from={}",
                enc(room),
                enc(from)
            ),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn chunk_texts(body: &Value) -> Vec<&str> {
    body["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect()
}

#[tokio::test]
async fn prev_batch_of_initial_and_empty_timelines_pages_back_correctly() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &alice, json!({})).await;
    for n in 0..5 {
        send(&srv, &alice, &room, &format!("m{n}")).await;
    }

    // An initial sync with a limited timeline: paging back continues just before it.
    let filter = enc(&json!({"room": {"timeline": {"limit": 2}}}).to_string());
    let body = sync(&srv, &alice, &format!("filter={filter}")).await;
    let joined = &body["rooms"]["join"][&room];
    assert_eq!(texts(joined), ["m3", "m4"]);
    let prev = joined["timeline"]["prev_batch"]
        .as_str()
        .expect("prev_batch");
    let page = messages_back(&srv, &alice, &room, prev).await;
    assert_eq!(chunk_texts(&page), ["m2", "m1", "m0"], "{page}");

    // An initial sync whose timeline is empty (filtered) still has a prev_batch, and paging
    // back from it starts with the newest event.
    let filter = enc(&json!({"room": {"timeline": {"types": ["org.example.none"]}}}).to_string());
    let body = sync(&srv, &alice, &format!("filter={filter}")).await;
    let joined = &body["rooms"]["join"][&room];
    assert!(events(joined, "timeline").is_empty(), "{joined}");
    let prev = joined["timeline"]["prev_batch"]
        .as_str()
        .unwrap_or_else(|| panic!("prev_batch in {joined}"));
    let page = messages_back(&srv, &alice, &room, prev).await;
    assert_eq!(chunk_texts(&page)[..2], ["m4", "m3"], "{page}");

    // An incremental sync where the room has only account data: the empty timeline's
    // prev_batch also pages back from the newest event.
    let since = next_batch(&body);
    let (status, tag) = srv
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{}/tags/u.work",
                enc(&whoami(&srv, &alice).await),
                enc(&room)
            ),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tag}");
    let body = sync(&srv, &alice, &format!("since={since}")).await;
    let joined = &body["rooms"]["join"][&room];
    assert!(events(joined, "timeline").is_empty(), "{joined}");
    let prev = joined["timeline"]["prev_batch"]
        .as_str()
        .unwrap_or_else(|| panic!("prev_batch in {joined}"));
    let page = messages_back(&srv, &alice, &room, prev).await;
    assert_eq!(chunk_texts(&page)[..2], ["m4", "m3"], "{page}");
}

async fn whoami(srv: &TestServer, token: &str) -> String {
    let (status, body) = srv
        .get("/_matrix/client/v3/account/whoami", Some(token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["user_id"].as_str().unwrap().to_owned()
}

fn state_members(section: &Value) -> Vec<&str> {
    events(section, "state")
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .filter_map(|e| e["state_key"].as_str())
        .collect()
}

#[tokio::test]
async fn lazy_loading_sends_a_new_speakers_member_event_once_per_session() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let (carol_id, carol, _) = srv.register("carol", "pw").await;
    // Named, so the summary needs no heroes (whose member events would come too).
    let room = create_room(&srv, &alice, json!({"preset": "public_chat", "name": "N"})).await;
    join(&srv, &bob, &room).await;
    join(&srv, &carol, &room).await;
    send(&srv, &alice, &room, "a0").await;
    let lazy = enc(
        &json!({"room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": true}}})
            .to_string(),
    );
    let redundant = enc(
        &json!({"room": {"state": {"lazy_load_members": true, "include_redundant_members": true}}})
            .to_string(),
    );
    let body = sync(&srv, &alice, &format!("filter={lazy}")).await;
    assert!(!state_members(&body["rooms"]["join"][&room]).contains(&carol_id.as_str()));
    let since = next_batch(&body);

    // Carol joined before the token but speaks for the first time after it: her member
    // event comes with the incremental sync.
    send(&srv, &carol, &room, "c0").await;
    let body = sync(&srv, &alice, &format!("filter={lazy}&since={since}")).await;
    let joined = &body["rooms"]["join"][&room];
    assert_eq!(state_members(joined), [carol_id.as_str()], "{joined}");
    // A retry from the same token (the response was lost) carries it again.
    let retry = sync(&srv, &alice, &format!("filter={lazy}&since={since}")).await;
    assert_eq!(
        state_members(&retry["rooms"]["join"][&room]),
        [carol_id.as_str()]
    );
    let since = next_batch(&body);

    // Once delivered, not again...
    send(&srv, &carol, &room, "c1").await;
    let body = sync(&srv, &alice, &format!("filter={lazy}&since={since}")).await;
    let joined = &body["rooms"]["join"][&room];
    assert!(state_members(joined).is_empty(), "{joined}");
    let since = next_batch(&body);

    // ...unless the filter asks for redundant members.
    send(&srv, &carol, &room, "c2").await;
    send(&srv, &bob, &room, "b0").await;
    let body = sync(&srv, &alice, &format!("filter={redundant}&since={since}")).await;
    let mut members = state_members(&body["rooms"]["join"][&room]);
    members.sort();
    assert_eq!(members, [bob_id.as_str(), carol_id.as_str()]);

    // A new session (initial sync) starts over: carol's member event comes again with her
    // next message after it.
    let body = sync(&srv, &alice, &format!("filter={lazy}")).await;
    let since = next_batch(&body);
    send(&srv, &alice, &room, "a1").await;
    send(&srv, &carol, &room, "c3").await;
    let body = sync(&srv, &alice, &format!("filter={lazy}&since={since}")).await;
    assert_eq!(
        state_members(&body["rooms"]["join"][&room]),
        [carol_id.as_str()]
    );
}

/// The `m.room.member` events for `user` in a joined room's timeline.
fn member_events<'a>(body: &'a Value, room: &str, user: &str) -> Vec<&'a Value> {
    body["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["type"] == "m.room.member" && e["state_key"] == user)
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_profile_change_reaches_every_joined_room_and_only_those() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let one = create_room(&srv, &bob, json!({"preset": "public_chat"})).await;
    let two = create_room(&srv, &bob, json!({"preset": "public_chat"})).await;
    let left = create_room(&srv, &bob, json!({"preset": "public_chat"})).await;
    for room in [&one, &two, &left] {
        join(&srv, &alice, room).await;
    }
    leave(&srv, &alice, &left).await;
    let user = enc(&alice_id);
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/profile/{user}/avatar_url"),
            Some(&alice),
            json!({"avatar_url": "mxc://localhost/abc"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let since = next_batch(&sync(&srv, &bob, "").await);

    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/profile/{user}/displayname"),
            Some(&alice),
            json!({"displayname": "Alice Liddell"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let body = sync(&srv, &bob, &format!("since={since}")).await;
    for room in [&one, &two] {
        let events = member_events(&body, room, &alice_id);
        assert_eq!(events.len(), 1, "{room}: {body}");
        let content = &events[0]["content"];
        assert_eq!(content["membership"], "join");
        assert_eq!(content["displayname"], "Alice Liddell");
        assert_eq!(content["avatar_url"], "mxc://localhost/abc");
        assert_eq!(events[0]["sender"], alice_id.as_str());
    }
    // Alice left this one: no event (and she is not rejoined).
    assert!(body["rooms"]["join"].get(&left).is_none(), "{body}");
    let (status, members) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&left)),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{members}");
    assert!(members["joined"].get(&alice_id).is_none(), "{members}");

    // Removing the avatar announces a member event without it.
    let since = next_batch(&body);
    let (status, body) = srv
        .call(
            reqwest::Method::DELETE,
            &format!("/_matrix/client/v3/profile/{user}/avatar_url"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body = sync(&srv, &bob, &format!("since={since}")).await;
    let events = member_events(&body, &one, &alice_id);
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["content"]["displayname"], "Alice Liddell");
    assert!(events[0]["content"].get("avatar_url").is_none(), "{body}");
}

#[tokio::test]
async fn profile_change_events_are_rate_limited_per_room_without_refusing_the_change() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (carol_id, carol, _) = srv.register("carol", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let busy = create_room(&srv, &bob, json!({"preset": "public_chat"})).await;
    let quiet = create_room(&srv, &bob, json!({"preset": "public_chat"})).await;
    join(&srv, &alice, &busy).await;
    join(&srv, &alice, &quiet).await;
    join(&srv, &carol, &busy).await;
    // Carol renames herself over and over until the busy room's budget runs out (a rename
    // that is not announced there); every rename itself succeeds.
    let mut limited = false;
    for n in 0..200 {
        let name = format!("carol {n}");
        let (status, body) = srv
            .put(
                &format!("/_matrix/client/v3/profile/{}/displayname", enc(&carol_id)),
                Some(&carol),
                json!({ "displayname": name }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, page) = srv
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1",
                    enc(&busy)
                ),
                Some(&bob),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        if page["chunk"][0]["content"]["displayname"] != name.as_str() {
            limited = true;
            break;
        }
    }
    assert!(limited, "the busy room never limited profile-change events");
    let since = next_batch(&sync(&srv, &bob, "").await);
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice_id)),
            Some(&alice),
            json!({"displayname": "Alice"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, name) = srv
        .get(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice_id)),
            None,
        )
        .await;
    assert_eq!(name["displayname"], "Alice");
    let body = sync(&srv, &bob, &format!("since={since}")).await;
    // The quiet room is not held back by the busy one.
    assert_eq!(member_events(&body, &quiet, &alice_id).len(), 1, "{body}");
    assert!(member_events(&body, &busy, &alice_id).is_empty(), "{body}");
}

async fn set_ignored(srv: &TestServer, token: &str, user: &str, ignored: &[&str]) {
    let list: serde_json::Map<String, Value> =
        ignored.iter().map(|u| (u.to_string(), json!({}))).collect();
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
                enc(user)
            ),
            Some(token),
            json!({ "ignored_users": list }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn ignored_users_events_invites_and_to_device_messages_are_not_delivered() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, bob_device) = srv.register("bob", "pw").await;
    let (_, carol, _) = srv.register("carol", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &carol, &room).await;
    join(&srv, &bob, &room).await;
    let since = next_batch(&sync(&srv, &bob, "").await);

    set_ignored(&srv, &bob, &bob_id, &[&alice_id]).await;
    send(&srv, &alice, &room, "from alice").await;
    send(&srv, &carol, &room, "from carol").await;
    set_name(&srv, &alice, &room, "Named by alice").await;
    let other = create_room(&srv, &alice, json!({})).await;
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&other)),
            Some(&alice),
            json!({"user_id": bob_id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = srv
        .put(
            "/_matrix/client/v3/sendToDevice/m.dummy/t1",
            Some(&alice),
            json!({"messages": {&bob_id: {&bob_device: {"from": "alice"}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The first sync after the change already ignores alice: not her message, invite or
    // to-device message; her state event (the name) still comes, and so does the new list.
    let body = sync(&srv, &bob, &format!("since={since}")).await;
    let joined = &body["rooms"]["join"][&room];
    assert_eq!(texts(joined), ["from carol"], "{joined}");
    assert!(
        events(joined, "timeline")
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["sender"] == alice_id.as_str()),
        "{joined}"
    );
    // Nor does her message count as unread (carol's does; a name change notifies nobody).
    assert_eq!(
        joined["unread_notifications"]["notification_count"], 1,
        "{joined}"
    );
    assert!(body["rooms"]["invite"].get(&other).is_none(), "{body}");
    assert_eq!(body["to_device"]["events"], json!([]), "{body}");
    let account_data = body["account_data"]["events"].as_array().unwrap();
    assert!(account_data
        .iter()
        .any(|e| e["type"] == "m.ignored_user_list"
            && e["content"]["ignored_users"].get(&alice_id).is_some()));
    let since = next_batch(&body);

    // /messages and the events around a /context leave out her messages too (not her state).
    let (status, page) = srv
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
                enc(&room)
            ),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let chunk = page["chunk"].as_array().unwrap();
    let bodies: Vec<&str> = chunk
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, ["from carol"], "{page}");
    assert!(chunk.iter().any(|e| e["type"] == "m.room.name"), "{page}");
    let carol_event = chunk
        .iter()
        .find(|e| e["content"]["body"] == "from carol")
        .unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, context) = srv
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/context/{}?limit=10",
                enc(&room),
                enc(&carol_event)
            ),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{context}");
    for side in ["events_before", "events_after"] {
        assert!(
            context[side]
                .as_array()
                .into_iter()
                .flatten()
                .all(|e| e["sender"] != alice_id.as_str() || e.get("state_key").is_some()),
            "{context}"
        );
    }

    // Un-ignoring: alice's new events come again; what was missed is not resent.
    set_ignored(&srv, &bob, &bob_id, &[]).await;
    send(&srv, &alice, &room, "alice again").await;
    let body = sync(&srv, &bob, &format!("since={since}")).await;
    assert_eq!(texts(&body["rooms"]["join"][&room]), ["alice again"]);
}

#[tokio::test]
async fn an_unreadable_ignored_user_list_is_refused() {
    let srv = TestServer::start().await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let path = format!(
        "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
        enc(&bob_id)
    );
    for bad in [
        json!({}),
        json!({"ignored_users": ["@alice:localhost"]}),
        json!({"ignored_users": {"alice": {}}}),
    ] {
        let (status, body) = srv.put(&path, Some(&bob), bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["errcode"], "M_BAD_JSON", "{bad}");
    }
}

/// A room without a name or canonical alias is named after the summary's heroes: a
/// lazy-loading client gets their member events even when they said nothing in the timeline
/// (once per session), and a named room needs no heroes.
#[tokio::test]
async fn lazy_loading_includes_the_heroes_of_an_unnamed_room() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &room).await;
    for i in 0..5 {
        send(&srv, &alice, &room, &format!("a{i}")).await;
    }
    let lazy = enc(
        &json!({"room": {"timeline": {"limit": 2}, "state": {"lazy_load_members": true}}})
            .to_string(),
    );
    let body = sync(&srv, &alice, &format!("filter={lazy}")).await;
    let joined = &body["rooms"]["join"][&room];
    assert_eq!(joined["summary"]["m.heroes"], json!([bob_id]), "{joined}");
    let mut members = state_members(joined);
    members.sort();
    let mut expected = [alice_id.as_str(), bob_id.as_str()];
    expected.sort();
    assert_eq!(members, expected, "{joined}");
    let since = next_batch(&body);

    // Delivered once: not again while the session lasts.
    send(&srv, &alice, &room, "a5").await;
    let body = sync(&srv, &alice, &format!("filter={lazy}&since={since}")).await;
    let joined = &body["rooms"]["join"][&room];
    assert!(state_members(joined).is_empty(), "{joined}");
    let since = next_batch(&body);

    // Once the room has a name, no heroes are needed.
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"),
            Some(&alice),
            json!({"name": "Named"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body = sync(&srv, &alice, &format!("filter={lazy}&since={since}")).await;
    let joined = &body["rooms"]["join"][&room];
    assert!(joined["summary"].get("m.heroes").is_none(), "{joined}");
}
