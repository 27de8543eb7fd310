//! Joins over federation between real Hearth servers on loopback: a user of B joins a room of
//! A (`make_join`/`send_join` v2, B verifying A's answer and storing the room in one batch),
//! after which the room works on both sides — messages both ways through /sync, the same
//! state, leaves and kicks delivered. Plus the resident side's refusals (unsupported room
//! version, forged events), `omit_members`, restricted joins, and knocks on A by hand-signed
//! requests. The resident side by hand-signed requests is in `resident.rs`, outliers in
//! `outliers.rs`.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use ruma::{CanonicalJsonObject, RoomVersionId};
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode};
use crate::fed_common::{start_many, FedServer};
use crate::fed_pdus::events::Remote;

mod outliers;
mod resident;

fn services(s: &FedServer) -> &hearth::service::Services {
    &s.server.as_ref().expect("running").services
}

/// `/join/{room}` with `server_name`/`via` servers.
pub(crate) async fn join_via(
    srv: &FedServer,
    token: &str,
    room: &str,
    via: &[&str],
) -> (StatusCode, Value) {
    let query: Vec<String> = via
        .iter()
        .map(|s| format!("server_name={}", enc(s)))
        .collect();
    srv.post(
        &format!("/_matrix/client/v3/join/{}?{}", enc(room), query.join("&")),
        Some(token),
        json!({}),
    )
    .await
}

pub(crate) async fn send_text(
    srv: &FedServer,
    token: &str,
    room: &str,
    txn: &str,
    body: &str,
) -> String {
    let (status, sent) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                enc(room)
            ),
            Some(token),
            json!({"msgtype": "m.text", "body": body}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    sent["event_id"].as_str().unwrap().to_owned()
}

/// Syncs until the room's timeline shows a message with `body` (bounded: 20 s).
pub(crate) async fn wait_for_message(srv: &FedServer, token: &str, room: &str, body: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut since: Option<String> = None;
    loop {
        let path = match &since {
            Some(s) => format!("/_matrix/client/v3/sync?timeout=2000&since={s}"),
            None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
        };
        let (status, sync) = srv.get(&path, Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{sync}");
        let found = sync["rooms"]["join"][room]["timeline"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["content"]["body"] == body);
        if found {
            return;
        }
        since = sync["next_batch"].as_str().map(str::to_owned);
        assert!(
            Instant::now() < deadline,
            "{body:?} never reached {} in {room}",
            srv.name
        );
    }
}

/// Polls until `check` holds for the room's member list on `srv` (bounded: 20 s).
async fn wait_for_membership(srv: &FedServer, token: &str, room: &str, user: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(room),
            enc(user)
        );
        let (status, content) = srv.get(&path, Some(token)).await;
        if status == StatusCode::OK && content["membership"] == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{user} never became {want} on {}: {status} {content}",
            srv.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The room's state on `srv` as `(type, state_key) → event_id`, sorted.
pub(crate) async fn state_ids(
    srv: &FedServer,
    token: &str,
    room: &str,
) -> Vec<(String, String, String)> {
    // A room joined with partial state: its state once the full state is fetched.
    crate::fed_partial::wait_for_full_state(srv, room).await;
    let (status, state) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state", enc(room)),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{state}");
    let mut out: Vec<_> = state
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["state_key"].as_str().unwrap().to_owned(),
                e["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_remote_user_joins_by_id_and_both_sides_talk() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice, _) = a.register("alice", "password1").await;
    let (bob_id, bob, _) = b.register("bob", "password1").await;
    let room = create_room(
        a,
        &alice,
        json!({"preset": "public_chat", "name": "Hearth"}),
    )
    .await;
    send_text(a, &alice, &room, "a0", "before bob").await;

    // B is not in the room and, without a server to ask, cannot join it.
    let (status, body) = join_via(b, &bob, &room, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let (status, body) = join_via(b, &bob, &room, &[&a.name]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room);
    // Joining again changes nothing (B is now in the room).
    let (status, body) = join_via(b, &bob, &room, &[&a.name]).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    wait_for_membership(a, &alice, &room, &bob_id, "join").await;
    assert_eq!(
        state_ids(a, &alice, &room).await,
        state_ids(b, &bob, &room).await
    );

    // The room on B shows its name and members to Bob's sync.
    let (status, sync) = b.get("/_matrix/client/v3/sync?timeout=0", Some(&bob)).await;
    assert_eq!(status, StatusCode::OK);
    let joined = &sync["rooms"]["join"][&room];
    let state_types: Vec<&str> = joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .chain(joined["timeline"]["events"].as_array().unwrap())
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(state_types.contains(&"m.room.name"), "{joined}");
    assert!(state_types.contains(&"m.room.create"), "{joined}");

    send_text(b, &bob, &room, "b1", "hello from B").await;
    wait_for_message(a, &alice, &room, "hello from B").await;
    send_text(a, &alice, &room, "a1", "hello from A").await;
    wait_for_message(b, &bob, &room, "hello from A").await;
    // The history before the join is not in B's timeline until B's /messages pages past the
    // join: then it is backfilled from A (`pdus/backfill.rs`), older than the join.
    let (status, page) = b
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
    let position = |test: &dyn Fn(&Value) -> bool| chunk.iter().position(test);
    let before = position(&|e| e["content"]["body"] == "before bob").expect("backfilled");
    let join = position(&|e| e["type"] == "m.room.member" && e["state_key"] == bob_id.as_str())
        .expect("bob's join");
    assert!(join < before, "newest first: {page}");

    // Bob leaves: A sees it.
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_for_membership(a, &alice, &room, &bob_id, "leave").await;

    // While B is out of the room, A's room changes; Bob joins again through A, and B's
    // stored room takes A's state.
    let (status, body) = a
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                enc(&room)
            ),
            Some(&alice),
            json!({"topic": "while bob was away"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = join_via(b, &bob, &room, &[&a.name]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_for_membership(a, &alice, &room, &bob_id, "join").await;
    assert_eq!(
        state_ids(a, &alice, &room).await,
        state_ids(b, &bob, &room).await
    );
    send_text(a, &alice, &room, "a2", "welcome back").await;
    wait_for_message(b, &bob, &room, "welcome back").await;
}

#[tokio::test]
async fn joins_by_alias_in_every_room_version_and_kicks_reach_the_joiner() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice, _) = a.register("alice", "password1").await;
    let (bob_id, bob, _) = b.register("bob", "password1").await;
    for version in 1..=12 {
        let alias_name = format!("v{version}");
        let room = create_room(
            a,
            &alice,
            json!({
                "preset": "public_chat",
                "room_version": version.to_string(),
                "room_alias_name": alias_name,
            }),
        )
        .await;
        // By alias: A's directory answer names A as a server in the room.
        let alias = format!("#{alias_name}:{}", a.name);
        let (status, body) = b
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&alias)),
                Some(&bob),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "version {version}: {body}");
        assert_eq!(body["room_id"], room, "version {version}");
        wait_for_membership(a, &alice, &room, &bob_id, "join").await;
        assert_eq!(
            state_ids(a, &alice, &room).await,
            state_ids(b, &bob, &room).await,
            "version {version}"
        );
        let text = format!("bob in v{version}");
        send_text(b, &bob, &room, &format!("t{version}"), &text).await;
        wait_for_message(a, &alice, &room, &text).await;
        if version == 12 {
            // Alice kicks Bob: B learns it and Bob can no longer send.
            let (status, body) = a
                .post(
                    &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room)),
                    Some(&alice),
                    json!({"user_id": bob_id, "reason": "test"}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            wait_for_membership(b, &bob, &room, &bob_id, "leave").await;
            let (status, body) = b
                .put(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/send/m.room.message/after-kick",
                        enc(&room)
                    ),
                    Some(&bob),
                    json!({"msgtype": "m.text", "body": "still here?"}),
                )
                .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        }
    }
}

/// `origin` asks `to` for a join template of `user` in `room` (hand-signed request).
async fn make_join(
    from: &FedServer,
    to: &FedServer,
    room: &str,
    user: &str,
    ver: &[&str],
) -> (StatusCode, Value) {
    let query: Vec<String> = ver.iter().map(|v| format!("ver={v}")).collect();
    from.signed(
        to,
        &to.name,
        Method::GET,
        &format!(
            "/_matrix/federation/v1/make_join/{}/{}?{}",
            enc(room),
            enc(user),
            query.join("&")
        ),
        None,
    )
    .await
}

/// The template of a `make_*` answer, signed by `remote` as the joining server would:
/// `(event id, event)`.
fn sign_template(
    remote: &Remote,
    version: &str,
    template: &Value,
) -> (ruma::OwnedEventId, CanonicalJsonObject) {
    let rules = RoomVersionId::try_from(version).unwrap().rules().unwrap();
    let mut value = template.clone();
    value["origin_server_ts"] = json!(crate::fed_pdus::events::now_ms());
    let object: CanonicalJsonObject = serde_json::from_value(value).unwrap();
    remote.sign(&rules, object)
}

fn value_of(object: &CanonicalJsonObject) -> Value {
    serde_json::to_value(object).unwrap()
}

async fn send_join(
    from: &FedServer,
    to: &FedServer,
    room: &str,
    event_id: &str,
    event: Value,
    omit_members: bool,
) -> (StatusCode, Value) {
    from.signed(
        to,
        &to.name,
        Method::PUT,
        &format!(
            "/_matrix/federation/v2/send_join/{}/{}?omit_members={omit_members}",
            enc(room),
            enc(event_id)
        ),
        Some(event),
    )
    .await
}

#[tokio::test]
async fn restricted_rooms_are_joined_through_a_resident_that_vouches() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (alice_id, alice, _) = a.register("alice", "password1").await;
    let (bob_id, bob, _) = b.register("bob", "password1").await;
    let space = create_room(
        a,
        &alice,
        json!({"preset": "public_chat", "room_version": "10"}),
    )
    .await;
    let restricted = |allowed: &str| {
        json!({
            "room_version": "10",
            "initial_state": [{
                "type": "m.room.join_rules",
                "state_key": "",
                "content": {
                    "join_rule": "restricted",
                    "allow": [{"type": "m.room_membership", "room_id": allowed}],
                },
            }],
        })
    };
    let room = create_room(a, &alice, restricted(&space)).await;

    // Bob is in none of the allowed rooms yet: refused.
    let (status, body) = join_via(b, &bob, &room, &[&a.name]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let room_id: &ruma::RoomId = room.as_str().try_into().unwrap();
    assert!(services(b).rooms.room(room_id).unwrap().is_none());

    let (status, body) = join_via(b, &bob, &space, &[&a.name]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_for_membership(a, &alice, &space, &bob_id, "join").await;
    let (status, body) = join_via(b, &bob, &room, &[&a.name]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_for_membership(a, &alice, &room, &bob_id, "join").await;

    // The join names Alice and carries A's signature beside B's, on both servers.
    for (srv, token) in [(a, &alice), (b, &bob)] {
        let rooms = &services(srv).rooms;
        let room_id: &ruma::RoomId = room.as_str().try_into().unwrap();
        let record = rooms.room(room_id).unwrap().unwrap();
        let join = rooms
            .state_event(
                record.sid,
                &ruma::events::StateEventType::RoomMember,
                &bob_id,
            )
            .unwrap()
            .unwrap();
        let json = serde_json::to_value(&join.json).unwrap();
        assert_eq!(
            json["content"]["join_authorised_via_users_server"], alice_id,
            "{json}"
        );
        assert!(json["signatures"][&a.name].is_object(), "{json}");
        assert!(json["signatures"][&b.name].is_object(), "{json}");
        let _ = token;
    }
    assert_eq!(
        state_ids(a, &alice, &room).await,
        state_ids(b, &bob, &room).await
    );

    // A room allowing members of a room A is not in: A cannot tell.
    let elsewhere = create_room(b, &bob, json!({"preset": "public_chat"})).await;
    let unknown = create_room(a, &alice, restricted(&elsewhere)).await;
    let carol = b.user_id("carol");
    let (status, body) = make_join(b, a, &unknown, &carol, &["10"]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(errcode(&body), "M_UNABLE_TO_AUTHORISE_JOIN");
    // Bob meets the condition, but nobody on A may invite.
    let mut no_inviter = restricted(&space);
    no_inviter["power_level_content_override"] = json!({"invite": 101});
    let no_inviter = create_room(a, &alice, no_inviter).await;
    let (status, body) = make_join(b, a, &no_inviter, &bob_id, &["10"]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(errcode(&body), "M_UNABLE_TO_GRANT_JOIN");
}

#[tokio::test]
async fn a_resident_answering_with_a_forged_state_event_fails_the_join() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice, _) = a.register("alice", "password1").await;
    let (_, bob, _) = b.register("bob", "password1").await;
    let room = create_room(
        a,
        &alice,
        json!({"preset": "public_chat", "topic": "the real topic"}),
    )
    .await;
    let room_id: &ruma::RoomId = room.as_str().try_into().unwrap();
    // A's stored topic event is changed behind its back: its signature no longer holds.
    let rooms = &services(a).rooms;
    let record = rooms.room(room_id).unwrap().unwrap();
    let topic = rooms
        .state_event(record.sid, &ruma::events::StateEventType::RoomTopic, "")
        .unwrap()
        .unwrap();
    let mut forged = serde_json::to_value(&topic.json).unwrap();
    forged["origin_server_ts"] = json!(forged["origin_server_ts"].as_u64().unwrap() + 1);
    let mut batch = hearth::store::Batch::new();
    batch.put::<hearth::service::rooms::Pdus>(
        &topic.sid,
        &hearth::store::Raw(serde_json::to_vec(&forged).unwrap()),
    );
    services(a).store.commit(batch).await.unwrap();

    let (status, body) = join_via(b, &bob, &room, &[&a.name]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    // Nothing of the room is stored on B.
    let b_rooms = &services(b).rooms;
    assert!(b_rooms.room(room_id).unwrap().is_none());
    let create = rooms
        .state_event(record.sid, &ruma::events::StateEventType::RoomCreate, "")
        .unwrap()
        .unwrap();
    assert!(b_rooms.event_sid(&create.pdu.event_id).unwrap().is_none());
    let (status, sync) = b.get("/_matrix/client/v3/sync?timeout=0", Some(&bob)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(sync["rooms"]["join"].get(&room).is_none(), "{sync}");
}

#[tokio::test]
async fn the_resident_sends_a_join_on_to_the_rooms_other_servers() {
    let fed = start_many(3).await;
    let (a, b, c) = (&fed.servers[0], &fed.servers[1], &fed.servers[2]);
    let (_, alice, _) = a.register("alice", "password1").await;
    let (bob_id, bob, _) = b.register("bob", "password1").await;
    let (_, carol, _) = c.register("carol", "password1").await;
    let room = create_room(a, &alice, json!({"preset": "public_chat"})).await;
    let (status, body) = join_via(c, &carol, &room, &[&a.name]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // B joins through A: C learns of it from A, and B's messages go to C directly.
    let (status, body) = join_via(b, &bob, &room, &[&a.name]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_for_membership(c, &carol, &room, &bob_id, "join").await;
    send_text(b, &bob, &room, "b1", "bob to everyone").await;
    wait_for_message(c, &carol, &room, "bob to everyone").await;
    wait_for_message(a, &alice, &room, "bob to everyone").await;
    send_text(c, &carol, &room, "c1", "carol to everyone").await;
    wait_for_message(b, &bob, &room, "carol to everyone").await;
    let a_state = state_ids(a, &alice, &room).await;
    assert_eq!(a_state, state_ids(b, &bob, &room).await);
    assert_eq!(a_state, state_ids(c, &carol, &room).await);
}

#[tokio::test]
async fn two_users_of_one_server_join_a_remote_room_at_once() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice, _) = a.register("alice", "password1").await;
    let (bob_id, bob, _) = b.register("bob", "password1").await;
    let (dan_id, dan, _) = b.register("dan", "password1").await;
    let room = create_room(a, &alice, json!({"preset": "public_chat"})).await;
    let via = [a.name.as_str()];
    let (first, second) = tokio::join!(
        join_via(b, &bob, &room, &via),
        join_via(b, &dan, &room, &via),
    );
    assert_eq!(first.0, StatusCode::OK, "{}", first.1);
    assert_eq!(second.0, StatusCode::OK, "{}", second.1);
    for user in [&bob_id, &dan_id] {
        wait_for_membership(a, &alice, &room, user, "join").await;
        wait_for_membership(b, &bob, &room, user, "join").await;
    }
    assert_eq!(
        state_ids(a, &alice, &room).await,
        state_ids(b, &dan, &room).await
    );
}

/// Figure for the report: a user of B joins a room of A with 500 members (the members are
/// users of a third server C, joined by PDUs C sends A). Prints the time of B's `/join`. Run
/// with `cargo test --release --test it fed_joins::figure -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn figure_join_a_room_with_500_members() {
    const MEMBERS: usize = 500;
    const PER_TRANSACTION: usize = 50;
    // A full join (with partial state B would know few members right after it).
    let fed = crate::fed_common::start_many_with(3, |i, config| {
        config.federation.partial_state_joins = i != 1;
    })
    .await;
    let (a, b, c) = (&fed.servers[0], &fed.servers[1], &fed.servers[2]);
    let (_, alice, _) = a.register("alice", "password1").await;
    let (_, bob, _) = b.register("bob", "password1").await;
    let room = create_room(a, &alice, json!({"preset": "public_chat"})).await;
    let view = crate::fed_pdus::events::RoomView {
        services: services(a),
        room_id: room.clone(),
    };
    let remote = Remote::server(c);
    let mut prev = view.latest();
    let mut n = 0;
    for t in 0..MEMBERS / PER_TRANSACTION {
        let mut pdus = Vec::new();
        let auth = {
            let probe = remote.user("probe");
            view.auth_events(
                "m.room.member",
                &probe,
                Some(&probe),
                &json!({"membership": "join"}),
            )
        };
        for _ in 0..PER_TRANSACTION {
            let user = remote.user(&format!("member{n}"));
            let mut spec = crate::fed_pdus::events::EventSpec::state(
                "m.room.member",
                &user,
                &user,
                json!({"membership": "join", "displayname": format!("Member {n}")}),
            );
            spec.prev = Some(prev.clone());
            spec.auth = Some(auth.clone());
            spec.extra_depth = (n % PER_TRANSACTION) as u64;
            let (id, object) = view.event(&remote, spec);
            prev = vec![id.to_string()];
            pdus.push(value_of(&object));
            n += 1;
        }
        let body = json!({
            "origin": c.name,
            "origin_server_ts": crate::fed_pdus::events::now_ms(),
            "pdus": pdus,
        });
        let (status, answer) = c
            .signed(
                a,
                &a.name,
                Method::PUT,
                &format!("/_matrix/federation/v1/send/m{t}"),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let path = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room));
    let (_, members) = a.get(&path, Some(&alice)).await;
    assert_eq!(members["joined"].as_object().unwrap().len(), MEMBERS + 1);

    let started = Instant::now();
    let (status, body) = join_via(b, &bob, &room, &[&a.name]).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, members) = b.get(&path, Some(&bob)).await;
    assert_eq!(members["joined"].as_object().unwrap().len(), MEMBERS + 2);
    println!(
        "FIGURE: B joined a room of A with {} members in {took:?}",
        MEMBERS + 1
    );
}
