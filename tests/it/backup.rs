//! Server-side key backups: versions, keys at all three levels, replacement rules, etag and
//! count, and the errors.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{errcode, TestServer};

const ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";
const ROOM: &str = "!room:localhost";
const ROOM2: &str = "!other:localhost";

fn auth_data(public_key: &str) -> Value {
    json!({"public_key": public_key, "signatures": {}})
}

fn key(verified: bool, first_message_index: u64, forwarded_count: u64, tag: &str) -> Value {
    json!({
        "first_message_index": first_message_index,
        "forwarded_count": forwarded_count,
        "is_verified": verified,
        "session_data": {"ephemeral": tag, "ciphertext": tag, "mac": tag},
    })
}

async fn create(srv: &TestServer, token: &str, public_key: &str) -> String {
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/room_keys/version",
            Some(token),
            json!({"algorithm": ALGORITHM, "auth_data": auth_data(public_key)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["version"].as_str().unwrap().to_owned()
}

async fn put_session(
    srv: &TestServer,
    token: &str,
    version: &str,
    room: &str,
    session: &str,
    data: Value,
) -> (StatusCode, Value) {
    srv.put(
        &format!("/_matrix/client/v3/room_keys/keys/{room}/{session}?version={version}"),
        Some(token),
        data,
    )
    .await
}

async fn get_session(srv: &TestServer, token: &str, version: &str, session: &str) -> Value {
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/room_keys/keys/{ROOM}/{session}?version={version}"),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn backup_versions() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;

    let (status, body) = srv
        .get("/_matrix/client/v3/room_keys/version", Some(&token))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );

    let v1 = create(&srv, &token, "pk1").await;
    let (status, body) = srv
        .get("/_matrix/client/v3/room_keys/version", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"algorithm": ALGORITHM, "auth_data": auth_data("pk1"), "count": 0,
               "etag": body["etag"], "version": v1})
    );
    assert!(body["etag"].is_string());
    let (status, same) = srv
        .get(
            &format!("/_matrix/client/v3/room_keys/version/{v1}"),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(same, body);
    // Backups are per user.
    let (status, _) = srv
        .get(
            &format!("/_matrix/client/v3/room_keys/version/{v1}"),
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Updating: auth_data changes; the algorithm and version must match.
    let path = format!("/_matrix/client/v3/room_keys/version/{v1}");
    let (status, body) = srv
        .put(
            &path,
            Some(&token),
            json!({"algorithm": ALGORITHM, "auth_data": auth_data("pk1b"), "version": v1}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = srv.get(&path, Some(&token)).await;
    assert_eq!(body["auth_data"], auth_data("pk1b"));
    let (status, body) = srv
        .put(
            &path,
            Some(&token),
            json!({"algorithm": "org.example.other", "auth_data": {}}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );
    let (status, body) = srv
        .put(
            &path,
            Some(&token),
            json!({"algorithm": ALGORITHM, "auth_data": auth_data("x"), "version": "99"}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );
    let (status, body) = srv
        .put(
            "/_matrix/client/v3/room_keys/version/42",
            Some(&token),
            json!({"algorithm": ALGORITHM, "auth_data": auth_data("x")}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    // Malformed bodies.
    let (status, _) = srv
        .post(
            "/_matrix/client/v3/room_keys/version",
            Some(&token),
            json!({"algorithm": ALGORITHM}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = srv
        .post(
            "/_matrix/client/v3/room_keys/version",
            Some(&token),
            json!({"algorithm": ALGORITHM, "auth_data": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A newer version becomes current; deleting it makes the older one current again.
    let v2 = create(&srv, &token, "pk2").await;
    assert_ne!(v1, v2);
    let (_, body) = srv
        .get("/_matrix/client/v3/room_keys/version", Some(&token))
        .await;
    assert_eq!(body["version"], v2);
    let (status, _) = srv
        .call(
            Method::DELETE,
            &format!("/_matrix/client/v3/room_keys/version/{v2}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Deleting again succeeds; the deleted version is gone.
    let (status, _) = srv
        .call(
            Method::DELETE,
            &format!("/_matrix/client/v3/room_keys/version/{v2}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = srv
        .get(
            &format!("/_matrix/client/v3/room_keys/version/{v2}"),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, body) = srv
        .get("/_matrix/client/v3/room_keys/version", Some(&token))
        .await;
    assert_eq!(body["version"], v1);
    // A version that never existed.
    for version in ["77", "abc"] {
        let (status, body) = srv
            .call(
                Method::DELETE,
                &format!("/_matrix/client/v3/room_keys/version/{version}"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::NOT_FOUND, "M_NOT_FOUND")
        );
    }
    // Version numbers are never reused.
    let v3 = create(&srv, &token, "pk3").await;
    assert_ne!(v3, v2);
    assert_ne!(v3, v1);
}

#[tokio::test]
async fn backup_keys_replacement_etag_and_count() {
    let mut srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let version = create(&srv, &token, "pk").await;

    let (status, body) =
        put_session(&srv, &token, &version, ROOM, "s1", key(false, 5, 1, "a")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 1);
    let etag1 = body["etag"].as_str().unwrap().to_owned();

    // Worse keys do not replace: unverified, higher index, more forwards.
    let mut etag = etag1.clone();
    for worse in [key(false, 6, 0, "w1"), key(false, 5, 2, "w2")] {
        let (_, body) = put_session(&srv, &token, &version, ROOM, "s1", worse).await;
        assert_eq!(body["count"], 1);
        assert_eq!(body["etag"], etag, "an unchanged backup keeps its etag");
    }
    assert_eq!(
        get_session(&srv, &token, &version, "s1").await,
        key(false, 5, 1, "a")
    );
    // Fewer forwards replace; then a lower first_message_index; then verification, which
    // beats even a lower index.
    for (better, tag) in [
        (key(false, 5, 0, "b"), "b"),
        (key(false, 2, 3, "c"), "c"),
        (key(true, 9, 9, "d"), "d"),
    ] {
        let (_, body) = put_session(&srv, &token, &version, ROOM, "s1", better.clone()).await;
        assert_eq!(body["count"], 1);
        assert_ne!(body["etag"], etag, "changed keys change the etag");
        etag = body["etag"].as_str().unwrap().to_owned();
        assert_eq!(
            get_session(&srv, &token, &version, "s1").await["session_data"]["mac"],
            tag
        );
    }
    // An unverified key never replaces a verified one, whatever its index.
    put_session(&srv, &token, &version, ROOM, "s1", key(false, 0, 0, "e")).await;
    assert_eq!(
        get_session(&srv, &token, &version, "s1").await,
        key(true, 9, 9, "d")
    );

    // Room level and all rooms at once.
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/room_keys/keys/{ROOM}?version={version}"),
            Some(&token),
            json!({"sessions": {"s2": key(false, 0, 0, "s2"), "s3": key(false, 0, 0, "s3")}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 3);
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/room_keys/keys?version={version}"),
            Some(&token),
            json!({"rooms": {ROOM2: {"sessions": {"t1": key(false, 0, 0, "t1")}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 4);
    let (_, info) = srv
        .get("/_matrix/client/v3/room_keys/version", Some(&token))
        .await;
    assert_eq!(info["count"], 4);
    assert_eq!(info["etag"], body["etag"]);

    // Reads survive a restart.
    srv.restart().await;
    let (status, all) = srv
        .get(
            &format!("/_matrix/client/v3/room_keys/keys?version={version}"),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(all["rooms"][ROOM]["sessions"].as_object().unwrap().len(), 3);
    assert_eq!(
        all["rooms"][ROOM2]["sessions"]["t1"],
        key(false, 0, 0, "t1")
    );
    let (_, room) = srv
        .get(
            &format!("/_matrix/client/v3/room_keys/keys/{ROOM2}?version={version}"),
            Some(&token),
        )
        .await;
    assert_eq!(room, json!({"sessions": {"t1": key(false, 0, 0, "t1")}}));
    let (status, empty) = srv
        .get(
            &format!("/_matrix/client/v3/room_keys/keys/!nothing:localhost?version={version}"),
            Some(&token),
        )
        .await;
    assert_eq!((status, empty), (StatusCode::OK, json!({"sessions": {}})));
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/room_keys/keys/{ROOM}/nosuch?version={version}"),
            Some(&token),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );

    // Deleting one session, one room, everything.
    let (status, body) = srv
        .call(
            Method::DELETE,
            &format!("/_matrix/client/v3/room_keys/keys/{ROOM}/s2?version={version}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 3);
    let (_, body) = srv
        .call(
            Method::DELETE,
            &format!("/_matrix/client/v3/room_keys/keys/{ROOM}?version={version}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(body["count"], 1);
    let (_, body) = srv
        .call(
            Method::DELETE,
            &format!("/_matrix/client/v3/room_keys/keys?version={version}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(body["count"], 0);
    let (_, all) = srv
        .get(
            &format!("/_matrix/client/v3/room_keys/keys?version={version}"),
            Some(&token),
        )
        .await;
    assert_eq!(all, json!({"rooms": {}}));
}

#[tokio::test]
async fn backup_key_errors() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw").await;

    // No backup at all.
    let (status, body) = put_session(&srv, &token, "1", ROOM, "s", key(false, 0, 0, "x")).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );

    let old = create(&srv, &token, "pk1").await;
    put_session(&srv, &token, &old, ROOM, "s", key(false, 0, 0, "old")).await;
    let current = create(&srv, &token, "pk2").await;

    // Only the current version takes keys; the error names it.
    let (status, body) = put_session(&srv, &token, &old, ROOM, "s", key(false, 0, 0, "x")).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_WRONG_ROOM_KEYS_VERSION")
    );
    assert_eq!(body["current_version"], current);
    let (status, body) = put_session(&srv, &token, "999", ROOM, "s", key(false, 0, 0, "x")).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_WRONG_ROOM_KEYS_VERSION")
    );
    // The older version is still readable.
    assert_eq!(
        get_session(&srv, &token, &old, "s").await["session_data"]["mac"],
        "old"
    );
    // Reading an unknown version is a 404.
    let (status, body) = srv
        .get(
            "/_matrix/client/v3/room_keys/keys?version=999",
            Some(&token),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    let (status, _) = srv
        .call(
            Method::DELETE,
            "/_matrix/client/v3/room_keys/keys?version=999",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Key data must have its fields.
    for bad in [
        json!({"first_message_index": 0, "forwarded_count": 0, "is_verified": false}),
        json!({"first_message_index": -1, "forwarded_count": 0, "is_verified": false, "session_data": {}}),
        json!({"first_message_index": 0, "forwarded_count": 0, "is_verified": "no", "session_data": {}}),
    ] {
        let (status, body) = put_session(&srv, &token, &current, ROOM, "s", bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    // The version query parameter is required.
    let (status, _) = srv
        .get(
            &format!("/_matrix/client/v3/room_keys/keys/{ROOM}"),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Deleting the version deletes its keys.
    srv.call(
        Method::DELETE,
        &format!("/_matrix/client/v3/room_keys/version/{old}"),
        Some(&token),
        None,
    )
    .await;
    let (status, _) = srv
        .get(
            &format!("/_matrix/client/v3/room_keys/keys?version={old}"),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
