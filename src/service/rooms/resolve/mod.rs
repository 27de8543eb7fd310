//! State resolution over the states at several stored events: the state before a remote
//! event whose prev events have different states, and the current state after a fork
//! (`build/fork.rs`). Room version 1 resolves with the first algorithm ([`v1`]), every later
//! version with state resolution v2 (ruma).
//!
//! Everything is read from the store, and every walk is bounded: a v2 resolution that would
//! need more than [`MAX_AUTH_EVENTS`] events of auth chain returns `None`, and the caller falls
//! back (see `build/remote.rs`). v1 walks no auth chains (it reads the conflicted events and
//! the entries of the state the authorization rules look at).

mod v1;

use std::collections::{HashMap, HashSet, VecDeque};

use ruma::{
    events::StateEventType,
    room_version_rules::{RoomVersionRules, StateResolutionVersion},
    state_res::{resolve, utils::event_id_set::EventIdSet, StateMap},
    OwnedEventId,
};

use super::{Pdu, Rooms};
use crate::error::Result;

/// The most events one resolution reads while walking auth chains.
pub const MAX_AUTH_EVENTS: usize = 20_000;

/// A resolved state: `(type, state_key) → event id`.
pub type ResolvedState = HashMap<(String, String), OwnedEventId>;

/// A state as ruma's resolution takes it.
pub type StateIds = StateMap<OwnedEventId>;

impl Rooms {
    /// Resolves the states whose state-chain heads are `heads` (the states at some stored
    /// events). `None` when the auth chains exceed the bound or an event is missing.
    pub fn resolve_states(
        &self,
        rules: &RoomVersionRules,
        heads: &[Option<u64>],
    ) -> Result<Option<ResolvedState>> {
        let maps = heads
            .iter()
            .map(|head| self.state_ids_at(*head))
            .collect::<Result<Vec<_>>>()?;
        self.resolve_maps(rules, &maps, &HashMap::new())
    }

    /// The state whose state-chain head is `head`, as event ids.
    pub fn state_ids_at(&self, head: Option<u64>) -> Result<StateIds> {
        let mut map = StateMap::new();
        for (kind, key, sid) in self.full_state_at(head)? {
            let Some(meta) = self.store.get::<super::EventMetaTable>(&sid)? else {
                continue;
            };
            let Ok(id) = OwnedEventId::try_from(meta.event_id) else {
                continue;
            };
            map.insert((StateEventType::from(kind), key), id);
        }
        Ok(map)
    }

    /// Resolves the given states. Events are read from `staged` (events of a batch not yet
    /// committed) or the store. `None` when the auth chains exceed the bound or an event is
    /// missing.
    pub fn resolve_maps(
        &self,
        rules: &RoomVersionRules,
        maps: &[StateIds],
        staged: &HashMap<OwnedEventId, Pdu>,
    ) -> Result<Option<ResolvedState>> {
        // Events read during resolution, so each is parsed once.
        let cache: std::cell::RefCell<HashMap<OwnedEventId, Option<Pdu>>> = Default::default();
        let fetch = |id: &ruma::EventId| -> Option<Pdu> {
            if let Some(pdu) = staged.get(id) {
                return Some(pdu.clone());
            }
            if let Some(pdu) = cache.borrow().get(id) {
                return pdu.clone();
            }
            let pdu = self.event(id).ok().flatten().map(|e| e.pdu);
            cache.borrow_mut().insert(id.to_owned(), pdu.clone());
            pdu
        };
        let state_res_rules = match &rules.state_res {
            StateResolutionVersion::V2(state_res_rules) => state_res_rules,
            StateResolutionVersion::V1 => {
                let partial = maps
                    .iter()
                    .flat_map(|map| map.values())
                    .find_map(|id| fetch(id)?.room_id)
                    .is_some_and(|room_id| self.is_partial_state(&room_id));
                return Ok(
                    match v1::resolve(&rules.authorization, maps, partial, &fetch) {
                        Ok(resolved) => Some(from_state_ids(resolved)),
                        Err(e) => {
                            log::warn!("state resolution (v1) failed: {e}");
                            None
                        }
                    },
                );
            }
            // An algorithm newer than this server: no resolution (the callers fall back).
            _ => return Ok(None),
        };
        let mut budget = MAX_AUTH_EVENTS;
        let mut chains = Vec::new();
        for map in maps {
            let Some(chain) = auth_chain(map.values().cloned(), &fetch, &mut budget) else {
                return Ok(None);
            };
            chains.push(chain.into_iter().collect::<EventIdSet<OwnedEventId>>());
        }
        let subgraph = |conflicted: &StateMap<Vec<OwnedEventId>>| {
            let targets: HashSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
            conflicted_subgraph(&targets, &fetch, MAX_AUTH_EVENTS)
        };
        match resolve(
            &rules.authorization,
            state_res_rules,
            maps,
            chains,
            |id| fetch(id),
            subgraph,
        ) {
            Ok(resolved) => Ok(Some(from_state_ids(resolved))),
            Err(e) => {
                log::warn!("state resolution failed: {e}");
                Ok(None)
            }
        }
    }
}

/// A state as ruma gives it, as a resolved state.
fn from_state_ids(state: StateIds) -> ResolvedState {
    state
        .into_iter()
        .map(|((kind, key), id)| ((kind.to_string(), key), id))
        .collect()
}

/// A resolved state as ruma reads it.
pub fn to_state_ids(state: &ResolvedState) -> StateIds {
    state
        .iter()
        .map(|((kind, key), id)| {
            (
                (StateEventType::from(kind.as_str()), key.clone()),
                id.clone(),
            )
        })
        .collect()
}

/// The auth chain of `start` (the events themselves not included unless reachable), walking at
/// most `budget` events; `None` when the budget runs out.
fn auth_chain(
    start: impl Iterator<Item = OwnedEventId>,
    fetch: &impl Fn(&ruma::EventId) -> Option<Pdu>,
    budget: &mut usize,
) -> Option<HashSet<OwnedEventId>> {
    let mut seen = HashSet::new();
    let mut queue: VecDeque<OwnedEventId> = VecDeque::new();
    for id in start {
        if let Some(pdu) = fetch(&id) {
            queue.extend(pdu.auth_events);
        }
    }
    while let Some(id) = queue.pop_front() {
        if !seen.insert(id.clone()) {
            continue;
        }
        *budget = budget.checked_sub(1)?;
        if let Some(pdu) = fetch(&id) {
            queue.extend(pdu.auth_events.into_iter().filter(|a| !seen.contains(a)));
        }
    }
    Some(seen)
}

/// The conflicted state subgraph (room version 12): the events on auth-event paths from one
/// conflicted event to another — reachable from a conflicted event, and reaching one.
fn conflicted_subgraph(
    targets: &HashSet<OwnedEventId>,
    fetch: &impl Fn(&ruma::EventId) -> Option<Pdu>,
    bound: usize,
) -> Option<EventIdSet<OwnedEventId>> {
    // Everything reachable from the conflicted events, with its auth edges.
    let mut edges: HashMap<OwnedEventId, Vec<OwnedEventId>> = HashMap::new();
    let mut queue: VecDeque<OwnedEventId> = targets.iter().cloned().collect();
    while let Some(id) = queue.pop_front() {
        if edges.contains_key(&id) {
            continue;
        }
        if edges.len() >= bound {
            return None;
        }
        let auth = fetch(&id).map(|p| p.auth_events).unwrap_or_default();
        queue.extend(auth.iter().filter(|a| !edges.contains_key(*a)).cloned());
        edges.insert(id, auth);
    }
    // Walk the edges backwards from the conflicted events: what reaches one.
    let mut reverse: HashMap<&OwnedEventId, Vec<&OwnedEventId>> = HashMap::new();
    for (from, to) in &edges {
        for to in to {
            reverse.entry(to).or_default().push(from);
        }
    }
    let mut reaching: HashSet<&OwnedEventId> = targets.iter().collect();
    let mut queue: VecDeque<&OwnedEventId> = targets.iter().collect();
    while let Some(id) = queue.pop_front() {
        for from in reverse.get(id).into_iter().flatten() {
            if reaching.insert(from) {
                queue.push_back(from);
            }
        }
    }
    Some(reaching.into_iter().cloned().collect())
}
