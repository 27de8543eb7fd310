//! The end-to-end-encryption fields of `/sync`: to-device delivery (exactly once, across a
//! restart), device-list changes, one-time key counts and unused fallback key types.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{common::TestServer, e2ee::Dev};

async fn sync(srv: &TestServer, token: &str, since: Option<&str>) -> Value {
    let query = since.map(|s| format!("?since={s}")).unwrap_or_default();
    let (status, body) = srv
        .get(&format!("/_matrix/client/v3/sync{query}"), Some(token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn to_device(body: &Value) -> Vec<Value> {
    body["to_device"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn to_device_messages_arrive_once_even_across_a_restart() {
    let mut srv = TestServer::start().await;
    let alice = Dev::register(&srv, "alice").await;
    let bob = Dev::register(&srv, "bob").await;
    let first = sync(&srv, &bob.token, None).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();

    let messages = json!({"messages": {bob.user.clone(): {bob.device.clone(): {"secret": "one"}}}});
    let (status, _) = srv
        .put(
            "/_matrix/client/v3/sendToDevice/org.example.test/t1",
            Some(&alice.token),
            messages,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let got = sync(&srv, &bob.token, Some(&since)).await;
    let events = to_device(&got);
    assert_eq!(events.len(), 1, "{got}");
    assert_eq!(events[0]["sender"], alice.user.as_str());
    assert_eq!(events[0]["type"], "org.example.test");
    assert_eq!(events[0]["content"]["secret"], "one");

    // The client did not acknowledge (it syncs again with the old token): redelivered.
    let again = sync(&srv, &bob.token, Some(&since)).await;
    assert_eq!(
        to_device(&again).len(),
        1,
        "unacknowledged messages are kept"
    );
    let next = again["next_batch"].as_str().unwrap().to_owned();

    srv.restart().await;
    // Syncing from the token that contained it acknowledges it: gone, also after the restart.
    let after = sync(&srv, &bob.token, Some(&next)).await;
    assert!(to_device(&after).is_empty(), "{after}");
}

#[tokio::test]
async fn device_lists_and_key_counts_in_sync() {
    let srv = TestServer::start().await;
    let alice = Dev::register(&srv, "alice").await;
    let bob = Dev::register(&srv, "bob").await;
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&alice.token),
            json!({"preset": "public_chat", "initial_state": [{"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let room = body["room_id"].as_str().unwrap().to_owned();
    srv.post(
        &format!("/_matrix/client/v3/join/{room}"),
        Some(&bob.token),
        json!({}),
    )
    .await;
    let since = sync(&srv, &alice.token, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    bob.upload_device_keys(&srv).await;
    let (status, _) = bob
        .upload(
            &srv,
            json!({"one_time_keys": {format!("signed_curve25519:{}", "AAAAAQ"): bob.otk(1)}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let body = sync(&srv, &alice.token, Some(&since)).await;
    let changed: Vec<&str> = body["device_lists"]["changed"]
        .as_array()
        .expect("device_lists")
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert!(changed.contains(&bob.user.as_str()), "{body}");

    let bob_sync = sync(&srv, &bob.token, None).await;
    assert_eq!(
        bob_sync["device_one_time_keys_count"]["signed_curve25519"], 1,
        "{bob_sync}"
    );
    assert!(bob_sync["device_unused_fallback_key_types"].is_array());
}

/// New, renamed and deleted devices (without any keys) are device-list changes for the users
/// sharing a room with their owner.
#[tokio::test]
async fn device_lists_report_new_renamed_and_deleted_devices() {
    let srv = TestServer::start().await;
    let alice = Dev::register(&srv, "alice").await;
    let bob = Dev::register(&srv, "bob").await;
    let carol = Dev::register(&srv, "carol").await;
    let room =
        crate::common::create_room(&srv, &alice.token, json!({"preset": "public_chat"})).await;
    crate::common::join(&srv, &bob.token, &room).await;
    let changed = |body: &Value| -> Vec<String> {
        body["device_lists"]["changed"]
            .as_array()
            .map(|a| a.iter().map(|u| u.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    let mut since = sync(&srv, &bob.token, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut carol_since = sync(&srv, &carol.token, None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    // Bob sees each step in his next incremental sync; Carol, who shares no room, never.
    let mut step = async |what: &str| {
        let body = sync(&srv, &bob.token, Some(&since)).await;
        assert!(changed(&body).contains(&alice.user), "{what}: {body}");
        since = body["next_batch"].as_str().unwrap().to_owned();
        let body = sync(&srv, &bob.token, Some(&since)).await;
        assert!(
            !changed(&body).contains(&alice.user),
            "{what}, again: {body}"
        );
        since = body["next_batch"].as_str().unwrap().to_owned();
        let body = sync(&srv, &carol.token, Some(&carol_since)).await;
        assert!(
            !changed(&body).contains(&alice.user),
            "{what}, carol: {body}"
        );
        carol_since = body["next_batch"].as_str().unwrap().to_owned();
    };

    let (status, login) = srv.login("alice", crate::e2ee::PW).await;
    assert_eq!(status, StatusCode::OK);
    let device = login["device_id"].as_str().unwrap().to_owned();
    step("new device").await;

    let path = format!("/_matrix/client/v3/devices/{device}");
    let (status, _) = srv
        .put(&path, Some(&alice.token), json!({"display_name": "Laptop"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    step("renamed device").await;

    let (status, challenge) = srv
        .call(
            reqwest::Method::DELETE,
            &path,
            Some(&alice.token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let session = challenge["session"].as_str().unwrap();
    let auth = TestServer::password_auth(&alice.user, crate::e2ee::PW, session);
    let (status, body) = srv
        .call(
            reqwest::Method::DELETE,
            &path,
            Some(&alice.token),
            Some(json!({ "auth": auth })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    step("deleted device").await;
}
