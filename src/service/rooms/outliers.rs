//! Outliers: events of a room this server stores without having them in its timeline — the
//! auth chain and the state handed over by a resident server when joining a room over
//! federation, and auth events fetched for one received event (spec: server-server API,
//! "Room state and auth chains"; the spec's "outliers").
//!
//! An outlier is stored like any event in `event_ids`, `pdus` and `event_meta` (so later events
//! can cite it as an auth event, and the state at the join can name it), and marked in
//! `outlier_events`. It is never in the room's `timeline`, never a forward extremity, never
//! pushed or indexed for search, and its `event_meta.state_link` is `None` (nothing is known of
//! the state before it). Only an outlier that is part of the room's state at a join
//! (`OutlierRecord::in_state`) can be read by a client, and only as state (`/state`, the state
//! of a sync): [`Rooms::is_hidden_outlier`] tells `access.rs` which ones no client may see.
//!
//! **An outlier received again as a timeline event** (a `/send` PDU, backfill, missing
//! events): [`Rooms::outlier_fate`] says what to do. An outlier whose `prev_events` include
//! one of the room's forward extremities is new history: it is
//! [`Promotion::Replace`]d — its outlier rows are deleted in the batch that stages it through
//! the normal path with a new stream position. Any other outlier is old history (it preceded
//! the join): it is [`Promotion::InPlace`] — it keeps its position, which lies before the join
//! event (outliers get their positions before the join's in the join's batch), gains a
//! `timeline` row there, loses its outlier mark, and changes neither the current state nor the
//! extremities. An outlier that is a state event of the current state is only ever promoted in
//! place, since the current state and the snapshot at the join name its position.
//! See `schema/federation-events.md`, "Outliers".

use ruma::{CanonicalJsonObject, EventId};
use serde::{Deserialize, Serialize};

use super::{EventIds, EventMeta, EventMetaTable, Pdu, Pdus, Rooms, Timeline};
use crate::{
    error::{Error, Result},
    store::{Batch, Record},
    table,
};

table!(
    /// `sid → OutlierRecord` for every stored event that is an outlier (see the module doc).
    pub OutlierEvents: "outlier_events", u64 => OutlierRecord
);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutlierRecord {
    /// Part of the room's state at the join that stored it (a client may read it as state).
    pub in_state: bool,
    /// When it was stored (ms since the epoch).
    pub stored_ms: u64,
}
impl Record for OutlierRecord {}

/// What to do with an outlier received again as a timeline event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promotion {
    /// Old history: gains a timeline row at its own position, keeps its rows.
    InPlace { sid: u64 },
    /// New history: its rows are dropped and it is stored again through the normal path.
    Replace { sid: u64 },
}

impl Rooms {
    /// The outlier record of the event at `sid`, if it is an outlier.
    pub fn outlier(&self, sid: u64) -> Result<Option<OutlierRecord>> {
        Ok(self.store.get::<OutlierEvents>(&sid)?)
    }

    /// Whether the event at `sid` is an outlier.
    pub fn is_outlier(&self, sid: u64) -> Result<bool> {
        Ok(self.outlier(sid)?.is_some())
    }

    /// Whether the event at `sid` is an outlier no client may see (one that is not part of a
    /// room's state at a join).
    pub fn is_hidden_outlier(&self, sid: u64) -> Result<bool> {
        Ok(self.outlier(sid)?.is_some_and(|o| !o.in_state))
    }

    /// Stages an outlier of the room `room_sid` at the stream position `sid` (allocated by the
    /// caller and committed with `batch`): its id, PDU (`json`, its canonical JSON, moved into
    /// the batch) and metadata, and the outlier mark.
    /// `expect_absent` on the id, so two stagings of one event cannot both commit.
    pub fn stage_outlier(
        batch: &mut Batch,
        sid: u64,
        room_sid: u64,
        pdu: &Pdu,
        json: Vec<u8>,
        in_state: bool,
    ) -> Result<()> {
        let meta = EventMeta {
            room_sid,
            event_id: pdu.event_id.to_string(),
            kind: pdu.kind.to_string(),
            state_key: pdu.state_key.clone(),
            sender: pdu.sender.to_string(),
            state_link: None,
            depth: pdu.depth,
            origin_server_ts: u64::from(pdu.origin_server_ts.0),
            txn: None,
            redacted_by: None,
            replaces_state: None,
        };
        let key = pdu.event_id.to_string();
        batch
            .expect_absent::<EventIds>(&key)
            .put::<EventIds>(&key, &sid)
            .put_raw::<Pdus>(&sid, json)
            .put::<EventMetaTable>(&sid, &meta)
            .put::<OutlierEvents>(
                &sid,
                &OutlierRecord {
                    in_state,
                    stored_ms: crate::service::users::now_ms(),
                },
            );
        Ok(())
    }

    /// Stores events as outliers of a known room in one batch (auth events fetched for a
    /// received event, for instance): events already stored (as outliers or not) are skipped.
    /// The events must have been checked (id, signatures, hashes) and authorised against their
    /// own auth events by the caller. Returns the positions, in the order given.
    pub async fn store_outliers(
        &self,
        room_id: &ruma::RoomId,
        events: &[(Pdu, CanonicalJsonObject)],
    ) -> Result<Vec<u64>> {
        // Held until the write lands, even if this future is dropped meanwhile.
        let lock = self.lock_room(room_id).await;
        let room = self
            .room(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let mut batch = Batch::new();
        let mut pending = Vec::new();
        let mut sids = Vec::with_capacity(events.len());
        let mut staged: std::collections::HashMap<&EventId, u64> = Default::default();
        for (pdu, object) in events {
            if let Some(sid) = staged.get(&*pdu.event_id) {
                sids.push(*sid);
                continue;
            }
            if let Some(sid) = self.event_sid(&pdu.event_id)? {
                sids.push(sid);
                continue;
            }
            let position = self.stream.allocate()?;
            let sid = position.pos;
            pending.push(position);
            Self::stage_outlier(
                &mut batch,
                sid,
                room.sid,
                pdu,
                canonical_bytes(object)?,
                false,
            )?;
            staged.insert(&pdu.event_id, sid);
            sids.push(sid);
        }
        if pending.is_empty() {
            return Ok(sids);
        }
        self.stream
            .commit(&self.store, batch, pending, lock, || {})
            .await
            .map_err(Error::from)?;
        Ok(sids)
    }

    /// What to do with the stored outlier `event_id` now received as a timeline event of the
    /// room whose forward extremities are `extremities` (see the module doc); `None` when the
    /// event is not an outlier.
    pub fn outlier_fate(
        &self,
        event_id: &EventId,
        extremities: &[u64],
    ) -> Result<Option<Promotion>> {
        let Some(sid) = self.event_sid(event_id)? else {
            return Ok(None);
        };
        let Some(record) = self.outlier(sid)? else {
            return Ok(None);
        };
        if record.in_state {
            return Ok(Some(Promotion::InPlace { sid }));
        }
        let Some(event) = self.event_by_sid(sid)? else {
            return Ok(None);
        };
        let extends_head = event.pdu.prev_events.iter().any(|prev| {
            self.event_sid(prev)
                .ok()
                .flatten()
                .is_some_and(|s| extremities.contains(&s))
        });
        Ok(Some(if extends_head {
            Promotion::Replace { sid }
        } else {
            Promotion::InPlace { sid }
        }))
    }

    /// Stages the promotion of an outlier in place: a timeline row at its own position and
    /// no outlier mark; state and extremities unchanged.
    pub fn stage_promote_in_place(
        &self,
        batch: &mut Batch,
        room: (&ruma::RoomId, u64),
        sid: u64,
    ) -> Result<()> {
        let (room_id, room_sid) = room;
        batch
            .put::<Timeline>(&(room_sid, sid), &true)
            .delete::<OutlierEvents>(&sid);
        self.mark_timeline_row(room_id, sid)
    }

    /// Stages the removal of an outlier's rows, so that the same event can be staged again
    /// through the normal path in the same batch. Preconditions see the store before the
    /// batch, so that staging must guard `event_ids` with `expect_value(old sid)`, not
    /// `expect_absent` (`Staged::replace_outlier` does).
    pub fn stage_drop_outlier(batch: &mut Batch, event_id: &EventId, sid: u64) {
        batch
            .delete::<EventIds>(&event_id.to_string())
            .delete::<Pdus>(&sid)
            .delete::<EventMetaTable>(&sid)
            .delete::<OutlierEvents>(&sid);
    }
}

/// An event's canonical JSON, as stored in `pdus`.
pub fn canonical_bytes(object: &CanonicalJsonObject) -> Result<Vec<u8>> {
    serde_json::to_vec(object).map_err(|e| Error::unknown(e.to_string()))
}
