//! The full state at recently read state heads, shared by every reader: when one event wakes
//! fifty syncs of a room, the state at its head (for their state sections and history
//! visibility checks) is put together from the chain and snapshots once, not fifty times.
//!
//! The state whose newest state event is `head` never changes once stored, with two
//! exceptions that rewrite snapshots in place: the completion of a partial-state join
//! (`partial_state.rs`) and the un-acceptance of events after a resync (`build/unaccept.rs`).
//! Both call [`StateCache::clear`] after their batch commits. A reader notes the generation
//! before it reads the store and keeps its result only if no clear happened meanwhile, so a
//! state read from the old rows is never kept past a clear.
//!
//! Memory is bounded by [`CACHED_ENTRIES`] state entries over all heads; the oldest heads
//! are let go first.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use super::{EventMetaTable, Rooms, StateSnapshots, SNAPSHOT_EVERY};
use crate::error::Result;

/// A room's state: `(event type, state key) → sid`.
pub type StateMap = BTreeMap<(String, String), u64>;

/// Most state entries kept over all cached heads (about 100 bytes each).
const CACHED_ENTRIES: usize = 50_000;

#[derive(Default)]
pub struct StateCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Bumped by every clear.
    generation: u64,
    heads: HashMap<u64, Arc<StateMap>>,
    /// Insertion order, for eviction.
    order: VecDeque<u64>,
    entries: usize,
}

impl StateCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, head: u64) -> Option<Arc<StateMap>> {
        self.lock().heads.get(&head).cloned()
    }

    fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Keeps `state` for `head` unless a clear happened since `generation` was read.
    fn insert(&self, generation: u64, head: u64, state: Arc<StateMap>) {
        let mut inner = self.lock();
        if inner.generation != generation
            || state.len() > CACHED_ENTRIES
            || inner.heads.contains_key(&head)
        {
            return;
        }
        while inner.entries + state.len() > CACHED_ENTRIES {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(gone) = inner.heads.remove(&oldest) {
                inner.entries -= gone.len();
            }
        }
        inner.entries += state.len();
        inner.order.push_back(head);
        inner.heads.insert(head, state);
    }

    /// Forgets every cached state; call it after a commit that rewrote stored snapshots.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.heads.clear();
        inner.order.clear();
        inner.entries = 0;
    }
}

impl Rooms {
    /// The whole state whose newest state event is `head` (shared; see the module doc).
    pub fn state_map_at(&self, head: Option<u64>) -> Result<Arc<StateMap>> {
        let Some(head) = head else {
            return Ok(Arc::default());
        };
        if let Some(state) = self.state_cache.get(head) {
            return Ok(state);
        }
        let generation = self.state_cache.generation();
        let state = Arc::new(self.read_state_at(head)?);
        self.state_cache.insert(generation, head, state.clone());
        Ok(state)
    }

    /// Forgets every cached state and member summary (`member_summary.rs`): for writers that
    /// rewrite stored snapshots or members in place, after their batch commits (see the
    /// module doc).
    pub fn forget_cached_states(&self) {
        self.state_cache.clear();
        self.forget_member_summary();
    }

    /// The state at `head` when it is cached, without reading the store.
    pub(super) fn cached_state_at(&self, head: u64) -> Option<Arc<StateMap>> {
        self.state_cache.get(head)
    }

    /// The state at `head` from the store: the chain of state events back to the nearest
    /// full snapshot.
    fn read_state_at(&self, head: u64) -> Result<StateMap> {
        let mut seen = StateMap::new();
        let mut cursor = Some(head);
        for _ in 0..=SNAPSHOT_EVERY + 1 {
            let Some(sid) = cursor else { break };
            let Some(meta) = self.store.get::<EventMetaTable>(&sid)? else {
                break;
            };
            if let Some(snapshot) = self.store.get::<StateSnapshots>(&sid)? {
                for (kind, key, sid) in snapshot.entries {
                    seen.entry((kind, key)).or_insert(sid);
                }
                break;
            }
            if let Some(key) = &meta.state_key {
                seen.entry((meta.kind.clone(), key.clone())).or_insert(sid);
            }
            cursor = meta.state_link;
        }
        Ok(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(n: usize) -> Arc<StateMap> {
        Arc::new(
            (0..n)
                .map(|i| (("m.room.member".to_owned(), format!("@u{i}:x")), i as u64))
                .collect(),
        )
    }

    #[test]
    fn bounded_and_cleared() {
        let cache = StateCache::default();
        let generation = cache.generation();
        cache.insert(generation, 1, state(CACHED_ENTRIES / 2));
        cache.insert(generation, 2, state(CACHED_ENTRIES / 2));
        assert!(cache.get(1).is_some() && cache.get(2).is_some());
        // A third head lets the oldest go.
        cache.insert(generation, 3, state(10));
        assert!(cache.get(1).is_none() && cache.get(2).is_some() && cache.get(3).is_some());
        // Too big for the cache at all: not kept.
        cache.insert(generation, 4, state(CACHED_ENTRIES + 1));
        assert!(cache.get(4).is_none());
        // A read that started before a clear is not kept after it.
        cache.clear();
        assert!(cache.get(2).is_none());
        cache.insert(generation, 5, state(1));
        assert!(cache.get(5).is_none());
        cache.insert(cache.generation(), 5, state(1));
        assert!(cache.get(5).is_some());
    }
}
