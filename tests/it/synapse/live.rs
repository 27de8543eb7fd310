//! Life in rooms shared by Hearth and Synapse users beyond single events: profile and
//! presence changes, leaving and kicks, and Hearth catching up with what Synapse users sent
//! while it was stopped.

use std::time::Duration;

use serde_json::json;

use super::rooms::{join, joined_room, members, membership_on, send, sync_until, Member};
use super::{Pair, Side};
use crate::common::enc;

#[tokio::test]
#[ignore = "needs Synapse: a Python in SYNAPSE_PYTHON; .ci/run runs it"]
async fn profile_and_presence_changes_travel_both_ways() {
    let p = Pair::start().await;
    let (alice, bob) = members(&p).await;
    let room = joined_room(&p, &alice, &bob, "11").await;
    for (from, to) in [(&alice, &bob), (&bob, &alice)] {
        // A new display name: the server updates the member event in the shared room.
        let name = format!("{} renamed", from.side.label());
        let (status, body) = from
            .side
            .put(
                &format!(
                    "/_matrix/client/v3/profile/{}/displayname",
                    enc(from.user())
                ),
                from.token(),
                json!({"displayname": name}),
            )
            .await;
        p.ensure_eq(status.as_u16(), 200, format!("renaming: {body}"));
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(&room),
            enc(from.user())
        );
        p.eventually(
            &format!("{}'s new name as {} sees it", from.label(), to.label()),
            || async {
                let (_, body) = to.side.get(&path, to.token()).await;
                (body["displayname"] == name.as_str() && body["membership"] == "join").then_some(())
            },
        )
        .await;

        // Presence, with a status message.
        let status_msg = format!("testing from {}", from.side.label());
        let path = format!("/_matrix/client/v3/presence/{}/status", enc(from.user()));
        let (status, body) = from
            .side
            .put(
                &path,
                from.token(),
                json!({"presence": "online", "status_msg": status_msg}),
            )
            .await;
        p.ensure_eq(status.as_u16(), 200, format!("presence: {body}"));
        p.eventually(
            &format!("{}'s presence as {} sees it", from.label(), to.label()),
            || async {
                let (_, body) = to.side.get(&path, to.token()).await;
                (body["presence"] == "online" && body["status_msg"] == status_msg.as_str())
                    .then_some(())
            },
        )
        .await;
    }
}

/// `guest` leaves `host`'s room and joins again; then `host` kicks `guest`, which the guest's
/// server shows in its sync.
async fn leave_and_kick(p: &Pair, host: &Member<'_>, guest: &Member<'_>) {
    let room = joined_room(p, host, guest, "11").await;
    let (status, body) = guest
        .side
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            guest.token(),
            json!({}),
        )
        .await;
    p.ensure_eq(status.as_u16(), 200, format!("leaving: {body}"));
    membership_on(p, host, &room, guest.user(), "leave").await;
    let joined = join(p, guest, &room, host.side.name()).await;
    p.ensure_eq(&joined, &room, "joined again");
    membership_on(p, host, &room, guest.user(), "join").await;

    let (status, body) = host
        .side
        .post(
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room)),
            host.token(),
            json!({"user_id": guest.user(), "reason": "test kick"}),
        )
        .await;
    p.ensure_eq(status.as_u16(), 200, format!("kicking: {body}"));
    let (kicker, kicked) = (host.user().to_owned(), guest.user().to_owned());
    sync_until(p, guest, "the kick", |sync| {
        let events = sync["rooms"]["leave"][&room]["timeline"]["events"].as_array()?;
        events
            .iter()
            .any(|e| {
                e["type"] == "m.room.member"
                    && e["state_key"] == kicked.as_str()
                    && e["sender"] == kicker.as_str()
                    && e["content"]["membership"] == "leave"
                    && e["content"]["reason"] == "test kick"
            })
            .then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs Synapse: a Python in SYNAPSE_PYTHON; .ci/run runs it"]
async fn leaves_and_kicks_travel_both_ways() {
    let p = Pair::start().await;
    let (alice, bob) = members(&p).await;
    leave_and_kick(&p, &alice, &bob).await;
    leave_and_kick(&p, &bob, &alice).await;
}

#[tokio::test]
#[ignore = "needs Synapse: a Python in SYNAPSE_PYTHON; .ci/run runs it"]
async fn hearth_catches_up_after_a_restart() {
    let mut p = Pair::start().await;
    let (room, alice, bob) = {
        let (alice, bob) = members(&p).await;
        let room = joined_room(&p, &alice, &bob, "11").await;
        (room, alice.dev, bob.dev)
    };
    p.hearth.stop().await;
    let bob = Member {
        side: Side::Synapse(&p.syn),
        dev: bob,
    };
    let mut sent = Vec::new();
    for i in 0..3 {
        let content = json!({"msgtype": "m.text", "body": format!("while Hearth was down {i}")});
        sent.push((
            send(&p, &bob, &room, "m.room.message", content.clone()).await,
            content,
        ));
    }
    p.hearth.start_again().await;
    // Synapse backs off from a destination that failed (1 to 5 s here) and tries it again
    // when it has something new for it: wait out the backoff, then one more message.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let content = json!({"msgtype": "m.text", "body": "Hearth is back"});
    sent.push((
        send(&p, &bob, &room, "m.room.message", content.clone()).await,
        content,
    ));
    let alice = Member {
        side: Side::Hearth(&p.hearth),
        dev: alice,
    };
    for (id, content) in &sent {
        let path = format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(id));
        let got = p
            .eventually_within(
                Duration::from_secs(90),
                &format!("{id} reaching Hearth after its restart"),
                || async {
                    let (status, body) = alice.side.get(&path, alice.token()).await;
                    (status.as_u16() == 200).then_some(body)
                },
            )
            .await;
        p.ensure_eq(&got["content"], content, format!("{got}"));
        p.ensure_eq(&got["sender"], &json!(bob.user()), format!("{got}"));
    }
}

#[tokio::test]
#[ignore = "needs Synapse: a Python in SYNAPSE_PYTHON; .ci/run runs it"]
async fn synapse_gets_what_hearth_queued_while_it_was_down() {
    // This test stops its Synapse: one of its own.
    let p = Pair::start_private().await;
    let (alice, bob) = members(&p).await;
    let room = joined_room(&p, &alice, &bob, "11").await;
    p.syn.server.stop();
    let mut sent = Vec::new();
    for i in 0..3 {
        let content = json!({"msgtype": "m.text", "body": format!("while Synapse was down {i}")});
        sent.push((
            send(&p, &alice, &room, "m.room.message", content.clone()).await,
            content,
        ));
    }
    let synapse = p.syn.server.clone();
    tokio::task::spawn_blocking(move || synapse.start_again())
        .await
        .unwrap();
    // Hearth backs off from Synapse (5 s, then doubling) and ends the backoff when Synapse
    // sends it something: a message from Bob.
    let content = json!({"msgtype": "m.text", "body": "Synapse is back"});
    send(&p, &bob, &room, "m.room.message", content).await;
    for (id, content) in &sent {
        let path = format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(id));
        let got = p
            .eventually_within(
                Duration::from_secs(90),
                &format!("{id} reaching Synapse after its restart"),
                || async {
                    let (status, body) = bob.side.get(&path, bob.token()).await;
                    (status.as_u16() == 200).then_some(body)
                },
            )
            .await;
        p.ensure_eq(&got["content"], content, format!("{got}"));
        p.ensure_eq(&got["sender"], &json!(alice.user()), format!("{got}"));
    }
}
