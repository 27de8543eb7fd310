//! Server-side search (`POST /search`, `room_events`): matching, Unicode, ranking, paging,
//! groups, context, read authorization, redaction and persistence.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode, join, put_schema_version, redact, TestServer};

async fn say(srv: &TestServer, token: &str, room: &str, body: &str) -> String {
    let txn = format!("t{}", rand_txn());
    let (status, resp) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                enc(room)
            ),
            Some(token),
            json!({"msgtype": "m.text", "body": body}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    resp["event_id"].as_str().unwrap().to_owned()
}

fn rand_txn() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

async fn search_raw(
    srv: &TestServer,
    token: &str,
    criteria: Value,
    next: Option<&str>,
) -> (StatusCode, Value) {
    let path = match next {
        Some(n) => format!("/_matrix/client/v3/search?next_batch={}", enc(n)),
        None => "/_matrix/client/v3/search".to_owned(),
    };
    srv.post(
        &path,
        Some(token),
        json!({"search_categories": {"room_events": criteria}}),
    )
    .await
}

async fn search(srv: &TestServer, token: &str, criteria: Value) -> Value {
    let (status, body) = search_raw(srv, token, criteria, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["search_categories"]["room_events"].clone()
}

/// The event ids of the results, in order.
fn ids(events: &Value) -> Vec<String> {
    events["results"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|r| r["result"]["event_id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn matches_words_case_folded_in_any_script() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw-alice-123").await;
    let room = create_room(&srv, &alice, json!({})).await;
    let hello = say(&srv, &alice, &room, "Hello World, lunch at noon?").await;
    let cyr = say(&srv, &alice, &room, "Привет МИР, как дела").await;
    let greek = say(&srv, &alice, &room, "ΟΔΟΣ Αθηνάς").await;
    let cjk = say(&srv, &alice, &room, "我们明天在東京見面").await;
    let kyoto = say(&srv, &alice, &room, "京都と東の町").await;
    say(&srv, &alice, &room, "nothing relevant here").await;

    let r = search(&srv, &alice, json!({"search_term": "hello"})).await;
    assert_eq!(ids(&r), [hello.as_str()]);
    assert_eq!(r["count"], 1);
    assert_eq!(r["highlights"], json!(["hello"]));
    // Case folding, both ways, and several words AND'ed.
    assert_eq!(
        ids(&search(&srv, &alice, json!({"search_term": "WORLD hello"})).await),
        [hello.as_str()]
    );
    assert!(ids(&search(&srv, &alice, json!({"search_term": "hello dinner"})).await).is_empty());
    // Cyrillic and Greek fold to lowercase; the final sigma matches the medial one.
    assert_eq!(
        ids(&search(&srv, &alice, json!({"search_term": "мир"})).await),
        [cyr]
    );
    assert_eq!(
        ids(&search(&srv, &alice, json!({"search_term": "οδοσ"})).await),
        [greek.as_str()]
    );
    assert_eq!(
        ids(&search(&srv, &alice, json!({"search_term": "οδος"})).await),
        [greek]
    );
    // Han: a two-character query matches the characters next to each other only.
    let tokyo = search(&srv, &alice, json!({"search_term": "東京"})).await;
    assert_eq!(ids(&tokyo), [cjk.as_str()], "{tokyo}");
    assert_eq!(tokyo["highlights"], json!(["東京"]));
    // A single character matches wherever it stands.
    let east = ids(&search(&srv, &alice, json!({"search_term": "東"})).await);
    assert_eq!(east.len(), 2);
    assert!(east.contains(&cjk) && east.contains(&kyoto));
    // Punctuation only: no terms, no results.
    let none = search(&srv, &alice, json!({"search_term": "?!"})).await;
    assert!(ids(&none).is_empty());
}

#[tokio::test]
async fn keys_filter_and_limit() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw-alice-123").await;
    let (bob_id, bob, _) = srv.register("bob", "pw-bob-12345").await;
    let r1 = create_room(
        &srv,
        &alice,
        json!({"name": "Gardening club", "topic": "tomato growing", "preset": "public_chat"}),
    )
    .await;
    let r2 = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &r1).await;
    let a1 = say(&srv, &alice, &r1, "my tomato plants").await;
    let b1 = say(&srv, &bob, &r1, "tomato soup recipe").await;
    let a2 = say(&srv, &alice, &r2, "tomato sauce").await;

    // Default keys: the topic event matches too.
    let all = search(&srv, &alice, json!({"search_term": "tomato"})).await;
    assert_eq!(all["count"], 4, "{all}");
    let body_only = ids(&search(
        &srv,
        &alice,
        json!({"search_term": "tomato", "keys": ["content.body"]}),
    )
    .await);
    assert_eq!(body_only.len(), 3);
    let topic = search(
        &srv,
        &alice,
        json!({"search_term": "tomato", "keys": ["content.topic"]}),
    )
    .await;
    assert_eq!(topic["count"], 1);
    assert_eq!(topic["results"][0]["result"]["type"], "m.room.topic");
    let name = search(
        &srv,
        &alice,
        json!({"search_term": "gardening", "keys": ["content.name"]}),
    )
    .await;
    assert_eq!(name["results"][0]["result"]["type"], "m.room.name");
    assert!(ids(&search(
        &srv,
        &alice,
        json!({"search_term": "gardening", "keys": ["content.body"]})
    )
    .await)
    .is_empty());

    let rooms = ids(&search(
        &srv,
        &alice,
        json!({"search_term": "tomato", "keys": ["content.body"], "filter": {"rooms": [r2]}}),
    )
    .await);
    assert_eq!(rooms, [a2.as_str()]);
    let not_rooms = ids(&search(
        &srv,
        &alice,
        json!({"search_term": "tomato", "keys": ["content.body"], "filter": {"not_rooms": [r2]}}),
    )
    .await);
    assert_eq!(not_rooms.len(), 2);
    assert!(!not_rooms.contains(&a2));
    let senders = ids(&search(
        &srv,
        &alice,
        json!({"search_term": "tomato", "filter": {"senders": [bob_id]}}),
    )
    .await);
    assert_eq!(senders, [b1]);
    let not_senders = ids(&search(&srv, &alice, json!({"search_term": "tomato", "keys": ["content.body"], "filter": {"not_senders": [bob_id]}})).await);
    assert_eq!(not_senders.len(), 2);
    assert!(not_senders.contains(&a1) && not_senders.contains(&a2));
    let types = search(
        &srv,
        &alice,
        json!({"search_term": "tomato", "filter": {"types": ["m.room.message"]}}),
    )
    .await;
    assert_eq!(types["count"], 3);
    let limited = search(
        &srv,
        &alice,
        json!({"search_term": "tomato", "filter": {"limit": 1}}),
    )
    .await;
    assert_eq!(ids(&limited).len(), 1);
    assert_eq!(limited["count"], 4);
    assert!(limited["next_batch"].is_string());
    // Bob is in r1 only: r2 is not searched for him.
    let for_bob = ids(&search(&srv, &bob, json!({"search_term": "sauce"})).await);
    assert!(for_bob.is_empty());
    let _ = alice_id;
}

#[tokio::test]
async fn rank_and_recent_orders_and_paging() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw-alice-123").await;
    let room = create_room(&srv, &alice, json!({})).await;
    let long = say(
        &srv,
        &alice,
        &room,
        "coffee is one of many words in this rather long and winding message about things",
    )
    .await;
    let twice = say(&srv, &alice, &room, "coffee coffee and more coffee please").await;
    let short = say(&srv, &alice, &room, "coffee").await;
    let newest = say(
        &srv,
        &alice,
        &room,
        "a long message that mentions coffee somewhere in the middle of it all",
    )
    .await;

    let rank = search(
        &srv,
        &alice,
        json!({"search_term": "coffee", "order_by": "rank"}),
    )
    .await;
    let ranked = ids(&rank);
    assert_eq!(ranked.len(), 4);
    // More occurrences, or a shorter body, rank above long messages with one occurrence.
    assert_eq!(
        &ranked[..2],
        [twice.clone(), short.clone()].as_slice(),
        "{rank}"
    );
    let ranks: Vec<f64> = rank["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rank"].as_f64().unwrap())
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] >= w[1]), "{ranks:?}");
    assert!(ranks[0] > ranks[3]);

    let recent = ids(&search(
        &srv,
        &alice,
        json!({"search_term": "coffee", "order_by": "recent"}),
    )
    .await);
    assert_eq!(recent, [newest, short, twice, long]);

    // Paging two at a time through both orders until exhausted gives every result once.
    for order in ["rank", "recent"] {
        let mut seen = Vec::new();
        let mut next: Option<String> = None;
        for _ in 0..10 {
            let (status, body) = search_raw(
                &srv,
                &alice,
                json!({"search_term": "coffee", "order_by": order, "filter": {"limit": 2}}),
                next.as_deref(),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let page = &body["search_categories"]["room_events"];
            seen.extend(ids(page));
            match page["next_batch"].as_str() {
                Some(n) => next = Some(n.to_owned()),
                None => break,
            }
        }
        let expected = if order == "rank" {
            ranked.clone()
        } else {
            recent.clone()
        };
        assert_eq!(seen, expected, "{order}");
    }
}

#[tokio::test]
async fn groupings_context_profiles_and_state() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw-alice-123").await;
    let (bob_id, bob, _) = srv.register("bob", "pw-bob-12345").await;
    let (status, _) = srv
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice_id)),
            Some(&alice),
            json!({"displayname": "Alice A."}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let r1 = create_room(
        &srv,
        &alice,
        json!({"preset": "public_chat", "name": "First"}),
    )
    .await;
    let r2 = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &r1).await;
    let before = say(&srv, &bob, &r1, "good morning").await;
    let hit1 = say(&srv, &alice, &r1, "the banana bread is ready").await;
    let after = say(&srv, &bob, &r1, "on my way").await;
    let hit2 = say(&srv, &bob, &r1, "banana for scale").await;
    let hit3 = say(&srv, &alice, &r2, "banana split").await;

    let r = search(
        &srv,
        &alice,
        json!({
            "search_term": "banana",
            "order_by": "recent",
            "groupings": {"group_by": [{"key": "room_id"}, {"key": "sender"}]},
            "event_context": {"before_limit": 1, "after_limit": 1, "include_profile": true},
            "include_state": true,
        }),
    )
    .await;
    assert_eq!(ids(&r), [hit3.clone(), hit2.clone(), hit1.clone()]);
    let by_room = &r["groups"]["room_id"];
    assert_eq!(by_room[&r2]["results"], json!([hit3]));
    assert_eq!(by_room[&r2]["order"], 1);
    assert_eq!(by_room[&r1]["results"], json!([hit2, hit1]));
    assert_eq!(by_room[&r1]["order"], 2);
    assert!(by_room[&r1].get("next_batch").is_none());
    let by_sender = &r["groups"]["sender"];
    assert_eq!(by_sender[&alice_id]["results"], json!([hit3, hit1]));
    assert_eq!(by_sender[&bob_id]["results"], json!([hit2]));

    // Context of hit1: bob's greeting before, his reply after, with both profiles.
    let third = &r["results"][2]["context"];
    assert_eq!(third["events_before"][0]["event_id"], json!(before));
    assert_eq!(third["events_after"][0]["event_id"], json!(after));
    assert!(third["start"].is_string() && third["end"].is_string());
    assert_eq!(third["profile_info"][&alice_id]["displayname"], "Alice A.");
    assert!(third["profile_info"].get(&bob_id).is_some(), "{third}");
    // The start token pages on with /messages, beyond the context: bob's join.
    let (status, msgs) = srv
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1&from={}",
                enc(&r1),
                third["start"].as_str().unwrap()
            ),
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{msgs}");
    assert_eq!(msgs["chunk"][0]["type"], "m.room.member", "{msgs}");
    assert_eq!(msgs["chunk"][0]["state_key"], json!(bob_id));

    // State of each room with a result.
    let state = &r["state"];
    let names: Vec<&Value> = state[&r1]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.name")
        .collect();
    assert_eq!(names[0]["content"]["name"], "First");
    assert!(state[&r2]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.create"));

    // A group's next_batch pages within that group only.
    let small = search(
        &srv,
        &alice,
        json!({
            "search_term": "banana", "order_by": "recent", "filter": {"limit": 2},
            "groupings": {"group_by": [{"key": "room_id"}]},
        }),
    )
    .await;
    assert_eq!(ids(&small), [hit3.clone(), hit2.clone()]);
    let token = small["groups"]["room_id"][&r1]["next_batch"]
        .as_str()
        .expect("r1 has more")
        .to_owned();
    assert!(small["groups"]["room_id"][&r2].get("next_batch").is_none());
    let (status, body) = search_raw(
        &srv,
        &alice,
        json!({"search_term": "banana", "order_by": "recent", "filter": {"limit": 2}}),
        Some(&token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ids(&body["search_categories"]["room_events"]), [hit1]);
}

#[tokio::test]
async fn results_follow_history_visibility_and_membership() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw-alice-123").await;
    let (_, bob, _) = srv.register("bob", "pw-bob-12345").await;
    let (_, carol, _) = srv.register("carol", "pw-carol-1234").await;
    let (_, dave, _) = srv.register("dave", "pw-dave-12345").await;
    for visibility in ["joined", "invited"] {
        let room = create_room(&srv, &alice, json!({"preset": "public_chat", "initial_state": [
            {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": visibility}}
        ]})).await;
        let word = format!("secret{visibility}");
        say(&srv, &alice, &room, &format!("early {word}")).await;
        join(&srv, &bob, &room).await;
        let late = say(&srv, &alice, &room, &format!("late {word}")).await;
        assert_eq!(
            ids(&search(&srv, &bob, json!({"search_term": word})).await),
            [late.as_str()],
            "{visibility}"
        );
        assert_eq!(
            ids(&search(&srv, &alice, json!({"search_term": word})).await).len(),
            2
        );
    }
    // Shared: a user who leaves sees nothing sent after leaving; a stranger sees nothing.
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &carol, &room).await;
    let seen = say(&srv, &alice, &room, "pineapple before").await;
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&carol),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    say(&srv, &alice, &room, "pineapple after").await;
    assert_eq!(
        ids(&search(&srv, &carol, json!({"search_term": "pineapple"})).await),
        [seen]
    );
    assert!(ids(&search(&srv, &dave, json!({"search_term": "pineapple"})).await).is_empty());
    // Even when a stranger names the room in the filter.
    assert!(ids(&search(
        &srv,
        &dave,
        json!({"search_term": "pineapple", "filter": {"rooms": [room]}})
    )
    .await)
    .is_empty());
}

#[tokio::test]
async fn redaction_removes_and_index_survives_restart() {
    let mut srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw-alice-123").await;
    let room = create_room(&srv, &alice, json!({})).await;
    let keep = say(&srv, &alice, &room, "walrus one").await;
    let gone = say(&srv, &alice, &room, "walrus two").await;
    let enc_ev = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.encrypted/e1",
                enc(&room)
            ),
            Some(&alice),
            json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "walrus"}),
        )
        .await;
    assert_eq!(enc_ev.0, StatusCode::OK);
    redact(&srv, &alice, &room, &gone, "r1").await;
    let r = search(&srv, &alice, json!({"search_term": "walrus"})).await;
    assert_eq!(ids(&r), [keep.as_str()]);
    assert_eq!(r["count"], 1);
    // The room's counters were decremented: "two" is found nowhere.
    assert!(ids(&search(&srv, &alice, json!({"search_term": "two"})).await).is_empty());

    srv.restart().await;
    let r = search(&srv, &alice, json!({"search_term": "walrus"})).await;
    assert_eq!(ids(&r), [keep]);
    let after = say(&srv, &alice, &room, "walrus three").await;
    let r = search(
        &srv,
        &alice,
        json!({"search_term": "walrus", "order_by": "recent"}),
    )
    .await;
    assert_eq!(ids(&r)[0], after);
}

#[tokio::test]
async fn bad_requests_get_matrix_errors() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw-alice-123").await;
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/search",
            Some(&alice),
            json!({"search_categories": {"messages": {"search_term": "x"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(errcode(&body), "M_INVALID_PARAM");
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/search",
            Some(&alice),
            json!({"search_categories": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    for token in [
        "garbage",
        "s1.k.1",
        "s1.k.x.0",
        "s1.r.5.0.qwhatever",
        "s1.k.5.7ff8000000000000",
    ] {
        let (status, body) =
            search_raw(&srv, &alice, json!({"search_term": "x"}), Some(token)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{token}: {body}");
        assert_eq!(errcode(&body), "M_INVALID_PARAM", "{token}");
    }
    // A token of the other order.
    let (status, body) = search_raw(
        &srv,
        &alice,
        json!({"search_term": "x", "order_by": "recent"}),
        Some("s1.k.5.0"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = search_raw(
        &srv,
        &alice,
        json!({"search_term": "x", "keys": ["content.nope"]}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = search_raw(
        &srv,
        &alice,
        json!({"search_term": "x", "order_by": "sideways"}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = srv
        .post(
            "/_matrix/client/v3/search",
            None,
            json!({"search_categories": {"room_events": {"search_term": "x"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Removes every row of table `T` (the store's own API; the server is stopped).
async fn clear<T: hearth::store::Table>(store: &hearth::store::Store) {
    let rows = store.range::<T>(None, false, usize::MAX).expect("scan");
    let mut batch = hearth::store::Batch::new();
    for (key, _) in rows {
        batch.delete::<T>(&key);
    }
    store.commit(batch).await.unwrap();
}

/// Removes the index and the pending rows (the server is stopped).
async fn clear_index(store: &hearth::store::Store) {
    use hearth::service::search::index::{Docs, Postings, RoomStatsTable, TermCounts};
    use hearth::service::search::pending::Pending;
    clear::<Postings>(store).await;
    clear::<Docs>(store).await;
    clear::<TermCounts>(store).await;
    clear::<RoomStatsTable>(store).await;
    clear::<Pending>(store).await;
}

/// A database of schema version 3 (events, no index) is migrated, and its events are indexed
/// at the first start.
#[tokio::test]
async fn events_stored_before_the_index_are_indexed_at_start() {
    use hearth::service::search::index::{Docs, Progress};
    let mut srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw-alice-123").await;
    let room = create_room(&srv, &alice, json!({"topic": "old topic otter"})).await;
    let old = say(&srv, &alice, &room, "an otter from before").await;
    let redacted = say(&srv, &alice, &room, "an otter that was redacted").await;
    redact(&srv, &alice, &room, &redacted, "r1").await;
    srv.stop().await;
    {
        let store = srv.open_store();
        clear_index(&store).await;
        clear::<Progress>(&store).await;
        let mut b = hearth::store::Batch::new();
        put_schema_version(&mut b, 3);
        store.commit(b).await.unwrap();
        assert!(store.get::<Docs>(&1).unwrap().is_none());
    }
    srv.start_again().await;
    let r = search(&srv, &alice, json!({"search_term": "otter"})).await;
    let found = ids(&r);
    assert_eq!(found.len(), 2, "{r}");
    assert!(found.contains(&old));
    assert!(!found.contains(&redacted));
    assert_eq!(r["count"], 2);
}

/// Events wait for the indexer in `search_pending` rows: a query right after a send finds it,
/// a redaction before the indexer ran keeps it out of the index, and rows the previous run
/// left pending are indexed after a restart (the pending rooms are read back at start).
#[tokio::test]
async fn pending_events_are_searchable_at_once_and_after_a_restart() {
    use hearth::service::rooms::EventIds;
    use hearth::service::search::pending::Pending;
    let mut srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw-alice-123").await;
    let room = create_room(&srv, &alice, json!({})).await;
    let first = say(&srv, &alice, &room, "a quokka at once").await;
    assert_eq!(
        ids(&search(&srv, &alice, json!({"search_term": "quokka"})).await),
        [first.as_str()]
    );
    let secret = say(&srv, &alice, &room, "the quokka secret").await;
    redact(&srv, &alice, &room, &secret, "r1").await;
    let r = search(&srv, &alice, json!({"search_term": "quokka"})).await;
    assert_eq!(ids(&r), [first.as_str()]);
    assert!(ids(&search(&srv, &alice, json!({"search_term": "secret"})).await).is_empty());

    let later = say(&srv, &alice, &room, "a quokka later").await;
    srv.stop().await;
    {
        // As if the server had stopped before its indexer ran: the index holds nothing, and
        // both readable events are pending.
        let store = srv.open_store();
        clear_index(&store).await;
        let room_sid = store.short_id("room", &room).unwrap().expect("room sid");
        let mut b = hearth::store::Batch::new();
        for event in [&first, &later] {
            let sid = store.get::<EventIds>(event).unwrap().expect("event sid");
            b.put::<Pending>(&(room_sid, sid), &true);
        }
        store.commit(b).await.unwrap();
    }
    srv.start_again().await;
    let r = search(&srv, &alice, json!({"search_term": "quokka"})).await;
    let found = ids(&r);
    assert_eq!(found.len(), 2, "{r}");
    assert!(found.contains(&first) && found.contains(&later));
    assert_eq!(r["count"], 2);
}

/// Concurrent sends over several rooms, searched while the indexer may be running: every
/// message is found exactly once.
#[tokio::test]
async fn concurrent_sends_in_many_rooms_are_all_found() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw-alice-123").await;
    let mut rooms = Vec::new();
    for _ in 0..4 {
        rooms.push(create_room(&srv, &alice, json!({})).await);
    }
    let sends = rooms.iter().flat_map(|room| {
        (0..10).map(|n| {
            let (srv, alice, room) = (&srv, &alice, room.clone());
            async move { say(srv, alice, &room, &format!("kiwi number {n}")).await }
        })
    });
    let mut sent: Vec<String> = futures_util::future::join_all(sends).await;
    let r = search(
        &srv,
        &alice,
        json!({"search_term": "kiwi", "order_by": "recent", "filter": {"limit": 50}}),
    )
    .await;
    assert_eq!(r["count"], 40, "{r}");
    let mut found = ids(&r);
    found.sort();
    sent.sort();
    assert_eq!(found, sent);
}
