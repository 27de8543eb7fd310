//! `hearth backup DEST` and `hearth restore SRC`.
//!
//! A running server holds the database lock, so a backup of a running server goes through the
//! server: it listens on a Unix socket, `<data_dir>/admin/admin.sock` (a 0700 directory, mode 0600, so only its own user
//! and root can connect), and on `backup` streams every row of its store from one consistent
//! view (see `store/backup.rs`; the socket and its protocol are `admin.rs`). The command writes those rows into a fresh database under
//! `DEST/db/`, then copies the rest of the data directory (media, signing keys, certificates).
//! With no server running, the command opens the database itself and does the same.
//!
//! The destination is created mode 0700 before anything is written into it, and every file in
//! it ends up 0600, directories 0700: it holds every message and password hash.
//!
//! A backup directory is a complete data directory: `hearth restore` copies it into an empty
//! data directory and verifies the result; starting a server on a copy of it works as well.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::admin::SOCKET_NAME;
use crate::admin::{write_stream, StreamReader};
use crate::cli::progress::Progress;
use crate::config::Config;
use crate::store::{self, EngineKind, Store};

/// Written into a backup directory; not copied back by restore.
pub const INFO_NAME: &str = "hearth-backup.txt";

fn dir_is_empty_or_missing(path: &Path) -> Result<bool, String> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Connects to a running server's admin socket; `None` if no server is running there.
fn connect(data_dir: &Path) -> Result<Option<UnixStream>, String> {
    let path = data_dir.join(SOCKET_NAME);
    match UnixStream::connect(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(format!(
            "cannot connect to the running server at {} ({e}); run the backup as the server's \
             user or as root",
            path.display()
        )),
    }
}

/// Whether a server is running on `data_dir` (its admin socket answers).
pub fn server_running(data_dir: &Path) -> bool {
    matches!(connect(data_dir), Ok(Some(_)))
}

/// `hearth backup DEST`.
pub fn backup(config: &Config, dest: &Path) -> Result<(), String> {
    if !dir_is_empty_or_missing(dest)? {
        return Err(format!(
            "{} is not empty; back up into a new or empty directory",
            dest.display()
        ));
    }
    // The copy holds every message and password hash: only its owner may enter it, from the
    // start (what is written inside cannot be reached by others while it is written).
    crate::admin::create_private_dir(dest)
        .map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let data_dir = &config.data_dir;
    let mut progress = Progress::new("store");
    let started = std::time::Instant::now();
    let (rows, engine, online) = match connect(data_dir)? {
        Some(mut stream) => {
            stream
                .write_all(b"backup\n")
                .map_err(|e| format!("admin socket: {e}"))?;
            let reader = StreamReader::new(BufReader::with_capacity(1 << 16, stream))
                .map_err(|e| e.to_string())?;
            let engine = reader.engine;
            progress.total = reader.total;
            let rows = load(dest, reader, engine, &mut progress)?;
            (rows, engine, true)
        }
        None => {
            let store = Store::open(
                &data_dir.join("db"),
                config.storage.engine,
                config.storage.cache_mb << 20,
            )
            .map_err(|e| {
                format!(
                    "no server answers on {} and the database cannot be opened: {e}",
                    data_dir.join(SOCKET_NAME).display()
                )
            })?;
            let store = Arc::new(store);
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(64);
            let exporter = {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut out = ChannelWriter {
                        tx,
                        buf: Vec::new(),
                    };
                    write_stream(&store, &mut out)
                })
            };
            let reader = StreamReader::new(BufReader::new(ChannelReader {
                rx,
                buf: Vec::new(),
                pos: 0,
            }))
            .map_err(|e| e.to_string())?;
            progress.total = reader.total;
            let rows = load(dest, reader, config.storage.engine, &mut progress);
            let exported = exporter.join().map_err(|_| "export thread panicked")?;
            let rows = rows?;
            exported.map_err(|e| e.to_string())?;
            (rows, config.storage.engine, false)
        }
    };
    let (files, bytes) = copy_tree(data_dir, dest, true)?;
    let info = format!(
        "Hearth backup\nserver_name = {}\nengine = {engine}\nrows = {rows}\nfiles = {files}\n\
         bytes = {bytes}\nfrom = {}\nonline = {online}\nunix_time = {}\n",
        config.server_name,
        data_dir.display(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    );
    std::fs::write(dest.join(INFO_NAME), info)
        .map_err(|e| format!("cannot write {}: {e}", dest.join(INFO_NAME).display()))?;
    restrict_tree(dest)?;
    crate::outln!(
        "backed up {rows} rows and {files} files ({bytes} bytes) of {} into {} in {:.1}s ({})",
        data_dir.display(),
        dest.display(),
        started.elapsed().as_secs_f64(),
        if online {
            "from the running server"
        } else {
            "server stopped"
        }
    )?;
    Ok(())
}

/// Gives every directory under `root` (itself included) mode 0700 and every file 0600,
/// whatever the storage engine or the copied source files had.
fn restrict_tree(root: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |path: &Path, e: std::io::Error| format!("cannot restrict {}: {e}", path.display());
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| fail(root, e))?;
    for entry in std::fs::read_dir(root).map_err(|e| fail(root, e))? {
        let entry = entry.map_err(|e| fail(root, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| fail(&path, e))?;
        if kind.is_dir() {
            restrict_tree(&path)?;
        } else if kind.is_file() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| fail(&path, e))?;
        }
    }
    Ok(())
}

fn load<R: BufRead>(
    dest: &Path,
    mut reader: StreamReader<R>,
    engine: EngineKind,
    progress: &mut Progress,
) -> Result<u64, String> {
    let rows = store::restore_rows(&dest.join("db"), engine, &mut reader, &mut |n| {
        progress.update(n, "rows")
    })
    .map_err(|e| e.to_string())?;
    progress.finish(rows, "rows");
    Ok(rows)
}

/// Carries the export of a locally opened store to the loader thread.
struct ChannelWriter {
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 1 << 16 {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.tx
                .send(std::mem::take(&mut self.buf))
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "reader gone"))?;
        }
        Ok(())
    }
}

struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.buf.len() {
            match self.rx.recv() {
                Ok(buf) => (self.buf, self.pos) = (buf, 0),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Copies every regular file under `from` into `to` (fsyncing each), skipping the database
/// directory, sockets and the backup info file when `skip_store`. Returns (files, bytes).
fn copy_tree(from: &Path, to: &Path, skip_store: bool) -> Result<(u64, u64), String> {
    let mut files = Vec::new();
    collect_files(from, Path::new(""), skip_store, &mut files)?;
    let total: u64 = files.iter().map(|(_, len)| len).sum();
    let mut progress = Progress::new("files");
    progress.total = Some(total);
    let mut done = 0;
    for (rel, _) in &files {
        let (src, dst) = (from.join(rel), to.join(rel));
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let copied = std::fs::copy(&src, &dst)
            .map_err(|e| format!("cannot copy {} to {}: {e}", src.display(), dst.display()))?;
        std::fs::File::open(&dst)
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("cannot sync {}: {e}", dst.display()))?;
        done += copied;
        progress.update(done, "bytes");
    }
    progress.finish(done, "bytes");
    Ok((files.len() as u64, done))
}

fn collect_files(
    root: &Path,
    rel: &Path,
    skip_store: bool,
    out: &mut Vec<(PathBuf, u64)>,
) -> Result<(), String> {
    let dir = root.join(rel);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && rel.as_os_str().is_empty() => {
            return Ok(())
        }
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    let mut entries: Vec<_> = entries
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let child = rel.join(&name);
        let top = rel.as_os_str().is_empty();
        // The admin socket's directory holds nothing but the socket.
        let socket_dir = Path::new(SOCKET_NAME).parent().map(Path::as_os_str);
        if top
            && (Some(name.as_os_str()) == socket_dir
                || name == INFO_NAME
                || (skip_store && name == "db"))
        {
            continue;
        }
        // Uploads in progress; complete media are renamed out of it.
        if child == Path::new("media/tmp") {
            continue;
        }
        let kind = entry
            .file_type()
            .map_err(|e| format!("cannot stat {}: {e}", root.join(&child).display()))?;
        if kind.is_dir() {
            collect_files(root, &child, skip_store, out)?;
        } else if kind.is_file() {
            // A file may vanish between listing and copying (a temporary upload); it is then
            // not part of the backup, which is what a copy a moment later would show too.
            if let Ok(meta) = entry.metadata() {
                out.push((child, meta.len()));
            }
        }
    }
    Ok(())
}

/// `hearth restore SRC`: copies a backup into the configured (empty) data directory and
/// verifies it opens.
pub fn restore(config: &Config, src: &Path) -> Result<(), String> {
    let data_dir = &config.data_dir;
    let db = src.join("db");
    let engine = if db.join("db.redb").exists() {
        EngineKind::Redb
    } else if db.join("db.sled").exists() {
        EngineKind::Sled
    } else {
        return Err(format!(
            "{} is not a Hearth backup or data directory (no db/db.redb or db/db.sled)",
            src.display()
        ));
    };
    if engine != config.storage.engine {
        return Err(format!(
            "the backup holds a {engine} database but the configuration says [storage] engine = \
             \"{}\"; set engine = \"{engine}\"",
            config.storage.engine
        ));
    }
    if server_running(data_dir) {
        return Err(format!(
            "a server is running on {}; stop it first",
            data_dir.display()
        ));
    }
    if !dir_is_empty_or_missing(data_dir)? {
        return Err(format!(
            "{} is not empty; restore only into an empty data directory (move the old one \
             aside first)",
            data_dir.display()
        ));
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let (files, bytes) = copy_tree(src, data_dir, false)?;
    let store = Store::open(&data_dir.join("db"), engine, config.storage.cache_mb << 20)
        .map_err(|e| format!("the restored database does not open: {e}"))?;
    let counts = store::table_counts(&store).map_err(|e| e.to_string())?;
    let rows: u64 = counts.iter().map(|(_, n)| n).sum();
    crate::outln!(
        "restored {files} files ({bytes} bytes) into {}; the database opens and all {rows} rows \
         read back",
        data_dir.display()
    )?;
    Ok(())
}
