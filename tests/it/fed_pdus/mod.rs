//! Inbound PDUs: a remote user's events, built and signed here with the remote server's key,
//! go through the PDU checks of server A and reach (or, forged, rejected or soft-failed, do
//! not reach) its local user's /sync and /messages.
//!
//! The events are handed to A's PDU service as a `/send` transaction hands them (one call
//! with the PDUs of the transaction), with the remote server's verify key given to it
//! directly, since fetching remote keys belongs to the keyring.

pub mod events;

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use hearth::service::{
    federation::pdus::{PduResults, Pdus},
    Services,
};
use reqwest::StatusCode;
use ruma::{
    signatures::{reference_hash, Ed25519KeyPair},
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedServerName,
};
use serde_json::{json, value::RawValue, Value};

use self::events::{raw, EventSpec, Remote, RoomView, StaticKeys};
use crate::{
    common::{create_room, enc, TestServer},
    fed_common::start_many,
};

/// Server A with a public room of alice's, and a remote server whose keys A is given.
struct Setup {
    srv: TestServer,
    remote: Remote,
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
        let pdus = Pdus::new(
            services.store.clone(),
            services.rooms.clone(),
            Arc::new(StaticKeys(remote.public_keys())),
        );
        let bob = remote.user("bob");
        Self {
            srv,
            remote,
            pdus,
            alice_token,
            room_id,
            bob,
        }
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

    /// Bob's join, built on the room's latest event and accepted.
    async fn join_bob(&self) -> OwnedEventId {
        let (id, join) = self.view().event(
            &self.remote,
            EventSpec::state(
                "m.room.member",
                &self.bob,
                &self.bob,
                json!({"membership": "join"}),
            ),
        );
        let results = self.send(&[&join]).await;
        assert_eq!(results.get(&id), Some(&Ok(())), "{results:?}");
        id
    }

    /// Event ids in alice's /messages of the room, oldest first.
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

    async fn get_event(&self, id: &OwnedEventId) -> (StatusCode, Value) {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(&self.room_id),
            enc(id.as_str())
        );
        self.srv.get(&path, Some(&self.alice_token)).await
    }
}

/// Polls `check` (bounded: 50 tries, 5 s) until it holds.
async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    for _ in 0..50 {
        if check().await {
            return true;
        }
        if start.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn a_remote_join_and_message_reach_the_local_users_sync() {
    let setup = Setup::new().await;
    let (status, body) = setup
        .srv
        .get("/_matrix/client/v3/sync", Some(&setup.alice_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let since = body["next_batch"].as_str().unwrap().to_owned();

    // Join and message in one transaction, the message first: the room's order is by depth.
    let view = setup.view();
    let (join_id, join) = view.event(
        &setup.remote,
        EventSpec::state(
            "m.room.member",
            &setup.bob,
            &setup.bob,
            json!({"membership": "join"}),
        ),
    );
    let member_auth = {
        let mut auth = view.auth_events("m.room.message", &setup.bob, None, &json!({}));
        auth.push(join_id.to_string());
        auth
    };
    let mut spec = EventSpec::message(&setup.bob, "hello from afar");
    spec.prev = Some(vec![join_id.to_string()]);
    spec.auth = Some(member_auth);
    spec.extra_depth = 1;
    let (message_id, message) = view.event(&setup.remote, spec);
    let results = setup.send(&[&message, &join]).await;
    assert_eq!(results.get(&join_id), Some(&Ok(())), "{results:?}");
    assert_eq!(results.get(&message_id), Some(&Ok(())), "{results:?}");

    let path = format!("/_matrix/client/v3/sync?since={since}&timeout=0");
    let found = eventually(|| async {
        let (_, body) = setup.srv.get(&path, Some(&setup.alice_token)).await;
        let events = body["rooms"]["join"][&setup.room_id]["timeline"]["events"].clone();
        let ids: Vec<&str> = events
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["event_id"].as_str())
            .collect();
        ids.contains(&join_id.as_str()) && ids.contains(&message_id.as_str())
    })
    .await;
    assert!(found, "bob's join and message are in alice's /sync");
    let (status, body) = setup.get_event(&message_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["content"]["body"], "hello from afar");
    assert_eq!(body["sender"], setup.bob);
    // Bob is a member now, in the room's current state.
    let path = format!(
        "/_matrix/client/v3/rooms/{}/joined_members",
        enc(&setup.room_id)
    );
    let (_, members) = setup.srv.get(&path, Some(&setup.alice_token)).await;
    assert!(members["joined"].get(&setup.bob).is_some(), "{members}");
    // A local event built after them cites the remote message as its prev event.
    assert_eq!(view.latest(), vec![message_id.to_string()]);
}

#[tokio::test]
async fn a_forged_signature_is_dropped() {
    let setup = Setup::new().await;
    let forger = Remote::new("remote.test");
    let (id, join) = setup.view().event(
        &forger,
        EventSpec::state(
            "m.room.member",
            &setup.bob,
            &setup.bob,
            json!({"membership": "join"}),
        ),
    );
    let results = setup.send(&[&join]).await;
    let error = results.get(&id).unwrap().clone().unwrap_err();
    assert!(error.contains("signature"), "{error}");
    let services = setup.services();
    assert!(services.rooms.event(&id).unwrap().is_none());
    assert!(
        setup.pdus.rejection(&id).unwrap().is_none(),
        "dropped, not stored"
    );
    assert!(!setup.timeline_ids().await.contains(&id.to_string()));
    let (status, _) = setup.get_event(&id).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_wrong_content_hash_stores_the_redacted_form() {
    let setup = Setup::new().await;
    setup.join_bob().await;
    let view = setup.view();
    let (_, signed) = view.event(&setup.remote, EventSpec::message(&setup.bob, "original"));
    // The content changes after signing: the signatures (over the redacted form) still hold,
    // the content hash does not.
    let mut tampered = signed.clone();
    tampered.insert(
        "content".into(),
        serde_json::from_value(json!({"msgtype": "m.text", "body": "tampered"})).unwrap(),
    );
    let id = OwnedEventId::try_from(format!(
        "${}",
        reference_hash(&tampered, &view.rules()).unwrap()
    ))
    .unwrap();
    let results = setup.send(&[&tampered]).await;
    assert_eq!(results.get(&id), Some(&Ok(())), "{results:?}");
    let (status, body) = setup.get_event(&id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["content"], json!({}), "served redacted: {body}");
    assert!(setup.timeline_ids().await.contains(&id.to_string()));
}

#[tokio::test]
async fn events_failing_the_auth_rules_are_rejected() {
    let setup = Setup::new().await;
    let view = setup.view();

    // Bob is not in the room: his message cites only the create and power levels events.
    let (outsider_id, outsider) =
        view.event(&setup.remote, EventSpec::message(&setup.bob, "let me in"));
    let results = setup.send(&[&outsider]).await;
    let error = results.get(&outsider_id).unwrap().clone().unwrap_err();
    assert!(error.starts_with("rejected"), "{error}");
    let rejection = setup.pdus.rejection(&outsider_id).unwrap().expect("stored");
    assert_eq!(rejection.room_id, setup.room_id);

    // Joined, but renaming the room takes power level 50.
    setup.join_bob().await;
    let (rename_id, rename) = view.event(
        &setup.remote,
        EventSpec::state("m.room.name", &setup.bob, "", json!({"name": "bob's now"})),
    );
    let results = setup.send(&[&rename]).await;
    let error = results.get(&rename_id).unwrap().clone().unwrap_err();
    assert!(error.starts_with("rejected"), "{error}");
    assert!(setup.pdus.rejection(&rename_id).unwrap().is_some());

    let timeline = setup.timeline_ids().await;
    assert!(!timeline.contains(&outsider_id.to_string()));
    assert!(!timeline.contains(&rename_id.to_string()));
    for id in [&outsider_id, &rename_id] {
        let (status, _) = setup.get_event(id).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    assert_eq!(view.state_id("m.room.name", ""), None);

    // Sent again: the same answer, from the stored rejection.
    let again = setup.send(&[&rename]).await;
    assert_eq!(again.get(&rename_id), results.get(&rename_id));
    // An event citing the rejected one as an auth event is rejected in turn.
    let mut spec = EventSpec::message(&setup.bob, "citing a rejected event");
    let mut auth = view.auth_events("m.room.message", &setup.bob, None, &json!({}));
    auth.push(rename_id.to_string());
    spec.auth = Some(auth);
    let (citing_id, citing) = view.event(&setup.remote, spec);
    let results = setup.send(&[&citing]).await;
    let error = results.get(&citing_id).unwrap().clone().unwrap_err();
    assert!(error.contains("was rejected"), "{error}");
}

#[tokio::test]
async fn an_event_allowed_only_by_old_state_is_soft_failed() {
    let setup = Setup::new().await;
    let join_id = setup.join_bob().await;
    let view = setup.view();
    let auth_before_ban = view.auth_events("m.room.message", &setup.bob, None, &json!({}));
    assert!(auth_before_ban.contains(&join_id.to_string()));

    let path = format!("/_matrix/client/v3/rooms/{}/ban", enc(&setup.room_id));
    let (status, body) = setup
        .srv
        .post(
            &path,
            Some(&setup.alice_token),
            json!({"user_id": setup.bob, "reason": "spam"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let latest_after_ban = view.latest();

    // Bob "had not seen" the ban: his message follows his join and cites his membership.
    let mut spec = EventSpec::message(&setup.bob, "you cannot ban me");
    spec.prev = Some(vec![join_id.to_string()]);
    spec.auth = Some(auth_before_ban);
    let (id, message) = view.event(&setup.remote, spec);
    let results = setup.send(&[&message]).await;
    assert_eq!(
        results.get(&id),
        Some(&Ok(())),
        "soft-failed, not rejected: {results:?}"
    );

    let services = setup.services();
    let stored = services.rooms.event(&id).unwrap().expect("stored");
    assert!(services.rooms.is_soft_failed(stored.sid).unwrap());
    assert!(!setup.timeline_ids().await.contains(&id.to_string()));
    let (status, _) = setup.get_event(&id).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(view.latest(), latest_after_ban, "not a forward extremity");
}

#[tokio::test]
async fn a_duplicate_pdu_is_stored_once() {
    let setup = Setup::new().await;
    setup.join_bob().await;
    let view = setup.view();
    let (id, message) = view.event(&setup.remote, EventSpec::message(&setup.bob, "once"));
    let first = setup.send(&[&message]).await;
    assert_eq!(first.get(&id), Some(&Ok(())));
    let again = setup.send(&[&message, &message]).await;
    assert_eq!(again.get(&id), Some(&Ok(())));
    let timeline = setup.timeline_ids().await;
    assert_eq!(
        timeline
            .iter()
            .filter(|e| e.as_str() == id.as_str())
            .count(),
        1
    );
}

#[tokio::test]
async fn pdus_of_unknown_rooms_and_malformed_pdus_are_refused() {
    let setup = Setup::new().await;
    let other = RoomView {
        services: setup.services(),
        room_id: setup.room_id.clone(),
    };
    let (_, mut object) = other.event(&setup.remote, EventSpec::message(&setup.bob, "hi"));
    object.insert(
        "room_id".into(),
        CanonicalJsonValue::String("!unknown:remote.test".into()),
    );
    let results = setup.send(&[&object]).await;
    assert_eq!(results.len(), 1);
    let error = results.values().next().unwrap().clone().unwrap_err();
    assert!(error.contains("not known"), "{error}");

    // No `sender`: not a valid event of the room version; dropped with its id reported.
    let (_, mut object) = other.event(&setup.remote, EventSpec::message(&setup.bob, "hi"));
    object.remove("sender");
    let results = setup.send(&[&object]).await;
    let error = results.values().next().unwrap().clone().unwrap_err();
    assert!(error.contains("sender"), "{error}");
}

/// Figure: server CPU per PDU for inbound transactions of 50 messages (each citing the one
/// before). Run with `cargo test --test it fed_pdus::figure -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn figure_cpu_per_pdu_in_transactions_of_50() {
    const TRANSACTIONS: usize = 20;
    const PER_TRANSACTION: usize = 50;
    let setup = Setup::new().await;
    let join_id = setup.join_bob().await;
    let view = setup.view();
    let auth = view.auth_events("m.room.message", &setup.bob, None, &json!({}));
    assert!(auth.contains(&join_id.to_string()));
    let mut prev = join_id.to_string();
    let mut transactions = Vec::new();
    for t in 0..TRANSACTIONS {
        let mut events = Vec::new();
        for i in 0..PER_TRANSACTION {
            let n = t * PER_TRANSACTION + i;
            let mut spec = EventSpec::message(&setup.bob, &format!("message number {n}"));
            spec.prev = Some(vec![prev.clone()]);
            spec.auth = Some(auth.clone());
            spec.extra_depth = n as u64;
            let (id, object) = view.event(&setup.remote, spec);
            prev = id.to_string();
            events.push(object);
        }
        transactions.push(events);
    }
    let mut cpu = Duration::ZERO;
    let mut wall = Duration::ZERO;
    for events in &transactions {
        let refs: Vec<&CanonicalJsonObject> = events.iter().collect();
        let (cpu0, wall0) = (crate::fed_common::process_cpu(), Instant::now());
        let results = setup.send(&refs).await;
        cpu += crate::fed_common::process_cpu() - cpu0;
        wall += wall0.elapsed();
        assert_eq!(results.len(), PER_TRANSACTION);
        assert!(results.values().all(Result::is_ok), "{results:?}");
    }
    let pdus = (TRANSACTIONS * PER_TRANSACTION) as u32;
    println!(
        "{TRANSACTIONS} transactions of {PER_TRANSACTION} PDUs: CPU {:?} per PDU, wall {:?} per \
         transaction",
        cpu / pdus,
        wall / TRANSACTIONS as u32
    );
    assert_eq!(view.latest(), vec![prev]);
}

#[tokio::test]
async fn the_state_before_an_event_merging_a_fork_is_resolved() {
    let setup = Setup::new().await;
    let join_id = setup.join_bob().await;
    let view = setup.view();
    let member_auth = view.auth_events("m.room.message", &setup.bob, None, &json!({}));
    let topic = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.topic",
        enc(&setup.room_id)
    );
    let (status, body) = setup
        .srv
        .put(&topic, Some(&setup.alice_token), json!({"topic": "news"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let topic_id = body["event_id"].as_str().unwrap().to_owned();

    // Bob has not seen the topic: his message forks from his join.
    let mut spec = EventSpec::message(&setup.bob, "on a branch");
    spec.prev = Some(vec![join_id.to_string()]);
    spec.auth = Some(member_auth.clone());
    let (branch_id, branch) = view.event(&setup.remote, spec);
    let results = setup.send(&[&branch]).await;
    assert_eq!(results.get(&branch_id), Some(&Ok(())), "{results:?}");
    let mut latest = view.latest();
    latest.sort();
    let mut expected = vec![topic_id.clone(), branch_id.to_string()];
    expected.sort();
    assert_eq!(latest, expected, "both branches are forward extremities");

    // The next message merges both branches: the two states are resolved (bob is a member
    // in both).
    let mut spec = EventSpec::message(&setup.bob, "merged");
    spec.prev = Some(expected.clone());
    spec.auth = Some(member_auth.clone());
    spec.extra_depth = 1;
    let (merge_id, merge) = view.event(&setup.remote, spec);
    let results = setup.send(&[&merge]).await;
    assert_eq!(results.get(&merge_id), Some(&Ok(())), "{results:?}");
    assert_eq!(view.latest(), vec![merge_id.to_string()]);
    let timeline = setup.timeline_ids().await;
    assert!(timeline.contains(&branch_id.to_string()));
    assert!(timeline.contains(&merge_id.to_string()));

    // Alice bans bob; an event of bob's merging his old branch with the ban is judged against
    // the resolved state, in which he is banned: rejected, not merely soft-failed.
    let ban = format!("/_matrix/client/v3/rooms/{}/ban", enc(&setup.room_id));
    let (status, body) = setup
        .srv
        .post(
            &ban,
            Some(&setup.alice_token),
            json!({"user_id": setup.bob}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ban_id = view.latest().pop().unwrap();
    let rooms = &setup.services().rooms;
    let head = |id: &str| {
        let event = rooms
            .event(&OwnedEventId::try_from(id).unwrap())
            .unwrap()
            .unwrap();
        hearth::service::rooms::state::state_head(&event)
    };
    let resolved = rooms
        .resolve_states(&view.rules(), &[head(branch_id.as_str()), head(&ban_id)])
        .unwrap()
        .expect("resolved");
    assert_eq!(
        resolved[&("m.room.member".to_owned(), setup.bob.clone())].as_str(),
        ban_id,
        "the ban wins"
    );
    assert_eq!(
        resolved[&("m.room.topic".to_owned(), String::new())].as_str(),
        topic_id
    );
    let mut spec = EventSpec::message(&setup.bob, "merging the ban away");
    spec.prev = Some(vec![branch_id.to_string(), ban_id]);
    spec.auth = Some(member_auth);
    spec.extra_depth = 1;
    let (id, event) = view.event(&setup.remote, spec);
    let results = setup.send(&[&event]).await;
    let error = results.get(&id).unwrap().clone().unwrap_err();
    assert!(error.contains("state before the event"), "{error}");
}

/// Server B's user joins server A's room and talks there: the events are signed with B's real
/// key, and A's keyring fetches that key from B over TLS to check them.
#[tokio::test]
async fn events_signed_by_a_real_server_are_checked_with_its_fetched_keys() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice_token, _) = a.register("alice", "password1").await;
    let room_id = create_room(a, &alice_token, json!({"preset": "public_chat"})).await;
    let services = &a.server.as_ref().unwrap().services;
    let view = RoomView {
        services,
        room_id: room_id.clone(),
    };
    let remote = Remote::server(b);
    let bob = b.user_id("bob");
    let origin = OwnedServerName::try_from(b.name.as_str()).unwrap();

    let (join_id, join) = view.event(
        &remote,
        EventSpec::state("m.room.member", &bob, &bob, json!({"membership": "join"})),
    );
    let results = services.pdus.receive_pdus(&origin, &[raw(&join)]).await;
    assert_eq!(results.get(&join_id), Some(&Ok(())), "{results:?}");
    let (message_id, message) = view.event(&remote, EventSpec::message(&bob, "hi alice"));
    // A forged message: signed by another key under B's key id.
    let forger = Remote {
        name: b.name.clone(),
        key: Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), remote.key.version().to_owned())
            .unwrap(),
    };
    let (forged_id, forged) = view.event(&forger, EventSpec::message(&bob, "forged"));
    let results = services
        .pdus
        .receive_pdus(&origin, &[raw(&message), raw(&forged)])
        .await;
    assert_eq!(results.get(&message_id), Some(&Ok(())), "{results:?}");
    assert!(results.get(&forged_id).unwrap().is_err(), "{results:?}");

    let path = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=10",
        enc(&room_id)
    );
    let (status, body) = a.get(&path, Some(&alice_token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let bodies: Vec<&str> = body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, vec!["hi alice"], "{body}");
}

/// Prev events that are unknown here are not fetched yet: the event is judged against its auth
/// events and the current state, stored, and stays a forward extremity beside the others.
#[tokio::test]
async fn an_event_with_unknown_prev_events_is_judged_against_the_current_state() {
    let setup = Setup::new().await;
    setup.join_bob().await;
    let view = setup.view();
    let auth_as_member = view.auth_events("m.room.message", &setup.bob, None, &json!({}));
    let before = view.latest();
    let mut spec = EventSpec::message(&setup.bob, "after a gap");
    spec.prev = Some(vec![
        "$notstoredanywhereaaaaaaaaaaaaaaaaaaaaaaaaaa".to_owned()
    ]);
    let (id, event) = view.event(&setup.remote, spec);
    let results = setup.send(&[&event]).await;
    assert_eq!(results.get(&id), Some(&Ok(())), "{results:?}");
    assert!(setup.timeline_ids().await.contains(&id.to_string()));
    let mut latest = view.latest();
    latest.sort();
    let mut expected = [before, vec![id.to_string()]].concat();
    expected.sort();
    assert_eq!(latest, expected);

    // Alice's next message closes the gap locally: it cites both extremities.
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/t1",
        enc(&setup.room_id)
    );
    let (status, body) = setup
        .srv
        .put(
            &path,
            Some(&setup.alice_token),
            json!({"msgtype": "m.text", "body": "hi"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let local = OwnedEventId::try_from(body["event_id"].as_str().unwrap()).unwrap();
    let stored = setup.services().rooms.event(&local).unwrap().unwrap();
    let mut prev: Vec<String> = stored
        .pdu
        .prev_events
        .iter()
        .map(|e| e.to_string())
        .collect();
    prev.sort();
    assert_eq!(prev, expected);
    assert_eq!(view.latest(), vec![local.to_string()]);

    // A banned sender's event with unknown prev events is rejected against the current state.
    let ban = format!("/_matrix/client/v3/rooms/{}/ban", enc(&setup.room_id));
    let (status, body) = setup
        .srv
        .post(
            &ban,
            Some(&setup.alice_token),
            json!({"user_id": setup.bob}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut spec = EventSpec::message(&setup.bob, "from the gap, banned");
    spec.prev = Some(vec![
        "$notstoredanywherebbbbbbbbbbbbbbbbbbbbbbbbbb".to_owned()
    ]);
    spec.auth = Some(auth_as_member);
    let (id, event) = view.event(&setup.remote, spec);
    let results = setup.send(&[&event]).await;
    let error = results.get(&id).unwrap().clone().unwrap_err();
    assert!(error.contains("state before the event"), "{error}");
}

/// Events of one transaction that build on each other: a join, a message, a reaction to it,
/// its redaction, a rejected state event and a message citing it as an auth event.
#[tokio::test]
async fn one_transaction_carries_events_that_build_on_each_other() {
    let setup = Setup::new().await;
    let view = setup.view();
    let bob = setup.bob.as_str();
    let mut chain: Vec<(OwnedEventId, CanonicalJsonObject)> = Vec::new();
    let mut member_auth = view.auth_events("m.room.message", bob, None, &json!({}));
    let (join_id, join) = view.event(
        &setup.remote,
        EventSpec::state("m.room.member", bob, bob, json!({"membership": "join"})),
    );
    member_auth.push(join_id.to_string());
    chain.push((join_id, join));
    let next = |spec: EventSpec<'_>, chain: &mut Vec<(OwnedEventId, CanonicalJsonObject)>| {
        let mut spec = spec;
        spec.prev = Some(vec![chain.last().unwrap().0.to_string()]);
        spec.auth.get_or_insert_with(|| member_auth.clone());
        spec.extra_depth = chain.len() as u64;
        let (id, object) = view.event(&setup.remote, spec);
        chain.push((id.clone(), object));
        id
    };
    let message_id = next(EventSpec::message(bob, "soon gone"), &mut chain);
    let mut reaction = EventSpec::message(bob, "");
    reaction.kind = "m.reaction";
    reaction.content =
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": message_id, "key": "👍"}});
    let reaction_id = next(reaction, &mut chain);
    let mut redaction = EventSpec::message(bob, "");
    redaction.kind = "m.room.redaction";
    redaction.content = json!({"redacts": message_id});
    let redaction_id = next(redaction, &mut chain);
    let rename_id = next(
        EventSpec::state("m.room.name", bob, "", json!({"name": "mine"})),
        &mut chain,
    );
    let mut citing = EventSpec::message(bob, "citing the rejected rename");
    let mut auth = member_auth.clone();
    auth.push(rename_id.to_string());
    citing.auth = Some(auth);
    let citing_id = next(citing, &mut chain);

    let objects: Vec<&CanonicalJsonObject> = chain.iter().map(|(_, o)| o).collect();
    let results = setup.send(&objects).await;
    for id in [&chain[0].0, &message_id, &reaction_id, &redaction_id] {
        assert_eq!(results.get(id), Some(&Ok(())), "{id}: {results:?}");
    }
    let error = results.get(&rename_id).unwrap().clone().unwrap_err();
    assert!(error.starts_with("rejected"), "{error}");
    let error = results.get(&citing_id).unwrap().clone().unwrap_err();
    assert!(error.contains("was rejected"), "{error}");

    // The redaction applied to the message staged before it.
    let (status, body) = setup.get_event(&message_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["content"], json!({}), "{body}");
    // The reaction was indexed against the message staged before it (and redacted away with
    // it: a redacted event keeps no relations of its own, its children stay).
    let path = format!(
        "/_matrix/client/v1/rooms/{}/relations/{}",
        enc(&setup.room_id),
        enc(message_id.as_str())
    );
    let (status, body) = setup.srv.get(&path, Some(&setup.alice_token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let children: Vec<&str> = body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(children, vec![reaction_id.as_str()], "{body}");
    let timeline = setup.timeline_ids().await;
    for id in [&message_id, &reaction_id, &redaction_id] {
        assert!(timeline.contains(&id.to_string()), "{id}");
    }
    assert_eq!(view.latest(), vec![redaction_id.to_string()]);
}

/// Within a transaction, what an event cites comes first, whatever depths the sender gave.
#[tokio::test]
async fn cited_events_are_processed_first_whatever_their_depth() {
    let setup = Setup::new().await;
    let view = setup.view();
    let mut join = EventSpec::state(
        "m.room.member",
        &setup.bob,
        &setup.bob,
        json!({"membership": "join"}),
    );
    join.extra_depth = 5;
    let (join_id, join) = view.event(&setup.remote, join);
    let mut auth = view.auth_events("m.room.message", &setup.bob, None, &json!({}));
    auth.push(join_id.to_string());
    let mut message = EventSpec::message(&setup.bob, "shallower than my join");
    message.prev = Some(vec![join_id.to_string()]);
    message.auth = Some(auth);
    let (message_id, message) = view.event(&setup.remote, message);
    let results = setup.send(&[&message, &join]).await;
    assert_eq!(results.get(&join_id), Some(&Ok(())), "{results:?}");
    assert_eq!(results.get(&message_id), Some(&Ok(())), "{results:?}");
    let timeline = setup.timeline_ids().await;
    let position = |id: &OwnedEventId| timeline.iter().position(|e| e.as_str() == id.as_str());
    assert!(position(&join_id).unwrap() < position(&message_id).unwrap());
}
