//! E-mail 3PIDs without mail delivery (always run): a server without `[email]`, and one whose
//! SMTP server is down — msisdn, identity-server binds, unknown addresses, malformed requests,
//! the validation page with a bad link, config validation.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{errcode, TestServer};
use crate::email::{click, email_auth, email_config, request_token};

/// Without `[email]`: every e-mail endpoint says so, and no flow offers the e-mail stage.
#[tokio::test]
async fn without_smtp_email_is_not_supported() {
    let srv = TestServer::start().await;
    for kind in ["add", "register", "password"] {
        let (status, body) = request_token(&srv, kind, "s", "x@example.org", 1).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{kind}: {body}");
        assert_eq!(errcode(&body), "M_THREEPID_MEDIUM_NOT_SUPPORTED", "{kind}");
    }
    let (status, challenge) = srv
        .post("/_matrix/client/v3/register", None, json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge["flows"], json!([{"stages": ["m.login.dummy"]}]));
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/account/password",
            None,
            json!({"new_password": "x-password"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(errcode(&body), "M_MISSING_TOKEN");

    let (_, token, _) = srv.register("frank", "frank-password").await;
    let (status, challenge) = srv
        .post(
            "/_matrix/client/v3/account/password",
            Some(&token),
            json!({"new_password": "x-password"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge["flows"],
        json!([{"stages": ["m.login.password"]}])
    );
    let (status, body) = srv
        .get("/_matrix/client/v3/account/3pid", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"threepids": []}));
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/account/3pid/add",
            Some(&token),
            json!({"sid": "a", "client_secret": "b"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(errcode(&body), "M_THREEPID_MEDIUM_NOT_SUPPORTED");
}

/// What needs no mail delivery: msisdn, identity-server binds, unknown addresses, malformed
/// requests, the validation page with a bad link, and a mail server that is down.
#[tokio::test]
async fn honest_answers_without_delivery() {
    // A port nothing listens on: the mail cannot be sent.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let srv = TestServer::start_with(|c| c.email = email_config(port)).await;
    let (_, token, _) = srv.register("gina", "gina-password").await;

    for path in [
        "/_matrix/client/v3/register/msisdn/requestToken",
        "/_matrix/client/v3/account/3pid/msisdn/requestToken",
        "/_matrix/client/v3/account/password/msisdn/requestToken",
    ] {
        let (status, body) = srv
            .post(path, None, json!({"client_secret": "s", "country": "GB", "phone_number": "07700900001", "send_attempt": 1}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(errcode(&body), "M_THREEPID_MEDIUM_NOT_SUPPORTED", "{path}");
    }
    let creds = json!({"sid": "abc", "client_secret": "def", "id_server": "id.example.org", "id_access_token": "t"});
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/account/3pid/bind",
            Some(&token),
            creds.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(errcode(&body), "M_SERVER_NOT_TRUSTED");
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/account/3pid",
            Some(&token),
            json!({"three_pid_creds": creds}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(errcode(&body), "M_SERVER_NOT_TRUSTED");
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/account/3pid/unbind",
            Some(&token),
            json!({"medium": "email", "address": "g@example.org"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id_server_unbind_result"], "no-support");

    let (status, body) = request_token(&srv, "password", "s", "nobody@example.org", 1).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(errcode(&body), "M_THREEPID_NOT_FOUND");
    let (status, body) = request_token(&srv, "add", "bad/secret", "g@example.org", 1).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(errcode(&body), "M_INVALID_PARAM");
    // The SMTP server is down: a clear failure, and no session left behind to answer a retry.
    let (status, body) = request_token(&srv, "add", "s", "g@example.org", 1).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(errcode(&body), "M_UNKNOWN");
    let (status, _) = request_token(&srv, "add", "s", "g@example.org", 1).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);

    // Registration and password flows offer the e-mail stage.
    let (_, challenge) = srv
        .post("/_matrix/client/v3/register", None, json!({}))
        .await;
    assert_eq!(
        challenge["flows"],
        json!([{"stages": ["m.login.dummy"]}, {"stages": ["m.login.email.identity"]}])
    );
    // An unknown session cannot complete the e-mail stage.
    let (status, challenge) = srv
        .post(
            "/_matrix/client/v3/account/password",
            None,
            json!({"new_password": "p-password"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/account/password",
            None,
            json!({"new_password": "p-password", "auth": email_auth("nosuch", "x", challenge["session"].as_str().unwrap())}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(errcode(&body), "M_THREEPID_AUTH_FAILED");

    let page = click(&format!(
        "{}/_hearth/email/validate?sid=x&client_secret=y&token=z",
        srv.base
    ))
    .await;
    assert_eq!(page.status(), StatusCode::BAD_REQUEST);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let (status, body) = srv
        .post(
            "/_hearth/email/submit_token",
            None,
            json!({"sid": "x", "client_secret": "y", "token": "z"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(errcode(&body), "M_INVALID_PARAM");

    // The config needs a sender and a base URL for links once a host is set.
    let mut config = srv.config.clone();
    config.email.from = None;
    assert!(config.validate().is_err());
    let mut config = srv.config.clone();
    config.email.base_url = None;
    assert!(config.validate().is_err());
    config.well_known.client_base_url = Some("https://matrix.example.org".into());
    assert!(config.validate().is_ok());
}
