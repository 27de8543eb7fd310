//! Online backup: every row of every table from one consistent view, and loading such rows into
//! a fresh store directory.
//!
//! redb exports from one MVCC read transaction, so writes go on during a backup. sled has no
//! snapshot across trees, so its export holds the writer's gate: commits wait (they are queued,
//! not refused) until the export has read every tree.

use std::collections::HashMap;
use std::path::Path;

use super::engine::{Engine, Op};
use super::{check_engine_files, read_version, EngineKind, Store, StoreError, SCHEMA_VERSION};

/// One exported row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRow {
    pub table: String,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Receives each exported row: `(table, key, value)`; an error stops the export.
pub type RowVisitor<'a> = dyn FnMut(&str, &[u8], &[u8]) -> Result<(), StoreError> + 'a;

/// Rows per engine transaction when restoring.
const RESTORE_CHUNK: usize = 20_000;

impl Store {
    /// Calls `row` for every row of every table, from one consistent point in time (see the
    /// module comment); `total` first gets the row count when the engine knows it cheaply.
    /// Returns the number of rows. Blocking: call it from a blocking thread.
    pub fn export(
        &self,
        total: &mut dyn FnMut(u64),
        row: &mut RowVisitor<'_>,
    ) -> Result<u64, StoreError> {
        let engine = &*self.inner.engine;
        if engine.export_is_snapshot() {
            engine.export(total, row)
        } else {
            let _paused = self.inner.gate.write().unwrap_or_else(|p| p.into_inner());
            engine.export(total, row)
        }
    }
}

/// Writes `rows` (as [`Store::export`] produced them) into a new database in `dir`, which must
/// hold no database yet. Rows are applied in chunks, each one durable engine transaction;
/// `progress` gets the number of rows written so far after each chunk. Returns the row count.
pub fn restore_rows(
    dir: &Path,
    kind: EngineKind,
    rows: &mut dyn Iterator<Item = Result<BackupRow, StoreError>>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, StoreError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
    check_engine_files(dir, kind)?;
    if dir.join("db.redb").exists() || dir.join("db.sled").exists() {
        return Err(StoreError::Io(format!(
            "{} already holds a database; restore needs an empty directory",
            dir.display()
        )));
    }
    let engine: Box<dyn Engine> = match kind {
        EngineKind::Redb => Box::new(super::redb_engine::RedbEngine::open(dir, 16 << 20)?),
        EngineKind::Sled => Box::new(super::sled_engine::SledEngine::open(dir, 16 << 20)?),
    };
    // `Op` names tables with `&'static str`; a store has a few dozen tables, so the names of
    // this one restore are leaked once each.
    let mut names: HashMap<String, &'static str> = HashMap::new();
    let mut chunk = Vec::with_capacity(RESTORE_CHUNK);
    let mut written = 0u64;
    let mut flush = |chunk: &mut Vec<Op>, written: &mut u64| -> Result<(), StoreError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let n = chunk.len() as u64;
        engine.apply(&[std::mem::take(chunk)])?;
        *written += n;
        progress(*written);
        Ok(())
    };
    for row in rows {
        let row = row?;
        let table = match names.get(&row.table) {
            Some(t) => *t,
            None => {
                let leaked: &'static str = Box::leak(row.table.clone().into_boxed_str());
                names.insert(row.table, leaked);
                leaked
            }
        };
        chunk.push(Op::Put {
            table,
            key: row.key,
            value: row.value,
        });
        if chunk.len() >= RESTORE_CHUNK {
            flush(&mut chunk, &mut written)?;
        }
    }
    flush(&mut chunk, &mut written)?;
    match read_version(&*engine)? {
        Some(v) if v <= SCHEMA_VERSION => Ok(written),
        Some(v) => Err(StoreError::SchemaTooNew {
            found: v,
            supported: SCHEMA_VERSION,
        }),
        None => Err(StoreError::Io(
            "the backup holds no schema version: it is not a Hearth database".into(),
        )),
    }
}

/// Row counts per table of an open store (for `hearth check --data`): every row is read, so a
/// damaged page shows up as an error.
pub fn table_counts(store: &Store) -> Result<Vec<(String, u64)>, StoreError> {
    let mut counts: Vec<(String, u64)> = Vec::new();
    store.export(&mut |_| {}, &mut |table, _, _| {
        count_row(&mut counts, table);
        Ok(())
    })?;
    Ok(counts)
}

/// Counts one exported row of `table` (rows arrive grouped by table).
pub(super) fn count_row(counts: &mut Vec<(String, u64)>, table: &str) {
    match counts.last_mut() {
        Some((t, n)) if t == table => *n += 1,
        _ => counts.push((table.to_owned(), 1)),
    }
}
