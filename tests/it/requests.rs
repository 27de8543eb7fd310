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

/// Bodies of every JSON type and with wrongly typed well-known fields, sent to many
/// endpoints: each answers a Matrix error or success, never a reset connection (a panic) or a
/// 500. `POST /login` with `{}` used to panic inside ruma's login parser.
#[tokio::test]
async fn odd_bodies_never_reach_a_panic() {
    let srv = TestServer::start().await;
    let (user, token, device) = srv.register("alice", "password").await;
    let room = create_room(&srv, &token, json!({})).await;
    let (r, u) = (enc(&room), enc(&user));
    let post = |path: String| (Method::POST, path);
    let put = |path: String| (Method::PUT, path);
    let v3 = |path: &str| format!("/_matrix/client/v3{path}");
    let endpoints = [
        post(v3("/login")),
        post(v3("/register")),
        post(v3("/refresh")),
        post(v3("/createRoom")),
        post(v3(&format!("/join/{r}"))),
        post(v3(&format!("/knock/{r}"))),
        post(v3(&format!("/rooms/{r}/invite"))),
        post(v3(&format!("/rooms/{r}/kick"))),
        post(v3(&format!("/rooms/{r}/ban"))),
        post(v3(&format!("/rooms/{r}/unban"))),
        post(v3(&format!("/rooms/{r}/read_markers"))),
        post(v3(&format!("/rooms/{r}/receipt/m.read/%24x"))),
        post(v3(&format!("/rooms/{r}/report/%24x"))),
        post(v3(&format!("/rooms/{r}/upgrade"))),
        put(v3(&format!("/rooms/{r}/send/m.room.message/t1"))),
        put(v3(&format!("/rooms/{r}/send/m.room.redaction/t2"))),
        put(v3(&format!("/rooms/{r}/state/m.room.power_levels"))),
        put(v3(&format!("/rooms/{r}/state/m.room.member/{u}"))),
        put(v3(&format!("/rooms/{r}/redact/%24x/t3"))),
        put(v3(&format!("/rooms/{r}/typing/{u}"))),
        put(v3(&format!("/user/{u}/account_data/m.push_rules"))),
        put(v3(&format!("/user/{u}/rooms/{r}/account_data/m.tag"))),
        put(v3(&format!("/user/{u}/rooms/{r}/tags/u.t"))),
        put(v3(&format!("/profile/{u}/displayname"))),
        put(v3(&format!("/profile/{u}/avatar_url"))),
        put(v3(&format!("/presence/{u}/status"))),
        post(v3(&format!("/user/{u}/filter"))),
        put(v3(&format!("/directory/list/room/{r}"))),
        put(v3("/directory/room/%23a%3Alocalhost")),
        post(v3("/publicRooms")),
        post(v3("/user_directory/search")),
        post(v3("/keys/upload")),
        post(v3("/keys/query")),
        post(v3("/keys/claim")),
        post(v3("/keys/device_signing/upload")),
        post(v3("/keys/signatures/upload")),
        put(v3("/sendToDevice/m.test/t4")),
        put(v3("/pushrules/global/override/x")),
        put(v3(&format!("/devices/{device}"))),
        post(v3("/delete_devices")),
        post(v3("/account/password")),
        post(v3("/room_keys/version")),
    ];
    let bodies = [
        "{}",
        "[]",
        "null",
        "1",
        "\"s\"",
        "true",
        r#"{"type": 1}"#,
        r#"{"type": null}"#,
        r#"{"type": "m.login.password"}"#,
        r#"{"type": "m.login.token", "token": 5}"#,
        r#"{"identifier": 5, "password": 5}"#,
        r#"{"identifier": {}}"#,
        r#"{"auth": 5}"#,
        r#"{"auth": {}}"#,
        r#"{"auth": {"type": 1, "session": []}}"#,
        r#"{"device_keys": 5, "one_time_keys": [], "fallback_keys": null}"#,
        r#"{"messages": 5}"#,
        r#"{"messages": {"@a:b": {"D": 5}}}"#,
        r#"{"user_id": 5, "reason": []}"#,
        r#"{"filter": 5, "limit": "x", "since": []}"#,
        r#"{"visibility": 1, "room_id": 2}"#,
        r#"{"typing": "yes", "timeout": -1}"#,
        r#"{"m.fully_read": 5, "m.read": {}}"#,
        r#"{"membership": 1, "users": "x"}"#,
        r#"{"new_version": 1}"#,
        r#"{"actions": 1, "conditions": {}}"#,
    ];
    for (method, path) in &endpoints {
        for body in bodies {
            let response = srv
                .http
                .request(method.clone(), format!("{}{path}", srv.base))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {path} {body}: no answer: {e}"));
            let status = response.status();
            let reply: serde_json::Value = response.json().await.unwrap_or_default();
            assert!(
                status.as_u16() < 500,
                "{method} {path} {body}: {status} {reply}"
            );
            // A user-interactive authentication challenge (401 with flows) has no errcode.
            if !status.is_success() && reply.get("flows").is_none() {
                assert!(
                    errcode(&reply).starts_with("M_"),
                    "{method} {path} {body}: {status} {reply}"
                );
            }
        }
    }
    // The login refusals are the spec's: 400 with a JSON error.
    for body in ["{}", r#"{"password": "x"}"#, r#"{"type": 5}"#, "[]"] {
        let response = srv
            .raw(Method::POST, "/_matrix/client/v3/login", None, Some(body))
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let reply: serde_json::Value = response.json().await.unwrap();
        assert_eq!(errcode(&reply), "M_BAD_JSON", "{body}: {reply}");
    }
}

/// Query parameters with a fixed set of values refuse anything else with M_INVALID_PARAM
/// rather than ignoring it or reading it as a default.
#[tokio::test]
async fn query_enums_outside_their_values_are_invalid_param() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "password").await;
    let room = create_room(&srv, &token, json!({})).await;
    let r = enc(&room);
    let v3 = |path: &str| format!("/_matrix/client/v3{path}");
    let refused = [
        v3(&format!("/rooms/{r}/members?membership=joined")),
        v3(&format!("/rooms/{r}/members?not_membership=nope")),
        v3(&format!("/rooms/{r}/members?membership=")),
        v3(&format!("/rooms/{r}/state/m.room.create/?format=full")),
        v3(&format!("/rooms/{r}/state/m.room.create?format=1")),
        v3(&format!("/rooms/{r}/messages?dir=x")),
        v3(&format!("/rooms/{r}/messages?dir=")),
        v3(&format!("/rooms/{r}/messages?dir=b&limit=ten")),
        v3("/sync?full_state=yes&timeout=0"),
        v3("/sync?full_state=1&timeout=0"),
        v3("/sync?timeout=soon"),
        v3("/sync?set_presence=busy&timeout=0"),
        format!("/_matrix/client/v1/rooms/{r}/hierarchy?suggested_only=maybe"),
        format!("/_matrix/client/v1/rooms/{r}/hierarchy?max_depth=-1"),
        format!("/_matrix/client/v1/rooms/{r}/relations/%24x?dir=up"),
        format!("/_matrix/client/v1/rooms/{r}/threads?include=some"),
        format!("/_matrix/client/v1/rooms/{r}/timestamp_to_event?ts=1&dir=x"),
    ];
    let mut wrong = Vec::new();
    for path in &refused {
        let (status, body) = srv.get(path, Some(&token)).await;
        if status != StatusCode::BAD_REQUEST || errcode(&body) != "M_INVALID_PARAM" {
            let body: String = body.to_string().chars().take(200).collect();
            wrong.push(format!("{path}: {status} {body}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "accepted or wrong error:\n{}",
        wrong.join("\n")
    );
    // The same parameters with their spec values are accepted.
    let accepted = [
        v3(&format!(
            "/rooms/{r}/members?membership=join&not_membership=leave"
        )),
        v3(&format!("/rooms/{r}/state/m.room.create/?format=event")),
        v3(&format!("/rooms/{r}/state/m.room.create?format=content")),
        v3(&format!("/rooms/{r}/messages?dir=f")),
        v3("/sync?full_state=true&timeout=0&set_presence=online"),
        format!("/_matrix/client/v1/rooms/{r}/hierarchy?suggested_only=false"),
    ];
    for path in &accepted {
        let (status, body) = srv.get(path, Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
}
