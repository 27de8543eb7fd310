//! Invites, rejections, rescinded invites, bans and knocks across real Hearth servers
//! (`fed_common`), driven over HTTP: A's user invites B's user, B's server co-signs the
//! invite and shows it in `/sync` with the room's stripped state although B is not in the
//! room; what ends the invite (a kick, a ban) travels to B and moves the room to `leave`.
//! `inbound`: hand-signed `/invite` requests and transactions B refuses. `legacy`: `invite` v1,
//! served and used. `moderation`: knocks, bans and upgrades across servers. `push`: remote
//! invites notify.

mod inbound;
mod legacy;
mod moderation;
mod push;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode};
use crate::fed_common::{start_many, FedServer};

pub fn services(s: &FedServer) -> &hearth::service::Services {
    &s.server.as_ref().expect("running").services
}

/// The token of an initial sync.
pub async fn sync_token(srv: &FedServer, token: &str) -> String {
    let (status, body) = srv
        .get("/_matrix/client/v3/sync?timeout=0", Some(token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["next_batch"].as_str().unwrap().to_owned()
}

/// Long-polls `/sync` from `since` until `done` holds for a response (bounded: 60 polls,
/// 30 s); returns that response.
pub async fn sync_until(
    srv: &FedServer,
    token: &str,
    since: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut since = since.to_owned();
    for _ in 0..60 {
        let path = format!("/_matrix/client/v3/sync?timeout=500&since={since}");
        let (status, body) = srv.get(&path, Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if done(&body) {
            return body;
        }
        since = body["next_batch"].as_str().unwrap().to_owned();
        assert!(Instant::now() < deadline, "never saw {what}");
    }
    panic!("never saw {what}");
}

pub async fn invite(a: &FedServer, token: &str, room_id: &str, user: &str) -> (StatusCode, Value) {
    a.post(
        &format!("/_matrix/client/v3/rooms/{}/invite", enc(room_id)),
        Some(token),
        json!({ "user_id": user }),
    )
    .await
}

/// `user`'s member event in the room as A's client API shows it (status, content).
pub async fn member_content(
    a: &FedServer,
    token: &str,
    room_id: &str,
    user: &str,
) -> (StatusCode, Value) {
    a.get(
        &format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(room_id),
            enc(user)
        ),
        Some(token),
    )
    .await
}

/// The timeline events of a room in a sync's `leave` section.
pub fn left_events<'a>(sync: &'a Value, room_id: &str) -> Vec<&'a Value> {
    sync["rooms"]["leave"][room_id]["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .collect()
}

/// Waits (bounded: 20 s) until `to` processed a transaction from `from` carrying `event_id`.
pub async fn wait_delivered(from: &FedServer, to: &FedServer, event_id: &str) {
    use hearth::service::federation::receive::InboundTxns;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let txns = services(to)
            .store
            .range::<InboundTxns>(None, false, 1000)
            .unwrap();
        let arrived = txns
            .iter()
            .filter(|((origin, _), _)| origin == &from.name)
            .any(|(_, txn)| txn.pdus.iter().any(|(id, _)| id == event_id));
        if arrived {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{event_id} never reached {}",
            to.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn state_id(srv: &FedServer, room_id: &str, kind: &str, state_key: &str) -> String {
    let rooms = &services(srv).rooms;
    let room = rooms
        .room(&ruma::RoomId::parse(room_id).unwrap())
        .unwrap()
        .unwrap();
    rooms
        .state_event(room.sid, &kind.into(), state_key)
        .unwrap()
        .unwrap()
        .pdu
        .event_id
        .to_string()
}

#[tokio::test]
async fn an_invite_shows_on_the_invitees_server_and_a_kick_rescinds_it() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (alice, alice_token, _) = a.register("alice", "password1").await;
    let (bob, bob_token, _) = b.register("bob", "password1").await;
    let room_id = create_room(
        a,
        &alice_token,
        json!({"preset": "private_chat", "name": "Across servers", "topic": "t"}),
    )
    .await;
    let since = sync_token(b, &bob_token).await;

    let (status, body) = invite(a, &alice_token, &room_id, &bob).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, content) = member_content(a, &alice_token, &room_id, &bob).await;
    assert_eq!(status, StatusCode::OK, "{content}");
    assert_eq!(content["membership"], "invite");
    // The stored invite carries B's signature next to A's.
    let room = services(a)
        .rooms
        .room(&ruma::RoomId::parse(&room_id).unwrap())
        .unwrap()
        .unwrap();
    let stored = services(a)
        .rooms
        .state_event(room.sid, &"m.room.member".into(), &bob)
        .unwrap()
        .unwrap();
    let signatures = serde_json::to_value(&stored.json["signatures"]).unwrap();
    assert!(signatures.get(&b.name).is_some(), "{signatures}");
    assert!(signatures.get(&a.name).is_some(), "{signatures}");

    // B's user sees the invite with the room's stripped state, B being no part of the room.
    let sync = sync_until(b, &bob_token, &since, "the invite", |s| {
        s["rooms"]["invite"][&room_id].is_object()
    })
    .await;
    let events = sync["rooms"]["invite"][&room_id]["invite_state"]["events"]
        .as_array()
        .unwrap()
        .clone();
    let find = |kind: &str, key: &str| {
        events
            .iter()
            .find(|e| e["type"] == kind && e["state_key"] == key)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} {key:?} in {events:?}"))
    };
    find("m.room.create", "");
    assert_eq!(
        find("m.room.join_rules", "")["content"]["join_rule"],
        "invite"
    );
    assert_eq!(find("m.room.name", "")["content"]["name"], "Across servers");
    assert_eq!(
        find("m.room.member", &alice)["content"]["membership"],
        "join"
    );
    let own = find("m.room.member", &bob);
    assert_eq!(own["content"]["membership"], "invite");
    assert_eq!(own["sender"], json!(alice));
    assert_eq!(own["event_id"], json!(stored.pdu.event_id));
    for event in &events {
        // Stripped state only: nothing of the PDUs A sent passes through.
        for key in event.as_object().unwrap().keys() {
            assert!(
                [
                    "type",
                    "state_key",
                    "sender",
                    "content",
                    "event_id",
                    "origin_server_ts"
                ]
                .contains(&key.as_str()),
                "{key} in {event}"
            );
        }
    }
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // Alice takes the invite back: the kick reaches B, which shows the room as left.
    let (status, body) = a
        .post(
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room_id)),
            Some(&alice_token),
            json!({"user_id": bob, "reason": "wrong person"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = sync_until(b, &bob_token, &since, "the rescinded invite", |s| {
        !left_events(s, &room_id).is_empty()
    })
    .await;
    let leave = left_events(&sync, &room_id)[0].clone();
    assert_eq!(leave["content"]["membership"], "leave", "{leave}");
    assert_eq!(leave["sender"], json!(alice));
    assert_eq!(leave["state_key"], json!(bob));
    assert!(sync["rooms"]["invite"].get(&room_id).is_none(), "{sync}");
    // An initial sync no longer lists the invite either.
    let (_, initial) = b
        .get("/_matrix/client/v3/sync?timeout=0", Some(&bob_token))
        .await;
    assert!(
        initial["rooms"]["invite"].get(&room_id).is_none(),
        "{initial}"
    );
}

#[tokio::test]
async fn invites_the_invitees_server_refuses_change_nothing() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice_token, _) = a.register("alice", "password1").await;
    let room_id = create_room(a, &alice_token, json!({"preset": "private_chat"})).await;

    // No such user on B.
    let nobody = b.user_id("nobody");
    let (status, body) = invite(a, &alice_token, &room_id, &nobody).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(errcode(&body), "M_NOT_FOUND");
    let (status, _) = member_content(a, &alice_token, &room_id, &nobody).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing stored for {nobody}");

    // A server that does not answer (nothing listens on port 1).
    let unreachable = "@carol:127.0.0.1:1";
    let (status, body) = invite(a, &alice_token, &room_id, unreachable).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let (status, _) = member_content(a, &alice_token, &room_id, unreachable).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A server the room's ACL denies is not asked at all.
    b.register("bob", "password1").await;
    let (status, body) = a
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.server_acl/",
                enc(&room_id)
            ),
            Some(&alice_token),
            json!({"allow": ["*"], "deny": [], "allow_ip_literals": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let bob = b.user_id("bob");
    let (status, body) = invite(a, &alice_token, &room_id, &bob).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = member_content(a, &alice_token, &room_id, &bob).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn rejecting_a_remote_invite_moves_it_to_leave() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice_token, _) = a.register("alice", "password1").await;
    let (bob, bob_token, _) = b.register("bob", "password1").await;
    let room_id = create_room(a, &alice_token, json!({"preset": "private_chat"})).await;
    let since = sync_token(b, &bob_token).await;
    let (status, body) = invite(a, &alice_token, &room_id, &bob).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = sync_until(b, &bob_token, &since, "the invite", |s| {
        s["rooms"]["invite"][&room_id].is_object()
    })
    .await;
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)),
            Some(&bob_token),
            json!({"reason": "no thanks"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The leave went through A (make_leave/send_leave): A's room shows it.
    let (status, content) = member_content(a, &alice_token, &room_id, &bob).await;
    assert_eq!(status, StatusCode::OK, "{content}");
    assert_eq!(content["membership"], "leave", "{content}");
    assert_eq!(content["reason"], "no thanks", "{content}");
    let sync = sync_until(b, &bob_token, &since, "the rejection", |s| {
        !left_events(s, &room_id).is_empty()
    })
    .await;
    assert!(sync["rooms"]["invite"].get(&room_id).is_none(), "{sync}");
    let leave = left_events(&sync, &room_id)[0].clone();
    assert_eq!(leave["sender"], json!(bob), "{leave}");
    assert_eq!(leave["content"]["membership"], "leave", "{leave}");
    // Leaving again changes nothing; forgetting hides the room from later syncs.
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)),
            Some(&bob_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/rooms/{}/forget", enc(&room_id)),
            Some(&bob_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, initial) = b
        .get(
            "/_matrix/client/v3/sync?timeout=0&filter=%7B%22room%22%3A%7B%22include_leave%22%3Atrue%7D%7D",
            Some(&bob_token),
        )
        .await;
    assert!(
        initial["rooms"]["leave"].get(&room_id).is_none(),
        "{initial}"
    );
}

#[tokio::test]
async fn an_invited_remote_user_joins_through_the_inviters_server() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice_token, _) = a.register("alice", "password1").await;
    let (bob, bob_token, _) = b.register("bob", "password1").await;
    let room_id = create_room(a, &alice_token, json!({"preset": "private_chat"})).await;
    let since = sync_token(b, &bob_token).await;
    let (status, body) = invite(a, &alice_token, &room_id, &bob).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = sync_until(b, &bob_token, &since, "the invite", |s| {
        s["rooms"]["invite"][&room_id].is_object()
    })
    .await;
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // No server named: the invite tells B where to join through.
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room_id)),
            Some(&bob_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, content) = member_content(a, &alice_token, &room_id, &bob).await;
    assert_eq!(content["membership"], "join", "{content}");
    let sync = sync_until(b, &bob_token, &since, "the joined room", |s| {
        s["rooms"]["join"][&room_id].is_object()
    })
    .await;
    assert!(sync["rooms"]["invite"].get(&room_id).is_none(), "{sync}");
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // Alice's next message reaches Bob on B.
    let (status, body) = a
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/t1",
                enc(&room_id)
            ),
            Some(&alice_token),
            json!({"msgtype": "m.text", "body": "welcome"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = sync_until(b, &bob_token, &since, "Alice's message", |s| {
        s["rooms"]["join"][&room_id]["timeline"]["events"]
            .as_array()
            .is_some_and(|events| events.iter().any(|e| e["content"]["body"] == "welcome"))
    })
    .await;
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // B is in the room now: an invite of another of its users comes as a PDU of the room too,
    // and is shown from the room's own state.
    let (carol, carol_token, _) = b.register("carol", "password1").await;
    let carol_since = sync_token(b, &carol_token).await;
    let (status, body) = invite(a, &alice_token, &room_id, &carol).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let room_sid = services(b)
        .rooms
        .room(&ruma::RoomId::parse(&room_id).unwrap())
        .unwrap()
        .unwrap()
        .sid;
    sync_until(b, &carol_token, &carol_since, "Carol's invite", |s| {
        s["rooms"]["invite"][&room_id].is_object()
    })
    .await;
    assert!(services(b)
        .rooms
        .state_event(room_sid, &"m.room.member".into(), &carol)
        .unwrap()
        .is_some());
    assert!(services(b)
        .rooms
        .remote_invite(
            &ruma::UserId::parse(&carol).unwrap(),
            &ruma::RoomId::parse(&room_id).unwrap()
        )
        .unwrap()
        .is_none());

    // A ban of the joined remote user: B shows the room as left, with the ban.
    let (status, body) = a
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room_id)),
            Some(&alice_token),
            json!({"user_id": bob, "reason": "bye"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = sync_until(b, &bob_token, &since, "the ban", |s| {
        s["rooms"]["leave"][&room_id].is_object()
    })
    .await;
    let banned = left_events(&sync, &room_id)
        .into_iter()
        .any(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "ban");
    assert!(banned, "{sync}");
}

#[tokio::test]
async fn invites_work_in_every_room_version() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice_token, _) = a.register("alice", "password1").await;
    let (bob, bob_token, _) = b.register("bob", "password1").await;
    let mut since = sync_token(b, &bob_token).await;
    for version in 1..=12 {
        let room_id = create_room(
            a,
            &alice_token,
            json!({"preset": "private_chat", "room_version": version.to_string()}),
        )
        .await;
        let (status, body) = invite(a, &alice_token, &room_id, &bob).await;
        assert_eq!(status, StatusCode::OK, "v{version}: {body}");
        let sync = sync_until(b, &bob_token, &since, "the invite", |s| {
            s["rooms"]["invite"][&room_id].is_object()
        })
        .await;
        let events = sync["rooms"]["invite"][&room_id]["invite_state"]["events"]
            .as_array()
            .unwrap();
        let create = events
            .iter()
            .find(|e| e["type"] == "m.room.create")
            .unwrap_or_else(|| panic!("v{version}: {events:?}"));
        assert_eq!(create["content"]["room_version"], version.to_string());
        since = sync["next_batch"].as_str().unwrap().to_owned();
        // Rescinded at once: every version's kick reaches B too.
        let (status, body) = a
            .post(
                &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room_id)),
                Some(&alice_token),
                json!({"user_id": bob}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "v{version}: {body}");
        let sync = sync_until(b, &bob_token, &since, "the rescinded invite", |s| {
            !left_events(s, &room_id).is_empty()
        })
        .await;
        since = sync["next_batch"].as_str().unwrap().to_owned();
    }
}

#[tokio::test]
async fn an_invite_of_a_server_that_is_gone_can_still_be_rejected() {
    let mut fed = start_many(2).await;
    let (_, alice_token, _) = fed.servers[0].register("alice", "password1").await;
    let (bob, bob_token, _) = fed.servers[1].register("bob", "password1").await;
    let room_id = create_room(
        &fed.servers[0],
        &alice_token,
        json!({"preset": "private_chat"}),
    )
    .await;
    let since = sync_token(&fed.servers[1], &bob_token).await;
    let (status, body) = invite(&fed.servers[0], &alice_token, &room_id, &bob).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let b = &fed.servers[1];
    let sync = sync_until(b, &bob_token, &since, "the invite", |s| {
        s["rooms"]["invite"][&room_id].is_object()
    })
    .await;
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // A is gone: the rejection cannot reach the room, and is recorded on B all the same.
    fed.servers[0].stop().await;
    let b = &fed.servers[1];
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)),
            Some(&bob_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = sync_until(b, &bob_token, &since, "the rejection", |s| {
        s["rooms"]["leave"][&room_id].is_object()
    })
    .await;
    assert!(left_events(&sync, &room_id).is_empty(), "{sync}");
    assert!(sync["rooms"]["invite"].get(&room_id).is_none(), "{sync}");
}

#[tokio::test]
async fn invites_from_ignored_users_of_other_servers_are_not_shown() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (alice, alice_token, _) = a.register("alice", "password1").await;
    let (_, carol_token, _) = a.register("carol", "password1").await;
    let (bob, bob_token, _) = b.register("bob", "password1").await;
    let (status, body) = b
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
                enc(&bob)
            ),
            Some(&bob_token),
            json!({"ignored_users": {alice.clone(): {}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let since = sync_token(b, &bob_token).await;
    let ignored_room = create_room(a, &alice_token, json!({"preset": "private_chat"})).await;
    let (status, body) = invite(a, &alice_token, &ignored_room, &bob).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Carol's invite, sent after Alice's, shows; Alice's does not.
    let room = create_room(a, &carol_token, json!({"preset": "private_chat"})).await;
    let (status, body) = invite(a, &carol_token, &room, &bob).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = sync_until(b, &bob_token, &since, "Carol's invite", |s| {
        s["rooms"]["invite"][&room].is_object()
    })
    .await;
    assert!(
        sync["rooms"]["invite"].get(&ignored_room).is_none(),
        "{sync}"
    );
    let (_, initial) = b
        .get("/_matrix/client/v3/sync?timeout=0", Some(&bob_token))
        .await;
    assert!(
        initial["rooms"]["invite"].get(&ignored_room).is_none(),
        "{initial}"
    );
    assert!(initial["rooms"]["invite"][&room].is_object(), "{initial}");
}

/// `createRoom` with users of other servers in `invite` (how Element starts a direct chat with
/// them): the room is created and each is invited through their server, `is_direct` and all.
#[tokio::test]
async fn create_room_invites_users_of_other_servers() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (alice, alice_token, _) = a.register("alice", "password1").await;
    let (bob, bob_token, _) = b.register("bob", "password1").await;
    let since = sync_token(b, &bob_token).await;
    let room_id = create_room(
        a,
        &alice_token,
        json!({"preset": "trusted_private_chat", "is_direct": true, "invite": [bob]}),
    )
    .await;

    let (status, content) = member_content(a, &alice_token, &room_id, &bob).await;
    assert_eq!(status, StatusCode::OK, "{content}");
    assert_eq!(content["membership"], "invite");
    assert_eq!(content["is_direct"], true);
    let sync = sync_until(b, &bob_token, &since, "the direct invite", |s| {
        s["rooms"]["invite"][&room_id].is_object()
    })
    .await;
    let events = sync["rooms"]["invite"][&room_id]["invite_state"]["events"]
        .as_array()
        .unwrap();
    let own = events
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == json!(bob))
        .expect("the invitee's own member event");
    assert_eq!(own["sender"], json!(alice));
    assert_eq!(own["content"]["is_direct"], true);

    // A user of a server that does not exist: the room is still created, without that invite.
    let gone = "@nobody:127.0.0.1:1";
    let room_id = create_room(a, &alice_token, json!({"invite": [gone]})).await;
    let (status, _) = member_content(a, &alice_token, &room_id, gone).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
