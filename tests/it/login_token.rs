//! `m.login.token` and `POST /login/get_token` (spec: Login, Login token): advertised, UIA
//! protected every time, single use (also under concurrent logins), short-lived.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{errcode, TestServer};

const GET_TOKEN: &str = "/_matrix/client/v1/login/get_token";

/// Runs the password UIA flow of `get_token`; the response body.
async fn get_token(srv: &TestServer, token: &str, user: &str, password: &str) -> Value {
    let (status, challenge) = srv.post(GET_TOKEN, Some(token), json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    assert_eq!(
        challenge["flows"],
        json!([{"stages": ["m.login.password"]}])
    );
    let session = challenge["session"].as_str().unwrap();
    let (status, body) = srv
        .post(
            GET_TOKEN,
            Some(token),
            json!({"auth": TestServer::password_auth(user, password, session)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn token_login(token: &str) -> Value {
    json!({"type": "m.login.token", "token": token})
}

#[tokio::test]
async fn login_token_is_advertised_and_logs_in_once() {
    let srv = TestServer::start().await;
    let (alice, access, device) = srv.register("alice", "pw-alice").await;

    let (_, flows) = srv.get("/_matrix/client/v3/login", None).await;
    assert!(
        flows["flows"]
            .as_array()
            .unwrap()
            .contains(&json!({"type": "m.login.token", "get_login_token": true})),
        "{flows}"
    );
    let (_, caps) = srv
        .get("/_matrix/client/v3/capabilities", Some(&access))
        .await;
    assert_eq!(
        caps["capabilities"]["m.get_login_token"],
        json!({"enabled": true})
    );

    // A wrong password does not yield a token.
    let (_, challenge) = srv.post(GET_TOKEN, Some(&access), json!({})).await;
    let session = challenge["session"].as_str().unwrap();
    let (status, body) = srv
        .post(
            GET_TOKEN,
            Some(&access),
            json!({"auth": TestServer::password_auth("alice", "wrong", session)}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.get("login_token").is_none());

    let body = get_token(&srv, &access, "alice", "pw-alice").await;
    assert_eq!(body["expires_in_ms"], 120_000);
    let login_token = body["login_token"].as_str().unwrap().to_owned();
    // Not an access token.
    let (status, _) = srv
        .get("/_matrix/client/v3/account/whoami", Some(&login_token))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, body) = srv
        .post("/_matrix/client/v3/login", None, token_login(&login_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], alice.as_str());
    assert_ne!(body["device_id"], device.as_str(), "a new device");
    let new_access = body["access_token"].as_str().unwrap();
    let (status, body) = srv
        .get("/_matrix/client/v3/account/whoami", Some(new_access))
        .await;
    assert_eq!(
        (status, body["user_id"].as_str()),
        (StatusCode::OK, Some(alice.as_str()))
    );

    // Single use.
    let (status, body) = srv
        .post("/_matrix/client/v3/login", None, token_login(&login_token))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    let (status, body) = srv
        .post("/_matrix/client/v3/login", None, token_login("hlt_made_up"))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    // Every token needs the password again (no reuse of the completed session).
    let second = get_token(&srv, &access, "alice", "pw-alice").await;
    assert_ne!(second["login_token"], login_token.as_str());
}

#[tokio::test]
async fn concurrent_logins_with_one_token_one_wins() {
    let srv = TestServer::start().await;
    let (_, access, _) = srv.register("alice", "pw-alice").await;
    for _ in 0..3 {
        let body = get_token(&srv, &access, "alice", "pw-alice").await;
        let login_token = body["login_token"].as_str().unwrap().to_owned();
        let attempts =
            (0..8).map(|_| srv.post("/_matrix/client/v3/login", None, token_login(&login_token)));
        let results = futures_util::future::join_all(attempts).await;
        let won = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
        let refused = results
            .iter()
            .filter(|(s, b)| *s == StatusCode::FORBIDDEN && errcode(b) == "M_FORBIDDEN")
            .count();
        assert_eq!((won, refused), (1, 7), "{results:?}");
    }
}

#[tokio::test]
async fn expired_login_token_is_refused() {
    let srv = TestServer::start().await;
    let (_, access, _) = srv.register("alice", "pw-alice").await;
    let services = srv.server.as_ref().unwrap().services.clone();
    services
        .login_tokens
        .set_lifetime(Duration::from_millis(200));
    let body = get_token(&srv, &access, "alice", "pw-alice").await;
    assert_eq!(body["expires_in_ms"], 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let login_token = body["login_token"].as_str().unwrap();
    let (status, body) = srv
        .post("/_matrix/client/v3/login", None, token_login(login_token))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    let swept = services
        .login_tokens
        .sweep(hearth::service::users::now_ms())
        .await
        .unwrap();
    assert_eq!(swept, 1);
}

/// The single-use guarantee itself, where HTTP timing cannot hide it: two logins that both
/// found the token valid stage its spending; exactly one of their batches commits.
#[tokio::test]
async fn spending_a_token_twice_conflicts() {
    use hearth::store::{Batch, CommitError};
    let srv = TestServer::start().await;
    let (_, access, _) = srv.register("alice", "pw-alice").await;
    let body = get_token(&srv, &access, "alice", "pw-alice").await;
    let services = srv.server.as_ref().unwrap().services.clone();
    let tokens = &services.login_tokens;
    let found = tokens
        .find(body["login_token"].as_str().unwrap())
        .unwrap()
        .expect("valid token");
    let (mut first, mut second) = (Batch::new(), Batch::new());
    tokens.stage_spend(&mut first, &found);
    tokens.stage_spend(&mut second, &found);
    let (a, b) = tokio::join!(services.store.commit(first), services.store.commit(second));
    let conflicts = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Err(CommitError::Conflict)))
        .count();
    assert_eq!(
        (a.is_ok() || b.is_ok(), conflicts),
        (true, 1),
        "{a:?} {b:?}"
    );
    assert!(tokens
        .find(body["login_token"].as_str().unwrap())
        .unwrap()
        .is_none());
}
