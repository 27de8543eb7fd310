//! Backfill (server-server API, "Backfilling and retrieving missing events"): when
//! `/messages` pages past the oldest event this server has of a room and that event's prev
//! events are unknown here, older events are asked of other servers in the room
//! (`/v1/backfill`, a few servers, a short time limit each), checked like received PDUs,
//! authorised against their auth events (fetched with `event_auth` when unknown, bounded),
//! and stored in the room's `backfill_timeline` (`rooms/backfill.rs`): readable through
//! `/messages` before what was here, never new to `/sync`.
//!
//! The same fills a **hole** in the timeline (`rooms/holes.rs`) when `/messages` reaches its
//! older edge ([`Pdus::fill_hole`]): the events missing there are asked for (`v` = them), and
//! of the answer, the events reached from them through `prev_events` without passing an event
//! of the room's history here — and no older than the room's first timeline event, below
//! which lies the start of the history, not this hole — are stored in the hole, oldest first,
//! below what it held. The prev events they cite that are still not here become the hole's
//! new edge; with none, the hole is closed.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use ruma::{
    events::TimelineEventType, EventId, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId,
    ServerName, UserId,
};
use serde_json::value::RawValue as RawJsonValue;

use super::{causal_order, checks, Pdus, Ready, RejectedEvents};
use crate::{
    error::{Error, Result},
    service::{
        federation::fetch::RemoteEvents,
        rooms::{
            build::{fetched::HistoryPlace, remote::Verdict},
            state::state_head,
            Pdu, Rooms, StoredEvent,
        },
    },
};

/// What a backfill fills: the start of the room's history, or a hole in its timeline.
enum Target<'a> {
    /// Before `oldest`, the oldest event here.
    Start { oldest: &'a StoredEvent },
    /// The hole before the timeline event `anchor`, whose older edge lacks `missing`; events
    /// older than `min_depth` (the room's first timeline event's) are not of it.
    Hole {
        anchor: &'a StoredEvent,
        missing: &'a [OwnedEventId],
        min_depth: u64,
    },
}

/// Which backfill of a room last brought nothing: its start (`None`) or a hole's anchor.
pub type MissKey = (OwnedRoomId, Option<u64>);

/// The most events one backfill asks for.
pub const BACKFILL_LIMIT: u32 = 50;
/// The most servers one backfill tries.
const BACKFILL_SERVERS: usize = 3;
/// How long one server may take to answer a backfill (a client is waiting).
const BACKFILL_TIMEOUT: Duration = Duration::from_secs(5);
/// `event_auth` requests one backfill may make for events whose auth events are unknown.
const AUTH_REQUESTS: usize = 2;
/// A room whose backfill brought nothing is not tried again for this long.
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// Rooms remembered as such at most (older entries are let go first).
const MAX_MISSES: usize = 1024;

impl Pdus {
    /// Fetches up to `limit` events older than the oldest one this server has of the room
    /// from another server in it, and stores those that pass. Returns how many were stored:
    /// 0 when the history here is complete (it starts with the create event, or the oldest
    /// event's prev events are all here), no server answered, or nothing passed.
    pub async fn backfill(&self, room_id: &RoomId, limit: u32) -> Result<usize> {
        let Some(remote) = self.remote.clone() else {
            return Ok(0);
        };
        let Some(room) = self.rooms.room(room_id)? else {
            return Ok(0);
        };
        let Some(oldest) = self.rooms.oldest_event(room.sid)? else {
            return Ok(0);
        };
        if oldest.pdu.kind == TimelineEventType::RoomCreate || !self.lacks_prevs(&oldest)? {
            return Ok(0);
        }
        let key = (room_id.to_owned(), None);
        if self.missed_recently(&key) {
            return Ok(0);
        }
        let from = vec![oldest.pdu.event_id.clone()];
        let target = Target::Start { oldest: &oldest };
        let stored = self
            .backfill_from_servers(&*remote, room_id, room.sid, from, &target, limit)
            .await?;
        self.note_miss(key, stored == 0);
        Ok(stored)
    }

    /// Fetches events of the open hole before the timeline event `anchor` from another server
    /// in the room and stores those that pass (see the module doc); closes the hole when
    /// nothing is missing at its edge any more. Returns how many were stored.
    pub async fn fill_hole(&self, room_id: &RoomId, anchor: u64) -> Result<usize> {
        let Some(remote) = self.remote.clone() else {
            return Ok(0);
        };
        let Some(room) = self.rooms.room(room_id)? else {
            return Ok(0);
        };
        let Some(missing) = self.rooms.open_hole(room.sid, anchor)? else {
            return Ok(0);
        };
        let anchor_event = self
            .rooms
            .event_by_sid(anchor)?
            .filter(|e| e.meta.room_sid == room.sid);
        // What arrived since (as new events, or rejected) is no longer missing here; nor is
        // anything before an anchor that is gone (rejected since).
        let mut still = Vec::new();
        if anchor_event.is_some() {
            for id in missing {
                if !self.in_history(&id)? {
                    still.push(id);
                }
            }
        }
        if still.is_empty() {
            let mut staged = self.rooms.stage(room_id).await?;
            Rooms::stage_hole(staged.batch_mut(), room.sid, anchor, &[]);
            staged.commit().await?;
            return Ok(0);
        }
        let key = (room_id.to_owned(), Some(anchor));
        if self.missed_recently(&key) {
            return Ok(0);
        }
        let min_depth = self
            .rooms
            .timeline(room.sid, None, false, 1)?
            .first()
            .map_or(0, |first| first.meta.depth);
        let Some(anchor_event) = anchor_event else {
            return Ok(0);
        };
        let target = Target::Hole {
            anchor: &anchor_event,
            missing: &still,
            min_depth,
        };
        let stored = self
            .backfill_from_servers(
                &*remote,
                room_id,
                room.sid,
                still.clone(),
                &target,
                BACKFILL_LIMIT,
            )
            .await?;
        self.note_miss(key, stored == 0);
        Ok(stored)
    }

    /// Whether the event is part of the room's history here (stored and placed: timeline,
    /// backfilled, in a hole, or soft-failed), or was rejected (it never will be).
    fn in_history(&self, id: &EventId) -> Result<bool> {
        if let Some(sid) = self.rooms.event_sid(id)? {
            return Ok(!self.rooms.is_outlier(sid)?);
        }
        Ok(self.store.get::<RejectedEvents>(&id.to_string())?.is_some())
    }

    /// Whether a backfill of the room (its start, or a hole) brought nothing less than
    /// [`RETRY_AFTER`] ago.
    fn missed_recently(&self, key: &MissKey) -> bool {
        let misses = self
            .backfill_misses
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        misses.get(key).is_some_and(|at| at.elapsed() < RETRY_AFTER)
    }

    /// Remembers whether a backfill brought nothing.
    fn note_miss(&self, key: MissKey, missed: bool) {
        let mut misses = self
            .backfill_misses
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if missed {
            if misses.len() >= MAX_MISSES {
                misses.retain(|_, at| at.elapsed() < RETRY_AFTER);
            }
            misses.insert(key, std::time::Instant::now());
        } else {
            misses.remove(&key);
        }
    }

    async fn backfill_from_servers(
        &self,
        remote: &dyn RemoteEvents,
        room_id: &RoomId,
        room_sid: u64,
        from: Vec<OwnedEventId>,
        target: &Target<'_>,
        limit: u32,
    ) -> Result<usize> {
        for server in self.backfill_servers(room_sid)? {
            let from = from.clone();
            let answer = tokio::time::timeout(
                BACKFILL_TIMEOUT,
                remote.backfill(&server, room_id, from, limit),
            )
            .await;
            let raws = match answer {
                Ok(Ok(raws)) => raws,
                Ok(Err(e)) => {
                    log::info!("backfill of {room_id} from {server} failed: {e}");
                    continue;
                }
                Err(_) => {
                    log::info!("backfill of {room_id} from {server} timed out");
                    continue;
                }
            };
            let raws = raws.iter().take(limit as usize).map(|r| &**r);
            let stored = self
                .store_backfilled(remote, &server, room_id, target, raws)
                .await?;
            if stored > 0 {
                return Ok(stored);
            }
        }
        Ok(0)
    }

    /// Whether some prev event of `event` is not in the room's history here (unknown, or
    /// only an outlier).
    fn lacks_prevs(&self, event: &StoredEvent) -> Result<bool> {
        for prev in &event.pdu.prev_events {
            match self.rooms.event_sid(prev)? {
                Some(sid) if !self.rooms.is_outlier(sid)? => {}
                _ => return Ok(true),
            }
        }
        Ok(false)
    }

    /// Whether the event is a stored outlier with no place in the room's history yet.
    fn unplaced(&self, id: &ruma::EventId) -> Result<bool> {
        let Some(sid) = self.rooms.event_sid(id)? else {
            return Ok(false);
        };
        Ok(self.rooms.is_outlier(sid)? && self.rooms.backfill_seq(sid)?.is_none())
    }

    /// Other servers with users joined to the room, the first few by name.
    fn backfill_servers(&self, room_sid: u64) -> Result<Vec<OwnedServerName>> {
        let mut servers: Vec<OwnedServerName> = self
            .rooms
            .members(room_sid)?
            .into_iter()
            .filter(|(_, membership)| membership == "join")
            .filter_map(|(user, _)| Some(UserId::parse(user).ok()?.server_name().to_owned()))
            .filter(|server| server != self.rooms.server_name())
            .collect();
        servers.sort();
        servers.dedup();
        servers.truncate(BACKFILL_SERVERS);
        Ok(servers)
    }

    /// Checks, authorises and stores a backfill answer for `target` (see the module doc).
    async fn store_backfilled<'r>(
        &self,
        remote: &dyn RemoteEvents,
        server: &ServerName,
        room_id: &RoomId,
        target: &Target<'_>,
        raws: impl Iterator<Item = &'r RawJsonValue>,
    ) -> Result<usize> {
        let Some(rules) = self.room_rules(room_id) else {
            return Ok(0);
        };
        // The answer, parsed (not verified yet), each event once.
        let mut answer: Vec<(OwnedEventId, &RawJsonValue, Pdu)> = Vec::new();
        let mut seen = HashSet::new();
        for raw in raws {
            let Some(object) = checks::parse(raw).ok() else {
                continue;
            };
            let Ok(id) = checks::event_id(&object, &rules) else {
                continue;
            };
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Ok(pdu) = Pdu::from_object(id.clone(), &object) {
                answer.push((id, raw, pdu));
            }
        }
        let wanted: Option<HashSet<OwnedEventId>> = match target {
            Target::Start { .. } => None,
            Target::Hole {
                missing, min_depth, ..
            } => Some(self.reached_in_hole(missing, &answer, *min_depth)?),
        };
        let mut prepared = Vec::new();
        for (id, raw, _) in &answer {
            if wanted.as_ref().is_some_and(|w| !w.contains(id)) {
                continue;
            }
            // Outliers (the state and auth chain of a join, events fetched for others) are
            // history too: they take their place among the backfilled events.
            if self.unplaced(id)? {
                // Verified when it was stored: taken as it is here.
                if let Some(stored) = self.rooms.event(id)? {
                    prepared.push(super::Prepared {
                        event_id: id.clone(),
                        pdu: stored.pdu,
                        object: stored.json,
                        fetched_state: Vec::new(),
                    });
                }
                continue;
            }
            if self.rooms.is_stored(id)? {
                continue;
            }
            match self.prepare(server, raw).await {
                // Only history: at the start, nothing newer than what was here.
                Ok(Ready::Room(in_room, event))
                    if in_room == room_id
                        && match target {
                            Target::Start { oldest } => event.pdu.depth <= oldest.meta.depth,
                            Target::Hole { .. } => true,
                        } =>
                {
                    prepared.push(*event);
                }
                Ok(_) => log::info!("backfilled event {id} from {server} is not older history"),
                Err((_, e)) => log::info!("backfilled event {id} from {server} dropped: {e}"),
            }
        }
        if prepared.is_empty() && wanted.is_none() {
            return Ok(0);
        }
        // Auth events unknown here: the auth chain of the oldest events lacking some.
        let batch: HashSet<OwnedEventId> = prepared.iter().map(|e| e.event_id.clone()).collect();
        let mut requests = 0;
        for event in causal_order_ref(&prepared) {
            if requests == AUTH_REQUESTS {
                break;
            }
            let lacks = event
                .pdu
                .auth_events
                .iter()
                .any(|id| !batch.contains(id) && !self.rooms.is_stored(id).unwrap_or(true));
            if !lacks {
                continue;
            }
            requests += 1;
            match remote.event_auth(server, room_id, &event.event_id).await {
                Ok(chain) => {
                    let chain = chain.iter().map(|r| &**r);
                    self.admit_outliers(server, room_id, chain, &batch).await;
                }
                Err(e) => log::info!(
                    "event_auth for {} from {server} failed: {e}",
                    event.event_id
                ),
            }
        }

        let ordered = causal_order(prepared);
        let mut staged = self.rooms.stage(room_id).await?;
        let room_sid = staged
            .room_sid()
            .ok_or_else(|| Error::unknown("room record missing"))?;
        // Oldest first, so each sees the ones it cites; placed below what is there, in the
        // same order.
        let (floor, link) = match target {
            Target::Start { oldest } => (staged.backfill_floor()?, state_head(oldest)),
            Target::Hole { anchor, .. } => (
                self.rooms.next_hole_floor(room_sid, anchor.sid)?,
                anchor.meta.state_link,
            ),
        };
        let place = |seq| match target {
            Target::Start { .. } => HistoryPlace::Start { seq },
            Target::Hole { anchor, .. } => HistoryPlace::Hole {
                anchor: anchor.sid,
                seq,
            },
        };
        let count = ordered.len() as u64;
        let mut stored = 0;
        let mut placed: HashSet<OwnedEventId> = HashSet::new();
        for (index, event) in ordered.iter().enumerate() {
            let seq = floor - (count - index as u64);
            if self.unplaced(&event.event_id)? {
                let sid = self.rooms.event_sid(&event.event_id)?.unwrap_or_default();
                staged.place_outlier_in_backfill(sid, place(seq), link)?;
                placed.insert(event.event_id.clone());
                stored += 1;
                continue;
            }
            if staged.knows(&event.event_id)? {
                continue;
            }
            match staged.authorise_outlier(&event.pdu)? {
                Verdict::Accepted => {
                    staged.add_backfilled(&event.pdu, &event.object, place(seq), link)?;
                    placed.insert(event.event_id.clone());
                    stored += 1;
                }
                verdict => log::info!(
                    "backfilled event {} from {server} not stored: {verdict:?}",
                    event.event_id
                ),
            }
        }
        if let Target::Hole {
            anchor,
            missing,
            min_depth,
        } = target
        {
            let edge = self.hole_edge(missing, &ordered, &placed, &answer, *min_depth)?;
            Rooms::stage_hole(staged.batch_mut(), room_sid, anchor.sid, &edge);
        } else if stored == 0 {
            return Ok(0);
        }
        staged.commit().await?;
        Ok(stored)
    }

    /// The events of a backfill `answer` that belong to a hole whose older edge lacks
    /// `missing`: those reached from `missing` through `prev_events` within the answer,
    /// without passing an event of the room's history here or one older than `min_depth`.
    fn reached_in_hole(
        &self,
        missing: &[OwnedEventId],
        answer: &[(OwnedEventId, &RawJsonValue, Pdu)],
        min_depth: u64,
    ) -> Result<HashSet<OwnedEventId>> {
        let by_id: HashMap<&OwnedEventId, &Pdu> =
            answer.iter().map(|(id, _, pdu)| (id, pdu)).collect();
        let mut reached = HashSet::new();
        let mut queue: Vec<OwnedEventId> = missing.to_vec();
        // Each event of the answer is expanded once: bounded by its size.
        while let Some(id) = queue.pop() {
            if reached.contains(&id) || self.in_history(&id)? {
                continue;
            }
            let Some(pdu) = by_id.get(&id) else {
                continue;
            };
            if pdu.depth < min_depth {
                continue;
            }
            queue.extend(pdu.prev_events.iter().cloned());
            reached.insert(id);
        }
        Ok(reached)
    }

    /// The new older edge of a hole after a backfill placed `placed` of `ordered` into it:
    /// of the events `missing` before and the prev events of those placed, the ones still not
    /// here and not too old for the hole (an event of the answer below `min_depth`).
    fn hole_edge(
        &self,
        missing: &[OwnedEventId],
        ordered: &[super::Prepared],
        placed: &HashSet<OwnedEventId>,
        answer: &[(OwnedEventId, &RawJsonValue, Pdu)],
        min_depth: u64,
    ) -> Result<Vec<OwnedEventId>> {
        let too_old = |id: &OwnedEventId| {
            answer
                .iter()
                .any(|(a, _, pdu)| a == id && pdu.depth < min_depth)
        };
        let mut edge: Vec<OwnedEventId> = Vec::new();
        let candidates = missing.iter().chain(
            ordered
                .iter()
                .filter(|e| placed.contains(&e.event_id))
                .flat_map(|e| e.pdu.prev_events.iter()),
        );
        for id in candidates {
            if edge.contains(id) || placed.contains(id) || too_old(id) || self.in_history(id)? {
                continue;
            }
            edge.push(id.clone());
        }
        Ok(edge)
    }
}

/// The events by depth (enough to ask for the oldest auth chains first).
fn causal_order_ref(events: &[super::Prepared]) -> Vec<&super::Prepared> {
    let mut refs: Vec<&super::Prepared> = events.iter().collect();
    refs.sort_by_key(|e| e.pdu.depth);
    refs
}
