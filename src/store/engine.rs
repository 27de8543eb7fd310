//! The narrow engine trait. Implemented by `redb_engine` and `sled_engine`; nothing outside
//! `store/` sees it.
//!
//! Engines work on raw bytes in named tables. Tables are opened lazily by name because the set
//! of tables is not known up front (each service declares its own with `table!`); a table that
//! was never written reads as empty.

use std::ops::Bound;

use super::StoreError;

/// Which embedded engine backs the store (`[storage] engine` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Redb,
    Sled,
}

impl EngineKind {
    /// Both engines, for tests and benchmarks that run against each.
    pub const ALL: [EngineKind; 2] = [EngineKind::Redb, EngineKind::Sled];

    /// The name used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Redb => "redb",
            EngineKind::Sled => "sled",
        }
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "redb" => Ok(EngineKind::Redb),
            "sled" => Ok(EngineKind::Sled),
            other => Err(format!(
                "unknown storage engine {other:?} (expected \"redb\" or \"sled\")"
            )),
        }
    }
}

/// One operation of a batch, on raw bytes.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Put {
        table: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        table: &'static str,
        key: Vec<u8>,
    },
    /// Precondition: the key holds `value` (`None`: is absent).
    Expect {
        table: &'static str,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    },
}

impl Op {
    pub(crate) fn table(&self) -> &'static str {
        match self {
            Op::Put { table, .. } | Op::Delete { table, .. } | Op::Expect { table, .. } => table,
        }
    }
}

/// A batch whose precondition did not hold; none of its writes were applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Conflict;

/// Key-value rows as a scan returns them.
pub(crate) type Rows = Vec<(Vec<u8>, Vec<u8>)>;

pub(crate) trait Engine: Send + Sync {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Rows with `lower <= key <= upper` (per the bounds) in key order, or descending when
    /// `reverse`, at most `limit` of them.
    fn scan(
        &self,
        table: &str,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        reverse: bool,
        limit: usize,
    ) -> Result<Rows, StoreError>;

    /// Applies `batches` in order in one engine transaction and makes it durable before
    /// returning. Each batch's `Expect`s are all checked first, against the state left by the
    /// batches before it (not by its own writes); a batch with a failed precondition is skipped
    /// whole. On `Err` the outcome is unknown to the caller: usually nothing was applied, but a
    /// failed fsync can leave the writes visible yet not durable.
    fn apply(&self, batches: &[Vec<Op>]) -> Result<Vec<Result<(), Conflict>>, StoreError>;

    /// Calls `row(table, key, value)` for every row of every table, tables in name order and
    /// keys in order. `total` is called first with the number of rows when the engine knows it
    /// cheaply. Returns the number of rows visited.
    ///
    /// The view is consistent only if no write is applied meanwhile, unless
    /// [`Engine::export_is_snapshot`] says the engine reads from one snapshot.
    fn export(
        &self,
        total: &mut dyn FnMut(u64),
        row: &mut super::backup::RowVisitor<'_>,
    ) -> Result<u64, StoreError>;

    /// Whether [`Engine::export`] reads one point-in-time snapshot while writes continue.
    fn export_is_snapshot(&self) -> bool;
}

/// Whether any bound excludes everything, which some engines answer with a panic rather than
/// an empty result.
pub(crate) fn empty_range(lower: Bound<&[u8]>, upper: Bound<&[u8]>) -> bool {
    match (lower, upper) {
        (Bound::Included(l), Bound::Included(u)) => l > u,
        (Bound::Included(l), Bound::Excluded(u))
        | (Bound::Excluded(l), Bound::Included(u))
        | (Bound::Excluded(l), Bound::Excluded(u)) => l >= u,
        _ => false,
    }
}
