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

mod codec;
mod engine;
mod redb_engine;
mod sled_engine;
mod writer;

pub use codec::{KeyCodec, Raw, Record, ValueCodec};
pub use engine::EngineKind;

use std::path::Path;

/// The schema version this build writes. Bump it with every change of a key layout or value
/// format, add the migration in `migrate`, and update `schema/`.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
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

/// An atomic set of writes with optional preconditions.
#[derive(Default)]
pub struct Batch {
    pub(crate) ops: Vec<engine::Op>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn put<T: Table>(&mut self, key: &T::Key, value: &T::Value) -> &mut Self {
        unimplemented!()
    }
    pub fn delete<T: Table>(&mut self, key: &T::Key) -> &mut Self {
        unimplemented!()
    }
    /// Precondition: `key` is absent when the batch is applied.
    pub fn expect_absent<T: Table>(&mut self, key: &T::Key) -> &mut Self {
        unimplemented!()
    }
    /// Precondition: `key` holds exactly `value` (or is absent, for `None`) when applied.
    pub fn expect_value<T: Table>(&mut self, key: &T::Key, value: Option<&T::Value>) -> &mut Self {
        unimplemented!()
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Handle to the open store. Cheap to clone; all clones share one engine and one writer.
#[derive(Clone)]
pub struct Store {/* engine, writer handle, short-id cache */}

impl Store {
    /// Opens (creating if needed) the database under `dir` with the given engine, and migrates
    /// an older schema. `cache_bytes` bounds the engine's page cache.
    pub fn open(dir: &Path, kind: EngineKind, cache_bytes: u64) -> Result<Store, StoreError> {
        unimplemented!()
    }
    pub fn get<T: Table>(&self, key: &T::Key) -> Result<Option<T::Value>, StoreError> {
        unimplemented!()
    }
    /// All entries whose key starts with the encoding of `prefix` (a leading part of the key
    /// tuple, e.g. the user id of a `(user, device)` key), in key order, at most `limit`.
    pub fn scan_prefix<T: Table, P: KeyCodec>(
        &self,
        prefix: &P,
        limit: usize,
    ) -> Result<Vec<(T::Key, T::Value)>, StoreError> {
        unimplemented!()
    }
    /// Entries with `from <= key` (or `key <= from` going backwards when `reverse`), in key
    /// order (descending when `reverse`), at most `limit`.
    pub fn range<T: Table>(
        &self,
        from: Option<&T::Key>,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(T::Key, T::Value)>, StoreError> {
        unimplemented!()
    }
    /// Applies `batch` atomically and returns once it is durable (group commit).
    pub async fn commit(&self, batch: Batch) -> Result<(), CommitError> {
        unimplemented!()
    }
    /// `commit` for non-async callers (CLI commands).
    pub fn commit_blocking(&self, batch: Batch) -> Result<(), CommitError> {
        unimplemented!()
    }
    /// The short id (8 bytes) of `id` within `kind` ("user", "room", "event", ...), allocating
    /// one durably if it has none. Stable forever once returned.
    pub async fn intern(&self, kind: &str, id: &str) -> Result<u64, StoreError> {
        unimplemented!()
    }
    pub fn short_id(&self, kind: &str, id: &str) -> Result<Option<u64>, StoreError> {
        unimplemented!()
    }
    pub fn lookup_short(&self, kind: &str, sid: u64) -> Result<Option<String>, StoreError> {
        unimplemented!()
    }
    /// The schema version recorded in the database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        unimplemented!()
    }
}
