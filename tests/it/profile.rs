//! Profiles over HTTP: reading, setting and deleting `displayname` and `avatar_url`, the
//! errors for other users, other keys and bad values, defaults at registration, clearing at
//! deactivation, and persistence across a restart.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{errcode, TestServer};

fn profile(user_id: &str) -> String {
    format!("/_matrix/client/v3/profile/{user_id}")
}

fn field(user_id: &str, key: &str) -> String {
    format!("/_matrix/client/v3/profile/{user_id}/{key}")
}

#[tokio::test]
async fn registration_sets_displayname_to_localpart() {
    let srv = TestServer::start().await;
    let (user_id, _, _) = srv.register("alice", "pw").await;
    // Profile reads need no access token.
    let (status, body) = srv.get(&profile(&user_id), None).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"displayname": "alice"}))
    );
    let (status, body) = srv.get(&field(&user_id, "displayname"), None).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"displayname": "alice"}))
    );
    // The r0 path is the same endpoint.
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/r0/profile/{user_id}/displayname"),
            None,
        )
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"displayname": "alice"}))
    );
    // No avatar yet.
    let (status, body) = srv.get(&field(&user_id, "avatar_url"), None).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
}

#[tokio::test]
async fn set_get_and_delete_fields() {
    let srv = TestServer::start().await;
    let (user_id, token, _) = srv.register("bob", "pw").await;

    let (status, body) = srv
        .put(
            &field(&user_id, "displayname"),
            Some(&token),
            json!({"displayname": "Bob 🎸"}),
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (status, body) = srv
        .put(
            &field(&user_id, "avatar_url"),
            Some(&token),
            json!({"avatar_url": "mxc://localhost/abc123"}),
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));

    let (status, body) = srv.get(&profile(&user_id), Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"displayname": "Bob 🎸", "avatar_url": "mxc://localhost/abc123"})
    );
    let (_, body) = srv.get(&field(&user_id, "avatar_url"), None).await;
    assert_eq!(body, json!({"avatar_url": "mxc://localhost/abc123"}));

    // An empty string clears the field (Synapse behaviour; the spec asks clients to DELETE).
    let (status, _) = srv
        .put(
            &field(&user_id, "avatar_url"),
            Some(&token),
            json!({"avatar_url": ""}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = srv.get(&field(&user_id, "avatar_url"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // DELETE removes a field, and deleting an absent field is fine.
    let (status, body) = srv
        .call(
            Method::DELETE,
            &field(&user_id, "displayname"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (status, body) = srv.get(&field(&user_id, "displayname"), None).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    let (status, _) = srv
        .call(
            Method::DELETE,
            &field(&user_id, "displayname"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = srv.get(&profile(&user_id), None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
}

#[tokio::test]
async fn only_the_user_may_change_their_profile() {
    let srv = TestServer::start().await;
    let (carol, carol_token, _) = srv.register("carol", "pw").await;
    let (_, dave_token, _) = srv.register("dave", "pw").await;

    let (status, body) = srv
        .put(
            &field(&carol, "displayname"),
            Some(&dave_token),
            json!({"displayname": "pwned"}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    let (status, body) = srv
        .put(
            &field(&carol, "avatar_url"),
            Some(&dave_token),
            json!({"avatar_url": "mxc://localhost/x"}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    let (status, body) = srv
        .call(
            Method::DELETE,
            &field(&carol, "displayname"),
            Some(&dave_token),
            None,
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    // Setting needs an access token at all.
    let (status, body) = srv
        .put(
            &field(&carol, "displayname"),
            None,
            json!({"displayname": "anon"}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN")
    );

    let (_, body) = srv.get(&profile(&carol), Some(&carol_token)).await;
    assert_eq!(body, json!({"displayname": "carol"}));
}

#[tokio::test]
async fn unknown_and_remote_users_are_not_found() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("erin", "pw").await;
    let user = "@nobody:localhost";
    let (status, body) = srv.get(&profile(user), Some(&token)).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    let (status, body) = srv.get(&field(user, "displayname"), None).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    // A user of a server that cannot be reached (nothing listens there): the profile is
    // asked from that server, which fails (fed_queries covers servers that answer).
    let user = "@someone:127.0.0.1:9";
    for path in [profile(user), field(user, "displayname")] {
        let (status, body) = srv.get(&path, Some(&token)).await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::BAD_GATEWAY, "M_UNKNOWN"),
            "{path}"
        );
    }
    // Not a user id at all.
    let (status, body) = srv.get(&profile("not-a-user"), None).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );
}

#[tokio::test]
async fn bad_values_are_rejected() {
    let srv = TestServer::start().await;
    let (user_id, token, _) = srv.register("finn", "pw").await;
    let dn = field(&user_id, "displayname");
    let av = field(&user_id, "avatar_url");

    // avatar_url must be an mxc:// URI.
    for bad in [
        "https://example.org/cat.png",
        "mxc://localhost",
        "mxc://localhost/",
        "mxc:///nothing",
        "mxc://localhost/a/b",
    ] {
        let (status, body) = srv.put(&av, Some(&token), json!({"avatar_url": bad})).await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
            "{bad}"
        );
    }
    // Display names up to 256 characters (not bytes) are fine; longer ones are refused.
    let max = "é".repeat(256);
    let (status, _) = srv
        .put(&dn, Some(&token), json!({"displayname": max}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = srv
        .put(&dn, Some(&token), json!({"displayname": "x".repeat(257)}))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );
    let (_, body) = srv.get(&dn, None).await;
    assert_eq!(body["displayname"], max.as_str());

    // Wrong JSON type, missing key, not JSON.
    let (status, body) = srv.put(&dn, Some(&token), json!({"displayname": 42})).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_BAD_JSON")
    );
    let (status, body) = srv.put(&dn, Some(&token), json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let response = srv
        .raw(Method::PUT, &dn, Some(&token), Some("{not json"))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(errcode(&body), "M_NOT_JSON");

    // Nothing of the refused requests was stored.
    let (_, body) = srv.get(&profile(&user_id), None).await;
    assert_eq!(body, json!({"displayname": max}));
}

#[tokio::test]
async fn other_keys_answer_per_spec() {
    let srv = TestServer::start().await;
    let (user_id, token, _) = srv.register("gus", "pw").await;

    // Well-formed keys this server does not let users set: 403.
    for key in ["m.tz", "org.example.pronouns"] {
        let (status, body) = srv
            .put(&field(&user_id, key), Some(&token), json!({key: "value"}))
            .await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::FORBIDDEN, "M_FORBIDDEN"),
            "{key}"
        );
        // ... and never set, so reading them is 404 and deleting them is a no-op.
        let (status, body) = srv.get(&field(&user_id, key), None).await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::NOT_FOUND, "M_NOT_FOUND"),
            "{key}"
        );
        let (status, _) = srv
            .call(Method::DELETE, &field(&user_id, key), Some(&token), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{key}");
    }
    // Keys outside the grammar: 400 M_INVALID_PARAM; over 255 bytes: M_KEY_TOO_LARGE.
    for key in ["nodots", "Org.Example.caps"] {
        let (status, body) = srv
            .put(&field(&user_id, key), Some(&token), json!({key: 1}))
            .await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
            "{key}"
        );
        let (status, body) = srv
            .call(Method::DELETE, &field(&user_id, key), Some(&token), None)
            .await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
            "{key}"
        );
    }
    let long = format!("org.{}", "a".repeat(260));
    let (status, body) = srv
        .put(
            &field(&user_id, &long),
            Some(&token),
            json!({long.as_str(): 1}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_KEY_TOO_LARGE")
    );

    let (_, body) = srv.get(&profile(&user_id), None).await;
    assert_eq!(body, json!({"displayname": "gus"}));
}

#[tokio::test]
async fn deactivation_clears_the_profile() {
    let srv = TestServer::start().await;
    let (user_id, token, _) = srv.register("hal", "pw").await;
    let (status, _) = srv
        .put(
            &field(&user_id, "avatar_url"),
            Some(&token),
            json!({"avatar_url": "mxc://localhost/hal"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let deactivate = "/_matrix/client/v3/account/deactivate";
    let (status, challenge) = srv.post(deactivate, Some(&token), json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let session = challenge["session"].as_str().unwrap();
    let auth = TestServer::password_auth(&user_id, "pw", session);
    let (status, body) = srv
        .post(deactivate, Some(&token), json!({"auth": auth}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = srv.get(&profile(&user_id), None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (status, _) = srv.get(&field(&user_id, "displayname"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn profile_survives_restart() {
    let mut srv = TestServer::start().await;
    let (user_id, token, _) = srv.register("ivy", "pw").await;
    srv.put(
        &field(&user_id, "displayname"),
        Some(&token),
        json!({"displayname": "Ivy"}),
    )
    .await;
    srv.put(
        &field(&user_id, "avatar_url"),
        Some(&token),
        json!({"avatar_url": "mxc://localhost/ivy"}),
    )
    .await;
    srv.restart().await;
    let (status, body) = srv.get(&profile(&user_id), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"displayname": "Ivy", "avatar_url": "mxc://localhost/ivy"})
    );
}
