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
