//! `GET /voip/turnServer`: coturn `use-auth-secret` credentials, static credentials, the
//! unconfigured server and authentication.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hearth::config::Turn;
use reqwest::StatusCode;
use sha1::{Digest, Sha1};

use crate::common::{errcode, TestServer};

const PATH: &str = "/_matrix/client/v3/voip/turnServer";
const SECRET: &str = "hearth-turn-secret";

/// HMAC-SHA1 written out here rather than taken from the server, so that the test checks the
/// server against an implementation of its own (itself checked against openssl below).
fn hmac_sha1_base64(key: &[u8], message: &[u8]) -> String {
    assert!(key.len() <= 64, "test keys fit one block");
    let mut ipad = vec![0x36u8; 64];
    let mut opad = vec![0x5cu8; 64];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let mut inner = Sha1::new();
    inner.update(&ipad);
    inner.update(message);
    let mut outer = Sha1::new();
    outer.update(&opad);
    outer.update(inner.finalize());
    base64::engine::general_purpose::STANDARD.encode(outer.finalize())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn test_hmac_matches_openssl() {
    // printf %s '1700000000:@alice:localhost' | openssl dgst -sha1 -hmac hearth-turn-secret -binary | base64
    assert_eq!(
        hmac_sha1_base64(SECRET.as_bytes(), b"1700000000:@alice:localhost"),
        "2anooOu3t8akvWfp6k30ZWf9e2M="
    );
}

#[tokio::test]
async fn shared_secret_credentials_are_coturn_rest_credentials() {
    let uris = vec![
        "turn:turn.example.org:3478?transport=udp".to_owned(),
        "turns:turn.example.org:5349?transport=tcp".to_owned(),
    ];
    let turn_uris = uris.clone();
    let srv = TestServer::start_with(move |c| {
        c.turn = Turn {
            uris: turn_uris,
            shared_secret: Some(SECRET.into()),
            ttl: 600,
            ..Turn::default()
        }
    })
    .await;
    let (user, token, _) = srv.register("alice", "password-alice").await;
    let before = now_secs();
    let (status, body) = srv.get(PATH, Some(&token)).await;
    let after = now_secs();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ttl"], 600);
    assert_eq!(body["uris"], serde_json::json!(uris));
    let username = body["username"].as_str().unwrap();
    let (expiry, name) = username.split_once(':').unwrap();
    assert_eq!(name, user);
    let expiry: u64 = expiry.parse().unwrap();
    assert!(
        (before + 600..=after + 600).contains(&expiry),
        "expiry {expiry} is now + ttl"
    );
    assert_eq!(
        body["password"],
        hmac_sha1_base64(SECRET.as_bytes(), username.as_bytes())
    );

    // Another user gets credentials of their own.
    let (bob, bob_token, _) = srv.register("bob", "password-bob").await;
    let (status, body) = srv.get(PATH, Some(&bob_token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let username = body["username"].as_str().unwrap();
    assert!(username.ends_with(&format!(":{bob}")), "{username}");
    assert_eq!(
        body["password"],
        hmac_sha1_base64(SECRET.as_bytes(), username.as_bytes())
    );
}

#[tokio::test]
async fn static_credentials_and_default_ttl() {
    let srv = TestServer::start_with(|c| {
        c.turn = Turn {
            uris: vec!["turn:10.20.30.40:3478?transport=tcp".into()],
            username: Some("hearth".into()),
            password: Some("static-pass".into()),
            ..Turn::default()
        }
    })
    .await;
    let (_, token, _) = srv.register("carol", "password-carol").await;
    let (status, body) = srv.get(PATH, Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["username"], "hearth");
    assert_eq!(body["password"], "static-pass");
    assert_eq!(body["ttl"], 86400);
    assert_eq!(
        body["uris"],
        serde_json::json!(["turn:10.20.30.40:3478?transport=tcp"])
    );
    // Also on the r0 path.
    let (status, r0) = srv
        .get("/_matrix/client/r0/voip/turnServer", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{r0}");
    assert_eq!(r0["username"], "hearth");
}

#[tokio::test]
async fn unconfigured_is_not_found_and_token_is_required() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("dave", "password-dave").await;
    let (status, body) = srv.get(PATH, Some(&token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(errcode(&body), "M_NOT_FOUND");

    let (status, body) = srv.get(PATH, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(errcode(&body), "M_MISSING_TOKEN");
    let (status, body) = srv.get(PATH, Some("not-a-token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(errcode(&body), "M_UNKNOWN_TOKEN");
}
