//! `PUT /rooms/{roomId}/typing/{userId}`: `timeout` is required only when `typing` is true.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode, join, TestServer};

/// The `m.typing` user ids of `room` in Bob's sync since `since`, and the next token.
async fn typing_seen(srv: &TestServer, token: &str, room: &str, since: &str) -> (Value, String) {
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let users = body["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["type"] == "m.typing"))
        .map(|e| e["content"]["user_ids"].clone())
        .unwrap_or(Value::Null);
    (users, body["next_batch"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn typing_timeout_is_required_only_when_typing() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &room).await;
    let path = format!(
        "/_matrix/client/v3/rooms/{}/typing/{}",
        enc(&room),
        enc(&alice_id)
    );
    let (_, body) = srv
        .get("/_matrix/client/v3/sync?timeout=0", Some(&bob))
        .await;
    let since = body["next_batch"].as_str().unwrap().to_owned();

    // Typing without a timeout: a clear 400 naming the field, and nothing changes.
    let (status, body) = srv.put(&path, Some(&alice), json!({"typing": true})).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_MISSING_PARAM"),
        "{body}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("timeout"),
        "{body}"
    );
    for (bad, code) in [
        (json!({"typing": true, "timeout": -5}), "M_BAD_JSON"),
        (json!({"typing": true, "timeout": "30000"}), "M_BAD_JSON"),
        (json!({"typing": "yes", "timeout": 30000}), "M_BAD_JSON"),
        (json!({"timeout": 30000}), "M_MISSING_PARAM"),
    ] {
        let (status, body) = srv.put(&path, Some(&alice), bad.clone()).await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::BAD_REQUEST, code),
            "{bad}: {body}"
        );
    }
    let (users, since) = typing_seen(&srv, &bob, &room, &since).await;
    assert_eq!(users, Value::Null, "nothing was set");

    let (status, body) = srv
        .put(
            &path,
            Some(&alice),
            json!({"typing": true, "timeout": 30000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
    let (users, since) = typing_seen(&srv, &bob, &room, &since).await;
    assert_eq!(users, json!([alice_id]));

    // Stopping needs no timeout (and ignores one).
    let (status, body) = srv.put(&path, Some(&alice), json!({"typing": false})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (users, _) = typing_seen(&srv, &bob, &room, &since).await;
    assert_eq!(users, json!([]));
    let (status, body) = srv
        .put(
            &path,
            Some(&alice),
            json!({"typing": false, "timeout": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
