//! Read authorization (`service::rooms::access`): what invitees, users who rejected an invite,
//! pre-emptively banned users, departed users and users who forgot a room may read, on every
//! read path.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode, join, TestServer};

async fn send(srv: &TestServer, token: &str, room: &str, txn: &str, body: &str) -> String {
    let (status, resp) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
            Some(token),
            json!({"msgtype": "m.text", "body": body}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    resp["event_id"].as_str().unwrap().to_owned()
}

async fn set_name(srv: &TestServer, token: &str, room: &str, name: &str) -> String {
    let (status, resp) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"),
            Some(token),
            json!({ "name": name }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    resp["event_id"].as_str().unwrap().to_owned()
}

async fn member_action(srv: &TestServer, token: &str, room: &str, action: &str, user: &str) {
    let (status, resp) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/{action}"),
            Some(token),
            json!({ "user_id": user }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{action}: {resp}");
}

/// The member event of `user` in the room, as alice (joined) sees it.
async fn member_event_id(srv: &TestServer, token: &str, room: &str, user: &str) -> String {
    let (status, body) = srv
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{room}/state/m.room.member/{}?format=event",
                enc(user)
            ),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

/// Asserts that `token` can read nothing of the room: no state, members, history, events,
/// context, relations or threads (403 for room-level reads, 404 for events).
async fn assert_reads_nothing(srv: &TestServer, token: &str, room: &str, event: &str, who: &str) {
    let event = enc(event);
    let forbidden = [
        format!("/_matrix/client/v3/rooms/{room}/state"),
        format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"),
        format!("/_matrix/client/v3/rooms/{room}/state/m.room.create/"),
        format!("/_matrix/client/v3/rooms/{room}/members"),
        format!("/_matrix/client/v3/rooms/{room}/joined_members"),
        format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"),
        format!("/_matrix/client/v3/rooms/{room}/messages?dir=f"),
        format!("/_matrix/client/v1/rooms/{room}/threads"),
    ];
    for path in forbidden {
        let (status, body) = srv.get(&path, Some(token)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{who}: {path}: {body}");
        assert_eq!(errcode(&body), "M_FORBIDDEN", "{who}: {path}");
    }
    let hidden = [
        format!("/_matrix/client/v3/rooms/{room}/event/{event}"),
        format!("/_matrix/client/v1/rooms/{room}/relations/{event}"),
    ];
    for path in hidden {
        let (status, body) = srv.get(&path, Some(token)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{who}: {path}: {body}");
    }
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/context/{event}"),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{who}: context: {body}");
    assert!(body.get("state").is_none(), "{who}: context leaks state");
}

#[tokio::test]
async fn invitee_reads_nothing_but_their_invite() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"name": "Secret plans"})).await;
    let message = send(&srv, &alice, &room, "t1", "the secret").await;
    member_action(&srv, &alice, &room, "invite", &bob_id).await;
    let invite = member_event_id(&srv, &alice, &room, &bob_id).await;

    assert_reads_nothing(&srv, &bob, &room, &message, "invitee").await;
    // The invite itself: readable as an event (it is the invitee's own membership), but the
    // context around it would carry the full room state, so it is refused (404, as for an
    // event the user may not see).
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/event/{}", enc(&invite)),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/context/{}", enc(&invite)),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.get("state").is_none(), "{body}");
    // Receipts on events the invitee cannot see are refused.
    let (status, _) = srv
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{room}/receipt/m.read/{}",
                enc(&message)
            ),
            Some(&bob),
            json!({}),
        )
        .await;
    assert!(status.is_client_error(), "{status}");
}

#[tokio::test]
async fn rejected_invite_and_preemptive_ban_read_nothing() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let (carol_id, carol, _) = srv.register("carol", "pw").await;
    let room = create_room(&srv, &alice, json!({"name": "Secret plans"})).await;
    let message = send(&srv, &alice, &room, "t1", "the secret").await;

    // Bob rejects an invite: a leave row, but he was never joined.
    member_action(&srv, &alice, &room, "invite", &bob_id).await;
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_reads_nothing(&srv, &bob, &room, &message, "rejected invite").await;

    // Carol is banned before she ever joined: a ban row, never joined.
    member_action(&srv, &alice, &room, "ban", &carol_id).await;
    assert_reads_nothing(&srv, &carol, &room, &message, "pre-emptive ban").await;
}

/// A rejected invite shows up in `/sync`'s `leave` section with the user's own membership
/// events, never the room's state.
#[tokio::test]
async fn rejected_invite_in_sync_has_no_room_state() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    // The token predates the room, so the room's whole state is "new" to bob's client.
    let (status, body) = srv.get("/_matrix/client/v3/sync", Some(&bob)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let since = body["next_batch"].as_str().unwrap().to_owned();
    let room = create_room(&srv, &alice, json!({"name": "Secret plans"})).await;
    member_action(&srv, &alice, &room, "invite", &bob_id).await;
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/sync?since={since}&timeout=0"),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let left = &body["rooms"]["leave"][&room];
    assert!(left.is_object(), "{body}");
    let state = left["state"]["events"].as_array().unwrap();
    assert!(state.is_empty(), "room state leaked: {state:?}");
    for event in left["timeline"]["events"].as_array().unwrap() {
        assert_eq!(event["type"], "m.room.member", "{event}");
        assert_eq!(event["state_key"], bob_id.as_str(), "{event}");
    }
}

#[tokio::test]
async fn departed_user_reads_up_to_their_leave_only() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(
        &srv,
        &alice,
        json!({"name": "Before", "preset": "public_chat"}),
    )
    .await;
    join(&srv, &bob, &room).await;
    let before = send(&srv, &alice, &room, "t1", "while bob was here").await;
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let after = send(&srv, &alice, &room, "t2", "after bob left").await;
    set_name(&srv, &alice, &room, "After").await;
    // A later invite that bob rejects does not extend his view.
    member_action(&srv, &alice, &room, "invite", &bob_id).await;
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, name) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{name}");
    assert_eq!(name["name"], "Before");
    let (status, state) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/state"),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{state}");
    let own = state
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob_id.as_str())
        .unwrap();
    assert_eq!(own["content"]["membership"], "leave");
    let (status, members) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/members"),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{members}");

    for dir in ["b", "f"] {
        let (status, page) = srv
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/messages?dir={dir}&limit=100"),
                Some(&bob),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let ids: Vec<&str> = page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["event_id"].as_str())
            .collect();
        assert!(ids.contains(&before.as_str()), "{dir}: {ids:?}");
        assert!(!ids.contains(&after.as_str()), "{dir}: {ids:?}");
        assert!(
            page["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["type"] != "m.room.name" || e["content"]["name"] == "Before"),
            "{page}"
        );
    }
    let (status, _) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/event/{}", enc(&before)),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/event/{}", enc(&after)),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, context) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/context/{}", enc(&before)),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{context}");
    let after_ids: Vec<&Value> = context["events_after"].as_array().unwrap().iter().collect();
    assert!(
        after_ids.iter().all(|e| e["event_id"] != after.as_str()),
        "{context}"
    );
    let name = context["state"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.name")
        .unwrap();
    assert_eq!(name["content"]["name"], "Before");
}

#[tokio::test]
async fn forgotten_room_is_gone_from_every_read_path() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &room).await;
    let message = send(&srv, &alice, &room, "t1", "seen by bob").await;
    for action in ["leave", "forget"] {
        let (status, body) = srv
            .post(
                &format!("/_matrix/client/v3/rooms/{room}/{action}"),
                Some(&bob),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{action}: {body}");
    }
    assert_reads_nothing(&srv, &bob, &room, &message, "forgotten").await;
}

/// In a room whose history is visible to invitees (`invited`), a user who rejects the invite
/// was never joined: their `/sync` `leave` section carries their own membership events only,
/// never the messages sent while they were invited (as every other read path refuses them).
#[tokio::test]
async fn rejected_invite_in_sync_hides_history_of_invited_room() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let (status, body) = srv.get("/_matrix/client/v3/sync", Some(&bob)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let since = body["next_batch"].as_str().unwrap().to_owned();
    let room = create_room(&srv, &alice, json!({"name": "Secret plans"})).await;
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility/"),
            Some(&alice),
            json!({"history_visibility": "invited"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    member_action(&srv, &alice, &room, "invite", &bob_id).await;
    let message = send(&srv, &alice, &room, "t1", "the secret").await;
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_reads_nothing(&srv, &bob, &room, &message, "rejected invite").await;

    let filter = enc(r#"{"room":{"include_leave":true}}"#);
    for path in [
        format!("/_matrix/client/v3/sync?since={since}&timeout=0"),
        format!("/_matrix/client/v3/sync?filter={filter}&timeout=0"),
    ] {
        let (status, body) = srv.get(&path, Some(&bob)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let left = &body["rooms"]["leave"][&room];
        assert!(left.is_object(), "{path}: {body}");
        let events = left["timeline"]["events"].as_array().unwrap();
        assert!(
            !events.is_empty(),
            "{path}: the leave itself is missing: {body}"
        );
        for event in events {
            assert_eq!(event["type"], "m.room.member", "{path}: leaked {event}");
            assert_eq!(
                event["state_key"],
                bob_id.as_str(),
                "{path}: leaked {event}"
            );
        }
    }
}

/// Spec: an `m.room.history_visibility` event is visible when the visibility before *or* after
/// it allows. A room that goes from `shared` to `joined` before bob joins: bob sees the change
/// (the `shared` before it lets him, since he joined later), not the messages after it.
#[tokio::test]
async fn a_history_visibility_change_is_visible_if_before_or_after_allows() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    let shared = send(&srv, &alice, &room, "t1", "while shared").await;
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility/"),
            Some(&alice),
            json!({"history_visibility": "joined"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let change = body["event_id"].as_str().unwrap().to_owned();
    let hidden = send(&srv, &alice, &room, "t2", "while joined only").await;
    join(&srv, &bob, &room).await;

    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ids: Vec<&str> = body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&change.as_str()), "{ids:?}");
    assert!(ids.contains(&shared.as_str()), "{ids:?}");
    assert!(!ids.contains(&hidden.as_str()), "{ids:?}");
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/event/{}", enc(&change)),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Bundled aggregations read the children with the same access as every other path: a user
/// who left an `invited`-visibility room and was invited again sees no edit made after their
/// leave bundled onto a message they could read.
#[tokio::test]
async fn bundled_edits_follow_the_departure_cut_off() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(
        &srv,
        &alice,
        json!({"preset": "public_chat", "initial_state": [{
            "type": "m.room.history_visibility", "state_key": "",
            "content": {"history_visibility": "invited"}}]}),
    )
    .await;
    join(&srv, &bob, &room).await;
    let room = enc(&room);
    let root = send(&srv, &alice, &room, "t1", "original").await;
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    member_action(&srv, &alice, &room, "invite", &bob_id).await;
    // An edit while bob is invited again: `invited` visibility alone would show it to him.
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t2"),
            Some(&alice),
            json!({"msgtype": "m.text", "body": "* edited", "m.new_content":
                {"msgtype": "m.text", "body": "edited"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": root}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let path = format!("/_matrix/client/v3/rooms/{room}/event/{}", enc(&root));
    let (status, body) = srv.get(&path, Some(&alice)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["unsigned"]["m.relations"]["m.replace"].is_object(),
        "the sender sees the edit bundled: {body}"
    );
    let (status, body) = srv.get(&path, Some(&bob)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "bob read the message while joined: {body}"
    );
    assert!(
        body["unsigned"].get("m.relations").is_none(),
        "an edit after bob's leave is bundled for him: {body}"
    );
}
