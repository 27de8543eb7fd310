//! Push rules over HTTP: the server-default ruleset, creating, ordering, reading, enabling,
//! changing actions of and deleting rules, the spec's errors, isolation between users and
//! persistence across a restart.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{errcode, TestServer};

const ALL: &str = "/_matrix/client/v3/pushrules/";

fn rule(kind: &str, id: &str) -> String {
    format!("/_matrix/client/v3/pushrules/global/{kind}/{id}")
}

/// The rule ids of one kind in priority order.
fn ids(rules: &Value, kind: &str) -> Vec<String> {
    rules[kind]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| r["rule_id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn global(srv: &TestServer, token: &str) -> Value {
    let (status, body) = srv.get(ALL, Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["global"].clone()
}

#[tokio::test]
async fn defaults_are_the_server_default_ruleset() {
    let srv = TestServer::start().await;
    let (user_id, token, _) = srv.register("alice", "pw").await;
    let rules = global(&srv, &token).await;
    let overrides = ids(&rules, "override");
    assert_eq!(
        overrides.first().map(String::as_str),
        Some(".m.rule.master")
    );
    for id in [
        ".m.rule.suppress_notices",
        ".m.rule.invite_for_me",
        ".m.rule.member_event",
        ".m.rule.is_user_mention",
    ] {
        assert!(
            overrides.iter().any(|o| o == id),
            "{id} missing from {overrides:?}"
        );
    }
    let underrides = ids(&rules, "underride");
    for id in [
        ".m.rule.call",
        ".m.rule.encrypted_room_one_to_one",
        ".m.rule.message",
        ".m.rule.encrypted",
    ] {
        assert!(
            underrides.iter().any(|u| u == id),
            "{id} missing from {underrides:?}"
        );
    }
    // Every default rule is marked as such, and the master rule is off.
    assert!(rules["override"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["default"] == true));
    assert_eq!(rules["override"][0]["enabled"], false);
    // The rules are specific to the user.
    let invite = rules["override"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule_id"] == ".m.rule.invite_for_me")
        .unwrap();
    assert!(invite["conditions"].to_string().contains(&user_id));

    // /pushrules/global/ is the same ruleset without the wrapper.
    let (status, body) = srv
        .get("/_matrix/client/v3/pushrules/global/", Some(&token))
        .await;
    assert_eq!((status, body), (StatusCode::OK, rules));
    // A token is required.
    let (status, body) = srv.get(ALL, None).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN")
    );
}

#[tokio::test]
async fn create_read_and_delete_user_rules() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("bob", "pw").await;

    // A content rule.
    let (status, body) = srv
        .put(
            &rule("content", "cake"),
            Some(&token),
            json!({"pattern": "cake*lie", "actions": ["notify"]}),
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (status, body) = srv.get(&rule("content", "cake"), Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"rule_id": "cake", "pattern": "cake*lie", "actions": ["notify"], "default": false, "enabled": true})
    );

    // An override rule with conditions goes right after the master rule.
    let conditions = json!([{"kind": "event_match", "key": "content.body", "pattern": "beer"}]);
    let (status, _) = srv
        .put(
            &rule("override", "beer"),
            Some(&token),
            json!({"conditions": conditions, "actions": ["notify", {"set_tweak": "sound", "value": "default"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let rules = global(&srv, &token).await;
    assert_eq!(&ids(&rules, "override")[..2], [".m.rule.master", "beer"]);
    let (_, body) = srv.get(&rule("override", "beer"), Some(&token)).await;
    assert_eq!(body["conditions"], conditions);

    // Room and sender rules are keyed by room and user id.
    let (status, _) = srv
        .put(
            &rule("room", "!room:localhost"),
            Some(&token),
            json!({"actions": []}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = srv
        .put(
            &rule("sender", "@spam:localhost"),
            Some(&token),
            json!({"actions": []}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let rules = global(&srv, &token).await;
    assert_eq!(ids(&rules, "room"), ["!room:localhost"]);
    assert_eq!(ids(&rules, "sender"), ["@spam:localhost"]);

    // Deleting removes exactly that rule.
    let (status, body) = srv
        .call(Method::DELETE, &rule("content", "cake"), Some(&token), None)
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (status, body) = srv.get(&rule("content", "cake"), Some(&token)).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    let (status, body) = srv
        .call(Method::DELETE, &rule("content", "cake"), Some(&token), None)
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    let rules = global(&srv, &token).await;
    assert!(ids(&rules, "content").iter().all(|id| id != "cake"));
    assert_eq!(ids(&rules, "room"), ["!room:localhost"]);
}

#[tokio::test]
async fn before_and_after_order_rules() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("carol", "pw").await;
    let put = |id: &'static str, query: &'static str| {
        let (srv, token) = (&srv, token.clone());
        async move {
            let path = format!("{}{query}", rule("room", id));
            srv.put(&path, Some(&token), json!({"actions": ["notify"]}))
                .await
        }
    };
    assert_eq!(put("!a:localhost", "").await.0, StatusCode::OK);
    // A new rule without before/after becomes the most important of its kind.
    assert_eq!(put("!b:localhost", "").await.0, StatusCode::OK);
    assert_eq!(
        ids(&global(&srv, &token).await, "room"),
        ["!b:localhost", "!a:localhost"]
    );
    assert_eq!(
        put("!c:localhost", "?after=!a:localhost").await.0,
        StatusCode::OK
    );
    assert_eq!(
        ids(&global(&srv, &token).await, "room"),
        ["!b:localhost", "!a:localhost", "!c:localhost"]
    );
    assert_eq!(
        put("!d:localhost", "?before=!a:localhost").await.0,
        StatusCode::OK
    );
    assert_eq!(
        ids(&global(&srv, &token).await, "room"),
        [
            "!b:localhost",
            "!d:localhost",
            "!a:localhost",
            "!c:localhost"
        ]
    );
    // Updating a rule without before/after keeps its place.
    assert_eq!(put("!a:localhost", "").await.0, StatusCode::OK);
    assert_eq!(
        ids(&global(&srv, &token).await, "room"),
        [
            "!b:localhost",
            "!d:localhost",
            "!a:localhost",
            "!c:localhost"
        ]
    );

    // A before/after rule that does not exist.
    let (status, body) = put("!e:localhost", "?before=!nope:localhost").await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_UNKNOWN")
    );
    // Relative to a server-default rule.
    let path = format!("{}?after=.m.rule.master", rule("override", "mine"));
    let (status, body) = srv
        .put(
            &path,
            Some(&token),
            json!({"conditions": [], "actions": []}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );
    // Nothing of the refused requests was stored.
    let rules = global(&srv, &token).await;
    assert_eq!(
        ids(&rules, "room"),
        [
            "!b:localhost",
            "!d:localhost",
            "!a:localhost",
            "!c:localhost"
        ]
    );
    assert!(ids(&rules, "override").iter().all(|id| id != "mine"));
}

#[tokio::test]
async fn enabled_and_actions() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("dave", "pw").await;
    let master = rule("override", ".m.rule.master");

    // Server-default rules can be enabled/disabled and have their actions changed.
    assert_eq!(
        srv.get(&format!("{master}/enabled"), Some(&token)).await,
        (StatusCode::OK, json!({"enabled": false}))
    );
    let (status, _) = srv
        .put(
            &format!("{master}/enabled"),
            Some(&token),
            json!({"enabled": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        srv.get(&format!("{master}/enabled"), Some(&token)).await,
        (StatusCode::OK, json!({"enabled": true}))
    );

    let message = rule("underride", ".m.rule.message");
    let (status, body) = srv.get(&format!("{message}/actions"), Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["actions"][0], "notify");
    let (status, _) = srv
        .put(
            &format!("{message}/actions"),
            Some(&token),
            json!({"actions": []}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        srv.get(&format!("{message}/actions"), Some(&token)).await,
        (StatusCode::OK, json!({"actions": []}))
    );
    let (_, body) = srv.get(&message, Some(&token)).await;
    assert_eq!(
        (body["actions"].clone(), body["default"].clone()),
        (json!([]), json!(true))
    );

    // A user rule: disable it, then replace it; the replacement keeps the enabled state.
    let mine = rule("content", "tea");
    srv.put(
        &mine,
        Some(&token),
        json!({"pattern": "tea", "actions": ["notify"]}),
    )
    .await;
    srv.put(
        &format!("{mine}/enabled"),
        Some(&token),
        json!({"enabled": false}),
    )
    .await;
    srv.put(
        &mine,
        Some(&token),
        json!({"pattern": "tea*", "actions": ["notify"]}),
    )
    .await;
    let (_, body) = srv.get(&mine, Some(&token)).await;
    assert_eq!(
        (body["pattern"].clone(), body["enabled"].clone()),
        (json!("tea*"), json!(false))
    );
    // Unknown action strings are kept as given (old clients still send "dont_notify").
    let (status, _) = srv
        .put(
            &format!("{mine}/actions"),
            Some(&token),
            json!({"actions": ["dont_notify"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        srv.get(&format!("{mine}/actions"), Some(&token)).await.1,
        json!({"actions": ["dont_notify"]})
    );

    // Unknown rules and rules under the wrong kind.
    for path in [
        rule("override", "nope"),
        rule("underride", ".m.rule.master"),
    ] {
        for (method, suffix, body) in [
            (Method::GET, "/enabled", None),
            (Method::PUT, "/enabled", Some(json!({"enabled": true}))),
            (Method::GET, "/actions", None),
            (Method::PUT, "/actions", Some(json!({"actions": []}))),
            (Method::GET, "", None),
        ] {
            let (status, got) = srv
                .call(
                    method.clone(),
                    &format!("{path}{suffix}"),
                    Some(&token),
                    body,
                )
                .await;
            assert_eq!(
                (status, errcode(&got)),
                (StatusCode::NOT_FOUND, "M_NOT_FOUND"),
                "{method} {path}{suffix}"
            );
        }
    }
    // Malformed bodies.
    let (status, body) = srv
        .put(
            &format!("{master}/enabled"),
            Some(&token),
            json!({"enabled": "yes"}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_BAD_JSON")
    );
    let (status, body) = srv
        .put(
            &format!("{message}/actions"),
            Some(&token),
            json!({"actions": "notify"}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_BAD_JSON")
    );
}

#[tokio::test]
async fn server_default_rules_and_bad_ids_are_refused() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("erin", "pw").await;
    let before = global(&srv, &token).await;

    // Rule ids starting with '.' are reserved: neither created nor replaced...
    for (kind, id, body) in [
        (
            "override",
            ".m.rule.master",
            json!({"conditions": [], "actions": ["notify"]}),
        ),
        ("content", ".mine", json!({"pattern": "x", "actions": []})),
    ] {
        let (status, got) = srv.put(&rule(kind, id), Some(&token), body).await;
        assert_eq!(
            (status, errcode(&got)),
            (StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
            "{kind}/{id}"
        );
    }
    // ... nor deleted.
    let (status, body) = srv
        .call(
            Method::DELETE,
            &rule("override", ".m.rule.master"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );

    // Slashes and backslashes are not allowed in rule ids; nor are empty ids.
    for id in ["a%2Fb", "a%5Cb", ""] {
        let (status, got) = srv
            .put(
                &rule("content", id),
                Some(&token),
                json!({"pattern": "x", "actions": []}),
            )
            .await;
        assert_eq!(
            (status, errcode(&got)),
            (StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
            "{id:?}"
        );
    }
    // Room and sender rule ids must be room and user ids.
    let (status, body) = srv
        .put(
            &rule("room", "not-a-room"),
            Some(&token),
            json!({"actions": []}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );
    let (status, body) = srv
        .put(
            &rule("sender", "not-a-user"),
            Some(&token),
            json!({"actions": []}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );
    // Unknown kinds.
    let (status, body) = srv
        .put(&rule("sideways", "x"), Some(&token), json!({"actions": []}))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );
    for (method, suffix) in [
        (Method::GET, ""),
        (Method::DELETE, ""),
        (Method::GET, "/enabled"),
        (Method::GET, "/actions"),
    ] {
        let (status, body) = srv
            .call(
                method.clone(),
                &format!("{}{suffix}", rule("sideways", "x")),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
            "{method} {suffix}"
        );
    }
    // Missing fields for the kind.
    let (status, body) = srv
        .put(
            &rule("content", "nopattern"),
            Some(&token),
            json!({"actions": []}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_BAD_JSON")
    );
    let (status, body) = srv
        .put(
            &rule("override", "noactions"),
            Some(&token),
            json!({"conditions": []}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_BAD_JSON")
    );

    // None of this changed anything.
    assert_eq!(global(&srv, &token).await, before);
}

#[tokio::test]
async fn rules_are_per_user() {
    let srv = TestServer::start().await;
    let (_, finn, _) = srv.register("finn", "pw").await;
    let (_, gus, _) = srv.register("gus", "pw").await;
    srv.put(
        &rule("content", "secret"),
        Some(&finn),
        json!({"pattern": "x", "actions": []}),
    )
    .await;
    srv.put(
        &format!("{}/enabled", rule("override", ".m.rule.master")),
        Some(&finn),
        json!({"enabled": true}),
    )
    .await;
    let (status, _) = srv.get(&rule("content", "secret"), Some(&gus)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, body) = srv
        .get(
            &format!("{}/enabled", rule("override", ".m.rule.master")),
            Some(&gus),
        )
        .await;
    assert_eq!(body, json!({"enabled": false}));
}

#[tokio::test]
async fn concurrent_changes_are_all_kept() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("hal", "pw").await;
    let puts = (0..8).map(|i| {
        let (srv, token) = (&srv, token.clone());
        async move {
            let path = rule("content", &format!("word{i}"));
            srv.put(
                &path,
                Some(&token),
                json!({"pattern": format!("w{i}"), "actions": ["notify"]}),
            )
            .await
            .0
        }
    });
    let statuses = futures_util::future::join_all(puts).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    let content = ids(&global(&srv, &token).await, "content");
    for i in 0..8 {
        assert!(
            content.contains(&format!("word{i}")),
            "word{i} lost: {content:?}"
        );
    }
}

#[tokio::test]
async fn rules_survive_restart() {
    let mut srv = TestServer::start().await;
    let (_, token, _) = srv.register("ivy", "pw").await;
    srv.put(
        &rule("room", "!r:localhost"),
        Some(&token),
        json!({"actions": ["notify"]}),
    )
    .await;
    srv.put(
        &format!("{}/enabled", rule("underride", ".m.rule.message")),
        Some(&token),
        json!({"enabled": false}),
    )
    .await;
    let before = global(&srv, &token).await;
    srv.restart().await;
    let after = global(&srv, &token).await;
    assert_eq!(after, before);
    assert_eq!(ids(&after, "room"), ["!r:localhost"]);
    let (_, body) = srv
        .get(
            &format!("{}/enabled", rule("underride", ".m.rule.message")),
            Some(&token),
        )
        .await;
    assert_eq!(body, json!({"enabled": false}));
}
