//! State at a past event, from the chain of state events and the periodic full snapshots.

use ruma::events::StateEventType;

use super::{EventMetaTable, Rooms, StateSnapshots, StoredEvent, SNAPSHOT_EVERY};
use crate::error::Result;

/// Where the state "at" an event starts: a state event includes itself; any other event sees
/// the newest state event before it.
pub fn state_head(event: &StoredEvent) -> Option<u64> {
    if event.meta.state_key.is_some() {
        Some(event.sid)
    } else {
        event.meta.state_link
    }
}

impl Rooms {
    /// The sid of the state event for `(kind, state_key)` in the state whose newest state event
    /// is `head`. Walks at most `SNAPSHOT_EVERY` links before a full snapshot answers.
    pub fn state_at(
        &self,
        head: Option<u64>,
        kind: &StateEventType,
        state_key: &str,
    ) -> Result<Option<u64>> {
        let kind = kind.to_string();
        if let Some(state) = head.and_then(|head| self.cached_state_at(head)) {
            return Ok(state.get(&(kind, state_key.to_owned())).copied());
        }
        let mut cursor = head;
        // One link more than the snapshot interval: the walk always meets a snapshot or the
        // start of the chain before this bound.
        for _ in 0..=SNAPSHOT_EVERY + 1 {
            let Some(sid) = cursor else { return Ok(None) };
            let Some(meta) = self.store.get::<EventMetaTable>(&sid)? else {
                return Ok(None);
            };
            // A snapshot is the whole state after its event, the event itself included unless
            // a resolved fork replaced it (`build/fork.rs`): it answers first.
            if let Some(snapshot) = self.store.get::<StateSnapshots>(&sid)? {
                return Ok(snapshot
                    .entries
                    .iter()
                    .find(|(k, s, _)| *k == kind && s == state_key)
                    .map(|(_, _, sid)| *sid));
            }
            if meta.kind == kind && meta.state_key.as_deref() == Some(state_key) {
                return Ok(Some(sid));
            }
            cursor = meta.state_link;
        }
        log::error!("state chain from {head:?} has no snapshot within {SNAPSHOT_EVERY} links");
        Ok(None)
    }

    /// The whole state whose newest state event is `head`, as `(type, state_key, sid)` in
    /// key order.
    pub fn full_state_at(&self, head: Option<u64>) -> Result<Vec<(String, String, u64)>> {
        Ok(self
            .state_map_at(head)?
            .iter()
            .map(|((kind, key), sid)| (kind.clone(), key.clone(), *sid))
            .collect())
    }
}
