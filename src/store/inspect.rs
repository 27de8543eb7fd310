//! `hearth check --data`: reading a database without changing it.

use std::path::Path;

use super::engine::Engine;

use super::{
    decode_version, read_version, redb_engine, sled_engine, EngineKind, KeyCodec, Meta, StoreError,
    Table, SCHEMA_VERSION_KEY,
};

/// What `hearth check --data` reports of a database.
#[derive(Debug)]
pub struct Inspection {
    pub schema_version: Option<u32>,
    /// Rows per table, every row read (a damaged page shows up as an error).
    pub counts: Vec<(String, u64)>,
}

/// Reads the database under `dir` without changing anything in it: no creation, repair,
/// migration or write. redb is opened read-only; a redb database that needs a crash repair,
/// and a sled database (sled has no read-only mode), are copied into a private temporary
/// directory and the copy is opened (and repaired) instead, then removed.
pub fn inspect(dir: &Path, kind: EngineKind, cache_bytes: u64) -> Result<Inspection, StoreError> {
    let mut counts: Vec<(String, u64)> = Vec::new();
    let mut count = |table: &str, _: &[u8], _: &[u8]| {
        super::backup::count_row(&mut counts, table);
        Ok(())
    };
    let schema_version = match kind {
        EngineKind::Redb => match redb_engine::RedbReadOnly::open(dir, cache_bytes)? {
            Some(db) => {
                db.export(&mut |_| {}, &mut count)?;
                decode_version(db.get(Meta::NAME, &SCHEMA_VERSION_KEY.encode())?)?
            }
            None => {
                log::info!("the database needs a crash repair: checking a repaired copy");
                let copy = PrivateTempDir::new()?;
                std::fs::copy(dir.join("db.redb"), copy.0.join("db.redb"))
                    .map_err(|e| StoreError::Io(format!("cannot copy {}: {e}", dir.display())))?;
                let engine = redb_engine::RedbEngine::open(&copy.0, cache_bytes)?;
                engine.export(&mut |_| {}, &mut count)?;
                read_version(&engine)?
            }
        },
        EngineKind::Sled => {
            let copy = PrivateTempDir::new()?;
            copy_dir(&dir.join("db.sled"), &copy.0.join("db.sled"))?;
            let engine = sled_engine::SledEngine::open(&copy.0, cache_bytes)?;
            engine.export(&mut |_| {}, &mut count)?;
            read_version(&engine)?
        }
    };
    Ok(Inspection {
        schema_version,
        counts,
    })
}

/// A 0700 directory under the system's temporary directory, removed on drop.
struct PrivateTempDir(std::path::PathBuf);

impl PrivateTempDir {
    fn new() -> Result<Self, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("hearth-check-{}-{nanos}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", path.display())))?;
        Ok(Self(path))
    }
}

impl Drop for PrivateTempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), StoreError> {
    let io = |e: std::io::Error| StoreError::Io(format!("cannot copy {}: {e}", from.display()));
    std::fs::create_dir_all(to).map_err(io)?;
    for entry in std::fs::read_dir(from).map_err(io)? {
        let entry = entry.map_err(io)?;
        let kind = entry.file_type().map_err(io)?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).map_err(io)?;
        }
    }
    Ok(())
}
