//! Fetching what a room's received PDUs cite and this server lacks, before they are judged
//! (server-server API, "Retrieving events"; the fetching itself is `federation::fetch`):
//!
//! 1. **Prev events**: for each PDU citing prev events unknown here, one `get_missing_events`
//!    to the origin (`earliest_events` = the room's forward extremities, `latest_events` = the
//!    PDU, a small `limit`, `min_depth` = the least depth of the extremities). The events it
//!    returns are checked like received PDUs and join the transaction's events of the room,
//!    so they are judged before the PDU, in causal order. A forged one is dropped like a
//!    forged PDU.
//! 2. **Auth events**: a PDU citing auth events unknown here gets its auth chain from the
//!    origin (`event_auth`); the unknown events of it are checked, authorised against their
//!    own auth events and stored as outliers (`rooms/build/fetched.rs`) — then the PDU is
//!    judged as any other.
//! 3. **Gaps that remain** (the fetched events still cite unknown prev events): the state
//!    before the PDU is asked of the origin (`state_ids` at the PDU, which the origin has sent),
//!    the events of it and of its auth chain unknown here are fetched (`event/{id}`), checked,
//!    authorised and stored as outliers, and the state before the PDU becomes the resolution of
//!    that state with the states of its known prev events (`rooms/build/fork.rs`).
//!
//! All of it happens before the room's lock is taken for the PDUs (outliers are committed in
//! a batch of their own under the lock, after the fetches), and within
//! [`fetch::TRANSACTION_BOUNDS`]. A fetch that fails or would exceed a bound leaves the PDU to
//! be judged as before: against the state of its known prev events, or the current state.

use std::collections::HashSet;

use futures_util::{stream, StreamExt};
use ruma::{
    events::StateEventType, room_version_rules::RoomVersionRules, EventId, OwnedEventId, RoomId,
    ServerName,
};
use serde_json::value::RawValue as RawJsonValue;

use super::{causal_order, checks, Pdus, Prepared, Ready, RejectedEvents};
use crate::service::{
    federation::fetch::{Bounds, RemoteEvents, TRANSACTION_BOUNDS},
    rooms::{build::remote::Verdict, resolve::StateIds},
};

/// Events fetched one by one at once.
const FETCH_CONCURRENCY: usize = 8;

impl Pdus {
    /// Fetches what `events` (the PDUs of one room in a transaction from `origin`) cite and
    /// this server lacks: see the module doc. Returns the events to judge: the PDUs, those
    /// fetched before them, and the state fetched for gaps in `Prepared::fetched_state`.
    pub(super) async fn fetch_missing(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        mut events: Vec<Prepared>,
    ) -> Vec<Prepared> {
        let Some(remote) = self.remote.clone() else {
            return events;
        };
        let bounds = TRANSACTION_BOUNDS;
        let mut singles = bounds.single_events;
        self.fill_prev_gaps(&*remote, origin, room_id, &mut events, &bounds)
            .await;
        self.fetch_auth_chains(&*remote, origin, room_id, &events, &bounds)
            .await;
        self.fetch_gap_states(
            &*remote,
            origin,
            room_id,
            &mut events,
            &bounds,
            &mut singles,
        )
        .await;
        events
    }

    /// Whether an event is known here: in `batch`, stored (accepted, soft-failed, outlier), or
    /// rejected.
    fn knows(&self, id: &EventId, batch: &HashSet<OwnedEventId>) -> bool {
        batch.contains(id)
            || self.rooms.is_stored(id).unwrap_or(false)
            || self
                .store
                .get::<RejectedEvents>(&id.to_string())
                .ok()
                .flatten()
                .is_some()
    }

    fn unknown_prevs(&self, event: &Prepared, batch: &HashSet<OwnedEventId>) -> Vec<OwnedEventId> {
        event
            .pdu
            .prev_events
            .iter()
            .filter(|id| !self.knows(id, batch))
            .cloned()
            .collect()
    }

    /// Step 1 of the module doc.
    async fn fill_prev_gaps(
        &self,
        remote: &dyn RemoteEvents,
        origin: &ServerName,
        room_id: &RoomId,
        events: &mut Vec<Prepared>,
        bounds: &Bounds,
    ) {
        let mut batch: HashSet<OwnedEventId> = events.iter().map(|e| e.event_id.clone()).collect();
        // Newest first: one answer for the newest PDU usually fills the others' gaps too.
        let mut gapped: Vec<(u64, OwnedEventId)> = events
            .iter()
            .filter(|e| !self.unknown_prevs(e, &batch).is_empty())
            .map(|e| (e.pdu.depth, e.event_id.clone()))
            .collect();
        if gapped.is_empty() {
            return;
        }
        gapped.sort_by(|a, b| b.cmp(a));
        let Ok(Some(record)) = self.rooms.room(room_id) else {
            return;
        };
        let mut earliest = Vec::new();
        let mut min_depth = u64::MAX;
        for sid in &record.extremities {
            if let Ok(Some(event)) = self.rooms.event_by_sid(*sid) {
                min_depth = min_depth.min(event.meta.depth);
                earliest.push(event.pdu.event_id);
            }
        }
        if min_depth == u64::MAX {
            min_depth = 0;
        }
        let mut requests = 0;
        for (_, id) in gapped {
            if requests == bounds.gap_requests {
                break;
            }
            let Some(event) = events.iter().find(|e| e.event_id == id) else {
                continue;
            };
            if self.unknown_prevs(event, &batch).is_empty() {
                continue;
            }
            requests += 1;
            let answer = remote
                .missing_events(
                    origin,
                    room_id,
                    earliest.clone(),
                    vec![id.clone()],
                    bounds.gap_limit,
                    min_depth,
                )
                .await;
            let raws = match answer {
                Ok(raws) => raws,
                Err(e) => {
                    log::info!("get_missing_events for {id} from {origin} failed: {e}");
                    continue;
                }
            };
            for raw in raws.iter().take(bounds.gap_limit as usize) {
                match self.prepare(origin, raw).await {
                    Ok(Ready::Room(in_room, prepared)) if in_room == room_id => {
                        if batch.insert(prepared.event_id.clone()) {
                            events.push(*prepared);
                        }
                    }
                    Ok(Ready::Room(other, prepared)) => log::info!(
                        "missing event {} from {origin} is of {other}, not {room_id}: dropped",
                        prepared.event_id
                    ),
                    Ok(Ready::Outside(id)) => {
                        log::info!("missing event {id} from {origin} is not of {room_id}")
                    }
                    Err((id, e)) => {
                        log::info!("missing event {id:?} from {origin} dropped: {e}");
                    }
                }
            }
        }
    }

    /// Step 2 of the module doc.
    async fn fetch_auth_chains(
        &self,
        remote: &dyn RemoteEvents,
        origin: &ServerName,
        room_id: &RoomId,
        events: &[Prepared],
        bounds: &Bounds,
    ) {
        let batch: HashSet<OwnedEventId> = events.iter().map(|e| e.event_id.clone()).collect();
        let mut requests = 0;
        for event in events {
            if requests == bounds.auth_requests {
                break;
            }
            let lacks_auth = event
                .pdu
                .auth_events
                .iter()
                .any(|id| !self.knows(id, &batch));
            if !lacks_auth {
                continue;
            }
            requests += 1;
            match remote.event_auth(origin, room_id, &event.event_id).await {
                Ok(raws) => {
                    let raws = raws.iter().take(bounds.chain_events).map(|r| &**r);
                    self.admit_outliers(origin, room_id, raws, &batch).await;
                }
                Err(e) => log::info!(
                    "event_auth for {} from {origin} failed: {e}",
                    event.event_id
                ),
            }
        }
    }

    /// Step 3 of the module doc.
    async fn fetch_gap_states(
        &self,
        remote: &dyn RemoteEvents,
        origin: &ServerName,
        room_id: &RoomId,
        events: &mut [Prepared],
        bounds: &Bounds,
        singles: &mut usize,
    ) {
        let batch: HashSet<OwnedEventId> = events.iter().map(|e| e.event_id.clone()).collect();
        // The earliest events of the gap: what later events of the batch build on.
        let mut gapped: Vec<(u64, usize)> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| !self.unknown_prevs(e, &batch).is_empty())
            .map(|(i, e)| (e.pdu.depth, i))
            .collect();
        gapped.sort();
        for (_, index) in gapped.into_iter().take(bounds.state_fallbacks) {
            let event_id = events[index].event_id.clone();
            let (state, chain) = match remote.state_ids(origin, room_id, &event_id).await {
                Ok(answer) => answer,
                Err(e) => {
                    log::info!("state_ids at {event_id} from {origin} failed: {e}");
                    continue;
                }
            };
            let mut seen = HashSet::new();
            let unknown: Vec<OwnedEventId> = chain
                .iter()
                .chain(&state)
                .filter(|id| seen.insert((*id).clone()) && !self.knows(id, &batch))
                .cloned()
                .collect();
            // A partial state would be resolved into a wrong one: all of it, or none.
            if unknown.len() > (*singles).min(bounds.chain_events) {
                log::info!(
                    "state at {event_id} needs {} events from {origin}: more than allowed",
                    unknown.len()
                );
                continue;
            }
            *singles -= unknown.len();
            let fetched: Vec<Box<RawJsonValue>> = stream::iter(unknown)
                .map(|id| async move {
                    match remote.event(origin, &id).await {
                        Ok(raw) => Some(raw),
                        Err(e) => {
                            log::info!("event {id} from {origin} failed: {e}");
                            None
                        }
                    }
                })
                .buffer_unordered(FETCH_CONCURRENCY)
                .filter_map(|raw| async move { raw })
                .collect()
                .await;
            self.admit_outliers(origin, room_id, fetched.iter().map(|r| &**r), &batch)
                .await;
            let mut map = StateIds::new();
            for id in &state {
                let kind_key = match events.iter().find(|e| &e.event_id == id) {
                    Some(e) => e.pdu.state_key.clone().map(|k| (e.pdu.kind.to_string(), k)),
                    None => match self.rooms.event(id) {
                        Ok(Some(e)) => e.meta.state_key.map(|k| (e.meta.kind, k)),
                        _ => None,
                    },
                };
                if let Some((kind, key)) = kind_key {
                    map.insert((StateEventType::from(kind), key), id.clone());
                }
            }
            events[index].fetched_state = vec![map];
        }
    }

    /// Checks fetched events (steps 1 to 3, as received PDUs), authorises each against its
    /// auth events (step 4) in causal order, and stores those that pass as outliers, in one
    /// batch under the room's lock. Events known here or in `batch` are skipped unverified;
    /// the others that fail are dropped. Returns how many were stored.
    pub(super) async fn admit_outliers<'r>(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        raws: impl Iterator<Item = &'r RawJsonValue>,
        batch: &HashSet<OwnedEventId>,
    ) -> usize {
        let Some(rules) = self.room_rules(room_id) else {
            return 0;
        };
        let mut prepared = Vec::new();
        let mut seen = HashSet::new();
        for raw in raws {
            // Known events cost no signature check.
            let id = checks::parse(raw)
                .ok()
                .and_then(|object| checks::event_id(&object, &rules).ok());
            if id
                .as_ref()
                .is_some_and(|id| self.knows(id, batch) || !seen.insert(id.clone()))
            {
                continue;
            }
            match self.prepare(origin, raw).await {
                Ok(Ready::Room(in_room, event)) if in_room == room_id => prepared.push(*event),
                Ok(_) => log::info!("fetched event {id:?} from {origin} is of another room"),
                Err((id, e)) => log::info!("fetched event {id:?} from {origin} dropped: {e}"),
            }
        }
        if prepared.is_empty() {
            return 0;
        }
        let mut staged = match self.rooms.stage(room_id).await {
            Ok(staged) => staged,
            Err(e) => {
                log::warn!("cannot store fetched events of {room_id}: {e}");
                return 0;
            }
        };
        let mut admitted = 0;
        for event in causal_order(prepared) {
            if staged.knows(&event.event_id).unwrap_or(true) {
                continue;
            }
            match staged.authorise_outlier(&event.pdu) {
                Ok(Verdict::Accepted) => match staged.add_outlier(&event.pdu, &event.object) {
                    Ok(()) => admitted += 1,
                    Err(e) => {
                        log::warn!("cannot stage outlier {}: {e}", event.event_id);
                        return 0;
                    }
                },
                Ok(verdict) => log::info!(
                    "fetched event {} from {origin} not stored: {verdict:?}",
                    event.event_id
                ),
                Err(e) => log::warn!("cannot authorise {}: {e}", event.event_id),
            }
        }
        if admitted == 0 {
            return 0;
        }
        match staged.commit().await {
            Ok(_) => admitted,
            Err(e) => {
                log::warn!("cannot store fetched events of {room_id}: {e}");
                0
            }
        }
    }

    pub(super) fn room_rules(&self, room_id: &RoomId) -> Option<RoomVersionRules> {
        let room = self.rooms.room(room_id).ok()??;
        self.rooms.room_version(&room).ok()?.rules()
    }
}
