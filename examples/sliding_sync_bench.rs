//! Sliding sync benchmark: what Element X's first room list costs next to a full /sync v2.
//!
//! The real `hearth` binary runs as a child process (so its CPU time and RSS are its own). A
//! user joins `--rooms` rooms (default 500) with `--messages` messages each (default 20), sent
//! by a second user. Then, each `--runs` times (the median reported):
//!
//! 1. the first sliding sync response of a new connection for a `--window`-room list (default
//!    20, Element X's first range) with Element X's room list `required_state`, timeline limit 1;
//! 2. the same with a timeline limit of 20 (a client that shows a page of each room);
//! 3. a full initial /sync v2 (no filter: every room, 10 events each);
//! 4. an incremental sliding sync after one new message, and an incremental /sync v2 after it.
//!
//! Time (request sent → body read), response bytes, and server CPU (user + system) per request.
//! Last, `--connections` sliding sync connections (over as many devices) with a window over
//! every room, each synced twice: the server's RSS growth per open connection.
//!
//! `cargo build --release --bin hearth && cargo run --release --example sliding_sync_bench --
//!  [--rooms 500] [--messages 20] [--window 20] [--runs 5] [--connections 16] [--server PATH]`

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "support/proc_status.rs"]
mod proc_status;

const SS: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

struct Args {
    rooms: usize,
    messages: usize,
    window: usize,
    runs: usize,
    connections: usize,
    server: PathBuf,
}

fn args() -> Args {
    let mut args = Args {
        rooms: 500,
        messages: 20,
        window: 20,
        runs: 5,
        connections: 16,
        server: PathBuf::from("target/release/hearth"),
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    for pair in raw.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        let number = value.parse::<usize>().ok().filter(|n| *n >= 1);
        match (pair[0].as_str(), number) {
            ("--rooms", Some(n)) => args.rooms = n,
            ("--messages", Some(n)) => args.messages = n,
            ("--window", Some(n)) => args.window = n,
            ("--runs", Some(n)) => args.runs = n,
            ("--connections", Some(n)) => args.connections = n,
            ("--server", _) if !value.is_empty() => args.server = PathBuf::from(value),
            _ => {
                eprintln!(
                    "usage: sliding_sync_bench [--rooms N] [--messages M] [--window W] [--runs R] \
                     [--connections C] [--server PATH]"
                );
                std::process::exit(2);
            }
        }
    }
    args
}

struct Server {
    child: Child,
    base: String,
    http: reqwest::Client,
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
            http,
            ticks_per_second,
        }
    }

    /// User + system CPU time of the server so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("/proc/<pid>/stat");
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_secs_f64(ticks as f64 / self.ticks_per_second)
    }

    fn rss_kb(&self) -> u64 {
        proc_status::status_kib(self.child.id(), "VmRSS:")
    }

    /// One request: the JSON body, its size, the wall time and the server CPU it took.
    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (Value, usize, Duration, Duration) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let cpu = self.cpu();
        let start = Instant::now();
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let bytes = response.bytes().await.expect("body");
        let took = start.elapsed();
        let cpu = self.cpu().saturating_sub(cpu);
        assert!(status.is_success(), "{path}: {status} {bytes:?}");
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (value, bytes.len(), took, cpu)
    }

    async fn register(&self, name: &str) -> String {
        let url = "/_matrix/client/v3/register";
        let mut request = self.http.post(format!("{}{url}", self.base));
        request = request.json(&json!({"username": name, "password": "pw"}));
        let challenge: Value = request.send().await.unwrap().json().await.unwrap();
        let session = challenge["session"].as_str().unwrap_or_default();
        let body = json!({"username": name, "password": "pw",
            "auth": {"type": "m.login.dummy", "session": session}});
        let (value, ..) = self
            .request(reqwest::Method::POST, url, None, Some(&body))
            .await;
        value["access_token"]
            .as_str()
            .expect("registered")
            .to_owned()
    }

    async fn login(&self, name: &str) -> String {
        let body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": name}, "password": "pw"});
        let (value, ..) = self
            .request(
                reqwest::Method::POST,
                "/_matrix/client/v3/login",
                None,
                Some(&body),
            )
            .await;
        value["access_token"]
            .as_str()
            .expect("logged in")
            .to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Element X's room list `required_state` (matrix-sdk-ui's `DEFAULT_REQUIRED_STATE`).
fn element_x_required_state() -> Value {
    json!([
        ["m.room.name", ""],
        ["m.room.encryption", ""],
        ["m.room.member", "$LAZY"],
        ["m.room.member", "$ME"],
        ["m.room.topic", ""],
        ["m.room.avatar", ""],
        ["m.room.canonical_alias", ""],
        ["m.room.power_levels", ""],
        ["org.matrix.msc3401.call.member", "*"],
        ["m.room.join_rules", ""],
        ["m.room.tombstone", ""],
        ["m.room.create", ""],
        ["m.room.history_visibility", ""],
        ["io.element.functional_members", ""],
        ["m.space.parent", "*"],
        ["m.space.child", "*"],
        ["m.beacon_info", "*"]
    ])
}

fn sliding_request(conn: &str, window: usize, timeline_limit: usize) -> Value {
    json!({
        "conn_id": conn,
        "lists": {"all_rooms": {
            "ranges": [[0, window - 1]],
            "timeline_limit": timeline_limit,
            "required_state": element_x_required_state(),
        }},
        "extensions": {
            "account_data": {"enabled": true},
            "receipts": {"enabled": true},
            "typing": {"enabled": true},
        },
    })
}

/// The median of each column.
fn median(mut values: Vec<(usize, Duration, Duration)>) -> (usize, Duration, Duration) {
    let mid = values.len() / 2;
    let bytes = {
        values.sort_by_key(|v| v.0);
        values[mid].0
    };
    let took = {
        values.sort_by_key(|v| v.1);
        values[mid].1
    };
    let cpu = {
        values.sort_by_key(|v| v.2);
        values[mid].2
    };
    (bytes, took, cpu)
}

fn report(what: &str, (bytes, took, cpu): (usize, Duration, Duration)) {
    println!(
        "{what:<55} {:>9.1} ms {:>10} bytes {:>8.0} ms CPU",
        took.as_secs_f64() * 1000.0,
        bytes,
        cpu.as_secs_f64() * 1000.0
    );
}

#[tokio::main]
async fn main() {
    let args = args();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::spawn(&args.server, dir.path()).await;
    let post = reqwest::Method::POST;
    let get = reqwest::Method::GET;
    let put = reqwest::Method::PUT;

    // Fill: Bob creates the rooms and sends the messages, Alice joins each room.
    let start = Instant::now();
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut rooms = Vec::with_capacity(args.rooms);
    for chunk in (0..args.rooms).collect::<Vec<_>>().chunks(16) {
        let created = futures_util::future::join_all(chunk.iter().map(|i| {
            let body = json!({"preset": "public_chat", "name": format!("Room {i}")});
            let (server, post, bob, alice) = (&server, post.clone(), &bob, &alice);
            async move {
                let (room, ..) = server
                    .request(
                        post.clone(),
                        "/_matrix/client/v3/createRoom",
                        Some(bob),
                        Some(&body),
                    )
                    .await;
                let room = room["room_id"].as_str().expect("room").to_owned();
                server
                    .request(
                        post,
                        &format!("/_matrix/client/v3/join/{room}"),
                        Some(alice),
                        Some(&json!({})),
                    )
                    .await;
                for m in 0..args.messages {
                    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t{m}");
                    let body =
                        json!({"msgtype": "m.text", "body": format!("message {m} of {room}")});
                    server
                        .request(reqwest::Method::PUT, &path, Some(bob), Some(&body))
                        .await;
                }
                room
            }
        }))
        .await;
        rooms.extend(created);
    }
    println!(
        "filled {} rooms x {} messages in {:.1} s; server RSS {} MB",
        args.rooms,
        args.messages,
        start.elapsed().as_secs_f64(),
        server.rss_kb() / 1024
    );

    let mut first = Vec::new();
    let mut first_20 = Vec::new();
    let mut full_v2 = Vec::new();
    let mut incremental = Vec::new();
    let mut incremental_v2 = Vec::new();
    for run in 0..args.runs {
        let (body, bytes, took, cpu) = server
            .request(
                post.clone(),
                &format!("{SS}?timeout=0"),
                Some(&alice),
                Some(&sliding_request("list", args.window, 1)),
            )
            .await;
        assert_eq!(
            body["rooms"].as_object().map(|r| r.len()),
            Some(args.window.min(args.rooms))
        );
        first.push((bytes, took, cpu));
        let pos = body["pos"].as_str().unwrap().to_owned();
        let (.., bytes20, took20, cpu20) = server
            .request(
                post.clone(),
                &format!("{SS}?timeout=0"),
                Some(&alice),
                Some(&sliding_request("page", args.window, 20)),
            )
            .await;
        first_20.push((bytes20, took20, cpu20));

        let (v2, bytes, took, cpu) = server
            .request(get.clone(), "/_matrix/client/v3/sync", Some(&alice), None)
            .await;
        full_v2.push((bytes, took, cpu));
        let since = v2["next_batch"].as_str().unwrap().to_owned();

        let room = &rooms[run % rooms.len()];
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/new{run}");
        server
            .request(
                put.clone(),
                &path,
                Some(&bob),
                Some(&json!({"msgtype": "m.text", "body": "news"})),
            )
            .await;
        let (body, bytes, took, cpu) = server
            .request(
                post.clone(),
                &format!("{SS}?timeout=0&pos={pos}"),
                Some(&alice),
                Some(&sliding_request("list", args.window, 1)),
            )
            .await;
        assert!(
            body["rooms"].get(room).is_some(),
            "the room with news: {body}"
        );
        incremental.push((bytes, took, cpu));
        let (.., bytes, took, cpu) = server
            .request(
                get.clone(),
                &format!("/_matrix/client/v3/sync?since={since}"),
                Some(&alice),
                None,
            )
            .await;
        incremental_v2.push((bytes, took, cpu));
    }
    println!("median of {} runs:", args.runs);
    report(
        &format!(
            "sliding sync, first response, {}-room window, timeline 1",
            args.window
        ),
        median(first),
    );
    report(
        &format!(
            "sliding sync, first response, {}-room window, timeline 20",
            args.window
        ),
        median(first_20),
    );
    report(
        &format!("/sync v2, initial, all {} rooms", args.rooms),
        median(full_v2),
    );
    report(
        "sliding sync, incremental after one message",
        median(incremental),
    );
    report(
        "/sync v2, incremental after one message",
        median(incremental_v2),
    );

    // RSS per open connection: one device per connection (the server keeps 16 per user), each
    // connection's window covering every room, synced twice (two snapshots kept).
    let before = server.rss_kb();
    let mut tokens = Vec::new();
    for _ in 0..args.connections {
        tokens.push(server.login("alice").await);
    }
    let after_logins = server.rss_kb();
    for token in &tokens {
        let request = sliding_request("rss", args.rooms, 1);
        let (body, ..) = server
            .request(
                post.clone(),
                &format!("{SS}?timeout=0"),
                Some(token),
                Some(&request),
            )
            .await;
        let pos = body["pos"].as_str().unwrap().to_owned();
        server
            .request(
                post.clone(),
                &format!("{SS}?timeout=0&pos={pos}"),
                Some(token),
                Some(&request),
            )
            .await;
    }
    let after = server.rss_kb();
    println!(
        "RSS: {} MB before, {} MB after {} logins, {} MB with {} connections over {} rooms: {:.1} KB per connection",
        before / 1024,
        after_logins / 1024,
        args.connections,
        after / 1024,
        args.connections,
        args.rooms,
        after.saturating_sub(after_logins) as f64 / args.connections as f64
    );
}
