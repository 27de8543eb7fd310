//! Third-party networks and the application-service-only endpoints, on a server without
//! application services.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{create_room, enc, errcode, TestServer};

const TP: &str = "/_matrix/client/v3/thirdparty";

#[tokio::test]
async fn no_protocols_exist() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "password-alice").await;

    let (status, body) = srv.get(&format!("{TP}/protocols"), Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));

    for path in [
        "protocol/irc",
        "location/irc",
        "location/irc?searchFields=foo",
        "user/irc",
        "user/gitter?username=bob",
    ] {
        let (status, body) = srv.get(&format!("{TP}/{path}"), Some(&token)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(errcode(&body), "M_NOT_FOUND", "{path}");
    }

    // All of these need an access token.
    for path in ["protocols", "protocol/irc", "location/irc", "user/irc"] {
        let (status, body) = srv.get(&format!("{TP}/{path}"), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert_eq!(errcode(&body), "M_MISSING_TOKEN", "{path}");
    }
}

#[tokio::test]
async fn reverse_lookups() {
    let srv = TestServer::start().await;
    let (alice, token, _) = srv.register("alice", "password-alice").await;
    create_room(&srv, &token, json!({"room_alias_name": "lobby"})).await;

    // A known alias and a known user: found, but nothing bridges them.
    let (status, body) = srv
        .get(
            &format!("{TP}/location?alias={}", enc("#lobby:localhost")),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!([]));
    let (status, body) = srv
        .get(&format!("{TP}/user?userid={}", enc(&alice)), Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!([]));

    // A local alias or user that does not exist: 404.
    let (status, body) = srv
        .get(
            &format!("{TP}/location?alias={}", enc("#nowhere:localhost")),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(errcode(&body), "M_NOT_FOUND");
    let (status, body) = srv
        .get(
            &format!("{TP}/user?userid={}", enc("@ghost:localhost")),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(errcode(&body), "M_NOT_FOUND");

    // Missing or malformed parameters: 400.
    let (status, body) = srv.get(&format!("{TP}/location"), Some(&token)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = srv
        .get(&format!("{TP}/user?userid=not-a-user"), Some(&token))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn appservice_endpoints_refuse_user_tokens() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "password-alice").await;
    let room = create_room(&srv, &token, json!({})).await;

    let ping = "/_matrix/client/v1/appservice/telegram/ping";
    let (status, body) = srv
        .post(ping, Some(&token), json!({"transaction_id": "t1"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(errcode(&body), "M_FORBIDDEN");
    let (status, body) = srv.post(ping, None, json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    let list = format!(
        "/_matrix/client/v3/directory/list/appservice/irc/{}",
        enc(&room)
    );
    let (status, body) = srv
        .put(&list, Some(&token), json!({"visibility": "public"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(errcode(&body), "M_FORBIDDEN");
    let (status, body) = srv.put(&list, None, json!({"visibility": "public"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // The room did not enter the public directory.
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/directory/list/room/{}", enc(&room)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["visibility"], "private");
}
