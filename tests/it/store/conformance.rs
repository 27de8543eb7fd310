//! Every behaviour of the store that layers above rely on, checked on each engine.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use hearth::store::{
    Batch, CommitError, EngineKind, KeyCodec, Raw, Store, StoreError, SCHEMA_VERSION,
};
use hearth::table;

table!(Kv: "t_kv", String => String);
table!(Nums: "t_nums", u64 => u64);
table!(Timeline: "t_timeline", (String, u64) => Raw);
table!(Triples: "t_triples", (u64, String, u64) => bool);
table!(Counts: "t_counts", String => u64);
// Two views of one table, to store bytes the typed view cannot decode.
table!(CorruptRaw: "t_corrupt", String => Raw);
table!(CorruptTyped: "t_corrupt", String => u64);
table!(CorruptKeyTyped: "t_corrupt", u64 => Raw);
// The store's own meta table, written behind its back to fake other schema versions.
table!(MetaRaw: "meta", String => Raw);

const CACHE: u64 = 4 << 20;

fn open(dir: &Path, kind: EngineKind) -> Store {
    Store::open(dir, kind, CACHE).expect("open store")
}

fn open_err(dir: &Path, kind: EngineKind) -> StoreError {
    match Store::open(dir, kind, CACHE) {
        Ok(_) => panic!("{kind}: the store opened"),
        Err(e) => e,
    }
}

async fn put_kv(store: &Store, k: &str, v: &str) {
    let mut b = Batch::new();
    b.put::<Kv>(&k.to_owned(), &v.to_owned());
    store.commit(b).await.expect("commit");
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod redb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(hearth::store::EngineKind::Redb).await
                }
            )*
        }
        mod sled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(hearth::store::EngineKind::Sled).await
                }
            )*
        }
    };
}

conformance!(
    get_put_delete,
    commit_blocking_path,
    string_key_order,
    u64_key_order,
    tuple_prefix_and_range_scans,
    atomic_multi_table_batch,
    preconditions,
    group_with_conflicts,
    concurrent_commits_share_flushes,
    intern_concurrency,
    intern_in_batch,
    schema_version_written_and_newer_refused,
    committed_write_survives_reopen,
    corrupt_data_is_an_error,
    other_engine_directory_refused,
    second_open_refused,
);

async fn get_put_delete(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), kind);
    assert_eq!(store.engine_kind(), kind);

    // A table never written reads as empty, without error.
    assert_eq!(store.get::<Kv>(&"a".into()).unwrap(), None);
    assert!(store.range::<Kv>(None, false, 10).unwrap().is_empty());
    assert!(store.scan_prefix::<Kv, _>(&"a", 10).unwrap().is_empty());

    put_kv(&store, "a", "1").await;
    assert_eq!(store.get::<Kv>(&"a".into()).unwrap().as_deref(), Some("1"));
    put_kv(&store, "a", "2").await;
    assert_eq!(store.get::<Kv>(&"a".into()).unwrap().as_deref(), Some("2"));

    let mut b = Batch::new();
    b.delete::<Kv>(&"a".into());
    assert!(!b.is_empty());
    store.commit(b).await.unwrap();
    assert_eq!(store.get::<Kv>(&"a".into()).unwrap(), None);

    // Deleting a missing key and committing an empty batch are no-ops, not errors.
    let mut b = Batch::new();
    b.delete::<Kv>(&"missing".into());
    store.commit(b).await.unwrap();
    store.commit(Batch::new()).await.unwrap();

    // Empty strings and values are ordinary keys and values.
    put_kv(&store, "", "").await;
    assert_eq!(store.get::<Kv>(&"".into()).unwrap().as_deref(), Some(""));
}

async fn commit_blocking_path(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), kind);
    let s = store.clone();
    tokio::task::spawn_blocking(move || {
        let mut b = Batch::new();
        b.put::<Nums>(&7, &49);
        s.commit_blocking(b).unwrap();
        let mut b = Batch::new();
        b.expect_absent::<Nums>(&7).put::<Nums>(&7, &0);
        assert!(matches!(s.commit_blocking(b), Err(CommitError::Conflict)));
    })
    .await
    .unwrap();
    assert_eq!(store.get::<Nums>(&7).unwrap(), Some(49));
}

async fn string_key_order(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), kind);
    let keys = [
        "b",
        "a",
        "ab",
        "abc",
        "",
        "a\u{0}",
        "é",
        "z",
        "ä",
        "\u{10FFFF}",
        "aa",
    ];
    let mut b = Batch::new();
    for k in keys {
        b.put::<Kv>(&k.to_owned(), &k.to_owned());
    }
    store.commit(b).await.unwrap();

    let mut expected: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    expected.sort();
    let got: Vec<String> = store
        .range::<Kv>(None, false, 100)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(got, expected, "strings scan in their natural order");

    let mut rev = expected.clone();
    rev.reverse();
    let got: Vec<String> = store
        .range::<Kv>(None, true, 100)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(got, rev);

    // A whole-string prefix matches that string only, never a longer one.
    let got = store.scan_prefix::<Kv, _>(&"a", 100).unwrap();
    assert_eq!(got, vec![("a".to_owned(), "a".to_owned())]);
}

async fn u64_key_order(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), kind);
    let mut nums = vec![
        0,
        1,
        255,
        256,
        65_535,
        1 << 32,
        u64::MAX,
        u64::MAX - 1,
        0xFF00,
        0xFFFF_FFFF,
    ];
    let mut b = Batch::new();
    for n in &nums {
        b.put::<Nums>(n, &n.wrapping_mul(3));
    }
    store.commit(b).await.unwrap();
    nums.sort();

    let rows = store.range::<Nums>(None, false, 100).unwrap();
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), nums);
    assert!(rows.iter().all(|(k, v)| *v == k.wrapping_mul(3)));

    // Inclusive start, both directions, with limits.
    let rows = store.range::<Nums>(Some(&256), false, 3).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![256, 0xFF00, 65_535]
    );
    let rows = store.range::<Nums>(Some(&256), true, 3).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![256, 255, 1]
    );
    let rows = store.range::<Nums>(Some(&300), true, 2).unwrap();
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![256, 255]);
    let rows = store.range::<Nums>(None, true, 2).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![u64::MAX, u64::MAX - 1]
    );
    assert!(store.range::<Nums>(None, false, 0).unwrap().is_empty());
    assert!(
        store
            .range::<Nums>(Some(&u64::MAX), false, 10)
            .unwrap()
            .len()
            == 1
    );
}

async fn tuple_prefix_and_range_scans(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), kind);
    let rooms = ["!a", "!ab", "!b"];
    let mut b = Batch::new();
    for room in rooms {
        for pos in [1u64, 2, 3, 255, 256, 1000] {
            b.put::<Timeline>(
                &(room.to_owned(), pos),
                &Raw(format!("{room}/{pos}").into_bytes()),
            );
        }
    }
    for (i, s) in ["x", "y", "xx"].iter().enumerate() {
        for last in [u64::MAX, 0, 9] {
            b.put::<Triples>(&(0xFF, s.to_string(), last), &(i % 2 == 0));
            b.put::<Triples>(&(0x100, s.to_string(), last), &true);
        }
    }
    store.commit(b).await.unwrap();

    let pos = |rows: Vec<((String, u64), Raw)>| -> Vec<u64> {
        rows.into_iter().map(|((_, p), _)| p).collect()
    };

    // Prefix on the first tuple part: exact room only (not "!ab" for "!a"), in order.
    let rows = store.scan_prefix::<Timeline, _>(&"!a", 100).unwrap();
    assert!(rows
        .iter()
        .all(|((r, _), v)| r == "!a" && v.0.starts_with(b"!a/")));
    assert_eq!(pos(rows), vec![1, 2, 3, 255, 256, 1000]);
    assert_eq!(
        pos(store.scan_prefix::<Timeline, _>(&"!a", 2).unwrap()),
        vec![1, 2]
    );
    assert!(store
        .scan_prefix::<Timeline, _>(&"!c", 10)
        .unwrap()
        .is_empty());
    // A full-key prefix finds that key.
    assert_eq!(
        pos(store
            .scan_prefix::<Timeline, _>(&("!b", 256u64), 10)
            .unwrap()),
        vec![256]
    );

    // Paging within a prefix, both ways, from inside, before and after it.
    let page = |from: Option<u64>, reverse, limit| {
        let from = from.map(|p| ("!ab".to_owned(), p));
        pos(store
            .range_in_prefix::<Timeline, _>(&"!ab", from.as_ref(), reverse, limit)
            .unwrap())
    };
    assert_eq!(page(None, true, 2), vec![1000, 256]);
    assert_eq!(page(Some(255), true, 10), vec![255, 3, 2, 1]);
    assert_eq!(page(Some(254), true, 2), vec![3, 2]);
    assert_eq!(page(Some(3), false, 2), vec![3, 255]);
    assert_eq!(page(Some(1001), false, 2), Vec::<u64>::new());
    assert_eq!(page(Some(0), false, 1), vec![1]);
    assert_eq!(page(None, false, 0), Vec::<u64>::new());
    // `from` outside the prefix.
    let before = ("!a".to_owned(), 5);
    let after = ("!b".to_owned(), 0);
    let scan = |from: &(String, u64), reverse| {
        pos(store
            .range_in_prefix::<Timeline, _>(&"!ab", Some(from), reverse, 100)
            .unwrap())
    };
    assert_eq!(scan(&before, false), vec![1, 2, 3, 255, 256, 1000]);
    assert!(scan(&before, true).is_empty());
    assert!(scan(&after, false).is_empty());
    assert_eq!(scan(&after, true), vec![1000, 256, 255, 3, 2, 1]);

    // Whole-table ranges cross prefixes in key order.
    let all = store.range::<Timeline>(None, false, 100).unwrap();
    let keys: Vec<(String, u64)> = all.into_iter().map(|(k, _)| k).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(keys.len(), 18);
    let from = ("!ab".to_owned(), 2);
    let back = store.range::<Timeline>(Some(&from), true, 3).unwrap();
    let back: Vec<(String, u64)> = back.into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        back,
        vec![("!ab".into(), 2), ("!ab".into(), 1), ("!a".into(), 1000)]
    );

    // Three-part keys: prefix on one and on two parts; the u64 0xFF is no separator.
    let rows = store.scan_prefix::<Triples, _>(&0xFFu64, 100).unwrap();
    let keys: Vec<(u64, String, u64)> = rows.into_iter().map(|(k, _)| k).collect();
    let expect: Vec<(u64, String, u64)> = [("x", 0), ("x", 9), ("x", u64::MAX), ("xx", 0)]
        .into_iter()
        .chain([
            ("xx", 9),
            ("xx", u64::MAX),
            ("y", 0),
            ("y", 9),
            ("y", u64::MAX),
        ])
        .map(|(s, l)| (0xFF, s.to_owned(), l))
        .collect();
    assert_eq!(keys, expect);
    let rows = store
        .scan_prefix::<Triples, _>(&(0x100u64, "x"), 100)
        .unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows
        .iter()
        .all(|((a, s, _), v)| *a == 0x100 && s == "x" && *v));
    let prefix = (0x100u64, "x");
    let last = store
        .range_in_prefix::<Triples, _>(&prefix, None, true, 1)
        .unwrap();
    assert_eq!(last[0].0, (0x100, "x".to_owned(), u64::MAX));
    // The empty prefix is the whole table.
    assert_eq!(store.scan_prefix::<Triples, _>(&(), 100).unwrap().len(), 18);
}

async fn atomic_multi_table_batch(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), kind);
    put_kv(&store, "gone", "soon").await;

    let mut b = Batch::new();
    b.put::<Kv>(&"k".into(), &"v".into())
        .put::<Nums>(&1, &2)
        .put::<Timeline>(&("!r".into(), 1), &Raw(b"{}".to_vec()))
        .delete::<Kv>(&"gone".into());
    store.commit(b).await.unwrap();
    assert_eq!(store.get::<Kv>(&"k".into()).unwrap().as_deref(), Some("v"));
    assert_eq!(store.get::<Nums>(&1).unwrap(), Some(2));
    assert_eq!(
        store.get::<Timeline>(&("!r".into(), 1)).unwrap(),
        Some(Raw(b"{}".to_vec()))
    );
    assert_eq!(store.get::<Kv>(&"gone".into()).unwrap(), None);

    // A failing precondition anywhere rejects every write of the batch, in every table.
    let mut b = Batch::new();
    b.put::<Kv>(&"k2".into(), &"v".into())
        .put::<Nums>(&2, &3)
        .delete::<Kv>(&"k".into())
        .put::<Timeline>(&("!r".into(), 2), &Raw(vec![]))
        .expect_absent::<Nums>(&1);
    assert!(matches!(store.commit(b).await, Err(CommitError::Conflict)));
    assert_eq!(store.get::<Kv>(&"k2".into()).unwrap(), None);
    assert_eq!(store.get::<Nums>(&2).unwrap(), None);
    assert_eq!(store.get::<Kv>(&"k".into()).unwrap().as_deref(), Some("v"));
    assert_eq!(store.get::<Timeline>(&("!r".into(), 2)).unwrap(), None);
}

async fn preconditions(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), kind);
    let key = "c".to_owned();

    // expect_absent on a missing key (and missing table) holds.
    let mut b = Batch::new();
    b.expect_absent::<Counts>(&key).put::<Counts>(&key, &1);
    store.commit(b).await.unwrap();

    // expect_absent on a present key fails.
    let mut b = Batch::new();
    b.expect_absent::<Counts>(&key).put::<Counts>(&key, &100);
    assert!(matches!(store.commit(b).await, Err(CommitError::Conflict)));

    // expect_value: compare-and-swap.
    let mut b = Batch::new();
    b.expect_value::<Counts>(&key, Some(&1))
        .put::<Counts>(&key, &2);
    store.commit(b).await.unwrap();
    let mut b = Batch::new();
    b.expect_value::<Counts>(&key, Some(&1))
        .put::<Counts>(&key, &3);
    assert!(matches!(store.commit(b).await, Err(CommitError::Conflict)));
    assert_eq!(store.get::<Counts>(&key).unwrap(), Some(2));

    // expect_value(None) is expect_absent.
    let mut b = Batch::new();
    b.expect_value::<Counts>(&"new".into(), None)
        .put::<Counts>(&"new".into(), &0);
    store.commit(b).await.unwrap();
    let mut b = Batch::new();
    b.expect_value::<Counts>(&key, None);
    assert!(matches!(store.commit(b).await, Err(CommitError::Conflict)));

    // Preconditions see the state before the batch, not its own writes.
    let mut b = Batch::new();
    b.put::<Counts>(&"own".into(), &5)
        .expect_value::<Counts>(&"own".into(), Some(&5));
    assert!(matches!(store.commit(b).await, Err(CommitError::Conflict)));
    assert_eq!(store.get::<Counts>(&"own".into()).unwrap(), None);

    // Concurrent increments through compare-and-swap never lose an update.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let key = "cas".to_owned();
            for _ in 0..10 {
                loop {
                    let cur = store.get::<Counts>(&key).unwrap();
                    let mut b = Batch::new();
                    b.expect_value::<Counts>(&key, cur.as_ref())
                        .put::<Counts>(&key, &(cur.unwrap_or(0) + 1));
                    match store.commit(b).await {
                        Ok(()) => break,
                        Err(CommitError::Conflict) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.get::<Counts>(&"cas".into()).unwrap(), Some(80));
}

async fn group_with_conflicts(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), kind);
    let k = "k".to_owned();

    let mut first = Batch::new();
    first.expect_absent::<Counts>(&k).put::<Counts>(&k, &1);
    // Sees `first` although it is in the same engine transaction: conflicts.
    let mut second = Batch::new();
    second
        .expect_absent::<Counts>(&k)
        .put::<Counts>(&k, &2)
        .put::<Kv>(&"second".into(), &"x".into());
    let mut third = Batch::new();
    third
        .expect_value::<Counts>(&k, Some(&1))
        .put::<Counts>(&k, &3)
        .put::<Nums>(&3, &3);
    let mut fourth = Batch::new();
    fourth.put::<Nums>(&4, &4);

    let before = store.commit_stats();
    let results = store
        .commit_all(vec![first, second, third, fourth])
        .await
        .unwrap();
    let after = store.commit_stats();
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(CommitError::Conflict)));
    assert!(results[2].is_ok());
    assert!(results[3].is_ok());
    assert_eq!(
        after.transactions - before.transactions,
        1,
        "one engine transaction"
    );
    assert_eq!(after.batches - before.batches, 4);

    assert_eq!(store.get::<Counts>(&k).unwrap(), Some(3));
    assert_eq!(
        store.get::<Kv>(&"second".into()).unwrap(),
        None,
        "nothing of the conflicting batch"
    );
    assert_eq!(store.get::<Nums>(&3).unwrap(), Some(3));
    assert_eq!(store.get::<Nums>(&4).unwrap(), Some(4));
    assert!(store.commit_all(Vec::new()).await.unwrap().is_empty());
}

async fn concurrent_commits_share_flushes(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), kind);
    const TASKS: u64 = 64;
    const EACH: u64 = 20;
    let before = store.commit_stats();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                let n = t * EACH + i;
                let mut b = Batch::new();
                b.put::<Nums>(&n, &(n * 2))
                    .put::<Kv>(&format!("n{n}"), &n.to_string());
                store.commit(b).await.unwrap();
                // Acknowledged means readable.
                assert_eq!(store.get::<Nums>(&n).unwrap(), Some(n * 2));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let after = store.commit_stats();
    let batches = after.batches - before.batches;
    let transactions = after.transactions - before.transactions;
    assert_eq!(batches, TASKS * EACH);
    assert!(
        transactions < batches,
        "group commit: {transactions} fsyncs for {batches} commits"
    );
    eprintln!("{kind}: {batches} commits in {transactions} durable transactions");
    let rows = store.range::<Nums>(None, false, usize::MAX).unwrap();
    assert_eq!(rows.len() as u64, TASKS * EACH);
    assert!(rows
        .iter()
        .enumerate()
        .all(|(i, (k, v))| *k == i as u64 && *v == 2 * *k));
}

async fn intern_concurrency(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), kind);
    const IDS: usize = 40;
    let ids: Vec<String> = (0..IDS).map(|i| format!("@user{i}:example.org")).collect();

    let mut tasks = Vec::new();
    for t in 0..16 {
        let store = store.clone();
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let mut map = HashMap::new();
            // Each task walks the ids from a different start, so every id is contended.
            for i in 0..IDS {
                let id = &ids[(i + t * 7) % IDS];
                let sid = store.intern("user", id).await.unwrap();
                map.insert(id.clone(), sid);
            }
            map
        }));
    }
    let mut maps = Vec::new();
    for t in tasks {
        maps.push(t.await.unwrap());
    }
    for m in &maps[1..] {
        assert_eq!(m, &maps[0], "every task got the same sid for every id");
    }
    let sids: HashSet<u64> = maps[0].values().copied().collect();
    assert_eq!(sids.len(), IDS, "distinct ids have distinct sids");
    assert!(!sids.contains(&0), "sid 0 is never handed out");
    for (id, sid) in &maps[0] {
        assert_eq!(store.short_id("user", id).unwrap(), Some(*sid));
        assert_eq!(
            store.lookup_short("user", *sid).unwrap().as_deref(),
            Some(id.as_str())
        );
        assert_eq!(store.intern("user", id).await.unwrap(), *sid);
    }

    // Kinds are separate namespaces; unknown ids and sids are None.
    let room = store.intern("room", "@user0:example.org").await.unwrap();
    assert_eq!(room, 1, "each kind counts from 1");
    assert_eq!(store.short_id("room", "@user1:example.org").unwrap(), None);
    assert_eq!(store.lookup_short("user", 1 << 40).unwrap(), None);
    assert_eq!(store.short_id("event", "$x").unwrap(), None);

    // Stable across a reopen, and new ids do not reuse old sids (the counter is recovered).
    drop(store);
    let store = open(dir.path(), kind);
    for (id, sid) in &maps[0] {
        assert_eq!(store.short_id("user", id).unwrap(), Some(*sid));
        assert_eq!(
            store.lookup_short("user", *sid).unwrap().as_deref(),
            Some(id.as_str())
        );
    }
    let fresh = store.intern("user", "@new:example.org").await.unwrap();
    assert!(fresh > *sids.iter().max().unwrap());
}

async fn intern_in_batch(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), kind);
    let existing = store.intern("event", "$old").await.unwrap();

    let mut b = Batch::new();
    assert_eq!(store.intern_in("event", "$old", &mut b).unwrap(), existing);
    assert!(b.is_empty(), "an existing id adds nothing to the batch");
    let sid = store.intern_in("event", "$new", &mut b).unwrap();
    assert_eq!(
        store.intern_in("event", "$new", &mut b).unwrap(),
        sid,
        "same id, same batch"
    );
    assert_ne!(sid, existing);
    b.put::<Nums>(&sid, &1);
    // Not visible before the commit.
    assert_eq!(store.short_id("event", "$new").unwrap(), None);
    store.commit(b).await.unwrap();
    assert_eq!(store.short_id("event", "$new").unwrap(), Some(sid));
    assert_eq!(
        store.lookup_short("event", sid).unwrap().as_deref(),
        Some("$new")
    );

    // Two batches racing to intern the same id: one lands, the other conflicts whole.
    let mut a = Batch::new();
    let sa = store.intern_in("event", "$race", &mut a).unwrap();
    a.put::<Nums>(&sa, &10);
    let mut c = Batch::new();
    let sc = store.intern_in("event", "$race", &mut c).unwrap();
    c.put::<Nums>(&sc, &20);
    assert_ne!(sa, sc);
    let results = store.commit_all(vec![a, c]).await.unwrap();
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(CommitError::Conflict)));
    assert_eq!(store.short_id("event", "$race").unwrap(), Some(sa));
    assert_eq!(store.get::<Nums>(&sc).unwrap(), None);
    assert_eq!(store.lookup_short("event", sc).unwrap(), None);
    // The loser retries and gets the winner's sid.
    let mut c = Batch::new();
    assert_eq!(store.intern_in("event", "$race", &mut c).unwrap(), sa);
}

async fn schema_version_written_and_newer_refused(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), kind);
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    drop(store);

    // Reopening keeps it.
    let store = open(dir.path(), kind);
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);

    // A database written by a newer build is refused, not misread.
    let newer = SCHEMA_VERSION + 1;
    let mut b = Batch::new();
    b.put::<MetaRaw>(&"schema_version".into(), &Raw(newer.to_be_bytes().to_vec()));
    store.commit(b).await.unwrap();
    drop(store);
    match Store::open(dir.path(), kind, CACHE) {
        Err(e @ StoreError::SchemaTooNew { found, supported }) => {
            assert_eq!((found, supported), (newer, SCHEMA_VERSION));
            let msg = e.to_string();
            assert!(
                msg.contains(&newer.to_string()) && msg.contains("newer"),
                "{msg}"
            );
        }
        Err(e) => panic!("expected SchemaTooNew, got {e}"),
        Ok(_) => panic!("expected SchemaTooNew, the store opened"),
    }

    // A database of version 1 (before the deactivation marker and pre-hashed passwords), 2
    // (before the pushers tables), 3, or 6 (before the timeline holes) is migrated to the
    // current version on open.
    for old in [1u32, 2, 3, 6] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), kind);
        let mut b = Batch::new();
        b.put::<MetaRaw>(&"schema_version".into(), &Raw(old.to_be_bytes().to_vec()));
        store.commit(b).await.unwrap();
        drop(store);
        let store = open(dir.path(), kind);
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        drop(store);
    }

    // An unknown older version has no migration: refused as corrupt, not silently used.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), kind);
    let mut b = Batch::new();
    b.put::<MetaRaw>(&"schema_version".into(), &Raw(0u32.to_be_bytes().to_vec()));
    store.commit(b).await.unwrap();
    drop(store);
    let e = open_err(dir.path(), kind);
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");

    // A malformed version record is corrupt too.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), kind);
    let mut b = Batch::new();
    b.put::<MetaRaw>(&"schema_version".into(), &Raw(vec![1, 2, 3]));
    store.commit(b).await.unwrap();
    assert!(matches!(
        store.schema_version(),
        Err(StoreError::Corrupt { .. })
    ));
    drop(store);
    let e = open_err(dir.path(), kind);
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
}

async fn committed_write_survives_reopen(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), kind);
    let clone = store.clone();
    put_kv(&store, "durable", "yes").await;
    let mut b = Batch::new();
    b.put::<Nums>(&1, &1);
    clone.commit(b).await.unwrap();
    // Dropping every handle stops the writer and releases the engine (its file lock), so the
    // same directory opens again right away.
    drop(store);
    drop(clone);
    let store = open(dir.path(), kind);
    assert_eq!(
        store.get::<Kv>(&"durable".into()).unwrap().as_deref(),
        Some("yes")
    );
    assert_eq!(store.get::<Nums>(&1).unwrap(), Some(1));
}

async fn corrupt_data_is_an_error(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), kind);
    let mut b = Batch::new();
    // Not a postcard u64 (an unterminated varint), and a key that is not a u64.
    b.put::<CorruptRaw>(&"bad".into(), &Raw(vec![0xFF; 12]));
    store.commit(b).await.unwrap();

    match store.get::<CorruptTyped>(&"bad".into()) {
        Err(StoreError::Corrupt { table, .. }) => assert_eq!(table, "t_corrupt"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(
        store.scan_prefix::<CorruptTyped, _>(&"bad", 10),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        store.range::<CorruptKeyTyped>(None, false, 10),
        Err(StoreError::Corrupt { .. })
    ));
    // Raw views still read it.
    assert_eq!(
        store.get::<CorruptRaw>(&"bad".into()).unwrap(),
        Some(Raw(vec![0xFF; 12]))
    );
    // The codec agrees with the store about undecodable keys.
    assert_eq!(u64::decode(&"bad".encode()), None);
}

async fn other_engine_directory_refused(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), kind);
    put_kv(&store, "k", "v").await;
    drop(store);
    let other = if kind == EngineKind::Redb {
        EngineKind::Sled
    } else {
        EngineKind::Redb
    };
    match Store::open(dir.path(), other, CACHE) {
        Err(e) => assert!(e.to_string().contains(kind.name()), "{e}"),
        Ok(_) => panic!("opened a {kind} directory as {other}"),
    }
    // The original still opens with its own engine.
    let store = open(dir.path(), kind);
    assert_eq!(store.get::<Kv>(&"k".into()).unwrap().as_deref(), Some("v"));
}

async fn second_open_refused(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), kind);
    // Waits out the engine's lock grace period, then names the likely cause.
    let e = open_err(dir.path(), kind);
    assert!(e.to_string().contains("in use"), "{e}");
    put_kv(&store, "still", "works").await;
}

#[test]
fn string_keys_round_trip_and_reject_bad_escapes() {
    for s in ["", "a", "a\0", "\0\0b\0", "é\u{10FFFF}", "\u{1}"] {
        let enc = s.to_owned().encode();
        assert_eq!(String::decode(&enc).as_deref(), Some(s));
        assert_eq!(s.encode(), enc, "&str and String encode alike");
        let mut tuple = (s.to_owned(), 0xFF00u64).encode();
        assert_eq!(
            <(String, u64)>::decode(&tuple),
            Some((s.to_owned(), 0xFF00))
        );
        tuple.push(0);
        assert_eq!(<(String, u64)>::decode(&tuple), None, "trailing bytes");
    }
    assert_eq!(String::decode(b"ab"), None, "no terminator");
    assert_eq!(String::decode(b"a\0"), None, "cut terminator");
    assert_eq!(String::decode(b"a\0\x02\0\0"), None, "bad escape");
    assert_eq!(String::decode(b"\xC3\0\0"), None, "not UTF-8");
}
