//! The media service's writes to the filesystem, in one place: create and write a temporary
//! file, fsync it, create the fan-out directories (fsyncing each new one into its parent),
//! rename into place and fsync the directory, remove. Every fsync error is an error.
//!
//! A [`Recorder`] registered for a media root (tests only) is told of every change and every
//! completed fsync, so a test can simulate a power cut: drop whatever no fsync covered and
//! check that every acknowledged upload survives (`tests/it/media_power.rs`). It can also
//! suppress one kind of fsync, to show that the test notices a missing one.

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

/// The fsyncs the media service relies on, by what they make durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncPoint {
    /// A received file's bytes, before it is renamed into place.
    FileData,
    /// A new fan-out directory's entry in its parent (`media/ab`, `media/ab/cd`).
    NewDir,
    /// The renamed file's entry in its fan-out directory.
    Rename,
}

/// Observes the media service's filesystem changes (tests). Paths are absolute.
pub trait Recorder: Send + Sync {
    fn created_file(&self, path: &Path);
    fn created_dir(&self, path: &Path);
    fn renamed(&self, from: &Path, to: &Path);
    fn removed(&self, path: &Path);
    /// `path`'s contents as they are now are durable.
    fn synced_file(&self, path: &Path);
    /// The entries of directory `path` as they are now are durable.
    fn synced_dir(&self, path: &Path);
    /// Whether to skip this fsync (to show that a test catches its absence).
    fn skip(&self, _point: SyncPoint) -> bool {
        false
    }
}

type Registry = Mutex<HashMap<PathBuf, Arc<dyn Recorder>>>;

fn registry() -> &'static Registry {
    static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Routes the filesystem changes of the media service whose data directory is `data_dir` to
/// `recorder`, from the next start on (tests; `None` removes it).
#[doc(hidden)]
pub fn set_recorder(data_dir: &Path, recorder: Option<Arc<dyn Recorder>>) {
    let mut map = registry().lock().unwrap_or_else(|e| e.into_inner());
    let key = data_dir.join("media");
    match recorder {
        Some(r) => map.insert(key, r),
        None => map.remove(&key),
    };
}

/// The media root's filesystem access.
#[derive(Clone)]
pub struct Files {
    recorder: Option<Arc<dyn Recorder>>,
}

/// A file being written.
pub struct Writing {
    file: std::fs::File,
    path: PathBuf,
}

impl Files {
    pub fn new(root: PathBuf) -> Self {
        let recorder = registry()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&root)
            .cloned();
        Files { recorder }
    }

    fn skip(&self, point: SyncPoint) -> bool {
        self.recorder.as_ref().is_some_and(|r| r.skip(point))
    }

    pub fn create(&self, path: &Path) -> std::io::Result<Writing> {
        let file = std::fs::File::create(path)?;
        if let Some(r) = &self.recorder {
            r.created_file(path);
        }
        Ok(Writing {
            file,
            path: path.to_owned(),
        })
    }

    pub fn write(&self, w: &mut Writing, bytes: &[u8]) -> std::io::Result<()> {
        w.file.write_all(bytes)
    }

    /// Makes the file's contents durable.
    pub fn sync_file(&self, w: &Writing) -> std::io::Result<()> {
        if self.skip(SyncPoint::FileData) {
            return Ok(());
        }
        w.file.sync_all()?;
        if let Some(r) = &self.recorder {
            r.synced_file(&w.path);
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path, point: SyncPoint) -> std::io::Result<()> {
        if self.skip(point) {
            return Ok(());
        }
        std::fs::File::open(dir)?.sync_all()?;
        if let Some(r) = &self.recorder {
            r.synced_dir(dir);
        }
        Ok(())
    }

    /// Creates `dir` and any missing parents (inside the media root, or the root itself), and
    /// makes each new directory's entry durable in its parent, so a file renamed into it
    /// later cannot vanish with a directory entry lost at a power cut.
    pub fn create_dirs(&self, dir: &Path) -> std::io::Result<()> {
        let mut missing = Vec::new();
        let mut at = dir;
        while !at.is_dir() {
            missing.push(at.to_owned());
            match at.parent() {
                Some(p) => at = p,
                None => break,
            }
        }
        for new in missing.iter().rev() {
            match std::fs::create_dir(new) {
                Ok(()) => {
                    if let Some(r) = &self.recorder {
                        r.created_dir(new);
                    }
                }
                // Another upload created it meanwhile; it syncs it too, but syncing twice is
                // harmless and this upload must not rely on that one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            if let Some(parent) = new.parent() {
                self.sync_dir(parent, SyncPoint::NewDir)?;
            }
        }
        Ok(())
    }

    /// Renames `from` to `to` and makes the new entry durable.
    pub fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::rename(from, to)?;
        if let Some(r) = &self.recorder {
            r.renamed(from, to);
        }
        match to.parent() {
            Some(parent) => self.sync_dir(parent, SyncPoint::Rename),
            None => Ok(()),
        }
    }

    /// Removes a file. Not synced: a removal lost at a power cut leaves a file no index row
    /// refers to, which the sweep at start removes again.
    pub fn remove(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_file(path)?;
        if let Some(r) = &self.recorder {
            r.removed(path);
        }
        Ok(())
    }

    /// Removes a directory tree (the temporary directory at start).
    pub fn remove_tree(&self, dir: &Path) -> std::io::Result<()> {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {
                if let Some(r) = &self.recorder {
                    r.removed(dir);
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}
