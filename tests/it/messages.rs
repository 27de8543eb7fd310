//! `/messages`: tokens (`start`, `end`), paging from `/sync` tokens, lazy-loaded members, and
//! the bounded scan over invisible history.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, join, TestServer};

async fn send(srv: &TestServer, token: &str, room: &str, txn: &str) -> String {
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
            Some(token),
            json!({"msgtype": "m.text", "body": txn}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

async fn messages(srv: &TestServer, token: &str, room: &str, query: &str) -> Value {
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?{query}"),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body
}

fn ids(page: &Value) -> Vec<String> {
    page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn start_is_from_and_end_is_absent_only_at_the_end() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &alice, json!({})).await;
    for i in 0..5 {
        send(&srv, &alice, &room, &format!("m{i}")).await;
    }
    let all = messages(&srv, &alice, &room, "dir=b&limit=1000").await;
    assert!(all.get("end").is_none(), "{all}");
    let all = ids(&all);
    let n = all.len();
    assert!(n > 5, "{all:?}");

    // A sync token as `from`: `start` echoes it exactly.
    let (_, sync) = srv
        .get("/_matrix/client/v3/sync?timeout=0", Some(&alice))
        .await;
    let next_batch = sync["next_batch"].as_str().unwrap();
    let page = messages(
        &srv,
        &alice,
        &room,
        &format!("dir=b&limit=2&from={}", enc(next_batch)),
    )
    .await;
    assert_eq!(page["start"], next_batch, "{page}");
    assert_eq!(ids(&page), all[..2].to_vec());
    assert!(page["end"].is_string(), "more follow: {page}");

    // Paging backwards in steps of 2 visits every event once; `end` is omitted exactly on the
    // page that reaches the room's first event, also when that page is full.
    let mut seen = Vec::new();
    let mut from = page["end"].as_str().unwrap().to_owned();
    seen.extend(ids(&page));
    for _ in 0..n {
        let page = messages(&srv, &alice, &room, &format!("dir=b&limit=2&from={from}")).await;
        assert_eq!(page["start"], from.as_str());
        seen.extend(ids(&page));
        match page["end"].as_str() {
            Some(end) => from = end.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, all);
    // Exactly all events in one page, either way: no `end`.
    let page = messages(&srv, &alice, &room, &format!("dir=b&limit={n}")).await;
    assert_eq!(ids(&page).len(), n);
    assert!(page.get("end").is_none(), "nothing more: {page}");
    let page = messages(&srv, &alice, &room, &format!("dir=f&limit={n}")).await;
    assert_eq!(ids(&page).len(), n);
    assert!(page.get("end").is_none(), "nothing more: {page}");
    let page = messages(&srv, &alice, &room, &format!("dir=f&limit={}", n - 1)).await;
    assert!(page["end"].is_string(), "one more: {page}");
}

#[tokio::test]
async fn sync_prev_batch_and_next_batch_page_back() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &alice, json!({})).await;
    for i in 0..4 {
        send(&srv, &alice, &room, &format!("m{i}")).await;
    }
    let all = ids(&messages(&srv, &alice, &room, "dir=b&limit=1000").await);
    let filter = enc(&json!({"room": {"timeline": {"limit": 2}}}).to_string());
    let (status, sync) = srv
        .get(
            &format!("/_matrix/client/v3/sync?filter={filter}"),
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sync}");
    let timeline = &sync["rooms"]["join"][&room]["timeline"];
    let in_sync: Vec<&str> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(in_sync, vec![all[1].as_str(), all[0].as_str()]);
    let prev_batch = timeline["prev_batch"].as_str().unwrap();
    let page = messages(
        &srv,
        &alice,
        &room,
        &format!("dir=b&limit=1000&from={}", enc(prev_batch)),
    )
    .await;
    assert_eq!(page["start"], prev_batch);
    assert_eq!(ids(&page), all[2..].to_vec());
    assert!(page.get("end").is_none(), "{page}");

    // A client whose timeline was empty pages back from the sync token itself.
    let next_batch = sync["next_batch"].as_str().unwrap();
    let page = messages(
        &srv,
        &alice,
        &room,
        &format!("dir=b&limit=3&from={}", enc(next_batch)),
    )
    .await;
    assert_eq!(ids(&page), all[..3].to_vec());
}

#[tokio::test]
async fn lazy_load_members_returns_the_senders_member_events() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let (carol_id, carol, _) = srv.register("carol", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &room).await;
    join(&srv, &carol, &room).await;
    send(&srv, &alice, &room, "a1").await;
    send(&srv, &bob, &room, "b1").await;
    send(&srv, &alice, &room, "a2").await;

    let filter = enc(&json!({"lazy_load_members": true, "types": ["m.room.message"]}).to_string());
    let page = messages(&srv, &carol, &room, &format!("dir=b&filter={filter}")).await;
    assert_eq!(ids(&page).len(), 3, "{page}");
    let mut members: Vec<&str> = page["state"]
        .as_array()
        .expect("state with lazy_load_members")
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "m.room.member");
            assert_eq!(e["content"]["membership"], "join");
            e["state_key"].as_str().unwrap()
        })
        .collect();
    members.sort();
    assert_eq!(members, vec![alice_id.as_str(), bob_id.as_str()]);
    assert!(!members.contains(&carol_id.as_str()));

    // Without lazy loading, no `state`.
    let page = messages(&srv, &carol, &room, "dir=b").await;
    assert!(page.get("state").is_none_or(|s| s == &json!([])), "{page}");
}

/// Sends `count` events as `token`: thread roots with one reply each when `threads`, else plain
/// messages.
async fn fill(
    srv: &TestServer,
    token: &str,
    room: &str,
    prefix: &str,
    count: usize,
    threads: bool,
) {
    for i in 0..count {
        let root = send(srv, token, room, &format!("{prefix}{i}")).await;
        if threads {
            let (status, body) = srv
                .put(
                    &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{prefix}r{i}"),
                    Some(token),
                    json!({"msgtype": "m.text", "body": "reply",
                           "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
}

/// A newcomer to a room with `joined` history faces thousands of events they may not see:
/// `/messages` and `/threads` examine a bounded number of them per request and answer with a
/// token to continue, instead of walking the whole room.
#[tokio::test]
async fn invisible_history_is_scanned_within_a_budget() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    // 2100 events hidden from later joiners, created in one request.
    let mut initial_state = vec![json!({"type": "m.room.history_visibility", "state_key": "",
                                        "content": {"history_visibility": "joined"}})];
    initial_state.extend((0..2100).map(
        |i| json!({"type": "org.example.filler", "state_key": format!("{i}"), "content": {}}),
    ));
    let room = create_room(
        &srv,
        &alice,
        json!({"preset": "public_chat", "initial_state": initial_state}),
    )
    .await;
    // 210 hidden threads (more than one /threads request examines).
    let started = std::time::Instant::now();
    tokio::join!(
        fill(&srv, &alice, &room, "t", 70, true),
        fill(&srv, &alice, &room, "u", 70, true),
        fill(&srv, &alice, &room, "v", 70, true),
    );
    eprintln!("210 threads sent in {:?}", started.elapsed());
    join(&srv, &bob, &room).await;
    let mine = send(&srv, &bob, &room, "hello").await;

    let started = std::time::Instant::now();
    let page = messages(&srv, &bob, &room, "dir=b&limit=1000").await;
    eprintln!(
        "first /messages page over 2520 hidden events: {:?}",
        started.elapsed()
    );
    let first = ids(&page);
    assert_eq!(first[0], mine, "{first:?}");
    assert_eq!(first.len(), 2, "bob's message and join: {first:?}");
    let mut end = page["end"]
        .as_str()
        .expect("a continuation token, not a walk through the whole room")
        .to_owned();
    // Following the tokens reaches the room's start in a few bounded steps. Only the room's
    // first events (before its history became `joined`) are visible there.
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps <= 5, "too many steps");
        let page = messages(&srv, &bob, &room, &format!("dir=b&limit=1000&from={end}")).await;
        for event in page["chunk"].as_array().unwrap() {
            assert_ne!(event["type"], "m.room.message", "{event}");
            assert_ne!(event["type"], "org.example.filler", "{event}");
        }
        match page["end"].as_str() {
            Some(next) => end = next.to_owned(),
            None => break,
        }
    }

    // The thread list: 210 threads bob may not see, more than one request examines.
    let (status, threads) = srv
        .get(
            &format!("/_matrix/client/v1/rooms/{room}/threads?limit=10"),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{threads}");
    assert_eq!(threads["chunk"], json!([]));
    let mut next = threads["next_batch"]
        .as_str()
        .expect("a continuation token for the thread list")
        .to_owned();
    for step in 0.. {
        assert!(step < 5, "too many steps");
        let (status, threads) = srv
            .get(
                &format!("/_matrix/client/v1/rooms/{room}/threads?limit=10&from={next}"),
                Some(&bob),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{threads}");
        assert_eq!(threads["chunk"], json!([]));
        match threads["next_batch"].as_str() {
            Some(token) => next = token.to_owned(),
            None => break,
        }
    }
}

/// `contains_url` in the filter (Element's file panel asks for `true`): only events with a
/// `url` in their content, or with `false` only those without.
#[tokio::test]
async fn contains_url_filters_on_the_url_key() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &alice, json!({})).await;
    let text = send(&srv, &alice, &room, "t0").await;
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/i0"),
            Some(&alice),
            json!({"msgtype": "m.image", "body": "cat.png", "url": "mxc://localhost/cat"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let image = body["event_id"].as_str().unwrap().to_owned();
    let with = enc(r#"{"contains_url":true,"types":["m.room.message"]}"#);
    let page = messages(&srv, &alice, &room, &format!("dir=b&filter={with}")).await;
    assert_eq!(ids(&page), [image]);
    let without = enc(r#"{"contains_url":false,"types":["m.room.message"]}"#);
    let page = messages(&srv, &alice, &room, &format!("dir=b&filter={without}")).await;
    assert_eq!(ids(&page), [text]);
}
