//! `--resident synapse`: the big room lives on a real Synapse (a child process of the Python
//! named by `--synapse-python`, with matrix-synapse installed, as `.ci/run` sets up in
//! `target/synapse-venv`). Configured from the interop test's templates in
//! `tests/interop/synapse/` (not a copy of them), started through its `run.py`, with the
//! benchmark's test CA and certificate, so Hearth and Synapse trust each other.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Starts Synapse; its `Server` is the Python process (RSS and CPU are Synapse's), `base` its
/// plain client listener, `name` its federation name (`127.0.0.1:<TLS port>`).
pub async fn spawn(env: &Env, python: &Path) -> Server {
    let dir = env.tmp.path().join("synapse");
    std::fs::create_dir_all(&dir).unwrap();
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
    let (fed, client) = (free_port(), free_port());
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
    let log =
        std::fs::read_to_string(env.tmp.path().join("synapse/homeserver.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
