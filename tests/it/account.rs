//! Registration, login, sessions, devices and account management over HTTP.

use hearth::config::RegistrationMode;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{errcode, TestServer};

const REGISTER: &str = "/_matrix/client/v3/register";

#[tokio::test]
async fn open_registration_uses_dummy_flow() {
    let srv = TestServer::start().await;
    let (status, body) = srv
        .post(
            REGISTER,
            None,
            json!({"username": "alice", "password": "pw"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["flows"], json!([{"stages": ["m.login.dummy"]}]));
    assert!(body["session"].is_string());
    assert_eq!(body["completed"], json!([]));

    let (user_id, token, device_id) = srv.register("alice", "pw").await;
    assert_eq!(user_id, "@alice:localhost");
    let (status, body) = srv
        .get("/_matrix/client/v3/account/whoami", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user_id"], user_id);
    assert_eq!(body["device_id"], device_id);
    assert_ne!(body["is_guest"], true);
}

#[tokio::test]
async fn registration_rejects_taken_and_invalid_names() {
    let srv = TestServer::start().await;
    srv.register("bob", "pw").await;
    let (status, body) = srv
        .post(REGISTER, None, json!({"username": "bob", "password": "x"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(errcode(&body), "M_USER_IN_USE");
    let (status, body) = srv
        .post(
            REGISTER,
            None,
            json!({"username": "b@d name", "password": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(errcode(&body), "M_INVALID_USERNAME");

    let (status, body) = srv
        .get("/_matrix/client/v3/register/available?username=bob", None)
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_USER_IN_USE")
    );
    let (status, body) = srv
        .get("/_matrix/client/v3/register/available?username=carol", None)
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"available": true})));
    let (status, body) = srv
        .get(
            "/_matrix/client/v3/register/available?username=Not%20ok",
            None,
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_USERNAME")
    );
}

#[tokio::test]
async fn registration_options_device_inhibit_login_and_guest() {
    let srv = TestServer::start().await;
    let (_, challenge) = srv.post(REGISTER, None, json!({})).await;
    let session = challenge["session"].as_str().unwrap();
    let (status, body) = srv
        .post(
            REGISTER,
            None,
            json!({"username": "dee", "password": "pw", "device_id": "MYPHONE",
                   "initial_device_display_name": "Dee's phone", "refresh_token": true,
                   "auth": {"type": "m.login.dummy", "session": session}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["device_id"], "MYPHONE");
    assert!(body["refresh_token"].is_string());
    assert!(body["expires_in_ms"].as_u64().unwrap() > 0);
    let token = body["access_token"].as_str().unwrap();
    let (_, device) = srv
        .get("/_matrix/client/v3/devices/MYPHONE", Some(token))
        .await;
    assert_eq!(device["display_name"], "Dee's phone");

    // inhibit_login: the account exists but no session is created.
    let (_, challenge) = srv.post(REGISTER, None, json!({})).await;
    let session = challenge["session"].as_str().unwrap();
    let (status, body) = srv
        .post(
            REGISTER,
            None,
            json!({"username": "eve", "password": "pw", "inhibit_login": true,
                   "auth": {"type": "m.login.dummy", "session": session}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user_id"], "@eve:localhost");
    assert!(
        body.get("access_token").is_none() && body["device_id"].is_null(),
        "{body}"
    );
    assert_eq!(srv.login("eve", "pw").await.0, StatusCode::OK);

    // Guest accounts are off by default, and say so (tests/it/guests.rs has the rest).
    let (status, body) = srv
        .post(&format!("{REGISTER}?kind=guest"), None, json!({}))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN")
    );
}

#[tokio::test]
async fn uiaa_refuses_unknown_sessions_and_unoffered_stages() {
    let srv = TestServer::start().await;
    let (status, body) = srv
        .post(
            REGISTER,
            None,
            json!({"username": "fay", "auth": {"type": "m.login.dummy", "session": "nope"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["errcode"].is_string());
    assert_ne!(body["session"], "nope");

    let (_, challenge) = srv.post(REGISTER, None, json!({})).await;
    let session = challenge["session"].as_str().unwrap();
    let (status, body) = srv
        .post(
            REGISTER,
            None,
            json!({"username": "fay", "auth": {"type": "m.login.registration_token", "token": "x", "session": session}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["errcode"].is_string(), "{body}");
    assert_eq!(srv.login("fay", "pw").await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn token_gated_registration_spends_uses() {
    let srv = TestServer::start_with(|c| c.registration.mode = RegistrationMode::Token).await;
    let services = &srv.server.as_ref().unwrap().services;
    let token = services
        .reg_tokens
        .create(Some("family-2026".into()), Some(1), None)
        .unwrap();

    let (status, body) = srv
        .get(
            &format!(
                "/_matrix/client/v1/register/m.login.registration_token/validity?token={token}"
            ),
            None,
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"valid": true})));

    let (status, challenge) = srv
        .post(REGISTER, None, json!({"username": "gus", "password": "pw"}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge["flows"],
        json!([{"stages": ["m.login.registration_token"]}])
    );
    let session = challenge["session"].as_str().unwrap();

    // Dummy auth is not enough on a token-gated server.
    let (status, _) = srv
        .post(REGISTER, None, json!({"username": "gus", "password": "pw", "auth": {"type": "m.login.dummy", "session": session}}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, bad) = srv
        .post(
            REGISTER,
            None,
            json!({"username": "gus", "password": "pw",
                   "auth": {"type": "m.login.registration_token", "token": "wrong", "session": session}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(errcode(&bad), "M_UNAUTHORIZED");

    let (status, body) = srv
        .post(
            REGISTER,
            None,
            json!({"username": "gus", "password": "pw",
                   "auth": {"type": "m.login.registration_token", "token": token, "session": session}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The single use is spent.
    let (_, body) = srv
        .get(
            &format!(
                "/_matrix/client/v1/register/m.login.registration_token/validity?token={token}"
            ),
            None,
        )
        .await;
    assert_eq!(body, json!({"valid": false}));
    let (_, challenge) = srv.post(REGISTER, None, json!({})).await;
    let (status, _) = srv
        .post(
            REGISTER,
            None,
            json!({"username": "hal", "password": "pw",
                   "auth": {"type": "m.login.registration_token", "token": token, "session": challenge["session"]}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn closed_registration_is_403() {
    let srv = TestServer::start_with(|c| c.registration.mode = RegistrationMode::Closed).await;
    let (status, body) = srv
        .post(REGISTER, None, json!({"username": "ian", "password": "pw"}))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
}

#[tokio::test]
async fn login_variants_and_failures() {
    let srv = TestServer::start().await;
    srv.register("jo", "secret").await;
    let (status, body) = srv.get("/_matrix/client/v3/login", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["flows"][0]["type"], "m.login.password");

    for user in ["jo", "@jo:localhost", "JO"] {
        let (status, body) = srv.login(user, "secret").await;
        assert_eq!(status, StatusCode::OK, "{user}: {body}");
        assert_eq!(body["user_id"], "@jo:localhost");
        assert!(body["access_token"].as_str().unwrap().len() >= 32);
        assert!(body.get("refresh_token").is_none());
    }
    // Legacy `user` field.
    let (status, _) = srv
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password", "user": "jo", "password": "secret"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = srv.login("jo", "wrong").await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    let (status, body) = srv.login("nobody", "secret").await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.sso_unknown", "token": "x"}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "unsupported login type: {body}"
    );
    // A login token that was never issued (spec: 403 M_FORBIDDEN; see login_token.rs).
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.token", "token": "x"}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
}

#[tokio::test]
async fn login_with_existing_device_id_replaces_its_token() {
    let srv = TestServer::start().await;
    srv.register("kim", "pw").await;
    let body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "kim"},
                      "password": "pw", "device_id": "LAPTOP"});
    let (_, first) = srv
        .post("/_matrix/client/v3/login", None, body.clone())
        .await;
    let (_, second) = srv.post("/_matrix/client/v3/login", None, body).await;
    assert_eq!(second["device_id"], "LAPTOP");
    let old = first["access_token"].as_str().unwrap();
    let new = second["access_token"].as_str().unwrap();
    assert_eq!(
        srv.get("/_matrix/client/v3/account/whoami", Some(old))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        srv.get("/_matrix/client/v3/account/whoami", Some(new))
            .await
            .0,
        StatusCode::OK
    );
}

async fn login_with_refresh(srv: &TestServer, user: &str, pw: &str) -> Value {
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                   "password": pw, "refresh_token": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn refresh_tokens_rotate_per_spec() {
    let srv = TestServer::start().await;
    srv.register("lee", "pw").await;
    let login = login_with_refresh(&srv, "lee", "pw").await;
    assert!(login["expires_in_ms"].as_u64().unwrap() > 0);
    let r1 = login["refresh_token"].as_str().unwrap().to_owned();
    let a1 = login["access_token"].as_str().unwrap().to_owned();

    let (status, refreshed) = srv
        .post(
            "/_matrix/client/v3/refresh",
            None,
            json!({"refresh_token": r1}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let a2 = refreshed["access_token"].as_str().unwrap().to_owned();
    let r2 = refreshed["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(a2, a1);
    assert_ne!(r2, r1);
    // The replaced access token is gone; the device is the same.
    assert_eq!(
        srv.get("/_matrix/client/v3/account/whoami", Some(&a1))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    // Until the new pair is used, the old refresh token may be replayed (lost response).
    let (status, replay) = srv
        .post(
            "/_matrix/client/v3/refresh",
            None,
            json!({"refresh_token": r1}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{replay}");
    let a3 = replay["access_token"].as_str().unwrap().to_owned();
    let (status, who) = srv
        .get("/_matrix/client/v3/account/whoami", Some(&a3))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(who["device_id"], login["device_id"]);
    // Using the new access token retired the old refresh token.
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/refresh",
            None,
            json!({"refresh_token": r1}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN")
    );
    assert_eq!(body["soft_logout"], false);

    let (status, body) = srv
        .post(
            "/_matrix/client/v3/refresh",
            None,
            json!({"refresh_token": "hrt_bogus"}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN")
    );
}

#[tokio::test]
async fn logout_and_logout_all() {
    let srv = TestServer::start().await;
    let (_, t1, d1) = srv.register("mia", "pw").await;
    let (_, l2) = srv.login("mia", "pw").await;
    let (_, l3) = srv.login("mia", "pw").await;
    let t2 = l2["access_token"].as_str().unwrap();
    let t3 = l3["access_token"].as_str().unwrap();

    let (status, _) = srv
        .post("/_matrix/client/v3/logout", Some(t1.as_str()), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = srv
        .get("/_matrix/client/v3/account/whoami", Some(&t1))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN")
    );
    let (_, devices) = srv.get("/_matrix/client/v3/devices", Some(t2)).await;
    let ids: Vec<&str> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert!(!ids.contains(&d1.as_str()), "logout deletes the device");
    assert_eq!(ids.len(), 2);

    let (status, _) = srv
        .post("/_matrix/client/v3/logout/all", Some(t2), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    for t in [t2, t3] {
        assert_eq!(
            srv.get("/_matrix/client/v3/account/whoami", Some(t))
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(srv.login("mia", "pw").await.0, StatusCode::OK);
}

/// Runs a UIAA-protected request through the password flow and returns the final response.
async fn with_password_uiaa(
    srv: &TestServer,
    method: Method,
    path: &str,
    token: &str,
    user: &str,
    pw: &str,
    body: Value,
) -> (StatusCode, Value) {
    let (status, challenge) = srv
        .call(method.clone(), path, Some(token), Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    assert_eq!(
        challenge["flows"],
        json!([{"stages": ["m.login.password"]}])
    );
    let session = challenge["session"].as_str().unwrap();

    let mut wrong = body.clone();
    wrong["auth"] = TestServer::password_auth(user, "not-the-password", session);
    let (status, failed) = srv
        .call(method.clone(), path, Some(token), Some(wrong))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(errcode(&failed), "M_FORBIDDEN");
    assert_eq!(failed["session"], session);

    let mut good = body;
    good["auth"] = TestServer::password_auth(user, pw, session);
    srv.call(method, path, Some(token), Some(good)).await
}

#[tokio::test]
async fn change_password_with_uiaa_logs_out_other_devices() {
    let srv = TestServer::start().await;
    let (user_id, t1, _) = srv.register("ned", "old-pw").await;
    let (_, other) = srv.login("ned", "old-pw").await;
    let other = other["access_token"].as_str().unwrap();

    let (status, body) = with_password_uiaa(
        &srv,
        Method::POST,
        "/_matrix/client/v3/account/password",
        &t1,
        &user_id,
        "old-pw",
        json!({"new_password": "new-pw"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        srv.get("/_matrix/client/v3/account/whoami", Some(&t1))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        srv.get("/_matrix/client/v3/account/whoami", Some(other))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(srv.login("ned", "old-pw").await.0, StatusCode::FORBIDDEN);
    assert_eq!(srv.login("ned", "new-pw").await.0, StatusCode::OK);

    // logout_devices: false keeps the other sessions.
    let (_, keep) = srv.login("ned", "new-pw").await;
    let keep = keep["access_token"].as_str().unwrap();
    let (status, _) = with_password_uiaa(
        &srv,
        Method::POST,
        "/_matrix/client/v3/account/password",
        &t1,
        "ned",
        "new-pw",
        json!({"new_password": "newer-pw", "logout_devices": false}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        srv.get("/_matrix/client/v3/account/whoami", Some(keep))
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn uiaa_session_is_bound_to_user_and_endpoint() {
    let srv = TestServer::start().await;
    let (_, t_ola, _) = srv.register("ola", "pw-ola").await;
    let (_, t_pia, _) = srv.register("pia", "pw-pia").await;
    let (_, challenge) = srv
        .post(
            "/_matrix/client/v3/account/password",
            Some(&t_ola),
            json!({"new_password": "x"}),
        )
        .await;
    let session = challenge["session"].as_str().unwrap();
    // Pia cannot use Ola's session, even with her own correct password.
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/account/password",
            Some(&t_pia),
            json!({"new_password": "x", "auth": TestServer::password_auth("pia", "pw-pia", session)}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_ne!(body["session"], session);
    // Nor can Ola authenticate with Pia's password.
    let (status, _) = srv
        .post(
            "/_matrix/client/v3/account/password",
            Some(&t_ola),
            json!({"new_password": "x", "auth": TestServer::password_auth("pia", "pw-pia", session)}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(srv.login("ola", "pw-ola").await.0, StatusCode::OK);
}

#[tokio::test]
async fn deactivation_removes_access_and_reserves_the_id() {
    let srv = TestServer::start().await;
    let (user_id, token, _) = srv.register("pat", "pw").await;
    let (_, second) = srv.login("pat", "pw").await;
    let (status, body) = with_password_uiaa(
        &srv,
        Method::POST,
        "/_matrix/client/v3/account/deactivate",
        &token,
        &user_id,
        "pw",
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id_server_unbind_result"], "no-support");
    for t in [token.as_str(), second["access_token"].as_str().unwrap()] {
        assert_eq!(
            srv.get("/_matrix/client/v3/account/whoami", Some(t))
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );
    }
    let (status, body) = srv.login("pat", "pw").await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_USER_DEACTIVATED")
    );
    let (status, body) = srv
        .post(REGISTER, None, json!({"username": "pat", "password": "pw"}))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_USER_IN_USE")
    );
}

#[tokio::test]
async fn device_management() {
    let srv = TestServer::start().await;
    let (user_id, token, device) = srv.register("rae", "pw").await;
    let (_, l2) = srv.login("rae", "pw").await;
    let (_, l3) = srv.login("rae", "pw").await;
    let d2 = l2["device_id"].as_str().unwrap().to_owned();
    let d3 = l3["device_id"].as_str().unwrap().to_owned();

    let (status, body) = srv.get("/_matrix/client/v3/devices", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["devices"].as_array().unwrap().len(), 3);
    // A device that was used has last-seen data.
    let (_, me) = srv
        .get(
            &format!("/_matrix/client/v3/devices/{device}"),
            Some(&token),
        )
        .await;
    assert_eq!(me["device_id"], device.as_str());
    assert_eq!(me["last_seen_ip"], "127.0.0.1");
    assert!(me["last_seen_ts"].as_u64().unwrap() > 0);

    let (status, _) = srv
        .put(
            &format!("/_matrix/client/v3/devices/{d2}"),
            Some(&token),
            json!({"display_name": "Kitchen tablet"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, got) = srv
        .get(&format!("/_matrix/client/v3/devices/{d2}"), Some(&token))
        .await;
    assert_eq!(got["display_name"], "Kitchen tablet");

    let (status, body) = srv
        .get("/_matrix/client/v3/devices/NOPE", Some(&token))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    let (status, _) = srv
        .put(
            "/_matrix/client/v3/devices/NOPE",
            Some(&token),
            json!({"display_name": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body) = with_password_uiaa(
        &srv,
        Method::DELETE,
        &format!("/_matrix/client/v3/devices/{d2}"),
        &token,
        &user_id,
        "pw",
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        srv.get(
            "/_matrix/client/v3/account/whoami",
            Some(l2["access_token"].as_str().unwrap())
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );

    let (status, body) = with_password_uiaa(
        &srv,
        Method::POST,
        "/_matrix/client/v3/delete_devices",
        &token,
        &user_id,
        "pw",
        json!({"devices": [d3, "UNKNOWN"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = srv.get("/_matrix/client/v3/devices", Some(&token)).await;
    let ids: Vec<&str> = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![device.as_str()]);
}

#[tokio::test]
async fn accounts_and_sessions_survive_restart() {
    let mut srv = TestServer::start().await;
    let (user_id, token, _) = srv.register("sam", "pw").await;
    srv.restart().await;
    let (status, body) = srv
        .get("/_matrix/client/v3/account/whoami", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user_id"], user_id);
    assert_eq!(srv.login("sam", "pw").await.0, StatusCode::OK);
}

#[tokio::test]
async fn expired_access_token_is_a_soft_logout_and_refresh_recovers() {
    use hearth::service::sessions::{AccessToken, AccessTokensTable};
    use hearth::store::Batch;

    let srv = TestServer::start().await;
    srv.register("tia", "pw").await;
    let login = login_with_refresh(&srv, "tia", "pw").await;
    let access = login["access_token"].as_str().unwrap();
    // Age the token: rewrite its record with an expiry in the past.
    let store = &srv.server.as_ref().unwrap().services.store;
    let rows = store
        .range::<AccessTokensTable>(None, false, usize::MAX)
        .unwrap();
    let (hash, record) = rows
        .into_iter()
        .find(|(_, r)| r.expires_ms.is_some())
        .unwrap();
    let mut batch = Batch::new();
    batch.put::<AccessTokensTable>(
        &hash,
        &AccessToken {
            expires_ms: Some(1),
            ..record
        },
    );
    store.commit(batch).await.unwrap();

    let (status, body) = srv
        .get("/_matrix/client/v3/account/whoami", Some(access))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN")
    );
    assert_eq!(body["soft_logout"], true);
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/refresh",
            None,
            json!({"refresh_token": login["refresh_token"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = srv
        .get(
            "/_matrix/client/v3/account/whoami",
            body["access_token"].as_str(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}
