//! Federation benchmark: the memory of a Hearth server that knows many remote servers.
//!
//! Server A is the real `hearth` binary as a child process (so its RSS is its own), named
//! `127.0.0.1:<port>` with HTTPS on that port. `--remotes` other Hearth servers (default 100)
//! run in this process, each with its own name, store and HTTPS listener; one test CA made here
//! signs every certificate and every server trusts it, loopback allowed.
//!
//! 1. A idle, after start.
//! 2. Every remote sends A a signed request (a profile query): A fetches, verifies and keeps
//!    each remote's signing keys.
//! 3. A user on A sends a to-device message to a user on every remote: A queues a transaction
//!    per destination and delivers it; the benchmark waits until every remote user has it.
//!    The destinations are then known and idle.
//!
//! RSS of A (VmRSS) after each phase; the difference per remote server is the figure.
//!
//! `cargo build --release --bin hearth --example fed_bench &&
//!  target/release/examples/fed_bench [--remotes N] [--server PATH]`

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hearth::config::{Config, Listener, Outbound, RateLimit, Registration, RegistrationMode};
use hearth::config::{Tls, TlsMode};
use serde_json::{json, Value};

#[path = "support/proc_status.rs"]
mod proc_status;
use proc_status::status_kib;

struct Args {
    remotes: usize,
    server: PathBuf,
}

fn args() -> Args {
    let server = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("hearth")))
        .unwrap_or_else(|| PathBuf::from("hearth"));
    let mut args = Args {
        remotes: 100,
        server,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    for pair in raw.chunks(2) {
        match (pair[0].as_str(), pair.get(1)) {
            ("--remotes", Some(v)) => args.remotes = v.parse().expect("--remotes N"),
            ("--server", Some(v)) => args.server = PathBuf::from(v),
            (other, _) => panic!("unknown argument {other}"),
        }
    }
    args
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The test CA (certificate PEM path) and one leaf certificate for 127.0.0.1.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let (ca_pem, cert, key) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    (ca_pem, cert, key)
}

fn remote_config(dir: &Path, port: u16, certs: &(PathBuf, PathBuf, PathBuf)) -> Config {
    Config {
        server_name: format!("127.0.0.1:{port}"),
        data_dir: dir.to_path_buf(),
        listeners: vec![Listener {
            bind: "127.0.0.1:0".parse().unwrap(),
        }],
        registration: Registration {
            mode: RegistrationMode::Open,
            ..Default::default()
        },
        bcrypt_cost: 4,
        rate_limit: RateLimit {
            enabled: false,
            ..Default::default()
        },
        outbound: Outbound {
            allow_networks: vec!["127.0.0.0/8".into()],
            extra_ca_file: Some(certs.0.clone()),
        },
        tls: Tls {
            mode: TlsMode::Files,
            listeners: vec![format!("127.0.0.1:{port}").parse().unwrap()],
            cert: certs.1.display().to_string(),
            key: certs.2.display().to_string(),
            ..Default::default()
        },
        log_level: "warn".into(),
        ..Default::default()
    }
}

async fn register(http: &reqwest::Client, base: &str, name: &str) -> (String, String) {
    let url = format!("{base}/_matrix/client/v3/register");
    let challenge: Value = http
        .post(&url)
        .json(&json!({"username": name, "password": "benchmark-password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let body: Value = http
        .post(&url)
        .json(&json!({"username": name, "password": "benchmark-password",
            "auth": {"type": "m.login.dummy", "session": challenge["session"]}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        body["user_id"].as_str().expect("registered").to_owned(),
        body["access_token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::main]
async fn main() {
    let args = args();
    let tmp = tempfile::tempdir().unwrap();
    let certs = certificates(tmp.path());
    let http = reqwest::Client::new();

    // Server A: the binary, configured by a file.
    let (a_tls, a_http) = (free_port(), free_port());
    let a_name = format!("127.0.0.1:{a_tls}");
    let a_dir = tmp.path().join("a");
    std::fs::create_dir_all(&a_dir).unwrap();
    let config = format!(
        "server_name = \"{a_name}\"\ndata_dir = \"{}\"\nbcrypt_cost = 4\nlog_level = \"warn\"\n\
         [[listeners]]\nbind = \"127.0.0.1:{a_http}\"\n[registration]\nmode = \"open\"\n\
         [rate_limit]\nenabled = false\n[outbound]\nallow_networks = [\"127.0.0.0/8\"]\n\
         extra_ca_file = \"{}\"\n[tls]\nmode = \"files\"\nlisteners = [\"127.0.0.1:{a_tls}\"]\n\
         cert = \"{}\"\nkey = \"{}\"\n",
        a_dir.display(),
        certs.0.display(),
        certs.1.display(),
        certs.2.display()
    );
    let config_path = tmp.path().join("a.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut child = Command::new(&args.server)
        .env_clear()
        .env("HEARTH_CONFIG", &config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("hearth binary (build it with --release --bin hearth)");
    let a_base = format!("http://127.0.0.1:{a_http}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while http
        .get(format!("{a_base}/_matrix/client/versions"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "server A did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (alice, alice_token) = register(&http, &a_base, "alice").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = status_kib(child.id(), "VmRSS:");
    println!("A idle: {idle} KiB RSS");

    // The remotes, in this process.
    let mut remotes = Vec::new();
    for i in 0..args.remotes {
        let dir = tmp.path().join(format!("r{i}"));
        let mut config = remote_config(&dir, free_port(), &certs);
        config.storage.cache_mb = 4;
        let server = hearth::server::start(config.clone())
            .await
            .expect("remote starts");
        let base = server.base_url();
        let (user, token) = register(&http, &base, "bob").await;
        remotes.push((server, base, user, token));
    }
    println!("{} remote servers started", remotes.len());

    // 2. Every remote makes one signed request to A: A learns its keys.
    let a_server = ruma::ServerName::parse(&a_name).unwrap();
    let alice_id = ruma::UserId::parse(&alice).unwrap();
    let started = Instant::now();
    for (server, ..) in &remotes {
        let request = ruma::api::federation::query::get_profile_information::v1::Request::new(
            alice_id.clone(),
        );
        server
            .services
            .federation
            .send(&a_server, request)
            .await
            .expect("profile query to A");
    }
    let keys_elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let with_keys = status_kib(child.id(), "VmRSS:");
    println!(
        "A knowing {} servers' keys: {with_keys} KiB RSS (+{} KiB, {:.1} KiB per server; \
         {:.1} ms per first request incl. key fetch)",
        remotes.len(),
        with_keys as i64 - idle as i64,
        (with_keys as f64 - idle as f64) / remotes.len() as f64,
        keys_elapsed.as_secs_f64() * 1000.0 / remotes.len() as f64
    );

    // 3. One to-device message to every remote user: a destination per remote.
    let mut messages = serde_json::Map::new();
    for (_, _, user, _) in &remotes {
        messages.insert(user.clone(), json!({"*": {"hello": "from A"}}));
    }
    let response = http
        .put(format!(
            "{a_base}/_matrix/client/v3/sendToDevice/m.bench/txn1"
        ))
        .bearer_auth(&alice_token)
        .json(&json!({"messages": messages}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "sendToDevice");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    for (_, base, _, token) in &remotes {
        loop {
            let sync: Value = http
                .get(format!("{base}/_matrix/client/v3/sync?timeout=1000"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let arrived = sync["to_device"]["events"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["type"] == "m.bench"));
            if arrived {
                break;
            }
            assert!(Instant::now() < deadline, "to-device did not arrive");
        }
    }
    let delivered = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let with_destinations = status_kib(child.id(), "VmRSS:");
    println!(
        "A with {} idle destinations: {with_destinations} KiB RSS (+{} KiB over keys only, \
         {:.1} KiB per destination); all delivered in {:.0} ms",
        remotes.len(),
        with_destinations as i64 - with_keys as i64,
        (with_destinations as f64 - with_keys as f64) / remotes.len() as f64,
        delivered.as_secs_f64() * 1000.0
    );
    println!(
        "A with {} known remote servers: {with_destinations} KiB RSS ({} KiB more than idle)",
        remotes.len(),
        with_destinations as i64 - idle as i64
    );

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    for (server, ..) in remotes {
        server.stop().await;
    }
}
