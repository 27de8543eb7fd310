//! Redactions over HTTP: the redact endpoint, permissions, idempotency, and what every read
//! path shows afterwards, per room version family (v1–v10 and v11+ redaction rules).

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode, join, TestServer};

async fn send(srv: &TestServer, token: &str, room: &str, txn: &str, content: Value) -> String {
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                enc(room)
            ),
            Some(token),
            content,
        )
        .await;
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

async fn redact(
    srv: &TestServer,
    token: &str,
    room: &str,
    event: &str,
    txn: &str,
    body: Value,
) -> (StatusCode, Value) {
    srv.put(
        &format!(
            "/_matrix/client/v3/rooms/{}/redact/{}/{txn}",
            enc(room),
            enc(event)
        ),
        Some(token),
        body,
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

async fn state(srv: &TestServer, token: &str, room: &str) -> Vec<Value> {
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state", enc(room)),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body.as_array().unwrap().clone()
}

fn find<'a>(state: &'a [Value], kind: &str, key: &str) -> &'a Value {
    state
        .iter()
        .find(|e| e["type"] == kind && e["state_key"] == key)
        .unwrap_or_else(|| panic!("{kind} {key:?} in state"))
}

async fn messages(srv: &TestServer, token: &str, room: &str) -> Vec<Value> {
    let (status, body) = srv
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
                enc(room)
            ),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["chunk"].as_array().unwrap().clone()
}

#[tokio::test]
async fn redacting_own_message_hides_content_everywhere_and_is_idempotent() {
    let mut srv = TestServer::start().await;
    let (alice, token, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &token, json!({})).await;
    let target = send(
        &srv,
        &token,
        &room,
        "m1",
        json!({"msgtype": "m.text", "body": "secret", "format": "org.matrix.custom.html",
               "formatted_body": "<b>secret</b>"}),
    )
    .await;

    let (status, first) = redact(
        &srv,
        &token,
        &room,
        &target,
        "r1",
        json!({"reason": "oops"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let redaction = first["event_id"].as_str().unwrap().to_owned();
    // A retransmission is the same request.
    let (status, again) = redact(
        &srv,
        &token,
        &room,
        &target,
        "r1",
        json!({"reason": "oops"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["event_id"], redaction.as_str());

    // `/event`: empty content, the redaction under `unsigned.redacted_because`.
    let (status, redacted) = event(&srv, &token, &room, &target).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(redacted["content"], json!({}), "{redacted}");
    assert_eq!(redacted["type"], "m.room.message");
    assert_eq!(redacted["sender"], alice.as_str());
    let because = &redacted["unsigned"]["redacted_because"];
    assert_eq!(because["event_id"], redaction.as_str());
    assert_eq!(because["type"], "m.room.redaction");
    assert_eq!(because["content"]["reason"], "oops");
    assert_eq!(because["redacts"], target.as_str());

    // The redaction event itself: v12 keeps `redacts` in the content and clients also see it
    // at the top level.
    let (status, redaction_event) = event(&srv, &token, &room, &redaction).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(redaction_event["content"]["redacts"], target.as_str());
    assert_eq!(redaction_event["redacts"], target.as_str());

    // `/messages`: the same redacted form, and exactly one redaction event.
    let chunk = messages(&srv, &token, &room).await;
    let in_timeline = chunk
        .iter()
        .find(|e| e["event_id"] == target.as_str())
        .unwrap();
    assert_eq!(in_timeline["content"], json!({}));
    assert_eq!(
        in_timeline["unsigned"]["redacted_because"]["event_id"],
        redaction.as_str()
    );
    assert_eq!(
        chunk
            .iter()
            .filter(|e| e["type"] == "m.room.redaction")
            .count(),
        1
    );

    // A second redaction (new transaction) is a new event; the first one stays the cause.
    let (status, second) = redact(&srv, &token, &room, &target, "r2", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_ne!(second["event_id"], redaction.as_str());
    let (_, redacted) = event(&srv, &token, &room, &target).await;
    assert_eq!(
        redacted["unsigned"]["redacted_because"]["event_id"],
        redaction.as_str()
    );

    // Durable: the stored event itself was rewritten.
    srv.restart().await;
    let (status, redacted) = event(&srv, &token, &room, &target).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(redacted["content"], json!({}));
    assert!(!redacted.to_string().contains("secret"));
}

#[tokio::test]
async fn redaction_needs_own_event_or_redact_power_level() {
    let srv = TestServer::start().await;
    let (alice, alice_token, _) = srv.register("alice", "pw").await;
    let (bob, bob_token, _) = srv.register("bob", "pw").await;
    let (_, carol_token, _) = srv.register("carol", "pw").await;
    // v10: creators are listed in the power levels, so levels can be changed for both.
    let room = create_room(
        &srv,
        &alice_token,
        json!({"preset": "public_chat", "room_version": "10"}),
    )
    .await;
    join(&srv, &bob_token, &room).await;
    let from_alice = text(&srv, &alice_token, &room, "a1", "alice's").await;
    let from_bob = text(&srv, &bob_token, &room, "b1", "bob's").await;

    // Bob (level 0, `redact` is 50) may not redact Alice's message.
    let (status, body) = redact(&srv, &bob_token, &room, &from_alice, "x1", json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(errcode(&body), "M_FORBIDDEN");
    let (_, still) = event(&srv, &alice_token, &room, &from_alice).await;
    assert_eq!(still["content"]["body"], "alice's", "nothing was applied");
    assert!(
        messages(&srv, &alice_token, &room)
            .await
            .iter()
            .all(|e| e["type"] != "m.room.redaction"),
        "a refused redaction is not stored"
    );

    // Unknown event, an event of another room, and a room the user is not in.
    let (status, body) = redact(&srv, &bob_token, &room, "$doesnotexist", "x2", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(errcode(&body), "M_NOT_FOUND");
    let other = create_room(&srv, &bob_token, json!({})).await;
    let elsewhere = text(&srv, &bob_token, &other, "o1", "elsewhere").await;
    let (status, body) = redact(&srv, &bob_token, &room, &elsewhere, "x3", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = redact(&srv, &carol_token, &room, &from_bob, "x4", json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = redact(
        &srv,
        &bob_token,
        "!unknown:localhost",
        &from_bob,
        "x5",
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // Bob may redact his own message; Alice (level 100) may redact anyone's.
    let (status, body) = redact(&srv, &bob_token, &room, &from_bob, "x6", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let from_bob_2 = text(&srv, &bob_token, &room, "b2", "bob again").await;
    let (status, body) = redact(&srv, &alice_token, &room, &from_bob_2, "y1", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, redacted) = event(&srv, &bob_token, &room, &from_bob_2).await;
    assert_eq!(redacted["content"], json!({}));

    // Lowering the `redact` level to 0 lets Bob redact others' events.
    let mut power = find(
        &state(&srv, &alice_token, &room).await,
        "m.room.power_levels",
        "",
    )["content"]
        .clone();
    power["redact"] = json!(0);
    assert_eq!(power["users"][&alice], 100);
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
                enc(&room)
            ),
            Some(&alice_token),
            power,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = redact(&srv, &bob_token, &room, &from_alice, "x7", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, redacted) = event(&srv, &alice_token, &room, &from_alice).await;
    assert_eq!(redacted["content"], json!({}));
    assert!(bob.starts_with("@bob:"));
}

#[tokio::test]
async fn redaction_sent_through_send_applies_and_is_checked_the_same_way() {
    let srv = TestServer::start().await;
    let (_, alice_token, _) = srv.register("alice", "pw").await;
    let (_, bob_token, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice_token, json!({"preset": "public_chat"})).await;
    join(&srv, &bob_token, &room).await;
    let target = text(&srv, &alice_token, &room, "a1", "to remove").await;
    let path = |txn: &str| {
        format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.redaction/{txn}",
            enc(&room)
        )
    };
    // v12: `redacts` lives in the content.
    let (status, body) = srv
        .put(&path("b1"), Some(&bob_token), json!({"redacts": target}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = srv
        .put(&path("a2"), Some(&alice_token), json!({"redacts": target}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, redacted) = event(&srv, &bob_token, &room, &target).await;
    assert_eq!(redacted["content"], json!({}));
    assert_eq!(
        redacted["unsigned"]["redacted_because"]["event_id"],
        body["event_id"]
    );
}

/// v1–v10 redaction rules against v11+: the create event keeps only `creator` (v10) or all of
/// its content (v11+); power levels lose `invite` (v10) or keep it (v11+); state entries stay.
#[tokio::test]
async fn redaction_rules_differ_between_room_version_families() {
    let srv = TestServer::start().await;
    let (alice, token, _) = srv.register("alice", "pw").await;
    for version in ["1", "6", "10", "11", "12"] {
        let v11 = matches!(version, "11" | "12");
        let room = create_room(
            &srv,
            &token,
            json!({"room_version": version, "topic": "private topic",
                   "power_level_content_override": {"invite": 30}}),
        )
        .await;
        let before = state(&srv, &token, &room).await;
        let create = find(&before, "m.room.create", "")["event_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let power = find(&before, "m.room.power_levels", "")["event_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let topic = find(&before, "m.room.topic", "")["event_id"]
            .as_str()
            .unwrap()
            .to_owned();
        for (i, id) in [&topic, &power, &create].into_iter().enumerate() {
            let (status, body) = redact(&srv, &token, &room, id, &format!("r{i}"), json!({})).await;
            assert_eq!(status, StatusCode::OK, "v{version}: {body}");
            let (status, redaction) =
                event(&srv, &token, &room, body["event_id"].as_str().unwrap()).await;
            assert_eq!(status, StatusCode::OK);
            if v11 {
                assert_eq!(redaction["content"]["redacts"], id.as_str(), "v{version}");
            } else {
                assert!(redaction["content"].get("redacts").is_none(), "v{version}");
                assert_eq!(redaction["redacts"], id.as_str(), "v{version}");
            }
        }

        // The state entries stay, with redacted content.
        let after = state(&srv, &token, &room).await;
        let topic_event = find(&after, "m.room.topic", "");
        assert_eq!(topic_event["event_id"], topic.as_str(), "v{version}");
        assert_eq!(topic_event["content"], json!({}), "v{version}");
        let (status, content) = srv
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                    enc(&room)
                ),
                Some(&token),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content, json!({}), "v{version}");

        let create_content = &find(&after, "m.room.create", "")["content"];
        let power_content = &find(&after, "m.room.power_levels", "")["content"];
        if v11 {
            assert_eq!(create_content["room_version"], version, "v{version}");
            assert_eq!(power_content["invite"], 30, "v{version}: {power_content}");
        } else {
            assert_eq!(create_content, &json!({"creator": alice}), "v{version}");
            assert!(
                power_content.get("invite").is_none(),
                "v{version}: {power_content}"
            );
        }
        // Kept by every version's rules.
        assert!(power_content["users"].is_object(), "v{version}");
        assert!(power_content.get("redact").is_some(), "v{version}");
        assert!(
            find(&after, "m.room.create", "")["unsigned"]["redacted_because"].is_object(),
            "v{version}"
        );

        // The room keeps working on the redacted state.
        text(&srv, &token, &room, "after", "still here").await;
    }
}

#[tokio::test]
async fn redaction_through_send_in_a_v10_room_moves_redacts_to_the_top_level() {
    let srv = TestServer::start().await;
    let (_, alice_token, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &alice_token, json!({"room_version": "10"})).await;
    let target = text(&srv, &alice_token, &room, "t1", "to remove").await;
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.redaction/r1",
        enc(&room)
    );
    let (status, body) = srv
        .put(
            &path,
            Some(&alice_token),
            json!({"redacts": target, "reason": "oops"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, redacted) = event(&srv, &alice_token, &room, &target).await;
    assert_eq!(redacted["content"], json!({}));
    let because = &redacted["unsigned"]["redacted_because"];
    assert_eq!(
        because["redacts"],
        target.as_str(),
        "v1-v10 carry redacts at the top level"
    );
    assert_eq!(because["content"]["reason"], "oops");
    let (status, _) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.redaction/r2",
                enc(&room)
            ),
            Some(&alice_token),
            json!({}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a redaction without redacts is refused"
    );
}
