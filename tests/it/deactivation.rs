//! Account deactivation: what it removes (cross-signing keys, key backups, memberships) and
//! its recovery when the process dies between the account change and the follow-up work.

use reqwest::{Method, StatusCode};
use ruma::UserId;
use serde_json::{json, Value};

use crate::{
    common::{create_room, enc, join, TestServer},
    e2ee::{query, CrossSigning, Dev, PW},
};

fn services(srv: &TestServer) -> &hearth::service::Services {
    &srv.server.as_ref().unwrap().services
}

/// Alice with cross-signing keys and a key backup, in a room of Bob's. Returns the room.
async fn set_up(srv: &TestServer, alice: &Dev, bob: &Dev) -> String {
    let keys = CrossSigning::new();
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/keys/device_signing/upload",
            Some(&alice.token),
            keys.upload_body(&alice.user),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/room_keys/version",
            Some(&alice.token),
            json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
                   "auth_data": {"public_key": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "signatures": {}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let room = create_room(srv, &bob.token, json!({"preset": "public_chat"})).await;
    join(srv, &alice.token, &room).await;
    // Before: Bob sees Alice's master and self-signing keys, and Alice has a backup.
    let body = query(srv, &bob.token, json!({ &alice.user: [] })).await;
    assert!(body["master_keys"][&alice.user].is_object(), "{body}");
    assert!(body["self_signing_keys"][&alice.user].is_object(), "{body}");
    room
}

/// What every deactivation must have removed, seen by Bob and in the store.
async fn assert_removed(srv: &TestServer, alice: &Dev, bob: &Dev, room: &str) {
    let body = query(srv, &bob.token, json!({ &alice.user: [] })).await;
    for field in ["master_keys", "self_signing_keys", "user_signing_keys"] {
        assert!(body[field].get(&alice.user).is_none(), "{field}: {body}");
    }
    let alice_id = UserId::parse(&alice.user).unwrap();
    let backup = services(srv).e2ee.backup_info(&alice_id, None);
    assert!(backup.is_err(), "backup still there: {:?}", backup.ok());
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{}/members", enc(room)),
            Some(&bob.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let membership = body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["state_key"] == alice.user.as_str())
        .map(|e| e["content"]["membership"].clone());
    assert_eq!(membership, Some(json!("leave")), "{body}");
    assert!(services(srv)
        .users
        .pending_deactivations()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn deactivation_removes_cross_signing_keys_backups_and_memberships() {
    let srv = TestServer::start().await;
    let alice = Dev::register(&srv, "alice").await;
    let bob = Dev::register(&srv, "bob").await;
    let room = set_up(&srv, &alice, &bob).await;

    let path = "/_matrix/client/v3/account/deactivate";
    let (status, challenge) = srv
        .call(Method::POST, path, Some(&alice.token), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let session = challenge["session"].as_str().unwrap();
    let auth: Value = TestServer::password_auth(&alice.user, PW, session);
    let (status, body) = srv
        .post(path, Some(&alice.token), json!({ "auth": auth }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_removed(&srv, &alice, &bob, &room).await;
}

#[tokio::test]
async fn a_deactivation_cut_short_by_a_crash_is_finished_at_start() {
    let mut srv = TestServer::start().await;
    let alice = Dev::register(&srv, "alice").await;
    let bob = Dev::register(&srv, "bob").await;
    let room = set_up(&srv, &alice, &bob).await;
    // The account change commits (with its marker), and the process dies before the rest.
    let alice_id = UserId::parse(&alice.user).unwrap();
    services(&srv).begin_deactivation(&alice_id).await.unwrap();
    assert_eq!(
        services(&srv).users.pending_deactivations().unwrap(),
        vec![alice_id.clone()]
    );
    let body = query(&srv, &bob.token, json!({ &alice.user: [] })).await;
    assert!(body["master_keys"][&alice.user].is_object(), "{body}");
    assert_eq!(
        srv.login("alice", PW).await.0,
        StatusCode::FORBIDDEN,
        "the account itself is deactivated at once"
    );

    srv.restart().await;
    assert_removed(&srv, &alice, &bob, &room).await;
}

/// A login whose password check is running when the account is deactivated must not end with
/// a working access token: the check saw the password of an account that no longer exists
/// by the time the login commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_racing_a_deactivation_gets_no_working_token() {
    // A realistic cost, so the password check lasts long enough to deactivate meanwhile.
    let srv = TestServer::start_with(|c| c.bcrypt_cost = 12).await;
    let (user, _, _) = srv.register("rae", "pw").await;
    let user_id = UserId::parse(&user).unwrap();
    let login = {
        let (http, url) = (
            srv.http.clone(),
            format!("{}/_matrix/client/v3/login", srv.base),
        );
        tokio::spawn(async move {
            let response = http
                .post(url)
                .json(&json!({"type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": "rae"}, "password": "pw"}))
                .send()
                .await
                .unwrap();
            let status = response.status();
            (
                status,
                response.json::<Value>().await.unwrap(),
                std::time::Instant::now(),
            )
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(40)).await;
    services(&srv).deactivate_user(&user_id).await.unwrap();
    let deactivated = std::time::Instant::now();
    let (status, body, answered) = login.await.unwrap();
    assert!(
        answered > deactivated,
        "the login answered before the deactivation; the race was not run"
    );
    match body["access_token"].as_str() {
        Some(token) => {
            let (status, body) = srv
                .get("/_matrix/client/v3/account/whoami", Some(token))
                .await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "a deactivated account got a working token: {body}"
            );
        }
        None => assert_eq!(
            (status, body["errcode"].as_str().unwrap_or("")),
            (StatusCode::FORBIDDEN, "M_USER_DEACTIVATED"),
            "{body}"
        ),
    }
}

/// A login that commits after the deactivation batch read the user's devices but before it
/// committed leaves a device the batch did not know of. The follow-up (here finished at the
/// next start, as after a crash) removes it, so its token stops working.
#[tokio::test]
async fn a_device_left_by_a_login_racing_the_deactivation_batch_is_removed() {
    let mut srv = TestServer::start().await;
    let (user, _, _) = srv.register("rex", "pw").await;
    let user_id = UserId::parse(&user).unwrap();
    services(&srv).begin_deactivation(&user_id).await.unwrap();
    // What the racing login committed: a new device with tokens, staged as login stages it.
    let mut batch = hearth::store::Batch::new();
    let device: &ruma::DeviceId = "RACER".into();
    let tokens = services(&srv)
        .sessions
        .stage_login(
            &mut batch,
            &user_id,
            device,
            None,
            false,
            std::net::Ipv4Addr::LOCALHOST.into(),
        )
        .unwrap();
    services(&srv).store.commit(batch).await.unwrap();
    let (status, _) = srv
        .get(
            "/_matrix/client/v3/account/whoami",
            Some(&tokens.access_token),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the raced device exists before the follow-up"
    );

    srv.restart().await;
    let (status, body) = srv
        .get(
            "/_matrix/client/v3/account/whoami",
            Some(&tokens.access_token),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(services(&srv)
        .sessions
        .devices(&user_id)
        .unwrap()
        .is_empty());
}
