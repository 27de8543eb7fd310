//! Backfill (server-server API, "Backfilling and retrieving missing events"): when
//! `/messages` pages past the oldest event this server has of a room and that event's prev
//! events are unknown here, older events are asked of other servers in the room
//! (`/v1/backfill`, a few servers, a short time limit each), checked like received PDUs,
//! authorised against their auth events (fetched with `event_auth` when unknown, bounded),
//! and stored in the room's `backfill_timeline` (`rooms/backfill.rs`): readable through
//! `/messages` before what was here, never new to `/sync`.

use std::{collections::HashSet, time::Duration};

use ruma::{events::TimelineEventType, OwnedEventId, OwnedServerName, RoomId, ServerName, UserId};
use serde_json::value::RawValue as RawJsonValue;

use super::{causal_order, checks, Pdus, Ready};
use crate::{
    error::Result,
    service::{
        federation::fetch::RemoteEvents,
        rooms::{build::remote::Verdict, state::state_head, StoredEvent},
    },
};

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
        if self.missed_recently(room_id) {
            return Ok(0);
        }
        let stored = self
            .backfill_from_servers(&*remote, room_id, room.sid, &oldest, limit)
            .await?;
        let mut misses = self
            .backfill_misses
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if stored == 0 {
            if misses.len() >= MAX_MISSES {
                misses.retain(|_, at| at.elapsed() < RETRY_AFTER);
            }
            misses.insert(room_id.to_owned(), std::time::Instant::now());
        } else {
            misses.remove(room_id);
        }
        Ok(stored)
    }

    /// Whether a backfill of the room brought nothing less than [`RETRY_AFTER`] ago.
    fn missed_recently(&self, room_id: &RoomId) -> bool {
        let misses = self
            .backfill_misses
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        misses
            .get(room_id)
            .is_some_and(|at| at.elapsed() < RETRY_AFTER)
    }

    async fn backfill_from_servers(
        &self,
        remote: &dyn RemoteEvents,
        room_id: &RoomId,
        room_sid: u64,
        oldest: &StoredEvent,
        limit: u32,
    ) -> Result<usize> {
        for server in self.backfill_servers(room_sid)? {
            let from = vec![oldest.pdu.event_id.clone()];
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
                .store_backfilled(remote, &server, room_id, oldest, raws)
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

    /// Checks, authorises and stores a backfill answer before `oldest`.
    async fn store_backfilled<'r>(
        &self,
        remote: &dyn RemoteEvents,
        server: &ServerName,
        room_id: &RoomId,
        oldest: &StoredEvent,
        raws: impl Iterator<Item = &'r RawJsonValue>,
    ) -> Result<usize> {
        let Some(rules) = self.room_rules(room_id) else {
            return Ok(0);
        };
        let mut prepared = Vec::new();
        let mut seen = HashSet::new();
        for raw in raws {
            let id = checks::parse(raw)
                .ok()
                .and_then(|object| checks::event_id(&object, &rules).ok());
            let Some(id) = id else { continue };
            // Outliers (the state and auth chain of a join) are history too: they take their
            // place among the backfilled events.
            if !seen.insert(id.clone()) {
                continue;
            }
            if self.unplaced(&id)? {
                // Verified when it was stored: taken as it is here.
                if let Some(stored) = self.rooms.event(&id)? {
                    prepared.push(super::Prepared {
                        event_id: id,
                        pdu: stored.pdu,
                        object: stored.json,
                        fetched_state: Vec::new(),
                    });
                }
                continue;
            }
            if self.rooms.is_stored(&id)? {
                continue;
            }
            match self.prepare(server, raw).await {
                // Only history: nothing newer than what was here.
                Ok(Ready::Room(in_room, event))
                    if in_room == room_id && event.pdu.depth <= oldest.meta.depth =>
                {
                    prepared.push(*event);
                }
                Ok(_) => log::info!("backfilled event {id} from {server} is not older history"),
                Err((_, e)) => log::info!("backfilled event {id} from {server} dropped: {e}"),
            }
        }
        if prepared.is_empty() {
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
        // Oldest first, so each sees the ones it cites; placed below what is here, in the same
        // order.
        let floor = staged.backfill_floor()?;
        let count = ordered.len() as u64;
        let link = state_head(oldest);
        let mut stored = 0;
        for (index, event) in ordered.iter().enumerate() {
            let seq = floor - (count - index as u64);
            if self.unplaced(&event.event_id)? {
                let sid = self.rooms.event_sid(&event.event_id)?.unwrap_or_default();
                staged.place_outlier_in_backfill(sid, seq, link)?;
                stored += 1;
                continue;
            }
            if staged.knows(&event.event_id)? {
                continue;
            }
            match staged.authorise_outlier(&event.pdu)? {
                Verdict::Accepted => {
                    staged.add_backfilled(&event.pdu, &event.object, seq, link)?;
                    stored += 1;
                }
                verdict => log::info!(
                    "backfilled event {} from {server} not stored: {verdict:?}",
                    event.event_id
                ),
            }
        }
        if stored > 0 {
            staged.commit().await?;
        }
        Ok(stored)
    }
}

/// The events by depth (enough to ask for the oldest auth chains first).
fn causal_order_ref(events: &[super::Prepared]) -> Vec<&super::Prepared> {
    let mut refs: Vec<&super::Prepared> = events.iter().collect();
    refs.sort_by_key(|e| e.pdu.depth);
    refs
}
