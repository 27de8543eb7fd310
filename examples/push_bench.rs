//! Push benchmark: the server's CPU cost of push evaluation at persist time and of `/sync`
//! reading the stored unread counts.
//!
//! Runs the real `hearth` binary as a child process on a temporary data directory (open
//! registration, bcrypt cost 4, rate limits off), so the figures are the server's CPU only:
//! utime + stime from `/proc/<pid>/stat` before and after each phase, and bytes written to disk
//! from `/proc/<pid>/io`.
//!
//! 1. Sends messages one at a time into a room of `--members` local members (default push rules,
//!    so every message notifies all the others), and into a room of 2 as the baseline: CPU per
//!    message, send latency percentiles, bytes written per message.
//! 2. A user in `--rooms` rooms, each with `--unread` unread messages from another user: CPU per
//!    initial `/sync` and per incremental `/sync` (`since` the previous token, `timeout=0`); then
//!    the same after a read receipt in every room (0 unread).
//!
//! Build the server and the benchmark with the same profile, then run:
//! `cargo build --release --bin hearth --example push_bench &&
//!  cargo run --release --example push_bench -- [--members N] [--messages M] [--rooms R]
//!  [--unread U] [--syncs S] [--server PATH]`

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

struct Args {
    members: usize,
    messages: usize,
    rooms: usize,
    unread: usize,
    syncs: usize,
    server: PathBuf,
}

fn args() -> Args {
    // The server binary sits next to the `examples/` directory this example is built into.
    let server = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("hearth")))
        .unwrap_or_else(|| PathBuf::from("hearth"));
    let mut args = Args {
        members: 1000,
        messages: 200,
        rooms: 50,
        unread: 200,
        syncs: 10,
        server,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    for pair in raw.chunks(2) {
        let text = pair.get(1).cloned();
        let value = text.as_deref().and_then(|v| v.parse().ok());
        match (pair[0].as_str(), value, text) {
            ("--members", Some(v), _) if v >= 2 => args.members = v,
            ("--messages", Some(v), _) if v >= 1 => args.messages = v,
            ("--rooms", Some(v), _) if v >= 1 => args.rooms = v,
            ("--unread", Some(v), _) => args.unread = v,
            ("--syncs", Some(v), _) if v >= 1 => args.syncs = v,
            ("--server", _, Some(path)) => args.server = PathBuf::from(path),
            _ => {
                eprintln!(
                    "usage: push_bench [--members N>=2] [--messages M] [--rooms R] [--unread U] \
                     [--syncs S] [--server PATH]"
                );
                std::process::exit(2);
            }
        }
    }
    args
}

/// The server process, its CPU and disk counters.
struct Server {
    child: Child,
    base: String,
    ticks_per_second: f64,
}

impl Server {
    async fn spawn(binary: &PathBuf, data_dir: &std::path::Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(binary)
            .env_clear()
            .env("HEARTH_DATA_DIR", data_dir)
            .env("HEARTH_LISTENERS", format!("127.0.0.1:{port}"))
            .env("HEARTH_BCRYPT_COST", "4")
            .env("HEARTH_REGISTRATION__MODE", "open")
            .env("HEARTH_RATE_LIMIT__ENABLED", "false")
            .env("HEARTH_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while http
            .get(format!("{base}/_matrix/client/versions"))
            .send()
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ticks_per_second = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0);
        Self {
            child,
            base,
            ticks_per_second,
        }
    }

    /// User + system CPU time of the server so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("/proc/<pid>/stat");
        // Fields after the command name (which may hold spaces) start at field 3 (state);
        // utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_secs_f64(ticks as f64 / self.ticks_per_second)
    }

    /// Bytes the server caused to be written to storage so far (`None` where `/proc/<pid>/io`
    /// is not readable).
    fn written(&self) -> Option<u64> {
        let io = std::fs::read_to_string(format!("/proc/{}/io", self.child.id())).ok()?;
        io.lines()
            .find_map(|l| l.strip_prefix("write_bytes: "))
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// One request; a 429 (password hashing is bounded per server) is retried after the
    /// delay the server asks for, a bounded number of times.
    async fn call(&self, method: reqwest::Method, path: &str, token: &str, body: Value) -> Value {
        for _ in 0..100 {
            match self.try_call(method.clone(), path, token, &body).await {
                Ok(value) => return value,
                Err(wait) => tokio::time::sleep(Duration::from_millis(wait)).await,
            }
        }
        panic!("{path}: still limited after 100 attempts");
    }

    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: &Value,
    ) -> Result<Value, u64> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if !body.is_null() {
            request = request.json(body);
        }
        if !token.is_empty() {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if status.as_u16() == 429 {
            return Err(value["retry_after_ms"].as_u64().unwrap_or(20).min(20));
        }
        assert!(
            status.is_success() || (status.as_u16() == 401 && token.is_empty()),
            "{path}: {status} {value}"
        );
        Ok(value)
    }

    async fn register(&self, name: &str) -> String {
        let path = "/_matrix/client/v3/register";
        let challenge = self.call(reqwest::Method::POST, path, "", json!({})).await;
        let body = json!({"username": name, "password": "push-bench-pw",
            "auth": {"type": "m.login.dummy", "session": challenge["session"]}});
        let done = self.call(reqwest::Method::POST, path, "", body).await;
        done["access_token"].as_str().expect("token").to_owned()
    }

    async fn create_room(&self, token: &str) -> String {
        let path = "/_matrix/client/v3/createRoom";
        let body = json!({"preset": "public_chat"});
        let created = self.call(reqwest::Method::POST, path, token, body).await;
        created["room_id"].as_str().expect("room id").to_owned()
    }

    async fn join(&self, token: &str, room: &str) {
        let path = format!("/_matrix/client/v3/join/{room}");
        self.call(reqwest::Method::POST, &path, token, json!({}))
            .await;
    }

    async fn send(&self, token: &str, room: &str, txn: &str, n: usize) -> String {
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
        let body = json!({"msgtype": "m.text", "body": format!("message {n}: hello family, dinner at seven?")});
        let sent = self.call(reqwest::Method::PUT, &path, token, body).await;
        sent["event_id"].as_str().expect("event id").to_owned()
    }

    async fn sync(&self, token: &str, since: Option<&str>) -> Value {
        let path = match since {
            Some(since) => format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
            None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
        };
        self.call(reqwest::Method::GET, &path, token, Value::Null)
            .await
    }
}

/// Runs `work` over `items` with at most `parallel` in flight.
async fn parallel<T, F, Fut>(items: Vec<T>, parallel: usize, work: F)
where
    T: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut pending = Vec::new();
    for item in items {
        pending.push(tokio::spawn(work(item)));
        if pending.len() == parallel {
            for task in pending.drain(..) {
                task.await.expect("task");
            }
        }
    }
    for task in pending {
        task.await.expect("task");
    }
}

async fn register_many(client: &Arc<Client>, prefix: &str, count: usize) -> Vec<String> {
    let tokens = Arc::new(std::sync::Mutex::new(vec![String::new(); count]));
    let (c, t, p) = (client.clone(), tokens.clone(), prefix.to_owned());
    parallel((0..count).collect(), 2, move |i| {
        let (c, t, p) = (c.clone(), t.clone(), p.clone());
        async move {
            let token = c.register(&format!("{p}{i}")).await;
            t.lock().unwrap()[i] = token;
        }
    })
    .await;
    Arc::try_unwrap(tokens).unwrap().into_inner().unwrap()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct SendFigures {
    members: usize,
    messages: usize,
    cpu_per_message: f64,
    p50: f64,
    p99: f64,
    bytes_per_message: Option<u64>,
}

/// Sends `messages` one after another from `token` into `room`, measuring the server.
async fn measure_sends(
    server: &Server,
    client: &Client,
    token: &str,
    room: &str,
    members: usize,
    messages: usize,
) -> SendFigures {
    let (cpu0, bytes0) = (server.cpu(), server.written());
    let mut latencies = Vec::with_capacity(messages);
    for n in 0..messages {
        let started = Instant::now();
        client
            .send(token, room, &format!("bench-{members}-{n}"), n)
            .await;
        latencies.push(started.elapsed());
    }
    let cpu = server.cpu() - cpu0;
    let bytes = server.written().zip(bytes0).map(|(b, b0)| b - b0);
    latencies.sort();
    let pct = |p: f64| ms(latencies[((latencies.len() as f64 * p) as usize).min(messages - 1)]);
    SendFigures {
        members,
        messages,
        cpu_per_message: ms(cpu) / messages as f64,
        p50: pct(0.50),
        p99: pct(0.99),
        bytes_per_message: bytes.map(|b| b / messages as u64),
    }
}

/// Server CPU per initial sync and per incremental sync (ms).
async fn measure_syncs(server: &Server, client: &Client, token: &str, syncs: usize) -> (f64, f64) {
    // Warm caches first so both states are measured alike.
    let first = client.sync(token, None).await;
    let cpu0 = server.cpu();
    for _ in 0..syncs {
        client.sync(token, None).await;
    }
    let initial = ms(server.cpu() - cpu0) / syncs as f64;
    let mut since = first["next_batch"].as_str().expect("next_batch").to_owned();
    let cpu0 = server.cpu();
    for _ in 0..syncs * 5 {
        let body = client.sync(token, Some(&since)).await;
        since = body["next_batch"].as_str().expect("next_batch").to_owned();
    }
    let incremental = ms(server.cpu() - cpu0) / (syncs * 5) as f64;
    (initial, incremental)
}

/// The sum of the unread notification counts over the user's joined rooms.
fn unread_total(sync: &Value) -> u64 {
    sync["rooms"]["join"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, room)| room["unread_notifications"]["notification_count"].as_u64())
        .sum()
}

#[tokio::main]
async fn main() {
    let args = args();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::spawn(&args.server, dir.path()).await;
    let client = Arc::new(Client {
        http: reqwest::Client::new(),
        base: server.base.clone(),
    });
    println!("server {}", args.server.display());

    // 1. Sends into a big room and into a room of 2.
    let setup = Instant::now();
    let tokens = register_many(&client, "member", args.members).await;
    let big = client.create_room(&tokens[0]).await;
    let (c, r) = (client.clone(), big.clone());
    parallel(tokens[1..].to_vec(), 8, move |t| {
        let (c, r) = (c.clone(), r.clone());
        async move { c.join(&t, &r).await }
    })
    .await;
    let small = client.create_room(&tokens[0]).await;
    client.join(&tokens[1], &small).await;
    eprintln!(
        "set up {} members in {:.1} s",
        args.members,
        setup.elapsed().as_secs_f64()
    );
    let baseline = measure_sends(&server, &client, &tokens[1], &small, 2, args.messages).await;
    let crowd = measure_sends(
        &server,
        &client,
        &tokens[1],
        &big,
        args.members,
        args.messages,
    )
    .await;

    // 2. One reader in many rooms, each with unread messages from a writer.
    let setup = Instant::now();
    let reader = client.register("reader").await;
    let writer = client.register("writer").await;
    let mut rooms = Vec::new();
    for _ in 0..args.rooms {
        let room = client.create_room(&writer).await;
        client.join(&reader, &room).await;
        rooms.push(room);
    }
    let last = Arc::new(std::sync::Mutex::new(vec![String::new(); args.rooms]));
    let (c, w, l, unread) = (client.clone(), writer.clone(), last.clone(), args.unread);
    parallel(
        rooms.iter().cloned().enumerate().collect(),
        4,
        move |(i, room)| {
            let (c, w, l) = (c.clone(), w.clone(), l.clone());
            async move {
                for n in 0..unread {
                    let id = c.send(&w, &room, &format!("fill-{i}-{n}"), n).await;
                    l.lock().unwrap()[i] = id;
                }
            }
        },
    )
    .await;
    eprintln!(
        "set up {} rooms x {} unread in {:.1} s",
        args.rooms,
        args.unread,
        setup.elapsed().as_secs_f64()
    );
    let unread_before = unread_total(&client.sync(&reader, None).await);
    let with_unread = measure_syncs(&server, &client, &reader, args.syncs).await;
    let last = last.lock().unwrap().clone();
    for (room, event) in rooms.iter().zip(&last) {
        if event.is_empty() {
            continue;
        }
        let path = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{event}");
        client
            .call(reqwest::Method::POST, &path, &reader, json!({}))
            .await;
    }
    let unread_after = unread_total(&client.sync(&reader, None).await);
    let without_unread = measure_syncs(&server, &client, &reader, args.syncs).await;

    println!();
    println!("sends (one at a time)      messages  CPU ms/msg   p50 ms   p99 ms  disk B/msg");
    for f in [&baseline, &crowd] {
        println!(
            "room of {:<5} members     {:>8}  {:>10.2} {:>8.2} {:>8.2}  {:>10}",
            f.members,
            f.messages,
            f.cpu_per_message,
            f.p50,
            f.p99,
            f.bytes_per_message
                .map_or_else(|| "n/a".to_owned(), |b| b.to_string()),
        );
    }
    println!();
    println!(
        "/sync, {} rooms            unread total  CPU ms/initial  CPU ms/incremental",
        args.rooms
    );
    for (label, total, (initial, incremental)) in [
        (
            format!("{} unread/room", args.unread),
            unread_before,
            with_unread,
        ),
        (
            "0 unread (after receipts)".to_owned(),
            unread_after,
            without_unread,
        ),
    ] {
        println!("{label:<26} {total:>12}  {initial:>14.2}  {incremental:>18.2}");
    }
}
