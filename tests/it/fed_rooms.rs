//! Rooms shared over federation, end to end over HTTP: a remote user's events arrive in a
//! signed `/send` transaction, local events go back out through the durable queue, and the
//! room's server ACL shuts a denied server out of PDUs and room EDUs alike.
//!
//! Joins over federation (make_join/send_join) are not built yet; here B's user joins by a
//! join event that the test builds and signs with B's real key, which the room's rules allow
//! for a public room.

use std::time::{Duration, Instant};

use hearth::service::federation::receive::InboundTxns;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{create_room, enc};
use crate::fed_common::{start_many, FedServer};
use crate::fed_pdus::events::{raw, EventSpec, Remote, RoomView};

fn services(s: &FedServer) -> &hearth::service::Services {
    &s.server.as_ref().expect("running").services
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `from` sends `to` a transaction with these PDUs and EDUs; returns the answer.
async fn send_txn(
    from: &FedServer,
    to: &FedServer,
    txn_id: &str,
    pdus: Vec<Value>,
    edus: Vec<Value>,
) -> Value {
    let body =
        json!({"origin": from.name, "origin_server_ts": now_ms(), "pdus": pdus, "edus": edus});
    let (status, answer) = from
        .signed(
            to,
            &to.name,
            Method::PUT,
            &format!("/_matrix/federation/v1/send/{txn_id}"),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

fn json_of(object: &ruma::CanonicalJsonObject) -> Value {
    serde_json::from_str(raw(object).get()).unwrap()
}

async fn message_bodies(a: &FedServer, token: &str, room_id: &str) -> Vec<String> {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
        enc(room_id)
    );
    let (status, body) = a.get(&path, Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_remote_user_joins_and_local_events_go_back_out() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice_token, _) = a.register("alice", "password1").await;
    let room_id = create_room(a, &alice_token, json!({"preset": "public_chat"})).await;
    let view = RoomView {
        services: services(a),
        room_id: room_id.clone(),
    };
    let remote = Remote::server(b);
    let bob = b.user_id("bob");

    let (join_id, join) = view.event(
        &remote,
        EventSpec::state("m.room.member", &bob, &bob, json!({"membership": "join"})),
    );
    let answer = send_txn(b, a, "j1", vec![json_of(&join)], vec![]).await;
    assert_eq!(answer["pdus"][join_id.as_str()], json!({}), "{answer}");
    // A replay is answered the same and changes nothing.
    let again = send_txn(b, a, "j1", vec![json_of(&join)], vec![]).await;
    assert_eq!(again, answer);
    let (message_id, message) = view.event(&remote, EventSpec::message(&bob, "hi from B"));
    let answer = send_txn(b, a, "m1", vec![json_of(&message)], vec![]).await;
    assert_eq!(answer["pdus"][message_id.as_str()], json!({}), "{answer}");

    let path = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room_id));
    let (status, members) = a.get(&path, Some(&alice_token)).await;
    assert_eq!(status, StatusCode::OK, "{members}");
    assert!(members["joined"].get(&bob).is_some(), "{members}");
    assert_eq!(
        message_bodies(a, &alice_token, &room_id).await,
        vec!["hi from B"]
    );

    // Alice answers: A's queue delivers her event to B in a transaction of its own.
    let (status, sent) = a
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/r1",
                enc(&room_id)
            ),
            Some(&alice_token),
            json!({"msgtype": "m.text", "body": "hello bob"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    let event_id = sent["event_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let txns = services(b)
            .store
            .range::<InboundTxns>(None, false, 100)
            .unwrap();
        let arrived = txns
            .iter()
            .filter(|((origin, _), _)| origin == &a.name)
            .any(|(_, txn)| txn.pdus.iter().any(|(id, _)| id == &event_id));
        if arrived {
            break;
        }
        assert!(Instant::now() < deadline, "A's event never reached B");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_server_acl_shuts_a_denied_server_out() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice_token, _) = a.register("alice", "password1").await;
    let room_id = create_room(a, &alice_token, json!({"preset": "public_chat"})).await;
    let view = RoomView {
        services: services(a),
        room_id: room_id.clone(),
    };
    let remote = Remote::server(b);
    let bob = b.user_id("bob");
    let (join_id, join) = view.event(
        &remote,
        EventSpec::state("m.room.member", &bob, &bob, json!({"membership": "join"})),
    );
    let answer = send_txn(b, a, "j1", vec![json_of(&join)], vec![]).await;
    assert_eq!(answer["pdus"][join_id.as_str()], json!({}), "{answer}");
    let typing = |on: bool| json!({"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": bob, "typing": on}});
    send_txn(b, a, "t1", vec![], vec![typing(true)]).await;
    let typing_users = || async {
        let (status, sync) = a
            .get("/_matrix/client/v3/sync?timeout=0", Some(&alice_token))
            .await;
        assert_eq!(status, StatusCode::OK, "{sync}");
        sync["rooms"]["join"][&room_id]["ephemeral"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == "m.typing")
            .flat_map(|e| {
                e["content"]["user_ids"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect::<Vec<Value>>()
    };
    assert_eq!(typing_users().await, vec![json!(bob)]);

    // IP literals are denied from now on: B (127.0.0.1:port) is shut out.
    let (status, body) = a
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.server_acl/",
                enc(&room_id)
            ),
            Some(&alice_token),
            json!({"allow": ["*"], "deny": [], "allow_ip_literals": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (message_id, message) = view.event(&remote, EventSpec::message(&bob, "denied"));
    let answer = send_txn(b, a, "m1", vec![json_of(&message)], vec![]).await;
    let error = answer["pdus"][message_id.as_str()]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("ACL"), "{answer}");
    assert!(message_bodies(a, &alice_token, &room_id).await.is_empty());
    // Bob's "stopped typing" is ignored too: he is still shown typing.
    send_txn(b, a, "t2", vec![], vec![typing(false)]).await;
    assert_eq!(typing_users().await, vec![json!(bob)]);
}
