//! Taking back an accepted event: the re-check of a partial-state room once its full state is
//! stored (`federation/pdus/recheck.rs`) can find that an event accepted against the partial
//! state fails against the full one (its sender was banned in a member event the resident
//! left out, say). Such an event is then stored as a rejected one would have been: out of
//! `event_ids` (the caller adds its `rejected_events` row in the same batch), so no read path
//! of the client API reaches it and events citing it as an auth event are rejected in turn.
//!
//! What it changed goes back with it, in the same batch:
//! - its `timeline` and `pdus` rows, its relation rows and search index rows, and the open
//!   hole before it (`rooms/holes.rs`);
//! - as a forward extremity it gives way to its prev events of the timeline;
//! - a state event: the key it set takes the value it had before it (at its `state_link`) in
//!   the current state (with the membership rows), in every later snapshot of the room's
//!   timeline and in later events' `replaces_state`; and the event itself gets a full
//!   snapshot row holding the state before it, so that every chain walk reaching it (events
//!   after it link to it) reads that state and never the event.
//!
//! Its `event_meta` row stays: other events' `state_link`s may name its position.
//!
//! Not taken back: the effect of a redaction it applied (the target's content is gone), and
//! push notifications and unread counts it caused.

use ruma::{events::StateEventType, CanonicalJsonObject, OwnedEventId};
use serde_json::Value;

use super::{
    remote::{Placement, StateBefore},
    Staged,
};
use crate::{
    error::{Error, Result},
    service::{
        rooms::{
            holes::TimelineHoles, state::state_head, CurrentState, EventIds, EventMetaTable, Pdus,
            RoomMembers, StateSnapshot, StateSnapshots, StoredEvent, Timeline, UserRoom, UserRooms,
        },
        search::index as search_index,
    },
};

/// Timeline rows read at once while fixing later snapshots.
const PAGE: usize = 256;

impl Staged<'_> {
    /// Where the state before a stored timeline event comes from, for [`Staged::authorise_again`]:
    /// its prev events' states as [`Staged::place_remote`] finds them (prev events taken back
    /// before it count with the state before them); when none of them is known here, the
    /// state it was stored with (its `state_link`: the state it was judged against).
    pub fn place_again(&self, event: &StoredEvent) -> Result<StateBefore> {
        let mut cites_known = false;
        for prev in &event.pdu.prev_events {
            if self.remote.unaccepted.contains_key(prev) {
                cites_known = true;
                break;
            }
            // What `place_remote` counts: events of the room, outliers left out.
            if let Some(sid) = self.rooms.event_sid(prev)? {
                let same_room = self
                    .rooms
                    .store
                    .get::<EventMetaTable>(&sid)?
                    .is_some_and(|m| m.room_sid == event.meta.room_sid);
                if same_room && !self.rooms.is_outlier(sid)? {
                    cites_known = true;
                    break;
                }
            }
        }
        let placed = if cites_known {
            self.place_remote(&event.pdu, &[])?
        } else {
            None
        };
        Ok(match placed {
            Some(Placement { state, .. }) => state,
            None => StateBefore {
                head: event.meta.state_link,
                current: false,
                resolved: None,
                fetched: false,
            },
        })
    }

    /// Makes later placements in this staging treat `event_id`, taken back in an earlier
    /// batch, as a prev event whose state is `head` (see [`Staged::unaccept`]).
    pub fn count_unaccepted(&mut self, event_id: OwnedEventId, head: Option<u64>) {
        self.remote.unaccepted.insert(event_id, head);
    }

    /// Stages the removal of an accepted timeline event of this room (see the module doc).
    /// Returns the head of the state after it (the state before it), for
    /// [`Staged::count_unaccepted`]. Commit before judging anything that depends on it.
    pub fn unaccept(&mut self, event: &StoredEvent) -> Result<Option<u64>> {
        let rooms = self.rooms;
        let room_sid = self
            .record
            .as_ref()
            .ok_or_else(|| Error::unknown("room record missing"))?
            .sid;
        if event.meta.room_sid != room_sid {
            return Err(Error::unknown("the event is not of this room"));
        }
        let sid = event.sid;
        let key = event.meta.event_id.clone();
        self.batch
            .expect_value::<EventIds>(&key, Some(&sid))
            .delete::<EventIds>(&key)
            .delete::<Pdus>(&sid)
            .delete::<Timeline>(&(room_sid, sid))
            .delete::<TimelineHoles>(&(room_sid, sid));
        if let Some(content) = event.pdu.content_as::<Value>() {
            search_index::stage_remove(
                &rooms.store,
                &mut self.batch,
                &mut self.search,
                room_sid,
                sid,
                &content,
            )?;
        }
        rooms.unstage_relation(&mut self.batch, event, &CanonicalJsonObject::new())?;
        self.give_way_to_prevs(event)?;
        if let Some(state_key) = &event.meta.state_key {
            self.unaccept_state(event, state_key)?;
        }
        self.remote
            .unaccepted
            .insert(event.pdu.event_id.clone(), state_head(event));
        Ok(state_head(event))
    }

    /// A forward extremity taken back: its prev events that are in the timeline become
    /// extremities again (an extremity that another event already builds on is harmless: a
    /// later event merely cites it too).
    fn give_way_to_prevs(&mut self, event: &StoredEvent) -> Result<()> {
        let rooms = self.rooms;
        let Some(record) = self.record.as_ref() else {
            return Ok(());
        };
        if !record.extremities.contains(&event.sid) {
            return Ok(());
        }
        let mut prevs = Vec::new();
        for prev in &event.pdu.prev_events {
            let Some(sid) = rooms.event_sid(prev)? else {
                continue;
            };
            let in_timeline = rooms.store.get::<Timeline>(&(record.sid, sid))?.is_some();
            if in_timeline && !record.extremities.contains(&sid) {
                prevs.push(sid);
            }
        }
        let record = self.record.as_mut().expect("checked above");
        record.extremities.retain(|s| *s != event.sid);
        record.extremities.extend(prevs);
        record.extremities.sort_unstable();
        record.extremities.dedup();
        Ok(())
    }

    /// The state a taken-back state event set goes back to the state before it (module doc).
    fn unaccept_state(&mut self, event: &StoredEvent, state_key: &str) -> Result<()> {
        let rooms = self.rooms;
        let room_sid = event.meta.room_sid;
        let sid = event.sid;
        let kind = event.meta.kind.clone();
        let before = rooms.state_at(
            event.meta.state_link,
            &StateEventType::from(kind.clone()),
            state_key,
        )?;
        let replace = |entries: &mut Vec<(String, String, u64)>| -> bool {
            let Some(at) = entries.iter().position(|(_, _, s)| *s == sid) else {
                return false;
            };
            match before {
                Some(previous) => entries[at].2 = previous,
                None => {
                    entries.remove(at);
                }
            }
            true
        };

        // The state at the event itself: the state before it.
        let own = match rooms.store.get::<StateSnapshots>(&sid)? {
            Some(mut snapshot) => {
                replace(&mut snapshot.entries);
                snapshot
            }
            None => StateSnapshot {
                entries: rooms.full_state_at(event.meta.state_link)?,
            },
        };
        self.batch.put::<StateSnapshots>(&sid, &own);

        // Later snapshots and `replaces_state` of the timeline.
        let mut from = sid + 1;
        loop {
            let rows = rooms.store.range_in_prefix::<Timeline, _>(
                &(room_sid,),
                Some(&(room_sid, from)),
                false,
                PAGE,
            )?;
            let Some(((_, last), _)) = rows.last() else {
                break;
            };
            from = last + 1;
            for ((_, later), _) in rows {
                if let Some(mut snapshot) = rooms.store.get::<StateSnapshots>(&later)? {
                    if replace(&mut snapshot.entries) {
                        self.batch.put::<StateSnapshots>(&later, &snapshot);
                    }
                }
                if let Some(mut meta) = rooms.store.get::<EventMetaTable>(&later)? {
                    if meta.replaces_state == Some(sid) {
                        meta.replaces_state = before;
                        self.batch.put::<EventMetaTable>(&later, &meta);
                    }
                }
            }
        }

        // The current state and the membership rows.
        let current_key = (room_sid, kind.clone(), state_key.to_owned());
        if rooms.store.get::<CurrentState>(&current_key)? != Some(sid) {
            return Ok(());
        }
        match before {
            Some(previous) => self.batch.put::<CurrentState>(&current_key, &previous),
            None => self.batch.delete::<CurrentState>(&current_key),
        };
        if kind == "m.room.member" {
            let room_id = self
                .room_id
                .clone()
                .ok_or_else(|| Error::unknown("room id unknown"))?;
            let user_key = (state_key.to_owned(), room_id.to_string());
            let member_key = (room_sid, state_key.to_owned());
            let previous = before
                .map(|previous| rooms.event_by_sid(previous))
                .transpose()?
                .flatten();
            if let Some(before) = before {
                rooms.mark_member_change(&room_id, before)?;
            }
            match previous {
                Some(previous) => {
                    let membership = previous
                        .pdu
                        .content_as::<Value>()
                        .and_then(|c| c.get("membership")?.as_str().map(str::to_owned))
                        .unwrap_or_else(|| "leave".into());
                    self.batch
                        .put::<RoomMembers>(&member_key, &membership)
                        .put::<UserRooms>(
                            &user_key,
                            &UserRoom {
                                membership,
                                sid: previous.sid,
                            },
                        );
                }
                None => {
                    self.batch
                        .delete::<RoomMembers>(&member_key)
                        .delete::<UserRooms>(&user_key);
                }
            }
            // Members changed without a new state position: held by the room's lock until
            // this batch commits, so nothing refills the cache from the old rows meanwhile.
            rooms.push_members.forget(room_sid);
        }
        Ok(())
    }
}
