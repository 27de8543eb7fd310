//! Guest accounts (spec: client-server API, "Guest Access"): registration, the endpoints
//! guests may use, `m.room.guest_access` on join and on revocation, upgrade to a full account.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode, TestServer};

const REGISTER: &str = "/_matrix/client/v3/register";

async fn with_guests() -> TestServer {
    TestServer::start_with(|c| c.registration.guests = true).await
}

/// Registers a guest; returns (user_id, access_token, device_id).
async fn guest(srv: &TestServer) -> (String, String, String) {
    let (status, body) = srv
        .post(&format!("{REGISTER}?kind=guest"), None, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (
        body["user_id"].as_str().unwrap().to_owned(),
        body["access_token"].as_str().unwrap().to_owned(),
        body["device_id"].as_str().unwrap().to_owned(),
    )
}

/// A public room whose guest_access is `value`.
async fn room_with_guest_access(srv: &TestServer, token: &str, value: &str) -> String {
    create_room(
        srv,
        token,
        json!({"preset": "public_chat", "initial_state": [
            {"type": "m.room.guest_access", "content": {"guest_access": value}}
        ]}),
    )
    .await
}

async fn join_room(srv: &TestServer, token: &str, room: &str) -> (StatusCode, Value) {
    srv.post(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(room)),
        Some(token),
        json!({}),
    )
    .await
}

async fn send_text(srv: &TestServer, token: &str, room: &str, txn: &str) -> (StatusCode, Value) {
    srv.put(
        &format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
            enc(room)
        ),
        Some(token),
        json!({"msgtype": "m.text", "body": format!("hello {txn}")}),
    )
    .await
}

async fn membership(srv: &TestServer, token: &str, room: &str, user: &str) -> Value {
    let (status, body) = srv
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(room),
                enc(user)
            ),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn forbidden_for_guests(result: (StatusCode, Value)) {
    let (status, body) = result;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN"),
        "{body}"
    );
}

#[tokio::test]
async fn guest_registration_is_off_by_default() {
    let srv = TestServer::start().await;
    forbidden_for_guests(
        srv.post(&format!("{REGISTER}?kind=guest"), None, json!({}))
            .await,
    );
    // Ordinary registration is unaffected.
    srv.register("alice", "pw").await;
}

#[tokio::test]
async fn guest_joins_a_can_join_room_sends_and_syncs() {
    let srv = with_guests().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let room = room_with_guest_access(&srv, &alice, "can_join").await;

    // Request parameters other than the device display name are ignored for guests.
    let (status, body) = srv
        .post(
            &format!("{REGISTER}?kind=guest"),
            None,
            json!({"username": "mallory", "device_id": "CHOSEN", "inhibit_login": true,
                   "initial_device_display_name": "Guest phone"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let user = body["user_id"].as_str().unwrap().to_owned();
    let token = body["access_token"].as_str().unwrap().to_owned();
    let device = body["device_id"].as_str().unwrap().to_owned();
    let localpart = user[1..].split(':').next().unwrap();
    assert!(
        localpart.bytes().all(|b| b.is_ascii_digit()),
        "guest ids are numeric: {user}"
    );
    assert_ne!(device, "CHOSEN");

    let (status, body) = srv
        .get("/_matrix/client/v3/account/whoami", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (body["user_id"].as_str(), body["is_guest"].as_bool()),
        (Some(user.as_str()), Some(true))
    );
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/devices/{device}"),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["display_name"], "Guest phone");

    let (status, body) = join_room(&srv, &token, &room).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send_text(&srv, &token, &room, "g1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let event_id = body["event_id"].as_str().unwrap().to_owned();

    let (status, body) = srv.get("/_matrix/client/v3/sync", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let timeline = body["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("the guest's sync has the room: {body}"));
    assert!(timeline.iter().any(|e| e["event_id"] == event_id.as_str()));

    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b", enc(&room)),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event_id"] == event_id.as_str()));

    // The member may leave again.
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn guest_cannot_join_a_room_without_guest_access_even_when_invited() {
    let srv = with_guests().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (user, token, _) = guest(&srv).await;

    // public_chat sets guest_access to forbidden.
    let public = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    forbidden_for_guests(join_room(&srv, &token, &public).await);

    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&public)),
            Some(&alice),
            json!({"user_id": user}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    forbidden_for_guests(join_room(&srv, &token, &public).await);
    // Nor through the state endpoint, which guests may use.
    forbidden_for_guests(
        srv.put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(&public),
                enc(&user)
            ),
            Some(&token),
            json!({"membership": "join"}),
        )
        .await,
    );
    assert_eq!(
        membership(&srv, &alice, &public, &user).await["membership"],
        "invite"
    );
}

#[tokio::test]
async fn guests_are_limited_to_the_spec_endpoints() {
    let srv = with_guests().await;
    let (user, token, device) = guest(&srv).await;

    // Not for guests.
    forbidden_for_guests(
        srv.post("/_matrix/client/v3/createRoom", Some(&token), json!({}))
            .await,
    );
    forbidden_for_guests(
        srv.post(
            "/_matrix/client/v3/pushers/set",
            Some(&token),
            json!({"kind": null, "app_id": "a", "pushkey": "k"}),
        )
        .await,
    );
    forbidden_for_guests(
        srv.put(
            &format!("/_matrix/client/v3/profile/{}/avatar_url", enc(&user)),
            Some(&token),
            json!({"avatar_url": "mxc://x/y"}),
        )
        .await,
    );
    forbidden_for_guests(
        srv.call(
            reqwest::Method::DELETE,
            &format!("/_matrix/client/v3/devices/{device}"),
            Some(&token),
            Some(json!({})),
        )
        .await,
    );
    forbidden_for_guests(
        srv.put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.example",
                enc(&user)
            ),
            Some(&token),
            json!({}),
        )
        .await,
    );
    forbidden_for_guests(
        srv.post(
            "/_matrix/client/v3/room_keys/version",
            Some(&token),
            json!({}),
        )
        .await,
    );

    // For guests.
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&user)),
            Some(&token),
            json!({"displayname": "Visitor"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/keys/upload",
            Some(&token),
            json!({"one_time_keys": {"signed_curve25519:AAAA": {"key": "k1", "signatures": {}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&token),
            json!({"device_keys": {user.clone(): []}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for path in [
        "/_matrix/client/v3/devices",
        "/_matrix/client/v3/capabilities",
    ] {
        let (status, body) = srv.get(path, Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    // Endpoints without a required token are as open to guests as to anyone.
    for path in ["/_matrix/client/versions", "/_matrix/client/v3/login"] {
        let (status, body) = srv.get(path, Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
}

#[tokio::test]
async fn guests_read_world_readable_rooms_without_joining() {
    let srv = with_guests().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, token, _) = guest(&srv).await;
    let open = create_room(
        &srv,
        &alice,
        json!({"preset": "public_chat", "initial_state": [
            {"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}}
        ]}),
    )
    .await;
    let (_, sent) = send_text(&srv, &alice, &open, "a1").await;
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b", enc(&open)),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event_id"] == sent["event_id"]));

    // A room that is not world-readable stays closed to a guest who is not in it.
    let closed = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b", enc(&closed)),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

#[tokio::test]
async fn revoking_guest_access_makes_guests_leave() {
    let srv = with_guests().await;
    let (alice_id, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let room = room_with_guest_access(&srv, &alice, "can_join").await;
    let (g1, t1, _) = guest(&srv).await;
    let (g2, t2, _) = guest(&srv).await;
    for token in [&t1, &t2, &bob] {
        let (status, body) = join_room(&srv, token, &room).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.guest_access/",
                enc(&room)
            ),
            Some(&alice),
            json!({"guest_access": "forbidden"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    for (g, t) in [(&g1, &t1), (&g2, &t2)] {
        let member = membership(&srv, &alice, &room, g).await;
        assert_eq!(member["membership"], "leave", "{g}: {member}");
        forbidden_for_guests(join_room(&srv, t, &room).await);
        // The guest may no longer send either.
        let (status, _) = send_text(&srv, t, &room, "late").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    // Full members stay.
    assert_eq!(
        membership(&srv, &alice, &room, "@bob:localhost").await["membership"],
        "join"
    );
    assert_eq!(
        membership(&srv, &alice, &room, &alice_id).await["membership"],
        "join"
    );

    // Allowing guests again lets them back in.
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.guest_access/",
                enc(&room)
            ),
            Some(&alice),
            json!({"guest_access": "can_join"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = join_room(&srv, &t1, &room).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let allowing = body_event_id(
        srv.get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.guest_access/?format=event",
                enc(&room)
            ),
            Some(&alice),
        )
        .await,
    );

    // Redacting the event that allowed guests takes guest access away too.
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/r1",
                enc(&room),
                enc(&allowing)
            ),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        membership(&srv, &alice, &room, &g1).await["membership"],
        "leave"
    );
    forbidden_for_guests(join_room(&srv, &t1, &room).await);
}

fn body_event_id(result: (StatusCode, Value)) -> String {
    let (status, body) = result;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().expect("event id").to_owned()
}

#[tokio::test]
async fn upgrade_keeps_the_user_id_and_lifts_the_restrictions() {
    let srv = with_guests().await;
    let (user, token, _) = guest(&srv).await;
    let localpart = user[1..].split(':').next().unwrap().to_owned();
    let (_, other_token, _) = guest(&srv).await;

    // The username must be the guest's localpart.
    let (status, body) = srv
        .post(
            REGISTER,
            None,
            json!({"username": "someoneelse", "password": "pw", "guest_access_token": token}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
        "{body}"
    );
    let (status, body) = srv
        .post(
            REGISTER,
            None,
            json!({"password": "pw", "guest_access_token": token}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_MISSING_PARAM"),
        "{body}"
    );
    // Another guest's token cannot upgrade this guest.
    let (status, body) = srv
        .post(
            REGISTER,
            None,
            json!({"username": localpart, "password": "pw", "guest_access_token": other_token}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // The ordinary flow, with the guest's token.
    let request = json!({"username": localpart, "password": "s3cret", "guest_access_token": token});
    let (status, challenge) = srv.post(REGISTER, None, request.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    let mut request = request;
    request["auth"] = json!({"type": "m.login.dummy", "session": challenge["session"]});
    let (status, body) = srv.post(REGISTER, None, request.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], user.as_str());
    let new_token = body["access_token"].as_str().unwrap().to_owned();

    let (_, whoami) = srv
        .get("/_matrix/client/v3/account/whoami", Some(&new_token))
        .await;
    assert_eq!(whoami["user_id"], user.as_str());
    // `is_guest` is left out when false.
    assert!(!whoami["is_guest"].as_bool().unwrap_or(false), "{whoami}");
    // Restrictions are lifted for the account: the new token and the guest's old one alike.
    create_room(&srv, &new_token, json!({})).await;
    create_room(&srv, &token, json!({"preset": "public_chat"})).await;
    // The account now has its password.
    let (status, body) = srv.login(&localpart, "s3cret").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], user.as_str());

    // An upgraded guest cannot be upgraded again.
    let (status, body) = srv.post(REGISTER, None, request).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN"),
        "{body}"
    );
}

#[tokio::test]
async fn guest_ids_are_unique_across_restart() {
    let mut srv = with_guests().await;
    let mut ids = HashSet::new();
    let mut tokens = Vec::new();
    for _ in 0..5 {
        let (user, token, _) = guest(&srv).await;
        assert!(ids.insert(user));
        tokens.push(token);
    }
    srv.restart().await;
    for _ in 0..5 {
        let (user, _, _) = guest(&srv).await;
        assert!(ids.insert(user.clone()), "{user} was handed out twice");
    }
    // Guests from before the restart are still guests, still signed in.
    let (status, body) = srv
        .get("/_matrix/client/v3/account/whoami", Some(&tokens[0]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["is_guest"], true);
    forbidden_for_guests(
        srv.post("/_matrix/client/v3/createRoom", Some(&tokens[0]), json!({}))
            .await,
    );
}

#[tokio::test]
async fn switching_guests_off_locks_existing_guests_out() {
    let mut srv = with_guests().await;
    let (_, token, _) = guest(&srv).await;
    let (status, _) = srv.get("/_matrix/client/v3/sync", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    srv.config.registration.guests = false;
    srv.restart().await;
    forbidden_for_guests(srv.get("/_matrix/client/v3/sync", Some(&token)).await);
    forbidden_for_guests(
        srv.post(&format!("{REGISTER}?kind=guest"), None, json!({}))
            .await,
    );
}

#[tokio::test]
async fn guest_registration_is_rate_limited_per_ip() {
    let srv = TestServer::start_with(|c| {
        c.registration.guests = true;
        c.rate_limit.enabled = true;
        c.rate_limit.per_ip_burst = 3;
        c.rate_limit.per_ip_per_second = 0.01;
    })
    .await;
    for _ in 0..3 {
        guest(&srv).await;
    }
    let (status, body) = srv
        .post(&format!("{REGISTER}?kind=guest"), None, json!({}))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED"),
        "{body}"
    );
}
