//! Outliers on the joining side: the state handed over at a join is stored as outliers, and
//! an outlier received again as a timeline event is promoted in place (old history) or stored
//! again at a new position (new history).

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::*;
use crate::common::{create_room, enc};
use crate::fed_common::start_many;
use crate::fed_pdus::events::Remote;

#[tokio::test]
async fn an_outlier_received_again_as_history_is_promoted_in_place() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice, _) = a.register("alice", "password1").await;
    let (_, bob, _) = b.register("bob", "password1").await;
    let room = create_room(
        a,
        &alice,
        json!({"preset": "public_chat", "name": "old name"}),
    )
    .await;
    let (status, body) = join_via(b, &bob, &room, &[&a.name]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let room_id: &ruma::RoomId = room.as_str().try_into().unwrap();

    // On B the name event is an outlier of the state: readable as state, not in the timeline.
    let a_rooms = &services(a).rooms;
    let record = a_rooms.room(room_id).unwrap().unwrap();
    let name = a_rooms
        .state_event(record.sid, &ruma::events::StateEventType::RoomName, "")
        .unwrap()
        .unwrap();
    let b_rooms = &services(b).rooms;
    let sid = b_rooms.event_sid(&name.pdu.event_id).unwrap().unwrap();
    assert!(b_rooms.is_outlier(sid).unwrap());
    let messages = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
        enc(&room)
    );
    let names_in = |page: &Value| {
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.name")
            .count()
    };
    // (Not read through /messages here: paging past the join would backfill it.)
    let b_room_sid = b_rooms.room(room_id).unwrap().unwrap().sid;
    let row = services(b)
        .store
        .get::<hearth::service::rooms::Timeline>(&(b_room_sid, sid))
        .unwrap();
    assert!(row.is_none(), "not in the timeline");

    // A sends it as a PDU (as backfill or missing events would bring it): promoted where it
    // is, before the join; the current state and the join stay as they were.
    let body = json!({
        "origin": a.name,
        "origin_server_ts": crate::fed_pdus::events::now_ms(),
        "pdus": [value_of(&name.json)],
    });
    let (status, answer) = a
        .signed(
            b,
            &b.name,
            Method::PUT,
            "/_matrix/federation/v1/send/p1",
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["pdus"][name.pdu.event_id.as_str()],
        json!({}),
        "{answer}"
    );
    assert_eq!(b_rooms.event_sid(&name.pdu.event_id).unwrap(), Some(sid));
    assert!(!b_rooms.is_outlier(sid).unwrap());
    let (_, page) = b.get(&messages, Some(&bob)).await;
    assert_eq!(names_in(&page), 1, "{page}");
    let b_record = b_rooms.room(room_id).unwrap().unwrap();
    assert_eq!(b_record.extremities.len(), 1);
    assert!(b_record.extremities[0] > sid);
}

#[tokio::test]
async fn an_outlier_received_again_as_new_history_is_stored_again() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (alice_id, alice, _) = a.register("alice", "password1").await;
    let (_, bob, _) = b.register("bob", "password1").await;
    let room = create_room(a, &alice, json!({"preset": "public_chat"})).await;
    let (status, body) = join_via(b, &bob, &room, &[&a.name]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let room_id: &ruma::RoomId = room.as_str().try_into().unwrap();

    // A message of Alice's that follows B's newest event, first known to B as an outlier
    // (as an auth or missing event fetch would store it).
    let view = crate::fed_pdus::events::RoomView {
        services: services(b),
        room_id: room.clone(),
    };
    let (event_id, object) = view.event(
        &Remote::server(a),
        crate::fed_pdus::events::EventSpec::message(&alice_id, "first an outlier"),
    );
    let b_rooms = &services(b).rooms;
    let pdu = hearth::service::rooms::Pdu::from_object(event_id.clone(), &object).unwrap();
    let sids = b_rooms
        .store_outliers(room_id, &[(pdu, object.clone())])
        .await
        .unwrap();
    assert!(b_rooms.is_outlier(sids[0]).unwrap());

    let body = json!({
        "origin": a.name,
        "origin_server_ts": crate::fed_pdus::events::now_ms(),
        "pdus": [value_of(&object)],
    });
    let (status, answer) = a
        .signed(
            b,
            &b.name,
            Method::PUT,
            "/_matrix/federation/v1/send/r1",
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["pdus"][event_id.as_str()], json!({}), "{answer}");
    // Stored again at a new position: in the timeline, the room's newest event.
    let sid = b_rooms.event_sid(&event_id).unwrap().unwrap();
    assert!(sid > sids[0]);
    assert!(!b_rooms.is_outlier(sid).unwrap());
    assert!(b_rooms.event_by_sid(sids[0]).unwrap().is_none());
    let record = b_rooms.room(room_id).unwrap().unwrap();
    assert_eq!(record.extremities, vec![sid]);
    wait_for_message(b, &bob, &room, "first an outlier").await;
}
