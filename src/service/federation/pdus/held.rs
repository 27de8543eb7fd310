//! PDUs of a room this server is joining, received before the join is stored.
//!
//! The resident server stores the join and answers `send_join`; from then on it sends the
//! room's events here, while this server is still checking the answer and storing the room
//! (seconds for a large room). Refused as "room not known", such a PDU would count as
//! delivered and be lost until a later event made this server fetch it (`gaps.rs`): a message
//! sent the instant the join was answered would not reach the joining user. So while a join
//! is in progress ([`Pdus::hold_room`], from just before `send_join`), the room's PDUs are
//! held in memory — at most [`MAX_HELD`] PDUs and [`MAX_HELD_BYTES`] per room, beyond which
//! they are refused as before — and answered as taken; once the join is stored
//! ([`JoinHold::release`]) they are received as if they had just arrived, each from its own
//! origin (every check of `mod.rs` applies then). A join that fails drops them.

use std::collections::HashMap;

use ruma::{
    room_version_rules::RoomVersionRules, CanonicalJsonValue, OwnedEventId, OwnedRoomId,
    OwnedServerName, RoomId, ServerName,
};
use serde_json::value::RawValue as RawJsonValue;

use super::{checks, Pdus};

/// The most PDUs held for one room being joined.
pub const MAX_HELD: usize = 100;
/// The most bytes of PDUs held for one room being joined.
pub const MAX_HELD_BYTES: usize = 2 * 1024 * 1024;

/// A room being joined: how many joins of it are in progress, and what came meanwhile.
pub(super) struct Joining {
    joins: usize,
    rules: RoomVersionRules,
    held: Vec<(OwnedServerName, Box<RawJsonValue>)>,
    bytes: usize,
}

/// Rooms being joined, by id.
pub(super) type Joins = std::sync::Mutex<HashMap<OwnedRoomId, Joining>>;

/// A join in progress (see the module doc). Dropped without [`JoinHold::release`] (the join
/// failed), it drops what was held once no other join of the room is in progress.
pub struct JoinHold<'a> {
    pdus: &'a Pdus,
    room_id: OwnedRoomId,
    released: bool,
}

impl Pdus {
    fn joins(&self) -> std::sync::MutexGuard<'_, HashMap<OwnedRoomId, Joining>> {
        self.joins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds the PDUs of `room_id` (of room version `rules`) received from now on, until the
    /// returned hold is released or dropped.
    pub fn hold_room(&self, room_id: &RoomId, rules: &RoomVersionRules) -> JoinHold<'_> {
        self.joins()
            .entry(room_id.to_owned())
            .or_insert_with(|| Joining {
                joins: 0,
                rules: rules.clone(),
                held: Vec::new(),
                bytes: 0,
            })
            .joins += 1;
        JoinHold {
            pdus: self,
            room_id: room_id.to_owned(),
            released: false,
        }
    }

    /// How many PDUs are held for a room being joined.
    pub fn held_pdus(&self, room_id: &RoomId) -> usize {
        self.joins().get(room_id).map_or(0, |j| j.held.len())
    }

    /// Holds a received PDU if it is of a room being joined and there is room for it: its
    /// event id (or why it has none), or `None` (not held: to be received as usual). Costs
    /// nothing but a lock while no join is in progress.
    pub(super) fn hold(
        &self,
        origin: &ServerName,
        raw: &RawJsonValue,
    ) -> Option<Result<OwnedEventId, String>> {
        if self.joins().is_empty() {
            return None;
        }
        let object = checks::parse(raw).ok()?;
        let room_id = match object.get("room_id") {
            Some(CanonicalJsonValue::String(id)) => RoomId::parse(id).ok()?,
            _ => return None,
        };
        let mut joins = self.joins();
        let joining = joins.get_mut(&room_id)?;
        let event_id = match checks::event_id(&object, &joining.rules) {
            Ok(id) => id,
            Err(e) => return Some(Err(e)),
        };
        let size = raw.get().len();
        if joining.held.len() >= MAX_HELD || joining.bytes + size > MAX_HELD_BYTES {
            log::info!("PDU {event_id} for {room_id}, being joined, not held: too many held");
            return None;
        }
        joining.bytes += size;
        joining.held.push((origin.to_owned(), raw.to_owned()));
        Some(Ok(event_id))
    }

    /// One join of the room ended. `stored`: the room is stored now, so nothing is held for
    /// it any more (another join of it in progress becomes one more event of the room) and
    /// what was held is returned, to receive now. Else what was held goes with the room's last
    /// join.
    fn end_hold(
        &self,
        room_id: &RoomId,
        stored: bool,
    ) -> Vec<(OwnedServerName, Box<RawJsonValue>)> {
        let mut joins = self.joins();
        if stored {
            return joins.remove(room_id).map(|j| j.held).unwrap_or_default();
        }
        let Some(joining) = joins.get_mut(room_id) else {
            return Vec::new();
        };
        joining.joins = joining.joins.saturating_sub(1);
        if joining.joins == 0 {
            if let Some(left) = joins.remove(room_id) {
                if !left.held.is_empty() {
                    log::info!(
                        "{} PDUs held for {room_id} dropped: the join failed",
                        left.held.len()
                    );
                }
            }
        }
        Vec::new()
    }
}

impl JoinHold<'_> {
    /// The join is stored: receives the held PDUs, runs of the same origin together, in the
    /// order they came. Returns how many there were.
    pub async fn release(mut self) -> usize {
        self.released = true;
        let held = self.pdus.end_hold(&self.room_id, true);
        let count = held.len();
        let mut run: Vec<Box<RawJsonValue>> = Vec::new();
        let mut origin: Option<OwnedServerName> = None;
        for (from, raw) in held {
            if origin.as_ref().is_some_and(|o| *o != from) {
                let previous = origin.take().expect("checked above");
                self.receive_held(&previous, std::mem::take(&mut run)).await;
            }
            origin = Some(from);
            run.push(raw);
        }
        if let Some(origin) = origin {
            self.receive_held(&origin, run).await;
        }
        count
    }

    async fn receive_held(&self, origin: &ServerName, pdus: Vec<Box<RawJsonValue>>) {
        let results = self.pdus.receive_pdus(origin, &pdus).await;
        let refused = results.values().filter(|r| r.is_err()).count();
        log::info!(
            "{} PDUs from {origin} held while {} was joined: {refused} not accepted",
            pdus.len(),
            self.room_id
        );
    }
}

impl Drop for JoinHold<'_> {
    fn drop(&mut self) {
        if !self.released {
            self.pdus.end_hold(&self.room_id, false);
        }
    }
}
