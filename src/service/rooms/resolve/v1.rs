//! State resolution v1, the algorithm of room version 1 (spec: `rooms/v1.md`, "State
//! resolution"; ruma implements only v2).
//!
//! The resolved state `R` starts as the union of the states without their conflicted keys (two
//! states holding different events for one `(type, state_key)`). Then, in this order:
//! - `m.room.power_levels`, then `m.room.join_rules`, then each `m.room.member` key: the
//!   conflicting events are sorted by ascending depth, then descending `sha1(event_id)`; the
//!   first stands, and each next one replaces it while it passes the authorization rules in `R`
//!   holding the one before it; the first that fails ends the walk.
//! - every other key: the event with the highest depth, then lowest `sha1(event_id)`, that
//!   passes the authorization rules in `R`.
//!
//! Where the prose leaves room, this reads it as Synapse does, so that rooms shared with it
//! resolve alike (the room version's state lives on Synapse servers above all):
//! - a key that some states lack and the others agree on is not conflicted: it keeps their
//!   event;
//! - the member keys are each resolved against `R` as it stands after the join rules (they do
//!   not see each other's outcome), and the other keys against `R` after the members, so the
//!   outcome does not depend on the order keys are visited in;
//! - when no event of another key passes, the last in that order (lowest depth, then highest
//!   `sha1(event_id)`) stands.
//!
//! In a room joined with partial state (`rooms/partial_state.rs`) the states lack most member
//! events: a key `R` lacks is then taken from the checked event's own auth events, as the
//! checks on receipt do (`build/remote.rs`), so that an event is not refused for state this
//! server has yet to fetch.
//!
//! Only the state-dependent authorization rules are checked here: the events passed the
//! others when they were received. Nothing is walked beyond the conflicted events and the
//! entries of `R` the rules read, so the cost is bounded by the size of the states.

use std::collections::{BTreeMap, BTreeSet};

use ruma::{
    events::StateEventType,
    room_version_rules::AuthorizationRules,
    state_res::{check_state_dependent_auth_rules, StateMap},
    EventId, OwnedEventId,
};
use sha1::{Digest, Sha1};

use crate::service::rooms::Pdu;

type Key = (StateEventType, String);

/// Resolves `states` (see the module doc); `partial` when they are states of a room joined
/// with partial state. `fetch` reads an event by id; a conflicted event it cannot read makes
/// the resolution fail (`Err` names it), as a state is then not known whole.
pub fn resolve(
    rules: &AuthorizationRules,
    states: &[StateMap<OwnedEventId>],
    partial: bool,
    fetch: &impl Fn(&EventId) -> Option<Pdu>,
) -> Result<StateMap<OwnedEventId>, String> {
    let check = Check {
        rules,
        partial,
        fetch,
    };
    let (mut resolved, conflicted) = separate(states);
    // Sorted by key, so that every server visits the keys in one order (the outcome does not
    // depend on it, but logs and ties read the same everywhere).
    let mut conflicted: BTreeMap<Key, Vec<Pdu>> = conflicted
        .into_iter()
        .map(|(key, ids)| {
            let events = ids
                .iter()
                .map(|id| fetch(id).ok_or_else(|| format!("conflicted event {id} is missing")))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((key, events))
        })
        .collect::<Result<_, String>>()?;

    let power = (StateEventType::RoomPowerLevels, String::new());
    if let Some(events) = conflicted.remove(&power) {
        resolved.extend(resolve_auth_events(&check, &power, events, &resolved).map(|w| (power, w)));
    }
    for kind in [StateEventType::RoomJoinRules, StateEventType::RoomMember] {
        let keys: Vec<Key> = conflicted
            .keys()
            .filter(|(k, _)| *k == kind)
            .cloned()
            .collect();
        let mut winners = Vec::with_capacity(keys.len());
        for key in keys {
            let events = conflicted.remove(&key).unwrap_or_default();
            if let Some(winner) = resolve_auth_events(&check, &key, events, &resolved) {
                winners.push((key, winner));
            }
        }
        resolved.extend(winners);
    }
    let winners: Vec<(Key, OwnedEventId)> = conflicted
        .into_iter()
        .filter_map(|(key, events)| Some((key, resolve_normal_events(&check, events, &resolved)?)))
        .collect();
    resolved.extend(winners);
    Ok(resolved)
}

/// The keys on which all states that have them agree, and the events of the others.
fn separate(
    states: &[StateMap<OwnedEventId>],
) -> (StateMap<OwnedEventId>, StateMap<BTreeSet<OwnedEventId>>) {
    let mut unconflicted: StateMap<OwnedEventId> = StateMap::new();
    let mut conflicted: StateMap<BTreeSet<OwnedEventId>> = StateMap::new();
    for state in states {
        for (key, id) in state {
            if let Some(ids) = conflicted.get_mut(key) {
                ids.insert(id.clone());
                continue;
            }
            match unconflicted.get(key) {
                None => {
                    unconflicted.insert(key.clone(), id.clone());
                }
                Some(seen) if seen == id => {}
                Some(seen) => {
                    let ids = BTreeSet::from([seen.clone(), id.clone()]);
                    unconflicted.remove(key);
                    conflicted.insert(key.clone(), ids);
                }
            }
        }
    }
    (unconflicted, conflicted)
}

fn sha1_of(id: &EventId) -> [u8; 20] {
    Sha1::digest(id.as_str().as_bytes()).into()
}

/// The authorization check of one resolution.
struct Check<'a, F> {
    rules: &'a AuthorizationRules,
    partial: bool,
    fetch: &'a F,
}

impl<F: Fn(&EventId) -> Option<Pdu>> Check<'_, F> {
    /// Whether `event` passes the state-dependent authorization rules in `state`, with
    /// `replaced` (an event of `key`) standing in for that key.
    fn passes(
        &self,
        event: &Pdu,
        state: &StateMap<OwnedEventId>,
        replaced: Option<(&Key, &Pdu)>,
    ) -> bool {
        let lookup = |kind: &StateEventType, state_key: &str| -> Option<Pdu> {
            if let Some(((k, sk), pdu)) = replaced {
                if k == kind && sk == state_key {
                    return Some(pdu.clone());
                }
            }
            match state.get(&(kind.clone(), state_key.to_owned())) {
                Some(id) => (self.fetch)(id),
                None if self.partial => self.auth_event_at(event, kind, state_key),
                None => None,
            }
        };
        check_state_dependent_auth_rules(self.rules, event, lookup).is_ok()
    }

    /// The auth event of `event` at `(kind, state_key)`, if it has one.
    fn auth_event_at(&self, event: &Pdu, kind: &StateEventType, state_key: &str) -> Option<Pdu> {
        let kind = kind.to_string();
        event
            .auth_events
            .iter()
            .filter_map(|id| (self.fetch)(id))
            .find(|a| a.kind.to_string() == kind && a.state_key.as_deref() == Some(state_key))
    }
}

/// The events of one key (`key`) that rules authorization (power levels, join rules, a
/// member): from the lowest, each next one stands while it is allowed with the one before it
/// in the state. `None` only for no events.
fn resolve_auth_events<F: Fn(&EventId) -> Option<Pdu>>(
    check: &Check<'_, F>,
    key: &Key,
    mut events: Vec<Pdu>,
    state: &StateMap<OwnedEventId>,
) -> Option<OwnedEventId> {
    events.sort_by_cached_key(|e| (e.depth, std::cmp::Reverse(sha1_of(&e.event_id))));
    let mut events = events.into_iter();
    let mut standing = events.next()?;
    for event in events {
        if !check.passes(&event, state, Some((key, &standing))) {
            break;
        }
        standing = event;
    }
    Some(standing.event_id)
}

/// The events of any other key: the highest that is allowed in the state, else the lowest.
/// `None` only for no events.
fn resolve_normal_events<F: Fn(&EventId) -> Option<Pdu>>(
    check: &Check<'_, F>,
    mut events: Vec<Pdu>,
    state: &StateMap<OwnedEventId>,
) -> Option<OwnedEventId> {
    events.sort_by_cached_key(|e| (std::cmp::Reverse(e.depth), sha1_of(&e.event_id)));
    match events.iter().position(|e| check.passes(e, state, None)) {
        Some(i) => Some(events.swap_remove(i).event_id),
        None => events.pop().map(|e| e.event_id),
    }
}

#[cfg(test)]
mod tests;
