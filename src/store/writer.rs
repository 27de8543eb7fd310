//! Group commit: one thread owns all writing.
//!
//! Committers send their batches over a channel and wait on a reply. The writer thread blocks
//! for the first job, takes every other job already waiting (up to `MAX_GROUP` batches), applies
//! them all in one engine transaction with one fsync, and answers each job. While it is busy
//! with one group the next one queues up, so under load many commits share each fsync, and a
//! lone commit waits for exactly one.
//!
//! Because one thread applies jobs in the order they were sent, a caller that sends jobs in a
//! known order (under its own lock) knows they are applied in that order; the short-id allocator
//! relies on this.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::engine::{Conflict, Engine, Op};
use super::{CommitStats, StoreError};

/// Bounds the size of one engine transaction (memory held by the group, latency of its fsync).
const MAX_GROUP: usize = 1024;

/// The outcome of one job: per batch, applied or conflicted; or an error for the whole group.
pub(crate) type JobResult = Result<Vec<Result<(), Conflict>>, StoreError>;

enum Reply {
    Async(oneshot::Sender<JobResult>),
    // `oneshot::Receiver::blocking_recv` panics inside a runtime; a std channel only blocks.
    Blocking(mpsc::SyncSender<JobResult>),
}

impl Reply {
    fn send(self, result: JobResult) {
        // A waiter that went away (dropped future) does not care about the answer.
        match self {
            Reply::Async(tx) => {
                let _ = tx.send(result);
            }
            Reply::Blocking(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

struct Job {
    batches: Vec<Vec<Op>>,
    reply: Reply,
}

#[derive(Default)]
struct Stats {
    transactions: AtomicU64,
    batches: AtomicU64,
}

pub(crate) struct Writer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<Stats>,
}

impl Writer {
    /// `gate` is held for reading around every engine transaction, so a holder of its write
    /// side (a backup of an engine without snapshots) sees no write land meanwhile.
    pub(crate) fn start(
        engine: Arc<dyn Engine>,
        gate: Arc<std::sync::RwLock<()>>,
    ) -> Result<Writer, StoreError> {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(engine, rx, &thread_stats, &gate))
            .map_err(|e| StoreError::Io(format!("cannot start the store writer thread: {e}")))?;
        Ok(Writer {
            tx: Some(tx),
            thread: Some(thread),
            stats,
        })
    }

    fn send(&self, batches: Vec<Vec<Op>>, reply: Reply) -> Result<(), StoreError> {
        let tx = self.tx.as_ref().ok_or(StoreError::Closed)?;
        tx.send(Job { batches, reply })
            .map_err(|_| StoreError::Closed)
    }

    /// Queues `batches` as one job; they land in the same engine transaction.
    pub(crate) fn submit(
        &self,
        batches: Vec<Vec<Op>>,
    ) -> Result<oneshot::Receiver<JobResult>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(batches, Reply::Async(tx))?;
        Ok(rx)
    }

    pub(crate) fn submit_blocking(
        &self,
        batches: Vec<Vec<Op>>,
    ) -> Result<mpsc::Receiver<JobResult>, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(batches, Reply::Blocking(tx))?;
        Ok(rx)
    }

    /// Engine transactions applied so far (see `Store::commit_epoch`).
    pub(crate) fn epoch(&self) -> u64 {
        self.stats.transactions.load(Ordering::Acquire)
    }

    pub(crate) fn stats(&self) -> CommitStats {
        CommitStats {
            transactions: self.stats.transactions.load(Ordering::Relaxed),
            batches: self.stats.batches.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it has answered what is queued; joining
        // means the engine is released (file locks dropped) when the last store handle is.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    engine: Arc<dyn Engine>,
    rx: mpsc::Receiver<Job>,
    stats: &Stats,
    gate: &std::sync::RwLock<()>,
) {
    while let Ok(first) = rx.recv() {
        let mut count = first.batches.len();
        let mut jobs = vec![first];
        while count < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => {
                    count += job.batches.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }

        let mut lens = Vec::with_capacity(jobs.len());
        let mut all = Vec::with_capacity(count);
        let mut replies = Vec::with_capacity(jobs.len());
        for job in jobs {
            lens.push(job.batches.len());
            all.extend(job.batches);
            replies.push(job.reply);
        }

        let paused = gate.read().unwrap_or_else(|p| p.into_inner());
        let applied = catch_unwind(AssertUnwindSafe(|| engine.apply(&all)));
        drop(paused);
        let outcome = match applied {
            Ok(Ok(results)) if results.len() == all.len() => Ok(results),
            Ok(Ok(results)) => Err(StoreError::Io(format!(
                "engine answered {} results for {} batches",
                results.len(),
                all.len()
            ))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Io(
                "the storage engine panicked during a commit".into(),
            )),
        };
        // Counted before anyone is answered, and released: a reader that sees the count
        // sees what the commit wrote (`Store::commit_epoch`).
        stats.transactions.fetch_add(1, Ordering::Release);
        stats.batches.fetch_add(all.len() as u64, Ordering::Relaxed);

        match outcome {
            Ok(results) => {
                let mut results = results.into_iter();
                for (reply, len) in replies.into_iter().zip(lens) {
                    reply.send(Ok(results.by_ref().take(len).collect()));
                }
            }
            Err(e) => {
                log::error!("store commit failed: {e}");
                for reply in replies {
                    reply.send(Err(e.clone()));
                }
            }
        }
    }
}
