//! A remote invite notifies the invitee as a local invite does (`.m.rule.invite_for_me`): a
//! push to their gateway with the room's name from the stripped state, an unread count, an
//! entry in `GET /notifications`; rejecting it reads it.

use reqwest::StatusCode;
use serde_json::json;

use super::{invite, state_id};
use crate::common::{create_room, enc};
use crate::fed_common::start_many;
use crate::push_gateway::{set_pusher, Gateway};

#[tokio::test]
async fn a_remote_invite_is_pushed_counted_and_listed() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let gateway = Gateway::start().await;
    let (alice, alice_token, _) = a.register("alice", "password1").await;
    let (status, body) = a
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice)),
            Some(&alice_token),
            json!({"displayname": "Alice of A"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (bob, bob_token, _) = b.register("bob", "password1").await;
    set_pusher(b, &bob_token, "bob-phone", json!({"url": gateway.url()})).await;

    let room = create_room(
        a,
        &alice_token,
        json!({"preset": "private_chat", "name": "Across servers"}),
    )
    .await;
    let (status, body) = invite(a, &alice_token, &room, &bob).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let invite_id = state_id(a, &room, "m.room.member", &bob);

    // Pushed as a local invite is: high priority with a sound, counted.
    let n = gateway.wait_for_event(&invite_id).await;
    assert_eq!(n["room_id"], room.as_str(), "{n}");
    assert_eq!(n["type"], "m.room.member");
    assert_eq!(n["sender"], alice.as_str());
    assert_eq!(n["sender_display_name"], "Alice of A");
    assert_eq!(n["content"]["membership"], "invite");
    assert_eq!(n["user_is_target"], true);
    assert_eq!(n["room_name"], "Across servers");
    assert_eq!(n["prio"], "high");
    assert_eq!(n["counts"]["unread"], 1);
    assert_eq!(n["devices"][0]["tweaks"]["sound"], "default");

    // Listed, unread.
    let (status, body) = b
        .get("/_matrix/client/v3/notifications", Some(&bob_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed = &body["notifications"][0];
    assert_eq!(listed["room_id"], room.as_str(), "{body}");
    assert_eq!(listed["read"], false);
    assert_eq!(listed["event"]["event_id"], invite_id.as_str());
    assert_eq!(listed["event"]["state_key"], bob.as_str());
    assert_eq!(listed["event"]["content"]["membership"], "invite");

    // Rejecting it reads it: the badge goes back to zero.
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&bob_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let pushes = gateway.wait_for(2).await;
    let badge = &pushes[1];
    assert_eq!(badge["counts"]["unread"], 0, "{pushes:#?}");
    assert!(badge.get("event_id").is_none(), "{pushes:#?}");
}
