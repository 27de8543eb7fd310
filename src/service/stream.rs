//! The global stream position: one counter orders everything persistent that a client syncs
//! (timeline events, account data, receipts, presence, to-device messages, device lists).
//!
//! Positions are handed out from blocks reserved durably ahead of use, so a restart never
//! reuses a position (it may skip the rest of a block, which is harmless: positions need to be
//! unique and increasing, not dense). A position is *pending* from allocation until the write
//! that uses it has been applied (or has failed); [`Stream::current`] is the highest position
//! below which nothing is pending, so a reader that stops there never skips a write that
//! commits late.
//!
//! Writes that use positions go through [`Stream::commit`], which runs the commit, the release
//! of the positions and the wake-up of waiting syncs in a task of its own: a client that
//! disconnects mid-request cannot release a position before its write lands.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;

use crate::{
    store::{Batch, CommitError, Store, StoreError},
    table,
};

table!(
    /// `() → u64`: every position below this value may have been handed out.
    pub StreamReserved: "stream_reserved", () => u64
);

/// Positions reserved per durable reservation. Large, so that the blocking reservation write
/// (under the counter lock) is rare; a restart skips at most this many positions.
const BLOCK: u64 = 100_000;

struct Counter {
    next: u64,
    reserved: u64,
    pending: BTreeSet<u64>,
}

impl Counter {
    fn current(&self) -> u64 {
        match self.pending.first() {
            Some(&lowest) => lowest - 1,
            None => self.next - 1,
        }
    }
}

pub struct Stream {
    store: Store,
    /// Allocation state; held only for arithmetic, and across the rare reservation commit.
    counter: Mutex<Counter>,
    /// The settled position ([`Stream::current`]), published whenever it advances.
    settled: watch::Sender<u64>,
}

/// A position in use by a write that has not been applied yet. Dropping it (after the commit,
/// or on failure) makes the position count as settled.
pub struct Pending {
    stream: Arc<Stream>,
    pub pos: u64,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let current = {
            let mut counter = self.stream.lock();
            counter.pending.remove(&self.pos);
            counter.current()
        };
        self.stream.settled.send_if_modified(|settled| {
            let advanced = current > *settled;
            if advanced {
                *settled = current;
            }
            advanced
        });
    }
}

impl Stream {
    pub fn open(store: Store) -> Result<Self, StoreError> {
        let reserved = store.get::<StreamReserved>(&())?.unwrap_or(1);
        let (settled, _) = watch::channel(reserved - 1);
        Ok(Self {
            store,
            counter: Mutex::new(Counter {
                next: reserved,
                reserved,
                pending: BTreeSet::new(),
            }),
            settled,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counter> {
        self.counter.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Allocates the next position. Reserving a new block is a blocking durable write; it
    /// happens once per `BLOCK` positions.
    pub fn allocate(self: &Arc<Self>) -> Result<Pending, StoreError> {
        let mut counter = self.lock();
        if counter.next >= counter.reserved {
            let reserved = counter.next + BLOCK;
            let mut batch = Batch::new();
            batch.put::<StreamReserved>(&(), &reserved);
            self.store.commit_blocking(batch).map_err(|e| match e {
                CommitError::Store(e) => e,
                CommitError::Conflict => StoreError::Io("stream reservation conflict".into()),
            })?;
            counter.reserved = reserved;
        }
        let pos = counter.next;
        counter.next += 1;
        counter.pending.insert(pos);
        Ok(Pending {
            stream: self.clone(),
            pos,
        })
    }

    /// The highest position such that every write at or below it has settled.
    pub fn current(&self) -> u64 {
        self.lock().current()
    }

    /// Watches the settled position: changes whenever any write settles. For waits that the
    /// per-user notifier cannot serve (a peek at a room the user is not in).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.settled.subscribe()
    }

    /// Commits `batch`, which uses `positions`, then releases them and `hold` (e.g. a room
    /// lock), in that order, in a task of its own, so the sequence completes even if the
    /// caller is dropped. Once the positions have settled — every lower position too, so a
    /// sync woken then can read them — `wake` runs (typically waking the syncs the write
    /// concerns). Returns the commit's result.
    pub async fn commit<H, W>(
        self: &Arc<Self>,
        store: &Store,
        batch: Batch,
        positions: Vec<Pending>,
        hold: H,
        wake: W,
    ) -> Result<(), CommitError>
    where
        H: Send + 'static,
        W: FnOnce() + Send + 'static,
    {
        self.commit_then(store, batch, positions, hold, |_| {}, wake)
            .await
    }

    /// [`Stream::commit`], with `done` told the commit's result in the commit task, once its
    /// positions are released and before `hold` is: it runs even if the caller is dropped meanwhile, so others waiting
    /// on this write (a batch of queued sends) always learn its outcome.
    pub async fn commit_then<H, D, W>(
        self: &Arc<Self>,
        store: &Store,
        batch: Batch,
        positions: Vec<Pending>,
        hold: H,
        done: D,
        wake: W,
    ) -> Result<(), CommitError>
    where
        H: Send + 'static,
        D: FnOnce(&Result<(), CommitError>) + Send + 'static,
        W: FnOnce() + Send + 'static,
    {
        let top = positions.iter().map(|p| p.pos).max();
        let store = store.clone();
        let stream = self.clone();
        let task = tokio::spawn(async move {
            let result = store.commit(batch).await;
            drop(positions);
            done(&result);
            drop(hold);
            if result.is_ok() {
                match top {
                    Some(top) => {
                        // Waking before lower positions settle would let a woken sync stop
                        // short of this write and then sleep through it.
                        tokio::spawn(async move {
                            let mut settled = stream.settled.subscribe();
                            let _ = settled.wait_for(|s| *s >= top).await;
                            wake();
                        });
                    }
                    None => wake(),
                }
            }
            result
        });
        task.await
            .map_err(|e| CommitError::Store(StoreError::Io(format!("commit task failed: {e}"))))?
    }
}
