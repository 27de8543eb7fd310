//! kill -9 under load: every acknowledged write survives, and a batch is never half applied.
//!
//! The parent re-executes this test binary, running only `crash_child`, which writes through
//! the store from several tasks and prints `ACK <seq>` after each acknowledged commit. The
//! parent SIGKILLs it at a random moment, reopens the store and checks that every acknowledged
//! sequence number is there and that the secondary index matches the primary table exactly.

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hearth::store::{Batch, EngineKind, Raw, Store};
use hearth::table;

table!(Primary: "crash_primary", u64 => Raw);
table!(Index: "crash_index", (String, u64) => bool);

const DIR_ENV: &str = "HEARTH_CRASH_CHILD_DIR";
const ENGINE_ENV: &str = "HEARTH_CRASH_CHILD_ENGINE";
const CHILD_TEST: &str = "store::crash::crash_child";
const CYCLES: usize = 100;
/// Fails the test instead of hanging if something is very slow.
const BUDGET: Duration = Duration::from_secs(150);
const CACHE: u64 = 4 << 20;
const WRITERS: u64 = 4;

fn payload(seq: u64) -> Vec<u8> {
    format!("record {seq} {}", "x".repeat((seq % 200) as usize)).into_bytes()
}

fn tag(seq: u64) -> String {
    format!("tag{}", seq % 7)
}

/// The child: writes until killed (bounded in records and time in case the parent is gone).
#[test]
#[ignore = "child process of the crash tests"]
fn crash_child() {
    let (Ok(dir), Ok(engine)) = (std::env::var(DIR_ENV), std::env::var(ENGINE_ENV)) else {
        return;
    };
    let kind: EngineKind = engine.parse().expect("engine name");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let store = Store::open(Path::new(&dir), kind, CACHE).expect("open");
        // The parent's kill window starts now, not at spawn: opening the store takes longer
        // on a loaded machine, and a kill before any write tests nothing.
        println!("READY");
        let start = store
            .range::<Primary>(None, true, 1)
            .expect("last record")
            .first()
            .map_or(0, |(seq, _)| seq + 1);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..100_000u64 {
                    if Instant::now() > deadline {
                        break;
                    }
                    let seq = start + i * WRITERS + w;
                    let mut b = Batch::new();
                    b.expect_absent::<Primary>(&seq)
                        .put::<Primary>(&seq, &Raw(payload(seq)))
                        .put::<Index>(&(tag(seq), seq), &true);
                    store.commit(b).await.expect("commit");
                    println!("ACK {seq}");
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer task");
        }
    });
}

/// Reads the child's acknowledgements; a line cut off by the kill is not one. `ready` hears
/// when the child has opened its store.
fn read_acks(out: impl Read, ready: std::sync::mpsc::Sender<()>) -> Vec<u64> {
    let mut reader = BufReader::new(out);
    let mut acks = Vec::new();
    let mut line = String::new();
    while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
        // The test harness may print the test's name on the same line first.
        if line.ends_with("READY\n") {
            let _ = ready.send(());
        } else if let Some(seq) = line.strip_suffix('\n').and_then(|l| l.strip_prefix("ACK ")) {
            acks.push(seq.parse().expect("ACK line"));
        }
        line.clear();
    }
    acks
}

/// Reopens the store and checks it against everything acknowledged so far.
fn verify(dir: &Path, kind: EngineKind, acked: &BTreeSet<u64>) -> usize {
    let store = Store::open(dir, kind, CACHE).expect("reopen after kill");
    let primary = store
        .range::<Primary>(None, false, usize::MAX)
        .expect("scan primary");
    let index = store
        .range::<Index>(None, false, usize::MAX)
        .expect("scan index");
    let in_primary: HashSet<u64> = primary.iter().map(|(seq, _)| *seq).collect();
    for (seq, value) in &primary {
        assert_eq!(value.0, payload(*seq), "{kind}: record {seq} intact");
    }
    for seq in acked {
        assert!(
            in_primary.contains(seq),
            "{kind}: acknowledged record {seq} lost"
        );
    }
    let mut in_index = HashSet::new();
    for ((t, seq), v) in &index {
        assert!(
            *v && *t == tag(*seq),
            "{kind}: index entry {t}/{seq} intact"
        );
        assert!(in_index.insert(*seq), "{kind}: index entry {seq} twice");
    }
    assert_eq!(
        in_index, in_primary,
        "{kind}: secondary index agrees with the primary table"
    );
    primary.len()
}

fn crash_cycles(kind: EngineKind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary path");
    let started = Instant::now();
    let mut acked = BTreeSet::new();
    let mut records = 0;
    for cycle in 0..CYCLES {
        assert!(
            started.elapsed() < BUDGET,
            "{kind}: crash test over budget at cycle {cycle}"
        );
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                CHILD_TEST,
                "--nocapture",
                "--include-ignored",
                "--test-threads=1",
            ])
            .env(DIR_ENV, dir.path())
            .env(ENGINE_ENV, kind.name())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let mut stderr = child.stderr.take().expect("child stderr");
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || read_acks(stdout, ready_tx));
        let errors = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });

        // Bounded: a child that never opens its store is killed all the same (and then
        // fails the count below).
        let _ = ready.recv_timeout(Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(rand::random_range(5..=150)));
        // SIGKILL: no destructor, no flush, no unwinding.
        let _ = child.kill();
        let status = child.wait().expect("wait for child");
        let acks = reader.join().expect("ack reader");
        let stderr = errors.join().expect("stderr reader");
        // Finishing on its own would mean the child failed (or ran out its bounds).
        assert!(
            status.signal() == Some(9),
            "{kind}: child ended with {status} instead of being killed:\n{stderr}"
        );
        acked.extend(acks);
        records = verify(dir.path(), kind, &acked);
    }
    eprintln!(
        "{kind}: {CYCLES} kill -9 cycles, {} acknowledged writes, {records} records, {:.1} s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        acked.len() >= CYCLES,
        "{kind}: the children wrote too little to test anything"
    );
}

#[test]
fn kill_9_redb() {
    crash_cycles(EngineKind::Redb);
}

#[test]
fn kill_9_sled() {
    crash_cycles(EngineKind::Sled);
}
