//! Global account data over HTTP: set and read back, replace, other users, non-object content,
//! server-managed types, unknown types and persistence across a restart.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{errcode, TestServer};

fn path(user_id: &str, kind: &str) -> String {
    format!("/_matrix/client/v3/user/{user_id}/account_data/{kind}")
}

#[tokio::test]
async fn set_get_and_replace() {
    let srv = TestServer::start().await;
    let (user_id, token, _) = srv.register("alice", "pw").await;
    let p = path(&user_id, "org.example.settings");

    let content = json!({"theme": "dark", "nested": {"list": [1, 2.5, "three", null, true]}, "unicode": "ünï"});
    let (status, body) = srv.put(&p, Some(&token), content.clone()).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (status, body) = srv.get(&p, Some(&token)).await;
    assert_eq!((status, body), (StatusCode::OK, content));

    // A second PUT replaces the content entirely.
    let (status, _) = srv.put(&p, Some(&token), json!({"theme": "light"})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = srv.get(&p, Some(&token)).await;
    assert_eq!(body, json!({"theme": "light"}));

    // An empty object is valid content, and types are independent of each other.
    let other = path(&user_id, "m.direct");
    let (status, _) = srv.put(&other, Some(&token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        srv.get(&other, Some(&token)).await,
        (StatusCode::OK, json!({}))
    );
    assert_eq!(srv.get(&p, Some(&token)).await.1, json!({"theme": "light"}));
}

#[tokio::test]
async fn unset_type_is_not_found() {
    let srv = TestServer::start().await;
    let (user_id, token, _) = srv.register("bob", "pw").await;
    let (status, body) = srv
        .get(&path(&user_id, "org.example.never"), Some(&token))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    // Server-managed types are readable; m.fully_read was never set globally.
    let (status, body) = srv.get(&path(&user_id, "m.fully_read"), Some(&token)).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
}

#[tokio::test]
async fn other_users_data_is_forbidden() {
    let srv = TestServer::start().await;
    let (carol, carol_token, _) = srv.register("carol", "pw").await;
    let (_, dave_token, _) = srv.register("dave", "pw").await;
    let p = path(&carol, "org.example.secret");
    assert_eq!(
        srv.put(&p, Some(&carol_token), json!({"pin": 1234}))
            .await
            .0,
        StatusCode::OK
    );

    let (status, body) = srv.get(&p, Some(&dave_token)).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    let (status, body) = srv.put(&p, Some(&dave_token), json!({"pin": 0})).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    // Also for users that do not exist or live elsewhere.
    let (status, body) = srv
        .put(
            &path("@eve:remote.example", "x.y"),
            Some(&dave_token),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    // And an access token is required.
    let (status, body) = srv.get(&p, None).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN")
    );

    let (_, body) = srv.get(&p, Some(&carol_token)).await;
    assert_eq!(body, json!({"pin": 1234}));
}

#[tokio::test]
async fn content_must_be_a_json_object() {
    let srv = TestServer::start().await;
    let (user_id, token, _) = srv.register("erin", "pw").await;
    let p = path(&user_id, "org.example.thing");
    for bad in [json!([1, 2]), json!("text"), json!(7), Value::Null] {
        let (status, body) = srv.put(&p, Some(&token), bad.clone()).await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::BAD_REQUEST, "M_BAD_JSON"),
            "{bad}"
        );
    }
    let response = srv
        .raw(Method::PUT, &p, Some(&token), Some("{\"unterminated\": "))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(errcode(&body), "M_NOT_JSON");
    // Nothing was stored.
    assert_eq!(srv.get(&p, Some(&token)).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn server_managed_types_are_refused() {
    let srv = TestServer::start().await;
    let (user_id, token, _) = srv.register("finn", "pw").await;
    for kind in ["m.fully_read", "m.push_rules"] {
        let (status, body) = srv
            .put(
                &path(&user_id, kind),
                Some(&token),
                json!({"event_id": "$x"}),
            )
            .await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::METHOD_NOT_ALLOWED, "M_BAD_JSON"),
            "{kind}"
        );
    }
    // m.push_rules reads "as normal": the user's push rules.
    let (status, body) = srv.get(&path(&user_id, "m.push_rules"), Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, rules) = srv.get("/_matrix/client/v3/pushrules/", Some(&token)).await;
    assert_eq!(body, rules);
    assert!(body["global"]["override"]
        .as_array()
        .is_some_and(|o| !o.is_empty()));
}

#[tokio::test]
async fn account_data_survives_restart() {
    let mut srv = TestServer::start().await;
    let (user_id, token, _) = srv.register("gus", "pw").await;
    let p = path(&user_id, "im.vector.setting.breadcrumbs");
    let content = json!({"recent_rooms": ["!a:localhost", "!b:localhost"]});
    assert_eq!(
        srv.put(&p, Some(&token), content.clone()).await.0,
        StatusCode::OK
    );
    srv.restart().await;
    assert_eq!(srv.get(&p, Some(&token)).await, (StatusCode::OK, content));
}
