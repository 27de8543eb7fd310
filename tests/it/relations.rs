//! Relations over HTTP: `/relations` (all variants, both directions, recursion), bundled
//! aggregations (threads, edits, references), `/threads` and `/context`.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode, join, redact, TestServer};

async fn send_as(
    srv: &TestServer,
    token: &str,
    room: &str,
    kind: &str,
    txn: &str,
    content: Value,
) -> (StatusCode, Value) {
    srv.put(
        &format!("/_matrix/client/v3/rooms/{}/send/{kind}/{txn}", enc(room)),
        Some(token),
        content,
    )
    .await
}

async fn send(srv: &TestServer, token: &str, room: &str, txn: &str, content: Value) -> String {
    let (status, body) = send_as(srv, token, room, "m.room.message", txn, content).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

async fn text(srv: &TestServer, token: &str, room: &str, txn: &str, body: &str) -> String {
    send(
        srv,
        token,
        room,
        txn,
        json!({"msgtype": "m.text", "body": body}),
    )
    .await
}

async fn reply_in_thread(
    srv: &TestServer,
    token: &str,
    room: &str,
    root: &str,
    txn: &str,
) -> String {
    send(
        srv,
        token,
        room,
        txn,
        json!({"msgtype": "m.text", "body": txn,
               "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
    )
    .await
}

async fn react(
    srv: &TestServer,
    token: &str,
    room: &str,
    target: &str,
    txn: &str,
    key: &str,
) -> (StatusCode, Value) {
    send_as(
        srv,
        token,
        room,
        "m.reaction",
        txn,
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": key}}),
    )
    .await
}

async fn event(srv: &TestServer, token: &str, room: &str, event: &str) -> (StatusCode, Value) {
    srv.get(
        &format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(room),
            enc(event)
        ),
        Some(token),
    )
    .await
}

/// `GET /relations/{parent}{suffix}?{query}`.
async fn relations(
    srv: &TestServer,
    token: &str,
    room: &str,
    parent: &str,
    suffix: &str,
    query: &str,
) -> (StatusCode, Value) {
    srv.get(
        &format!(
            "/_matrix/client/v1/rooms/{}/relations/{}{suffix}?{query}",
            enc(room),
            enc(parent)
        ),
        Some(token),
    )
    .await
}

fn ids(body: &Value, key: &str) -> Vec<String> {
    body[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} in {body}"))
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Pages through `/relations` with `limit` until there is no `next_batch`.
async fn all_pages(
    srv: &TestServer,
    token: &str,
    room: &str,
    parent: &str,
    suffix: &str,
    dir: &str,
    limit: u32,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..100 {
        let from_param = from
            .as_ref()
            .map(|f| format!("&from={f}"))
            .unwrap_or_default();
        let (status, body) = relations(
            srv,
            token,
            room,
            parent,
            suffix,
            &format!("dir={dir}&limit={limit}{from_param}"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let page = ids(&body, "chunk");
        assert!(page.len() <= limit as usize);
        assert_eq!(body["prev_batch"].as_str(), from.as_deref());
        assert!(body.get("recursion_depth").is_none());
        out.extend(page);
        match body["next_batch"].as_str() {
            Some(next) => from = Some(next.to_owned()),
            None => return out,
        }
    }
    panic!("pagination does not end");
}

#[tokio::test]
async fn threads_aggregate_and_relations_paginate_without_gaps() {
    let srv = TestServer::start().await;
    let (alice, alice_token, _) = srv.register("alice", "pw").await;
    let (_, bob_token, _) = srv.register("bob", "pw").await;
    let (_, carol_token, _) = srv.register("carol", "pw").await;
    let room = create_room(&srv, &alice_token, json!({"preset": "public_chat"})).await;
    join(&srv, &bob_token, &room).await;
    join(&srv, &carol_token, &room).await;
    let root = text(&srv, &alice_token, &room, "root", "thread root").await;
    let mut replies = Vec::new();
    for i in 0..7 {
        let token = if i % 2 == 0 { &bob_token } else { &alice_token };
        replies.push(reply_in_thread(&srv, token, &room, &root, &format!("reply{i}")).await);
        text(
            &srv,
            &carol_token,
            &room,
            &format!("noise{i}"),
            "main timeline",
        )
        .await;
    }
    let (status, reaction) = react(&srv, &carol_token, &room, &root, "like", "👍").await;
    assert_eq!(status, StatusCode::OK, "{reaction}");
    let reaction = reaction["event_id"].as_str().unwrap().to_owned();

    // Bundled thread summary on `/event`, per viewer.
    let (status, root_event) = event(&srv, &alice_token, &room, &root).await;
    assert_eq!(status, StatusCode::OK);
    let thread = &root_event["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(thread["count"], 7, "{root_event}");
    assert_eq!(thread["latest_event"]["event_id"], replies[6].as_str());
    assert_eq!(thread["latest_event"]["content"]["body"], "reply6");
    assert_eq!(thread["current_user_participated"], true);
    assert!(
        root_event["unsigned"]["m.relations"]
            .get("m.annotation")
            .is_none(),
        "annotations are not aggregated by the server"
    );
    let (_, for_carol) = event(&srv, &carol_token, &room, &root).await;
    assert_eq!(
        for_carol["unsigned"]["m.relations"]["m.thread"]["current_user_participated"],
        false
    );
    let (_, for_bob) = event(&srv, &bob_token, &room, &root).await;
    assert_eq!(
        for_bob["unsigned"]["m.relations"]["m.thread"]["current_user_participated"],
        true
    );
    assert_eq!(alice.split(':').next(), Some("@alice"));

    // Also in `/messages`.
    let (status, page) = srv
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
                enc(&room)
            ),
            Some(&alice_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let in_timeline = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == root.as_str())
        .unwrap();
    assert_eq!(
        in_timeline["unsigned"]["m.relations"]["m.thread"]["count"],
        7
    );

    // All children, newest first, 3 per page: every child exactly once.
    let mut children: Vec<String> = replies.clone();
    children.push(reaction.clone());
    let newest_first: Vec<String> = children.iter().rev().cloned().collect();
    assert_eq!(
        all_pages(&srv, &bob_token, &room, &root, "", "b", 3).await,
        newest_first
    );
    // Forwards, 2 per page.
    assert_eq!(
        all_pages(&srv, &bob_token, &room, &root, "", "f", 2).await,
        children
    );
    // One relation type, and one relation type and event type.
    let thread_newest_first: Vec<String> = replies.iter().rev().cloned().collect();
    assert_eq!(
        all_pages(&srv, &bob_token, &room, &root, "/m.thread", "b", 4).await,
        thread_newest_first
    );
    assert_eq!(
        all_pages(
            &srv,
            &bob_token,
            &room,
            &root,
            "/m.thread/m.room.message",
            "f",
            5
        )
        .await,
        replies
    );
    assert!(all_pages(
        &srv,
        &bob_token,
        &room,
        &root,
        "/m.thread/m.reaction",
        "b",
        5
    )
    .await
    .is_empty());
    assert_eq!(
        all_pages(&srv, &bob_token, &room, &root, "/m.annotation", "b", 5).await,
        vec![reaction.clone()]
    );

    // `to` bounds a page: from the newest back to (and excluding) the third reply's token.
    let (_, first) = relations(&srv, &bob_token, &room, &root, "/m.thread", "limit=2").await;
    assert_eq!(
        ids(&first, "chunk"),
        vec![replies[6].clone(), replies[5].clone()]
    );
    assert!(
        first.get("prev_batch").is_none(),
        "first page has no prev_batch"
    );
    let next = first["next_batch"].as_str().unwrap();
    let (_, window) = relations(
        &srv,
        &bob_token,
        &room,
        &root,
        "/m.thread",
        &format!("limit=50&to={next}"),
    )
    .await;
    assert_eq!(
        ids(&window, "chunk"),
        vec![replies[6].clone(), replies[5].clone()]
    );
    assert!(window.get("next_batch").is_none());

    // Chunk events carry the usual ClientEvent fields.
    let chunk = &first["chunk"][0];
    assert_eq!(chunk["room_id"], room.as_str());
    assert_eq!(chunk["content"]["m.relates_to"]["event_id"], root.as_str());

    // Bad token.
    let (status, body) = relations(&srv, &bob_token, &room, &root, "", "from=nonsense").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(errcode(&body), "M_INVALID_PARAM");
}

#[tokio::test]
async fn relations_of_unknown_or_invisible_events_are_404() {
    let srv = TestServer::start().await;
    let (_, alice_token, _) = srv.register("alice", "pw").await;
    let (_, bob_token, _) = srv.register("bob", "pw").await;
    let room = create_room(
        &srv,
        &alice_token,
        json!({"preset": "public_chat",
               "initial_state": [{"type": "m.room.history_visibility",
                                  "content": {"history_visibility": "joined"}}]}),
    )
    .await;
    let early = text(&srv, &alice_token, &room, "e", "before bob").await;
    reply_in_thread(&srv, &alice_token, &room, &early, "t1").await;

    // Not a member: the event is invisible.
    let (status, body) = relations(&srv, &bob_token, &room, &early, "", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(errcode(&body), "M_NOT_FOUND");
    // Joined later: still invisible (history is `joined`).
    join(&srv, &bob_token, &room).await;
    let (status, _) = relations(&srv, &bob_token, &room, &early, "/m.thread", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Unknown event, and an event of another room.
    let (status, _) = relations(&srv, &alice_token, &room, "$nope", "", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let other = create_room(&srv, &alice_token, json!({})).await;
    let elsewhere = text(&srv, &alice_token, &other, "o", "other room").await;
    let (status, _) = relations(&srv, &alice_token, &room, &elsewhere, "", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A visible parent with children Bob cannot see (sent after he left): left out of the
    // page and of the bundled thread summary.
    let later = text(&srv, &alice_token, &room, "l", "after bob").await;
    let seen_reply = reply_in_thread(&srv, &alice_token, &room, &later, "t2").await;
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&bob_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let unseen_reply = reply_in_thread(&srv, &alice_token, &room, &later, "t3").await;
    let (status, body) = relations(&srv, &bob_token, &room, &later, "", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ids(&body, "chunk"), vec![seen_reply.clone()]);
    let (_, body) = relations(&srv, &alice_token, &room, &later, "", "").await;
    assert_eq!(
        ids(&body, "chunk"),
        vec![unseen_reply.clone(), seen_reply.clone()]
    );
    let (_, shown) = event(&srv, &bob_token, &room, &later).await;
    let thread = &shown["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(
        thread["latest_event"]["event_id"],
        seen_reply.as_str(),
        "{shown}"
    );
    assert_eq!(thread["count"], 2);

    // A relation to an event of another room is ignored, not indexed.
    send(
        &srv,
        &alice_token,
        &room,
        "cross",
        json!({"msgtype": "m.text", "body": "x",
               "m.relates_to": {"rel_type": "m.reference", "event_id": elsewhere}}),
    )
    .await;
    let (_, body) = relations(&srv, &alice_token, &other, &elsewhere, "", "").await;
    assert_eq!(body["chunk"], json!([]));
}

#[tokio::test]
async fn recursion_follows_relations_of_relations() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &token, json!({})).await;
    let root = text(&srv, &token, &room, "root", "root").await;
    let reply = reply_in_thread(&srv, &token, &room, &root, "reply").await;
    let (_, reaction) = react(&srv, &token, &room, &reply, "r1", "🎉").await;
    let reaction = reaction["event_id"].as_str().unwrap().to_owned();
    let reference = send(
        &srv,
        &token,
        &room,
        "ref",
        json!({"msgtype": "m.text", "body": "see above",
               "m.relates_to": {"rel_type": "m.reference", "event_id": reaction}}),
    )
    .await;
    let deep = send(
        &srv,
        &token,
        &room,
        "deep",
        json!({"msgtype": "m.text", "body": "too deep",
               "m.relates_to": {"rel_type": "m.reference", "event_id": reference}}),
    )
    .await;

    let (status, direct) = relations(&srv, &token, &room, &root, "", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&direct, "chunk"), vec![reply.clone()]);
    assert!(direct.get("recursion_depth").is_none());

    let (status, tree) = relations(&srv, &token, &room, &root, "", "recurse=true").await;
    assert_eq!(status, StatusCode::OK, "{tree}");
    assert_eq!(tree["recursion_depth"], 3);
    assert_eq!(
        ids(&tree, "chunk"),
        vec![reference.clone(), reaction.clone(), reply.clone()],
        "three levels, newest first; the fourth level is not followed"
    );
    assert!(!ids(&tree, "chunk").contains(&deep));

    // Paging through the tree forwards, one at a time.
    let mut seen = Vec::new();
    let mut from = String::new();
    for _ in 0..10 {
        let (_, page) = relations(
            &srv,
            &token,
            &room,
            &root,
            "",
            &format!("recurse=true&dir=f&limit=1{from}"),
        )
        .await;
        seen.extend(ids(&page, "chunk"));
        match page["next_batch"].as_str() {
            Some(next) => from = format!("&from={next}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec![reply.clone(), reaction.clone(), reference.clone()]
    );

    // With a relation type, a child reached only through a non-matching event is left out.
    let (_, threads_only) =
        relations(&srv, &token, &room, &root, "/m.thread", "recurse=true").await;
    assert_eq!(ids(&threads_only, "chunk"), vec![reply.clone()]);
    assert_eq!(threads_only["recursion_depth"], 3);
}

#[tokio::test]
async fn edits_bundle_the_latest_valid_replacement() {
    let srv = TestServer::start().await;
    let (_, alice_token, _) = srv.register("alice", "pw").await;
    let (_, bob_token, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice_token, json!({"preset": "public_chat"})).await;
    join(&srv, &bob_token, &room).await;
    let original = text(&srv, &alice_token, &room, "orig", "I like cake").await;
    let edit = |body: &str| {
        json!({"msgtype": "m.text", "body": format!("* {body}"),
               "m.new_content": {"msgtype": "m.text", "body": body},
               "m.relates_to": {"rel_type": "m.replace", "event_id": original}})
    };
    let first = send(
        &srv,
        &alice_token,
        &room,
        "e1",
        edit("I like chocolate cake"),
    )
    .await;
    let second = send(&srv, &alice_token, &room, "e2", edit("I like lemon cake")).await;
    // Not valid: another sender, another type, and an edit without `m.new_content`.
    send(&srv, &bob_token, &room, "e3", edit("Bob was here")).await;
    let (status, _) = send_as(
        &srv,
        &alice_token,
        &room,
        "m.sticker",
        "e4",
        edit("a sticker"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    send(
        &srv,
        &alice_token,
        &room,
        "e5",
        json!({"body": "no new content", "msgtype": "m.text",
               "m.relates_to": {"rel_type": "m.replace", "event_id": original}}),
    )
    .await;

    let (_, shown) = event(&srv, &bob_token, &room, &original).await;
    assert_eq!(
        shown["content"]["body"], "I like cake",
        "content is never replaced"
    );
    let replace = &shown["unsigned"]["m.relations"]["m.replace"];
    assert_eq!(replace["event_id"], second.as_str(), "{shown}");
    assert_eq!(
        replace["content"]["m.new_content"]["body"],
        "I like lemon cake"
    );
    assert_eq!(replace["type"], "m.room.message");

    // Redacting the latest edit falls back to the one before.
    redact(&srv, &alice_token, &room, &second, "r1").await;
    let (_, shown) = event(&srv, &bob_token, &room, &original).await;
    assert_eq!(
        shown["unsigned"]["m.relations"]["m.replace"]["event_id"],
        first.as_str()
    );
    // The redacted edit no longer relates to anything.
    let (_, children) = relations(&srv, &bob_token, &room, &original, "/m.replace", "").await;
    assert!(!ids(&children, "chunk").contains(&second));

    // Redacting the original: no edit is bundled any more.
    redact(&srv, &alice_token, &room, &original, "r2").await;
    let (_, shown) = event(&srv, &bob_token, &room, &original).await;
    assert_eq!(shown["content"], json!({}));
    assert!(
        shown["unsigned"]
            .get("m.relations")
            .and_then(|r| r.get("m.replace"))
            .is_none(),
        "{shown}"
    );
}

#[tokio::test]
async fn references_annotations_and_thread_rules() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &token, json!({})).await;
    let target = text(&srv, &token, &room, "t", "poll").await;
    let mut refs = Vec::new();
    for i in 0..2 {
        refs.push(
            send(
                &srv,
                &token,
                &room,
                &format!("ref{i}"),
                json!({"msgtype": "m.text", "body": "vote",
                       "m.relates_to": {"rel_type": "m.reference", "event_id": target}}),
            )
            .await,
        );
    }
    let (_, shown) = event(&srv, &token, &room, &target).await;
    assert_eq!(
        shown["unsigned"]["m.relations"]["m.reference"],
        json!({"chunk": [{"event_id": refs[0]}, {"event_id": refs[1]}]})
    );

    // The same annotation twice is refused; after redacting it, it can be sent again.
    let (status, first) = react(&srv, &token, &room, &target, "a1", "👍").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, body) = react(&srv, &token, &room, &target, "a2", "👍").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(errcode(&body), "M_DUPLICATE_ANNOTATION");
    let (status, _) = react(&srv, &token, &room, &target, "a3", "👎").await;
    assert_eq!(status, StatusCode::OK, "another key is fine");
    redact(
        &srv,
        &token,
        &room,
        first["event_id"].as_str().unwrap(),
        "r1",
    )
    .await;
    let (status, body) = react(&srv, &token, &room, &target, "a4", "👍").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A thread cannot start at an event that has a relation itself.
    let (status, body) = send_as(
        &srv,
        &token,
        &room,
        "m.room.message",
        "th",
        json!({"msgtype": "m.text", "body": "nested",
               "m.relates_to": {"rel_type": "m.thread", "event_id": refs[0]}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(errcode(&body), "M_UNKNOWN");

    // Redacting a reference removes it from the aggregation.
    redact(&srv, &token, &room, &refs[0], "r2").await;
    let (_, shown) = event(&srv, &token, &room, &target).await;
    assert_eq!(
        shown["unsigned"]["m.relations"]["m.reference"],
        json!({"chunk": [{"event_id": refs[1]}]})
    );
}

async fn threads(srv: &TestServer, token: &str, room: &str, query: &str) -> (StatusCode, Value) {
    srv.get(
        &format!("/_matrix/client/v1/rooms/{}/threads?{query}", enc(room)),
        Some(token),
    )
    .await
}

#[tokio::test]
async fn thread_list_orders_by_latest_activity() {
    let srv = TestServer::start().await;
    let (_, alice_token, _) = srv.register("alice", "pw").await;
    let (_, bob_token, _) = srv.register("bob", "pw").await;
    let (_, carol_token, _) = srv.register("carol", "pw").await;
    let room = create_room(&srv, &alice_token, json!({"preset": "public_chat"})).await;
    join(&srv, &bob_token, &room).await;
    let a = text(&srv, &alice_token, &room, "a", "thread a").await;
    let b = text(&srv, &alice_token, &room, "b", "thread b").await;
    let c = text(&srv, &alice_token, &room, "c", "thread c").await;
    let d = text(&srv, &bob_token, &room, "d", "thread d").await;
    text(&srv, &alice_token, &room, "plain", "no thread").await;
    reply_in_thread(&srv, &alice_token, &room, &a, "a1").await;
    let b1 = reply_in_thread(&srv, &bob_token, &room, &b, "b1").await;
    reply_in_thread(&srv, &alice_token, &room, &c, "c1").await;
    let a2 = reply_in_thread(&srv, &alice_token, &room, &a, "a2").await;
    reply_in_thread(&srv, &alice_token, &room, &d, "d1").await;

    let (status, body) = threads(&srv, &alice_token, &room, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        ids(&body, "chunk"),
        vec![d.clone(), a.clone(), c.clone(), b.clone()]
    );
    assert!(body.get("next_batch").is_none());
    let summary = &body["chunk"][1]["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(summary["count"], 2);
    assert_eq!(summary["latest_event"]["event_id"], a2.as_str());

    // Bob took part in b (a reply) and d (the root).
    let (_, mine) = threads(&srv, &bob_token, &room, "include=participated").await;
    assert_eq!(ids(&mine, "chunk"), vec![d.clone(), b.clone()]);

    // One per page, without gaps or repeats.
    let mut seen = Vec::new();
    let mut from = String::new();
    for _ in 0..10 {
        let (status, page) = threads(&srv, &alice_token, &room, &format!("limit=1{from}")).await;
        assert_eq!(status, StatusCode::OK);
        seen.extend(ids(&page, "chunk"));
        match page["next_batch"].as_str() {
            Some(next) => from = format!("&from={next}"),
            None => break,
        }
    }
    assert_eq!(seen, vec![d.clone(), a.clone(), c.clone(), b.clone()]);

    // A thread whose only reply is redacted is no thread any more.
    redact(&srv, &bob_token, &room, &b1, "r").await;
    let (_, body) = threads(&srv, &alice_token, &room, "").await;
    assert_eq!(ids(&body, "chunk"), vec![d.clone(), a.clone(), c.clone()]);
    let (_, root_b) = event(&srv, &alice_token, &room, &b).await;
    assert!(root_b["unsigned"].get("m.relations").is_none(), "{root_b}");

    // Redacting a thread's latest reply moves it back to its previous activity.
    redact(&srv, &alice_token, &room, &a2, "r2").await;
    let (_, body) = threads(&srv, &alice_token, &room, "").await;
    assert_eq!(ids(&body, "chunk"), vec![d.clone(), c.clone(), a.clone()]);

    // Errors: a user who cannot read the room, a bad token, an unknown room.
    let (status, body) = threads(&srv, &carol_token, &room, "").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = threads(&srv, &alice_token, &room, "from=x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(errcode(&body), "M_INVALID_PARAM");
    let (status, _) = threads(&srv, &alice_token, "!nope:localhost", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn context(
    srv: &TestServer,
    token: &str,
    room: &str,
    event: &str,
    query: &str,
) -> (StatusCode, Value) {
    srv.get(
        &format!(
            "/_matrix/client/v3/rooms/{}/context/{}?{query}",
            enc(room),
            enc(event)
        ),
        Some(token),
    )
    .await
}

#[tokio::test]
async fn context_returns_neighbours_tokens_and_state() {
    let srv = TestServer::start().await;
    let (alice, alice_token, _) = srv.register("alice", "pw").await;
    let (bob, bob_token, _) = srv.register("bob", "pw").await;
    let (_, carol_token, _) = srv.register("carol", "pw").await;
    let room = create_room(
        &srv,
        &alice_token,
        json!({"preset": "public_chat", "name": "Context",
               "initial_state": [{"type": "m.room.history_visibility",
                                  "content": {"history_visibility": "joined"}}]}),
    )
    .await;
    let hidden = text(&srv, &alice_token, &room, "h", "before bob").await;
    join(&srv, &bob_token, &room).await;
    let mut sent = Vec::new();
    for i in 0..10 {
        let token = if i % 3 == 0 { &bob_token } else { &alice_token };
        sent.push(
            text(
                &srv,
                token,
                &room,
                &format!("m{i}"),
                &format!("message {i}"),
            )
            .await,
        );
    }
    let reply = reply_in_thread(&srv, &alice_token, &room, &sent[5], "in thread").await;

    let (status, body) = context(&srv, &alice_token, &room, &sent[5], "limit=4").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["event"]["event_id"], sent[5].as_str());
    assert_eq!(
        body["event"]["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"],
        reply.as_str(),
        "the event carries its bundled aggregations"
    );
    assert_eq!(
        ids(&body, "events_before"),
        vec![sent[4].clone(), sent[3].clone()]
    );
    assert_eq!(
        ids(&body, "events_after"),
        vec![sent[6].clone(), sent[7].clone()]
    );
    let state = body["state"].as_array().unwrap();
    assert!(state.iter().any(|e| e["type"] == "m.room.create"));
    assert!(state
        .iter()
        .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Context"));
    assert!(state
        .iter()
        .any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.as_str()));

    // `start` and `end` continue with `/messages` without gaps.
    let (_, back) = srv
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=2&from={}",
                enc(&room),
                body["start"].as_str().unwrap()
            ),
            Some(&alice_token),
        )
        .await;
    assert_eq!(ids(&back, "chunk"), vec![sent[2].clone(), sent[1].clone()]);
    let (_, forward) = srv
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=f&limit=2&from={}",
                enc(&room),
                body["end"].as_str().unwrap()
            ),
            Some(&alice_token),
        )
        .await;
    assert_eq!(
        ids(&forward, "chunk"),
        vec![sent[8].clone(), sent[9].clone()]
    );

    // A filter applies to the context and the state, not to the event; lazy loading keeps
    // only the members of the senders.
    let filter = json!({"senders": [alice], "lazy_load_members": true});
    let (status, body) = context(
        &srv,
        &alice_token,
        &room,
        &sent[3],
        &format!("limit=4&filter={}", enc(&filter.to_string())),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["event"]["sender"], bob.as_str());
    assert_eq!(
        ids(&body, "events_before"),
        vec![sent[2].clone(), sent[1].clone()]
    );
    assert_eq!(
        ids(&body, "events_after"),
        vec![sent[4].clone(), sent[5].clone()]
    );
    let members: HashSet<&str> = body["state"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    assert_eq!(members, HashSet::from([alice.as_str()]), "{body}");

    // Lazy loading alone: the member events of the returned events' senders only.
    let filter = json!({"lazy_load_members": true});
    let (_, body) = context(
        &srv,
        &alice_token,
        &room,
        &sent[1],
        &format!("limit=0&filter={}", enc(&filter.to_string())),
    )
    .await;
    let members: Vec<&str> = body["state"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    assert_eq!(members, vec![alice.as_str()], "{body}");
    assert!(body["state"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.create"));

    // limit=0: just the event. The last event of the room has nothing after it.
    let (_, body) = context(&srv, &alice_token, &room, &sent[0], "limit=0").await;
    assert_eq!(body["event"]["event_id"], sent[0].as_str());
    assert!(body.get("events_before").is_none_or(|e| e == &json!([])));
    assert!(body.get("events_after").is_none_or(|e| e == &json!([])));
    let (_, body) = context(&srv, &alice_token, &room, &reply, "").await;
    assert!(body.get("events_after").is_none_or(|e| e == &json!([])));
    assert_eq!(ids(&body, "events_before").len(), 5);

    // Bob joined after `hidden`: 404, and his context stops at his join.
    let (status, body) = context(&srv, &bob_token, &room, &hidden, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(errcode(&body), "M_NOT_FOUND");
    let (_, body) = context(&srv, &bob_token, &room, &sent[0], "limit=20").await;
    assert!(!ids(&body, "events_before").contains(&hidden));
    // Not in the room at all, unknown events.
    let (status, _) = context(&srv, &carol_token, &room, &sent[0], "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = context(&srv, &alice_token, &room, "$unknown", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
