//! Request parsing shared by every endpoint: optional trailing path segments, empty and
//! malformed bodies, bodies that must never reach a panic, and query parameters outside their
//! values.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{create_room, enc, errcode, TestServer};

#[tokio::test]
async fn state_key_segment_is_optional_without_trailing_slash() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "password").await;
    let room = create_room(&srv, &token, json!({})).await;
    let base = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room));

    // PUT without the slash reaches the state handler with an empty state key.
    let (status, body) = srv
        .put(&base, Some(&token), json!({"topic": "no slash"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["event_id"].is_string(), "{body}");

    // GET without the slash, with the slash, and the r0 path all read the same event.
    for path in [
        base.clone(),
        format!("{base}/"),
        base.replace("/v3/", "/r0/"),
    ] {
        let (status, body) = srv.get(&path, Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["topic"], "no slash", "{path}");
    }

    // A shorter path with an endpoint of its own keeps it: the whole room state.
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state", enc(&room)),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.as_array().is_some_and(|a| a.len() > 3), "{body}");

    // Other routes are unaffected: a missing non-final segment is still unknown, and a
    // missing last segment of a route whose shorter path has none stays 404 too.
    for path in [
        format!("/_matrix/client/v3/rooms/{}/send", enc(&room)),
        // Only the state key is optional: a message without its transaction id is unknown.
        format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message",
            enc(&room)
        ),
        "/_matrix/client/v3/sendToDevice/m.test".to_owned(),
        format!("/_matrix/client/v3/rooms/{}/redact", enc(&room)),
        "/_matrix/client/v3/user".to_owned(),
    ] {
        let (status, body) = srv
            .call(Method::PUT, &path, Some(&token), Some(json!({})))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(errcode(&body), "M_UNRECOGNIZED", "{path}");
    }
}

/// Sends `body` (or nothing) as is, with a JSON content type, and returns status and JSON.
async fn send_raw(
    srv: &TestServer,
    method: Method,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let response = srv.raw(method, path, Some(token), body).await;
    let status = response.status();
    let bytes = response.bytes().await.unwrap();
    let value = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    (status, value)
}

#[tokio::test]
async fn missing_body_is_not_json_unless_every_field_is_optional() {
    let srv = TestServer::start().await;
    let (user, token, _) = srv.register("alice", "password").await;
    let (_, bob_token, _) = srv.register("bob", "password").await;
    let room = create_room(&srv, &token, json!({"preset": "public_chat"})).await;
    let (room_e, user_e) = (enc(&room), enc(&user));

    // Bodies that carry content: nothing is not `{}`.
    for path in [
        format!("/_matrix/client/v3/rooms/{room_e}/state/m.room.topic/"),
        format!("/_matrix/client/v3/rooms/{room_e}/state/m.room.topic"),
        format!("/_matrix/client/v3/rooms/{room_e}/send/m.room.message/txn1"),
        format!("/_matrix/client/v3/user/{user_e}/account_data/m.test"),
        format!("/_matrix/client/v3/user/{user_e}/rooms/{room_e}/account_data/m.test"),
        format!("/_matrix/client/v3/profile/{user_e}/displayname"),
        format!("/_matrix/client/v3/profile/{user_e}/avatar_url"),
        format!("/_matrix/client/v3/rooms/{room_e}/typing/{user_e}"),
    ] {
        let (status, body) = send_raw(&srv, Method::PUT, &path, &token, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "PUT {path}: {body}");
        assert_eq!(errcode(&body), "M_NOT_JSON", "PUT {path}: {body}");
    }
    for path in [
        "/_matrix/client/v3/createRoom".to_owned(),
        format!("/_matrix/client/v3/user/{user_e}/filter"),
        "/_matrix/client/v3/keys/query".to_owned(),
    ] {
        let (status, body) = send_raw(&srv, Method::POST, &path, &token, None).await;
        // createRoom's fields are all optional: it creates a room.
        if path.ends_with("createRoom") {
            assert_eq!(status, StatusCode::OK, "POST {path}: {body}");
        } else {
            assert_eq!(status, StatusCode::BAD_REQUEST, "POST {path}: {body}");
            assert_eq!(errcode(&body), "M_NOT_JSON", "POST {path}: {body}");
        }
    }
    // Nothing was stored by the refused requests.
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/user/{user_e}/account_data/m.test"),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // Endpoints whose body fields are all optional accept no body at all.
    for path in [
        format!("/_matrix/client/v3/join/{room_e}"),
        format!("/_matrix/client/v3/rooms/{room_e}/leave"),
        format!("/_matrix/client/v3/rooms/{room_e}/forget"),
        "/_matrix/client/v3/logout".to_owned(),
    ] {
        let (status, body) = send_raw(&srv, Method::POST, &path, &bob_token, None).await;
        assert_eq!(status, StatusCode::OK, "POST {path}: {body}");
    }
}

#[tokio::test]
async fn trailing_garbage_after_json_is_not_json() {
    let srv = TestServer::start().await;
    let (user, token, _) = srv.register("alice", "password").await;
    let room = create_room(&srv, &token, json!({})).await;
    let (room_e, user_e) = (enc(&room), enc(&user));
    for (method, path, body) in [
        (
            Method::PUT,
            format!("/_matrix/client/v3/rooms/{room_e}/state/m.room.topic/"),
            r#"{"topic": "x"} trailing"#,
        ),
        (
            Method::PUT,
            format!("/_matrix/client/v3/rooms/{room_e}/send/m.room.message/t1"),
            r#"{"msgtype": "m.text", "body": "x"}{"a": 1}"#,
        ),
        (
            Method::PUT,
            format!("/_matrix/client/v3/user/{user_e}/account_data/m.test"),
            r#"{} x"#,
        ),
        (
            Method::POST,
            "/_matrix/client/v3/createRoom".to_owned(),
            r#"{}}"#,
        ),
        (
            Method::POST,
            format!("/_matrix/client/v3/user/{user_e}/filter"),
            r#"{} []"#,
        ),
        (
            Method::PUT,
            format!("/_matrix/client/v3/directory/list/room/{room_e}"),
            r#"{"visibility": "public"} x"#,
        ),
    ] {
        let (status, reply) = send_raw(&srv, method.clone(), &path, &token, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {reply}");
        assert_eq!(errcode(&reply), "M_NOT_JSON", "{method} {path}: {reply}");
    }
    // Whitespace after the document is not garbage.
    let (status, reply) = send_raw(
        &srv,
        Method::PUT,
        &format!("/_matrix/client/v3/rooms/{room_e}/state/m.room.topic/"),
        &token,
        Some("{\"topic\": \"ok\"}\n  "),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
}
