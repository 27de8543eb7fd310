//! Store benchmark: both engines, same data, same machine.
//!
//! `cargo run --release --example store_bench -- [--records N] [--cache-mb M]`
//!
//! Each engine runs in its own child process (this program re-executed with `--child ENGINE`),
//! so peak RSS is that engine's alone. Per engine, in a temporary directory:
//! - durable writes/s with 64 concurrent committers (group commit), one record per commit;
//! - durable writes/s with a single committer (one fsync per commit), time-boxed;
//! - time to reopen, then random point reads/s and full range-scan records/s (cold engine cache);
//! - peak RSS (`VmHWM`), bytes on disk per record, and bytes written to storage per record in
//!   each write phase (`/proc/self/io`: write amplification, which is what wears out SD cards).
//!
//! Records are Hearth-shaped: a `(room sid, position)` key (16 bytes) and a 300-byte value.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hearth::store::{Batch, EngineKind, Raw, Store};
use hearth::table;

table!(Bench: "bench", (u64, u64) => Raw);

const COMMITTERS: u64 = 64;
const VALUE_BYTES: usize = 300;
const ROOMS: u64 = 100;
const SINGLE_BOX: Duration = Duration::from_secs(5);
const SCAN_PAGE: usize = 1000;
const READS: u64 = 20_000;

struct Args {
    records: u64,
    cache_mb: u64,
    child: Option<EngineKind>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        records: 200_000,
        cache_mb: 16,
        child: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--records" => {
                args.records = value()?.parse().map_err(|e| format!("--records: {e}"))?
            }
            "--cache-mb" => {
                args.cache_mb = value()?.parse().map_err(|e| format!("--cache-mb: {e}"))?
            }
            "--child" => args.child = Some(value()?.parse()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("store_bench: {e}");
            std::process::exit(2);
        }
    };
    match args.child {
        Some(kind) => {
            if let Err(e) = child(kind, &args) {
                eprintln!("store_bench {kind}: {e}");
                std::process::exit(1);
            }
        }
        None => parent(&args),
    }
}

fn parent(args: &Args) {
    let exe = std::env::current_exe().expect("own path");
    println!(
        "{} records of 16-byte keys and {VALUE_BYTES}-byte values, {} MiB cache",
        args.records, args.cache_mb
    );
    println!(
        "| engine | writes/s, {COMMITTERS} committers | writes/s, 1 committer | reads/s | scan records/s | reopen ms | peak RSS MiB | disk bytes/record | bytes written/record, 64 / 1 committers |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for kind in EngineKind::ALL {
        let out = Command::new(&exe)
            .args(["--child", kind.name()])
            .args(["--records", &args.records.to_string()])
            .args(["--cache-mb", &args.cache_mb.to_string()])
            .output()
            .expect("run child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        match stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) {
            Some(row) if out.status.success() => println!("| {kind} | {row} |"),
            _ => {
                eprintln!(
                    "{kind} failed ({}):\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

fn value(room: u64, pos: u64) -> Raw {
    let mut v = Vec::with_capacity(VALUE_BYTES);
    let mut x = room.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ pos;
    while v.len() < VALUE_BYTES {
        // xorshift: incompressible-looking bytes, like signed JSON is to a page cache.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(VALUE_BYTES);
    Raw(v)
}

fn key(n: u64) -> (u64, u64) {
    (n % ROOMS, n / ROOMS)
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Bytes this process sent to the storage layer (write amplification, SD-card wear).
fn written_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn disk_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| disk_bytes(&e.path())).sum())
        .unwrap_or(0)
}

fn child(kind: EngineKind, args: &Args) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = tmp.path().join("db");
    let cache = args.cache_mb << 20;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let records = args.records;

    let ((concurrent, concurrent_io), (single, single_io), written) = rt.block_on(async {
        let store = Store::open(&dir, kind, cache).map_err(|e| e.to_string())?;

        // Concurrent committers, one record per commit: what a busy server does.
        let io_start = written_bytes();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..COMMITTERS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = c;
                while n < records {
                    let (room, pos) = key(n);
                    let mut b = Batch::new();
                    b.put::<Bench>(&(room, pos), &value(room, pos));
                    store.commit(b).await.map_err(|e| e.to_string())?;
                    n += COMMITTERS;
                }
                Ok::<_, String>(())
            }));
        }
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
        let concurrent = records as f64 / start.elapsed().as_secs_f64();
        let concurrent_io = (written_bytes() - io_start) as f64 / records as f64;
        let stats = store.commit_stats();
        eprintln!(
            "{kind}: {} commits in {} durable transactions",
            stats.batches, stats.transactions
        );

        // One committer: every commit waits for its own fsync.
        let io_start = written_bytes();
        let start = Instant::now();
        let mut n = records;
        while start.elapsed() < SINGLE_BOX && n < records * 2 {
            let (room, pos) = key(n);
            let mut b = Batch::new();
            b.put::<Bench>(&(room, pos), &value(room, pos));
            store.commit(b).await.map_err(|e| e.to_string())?;
            n += 1;
        }
        let single = (n - records) as f64 / start.elapsed().as_secs_f64();
        let single_io = (written_bytes() - io_start) as f64 / (n - records).max(1) as f64;
        Ok::<_, String>(((concurrent, concurrent_io), (single, single_io), n))
    })?;

    // Reopen so reads start from a cold engine cache (the OS page cache stays warm).
    let start = Instant::now();
    let store = Store::open(&dir, kind, cache).map_err(|e| e.to_string())?;
    let reopen_ms = start.elapsed().as_secs_f64() * 1000.0;
    let start = Instant::now();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..READS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = key(x % records);
        if store.get::<Bench>(&k).map_err(|e| e.to_string())?.is_none() {
            return Err(format!("record {k:?} missing"));
        }
    }
    let reads = READS as f64 / start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut scanned = 0u64;
    let mut from = None;
    loop {
        let page = store
            .range::<Bench>(from.as_ref(), false, SCAN_PAGE + 1)
            .map_err(|e| e.to_string())?;
        // The first row of each next page is the last row of this one.
        let skip = usize::from(from.is_some());
        scanned += page.len().saturating_sub(skip) as u64;
        if page.len() <= SCAN_PAGE {
            break;
        }
        from = page.last().map(|(k, _)| *k);
    }
    let scan = scanned as f64 / start.elapsed().as_secs_f64();
    if scanned != written {
        return Err(format!("scanned {scanned} records, wrote {written}"));
    }
    drop(store);

    let rss = peak_rss_kib();
    let disk = disk_bytes(&dir);
    println!(
        "RESULT {concurrent:.0} | {single:.0} | {reads:.0} | {scan:.0} | {reopen_ms:.1} | {:.1} | {:.0} | \
         {concurrent_io:.0} / {single_io:.0}",
        rss as f64 / 1024.0,
        disk as f64 / written as f64,
    );
    Ok(())
}
