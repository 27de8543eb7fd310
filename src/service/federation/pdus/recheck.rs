//! The re-check that ends a partial-state join (the spec's "faster joins" design; Synapse
//! does the same): while the room's state lacked member events, received events were
//! authorised with a missing key taken from their own auth events
//! (`rooms/build/remote.rs`), so an event whose sender was in fact banned or gone — in a
//! member event the resident left out — could be accepted on what its sender's server
//! claimed. Once the full state is stored (`Rooms::complete_partial_state`), every event of
//! the timeline after the join is judged again, in order, through the same checks as on
//! receipt (an auth event rejected; steps 4 and 5 against its auth events and the state
//! before it, now complete: [`Staged::authorise_again`]). One that fails is rejected after
//! all: stored in `rejected_events` as if rejected on receipt, and taken back from the
//! timeline, the state and the rest (`rooms/build/unaccept.rs`), in one batch committed
//! before the next event is judged (the state after it is then read from the store).
//!
//! The partial mark is removed in the batch that follows the check of the timeline's last
//! event, under the room's lock, so no event escapes the check; events received meanwhile
//! are judged as in a partial-state room and re-checked here. A crash leaves the mark: the
//! resync runs again at start (storing nothing new) and so does the re-check (events already
//! taken back are no longer in the timeline).

use std::collections::HashMap;

use ruma::{OwnedEventId, RoomId};

use super::{Pdus, RejectedEvent, RejectedEvents};
use crate::{
    error::{Error, Result},
    service::{
        rooms::{
            build::{remote::Verdict, Staged},
            partial_state::PartialState,
            Rooms, StoredEvent, Timeline,
        },
        users::now_ms,
    },
};

/// Timeline events read at once.
const PAGE: usize = 100;

impl Pdus {
    /// Judges again every event of the room's timeline after the join of `partial`, rejects
    /// those that fail, and removes the partial mark (see the module doc). Returns the ids of
    /// the events rejected.
    pub async fn recheck_partial_state(
        &self,
        room_id: &RoomId,
        partial: &PartialState,
    ) -> Result<Vec<OwnedEventId>> {
        let join_id = ruma::EventId::parse(&partial.join_event_id)
            .map_err(|e| Error::unknown(format!("bad join id in the partial-state record: {e}")))?;
        let join_sid = self
            .rooms
            .event_sid(&join_id)?
            .ok_or_else(|| Error::unknown("the join of a partial-state room is not stored"))?;
        let room_sid = self
            .rooms
            .room(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?
            .sid;
        let mut cursor = join_sid + 1;
        let mut unaccepted: HashMap<OwnedEventId, Option<u64>> = HashMap::new();
        let mut rejected = Vec::new();
        // Each round either rejects one event of the timeline (past `cursor`, which only
        // grows) or reaches its end and finishes.
        loop {
            let mut staged = self.rooms.stage(room_id).await?;
            for (id, head) in &unaccepted {
                staged.count_unaccepted(id.clone(), *head);
            }
            let failed = self.first_failing(&staged, room_sid, &mut cursor)?;
            let Some((event, reason)) = failed else {
                Rooms::finish_partial_state(staged.batch_mut(), room_id, partial);
                staged.commit().await?;
                return Ok(rejected);
            };
            log::info!(
                "{} in {room_id} fails against the full state: rejected ({reason})",
                event.pdu.event_id
            );
            let head = staged.unaccept(&event)?;
            let record = RejectedEvent {
                room_id: room_id.to_string(),
                reason,
                received_ms: now_ms(),
                pdu: serde_json::to_vec(&event.json).map_err(|e| Error::unknown(e.to_string()))?,
            };
            let key = event.pdu.event_id.to_string();
            staged
                .batch_mut()
                .expect_absent::<RejectedEvents>(&key)
                .put::<RejectedEvents>(&key, &record);
            staged.commit().await?;
            // Snapshots were rewritten in place: states read from them before are stale.
            self.rooms.forget_cached_states();
            unaccepted.insert(event.pdu.event_id.clone(), head);
            rejected.push(event.pdu.event_id);
        }
    }

    /// The first event of the timeline from `cursor` on that fails the checks again, with
    /// why; `cursor` moves past every event that passes.
    fn first_failing(
        &self,
        staged: &Staged<'_>,
        room_sid: u64,
        cursor: &mut u64,
    ) -> Result<Option<(StoredEvent, String)>> {
        loop {
            let rows = self.store.range_in_prefix::<Timeline, _>(
                &(room_sid,),
                Some(&(room_sid, *cursor)),
                false,
                PAGE,
            )?;
            if rows.is_empty() {
                return Ok(None);
            }
            for ((_, sid), _) in rows {
                *cursor = sid + 1;
                let Some(event) = self.rooms.event_by_sid(sid)? else {
                    continue;
                };
                if let Some(reason) = self.fails_again(staged, &event)? {
                    return Ok(Some((event, reason)));
                }
            }
        }
    }

    /// Why a stored timeline event fails the checks against the room's state as stored now,
    /// if it does.
    fn fails_again(&self, staged: &Staged<'_>, event: &StoredEvent) -> Result<Option<String>> {
        if let Some(rejected) = self.rejected_auth_event(&event.pdu)? {
            return Ok(Some(format!("auth event {rejected} was rejected")));
        }
        let state = staged.place_again(event)?;
        Ok(match staged.authorise_again(&event.pdu, &state)? {
            Verdict::Rejected(reason) => Some(reason),
            // It passed with these auth events before; one not found now was taken back and is
            // in `rejected_events` (above), so this does not happen: leave the event as it is.
            Verdict::MissingAuth(reason) => {
                log::warn!(
                    "re-check of {}: {reason}; left as accepted",
                    event.pdu.event_id
                );
                None
            }
            Verdict::Accepted | Verdict::SoftFailed(_) => None,
        })
    }
}
