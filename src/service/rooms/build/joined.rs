//! Storing a room this server joined over federation (`federation::membership::join`): the
//! resident server's state before the join and its auth chain — checked and authorised by the
//! caller — become outliers (`rooms/outliers.rs`), the room's current state and membership rows
//! are written from that state, and the join event enters the timeline as the room's only
//! forward extremity. Everything in one batch: after a crash the room is either fully joined
//! or unknown (or, for a room this server knew and had left, as it was).
//!
//! State at the join: the newest state event stored *here* as an outlier carries a full
//! `state_snapshots` row of the state before the join and is the join's `state_link`; the
//! join carries a full snapshot of the state after it. So the state at the join and at every
//! later event is reachable by the usual chain walk without ever walking into outliers (whose
//! `state_link` is `None`). See `schema/federation-events.md`, "Outliers".

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use ruma::{
    events::TimelineEventType, CanonicalJsonObject, EventId, OwnedEventId, OwnedRoomId,
    RoomVersionId,
};
use serde_json::Value;

use super::{remote, Staged};
use crate::{
    error::{Error, Result},
    service::{
        federation::queue::Queue,
        rooms::{
            CurrentState, EventIds, Pdu, RoomMembers, RoomRecord, Rooms, StateSnapshot,
            StateSnapshots, UserRoom, UserRooms,
        },
        search::index as search_index,
        users::now_ms,
    },
    store::Batch,
};

/// A room joined over federation, ready to store.
pub struct JoinedRoom {
    pub room_id: OwnedRoomId,
    pub version: RoomVersionId,
    /// The auth chain of the join and of the state (checked, authorised), any order, each
    /// event with its canonical JSON; events also in `state` may be left out (they are stored
    /// once either way).
    pub auth_chain: Vec<(Pdu, Vec<u8>)>,
    /// The room's state before the join (checked, authorised), one event per key, each with
    /// its canonical JSON.
    pub state: Vec<(Pdu, Vec<u8>)>,
    /// The join event as the resident server accepted it.
    pub join: (Pdu, CanonicalJsonObject),
    /// Set when the resident omitted member events: the room is stored with this mark
    /// (`rooms/partial_state.rs`).
    pub partial: Option<super::super::partial_state::PartialState>,
}

impl Rooms {
    /// The outbound federation queue the room's events go to.
    pub fn fed_queue(&self) -> &Arc<Queue> {
        &self.fed_queue
    }

    /// Stores a room joined over federation in one batch (see the module doc). Returns the
    /// join event's position. A join already stored (a retried join) changes nothing.
    pub async fn store_joined_room(&self, joined: JoinedRoom) -> Result<u64> {
        let JoinedRoom {
            room_id,
            version,
            auth_chain,
            state,
            join: (join_pdu, join_object),
            partial,
        } = joined;
        let lock = self.lock_room(&room_id).await;
        let old = self.room(&room_id)?;
        if let Some(old) = &old {
            if old.version != version.as_str() {
                return Err(Error::unknown(format!(
                    "{room_id} is known here with room version {}, the resident says {version}",
                    old.version
                )));
            }
        }
        if let Some(sid) = self.event_sid(&join_pdu.event_id)? {
            if !self.is_outlier(sid)? && old.is_some() {
                return Ok(sid);
            }
        }
        // Another local user joined meanwhile: its state must not be replaced by this
        // answer's (which may predate that join). 409: the caller stores the join as one more
        // event of the room instead.
        if old.is_some() && self.is_resident(&room_id)? {
            return Err(Error::new(
                http::StatusCode::CONFLICT,
                "M_UNKNOWN",
                "Another user of this server joined the room at the same time: try again",
            ));
        }
        let rules = version
            .rules()
            .ok_or_else(|| Error::unknown("unsupported room version"))?;
        let mut staged = Staged {
            rooms: self,
            lock: Some(lock),
            room_id: Some(room_id.clone()),
            version: version.clone(),
            rules,
            old_record: old.clone(),
            record: None,
            batch: Batch::new(),
            state: HashMap::new(),
            events: HashMap::new(),
            pending: Vec::new(),
            event_ids: Vec::new(),
            search: search_index::Overlay::default(),
            search_pending: false,
            absorbed: Vec::new(),
            remote: remote::Overlay::default(),
            origin_ts: None,
            read_pdus: Default::default(),
        };
        let room_sid = match &old {
            Some(record) => record.sid,
            None => self
                .store
                .intern_in("room", room_id.as_str(), &mut staged.batch)?,
        };

        // The outliers, each event once; those stored already keep their position. The
        // events are consumed: each one's JSON moves into the batch, and only the state's
        // `Pdu`s are kept (moved into the staged state below).
        let state_ids: HashSet<OwnedEventId> =
            state.iter().map(|(p, _)| p.event_id.clone()).collect();
        let mut sids: HashMap<OwnedEventId, u64> = HashMap::new();
        let mut newest_new_state = None;
        let mut state_pdus = Vec::with_capacity(state.len());
        let events = auth_chain
            .into_iter()
            .map(|e| (e, false))
            .chain(state.into_iter().map(|e| (e, true)));
        for ((pdu, json), is_state) in events {
            if !sids.contains_key(&pdu.event_id) && pdu.event_id != join_pdu.event_id {
                if let Some(sid) = self.event_sid(&pdu.event_id)? {
                    sids.insert(pdu.event_id.clone(), sid);
                } else {
                    let position = self.stream.allocate()?;
                    let sid = position.pos;
                    staged.pending.push(position);
                    let in_state = state_ids.contains(&pdu.event_id);
                    Rooms::stage_outlier(&mut staged.batch, sid, room_sid, &pdu, json, in_state)?;
                    if in_state {
                        newest_new_state = Some(sid);
                    }
                    sids.insert(pdu.event_id.clone(), sid);
                }
            }
            if is_state {
                state_pdus.push(pdu);
            }
        }
        drop(state_ids);

        // The current state and the membership rows, replacing those of a room known before.
        if let Some(old) = &old {
            for (key, _) in self
                .store
                .scan_prefix::<CurrentState, _>(&(old.sid,), usize::MAX)?
            {
                staged.batch.delete::<CurrentState>(&key);
            }
            for (key, _) in self
                .store
                .scan_prefix::<RoomMembers, _>(&(old.sid,), usize::MAX)?
            {
                staged.batch.delete::<RoomMembers>(&key);
            }
        }
        let mut before = Vec::with_capacity(state_pdus.len());
        for pdu in state_pdus {
            let Some(state_key) = pdu.state_key.clone() else {
                continue;
            };
            let sid = *sids
                .get(&pdu.event_id)
                .ok_or_else(|| Error::unknown("state event not staged"))?;
            let kind = pdu.kind.to_string();
            staged
                .batch
                .put::<CurrentState>(&(room_sid, kind.clone(), state_key.clone()), &sid);
            if pdu.kind == TimelineEventType::RoomMember {
                self.mark_member_change(&room_id, sid)?;
                let membership = pdu
                    .content_as::<Value>()
                    .and_then(|c| c.get("membership")?.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "leave".into());
                staged
                    .batch
                    .put::<RoomMembers>(&(room_sid, state_key.clone()), &membership)
                    .put::<UserRooms>(
                        &(state_key.clone(), room_id.to_string()),
                        &UserRoom { membership, sid },
                    );
            }
            before.push((kind.clone(), state_key.clone(), sid));
            staged.state.insert((kind, state_key), (sid, pdu));
        }
        before.sort();

        // The head of the state before the join: a new outlier carrying a full snapshot. When
        // every state event was known already (a room left and joined again), the state as
        // this server last had it stands in for the chain; the current state is still the
        // resident's.
        let head = match newest_new_state {
            Some(sid) => {
                staged.batch.put::<StateSnapshots>(
                    &sid,
                    &StateSnapshot {
                        entries: before.clone(),
                    },
                );
                Some(sid)
            }
            None => old.as_ref().and_then(|r| r.last_state),
        };
        staged.record = Some(RoomRecord {
            sid: room_sid,
            version: version.to_string(),
            depth: 0,
            extremities: Vec::new(),
            last_state: head,
            since_snapshot: 0,
            created_ms: old.as_ref().map_or_else(now_ms, |r| r.created_ms),
        });
        let join_id = join_pdu.event_id.clone();
        let join_key = join_pdu.state_key.clone().unwrap_or_default();
        staged.stage_event(join_pdu, join_object, None, &[], head)?;
        let join_sid = staged
            .events
            .get(&join_id)
            .map(|(sid, _, _)| *sid)
            .ok_or_else(|| Error::unknown("staged join missing"))?;
        let mut after: Vec<_> = before
            .into_iter()
            .filter(|(k, s, _)| !(k == "m.room.member" && *s == join_key))
            .collect();
        after.push(("m.room.member".to_owned(), join_key, join_sid));
        after.sort();
        staged
            .batch
            .put::<StateSnapshots>(&join_sid, &StateSnapshot { entries: after });
        if let Some(record) = staged.record.as_mut() {
            record.since_snapshot = 0;
            record.extremities = vec![join_sid];
        }
        // The resident server sent the join to the room's other servers: not queued again,
        // and no push rules apply to one's own join.
        staged.events.remove(&join_id);
        if let Some(partial) = &partial {
            Rooms::stage_partial_state(&mut staged.batch, &room_id, partial);
        }
        staged.commit().await?;
        Ok(join_sid)
    }
}

impl Staged<'_> {
    /// The position of an event staged here as accepted (not soft-failed).
    pub fn staged_sid(&self, event_id: &EventId) -> Option<u64> {
        if !self.event_ids.iter().any(|id| id == event_id) {
            return None;
        }
        self.events.get(event_id).map(|(sid, _, _)| *sid)
    }

    /// The room's forward extremities as staged.
    pub fn extremities(&self) -> &[u64] {
        self.record
            .as_ref()
            .map_or(&[], |r| r.extremities.as_slice())
    }

    /// Marks the stored outlier `event_id` (at `sid`) as stored again by the next staging of
    /// that event: its old rows go, and its id is guarded by its old position instead of
    /// being required absent (`rooms/outliers.rs`, `Promotion::Replace`).
    pub fn replace_outlier(&mut self, event_id: &EventId, sid: u64) {
        self.remote.replacing.insert(event_id.to_owned(), sid);
    }
}

/// The precondition on a new event's id: absent, or, for an outlier being replaced, still at
/// its old position (whose rows are dropped in the same batch).
pub(super) fn guard_event_id(batch: &mut Batch, remote: &mut remote::Overlay, event_id: &EventId) {
    match remote.replacing.remove(event_id) {
        Some(old) => {
            batch.expect_value::<EventIds>(&event_id.to_string(), Some(&old));
            Rooms::stage_drop_outlier(batch, event_id, old);
        }
        None => {
            batch.expect_absent::<EventIds>(&event_id.to_string());
        }
    }
}
