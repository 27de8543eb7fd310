//! Fan-out benchmark: where a homeserver spends its time, delivering to many long-polling
//! clients, and the send path that feeds them.
//!
//! The server is the real `hearth` binary as a child process, so its CPU time (utime + stime
//! from `/proc/<pid>/stat`) and memory (`VmRSS`, `VmHWM`) are its own; the clients run here.
//! Phases, each printed as a table row:
//!
//! 1. `fanout R x 1 room`: R receivers (default 50) long-poll `/sync` (timeline limit 100) in
//!    one room while one sender offers M messages/s (default 50), open loop: each send leaves
//!    on time whether or not the previous one has answered. Delivery latency is send start →
//!    the receiver holding the parsed response; server CPU per delivery is the server's CPU
//!    time over the phase divided by deliveries.
//! 2. `fanout R' x N rooms`: R' receivers (default 500) spread over N rooms (default 50), one
//!    room each, messages offered at M' per second (default 100) round-robin over the rooms.
//! 3. `idle sync, K rooms`: a user in K rooms (default 50, 20 messages each) syncs with nothing
//!    new (`timeout=0`), over and over: server CPU per sync.
//!    Before those, the same user syncs from scratch 20 times (`initial sync, K rooms`):
//!    latency and server CPU per sync.
//! 4. `send, S senders x Q rooms`: closed-loop senders (default 64 over 16 rooms, then 64 in
//!    one room): durable events/s and server CPU per event.
//! 5. `paginate`: a member of that one room pages back through all of it with `/messages`
//!    (100 events a page; runs with `send`).
//!
//! Each row ends with the server's peak RSS so far.
//!
//! Idle RSS after start, peak RSS (`VmHWM`) at the end and RSS 12 s after the benchmark's
//! connections closed (the server gives freed memory back every 10 s) close the report. The server allows
//! 4,096 connections (`limits.max_connections`; the default 512 is below 500 long-polls plus
//! the senders and the connections earlier phases left open).
//!
//! `cargo build --release --bin hearth --example fanout_bench &&
//!  target/release/examples/fanout_bench [--receivers R] [--rate M] [--seconds D]
//!  [--spread-receivers R'] [--spread-rooms N] [--spread-rate M'] [--idle-rooms K]
//!  [--senders S] [--send-rooms Q] [--events E] [--cache-mb C] [--only PHASES] [--server PATH]
//!  [--encrypted true]`
//!
//! `--only` takes a comma-separated subset of `fanout,spread,idle,send,paginate`. To profile a phase,
//! run `perf record -g -p <pid>` on the printed server pid while it runs.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

#[path = "support/proc_status.rs"]
mod proc_status;
use proc_status::status_kib;

struct Args {
    receivers: usize,
    rate: f64,
    seconds: f64,
    spread_receivers: usize,
    spread_rooms: usize,
    spread_rate: f64,
    idle_rooms: usize,
    senders: usize,
    send_rooms: usize,
    events: usize,
    /// `[storage] cache_mb` of the server; `None`: its default.
    cache_mb: Option<u64>,
    /// Rooms are created with end-to-end encryption on (as Element creates private rooms).
    encrypted: bool,
    only: Vec<String>,
    server: PathBuf,
}

fn args() -> Args {
    let server = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("hearth")))
        .unwrap_or_else(|| PathBuf::from("hearth"));
    let mut args = Args {
        receivers: 50,
        rate: 50.0,
        seconds: 10.0,
        spread_receivers: 500,
        spread_rooms: 50,
        spread_rate: 100.0,
        idle_rooms: 50,
        senders: 64,
        send_rooms: 16,
        events: 10_000,
        cache_mb: None,
        encrypted: false,
        only: ["fanout", "spread", "idle", "send", "paginate"]
            .map(String::from)
            .to_vec(),
        server,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    for pair in raw.chunks(2) {
        let value = pair.get(1).map(String::as_str).unwrap_or_default();
        let number = || value.parse::<f64>().expect("a number");
        match pair[0].as_str() {
            "--receivers" => args.receivers = number() as usize,
            "--rate" => args.rate = number(),
            "--seconds" => args.seconds = number(),
            "--spread-receivers" => args.spread_receivers = number() as usize,
            "--spread-rooms" => args.spread_rooms = number() as usize,
            "--spread-rate" => args.spread_rate = number(),
            "--idle-rooms" => args.idle_rooms = number() as usize,
            "--senders" => args.senders = number() as usize,
            "--send-rooms" => args.send_rooms = number() as usize,
            "--events" => args.events = number() as usize,
            "--cache-mb" => args.cache_mb = Some(number() as u64),
            "--only" => args.only = value.split(',').map(String::from).collect(),
            "--encrypted" => args.encrypted = value == "true",
            "--server" => args.server = PathBuf::from(value),
            other => panic!("unknown argument {other} (see the doc comment for usage)"),
        }
    }
    args
}

/// Milliseconds since the start of the run; messages carry it (as integer microseconds:
/// canonical JSON has no floats) to time their delivery.
fn clock_us() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// The server child: its pid for `/proc` and its base URL.
struct Server {
    pid: u32,
    base: String,
    http: reqwest::Client,
    /// Rooms are created encrypted (`--encrypted true`).
    encrypted: bool,
}

impl Server {
    /// Server CPU time (user + system) so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<u64> = rest
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
        // USER_HZ is 100 on Linux.
        Duration::from_millis(ticks * 10)
    }

    fn status_kib(&self, field: &str) -> u64 {
        status_kib(self.pid, field)
    }

    fn peak_mib(&self) -> f64 {
        self.status_kib("VmHWM:") as f64 / 1024.0
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> Value {
        for attempt in 0..5 {
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .json(&body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) if attempt < 4 => {
                    eprintln!("{path}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => panic!("{path}: {e}"),
            };
            let status = response.status();
            let value: Value = response.json().await.unwrap_or(Value::Null);
            assert!(
                status.is_success() || status.as_u16() == 401,
                "{path}: {status} {value}"
            );
            return value;
        }
        unreachable!("the last attempt returns or panics")
    }

    async fn register(&self, name: &str) -> String {
        let path = "/_matrix/client/v3/register";
        let challenge = self
            .call(reqwest::Method::POST, path, None, json!({}))
            .await;
        let body = json!({"username": name, "password": "fanout-bench-pw",
            "auth": {"type": "m.login.dummy", "session": challenge["session"]}});
        let done = self.call(reqwest::Method::POST, path, None, body).await;
        done["access_token"].as_str().expect("token").to_owned()
    }

    async fn create_room(&self, token: &str) -> String {
        let mut body = json!({"preset": "public_chat"});
        if self.encrypted {
            body["initial_state"] = json!([{"type": "m.room.encryption", "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]);
        }
        self.call(
            reqwest::Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(token),
            body,
        )
        .await["room_id"]
            .as_str()
            .expect("room id")
            .to_owned()
    }

    async fn join(&self, token: &str, room: &str) {
        let path = format!("/_matrix/client/v3/join/{room}");
        self.call(reqwest::Method::POST, &path, Some(token), json!({}))
            .await;
    }

    async fn send(&self, token: &str, room: &str, txn: &str, body: Value) -> Value {
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
        self.call(reqwest::Method::PUT, &path, Some(token), body)
            .await
    }

    async fn sync(&self, token: &str, since: Option<&str>, timeout_ms: u64) -> Value {
        let filter = r#"{"room":{"timeline":{"limit":100}}}"#;
        let mut path = format!(
            "/_matrix/client/v3/sync?timeout={timeout_ms}&filter={}",
            urlencode(filter)
        );
        if let Some(since) = since {
            path.push_str(&format!("&since={since}"));
        }
        self.call(reqwest::Method::GET, &path, Some(token), json!({}))
            .await
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1000.0
}

/// One row of the results table.
struct Row {
    phase: String,
    count: String,
    rate: String,
    p50: f64,
    p99: f64,
    max: f64,
    cpu_per: String,
    /// The server's peak RSS (`VmHWM`) at the end of the phase, MiB.
    peak_mib: f64,
}

/// A phase's clock: wall time and the server's CPU time from its start.
struct Clock {
    cpu: Duration,
    started: Instant,
    /// The phase's wall time, once stopped (the CPU is read at the row).
    wall: Option<f64>,
}

impl Clock {
    fn start(server: &Server) -> Self {
        Self {
            cpu: server.cpu(),
            started: Instant::now(),
            wall: None,
        }
    }

    /// Ends the phase's wall time; its CPU time runs on until the row, so that work the
    /// server does a moment after the phase (the search indexer) is counted in it.
    fn stop_wall(&mut self) {
        self.wall = Some(self.started.elapsed().as_secs_f64());
    }

    /// The phase's row: `done` operations (`rate_unit` per second, for example `ev`) with
    /// their `latencies`, and the server's CPU over `per` of them (`cpu_unit`).
    #[allow(clippy::too_many_arguments)]
    fn row(
        self,
        server: &Server,
        phase: String,
        count: String,
        done: usize,
        rate_unit: &str,
        per: usize,
        cpu_unit: &str,
        mut latencies: Vec<Duration>,
    ) -> Row {
        let elapsed = self
            .wall
            .unwrap_or_else(|| self.started.elapsed().as_secs_f64());
        let cpu = server.cpu().saturating_sub(self.cpu).as_secs_f64();
        latencies.sort();
        let rate = done as f64 / elapsed;
        Row {
            phase,
            count,
            rate: if rate < 100.0 {
                format!("{rate:.1} {rate_unit}/s")
            } else {
                format!("{rate:.0} {rate_unit}/s")
            },
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            max: percentile(&latencies, 1.0),
            cpu_per: format!("{:.3} ms/{cpu_unit}", cpu * 1000.0 / per.max(1) as f64),
            peak_mib: server.peak_mib(),
        }
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "| {:<34} | {:>15} | {:>12} | {:>8} | {:>8} | {:>8} | {:>22} | {:>8} |",
        "phase", "count", "rate", "p50 ms", "p99 ms", "max ms", "server CPU", "peak MiB"
    );
    println!(
        "|{:-<36}|{:->17}|{:->14}|{:->10}|{:->10}|{:->10}|{:->24}|{:->10}|",
        "", "", "", "", "", "", "", ""
    );
    for row in rows {
        println!(
            "| {:<34} | {:>15} | {:>12} | {:>8.2} | {:>8.2} | {:>8.2} | {:>22} | {:>8.1} |",
            row.phase, row.count, row.rate, row.p50, row.p99, row.max, row.cpu_per, row.peak_mib
        );
    }
}

/// Receivers long-poll in their rooms while messages are offered at `rate` per second over
/// `rooms` (round-robin, one sender per room); returns the table row.
async fn fanout(
    server: &Arc<Server>,
    label: &str,
    tag: &str,
    receivers: usize,
    room_count: usize,
    rate: f64,
    seconds: f64,
) -> Row {
    let messages = (rate * seconds).round() as usize;
    let mut rooms = Vec::new();
    let mut senders = Vec::new();
    for r in 0..room_count {
        let sender = server.register(&format!("{tag}-sender{r}")).await;
        rooms.push(server.create_room(&sender).await);
        senders.push(sender);
    }
    // Messages each room gets: round-robin.
    let per_room: Vec<usize> = (0..room_count)
        .map(|r| messages / room_count + usize::from(r < messages % room_count))
        .collect();
    let mut tasks = Vec::new();
    let ready = Arc::new(tokio::sync::Barrier::new(receivers + 1));
    for i in 0..receivers {
        let token = server.register(&format!("{tag}-recv{i}")).await;
        let r = i % room_count;
        server.join(&token, &rooms[r]).await;
        let (server, room, expected, ready) =
            (server.clone(), rooms[r].clone(), per_room[r], ready.clone());
        tasks.push(tokio::spawn(async move {
            let initial = server.sync(&token, None, 0).await;
            let mut since = initial["next_batch"].as_str().expect("token").to_owned();
            ready.wait().await;
            let mut latencies = Vec::with_capacity(expected);
            let deadline = Instant::now() + Duration::from_secs_f64(seconds + 30.0);
            while latencies.len() < expected && Instant::now() < deadline {
                let body = server.sync(&token, Some(&since), 10_000).await;
                let arrived = clock_us();
                if let Some(events) = body["rooms"]["join"][&room]["timeline"]["events"].as_array()
                {
                    for event in events {
                        if let Some(sent) = event["content"]["sent_at_us"].as_u64() {
                            latencies.push(Duration::from_micros(arrived.saturating_sub(sent)));
                        }
                    }
                }
                since = body["next_batch"].as_str().expect("token").to_owned();
            }
            latencies
        }));
    }
    ready.wait().await;
    // Let every receiver's first long-poll arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let clock = Clock::start(server);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sends = Vec::with_capacity(messages);
    for n in 0..messages {
        ticker.tick().await;
        let r = n % room_count;
        let (server, room, sender) = (server.clone(), rooms[r].clone(), senders[r].clone());
        let txn = format!("{tag}-{n}");
        sends.push(tokio::spawn(async move {
            let body = json!({"msgtype": "m.text", "body": format!("fan-out message {n}"),
                "sent_at_us": clock_us()});
            server.send(&sender, &room, &txn, body).await
        }));
    }
    for send in sends {
        send.await.expect("send");
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("receiver"));
    }
    let expected: usize = (0..receivers).map(|i| per_room[i % room_count]).sum();
    let count = format!("{}/{} dlv", all.len(), expected);
    clock.row(
        server,
        label.to_owned(),
        count,
        messages,
        "msg",
        all.len(),
        "delivery",
        all,
    )
}

/// A user in `room_count` rooms (20 messages each) syncs from scratch a few times, then with
/// nothing new, repeatedly: a row for each.
async fn idle_sync(server: &Arc<Server>, room_count: usize) -> [Row; 2] {
    let token = server.register("idle-syncer").await;
    for r in 0..room_count {
        let room = server.create_room(&token).await;
        for n in 0..20 {
            let body = json!({"msgtype": "m.text", "body": format!("message {n}")});
            server
                .send(&token, &room, &format!("idle-{r}-{n}"), body)
                .await;
        }
    }
    // Initial syncs first (a new device, or a client that lost its token).
    let initial_syncs = 20;
    let mut latencies = Vec::with_capacity(initial_syncs);
    let clock = Clock::start(server);
    let mut since = String::new();
    for _ in 0..initial_syncs {
        let sent = Instant::now();
        let body = server.sync(&token, None, 0).await;
        latencies.push(sent.elapsed());
        assert_eq!(
            body["rooms"]["join"].as_object().map(|j| j.len()),
            Some(room_count),
            "every room in an initial sync"
        );
        since = body["next_batch"].as_str().expect("token").to_owned();
    }
    let initial = clock.row(
        server,
        format!("initial sync, {room_count} rooms"),
        format!("{initial_syncs} syncs"),
        initial_syncs,
        "syncs",
        initial_syncs,
        "sync",
        latencies,
    );
    let syncs = 1000;
    let mut latencies = Vec::with_capacity(syncs);
    let clock = Clock::start(server);
    for _ in 0..syncs {
        let sent = Instant::now();
        let body = server.sync(&token, Some(&since), 0).await;
        latencies.push(sent.elapsed());
        assert!(body["rooms"]["join"].is_null(), "nothing new: {body}");
    }
    let idle = clock.row(
        server,
        format!("idle sync, {room_count} rooms"),
        format!("{syncs} syncs"),
        syncs,
        "syncs",
        syncs,
        "sync",
        latencies,
    );
    [initial, idle]
}

/// `senders` closed-loop senders over `room_count` rooms send `events` messages in total.
async fn send_throughput(
    server: &Arc<Server>,
    tag: &str,
    senders: usize,
    room_count: usize,
    events: usize,
) -> (Row, String, String) {
    let mut tokens = Vec::new();
    for i in 0..senders {
        tokens.push(server.register(&format!("{tag}-s{i}")).await);
    }
    let mut rooms = Vec::new();
    for _ in 0..room_count {
        rooms.push(server.create_room(&tokens[0]).await);
    }
    // The first sender created every room; the others join theirs.
    for (i, token) in tokens.iter().enumerate().skip(1) {
        server.join(token, &rooms[i % room_count]).await;
    }
    let per_sender = events / senders;
    let (first_room, first_token) = (rooms[0].clone(), tokens[0].clone());
    let mut clock = Clock::start(server);
    let mut tasks = Vec::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let (server, room, tag) = (
            server.clone(),
            rooms[i % room_count].clone(),
            tag.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_sender);
            for n in 0..per_sender {
                let sent = Instant::now();
                let body = json!({"msgtype": "m.text", "body": format!("message {n} from sender {i}: hello family, dinner at seven?")});
                let answer = server.send(&token, &room, &format!("{tag}-{i}-{n}"), body).await;
                assert!(answer["event_id"].is_string(), "{answer}");
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("sender"));
    }
    // The search indexer indexes the last events half a second after them: their CPU
    // belongs to this phase.
    clock.stop_wall();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let row = clock.row(
        server,
        format!("send, {senders} senders x {room_count} rooms"),
        format!("{} events", all.len()),
        all.len(),
        "ev",
        all.len(),
        "event",
        all,
    );
    (row, first_room, first_token)
}

/// A member pages backwards through a whole room's history (`/messages`, 100 events a
/// page, from the newest).
async fn paginate(server: &Arc<Server>, token: &str, room: &str) -> Row {
    let mut latencies = Vec::new();
    let mut events = 0;
    let mut from: Option<String> = None;
    let clock = Clock::start(server);
    for _ in 0..1000 {
        let mut path = format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100");
        if let Some(from) = &from {
            path.push_str(&format!("&from={}", urlencode(from)));
        }
        let sent = Instant::now();
        let page = server
            .call(reqwest::Method::GET, &path, Some(token), json!({}))
            .await;
        latencies.push(sent.elapsed());
        let chunk = page["chunk"].as_array().map_or(0, Vec::len);
        events += chunk;
        match page["end"].as_str() {
            Some(end) if chunk > 0 => from = Some(end.to_owned()),
            _ => break,
        }
    }
    let pages = latencies.len();
    clock.row(
        server,
        "paginate 1 room, 100 per page".to_owned(),
        format!("{events} events"),
        events,
        "ev",
        pages,
        "page",
        latencies,
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::main]
async fn main() {
    let args = args();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "server_name = \"localhost\"\ndata_dir = \"{}\"\nbcrypt_cost = 4\nlog_level = \"warn\"\n\
         [[listeners]]\nbind = \"127.0.0.1:{port}\"\n[registration]\nmode = \"open\"\n\
         [rate_limit]\nenabled = false\n[limits]\nmax_connections = 4096\n{}",
        tmp.path().join("data").display(),
        args.cache_mb
            .map(|mb| format!("[storage]\ncache_mb = {mb}\n"))
            .unwrap_or_default()
    );
    let config_path = tmp.path().join("hearth.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut child = Command::new(&args.server)
        .env_clear()
        .env("HEARTH_CONFIG", &config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("hearth binary (build it with --release --bin hearth)");
    let server = Arc::new(Server {
        pid: child.id(),
        base: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(2048)
            .build()
            .unwrap(),
        encrypted: args.encrypted,
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while server
        .http
        .get(format!("{}/_matrix/client/versions", server.base))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = server.status_kib("VmRSS:");
    println!(
        "server pid {}, idle RSS {:.1} MiB",
        server.pid,
        idle as f64 / 1024.0
    );

    let wanted = |phase: &str| args.only.iter().any(|p| p == phase);
    let mut rows = Vec::new();
    if wanted("fanout") {
        let label = format!("fanout {} recv x 1 room", args.receivers);
        let row = fanout(
            &server,
            &label,
            "one",
            args.receivers,
            1,
            args.rate,
            args.seconds,
        )
        .await;
        rows.push(row);
    }
    if wanted("spread") {
        let label = format!(
            "fanout {} recv x {} rooms",
            args.spread_receivers, args.spread_rooms
        );
        let row = fanout(
            &server,
            &label,
            "spread",
            args.spread_receivers,
            args.spread_rooms,
            args.spread_rate,
            args.seconds,
        )
        .await;
        rows.push(row);
    }
    if wanted("idle") {
        rows.extend(idle_sync(&server, args.idle_rooms).await);
    }
    if wanted("send") {
        let (row, _, _) =
            send_throughput(&server, "many", args.senders, args.send_rooms, args.events).await;
        rows.push(row);
        let (row, room, token) =
            send_throughput(&server, "one", args.senders, 1, args.events / 2).await;
        rows.push(row);
        if wanted("paginate") {
            rows.push(paginate(&server, &token, &room).await);
        }
    }
    print_table(&rows);
    println!(
        "\nserver RSS: idle {:.1} MiB, now {:.1} MiB, peak {:.1} MiB",
        idle as f64 / 1024.0,
        server.status_kib("VmRSS:") as f64 / 1024.0,
        server.status_kib("VmHWM:") as f64 / 1024.0
    );
    // After the load: the benchmark's connections close, and the server has a while to
    // give back what it freed (it releases freed memory every 10 s).
    let pid = server.pid;
    drop(server);
    tokio::time::sleep(Duration::from_secs(12)).await;
    println!(
        "server RSS 12 s after the load: {:.1} MiB",
        status_kib(pid, "VmRSS:") as f64 / 1024.0
    );
    let _ = child.kill();
    let _ = child.wait();
}
