//! Server processes and what /proc tells of them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Args;

#[path = "../support/proc_status.rs"]
mod proc_status;
pub use proc_status::status_kib as status_kb;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// CPU time (user + system, all threads) of `pid`, in seconds.
pub fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command: state is field 3 of stat(5), utime 14 and stime 15.
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    (ticks(14).unwrap_or(0) + ticks(15).unwrap_or(0)) as f64 / 100.0
}

/// Bytes `pid` read through read-like calls (`read`, `pread`: sockets and files).
pub fn rchar(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// The test CA (certificate PEM path) and one leaf certificate for 127.0.0.1.
pub fn certificates(dir: &Path) -> [PathBuf; 3] {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // A name of its own: with rcgen's default name on both, the leaf's issuer equals its
    // subject and OpenSSL (Synapse) takes the leaf for self-signed and rejects it.
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fed_rooms_bench test CA");
    let ca = params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    let leaf = leaf.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let paths = [
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    ];
    std::fs::write(&paths[0], ca.pem()).unwrap();
    std::fs::write(&paths[1], leaf.pem()).unwrap();
    std::fs::write(&paths[2], leaf_key.serialize_pem()).unwrap();
    paths
}

/// One Hearth server: a child process with its client API on plain HTTP.
pub struct Server {
    pub name: String,
    pub base: String,
    pub child: Child,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        signal(self.pid(), "CONT");
        signal(self.pid(), "TERM");
        let _ = self.child.wait();
    }
}

pub struct Env {
    pub tmp: tempfile::TempDir,
    /// Synapse's data directory when `--synapse-keep` names none (see `synapse::data_dir`).
    pub synapse_tmp: Option<tempfile::TempDir>,
    pub certs: [PathBuf; 3],
    pub args: Args,
    pub http: reqwest::Client,
}

impl Env {
    pub async fn spawn(&self, label: &str, cache_mb: u64) -> Server {
        self.try_spawn(label, cache_mb, "")
            .await
            .unwrap_or_else(|| panic!("server {label} exited at start (see --logs)"))
    }

    /// Starts a server with `extra` appended to its configuration; `None` if it exits at
    /// start (an older binary refuses a setting it does not know).
    pub async fn try_spawn(&self, label: &str, cache_mb: u64, extra: &str) -> Option<Server> {
        let (tls, plain) = (free_port(), free_port());
        let name = format!("127.0.0.1:{tls}");
        let dir = self.tmp.path().join(label);
        std::fs::create_dir_all(&dir).unwrap();
        let [ca, cert, key] = &self.certs;
        let config = format!(
            "server_name = \"{name}\"\ndata_dir = \"{}\"\nbcrypt_cost = 4\nlog_level = \"{}\"\n\
             [[listeners]]\nbind = \"127.0.0.1:{plain}\"\n[registration]\nmode = \"open\"\n\
             [rate_limit]\nenabled = false\n[storage]\ncache_mb = {cache_mb}\n\
             [outbound]\nallow_networks = [\"127.0.0.0/8\"]\nextra_ca_file = \"{}\"\n\
             [tls]\nmode = \"files\"\nlisteners = [\"127.0.0.1:{tls}\"]\n\
             cert = \"{}\"\nkey = \"{}\"\n{extra}",
            dir.display(),
            self.args.log_level,
            ca.display(),
            cert.display(),
            key.display()
        );
        let config_path = self.tmp.path().join(format!("{label}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let stderr = match &self.args.logs {
            Some(logs) => {
                std::fs::create_dir_all(logs).unwrap();
                Stdio::from(std::fs::File::create(logs.join(format!("{label}.log"))).unwrap())
            }
            None => Stdio::null(),
        };
        let mut child = Command::new(&self.args.server)
            .env_clear()
            .env("HEARTH_CONFIG", &config_path)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("the hearth binary (build it with --release --bin hearth)");
        let base = format!("http://127.0.0.1:{plain}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while self
            .http
            .get(format!("{base}/_matrix/client/versions"))
            .send()
            .await
            .is_err()
        {
            if child.try_wait().ok().flatten().is_some() {
                return None;
            }
            assert!(Instant::now() < deadline, "server {label} did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(Server { name, base, child })
    }
}

/// `perf record --call-graph dwarf -p pid` until dropped (SIGINT), when `--perf` is given.
pub struct Perf(pub Option<Child>);

impl Perf {
    pub fn start(env: &Env, pid: u32, name: &str) -> Perf {
        let Some(dir) = &env.args.perf else {
            return Perf(None);
        };
        std::fs::create_dir_all(dir).unwrap();
        let out = dir.join(format!("{name}.data"));
        let child = Command::new("perf")
            .args([
                "record",
                "--call-graph",
                "dwarf,16384",
                "-F",
                "299",
                "-p",
                &pid.to_string(),
                "-o",
            ])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        std::thread::sleep(Duration::from_millis(300));
        Perf(child)
    }
}

impl Drop for Perf {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            signal(child.id(), "INT");
            let _ = child.wait();
        }
    }
}

/// Samples VmRSS of `pid` every 10 ms until stopped; returns the highest.
pub struct Sampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<u64>,
}

pub fn rss_sampler(pid: u32) -> Sampler {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut peak = 0;
        loop {
            peak = peak.max(status_kb(pid, "VmRSS:"));
            tokio::select! {
                _ = &mut stopped => return peak,
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    });
    Sampler { stop, task }
}

impl Sampler {
    pub async fn stop(self) -> u64 {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(0)
    }
}
