//! The sled engine: a directory, `db.sled/`, in the store directory.
//!
//! Each table is a sled tree, opened on first use and kept open. `apply` runs every batch of a
//! group in one multi-tree sled transaction (sled seals the transaction's log entries as one
//! atomically recovered unit), then `Db::flush` writes and fsyncs the log before returning:
//! sled's own background flush runs only every 500 ms, so without it an acknowledged write
//! could be lost.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};

use super::engine::{empty_range, Conflict, Engine, Op, Rows};
use super::StoreError;

pub(crate) struct SledEngine {
    db: sled::Db,
    trees: RwLock<HashMap<String, sled::Tree>>,
}

const LOCK_WAIT: Duration = Duration::from_secs(5);

fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("sled: {e}"))
}

impl SledEngine {
    pub(crate) fn open(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let config = sled::Config::new()
            .path(dir.join("db.sled"))
            .cache_capacity(cache_bytes);
        // The directory lock is tied to the open lock file, which sled's background threads may
        // keep for a moment after the last handle is dropped, and which a child process forked
        // at that moment (tests, hooks) shares until it execs: a reopen right after a close can
        // find it held for an instant. Another server on the same directory keeps it longer.
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match config.open() {
                Ok(db) => {
                    return Ok(SledEngine {
                        db,
                        trees: RwLock::new(HashMap::new()),
                    })
                }
                Err(e) if is_lock_error(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) if is_lock_error(&e) => {
                    return Err(StoreError::Io(format!(
                        "{} is in use by another process (is another Hearth running on this \
                         data directory?)",
                        dir.join("db.sled").display()
                    )))
                }
                Err(e) => return Err(io(e)),
            }
        }
    }

    fn tree(&self, table: &str) -> Result<sled::Tree, StoreError> {
        if let Some(t) = self
            .trees
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(table)
        {
            return Ok(t.clone());
        }
        // Opening creates the tree; it becomes durable with the next flush, and an empty tree
        // reads the same as a missing one.
        let tree = self.db.open_tree(table).map_err(io)?;
        self.trees
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(table.to_owned(), tree.clone());
        Ok(tree)
    }
}

impl Engine for SledEngine {
    fn export(
        &self,
        _total: &mut dyn FnMut(u64),
        row: &mut super::backup::RowVisitor<'_>,
    ) -> Result<u64, StoreError> {
        // sled has no snapshot across trees: the caller pauses writes while this runs.
        let mut names: Vec<Vec<u8>> = self
            .db
            .tree_names()
            .into_iter()
            .map(|n| n.to_vec())
            .collect();
        names.sort();
        let mut seen = 0;
        for name in names {
            // The default tree is sled's own; Hearth's tables are named trees.
            if name == b"__sled__default" {
                continue;
            }
            let name = String::from_utf8(name)
                .map_err(|_| StoreError::Io("sled: a tree name is not UTF-8".into()))?;
            let tree = self.db.open_tree(&name).map_err(io)?;
            for item in tree.iter() {
                let (k, v) = item.map_err(io)?;
                row(&name, &k, &v)?;
                seen += 1;
            }
        }
        Ok(seen)
    }

    fn export_is_snapshot(&self) -> bool {
        false
    }

    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.tree(table)?.get(key).map_err(io)?;
        Ok(value.map(|v| v.to_vec()))
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
        let range = self.tree(table)?.range::<&[u8], _>((lower, upper));
        let mut rows = Vec::new();
        let mut push = |item: sled::Result<(sled::IVec, sled::IVec)>| -> Result<bool, StoreError> {
            let (k, v) = item.map_err(io)?;
            rows.push((k.to_vec(), v.to_vec()));
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
        // One overlay per distinct tree: sled would treat the same tree listed twice as two
        // independent overlays and lose writes.
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut trees = Vec::new();
        for op in batches.iter().flatten() {
            if !index.contains_key(op.table()) {
                index.insert(op.table(), trees.len());
                trees.push(self.tree(op.table())?);
            }
        }
        if trees.is_empty() {
            return Ok(batches.iter().map(|_| Ok(())).collect());
        }

        // sled may run the closure more than once, so it recomputes the results each time.
        let outcome = trees.as_slice().transaction(
            |views: &Vec<TransactionalTree>| -> Result<_, ConflictableTransactionError<()>> {
                // Every table was indexed above; a miss would be a bug here, not bad data.
                let view = |table: &str| {
                    index
                        .get(table)
                        .and_then(|&i| views.get(i))
                        .ok_or(ConflictableTransactionError::Abort(()))
                };
                let mut results = Vec::with_capacity(batches.len());
                for batch in batches {
                    let mut holds = true;
                    for op in batch {
                        if let Op::Expect { table, key, value } = op {
                            let current = view(table)?.get(key)?;
                            if current.as_deref() != value.as_deref() {
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
                                view(table)?.insert(key.as_slice(), value.as_slice())?;
                            }
                            Op::Delete { table, key } => {
                                view(table)?.remove(key.as_slice())?;
                            }
                            Op::Expect { .. } => {}
                        }
                    }
                    results.push(Ok(()));
                }
                Ok(results)
            },
        );
        let results = match outcome {
            Ok(results) => results,
            Err(TransactionError::Storage(e)) => return Err(io(e)),
            Err(TransactionError::Abort(())) => {
                return Err(io("transaction aborted: a table was not opened"))
            }
        };
        self.db.flush().map_err(io)?;
        Ok(results)
    }
}
