//! Federation benchmark II: rooms shared between Hearth servers (issue 14's figures).
//!
//! Every server is a child process of the release `hearth` binary (so RSS and CPU read from
//! `/proc/<pid>` are that server's own), named `127.0.0.1:<port>`, HTTPS on that port with a
//! certificate of one test CA made here, which every server trusts; loopback allowed.
//!
//! Phases (`--phases`, default all three):
//! - `join`: on A, custom state events (`m.bench.state`), then `--members` local users
//!   (registered and joined through the client API, `--concurrency` at a time), so that the
//!   room holds `--state` state events. Then a user on B joins it over federation (`/join?server_name=A`):
//!   wall time, B's peak RSS during the join (VmHWM, reset just before), the CPU each server
//!   spent, the bytes B read (≈ the `send_join` answer), then the time until the user on B
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
//! `--resident synapse`: the big room of the `join` phase lives on a real Synapse instead of
//! A (`--synapse-python`, see `synapse.rs`); its users register and fill the room through
//! Synapse's client API, and Hearth servers B join it over federation. Only the `join` phase
//! then (the others need a Hearth A). The room is filled with its custom state events first,
//! then its members (see `fill_room`); `--synapse-keep DIR` keeps Synapse's data directory
//! and the filled room for later runs (`synapse.rs`).
//!
//! `--perf DIR` records `perf record --call-graph dwarf` of B during the join and of A during the backlog.
//!
//! `cargo run --release --example fed_rooms_bench -- --help`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

mod client;
mod procs;
mod synapse;

use client::{bounded, enc, User};
use procs::{certificates, cpu_s, rchar, rss_sampler, signal, status_kb, Env, Perf, Server};

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
  --resident KIND      hearth or synapse: the server A holding the big room (default hearth;
                       synapse runs the join phase only)
  --synapse-python P   a Python with matrix-synapse (default: target/synapse-venv/bin/python,
                       as .ci/run installs it)
  --synapse-keep DIR   Synapse's data directory, kept: the first run fills the room there, a
                       later one with the same --members/--state/--room-version reuses it
                       (best under /dev/shm: Synapse's SQLite syncs every commit)
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
    resident: String,
    synapse_python: PathBuf,
    synapse_keep: Option<PathBuf>,
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
        resident: "hearth".into(),
        synapse_python: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target/synapse-venv/bin/python"),
        synapse_keep: None,
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
            "--resident" => args.resident = v.clone(),
            "--synapse-python" => args.synapse_python = PathBuf::from(v),
            "--synapse-keep" => args.synapse_keep = Some(PathBuf::from(v)),
            other => panic!("unknown argument {other} (see --help)"),
        }
    }
    args
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

/// Fills the big room on A (or finds it filled in `--synapse-keep`), then B's user joins it.
async fn join_phase(env: &Env, table: &mut Table) -> Shared {
    let http = &env.http;
    let args = &env.args;
    let a = match args.resident.as_str() {
        "synapse" => synapse::spawn(env, &args.synapse_python).await,
        "hearth" => env.spawn("a", 32).await,
        other => panic!("--resident {other}: hearth or synapse"),
    };
    table.row("A (the room's resident server)", args.resident.clone());
    let (alice, room) = match kept_room(env, &a) {
        Some(kept) => {
            table.row(
                "A: the filled room",
                format!(
                    "reused from {}",
                    args.synapse_keep.as_ref().unwrap().display()
                ),
            );
            kept
        }
        None => fill_room(env, &a, table).await,
    };
    println!("room {room} on A ({}, {})", a.name, args.resident);
    // What the room holds, as A says (not what was asked for).
    let state_now = alice
        .get(http, &format!("rooms/{}/state", enc(&room)))
        .await;
    let state = state_now.as_array().map(Vec::as_slice).unwrap_or_default();
    let joined_now = state
        .iter()
        .filter(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "join")
        .count();
    table.row(
        "big room",
        format!("{} state events, {joined_now} joined members", state.len()),
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

/// The room a kept Synapse directory holds, filled by an earlier run with the same sizes.
fn kept_room(env: &Env, a: &Server) -> Option<(User, String)> {
    let dir = env.args.synapse_keep.as_ref()?;
    let room = synapse::read_record(dir)["room"].take();
    if room.is_null() {
        return None;
    }
    let fits = room["members"] == json!(env.args.members)
        && room["state"] == json!(env.args.state)
        && room["room_version"] == json!(env.args.room_version);
    assert!(
        fits,
        "{} holds a room of other sizes ({room}): use another directory",
        dir.display()
    );
    let alice = User {
        id: room["alice"].as_str()?.to_owned(),
        token: room["token"].as_str()?.to_owned(),
        base: a.base.clone(),
    };
    Some((alice, room["id"].as_str()?.to_owned()))
}

/// Creates the big room on A and fills it: the custom state events first, then the members.
/// That order matters on Synapse: it evaluates push rules for every local member on every
/// event, so a state event sent into a room of 1,000 members costs far more than one sent
/// before they joined (each join pays for the members before it: half as much on average).
/// The room's state is the same either way.
///
/// On Synapse the room's events are also sent one at a time (registrations stay
/// concurrent): Synapse creates up to five events of a room at once, each on the room's
/// latest events, so concurrent sends fork its DAG and every fork costs a state resolution
/// over the room's whole state (measured: 60 ms of CPU per state event at 700 state events,
/// 150 ms at 1,750). Hearth orders a room's events itself.
async fn fill_room(env: &Env, a: &Server, table: &mut Table) -> (User, String) {
    let http = &env.http;
    let args = &env.args;
    let alice = User::register(http, &a.base, "alice").await;
    let room = alice.create_room(http, &args.room_version).await;
    let members = args.members.saturating_sub(1);
    // The preset's state: create, the creator's join, power levels, join rules, history
    // visibility, name: 6 (the `big room` row counts what the room holds).
    let custom = args.state.saturating_sub(members + 6);
    let in_room = if args.resident == "synapse" {
        1
    } else {
        args.concurrency
    };
    let started = Instant::now();
    bounded(custom, in_room, |i| {
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
        "A: custom state events (client API, before the members)",
        format!(
            "{custom} in {:.1} s ({:.2} ms each)",
            state_took.as_secs_f64(),
            state_took.as_secs_f64() * 1000.0 / custom.max(1) as f64
        ),
    );

    let started = Instant::now();
    let joined = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let joins = Arc::new(tokio::sync::Semaphore::new(in_room));
    bounded(members, args.concurrency, |i| {
        let (http, base, room, joined, joins) = (
            http.clone(),
            a.base.clone(),
            room.clone(),
            joined.clone(),
            joins.clone(),
        );
        async move {
            let user = User::register(&http, &base, &format!("member{i}")).await;
            let permit = joins.acquire().await.unwrap();
            user.join(&http, &room, None).await;
            drop(permit);
            let n = joined.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n % 200 == 0 {
                println!(
                    "  {n} members joined ({:.0} s)",
                    started.elapsed().as_secs_f64()
                );
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
    if let Some(dir) = &args.synapse_keep {
        let mut record = synapse::read_record(dir);
        record["room"] = json!({
            "id": room, "alice": alice.id, "token": alice.token, "members": args.members,
            "state": args.state, "room_version": args.room_version,
        });
        synapse::write_record(dir, &record);
    }
    (alice, room)
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
    let (a_cpu, b_cpu, b_read) = (cpu_s(a.pid()), cpu_s(b.pid()), rchar(b.pid()));
    let sampler = rss_sampler(b.pid());
    let perf = Perf::start(env, b.pid(), &format!("{label}-join"));
    let started = Instant::now();
    bob.join(http, room, Some(&a.name)).await;
    let join_took = started.elapsed();
    drop(perf);
    let sampled_peak = sampler.stop().await;
    let (a_cpu, b_cpu) = (cpu_s(a.pid()) - a_cpu, cpu_s(b.pid()) - b_cpu);
    let b_read = rchar(b.pid()) - b_read;
    let b_peak = status_kb(b.pid(), "VmHWM:").max(sampled_peak);
    table.row(
        format!("B: {mode} join of the big room"),
        format!("{:.2} s wall", join_took.as_secs_f64()),
    );
    table.row(
        "  CPU during the join",
        format!("A {a_cpu:.2} s, B {b_cpu:.2} s"),
    );
    // B's reads, not A's writes: Synapse sends with send(2), which `wchar` does not count.
    table.row(
        "  B read (≈ make_join + send_join answers, TLS)",
        format!("{:.1} MiB", b_read as f64 / 1048576.0),
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
            if n > env.args.members {
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
    if env.args.synapse_keep.is_some() {
        // The kept room keeps its 1,000 joined members: B's user leaves (its server is gone
        // after this run). Best effort: the figures are taken already.
        let url = format!("{}/_matrix/client/v3/rooms/{}/leave", b.base, enc(room));
        let left = http
            .post(url)
            .bearer_auth(&bob.token)
            .json(&json!({}))
            .send()
            .await;
        if !left.as_ref().is_ok_and(|r| r.status().is_success()) {
            eprintln!("{} could not leave the kept room: {left:?}", bob.id);
        }
    }
    b
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
    let synapse_tmp = (args.resident == "synapse" && args.synapse_keep.is_none())
        .then(|| tempfile::tempdir_in("/dev/shm").ok())
        .flatten();
    let env = Env {
        tmp,
        synapse_tmp,
        certs,
        args,
        http: reqwest::Client::new(),
    };
    let mut table = Table(Vec::new());
    let on_synapse = env.args.resident == "synapse";
    let phase =
        |name: &str| env.args.phases.iter().any(|p| p == name) && (!on_synapse || name == "join");
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
    if on_synapse {
        println!(
            "\nSynapse's last log lines (warnings and errors):\n{}",
            synapse::said(&env)
        );
    }
    drop(shared);
}
