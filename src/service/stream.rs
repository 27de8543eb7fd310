//! The global stream position: one counter orders everything persistent that a client syncs
//! (timeline events now; account data, receipts, to-device, device lists later).
//!
//! Positions are handed out from blocks reserved durably ahead of use, so a restart never
//! reuses a position (it may skip the rest of a block, which is harmless: positions need to be
//! unique and increasing, not dense). A position is *pending* from allocation until the write
//! that uses it has committed (or failed); [`Stream::current`] is the highest position below
//! which nothing is pending, so a reader that stops there never skips a write that commits
//! late.

use std::{collections::BTreeSet, sync::Mutex};

use crate::{
    store::{Batch, Store, StoreError},
    table,
};

table!(
    /// `() → u64`: every position below this value may have been handed out.
    pub StreamReserved: "stream_reserved", () => u64
);

const BLOCK: u64 = 1000;

struct Counter {
    next: u64,
    reserved: u64,
    pending: BTreeSet<u64>,
}

pub struct Stream {
    store: Store,
    /// Allocation state; held only for arithmetic, and across the rare reservation commit.
    counter: Mutex<Counter>,
}

/// A position in use by a write that has not committed yet. Dropping it (after the commit,
/// or on failure) makes the position count as settled.
pub struct Pending<'a> {
    stream: &'a Stream,
    pub pos: u64,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let mut counter = self.stream.lock();
        counter.pending.remove(&self.pos);
    }
}

impl Stream {
    pub fn open(store: Store) -> Result<Self, StoreError> {
        let reserved = store.get::<StreamReserved>(&())?.unwrap_or(1);
        Ok(Self {
            store,
            counter: Mutex::new(Counter {
                next: reserved,
                reserved,
                pending: BTreeSet::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counter> {
        self.counter.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Allocates the next position. Reserving a new block is a blocking durable write; it
    /// happens once per `BLOCK` positions.
    pub fn allocate(&self) -> Result<Pending<'_>, StoreError> {
        let mut counter = self.lock();
        if counter.next >= counter.reserved {
            let reserved = counter.next + BLOCK;
            let mut batch = Batch::new();
            batch.put::<StreamReserved>(&(), &reserved);
            self.store.commit_blocking(batch).map_err(|e| match e {
                crate::store::CommitError::Store(e) => e,
                crate::store::CommitError::Conflict => {
                    StoreError::Io("stream reservation conflict".into())
                }
            })?;
            counter.reserved = reserved;
        }
        let pos = counter.next;
        counter.next += 1;
        counter.pending.insert(pos);
        Ok(Pending { stream: self, pos })
    }

    /// The highest position such that every write at or below it has settled.
    pub fn current(&self) -> u64 {
        let counter = self.lock();
        match counter.pending.first() {
            Some(&lowest) => lowest - 1,
            None => counter.next - 1,
        }
    }
}
