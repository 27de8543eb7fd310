//! State resolution v1 on small hand-made forks of one room: a base state (alice created the
//! room and holds power 100, bob 50, carol and dave joined, the room is public), and branches
//! that change it concurrently.

use std::collections::HashMap;

use ruma::{
    events::{StateEventType, TimelineEventType},
    room_version_rules::AuthorizationRules,
    state_res::StateMap,
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedUserId, UInt,
};
use serde_json::{json, Value};

use super::{resolve, sha1_of};
use crate::service::rooms::Pdu;

const ALICE: &str = "@alice:a.test";
const BOB: &str = "@bob:b.test";
const CAROL: &str = "@carol:a.test";
const EVE: &str = "@eve:c.test";
const MALLORY: &str = "@mallory:c.test";

fn rules() -> AuthorizationRules {
    AuthorizationRules::V1
}

/// The room's events by id, and the base state.
struct Room {
    events: HashMap<OwnedEventId, Pdu>,
    base: StateMap<OwnedEventId>,
}

impl Room {
    fn new() -> Self {
        let mut room = Room {
            events: HashMap::new(),
            base: StateMap::new(),
        };
        let base = [
            room.add(
                "create",
                "m.room.create",
                ALICE,
                "",
                json!({"creator": ALICE}),
                1,
            ),
            room.member("alice-join", ALICE, ALICE, "join", 2),
            room.power("power", ALICE, json!({ALICE: 100, BOB: 50}), 3),
            room.add(
                "rules",
                "m.room.join_rules",
                ALICE,
                "",
                json!({"join_rule": "public"}),
                4,
            ),
            room.member("bob-join", BOB, BOB, "join", 5),
            room.member("carol-join", CAROL, CAROL, "join", 6),
        ];
        for id in base {
            let key = room.key(&id);
            room.base.insert(key, id);
        }
        room
    }

    fn add(
        &mut self,
        name: &str,
        kind: &str,
        sender: &str,
        state_key: &str,
        content: Value,
        depth: u64,
    ) -> OwnedEventId {
        let event_id = OwnedEventId::try_from(format!("${name}:a.test")).unwrap();
        let pdu = Pdu {
            event_id: event_id.clone(),
            room_id: Some("!room:a.test".try_into().unwrap()),
            sender: OwnedUserId::try_from(sender).unwrap(),
            origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::from(depth as u32)),
            kind: TimelineEventType::from(kind),
            content: serde_json::value::to_raw_value(&content).unwrap(),
            state_key: Some(state_key.to_owned()),
            prev_events: Vec::new(),
            auth_events: Vec::new(),
            redacts: None,
            depth,
            rejected: false,
        };
        self.events.insert(event_id.clone(), pdu);
        event_id
    }

    fn member(
        &mut self,
        name: &str,
        sender: &str,
        target: &str,
        membership: &str,
        depth: u64,
    ) -> OwnedEventId {
        let content = json!({ "membership": membership });
        self.add(name, "m.room.member", sender, target, content, depth)
    }

    fn power(&mut self, name: &str, sender: &str, users: Value, depth: u64) -> OwnedEventId {
        let content = json!({ "users": users, "state_default": 50, "ban": 50, "kick": 50 });
        self.add(name, "m.room.power_levels", sender, "", content, depth)
    }

    fn topic(&mut self, name: &str, sender: &str, depth: u64) -> OwnedEventId {
        self.add(
            name,
            "m.room.topic",
            sender,
            "",
            json!({ "topic": name }),
            depth,
        )
    }

    fn key(&self, id: &EventId) -> (StateEventType, String) {
        let pdu = &self.events[id];
        (
            StateEventType::from(pdu.kind.to_string()),
            pdu.state_key.clone().unwrap(),
        )
    }

    /// The base state with `events` applied in order.
    fn branch(&self, events: &[&OwnedEventId]) -> StateMap<OwnedEventId> {
        let mut state = self.base.clone();
        for id in events {
            state.insert(self.key(id), (*id).clone());
        }
        state
    }

    fn resolve(&self, states: &[StateMap<OwnedEventId>]) -> StateMap<OwnedEventId> {
        let fetch = |id: &EventId| self.events.get(id).cloned();
        resolve(&rules(), states, false, &fetch).unwrap()
    }

    /// The event the resolution of `states` holds at `(kind, state_key)`.
    fn winner(
        &self,
        states: &[StateMap<OwnedEventId>],
        kind: &str,
        state_key: &str,
    ) -> OwnedEventId {
        let resolved = self.resolve(states);
        resolved[&(StateEventType::from(kind), state_key.to_owned())].clone()
    }
}

/// Of two ids, `(lower sha1, higher sha1)`.
fn by_sha1(a: OwnedEventId, b: OwnedEventId) -> (OwnedEventId, OwnedEventId) {
    if sha1_of(&a) < sha1_of(&b) {
        (a, b)
    } else {
        (b, a)
    }
}

#[test]
fn the_later_of_two_allowed_power_levels_stands() {
    let mut room = Room::new();
    let early = room.power(
        "p-early",
        ALICE,
        json!({ALICE: 100, BOB: 50, CAROL: 10}),
        10,
    );
    let late = room.power("p-late", ALICE, json!({ALICE: 100, BOB: 50, CAROL: 20}), 11);
    let states = [room.branch(&[&late]), room.branch(&[&early])];
    assert_eq!(room.winner(&states, "m.room.power_levels", ""), late);
}

#[test]
fn power_an_earlier_event_took_away_is_not_used_by_a_later_one() {
    let mut room = Room::new();
    // Alice demotes bob; concurrently (and later in depth) bob promotes carol.
    let demote = room.power("demote", ALICE, json!({ALICE: 100, BOB: 0}), 10);
    let promote = room.power("promote", BOB, json!({ALICE: 100, BOB: 50, CAROL: 50}), 12);
    let states = [room.branch(&[&demote]), room.branch(&[&promote])];
    assert_eq!(room.winner(&states, "m.room.power_levels", ""), demote);
    // The other way round in depth, bob's stands first and alice's (allowed) replaces it.
    let mut room = Room::new();
    let promote = room.power("promote", BOB, json!({ALICE: 100, BOB: 50, CAROL: 50}), 9);
    let demote = room.power("demote", ALICE, json!({ALICE: 100, BOB: 0}), 10);
    let states = [room.branch(&[&promote]), room.branch(&[&demote])];
    assert_eq!(room.winner(&states, "m.room.power_levels", ""), demote);
}

#[test]
fn equal_depths_are_ordered_by_sha1_of_the_event_id() {
    let mut room = Room::new();
    let invite = room.add(
        "jr-a",
        "m.room.join_rules",
        ALICE,
        "",
        json!({"join_rule": "invite"}),
        10,
    );
    let public = room.add(
        "jr-b",
        "m.room.join_rules",
        ALICE,
        "",
        json!({"join_rule": "public"}),
        10,
    );
    let (lower, _) = by_sha1(invite.clone(), public.clone());
    // Auth events: the higher sha1 stands first, the lower (allowed) replaces it.
    let states = [room.branch(&[&invite]), room.branch(&[&public])];
    assert_eq!(room.winner(&states, "m.room.join_rules", ""), lower);

    // Other events: the lowest sha1 of the highest depth.
    let t1 = room.topic("topic-1", ALICE, 10);
    let t2 = room.topic("topic-2", ALICE, 10);
    let (lower, _) = by_sha1(t1.clone(), t2.clone());
    let states = [room.branch(&[&t1]), room.branch(&[&t2])];
    assert_eq!(room.winner(&states, "m.room.topic", ""), lower);
}

#[test]
fn a_ban_outlasts_a_concurrent_join_whatever_their_depths() {
    for (join_depth, ban_depth) in [(10, 11), (12, 11)] {
        let mut room = Room::new();
        let join = room.member("eve-join", EVE, EVE, "join", join_depth);
        let ban = room.member("eve-ban", ALICE, EVE, "ban", ban_depth);
        let states = [room.branch(&[&join]), room.branch(&[&ban])];
        assert_eq!(
            room.winner(&states, "m.room.member", EVE),
            ban,
            "join at {join_depth}, ban at {ban_depth}"
        );
    }
}

#[test]
fn members_are_resolved_after_the_join_rules() {
    let mut room = Room::new();
    // One branch closes the room; on the other, eve joins (later in depth). The join rules
    // resolve to invite, so eve's join is not allowed over the base state's absent member.
    let close = room.add(
        "close",
        "m.room.join_rules",
        ALICE,
        "",
        json!({"join_rule": "invite"}),
        10,
    );
    let leave = room.member("eve-leave", EVE, EVE, "leave", 9);
    let join = room.member("eve-join", EVE, EVE, "join", 11);
    let states = [room.branch(&[&close, &leave]), room.branch(&[&join])];
    let resolved = room.resolve(&states);
    let rules = (StateEventType::RoomJoinRules, String::new());
    assert_eq!(resolved[&rules], close);
    assert_eq!(
        resolved[&(StateEventType::RoomMember, EVE.to_owned())],
        leave
    );
    // In a room that stays public, the join stands.
    let states = [room.branch(&[&leave]), room.branch(&[&join])];
    assert_eq!(room.winner(&states, "m.room.member", EVE), join);
}

#[test]
fn other_keys_take_the_highest_event_allowed_in_the_resolved_state() {
    let mut room = Room::new();
    let demote = room.power("demote", ALICE, json!({ALICE: 100, BOB: 0}), 10);
    let alice_topic = room.topic("alice-topic", ALICE, 12);
    let bob_topic = room.topic("bob-topic", BOB, 13);
    // Bob's topic is the higher, but bob lost the power to set it.
    let states = [
        room.branch(&[&demote, &alice_topic]),
        room.branch(&[&bob_topic]),
    ];
    assert_eq!(room.winner(&states, "m.room.topic", ""), alice_topic);
    // Without the demotion it stands.
    let states = [room.branch(&[&alice_topic]), room.branch(&[&bob_topic])];
    assert_eq!(room.winner(&states, "m.room.topic", ""), bob_topic);
}

#[test]
fn when_no_event_is_allowed_the_lowest_stands() {
    let mut room = Room::new();
    let low = room.topic("low", MALLORY, 8);
    let high = room.topic("high", MALLORY, 9);
    let states = [room.branch(&[&high]), room.branch(&[&low])];
    assert_eq!(room.winner(&states, "m.room.topic", ""), low);
}

#[test]
fn keys_some_states_lack_are_not_conflicted() {
    let mut room = Room::new();
    let name = room.add("name", "m.room.name", MALLORY, "", json!({"name": "n"}), 10);
    let topic = room.topic("topic", ALICE, 11);
    let states = [room.branch(&[&name]), room.branch(&[&topic])];
    let resolved = room.resolve(&states);
    // Mallory's name is not checked: only one state has it.
    assert_eq!(resolved[&(StateEventType::RoomName, String::new())], name);
    assert_eq!(resolved[&(StateEventType::RoomTopic, String::new())], topic);
    assert_eq!(resolved.len(), room.base.len() + 2);
}

#[test]
fn the_order_of_the_states_does_not_matter() {
    let mut room = Room::new();
    let demote = room.power("demote", ALICE, json!({ALICE: 100, BOB: 0}), 10);
    let promote = room.power("promote", BOB, json!({ALICE: 100, BOB: 50, CAROL: 50}), 12);
    let kick = room.member("kick-carol", BOB, CAROL, "leave", 13);
    let t1 = room.topic("topic-1", CAROL, 14);
    let t2 = room.topic("topic-2", ALICE, 11);
    let a = room.branch(&[&demote, &t2]);
    let b = room.branch(&[&promote, &kick, &t1]);
    let c = room.branch(&[&t1]);
    let first = room.resolve(&[a.clone(), b.clone(), c.clone()]);
    for states in [[c.clone(), b.clone(), a.clone()], [b, a, c]] {
        assert_eq!(room.resolve(&states), first);
    }
    // Bob's power went first: his kick does not stand, carol's join does.
    assert_eq!(
        first[&(StateEventType::RoomMember, CAROL.to_owned())],
        room.base[&(StateEventType::RoomMember, CAROL.to_owned())]
    );
}

#[test]
fn a_missing_conflicted_event_fails_the_resolution() {
    let mut room = Room::new();
    let t1 = room.topic("topic-1", ALICE, 10);
    let t2 = room.topic("topic-2", ALICE, 11);
    let states = [room.branch(&[&t1]), room.branch(&[&t2])];
    room.events.remove(&t2);
    let fetch = |id: &EventId| room.events.get(id).cloned();
    assert!(resolve(&rules(), &states, false, &fetch).is_err());
}

#[test]
fn with_partial_state_a_member_the_state_lacks_comes_from_the_auth_events() {
    let mut room = Room::new();
    let demote = room.power("demote", ALICE, json!({ALICE: 100, BOB: 0}), 10);
    let alice_join = room.base[&(StateEventType::RoomMember, ALICE.to_owned())].clone();
    let power = room.base[&(StateEventType::RoomPowerLevels, String::new())].clone();
    let create = room.base[&(StateEventType::RoomCreate, String::new())].clone();
    room.events.get_mut(&demote).unwrap().auth_events = vec![create, power, alice_join];
    // A partial state: alice's member event left out.
    let mut states = [room.branch(&[&demote]), room.branch(&[])];
    for state in &mut states {
        state.remove(&(StateEventType::RoomMember, ALICE.to_owned()));
    }
    let fetch = |id: &EventId| room.events.get(id).cloned();
    let key = (StateEventType::RoomPowerLevels, String::new());
    let partial = resolve(&rules(), &states, true, &fetch).unwrap();
    assert_eq!(partial[&key], demote);
    // With the full state, a sender missing from it is not in the room.
    let full = resolve(&rules(), &states, false, &fetch).unwrap();
    assert_eq!(full[&key], room.base[&key]);
}
