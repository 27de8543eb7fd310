//! Sliding sync extensions: to-device, e2ee, account data, receipts, typing, and their
//! `lists` / `rooms` scoping.

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{pos, send, ss};
use crate::{
    common::{create_room, enc, join, TestServer},
    e2ee::Dev,
};

fn one_list(extensions: Value) -> Value {
    json!({
        "lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 1}},
        "extensions": extensions,
    })
}

#[tokio::test]
async fn to_device_messages_are_acknowledged_by_their_own_token() {
    let srv = TestServer::start().await;
    let alice = Dev::register(&srv, "alice").await;
    let bob = Dev::register(&srv, "bob").await;
    let request = |since: Option<&str>| {
        let mut to_device = json!({"enabled": true});
        if let Some(since) = since {
            to_device["since"] = json!(since);
        }
        one_list(json!({ "to_device": to_device }))
    };
    let first = ss(&srv, &bob.token, None, request(None)).await;
    let since = first["extensions"]["to_device"]["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let messages = json!({"messages": {bob.user.clone(): {bob.device.clone(): {"secret": "one"}}}});
    let (status, _) = srv
        .put(
            "/_matrix/client/v3/sendToDevice/org.example.test/t1",
            Some(&alice.token),
            messages,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let got = ss(&srv, &bob.token, Some(&pos(&first)), request(Some(&since))).await;
    let events = got["extensions"]["to_device"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{got}");
    assert_eq!(events[0]["content"]["secret"], "one");
    // Not acknowledged (same `since`): sent again; acknowledged with the new token: gone.
    let again = ss(&srv, &bob.token, Some(&pos(&got)), request(Some(&since))).await;
    assert_eq!(
        again["extensions"]["to_device"]["events"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let next = again["extensions"]["to_device"]["next_batch"]
        .as_str()
        .unwrap();
    let after = ss(&srv, &bob.token, Some(&pos(&again)), request(Some(next))).await;
    let events = &after["extensions"]["to_device"]["events"];
    assert!(events.as_array().is_none_or(|e| e.is_empty()), "{after}");
}

#[tokio::test]
async fn e2ee_reports_device_lists_and_key_counts() {
    let srv = TestServer::start().await;
    let alice = Dev::register(&srv, "alice").await;
    let bob = Dev::register(&srv, "bob").await;
    let room = create_room(&srv, &alice.token, json!({"preset": "public_chat"})).await;
    join(&srv, &bob.token, &room).await;
    let request = one_list(json!({"e2ee": {"enabled": true}}));
    let first = ss(&srv, &alice.token, None, request.clone()).await;
    assert!(first["extensions"]["e2ee"]["device_unused_fallback_key_types"].is_array());

    bob.upload_device_keys(&srv).await;
    let (status, _) = bob
        .upload(
            &srv,
            json!({"one_time_keys": {"signed_curve25519:AAAAAQ": bob.otk(1)}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let next = ss(&srv, &alice.token, Some(&pos(&first)), request.clone()).await;
    let changed = next["extensions"]["e2ee"]["device_lists"]["changed"]
        .as_array()
        .unwrap_or_else(|| panic!("device_lists in {next}"));
    assert!(changed.iter().any(|u| u == bob.user.as_str()), "{next}");
    let bobs = ss(&srv, &bob.token, None, request).await;
    assert_eq!(
        bobs["extensions"]["e2ee"]["device_one_time_keys_count"]["signed_curve25519"], 1,
        "{bobs}"
    );
}

#[tokio::test]
async fn account_data_global_and_per_room() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &alice, json!({})).await;
    let (status, _) = srv
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{}/tags/u.work",
                enc(&alice_id),
                enc(&room)
            ),
            Some(&alice),
            json!({"order": 0.5}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let request = one_list(json!({"account_data": {"enabled": true}}));
    let first = ss(&srv, &alice, None, request.clone()).await;
    let ext = &first["extensions"]["account_data"];
    let global = ext["global"].as_array().unwrap();
    assert!(global.iter().any(|e| e["type"] == "m.push_rules"), "{ext}");
    let tags = &ext["rooms"][&room];
    assert!(
        tags.as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.tag" && e["content"]["tags"]["u.work"]["order"] == 0.5),
        "{ext}"
    );

    let (status, _) = srv
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/org.example.pref",
                enc(&alice_id)
            ),
            Some(&alice),
            json!({"theme": "dark"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let next = ss(&srv, &alice, Some(&pos(&first)), request.clone()).await;
    let global = next["extensions"]["account_data"]["global"]
        .as_array()
        .unwrap();
    assert_eq!(global.len(), 1, "only what changed: {next}");
    assert_eq!(global[0]["content"]["theme"], "dark");
    assert!(next["extensions"]["account_data"].get("rooms").is_none());

    // Scoped to no list: no room account data.
    let unscoped = one_list(json!({"account_data": {"enabled": true, "lists": []}}));
    let fresh = ss(&srv, &alice, None, unscoped).await;
    assert!(
        fresh["extensions"]["account_data"].get("rooms").is_none(),
        "{fresh}"
    );
}

#[tokio::test]
async fn receipts_and_typing_of_rooms_in_scope() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    let other = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &room).await;
    join(&srv, &bob, &other).await;
    let event = send(&srv, &alice, &room, "m1", "read me").await;
    send(&srv, &alice, &other, "m2", "elsewhere").await;
    // Only the room subscribed to is in the extensions' scope.
    let request = json!({
        "room_subscriptions": {room.clone(): {"timeline_limit": 1}},
        "extensions": {
            "receipts": {"enabled": true, "lists": []},
            "typing": {"enabled": true, "lists": []},
        },
    });
    let first = ss(&srv, &alice, None, request.clone()).await;

    for target in [&room, &other] {
        let (status, _) = srv
            .post(
                &format!(
                    "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                    enc(target),
                    enc(&event)
                ),
                Some(&bob),
                json!({}),
            )
            .await;
        // The event is in one of the rooms only; the other receipt is refused or ignored.
        let _ = status;
        let (status, _) = srv
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/typing/{}",
                    enc(target),
                    enc(&bob_id)
                ),
                Some(&bob),
                json!({"typing": true, "timeout": 30000}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let next = ss(&srv, &alice, Some(&pos(&first)), request.clone()).await;
    let receipts = &next["extensions"]["receipts"]["rooms"];
    let content = &receipts[&room]["content"][&event]["m.read"][&bob_id];
    assert!(content["ts"].is_u64(), "{next}");
    assert!(receipts.get(&other).is_none());
    let typing = &next["extensions"]["typing"]["rooms"];
    assert_eq!(
        typing[&room]["content"]["user_ids"],
        json!([bob_id]),
        "{next}"
    );
    assert!(typing.get(&other).is_none());

    // Bob stops typing: the (now empty) list is sent.
    let (status, _) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/typing/{}",
                enc(&room),
                enc(&bob_id)
            ),
            Some(&bob),
            json!({"typing": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let stopped = ss(&srv, &alice, Some(&pos(&next)), request).await;
    assert_eq!(
        stopped["extensions"]["typing"]["rooms"][&room]["content"]["user_ids"],
        json!([]),
        "{stopped}"
    );
}

#[tokio::test]
async fn room_account_data_changed_out_of_view_comes_with_the_room() {
    let srv = TestServer::start().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let older = create_room(&srv, &alice, json!({})).await;
    let newer = create_room(&srv, &alice, json!({})).await;
    let window = |end: u64| {
        json!({
            "lists": {"all": {"ranges": [[0, end]], "timeline_limit": 1}},
            "extensions": {"account_data": {"enabled": true}},
        })
    };
    let both = ss(&srv, &alice, None, window(1)).await;
    let narrow = ss(&srv, &alice, Some(&pos(&both)), window(0)).await;
    let (status, _) = srv
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{}/tags/u.later",
                enc(&alice_id),
                enc(&older)
            ),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let still_narrow = ss(&srv, &alice, Some(&pos(&narrow)), window(0)).await;
    assert!(
        still_narrow["extensions"]["account_data"]["rooms"]
            .get(&older)
            .is_none(),
        "out of view: {still_narrow}"
    );
    let wide = ss(&srv, &alice, Some(&pos(&still_narrow)), window(1)).await;
    let tags = wide["extensions"]["account_data"]["rooms"][&older]
        .as_array()
        .unwrap_or_else(|| panic!("the room's account data: {wide}"));
    assert!(
        tags.iter()
            .any(|e| e["content"]["tags"].get("u.later").is_some()),
        "{wide}"
    );
    let _ = newer;
}
