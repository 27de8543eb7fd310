//! Load generator for rooms: registers users, creates rooms and sends messages with N
//! concurrent senders against an in-process Hearth on 127.0.0.1, then reports events/s,
//! latency percentiles and disk bytes per stored message. It also compares sending into an
//! empty room with sending into a room holding 1,000 state events.
//!
//! It then measures delivery latency from a send to its arrival in other users' long-polling
//! `/sync` (50 syncing users by default) and the initial sync of a user in 100 rooms.
//!
//! `cargo run --release --example loadgen -- [--senders N] [--messages M] [--state S] [--syncers U]`

use std::{
    path::Path,
    time::{Duration, Instant},
};

use hearth::config::{Config, Listener, RateLimit, Registration, RegistrationMode};
use serde_json::{json, Value};

struct Args {
    syncers: usize,
    senders: usize,
    messages: usize,
    state: usize,
}

fn args() -> Args {
    let mut args = Args {
        syncers: 50,
        senders: 16,
        messages: 4000,
        state: 1000,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    for pair in raw.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse().ok());
        match (pair[0].as_str(), value) {
            ("--senders", Some(v)) => args.senders = v,
            ("--messages", Some(v)) => args.messages = v,
            ("--state", Some(v)) => args.state = v,
            ("--syncers", Some(v)) => args.syncers = v,
            _ => {
                eprintln!("usage: loadgen [--senders N] [--messages M] [--state S] [--syncers U]");
                std::process::exit(2);
            }
        }
    }
    args
}

fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success() || status.as_u16() == 401,
            "{path}: {status} {value}"
        );
        value
    }

    async fn register(&self, name: &str) -> String {
        let challenge = self
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/register",
                None,
                json!({}),
            )
            .await;
        let body = json!({"username": name, "password": "load-test-pw",
            "auth": {"type": "m.login.dummy", "session": challenge["session"]}});
        let done = self
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/register",
                None,
                body,
            )
            .await;
        done["access_token"].as_str().expect("token").to_owned()
    }
}

/// Sends `count` messages into `room` from `tokens` concurrently; returns latencies.
async fn send_burst(
    client: &std::sync::Arc<Client>,
    tokens: &[String],
    room: &str,
    count: usize,
    tag: &str,
) -> Vec<Duration> {
    let per_sender = count / tokens.len();
    let mut tasks = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let (client, token, room, tag) = (
            client.clone(),
            token.clone(),
            room.to_owned(),
            tag.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_sender);
            for n in 0..per_sender {
                let started = Instant::now();
                let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{tag}-{i}-{n}");
                let body = json!({"msgtype": "m.text", "body": format!("message {n} from sender {i}: hello family, dinner at seven?")});
                let response = client.call(reqwest::Method::PUT, &path, Some(&token), body).await;
                assert!(response["event_id"].is_string(), "{response}");
                latencies.push(started.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("sender"));
    }
    all
}

fn report(label: &str, mut latencies: Vec<Duration>, elapsed: Duration) {
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "{label:<38} {:>6} events  {:>8.0} events/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
    );
}

#[tokio::main]
async fn main() {
    let args = args();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config {
        data_dir: dir.path().to_path_buf(),
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
        log_level: "warn".into(),
        ..Default::default()
    };
    let server = hearth::server::start(config).await.expect("server");
    let client = std::sync::Arc::new(Client {
        http: reqwest::Client::new(),
        base: server.base_url(),
    });
    println!(
        "senders {}, messages {}, engine {}",
        args.senders,
        args.messages,
        server.services.store.engine_kind()
    );

    let mut tokens = Vec::new();
    for i in 0..args.senders {
        tokens.push(client.register(&format!("load{i}")).await);
    }
    let room = client
        .call(
            reqwest::Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(&tokens[0]),
            json!({"preset": "public_chat"}),
        )
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for token in &tokens[1..] {
        client
            .call(
                reqwest::Method::POST,
                &format!("/_matrix/client/v3/join/{room}"),
                Some(token),
                json!({}),
            )
            .await;
    }

    // Warm up, then measure the main burst and the disk it costs.
    send_burst(&client, &tokens, &room, args.senders * 10, "warm").await;
    let db = dir.path().join("db");
    let before = dir_bytes(&db);
    let started = Instant::now();
    let latencies = send_burst(&client, &tokens, &room, args.messages, "main").await;
    let elapsed = started.elapsed();
    let sent = latencies.len();
    report(
        &format!("{} concurrent senders, one room", args.senders),
        latencies,
        elapsed,
    );
    let after = dir_bytes(&db);
    println!(
        "disk: {} bytes for {sent} messages = {:.0} bytes/message",
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / sent as f64
    );

    // Empty room vs a room with many state events, one sender each.
    let single = &tokens[..1];
    let empty = client
        .call(
            reqwest::Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(&tokens[0]),
            json!({}),
        )
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let big = client
        .call(
            reqwest::Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(&tokens[0]),
            json!({}),
        )
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let filled = Instant::now();
    for i in 0..args.state {
        let path = format!("/_matrix/client/v3/rooms/{big}/state/org.example.setting/key{i}");
        client
            .call(
                reqwest::Method::PUT,
                &path,
                Some(&tokens[0]),
                json!({"value": i}),
            )
            .await;
    }
    println!(
        "filled a room with {} state events in {:.1} s",
        args.state,
        filled.elapsed().as_secs_f64()
    );
    let n = (args.messages / 4).max(200);
    for (label, room) in [
        ("1 sender, empty room", &empty),
        ("1 sender, room with state", &big),
    ] {
        let started = Instant::now();
        let latencies = send_burst(
            &client,
            single,
            room,
            n,
            label.split(',').nth(1).unwrap().trim(),
        )
        .await;
        report(label, latencies, started.elapsed());
    }

    sync_delivery(&client, args.syncers).await;
    initial_sync(&client).await;
    server.stop().await;
}

/// Milliseconds since the start of the run; messages carry it (as integer microseconds:
/// canonical JSON has no floats) to time their delivery.
fn clock() -> f64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1000.0
}

/// `syncers` users long-poll /sync in one room while another user sends; reports the time
/// from the send request to the message arriving in each syncing client.
async fn sync_delivery(client: &std::sync::Arc<Client>, syncers: usize) {
    let sender = client.register("sync-sender").await;
    let room = client
        .call(
            reqwest::Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(&sender),
            json!({"preset": "public_chat"}),
        )
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let messages = 100;
    let mut tasks = Vec::new();
    for i in 0..syncers {
        let token = client.register(&format!("syncer{i}")).await;
        client
            .call(
                reqwest::Method::POST,
                &format!("/_matrix/client/v3/join/{room}"),
                Some(&token),
                json!({}),
            )
            .await;
        let initial = client
            .call(
                reqwest::Method::GET,
                "/_matrix/client/v3/sync?timeout=0",
                Some(&token),
                json!({}),
            )
            .await;
        let mut since = initial["next_batch"].as_str().unwrap().to_owned();
        let (client, room) = (client.clone(), room.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while latencies.len() < messages && Instant::now() < deadline {
                let path = format!("/_matrix/client/v3/sync?since={since}&timeout=10000");
                let body = client
                    .call(reqwest::Method::GET, &path, Some(&token), json!({}))
                    .await;
                let arrived = clock();
                if let Some(events) = body["rooms"]["join"][&room]["timeline"]["events"].as_array()
                {
                    for event in events {
                        if let Some(sent_us) = event["content"]["sent_at_us"].as_u64() {
                            let sent = sent_us as f64 / 1000.0;
                            latencies
                                .push(Duration::from_secs_f64((arrived - sent).max(0.0) / 1000.0));
                        }
                    }
                }
                since = body["next_batch"].as_str().unwrap().to_owned();
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    for n in 0..messages {
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/sync-{n}");
        let body = json!({"msgtype": "m.text", "body": format!("ping {n}"), "sent_at_us": (clock() * 1000.0) as u64});
        client
            .call(reqwest::Method::PUT, &path, Some(&sender), body)
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("syncer"));
    }
    report(
        &format!("delivery to {syncers} long-polling syncs"),
        all,
        started.elapsed(),
    );
}

/// Initial sync of a user in 100 rooms with 20 messages each.
async fn initial_sync(client: &std::sync::Arc<Client>) {
    let token = client.register("many-rooms").await;
    for r in 0..100 {
        let room = client
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(&token),
                json!({"name": format!("room {r}")}),
            )
            .await["room_id"]
            .as_str()
            .unwrap()
            .to_owned();
        for n in 0..20 {
            let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/r{r}m{n}");
            client
                .call(
                    reqwest::Method::PUT,
                    &path,
                    Some(&token),
                    json!({"msgtype": "m.text", "body": format!("message {n}")}),
                )
                .await;
        }
    }
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let body = client
            .call(
                reqwest::Method::GET,
                "/_matrix/client/v3/sync",
                Some(&token),
                json!({}),
            )
            .await;
        times.push(started.elapsed());
        assert_eq!(
            body["rooms"]["join"].as_object().map(|m| m.len()),
            Some(100)
        );
    }
    times.sort();
    println!(
        "initial sync, 100 rooms x 20 messages: median {:.1} ms, best {:.1} ms",
        times[2].as_secs_f64() * 1000.0,
        times[0].as_secs_f64() * 1000.0
    );
}
