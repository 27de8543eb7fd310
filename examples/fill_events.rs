//! Fills a data directory with N room events through the client API of an in-process Hearth
//! (one user, 20 rooms, 32 concurrent senders), for start-up and memory measurements on a
//! realistic database. Then, with `--measure BIN`, starts the real binary on it and reports
//! start-up time (spawn → `/versions` answers), idle RSS, and peak RSS after paging every room's
//! whole history, for each `--cache-mb` value, and start-up after a clean stop vs after a
//! SIGKILL that follows a write (`--restarts N` rounds of each, the median printed; then
//! nothing else is measured).
//!
//! `cargo run --release --example fill_events -- --data DIR [--events 100000] [--measure target/release/hearth] [--cache-mb 32,8]`

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hearth::config::{Config, Listener, RateLimit, Registration, RegistrationMode};
use serde_json::{json, Value};

#[path = "support/proc_status.rs"]
mod proc_status;
use proc_status::status_kib;

const ROOMS: usize = 20;
const SENDERS: usize = 32;

async fn post(http: &reqwest::Client, url: String, token: Option<&str>, body: Value) -> Value {
    let mut r = http.post(url).json(&body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap().json().await.unwrap()
}

async fn register(http: &reqwest::Client, base: &str) -> String {
    let url = format!("{base}/_matrix/client/v3/register");
    let first = post(
        http,
        url.clone(),
        None,
        json!({"username": "filler", "password": "pw"}),
    )
    .await;
    let session = first["session"].as_str().unwrap_or_default();
    let done = post(
        http,
        url,
        None,
        json!({"username": "filler", "password": "pw", "auth": {"type": "m.login.dummy", "session": session}}),
    )
    .await;
    done["access_token"]
        .as_str()
        .expect("registered")
        .to_owned()
}

async fn fill(data: &Path, events: usize) {
    let config = Config {
        data_dir: data.to_owned(),
        listeners: vec![Listener {
            bind: "127.0.0.1:0".parse().unwrap(),
        }],
        registration: Registration {
            mode: RegistrationMode::Open,
            ..Default::default()
        },
        rate_limit: RateLimit {
            enabled: false,
            ..Default::default()
        },
        bcrypt_cost: 4,
        ..Default::default()
    };
    let server = hearth::server::start(config).await.expect("server starts");
    let base = server.base_url();
    let http = reqwest::Client::new();
    let token = register(&http, &base).await;
    let mut rooms = Vec::new();
    for i in 0..ROOMS {
        let r = post(
            &http,
            format!("{base}/_matrix/client/v3/createRoom"),
            Some(&token),
            json!({"name": format!("room {i}")}),
        )
        .await;
        rooms.push(
            r["room_id"]
                .as_str()
                .unwrap()
                .replace('!', "%21")
                .replace(':', "%3A"),
        );
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let (http, base, token, rooms) = (http.clone(), base.clone(), token.clone(), rooms.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = s;
            while n < events {
                let room = &rooms[n % ROOMS];
                let url = format!("{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/f{n}");
                let body = json!({"msgtype": "m.text", "body": format!("message number {n} with a little text in it")});
                // A conflict with a concurrent send to the same room is answered 409: retry.
                let mut tries = 0;
                loop {
                    let r = http.put(&url).bearer_auth(&token).json(&body).send().await.unwrap();
                    tries += 1;
                    if r.status() == reqwest::StatusCode::CONFLICT && tries < 20 {
                        continue;
                    }
                    assert!(r.status().is_success(), "send failed: {}", r.status());
                    break;
                }
                n += SENDERS;
                if s == 0 && n % 10_000 < SENDERS {
                    eprintln!("  {n} events");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "filled {events} events in {secs:.1}s ({:.0}/s)",
        events as f64 / secs
    );
    server.stop().await;
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| {
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    dir_bytes(&e.path())
                } else {
                    m.len()
                }
            })
            .sum()
    })
}

/// Starts `bin` on `data`; returns the child, its base URL and the time until `/versions`
/// answered.
async fn start(bin: &Path, data: &Path, cache_mb: u64) -> (std::process::Child, String, Duration) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let child = Command::new(bin)
        .env_clear()
        .env("HEARTH_DATA_DIR", data)
        .env("HEARTH_LISTENERS", format!("127.0.0.1:{port}"))
        .env("HEARTH_STORAGE__CACHE_MB", cache_mb.to_string())
        .env("HEARTH_RATE_LIMIT__ENABLED", "false")
        .env("HEARTH_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while http
        .get(format!("{base}/_matrix/client/versions"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (child, base, started.elapsed())
}

/// Start-up after a clean stop and after a SIGKILL right after a write, `rounds` times each.
async fn measure_restarts(bin: &Path, data: &Path, rounds: usize) {
    let http = reqwest::Client::new();
    let mut clean = Vec::new();
    let mut killed = Vec::new();
    for _ in 0..rounds {
        // A clean stop first, so the next start needs no recovery.
        let (mut child, _, _) = start(bin, data, 32).await;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
        let (mut child, base, t) = start(bin, data, 32).await;
        clean.push(t);
        // One write, then SIGKILL: the next start finds the file not closed cleanly.
        let login = post(
            &http,
            format!("{base}/_matrix/client/v3/login"),
            None,
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "filler"}, "password": "pw"}),
        )
        .await;
        assert!(login["access_token"].is_string(), "login: {login}");
        child.kill().unwrap();
        let _ = child.wait();
        let (mut child, _, t) = start(bin, data, 32).await;
        killed.push(t);
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1000.0
    };
    println!(
        "start-up: after a clean stop {:.0} ms, after SIGKILL {:.0} ms (median of {rounds}; all: {clean:?} / {killed:?})",
        median(&mut clean.clone()),
        median(&mut killed.clone()),
    );
}

async fn measure(bin: &Path, data: &Path, cache_mb: u64) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let mut child = Command::new(bin)
        .env_clear()
        .env("HEARTH_DATA_DIR", data)
        .env("HEARTH_LISTENERS", format!("127.0.0.1:{port}"))
        .env("HEARTH_STORAGE__CACHE_MB", cache_mb.to_string())
        .env("HEARTH_RATE_LIMIT__ENABLED", "false")
        .env("HEARTH_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    while http
        .get(format!("{base}/_matrix/client/versions"))
        .send()
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let startup = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = status_kib(child.id(), "VmRSS:");
    // Read everything: log in, page every joined room's whole history backwards.
    let login = post(
        &http,
        format!("{base}/_matrix/client/v3/login"),
        None,
        json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "filler"}, "password": "pw"}),
    )
    .await;
    let mut read = 0;
    if let Some(token) = login["access_token"].as_str() {
        let rooms: Value = http
            .get(format!("{base}/_matrix/client/v3/joined_rooms"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for room in rooms["joined_rooms"].as_array().into_iter().flatten() {
            let room = room
                .as_str()
                .unwrap()
                .replace('!', "%21")
                .replace(':', "%3A");
            let mut from = String::new();
            loop {
                let url =
                    format!("{base}/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=500{from}");
                let page: Value = http
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let n = page["chunk"].as_array().map_or(0, |c| c.len());
                read += n;
                match page["end"].as_str() {
                    Some(end) if n > 0 => from = format!("&from={end}"),
                    _ => break,
                }
            }
        }
    }
    let after = status_kib(child.id(), "VmRSS:");
    let peak = status_kib(child.id(), "VmHWM:");
    println!(
        "cache_mb = {cache_mb:>3}: start-up {:>6.0} ms, idle RSS {:>5.1} MB, after reading {read} events RSS {:>5.1} MB (peak {:>5.1} MB)",
        startup.as_secs_f64() * 1000.0,
        idle as f64 / 1024.0,
        after as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

#[tokio::main]
async fn main() {
    let mut data: Option<PathBuf> = None;
    let mut events = 100_000;
    let mut bin: Option<PathBuf> = None;
    let mut caches = vec![32u64, 8];
    let mut restarts = 0;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--data" => data = Some(value.into()),
            "--events" => events = value.parse().expect("--events N"),
            "--restarts" => restarts = value.parse().expect("--restarts N"),
            "--measure" => bin = Some(value.into()),
            "--cache-mb" => {
                caches = value
                    .split(',')
                    .map(|v| v.parse().expect("--cache-mb"))
                    .collect()
            }
            _ => {
                eprintln!(
                    "usage: fill_events --data DIR [--events N] [--measure BIN] [--cache-mb A,B] [--restarts N]"
                );
                std::process::exit(2);
            }
        }
    }
    let data = data.expect("--data DIR");
    if !data.join("db").exists() {
        fill(&data, events).await;
    }
    println!(
        "database: {:.1} MB on disk",
        dir_bytes(&data.join("db")) as f64 / 1e6
    );
    if let Some(bin) = bin {
        if restarts > 0 {
            // Start-up only: the memory measurements below take minutes on a large database.
            measure_restarts(&bin, &data, restarts).await;
            return;
        }
        for cache in caches {
            measure(&bin, &data, cache).await;
        }
    }
}
