//! The resident side by hand-signed requests from B: refusals (unsupported room version,
//! forged and malformed joins, nothing stored), `omit_members`, knocks and leaves.

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::*;
use crate::common::{create_room, enc, errcode};
use crate::fed_common::start_many;
use crate::fed_pdus::events::Remote;

#[tokio::test]
async fn the_resident_refuses_bad_requests_and_forged_joins() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice, _) = a.register("alice", "password1").await;
    let room = create_room(a, &alice, json!({"preset": "public_chat"})).await;
    let bob = b.user_id("bob");

    // The room is version 12; B says it supports 10 and 11 only.
    let (status, body) = make_join(b, a, &room, &bob, &["10", "11"]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(errcode(&body), "M_INCOMPATIBLE_ROOM_VERSION");
    assert_eq!(body["room_version"], "12");
    // Only the user's own server may ask.
    let (status, body) = make_join(b, a, &room, &a.user_id("mallory"), &["12"]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // An unknown room.
    let (status, body) = make_join(b, a, "!nope:example.org", &bob, &["12"]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let (status, made) = make_join(b, a, &room, &bob, &["11", "12"]).await;
    assert_eq!(status, StatusCode::OK, "{made}");
    assert_eq!(made["room_version"], "12");
    assert_eq!(made["event"]["type"], "m.room.member");
    assert_eq!(made["event"]["content"]["membership"], "join");
    let remote = Remote::server(b);
    let (event_id, event) = sign_template(&remote, "12", &made["event"]);

    // Content changed after signing: the hash does not match.
    let mut tampered = value_of(&event);
    tampered["content"]["displayname"] = json!("Mallory");
    let (status, body) = send_join(b, a, &room, event_id.as_str(), tampered, false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Signed by another key under B's key id.
    let forger = Remote {
        name: b.name.clone(),
        key: {
            let der = ruma::signatures::Ed25519KeyPair::generate();
            ruma::signatures::Ed25519KeyPair::from_der(&der, remote.key.version().into()).unwrap()
        },
    };
    let (forged_id, forged) = sign_template(&forger, "12", &made["event"]);
    let (status, body) = send_join(b, a, &room, forged_id.as_str(), value_of(&forged), false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // The path names another event.
    let (status, body) = send_join(b, a, &room, "$other", value_of(&event), false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // A join of a user of another server, sent by B.
    let mut foreign = made["event"].clone();
    foreign["sender"] = json!(a.user_id("mallory"));
    foreign["state_key"] = json!(a.user_id("mallory"));
    let (foreign_id, foreign) = sign_template(&remote, "12", &foreign);
    let (status, body) =
        send_join(b, a, &room, foreign_id.as_str(), value_of(&foreign), false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Not a join.
    let mut leave = made["event"].clone();
    leave["content"]["membership"] = json!("leave");
    let (leave_id, leave) = sign_template(&remote, "12", &leave);
    let (status, body) = send_join(b, a, &room, leave_id.as_str(), value_of(&leave), false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // None of them was stored.
    let rooms = &services(a).rooms;
    for id in [&forged_id, &foreign_id, &leave_id, &event_id] {
        assert!(rooms.event_sid(id).unwrap().is_none(), "{id} stored");
    }
    let path = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room));
    let (_, members) = a.get(&path, Some(&alice)).await;
    assert!(members["joined"].get(&bob).is_none(), "{members}");

    // The genuine one is accepted, and a resend answered the same.
    let (status, answer) = send_join(b, a, &room, event_id.as_str(), value_of(&event), false).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["state"].as_array().unwrap().len() >= 5, "{answer}");
    assert!(
        !answer["auth_chain"].as_array().unwrap().is_empty(),
        "{answer}"
    );
    let (status, again) = send_join(b, a, &room, event_id.as_str(), value_of(&event), false).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    let (_, members) = a.get(&path, Some(&alice)).await;
    assert!(members["joined"].get(&bob).is_some(), "{members}");
}

#[tokio::test]
async fn omit_members_leaves_out_members_but_heroes_and_names_the_servers() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (alice_id, alice, _) = a.register("alice", "password1").await;
    let (_, carol, _) = a.register("carol", "password1").await;
    let remote = Remote::server(b);
    for named in [true, false] {
        let mut body = json!({"preset": "public_chat"});
        if named {
            body["name"] = json!("named");
        }
        let room = create_room(a, &alice, body).await;
        crate::common::join(a, &carol, &room).await;
        let user = b.user_id(if named { "bob" } else { "dan" });
        let (status, made) = make_join(b, a, &room, &user, &["12"]).await;
        assert_eq!(status, StatusCode::OK, "{made}");
        let (event_id, event) = sign_template(&remote, "12", &made["event"]);
        let (status, answer) =
            send_join(b, a, &room, event_id.as_str(), value_of(&event), true).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        // Named: every member is left out; unnamed: both members are heroes, so none is.
        assert_eq!(answer["members_omitted"] == true, named, "{answer}");
        assert_eq!(answer["servers_in_room"], json!([a.name]), "{answer}");
        let state = answer["state"].as_array().unwrap();
        let members: Vec<&str> = state
            .iter()
            .filter(|e| e["type"] == "m.room.member")
            .filter_map(|e| e["state_key"].as_str())
            .collect();
        if named {
            assert!(members.is_empty(), "{members:?}");
            // Alice's member event is in the auth chain of the power levels.
            assert!(answer["auth_chain"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["type"] == "m.room.member" && e["state_key"] == alice_id));
        } else {
            // No name: the heroes' member events stay.
            let mut sorted = members.clone();
            sorted.sort();
            let mut want = vec![alice_id.as_str(), a.user_id("carol").leak() as &str];
            want.sort();
            assert_eq!(sorted, want);
        }
        assert!(
            state.iter().any(|e| e["type"] == "m.room.create"),
            "{answer}"
        );
        // What is in `state` is not repeated in `auth_chain`.
        let in_state: std::collections::HashSet<String> =
            state.iter().map(|e| e.to_string()).collect();
        for event in answer["auth_chain"].as_array().unwrap() {
            assert!(!in_state.contains(&event.to_string()), "{event}");
        }
    }
    // Without omit_members every member is there and nothing is said to be omitted.
    let room = create_room(a, &alice, json!({"preset": "public_chat", "name": "n"})).await;
    let (_, made) = make_join(b, a, &room, &b.user_id("erin"), &["12"]).await;
    let (event_id, event) = sign_template(&remote, "12", &made["event"]);
    let (status, answer) = send_join(b, a, &room, event_id.as_str(), value_of(&event), false).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer.get("members_omitted").is_none() || answer["members_omitted"] == false);
    assert!(answer["state"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.member" && e["state_key"] == alice_id));
}

#[tokio::test]
async fn remote_users_knock_and_leave_through_the_resident() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice, _) = a.register("alice", "password1").await;
    let remote = Remote::server(b);
    let bob = b.user_id("bob");
    let room = create_room(
        a,
        &alice,
        json!({"initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}]}),
    )
    .await;
    let path = |what: &str, event: Option<&str>| match event {
        None => format!(
            "/_matrix/federation/v1/make_{what}/{}/{}?ver=11&ver=12",
            enc(&room),
            enc(&bob)
        ),
        Some(id) => format!(
            "/_matrix/federation/{}/send_{what}/{}/{}",
            if what == "knock" { "v1" } else { "v2" },
            enc(&room),
            enc(id)
        ),
    };
    // Joining is not allowed (knock rule): the template is refused.
    let (status, body) = make_join(b, a, &room, &bob, &["12"]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let (status, made) = b
        .signed(a, &a.name, Method::GET, &path("knock", None), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{made}");
    assert_eq!(made["event"]["content"]["membership"], "knock");
    let (knock_id, knock) = sign_template(&remote, "12", &made["event"]);
    let (status, answer) = b
        .signed(
            a,
            &a.name,
            Method::PUT,
            &path("knock", Some(knock_id.as_str())),
            Some(value_of(&knock)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let stripped = answer["knock_room_state"].as_array().unwrap();
    let types: Vec<&str> = stripped.iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(types.contains(&"m.room.create"), "{answer}");
    assert!(types.contains(&"m.room.join_rules"), "{answer}");
    wait_for_membership(a, &alice, &room, &bob, "knock").await;

    // The knock is withdrawn with make_leave/send_leave.
    let (status, made) = b
        .signed(
            a,
            &a.name,
            Method::GET,
            &format!(
                "/_matrix/federation/v1/make_leave/{}/{}",
                enc(&room),
                enc(&bob)
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{made}");
    assert_eq!(made["event"]["content"]["membership"], "leave");
    let (leave_id, leave) = sign_template(&remote, "12", &made["event"]);
    let (status, answer) = b
        .signed(
            a,
            &a.name,
            Method::PUT,
            &path("leave", Some(leave_id.as_str())),
            Some(value_of(&leave)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, json!({}));
    wait_for_membership(a, &alice, &room, &bob, "leave").await;

    // A version without knocking.
    let old = create_room(a, &alice, json!({"room_version": "6"})).await;
    let (status, body) = b
        .signed(
            a,
            &a.name,
            Method::GET,
            &format!(
                "/_matrix/federation/v1/make_knock/{}/{}?ver=6",
                enc(&old),
                enc(&bob)
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(errcode(&body), "M_INCOMPATIBLE_ROOM_VERSION");
}

#[tokio::test]
async fn a_server_denied_by_the_acl_gets_no_template() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice, _) = a.register("alice", "password1").await;
    let room = create_room(a, &alice, json!({"preset": "public_chat"})).await;
    let (status, body) = a
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.server_acl/",
                enc(&room)
            ),
            Some(&alice),
            json!({"allow": [a.name], "deny": [], "allow_ip_literals": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = make_join(b, a, &room, &b.user_id("bob"), &["12"]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(errcode(&body), "M_FORBIDDEN");
}
