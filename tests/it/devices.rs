//! Devices and user-interactive auth sessions: last-seen data and the shape of `GET
//! /devices`, and UIA sessions bound to the operation that started them.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{errcode, TestServer};

/// Every device carries last-seen data from its login on (never `null`), and use refreshes it
/// (throttled per device). `display_name` is always present, `null` for an unnamed device, as
/// matrix-nio's schema requires the key.
#[tokio::test]
async fn device_list_has_last_seen_from_login_in_the_shape_nio_needs() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("lou", "pw").await;
    let (_, second) = srv.login("lou", "pw").await;
    let d2 = second["device_id"].as_str().unwrap().to_owned();
    let t2 = second["access_token"].as_str().unwrap().to_owned();

    let seen = |body: &Value| -> u64 {
        let devices = body["devices"].as_array().unwrap();
        for device in devices {
            // matrix-nio requires these four keys (display_name may be null).
            for key in ["device_id", "display_name", "last_seen_ip", "last_seen_ts"] {
                assert!(device.get(key).is_some(), "{key} missing in {device}");
            }
            for (key, value) in device.as_object().unwrap() {
                if key != "display_name" {
                    assert!(!value.is_null(), "{key} is null in {device}");
                }
            }
        }
        let device = devices.iter().find(|d| d["device_id"] == d2.as_str());
        let device = device.expect("second device listed");
        assert_eq!(device["last_seen_ip"], "127.0.0.1", "{device}");
        device["last_seen_ts"].as_u64().expect("last_seen_ts")
    };
    // Never used since login: the login itself is the last sighting.
    let (status, body) = srv.get("/_matrix/client/v3/devices", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    let at_login = seen(&body);
    let unnamed = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == d2.as_str());
    assert_eq!(unnamed.unwrap()["display_name"], Value::Null, "{body}");

    // The first use of the new token records a new sighting.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let whoami = "/_matrix/client/v3/account/whoami";
    assert_eq!(srv.get(whoami, Some(&t2)).await.0, StatusCode::OK);
    let (_, body) = srv.get("/_matrix/client/v3/devices", Some(&token)).await;
    let first_use = seen(&body);
    assert!(first_use > at_login, "{first_use} > {at_login}");
    // Later uses within the throttle interval do not write again.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(srv.get(whoami, Some(&t2)).await.0, StatusCode::OK);
    let (_, body) = srv
        .get(&format!("/_matrix/client/v3/devices/{d2}"), Some(&t2))
        .await;
    assert_eq!(body["last_seen_ts"].as_u64(), Some(first_use), "{body}");
    assert_eq!(body["display_name"], Value::Null, "{body}");
    assert!(body.get("display_name").is_some(), "{body}");
}

/// A UIA session is bound to the exact operation that started it: a session begun to delete
/// one device cannot complete the deletion of another (nor another body on other endpoints).
#[tokio::test]
async fn uiaa_session_is_bound_to_the_operation() {
    let srv = TestServer::start().await;
    let (user_id, token, _) = srv.register("uma", "pw").await;
    let mut others = Vec::new();
    for _ in 0..2 {
        let (_, login) = srv.login("uma", "pw").await;
        others.push(login["device_id"].as_str().unwrap().to_owned());
    }
    let (a, b) = (&others[0], &others[1]);
    let delete = |device: &str| format!("/_matrix/client/v3/devices/{device}");

    let (status, challenge) = srv
        .call(Method::DELETE, &delete(a), Some(&token), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let session = challenge["session"].as_str().unwrap().to_owned();
    // Completing A's session as the deletion of B is refused, and B stays.
    let auth = TestServer::password_auth(&user_id, "pw", &session);
    let (status, body) = srv
        .call(
            Method::DELETE,
            &delete(b),
            Some(&token),
            Some(json!({"auth": auth})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(errcode(&body), "M_FORBIDDEN");
    assert_ne!(body["session"], session.as_str());
    let (status, _) = srv.get(&delete(b), Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "device B must survive");
    // The session still completes the operation it was started for.
    let (status, body) = srv
        .call(
            Method::DELETE,
            &delete(a),
            Some(&token),
            Some(json!({"auth": auth})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        srv.get(&delete(a), Some(&token)).await.0,
        StatusCode::NOT_FOUND
    );

    // Bulk deletion: the set of devices is part of the operation (order is not).
    let bulk = "/_matrix/client/v3/delete_devices";
    let (_, challenge) = srv
        .post(bulk, Some(&token), json!({"devices": [b, "X"]}))
        .await;
    let session = challenge["session"].as_str().unwrap().to_owned();
    let auth = TestServer::password_auth(&user_id, "pw", &session);
    let (status, body) = srv
        .post(
            bulk,
            Some(&token),
            json!({"devices": [b, "Y"], "auth": auth}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_FORBIDDEN")
    );
    assert_eq!(srv.get(&delete(b), Some(&token)).await.0, StatusCode::OK);
    let (status, body) = srv
        .post(
            bulk,
            Some(&token),
            json!({"devices": ["X", b], "auth": auth}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        srv.get(&delete(b), Some(&token)).await.0,
        StatusCode::NOT_FOUND
    );

    // Password change: a session started for one new password cannot set another.
    let change = "/_matrix/client/v3/account/password";
    let (_, challenge) = srv
        .post(change, Some(&token), json!({"new_password": "first"}))
        .await;
    let session = challenge["session"].as_str().unwrap().to_owned();
    let auth = TestServer::password_auth(&user_id, "pw", &session);
    let (status, body) = srv
        .post(
            change,
            Some(&token),
            json!({"new_password": "second", "auth": auth}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_FORBIDDEN")
    );
    assert_eq!(srv.login("uma", "second").await.0, StatusCode::FORBIDDEN);
    assert_eq!(srv.login("uma", "pw").await.0, StatusCode::OK);
}
