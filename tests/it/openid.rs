//! OpenID (spec: Client-Server OpenID, Server-Server OpenID): tokens for the own user only,
//! exchanged at the unauthenticated federation endpoint for the user id; a token kind of its
//! own, never an access token and never the reverse; expiry and the sweep.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{enc, errcode, TestServer};

fn request_path(user: &str) -> String {
    format!("/_matrix/client/v3/user/{}/openid/request_token", enc(user))
}

fn userinfo_path(token: &str) -> String {
    format!(
        "/_matrix/federation/v1/openid/userinfo?access_token={}",
        enc(token)
    )
}

#[tokio::test]
async fn openid_token_identifies_its_user_and_nothing_else() {
    let srv = TestServer::start().await;
    let (alice, token, _) = srv.register("alice", "pw-alice").await;
    let (bob, _, _) = srv.register("bob", "pw-bob").await;

    let (status, body) = srv
        .post(&request_path(&alice), Some(&token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["matrix_server_name"], "localhost");
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!((3000..=3600).contains(&expires_in), "{body}");
    let openid = body["access_token"].as_str().unwrap().to_owned();

    // The federation side, without any Authorization header.
    let (status, body) = srv.get(&userinfo_path(&openid), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"sub": alice}));

    // Not an access token: neither for /sync nor for another OpenID token.
    let (status, body) = srv
        .get("/_matrix/client/v3/account/whoami", Some(&openid))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN")
    );
    let (status, _) = srv
        .post(&request_path(&alice), Some(&openid), json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // And an access token is not an OpenID token.
    let (status, body) = srv.get(&userinfo_path(&token), None).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN")
    );
    let (status, body) = srv.get(&userinfo_path("hoi_made_up"), None).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN")
    );

    // Only for oneself.
    let (status, body) = srv.post(&request_path(&bob), Some(&token), json!({})).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    // Authentication is required.
    let (status, _) = srv.post(&request_path(&alice), None, json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn openid_tokens_survive_a_restart_and_expire() {
    let mut srv = TestServer::start().await;
    let (alice, token, _) = srv.register("alice", "pw-alice").await;
    let (_, body) = srv
        .post(&request_path(&alice), Some(&token), json!({}))
        .await;
    let lasting = body["access_token"].as_str().unwrap().to_owned();

    srv.restart().await;
    let (status, body) = srv.get(&userinfo_path(&lasting), None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "acknowledged tokens are durable: {body}"
    );

    let services = srv.server.as_ref().unwrap().services.clone();
    services
        .openid_tokens
        .set_lifetime(Duration::from_millis(1500));
    let (status, body) = srv
        .post(&request_path(&alice), Some(&token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["expires_in"], 1, "1.5 s rounds down to 1 s");
    let short = body["access_token"].as_str().unwrap().to_owned();
    let (status, _) = srv.get(&userinfo_path(&short), None).await;
    assert_eq!(status, StatusCode::OK, "valid before its expiry");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (status, body) = srv.get(&userinfo_path(&short), None).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN"),
        "refused once expired, swept or not"
    );

    // The sweep deletes the expired token and its index row, and only it.
    let swept = services
        .openid_tokens
        .sweep(hearth::service::users::now_ms())
        .await
        .unwrap();
    assert_eq!(swept, 1);
    let rows = services
        .store
        .range::<hearth::service::expiring_tokens::OpenIdExpiryTable>(None, false, 10)
        .unwrap();
    assert_eq!(rows.len(), 1, "the lasting token stays indexed");
    let (status, _) = srv.get(&userinfo_path(&lasting), None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn openid_token_of_a_deactivated_account_is_refused() {
    let srv = TestServer::start().await;
    let (alice, token, _) = srv.register("alice", "pw-alice").await;
    let (_, body) = srv
        .post(&request_path(&alice), Some(&token), json!({}))
        .await;
    let openid = body["access_token"].as_str().unwrap().to_owned();
    let services = srv.server.as_ref().unwrap().services.clone();
    let alice_id = ruma::UserId::parse(&alice).unwrap();
    services.deactivate_user(&alice_id).await.unwrap();
    let (status, body) = srv.get(&userinfo_path(&openid), None).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN")
    );
}
