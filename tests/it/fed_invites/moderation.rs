//! Knocks through the room's server, bans of remote users (invited, joined or never in the
//! room) and upgrades followed by remote users.

use reqwest::StatusCode;
use serde_json::json;

use super::{
    invite, left_events, member_content, state_id, sync_token, sync_until, wait_delivered,
};
use crate::common::{create_room, enc};
use crate::fed_common::start_many;

#[tokio::test]
async fn a_ban_of_an_invited_remote_user_reaches_their_server() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice_token, _) = a.register("alice", "password1").await;
    let (bob, bob_token, _) = b.register("bob", "password1").await;
    let room_id = create_room(a, &alice_token, json!({"preset": "private_chat"})).await;
    let since = sync_token(b, &bob_token).await;
    let (status, body) = invite(a, &alice_token, &room_id, &bob).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = sync_until(b, &bob_token, &since, "the invite", |s| {
        s["rooms"]["invite"][&room_id].is_object()
    })
    .await;
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    let (status, body) = a
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room_id)),
            Some(&alice_token),
            json!({"user_id": bob}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = sync_until(b, &bob_token, &since, "the ban", |s| {
        !left_events(s, &room_id).is_empty()
    })
    .await;
    assert_eq!(
        left_events(&sync, &room_id)[0]["content"]["membership"],
        "ban"
    );
}

#[tokio::test]
async fn a_knock_through_the_rooms_server_shows_on_both_sides() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice_token, _) = a.register("alice", "password1").await;
    let (bob, bob_token, _) = b.register("bob", "password1").await;
    let room_id = create_room(
        a,
        &alice_token,
        json!({"preset": "private_chat", "name": "Knock here", "room_version": "10",
               "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}]}),
    )
    .await;
    let since = sync_token(b, &bob_token).await;

    let (status, body) = b
        .post(
            &format!(
                "/_matrix/client/v3/knock/{}?via={}",
                enc(&room_id),
                enc(&a.name)
            ),
            Some(&bob_token),
            json!({"reason": "let me in"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], json!(room_id));
    let (status, content) = member_content(a, &alice_token, &room_id, &bob).await;
    assert_eq!(status, StatusCode::OK, "{content}");
    assert_eq!(content["membership"], "knock");
    assert_eq!(content["reason"], "let me in");

    let sync = sync_until(b, &bob_token, &since, "the knock", |s| {
        s["rooms"]["knock"][&room_id].is_object()
    })
    .await;
    let events = sync["rooms"]["knock"][&room_id]["knock_state"]["events"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        events.iter().any(|e| e["type"] == "m.room.create"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Knock here"),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == json!(bob)
            && e["content"]["membership"] == "knock"),
        "{events:?}"
    );
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // Withdrawing the knock: a leave through A.
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)),
            Some(&bob_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, content) = member_content(a, &alice_token, &room_id, &bob).await;
    assert_eq!(content["membership"], "leave", "{content}");
    let sync = sync_until(b, &bob_token, &since, "the withdrawn knock", |s| {
        !left_events(s, &room_id).is_empty()
    })
    .await;
    assert!(sync["rooms"]["knock"].get(&room_id).is_none(), "{sync}");
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // Knocking again, and Alice turns the knock down: the kick reaches B.
    let (status, body) = b
        .post(
            &format!(
                "/_matrix/client/v3/knock/{}?via={}",
                enc(&room_id),
                enc(&a.name)
            ),
            Some(&bob_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = sync_until(b, &bob_token, &since, "the second knock", |s| {
        s["rooms"]["knock"][&room_id].is_object()
    })
    .await;
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let (status, body) = a
        .post(
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room_id)),
            Some(&alice_token),
            json!({"user_id": bob, "reason": "not now"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = sync_until(b, &bob_token, &since, "the refused knock", |s| {
        !left_events(s, &room_id).is_empty()
    })
    .await;
    let refusal = left_events(&sync, &room_id)[0].clone();
    assert_eq!(refusal["content"]["reason"], "not now", "{refusal}");
    assert_ne!(refusal["sender"], json!(bob), "{refusal}");
}

#[tokio::test]
async fn bans_and_tombstones_reach_remote_servers_whose_users_follow_the_upgrade() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice_token, _) = a.register("alice", "password1").await;
    let room_id = create_room(
        a,
        &alice_token,
        json!({"preset": "public_chat", "room_version": "10"}),
    )
    .await;

    // A pre-emptive ban of a user whose server has nobody in the room still goes there.
    let carol = b.user_id("carol");
    let (status, body) = a
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room_id)),
            Some(&alice_token),
            json!({"user_id": carol}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_delivered(a, b, &state_id(a, &room_id, "m.room.member", &carol)).await;

    // B's user joins over federation; the upgrade's tombstone reaches B, whose user sees it
    // and follows it into the replacement room through A.
    let (bob, bob_token, _) = b.register("bob", "password1").await;
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room_id)),
            Some(&bob_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let since = sync_token(b, &bob_token).await;
    let (status, body) = a
        .post(
            &format!("/_matrix/client/v3/rooms/{}/upgrade", enc(&room_id)),
            Some(&alice_token),
            json!({"new_version": "11"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let replacement = body["replacement_room"].as_str().unwrap().to_owned();
    let tombstone = state_id(a, &room_id, "m.room.tombstone", "");
    wait_delivered(a, b, &tombstone).await;
    let sync = sync_until(b, &bob_token, &since, "the tombstone", |s| {
        s["rooms"]["join"][&room_id]["timeline"]["events"]
            .as_array()
            .is_some_and(|events| events.iter().any(|e| e["type"] == "m.room.tombstone"))
    })
    .await;
    let events = sync["rooms"]["join"][&room_id]["timeline"]["events"]
        .as_array()
        .unwrap();
    let shown = events
        .iter()
        .find(|e| e["type"] == "m.room.tombstone")
        .unwrap();
    assert_eq!(shown["content"]["replacement_room"], json!(replacement));
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&replacement)),
            Some(&bob_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, content) = member_content(a, &alice_token, &replacement, &bob).await;
    assert_eq!(content["membership"], "join", "{content}");
}
