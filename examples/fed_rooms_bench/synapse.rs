//! `--resident synapse`: the big room lives on a real Synapse (a child process of the Python
//! named by `--synapse-python`, with matrix-synapse installed, as `.ci/run` sets up in
//! `target/synapse-venv`). Configured from the interop test's templates in
//! `tests/interop/synapse/` (not a copy of them), started through its `run.py`, with the
//! benchmark's test CA and certificate, so Hearth and Synapse trust each other.
//!
//! `--synapse-keep DIR`: Synapse's data directory is DIR instead of a temporary one, and it
//! stays. Its ports are kept in `DIR/fed_rooms_bench.json` (the federation port is part of
//! Synapse's server name, hence of every user and event id in its database), with the filled
//! room (`main.rs`): a later run with the same `--members`, `--state` and `--room-version`
//! starts this Synapse again and joins that room without filling it again.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::procs::{free_port, Env, Server};

/// Settings of the benchmark only, after the template's: registration hashes passwords with
/// bcrypt (12 rounds by default, a quarter of a second each on a loaded core: filling 1,000
/// members would measure bcrypt), and the log keeps warnings and errors only.
const BENCH_SETTINGS: &str = "\n# fed_rooms_bench\nbcrypt_rounds: 4\n";

fn template(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop/synapse")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The record a kept directory holds (`--synapse-keep`): `fed_port`, `client_port`, and once
/// filled `room` (see `main.rs`).
pub fn record_path(dir: &Path) -> PathBuf {
    dir.join("fed_rooms_bench.json")
}

pub fn read_record(dir: &Path) -> Value {
    std::fs::read(record_path(dir))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_else(|| json!({}))
}

pub fn write_record(dir: &Path, record: &Value) {
    std::fs::write(record_path(dir), serde_json::to_vec_pretty(record).unwrap()).unwrap();
}

/// Synapse's data directory: `--synapse-keep`, else a temporary one, in memory (`/dev/shm`)
/// where there is one. Synapse's SQLite syncs every commit to disk (WAL, `synchronous`
/// FULL); on a disk busy with other work that made a state event take 150-250 ms instead of
/// ~50 ms, and the benchmark measures the joining Hearth, not Synapse's disk. For a kept
/// directory, pick one under `/dev/shm` for the same reason.
pub fn data_dir(env: &Env) -> PathBuf {
    match (&env.args.synapse_keep, &env.synapse_tmp) {
        (Some(dir), _) => dir.clone(),
        (None, Some(shm)) => shm.path().join("synapse"),
        (None, None) => env.tmp.path().join("synapse"),
    }
}

/// Starts Synapse; its `Server` is the Python process (RSS and CPU are Synapse's), `base` its
/// plain client listener, `name` its federation name (`127.0.0.1:<TLS port>`).
pub async fn spawn(env: &Env, python: &Path) -> Server {
    let dir = data_dir(env);
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    let [ca, cert, key] = &env.certs;
    for (from, to) in [(ca, "ca.pem"), (cert, "cert.pem"), (key, "key.pem")] {
        std::fs::copy(from, dir.join(to)).unwrap();
    }
    let dir_text = dir.display().to_string();
    // With `--logs`, Synapse's log goes there (the temporary directory goes at the end).
    let log_file = match &env.args.logs {
        Some(logs) => {
            std::fs::create_dir_all(logs).unwrap();
            logs.join("synapse.log")
        }
        None => dir.join("homeserver.log"),
    };
    let log = template("log.yaml")
        .replace("@DIR@/homeserver.log", &log_file.display().to_string())
        .replace("@DIR@", &dir_text)
        .replace("level: INFO", "level: WARNING");
    std::fs::write(dir.join("log.yaml"), log).unwrap();
    // A kept directory's Synapse keeps its name, so its ports.
    let mut record = read_record(&dir);
    let port = |key: &str| record[key].as_u64().and_then(|p| u16::try_from(p).ok());
    let (fed, client) = match (port("fed_port"), port("client_port")) {
        (Some(fed), Some(client)) => (fed, client),
        _ => (free_port(), free_port()),
    };
    if env.args.synapse_keep.is_some() {
        record["fed_port"] = json!(fed);
        record["client_port"] = json!(client);
        write_record(&dir, &record);
    }
    let config = template("homeserver.yaml")
        .replace("@DIR@", &dir_text)
        .replace("@FED_PORT@", &fed.to_string())
        .replace("@CLIENT_PORT@", &client.to_string())
        + BENCH_SETTINGS;
    std::fs::write(dir.join("homeserver.yaml"), config).unwrap();
    let output = std::fs::File::create(dir.join("stdout.log")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/synapse/run.py");
    // run.py exits when its standard input closes: the pipe stays in the `Child`.
    let mut child = Command::new(python)
        .arg(&script)
        .arg(&dir)
        .env("SYNAPSE_KEEP_DIR", "1")
        .stdin(Stdio::piped())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .spawn()
        .expect("--synapse-python runs");
    let base = format!("http://127.0.0.1:{client}");
    let began = Instant::now();
    while env
        .http
        .get(format!("{base}/_matrix/client/versions"))
        .send()
        .await
        .is_err()
    {
        if child.try_wait().ok().flatten().is_some() || began.elapsed() > Duration::from_secs(120) {
            let said = std::fs::read_to_string(dir.join("stdout.log")).unwrap_or_default();
            let _ = child.kill();
            panic!("Synapse did not start:\n{said}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "Synapse 127.0.0.1:{fed} started in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    Server {
        name: format!("127.0.0.1:{fed}"),
        base,
        child,
    }
}

/// Synapse's warnings and errors (the last 40 lines), shown when the benchmark ends.
pub fn said(env: &Env) -> String {
    let log_file = match &env.args.logs {
        Some(logs) => logs.join("synapse.log"),
        None => data_dir(env).join("homeserver.log"),
    };
    let log = std::fs::read_to_string(log_file).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
