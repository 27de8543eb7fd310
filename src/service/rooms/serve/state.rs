//! The state of a room at an event and auth chains, served to other servers (server-server
//! API: `GET /state`, `GET /state_ids`, `GET /event_auth`).
//!
//! - `/state` and `/state_ids` return "the fully resolved state for the room, prior to
//!   considering any state changes induced by the requested event": the state *before* the
//!   event, which is the state its `state_link` heads (`schema/rooms.md`: a state event links
//!   to the state before it, any other event to the state at it, which is the same), and the
//!   auth chain of that state: the auth events of its events, recursively.
//! - `/event_auth` returns the auth chain of one event: its auth events, recursively (not the
//!   event itself).
//!
//! Not while the room's state here is partial (joined with `omit_members`, until the resync
//! and its re-check end): 404, as for a state this server does not know.
//!
//! Who may ask: a server the room's ACL allows (else 403) that has, or had, a user in the room
//! (the spec's 403 for "the requesting host is not in the room"). For the state endpoints it
//! must also be allowed to see the event itself (the history visibility at it, through the
//! server [`Reader`](super::super::access::Reader)); for `/event_auth` it is enough that it is
//! served the event at all (redacted or not), since checking a redacted event needs its auth
//! chain just the same. State and auth events are served as stored.
//!
//! Bounds: an auth chain walk stops at [`MAX_AUTH_CHAIN`] events; a state larger than that,
//! or an auth chain that would exceed it, is refused rather than served in part (a partial
//! chain would fail the other server's checks in ways it cannot tell from a bad one).

use std::{collections::HashSet, sync::Arc};

use ruma::{
    events::StateEventType, EventId, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId, ServerName,
};
use serde_json::value::RawValue;

use super::{as_raw, corrupt, ServerView};
use crate::{
    error::{Error, Result},
    service::rooms::{access::Served, pdu::graph_refs, EventMetaTable, RoomRecord, Rooms},
};

/// The most events an auth chain (or the state it is served with) may have.
pub const MAX_AUTH_CHAIN: usize = 100_000;

/// The state before an event and its auth chain, as stream positions (sids) of stored events.
#[derive(Debug, Clone, Default)]
pub struct StateAt {
    pub state: Vec<u64>,
    pub auth_chain: Vec<u64>,
}

fn too_large() -> Error {
    Error::unknown(format!(
        "the auth chain has more than {MAX_AUTH_CHAIN} events, more than this server serves"
    ))
}

impl Rooms {
    /// The auth chain of the events `start` of `room`: their auth events, their auth events'
    /// auth events, and so on, among the events stored here (an auth event this server does
    /// not have is left out, with its own chain). `start` themselves are included only when
    /// one cites another. From room version 12 on, the room id stands for the create event
    /// as an auth event of every other event (it is no longer listed): it is in the chain of
    /// any event but itself, so that the asking server has it with the rest. Sorted by depth,
    /// then stream position: an order in which each event comes after its auth events. Err
    /// when it would exceed [`MAX_AUTH_CHAIN`].
    pub fn auth_chain(&self, room: &RoomRecord, start: &[u64]) -> Result<Vec<u64>> {
        let mut chain: HashSet<u64> = HashSet::new();
        let implied_create = self
            .room_version(room)?
            .rules()
            .is_some_and(|r| r.authorization.room_create_event_id_as_room_id);
        if implied_create {
            let create = self.state_at(room.last_state, &StateEventType::RoomCreate, "")?;
            if let Some(create) = create.filter(|c| start.iter().any(|s| s != c)) {
                chain.insert(create);
            }
        }
        let mut stack: Vec<u64> = start.to_vec();
        let mut expanded: HashSet<u64> = HashSet::new();
        while let Some(sid) = stack.pop() {
            if !expanded.insert(sid) {
                continue;
            }
            let Some(json) = self.raw_pdu(sid)? else {
                continue;
            };
            let (auth, _) = graph_refs(&json).map_err(corrupt)?;
            for id in auth {
                let Some(auth_sid) = self.event_sid(&id)? else {
                    continue;
                };
                if chain.insert(auth_sid) {
                    if chain.len() > MAX_AUTH_CHAIN {
                        return Err(too_large());
                    }
                    stack.push(auth_sid);
                }
            }
        }
        let mut ordered = Vec::with_capacity(chain.len());
        for sid in chain {
            let depth = self
                .store
                .get::<EventMetaTable>(&sid)?
                .map_or(0, |meta| meta.depth);
            ordered.push((depth, sid));
        }
        ordered.sort_unstable();
        Ok(ordered.into_iter().map(|(_, sid)| sid).collect())
    }

    /// The state before `event_id` and its auth chain, for `origin` (gates in the module
    /// doc): 404 for an event not of this room, 403 when not allowed.
    fn state_for_server_blocking(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<StateAt> {
        let mut view = self.open_for_server(room_id, origin)?;
        let (sid, meta) = self.server_event(&mut view, event_id)?;
        // A partial-state room (`rooms/partial_state.rs`): the state here lacks member events
        // and holds events not yet checked against the full state; served, it would spread
        // into the other server's resolution as if whole. The spec's 404 for "the server
        // doesn't know about the state at that event to return anything useful".
        if self.is_partial_state(room_id) {
            return Err(Error::not_found(
                "This server has only a partial state of the room for now",
            ));
        }
        if view.reader.serve_to_server(sid, &meta)? != Served::Full {
            return Err(Error::forbidden(
                "This server may not see the state at the requested event",
            ));
        }
        // Only the create event has no state before it. Any other event without a state link
        // is an outlier (`rooms/outliers.rs`): the state before it is unknown here.
        if meta.state_link.is_none() && meta.kind != "m.room.create" {
            return Err(Error::not_found(format!(
                "The state at {event_id} is not known here"
            )));
        }
        let state: Vec<u64> = self
            .full_state_at(meta.state_link)?
            .into_iter()
            .map(|(_, _, sid)| sid)
            .collect();
        if state.len() > MAX_AUTH_CHAIN {
            return Err(too_large());
        }
        let auth_chain = self.auth_chain(&view.room, &state)?;
        Ok(StateAt { state, auth_chain })
    }

    /// The event of the room `view` opened, when the asking server takes part in the room:
    /// 403 if it does not, 404 if the event is not one of the room's events here.
    fn server_event(
        &self,
        view: &mut ServerView<'_>,
        event_id: &EventId,
    ) -> Result<(u64, crate::service::rooms::EventMeta)> {
        if !view.reader.server_takes_part() {
            return Err(Error::forbidden("This server is not in the room"));
        }
        self.room_event(&view.room, event_id)?
            .ok_or_else(|| Error::not_found(format!("Could not find event {event_id}")))
    }

    /// `GET /state_ids/{roomId}?event_id=`: the ids of the state before the event and of its
    /// auth chain.
    pub async fn state_ids_for_server(
        self: &Arc<Self>,
        origin: OwnedServerName,
        room_id: OwnedRoomId,
        event_id: OwnedEventId,
    ) -> Result<(Vec<OwnedEventId>, Vec<OwnedEventId>)> {
        let rooms = self.clone();
        self.heavy_read(move || {
            let at = rooms.state_for_server_blocking(&origin, &room_id, &event_id)?;
            Ok((
                rooms.event_ids_of(&at.state)?,
                rooms.event_ids_of(&at.auth_chain)?,
            ))
        })
        .await
    }

    /// `GET /state/{roomId}?event_id=`: the PDUs of the state before the event and of its auth
    /// chain, as stored.
    pub async fn state_for_server(
        self: &Arc<Self>,
        origin: OwnedServerName,
        room_id: OwnedRoomId,
        event_id: OwnedEventId,
    ) -> Result<(Vec<Box<RawValue>>, Vec<Box<RawValue>>)> {
        let rooms = self.clone();
        self.heavy_read(move || {
            let at = rooms.state_for_server_blocking(&origin, &room_id, &event_id)?;
            Ok((rooms.pdus_of(&at.state)?, rooms.pdus_of(&at.auth_chain)?))
        })
        .await
    }

    /// `GET /event_auth/{roomId}/{eventId}`: the PDUs of the event's auth chain, as stored.
    pub async fn event_auth_for_server(
        self: &Arc<Self>,
        origin: OwnedServerName,
        room_id: OwnedRoomId,
        event_id: OwnedEventId,
    ) -> Result<Vec<Box<RawValue>>> {
        let rooms = self.clone();
        self.heavy_read(move || {
            let mut view = rooms.open_for_server(&room_id, &origin)?;
            let (sid, meta) = rooms.server_event(&mut view, &event_id)?;
            if view.reader.serve_to_server(sid, &meta)? == Served::Hidden {
                return Err(Error::forbidden("This server may not see this event"));
            }
            rooms.pdus_of(&rooms.auth_chain(&view.room, &[sid])?)
        })
        .await
    }

    /// The event ids of stored events (events that vanished are left out).
    fn event_ids_of(&self, sids: &[u64]) -> Result<Vec<OwnedEventId>> {
        let mut ids = Vec::with_capacity(sids.len());
        for sid in sids {
            if let Some(meta) = self.store.get::<EventMetaTable>(sid)? {
                ids.push(
                    EventId::parse(&meta.event_id)
                        .map_err(|_| Error::unknown("stored event id is invalid"))?,
                );
            }
        }
        Ok(ids)
    }

    /// The stored PDUs at `sids`, as stored (those not found left out).
    pub(crate) fn pdus_of(&self, sids: &[u64]) -> Result<Vec<Box<RawValue>>> {
        let mut pdus = Vec::with_capacity(sids.len());
        for sid in sids {
            if let Some(json) = self.raw_pdu(*sid)? {
                pdus.push(as_raw(json)?);
            }
        }
        Ok(pdus)
    }
}
