//! The admin socket, `<data_dir>/admin/admin.sock`: how `hearth backup` reaches a running
//! server (which holds the database lock). The server side (started by `server`) streams every
//! row of the store from one consistent view in the backup protocol below; the command side
//! (`cli::backup`) reads it with [`StreamReader`].

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;

use crate::config::Config;
use crate::store::{BackupRow, EngineKind, Store, StoreError};

/// The admin socket's path inside the data directory (in a 0700 directory of its own).
pub const SOCKET_NAME: &str = "admin/admin.sock";
const PROTOCOL: &str = "hearth-backup 1";

const TAG_TOTAL: u8 = b'T';
const TAG_ROW: u8 = b'R';
const TAG_END: u8 = b'E';
const TAG_ERROR: u8 = b'X';

fn io_err(e: std::io::Error) -> StoreError {
    StoreError::Io(format!("backup stream: {e}"))
}

/// Streams the store to `out` in the backup protocol (server side; blocking).
pub fn write_stream(store: &Store, out: &mut dyn Write) -> Result<u64, StoreError> {
    writeln!(out, "{PROTOCOL} {}", store.engine_kind()).map_err(io_err)?;
    let mut failed: Option<std::io::Error> = None;
    let shared = std::cell::RefCell::new(&mut *out);
    let result = store.export(
        &mut |total| {
            let mut frame = vec![TAG_TOTAL];
            frame.extend_from_slice(&total.to_be_bytes());
            if let Err(e) = shared.borrow_mut().write_all(&frame) {
                failed.get_or_insert(e);
            }
        },
        &mut |table, key, value| {
            let mut frame = Vec::with_capacity(11 + table.len() + key.len() + value.len());
            frame.push(TAG_ROW);
            frame.extend_from_slice(&(table.len() as u16).to_be_bytes());
            frame.extend_from_slice(table.as_bytes());
            frame.extend_from_slice(&(key.len() as u32).to_be_bytes());
            frame.extend_from_slice(key);
            frame.extend_from_slice(&(value.len() as u32).to_be_bytes());
            frame.extend_from_slice(value);
            shared.borrow_mut().write_all(&frame).map_err(io_err)
        },
    );
    if let Some(e) = failed {
        return Err(io_err(e));
    }
    match result {
        Ok(rows) => {
            let mut frame = vec![TAG_END];
            frame.extend_from_slice(&rows.to_be_bytes());
            out.write_all(&frame).map_err(io_err)?;
            out.flush().map_err(io_err)?;
            Ok(rows)
        }
        Err(e) => {
            let msg = e.to_string();
            let mut frame = vec![TAG_ERROR];
            frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            frame.extend_from_slice(msg.as_bytes());
            let _ = out.write_all(&frame).and_then(|_| out.flush());
            Err(e)
        }
    }
}

/// Serves the admin socket until `shutdown` resolves (server side).
pub async fn serve_socket(
    store: Store,
    listener: tokio::net::UnixListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("admin socket: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let store = store.clone();
        tokio::spawn(async move {
            let Ok(stream) = stream.into_std() else {
                return;
            };
            let _ = tokio::task::spawn_blocking(move || handle_connection(&store, stream)).await;
        });
    }
}

fn handle_connection(store: &Store, stream: UnixStream) {
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    // A sled export pauses commits while it streams: a client that stops reading must not
    // hold them up for long.
    let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(30)));
    let mut command = String::new();
    let Ok(reader) = stream.try_clone() else {
        return;
    };
    if BufReader::new(reader).read_line(&mut command).is_err() {
        return;
    }
    let mut out = BufWriter::with_capacity(1 << 16, stream);
    match command.trim() {
        "backup" => {
            log::info!("admin socket: backup started");
            match write_stream(store, &mut out) {
                Ok(rows) => log::info!("admin socket: backup of {rows} rows sent"),
                Err(e) => log::warn!("admin socket: backup failed: {e}"),
            }
        }
        other => {
            let _ = writeln!(out, "error: unknown command {other:?}");
        }
    }
}

/// Reads the backup protocol: the engine from the header, then rows.
pub struct StreamReader<R: Read> {
    input: R,
    pub engine: EngineKind,
    pub total: Option<u64>,
    pending: Option<BackupRow>,
    done: bool,
}

fn read_exact<R: Read>(r: &mut R, n: usize) -> Result<Vec<u8>, StoreError> {
    let mut buf = vec![0; n];
    r.read_exact(&mut buf).map_err(|e| {
        StoreError::Io(format!(
            "backup stream ended early ({e}); did the server stop?"
        ))
    })?;
    Ok(buf)
}

fn read_u32<R: Read>(r: &mut R) -> Result<usize, StoreError> {
    let b = read_exact(r, 4)?;
    Ok(u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
}

fn read_u64<R: Read>(r: &mut R) -> Result<u64, StoreError> {
    let b = read_exact(r, 8)?;
    Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
}

impl<R: BufRead> StreamReader<R> {
    pub fn new(mut input: R) -> Result<Self, StoreError> {
        let mut header = String::new();
        input.read_line(&mut header).map_err(io_err)?;
        let header = header.trim();
        let engine = header
            .strip_prefix(PROTOCOL)
            .map(str::trim)
            .ok_or_else(|| StoreError::Io(format!("the server answered {header:?}")))?
            .parse::<EngineKind>()
            .map_err(StoreError::Io)?;
        let mut reader = StreamReader {
            input,
            engine,
            total: None,
            pending: None,
            done: false,
        };
        // The total, if the engine sends one, comes before the first row.
        reader.pending = reader.next_frame()?;
        Ok(reader)
    }

    fn next_frame(&mut self) -> Result<Option<BackupRow>, StoreError> {
        loop {
            if self.done {
                return Ok(None);
            }
            let tag = read_exact(&mut self.input, 1)?[0];
            match tag {
                TAG_TOTAL => self.total = Some(read_u64(&mut self.input)?),
                TAG_ROW => {
                    let b = read_exact(&mut self.input, 2)?;
                    let tlen = u16::from_be_bytes([b[0], b[1]]) as usize;
                    let table = String::from_utf8(read_exact(&mut self.input, tlen)?)
                        .map_err(|_| StoreError::Io("backup stream: bad table name".into()))?;
                    let klen = read_u32(&mut self.input)?;
                    let key = read_exact(&mut self.input, klen)?;
                    let vlen = read_u32(&mut self.input)?;
                    let value = read_exact(&mut self.input, vlen)?;
                    return Ok(Some(BackupRow { table, key, value }));
                }
                TAG_END => {
                    read_u64(&mut self.input)?;
                    self.done = true;
                }
                TAG_ERROR => {
                    let len = read_u32(&mut self.input)?;
                    let msg = read_exact(&mut self.input, len)?;
                    return Err(StoreError::Io(format!(
                        "the server failed: {}",
                        String::from_utf8_lossy(&msg)
                    )));
                }
                other => {
                    return Err(StoreError::Io(format!(
                        "backup stream: unexpected frame {other:#x}"
                    )))
                }
            }
        }
    }
}

impl<R: BufRead> Iterator for StreamReader<R> {
    type Item = Result<BackupRow, StoreError>;
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(row) = self.pending.take() {
            return Some(Ok(row));
        }
        match self.next_frame() {
            Ok(Some(row)) => Some(Ok(row)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Starts the admin socket (`<data_dir>/admin/admin.sock`: a 0700 directory, a 0600 socket)
/// that `hearth backup` talks to.
/// A server that cannot create it still serves; only online backups are unavailable.
pub fn start(
    config: &Config,
    store: Store,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = config.data_dir.join(SOCKET_NAME);
    // A socket file left by a killed server: the store lock we hold proves no server uses it.
    let _ = std::fs::remove_file(&path);
    // The socket lives in a directory only the server's user can enter, created before the
    // socket: nobody else can connect, not even in the instant before the socket's own mode
    // is tightened.
    let listener = path
        .parent()
        .map(create_private_dir)
        .unwrap_or(Ok(()))
        .and_then(|()| tokio::net::UnixListener::bind(&path))
        .and_then(|l| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            Ok(l)
        });
    tokio::spawn(async move {
        match listener {
            Ok(listener) => {
                serve_socket(store, listener, stop).await;
                let _ = std::fs::remove_file(&path);
            }
            Err(e) => log::warn!(
                "cannot create the admin socket {} ({e}); `hearth backup` needs the server \
                 stopped",
                path.display()
            ),
        }
    })
}

/// Creates `dir` (and missing parents) as mode 0700, and tightens it to 0700 if it existed: a
/// directory only the server's user can enter (the admin socket's, a backup's destination).
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}
