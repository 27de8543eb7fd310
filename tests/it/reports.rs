//! Reporting content over HTTP: events, rooms and users, stored durably for administrators.

use hearth::service::reports::{Report, ReportTarget};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode, join, TestServer};

async fn send_text(srv: &TestServer, token: &str, room: &str, txn: &str) -> String {
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                enc(room)
            ),
            Some(token),
            json!({"msgtype": "m.text", "body": "spam"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

fn reports(srv: &TestServer) -> Vec<Report> {
    let services = &srv.server.as_ref().unwrap().services;
    services
        .reports
        .list(None, 1000)
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect()
}

fn report_event_path(room: &str, event: &str) -> String {
    format!(
        "/_matrix/client/v3/rooms/{}/report/{}",
        enc(room),
        enc(event)
    )
}

fn assert_not_found(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(errcode(body), "M_NOT_FOUND", "{body}");
}

#[tokio::test]
async fn event_reports_are_stored_durably() {
    let mut srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    join(&srv, &bob, &room).await;
    let event = send_text(&srv, &alice, &room, "t1").await;

    // `score` was removed from the spec (v1.18); older clients still send it.
    let (status, body) = srv
        .post(
            &report_event_path(&room, &event),
            Some(&bob),
            json!({"reason": "this makes me sad", "score": -100}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
    // `reason` is optional for events.
    let (status, body) = srv
        .post(&report_event_path(&room, &event), Some(&bob), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    srv.restart().await;
    let stored = reports(&srv);
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[0].reporter, bob_id);
    assert_eq!(
        stored[0].target,
        ReportTarget::Event {
            room_id: room.clone(),
            event_id: event.clone()
        }
    );
    assert_eq!(stored[0].reason, "this makes me sad");
    assert!(stored[0].received_ms > 0);
    assert_eq!(stored[1].reason, "");
    assert!(stored[0].received_ms <= stored[1].received_ms);

    // Paging after the first report returns the second.
    let services = &srv.server.as_ref().unwrap().services;
    let all = services.reports.list(None, 10).unwrap();
    let rest = services.reports.list(Some(all[0].0), 10).unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].0, all[1].0);
}

#[tokio::test]
async fn event_reports_need_a_joined_reporter_and_a_visible_event() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let (_, carol, _) = srv.register("carol", "pw").await;
    let room = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    let other = create_room(&srv, &alice, json!({"preset": "public_chat"})).await;
    // History from before a user joins is hidden from them.
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.history_visibility/",
                enc(&room)
            ),
            Some(&alice),
            json!({"history_visibility": "joined"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let hidden = send_text(&srv, &alice, &room, "t1").await;
    join(&srv, &bob, &room).await;
    let visible = send_text(&srv, &alice, &room, "t2").await;
    let elsewhere = send_text(&srv, &alice, &other, "t3").await;
    let reason = json!({"reason": "r"});

    // Not joined (never, or no longer): 404, not 403.
    let (status, body) = srv
        .post(
            &report_event_path(&room, &visible),
            Some(&carol),
            reason.clone(),
        )
        .await;
    assert_not_found(status, &body);
    // Joined but the event predates the join.
    let (status, body) = srv
        .post(
            &report_event_path(&room, &hidden),
            Some(&bob),
            reason.clone(),
        )
        .await;
    assert_not_found(status, &body);
    // An event of another room, an unknown event, an unknown room.
    let (status, body) = srv
        .post(
            &report_event_path(&room, &elsewhere),
            Some(&bob),
            reason.clone(),
        )
        .await;
    assert_not_found(status, &body);
    let (status, body) = srv
        .post(
            &report_event_path(&room, "$nonexistent"),
            Some(&bob),
            reason.clone(),
        )
        .await;
    assert_not_found(status, &body);
    let (status, body) = srv
        .post(
            &report_event_path("!nowhere:localhost", &visible),
            Some(&bob),
            reason.clone(),
        )
        .await;
    assert_not_found(status, &body);
    assert!(reports(&srv).is_empty(), "failed reports are not stored");

    let (status, body) = srv
        .post(
            &report_event_path(&room, &visible),
            Some(&bob),
            reason.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = srv
        .post(&report_event_path(&room, &visible), Some(&bob), reason)
        .await;
    assert_not_found(status, &body);
    assert_eq!(reports(&srv).len(), 1);

    let (status, body) = srv
        .post(
            &report_event_path(&room, &visible),
            Some(&alice),
            json!({"reason": 5}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(errcode(&body), "M_BAD_JSON");
    let (status, body) = srv
        .post(&report_event_path(&room, &visible), None, json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test]
async fn rooms_can_be_reported_without_joining() {
    let srv = TestServer::start().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (bob_id, bob, _) = srv.register("bob", "pw").await;
    let room = create_room(&srv, &alice, json!({})).await;
    let path = format!("/_matrix/client/v3/rooms/{}/report", enc(&room));

    let (status, body) = srv
        .post(&path, Some(&bob), json!({"reason": "abuse"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
    let stored = reports(&srv);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].reporter, bob_id);
    assert_eq!(
        stored[0].target,
        ReportTarget::Room {
            room_id: room.clone()
        }
    );
    assert_eq!(stored[0].reason, "abuse");

    let (status, body) = srv
        .post(
            "/_matrix/client/v3/rooms/!nowhere:localhost/report",
            Some(&bob),
            json!({"reason": "abuse"}),
        )
        .await;
    assert_not_found(status, &body);
    let long = "x".repeat(5000);
    let (status, body) = srv.post(&path, Some(&bob), json!({"reason": long})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(errcode(&body), "M_INVALID_PARAM");
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/rooms/not-a-room-id/report",
            Some(&bob),
            json!({"reason": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(errcode(&body), "M_INVALID_PARAM");
    assert_eq!(reports(&srv).len(), 1);
}

#[tokio::test]
async fn users_can_be_reported_without_sharing_a_room() {
    let srv = TestServer::start().await;
    let (alice_id, _, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;

    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/users/{}/report", enc(&alice_id)),
            Some(&bob),
            json!({"reason": "impersonation"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stored = reports(&srv);
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].target,
        ReportTarget::User {
            user_id: alice_id.clone()
        }
    );
    assert_eq!(stored[0].reason, "impersonation");

    for unknown in ["@nobody:localhost", "@someone:remote.example"] {
        let (status, body) = srv
            .post(
                &format!("/_matrix/client/v3/users/{}/report", enc(unknown)),
                Some(&bob),
                json!({"reason": "x"}),
            )
            .await;
        assert_not_found(status, &body);
    }
    // `reason` is required here.
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/users/{}/report", enc(&alice_id)),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(errcode(&body), "M_BAD_JSON");
    assert_eq!(reports(&srv).len(), 1);
}
