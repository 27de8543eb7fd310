//! `/sync`: initial and incremental sync, long-polling, sections, lazy loading, restarts.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, TestServer};

async fn sync(srv: &TestServer, token: &str, query: &str) -> Value {
    let (status, body) = srv
        .get(&format!("/_matrix/client/v3/sync?{query}"), Some(token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["next_batch"].is_string(), "{body}");
    body
}

async fn send(srv: &TestServer, token: &str, room: &str, txn: &str, text: &str) -> String {
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
            Some(token),
            json!({"msgtype": "m.text", "body": text}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

fn timeline_ids(body: &Value, room: &str) -> Vec<String> {
    body["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["event_id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn bodies(body: &Value, room: &str) -> Vec<String> {
    body["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn initial_sync_has_joined_room_with_state_and_timeline() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &alice, json!({"name": "Kitchen"})).await;
    send(&srv, &alice, &room, "1", "hello").await;
    let body = sync(&srv, &alice, "").await;
    let joined = &body["rooms"]["join"][&room];
    assert_eq!(bodies(&body, &room), vec!["hello"]);
    let state = joined["state"]["events"].as_array().unwrap();
    let timeline = joined["timeline"]["events"].as_array().unwrap();
    let all: Vec<&Value> = state.iter().chain(timeline.iter()).collect();
    assert!(
        all.iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Kitchen"),
        "{joined}"
    );
    assert!(all.iter().any(|e| e["type"] == "m.room.create"));
    assert_eq!(joined["summary"]["m.joined_member_count"], 1);
    // An initial sync carries the user's push rules as global account data (spec: push
    // rules are account data of type `m.push_rules`).
    let account_data = body["account_data"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("account_data.events in {body}"));
    let rules = account_data
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .unwrap_or_else(|| panic!("m.push_rules in {account_data:?}"));
    assert!(rules["content"]["global"]["override"].is_array(), "{rules}");
    // No event is both in state and timeline.
    for e in timeline {
        assert!(!state.iter().any(|s| s["event_id"] == e["event_id"]));
    }
    let _ = alice_id;
}

#[tokio::test]
async fn incremental_syncs_have_no_gap_or_duplicate_while_others_send() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    srv.post(
        &format!("/_matrix/client/v3/join/{room}"),
        Some(&bob),
        json!({}),
    )
    .await;
    let first = sync(&srv, &alice, "").await;
    let mut since = first["next_batch"].as_str().unwrap().to_owned();
    let mut seen = Vec::new();
    let mut sent = Vec::new();
    let filter = enc(r#"{"room":{"timeline":{"limit":50}}}"#);
    for round in 0..3 {
        for i in 0..5 {
            sent.push(
                send(
                    &srv,
                    &bob,
                    &room,
                    &format!("r{round}m{i}"),
                    &format!("{round}/{i}"),
                )
                .await,
            );
        }
        let body = sync(&srv, &alice, &format!("since={since}&filter={filter}")).await;
        assert_eq!(body["rooms"]["join"][&room]["timeline"]["limited"], false);
        seen.extend(timeline_ids(&body, &room));
        since = body["next_batch"].as_str().unwrap().to_owned();
    }
    assert_eq!(seen, sent, "every message exactly once, in order");
    // Nothing new: an immediate (timeout=0) sync is empty for the room.
    let body = sync(&srv, &alice, &format!("since={since}&timeout=0")).await;
    assert!(timeline_ids(&body, &room).is_empty());
}

#[tokio::test]
async fn long_poll_is_woken_by_a_message() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    srv.post(
        &format!("/_matrix/client/v3/join/{room}"),
        Some(&bob),
        json!({}),
    )
    .await;
    let since = sync(&srv, &alice, "").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    let url = format!(
        "{}/_matrix/client/v3/sync?since={since}&timeout=30000",
        srv.base
    );
    let http = srv.http.clone();
    let alice_token = alice.clone();
    let poll = tokio::spawn(async move {
        let response = http.get(url).bearer_auth(alice_token).send().await.unwrap();
        let body: Value = response.json().await.unwrap();
        (Instant::now(), body)
    });
    // Let the long-poll start waiting, then send.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent_at = Instant::now();
    let event_id = send(&srv, &bob, &room, "wake", "wake up").await;
    let (returned_at, body) = tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .expect("sync returned")
        .unwrap();
    let latency = returned_at.duration_since(sent_at);
    println!("long-poll delivery latency: {latency:?}");
    assert!(
        latency < Duration::from_secs(5),
        "woken by the notifier, not the 30 s timeout: {latency:?}"
    );
    assert_eq!(timeline_ids(&body, &room), vec![event_id]);
}

#[tokio::test]
async fn limited_timeline_has_a_working_prev_batch() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &alice, json!({})).await;
    let since = sync(&srv, &alice, "").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut sent = Vec::new();
    for i in 0..25 {
        sent.push(send(&srv, &alice, &room, &format!("m{i}"), &format!("m{i}")).await);
    }
    let filter = enc(r#"{"room":{"timeline":{"limit":10}}}"#);
    let body = sync(&srv, &alice, &format!("since={since}&filter={filter}")).await;
    let timeline = &body["rooms"]["join"][&room]["timeline"];
    assert_eq!(timeline["limited"], true);
    assert_eq!(timeline_ids(&body, &room), sent[15..].to_vec());
    let prev = timeline["prev_batch"].as_str().unwrap();
    let (status, page) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&from={prev}&limit=15"),
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let older: Vec<String> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = sent[..15].iter().rev().cloned().collect();
    assert_eq!(
        older, expected,
        "prev_batch continues exactly where the timeline starts"
    );
}

#[tokio::test]
async fn invite_leave_and_ban_sections() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"name": "Secret"})).await;
    let since = sync(&srv, &bob, "").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    srv.post(
        &format!("/_matrix/client/v3/rooms/{room}/invite"),
        Some(&alice),
        json!({"user_id": bob_id}),
    )
    .await;
    let body = sync(&srv, &bob, &format!("since={since}")).await;
    let invite = &body["rooms"]["invite"][&room]["invite_state"]["events"];
    let events = invite.as_array().expect("invite section");
    assert!(events
        .iter()
        .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Secret"));
    assert!(events.iter().any(|e| e["type"] == "m.room.member"
        && e["state_key"] == bob_id.as_str()
        && e["content"]["membership"] == "invite"));
    // The inviter's member event (MSC4319): an unnamed room shows under the inviter's name.
    assert!(
        events.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == alice_id.as_str()
            && e["content"]["membership"] == "join"),
        "{invite}"
    );
    let since = body["next_batch"].as_str().unwrap().to_owned();

    srv.post(
        &format!("/_matrix/client/v3/rooms/{room}/join"),
        Some(&bob),
        json!({}),
    )
    .await;
    let body = sync(&srv, &bob, &format!("since={since}")).await;
    assert!(
        body["rooms"]["join"][&room].is_object(),
        "joined room appears in join: {body}"
    );
    let since = body["next_batch"].as_str().unwrap().to_owned();

    srv.post(
        &format!("/_matrix/client/v3/rooms/{room}/ban"),
        Some(&alice),
        json!({"user_id": bob_id, "reason": "test"}),
    )
    .await;
    let body = sync(&srv, &bob, &format!("since={since}")).await;
    let left = &body["rooms"]["leave"][&room];
    let events = left["timeline"]["events"]
        .as_array()
        .expect("leave section");
    let last = events.last().unwrap();
    assert_eq!(last["type"], "m.room.member");
    assert_eq!(last["content"]["membership"], "ban");
    assert!(body["rooms"]["join"].get(&room).is_none());
}

#[tokio::test]
async fn account_data_arrives_in_sync() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let since = sync(&srv, &alice, "").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    srv.put(
        &format!("/_matrix/client/v3/user/{alice_id}/account_data/org.example.pref"),
        Some(&alice),
        json!({"theme": "dark"}),
    )
    .await;
    let body = sync(&srv, &alice, &format!("since={since}")).await;
    let events = body["account_data"]["events"]
        .as_array()
        .expect("account data");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "org.example.pref" && e["content"]["theme"] == "dark"),
        "{body}"
    );
    let since = body["next_batch"].as_str().unwrap().to_owned();
    let body = sync(&srv, &alice, &format!("since={since}")).await;
    assert!(body.get("account_data").is_none(), "delivered once: {body}");
}

#[tokio::test]
async fn lazy_loading_members_only_sends_timeline_senders() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    // Named, so the summary needs no heroes (whose member events would come too).
    let room = create_room(&srv, &alice, json!({"preset": "public_chat", "name": "N"})).await;
    let mut others = Vec::new();
    for i in 0..4 {
        let (id, token, _) = srv.register(&format!("u{i}"), "pw").await;
        srv.post(
            &format!("/_matrix/client/v3/join/{room}"),
            Some(&token),
            json!({}),
        )
        .await;
        others.push((id, token));
    }
    for i in 0..12 {
        send(&srv, &alice, &room, &format!("a{i}"), "filler").await;
    }
    send(&srv, &others[2].1, &room, "u2", "from u2").await;
    let filter = enc(r#"{"room":{"timeline":{"limit":5},"state":{"lazy_load_members":true}}}"#);
    let body = sync(&srv, &alice, &format!("filter={filter}")).await;
    let state = body["rooms"]["join"][&room]["state"]["events"]
        .as_array()
        .unwrap();
    let members: Vec<&str> = state
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    assert!(
        members.contains(&others[2].0.as_str()),
        "sender's member event is included: {members:?}"
    );
    assert!(
        members.contains(&alice_id.as_str()),
        "own member event is included"
    );
    assert!(
        !members.contains(&others[0].0.as_str()),
        "non-senders are lazy: {members:?}"
    );
    // The summary still counts everyone.
    assert_eq!(
        body["rooms"]["join"][&room]["summary"]["m.joined_member_count"],
        5
    );
}

#[tokio::test]
async fn sync_token_survives_restart() {
    let mut srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &alice, json!({})).await;
    let before = send(&srv, &alice, &room, "1", "before restart").await;
    let since = sync(&srv, &alice, "").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    srv.restart().await;
    let after = send(&srv, &alice, &room, "2", "after restart").await;
    let body = sync(&srv, &alice, &format!("since={since}")).await;
    let ids = timeline_ids(&body, &room);
    assert_eq!(ids, vec![after], "no gap, and {before} is not repeated");
}

#[tokio::test]
async fn bad_sync_parameters_are_refused() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (status, _) = srv
        .get("/_matrix/client/v3/sync?since=abc", Some(&alice))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = srv
        .get("/_matrix/client/v3/sync?filter=999", Some(&alice))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = srv
        .get("/_matrix/client/v3/sync?timeout=soon", Some(&alice))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = srv.get("/_matrix/client/v3/sync", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sync_timeline_carries_bundled_thread_summaries() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &alice, json!({})).await;
    let root = send(&srv, &alice, &room, "root", "thread root").await;
    let (status, _) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/reply"),
            Some(&alice),
            json!({"msgtype": "m.text", "body": "in thread", "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let body = sync(&srv, &alice, "").await;
    let events = body["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap();
    let root_event = events
        .iter()
        .find(|e| e["event_id"] == root.as_str())
        .expect("root in timeline");
    let thread = &root_event["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(thread["count"], 1, "{root_event}");
    assert_eq!(thread["current_user_participated"], true);
}

#[tokio::test]
async fn push_rule_changes_reach_incremental_sync() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let since = sync(&srv, &alice, "").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = sync(&srv, &alice, &format!("since={since}")).await;
    assert!(
        body.get("account_data").is_none(),
        "unchanged rules are not resent"
    );
    let (status, _) = srv
        .put(
            "/_matrix/client/v3/pushrules/global/content/cake",
            Some(&alice),
            json!({"pattern": "cake", "actions": ["notify"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let body = sync(&srv, &alice, &format!("since={since}")).await;
    let events = body["account_data"]["events"]
        .as_array()
        .expect("account data");
    let rules = events
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .expect("m.push_rules");
    let content = rules["content"]["global"]["content"].as_array().unwrap();
    assert!(content.iter().any(|r| r["rule_id"] == "cake"), "{rules}");
}

#[tokio::test]
async fn clients_that_disconnect_mid_send_never_cause_gaps() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    srv.post(
        &format!("/_matrix/client/v3/join/{room}"),
        Some(&bob),
        json!({}),
    )
    .await;
    let mut since = sync(&srv, &bob, "").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let filter = enc(r#"{"room":{"timeline":{"limit":100}}}"#);
    let mut seen = std::collections::HashSet::new();

    for round in 0..8u64 {
        // Five sends whose clients hang up after a few milliseconds, some before the server
        // has answered: the handler is dropped while its write may still be in flight.
        let mut sends = Vec::new();
        for i in 0..5u64 {
            let url = format!(
                "{}/_matrix/client/v3/rooms/{room}/send/m.room.message/d{round}-{i}",
                srv.base
            );
            let request = srv
                .http
                .put(url)
                .bearer_auth(&alice)
                .json(&json!({"msgtype": "m.text", "body": "x"}));
            let task = tokio::spawn(async move { request.send().await });
            sends.push((task, (round + i) % 4));
        }
        for (task, delay_ms) in sends {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            task.abort();
        }
        let body = sync(&srv, &bob, &format!("since={since}&filter={filter}")).await;
        seen.extend(timeline_ids(&body, &room));
        since = body["next_batch"].as_str().unwrap().to_owned();
    }
    // A normal send still works in the room (no stale room state after the aborted ones).
    let last = send(&srv, &alice, &room, "after", "after the hang-ups").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains(&last) && Instant::now() < deadline {
        let body = sync(
            &srv,
            &bob,
            &format!("since={since}&filter={filter}&timeout=1000"),
        )
        .await;
        seen.extend(timeline_ids(&body, &room));
        since = body["next_batch"].as_str().unwrap().to_owned();
    }
    // Every message that was stored reached Bob's incremental syncs.
    let (_, page) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1000"),
            Some(&alice),
        )
        .await;
    let stored: Vec<String> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    let missed: Vec<&String> = stored.iter().filter(|id| !seen.contains(*id)).collect();
    assert!(
        missed.is_empty(),
        "{} of {} stored messages never reached incremental sync",
        missed.len(),
        stored.len()
    );
}

#[tokio::test]
async fn sync_tokens_work_as_pagination_tokens() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &alice, json!({})).await;
    let before = send(&srv, &alice, &room, "1", "before the token").await;
    let token = sync(&srv, &alice, "").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        token.contains('_'),
        "sync tokens carry the typing serial: {token}"
    );
    let after = send(&srv, &alice, &room, "2", "after the token").await;

    let ids = |page: &Value| -> Vec<String> {
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, back) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&from={token}&limit=3"),
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{back}");
    assert_eq!(
        ids(&back).first(),
        Some(&before),
        "backwards from a sync token starts at the last event the client has"
    );
    let (_, forward) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&from={token}"),
            Some(&alice),
        )
        .await;
    assert_eq!(
        ids(&forward),
        vec![after],
        "forwards from a sync token gives what came after it"
    );
    let (status, members) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/members?at={token}"),
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{members}");
    assert_eq!(members["chunk"].as_array().unwrap().len(), 1);
    let (status, _) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&from=12_x"),
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn changing_your_own_member_event_is_not_a_rejoin() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &alice, json!({})).await;
    for i in 0..5 {
        send(&srv, &alice, &room, &format!("m{i}"), "old news").await;
    }
    let since = sync(&srv, &alice, "").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{alice_id}"),
            Some(&alice),
            json!({"membership": "join", "displayname": "Alice in this room"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let body = sync(&srv, &alice, &format!("since={since}")).await;
    let timeline = &body["rooms"]["join"][&room]["timeline"];
    let events = timeline["events"].as_array().unwrap();
    assert_eq!(
        events.len(),
        1,
        "only the new member event, not the room again: {timeline}"
    );
    assert_eq!(events[0]["content"]["displayname"], "Alice in this room");
    assert_eq!(timeline["limited"], false);
}
