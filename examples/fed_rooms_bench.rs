//! Federation benchmark II: rooms shared between Hearth servers (issue 14's figures).
//!
//! Every server is a child process of the release `hearth` binary (so RSS and CPU read from
//! `/proc/<pid>` are that server's own), named `127.0.0.1:<port>`, HTTPS on that port with a
//! certificate of one test CA made here, which every server trusts; loopback allowed.
//!
//! Phases (`--phases`, default all three):
//! - `join`: on A, `--members` local users (registered and joined through the client API,
//!   `--concurrency` at a time) and custom state events (`m.bench.state`) until the room holds
//!   `--state` state events. Then a user on B joins it over federation (`/join?server_name=A`):
//!   wall time, B's peak RSS during the join (VmHWM, reset just before), the CPU each server
//!   spent, the bytes A wrote (≈ the `send_join` answer), then the time until the user on B
//!   sees (`/sync`) the first message sent on A after the join. `--join full,partial`: once
//!   per mode, each by a new server B (`federation.partial_state_joins`); for a partial-state
//!   join also the time until B lists every member (the background resync done).
//! - `inbound`: users on B send `--messages` messages in that room (`--concurrency` at a time);
//!   B's queue delivers them to A in `/send` transactions. Twice: *live* (A running all along:
//!   the rate the pair sustains) and *backlog* (A stopped with SIGSTOP while B's users send,
//!   then resumed: A receives back-to-back full transactions, so the rate is A's). A's CPU per
//!   received PDU for both. A message sent after all others marks the end.
//! - `fanout`: `--destinations` more servers, each with a user joined to a room of A. A user on
//!   A sends `--rounds` messages one after the other: time until every destination's user has
//!   it (`/sync`); then a burst of `--burst` messages: time until all have the last. A's CPU and
//!   RSS.
//!
//! `--perf DIR` records `perf record --call-graph dwarf` of B during the join and of A during the backlog.
//!
//! `cargo run --release --example fed_rooms_bench -- --help`

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Semaphore;

const HELP: &str = "fed_rooms_bench: rooms shared between Hearth servers (join, inbound, fan-out)

cargo build --release --bin hearth --example fed_rooms_bench &&
target/release/examples/fed_rooms_bench [options]

  --phases LIST        join,inbound,fanout (default: all; inbound needs join)
  --members N          members of the big room on A (default 1000)
  --state N            state events of the big room, members included (default 10000)
  --room-version V     version of the rooms created (default: the server's)
  --join LIST          full,partial: B's joins, each by a new server (default full)
  --messages N         messages B sends A in the inbound phase (default 2000)
  --destinations N     servers in the fan-out room besides A (default 20)
  --rounds N           single messages timed in the fan-out phase (default 20)
  --burst N            messages of the fan-out burst (default 200)
  --concurrency N      client requests in flight while filling (default 16)
  --server PATH        the hearth binary (default: target/release/hearth)
  --logs DIR           keep the servers' logs (stderr) there
  --log-level LEVEL    the servers' log level (default warn)
  --perf DIR           perf record B's join and A's backlog into DIR
";

struct Args {
    phases: Vec<String>,
    members: usize,
    state: usize,
    room_version: Option<String>,
    join: Vec<String>,
    messages: usize,
    destinations: usize,
    rounds: usize,
    burst: usize,
    concurrency: usize,
    server: PathBuf,
    logs: Option<PathBuf>,
    log_level: String,
    perf: Option<PathBuf>,
}

fn args() -> Args {
    let server = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("hearth")))
        .unwrap_or_else(|| PathBuf::from("hearth"));
    let mut args = Args {
        phases: vec!["join".into(), "inbound".into(), "fanout".into()],
        members: 1000,
        state: 10_000,
        room_version: None,
        join: vec!["full".into()],
        messages: 2000,
        destinations: 20,
        rounds: 20,
        burst: 200,
        concurrency: 16,
        server,
        logs: None,
        log_level: "warn".into(),
        perf: None,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.iter().any(|a| a == "--help" || a == "-h") {
        print!("{HELP}");
        std::process::exit(0);
    }
    let num = |v: &str, name: &str| -> usize {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} takes a number"))
    };
    for pair in raw.chunks(2) {
        let Some(v) = pair.get(1) else {
            panic!("{} needs a value (see --help)", pair[0]);
        };
        match pair[0].as_str() {
            "--phases" => args.phases = v.split(',').map(str::to_owned).collect(),
            "--members" => args.members = num(v, "--members"),
            "--state" => args.state = num(v, "--state"),
            "--room-version" => args.room_version = Some(v.clone()),
            "--join" => args.join = v.split(',').map(str::to_owned).collect(),
            "--messages" => args.messages = num(v, "--messages"),
            "--destinations" => args.destinations = num(v, "--destinations"),
            "--rounds" => args.rounds = num(v, "--rounds"),
            "--burst" => args.burst = num(v, "--burst"),
            "--concurrency" => args.concurrency = num(v, "--concurrency").max(1),
            "--server" => args.server = PathBuf::from(v),
            "--logs" => args.logs = Some(PathBuf::from(v)),
            "--log-level" => args.log_level = v.clone(),
            "--perf" => args.perf = Some(PathBuf::from(v)),
            other => panic!("unknown argument {other} (see --help)"),
        }
    }
    args
}

// ---------------------------------------------------------------------------------------------
// Processes and /proc

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system, all threads) of `pid`, in seconds.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command: state is field 3 of stat(5), utime 14 and stime 15.
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    (ticks(14).unwrap_or(0) + ticks(15).unwrap_or(0)) as f64 / 100.0
}

/// Bytes `pid` wrote through write-like calls (sockets included).
fn wchar(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// The test CA (certificate PEM path) and one leaf certificate for 127.0.0.1.
fn certificates(dir: &Path) -> [PathBuf; 3] {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
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
struct Server {
    name: String,
    base: String,
    child: Child,
}

impl Server {
    fn pid(&self) -> u32 {
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

struct Env {
    tmp: tempfile::TempDir,
    certs: [PathBuf; 3],
    args: Args,
    http: reqwest::Client,
}

impl Env {
    async fn spawn(&self, label: &str, cache_mb: u64) -> Server {
        self.try_spawn(label, cache_mb, "")
            .await
            .unwrap_or_else(|| panic!("server {label} exited at start (see --logs)"))
    }

    /// Starts a server with `extra` appended to its configuration; `None` if it exits at
    /// start (an older binary refuses a setting it does not know).
    async fn try_spawn(&self, label: &str, cache_mb: u64, extra: &str) -> Option<Server> {
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

// ---------------------------------------------------------------------------------------------
// Client API

#[derive(Clone)]
struct User {
    id: String,
    token: String,
    base: String,
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> Value {
    for attempt in 0.. {
        let mut request = http.request(method.clone(), &url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = &body {
            request = request.json(body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let value: Value = response.json().await.unwrap_or(Value::Null);
                // Registration has a rate limit of its own: wait as asked.
                if status == 429 && attempt < 600 {
                    let ms = value["retry_after_ms"].as_u64().unwrap_or(500);
                    tokio::time::sleep(Duration::from_millis(ms.min(100))).await;
                    continue;
                }
                // 401 is the first step of registration (user-interactive auth).
                if status.is_success() || status == 401 {
                    return value;
                }
                panic!("{method} {url}: {status} {value}");
            }
            Err(e) if attempt < 5 => {
                eprintln!("{method} {url}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{method} {url}: {e}"),
        }
    }
    unreachable!()
}

impl User {
    async fn register(http: &reqwest::Client, base: &str, name: &str) -> User {
        let url = format!("{base}/_matrix/client/v3/register");
        let body = json!({"username": name, "password": "benchmark-password"});
        let first = call(http, reqwest::Method::POST, url.clone(), None, Some(body)).await;
        let body = json!({"username": name, "password": "benchmark-password",
            "auth": {"type": "m.login.dummy", "session": first["session"]}});
        let done = call(http, reqwest::Method::POST, url, None, Some(body)).await;
        User {
            id: done["user_id"].as_str().expect("registered").to_owned(),
            token: done["access_token"].as_str().unwrap().to_owned(),
            base: base.to_owned(),
        }
    }

    async fn post(&self, http: &reqwest::Client, path: &str, body: Value) -> Value {
        let url = format!("{}/_matrix/client/v3/{path}", self.base);
        call(
            http,
            reqwest::Method::POST,
            url,
            Some(&self.token),
            Some(body),
        )
        .await
    }

    async fn put(&self, http: &reqwest::Client, path: &str, body: Value) -> Value {
        let url = format!("{}/_matrix/client/v3/{path}", self.base);
        call(
            http,
            reqwest::Method::PUT,
            url,
            Some(&self.token),
            Some(body),
        )
        .await
    }

    async fn get(&self, http: &reqwest::Client, path: &str) -> Value {
        let url = format!("{}/_matrix/client/v3/{path}", self.base);
        call(http, reqwest::Method::GET, url, Some(&self.token), None).await
    }

    async fn create_room(&self, http: &reqwest::Client, version: &Option<String>) -> String {
        let mut body = json!({"preset": "public_chat", "name": "bench"});
        if let Some(v) = version {
            body["room_version"] = json!(v);
        }
        let created = self.post(http, "createRoom", body).await;
        created["room_id"]
            .as_str()
            .expect("room created")
            .to_owned()
    }

    async fn join(&self, http: &reqwest::Client, room: &str, via: Option<&str>) {
        let path = match via {
            Some(server) => format!("join/{}?server_name={}", enc(room), enc(server)),
            None => format!("join/{}", enc(room)),
        };
        self.post(http, &path, json!({})).await;
    }

    async fn send(&self, http: &reqwest::Client, room: &str, txn: &str, body: &str) {
        let path = format!("rooms/{}/send/m.room.message/{txn}", enc(room));
        self.put(http, &path, json!({"msgtype": "m.text", "body": body}))
            .await;
    }

    /// A `/sync` without room state (the timeline's last events only); `None`: initial.
    async fn sync(&self, http: &reqwest::Client, since: Option<&str>, timeout_ms: u64) -> Value {
        let filter = enc(
            r#"{"room":{"state":{"types":[]},"timeline":{"limit":50}},"presence":{"types":[]}}"#,
        );
        let mut path = format!("sync?timeout={timeout_ms}&filter={filter}");
        if let Some(since) = since {
            path.push_str(&format!("&since={}", enc(since)));
        }
        self.get(http, &path).await
    }

    /// Long-polls `/sync` from `since` until a message with `body` arrives in `room`.
    async fn wait_for(&self, http: &reqwest::Client, room: &str, since: &str, body: &str) {
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut since = since.to_owned();
        loop {
            let sync = self.sync(http, Some(&since), 10_000).await;
            let events = &sync["rooms"]["join"][room]["timeline"]["events"];
            if events
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["content"]["body"] == body))
            {
                return;
            }
            since = sync["next_batch"].as_str().expect("next_batch").to_owned();
            assert!(Instant::now() < deadline, "{} never saw {body:?}", self.id);
        }
    }

    /// The body of the room's latest message event (as this server has it).
    async fn latest_body(&self, http: &reqwest::Client, room: &str) -> Option<String> {
        let filter = enc(r#"{"types":["m.room.message"]}"#);
        let path = format!("rooms/{}/messages?dir=b&limit=1&filter={filter}", enc(room));
        let page = self.get(http, &path).await;
        page["chunk"][0]["content"]["body"]
            .as_str()
            .map(str::to_owned)
    }
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs `f(i)` for `i` in `0..n`, `limit` at a time.
async fn bounded<F, Fut>(n: usize, limit: usize, f: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limit));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let work = f(i);
        tasks.push(tokio::spawn(async move {
            work.await;
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}

/// `perf record --call-graph dwarf -p pid` until dropped (SIGINT), when `--perf` is given.
struct Perf(Option<Child>);

impl Perf {
    fn start(env: &Env, pid: u32, name: &str) -> Perf {
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

// ---------------------------------------------------------------------------------------------
// The figures

struct Table(Vec<(String, String)>);

impl Table {
    fn row(&mut self, what: impl Into<String>, value: impl Into<String>) {
        let (what, value) = (what.into(), value.into());
        println!("  {what}: {value}");
        self.0.push((what, value));
    }

    fn print(&self) {
        let width = self.0.iter().map(|(w, _)| w.len()).max().unwrap_or(0);
        println!("\n{:-<1$}", "", width + 40);
        for (what, value) in &self.0 {
            println!("{what:width$}  {value}");
        }
        println!("{:-<1$}", "", width + 40);
    }
}

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

struct Shared {
    a: Server,
    b: Server,
    alice: User,
    room: String,
}

/// Fills the big room on A, then B's user joins it.
async fn join_phase(env: &Env, table: &mut Table) -> Shared {
    let http = &env.http;
    let args = &env.args;
    let a = env.spawn("a", 32).await;
    let alice = User::register(http, &a.base, "alice").await;
    let room = alice.create_room(http, &args.room_version).await;
    println!("room {room} on A ({})", a.name);

    let started = Instant::now();
    let members = args.members.saturating_sub(1);
    let joined = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    bounded(members, args.concurrency, |i| {
        let (http, base, room, joined) =
            (http.clone(), a.base.clone(), room.clone(), joined.clone());
        async move {
            let user = User::register(&http, &base, &format!("member{i}")).await;
            user.join(&http, &room, None).await;
            let n = joined.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n % 200 == 0 {
                println!("  {n} members joined");
            }
        }
    })
    .await;
    let members_took = started.elapsed();
    table.row(
        "A: register + join members (client API)",
        format!(
            "{members} in {:.1} s ({:.1} ms each)",
            members_took.as_secs_f64(),
            members_took.as_secs_f64() * 1000.0 / members.max(1) as f64
        ),
    );
    // The preset's state: create, the creator's join, power levels, join rules, history
    // visibility, name (and guest access for some presets): counted as 6.
    let custom = args.state.saturating_sub(members + 6);
    let started = Instant::now();
    bounded(custom, args.concurrency, |i| {
        let (http, alice, room) = (http.clone(), alice.clone(), room.clone());
        async move {
            let path = format!("rooms/{}/state/m.bench.state/key{i}", enc(&room));
            alice
                .put(
                    &http,
                    &path,
                    json!({"i": i, "text": "a custom state event of the benchmark"}),
                )
                .await;
            if (i + 1) % 2000 == 0 {
                println!("  {} state events sent", i + 1);
            }
        }
    })
    .await;
    let state_took = started.elapsed();
    table.row(
        "A: custom state events (client API)",
        format!(
            "{custom} in {:.1} s ({:.2} ms each)",
            state_took.as_secs_f64(),
            state_took.as_secs_f64() * 1000.0 / custom.max(1) as f64
        ),
    );
    let state_now = alice
        .get(http, &format!("rooms/{}/state", enc(&room)))
        .await;
    let state_count = state_now.as_array().map(Vec::len).unwrap_or(0);
    table.row(
        "big room",
        format!("{} state events, {} members", state_count, args.members),
    );
    table.row("A RSS after filling", mib(status_kb(a.pid(), "VmRSS:")));

    let mut joined: Option<Server> = None;
    for mode in &args.join {
        let b = join_once(env, &a, &alice, &room, mode, table).await;
        joined.get_or_insert(b);
    }
    let b = joined.expect("--join names at least one mode");
    Shared { a, b, alice, room }
}

/// A user on a new server B joins the big room (`mode`: `full` or `partial`), then receives
/// a message sent on A. Returns B.
async fn join_once(
    env: &Env,
    a: &Server,
    alice: &User,
    room: &str,
    mode: &str,
    table: &mut Table,
) -> Server {
    let http = &env.http;
    let partial = mode == "partial";
    let label = format!("b-{mode}");
    let setting = format!("[federation]\npartial_state_joins = {partial}\n");
    let b = match env.try_spawn(&label, 32, &setting).await {
        Some(b) => b,
        // A binary without partial-state joins only does full joins.
        None if !partial => env.spawn(&label, 32).await,
        None => panic!("this hearth binary has no partial-state joins"),
    };
    let bob = User::register(http, &b.base, "bob").await;
    let initial = bob.sync(http, None, 0).await;
    let since = initial["next_batch"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b_before = status_kb(b.pid(), "VmRSS:");
    let _ = std::fs::write(format!("/proc/{}/clear_refs", b.pid()), "5");
    let (a_cpu, b_cpu, a_wrote) = (cpu_s(a.pid()), cpu_s(b.pid()), wchar(a.pid()));
    let sampler = rss_sampler(b.pid());
    let perf = Perf::start(env, b.pid(), &format!("{label}-join"));
    let started = Instant::now();
    bob.join(http, room, Some(&a.name)).await;
    let join_took = started.elapsed();
    drop(perf);
    let sampled_peak = sampler.stop().await;
    let (a_cpu, b_cpu) = (cpu_s(a.pid()) - a_cpu, cpu_s(b.pid()) - b_cpu);
    let a_wrote = wchar(a.pid()) - a_wrote;
    let b_peak = status_kb(b.pid(), "VmHWM:").max(sampled_peak);
    table.row(
        format!("B: {mode} join of the big room"),
        format!("{:.2} s wall", join_took.as_secs_f64()),
    );
    table.row(
        "  CPU during the join",
        format!("A {a_cpu:.2} s, B {b_cpu:.2} s"),
    );
    table.row(
        "  A wrote (≈ send_join answer + make_join)",
        format!("{:.1} MiB", a_wrote as f64 / 1048576.0),
    );
    table.row(
        "  B RSS before / peak during the join / after",
        format!(
            "{} / {} / {}",
            mib(b_before),
            mib(b_peak),
            mib(status_kb(b.pid(), "VmRSS:"))
        ),
    );

    // The first message after the join.
    let body = format!("first after the {mode} join");
    let waiter = {
        let (http, bob, room) = (http.clone(), bob.clone(), room.to_owned());
        let (since, body) = (since.clone(), body.clone());
        tokio::spawn(async move { bob.wait_for(&http, &room, &since, &body).await })
    };
    // The long-poll is in place before the send.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    alice
        .send(http, room, &format!("first-{mode}"), &body)
        .await;
    waiter.await.unwrap();
    table.row(
        "  first message from A after the join (send → B's /sync)",
        format!("{:.0} ms", started.elapsed().as_secs_f64() * 1000.0),
    );
    if partial {
        // The background resync: done when B knows every member.
        let (b_cpu, started) = (cpu_s(b.pid()), Instant::now());
        let deadline = started + Duration::from_secs(600);
        let path = format!("rooms/{}/joined_members", enc(room));
        loop {
            let members = bob.get(http, &path).await;
            let n = members["joined"].as_object().map_or(0, |m| m.len());
            if n >= env.args.members + 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the resync did not finish ({n} members)"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        table.row(
            "  resync done (B lists every member) after the first message",
            format!(
                "{:.2} s more, B CPU {:.2} s; B peak RSS since the join {}",
                started.elapsed().as_secs_f64(),
                cpu_s(b.pid()) - b_cpu,
                mib(status_kb(b.pid(), "VmHWM:"))
            ),
        );
    }
    table.row("  B RSS after", mib(status_kb(b.pid(), "VmRSS:")));
    b
}

/// Samples VmRSS of `pid` every 10 ms until stopped; returns the highest.
struct Sampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<u64>,
}

fn rss_sampler(pid: u32) -> Sampler {
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
    async fn stop(self) -> u64 {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(0)
    }
}

/// B's users send messages in the shared room; A receives them.
async fn inbound_phase(env: &Env, shared: &Shared, table: &mut Table) {
    let http = &env.http;
    let args = &env.args;
    let (a, b, room) = (&shared.a, &shared.b, &shared.room);
    let mut senders = Vec::new();
    for i in 0..4 {
        let user = User::register(http, &b.base, &format!("sender{i}")).await;
        user.join(http, room, Some(&a.name)).await;
        senders.push(user);
    }
    let senders = Arc::new(senders);
    for mode in ["live", "backlog"] {
        let stopped = mode == "backlog";
        let (a_cpu, b_cpu) = (cpu_s(a.pid()), cpu_s(b.pid()));
        if stopped {
            signal(a.pid(), "STOP");
        }
        let started = Instant::now();
        let n = args.messages;
        bounded(n, args.concurrency, |i| {
            let (http, senders, room) = (http.clone(), senders.clone(), room.clone());
            async move {
                let user = &senders[i % senders.len()];
                let body = format!("{mode} {i}");
                user.send(&http, &room, &format!("{mode}{i}"), &body).await;
            }
        })
        .await;
        let end = format!("{mode} end");
        senders[0]
            .send(http, room, &format!("{mode}-end"), &end)
            .await;
        let sent_took = started.elapsed();
        let (resumed, perf) = if stopped {
            let perf = Perf::start(env, a.pid(), "a-backlog");
            signal(a.pid(), "CONT");
            (Instant::now(), perf)
        } else {
            (started, Perf(None))
        };
        let a_cpu_at_resume = cpu_s(a.pid());
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if shared.alice.latest_body(http, room).await.as_deref() == Some(end.as_str()) {
                break;
            }
            assert!(Instant::now() < deadline, "A never received {end:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = resumed.elapsed();
        drop(perf);
        let a_used = cpu_s(a.pid()) - a_cpu;
        let b_used = cpu_s(b.pid()) - b_cpu;
        let received = (n + 1) as f64;
        if stopped {
            let drain_cpu = cpu_s(a.pid()) - a_cpu_at_resume;
            table.row(
                format!("inbound, backlog: {} PDUs queued on B", n + 1),
                format!(
                    "B built them in {:.1} s; A (stopped meanwhile) drained them in {:.2} s = {:.0} PDUs/s",
                    sent_took.as_secs_f64(),
                    took.as_secs_f64(),
                    received / took.as_secs_f64()
                ),
            );
            table.row(
                "  A CPU while draining",
                format!(
                    "{drain_cpu:.2} s = {:.2} ms per PDU ({:.0}% of a core)",
                    drain_cpu * 1000.0 / received,
                    drain_cpu * 100.0 / took.as_secs_f64()
                ),
            );
        } else {
            table.row(
                format!("inbound, live: {} messages from B", n + 1),
                format!(
                    "all on A after {:.2} s = {:.0} PDUs/s",
                    took.as_secs_f64(),
                    received / took.as_secs_f64()
                ),
            );
            table.row(
                "  CPU",
                format!(
                    "A {a_used:.2} s = {:.2} ms per PDU; B {b_used:.2} s = {:.2} ms per PDU sent",
                    a_used * 1000.0 / received,
                    b_used * 1000.0 / received
                ),
            );
        }
        table.row(
            format!("  A RSS after {mode}"),
            mib(status_kb(a.pid(), "VmRSS:")),
        );
    }
}

/// One room of A shared with `--destinations` servers.
async fn fanout_phase(env: &Env, shared: Option<&Shared>, table: &mut Table) {
    let http = &env.http;
    let args = &env.args;
    let own;
    let (a, alice) = match shared {
        Some(s) => (&s.a, &s.alice),
        None => {
            let a = env.spawn("a", 32).await;
            let alice = User::register(http, &a.base, "alice").await;
            own = (a, alice);
            (&own.0, &own.1)
        }
    };
    let room = alice.create_room(http, &args.room_version).await;
    let mut servers = Vec::new();
    let mut users = Vec::new();
    for i in 0..args.destinations {
        let server = env.spawn(&format!("d{i}"), 8).await;
        let user = User::register(http, &server.base, "dave").await;
        user.join(http, &room, Some(&a.name)).await;
        servers.push(server);
        users.push(user);
    }
    println!("{} destinations joined {room}", users.len());
    let mut since = Vec::new();
    for user in &users {
        let sync = user.sync(http, None, 0).await;
        since.push(sync["next_batch"].as_str().unwrap().to_owned());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (a_rss, a_cpu) = (status_kb(a.pid(), "VmRSS:"), cpu_s(a.pid()));
    let _ = std::fs::write(format!("/proc/{}/clear_refs", a.pid()), "5");

    // Single messages: each waits until every destination has it.
    let mut all = Vec::new();
    let mut each = Vec::new();
    for round in 0..args.rounds {
        let body = format!("fanout {round}");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = Vec::new();
        for (user, since) in users.iter().zip(&since) {
            let (http, user, room, since) =
                (http.clone(), user.clone(), room.clone(), since.clone());
            let (body, tx) = (body.clone(), tx.clone());
            waiters.push(tokio::spawn(async move {
                user.wait_for(&http, &room, &since, &body).await;
                let _ = tx.send(Instant::now());
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        alice.send(http, &room, &format!("f{round}"), &body).await;
        for w in waiters {
            w.await.unwrap();
        }
        drop(tx);
        let mut last = started;
        while let Some(t) = rx.recv().await {
            each.push((t - started).as_secs_f64() * 1000.0);
            last = last.max(t);
        }
        all.push((last - started).as_secs_f64() * 1000.0);
        // The next round's waits start after this message.
        for (i, user) in users.iter().enumerate() {
            since[i] = user.sync(http, Some(&since[i]), 0).await["next_batch"]
                .as_str()
                .unwrap()
                .to_owned();
        }
    }
    let a_used = cpu_s(a.pid()) - a_cpu;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let max_all = all.iter().copied().fold(0.0, f64::max);
    table.row(
        format!("fan-out: 1 message to {} servers, {} rounds", users.len(), args.rounds),
        format!(
            "all have it after {:.0} ms median, {max_all:.0} ms max; one destination {:.0} ms median",
            median(&mut all),
            median(&mut each)
        ),
    );
    table.row(
        "  A CPU per message (incl. its client send and syncs)",
        format!("{:.2} ms", a_used * 1000.0 / args.rounds.max(1) as f64),
    );

    // A burst.
    let a_cpu = cpu_s(a.pid());
    let end = "burst end".to_owned();
    let mut waiters = Vec::new();
    for (user, since) in users.iter().zip(&since) {
        let (http, user, room, since, end) = (
            http.clone(),
            user.clone(),
            room.clone(),
            since.clone(),
            end.clone(),
        );
        waiters.push(tokio::spawn(async move {
            user.wait_for(&http, &room, &since, &end).await;
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    bounded(args.burst, args.concurrency.min(4), |i| {
        let (http, alice, room) = (http.clone(), alice.clone(), room.clone());
        async move {
            alice
                .send(&http, &room, &format!("b{i}"), &format!("burst {i}"))
                .await
        }
    })
    .await;
    alice.send(http, &room, "b-end", &end).await;
    let sent = started.elapsed();
    for w in waiters {
        w.await.unwrap();
    }
    let took = started.elapsed();
    let a_used = cpu_s(a.pid()) - a_cpu;
    let n = args.burst + 1;
    table.row(
        format!("fan-out burst: {n} messages to {} servers", users.len()),
        format!(
            "sent in {:.2} s, all delivered after {:.2} s = {:.0} PDUs/s ({:.0} PDU deliveries/s)",
            sent.as_secs_f64(),
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            (n * users.len()) as f64 / took.as_secs_f64()
        ),
    );
    table.row(
        "  A CPU for the burst",
        format!(
            "{a_used:.2} s = {:.2} ms per message",
            a_used * 1000.0 / n as f64
        ),
    );
    table.row(
        "  A RSS before / peak / after",
        format!(
            "{} / {} / {}",
            mib(a_rss),
            mib(status_kb(a.pid(), "VmHWM:")),
            mib(status_kb(a.pid(), "VmRSS:"))
        ),
    );
    let mut d_rss: Vec<u64> = servers
        .iter()
        .map(|s| status_kb(s.pid(), "VmRSS:"))
        .collect();
    d_rss.sort_unstable();
    table.row(
        "  a destination's RSS (median)",
        mib(d_rss.get(d_rss.len() / 2).copied().unwrap_or(0)),
    );
    drop(servers);
}

#[tokio::main]
async fn main() {
    let args = args();
    let tmp = tempfile::tempdir().unwrap();
    let certs = certificates(tmp.path());
    let env = Env {
        tmp,
        certs,
        args,
        http: reqwest::Client::new(),
    };
    let mut table = Table(Vec::new());
    let phase = |name: &str| env.args.phases.iter().any(|p| p == name);
    let shared = if phase("join") {
        Some(join_phase(&env, &mut table).await)
    } else {
        None
    };
    if let (true, Some(shared)) = (phase("inbound"), &shared) {
        inbound_phase(&env, shared, &mut table).await;
    }
    if phase("fanout") {
        fanout_phase(&env, shared.as_ref(), &mut table).await;
    }
    table.print();
    drop(shared);
}
