//! Outliers fetched from another server for their part in the room's state or auth chains
//! (`state_ids`, `event_auth`), staged into a batch with the room's other events: stored as
//! `rooms/outliers.rs` stores outliers, authorised against their own auth events first. A
//! later event citing one as a prev event treats it as unknown (its place in the room's graph
//! is not known here); one that a state resolution puts into the current state becomes
//! readable as state (`build/fork.rs`).
//!
//! Backfilled events (`rooms/backfill.rs`) are staged here too: like outliers, but with a
//! place in the room's history: in `backfill_timeline` before the timeline, or in a hole of
//! the timeline (`rooms/holes.rs`).

use std::collections::HashMap;

use ruma::{
    events::StateEventType,
    state_res::{check_state_dependent_auth_rules, check_state_independent_auth_rules},
    CanonicalJsonObject, EventId, OwnedEventId,
};

use super::{remote::Verdict, Staged};
use crate::{
    error::{Error, Result},
    service::rooms::{
        backfill::{BackfillFloor, BackfillTimeline, BackfilledEvents, FIRST_SEQ},
        holes::{HoleEvents, HolePlace, HoleTimeline},
        outliers::OutlierEvents,
        EventIds, EventMeta, EventMetaTable, Pdu, Pdus, Rooms,
    },
    store::Raw,
};

impl Staged<'_> {
    /// Whether an event is known here: stored, or staged in this batch.
    pub fn knows(&self, id: &EventId) -> Result<bool> {
        Ok(self.remote_event_pdu(id)?.is_some())
    }

    /// The authorization rules against the event's own auth events: what an outlier must
    /// pass.
    pub fn authorise_outlier(&self, pdu: &Pdu) -> Result<Verdict> {
        Ok(match self.check_auth_events(pdu)? {
            Ok(_) => Verdict::Accepted,
            Err(verdict) => verdict,
        })
    }

    /// Step 4 of the checks on receipt (server-server API): the authorization rules against
    /// the event's own auth events, all of which must be known (rejected events are not in
    /// `event_ids`, so they read as unknown here; callers tell them apart). Returns the auth
    /// events when the event passes, else the verdict.
    pub fn check_auth_events(
        &self,
        pdu: &Pdu,
    ) -> Result<std::result::Result<HashMap<OwnedEventId, Pdu>, Verdict>> {
        let rules = &self.rules.authorization;
        let mut auth: HashMap<OwnedEventId, Pdu> = HashMap::new();
        for id in &pdu.auth_events {
            match self.remote_event_pdu(id)? {
                Some(event) => {
                    auth.insert(id.clone(), event);
                }
                None => {
                    return Ok(Err(Verdict::MissingAuth(format!(
                        "unknown auth event {id}"
                    ))))
                }
            }
        }
        if rules.room_create_event_id_as_room_id {
            if let Some(id) = pdu
                .room_id
                .as_ref()
                .and_then(|room| EventId::parse(format!("${}", room.strip_sigil())).ok())
            {
                if let Some(event) = self.remote_event_pdu(&id)? {
                    auth.entry(id).or_insert(event);
                }
            }
        }
        if let Err(e) = check_state_independent_auth_rules(rules, pdu, |id| auth.get(id).cloned()) {
            return Ok(Err(Verdict::Rejected(format!("auth events: {e}"))));
        }
        let by_key: HashMap<(String, String), &Pdu> = auth
            .values()
            .filter_map(|p| Some(((p.kind.to_string(), p.state_key.clone()?), p)))
            .collect();
        let from_auth = |kind: &StateEventType, key: &str| {
            by_key
                .get(&(kind.to_string(), key.to_owned()))
                .map(|p| (*p).clone())
        };
        if let Err(e) = check_state_dependent_auth_rules(rules, pdu, from_auth) {
            return Ok(Err(Verdict::Rejected(format!("auth events: {e}"))));
        }
        Ok(Ok(auth))
    }

    /// Stages an outlier (already verified and authorised against its auth events).
    pub fn add_outlier(&mut self, pdu: &Pdu, object: &CanonicalJsonObject) -> Result<()> {
        let rooms = self.rooms;
        let room_sid = self
            .record
            .as_ref()
            .ok_or_else(|| Error::unknown("room record missing"))?
            .sid;
        let pending = rooms.stream.allocate()?;
        let sid = pending.pos;
        self.pending.push(pending);
        let json = super::super::outliers::canonical_bytes(object)?;
        Rooms::stage_outlier(&mut self.batch, sid, room_sid, pdu, json, false)?;
        self.remote
            .outliers
            .insert(pdu.event_id.clone(), pdu.clone());
        Ok(())
    }

    /// The sequence number below which the next run of backfilled events goes (see
    /// `rooms/backfill.rs`).
    pub fn backfill_floor(&self) -> Result<u64> {
        if let Some(floor) = self.remote.backfill_floor {
            return Ok(floor);
        }
        let room_sid = self
            .record
            .as_ref()
            .ok_or_else(|| Error::unknown("room record missing"))?
            .sid;
        Ok(self
            .rooms
            .store
            .get::<BackfillFloor>(&room_sid)?
            .unwrap_or(FIRST_SEQ))
    }

    /// Stages a backfilled event (verified, and authorised against its auth events) at `place`
    /// in the room's history: its PDU, id, metadata and relation; not the room's state,
    /// forward extremities, search index, push or federation queue. `state_link` is the head
    /// of the state it is read with (for the history visibility): at the start of the
    /// history, the state at the oldest event that was here before; in a hole, the state
    /// before its anchor.
    pub fn add_backfilled(
        &mut self,
        pdu: &Pdu,
        object: &CanonicalJsonObject,
        place: HistoryPlace,
        state_link: Option<u64>,
    ) -> Result<()> {
        let rooms = self.rooms;
        let room_sid = self
            .record
            .as_ref()
            .ok_or_else(|| Error::unknown("room record missing"))?
            .sid;
        let pending = rooms.stream.allocate()?;
        let sid = pending.pos;
        self.pending.push(pending);
        let meta = EventMeta {
            room_sid,
            event_id: pdu.event_id.to_string(),
            kind: pdu.kind.to_string(),
            state_key: pdu.state_key.clone(),
            sender: pdu.sender.to_string(),
            state_link,
            depth: pdu.depth,
            origin_server_ts: u64::from(pdu.origin_server_ts.0),
            txn: None,
            redacted_by: None,
            replaces_state: None,
        };
        let json = serde_json::to_vec(object).map_err(|e| Error::unknown(e.to_string()))?;
        let key = pdu.event_id.to_string();
        self.batch
            .expect_absent::<EventIds>(&key)
            .put::<EventIds>(&key, &sid)
            .put::<Pdus>(&sid, &Raw(json))
            .put::<EventMetaTable>(&sid, &meta);
        self.stage_history_place(room_sid, sid, place)?;
        rooms.stage_relation(&mut self.batch, sid, room_sid, pdu, object)?;
        // Later events of the run may cite it as an auth event.
        self.remote
            .outliers
            .insert(pdu.event_id.clone(), pdu.clone());
        Ok(())
    }

    /// Gives a stored outlier (of the room's state or auth chains at a join, or fetched for a
    /// received event) its place in the room's history, as a backfilled event: it becomes
    /// history like them, read with the state at `state_link` when it had none.
    pub fn place_outlier_in_backfill(
        &mut self,
        sid: u64,
        place: HistoryPlace,
        state_link: Option<u64>,
    ) -> Result<()> {
        let room_sid = self
            .record
            .as_ref()
            .ok_or_else(|| Error::unknown("room record missing"))?
            .sid;
        let mut meta = self
            .rooms
            .store
            .get::<EventMetaTable>(&sid)?
            .ok_or_else(|| Error::unknown("outlier without metadata"))?;
        if meta.state_link.is_none() {
            meta.state_link = state_link;
        }
        self.batch
            .put::<EventMetaTable>(&sid, &meta)
            .delete::<OutlierEvents>(&sid);
        self.stage_history_place(room_sid, sid, place)
    }

    /// The rows that give the event at `sid` its place in the history.
    fn stage_history_place(&mut self, room_sid: u64, sid: u64, place: HistoryPlace) -> Result<()> {
        match place {
            HistoryPlace::Start { seq } => {
                // The lowest of the batch: a later write of the key would win.
                let floor = self.backfill_floor()?.min(seq);
                self.remote.backfill_floor = Some(floor);
                self.batch
                    .put::<BackfillTimeline>(&(room_sid, seq), &sid)
                    .put::<BackfilledEvents>(&sid, &seq)
                    .put::<BackfillFloor>(&room_sid, &floor);
            }
            HistoryPlace::Hole { anchor, seq } => {
                self.batch
                    .put::<HoleTimeline>(&(room_sid, anchor, seq), &sid)
                    .put::<HoleEvents>(&sid, &HolePlace { anchor, seq });
            }
        }
        Ok(())
    }
}

/// Where a backfilled event goes in the room's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryPlace {
    /// At `seq` of `backfill_timeline`, before the timeline (`rooms/backfill.rs`).
    Start { seq: u64 },
    /// At `seq` of the hole before the timeline event `anchor` (`rooms/holes.rs`).
    Hole { anchor: u64, seq: u64 },
}
