//! Crash safety: the real binary under continuous load (messages, state changes,
//! registrations) is killed with SIGKILL at random moments, many times. After every restart,
//! every request that was answered with success must have its effect, the timeline index must
//! agree with the event index, and the server must start cleanly.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngExt;
use serde_json::{json, Value};

use crate::common::enc;

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

fn spawn(dir: &std::path::Path, port: u16, engine: &str) -> Child {
    Command::new(BIN)
        .env_clear()
        .env("HEARTH_DATA_DIR", dir)
        .env("HEARTH_LISTENERS", format!("127.0.0.1:{port}"))
        .env("HEARTH_BCRYPT_COST", "4")
        .env("HEARTH_RATE_LIMIT__ENABLED", "false")
        .env("HEARTH_STORAGE__ENGINE", engine)
        .env("HEARTH_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("hearth starts")
}

async fn wait_up(http: &reqwest::Client, base: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http
            .get(format!("{base}/_matrix/client/versions"))
            .send()
            .await
        {
            if r.status().is_success() {
                return;
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("hearth did not start cleanly after a crash: {status}");
        }
        assert!(Instant::now() < deadline, "hearth did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> Option<(u16, Value)> {
    let mut req = http.request(method, url).timeout(Duration::from_secs(5));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.ok()?;
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(Value::Null);
    Some((status, body))
}

async fn register(http: &reqwest::Client, base: &str, name: &str) -> Option<String> {
    let url = format!("{base}/_matrix/client/v3/register");
    let (_, first) = call(
        http,
        reqwest::Method::POST,
        url.clone(),
        None,
        Some(json!({"username": name, "password": "pw"})),
    )
    .await?;
    let session = first["session"].as_str()?.to_owned();
    let (status, body) = call(
        http,
        reqwest::Method::POST,
        url,
        None,
        Some(json!({"username": name, "password": "pw",
                    "auth": {"type": "m.login.dummy", "session": session}})),
    )
    .await?;
    (status == 200).then(|| body["access_token"].as_str().map(str::to_owned))?
}

#[derive(Default)]
struct Acked {
    events: Vec<String>,
    topic: u64,
    users: Vec<String>,
}

async fn run(engine: &str, budget: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut child = spawn(dir.path(), port, engine);
    wait_up(&http, &base, &mut child).await;
    let token = register(&http, &base, "owner").await.expect("owner");
    let (_, room) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/_matrix/client/v3/createRoom"),
        Some(&token),
        Some(json!({})),
    )
    .await
    .unwrap();
    let room = enc(room["room_id"].as_str().unwrap());
    let acked = Arc::new(Mutex::new(Acked::default()));
    let started = Instant::now();
    let (mut cycles, mut seq) = (0u32, 0u64);
    let (mut checked, mut total_checks) = (0usize, 0usize);
    let mut verified_events = 0;
    while started.elapsed() < budget {
        // Load from three clients until the kill.
        let mut load = Vec::new();
        for kind in 0..3u64 {
            let (http, base, token, room, acked) = (
                http.clone(),
                base.clone(),
                token.clone(),
                room.clone(),
                acked.clone(),
            );
            let first = seq + kind * 100_000;
            load.push(tokio::spawn(async move {
                for n in first.. {
                    match kind {
                        0 => {
                            let url = format!(
                                "{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/c{n}"
                            );
                            let body = json!({"msgtype": "m.text", "body": format!("m{n}")});
                            let Some((200, r)) =
                                call(&http, reqwest::Method::PUT, url, Some(&token), Some(body))
                                    .await
                            else {
                                return;
                            };
                            let id = r["event_id"].as_str().unwrap().to_owned();
                            acked.lock().unwrap().events.push(id);
                        }
                        1 => {
                            let url =
                                format!("{base}/_matrix/client/v3/rooms/{room}/state/m.room.topic");
                            let body = json!({"topic": format!("{n}")});
                            let Some((200, _)) =
                                call(&http, reqwest::Method::PUT, url, Some(&token), Some(body))
                                    .await
                            else {
                                return;
                            };
                            acked.lock().unwrap().topic = n;
                        }
                        _ => {
                            let name = format!("u{n}");
                            if register(&http, &base, &name).await.is_none() {
                                return;
                            }
                            acked.lock().unwrap().users.push(name);
                        }
                    }
                }
            }));
        }
        let wait = rand::rng().random_range(150..600);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for task in load {
            task.await.unwrap();
        }
        cycles += 1;
        seq += 1_000;

        child = spawn(dir.path(), port, engine);
        wait_up(&http, &base, &mut child).await;
        let (events, topic, users) = {
            let a = acked.lock().unwrap();
            (a.events.clone(), a.topic, a.users.clone())
        };
        // The event index: every event acknowledged since the previous check (all of them are
        // checked in the timeline below, every cycle).
        let fresh = &events[verified_events.min(events.len())..];
        verified_events = events.len();
        for id in fresh {
            let url = format!("{base}/_matrix/client/v3/rooms/{room}/event/{}", enc(id));
            let (status, _) = call(&http, reqwest::Method::GET, url, Some(&token), None)
                .await
                .unwrap();
            assert_eq!(
                status, 200,
                "acknowledged event {id} lost after cycle {cycles}"
            );
        }
        // The timeline index agrees with the event index: every acknowledged message is in
        // /messages. The server caps `limit`, so page back with `end` until it runs out (a
        // bounded number of pages: the room holds the acknowledged messages and topics, its
        // creation, and writes that landed without being acknowledged before a kill; a page
        // may also come back short when the server's per-request work budget runs out).
        let mut in_timeline = std::collections::HashSet::new();
        let mut from = String::new();
        let max_pages = 2 * (events.len() + topic as usize) / 50 + 20;
        let mut pages = 0;
        loop {
            let url =
                format!("{base}/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50{from}");
            let (status, page) = call(&http, reqwest::Method::GET, url, Some(&token), None)
                .await
                .unwrap();
            assert_eq!(status, 200);
            let chunk = page["chunk"].as_array().unwrap();
            in_timeline.extend(
                chunk
                    .iter()
                    .filter_map(|e| e["event_id"].as_str().map(str::to_owned)),
            );
            pages += 1;
            match page["end"].as_str() {
                Some(end) if !chunk.is_empty() => from = format!("&from={}", enc(end)),
                _ => break,
            }
            assert!(
                pages < max_pages,
                "/messages did not reach the room's start"
            );
        }
        for id in &events {
            assert!(in_timeline.contains(id), "{id} missing from /messages");
        }
        if topic > 0 {
            let url = format!("{base}/_matrix/client/v3/rooms/{room}/state/m.room.topic");
            let (status, body) = call(&http, reqwest::Method::GET, url, Some(&token), None)
                .await
                .unwrap();
            assert_eq!(status, 200);
            let current: u64 = body["topic"].as_str().unwrap().parse().unwrap();
            assert!(
                current >= topic,
                "topic {topic} was acknowledged, {current} is current"
            );
        }
        for user in &users {
            let url = format!("{base}/_matrix/client/v3/login");
            let body = json!({"type": "m.login.password",
                              "identifier": {"type": "m.id.user", "user": user}, "password": "pw"});
            let (status, _) = call(&http, reqwest::Method::POST, url, None, Some(body))
                .await
                .unwrap();
            assert_eq!(status, 200, "acknowledged registration of {user} lost");
        }
        checked = events.len() + usize::from(topic > 0) + users.len();
        total_checks += checked;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The data directory left by the last SIGKILL opens and every row of every table reads.
    let out = Command::new(BIN)
        .env_clear()
        .env("HEARTH_LOG_LEVEL", "warn")
        .args(["check", "--data", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("all readable"),
        "check --data after a crash: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "crash test ({engine}): {cycles} SIGKILL cycles, {checked} acknowledged writes in the \
         end, {total_checks} checks of acknowledged writes over all restarts"
    );
    assert!(cycles >= 4, "only {cycles} cycles ran");
    assert!(checked >= 20, "only {checked} acknowledged writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_write_redb() {
    run("redb", Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_write_sled() {
    run("sled", Duration::from_secs(15)).await;
}

/// redb's quick repair: every commit records the allocator state, so the start after a
/// SIGKILL loads it instead of walking the whole file (which the engine logs as a repair).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_sigkill_needs_no_full_repair_redb() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let p = port();
    let base = format!("http://127.0.0.1:{p}");
    let mut child = spawn(dir.path(), p, "redb");
    wait_up(&http, &base, &mut child).await;
    for name in ["ann", "ben", "cat"] {
        assert!(register(&http, &base, name).await.is_some(), "registered");
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let log = dir.path().join("restart.log");
    let p = port();
    let base = format!("http://127.0.0.1:{p}");
    let mut child = Command::new(BIN)
        .env_clear()
        .env("HEARTH_DATA_DIR", dir.path())
        .env("HEARTH_LISTENERS", format!("127.0.0.1:{p}"))
        .env("HEARTH_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_up(&http, &base, &mut child).await;
    let login = json!({"type": "m.login.password",
                       "identifier": {"type": "m.id.user", "user": "cat"}, "password": "pw"});
    let (status, _) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/_matrix/client/v3/login"),
        None,
        Some(login),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "the acknowledged registration survived");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("repairing"),
        "the start after SIGKILL walked the database: {text}"
    );
}
