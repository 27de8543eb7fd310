//! Power cuts under the store's default engine (redb). SIGKILL (`store::crash`) cannot show a
//! missing fsync: the kernel's page cache survives the process. Here the store runs on a
//! redb storage backend that keeps two states: what the process has written (volatile) and
//! what the last completed `sync_data` covered (the medium). At a power cut, at an arbitrary
//! I/O operation of the running store (in the middle of a commit as often as between two), the
//! medium keeps only what was synced plus, depending on the seed, none, all or a random subset
//! of the 512-byte sectors written since (a disk may persist some sectors and not others). A
//! database is then opened on those bytes (with redb's repair, as after any crash) and every
//! commit that returned `Ok` before the cut must be there, every batch whole or absent.
//!
//! The test has teeth: the same workload with the store committing without fsync
//! (`CommitSync::SkipFsync`, redb's `Durability::None`) loses acknowledged batches.
//!
//! Not covered: sled (it has no pluggable storage layer), and the disk honouring fsync.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hearth::store::{Batch, CommitSync, Raw, Store};
use hearth::table;

table!(Counts: "power_counts", u64 => u64);
table!(Records: "power_records", (u64, u64) => Raw);
table!(Tags: "power_tags", (u64, u64, u64) => bool);

pub(super) const CACHE: u64 = 1 << 20;
const WRITERS: u64 = 4;
/// Batches per writer and round.
const BATCHES: u64 = 24;
const SECTOR: usize = 512;
/// Fails the test instead of hanging if something is very slow.
const BUDGET: Duration = Duration::from_secs(60);

/// splitmix64: a small deterministic generator, so a failing seed can be replayed.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Which unsynced sectors reach the medium at the cut.
#[derive(Debug, Clone, Copy)]
pub(super) enum Torn {
    /// None: the medium is exactly what the last completed sync covered.
    Nothing,
    /// All of them, as if the cut came just before the sync would have completed.
    Everything,
    /// Each sector independently, with probability one half.
    Random,
}

enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

struct DiskState {
    /// What the process reads back: every write and resize so far.
    volatile: Vec<u8>,
    /// What the medium holds: the state as of the last completed `sync_data`.
    durable: Vec<u8>,
    /// Writes (split into sectors) and resizes since the last completed sync, in order.
    pending: Vec<Pending>,
    /// Mutating operations (write, set_len, sync_data) so far.
    ops: u64,
    /// The operation at which the power goes (it does not happen).
    cut_at: Option<u64>,
    /// The medium after the cut; once set, every operation fails.
    image: Option<Vec<u8>>,
    torn: Torn,
    rng: Rng,
}

fn apply(bytes: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write(offset, data) => {
            let start = *offset as usize;
            if bytes.len() < start + data.len() {
                bytes.resize(start + data.len(), 0);
            }
            bytes[start..start + data.len()].copy_from_slice(data);
        }
        Pending::SetLen(len) => bytes.resize(*len as usize, 0),
    }
}

impl DiskState {
    fn cut(&mut self) {
        let mut image = self.durable.clone();
        for op in &self.pending {
            let keep = match self.torn {
                Torn::Nothing => false,
                Torn::Everything => true,
                Torn::Random => self.rng.next() & 1 == 1,
            };
            if keep {
                apply(&mut image, op);
            }
        }
        self.pending.clear();
        self.image = Some(image);
    }

    /// Counts a mutating operation; `Err` once the power is off (including for this one).
    fn operate(&mut self) -> std::io::Result<()> {
        if self.image.is_none() {
            self.ops += 1;
            if self.cut_at == Some(self.ops) {
                self.cut();
            }
        }
        match self.image {
            Some(_) => Err(std::io::Error::other("power cut")),
            None => Ok(()),
        }
    }
}

/// The fault-injecting redb backend; clones share one disk.
#[derive(Clone)]
pub(super) struct Disk(Arc<Mutex<DiskState>>);

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Disk")
    }
}

impl Disk {
    /// A disk holding `bytes`, all of them durable.
    pub(super) fn new(bytes: Vec<u8>, torn: Torn, seed: u64) -> Self {
        Disk(Arc::new(Mutex::new(DiskState {
            volatile: bytes.clone(),
            durable: bytes,
            pending: Vec::new(),
            ops: 0,
            cut_at: None,
            image: None,
            torn,
            rng: Rng(seed),
        })))
    }

    fn state(&self) -> MutexGuard<'_, DiskState> {
        self.0.lock().unwrap()
    }

    /// The power goes at the `n`th mutating operation from now.
    pub(super) fn arm(&self, n: u64) {
        let mut s = self.state();
        s.cut_at = Some(s.ops + n);
    }

    pub(super) fn is_cut(&self) -> bool {
        self.state().image.is_some()
    }

    /// Cuts the power now if it is still on, and returns what the medium holds.
    pub(super) fn cut_now(&self) -> Vec<u8> {
        let mut s = self.state();
        if s.image.is_none() {
            s.cut();
        }
        s.image.clone().unwrap()
    }

    pub(super) fn ops(&self) -> u64 {
        self.state().ops
    }
}

fn off() -> std::io::Error {
    std::io::Error::other("power cut")
}

impl redb::StorageBackend for Disk {
    fn len(&self) -> std::io::Result<u64> {
        let s = self.state();
        match s.image {
            Some(_) => Err(off()),
            None => Ok(s.volatile.len() as u64),
        }
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let s = self.state();
        if s.image.is_some() {
            return Err(off());
        }
        let start = offset as usize;
        let source = s
            .volatile
            .get(start..start + out.len())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "past end"))?;
        out.copy_from_slice(source);
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut s = self.state();
        s.operate()?;
        s.volatile.resize(len as usize, 0);
        s.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        let mut s = self.state();
        s.operate()?;
        let pending = std::mem::take(&mut s.pending);
        for op in &pending {
            apply(&mut s.durable, op);
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut s = self.state();
        s.operate()?;
        apply(&mut s.volatile, &Pending::Write(offset, data.to_vec()));
        // Sector by sector, so that a cut can keep part of one write.
        let mut at = 0;
        while at < data.len() {
            let sector_end = (offset as usize + at) / SECTOR * SECTOR + SECTOR;
            let end = (sector_end - offset as usize).min(data.len());
            s.pending
                .push(Pending::Write(offset + at as u64, data[at..end].to_vec()));
            at = end;
        }
        Ok(())
    }
}

fn payload(writer: u64, i: u64) -> Vec<u8> {
    // Mostly small records, every fifth one spanning several pages.
    let len = if i % 5 == 4 {
        9_000
    } else {
        40 + (i * 37) % 300
    };
    (0..len).map(|n| (n ^ (writer * 31 + i)) as u8).collect()
}

fn tag(i: u64) -> u64 {
    i % 5
}

/// The record that batch `i` deletes (so freed pages are reused), if any.
fn deleted_by(i: u64) -> Option<u64> {
    (i >= 8 && i.is_multiple_of(3)).then(|| i - 8)
}

/// The batch that makes a writer's count `i + 1`: its record and tag, the count itself (with
/// the previous count as precondition) and the deletion of an old record and its tag.
fn batch(writer: u64, i: u64) -> Batch {
    let mut b = Batch::new();
    let previous = (i > 0).then_some(i);
    b.expect_value::<Counts>(&writer, previous.as_ref())
        .put::<Counts>(&writer, &(i + 1))
        .put::<Records>(&(writer, i), &Raw(payload(writer, i)))
        .put::<Tags>(&(tag(i), writer, i), &true);
    if let Some(old) = deleted_by(i) {
        b.delete::<Records>(&(writer, old))
            .delete::<Tags>(&(tag(old), writer, old));
    }
    b
}

/// Runs `BATCHES` more batches per writer on `store`, concurrently (group commit), until done
/// or the power goes. Returns per writer the count its last commit acknowledged before the
/// cut.
async fn workload(store: &Store, disk: &Disk, counts: &[u64]) -> Vec<u64> {
    let mut tasks = Vec::new();
    for (writer, &start) in counts.iter().enumerate() {
        let (store, disk) = (store.clone(), disk.clone());
        tasks.push(tokio::spawn(async move {
            let writer = writer as u64;
            let mut acked = start;
            for i in start..start + BATCHES {
                if let Err(e) = store.commit(batch(writer, i)).await {
                    assert!(disk.is_cut(), "commit failed with the power on: {e}");
                    break;
                }
                // Checked after `commit` returned: if the power is still on, the
                // acknowledgement came before the cut.
                if disk.is_cut() {
                    break;
                }
                acked = i + 1;
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.push(t.await.unwrap());
    }
    acked
}

/// Opens a store on `image` and checks it against the acknowledged counts: each writer's
/// count is at least what was acknowledged, at most what was attempted, and its records and
/// tags are exactly what that many whole batches leave. Returns the reopened store (on a
/// disk that tears as `torn` with `seed` at the next cut) and the counts found.
fn verify(
    image: Vec<u8>,
    (torn, seed): (Torn, u64),
    acked: &[u64],
    attempted: &[u64],
    what: &str,
) -> (Store, Disk, Vec<u64>) {
    let disk = Disk::new(image, torn, seed);
    let store = Store::open_redb_with_backend(disk.clone(), CACHE, CommitSync::Durable)
        .unwrap_or_else(|e| panic!("{what}: the database does not open after the cut: {e}"));
    let records = store.range::<Records>(None, false, usize::MAX).unwrap();
    let tags = store.range::<Tags>(None, false, usize::MAX).unwrap();
    let mut counts = Vec::new();
    for writer in 0..WRITERS {
        let count = store.get::<Counts>(&writer).unwrap().unwrap_or(0);
        let w = writer as usize;
        assert!(
            count >= acked[w],
            "{what}: writer {writer} had {} batches acknowledged, {count} survived",
            acked[w]
        );
        assert!(
            count <= attempted[w],
            "{what}: writer {writer} count {count}"
        );
        let expected: BTreeSet<u64> = (0..count)
            .filter(|j| !(0..count).any(|k| deleted_by(k) == Some(*j)))
            .collect();
        let found: BTreeSet<u64> = records
            .iter()
            .filter(|((w, _), _)| *w == writer)
            .map(|((_, i), value)| {
                assert_eq!(value.0, payload(writer, *i), "{what}: record {writer}/{i}");
                *i
            })
            .collect();
        assert_eq!(found, expected, "{what}: records of writer {writer}");
        let found_tags: BTreeSet<u64> = tags
            .iter()
            .filter(|((_, w, _), _)| *w == writer)
            .map(|((t, _, i), _)| {
                assert_eq!(*t, tag(*i), "{what}: tag of {writer}/{i}");
                *i
            })
            .collect();
        assert_eq!(found_tags, expected, "{what}: tags of writer {writer}");
        counts.push(count);
    }
    (store, disk, counts)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// One seed: a fresh database, then `rounds` rounds of workload, each ended by a power cut at
/// a seeded operation (or after the workload, if it finished first) and checked on reopening.
/// Returns how many batches were acknowledged and how many were lost.
fn power_cycles(seed: u64, sync: CommitSync, rounds: usize, cut_within: Option<u64>) -> (u64, u64) {
    let mut rng = Rng(seed);
    let torn = match seed % 3 {
        0 => Torn::Nothing,
        1 => Torn::Everything,
        _ => Torn::Random,
    };
    let rt = runtime();
    let mut disk = Disk::new(Vec::new(), torn, rng.next());
    let mut store = Store::open_redb_with_backend(disk.clone(), CACHE, sync).unwrap();
    let mut counts = vec![0; WRITERS as usize];
    let (mut acknowledged, mut lost) = (0, 0);
    for round in 0..rounds {
        let what = format!("seed {seed} ({torn:?}) round {round}");
        if let Some(within) = cut_within {
            disk.arm(1 + rng.below(within));
        }
        let acked = rt.block_on(workload(&store, &disk, &counts));
        let image = disk.cut_now();
        // The process is gone with the power: nothing it does from here reaches the medium.
        drop(store);
        let attempted: Vec<u64> = counts.iter().map(|c| c + BATCHES).collect();
        acknowledged += acked.iter().zip(&counts).map(|(a, c)| a - c).sum::<u64>();
        if sync == CommitSync::SkipFsync {
            // Only count what is gone; the checks below are the durable store's contract.
            let disk = Disk::new(image, Torn::Nothing, 0);
            let reopened = Store::open_redb_with_backend(disk, CACHE, sync).unwrap();
            for writer in 0..WRITERS {
                let count = reopened.get::<Counts>(&writer).unwrap().unwrap_or(0);
                lost += acked[writer as usize].saturating_sub(count);
            }
            return (acknowledged, lost);
        }
        // The next round continues on the reopened database.
        (store, disk, counts) = verify(image, (torn, rng.next()), &acked, &attempted, &what);
    }
    (acknowledged, lost)
}

/// How many mutating I/O operations one round of the workload takes, so that cuts fall
/// anywhere in it.
fn operations_per_round() -> u64 {
    let rt = runtime();
    let disk = Disk::new(Vec::new(), Torn::Nothing, 0);
    let store = Store::open_redb_with_backend(disk.clone(), CACHE, CommitSync::Durable).unwrap();
    let before = disk.ops();
    rt.block_on(workload(&store, &disk, &[0; WRITERS as usize]));
    disk.ops() - before
}

#[test]
fn acknowledged_commits_survive_a_power_cut() {
    let started = Instant::now();
    let per_round = operations_per_round();
    let mut acknowledged = 0;
    let seeds = 30;
    for seed in 0..seeds {
        assert!(started.elapsed() < BUDGET, "over budget at seed {seed}");
        let (acked, _) = power_cycles(seed, CommitSync::Durable, 2, Some(per_round));
        acknowledged += acked;
    }
    eprintln!(
        "redb power cuts: {seeds} seeds x 2 rounds, {per_round} I/O operations per round, \
         {acknowledged} acknowledged batches checked, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Checked last, so that a lost commit is what a missing fsync reports.
    assert!(
        per_round > 50,
        "the workload does too little I/O: {per_round}"
    );
    assert!(
        acknowledged > seeds * 10,
        "too few acknowledged commits before the cuts to test anything: {acknowledged}"
    );
}

/// The test above fails if Hearth's commit does not fsync: with redb's durability lowered to
/// `None` the same workload, cut after it finished, loses acknowledged batches.
#[test]
fn a_missing_store_fsync_loses_an_acknowledged_commit() {
    // Seed 0 tears nothing: the medium is what the syncs covered.
    let (acknowledged, lost) = power_cycles(0, CommitSync::SkipFsync, 1, None);
    assert_eq!(
        acknowledged,
        WRITERS * BATCHES,
        "the workload ran to its end"
    );
    assert!(
        lost > 0,
        "without the fsync no acknowledged commit was lost: the test cannot see it"
    );
}
