//! Fetching between real Hearth servers: backfill in `/messages` past a federated join (the
//! resident's copy of the room answering through [`Origin`]), and missing events and the
//! state across a gap fetched from the origin over federation.

use std::sync::Arc;

use hearth::service::federation::pdus::Pdus;
use reqwest::StatusCode;
use ruma::{CanonicalJsonObject, OwnedEventId, OwnedServerName, RoomId};
use serde_json::{json, Value};

use super::{in_order, Origin};
use crate::{
    common::{create_room, enc},
    fed_pdus::events::{raw, EventSpec, Remote, RoomView, StaticKeys},
};

/// Bodies and ids of a `/messages` chunk.
fn chunk_events(page: &Value) -> Vec<(String, String)> {
    page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event_id"].as_str().unwrap().to_owned(),
                e["content"]["body"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn messages_backfills_history_from_before_the_join_not_new_to_sync() {
    let fed = crate::fed_common::start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice, _) = a.register("alice", "password1").await;
    let (_, bob, _) = b.register("bob", "password1").await;
    let room = create_room(a, &alice, json!({"preset": "public_chat"})).await;
    for i in 0..5 {
        let (status, body) = a
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/h{i}",
                    enc(&room)
                ),
                Some(&alice),
                json!({"msgtype": "m.text", "body": format!("history {i}")}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = b
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(&room),
                enc(&a.name)
            ),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, sync) = b.get("/_matrix/client/v3/sync?timeout=0", Some(&bob)).await;
    assert_eq!(status, StatusCode::OK, "{sync}");
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // A's copy of the room answers B's backfill (A's serving side is another piece of work).
    let a_services = &a.server.as_ref().unwrap().services;
    let b_services = &b.server.as_ref().unwrap().services;
    let room_id = RoomId::parse(&room).unwrap();
    let origin = Arc::new(Origin::default());
    let a_room = a_services.rooms.room(&room_id).unwrap().unwrap();
    for event in a_services
        .rooms
        .timeline(a_room.sid, None, false, 1000)
        .unwrap()
    {
        origin.add(&event.pdu.event_id, &event.json);
    }
    let pdus = Pdus::new(
        b_services.store.clone(),
        b_services.rooms.clone(),
        Arc::new(StaticKeys(Remote::server(a).public_keys())),
    )
    .with_remote(origin.clone());
    let stored = pdus.backfill(&room_id, 50).await.unwrap();
    assert!(stored >= 5, "{stored}");
    assert_eq!(origin.calls_to("backfill"), 1);
    assert_eq!(
        pdus.backfill(&room_id, 50).await.unwrap(),
        0,
        "history complete now"
    );

    // Bob's /messages: the history before his join, oldest last, down to the create event.
    let bob_ref = bob.as_str();
    let room_ref = room.as_str();
    let messages = |query: String| async move {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/messages?{query}",
            enc(room_ref)
        );
        let (status, page) = b.get(&path, Some(bob_ref)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page
    };
    let page = messages("dir=b&limit=100".into()).await;
    assert!(page.get("end").is_none(), "{page}");
    let events = chunk_events(&page);
    let bodies: Vec<&str> = events
        .iter()
        .map(|(_, b)| b.as_str())
        .filter(|b| b.starts_with("history"))
        .collect();
    assert_eq!(
        bodies,
        [
            "history 4",
            "history 3",
            "history 2",
            "history 1",
            "history 0"
        ]
    );
    let types: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(
        types.first(),
        Some(&"m.room.member"),
        "bob's join is the newest: {types:?}"
    );
    assert_eq!(types.last(), Some(&"m.room.create"), "{types:?}");

    // The same, a page of 2 at a time, through the tokens into the backfilled events.
    let mut paged = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..50 {
        let query = match &from {
            Some(t) => format!("dir=b&limit=2&from={t}"),
            None => "dir=b&limit=2".to_owned(),
        };
        let page = messages(query).await;
        paged.extend(chunk_events(&page));
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
    }
    assert_eq!(paged, events);
    // The context of a backfilled event, and paging forwards from its end token runs up
    // through the backfilled events
    let (h2_id, _) = events
        .iter()
        .find(|(_, b)| b == "history 2")
        .unwrap()
        .clone();
    let path = format!(
        "/_matrix/client/v3/rooms/{}/context/{}?limit=4",
        enc(&room),
        enc(&h2_id)
    );
    let (status, context) = b.get(&path, Some(&bob)).await;
    assert_eq!(status, StatusCode::OK, "{context}");
    assert_eq!(
        context["events_before"][0]["content"]["body"], "history 1",
        "{context}"
    );
    assert_eq!(
        context["events_after"][0]["content"]["body"], "history 3",
        "{context}"
    );
    let end = context["end"].as_str().unwrap();
    // (after history 3 and 4): on into the timeline, which starts with bob's join.
    let page = messages(format!("dir=f&limit=100&from={end}")).await;
    assert_eq!(page["chunk"][0]["type"], "m.room.member", "{page}");
    assert_eq!(page["chunk"][0]["state_key"], b.user_id("bob"), "{page}");

    // Not new to /sync.
    let (status, sync) = b
        .get(
            &format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sync}");
    let timeline = &sync["rooms"]["join"][&room]["timeline"]["events"];
    assert!(
        !timeline
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.starts_with("history"))),
        "{sync}"
    );
}

/// Three real servers: A with alice's public room, B whose bob joined it over federation, D
/// only a signing key (dave's events are D's, and B fetches D's keys from it). A is handed
/// dave's join and `n` messages of his as a transaction from D would hand them (A does not
/// relay other servers' events), so B lacks them; then A sends B dave's last message, and B
/// fetches what it lacks from A.
struct ThreeServers {
    fed: crate::fed_common::Fed,
    alice: String,
    bob: String,
    room: String,
    dave: String,
    /// Dave's join and messages, oldest first.
    events: Vec<(OwnedEventId, CanonicalJsonObject)>,
}

impl ThreeServers {
    async fn new(n: usize) -> Self {
        let fed = crate::fed_common::start_many(3).await;
        let (a, b, d) = (&fed.servers[0], &fed.servers[1], &fed.servers[2]);
        let (_, alice, _) = a.register("alice", "password1").await;
        let (_, bob, _) = b.register("bob", "password1").await;
        let room = create_room(a, &alice, json!({"preset": "public_chat"})).await;
        let (status, body) = b
            .post(
                &format!(
                    "/_matrix/client/v3/join/{}?server_name={}",
                    enc(&room),
                    enc(&a.name)
                ),
                Some(&bob),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");

        let a_services = &a.server.as_ref().unwrap().services;
        let view = RoomView {
            services: a_services,
            room_id: room.clone(),
        };
        let remote = Remote::server(d);
        let dave = d.user_id("dave");
        let a_pdus = Pdus::new(
            a_services.store.clone(),
            a_services.rooms.clone(),
            Arc::new(StaticKeys(remote.public_keys())),
        );
        let origin = OwnedServerName::try_from(d.name.as_str()).unwrap();
        let mut events = Vec::new();
        for i in 0..=n {
            let spec = if i == 0 {
                EventSpec::state("m.room.member", &dave, &dave, json!({"membership": "join"}))
            } else {
                EventSpec::message(&dave, &format!("dave {i}"))
            };
            let (id, object) = view.event(&remote, spec);
            let results = a_pdus.receive_pdus(&origin, &[raw(&object)]).await;
            assert_eq!(results.get(&id), Some(&Ok(())), "{results:?}");
            events.push((id, object));
        }
        Self {
            fed,
            alice,
            bob,
            room,
            dave,
            events,
        }
    }

    /// A sends B dave's last event; returns B's answer for it.
    async fn send_last(&self) -> Value {
        let (b, a) = (&self.fed.servers[0], &self.fed.servers[1]);
        let (id, last) = self.events.last().unwrap();
        let body = json!({
            "origin": b.name,
            "origin_server_ts": crate::fed_pdus::events::now_ms(),
            "pdus": [serde_json::from_str::<Value>(raw(last).get()).unwrap()],
        });
        let (status, answer) = b
            .signed(
                a,
                &a.name,
                reqwest::Method::PUT,
                "/_matrix/federation/v1/send/t1",
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer["pdus"][id.as_str()].clone()
    }

    /// Event ids of B's timeline (bob's /messages), oldest first.
    async fn b_timeline(&self) -> Vec<String> {
        let b = &self.fed.servers[1];
        let path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
            enc(&self.room)
        );
        let (status, page) = b.get(&path, Some(&self.bob)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let mut ids: Vec<String> = chunk_events(&page).into_iter().map(|(id, _)| id).collect();
        ids.reverse();
        ids
    }

    /// The room's state on a server as `(type, state_key, event_id)`, sorted.
    async fn state(&self, index: usize, token: &str) -> Vec<(String, String, String)> {
        let srv = &self.fed.servers[index];
        let path = format!("/_matrix/client/v3/rooms/{}/state", enc(&self.room));
        let (status, state) = srv.get(&path, Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{state}");
        let mut out: Vec<_> = state
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let field = |f: &str| e[f].as_str().unwrap().to_owned();
                (field("type"), field("state_key"), field("event_id"))
            })
            .collect();
        out.sort();
        out
    }
}

#[tokio::test]
async fn hearth_to_hearth_missing_events_are_fetched_from_the_origin() {
    let three = ThreeServers::new(3).await;
    assert_eq!(three.send_last().await, json!({}));
    let timeline = three.b_timeline().await;
    let ids: Vec<&OwnedEventId> = three.events.iter().map(|(id, _)| id).collect();
    assert!(in_order(&timeline, &ids), "{timeline:?}");
    assert_eq!(
        three.state(0, &three.alice).await,
        three.state(1, &three.bob).await
    );
}

#[tokio::test]
async fn hearth_to_hearth_a_long_gap_is_bridged_with_state_ids() {
    let three = ThreeServers::new(25).await;
    assert_eq!(three.send_last().await, json!({}));
    // The 20 events before the last came with get_missing_events; dave's join (beyond them)
    // came with the state at the earliest of them, as an outlier; his first 4 messages not
    // at all.
    let b_rooms = &three.fed.servers[1].server.as_ref().unwrap().services.rooms;
    let join_sid = b_rooms.event_sid(&three.events[0].0).unwrap().unwrap();
    assert!(b_rooms.is_outlier(join_sid).unwrap());
    assert!(b_rooms.event(&three.events[4].0).unwrap().is_none());
    // Paging reaches the hole they leave and fills it (`a_hole_in_the_middle_…` below).
    let timeline = three.b_timeline().await;
    let all: Vec<&OwnedEventId> = three.events.iter().map(|(id, _)| id).collect();
    assert!(in_order(&timeline, &all), "{timeline:?}");
    let a = &three.fed.servers[0];
    let path = format!(
        "/_matrix/client/v3/rooms/{}/joined_members",
        enc(&three.room)
    );
    let (status, members) = a.get(&path, Some(&three.alice)).await;
    assert_eq!(status, StatusCode::OK, "{members}");
    assert!(members["joined"].get(&three.dave).is_some(), "{members}");
    assert_eq!(
        three.state(0, &three.alice).await,
        three.state(1, &three.bob).await
    );
}

/// Every event of the room as `srv`'s user pages through `/messages` from `from` in
/// direction `dir` (pages of `limit`, at most 100 pages), in the order returned.
async fn page_all(
    srv: &crate::fed_common::FedServer,
    token: &str,
    room: &str,
    dir: &str,
    from: Option<&str>,
    limit: usize,
) -> Vec<(String, String)> {
    let mut events = Vec::new();
    let mut from = from.map(str::to_owned);
    for _ in 0..100 {
        let mut path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir={dir}&limit={limit}",
            enc(room)
        );
        if let Some(t) = &from {
            path.push_str(&format!("&from={}", enc(t)));
        }
        let (status, page) = srv.get(&path, Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        events.extend(chunk_events(&page));
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => return events,
        }
    }
    panic!("more than 100 pages of {limit}");
}

#[tokio::test]
async fn a_hole_in_the_middle_of_the_timeline_is_backfilled_when_paging_reaches_it() {
    // 80 messages of dave that B never got: get_missing_events brings the last 20, the state
    // bridges the rest, and 60 events (his join and 59 messages) are a hole in B's timeline.
    let three = ThreeServers::new(80).await;
    let (a, b) = (&three.fed.servers[0], &three.fed.servers[1]);
    let (status, sync) = b
        .get("/_matrix/client/v3/sync?timeout=0", Some(&three.bob))
        .await;
    assert_eq!(status, StatusCode::OK, "{sync}");
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(three.send_last().await, json!({}));
    let b_rooms = &b.server.as_ref().unwrap().services.rooms;
    assert!(
        b_rooms.event(&three.events[40].0).unwrap().is_none(),
        "dave 40 is in the hole"
    );
    assert!(b_rooms.event(&three.events[60].0).unwrap().is_some());

    // Bob pages back through everything, 10 at a time: B fills the hole (two backfills of
    // at most 50) and, past bob's join, the history before it.
    let backwards = page_all(b, &three.bob, &three.room, "b", None, 10).await;
    let ids: Vec<&str> = backwards.iter().map(|(id, _)| id.as_str()).collect();
    let unique: std::collections::HashSet<&&str> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no event twice: {ids:?}");
    // The same events in the same order as alice reads them on A.
    let on_a = page_all(a, &three.alice, &three.room, "b", None, 50).await;
    assert_eq!(backwards, on_a);
    let bodies: Vec<&str> = backwards
        .iter()
        .map(|(_, body)| body.as_str())
        .filter(|b| b.starts_with("dave"))
        .collect();
    let expected: Vec<String> = (1..=80).rev().map(|i| format!("dave {i}")).collect();
    assert_eq!(bodies, expected);

    // Forwards from the very start, the same events the other way round.
    let mut forwards = page_all(b, &three.bob, &three.room, "f", Some("b0"), 7).await;
    forwards.reverse();
    assert_eq!(forwards, backwards);

    // The context of an event of the hole pages on both sides of it.
    let (d30, _) = backwards
        .iter()
        .find(|(_, b)| b == "dave 30")
        .unwrap()
        .clone();
    let path = format!(
        "/_matrix/client/v3/rooms/{}/context/{}?limit=4",
        enc(&three.room),
        enc(&d30)
    );
    let (status, context) = b.get(&path, Some(&three.bob)).await;
    assert_eq!(status, StatusCode::OK, "{context}");
    assert_eq!(context["events_before"][0]["content"]["body"], "dave 29");
    assert_eq!(context["events_after"][1]["content"]["body"], "dave 32");
    let after = page_all(b, &three.bob, &three.room, "f", context["end"].as_str(), 25).await;
    let after: Vec<&str> = after.iter().map(|(_, b)| b.as_str()).collect();
    let expected: Vec<String> = (33..=80).map(|i| format!("dave {i}")).collect();
    assert_eq!(after, expected);

    // Nothing of the hole is new to /sync.
    let (status, sync) = b
        .get(
            &format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
            Some(&three.bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sync}");
    let timeline = sync["rooms"]["join"][&three.room]["timeline"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let synced: Vec<&str> = timeline
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert!(
        synced.iter().all(|b| !b.starts_with("dave ")
            || b.trim_start_matches("dave ").parse::<u32>().unwrap() >= 60),
        "{synced:?}"
    );
}
