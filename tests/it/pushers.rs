//! Pushers: `GET /pushers`, `POST /pushers/set` (spec: "Push Notifications"), and their
//! removal with the device that set them.

use hearth::service::push::pushers::PushersByKey;
use reqwest::{Method, StatusCode};
use ruma::UserId;
use serde_json::{json, Value};

use crate::common::{errcode, TestServer};

const SET: &str = "/_matrix/client/v3/pushers/set";
const LIST: &str = "/_matrix/client/v3/pushers";
const URL: &str = "https://push.example.org/_matrix/push/v1/notify";
const PW: &str = "pusher-pw";

fn services(srv: &TestServer) -> &hearth::service::Services {
    &srv.server.as_ref().unwrap().services
}

/// A minimal valid http pusher.
fn pusher(app_id: &str, pushkey: &str) -> Value {
    json!({
        "kind": "http",
        "app_id": app_id,
        "pushkey": pushkey,
        "app_display_name": "App",
        "device_display_name": "Phone",
        "lang": "en",
        "data": {"url": URL},
    })
}

async fn set_ok(srv: &TestServer, token: &str, body: Value) {
    let (status, answer) = srv.post(SET, Some(token), body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body} -> {answer}");
    assert_eq!(answer, json!({}));
}

async fn list(srv: &TestServer, token: &str) -> Vec<Value> {
    let (status, body) = srv.get(LIST, Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["pushers"].as_array().expect("pushers array").clone()
}

/// The `(app_id, pushkey)` pairs of a listing, in order.
async fn pairs(srv: &TestServer, token: &str) -> Vec<(String, String)> {
    list(srv, token)
        .await
        .iter()
        .map(|p| {
            (
                p["app_id"].as_str().unwrap().to_owned(),
                p["pushkey"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pair(app_id: &str, pushkey: &str) -> (String, String) {
    (app_id.to_owned(), pushkey.to_owned())
}

/// A new login of `name` (password [`PW`]): (access token, device id).
async fn login(srv: &TestServer, name: &str) -> (String, String) {
    let (status, body) = srv.login(name, PW).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["device_id"].as_str().unwrap().to_owned(),
    )
}

/// Sends `body` to a UIAA-protected endpoint, completing the password stage.
async fn with_password(
    srv: &TestServer,
    method: Method,
    path: &str,
    token: &str,
    user: &str,
    body: Value,
) -> (StatusCode, Value) {
    let (status, challenge) = srv
        .call(method.clone(), path, Some(token), Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    let mut body = body;
    body["auth"] = TestServer::password_auth(user, PW, challenge["session"].as_str().unwrap());
    srv.call(method, path, Some(token), Some(body)).await
}

#[tokio::test]
async fn set_and_list_round_trip_every_field() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("ana", PW).await;
    assert!(list(&srv, &token).await.is_empty());

    let full = json!({
        "kind": "http",
        "app_id": "org.example.app.android",
        "pushkey": "Xp/MzCt8/9DcSNE9cuiaoT5Ac55job3TdLSSmtmYl4A=",
        "app_display_name": "Appy McAppface",
        "device_display_name": "Ana's Phone",
        "profile_tag": "xyz",
        "lang": "en-US",
        "data": {
            "url": URL,
            "format": "event_id_only",
            "default_payload": {"aps": {"mutable-content": 1, "alert": {"loc-key": "SINGLE_UNREAD"}}},
            "custom": "kept",
        },
        "append": false,
    });
    set_ok(&srv, &token, full.clone()).await;
    // Without profile_tag, format or custom keys, on plain http and with a port and a query.
    let mut minimal = pusher("org.example.web", "key-2");
    minimal["data"]["url"] = json!("http://127.0.0.1:8088/_matrix/push/v1/notify?up=1");
    set_ok(&srv, &token, minimal.clone()).await;

    let mut expected = full;
    expected.as_object_mut().unwrap().remove("append");
    assert_eq!(list(&srv, &token).await, vec![expected, minimal]);
}

#[tokio::test]
async fn the_same_app_id_and_pushkey_is_replaced_not_added() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("ben", PW).await;
    set_ok(&srv, &token, pusher("app", "key")).await;
    let mut changed = pusher("app", "key");
    changed["lang"] = json!("de");
    changed["device_display_name"] = json!("Ben's other phone");
    changed["data"] = json!({"url": "https://other.example.org/_matrix/push/v1/notify"});
    set_ok(&srv, &token, changed.clone()).await;
    assert_eq!(list(&srv, &token).await, vec![changed]);

    // Another pushkey or another app id is another pusher.
    set_ok(&srv, &token, pusher("app", "key-2")).await;
    set_ok(&srv, &token, pusher("app-2", "key")).await;
    assert_eq!(
        pairs(&srv, &token).await,
        vec![
            pair("app", "key"),
            pair("app", "key-2"),
            pair("app-2", "key")
        ]
    );
}

#[tokio::test]
async fn without_append_the_pushkey_is_taken_from_other_users_and_with_it_shared() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", PW).await;
    let (_, bob, _) = srv.register("bob", PW).await;
    let (_, carol, _) = srv.register("carol", PW).await;
    set_ok(&srv, &alice, pusher("app", "phone")).await;
    set_ok(&srv, &alice, pusher("app", "tablet")).await;

    // Bob appends: Alice keeps hers.
    let mut shared = pusher("app", "phone");
    shared["append"] = json!(true);
    set_ok(&srv, &bob, shared).await;
    assert_eq!(
        pairs(&srv, &alice).await,
        vec![pair("app", "phone"), pair("app", "tablet")]
    );
    assert_eq!(pairs(&srv, &bob).await, vec![pair("app", "phone")]);

    // Carol does not append (the default): Alice and Bob lose that pair, nothing else.
    set_ok(&srv, &carol, pusher("app", "phone")).await;
    assert_eq!(pairs(&srv, &alice).await, vec![pair("app", "tablet")]);
    assert!(pairs(&srv, &bob).await.is_empty());
    assert_eq!(pairs(&srv, &carol).await, vec![pair("app", "phone")]);

    // Explicit `append: false` likewise; the index follows the pushers exactly.
    let mut explicit = pusher("app", "tablet");
    explicit["append"] = json!(false);
    set_ok(&srv, &bob, explicit).await;
    assert!(pairs(&srv, &alice).await.is_empty());
    let index = services(&srv)
        .store
        .scan_prefix::<PushersByKey, _>(&("app",), 100)
        .unwrap();
    let owners: Vec<(String, String)> = index
        .into_iter()
        .map(|((_, key, user), _)| (key, user))
        .collect();
    assert_eq!(
        owners,
        vec![
            ("phone".to_owned(), "@carol:localhost".to_owned()),
            ("tablet".to_owned(), "@bob:localhost".to_owned())
        ]
    );
}

#[tokio::test]
async fn kind_null_deletes_and_a_missing_pusher_is_no_error() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("cid", PW).await;
    set_ok(&srv, &token, pusher("app", "one")).await;
    set_ok(&srv, &token, pusher("app", "two")).await;
    // Only kind, app_id and pushkey are needed to delete.
    set_ok(
        &srv,
        &token,
        json!({"kind": null, "app_id": "app", "pushkey": "one"}),
    )
    .await;
    assert_eq!(pairs(&srv, &token).await, vec![pair("app", "two")]);
    set_ok(
        &srv,
        &token,
        json!({"kind": null, "app_id": "app", "pushkey": "one"}),
    )
    .await;
    // A full body with kind null deletes too.
    let mut delete = pusher("app", "two");
    delete["kind"] = Value::Null;
    set_ok(&srv, &token, delete).await;
    assert!(list(&srv, &token).await.is_empty());
}

#[tokio::test]
async fn invalid_pushers_are_refused_with_matrix_errors_and_nothing_stored() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("dee", PW).await;
    let with = |change: &dyn Fn(&mut Value)| {
        let mut body = pusher("app", "key");
        change(&mut body);
        body
    };
    let bad_urls = [
        "ftp://push.example.org/_matrix/push/v1/notify",
        "push.example.org/_matrix/push/v1/notify",
        "/_matrix/push/v1/notify",
        "https://push.example.org/notify",
        "https://push.example.org/_matrix/push/v1/notify/",
        "https://push.example.org",
        "https://user:secret@push.example.org/_matrix/push/v1/notify",
        "https://push.example.org:70000/_matrix/push/v1/notify",
        "https://push.example.org:/_matrix/push/v1/notify",
        "https:///_matrix/push/v1/notify",
        "https://push example/_matrix/push/v1/notify",
        "https://push.example.org/_matrix/push/v1/notify#x",
        "",
    ];
    let mut cases: Vec<(String, Value, &str)> = bad_urls
        .iter()
        .map(|u| {
            let body = with(&|b| b["data"]["url"] = json!(u));
            (format!("url {u:?}"), body, "M_INVALID_PARAM")
        })
        .collect();
    let other_cases: Vec<(&str, Value, &str)> = vec![
        (
            "missing url",
            with(&|b| b["data"] = json!({"format": "event_id_only"})),
            "M_MISSING_PARAM",
        ),
        (
            "url not a string",
            with(&|b| b["data"]["url"] = json!(42)),
            "M_BAD_JSON",
        ),
        (
            "bad format",
            with(&|b| b["data"]["format"] = json!("full")),
            "M_INVALID_PARAM",
        ),
        (
            "format not a string",
            with(&|b| b["data"]["format"] = json!(1)),
            "M_BAD_JSON",
        ),
        (
            "email kind",
            with(&|b| {
                b["kind"] = json!("email");
                b["app_id"] = json!("m.email");
                b["pushkey"] = json!("dee@example.org");
            }),
            "M_INVALID_PARAM",
        ),
        (
            "unknown kind",
            with(&|b| b["kind"] = json!("sms")),
            "M_INVALID_PARAM",
        ),
        (
            "kind not a string",
            with(&|b| b["kind"] = json!(7)),
            "M_BAD_JSON",
        ),
        (
            "app_id of 65 chars",
            with(&|b| b["app_id"] = json!("é".repeat(65))),
            "M_INVALID_PARAM",
        ),
        (
            "empty app_id",
            with(&|b| b["app_id"] = json!("")),
            "M_INVALID_PARAM",
        ),
        (
            "pushkey of 513 bytes",
            with(&|b| b["pushkey"] = json!("k".repeat(513))),
            "M_INVALID_PARAM",
        ),
        (
            "empty pushkey",
            with(&|b| b["pushkey"] = json!("")),
            "M_INVALID_PARAM",
        ),
        (
            "missing kind",
            with(&|b| {
                b.as_object_mut().unwrap().remove("kind");
            }),
            "M_MISSING_PARAM",
        ),
        (
            "missing app_id",
            with(&|b| {
                b.as_object_mut().unwrap().remove("app_id");
            }),
            "M_MISSING_PARAM",
        ),
        (
            "missing pushkey",
            with(&|b| {
                b.as_object_mut().unwrap().remove("pushkey");
            }),
            "M_MISSING_PARAM",
        ),
        (
            "missing lang and data",
            with(&|b| {
                b.as_object_mut().unwrap().remove("lang");
                b.as_object_mut().unwrap().remove("data");
            }),
            "M_MISSING_PARAM",
        ),
        (
            "missing display names",
            with(&|b| {
                b.as_object_mut().unwrap().remove("app_display_name");
                b.as_object_mut().unwrap().remove("device_display_name");
            }),
            "M_MISSING_PARAM",
        ),
        (
            "data not an object",
            with(&|b| b["data"] = json!("x")),
            "M_BAD_JSON",
        ),
        (
            "append not a boolean",
            with(&|b| b["append"] = json!("yes")),
            "M_BAD_JSON",
        ),
        (
            "lang not a string",
            with(&|b| b["lang"] = json!(1)),
            "M_BAD_JSON",
        ),
        (
            "huge data",
            with(&|b| b["data"]["blob"] = json!("x".repeat(5000))),
            "M_INVALID_PARAM",
        ),
        ("body not an object", json!([1, 2]), "M_BAD_JSON"),
    ];
    cases.extend(
        other_cases
            .into_iter()
            .map(|(w, b, c)| (w.to_owned(), b, c)),
    );
    for (what, body, code) in cases {
        let (status, answer) = srv.post(SET, Some(&token), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
        assert_eq!(errcode(&answer), code, "{what}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // The e-mail refusal says what is unsupported.
    let (_, answer) = srv
        .post(SET, Some(&token), with(&|b| b["kind"] = json!("email")))
        .await;
    let message = answer["error"].as_str().unwrap().to_lowercase();
    assert!(
        message.contains("e-mail") && message.contains("not supported"),
        "{answer}"
    );
    let missing = srv
        .post(
            SET,
            Some(&token),
            with(&|b| {
                b.as_object_mut().unwrap().remove("lang");
                b.as_object_mut().unwrap().remove("data");
            }),
        )
        .await
        .1;
    assert_eq!(missing["error"], "Missing parameters: lang, data");
    // Not JSON at all.
    let response = srv
        .raw(Method::POST, SET, Some(&token), Some("{nope"))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(errcode(&answer), "M_NOT_JSON");
    assert!(
        list(&srv, &token).await.is_empty(),
        "a refused pusher was stored"
    );

    // Valid gateway URLs: http or https (any case), IPv4, IPv6, ports, a query.
    for url in [
        "HTTPS://Push.Example.org/_matrix/push/v1/notify",
        "http://[::1]:8080/_matrix/push/v1/notify",
        "https://[2001:db8::1]/_matrix/push/v1/notify",
        "http://10.0.0.1:65535/_matrix/push/v1/notify?token=abc",
    ] {
        set_ok(&srv, &token, with(&|b| b["data"]["url"] = json!(url))).await;
        assert_eq!(list(&srv, &token).await[0]["data"]["url"], url);
    }
    set_ok(
        &srv,
        &token,
        json!({"kind": null, "app_id": "app", "pushkey": "key"}),
    )
    .await;

    // The limits themselves are accepted: 64 characters of app id, 512 bytes of pushkey.
    let mut edge = pusher(&"é".repeat(64), &"k".repeat(512));
    edge["data"]["format"] = Value::Null;
    set_ok(&srv, &token, edge).await;
    let stored = list(&srv, &token).await;
    assert_eq!(stored.len(), 1);
    // A null format is no format.
    assert_eq!(stored[0]["data"], json!({"url": URL}));
}

#[tokio::test]
async fn pushers_are_never_visible_to_or_removable_by_other_users() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("eve", PW).await;
    let (_, bob, _) = srv.register("fay", PW).await;
    set_ok(&srv, &alice, pusher("app", "secret-key")).await;
    assert!(list(&srv, &bob).await.is_empty());
    // Deleting "the same" pusher deletes only the caller's (Bob has none).
    set_ok(
        &srv,
        &bob,
        json!({"kind": null, "app_id": "app", "pushkey": "secret-key"}),
    )
    .await;
    assert_eq!(pairs(&srv, &alice).await, vec![pair("app", "secret-key")]);
    // Without a token there is nothing.
    let (status, body) = srv.get(LIST, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(errcode(&body), "M_MISSING_TOKEN");
    let (status, _) = srv.post(SET, None, pusher("app", "x")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn logout_removes_that_devices_pushers_only_and_logout_all_every_one() {
    let srv = TestServer::start().await;
    let (_, phone, _) = srv.register("gus", PW).await;
    let (tablet, _) = login(&srv, "gus").await;
    let (laptop, _) = login(&srv, "gus").await;
    set_ok(&srv, &phone, pusher("app", "phone")).await;
    set_ok(&srv, &tablet, pusher("app", "tablet")).await;
    set_ok(&srv, &laptop, pusher("app", "laptop")).await;

    let (status, body) = srv
        .post("/_matrix/client/v3/logout", Some(&phone), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        pairs(&srv, &tablet).await,
        vec![pair("app", "laptop"), pair("app", "tablet")]
    );

    // A pusher replaced from another device belongs to that device from then on.
    set_ok(&srv, &laptop, pusher("app", "tablet")).await;
    let (status, _) = srv
        .post("/_matrix/client/v3/logout", Some(&tablet), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        pairs(&srv, &laptop).await,
        vec![pair("app", "laptop"), pair("app", "tablet")]
    );

    let (other, _) = login(&srv, "gus").await;
    set_ok(&srv, &other, pusher("app", "other")).await;
    let (status, _) = srv
        .post("/_matrix/client/v3/logout/all", Some(&laptop), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (fresh, _) = login(&srv, "gus").await;
    assert!(list(&srv, &fresh).await.is_empty());
    let user = UserId::parse("@gus:localhost").unwrap();
    assert!(services(&srv).pushers.of_user(&user).unwrap().is_empty());
}

#[tokio::test]
async fn deleting_devices_removes_their_pushers() {
    let srv = TestServer::start().await;
    let (user, main, _) = srv.register("hal", PW).await;
    let (one, one_id) = login(&srv, "hal").await;
    let (two, two_id) = login(&srv, "hal").await;
    let (three, three_id) = login(&srv, "hal").await;
    set_ok(&srv, &main, pusher("app", "main")).await;
    set_ok(&srv, &one, pusher("app", "one")).await;
    set_ok(&srv, &two, pusher("app", "two")).await;
    set_ok(&srv, &three, pusher("app", "three")).await;

    let (status, body) = with_password(
        &srv,
        Method::DELETE,
        &format!("/_matrix/client/v3/devices/{one_id}"),
        &main,
        &user,
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        pairs(&srv, &main).await,
        vec![
            pair("app", "main"),
            pair("app", "three"),
            pair("app", "two")
        ]
    );

    let (status, body) = with_password(
        &srv,
        Method::POST,
        "/_matrix/client/v3/delete_devices",
        &main,
        &user,
        json!({"devices": [two_id, three_id]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(pairs(&srv, &main).await, vec![pair("app", "main")]);
}

/// Spec (`/account/password`): the server should not revoke the access token of the request;
/// with `logout_devices` (the default) the user's other tokens and their devices are revoked,
/// and the pushers go with those devices. The requesting device keeps its pushers.
#[tokio::test]
async fn a_password_change_removes_the_pushers_of_the_devices_it_logs_out() {
    let srv = TestServer::start().await;
    let (user, main, _) = srv.register("ida", PW).await;
    let (other, _) = login(&srv, "ida").await;
    set_ok(&srv, &main, pusher("app", "main")).await;
    set_ok(&srv, &other, pusher("app", "other")).await;

    // logout_devices false: every device and pusher stays.
    let (status, body) = with_password(
        &srv,
        Method::POST,
        "/_matrix/client/v3/account/password",
        &main,
        &user,
        json!({"new_password": PW, "logout_devices": false}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        pairs(&srv, &other).await,
        vec![pair("app", "main"), pair("app", "other")]
    );

    // The default: the other device and its pusher go, this device's pusher stays.
    let (status, body) = with_password(
        &srv,
        Method::POST,
        "/_matrix/client/v3/account/password",
        &main,
        &user,
        json!({"new_password": PW}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(pairs(&srv, &main).await, vec![pair("app", "main")]);
    assert_eq!(
        srv.get(LIST, Some(&other)).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn deactivation_removes_every_pusher() {
    let srv = TestServer::start().await;
    let (user, main, _) = srv.register("jon", PW).await;
    let (other, _) = login(&srv, "jon").await;
    set_ok(&srv, &main, pusher("app", "main")).await;
    set_ok(&srv, &other, pusher("app", "other")).await;
    let mut shared = pusher("app", "shared");
    shared["append"] = json!(true);
    set_ok(&srv, &other, shared.clone()).await;
    let (_, kim, _) = srv.register("kim", PW).await;
    set_ok(&srv, &kim, shared).await;

    let (status, body) = with_password(
        &srv,
        Method::POST,
        "/_matrix/client/v3/account/deactivate",
        &main,
        &user,
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let user_id = UserId::parse(&user).unwrap();
    assert!(services(&srv).pushers.of_user(&user_id).unwrap().is_empty());
    let index = services(&srv)
        .store
        .scan_prefix::<PushersByKey, _>(&("app",), 100)
        .unwrap();
    let owners: Vec<String> = index.into_iter().map(|((_, _, u), _)| u).collect();
    assert_eq!(owners, vec!["@kim:localhost".to_owned()]);
    assert_eq!(pairs(&srv, &kim).await, vec![pair("app", "shared")]);
}

#[tokio::test]
async fn pushers_survive_a_restart() {
    let mut srv = TestServer::start().await;
    let (_, token, _) = srv.register("lia", PW).await;
    let mut body = pusher("app", "key");
    body["profile_tag"] = json!("tag");
    body["data"]["format"] = json!("event_id_only");
    body["data"]["extra"] = json!({"nested": [1, 2, 3]});
    set_ok(&srv, &token, body).await;
    let before = list(&srv, &token).await;
    srv.restart().await;
    assert_eq!(list(&srv, &token).await, before);
    assert_eq!(before.len(), 1);
}

#[tokio::test]
async fn a_user_has_at_most_a_hundred_pushers() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("max", PW).await;
    for i in 0..100 {
        set_ok(&srv, &token, pusher("app", &format!("key-{i:03}"))).await;
    }
    let (status, body) = srv.post(SET, Some(&token), pusher("app", "one-more")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(errcode(&body), "M_LIMIT_EXCEEDED");
    // Replacing or deleting one still works, and frees a place.
    let mut replaced = pusher("app", "key-000");
    replaced["lang"] = json!("fr");
    set_ok(&srv, &token, replaced).await;
    set_ok(
        &srv,
        &token,
        json!({"kind": null, "app_id": "app", "pushkey": "key-001"}),
    )
    .await;
    set_ok(&srv, &token, pusher("app", "one-more")).await;
    assert_eq!(list(&srv, &token).await.len(), 100);
}

/// A pusher set while its device is being logged out must not outlive the device: whichever
/// commits first, no pusher is left that names a deleted device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pusher_set_racing_its_logout_does_not_outlive_the_device() {
    let srv = TestServer::start().await;
    let (user, _, _) = srv.register("ned", PW).await;
    let user_id = UserId::parse(&user).unwrap();
    for round in 0..20 {
        let (token, _) = login(&srv, "ned").await;
        let set = {
            let (http, url, token) = (
                srv.http.clone(),
                format!("{}{SET}", srv.base),
                token.clone(),
            );
            let body = pusher("app", &format!("race-{round}"));
            tokio::spawn(async move {
                http.post(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        };
        let (status, _) = srv
            .post("/_matrix/client/v3/logout", Some(&token), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK);
        let set_status = set.await.unwrap();
        assert!(
            set_status == StatusCode::OK || set_status == StatusCode::UNAUTHORIZED,
            "{set_status}"
        );
        let devices = services(&srv).sessions.devices(&user_id).unwrap();
        for p in services(&srv).pushers.of_user(&user_id).unwrap() {
            assert!(
                devices.iter().any(|(d, _)| d.as_str() == p.device_id),
                "round {round}: pusher {} outlived device {}",
                p.pushkey,
                p.device_id
            );
        }
    }
}
