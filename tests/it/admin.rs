//! Server administration: admins (the `admin` flag), whois, account locking and suspension
//! (spec: Server Administration, Account moderation).

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode, TestServer};

/// Registers `name` and makes it a server admin (what `hearth user admin NAME on` does).
async fn admin(srv: &TestServer, name: &str) -> (String, String) {
    let (user, token, _) = srv.register(name, "pw-admin").await;
    let services = &srv.server.as_ref().unwrap().services;
    let user_id = ruma::UserId::parse(&user).unwrap();
    services.users.set_admin(&user_id, true).await.unwrap();
    (user, token)
}

fn lock_path(user: &str) -> String {
    format!("/_matrix/client/v1/admin/lock/{}", enc(user))
}

fn suspend_path(user: &str) -> String {
    format!("/_matrix/client/v1/admin/suspend/{}", enc(user))
}

async fn send(srv: &TestServer, token: &str, room: &str, txn: &str) -> (StatusCode, Value) {
    srv.put(
        &format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
            enc(room)
        ),
        Some(token),
        json!({"msgtype": "m.text", "body": txn}),
    )
    .await
}

#[tokio::test]
async fn whois_lists_devices_and_connections_for_admins_and_oneself() {
    let srv = TestServer::start().await;
    let (_, admin_token) = admin(&srv, "root").await;
    let (alice, alice_token, alice_device) = srv.register("alice", "pw-alice").await;
    let (_, bob_token, _) = srv.register("bob", "pw-bob").await;

    // A request with a user agent records the connection.
    let response = srv
        .http
        .get(format!("{}/_matrix/client/v3/account/whoami", srv.base))
        .bearer_auth(&alice_token)
        .header("user-agent", "hearth-test/1.0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let path = format!("/_matrix/client/v3/admin/whois/{}", enc(&alice));
    let (status, body) = srv.get(&path, Some(&admin_token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], alice.as_str());
    let connections = &body["devices"][&alice_device]["sessions"][0]["connections"];
    assert_eq!(connections[0]["ip"], "127.0.0.1", "{body}");
    assert_eq!(connections[0]["user_agent"], "hearth-test/1.0", "{body}");
    assert!(connections[0]["last_seen"].as_u64().unwrap() > 0);

    // Oneself: allowed; someone else, for a non-admin: 403.
    let (status, body) = srv.get(&path, Some(&alice_token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = srv.get(&path, Some(&bob_token)).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    let (status, body) = srv
        .get(
            &format!(
                "/_matrix/client/v3/admin/whois/{}",
                enc("@nobody:localhost")
            ),
            Some(&admin_token),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );

    // A logged-out device leaves whois with its connections.
    let (status, _) = srv
        .post("/_matrix/client/v3/logout", Some(&alice_token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = srv.get(&path, Some(&admin_token)).await;
    assert!(body["devices"].get(&alice_device).is_none(), "{body}");
}

#[tokio::test]
async fn moderation_endpoints_are_for_admins_on_local_non_admin_accounts() {
    let srv = TestServer::start().await;
    let (root, root_token) = admin(&srv, "root").await;
    let (other_admin, _) = admin(&srv, "root2").await;
    let (alice, alice_token, _) = srv.register("alice", "pw-alice").await;

    for path in [lock_path(&alice), suspend_path(&alice)] {
        // Non-admins are refused before any lookup, even for unknown accounts.
        for target in [path.clone(), lock_path("@ghost:localhost")] {
            let (status, body) = srv.get(&target, Some(&alice_token)).await;
            assert_eq!(
                (status, errcode(&body)),
                (StatusCode::FORBIDDEN, "M_FORBIDDEN"),
                "{target}"
            );
        }
        let key = if path.contains("/lock/") {
            "locked"
        } else {
            "suspended"
        };
        let (status, body) = srv
            .put(&path, Some(&alice_token), json!({ key: true }))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        let (status, body) = srv.get(&path, Some(&root_token)).await;
        assert_eq!((status, &body), (StatusCode::OK, &json!({ key: false })));
    }
    let (status, body) = srv
        .get(&lock_path("@alice:elsewhere.example"), Some(&root_token))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );
    let (status, body) = srv
        .get(&suspend_path("@ghost:localhost"), Some(&root_token))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    // Not on another admin, and not on oneself.
    let (status, _) = srv
        .put(
            &lock_path(&other_admin),
            Some(&root_token),
            json!({"locked": true}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = srv
        .put(
            &suspend_path(&root),
            Some(&root_token),
            json!({"suspended": true}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = srv.get(&lock_path(&root), Some(&root_token)).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"locked": false})));

    // Capabilities: moderation is advertised to admins only.
    let (_, caps) = srv
        .get("/_matrix/client/v3/capabilities", Some(&root_token))
        .await;
    assert_eq!(
        caps["capabilities"]["m.account_moderation"],
        json!({"suspend": true, "lock": true})
    );
    let (_, caps) = srv
        .get("/_matrix/client/v3/capabilities", Some(&alice_token))
        .await;
    assert!(
        caps["capabilities"].get("m.account_moderation").is_none(),
        "{caps}"
    );
}

#[tokio::test]
async fn a_locked_account_can_only_log_out_until_unlocked() {
    let srv = TestServer::start().await;
    let (_, root_token) = admin(&srv, "root").await;
    let (alice, alice_token, _) = srv.register("alice", "pw-alice").await;
    let (_, second) = srv.login("alice", "pw-alice").await;
    let second = second["access_token"].as_str().unwrap().to_owned();
    let (status, refreshing) = srv
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw-alice", "refresh_token": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{refreshing}");
    let refresh = json!({"refresh_token": refreshing["refresh_token"]});

    let (status, body) = srv
        .put(
            &lock_path(&alice),
            Some(&root_token),
            json!({"locked": true}),
        )
        .await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"locked": true})));
    let (status, body) = srv.get(&lock_path(&alice), Some(&root_token)).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"locked": true})));

    for (method, path, body) in [
        (Method::GET, "/_matrix/client/v3/sync", None),
        (Method::GET, "/_matrix/client/v3/account/whoami", None),
        (Method::GET, "/_matrix/client/v3/capabilities", None),
        (
            Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(json!({})),
        ),
    ] {
        let (status, body) = srv.call(method, path, Some(&alice_token), body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert_eq!(errcode(&body), "M_USER_LOCKED", "{path}");
        assert_eq!(body["soft_logout"], true, "{path}");
    }
    // No new access token while locked, with the right password...
    let (status, body) = srv.login("alice", "pw-alice").await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_USER_LOCKED")
    );
    // ...and the lock says nothing to someone without it.
    let (status, body) = srv.login("alice", "wrong").await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );
    // Nor by refreshing.
    let (status, body) = srv
        .post("/_matrix/client/v3/refresh", None, refresh.clone())
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_USER_LOCKED")
    );
    // Logout still works (and ends that session for good).
    let (status, body) = srv
        .post("/_matrix/client/v3/logout", Some(&second), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The lock is durable and the session kept: unlocking restores the first token.
    let (status, _) = srv
        .put(
            &lock_path(&alice),
            Some(&root_token),
            json!({"locked": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = srv
        .get("/_matrix/client/v3/account/whoami", Some(&alice_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = srv
        .get("/_matrix/client/v3/account/whoami", Some(&second))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN"),
        "the logged-out session is gone"
    );
    let (status, _) = srv.login("alice", "pw-alice").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = srv.post("/_matrix/client/v3/refresh", None, refresh).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_lock_survives_a_restart() {
    let mut srv = TestServer::start().await;
    let (_, root_token) = admin(&srv, "root").await;
    let (alice, alice_token, _) = srv.register("alice", "pw-alice").await;
    let (status, _) = srv
        .put(
            &lock_path(&alice),
            Some(&root_token),
            json!({"locked": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    srv.restart().await;
    let (status, body) = srv
        .get("/_matrix/client/v3/account/whoami", Some(&alice_token))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_USER_LOCKED")
    );
}

#[tokio::test]
async fn a_suspended_account_can_read_but_not_act() {
    let srv = TestServer::start().await;
    let (root, root_token) = admin(&srv, "root").await;
    let (alice, alice_token, _) = srv.register("alice", "pw-alice").await;
    let room = create_room(&srv, &alice_token, json!({"preset": "public_chat"})).await;
    let other_room = create_room(&srv, &root_token, json!({"preset": "public_chat"})).await;
    crate::common::join(&srv, &root_token, &room).await;
    let (status, body) = send(&srv, &alice_token, &room, "before").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let own_event = body["event_id"].as_str().unwrap().to_owned();
    let (_, body) = send(&srv, &root_token, &room, "from-root").await;
    let root_event = body["event_id"].as_str().unwrap().to_owned();

    let (status, body) = srv
        .put(
            &suspend_path(&alice),
            Some(&root_token),
            json!({"suspended": true}),
        )
        .await;
    assert_eq!(
        (status, &body),
        (StatusCode::OK, &json!({"suspended": true}))
    );

    let suspended = |(status, body): (StatusCode, Value), what: &str| {
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::FORBIDDEN, "M_USER_SUSPENDED"),
            "{what}: {body}"
        );
    };
    suspended(send(&srv, &alice_token, &room, "during").await, "send");
    suspended(
        srv.put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                enc(&room)
            ),
            Some(&alice_token),
            json!({"topic": "x"}),
        )
        .await,
        "state",
    );
    suspended(
        srv.post(
            &format!("/_matrix/client/v3/join/{}", enc(&other_room)),
            Some(&alice_token),
            json!({}),
        )
        .await,
        "join",
    );
    suspended(
        srv.post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&alice_token),
            json!({"user_id": "@someone:localhost"}),
        )
        .await,
        "invite",
    );
    suspended(
        srv.put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice)),
            Some(&alice_token),
            json!({"displayname": "Mallory"}),
        )
        .await,
        "profile",
    );
    suspended(
        srv.post(
            "/_matrix/client/v3/createRoom",
            Some(&alice_token),
            json!({}),
        )
        .await,
        "createRoom",
    );
    let upload = srv
        .raw(
            Method::POST,
            "/_matrix/media/v3/upload",
            Some(&alice_token),
            Some("bytes"),
        )
        .await;
    assert_eq!(upload.status(), StatusCode::FORBIDDEN, "upload");
    suspended(
        srv.put(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/r1",
                enc(&room),
                enc(&root_event)
            ),
            Some(&alice_token),
            json!({}),
        )
        .await,
        "redacting someone else's event",
    );

    // Still allowed: reading, /sync, redacting one's own events.
    let (status, body) = srv.get("/_matrix/client/v3/sync", Some(&alice_token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["rooms"]["join"].get(&room).is_some(), "{body}");
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b", enc(&room)),
            Some(&alice_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.to_string().contains("from-root"));
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/r2",
                enc(&room),
                enc(&own_event)
            ),
            Some(&alice_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "own redaction: {body}");
    // Others are not affected.
    let (status, _) = send(&srv, &root_token, &room, "root-during").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = srv.get(&suspend_path(&alice), Some(&root_token)).await;
    assert_eq!(
        (status, &body),
        (StatusCode::OK, &json!({"suspended": true}))
    );
    let _ = root;

    // Lifting the suspension restores everything.
    let (status, _) = srv
        .put(
            &suspend_path(&alice),
            Some(&root_token),
            json!({"suspended": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = send(&srv, &alice_token, &room, "after").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&other_room)),
            Some(&alice_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
