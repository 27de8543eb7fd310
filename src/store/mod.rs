//! The embedded store: the only module that knows a storage engine exists.
//!
//! Layers above see typed tables (`Table`: a name, a key codec, a value codec), reads that go
//! straight to the engine, and writes that are gathered into a [`Batch`] and handed to
//! [`Store::commit`]. A batch is applied atomically (all of its puts and deletes, across any
//! number of tables, or none of them) and `commit` returns only after the batch is durable on
//! disk. Concurrent commits share one durable flush (group commit): a single writer thread takes
//! every batch that is waiting, applies them in one engine transaction and flushes once.
//!
//! Batches may carry preconditions (`expect_absent`, `expect_value`). They are checked inside
//! the writer's transaction, so a read-check-write done through preconditions is race-free; a
//! failed precondition rejects that batch alone with [`CommitError::Conflict`].

mod backup;
mod codec;
mod engine;
mod inspect;
mod redb_engine;
mod sled_engine;
mod writer;

pub use backup::{restore_rows, table_counts, BackupRow, RowVisitor};
pub use codec::{KeyCodec, Raw, Record, ValueCodec};
pub use engine::EngineKind;
pub use inspect::{inspect, Inspection};

use std::collections::HashMap;
use std::hash::Hash;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use engine::{Engine, Op, Rows};
use writer::{JobResult, Writer};

/// The schema version this build writes. Bump it with every change of a key layout or value
/// format, add the migration in `migrate`, and update `schema/`.
pub const SCHEMA_VERSION: u32 = 10;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O error: {0}")]
    Io(String),
    #[error("corrupt record in table {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    #[error(
        "the database has schema version {found}, newer than this build supports ({supported}); \
         run a newer Hearth"
    )]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("the store is shut down")]
    Closed,
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// A precondition of the batch did not hold; nothing of the batch was written.
    #[error("write conflict")]
    Conflict,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A typed table. Declare with [`table!`].
pub trait Table {
    const NAME: &'static str;
    type Key: KeyCodec;
    type Value: ValueCodec;
}

/// `table!(pub Users: "users", String => UserRecord);`
#[macro_export]
macro_rules! table {
    ($(#[$m:meta])* $vis:vis $name:ident : $tname:literal, $k:ty => $v:ty) => {
        $(#[$m])*
        $vis struct $name;
        impl $crate::store::Table for $name {
            const NAME: &'static str = $tname;
            type Key = $k;
            type Value = $v;
        }
    };
}

/// Decoded rows of table `T`, as scans return them.
pub type Entries<T> = Vec<(<T as Table>::Key, <T as Table>::Value)>;

/// Counters of the writer thread since the store was opened: how many engine transactions (one
/// fsync each) carried how many batches. `transactions < batches` shows group commit at work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    pub transactions: u64,
    pub batches: u64,
}

/// How a store opened by [`Store::open_redb_with_backend`] commits (power-cut tests).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitSync {
    /// As in production: a commit is durable (redb `Durability::Immediate`, fsync) before it
    /// is acknowledged.
    Durable,
    /// The fsync is missing: commits use redb's `Durability::None` and are acknowledged while
    /// only in memory. Exists only to show that the power-cut test catches it.
    SkipFsync,
}

/// An atomic set of writes with optional preconditions.
///
/// All preconditions of a batch are checked against the state before the batch, not against
/// its own writes.
#[derive(Debug, Default)]
pub struct Batch {
    pub(crate) ops: Vec<engine::Op>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn put<T: Table>(&mut self, key: &T::Key, value: &T::Value) -> &mut Self {
        self.ops.push(Op::Put {
            table: T::NAME,
            key: key.encode(),
            value: value.encode_value(),
        });
        self
    }
    /// [`Batch::put`] of raw bytes, moved into the batch rather than copied (large values:
    /// the events of a joined room).
    pub fn put_raw<T: Table<Value = Raw>>(&mut self, key: &T::Key, value: Vec<u8>) -> &mut Self {
        self.ops.push(Op::Put {
            table: T::NAME,
            key: key.encode(),
            value,
        });
        self
    }
    pub fn delete<T: Table>(&mut self, key: &T::Key) -> &mut Self {
        self.ops.push(Op::Delete {
            table: T::NAME,
            key: key.encode(),
        });
        self
    }
    /// Precondition: `key` is absent when the batch is applied.
    pub fn expect_absent<T: Table>(&mut self, key: &T::Key) -> &mut Self {
        self.ops.push(Op::Expect {
            table: T::NAME,
            key: key.encode(),
            value: None,
        });
        self
    }
    /// Precondition: `key` holds exactly `value` (or is absent, for `None`) when applied.
    pub fn expect_value<T: Table>(&mut self, key: &T::Key, value: Option<&T::Value>) -> &mut Self {
        self.ops.push(Op::Expect {
            table: T::NAME,
            key: key.encode(),
            value: value.map(ValueCodec::encode_value),
        });
        self
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// Moves `other`'s operations (writes and preconditions) into this batch, after its own.
    pub fn append(&mut self, other: Batch) -> &mut Self {
        self.ops.extend(other.ops);
        self
    }
    /// Number of operations (writes and preconditions).
    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

// ---- tables owned by the store itself (layouts in schema/ids.md) ----

table!(
    /// `name → raw bytes`: store-wide facts. `"schema_version"` holds the schema version as a
    /// 4-byte big-endian u32. Never removed; the layout of this table never changes, so any
    /// build can read the version of any database.
    Meta: "meta", String => Raw
);
table!(
    /// `(kind, id) → sid` (postcard u64). Exactly one entry per interned id; never removed or
    /// changed once written, so a cached mapping is never stale.
    ShortIds: "short_ids", (String, String) => u64
);
table!(
    /// `(kind, sid) → id` (postcard string), the exact inverse of `short_ids`, written in the
    /// same batch. The highest key of a kind is that kind's allocation counter: the next sid is
    /// one more, so there is no separate counter that could fall out of step.
    ShortRev: "short_rev", (String, u64) => String
);

const SCHEMA_VERSION_KEY: &str = "schema_version";

/// Entries per generation of the short-id caches; each cache holds at most twice this.
const SHORT_CACHE_GENERATION: usize = 2048;

/// How often `intern` retries after losing a race before reporting an error. Losing needs a
/// concurrent allocation of the same id, so more than a few rounds means something is wrong.
const INTERN_ATTEMPTS: usize = 16;

/// A bounded map: two generations, the older one dropped wholesale when the newer fills up.
/// Hits in the older generation are promoted, so hot entries survive.
struct TwoGen<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
}

impl<K: Hash + Eq, V: Clone> TwoGen<K, V> {
    fn new() -> Self {
        TwoGen {
            young: HashMap::new(),
            old: HashMap::new(),
        }
    }
    fn get(&mut self, key: &K) -> Option<V> {
        if let Some(v) = self.young.get(key) {
            return Some(v.clone());
        }
        let (k, v) = self.old.remove_entry(key)?;
        self.insert(k, v.clone());
        Some(v)
    }
    fn insert(&mut self, key: K, value: V) {
        if self.young.len() >= SHORT_CACHE_GENERATION {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, value);
    }
}

struct ShortCache {
    /// Encoded `short_ids` key → sid.
    forward: TwoGen<Vec<u8>, u64>,
    /// Encoded `short_rev` key → id.
    reverse: TwoGen<Vec<u8>, String>,
    /// Next sid to hand out per kind, loaded from `short_rev` on first use.
    next: HashMap<String, u64>,
}

struct Inner {
    // Declared before `engine` so it drops first: its thread holds the engine until joined.
    writer: Writer,
    engine: Arc<dyn Engine>,
    kind: EngineKind,
    ids: Mutex<ShortCache>,
    /// Held for reading by the writer around each transaction; see `backup.rs`.
    gate: Arc<std::sync::RwLock<()>>,
}

/// Handle to the open store. Cheap to clone; all clones share one engine and one writer.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("engine", &self.inner.kind)
            .finish_non_exhaustive()
    }
}

fn corrupt_key(table: &'static str, key: &[u8]) -> StoreError {
    StoreError::Corrupt {
        table,
        detail: format!("undecodable key {key:02x?}"),
    }
}

fn decode_rows<T: Table>(rows: Rows) -> Result<Entries<T>, StoreError> {
    rows.into_iter()
        .map(|(k, v)| {
            let key = T::Key::decode(&k).ok_or_else(|| corrupt_key(T::NAME, &k))?;
            Ok((key, T::Value::decode_value(T::NAME, &v)?))
        })
        .collect()
}

/// The smallest key greater than every key starting with `prefix`, or `None` when no such key
/// exists (empty or all-`0xFF` prefix).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn read_version(engine: &dyn Engine) -> Result<Option<u32>, StoreError> {
    decode_version(engine.get(Meta::NAME, &SCHEMA_VERSION_KEY.encode())?)
}

fn decode_version(bytes: Option<Vec<u8>>) -> Result<Option<u32>, StoreError> {
    let Some(bytes) = bytes else {
        return Ok(None);
    };
    let bytes: [u8; 4] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| StoreError::Corrupt {
            table: Meta::NAME,
            detail: format!("schema_version is {} bytes, expected 4", bytes.len()),
        })?;
    Ok(Some(u32::from_be_bytes(bytes)))
}

fn version_op(version: u32) -> Op {
    Op::Put {
        table: Meta::NAME,
        key: SCHEMA_VERSION_KEY.encode(),
        value: version.to_be_bytes().to_vec(),
    }
}

/// Applies one batch directly through the engine, for use before the writer runs.
fn apply_now(engine: &dyn Engine, ops: Vec<Op>) -> Result<(), StoreError> {
    match engine.apply(&[ops])?.first() {
        Some(Ok(())) => Ok(()),
        _ => Err(StoreError::Io(
            "a startup write was rejected by its precondition".into(),
        )),
    }
}

/// Brings a database at schema version `found` up to `SCHEMA_VERSION`, one version at a time.
/// Each step must be idempotent: it commits its own transactions and the version is bumped only
/// after it, so a crash part-way reruns the step on the next start.
fn migrate(engine: &dyn Engine, found: u32) -> Result<(), StoreError> {
    for from in found..SCHEMA_VERSION {
        migrate_step(engine, from)?;
        apply_now(engine, vec![version_op(from + 1)])?;
        log::info!("store migrated from schema version {from} to {}", from + 1);
    }
    Ok(())
}

/// Rewrites the layout of schema version `from` into `from + 1`.
fn migrate_step(_engine: &dyn Engine, from: u32) -> Result<(), StoreError> {
    match from {
        // 1 → 2 adds `pending_deactivations` (starts empty) and `sha256:`-prefixed password
        // hashes (plain bcrypt hashes stay valid and are rewritten at the next login). Nothing
        // existing changes; the bump makes an older build refuse data it could misread (it
        // cannot verify the new hashes, nor finish a pending deactivation).
        1 => Ok(()),
        // 2 → 3 adds the push tables (`notifications`, `unread`, `unread_counts`, `pushers`,
        // `pushers_by_key`, `pusher_versions`, `pusher_progress`; they start empty: unread
        // counts begin at zero). The bump makes an older build refuse the data: it would
        // store events without their notifications and delete devices without their pushers.
        2 => Ok(()),
        // 3 → 4 adds the search index (`search_postings`, `search_docs`, `search_terms`,
        // `search_rooms`, `search_progress`; schema/search.md). They start empty here; the
        // events already stored are indexed by the search service at its first start
        // (`Search::backfill`, resumable, before requests are served), since tokenising
        // events is service logic the store does not know. The bump makes an older build
        // refuse the data: it would store and redact events without updating the index.
        3 => Ok(()),
        // 4 → 5 adds the federation tables (remote server keys, the outbound transaction
        // queue, inbound transactions, remote device lists, rejected and soft-failed events,
        // cached remote media; schema/federation-*.md, media.md). They start empty. The bump
        // makes an older build refuse the data: it would serve soft-failed remote events and
        // forget what is queued for other servers.
        4 => Ok(()),
        // 5 → 6 adds the tables of rooms shared across servers (outliers, partial-state rooms,
        // remote invites, backfilled history; schema/federation-events.md, rooms.md). They
        // start empty, and version-5 state chains read as before (no snapshot row there is
        // keyed by a non-state event). The bump makes an older build refuse the data: it would
        // misread the state at forks and show outliers and backfilled events in timelines.
        5 => Ok(()),
        // 6 → 7 adds the tables of holes in room timelines (`timeline_holes`, `hole_timeline`,
        // `hole_events`; schema/rooms.md). They start empty: holes of events stored before are
        // not known, and stay unfilled. The bump makes an older build refuse the data: it
        // would serve the events of holes as if they had no place in the room's history.
        6 => Ok(()),
        // 7 → 8 replaces the `unread` rows (one per unread notification) by read marks in the
        // `unread_counts` rows (schema/push.md). Decoding those is service logic, so the
        // services convert them at their first start, one user per commit, before requests
        // are served (`push::conversions::convert_unread_rows`). The bump makes
        // an older build refuse the data: it cannot decode the new counts rows.
        7 => Ok(()),
        // 8 → 9 replaces the `notifications` rows (one per user an event notified) by
        // `notified_events` rows (one per event, listing its users; schema/push.md), which a
        // commit writes to one B-tree page instead of one page per member. The services
        // convert them at their first start, before requests are served
        // (`push::conversions::convert_notification_rows`). The bump makes an older build
        // refuse the data: it would list no notifications and deliver no pushes.
        8 => Ok(()),
        // 9 → 10 adds `search_pending` (starts empty: every event stored so far is indexed):
        // new events wait there for the search indexer instead of being indexed in their own
        // commit (schema/search.md). The bump makes an older build refuse the data: it would
        // never index the pending events.
        9 => Ok(()),
        _ => Err(StoreError::Corrupt {
            table: Meta::NAME,
            detail: format!("schema version {from} is unknown; no migration exists from it"),
        }),
    }
}

/// Refuses a data directory whose database was created by the other engine: opening it would
/// silently start an empty database beside the real one.
fn check_engine_files(dir: &Path, kind: EngineKind) -> Result<(), StoreError> {
    let redb = dir.join("db.redb");
    let sled = dir.join("db.sled");
    let (mine, other, other_kind) = match kind {
        EngineKind::Redb => (redb, sled, EngineKind::Sled),
        EngineKind::Sled => (sled, redb, EngineKind::Redb),
    };
    if !mine.exists() && other.exists() {
        return Err(StoreError::Io(format!(
            "{} holds a {other_kind} database but the configured storage engine is {kind}; \
             set [storage] engine = \"{other_kind}\"",
            dir.display()
        )));
    }
    Ok(())
}

/// Opens a store in place of [`Store::open`] (tests; see [`set_opener`]).
#[doc(hidden)]
pub type Opener = Arc<dyn Fn() -> Result<Store, StoreError> + Send + Sync>;

fn openers() -> &'static Mutex<HashMap<std::path::PathBuf, Opener>> {
    static OPENERS: std::sync::OnceLock<Mutex<HashMap<std::path::PathBuf, Opener>>> =
        std::sync::OnceLock::new();
    OPENERS.get_or_init(Default::default)
}

/// From the next open on, [`Store::open`] of `dir` calls `opener` instead of opening the files
/// under `dir` (`None` removes it). Power-cut tests use it to run a whole server on
/// [`Store::open_redb_with_backend`]; nothing else registers one, so a production open only
/// looks into an empty map.
#[doc(hidden)]
pub fn set_opener(dir: &Path, opener: Option<Opener>) {
    let mut map = openers().lock().unwrap_or_else(|e| e.into_inner());
    match opener {
        Some(o) => map.insert(dir.to_owned(), o),
        None => map.remove(dir),
    };
}

impl Store {
    /// Opens (creating if needed) the database under `dir` with the given engine, and migrates
    /// an older schema. `cache_bytes` bounds the engine's page cache.
    pub fn open(dir: &Path, kind: EngineKind, cache_bytes: u64) -> Result<Store, StoreError> {
        let opener = openers()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(dir)
            .cloned();
        if let Some(open) = opener {
            return open();
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
        check_engine_files(dir, kind)?;
        let engine: Arc<dyn Engine> = match kind {
            EngineKind::Redb => Arc::new(redb_engine::RedbEngine::open(dir, cache_bytes)?),
            EngineKind::Sled => Arc::new(sled_engine::SledEngine::open(dir, cache_bytes)?),
        };
        Self::start(engine, kind)
    }

    /// Opens a redb store on `backend` instead of `db.redb` (power-cut tests: a backend that
    /// can drop whatever `sync_data` did not cover). Everything above the engine's file is as
    /// in [`Store::open`]: the same redb builder and commits, migration, writer thread.
    #[doc(hidden)]
    pub fn open_redb_with_backend(
        backend: impl redb::StorageBackend,
        cache_bytes: u64,
        sync: CommitSync,
    ) -> Result<Store, StoreError> {
        let durability = match sync {
            CommitSync::Durable => redb::Durability::Immediate,
            CommitSync::SkipFsync => redb::Durability::None,
        };
        let engine = redb_engine::RedbEngine::with_backend(backend, cache_bytes, durability)?;
        Self::start(Arc::new(engine), EngineKind::Redb)
    }

    /// Brings the database on `engine` to `SCHEMA_VERSION` and starts the writer.
    fn start(engine: Arc<dyn Engine>, kind: EngineKind) -> Result<Store, StoreError> {
        match read_version(&*engine)? {
            // The version is the first thing written to a new database.
            None => apply_now(&*engine, vec![version_op(SCHEMA_VERSION)])?,
            Some(found) if found > SCHEMA_VERSION => {
                return Err(StoreError::SchemaTooNew {
                    found,
                    supported: SCHEMA_VERSION,
                })
            }
            Some(found) if found < SCHEMA_VERSION => migrate(&*engine, found)?,
            Some(_) => {}
        }
        let gate = Arc::new(std::sync::RwLock::new(()));
        let writer = Writer::start(engine.clone(), gate.clone())?;
        Ok(Store {
            inner: Arc::new(Inner {
                writer,
                engine,
                kind,
                gate,
                ids: Mutex::new(ShortCache {
                    forward: TwoGen::new(),
                    reverse: TwoGen::new(),
                    next: HashMap::new(),
                }),
            }),
        })
    }

    /// The engine this store runs on.
    pub fn engine_kind(&self) -> EngineKind {
        self.inner.kind
    }

    pub fn get<T: Table>(&self, key: &T::Key) -> Result<Option<T::Value>, StoreError> {
        match self.inner.engine.get(T::NAME, &key.encode())? {
            Some(bytes) => Ok(Some(T::Value::decode_value(T::NAME, &bytes)?)),
            None => Ok(None),
        }
    }

    /// All entries whose key starts with the encoding of `prefix` (a leading part of the key
    /// tuple, e.g. the user id of a `(user, device)` key), in key order, at most `limit`.
    pub fn scan_prefix<T: Table, P: KeyCodec>(
        &self,
        prefix: &P,
        limit: usize,
    ) -> Result<Entries<T>, StoreError> {
        self.range_in_prefix::<T, P>(prefix, None, false, limit)
    }

    /// Entries with `from <= key` (or `key <= from` going backwards when `reverse`), in key
    /// order (descending when `reverse`), at most `limit`.
    pub fn range<T: Table>(
        &self,
        from: Option<&T::Key>,
        reverse: bool,
        limit: usize,
    ) -> Result<Entries<T>, StoreError> {
        let from = from.map(KeyCodec::encode);
        let bound = match &from {
            Some(f) => Bound::Included(f.as_slice()),
            None => Bound::Unbounded,
        };
        let (lower, upper) = if reverse {
            (Bound::Unbounded, bound)
        } else {
            (bound, Bound::Unbounded)
        };
        decode_rows::<T>(
            self.inner
                .engine
                .scan(T::NAME, lower, upper, reverse, limit)?,
        )
    }

    /// Pagination within a prefix: the entries whose key starts with `prefix`, from `from`
    /// (inclusive; `None`: from the first, or the last when `reverse`) in key order (descending
    /// when `reverse`), at most `limit`. E.g. a room's timeline backwards from a position.
    pub fn range_in_prefix<T: Table, P: KeyCodec>(
        &self,
        prefix: &P,
        from: Option<&T::Key>,
        reverse: bool,
        limit: usize,
    ) -> Result<Entries<T>, StoreError> {
        let start = prefix.encode();
        let end = prefix_end(&start);
        let from = from.map(KeyCodec::encode);
        let mut lower = Bound::Included(start.as_slice());
        let mut upper = match &end {
            Some(e) => Bound::Excluded(e.as_slice()),
            None => Bound::Unbounded,
        };
        if let Some(f) = &from {
            // A `from` outside the prefix either clips nothing or empties the range; the
            // engine treats an inverted range as empty.
            if reverse {
                if end.as_deref().is_none_or(|e| f.as_slice() < e) {
                    upper = Bound::Included(f.as_slice());
                }
            } else if f.as_slice() > start.as_slice() {
                lower = Bound::Included(f.as_slice());
            }
        }
        decode_rows::<T>(
            self.inner
                .engine
                .scan(T::NAME, lower, upper, reverse, limit)?,
        )
    }

    fn submit(
        &self,
        batches: Vec<Vec<Op>>,
    ) -> Result<tokio::sync::oneshot::Receiver<JobResult>, StoreError> {
        self.inner.writer.submit(batches)
    }

    /// Applies `batch` atomically and returns once it is durable (group commit).
    ///
    /// If the future is dropped after it first ran, the batch may still be applied.
    pub async fn commit(&self, batch: Batch) -> Result<(), CommitError> {
        if batch.is_empty() {
            return Ok(());
        }
        let rx = self.submit(vec![batch.ops])?;
        let results = rx.await.map_err(|_| StoreError::Closed)??;
        single(results)
    }

    /// `commit` for non-async callers (CLI commands).
    pub fn commit_blocking(&self, batch: Batch) -> Result<(), CommitError> {
        if batch.is_empty() {
            return Ok(());
        }
        let rx = self.inner.writer.submit_blocking(vec![batch.ops])?;
        let results = rx.recv().map_err(|_| StoreError::Closed)??;
        single(results)
    }

    /// Commits independent batches in one durable engine transaction (bulk imports, tests).
    /// Each batch is atomic on its own and sees the writes of the batches before it; one that
    /// conflicts is skipped while the others still land.
    pub async fn commit_all(
        &self,
        batches: Vec<Batch>,
    ) -> Result<Vec<Result<(), CommitError>>, StoreError> {
        let count = batches.len();
        if count == 0 {
            return Ok(Vec::new());
        }
        let rx = self.submit(batches.into_iter().map(|b| b.ops).collect())?;
        let results = rx.await.map_err(|_| StoreError::Closed)??;
        Ok(results
            .into_iter()
            .map(|r| r.map_err(|_| CommitError::Conflict))
            .collect())
    }

    /// How many transactions the writer has applied. A read that begins after this returned
    /// `n` sees every commit up to the `n`th (and perhaps later ones); every write, and so
    /// every acknowledged one, comes with a new value. Caches of what reads return are valid
    /// for as long as it does not change.
    pub fn commit_epoch(&self) -> u64 {
        self.inner.writer.epoch()
    }

    /// Writer counters (group commit effectiveness; tests).
    pub fn commit_stats(&self) -> CommitStats {
        self.inner.writer.stats()
    }

    fn ids(&self) -> MutexGuard<'_, ShortCache> {
        // The cache holds only durable facts, so one left by a panicking holder is still valid.
        self.inner.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves the next sid of `kind` in memory, loading the counter on first use.
    fn next_sid(&self, kind: &str) -> Result<u64, StoreError> {
        if let Some(next) = self.ids().next.get_mut(kind) {
            let sid = *next;
            *next += 1;
            return Ok(sid);
        }
        // Read outside the lock; if two threads race here both load the same value and the
        // `max` below keeps the counter from going backwards.
        let last = self.range_in_prefix::<ShortRev, _>(&kind, None, true, 1)?;
        let first_free = last
            .first()
            .map_or(1, |((_, sid), _)| sid.saturating_add(1));
        let mut ids = self.ids();
        let next = ids.next.entry(kind.to_owned()).or_insert(first_free);
        *next = (*next).max(first_free);
        let sid = *next;
        *next += 1;
        Ok(sid)
    }

    /// Forgets the in-memory counter of `kind`, so the next allocation reloads it.
    fn reset_counter(&self, kind: &str) {
        self.ids().next.remove(kind);
    }

    /// The ops that record `id ↔ sid`, guarded so that they land only if neither side exists.
    fn allocation_ops(kind: &str, id: &str, sid: u64) -> Vec<Op> {
        let mut batch = Batch::new();
        let fwd = (kind.to_owned(), id.to_owned());
        let rev = (kind.to_owned(), sid);
        batch
            .expect_absent::<ShortIds>(&fwd)
            .expect_absent::<ShortRev>(&rev)
            .put::<ShortIds>(&fwd, &sid)
            .put::<ShortRev>(&rev, &id.to_owned());
        batch.ops
    }

    /// The short id (8 bytes) of `id` within `kind` ("user", "room", "event", ...), allocating
    /// one durably if it has none. Stable forever once returned.
    ///
    /// Sids start at 1 and increase per kind; an allocation that loses a race leaves a gap.
    pub async fn intern(&self, kind: &str, id: &str) -> Result<u64, StoreError> {
        for _ in 0..INTERN_ATTEMPTS {
            if let Some(sid) = self.short_id(kind, id)? {
                return Ok(sid);
            }
            let sid = self.next_sid(kind)?;
            let rx = self.submit(vec![Self::allocation_ops(kind, id, sid)])?;
            let results = rx.await.map_err(|_| StoreError::Closed)??;
            if let Some(Ok(())) = results.first() {
                self.remember(kind, id, sid);
                return Ok(sid);
            }
            // Either the id was interned meanwhile (found on the next round) or the sid was
            // taken, which means the counter is stale: reload it.
            if self.short_id(kind, id)?.is_none() {
                self.reset_counter(kind);
            }
        }
        Err(StoreError::Io(format!(
            "could not intern a {kind} id after {INTERN_ATTEMPTS} attempts"
        )))
    }

    /// The short id of `id`, staging its allocation into `batch` if it has none, so the id
    /// mapping commits atomically with the data that uses it (one fsync instead of two).
    ///
    /// A new sid is valid only if `batch` commits; if it fails with `Conflict`, rebuild the
    /// batch (calling this again). Interning the same id twice into one batch returns the same
    /// sid.
    pub fn intern_in(&self, kind: &str, id: &str, batch: &mut Batch) -> Result<u64, StoreError> {
        if let Some(sid) = self.short_id(kind, id)? {
            return Ok(sid);
        }
        let fwd = (kind.to_owned(), id.to_owned()).encode();
        for op in &batch.ops {
            if let Op::Put { table, key, value } = op {
                if *table == ShortIds::NAME && *key == fwd {
                    return u64::decode_value(ShortIds::NAME, value);
                }
            }
        }
        let sid = self.next_sid(kind)?;
        batch.ops.extend(Self::allocation_ops(kind, id, sid));
        Ok(sid)
    }

    fn remember(&self, kind: &str, id: &str, sid: u64) {
        let fwd = (kind, id).encode();
        let rev = (kind, sid).encode();
        let mut ids = self.ids();
        ids.forward.insert(fwd, sid);
        ids.reverse.insert(rev, id.to_owned());
    }

    pub fn short_id(&self, kind: &str, id: &str) -> Result<Option<u64>, StoreError> {
        let fwd = (kind, id).encode();
        if let Some(sid) = self.ids().forward.get(&fwd) {
            return Ok(Some(sid));
        }
        let Some(bytes) = self.inner.engine.get(ShortIds::NAME, &fwd)? else {
            return Ok(None);
        };
        let sid = u64::decode_value(ShortIds::NAME, &bytes)?;
        self.remember(kind, id, sid);
        Ok(Some(sid))
    }

    pub fn lookup_short(&self, kind: &str, sid: u64) -> Result<Option<String>, StoreError> {
        let rev = (kind, sid).encode();
        if let Some(id) = self.ids().reverse.get(&rev) {
            return Ok(Some(id));
        }
        let Some(bytes) = self.inner.engine.get(ShortRev::NAME, &rev)? else {
            return Ok(None);
        };
        let id = String::decode_value(ShortRev::NAME, &bytes)?;
        self.remember(kind, &id, sid);
        Ok(Some(id))
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        read_version(&*self.inner.engine)?.ok_or_else(|| StoreError::Corrupt {
            table: Meta::NAME,
            detail: "schema_version is missing".into(),
        })
    }
}

/// The outcome of a one-batch job.
fn single(results: Vec<Result<(), engine::Conflict>>) -> Result<(), CommitError> {
    match results.first() {
        Some(Ok(())) => Ok(()),
        Some(Err(engine::Conflict)) => Err(CommitError::Conflict),
        None => Err(StoreError::Io("the writer answered no result".into()).into()),
    }
}
