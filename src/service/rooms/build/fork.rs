//! Forks in the room's graph: when a remote state event was sent on another branch than the
//! room's current state (concurrent state changes on several servers), or an event's state
//! came from another server across a gap, the room's current state becomes the state
//! resolution (`rooms/resolve/`: v1 in room version 1, v2 after) of the current state and
//! the state after that event. Every server doing the same on the same events ends with the
//! same state, whichever order the events arrived in.
//!
//! The resolved state is written where the current state lives: the changed `current_state`
//! and membership rows, and a full `state_snapshots` row at the event, which becomes the head
//! of the room's state chain (`last_state`; a non-state event may head it then, see
//! `schema/rooms.md`), so that the state at later events reads the resolution.

use std::{collections::HashMap, sync::Arc};

use ruma::{
    events::{StateEventType, TimelineEventType},
    state_res::check_state_dependent_auth_rules,
    OwnedEventId,
};
use serde_json::Value;

use super::{remote::StateBefore, Staged};
use crate::{
    error::{Error, Result},
    service::rooms::{
        outliers::{OutlierEvents, OutlierRecord},
        resolve::{to_state_ids, StateIds},
        CurrentState, Pdu, RoomMembers, StateSnapshot, StateSnapshots, UserRoom, UserRooms,
    },
};

impl Staged<'_> {
    /// The current state, staged changes included, as event ids.
    pub(super) fn current_state_ids(&self) -> Result<StateIds> {
        self.full_state_entries()?
            .into_iter()
            .map(|(kind, key, sid)| {
                let id = OwnedEventId::try_from(self.event_id_of(sid)?)
                    .map_err(|_| Error::unknown("stored event id is invalid"))?;
                Ok(((StateEventType::from(kind), key), id))
            })
            .collect()
    }

    /// The state before an event, as event ids.
    pub(super) fn state_ids_before(&self, state: &StateBefore) -> Result<StateIds> {
        match &state.resolved {
            Some(resolved) => Ok(to_state_ids(resolved)),
            None => self.rooms.state_ids_at(state.head),
        }
    }

    /// The state before an event with prev events unknown here, whose state another server
    /// gave (`fetched`): resolved with the states of its known prev events (`heads`). Should
    /// the resolution be out of reach, the first fetched state stands in.
    pub(super) fn with_fetched_state(
        &self,
        heads: &[Option<u64>],
        fetched: &[StateIds],
    ) -> Result<StateBefore> {
        let mut maps = heads
            .iter()
            .map(|head| self.rooms.state_ids_at(*head))
            .collect::<Result<Vec<_>>>()?;
        maps.extend(fetched.iter().cloned());
        let resolved = match maps.as_slice() {
            [only] => Some(
                only.iter()
                    .map(|((kind, key), id)| ((kind.to_string(), key.clone()), id.clone()))
                    .collect(),
            ),
            _ => self
                .rooms
                .resolve_maps(&self.rules, &maps, &HashMap::new())?
                .or_else(|| {
                    fetched.first().map(|only| {
                        only.iter()
                            .map(|((kind, key), id)| ((kind.to_string(), key.clone()), id.clone()))
                            .collect()
                    })
                }),
        };
        Ok(StateBefore {
            head: heads.iter().max().copied().flatten(),
            current: false,
            resolved: resolved.map(Arc::new),
            fetched: true,
        })
    }

    /// Whether `pdu` passes the authorization rules against the resolution of the current
    /// state and the state before it (what the current state becomes once it is stored).
    pub(super) fn passes_merged_state(&self, pdu: &Pdu, state: &StateBefore) -> Result<bool> {
        let maps = [self.current_state_ids()?, self.state_ids_before(state)?];
        let staged: HashMap<OwnedEventId, Pdu> = self
            .events
            .iter()
            .map(|(id, (_, pdu, _))| (id.clone(), pdu.clone()))
            .collect();
        let Some(resolved) = self.rooms.resolve_maps(&self.rules, &maps, &staged)? else {
            return Ok(false);
        };
        let lookup = |kind: &StateEventType, key: &str| {
            let id = resolved.get(&(kind.to_string(), key.to_owned()))?;
            match staged.get(id) {
                Some(pdu) => Some(pdu.clone()),
                None => self.rooms.event(id).ok().flatten().map(|e| e.pdu),
            }
        };
        Ok(check_state_dependent_auth_rules(&self.rules.authorization, pdu, lookup).is_ok())
    }

    /// Makes the current state the resolution of `ours` (the current state before the event
    /// staged at `sid`) and `theirs` (the state after it). When the resolution is out of reach
    /// the event's own change stands (as before forks were resolved).
    pub(super) fn merge_fork(&mut self, ours: StateIds, theirs: StateIds, sid: u64) -> Result<()> {
        if ours == theirs {
            return Ok(());
        }
        let staged: HashMap<OwnedEventId, Pdu> = self
            .events
            .iter()
            .map(|(id, (_, pdu, _))| (id.clone(), pdu.clone()))
            .chain(
                self.remote
                    .outliers
                    .iter()
                    .map(|(i, p)| (i.clone(), p.clone())),
            )
            .collect();
        let Some(resolved) = self
            .rooms
            .resolve_maps(&self.rules, &[ours, theirs], &staged)?
        else {
            return Ok(());
        };
        let current: HashMap<(String, String), u64> = self
            .full_state_entries()?
            .into_iter()
            .map(|(kind, key, sid)| ((kind, key), sid))
            .collect();
        let mut changed = false;
        for ((kind, key), id) in resolved {
            let (winner, pdu) = match self.events.get(&id) {
                Some((sid, pdu, _)) => (*sid, pdu.clone()),
                None => match self.rooms.event(&id)? {
                    Some(event) => (event.sid, event.pdu),
                    None => continue,
                },
            };
            if current.get(&(kind.clone(), key.clone())) == Some(&winner) {
                continue;
            }
            self.put_current(kind, key, winner, pdu)?;
            changed = true;
        }
        if changed {
            // The resolved state heads the chain from this event on.
            let entries = self.full_state_entries()?;
            self.batch
                .put::<StateSnapshots>(&sid, &StateSnapshot { entries });
            let record = self.record.as_mut().expect("staged room");
            record.last_state = Some(sid);
            record.since_snapshot = 0;
        }
        Ok(())
    }

    /// Puts one entry of the current state (and, for a member event, the membership rows).
    fn put_current(&mut self, kind: String, key: String, sid: u64, pdu: Pdu) -> Result<()> {
        let room_id = self
            .room_id
            .clone()
            .ok_or_else(|| Error::unknown("room id unknown"))?;
        let room_sid = self.record.as_ref().expect("staged room").sid;
        self.batch
            .put::<CurrentState>(&(room_sid, kind.clone(), key.clone()), &sid);
        if pdu.kind == TimelineEventType::RoomMember {
            self.rooms.mark_member_change(&room_id, sid)?;
            let membership = pdu
                .content_as::<Value>()
                .and_then(|c| c.get("membership")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| "leave".into());
            self.batch
                .put::<UserRooms>(
                    &(key.clone(), room_id.to_string()),
                    &UserRoom {
                        membership: membership.clone(),
                        sid,
                    },
                )
                .put::<RoomMembers>(&(room_sid, key.clone()), &membership);
        }
        // An outlier the resolution puts into the current state is readable as state.
        if let Some(outlier) = self.rooms.outlier(sid)? {
            if !outlier.in_state {
                let record = OutlierRecord {
                    in_state: true,
                    ..outlier
                };
                self.batch.put::<OutlierEvents>(&sid, &record);
            }
        }
        self.state.insert((kind, key), (sid, pdu));
        Ok(())
    }
}
