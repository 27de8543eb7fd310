//! Search benchmark: index size, query latency and memory at N messages.
//!
//! 1. An in-process Hearth on a temporary data directory: one user creates `--rooms` rooms
//!    through the client API (real, signed state events), then the server is stopped.
//! 2. N messages are loaded straight into the store through the service layer's index code
//!    path: each message's event rows (PDU JSON, metadata, timeline, event id) and its index
//!    rows (`service::search::index::stage_add`), 1 000 messages per durable commit. Events are
//!    not signed here (signing is not what is measured, and would take hours at 1M on this
//!    machine); they look to the read path exactly like sent messages of the rooms.
//!    Text: 4–30 words drawn from a Zipf distribution (s = 1.07) over a 30 000-word
//!    vocabulary of pronounceable Latin words, with 5 % of messages in Cyrillic, 3 % in
//!    Greek and 4 % in Chinese (runs of common ideographs).
//! 3. Reports index rows' bytes per message (keys + values as stored, counted by scanning
//!    the index tables), the database file per message, then query latency p50/p99 over a
//!    fixed set of queries (rare word, common word, two words, Cyrillic, Chinese bigram) in
//!    `rank` and `recent` order, and the peak RSS while searching (VmHWM, reset after loading).
//!
//! With `--no-index` the same events are loaded without index rows and only the sizes are
//! printed: the difference in database file size is what the index costs on disk.
//!
//! `cargo run --release --example search_bench -- [--messages 100000] [--rooms 20] [--runs 30]
//!  [--no-index]`

use std::{
    path::Path,
    time::{Duration, Instant},
};

use hearth::{
    config::{Config, Listener, RateLimit, Registration, RegistrationMode},
    service::{
        rooms::{EventIds, EventMeta, EventMetaTable, Pdus, Timeline},
        search::{
            index::{self, Docs, Postings, RoomStatsTable, TermCounts},
            query::{Order, Query},
            tokenize::query_terms,
        },
        Services,
    },
    store::{Batch, KeyCodec, Raw, Store, Table, ValueCodec},
};
use ruma::{api::client::filter::RoomEventFilter, UserId};
use serde_json::{json, Value};

struct Args {
    messages: usize,
    rooms: usize,
    runs: usize,
    /// Load the events without their index rows (the baseline for the file size).
    no_index: bool,
}

fn args() -> Args {
    let mut a = Args {
        messages: 100_000,
        rooms: 20,
        runs: 30,
        no_index: false,
    };
    let mut raw: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = raw.iter().position(|a| a == "--no-index") {
        a.no_index = true;
        raw.remove(i);
    }
    for pair in raw.chunks(2) {
        let v = pair.get(1).and_then(|v| v.parse().ok());
        match (pair[0].as_str(), v) {
            ("--messages", Some(v)) if v > 0 => a.messages = v,
            ("--rooms", Some(v)) if v > 0 => a.rooms = v,
            ("--runs", Some(v)) if v > 0 => a.runs = v,
            _ => {
                eprintln!("usage: search_bench [--messages N] [--rooms R] [--runs Q] [--no-index]");
                std::process::exit(2);
            }
        }
    }
    a
}

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn vocabulary(rng: &mut Rng, size: usize) -> Vec<String> {
    const ONSETS: &[&str] = &[
        "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st",
        "tr", "br", "ch", "sh", "th", "pl", "gr",
    ];
    const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ea", "ou", "ai", "y"];
    const CODAS: &[&str] = &["", "", "n", "r", "s", "t", "l", "ck", "nd", "st", "ng"];
    let mut words = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        // Common words are short, rare ones longer, as in real text.
        let syllables = 1 + (out.len() * 4 / size) + rng.below(2);
        let mut w = String::new();
        for _ in 0..syllables {
            w.push_str(ONSETS[rng.below(ONSETS.len())]);
            w.push_str(VOWELS[rng.below(VOWELS.len())]);
            w.push_str(CODAS[rng.below(CODAS.len())]);
        }
        if words.insert(w.clone()) {
            out.push(w);
        }
    }
    out
}

/// Cumulative Zipf weights for ranks 1..=n.
fn zipf(n: usize, s: f64) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf = Vec::with_capacity(n);
    for r in 1..=n {
        acc += 1.0 / (r as f64).powf(s);
        cdf.push(acc);
    }
    cdf.iter().map(|c| c / acc).collect()
}

fn pick(cdf: &[f64], rng: &mut Rng) -> usize {
    let u = rng.unit();
    cdf.partition_point(|c| *c < u).min(cdf.len() - 1)
}

const CYRILLIC: &[&str] = &[
    "привет",
    "мир",
    "сегодня",
    "завтра",
    "встреча",
    "работа",
    "дом",
    "погода",
    "хорошо",
    "спасибо",
    "документ",
    "проект",
    "вопрос",
    "ответ",
    "время",
];
const GREEK: &[&str] = &[
    "καλημέρα",
    "κόσμος",
    "σήμερα",
    "αύριο",
    "συνάντηση",
    "δουλειά",
    "σπίτι",
    "καιρός",
    "ευχαριστώ",
    "ερώτηση",
    "απάντηση",
    "χρόνος",
];
const HAN: &str = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话";

fn message(rng: &mut Rng, vocab: &[String], cdf: &[f64]) -> String {
    let roll = rng.below(100);
    let words = 4 + rng.below(27);
    let han: Vec<char> = HAN.chars().collect();
    match roll {
        0..=4 => (0..words.min(12))
            .map(|_| CYRILLIC[rng.below(CYRILLIC.len())])
            .collect::<Vec<_>>()
            .join(" "),
        5..=7 => (0..words.min(12))
            .map(|_| GREEK[rng.below(GREEK.len())])
            .collect::<Vec<_>>()
            .join(" "),
        8..=11 => {
            let mut s: String = (0..words).map(|_| han[rng.below(han.len())]).collect();
            s.push('。');
            s
        }
        _ => (0..words)
            .map(|_| vocab[pick(cdf, rng)].as_str())
            .collect::<Vec<_>>()
            .join(" "),
    }
}

async fn post(http: &reqwest::Client, url: String, token: Option<&str>, body: Value) -> Value {
    let mut r = http.post(url).json(&body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap().json().await.unwrap()
}

/// Registers `bench` and creates the rooms through the client API; returns the user id.
async fn set_up(config: &Config, rooms: usize) -> String {
    let server = hearth::server::start(config.clone())
        .await
        .expect("server starts");
    let base = server.base_url();
    let http = reqwest::Client::new();
    let url = format!("{base}/_matrix/client/v3/register");
    let first = post(
        &http,
        url.clone(),
        None,
        json!({"username": "bench", "password": "pw"}),
    )
    .await;
    let session = first["session"].as_str().unwrap_or_default();
    let done = post(&http, url, None, json!({"username": "bench", "password": "pw", "auth": {"type": "m.login.dummy", "session": session}})).await;
    let token = done["access_token"]
        .as_str()
        .expect("registered")
        .to_owned();
    for i in 0..rooms {
        post(
            &http,
            format!("{base}/_matrix/client/v3/createRoom"),
            Some(&token),
            json!({"name": format!("room {i}")}),
        )
        .await;
    }
    server.stop().await;
    done["user_id"].as_str().unwrap().to_owned()
}

fn load(services: &Services, user: &str, n: usize, with_index: bool) {
    let store = &services.store;
    let rooms = services
        .rooms
        .memberships_of(UserId::parse(user).unwrap().as_ref())
        .unwrap();
    let records: Vec<_> = rooms
        .iter()
        .map(|(id, _, _)| (id.clone(), services.rooms.room(id).unwrap().unwrap()))
        .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let vocab = vocabulary(&mut rng, 30_000);
    let cdf = zipf(vocab.len(), 1.07);
    // Well above every position the server handed out.
    let first_sid = services.rooms.stream_position() + 1_000_000;
    let started = Instant::now();
    let mut batch = Batch::new();
    let mut overlay = index::Overlay::default();
    for i in 0..n {
        let sid = first_sid + i as u64;
        let (room_id, record) = &records[i % records.len()];
        let body = message(&mut rng, &vocab, &cdf);
        let content = json!({"msgtype": "m.text", "body": body});
        let event_id = format!("$bench{sid}");
        let pdu = json!({
            "type": "m.room.message", "sender": user, "room_id": room_id, "content": content,
            "origin_server_ts": 1_700_000_000_000u64 + i as u64, "depth": 10 + i,
            "prev_events": [], "auth_events": [], "hashes": {"sha256": "x"}, "signatures": {},
        });
        let meta = EventMeta {
            room_sid: record.sid,
            event_id: event_id.clone(),
            kind: "m.room.message".into(),
            state_key: None,
            sender: user.to_owned(),
            state_link: record.last_state,
            depth: 10 + i as u64,
            origin_server_ts: 1_700_000_000_000 + i as u64,
            txn: None,
            redacted_by: None,
            replaces_state: None,
        };
        batch
            .put::<EventIds>(&event_id, &sid)
            .put::<Pdus>(&sid, &Raw(serde_json::to_vec(&pdu).unwrap()))
            .put::<EventMetaTable>(&sid, &meta)
            .put::<Timeline>(&(record.sid, sid), &true);
        if with_index {
            index::stage_add(store, &mut batch, &mut overlay, record.sid, sid, &content).unwrap();
        }
        if (i + 1) % 1000 == 0 || i + 1 == n {
            store.commit_blocking(std::mem::take(&mut batch)).unwrap();
            overlay = index::Overlay::default();
        }
        if (i + 1) % 100_000 == 0 {
            eprintln!(
                "  {} messages, {:.0}s",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "loaded {n} messages in {secs:.1}s ({:.0}/s, events and index, 1000 per commit)",
        n as f64 / secs
    );
}

/// Rows and their bytes (key + value as stored) of table `T`, paged.
fn table_bytes<T: Table>(store: &Store) -> (u64, u64) {
    let (mut rows, mut bytes) = (0u64, 0u64);
    let mut from: Option<T::Key> = None;
    loop {
        let page = store.range::<T>(from.as_ref(), false, 50_000).unwrap();
        let skip = usize::from(from.is_some());
        if page.len() <= skip {
            break;
        }
        for (k, v) in &page[skip..] {
            rows += 1;
            bytes += (k.encode().len() + v.encode_value().len()) as u64;
        }
        from = page.into_iter().last().map(|(k, _)| k);
    }
    (rows, bytes)
}

fn vm_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_owned(),
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
    let user = set_up(&config, args.rooms).await;
    let db_before = dir_bytes(&dir.path().join("db"));
    let services = Services::open(config.clone()).expect("services open");
    let loader = services.clone();
    let (u, n, with_index) = (user.clone(), args.messages, !args.no_index);
    tokio::task::spawn_blocking(move || load(&loader, &u, n, with_index))
        .await
        .unwrap();
    let store = &services.store;
    let mut rows = 0;
    let mut bytes = 0;
    for (name, (r, b)) in [
        ("search_postings", table_bytes::<Postings>(store)),
        ("search_docs", table_bytes::<Docs>(store)),
        ("search_terms", table_bytes::<TermCounts>(store)),
        ("search_rooms", table_bytes::<RoomStatsTable>(store)),
    ] {
        println!("  {name}: {r} rows, {b} bytes");
        rows += r;
        bytes += b;
    }
    let n = args.messages as f64;
    println!(
        "index rows: {rows} ({:.1} per message), {:.1} bytes of keys+values per message",
        rows as f64 / n,
        bytes as f64 / n
    );
    let db_after = dir_bytes(&dir.path().join("db"));
    println!(
        "database file: {:.1} MiB, {:.0} bytes per message (events and index together)",
        db_after as f64 / 1048576.0,
        (db_after - db_before) as f64 / n
    );
    println!("peak RSS while loading: {} KiB", vm_kb("VmHWM"));
    if args.no_index {
        return;
    }
    // Reset the peak, so what follows is the search alone (on top of what loading left).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    println!("RSS before searching: {} KiB", vm_kb("VmRSS"));

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let vocab = vocabulary(&mut rng, 30_000);
    let queries: Vec<(&str, String)> = vec![
        ("rare word (rank 20000)", vocab[19_999].clone()),
        ("medium word (rank 300)", vocab[299].clone()),
        ("common word (rank 1)", vocab[0].clone()),
        ("common word (rank 3)", vocab[2].clone()),
        (
            "two words (ranks 10, 200)",
            format!("{} {}", vocab[9], vocab[199]),
        ),
        (
            "two common words (ranks 1, 2)",
            format!("{} {}", vocab[0], vocab[1]),
        ),
        ("Cyrillic word", "Встреча".to_owned()),
        ("Chinese two characters", "的一".to_owned()),
        ("no match", "zzzzqqqq".to_owned()),
    ];
    let filter = RoomEventFilter::default();
    let user_id = UserId::parse(user.as_str()).unwrap();
    println!(
        "\n{:<32} {:>7} {:>10} {:>10} {:>10} {:>10}",
        "query", "count", "rank p50", "rank p99", "recent p50", "recent p99"
    );
    let mut all = Vec::new();
    for (label, text) in &queries {
        let (terms, _) = query_terms(text);
        let mut line = format!("{label:<32}");
        let mut count = 0;
        let mut cells = String::new();
        for order in [Order::Rank, Order::Recent] {
            let mut times = Vec::new();
            for _ in 0..args.runs {
                let query = Query {
                    user_id: &user_id,
                    terms: terms.clone(),
                    fields: index::ALL_FIELDS,
                    filter: &filter,
                    order,
                    after: None,
                    group: None,
                    limit: 10,
                    ignored: Default::default(),
                    budget: hearth::service::search::query::CANDIDATE_BUDGET,
                };
                let t = Instant::now();
                let page = services.search.search(&query).unwrap();
                times.push(t.elapsed());
                count = page.count;
            }
            times.sort();
            all.extend(times.iter().copied());
            cells.push_str(&format!(
                " {:>8.2}ms {:>8.2}ms",
                percentile(&times, 0.5).as_secs_f64() * 1e3,
                percentile(&times, 0.99).as_secs_f64() * 1e3
            ));
        }
        line.push_str(&format!(" {count:>7}{cells}"));
        println!("{line}");
    }
    all.sort();
    println!(
        "all queries: p50 {:.2} ms, p99 {:.2} ms over {} runs",
        percentile(&all, 0.5).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
        all.len()
    );
    println!("peak RSS while searching: {} KiB", vm_kb("VmHWM"));
}
