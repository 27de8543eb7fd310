//! Invites, rejections, rescinded invites, bans and knocks across two real Hearth servers
//! (`fed_common`), driven over HTTP: A's user invites B's user, B's server co-signs the
//! invite and shows it in `/sync` with the room's stripped state although B is not in the
//! room; what ends the invite (a kick, a ban) travels to B and moves the room to `leave`.
//! Hand-signed `/invite` requests check what B refuses to sign.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use ruma::{signatures::Ed25519KeyPair, CanonicalJsonObject, RoomVersionId};
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode};
use crate::fed_common::{start_many, FedServer};
use crate::fed_pdus::events::{now_ms, Remote};

fn services(s: &FedServer) -> &hearth::service::Services {
    &s.server.as_ref().expect("running").services
}

/// The token of an initial sync.
async fn sync_token(srv: &FedServer, token: &str) -> String {
    let (status, body) = srv
        .get("/_matrix/client/v3/sync?timeout=0", Some(token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["next_batch"].as_str().unwrap().to_owned()
}

/// Long-polls `/sync` from `since` until `done` holds for a response (bounded: 60 polls,
/// 30 s); returns that response.
async fn sync_until(
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

async fn invite(a: &FedServer, token: &str, room_id: &str, user: &str) -> (StatusCode, Value) {
    a.post(
        &format!("/_matrix/client/v3/rooms/{}/invite", enc(room_id)),
        Some(token),
        json!({ "user_id": user }),
    )
    .await
}

/// `user`'s member event in the room as A's client API shows it (status, content).
async fn member_content(
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
fn left_events<'a>(sync: &'a Value, room_id: &str) -> Vec<&'a Value> {
    sync["rooms"]["leave"][room_id]["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .collect()
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
async fn a_ban_of_an_invited_remote_user_reaches_their_server() {
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

    let (status, body) = a
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room_id)),
            Some(&alice_token),
            json!({"user_id": bob}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = sync_until(b, &bob_token, &since, "the ban", |s| {
        !left_events(s, &room_id).is_empty()
    })
    .await;
    assert_eq!(
        left_events(&sync, &room_id)[0]["content"]["membership"],
        "ban"
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

/// An invite of `invitee` by `@carol` of `remote`'s server, as B would send it.
fn invite_event(remote: &Remote, invitee: &str, version: &RoomVersionId) -> (String, Value) {
    let rules = version.rules().unwrap();
    let room_id = format!("!nowhere:{}", remote.name);
    let value = json!({
        "type": "m.room.member",
        "room_id": room_id,
        "sender": remote.user("carol"),
        "state_key": invitee,
        "origin_server_ts": now_ms(),
        "depth": 7,
        "prev_events": ["$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"],
        "auth_events": ["$bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"],
        "content": {"membership": "invite"},
    });
    let object: CanonicalJsonObject = serde_json::from_value(value).unwrap();
    let (event_id, object) = remote.sign(&rules, object);
    (event_id.to_string(), serde_json::to_value(&object).unwrap())
}

fn stripped_create(remote: &Remote) -> Value {
    json!({"type": "m.room.create", "state_key": "", "sender": remote.user("carol"),
           "content": {"room_version": "10", "creator": remote.user("carol")}})
}

async fn put_invite(
    b: &FedServer,
    a: &FedServer,
    event_id: &str,
    body: Value,
) -> (StatusCode, Value) {
    let room_id = body["event"]["room_id"].as_str().unwrap().to_owned();
    let path = format!(
        "/_matrix/federation/v2/invite/{}/{}",
        enc(&room_id),
        enc(event_id)
    );
    b.signed(a, &a.name, Method::PUT, &path, Some(body)).await
}

#[tokio::test]
async fn inbound_invites_are_checked_before_they_are_signed() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (alice, alice_token, _) = a.register("alice", "password1").await;
    let since = sync_token(a, &alice_token).await;
    let real = Remote::server(b);
    let v10 = RoomVersionId::V10;

    // Signed with a key B never had, under B's key id.
    let forged = Remote {
        name: b.name.clone(),
        key: Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), real.key.version().to_owned())
            .unwrap(),
    };
    let (event_id, event) = invite_event(&forged, &alice, &v10);
    let body = json!({"room_version": "10", "event": event, "invite_room_state": [stripped_create(&real)]});
    let (status, answer) = put_invite(b, a, &event_id, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(errcode(&answer), "M_INVALID_PARAM");

    // A room version A does not know.
    let (event_id, event) = invite_event(&real, &alice, &v10);
    let body =
        json!({"room_version": "org.example.unknown", "event": event, "invite_room_state": []});
    let (status, answer) = put_invite(b, a, &event_id, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(errcode(&answer), "M_INCOMPATIBLE_ROOM_VERSION");
    assert_eq!(answer["room_version"], "org.example.unknown");

    // A sender of another server than the one asking.
    let other = Remote::new("elsewhere.test");
    let (event_id, event) = invite_event(&other, &alice, &v10);
    let body = json!({"room_version": "10", "event": event, "invite_room_state": []});
    let (status, answer) = put_invite(b, a, &event_id, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    // The stripped state's server ACL denies B.
    let (event_id, event) = invite_event(&real, &alice, &v10);
    let acl = json!({"type": "m.room.server_acl", "state_key": "", "sender": real.user("carol"),
                     "content": {"allow": ["*"], "allow_ip_literals": false}});
    let body = json!({"room_version": "10", "event": event, "invite_room_state": [stripped_create(&real), acl]});
    let (status, answer) = put_invite(b, a, &event_id, body).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");

    // An event id that is not the event's.
    let (_, event) = invite_event(&real, &alice, &v10);
    let (other_id, _) = invite_event(&real, &a.user_id("someone"), &v10);
    let body = json!({"room_version": "10", "event": event, "invite_room_state": []});
    let (status, answer) = put_invite(b, a, &other_id, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    // Room version 12: the create event is required, and stripped state must be full events.
    let v12 = RoomVersionId::V12;
    let (event_id, event) = invite_event(&real, &alice, &v12);
    let body = json!({"room_version": "12", "event": event, "invite_room_state": []});
    let (status, answer) = put_invite(b, a, &event_id, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(errcode(&answer), "M_MISSING_PARAM");
    let body = json!({"room_version": "12", "event": event, "invite_room_state": [stripped_create(&real)]});
    let (status, answer) = put_invite(b, a, &event_id, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(errcode(&answer), "M_INVALID_PARAM");

    // Nothing of that reached Alice.
    let (_, sync) = a
        .get(
            &format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
            Some(&alice_token),
        )
        .await;
    assert!(
        sync["rooms"]["invite"]
            .as_object()
            .is_none_or(|m| m.is_empty()),
        "{sync}"
    );

    // The same invite properly signed: A signs it and Alice sees it.
    let (event_id, event) = invite_event(&real, &alice, &v10);
    let body = json!({"room_version": "10", "event": event, "invite_room_state": [stripped_create(&real)]});
    let (status, answer) = put_invite(b, a, &event_id, body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(
        answer["event"]["signatures"][&a.name].is_object(),
        "{answer}"
    );
    assert!(
        answer["event"]["signatures"][&b.name].is_object(),
        "{answer}"
    );
    let room_id = format!("!nowhere:{}", b.name);
    let sync = sync_until(a, &alice_token, &since, "the invite", |s| {
        s["rooms"]["invite"][&room_id].is_object()
    })
    .await;
    let events = &sync["rooms"]["invite"][&room_id]["invite_state"]["events"];
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.create"),
        "{events}"
    );
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
async fn a_knock_through_the_rooms_server_shows_on_both_sides() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice_token, _) = a.register("alice", "password1").await;
    let (bob, bob_token, _) = b.register("bob", "password1").await;
    let room_id = create_room(
        a,
        &alice_token,
        json!({"preset": "private_chat", "name": "Knock here", "room_version": "10",
               "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}]}),
    )
    .await;
    let since = sync_token(b, &bob_token).await;

    let (status, body) = b
        .post(
            &format!(
                "/_matrix/client/v3/knock/{}?via={}",
                enc(&room_id),
                enc(&a.name)
            ),
            Some(&bob_token),
            json!({"reason": "let me in"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], json!(room_id));
    let (status, content) = member_content(a, &alice_token, &room_id, &bob).await;
    assert_eq!(status, StatusCode::OK, "{content}");
    assert_eq!(content["membership"], "knock");
    assert_eq!(content["reason"], "let me in");

    let sync = sync_until(b, &bob_token, &since, "the knock", |s| {
        s["rooms"]["knock"][&room_id].is_object()
    })
    .await;
    let events = sync["rooms"]["knock"][&room_id]["knock_state"]["events"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        events.iter().any(|e| e["type"] == "m.room.create"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Knock here"),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == json!(bob)
            && e["content"]["membership"] == "knock"),
        "{events:?}"
    );
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // Withdrawing the knock: a leave through A.
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)),
            Some(&bob_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, content) = member_content(a, &alice_token, &room_id, &bob).await;
    assert_eq!(content["membership"], "leave", "{content}");
    let sync = sync_until(b, &bob_token, &since, "the withdrawn knock", |s| {
        !left_events(s, &room_id).is_empty()
    })
    .await;
    assert!(sync["rooms"]["knock"].get(&room_id).is_none(), "{sync}");
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // Knocking again, and Alice turns the knock down: the kick reaches B.
    let (status, body) = b
        .post(
            &format!(
                "/_matrix/client/v3/knock/{}?via={}",
                enc(&room_id),
                enc(&a.name)
            ),
            Some(&bob_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = sync_until(b, &bob_token, &since, "the second knock", |s| {
        s["rooms"]["knock"][&room_id].is_object()
    })
    .await;
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let (status, body) = a
        .post(
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room_id)),
            Some(&alice_token),
            json!({"user_id": bob, "reason": "not now"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = sync_until(b, &bob_token, &since, "the refused knock", |s| {
        !left_events(s, &room_id).is_empty()
    })
    .await;
    let refusal = left_events(&sync, &room_id)[0].clone();
    assert_eq!(refusal["content"]["reason"], "not now", "{refusal}");
    assert_ne!(refusal["sender"], json!(bob), "{refusal}");
}

/// Waits (bounded: 20 s) until `to` processed a transaction from `from` carrying `event_id`.
async fn wait_delivered(from: &FedServer, to: &FedServer, event_id: &str) {
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

fn state_id(srv: &FedServer, room_id: &str, kind: &str, state_key: &str) -> String {
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
async fn bans_and_tombstones_reach_remote_servers_whose_users_follow_the_upgrade() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice_token, _) = a.register("alice", "password1").await;
    let room_id = create_room(
        a,
        &alice_token,
        json!({"preset": "public_chat", "room_version": "10"}),
    )
    .await;

    // A pre-emptive ban of a user whose server has nobody in the room still goes there.
    let carol = b.user_id("carol");
    let (status, body) = a
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room_id)),
            Some(&alice_token),
            json!({"user_id": carol}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_delivered(a, b, &state_id(a, &room_id, "m.room.member", &carol)).await;

    // B's user joins over federation; the upgrade's tombstone reaches B, whose user sees it
    // and follows it into the replacement room through A.
    let (bob, bob_token, _) = b.register("bob", "password1").await;
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room_id)),
            Some(&bob_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let since = sync_token(b, &bob_token).await;
    let (status, body) = a
        .post(
            &format!("/_matrix/client/v3/rooms/{}/upgrade", enc(&room_id)),
            Some(&alice_token),
            json!({"new_version": "11"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let replacement = body["replacement_room"].as_str().unwrap().to_owned();
    let tombstone = state_id(a, &room_id, "m.room.tombstone", "");
    wait_delivered(a, b, &tombstone).await;
    let sync = sync_until(b, &bob_token, &since, "the tombstone", |s| {
        s["rooms"]["join"][&room_id]["timeline"]["events"]
            .as_array()
            .is_some_and(|events| events.iter().any(|e| e["type"] == "m.room.tombstone"))
    })
    .await;
    let events = sync["rooms"]["join"][&room_id]["timeline"]["events"]
        .as_array()
        .unwrap();
    let shown = events
        .iter()
        .find(|e| e["type"] == "m.room.tombstone")
        .unwrap();
    assert_eq!(shown["content"]["replacement_room"], json!(replacement));
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&replacement)),
            Some(&bob_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, content) = member_content(a, &alice_token, &replacement, &bob).await;
    assert_eq!(content["membership"], "join", "{content}");
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

/// A leave of `target` in `room_id` by `sender` of `remote`, at `depth`.
fn leave_event(
    remote: &Remote,
    room_id: &str,
    sender: &str,
    target: &str,
    depth: u64,
) -> (String, Value) {
    let rules = RoomVersionId::V10.rules().unwrap();
    let value = json!({
        "type": "m.room.member",
        "room_id": room_id,
        "sender": sender,
        "state_key": target,
        "origin_server_ts": now_ms(),
        "depth": depth,
        "prev_events": ["$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"],
        "auth_events": ["$bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"],
        "content": {"membership": "leave"},
    });
    let object: CanonicalJsonObject = serde_json::from_value(value).unwrap();
    let (event_id, object) = remote.sign(&rules, object);
    (event_id.to_string(), serde_json::to_value(&object).unwrap())
}

#[tokio::test]
async fn only_the_inviting_side_can_rescind_an_invite() {
    let fed = start_many(3).await;
    let (a, b, c) = (&fed.servers[0], &fed.servers[1], &fed.servers[2]);
    let (alice, alice_token, _) = a.register("alice", "password1").await;
    let (bob, bob_token, _) = b.register("bob", "password1").await;
    let room_id = create_room(
        a,
        &alice_token,
        json!({"preset": "private_chat", "room_version": "10"}),
    )
    .await;
    let since = sync_token(b, &bob_token).await;
    let (status, body) = invite(a, &alice_token, &room_id, &bob).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = sync_until(b, &bob_token, &since, "the invite", |s| {
        s["rooms"]["invite"][&room_id].is_object()
    })
    .await;
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let invite_depth = services(a)
        .rooms
        .room(&ruma::RoomId::parse(&room_id).unwrap())
        .unwrap()
        .unwrap()
        .depth;

    let txn = |origin: &str, pdu: Value| json!({"origin": origin, "origin_server_ts": now_ms(), "pdus": [pdu]});
    // A server with no part in the invite.
    let mallory = c.user_id("mallory");
    let (forged_id, forged) = leave_event(
        &Remote::server(c),
        &room_id,
        &mallory,
        &bob,
        invite_depth + 1,
    );
    let body = txn(&c.name, forged);
    let (status, answer) = c
        .signed(
            b,
            &b.name,
            Method::PUT,
            "/_matrix/federation/v1/send/x1",
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["pdus"][&forged_id]["error"].is_string(), "{answer}");
    // The inviting server, but an event older than the invite.
    let (old_id, old) = leave_event(&Remote::server(a), &room_id, &alice, &bob, invite_depth - 1);
    let body = txn(&a.name, old);
    let (status, answer) = a
        .signed(
            b,
            &b.name,
            Method::PUT,
            "/_matrix/federation/v1/send/x2",
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["pdus"][&old_id]["error"].is_string(), "{answer}");

    // Bob is still invited.
    let (_, sync) = b
        .get(
            &format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
            Some(&bob_token),
        )
        .await;
    assert!(sync["rooms"]["leave"].get(&room_id).is_none(), "{sync}");
    let (_, initial) = b
        .get("/_matrix/client/v3/sync?timeout=0", Some(&bob_token))
        .await;
    assert!(
        initial["rooms"]["invite"][&room_id].is_object(),
        "{initial}"
    );
}
