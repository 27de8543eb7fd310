//! Start-up recovery of the media repository: what a crash or power cut can leave behind is
//! invisible to clients, and removed here before the server serves.

use std::path::PathBuf;

use super::{Media, MediaBlobs};

impl Media {
    /// Start-up recovery (the server calls it before serving): removes the temporary
    /// directory (uploads a crash interrupted, never visible) and every content file that no
    /// index row references (placed by an upload whose commit never happened, or deleted by
    /// one whose removal a power cut undid). Errors are logged: they leave only invisible
    /// files behind.
    pub fn recover(&self) {
        let tmp = self.root.join("tmp");
        if let Err(e) = self
            .files
            .remove_tree(&tmp)
            .and_then(|()| self.files.create_dirs(&tmp))
        {
            log::error!("cannot reset {}: {e}", tmp.display());
        }
        match self.sweep_orphans() {
            Ok(0) => {}
            Ok(n) => log::warn!("removed {n} media files no upload refers to (left by a crash)"),
            Err(e) => log::error!("media orphan sweep: {e}"),
        }
    }

    /// Removes content files (`ab/cd/<sha256>`) without a reference count row; returns how
    /// many.
    fn sweep_orphans(&self) -> Result<usize, String> {
        let is_hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        let list = |dir: &std::path::Path| -> Result<Vec<(String, PathBuf)>, String> {
            let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            Ok(entries
                .flatten()
                .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
                .collect())
        };
        if !self.root.is_dir() {
            return Ok(0);
        }
        let mut removed = 0;
        for (a, dir_a) in list(&self.root)? {
            if !is_hex(&a, 2) || !dir_a.is_dir() {
                continue;
            }
            for (b, dir_b) in list(&dir_a)? {
                if !is_hex(&b, 2) || !dir_b.is_dir() {
                    continue;
                }
                for (name, path) in list(&dir_b)? {
                    if !is_hex(&name, 64) || !name.starts_with(&format!("{a}{b}")) {
                        continue;
                    }
                    let referenced = self
                        .store
                        .get::<MediaBlobs>(&name)
                        .map_err(|e| e.to_string())?
                        .is_some();
                    if !referenced {
                        self.files
                            .remove(&path)
                            .map_err(|e| format!("{}: {e}", path.display()))?;
                        removed += 1;
                    }
                }
            }
        }
        Ok(removed)
    }
}
