//! The redb engine: one file, `db.redb`, in the store directory.
//!
//! Every table is an untyped `&[u8] → &[u8]` redb table; the typed layer lives in `store/`.
//! Reads use an MVCC read transaction of the last commit, begun once per commit and shared by
//! all reads until the next one, so they never wait for the writer. Each `apply` is
//! one write transaction committed with `Durability::Immediate`: redb writes the new pages and
//! the commit slot, then fsyncs before `commit` returns.
//!
//! Every commit also uses redb's quick repair: it records the allocator state with the
//! commit (two-phase commit), so opening the file after a crash loads that state instead of
//! walking every page of the database to rebuild it. The cost is a slightly larger commit;
//! the gain is a start-up after SIGKILL or power loss that does not grow with the database
//! (see README, Resource use).
//!
//! Tests can open the engine on an injected redb storage backend instead of the file
//! ([`RedbEngine::with_backend`]): the power-cut tests use one that drops unsynced writes.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, TableError, TableHandle,
};

use super::engine::{empty_range, Conflict, Engine, Op, Rows};
use super::StoreError;

/// How long an open waits for the file lock to be released.
const LOCK_WAIT: Duration = Duration::from_secs(5);

type Def<'a> = TableDefinition<'a, &'static [u8], &'static [u8]>;

pub(crate) struct RedbEngine {
    /// The read snapshot of the last commit, shared by every read until the next commit.
    /// Invariant: replaced by `apply` after its commit and before it returns, so a read that
    /// starts after a commit was acknowledged sees it (the writer answers only after `apply`).
    /// `None` during a commit, or when beginning it failed: reads then begin their own
    /// transaction. Declared
    /// before `db` so that it is dropped first: redb records a clean shutdown only when no
    /// read transaction is left.
    snapshot: std::sync::RwLock<Option<Arc<Snapshot>>>,
    db: Database,
    /// Always `Immediate` except on a database opened by [`RedbEngine::with_backend`] for a
    /// test that shows the power-cut test notices a commit without fsync.
    durability: Durability,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("redb: {e}"))
}

fn def(table: &str) -> Result<Def<'_>, StoreError> {
    // `TableDefinition::new` panics on an empty name.
    if table.is_empty() {
        return Err(StoreError::Io("redb: empty table name".into()));
    }
    Ok(TableDefinition::new(table))
}

type ReadTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

/// One read transaction and the tables opened in it so far. Beginning a read transaction
/// and opening a table cost more than a point read: a snapshot lets every read between two
/// commits share them (a transaction kept open holds only the pages of the last commit).
struct Snapshot {
    txn: redb::ReadTransaction,
    /// By name; `None`: the table does not exist in this snapshot.
    tables: std::sync::Mutex<HashMap<String, Option<Arc<ReadTable>>>>,
}

impl Snapshot {
    fn begin(db: &Database) -> Result<Self, StoreError> {
        Ok(Snapshot {
            txn: db.begin_read().map_err(io)?,
            tables: Default::default(),
        })
    }

    fn table(&self, table: &str) -> Result<Option<Arc<ReadTable>>, StoreError> {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tables.get(table) {
            return Ok(t.clone());
        }
        let opened = match self.txn.open_table(def(table)?) {
            Ok(t) => Some(Arc::new(t)),
            Err(TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(io(e)),
        };
        tables.insert(table.to_owned(), opened.clone());
        Ok(opened)
    }
}

type OpenTables<'txn> = HashMap<&'static str, redb::Table<'txn, &'static [u8], &'static [u8]>>;

fn missing(table: &str) -> StoreError {
    StoreError::Io(format!(
        "redb: table {table} was not opened for this transaction"
    ))
}

fn table_of<'a, 'txn>(
    tables: &'a OpenTables<'txn>,
    table: &str,
) -> Result<&'a redb::Table<'txn, &'static [u8], &'static [u8]>, StoreError> {
    tables.get(table).ok_or_else(|| missing(table))
}

fn table_of_mut<'a, 'txn>(
    tables: &'a mut OpenTables<'txn>,
    table: &str,
) -> Result<&'a mut redb::Table<'txn, &'static [u8], &'static [u8]>, StoreError> {
    tables.get_mut(table).ok_or_else(|| missing(table))
}

impl RedbEngine {
    fn builder(cache_bytes: u64) -> redb::Builder {
        let cache = usize::try_from(cache_bytes).unwrap_or(usize::MAX);
        let mut builder = Database::builder();
        builder.set_cache_size(cache);
        // Only called when the last commit did not record its allocator state (a file
        // written before quick repair was on, or a torn commit): then redb walks the file.
        builder.set_repair_callback(|session| {
            log::warn!(
                "database was not closed cleanly; repairing ({:.0}%)",
                session.progress() * 100.0
            );
        });
        builder
    }

    /// Opens a database on `backend` instead of a file (power-cut tests: a backend that keeps
    /// only what `sync_data` covered). Same builder, same commits as [`RedbEngine::open`],
    /// except that `durability` replaces `Immediate` (`None` only to show a test fails).
    pub(crate) fn with_backend(
        backend: impl redb::StorageBackend,
        cache_bytes: u64,
        durability: Durability,
    ) -> Result<Self, StoreError> {
        let db = Self::builder(cache_bytes)
            .create_with_backend(backend)
            .map_err(io)?;
        Self::new(db, durability)
    }

    pub(crate) fn open(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let path = dir.join("db.redb");
        let builder = Self::builder(cache_bytes);
        // The file lock is tied to the open file, which a child process forked at that moment
        // (tests, hooks) shares until it execs: a reopen right after a close can find it held
        // for an instant. Another server on the same directory keeps it for longer than this.
        let deadline = Instant::now() + LOCK_WAIT;
        let db = loop {
            // `create` opens an existing file as it is, and repairs it after a crash.
            match builder.create(&path) {
                Ok(db) => break db,
                Err(DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(DatabaseError::DatabaseAlreadyOpen) => {
                    return Err(StoreError::Io(format!(
                        "{} is in use by another process (is another Hearth running on this \
                         data directory?)",
                        path.display()
                    )))
                }
                Err(e) => return Err(io(e)),
            }
        };
        Self::new(db, Durability::Immediate)
    }

    fn new(db: Database, durability: Durability) -> Result<Self, StoreError> {
        let snapshot = std::sync::RwLock::new(Some(Arc::new(Snapshot::begin(&db)?)));
        Ok(RedbEngine {
            snapshot,
            db,
            durability,
        })
    }

    /// The shared snapshot, or a snapshot of this read alone when there is none.
    fn snapshot(&self) -> Result<Arc<Snapshot>, StoreError> {
        let shared = self
            .snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match shared {
            Some(snapshot) => Ok(snapshot),
            None => Ok(Arc::new(Snapshot::begin(&self.db)?)),
        }
    }
}

/// Every row of every table from one MVCC read transaction (a snapshot of the last commit;
/// writers are not blocked).
fn export_from(
    db: &impl ReadableDatabase,
    total: &mut dyn FnMut(u64),
    row: &mut super::backup::RowVisitor<'_>,
) -> Result<u64, StoreError> {
    let txn = db.begin_read().map_err(io)?;
    let mut names: Vec<String> = txn
        .list_tables()
        .map_err(io)?
        .map(|h| h.name().to_owned())
        .collect();
    names.sort();
    let mut tables = Vec::with_capacity(names.len());
    let mut rows = 0;
    for name in names {
        let t = txn.open_table(def(&name)?).map_err(io)?;
        rows += t.len().map_err(io)?;
        tables.push((name, t));
    }
    total(rows);
    let mut seen = 0;
    for (name, t) in tables {
        for item in t.iter().map_err(io)? {
            let (k, v) = item.map_err(io)?;
            row(&name, k.value(), v.value())?;
            seen += 1;
        }
    }
    Ok(seen)
}

fn get_from(
    db: &impl ReadableDatabase,
    table: &str,
    key: &[u8],
) -> Result<Option<Vec<u8>>, StoreError> {
    let def = def(table)?;
    let txn = db.begin_read().map_err(io)?;
    let t = match txn.open_table(def) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let value = t.get(key).map_err(io)?;
    Ok(value.map(|v| v.value().to_vec()))
}

/// A redb database opened read-only (`hearth check --data`): the file is opened for reading
/// only, nothing is repaired, migrated or written.
pub(crate) struct RedbReadOnly {
    db: redb::ReadOnlyDatabase,
}

impl RedbReadOnly {
    /// `None` if the database was not shut down cleanly and needs a repair first (which
    /// writes, so it is not done here).
    pub(crate) fn open(dir: &Path, cache_bytes: u64) -> Result<Option<Self>, StoreError> {
        let path = dir.join("db.redb");
        // The shared builder; its repair callback never runs here (a read-only open does not
        // repair).
        match RedbEngine::builder(cache_bytes).open_read_only(&path) {
            Ok(db) => Ok(Some(Self { db })),
            Err(DatabaseError::RepairAborted) => Ok(None),
            Err(DatabaseError::DatabaseAlreadyOpen) => Err(StoreError::Io(format!(
                "{} is in use by another process",
                path.display()
            ))),
            Err(e) => Err(io(e)),
        }
    }

    pub(crate) fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        get_from(&self.db, table, key)
    }

    pub(crate) fn export(
        &self,
        total: &mut dyn FnMut(u64),
        row: &mut super::backup::RowVisitor<'_>,
    ) -> Result<u64, StoreError> {
        export_from(&self.db, total, row)
    }
}

impl Engine for RedbEngine {
    fn export(
        &self,
        total: &mut dyn FnMut(u64),
        row: &mut super::backup::RowVisitor<'_>,
    ) -> Result<u64, StoreError> {
        export_from(&self.db, total, row)
    }

    fn export_is_snapshot(&self) -> bool {
        true
    }

    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(t) = self.snapshot()?.table(table)? else {
            return Ok(None);
        };
        let value = t.get(key).map_err(io)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn scan(
        &self,
        table: &str,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        reverse: bool,
        limit: usize,
    ) -> Result<Rows, StoreError> {
        if limit == 0 || empty_range(lower, upper) {
            return Ok(Vec::new());
        }
        let Some(t) = self.snapshot()?.table(table)? else {
            return Ok(Vec::new());
        };
        let range = t.range::<&[u8]>((lower, upper)).map_err(io)?;
        let mut rows = Vec::new();
        let mut push = |item: Result<_, redb::StorageError>| -> Result<bool, StoreError> {
            let (k, v): (redb::AccessGuard<&[u8]>, redb::AccessGuard<&[u8]>) = item.map_err(io)?;
            rows.push((k.value().to_vec(), v.value().to_vec()));
            Ok(rows.len() < limit)
        };
        if reverse {
            for item in range.rev() {
                if !push(item)? {
                    break;
                }
            }
        } else {
            for item in range {
                if !push(item)? {
                    break;
                }
            }
        }
        Ok(rows)
    }

    fn apply(&self, batches: &[Vec<Op>]) -> Result<Vec<Result<(), Conflict>>, StoreError> {
        let mut txn = self.db.begin_write().map_err(io)?;
        txn.set_durability(self.durability).map_err(io)?;
        // Record the allocator state with the commit: start-up after a crash reads it back
        // rather than walking the whole file (module docs).
        txn.set_quick_repair(true);
        let mut results = Vec::with_capacity(batches.len());
        {
            // A table can be open only once per write transaction, so keep each one open for
            // the whole group.
            let mut tables: OpenTables<'_> = HashMap::new();
            for batch in batches {
                for op in batch {
                    let name = op.table();
                    if !tables.contains_key(name) {
                        tables.insert(name, txn.open_table(def(name)?).map_err(io)?);
                    }
                }
                let mut holds = true;
                for op in batch {
                    if let Op::Expect { table, key, value } = op {
                        let current = table_of(&tables, table)?.get(key.as_slice()).map_err(io)?;
                        if current.as_ref().map(|g| g.value()) != value.as_deref() {
                            holds = false;
                            break;
                        }
                    }
                }
                if !holds {
                    results.push(Err(Conflict));
                    continue;
                }
                for op in batch {
                    match op {
                        Op::Put { table, key, value } => {
                            table_of_mut(&mut tables, table)?
                                .insert(key.as_slice(), value.as_slice())
                                .map_err(io)?;
                        }
                        Op::Delete { table, key } => {
                            table_of_mut(&mut tables, table)?
                                .remove(key.as_slice())
                                .map_err(io)?;
                        }
                        Op::Expect { .. } => {}
                    }
                }
                results.push(Ok(()));
            }
        }
        // The shared snapshot goes before the commit: redb frees the pages a commit replaces
        // only when no read transaction older than it is alive, and a snapshot kept through the
        // commit would defer that to the next one (more system-table writes per commit). Reads
        // meanwhile begin their own transaction, which sees the same state.
        drop(
            self.snapshot
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        // An early return above drops `txn`, which aborts it: nothing of the group is written.
        txn.commit().map_err(io)?;
        // The commit has landed: failing to begin the next snapshot must not report it failed.
        let snapshot = match Snapshot::begin(&self.db) {
            Ok(snapshot) => Some(Arc::new(snapshot)),
            Err(e) => {
                log::warn!("cannot begin a read snapshot after a commit: {e}");
                None
            }
        };
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = snapshot;
        Ok(results)
    }
}
