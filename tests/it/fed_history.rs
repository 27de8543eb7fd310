//! History and state served to other servers, over HTTP between real servers: `/event`,
//! `/state`, `/state_ids`, `/event_auth`, `/backfill`, `/get_missing_events`,
//! `/timestamp_to_event` and `/hierarchy`, and who may have them (a server with a user in the
//! room, as that user's history visibility allows; not a server with no user there, nor one
//! the room's ACL denies). Remote users join by a join event the test builds and signs with
//! their server's real key, sent in a signed `/send` (as in `fed_rooms.rs`).

use std::collections::BTreeSet;

use hearth::service::Services;
use reqwest::{Method, StatusCode};
use ruma::EventId;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode};
use crate::fed_common::{start_many, FedServer};
use crate::fed_pdus::events::{raw, EventSpec, Remote, RoomView};

fn services(s: &FedServer) -> &Services {
    &s.server.as_ref().expect("running").services
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `from` sends `to` a transaction with these PDUs; returns the per-PDU results.
async fn send_txn(from: &FedServer, to: &FedServer, txn_id: &str, pdus: Vec<Value>) -> Value {
    let body = json!({"origin": from.name, "origin_server_ts": now_ms(), "pdus": pdus, "edus": []});
    let path = format!("/_matrix/federation/v1/send/{txn_id}");
    let (status, answer) = from
        .signed(to, &to.name, Method::PUT, &path, Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["pdus"].clone()
}

fn json_of(object: &ruma::CanonicalJsonObject) -> Value {
    serde_json::from_str(raw(object).get()).unwrap()
}

/// A signed GET from `from` to `to`.
pub async fn fed_get(from: &FedServer, to: &FedServer, path: &str) -> (StatusCode, Value) {
    from.signed(to, &to.name, Method::GET, path, None).await
}

/// A signed POST from `from` to `to`.
async fn fed_post(
    from: &FedServer,
    to: &FedServer,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    from.signed(to, &to.name, Method::POST, path, Some(body))
        .await
}

/// The event as `a` stores it (canonical JSON as signed).
fn stored(a: &FedServer, event_id: &str) -> Value {
    let id = EventId::parse(event_id).unwrap();
    let event = services(a).rooms.event(&id).unwrap().expect("stored");
    serde_json::to_value(&event.json).unwrap()
}

/// The ids of `a`'s current state of the room.
fn current_state_ids(a: &FedServer, room_id: &str) -> BTreeSet<String> {
    let rooms = &services(a).rooms;
    let room = rooms
        .room(&ruma::RoomId::parse(room_id).unwrap())
        .unwrap()
        .unwrap();
    rooms
        .current_state(room.sid, None)
        .unwrap()
        .iter()
        .map(|e| e.pdu.event_id.to_string())
        .collect()
}

/// The auth chain of `start` as the spec defines it (auth events, recursively), from `a`'s
/// stored events; in a room of version 12, with the create event the room id stands for.
fn expected_auth_chain(a: &FedServer, room_id: &str, start: &BTreeSet<String>) -> BTreeSet<String> {
    let rooms = &services(a).rooms;
    let mut chain = BTreeSet::new();
    let create = format!("${}", &room_id[1..]);
    if !room_id.contains(':') && start.iter().any(|id| *id != create) {
        chain.insert(create);
    }
    let mut stack: Vec<String> = start.iter().cloned().collect();
    let mut expanded = BTreeSet::new();
    while let Some(id) = stack.pop() {
        if !expanded.insert(id.clone()) {
            continue;
        }
        let event = rooms.event(&EventId::parse(&id).unwrap()).unwrap().unwrap();
        for auth in &event.pdu.auth_events {
            if chain.insert(auth.to_string()) {
                stack.push(auth.to_string());
            }
        }
    }
    chain
}

/// PDUs as a set of their JSON texts (order-free comparison).
fn pdu_set(pdus: &Value) -> BTreeSet<String> {
    pdus.as_array()
        .expect("a list of PDUs")
        .iter()
        .map(Value::to_string)
        .collect()
}

fn stored_set(a: &FedServer, ids: &BTreeSet<String>) -> BTreeSet<String> {
    ids.iter().map(|id| stored(a, id).to_string()).collect()
}

fn id_set(ids: &Value) -> BTreeSet<String> {
    ids.as_array()
        .expect("a list of ids")
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect()
}

/// Sends a text message as a local user; returns its event id.
async fn say(a: &FedServer, token: &str, room_id: &str, body: &str) -> String {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
        enc(room_id),
        body.replace(' ', "_")
    );
    let (status, sent) = a
        .put(
            &path,
            Some(token),
            json!({"msgtype": "m.text", "body": body}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    sent["event_id"].as_str().unwrap().to_owned()
}

/// `remote`'s user `localpart` joins the room on `a` by a signed join event in a `/send`.
async fn remote_join(a: &FedServer, b: &FedServer, room_id: &str, localpart: &str) -> String {
    let view = RoomView {
        services: services(a),
        room_id: room_id.to_owned(),
    };
    let user = b.user_id(localpart);
    let (join_id, join) = view.event(
        &Remote::server(b),
        EventSpec::state("m.room.member", &user, &user, json!({"membership": "join"})),
    );
    let answer = send_txn(
        b,
        a,
        &format!("join-{localpart}-{}", now_ms()),
        vec![json_of(&join)],
    )
    .await;
    assert_eq!(answer[join_id.as_str()], json!({}), "{answer}");
    join_id.to_string()
}

/// Distinct millisecond timestamps for the events before and after (for timestamp_to_event).
async fn tick() {
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
}

fn ts_of(a: &FedServer, event_id: &str) -> u64 {
    stored(a, event_id)["origin_server_ts"].as_u64().unwrap()
}

#[tokio::test]
async fn history_and_state_are_served_to_a_server_with_a_user_in_the_room() {
    let fed = start_many(3).await;
    let (a, b, c) = (&fed.servers[0], &fed.servers[1], &fed.servers[2]);
    let (_, token, _) = a.register("alice", "password1").await;
    let room_id = create_room(a, &token, json!({"preset": "public_chat"})).await;
    let room = enc(&room_id);
    let m1 = say(a, &token, &room_id, "one").await;
    tick().await;
    let m2 = say(a, &token, &room_id, "two").await;
    tick().await;
    let join = remote_join(a, b, &room_id, "bob").await;
    tick().await;
    let m3 = say(a, &token, &room_id, "three").await;

    // /event: exactly as stored.
    let (status, body) = fed_get(b, a, &format!("/_matrix/federation/v1/event/{}", enc(&m1))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["origin"], json!(a.name));
    assert_eq!(body["pdus"], json!([stored(a, &m1)]));
    let (status, body) = fed_get(b, a, "/_matrix/federation/v1/event/$nosuchevent").await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND"),
        "{body}"
    );

    // /state_ids and /state at m3: the state before it (the current state), with its auth
    // chain.
    let state = current_state_ids(a, &room_id);
    assert!(state.contains(&join));
    let chain = expected_auth_chain(a, &room_id, &state);
    let path = format!(
        "/_matrix/federation/v1/state_ids/{room}?event_id={}",
        enc(&m3)
    );
    let (status, body) = fed_get(b, a, &path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(id_set(&body["pdu_ids"]), state);
    assert_eq!(id_set(&body["auth_chain_ids"]), chain);
    let path = format!("/_matrix/federation/v1/state/{room}?event_id={}", enc(&m3));
    let (status, body) = fed_get(b, a, &path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(pdu_set(&body["pdus"]), stored_set(a, &state));
    assert_eq!(pdu_set(&body["auth_chain"]), stored_set(a, &chain));
    // At a state event: the state before it, without it.
    let path = format!(
        "/_matrix/federation/v1/state_ids/{room}?event_id={}",
        enc(&join)
    );
    let (status, body) = fed_get(b, a, &path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut before_join = state.clone();
    before_join.remove(&join);
    assert_eq!(id_set(&body["pdu_ids"]), before_join);

    // /event_auth: the auth chain of one event.
    let path = format!("/_matrix/federation/v1/event_auth/{room}/{}", enc(&m3));
    let (status, body) = fed_get(b, a, &path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let m3_chain = expected_auth_chain(a, &room_id, &BTreeSet::from([m3.clone()]));
    assert!(m3_chain.len() >= 3, "{m3_chain:?}");
    assert_eq!(pdu_set(&body["auth_chain"]), stored_set(a, &m3_chain));

    // /backfill: the given event and those before it, newest first, up to the limit.
    let path = format!(
        "/_matrix/federation/v1/backfill/{room}?v={}&limit=3",
        enc(&m3)
    );
    let (status, body) = fed_get(b, a, &path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["origin"], json!(a.name));
    assert_eq!(
        body["pdus"],
        json!([stored(a, &m3), stored(a, &join), stored(a, &m2)])
    );

    // /get_missing_events: what lies between, oldest first, without the earliest events.
    let path = format!("/_matrix/federation/v1/get_missing_events/{room}");
    let ask = |limit: u64| json!({"earliest_events": [m1], "latest_events": [m3], "limit": limit});
    let (status, body) = fed_post(b, a, &path, ask(10)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events"], json!([stored(a, &m2), stored(a, &join)]));
    let (status, body) = fed_post(b, a, &path, ask(1)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events"], json!([stored(a, &join)]));
    // min_depth: nothing below it.
    let depth = stored(a, &join)["depth"].as_u64().unwrap();
    let body_min = json!({"earliest_events": [], "latest_events": [m3], "min_depth": depth});
    let (status, body) = fed_post(b, a, &path, body_min).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events"], json!([stored(a, &join)]));

    // /timestamp_to_event, both directions.
    let path = |dir: &str, ts: u64| {
        format!("/_matrix/federation/v1/timestamp_to_event/{room}?dir={dir}&ts={ts}")
    };
    let (status, body) = fed_get(b, a, &path("f", ts_of(a, &m1) + 1)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["event_id"], json!(m2));
    assert_eq!(body["origin_server_ts"], json!(ts_of(a, &m2)));
    let (status, body) = fed_get(b, a, &path("b", ts_of(a, &m2) - 1)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["event_id"], json!(m1));
    let (status, body) = fed_get(b, a, &path("f", ts_of(a, &m3) + 1)).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND"),
        "{body}"
    );

    // A server with no user in the room: 403 everywhere.
    for path in [
        format!("/_matrix/federation/v1/event/{}", enc(&m1)),
        format!(
            "/_matrix/federation/v1/state_ids/{room}?event_id={}",
            enc(&m3)
        ),
        format!("/_matrix/federation/v1/state/{room}?event_id={}", enc(&m3)),
        format!("/_matrix/federation/v1/event_auth/{room}/{}", enc(&m3)),
        format!(
            "/_matrix/federation/v1/backfill/{room}?v={}&limit=3",
            enc(&m3)
        ),
        path("b", ts_of(a, &m3)),
    ] {
        let (status, body) = fed_get(c, a, &path).await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::FORBIDDEN, "M_FORBIDDEN"),
            "{path}: {body}"
        );
    }
    let (status, body) = fed_post(
        c,
        a,
        &format!("/_matrix/federation/v1/get_missing_events/{room}"),
        ask(10),
    )
    .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN"),
        "{body}"
    );

    // Unknown rooms and events: 404; bad parameters: 400.
    let unknown = enc("!nosuchroom:example.org");
    for path in [
        format!(
            "/_matrix/federation/v1/state_ids/{unknown}?event_id={}",
            enc(&m3)
        ),
        format!("/_matrix/federation/v1/state_ids/{room}?event_id=%24nosuchevent"),
        format!("/_matrix/federation/v1/backfill/{room}?v=%24nosuchevent&limit=3"),
        format!("/_matrix/federation/v1/event_auth/{room}/%24nosuchevent"),
    ] {
        let (status, body) = fed_get(b, a, &path).await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::NOT_FOUND, "M_NOT_FOUND"),
            "{path}: {body}"
        );
    }
    for path in [
        format!("/_matrix/federation/v1/backfill/{room}?v={}", enc(&m3)),
        format!(
            "/_matrix/federation/v1/backfill/{room}?v={}&limit=many",
            enc(&m3)
        ),
        format!("/_matrix/federation/v1/backfill/{room}?limit=3"),
        format!("/_matrix/federation/v1/state_ids/{room}"),
        format!("/_matrix/federation/v1/timestamp_to_event/{room}?dir=x&ts=1"),
        format!("/_matrix/federation/v1/timestamp_to_event/{room}?dir=f"),
    ] {
        let (status, body) = fed_get(b, a, &path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
    }
    let (status, body) = fed_post(
        b,
        a,
        &format!("/_matrix/federation/v1/get_missing_events/{room}"),
        json!({"limit": 3}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // A redacted event is served as stored: redacted.
    let path = format!("/_matrix/client/v3/rooms/{room}/redact/{}/r1", enc(&m1));
    let (status, body) = a.put(&path, Some(&token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = fed_get(b, a, &format!("/_matrix/federation/v1/event/{}", enc(&m1))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["pdus"][0]["content"], json!({}));
    assert_eq!(body["pdus"], json!([stored(a, &m1)]));
}

#[tokio::test]
async fn backfill_and_missing_events_are_capped() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, token, _) = a.register("alice", "password1").await;
    let room_id = create_room(a, &token, json!({"preset": "public_chat"})).await;
    let room = enc(&room_id);
    remote_join(a, b, &room_id, "bob").await;
    let mut last = String::new();
    for i in 0..110 {
        last = say(a, &token, &room_id, &format!("message {i}")).await;
    }
    let path = format!(
        "/_matrix/federation/v1/backfill/{room}?v={}&limit=1000",
        enc(&last)
    );
    let (status, body) = fed_get(b, a, &path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let pdus = body["pdus"].as_array().unwrap();
    assert_eq!(pdus.len(), 100);
    assert_eq!(pdus[0], stored(a, &last));
    assert_eq!(pdus[99]["content"]["body"], json!("message 10"));
    let path = format!("/_matrix/federation/v1/get_missing_events/{room}");
    let ask = json!({"earliest_events": [], "latest_events": [last], "limit": 1000});
    let (status, body) = fed_post(b, a, &path, ask).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 100);
    assert_eq!(events[0]["content"]["body"], json!("message 9"));
    assert_eq!(events[99]["content"]["body"], json!("message 108"));
}

/// A room on `a` with `visibility`, a message before bob of `b` joins and one after.
async fn visibility_room(
    a: &FedServer,
    b: &FedServer,
    token: &str,
    visibility: &str,
) -> (String, String, String) {
    let room_id = create_room(
        a,
        token,
        json!({"preset": "public_chat", "initial_state": [{
            "type": "m.room.history_visibility", "state_key": "",
            "content": {"history_visibility": visibility}
        }]}),
    )
    .await;
    let before = say(a, token, &room_id, "before").await;
    remote_join(a, b, &room_id, "bob").await;
    let after = say(a, token, &room_id, "after").await;
    (room_id, before, after)
}

#[tokio::test]
async fn history_visibility_joined_hides_what_came_before_the_join_and_shared_shows_it() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, token, _) = a.register("alice", "password1").await;
    for visibility in ["joined", "shared"] {
        let (room_id, before, after) = visibility_room(a, b, &token, visibility).await;
        let room = enc(&room_id);
        let path = format!(
            "/_matrix/federation/v1/backfill/{room}?v={}&limit=3",
            enc(&after)
        );
        let (status, body) = fed_get(b, a, &path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let served = body["pdus"][2].clone();
        let (status, body) = fed_get(
            b,
            a,
            &format!("/_matrix/federation/v1/event/{}", enc(&before)),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["pdus"][0], served);
        let state_path = format!(
            "/_matrix/federation/v1/state_ids/{room}?event_id={}",
            enc(&before)
        );
        let (state_status, _) = fed_get(b, a, &state_path).await;
        if visibility == "joined" {
            // The graph stays whole (same event, same signatures), the content does not.
            assert_eq!(served["content"], json!({}), "{served}");
            assert_eq!(served["signatures"], stored(a, &before)["signatures"]);
            assert_eq!(served["prev_events"], stored(a, &before)["prev_events"]);
            assert_eq!(state_status, StatusCode::FORBIDDEN);
        } else {
            assert_eq!(served, stored(a, &before));
            assert_eq!(state_status, StatusCode::OK);
        }
    }
}

#[tokio::test]
async fn a_server_whose_users_left_reads_up_to_their_departure() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, token, _) = a.register("alice", "password1").await;
    let room_id = create_room(a, &token, json!({"preset": "public_chat"})).await;
    let room = enc(&room_id);
    remote_join(a, b, &room_id, "bob").await;
    let during = say(a, &token, &room_id, "during").await;
    let view = RoomView {
        services: services(a),
        room_id: room_id.clone(),
    };
    let bob = b.user_id("bob");
    let (leave, leave_pdu) = view.event(
        &Remote::server(b),
        EventSpec::state("m.room.member", &bob, &bob, json!({"membership": "leave"})),
    );
    let answer = send_txn(b, a, "leave", vec![json_of(&leave_pdu)]).await;
    assert_eq!(answer[leave.as_str()], json!({}), "{answer}");
    let later = say(a, &token, &room_id, "later").await;

    let event = |id: &str| format!("/_matrix/federation/v1/event/{}", enc(id));
    let (status, body) = fed_get(b, a, &event(&during)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["pdus"], json!([stored(a, &during)]));
    let (status, body) = fed_get(b, a, &event(leave.as_str())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = fed_get(b, a, &event(&later)).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN"),
        "{body}"
    );
    // A walk from after the departure serves nothing past it (and counts only what it
    // serves against the limit).
    let path = format!(
        "/_matrix/federation/v1/backfill/{room}?v={}&limit=2",
        enc(&later)
    );
    let (status, body) = fed_get(b, a, &path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["pdus"],
        json!([json_of(&leave_pdu), stored(a, &during)])
    );
    let path = format!(
        "/_matrix/federation/v1/state_ids/{room}?event_id={}",
        enc(&later)
    );
    let (status, _) = fed_get(b, a, &path).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_server_denied_by_the_acl_reads_nothing() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, token, _) = a.register("alice", "password1").await;
    let room_id = create_room(a, &token, json!({"preset": "public_chat"})).await;
    let room = enc(&room_id);
    remote_join(a, b, &room_id, "bob").await;
    let m1 = say(a, &token, &room_id, "one").await;
    let event_path = format!("/_matrix/federation/v1/event/{}", enc(&m1));
    let (status, _) = fed_get(b, a, &event_path).await;
    assert_eq!(status, StatusCode::OK);
    // IP literals are denied from now on: B (127.0.0.1:port) is shut out.
    let (status, body) = a
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.server_acl/"),
            Some(&token),
            json!({"allow": ["*"], "deny": [], "allow_ip_literals": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for path in [
        event_path,
        format!(
            "/_matrix/federation/v1/state_ids/{room}?event_id={}",
            enc(&m1)
        ),
        format!("/_matrix/federation/v1/state/{room}?event_id={}", enc(&m1)),
        format!("/_matrix/federation/v1/event_auth/{room}/{}", enc(&m1)),
        format!(
            "/_matrix/federation/v1/backfill/{room}?v={}&limit=3",
            enc(&m1)
        ),
        format!(
            "/_matrix/federation/v1/timestamp_to_event/{room}?dir=b&ts={}",
            now_ms()
        ),
        format!("/_matrix/federation/v1/hierarchy/{room}"),
    ] {
        let (status, body) = fed_get(b, a, &path).await;
        let expected = if path.contains("hierarchy") {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(status, expected, "{path}: {body}");
    }
    let ask = json!({"earliest_events": [], "latest_events": [m1], "limit": 5});
    let (status, _) = fed_post(
        b,
        a,
        &format!("/_matrix/federation/v1/get_missing_events/{room}"),
        ask,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn rejected_events_are_never_served_and_soft_failed_ones_only_when_asked_for() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, token, _) = a.register("alice", "password1").await;
    let room_id = create_room(a, &token, json!({"preset": "public_chat"})).await;
    let room = enc(&room_id);
    let view = RoomView {
        services: services(a),
        room_id: room_id.clone(),
    };
    let remote = Remote::server(b);
    let bob = b.user_id("bob");
    let join = remote_join(a, b, &room_id, "bob").await;
    remote_join(a, b, &room_id, "bobby").await;
    let auth_before_ban = view.auth_events("m.room.message", &bob, None, &json!({}));
    let (status, body) = a
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/ban"),
            Some(&token),
            json!({"user_id": bob}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Soft-failed: bob's message after his join, sent as if he had not seen the ban.
    let mut spec = EventSpec::message(&bob, "soft");
    spec.prev = Some(vec![join.clone()]);
    spec.auth = Some(auth_before_ban);
    let (soft, soft_pdu) = view.event(&remote, spec);
    // Rejected: carol of B never joined.
    let carol = b.user_id("carol");
    let (rejected, rejected_pdu) = view.event(&remote, EventSpec::message(&carol, "rejected"));
    let answer = send_txn(
        b,
        a,
        "bad",
        vec![json_of(&soft_pdu), json_of(&rejected_pdu)],
    )
    .await;
    assert!(answer[rejected.as_str()]["error"].is_string(), "{answer}");
    let soft_sid = services(a).rooms.event(&soft).unwrap().unwrap().sid;
    assert!(services(a).rooms.is_soft_failed(soft_sid).unwrap());
    let after = say(a, &token, &room_id, "after").await;

    // The rejected event: not there at all.
    let (status, _) = fed_get(
        b,
        a,
        &format!("/_matrix/federation/v1/event/{}", enc(rejected.as_str())),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let path = format!(
        "/_matrix/federation/v1/backfill/{room}?v={}&limit=5",
        enc(rejected.as_str())
    );
    let (status, _) = fed_get(b, a, &path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The soft-failed event: served when asked for by id, or when the request names it...
    let (status, body) = fed_get(
        b,
        a,
        &format!("/_matrix/federation/v1/event/{}", enc(soft.as_str())),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["pdus"], json!([json_of(&soft_pdu)]));
    let path = format!(
        "/_matrix/federation/v1/backfill/{room}?v={}&limit=2",
        enc(soft.as_str())
    );
    let (status, body) = fed_get(b, a, &path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["pdus"], json!([json_of(&soft_pdu), stored(a, &join)]));
    // ...never by a walk from the room's own events, which do not cite it.
    let path = format!(
        "/_matrix/federation/v1/backfill/{room}?v={}&limit=50",
        enc(&after)
    );
    let (status, body) = fed_get(b, a, &path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let bodies: Vec<&Value> = body["pdus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["content"]["body"])
        .collect();
    assert!(bodies.contains(&&json!("after")), "{bodies:?}");
    assert!(
        !bodies.contains(&&json!("soft")) && !bodies.contains(&&json!("rejected")),
        "{bodies:?}"
    );
    let ask = json!({"earliest_events": [], "latest_events": [after], "limit": 50});
    let (status, body) = fed_post(
        b,
        a,
        &format!("/_matrix/federation/v1/get_missing_events/{room}"),
        ask,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let bodies: Vec<&Value> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["content"]["body"])
        .collect();
    assert!(
        !bodies.contains(&&json!("soft")) && !bodies.contains(&&json!("rejected")),
        "{bodies:?}"
    );
}

#[tokio::test]
async fn every_room_version_is_served_in_its_own_format() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, token, _) = a.register("alice", "password1").await;
    for version in [
        "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12",
    ] {
        // World-readable: B reads it without a user in it (events, not state).
        let room_id = create_room(
            a,
            &token,
            json!({"preset": "public_chat", "room_version": version, "initial_state": [{
                "type": "m.room.history_visibility", "state_key": "",
                "content": {"history_visibility": "world_readable"}
            }]}),
        )
        .await;
        let room = enc(&room_id);
        let m1 = say(a, &token, &room_id, &format!("one v{version}")).await;
        let m2 = say(a, &token, &room_id, &format!("two v{version}")).await;
        let (status, body) =
            fed_get(b, a, &format!("/_matrix/federation/v1/event/{}", enc(&m2))).await;
        assert_eq!(status, StatusCode::OK, "v{version}: {body}");
        assert_eq!(body["pdus"], json!([stored(a, &m2)]), "v{version}");
        // Versions 1 and 2 carry the event id and cite events as [id, hashes] pairs.
        let old_format = version == "1" || version == "2";
        assert_eq!(
            body["pdus"][0]["event_id"].is_string(),
            old_format,
            "v{version}"
        );
        assert_eq!(
            body["pdus"][0]["prev_events"][0].is_array(),
            old_format,
            "v{version}"
        );
        let path = format!(
            "/_matrix/federation/v1/backfill/{room}?v={}&limit=2",
            enc(&m2)
        );
        let (status, body) = fed_get(b, a, &path).await;
        assert_eq!(status, StatusCode::OK, "v{version}: {body}");
        assert_eq!(
            body["pdus"],
            json!([stored(a, &m2), stored(a, &m1)]),
            "v{version}"
        );
        let ask = json!({"earliest_events": [], "latest_events": [m2], "limit": 1});
        let path = format!("/_matrix/federation/v1/get_missing_events/{room}");
        let (status, body) = fed_post(b, a, &path, ask).await;
        assert_eq!(status, StatusCode::OK, "v{version}: {body}");
        assert_eq!(body["events"], json!([stored(a, &m1)]), "v{version}");
        // No user of B in the room: no state.
        let path = format!(
            "/_matrix/federation/v1/state_ids/{room}?event_id={}",
            enc(&m2)
        );
        let (status, _) = fed_get(b, a, &path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "v{version}");
    }
}
