//! Password handling: bcrypt's 72-byte limit, empty passwords, failed-login backoff, the
//! bound on concurrent hashing, and equal cost for unknown accounts.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{errcode, TestServer};

#[tokio::test]
async fn passwords_differing_after_byte_72_are_not_interchangeable() {
    let srv = TestServer::start().await;
    let prefix = "p".repeat(72);
    let (user_id, token, _) = srv.register("vic", &format!("{prefix}-one")).await;
    let (status, body) = srv.login("vic", &format!("{prefix}-two")).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    assert_eq!(srv.login("vic", &prefix).await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        srv.login("vic", &format!("{prefix}-one")).await.0,
        StatusCode::OK
    );
    // The same holds for the password stage of user-interactive auth.
    let change = "/_matrix/client/v3/account/password";
    let body = json!({"new_password": "short"});
    let (_, challenge) = srv.post(change, Some(&token), body.clone()).await;
    let session = challenge["session"].as_str().unwrap();
    let mut wrong = body.clone();
    wrong["auth"] = TestServer::password_auth(&user_id, &format!("{prefix}-two"), session);
    assert_eq!(
        srv.post(change, Some(&token), wrong).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn empty_passwords_are_refused() {
    let srv = TestServer::start().await;
    // Refused before the auth flow starts, not after it was completed.
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": "wes", "password": ""}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_WEAK_PASSWORD"),
        "{body}"
    );
    let (user_id, token, _) = srv.register("wes", "pw").await;
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/account/password",
            Some(&token),
            json!({"new_password": "", "auth": TestServer::password_auth(&user_id, "pw", "x")}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_WEAK_PASSWORD"),
        "{body}"
    );
    assert_eq!(srv.login("wes", "").await.0, StatusCode::FORBIDDEN);
    assert_eq!(srv.login("wes", "pw").await.0, StatusCode::OK);
}

#[tokio::test]
async fn repeated_failed_logins_are_backed_off() {
    let srv = TestServer::start().await;
    srv.register("xia", "right").await;
    srv.register("yan", "right").await;
    for _ in 0..3 {
        let (status, body) = srv.login("xia", "wrong").await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::FORBIDDEN, "M_FORBIDDEN")
        );
    }
    // Now even the right password waits, without a password check.
    let (status, body) = srv.login("xia", "right").await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED"),
        "{body}"
    );
    let wait = body["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!((1..=1000).contains(&wait), "{wait}");
    // Another account is not affected.
    assert_eq!(srv.login("yan", "right").await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(wait + 50)).await;
    assert_eq!(srv.login("xia", "right").await.0, StatusCode::OK);
    // Success clears the record: one more failure is answered normally.
    assert_eq!(srv.login("xia", "wrong").await.0, StatusCode::FORBIDDEN);
    assert_eq!(srv.login("xia", "right").await.0, StatusCode::OK);
}

/// Failed logins from one address do not lock the account's owner out elsewhere: a backoff
/// per account alone would let anybody who knows a user id keep its owner out for good.
#[tokio::test]
async fn failed_logins_from_one_address_do_not_lock_out_another() {
    let srv = TestServer::start_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1/32".into(), "::1".into()];
    })
    .await;
    srv.register("zoe", "right").await;
    let login_from = |ip: &'static str, password: &'static str| {
        let request = srv
            .http
            .post(format!("{}/_matrix/client/v3/login", srv.base))
            .header("x-forwarded-for", ip)
            .json(&json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "zoe"},
                "password": password,
            }));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }
    };
    for _ in 0..4 {
        let (status, _) = login_from("203.0.113.66", "wrong").await;
        assert_ne!(status, StatusCode::OK);
    }
    // The guessing address waits...
    let (status, body) = login_from("203.0.113.66", "right").await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED"),
        "{body}"
    );
    // ...and so does every address of an IPv6 guesser's /64, which it can all send from.
    for _ in 0..4 {
        let (status, _) = login_from("2001:db8:0:7::1", "wrong").await;
        assert_ne!(status, StatusCode::OK);
    }
    let (status, body) = login_from("2001:db8:0:7::2", "right").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    // ...the owner, elsewhere, does not.
    let (status, body) = login_from("198.51.100.10", "right").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// With one hashing slot and a realistic cost, concurrent logins beyond the slot are refused
/// at once with 429; and a login for an unknown user costs as much as for a known one.
#[tokio::test]
async fn password_hashing_is_bounded_and_costs_the_same_for_unknown_users() {
    let srv = TestServer::start_with(|c| {
        c.bcrypt_cost = 11;
        c.password_hash_concurrency = 1;
    })
    .await;
    srv.register("zed", "pw").await;

    // The fastest of two logins each (fewer than `FREE_FAILURES`, so none is delayed): load
    // on the machine only ever adds time, so the minimum is the cost of the login itself.
    let fastest = |user: &'static str| {
        let srv = &srv;
        async move {
            let mut best = Duration::MAX;
            for _ in 0..2 {
                let started = Instant::now();
                assert_eq!(srv.login(user, "wrong").await.0, StatusCode::FORBIDDEN);
                best = best.min(started.elapsed());
            }
            best
        }
    };
    let known = fastest("zed").await;
    for unknown in ["nobody", "@nobody:elsewhere.example"] {
        let elapsed = fastest(unknown).await;
        assert!(
            elapsed * 3 > known,
            "{unknown}: {elapsed:?} vs {known:?} for a known user"
        );
    }

    let logins = (0..4).map(|_| srv.login("zed", "pw"));
    let results = futures_util::future::join_all(logins).await;
    let ok = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    let busy: Vec<_> = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(ok + busy.len(), 4, "{results:?}");
    assert!(ok >= 1 && !busy.is_empty(), "{results:?}");
    for (_, body) in busy {
        assert_eq!(errcode(body), "M_LIMIT_EXCEEDED");
        assert!(body["retry_after_ms"].as_u64().is_some(), "{body}");
    }
}

/// A hash stored before pre-hashing (bare bcrypt of the password) still logs in, and is
/// rewritten in the current format on that login.
#[tokio::test]
async fn legacy_hashes_verify_and_are_upgraded_at_login() {
    let srv = TestServer::start().await;
    let (user_id, _, _) = srv.register("ula", "first").await;
    let services = &srv.server.as_ref().unwrap().services;
    let user_id = ruma::UserId::parse(&user_id).unwrap();
    let legacy = bcrypt::hash("old secret", 4).unwrap();
    services
        .users
        .update(&user_id, |r| r.password_hash = Some(legacy.clone()))
        .await
        .unwrap();
    assert_eq!(srv.login("ula", "first").await.0, StatusCode::FORBIDDEN);
    assert_eq!(srv.login("ula", "old secret").await.0, StatusCode::OK);
    let stored = services.users.get(&user_id).unwrap().unwrap().password_hash;
    let stored = stored.unwrap();
    assert!(stored.starts_with("sha256:$2b$"), "{stored}");
    assert_eq!(srv.login("ula", "old secret").await.0, StatusCode::OK);
}

/// The password stage of user-interactive auth shares the backoff, and says how long to wait.
#[tokio::test]
async fn uia_password_failures_are_backed_off_too() {
    let srv = TestServer::start().await;
    let (user_id, token, _) = srv.register("val", "right").await;
    let path = "/_matrix/client/v3/account/password";
    let body = json!({"new_password": "next"});
    let (_, challenge) = srv.post(path, Some(&token), body.clone()).await;
    let session = challenge["session"].as_str().unwrap();
    let attempt = |password: &str| {
        let mut body = body.clone();
        body["auth"] = TestServer::password_auth(&user_id, password, session);
        srv.post(path, Some(&token), body)
    };
    for _ in 0..3 {
        let (status, body) = attempt("wrong").await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::UNAUTHORIZED, "M_FORBIDDEN")
        );
    }
    let (status, body) = attempt("right").await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED"),
        "{body}"
    );
    assert!(body["retry_after_ms"].as_u64().is_some(), "{body}");
    // Logins of the same account wait as well.
    assert_eq!(
        srv.login("val", "right").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}
