//! A room's history served to other servers (server-server API: "Retrieving events",
//! "Backfilling and retrieving missing events"): `/event`, `/backfill`, `/get_missing_events`
//! and `/timestamp_to_event` here; `/state`, `/state_ids` and `/event_auth` in
//! [`state`].
//!
//! Every read goes through the one read-authorization path, a server [`Reader`]
//! (`access.rs`): the room's server ACL, the server's users' memberships in the room and, per
//! event, the history visibility at that event. An event is served as stored when the server
//! may see it, in its redacted form when the server takes part in the room but may not see it
//! (its graph and auth rules stay whole for the server; see [`Served`]), and not at all
//! otherwise.
//!
//! PDUs are served exactly as stored: the canonical JSON as signed, which is the room
//! version's federation format (redacted in place once redacted). Rejected events are never
//! among the room's events (`rejected_events` is apart), so nothing here can serve one.
//! Soft-failed events are served where the walk reaches them: the spec returns them from
//! `/event`, and from `/backfill` and `/get_missing_events` "only if the requests include
//! events referencing the soft failed events" — which is what a walk of `prev_events` does,
//! since no event of this server cites one (they are never forward extremities).
//!
//! Bounds: `/backfill` and `/get_missing_events` return at most [`MAX_WALK_EVENTS`] events and
//! examine at most [`WALK_BUDGET`] (hidden ones included); `/timestamp_to_event` is a binary
//! search plus a scan of at most `timeline::TIME_SCAN_LIMIT` events; the walks run on the
//! blocking pool through [`Rooms::heavy_read`].

pub mod state;

use std::{
    collections::{BinaryHeap, HashSet, VecDeque},
    sync::Arc,
};

use ruma::{
    canonical_json::redact, room_version_rules::RoomVersionRules, CanonicalJsonObject, EventId,
    OwnedEventId, OwnedRoomId, OwnedServerName, RoomId, ServerName,
};
use serde_json::value::RawValue;

use super::{
    access::{Reader, Served},
    pdu::graph_refs,
    EventMeta, EventMetaTable, Pdus, RoomRecord, Rooms, StoredEvent,
};
use crate::{
    error::{Error, Result},
    service::federation::acl,
};

/// The most events one `/backfill` or `/get_missing_events` answer carries (larger limits are
/// capped to it).
pub const MAX_WALK_EVENTS: usize = 100;
/// The most events one walk examines, served or not.
pub const WALK_BUDGET: usize = 1000;
/// The most event ids of a request's lists (`v`, `latest_events`, `earliest_events`) that are
/// looked at.
pub const MAX_REQUEST_IDS: usize = 1000;

/// What `/get_missing_events` asks for.
#[derive(Debug, Clone)]
pub struct MissingEventsQuery {
    pub earliest_events: Vec<OwnedEventId>,
    pub latest_events: Vec<OwnedEventId>,
    pub limit: usize,
    pub min_depth: u64,
}

/// One room opened for a server's request: its record, the server's reader and the room
/// version's rules.
pub(crate) struct ServerView<'a> {
    pub room: RoomRecord,
    pub reader: Reader<'a>,
    pub rules: RoomVersionRules,
}

fn corrupt(e: impl std::fmt::Display) -> Error {
    Error::unknown(format!("stored PDU is corrupt: {e}"))
}

impl Rooms {
    /// Opens `room_id` for a request of `origin`: 404 when the room is unknown here, 403 when
    /// its server ACL denies `origin`.
    pub(crate) fn open_for_server(
        &self,
        room_id: &RoomId,
        origin: &ServerName,
    ) -> Result<ServerView<'_>> {
        let room = self
            .room(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        acl::check(self, room_id, origin)?;
        let reader = self.server_reader(room_id, &room, origin)?;
        let rules = self
            .room_version(&room)?
            .rules()
            .ok_or_else(|| Error::unknown("unsupported room version"))?;
        Ok(ServerView {
            room,
            reader,
            rules,
        })
    }

    /// The sid and metadata of `event_id` if it is an event of `room` stored here.
    pub(crate) fn room_event(
        &self,
        room: &RoomRecord,
        event_id: &EventId,
    ) -> Result<Option<(u64, EventMeta)>> {
        let Some(sid) = self.event_sid(event_id)? else {
            return Ok(None);
        };
        Ok(self
            .store
            .get::<EventMetaTable>(&sid)?
            .filter(|meta| meta.room_sid == room.sid)
            .map(|meta| (sid, meta)))
    }

    /// The stored PDU at `sid` as it is (canonical JSON as signed).
    pub(crate) fn raw_pdu(&self, sid: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.store.get::<Pdus>(&sid)?.map(|raw| raw.0))
    }

    /// The PDU `json` (of the event at `sid`) as `reader`'s server is served it: as stored,
    /// redacted, or `None` (see [`Served`]).
    pub(crate) fn pdu_for_server(
        &self,
        view: &mut ServerView<'_>,
        sid: u64,
        meta: &EventMeta,
        json: Vec<u8>,
    ) -> Result<Option<Box<RawValue>>> {
        match view.reader.serve_to_server(sid, meta)? {
            Served::Full => as_raw(json).map(Some),
            Served::Redacted if meta.redacted_by.is_some() => as_raw(json).map(Some),
            Served::Redacted => {
                let object: CanonicalJsonObject = serde_json::from_slice(&json).map_err(corrupt)?;
                let redacted = redact(object, &view.rules.redaction, None).map_err(corrupt)?;
                serde_json::value::to_raw_value(&redacted)
                    .map(Some)
                    .map_err(corrupt)
            }
            Served::Hidden => Ok(None),
        }
    }

    /// `GET /event/{eventId}`: the event as `origin` may be served it. 404 when it is not
    /// stored here (rejected events included), 403 when the room's ACL denies `origin` or the
    /// server may not see the event at all.
    pub fn event_for_server(
        &self,
        origin: &ServerName,
        event_id: &EventId,
    ) -> Result<Box<RawValue>> {
        let not_found = || Error::not_found("Event not found");
        let sid = self.event_sid(event_id)?.ok_or_else(not_found)?;
        let meta = self
            .store
            .get::<EventMetaTable>(&sid)?
            .ok_or_else(not_found)?;
        let room_id = self
            .store
            .lookup_short("room", meta.room_sid)?
            .and_then(|id| RoomId::parse(id).ok())
            .ok_or_else(not_found)?;
        let mut view = self.open_for_server(&room_id, origin)?;
        let json = self.raw_pdu(sid)?.ok_or_else(not_found)?;
        self.pdu_for_server(&mut view, sid, &meta, json)?
            .ok_or_else(|| Error::forbidden("This server may not see this event"))
    }

    /// `GET /backfill/{roomId}`: the events `v` and those before them, newest first (by depth,
    /// then stream position), at most `limit` (capped to [`MAX_WALK_EVENTS`]). 404 when none of
    /// `v` is an event of the room here; 403 when `origin` may not read the room.
    pub async fn backfill_for_server(
        self: &Arc<Self>,
        origin: OwnedServerName,
        room_id: OwnedRoomId,
        v: Vec<OwnedEventId>,
        limit: usize,
    ) -> Result<Vec<Box<RawValue>>> {
        let rooms = self.clone();
        self.heavy_read(move || rooms.backfill_blocking(&origin, &room_id, &v, limit))
            .await
    }

    fn backfill_blocking(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        v: &[OwnedEventId],
        limit: usize,
    ) -> Result<Vec<Box<RawValue>>> {
        if v.is_empty() {
            return Err(Error::invalid_param("`v` names no event to backfill from"));
        }
        let mut view = self.open_for_server(room_id, origin)?;
        view.reader.require_server_access()?;
        let limit = limit.min(MAX_WALK_EVENTS);
        // Newest first: the greatest (depth, sid) of the frontier is taken next.
        let mut frontier = BinaryHeap::new();
        let mut seen = HashSet::new();
        for id in v.iter().take(MAX_REQUEST_IDS) {
            if let Some((sid, meta)) = self.room_event(&view.room, id)? {
                if seen.insert(sid) {
                    frontier.push((meta.depth, sid));
                }
            }
        }
        if frontier.is_empty() {
            return Err(Error::not_found("None of the events in `v` is known here"));
        }
        let mut pdus = Vec::new();
        let mut budget = WALK_BUDGET;
        while pdus.len() < limit && budget > 0 {
            let Some((_, sid)) = frontier.pop() else {
                break;
            };
            budget -= 1;
            let (Some(meta), Some(json)) =
                (self.store.get::<EventMetaTable>(&sid)?, self.raw_pdu(sid)?)
            else {
                continue;
            };
            let (_, prevs) = graph_refs(&json).map_err(corrupt)?;
            if let Some(pdu) = self.pdu_for_server(&mut view, sid, &meta, json)? {
                pdus.push(pdu);
            }
            for prev in prevs {
                if let Some((prev_sid, prev_meta)) = self.room_event(&view.room, &prev)? {
                    if seen.insert(prev_sid) {
                        frontier.push((prev_meta.depth, prev_sid));
                    }
                }
            }
        }
        Ok(pdus)
    }

    /// `POST /get_missing_events/{roomId}`: a breadth-first walk of the `prev_events` of
    /// `latest_events` (not returned themselves), neither returning nor walking past
    /// `earliest_events` or events below `min_depth`, stopping at `limit` events (capped to
    /// [`MAX_WALK_EVENTS`]). Returned oldest first (by depth, then stream position), the order
    /// in which the asking server can check them. Latest events unknown here are skipped: there
    /// is nothing to walk from them. 403 when `origin` may not read the room.
    pub async fn missing_events_for_server(
        self: &Arc<Self>,
        origin: OwnedServerName,
        room_id: OwnedRoomId,
        query: MissingEventsQuery,
    ) -> Result<Vec<Box<RawValue>>> {
        let rooms = self.clone();
        self.heavy_read(move || rooms.missing_events_blocking(&origin, &room_id, &query))
            .await
    }

    fn missing_events_blocking(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        query: &MissingEventsQuery,
    ) -> Result<Vec<Box<RawValue>>> {
        let mut view = self.open_for_server(room_id, origin)?;
        view.reader.require_server_access()?;
        let limit = query.limit.min(MAX_WALK_EVENTS);
        let mut seen: HashSet<&EventId> = HashSet::new();
        seen.extend(
            query
                .earliest_events
                .iter()
                .take(MAX_REQUEST_IDS)
                .map(|id| &**id),
        );
        let mut queue: VecDeque<OwnedEventId> = VecDeque::new();
        for id in query.latest_events.iter().take(MAX_REQUEST_IDS) {
            seen.insert(id);
            if let Some((sid, _)) = self.room_event(&view.room, id)? {
                if let Some(json) = self.raw_pdu(sid)? {
                    queue.extend(graph_refs(&json).map_err(corrupt)?.1);
                }
            }
        }
        let mut found = Vec::new();
        let mut walked: HashSet<OwnedEventId> = HashSet::new();
        let mut budget = WALK_BUDGET;
        while found.len() < limit && budget > 0 {
            let Some(id) = queue.pop_front() else { break };
            if seen.contains(&*id) || !walked.insert(id.clone()) {
                continue;
            }
            let Some((sid, meta)) = self.room_event(&view.room, &id)? else {
                continue;
            };
            budget -= 1;
            if meta.depth < query.min_depth {
                continue;
            }
            let Some(json) = self.raw_pdu(sid)? else {
                continue;
            };
            let (_, prevs) = graph_refs(&json).map_err(corrupt)?;
            let depth = meta.depth;
            if let Some(pdu) = self.pdu_for_server(&mut view, sid, &meta, json)? {
                found.push((depth, sid, pdu));
            }
            queue.extend(prevs);
        }
        found.sort_by_key(|(depth, sid, _)| (*depth, *sid));
        Ok(found.into_iter().map(|(_, _, pdu)| pdu).collect())
    }

    /// `GET /timestamp_to_event/{roomId}`: the event of the room's timeline closest to `ts` in
    /// the direction asked that `origin` may see (`Rooms::event_near_time`). 404 when there is
    /// none; 403 when `origin` may not read the room's history.
    pub async fn timestamp_for_server(
        self: &Arc<Self>,
        origin: OwnedServerName,
        room_id: OwnedRoomId,
        ts: u64,
        forward: bool,
    ) -> Result<Option<StoredEvent>> {
        let rooms = self.clone();
        self.heavy_read(move || {
            let mut view = rooms.open_for_server(&room_id, &origin)?;
            view.reader.access.require_history()?;
            rooms.event_near_time(&mut view.reader, view.room.sid, ts, forward)
        })
        .await
    }
}

/// Stored JSON as a raw JSON value, unchanged.
pub(crate) fn as_raw(json: Vec<u8>) -> Result<Box<RawValue>> {
    let text = String::from_utf8(json).map_err(corrupt)?;
    RawValue::from_string(text).map_err(corrupt)
}
