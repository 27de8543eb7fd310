//! Events read since the store's last commit, decoded once and shared by every reader: when
//! one new event wakes fifty syncs of a room, each reads it (and the event before it, for the
//! state head), and without this each would parse the stored JSON twice over.
//!
//! Entries are valid for one commit epoch ([`crate::store::Store::commit_epoch`]): a reader notes the
//! epoch before it reads the store, serves entries only of that epoch and keeps what it read
//! only under it; the first reader of a newer epoch drops them all. Since every write,
//! redactions (which rewrite an event) included, starts a new epoch before it is
//! acknowledged, an entry is what a read of the store would give every reader of its epoch.
//! Memory is bounded by [`CACHED_EVENTS`].
//!
//! Beside each event kept, the serialised parts of its client form that every viewer shares
//! ([`ClientJsonParts`]), made by the first reader that serves it: the receivers one event
//! wakes copy its JSON text instead of each building and serialising it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use super::{format::ClientJsonParts, Rooms, StoredEvent};
use crate::error::Result;

/// Most events kept (a few KiB each; a wake-up of 50 rooms reads about 100); the map starts
/// over when full.
const CACHED_EVENTS: usize = 128;

#[derive(Default)]
pub struct RecentEvents {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The commit epoch the entries were read in.
    epoch: u64,
    entries: HashMap<u64, Entry>,
}

/// An event kept, with its client JSON parts once a reader made them.
struct Entry {
    event: Arc<StoredEvent>,
    client: Option<Arc<ClientJsonParts>>,
}

impl RecentEvents {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Entries are whole values, inserted in one step: a panicking holder leaves them valid.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The event at `sid` read in `epoch`, if any.
    fn get(&self, epoch: u64, sid: u64) -> Option<Arc<StoredEvent>> {
        let mut inner = self.lock();
        inner
            .at(epoch)
            .then(|| inner.entries.get(&sid).map(|e| e.event.clone()))?
    }

    /// Keeps `event`, read in `epoch`, unless a newer epoch began meanwhile.
    fn keep(&self, epoch: u64, event: &Arc<StoredEvent>) {
        let mut inner = self.lock();
        if inner.at(epoch) {
            if inner.entries.len() >= CACHED_EVENTS {
                inner.entries.clear();
            }
            let entry = Entry {
                event: event.clone(),
                client: None,
            };
            inner.entries.insert(event.sid, entry);
        }
    }

    /// The client JSON parts kept for `event` if it is the entry of `epoch`.
    fn client_of(&self, epoch: u64, event: &Arc<StoredEvent>) -> Option<Arc<ClientJsonParts>> {
        self.lock().entry_of(epoch, event)?.client.clone()
    }

    /// Keeps `parts` beside `event` if it is still the entry of `epoch`.
    fn keep_client(&self, epoch: u64, event: &Arc<StoredEvent>, parts: &Arc<ClientJsonParts>) {
        if let Some(entry) = self.lock().entry_of(epoch, event) {
            entry.client = Some(parts.clone());
        }
    }
}

impl Inner {
    /// The entry of `event` if it is `event` itself, of `epoch` (so the event was read in that
    /// epoch, not before a write that may have changed it).
    fn entry_of(&mut self, epoch: u64, event: &Arc<StoredEvent>) -> Option<&mut Entry> {
        if !self.at(epoch) {
            return None;
        }
        self.entries
            .get_mut(&event.sid)
            .filter(|entry| Arc::ptr_eq(&entry.event, event))
    }

    /// Moves to `epoch` when it is newer, dropping the older entries; whether the entries
    /// are of `epoch` (a reader of an older one neither serves nor keeps any).
    fn at(&mut self, epoch: u64) -> bool {
        if self.epoch < epoch {
            self.epoch = epoch;
            self.entries.clear();
        }
        self.epoch == epoch
    }
}

impl Rooms {
    /// [`Rooms::event_by_sid`], shared: decoded once per commit epoch for all readers (the
    /// syncs one event wakes).
    pub fn shared_event_by_sid(&self, sid: u64) -> Result<Option<Arc<StoredEvent>>> {
        let epoch = self.store.commit_epoch();
        if let Some(event) = self.recent_events.get(epoch, sid) {
            return Ok(Some(event));
        }
        let Some(event) = self.event_by_sid(sid)? else {
            return Ok(None);
        };
        let event = Arc::new(event);
        self.recent_events.keep(epoch, &event);
        Ok(Some(event))
    }

    /// The client JSON parts of an event from [`Rooms::shared_event_by_sid`], made once per
    /// commit epoch for all readers. An event read in an older epoch (a write may have changed
    /// it since) gets parts of its own, not kept.
    pub fn shared_client_json(&self, event: &Arc<StoredEvent>) -> Result<Arc<ClientJsonParts>> {
        let epoch = self.store.commit_epoch();
        if let Some(parts) = self.recent_events.client_of(epoch, event) {
            return Ok(parts);
        }
        let parts = Arc::new(self.client_json_parts(event)?);
        self.recent_events.keep_client(epoch, event, &parts);
        Ok(parts)
    }
}
