//! Events from other servers: authorised against their auth events, the state before them and
//! the room's current state (server-server API, "Checks performed on receipt of a PDU", steps
//! 4 to 6), then staged through the same path as local events ([`Staged::stage_event`]), so
//! that the timeline, state, membership, relations, redactions, search and push treat them
//! alike.
//!
//! The state before an event is the state at its prev events: the current state when they are
//! the room's forward extremities (or lead to the same state), else the state at that prev
//! event read from the state chain (`schema/rooms.md`). Prev events that are unknown here
//! (fetching them is the missing-events path, not built yet) are left out; an event none of
//! whose prev events is known is judged against the current state. See
//! `schema/federation-events.md` for what is stored in each outcome.

use std::{collections::HashMap, sync::Arc};

use ruma::{
    events::StateEventType, state_res::check_state_dependent_auth_rules, CanonicalJsonObject,
    EventId, OwnedEventId,
};
use serde_json::Value;

use super::Staged;
use crate::{
    error::{Error, Result},
    service::rooms::{
        resolve::{ResolvedState, StateIds},
        state::state_head,
        EventIds, EventMeta, EventMetaTable, NewEvent, Pdu, Pdus, Rooms, StateSnapshot,
        StateSnapshots, SNAPSHOT_EVERY,
    },
    store::Raw,
    table,
};

table!(
    /// `sid → true` for stored events that were soft-failed: they may be cited as prev or auth
    /// events, but are not in the timeline, the state or the forward extremities, and no
    /// client ever sees them.
    pub SoftFailed: "soft_failed_events", u64 => bool
);

/// Remote events staged but not committed, as later events of the same batch see them.
#[derive(Default)]
pub(crate) struct Overlay {
    /// Accepted events: their sid and the head of the state at them.
    heads: HashMap<OwnedEventId, (u64, Option<u64>)>,
    /// Soft-failed events.
    soft: HashMap<OwnedEventId, Pdu>,
    /// Outliers (`build/fetched.rs`).
    pub(super) outliers: HashMap<OwnedEventId, Pdu>,
    /// Outliers being stored again at a new position (`rooms/outliers.rs`): their old one.
    pub(crate) replacing: HashMap<OwnedEventId, u64>,
    /// Events the re-check after a partial-state resync rejected (`build/unaccept.rs`): the
    /// head of the state after them, which is the state before them. Gone from `event_ids`,
    /// they still place the events that cite them as prev events.
    pub(super) unaccepted: HashMap<OwnedEventId, Option<u64>>,
    /// The lowest `backfill_timeline` sequence number staged (`build/fetched.rs`).
    pub(super) backfill_floor: Option<u64>,
}

/// What the authorization rules say of a remote event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Passes against its auth events, the state before it and the current state.
    Accepted,
    /// Passes against its auth events and the state before it, fails against the current
    /// state: stored, never served.
    SoftFailed(String),
    /// Fails against its auth events or the state before it: stored as rejected.
    Rejected(String),
    /// An auth event is not known here: no verdict yet (fetching it is the missing-events
    /// path), so nothing is stored and the event can be sent again.
    MissingAuth(String),
}

/// Where the state before a remote event comes from.
#[derive(Debug, Clone)]
pub struct StateBefore {
    /// The head of the state chain that gives the state before the event (when its prev
    /// events' states had to be resolved: the newest of them).
    pub head: Option<u64>,
    /// Whether that is the room's current state.
    pub current: bool,
    /// The resolution of the prev events' states, when they differ.
    pub resolved: Option<Arc<ResolvedState>>,
    /// Whether it includes state fetched from another server (a gap in the room's graph).
    pub fetched: bool,
}

/// The event's known prev events and the state before it.
pub struct Placement {
    pub state: StateBefore,
    pub prev_sids: Vec<u64>,
}

impl Rooms {
    /// Whether the event is stored as accepted or soft-failed (rejected events are kept
    /// apart, see `service::federation::pdus`).
    pub fn is_stored(&self, event_id: &EventId) -> Result<bool> {
        Ok(self.event_sid(event_id)?.is_some())
    }

    /// Whether the stored event at `sid` was soft-failed (never served to clients).
    pub fn is_soft_failed(&self, sid: u64) -> Result<bool> {
        Ok(self.store.get::<SoftFailed>(&sid)?.unwrap_or(false))
    }

    /// Chain links from `head` to the nearest full snapshot (or the chain's start), counted up
    /// to `SNAPSHOT_EVERY`.
    fn links_to_snapshot(&self, head: Option<u64>) -> Result<u64> {
        let mut cursor = head;
        let mut links = 0;
        while let Some(sid) = cursor {
            if links >= SNAPSHOT_EVERY || self.store.get::<StateSnapshots>(&sid)?.is_some() {
                break;
            }
            let Some(meta) = self.store.get::<EventMetaTable>(&sid)? else {
                break;
            };
            links += 1;
            cursor = meta.state_link;
        }
        Ok(links)
    }
}

impl Staged<'_> {
    /// Whether the event is part of the room's history here: accepted or soft-failed (staged
    /// or stored), backfilled or in a hole; not an outlier, whose place is unknown.
    pub fn in_history(&self, id: &EventId) -> Result<bool> {
        if self.remote.heads.contains_key(id) || self.remote.soft.contains_key(id) {
            return Ok(true);
        }
        if self.remote.outliers.contains_key(id) {
            return Ok(false);
        }
        match self.rooms.event_sid(id)? {
            Some(sid) => Ok(!self.rooms.is_outlier(sid)?),
            None => Ok(false),
        }
    }

    /// Whether `pdu` refers to a remote event staged in this batch in a way only committed
    /// events can answer (a redaction or relation target, a soft-failed prev event): then the
    /// staged events must be committed before it is judged.
    pub fn needs_commit_before(&self, pdu: &Pdu, object: &CanonicalJsonObject) -> bool {
        let staged =
            |id: &EventId| self.remote.heads.contains_key(id) || self.remote.soft.contains_key(id);
        pdu.redacts.as_deref().is_some_and(staged)
            || crate::service::rooms::relations::relates_to(object)
                .is_some_and(|r| staged(&r.event_id))
            || pdu
                .prev_events
                .iter()
                .any(|id| self.remote.soft.contains_key(id))
    }

    /// An event by id: staged in this batch (accepted or soft-failed) or stored.
    pub(super) fn remote_event_pdu(&self, id: &EventId) -> Result<Option<Pdu>> {
        if let Some(pdu) = self.remote.soft.get(id) {
            return Ok(Some(pdu.clone()));
        }
        if let Some(pdu) = self.remote.outliers.get(id) {
            return Ok(Some(pdu.clone()));
        }
        if let Some((_, pdu, _)) = self.events.get(id) {
            return Ok(Some(pdu.clone()));
        }
        Ok(self.rooms.event(id)?.map(|e| e.pdu))
    }

    /// Where the state before `pdu` comes from: see the module doc. `fetched` are states
    /// before it that another server gave for prev events unknown here (`state_ids`), resolved
    /// with those of its known prev events. `None` when that needs the state at an event
    /// staged in this batch other than the current state: commit the staged events first.
    pub fn place_remote(&self, pdu: &Pdu, fetched: &[StateIds]) -> Result<Option<Placement>> {
        let record = self
            .record
            .as_ref()
            .ok_or_else(|| Error::unknown("room record missing"))?;
        let mut prev_sids = Vec::new();
        let mut heads = Vec::new();
        let mut cites_staged = false;
        for prev in &pdu.prev_events {
            if let Some(head) = self.remote.unaccepted.get(prev) {
                heads.push(*head);
                continue;
            }
            if let Some((sid, head)) = self.remote.heads.get(prev) {
                cites_staged = true;
                prev_sids.push(*sid);
                heads.push(*head);
                continue;
            }
            let Some(event) = self.rooms.event(prev)? else {
                continue;
            };
            // The state at an outlier is not known here (`rooms/outliers.rs`): it counts as an
            // unknown prev event.
            if event.meta.room_sid != record.sid || self.rooms.is_outlier(event.sid)? {
                continue;
            }
            prev_sids.push(event.sid);
            heads.push(state_head(&event));
        }
        heads.sort();
        heads.dedup();
        if !fetched.is_empty() {
            // The fetched state is read from the store: what of it is staged must be
            // committed first.
            let staged = |id: &OwnedEventId| {
                self.events.contains_key(id) || self.remote.soft.contains_key(id)
            };
            if cites_staged || fetched.iter().any(|map| map.values().any(staged)) {
                return Ok(None);
            }
            return Ok(Some(Placement {
                state: self.with_fetched_state(&heads, fetched)?,
                prev_sids,
            }));
        }
        let all_current = heads.iter().all(|h| *h == record.last_state);
        if cites_staged && !all_current {
            return Ok(None);
        }
        let state = match heads.as_slice() {
            _ if all_current => StateBefore {
                head: record.last_state,
                current: true,
                resolved: None,
                fetched: false,
            },
            [head] => StateBefore {
                head: *head,
                current: false,
                resolved: None,
                fetched: false,
            },
            // Prev events with different states: the state before the event is their
            // resolution. Should that be out of reach (auth chains past the bound, a missing
            // event), the newest of them stands in; the event still has to pass its auth
            // events and the current state.
            _ => StateBefore {
                head: heads.iter().max().copied().flatten(),
                current: false,
                resolved: self
                    .rooms
                    .resolve_states(&self.rules, &heads)?
                    .map(Arc::new),
                fetched: false,
            },
        };
        Ok(Some(Placement { state, prev_sids }))
    }

    /// Runs the authorization rules on a remote event (already verified and, on a hash
    /// mismatch, redacted): against its auth events, the state before it, and the current
    /// state.
    pub fn authorise_remote(&self, pdu: &Pdu, state: &StateBefore) -> Result<Verdict> {
        // A partial-state room (`rooms/partial_state.rs`) lacks most member events: a key the
        // stored state does not have is taken from the event's own auth events, so an event
        // is not rejected for state this server has yet to fetch.
        let partial = self
            .room_id
            .as_ref()
            .is_some_and(|r| self.rooms.is_partial_state(r));
        self.authorise(pdu, state, partial, true)
    }

    /// The authorization rules on a stored event again, against its auth events and the
    /// state before it as stored now, with no key taken from its auth events: the re-check,
    /// once a partial-state room has its full state, of the events accepted while it had not
    /// (`federation/pdus/recheck.rs`). `Accepted` or `Rejected` (or `MissingAuth`): step 6
    /// is not run again, as the current state the event was received in is not kept, and
    /// today's would judge old history by later changes (a member who left since).
    pub fn authorise_again(&self, pdu: &Pdu, state: &StateBefore) -> Result<Verdict> {
        self.authorise(pdu, state, false, false)
    }

    /// Steps 4 and 5, and with `soft_fail` step 6 (see [`Staged::authorise_remote`]); with
    /// `partial`, a key the stored state lacks is taken from the event's auth events.
    fn authorise(
        &self,
        pdu: &Pdu,
        state: &StateBefore,
        partial: bool,
        soft_fail: bool,
    ) -> Result<Verdict> {
        let rules = &self.rules.authorization;
        let rooms = self.rooms;
        // Step 4: the auth events (`build/fetched.rs`).
        let auth = match self.check_auth_events(pdu)? {
            Ok(auth) => auth,
            Err(verdict) => return Ok(verdict),
        };
        let by_key: HashMap<(String, String), &Pdu> = auth
            .values()
            .filter_map(|p| Some(((p.kind.to_string(), p.state_key.clone()?), p)))
            .collect();
        let from_auth = |kind: &StateEventType, key: &str| {
            by_key
                .get(&(kind.to_string(), key.to_owned()))
                .map(|p| (*p).clone())
        };
        let known = |kind: &StateEventType, key: &str, found: Option<Pdu>| match found {
            None if partial => from_auth(kind, key),
            found => found,
        };
        // Step 5: the state before the event.
        let before = |kind: &StateEventType, key: &str| {
            if state.current {
                return known(kind, key, self.state_pdu(kind, key));
            }
            if let Some(resolved) = &state.resolved {
                let found = resolved
                    .get(&(kind.to_string(), key.to_owned()))
                    .and_then(|id| rooms.event(id).ok().flatten().map(|e| e.pdu));
                return known(kind, key, found);
            }
            let found = rooms
                .state_at(state.head, kind, key)
                .ok()
                .flatten()
                .and_then(|sid| rooms.event_by_sid(sid).ok().flatten().map(|e| e.pdu));
            known(kind, key, found)
        };
        if let Err(e) = check_state_dependent_auth_rules(rules, pdu, before) {
            return Ok(Verdict::Rejected(format!("state before the event: {e}")));
        }
        if !soft_fail {
            return Ok(Verdict::Accepted);
        }
        // Step 6: the current state. On another branch (or across a gap) the current state is
        // about to become the resolution of both (`build/fork.rs`): an event that fails the
        // current state as it is but passes that resolution is not soft-failed.
        if !state.current {
            let current =
                |kind: &StateEventType, key: &str| known(kind, key, self.state_pdu(kind, key));
            if let Err(e) = check_state_dependent_auth_rules(rules, pdu, current) {
                if !self.passes_merged_state(pdu, state)? {
                    return Ok(Verdict::SoftFailed(format!("current state: {e}")));
                }
            }
        }
        Ok(Verdict::Accepted)
    }

    /// Stages an accepted remote event through the local path: timeline, state (an accepted
    /// state event goes onto the current state, which it passed the rules against), membership,
    /// relations, redactions, search, push, and the guest rule.
    pub fn add_remote(
        &mut self,
        pdu: Pdu,
        object: CanonicalJsonObject,
        placement: &Placement,
    ) -> Result<()> {
        let as_new = NewEvent {
            kind: pdu.kind.clone(),
            content: pdu.content_as::<Value>().unwrap_or(Value::Null),
            state_key: pdu.state_key.clone(),
            redacts: pdu.redacts.clone(),
            txn: None,
        };
        let revokes_guest_access = self.revokes_guest_access(&as_new);
        let event_id = pdu.event_id.clone();
        let is_state = pdu.is_state();
        // A state event on another branch, or an event whose state came from another server:
        // the room's current state becomes the resolution of both (`build/fork.rs`).
        let fork = if !placement.state.current && (is_state || placement.state.fetched) {
            Some((
                self.current_state_ids()?,
                self.state_ids_before(&placement.state)?,
            ))
        } else {
            None
        };
        let mut meta = self.stage_event(
            pdu,
            object,
            None,
            &placement.prev_sids,
            placement.state.head,
        )?;
        let sid = self
            .events
            .get(&event_id)
            .map(|(sid, _, _)| *sid)
            .ok_or_else(|| Error::unknown("staged event missing"))?;
        let mut head = if is_state {
            Some(sid)
        } else {
            placement.state.head
        };
        if let Some((ours, mut theirs)) = fork {
            if let Some(key) = &meta.state_key {
                theirs.insert(
                    (StateEventType::from(meta.kind.clone()), key.clone()),
                    event_id.clone(),
                );
            }
            self.merge_fork(ours, theirs, sid)?;
            // State fetched across a gap is nowhere in the state chain: the state at the
            // event is the merged state now heading it (the events after it build on that).
            if placement.state.fetched && !is_state {
                head = self.record.as_ref().and_then(|r| r.last_state);
                meta.state_link = head;
                self.batch.put::<EventMetaTable>(&sid, &meta);
            }
        }
        self.remote.heads.insert(event_id.clone(), (sid, head));
        self.event_ids.push(event_id);
        if revokes_guest_access {
            self.stage_guest_removal()?;
        }
        Ok(())
    }

    /// Stages a soft-failed remote event: its PDU, id and metadata (so later events may cite
    /// it), marked soft-failed; nothing a client reads (timeline, state, relations, search,
    /// push) and not a forward extremity. A soft-failed state event's `state_link` is the
    /// state before it, so the state at it is the state of its own branch.
    pub fn add_soft_failed(
        &mut self,
        pdu: &Pdu,
        object: &CanonicalJsonObject,
        state: &StateBefore,
    ) -> Result<()> {
        let rooms = self.rooms;
        let record = self
            .record
            .as_ref()
            .ok_or_else(|| Error::unknown("room record missing"))?;
        let room_sid = record.sid;
        let pending = rooms.stream.allocate()?;
        let sid = pending.pos;
        self.pending.push(pending);
        let kind = pdu.kind.to_string();
        let replaces_state = match &pdu.state_key {
            Some(key) => rooms.state_at(state.head, &StateEventType::from(kind.clone()), key)?,
            None => None,
        };
        let meta = EventMeta {
            room_sid,
            event_id: pdu.event_id.to_string(),
            kind: kind.clone(),
            state_key: pdu.state_key.clone(),
            sender: pdu.sender.to_string(),
            state_link: state.head,
            depth: pdu.depth,
            origin_server_ts: u64::from(pdu.origin_server_ts.0),
            txn: None,
            redacted_by: None,
            replaces_state,
        };
        let json = serde_json::to_vec(object).map_err(|e| Error::unknown(e.to_string()))?;
        let event_key = pdu.event_id.to_string();
        super::joined::guard_event_id(&mut self.batch, &mut self.remote, &pdu.event_id);
        self.batch
            .put::<EventIds>(&event_key, &sid)
            .put::<Pdus>(&sid, &Raw(json))
            .put::<EventMetaTable>(&sid, &meta)
            .put::<SoftFailed>(&sid, &true);
        self.remote.soft.insert(pdu.event_id.clone(), pdu.clone());
        // A branch of soft-failed state events must not outgrow the bound on chain walks.
        if pdu.state_key.is_some() && rooms.links_to_snapshot(state.head)? + 1 >= SNAPSHOT_EVERY {
            let mut entries = rooms.full_state_at(state.head)?;
            let key = pdu.state_key.clone().unwrap_or_default();
            entries.retain(|(k, s, _)| !(*k == kind && *s == key));
            entries.push((kind, key, sid));
            entries.sort();
            self.batch
                .put::<StateSnapshots>(&sid, &StateSnapshot { entries });
        }
        Ok(())
    }
}
