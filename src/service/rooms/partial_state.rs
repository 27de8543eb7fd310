//! Rooms joined with partial state (server-server API, `send_join` with `omit_members`): the
//! resident left most member events out of the state it sent, so this server knows the room's
//! non-member state, its own member and a few others, and the servers in the room
//! (`servers_in_room`). The room is usable at once; `federation/membership/partial.rs` fetches
//! the full state at the join in the background and [`Rooms::complete_partial_state`] folds it
//! in.
//!
//! Invariants:
//! - a room has a [`PartialStateRooms`] row from the batch that stored its join until the
//!   events accepted since the join were checked again against the full state
//!   (`federation/pdus/recheck.rs`), and no longer: a restart finds the rooms still to resync
//!   (or re-check) there;
//! - while the row exists, the room's stored state (current state, snapshots) lacks member
//!   events, never has wrong ones: what the full state adds is only keys the partial state did
//!   not have, so the completion adds each missing key to the state at the join and to every
//!   later snapshot and to the current state, and keeps every key already there (an event
//!   received after the join changed it, or the resident sent it).

use std::collections::{BTreeSet, HashMap, HashSet};

use ruma::{events::TimelineEventType, OwnedServerName, RoomId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CurrentState, Pdu, RoomMembers, Rooms, StateSnapshots, Timeline, UserRoom, UserRooms};
use crate::{
    error::{Error, Result},
    store::{Batch, Record},
    table,
};

table!(
    /// `room_id → PartialState` for each room joined with partial state whose full state is
    /// not stored yet (see the module doc).
    pub PartialStateRooms: "partial_state_rooms", String => PartialState
);

/// What a partial-state room needs until its full state is stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartialState {
    /// The join event whose state (before it) is fetched.
    pub join_event_id: String,
    /// The resident server the join went through (asked first).
    pub resident: String,
    /// `servers_in_room` of the `send_join` answer: the servers with joined members before
    /// the join. Outbound events and EDUs go to them while the member events are unknown.
    pub servers: Vec<String>,
}
impl Record for PartialState {}

impl Rooms {
    /// The partial-state record of the room, if its full state is not stored yet.
    pub fn partial_state(&self, room_id: &RoomId) -> Result<Option<PartialState>> {
        Ok(self.store.get::<PartialStateRooms>(&room_id.to_string())?)
    }

    /// Whether the room's state is partial.
    pub fn is_partial_state(&self, room_id: &RoomId) -> bool {
        self.partial_state(room_id).ok().flatten().is_some()
    }

    /// Every room whose state is partial (to resume their resync at start).
    pub fn partial_state_rooms(&self) -> Result<Vec<(String, PartialState)>> {
        Ok(self
            .store
            .range::<PartialStateRooms>(None, false, usize::MAX)?)
    }

    /// Stages the partial-state mark of a room (in the batch that stores its join).
    pub fn stage_partial_state(batch: &mut Batch, room_id: &RoomId, partial: &PartialState) {
        batch.put::<PartialStateRooms>(&room_id.to_string(), partial);
    }

    /// The servers to send the room's events to besides those of its known joined members:
    /// `servers_in_room` while the state is partial, none after.
    pub fn partial_state_servers(&self, room_id: &RoomId) -> BTreeSet<OwnedServerName> {
        let own = self.server_name();
        self.partial_state(room_id)
            .ok()
            .flatten()
            .map(|p| {
                p.servers
                    .iter()
                    .filter_map(|s| OwnedServerName::try_from(s.as_str()).ok())
                    .filter(|s| s != own)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `servers_in_room` of every partial-state room `user_id` is joined to: servers that
    /// share a room with the user though none of their members is known here yet (device-list
    /// updates and other per-user EDUs go to them too).
    pub fn partial_state_servers_of(
        &self,
        user_id: &ruma::UserId,
    ) -> Result<BTreeSet<OwnedServerName>> {
        let mut out = BTreeSet::new();
        for (room_id, membership, _) in self.memberships_of(user_id)? {
            if membership == "join" {
                out.extend(self.partial_state_servers(&room_id));
            }
        }
        Ok(out)
    }

    /// Stores the full state before the join of a partial-state room (checked and authorised
    /// by the caller, one event per key) and its auth chain, in one batch: new events as
    /// outliers; every key the stored state lacks added to the state at the join, to every
    /// later snapshot and to the current state (with the membership rows). Returns how many
    /// keys were added. The partial mark stays until the events accepted meanwhile are checked
    /// again ([`Rooms::finish_partial_state`]); a second run (after a crash in between) adds
    /// nothing. A room no longer partial changes nothing.
    pub async fn complete_partial_state(
        &self,
        room_id: &RoomId,
        state: Vec<(Pdu, Vec<u8>)>,
        auth_chain: Vec<(Pdu, Vec<u8>)>,
    ) -> Result<usize> {
        let _lock = self.lock_room(room_id).await;
        let Some(partial) = self.partial_state(room_id)? else {
            return Ok(0);
        };
        let room = self
            .room(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let join = self
            .event(&ruma::EventId::parse(&partial.join_event_id).map_err(|e| {
                Error::unknown(format!("bad join id in the partial-state record: {e}"))
            })?)?
            .ok_or_else(|| Error::unknown("the join of a partial-state room is not stored"))?;
        let mut batch = Batch::new();
        batch.expect_value::<PartialStateRooms>(&room_id.to_string(), Some(&partial));
        let mut pending = Vec::new();

        // The events, each once; those stored already keep their position. Each one's JSON
        // moves into the batch; only the state's `Pdu`s are kept.
        let state_ids: HashSet<ruma::OwnedEventId> =
            state.iter().map(|(p, _)| p.event_id.clone()).collect();
        let mut sids: HashMap<ruma::OwnedEventId, u64> = HashMap::new();
        let mut state_pdus = Vec::with_capacity(state.len());
        let events = auth_chain
            .into_iter()
            .map(|e| (e, false))
            .chain(state.into_iter().map(|e| (e, true)));
        for ((pdu, json), is_state) in events {
            if !sids.contains_key(&pdu.event_id) {
                if let Some(sid) = self.event_sid(&pdu.event_id)? {
                    sids.insert(pdu.event_id.clone(), sid);
                } else {
                    let position = self.stream.allocate()?;
                    let sid = position.pos;
                    pending.push(position);
                    let in_state = state_ids.contains(&pdu.event_id);
                    Rooms::stage_outlier(&mut batch, sid, room.sid, &pdu, json, in_state)?;
                    sids.insert(pdu.event_id.clone(), sid);
                }
            }
            if is_state {
                state_pdus.push(pdu);
            }
        }
        drop(state_ids);
        let mut full: HashMap<(String, String), (u64, Pdu)> = HashMap::new();
        for pdu in state_pdus {
            if let Some(key) = pdu.state_key.clone() {
                let sid = sids[&pdu.event_id];
                full.insert((pdu.kind.to_string(), key), (sid, pdu));
            }
        }

        // The snapshots from the state at the join on: the head of the state before the join
        // (an outlier), the join's own, and every later one of the timeline.
        let mut snapshot_sids: Vec<u64> = join.meta.state_link.into_iter().collect();
        for ((_, sid), _) in self.store.range_in_prefix::<Timeline, _>(
            &(room.sid,),
            Some(&(room.sid, join.sid)),
            false,
            usize::MAX,
        )? {
            snapshot_sids.push(sid);
        }
        let mut added_keys = 0;
        for sid in snapshot_sids {
            let Some(mut snapshot) = self.store.get::<StateSnapshots>(&sid)? else {
                continue;
            };
            let have: HashSet<(String, String)> = snapshot
                .entries
                .iter()
                .map(|(k, s, _)| (k.clone(), s.clone()))
                .collect();
            let before = snapshot.entries.len();
            for ((kind, key), (event_sid, _)) in &full {
                if !have.contains(&(kind.clone(), key.clone())) {
                    snapshot
                        .entries
                        .push((kind.clone(), key.clone(), *event_sid));
                }
            }
            if snapshot.entries.len() != before {
                snapshot.entries.sort();
                batch.put::<StateSnapshots>(&sid, &snapshot);
            }
        }

        // The current state and the membership rows.
        let current: HashSet<(String, String)> = self
            .store
            .scan_prefix::<CurrentState, _>(&(room.sid,), usize::MAX)?
            .into_iter()
            .map(|((_, k, s), _)| (k, s))
            .collect();
        for ((kind, key), (event_sid, pdu)) in &full {
            if current.contains(&(kind.clone(), key.clone())) {
                continue;
            }
            added_keys += 1;
            batch.put::<CurrentState>(&(room.sid, kind.clone(), key.clone()), event_sid);
            if pdu.kind == TimelineEventType::RoomMember {
                self.mark_member_change(room_id, *event_sid)?;
                let membership = pdu
                    .content_as::<Value>()
                    .and_then(|c| c.get("membership")?.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "leave".into());
                batch
                    .put::<RoomMembers>(&(room.sid, key.clone()), &membership)
                    .put::<UserRooms>(
                        &(key.clone(), room_id.to_string()),
                        &UserRoom {
                            membership,
                            sid: *event_sid,
                        },
                    );
            }
        }
        // The fetched member events take new positions outside the timeline: a sync (device
        // lists) must not skip the room for them (`latest.rs`).
        if let Some(top) = pending.iter().map(|p| p.pos).max() {
            self.mark_timeline_row(room_id, top)?;
        }
        self.stream
            .commit(&self.store, batch, pending, (), || {})
            .await
            .map_err(Error::from)?;
        // The member cache is keyed by the state position, which did not move; the states at
        // rewritten snapshots changed under their heads.
        self.push_members.forget(room.sid);
        self.forget_cached_states();
        Ok(added_keys)
    }

    /// Stages the removal of the partial mark `partial` of the room (guarded by its value), in
    /// the batch that ends the re-check of the events accepted while it was partial.
    pub fn finish_partial_state(batch: &mut Batch, room_id: &RoomId, partial: &PartialState) {
        let key = room_id.to_string();
        batch
            .expect_value::<PartialStateRooms>(&key, Some(partial))
            .delete::<PartialStateRooms>(&key);
    }
}
