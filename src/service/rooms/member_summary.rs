//! A room's member counts and hero candidates as syncs show them (`summary`), shared by every
//! sync of the room: one event waking fifty members reads the member list once, not fifty
//! times.
//!
//! An entry is keyed by the room's `last_state`: every change of a room's members comes with
//! a new state event, except the two writers that change members in place (a partial-state
//! join completing, events un-accepted after a resync). They call
//! [`Rooms::forget_cached_states`] after their batch commits; a reader keeps what it read
//! only if no such call happened since it started (a generation count), so a summary read
//! from the old rows never outlives the call. Bounded by [`CACHED_ROOMS`].

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use super::{RoomRecord, Rooms};
use crate::error::Result;

/// Rooms whose summary is kept; the map starts over when full.
const CACHED_ROOMS: usize = 1024;

/// Hero candidates kept: enough to leave out the syncing user and still name five.
const CANDIDATES: usize = 6;

/// What a sync's room summary needs of the member list.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberSummary {
    pub joined: usize,
    pub invited: usize,
    /// The first joined or invited members in member-list order.
    pub candidates: Vec<String>,
}

impl MemberSummary {
    fn of(members: &[(String, String)]) -> Self {
        let current = |m: &str| m == "join" || m == "invite";
        Self {
            joined: members.iter().filter(|(_, m)| m == "join").count(),
            invited: members.iter().filter(|(_, m)| m == "invite").count(),
            candidates: members
                .iter()
                .filter(|(_, m)| current(m))
                .map(|(u, _)| u.clone())
                .take(CANDIDATES)
                .collect(),
        }
    }

    /// Up to five heroes: the candidates other than `user_id`.
    pub fn heroes<'a>(&'a self, user_id: &str, count: usize) -> Vec<&'a str> {
        self.candidates
            .iter()
            .filter(|u| *u != user_id)
            .map(String::as_str)
            .take(count)
            .collect()
    }
}

#[derive(Default)]
pub struct SummaryCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    generation: u64,
    /// `room sid → (last_state, summary)`.
    rooms: HashMap<u64, (Option<u64>, Arc<MemberSummary>)>,
}

impl SummaryCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Rooms {
    /// The member summary of a room as of its record's `last_state`.
    pub fn member_summary(&self, record: &RoomRecord) -> Result<Arc<MemberSummary>> {
        let generation = {
            let inner = self.member_summaries.lock();
            if let Some((at, summary)) = inner.rooms.get(&record.sid) {
                if *at == record.last_state {
                    return Ok(summary.clone());
                }
            }
            inner.generation
        };
        let summary = Arc::new(MemberSummary::of(&self.members(record.sid)?));
        let mut inner = self.member_summaries.lock();
        if inner.generation == generation {
            if inner.rooms.len() >= CACHED_ROOMS {
                inner.rooms.clear();
            }
            inner
                .rooms
                .insert(record.sid, (record.last_state, summary.clone()));
        }
        Ok(summary)
    }

    /// Forgets every summary: for writers that change members without a new state event,
    /// after their batch commits.
    pub(super) fn forget_member_summary(&self) {
        let mut inner = self.member_summaries.lock();
        inner.generation += 1;
        inner.rooms.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::MemberSummary;

    #[test]
    fn counts_and_heroes() {
        let members: Vec<(String, String)> = [
            ("@a:x", "join"),
            ("@b:x", "leave"),
            ("@c:x", "invite"),
            ("@d:x", "join"),
        ]
        .iter()
        .map(|(u, m)| (u.to_string(), m.to_string()))
        .collect();
        let summary = MemberSummary::of(&members);
        assert_eq!((summary.joined, summary.invited), (2, 1));
        assert_eq!(summary.heroes("@a:x", 5), ["@c:x", "@d:x"]);
        assert_eq!(summary.heroes("@z:x", 2), ["@a:x", "@c:x"]);
    }
}
