//! Fetching what received PDUs lack: missing prev events (`get_missing_events`), the state
//! across a gap too long for it (`state_ids` + `event/{id}`, resolved), missing auth events
//! (`event_auth`), forks resolved with state resolution v2, forged fetched events dropped,
//! forward extremities merged by dummy events, and backfill in `/messages`.
//!
//! Server A is a real server driven over HTTP; the other server is played by the test: its
//! events are built and signed here (`fed_pdus/events.rs`), handed to A's PDU service as a
//! `/send` transaction hands them, and A's fetches are answered by [`Origin`], which holds
//! that server's copy of the room. `servers.rs`: the same between real servers (backfill past
//! a federated join; missing events and state fetched over federation).

mod servers;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
};

use hearth::service::{
    federation::{
        fetch::{FetchFuture, RemoteEvents},
        pdus::{PduResults, Pdus},
    },
    Services,
};
use reqwest::StatusCode;
use ruma::{CanonicalJsonObject, EventId, OwnedEventId, OwnedServerName, RoomId, ServerName};
use serde_json::{json, value::RawValue, Value};

use crate::{
    common::{create_room, enc, TestServer},
    fed_pdus::events::{raw, EventSpec, Remote, RoomView, StaticKeys},
};

/// The other server's copy of the room, answering A's fetches.
#[derive(Default)]
pub struct Origin {
    events: Mutex<HashMap<OwnedEventId, CanonicalJsonObject>>,
    /// What `state_ids` answers at an event (the state before it).
    states: Mutex<HashMap<OwnedEventId, Vec<OwnedEventId>>>,
    /// Every request made, as `endpoint event_id`.
    pub calls: Mutex<Vec<String>>,
}

impl Origin {
    fn add(&self, id: &OwnedEventId, object: &CanonicalJsonObject) {
        self.events
            .lock()
            .unwrap()
            .insert(id.clone(), object.clone());
    }

    fn get(&self, id: &EventId) -> Option<CanonicalJsonObject> {
        self.events.lock().unwrap().get(id).cloned()
    }

    fn call(&self, what: String) {
        self.calls.lock().unwrap().push(what);
    }

    fn calls_to(&self, endpoint: &str) -> usize {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|c| c.starts_with(endpoint)).count()
    }

    fn ids(object: &CanonicalJsonObject, field: &str) -> Vec<OwnedEventId> {
        let value: Value = serde_json::from_str(raw(object).get()).unwrap();
        value[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| OwnedEventId::try_from(v.as_str()?).ok())
            .collect()
    }

    /// Walks `field` references from `start` (not included) over the events held here.
    fn walk(
        &self,
        start: &[OwnedEventId],
        field: &str,
        stop: &HashSet<OwnedEventId>,
    ) -> Vec<OwnedEventId> {
        let mut seen = HashSet::new();
        let mut queue: VecDeque<OwnedEventId> = start.iter().cloned().collect();
        let mut found = Vec::new();
        while let Some(id) = queue.pop_front() {
            let Some(object) = self.get(&id) else {
                continue;
            };
            for next in Self::ids(&object, field) {
                if !stop.contains(&next) && seen.insert(next.clone()) && self.get(&next).is_some() {
                    found.push(next.clone());
                    queue.push_back(next);
                }
            }
        }
        found
    }

    fn depth(&self, id: &EventId) -> u64 {
        let value: Value = serde_json::from_str(raw(&self.get(id).unwrap()).get()).unwrap();
        value["depth"].as_u64().unwrap()
    }

    fn raws(&self, ids: &[OwnedEventId]) -> Vec<Box<RawValue>> {
        ids.iter()
            .filter_map(|id| self.get(id))
            .map(|o| raw(&o))
            .collect()
    }
}

impl RemoteEvents for Origin {
    fn missing_events<'a>(
        &'a self,
        _origin: &'a ServerName,
        _room_id: &'a RoomId,
        earliest: Vec<OwnedEventId>,
        latest: Vec<OwnedEventId>,
        limit: u32,
        _min_depth: u64,
    ) -> FetchFuture<'a, Vec<Box<RawValue>>> {
        self.call(format!("get_missing_events {}", latest[0]));
        let stop: HashSet<OwnedEventId> = earliest.into_iter().collect();
        let mut found = self.walk(&latest, "prev_events", &stop);
        found.truncate(limit as usize);
        found.sort_by_key(|id| self.depth(id));
        let raws = self.raws(&found);
        Box::pin(async move { Ok(raws) })
    }

    fn state_ids<'a>(
        &'a self,
        _origin: &'a ServerName,
        _room_id: &'a RoomId,
        event_id: &'a EventId,
    ) -> FetchFuture<'a, (Vec<OwnedEventId>, Vec<OwnedEventId>)> {
        self.call(format!("state_ids {event_id}"));
        let state = self.states.lock().unwrap().get(event_id).cloned();
        let answer = match state {
            Some(state) => {
                let chain = self.walk(&state, "auth_events", &HashSet::new());
                Ok((state, chain))
            }
            None => Err("404 M_NOT_FOUND".to_owned()),
        };
        Box::pin(async move { answer })
    }

    fn event<'a>(
        &'a self,
        _origin: &'a ServerName,
        event_id: &'a EventId,
    ) -> FetchFuture<'a, Box<RawValue>> {
        self.call(format!("event {event_id}"));
        let answer = self
            .get(event_id)
            .map(|o| raw(&o))
            .ok_or_else(|| "404 M_NOT_FOUND".to_owned());
        Box::pin(async move { answer })
    }

    fn event_auth<'a>(
        &'a self,
        _origin: &'a ServerName,
        _room_id: &'a RoomId,
        event_id: &'a EventId,
    ) -> FetchFuture<'a, Vec<Box<RawValue>>> {
        self.call(format!("event_auth {event_id}"));
        let chain = self.walk(&[event_id.to_owned()], "auth_events", &HashSet::new());
        let raws = self.raws(&chain);
        Box::pin(async move { Ok(raws) })
    }

    fn backfill<'a>(
        &'a self,
        _origin: &'a ServerName,
        _room_id: &'a RoomId,
        from: Vec<OwnedEventId>,
        limit: u32,
    ) -> FetchFuture<'a, Vec<Box<RawValue>>> {
        self.call(format!("backfill {}", from[0]));
        let mut found: Vec<OwnedEventId> = from
            .iter()
            .filter(|id| self.get(id).is_some())
            .cloned()
            .collect();
        found.extend(self.walk(&from, "prev_events", &HashSet::new()));
        found.truncate(limit as usize);
        let raws = self.raws(&found);
        Box::pin(async move { Ok(raws) })
    }
}

/// Server A with a public room of alice's that bob (of the remote server) has joined.
struct Setup {
    srv: TestServer,
    remote: Remote,
    origin: Arc<Origin>,
    pdus: Pdus,
    alice_token: String,
    room_id: String,
    bob: String,
}

impl Setup {
    async fn new() -> Self {
        let srv = TestServer::start().await;
        let (_, alice_token, _) = srv.register("alice", "password1").await;
        let room_id = create_room(&srv, &alice_token, json!({"preset": "public_chat"})).await;
        let remote = Remote::new("remote.test");
        let services = &srv.server.as_ref().unwrap().services;
        let origin = Arc::new(Origin::default());
        let pdus = Pdus::new(
            services.store.clone(),
            services.rooms.clone(),
            Arc::new(StaticKeys(remote.public_keys())),
        )
        .with_remote(origin.clone());
        let bob = remote.user("bob");
        let setup = Self {
            srv,
            remote,
            origin,
            pdus,
            alice_token,
            room_id,
            bob,
        };
        let bob = setup.bob.clone();
        let (id, join) = setup.view().event(
            &setup.remote,
            EventSpec::state("m.room.member", &bob, &bob, json!({"membership": "join"})),
        );
        let results = setup.send(&[&join]).await;
        assert_eq!(results.get(&id), Some(&Ok(())), "{results:?}");
        setup.origin.add(&id, &join);
        setup
    }

    fn services(&self) -> &Services {
        &self.srv.server.as_ref().unwrap().services
    }

    fn view(&self) -> RoomView<'_> {
        RoomView {
            services: self.services(),
            room_id: self.room_id.clone(),
        }
    }

    async fn send(&self, pdus: &[&CanonicalJsonObject]) -> PduResults {
        let raws: Vec<Box<RawValue>> = pdus.iter().map(|o| raw(o)).collect();
        let origin = OwnedServerName::try_from(self.remote.name.as_str()).unwrap();
        self.pdus.receive_pdus(&origin, &raws).await
    }

    /// A chain of `n` messages from `sender`, the first citing `prev` at `depth` past the
    /// room's newest event; each held by the origin, none sent.
    fn chain(
        &self,
        sender: &str,
        prev: &OwnedEventId,
        extra_depth: u64,
        n: usize,
        auth: &[String],
    ) -> Vec<(OwnedEventId, CanonicalJsonObject)> {
        let view = self.view();
        let mut prev = prev.clone();
        let mut out = Vec::new();
        for i in 0..n {
            let body = format!("gap message {i}");
            let mut spec = EventSpec::message(sender, &body);
            spec.prev = Some(vec![prev.to_string()]);
            spec.auth = Some(auth.to_vec());
            spec.extra_depth = extra_depth + i as u64;
            let (id, object) = view.event(&self.remote, spec);
            self.origin.add(&id, &object);
            prev = id.clone();
            out.push((id, object));
        }
        out
    }

    /// Event ids in alice's /messages of the room, oldest first (at most 100).
    async fn timeline_ids(&self) -> Vec<String> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
            enc(&self.room_id)
        );
        let (status, body) = self.srv.get(&path, Some(&self.alice_token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let mut ids: Vec<String> = body["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect();
        ids.reverse();
        ids
    }

    async fn state_content(&self, kind: &str, state_key: &str) -> (StatusCode, Value) {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/{kind}/{state_key}",
            enc(&self.room_id)
        );
        self.srv.get(&path, Some(&self.alice_token)).await
    }

    fn bob_message_auth(&self) -> Vec<String> {
        self.view()
            .auth_events("m.room.message", &self.bob, None, &json!({}))
    }
}

fn latest_id(setup: &Setup) -> OwnedEventId {
    OwnedEventId::try_from(setup.view().latest()[0].as_str()).unwrap()
}

/// `ids` appear in `timeline` in this order.
fn in_order(timeline: &[String], ids: &[&OwnedEventId]) -> bool {
    let positions: Vec<Option<usize>> = ids
        .iter()
        .map(|id| timeline.iter().position(|t| t == id.as_str()))
        .collect();
    positions.iter().all(Option::is_some) && positions.windows(2).all(|w| w[0] < w[1])
}

#[tokio::test]
async fn missing_prev_events_are_fetched_and_stored_in_order() {
    let setup = Setup::new().await;
    let auth = setup.bob_message_auth();
    let chain = setup.chain(&setup.bob, &latest_id(&setup), 0, 4, &auth);
    let (last_id, last) = chain.last().unwrap();

    let results = setup.send(&[last]).await;
    assert_eq!(results.get(last_id), Some(&Ok(())), "{results:?}");
    assert_eq!(
        results.len(),
        1,
        "only the sent PDU is answered: {results:?}"
    );
    assert_eq!(setup.origin.calls_to("get_missing_events"), 1);
    assert_eq!(setup.origin.calls_to("state_ids"), 0, "no gap remained");

    let timeline = setup.timeline_ids().await;
    let ids: Vec<&OwnedEventId> = chain.iter().map(|(id, _)| id).collect();
    assert!(in_order(&timeline, &ids), "{timeline:?}");
    assert_eq!(setup.view().latest(), vec![last_id.to_string()]);
}

#[tokio::test]
async fn forged_events_in_a_missing_events_answer_are_dropped() {
    let setup = Setup::new().await;
    let auth = setup.bob_message_auth();
    let chain = setup.chain(&setup.bob, &latest_id(&setup), 0, 3, &auth);
    // The origin serves the middle event with a signature of another key.
    let forger = Remote::new("remote.test");
    let (forged_id, forged) = {
        let (id, object) = &chain[1];
        let mut unsigned = object.clone();
        unsigned.remove("signatures");
        unsigned.remove("hashes");
        let (forged_id, forged) = forger.sign(&setup.view().rules(), unsigned);
        assert_eq!(&forged_id, id, "signatures are not part of the id");
        (forged_id, forged)
    };
    setup.origin.add(&forged_id, &forged);

    let (last_id, last) = &chain[2];
    let results = setup.send(&[last]).await;
    assert_eq!(results.get(last_id), Some(&Ok(())), "{results:?}");
    let services = setup.services();
    assert!(
        services.rooms.event(&forged_id).unwrap().is_none(),
        "not stored"
    );
    assert!(setup.pdus.rejection(&forged_id).unwrap().is_none());
    let timeline = setup.timeline_ids().await;
    assert!(!timeline.contains(&forged_id.to_string()));
    assert!(in_order(&timeline, &[&chain[0].0, last_id]), "{timeline:?}");
}

#[tokio::test]
async fn a_gap_too_long_is_bridged_with_the_state_from_state_ids() {
    let setup = Setup::new().await;
    let view = setup.view();
    // Carol joins on the other server; 24 of bob's messages follow; then carol speaks. A is
    // sent carol's message only: get_missing_events (limit 20) cannot reach her join.
    let carol = setup.remote.user("carol");
    let (join_id, join) = view.event(
        &setup.remote,
        EventSpec::state(
            "m.room.member",
            &carol,
            &carol,
            json!({"membership": "join"}),
        ),
    );
    setup.origin.add(&join_id, &join);
    let auth = setup.bob_message_auth();
    let chain = setup.chain(&setup.bob, &join_id, 1, 24, &auth);
    let mut carol_auth = view.auth_events("m.room.message", &carol, None, &json!({}));
    carol_auth.push(join_id.to_string());
    let mut spec = EventSpec::message(&carol, "hello, I joined while you were away");
    spec.prev = Some(vec![chain.last().unwrap().0.to_string()]);
    spec.auth = Some(carol_auth);
    spec.extra_depth = 25;
    let (carol_msg_id, carol_msg) = view.event(&setup.remote, spec);
    setup.origin.add(&carol_msg_id, &carol_msg);
    // The state before each gap message: A's state and carol's join.
    let mut state: Vec<OwnedEventId> = setup
        .services()
        .rooms
        .current_state(
            setup
                .services()
                .rooms
                .room(&RoomId::parse(&setup.room_id).unwrap())
                .unwrap()
                .unwrap()
                .sid,
            None,
        )
        .unwrap()
        .into_iter()
        .map(|e| e.pdu.event_id)
        .collect();
    state.push(join_id.clone());
    for (id, _) in &chain {
        setup
            .origin
            .states
            .lock()
            .unwrap()
            .insert(id.clone(), state.clone());
    }

    let results = setup.send(&[&carol_msg]).await;
    assert_eq!(results.get(&carol_msg_id), Some(&Ok(())), "{results:?}");
    assert_eq!(setup.origin.calls_to("get_missing_events"), 1);
    assert_eq!(setup.origin.calls_to("state_ids"), 1);

    // Carol is a member on A now (from the resolved state), her join an outlier.
    let path = format!(
        "/_matrix/client/v3/rooms/{}/joined_members",
        enc(&setup.room_id)
    );
    let (status, members) = setup.srv.get(&path, Some(&setup.alice_token)).await;
    assert_eq!(status, StatusCode::OK, "{members}");
    assert!(members["joined"].get(&carol).is_some(), "{members}");
    let (status, member) = setup.state_content("m.room.member", &carol).await;
    assert_eq!(status, StatusCode::OK, "{member}");
    assert_eq!(member["membership"], "join");
    let timeline = setup.timeline_ids().await;
    assert!(
        !timeline.contains(&join_id.to_string()),
        "an outlier is not in the timeline"
    );
    let fetched: Vec<&OwnedEventId> = chain[4..].iter().map(|(id, _)| id).collect();
    assert!(in_order(&timeline, &fetched), "{timeline:?}");
    assert!(in_order(
        &timeline,
        &[fetched[fetched.len() - 1], &carol_msg_id]
    ));
    for (id, _) in &chain[..4] {
        assert!(
            !timeline.contains(&id.to_string()),
            "beyond the limit: not fetched"
        );
    }
}

#[tokio::test]
async fn unknown_auth_events_are_fetched_as_outliers() {
    let setup = Setup::new().await;
    let view = setup.view();
    let carol = setup.remote.user("carol");
    let (join_id, join) = view.event(
        &setup.remote,
        EventSpec::state(
            "m.room.member",
            &carol,
            &carol,
            json!({"membership": "join"}),
        ),
    );
    setup.origin.add(&join_id, &join);
    // Carol's message cites A's latest event as its prev event (no gap) but her join, unknown
    // to A, as an auth event.
    let mut auth = view.auth_events("m.room.message", &carol, None, &json!({}));
    auth.push(join_id.to_string());
    let mut spec = EventSpec::message(&carol, "my join is news to you");
    spec.auth = Some(auth);
    spec.extra_depth = 1;
    let (id, message) = view.event(&setup.remote, spec);
    setup.origin.add(&id, &message);

    let results = setup.send(&[&message]).await;
    // With the join fetched, the message passes its auth events and is judged against the
    // state before it (A's, which her join is not part of): no longer "unknown auth event".
    let error = results.get(&id).unwrap().clone().unwrap_err();
    assert!(error.contains("state before"), "{error}");
    assert_eq!(setup.origin.calls_to("event_auth"), 1);
    let services = setup.services();
    let stored = services
        .rooms
        .event(&join_id)
        .unwrap()
        .expect("stored as an outlier");
    assert!(services.rooms.is_outlier(stored.sid).unwrap());
    assert!(!setup.timeline_ids().await.contains(&join_id.to_string()));
    let path = format!(
        "/_matrix/client/v3/rooms/{}/event/{}",
        enc(&setup.room_id),
        enc(join_id.as_str())
    );
    let (status, _) = setup.srv.get(&path, Some(&setup.alice_token)).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "outliers are not served to clients"
    );
}

#[tokio::test]
async fn concurrent_topic_changes_are_resolved_not_overwritten() {
    let setup = Setup::new().await;
    let view = setup.view();
    // Bob may set the topic (power 100, as alice).
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
        enc(&setup.room_id)
    );
    let (_, mut levels) = setup.srv.get(&path, Some(&setup.alice_token)).await;
    levels["users"][&setup.bob] = json!(100);
    let (status, body) = setup.srv.put(&path, Some(&setup.alice_token), levels).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Bob's topic is built (and timestamped) first, on the room as it is; alice's follows on
    // A before bob's arrives: concurrent state changes.
    let (bob_topic_id, bob_topic) = view.event(
        &setup.remote,
        EventSpec::state("m.room.topic", &setup.bob, "", json!({"topic": "bob's"})),
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
        enc(&setup.room_id)
    );
    let (status, body) = setup
        .srv
        .put(&path, Some(&setup.alice_token), json!({"topic": "alice's"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = setup.send(&[&bob_topic]).await;
    assert_eq!(results.get(&bob_topic_id), Some(&Ok(())), "{results:?}");
    assert!(setup
        .timeline_ids()
        .await
        .contains(&bob_topic_id.to_string()));

    // Same power, same mainline: the later timestamp (alice's) is applied last and stands,
    // however the events arrived (without resolution, bob's, arriving last, would).
    let (status, topic) = setup.state_content("m.room.topic", "").await;
    assert_eq!(status, StatusCode::OK, "{topic}");
    assert_eq!(topic["topic"], "alice's");
    // Both branches are merged by alice's next event.
    assert_eq!(setup.view().latest().len(), 2);
}

#[tokio::test]
async fn many_forward_extremities_are_merged_by_a_dummy_event() {
    let setup = Setup::new().await;
    let view = setup.view();
    let latest = view.latest();
    // Twelve messages of bob's, all citing the same event: twelve extremities.
    let messages: Vec<(OwnedEventId, CanonicalJsonObject)> = (0..12)
        .map(|i| {
            let mut spec = EventSpec::message(&setup.bob, &format!("concurrent {i}"));
            spec.prev = Some(latest.clone());
            view.event(&setup.remote, spec)
        })
        .collect();
    let objects: Vec<&CanonicalJsonObject> = messages.iter().map(|(_, o)| o).collect();
    let results = setup.send(&objects).await;
    assert!(results.values().all(Result::is_ok), "{results:?}");

    let extremities = setup.view().latest();
    assert_eq!(extremities.len(), 1, "{extremities:?}");
    let dummy = setup
        .services()
        .rooms
        .event(&OwnedEventId::try_from(extremities[0].as_str()).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(dummy.pdu.kind.to_string(), "org.matrix.dummy_event");
    assert_eq!(
        dummy.pdu.sender.as_str(),
        format!("@alice:{}", setup.srv.config.server_name)
    );
    let cited: HashSet<&str> = dummy.pdu.prev_events.iter().map(|e| e.as_str()).collect();
    for (id, _) in &messages {
        assert!(cited.contains(id.as_str()));
    }
}

/// Figure: server CPU per fetched PDU — 10 transactions of one PDU, each citing 20 events A
/// lacks, fetched with get_missing_events (the origin in-process, keys given directly). Run
/// with `cargo test --release --test it fed_fetch::figure -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn figure_cpu_per_fetched_pdu() {
    let setup = Setup::new().await;
    let auth = setup.bob_message_auth();
    let rounds = 10;
    let mut total = std::time::Duration::ZERO;
    for _ in 0..rounds {
        let chain = setup.chain(&setup.bob, &latest_id(&setup), 0, 21, &auth);
        let (last_id, last) = chain.last().unwrap();
        let before = crate::fed_common::process_cpu();
        let results = setup.send(&[last]).await;
        total += crate::fed_common::process_cpu() - before;
        assert_eq!(results.get(last_id), Some(&Ok(())), "{results:?}");
        assert_eq!(setup.view().latest(), vec![last_id.to_string()]);
    }
    let pdus = rounds * 21;
    println!(
        "{pdus} PDUs (20 fetched + 1 sent per transaction): {:?} CPU per PDU",
        total / pdus as u32
    );
}
