//! Filters over HTTP: upload and download, increasing per-user ids, concurrent uploads, other
//! users, unknown ids, malformed filters and persistence across a restart.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{errcode, TestServer};

fn upload(user_id: &str) -> String {
    format!("/_matrix/client/v3/user/{user_id}/filter")
}

fn download(user_id: &str, filter_id: &str) -> String {
    format!("/_matrix/client/v3/user/{user_id}/filter/{filter_id}")
}

/// The spec's example filter (filter.yaml).
fn example_filter() -> serde_json::Value {
    json!({
        "room": {
            "state": {"types": ["m.room.*"], "not_rooms": ["!726s6s6q:example.com"]},
            "timeline": {"limit": 10, "types": ["m.room.message"], "not_rooms": ["!726s6s6q:example.com"],
                         "not_senders": ["@spam:example.com"]},
            "ephemeral": {"types": ["m.receipt", "m.typing"], "not_rooms": ["!726s6s6q:example.com"],
                          "not_senders": ["@spam:example.com"]}
        },
        "presence": {"types": ["m.presence"], "not_senders": ["@alice:example.com"]},
        "event_format": "client",
        "event_fields": ["type", "content", "sender"]
    })
}

#[tokio::test]
async fn upload_and_download() {
    let srv = TestServer::start().await;
    let (user_id, token, _) = srv.register("alice", "pw").await;
    let filter = example_filter();
    let (status, body) = srv
        .post(&upload(&user_id), Some(&token), filter.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let filter_id = body["filter_id"].as_str().unwrap().to_owned();
    assert!(!filter_id.starts_with('{'));

    let (status, body) = srv.get(&download(&user_id, &filter_id), Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, filter);

    // Defaults and keys this server does not know come back as uploaded.
    let extra = json!({"event_format": "client", "org.example.extension": {"x": [1, 2]}, "room": {"include_leave": false}});
    let (_, body) = srv
        .post(&upload(&user_id), Some(&token), extra.clone())
        .await;
    let (status, got) = srv
        .get(
            &download(&user_id, body["filter_id"].as_str().unwrap()),
            Some(&token),
        )
        .await;
    assert_eq!((status, got), (StatusCode::OK, extra));

    // The empty filter is a valid filter too.
    let (status, body) = srv.post(&upload(&user_id), Some(&token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, got) = srv
        .get(
            &download(&user_id, body["filter_id"].as_str().unwrap()),
            Some(&token),
        )
        .await;
    assert_eq!((status, got), (StatusCode::OK, json!({})));
}

#[tokio::test]
async fn ids_increase_per_user_and_concurrent_uploads_get_distinct_ids() {
    let srv = TestServer::start().await;
    let (alice, a_token, _) = srv.register("alice", "pw").await;
    let (bob, b_token, _) = srv.register("bob", "pw").await;

    let mut ids = Vec::new();
    for limit in 1..=3 {
        let (_, body) = srv
            .post(
                &upload(&alice),
                Some(&a_token),
                json!({"room": {"timeline": {"limit": limit}}}),
            )
            .await;
        ids.push(body["filter_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids, ["0", "1", "2"]);
    // Bob's ids are his own.
    let (_, body) = srv.post(&upload(&bob), Some(&b_token), json!({})).await;
    assert_eq!(body["filter_id"], "0");

    // Concurrent uploads never share an id, and each id holds its own filter.
    let uploads = (0..8u64).map(|i| {
        let (path, token) = (upload(&alice), a_token.clone());
        let srv = &srv;
        async move {
            let (status, body) = srv
                .post(
                    &path,
                    Some(&token),
                    json!({"room": {"timeline": {"limit": 100 + i}}}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            (i, body["filter_id"].as_str().unwrap().to_owned())
        }
    });
    let results = futures_util::future::join_all(uploads).await;
    let mut seen: Vec<u64> = results.iter().map(|(_, id)| id.parse().unwrap()).collect();
    seen.sort();
    assert_eq!(seen, (3..11).collect::<Vec<u64>>());
    for (i, id) in results {
        let (_, body) = srv.get(&download(&alice, &id), Some(&a_token)).await;
        assert_eq!(body["room"]["timeline"]["limit"], 100 + i);
    }
}

#[tokio::test]
async fn other_users_filters_are_forbidden() {
    let srv = TestServer::start().await;
    let (carol, c_token, _) = srv.register("carol", "pw").await;
    let (_, d_token, _) = srv.register("dave", "pw").await;
    let (_, body) = srv
        .post(
            &upload(&carol),
            Some(&c_token),
            json!({"event_fields": ["type"]}),
        )
        .await;
    let id = body["filter_id"].as_str().unwrap().to_owned();

    let (status, body) = srv.get(&download(&carol, &id), Some(&d_token)).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    let (status, body) = srv.post(&upload(&carol), Some(&d_token), json!({})).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    let (status, body) = srv.get(&download(&carol, &id), None).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN")
    );
    // Carol's upload by Dave did not take an id.
    let (_, body) = srv.post(&upload(&carol), Some(&c_token), json!({})).await;
    assert_eq!(body["filter_id"], "1");
}

#[tokio::test]
async fn unknown_filter_ids_are_not_found() {
    let srv = TestServer::start().await;
    let (user_id, token, _) = srv.register("erin", "pw").await;
    srv.post(&upload(&user_id), Some(&token), json!({})).await;
    for id in [
        "1",
        "999",
        "00",
        "abc",
        "-1",
        "%7B%7D",
        "18446744073709551616",
    ] {
        let (status, body) = srv.get(&download(&user_id, id), Some(&token)).await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::NOT_FOUND, "M_NOT_FOUND"),
            "{id}"
        );
    }
}

#[tokio::test]
async fn malformed_filters_are_rejected() {
    let srv = TestServer::start().await;
    let (user_id, token, _) = srv.register("finn", "pw").await;
    for bad in [
        json!({"room": {"timeline": {"limit": "ten"}}}),
        json!({"event_format": 5}),
        json!([]),
    ] {
        let (status, body) = srv.post(&upload(&user_id), Some(&token), bad.clone()).await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::BAD_REQUEST, "M_BAD_JSON"),
            "{bad}"
        );
    }
    let response = srv
        .raw(
            reqwest::Method::POST,
            &upload(&user_id),
            Some(&token),
            Some("{\"room\": "),
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(errcode(&body), "M_NOT_JSON");
    // An invalid user id in the path.
    let (status, body) = srv.post(&upload("alice"), Some(&token), json!({})).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );
    // No id was used up by the refused uploads.
    let (_, body) = srv.post(&upload(&user_id), Some(&token), json!({})).await;
    assert_eq!(body["filter_id"], "0");
}

#[tokio::test]
async fn filters_survive_restart() {
    let mut srv = TestServer::start().await;
    let (user_id, token, _) = srv.register("gus", "pw").await;
    let (_, body) = srv
        .post(&upload(&user_id), Some(&token), example_filter())
        .await;
    let id = body["filter_id"].as_str().unwrap().to_owned();
    srv.restart().await;
    assert_eq!(
        srv.get(&download(&user_id, &id), Some(&token)).await,
        (StatusCode::OK, example_filter())
    );
    // Allocation continues after the highest stored id.
    let (_, body) = srv.post(&upload(&user_id), Some(&token), json!({})).await;
    assert_eq!(body["filter_id"], "1");
}

/// Values outside what the spec allows are refused with 400 `M_BAD_JSON`, both on upload and
/// inline in `/sync`; valid values and unknown keys are still accepted.
#[tokio::test]
async fn filters_with_invalid_values_are_rejected_on_upload_and_in_sync() {
    let srv = TestServer::start().await;
    let (user_id, token, _) = srv.register("gus", "pw").await;
    let invalid = [
        json!({"event_format": "xml"}),
        json!({"event_format": "Client"}),
        json!({"room": {"timeline": {"limit": -1}}}),
        json!({"room": {"timeline": {"limit": 2.5}}}),
        json!({"presence": {"limit": "10"}}),
        json!({"account_data": {"types": "m.push_rules"}}),
        json!({"room": {"state": {"types": ["m.room.name", 1]}}}),
        json!({"room": {"rooms": "!a:localhost"}}),
        json!({"room": {"include_leave": "yes"}}),
        json!({"room": {"timeline": {"lazy_load_members": 1}}}),
        json!({"room": {"ephemeral": []}}),
        json!({"event_fields": [1]}),
        json!({"room": 7}),
    ];
    for bad in invalid {
        let (status, body) = srv.post(&upload(&user_id), Some(&token), bad.clone()).await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::BAD_REQUEST, "M_BAD_JSON"),
            "upload {bad}: {body}"
        );
        let inline = crate::common::enc(&bad.to_string());
        let (status, body) = srv
            .get(
                &format!("/_matrix/client/v3/sync?timeout=0&filter={inline}"),
                Some(&token),
            )
            .await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::BAD_REQUEST, "M_BAD_JSON"),
            "sync {bad}: {body}"
        );
    }
    let valid = json!({
        "event_format": "federation",
        "event_fields": ["content.body"],
        "presence": {"limit": 0, "types": ["m.presence"]},
        "room": {"include_leave": true, "timeline": {"limit": 5, "lazy_load_members": true},
                 "rooms": ["!a:localhost"], "x.unknown": {"anything": 1}},
        "x.custom": true,
    });
    let (status, body) = srv
        .post(&upload(&user_id), Some(&token), valid.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let inline = crate::common::enc(&valid.to_string());
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/sync?timeout=0&filter={inline}"),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// `event_format: "federation"` serves `/sync` events as their signed PDUs: the hashes and
/// signatures check against the server's key, and the reference hash is the event id.
#[tokio::test]
async fn federation_event_format_in_sync_is_the_signed_pdu() {
    use ruma::{
        room_version_rules::RoomVersionRules,
        serde::Base64,
        signatures::{reference_hash, verify_event, Verified},
        CanonicalJsonObject,
    };

    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let room = crate::common::create_room(&srv, &token, json!({})).await;
    let (status, sent) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/1"),
            Some(&token),
            json!({"msgtype": "m.text", "body": "signed"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    let filter = crate::common::enc(&json!({"event_format": "federation"}).to_string());
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/sync?timeout=0&filter={filter}"),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let joined = &body["rooms"]["join"][&room];
    let timeline = joined["timeline"]["events"].as_array().unwrap();
    let message = timeline
        .iter()
        .find(|e| e["content"]["body"] == "signed")
        .expect("message in timeline");
    for field in [
        "auth_events",
        "prev_events",
        "depth",
        "hashes",
        "signatures",
        "origin_server_ts",
        "room_id",
        "sender",
        "type",
        "content",
        "unsigned",
    ] {
        assert!(message.get(field).is_some(), "{field} missing: {message}");
    }
    assert!(!message["auth_events"].as_array().unwrap().is_empty());
    assert!(!message["prev_events"].as_array().unwrap().is_empty());
    // State events come in the same form (this small room's are all in the timeline).
    let state = joined["state"]["events"].as_array().unwrap();
    assert!(timeline.iter().any(|e| e.get("state_key").is_some()));
    assert!(state
        .iter()
        .chain(timeline)
        .all(|e| e.get("hashes").is_some()));

    let keys = hearth::service::keys::ServerKeys::load(&srv.config.data_dir.join("keys")).unwrap();
    let key_map = [(
        srv.config.server_name.clone(),
        [(
            keys.key_id(),
            Base64::new(keys.keypair.public_key().to_vec()),
        )]
        .into(),
    )]
    .into();
    let object: CanonicalJsonObject = serde_json::from_value(message.clone()).unwrap();
    let rules = RoomVersionRules::V12;
    assert_eq!(
        verify_event(&key_map, &object, &rules).unwrap(),
        Verified::All
    );
    let event_id = format!("${}", reference_hash(&object, &rules).unwrap());
    assert_eq!(json!(event_id), sent["event_id"]);

    // The client form (default) has none of it; `event_fields` cuts events down.
    let filter = crate::common::enc(&json!({"event_fields": ["type", "content.body"]}).to_string());
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/sync?timeout=0&filter={filter}"),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let timeline = body["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap();
    let message = timeline
        .iter()
        .find(|e| e["content"]["body"] == "signed")
        .expect("message in timeline");
    assert_eq!(
        message,
        &json!({"type": "m.room.message", "content": {"body": "signed"}})
    );
    let (_, body) = srv
        .get("/_matrix/client/v3/sync?timeout=0", Some(&token))
        .await;
    let message = body["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["content"]["body"] == "signed")
        .cloned()
        .unwrap();
    assert!(message.get("hashes").is_none() && message.get("event_id").is_some());
}
