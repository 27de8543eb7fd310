//! The scenarios of issue 15, in order; each step prints `ok: ...` when it holds.

use anyhow::{Context, Result, bail, ensure};
use matrix_sdk::{
    RoomState,
    ruma::{
        OwnedRoomId, RoomId,
        api::client::receipt::create_receipt::v3::ReceiptType,
        api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset},
        events::{
            InitialStateEvent, room::encryption::RoomEncryptionEventContent,
            room::message::RoomMessageEventContent,
        },
    },
};
use matrix_sdk_ui::{
    sync_service,
    timeline::{RoomExt, Timeline},
};
use serde_json::json;

use crate::{
    http::{Account, Http},
    sdk::{SdkUser, display_name, is, latest_body, messages},
    wait::{until, within},
};

const PASSWORD: &str = "sdk-client-password";
/// Messages bob leaves in the shared room before alice's first sync: more than one page.
const HISTORY: usize = 30;
/// Connections alice opens from another device to crowd out her SDK's (more than the server
/// keeps for one user).
const CROWD: usize = 24;
/// Bob's display name: the name of his direct chat with alice.
const BOB: &str = "Bob Builder";

fn step(what: &str) {
    println!("ok: {what}");
}

fn room_id(id: &str) -> Result<OwnedRoomId> {
    RoomId::parse(id).with_context(|| format!("server answered a bad room id {id}"))
}

pub async fn run(base: &str) -> Result<()> {
    let http = Http::new(base)?;
    // Fresh names each run, so the program can run twice against one server.
    let tag = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let (alice_name, bob_name) = (format!("alice-{tag}"), format!("bob-{tag}"));
    let alice_http = http.register(&alice_name, PASSWORD).await?;
    let bob_http = http.register(&bob_name, PASSWORD).await?;
    http.set_displayname(&bob_http, BOB).await?;

    // What alice's account holds before her first sync: a room bob talks in, a room of her own.
    let garden = http
        .create_room(
            &bob_http,
            json!({"name": "Garden", "preset": "public_chat"}),
        )
        .await?;
    http.join(&alice_http, &garden).await?;
    for i in 0..HISTORY {
        http.send_text(&bob_http, &garden, &format!("history {i}"))
            .await?;
    }
    let kitchen = http
        .create_room(&alice_http, json!({"name": "Kitchen"}))
        .await?;
    http.send_text(&alice_http, &kitchen, "kitchen latest")
        .await?;
    let (garden, kitchen) = (room_id(&garden)?, room_id(&kitchen)?);
    step("setup over HTTP: two users, two rooms, history");

    let alice = SdkUser::login(base, &alice_name, PASSWORD).await?;
    step("log in with a password (sliding sync discovered from /versions), SyncService started");

    room_list(&alice, &garden, &kitchen).await?;
    let timeline = open_timeline(&alice, &garden).await?;
    live_message(&http, &bob_http, &alice, &timeline).await?;
    paginate_back(&timeline).await?;
    typing(&http, &bob_http, &alice, &garden).await?;
    read_receipt(&alice, &timeline).await?;
    resume(&http, &bob_http, &alice, &timeline).await?;
    unknown_position(&http, &alice_http, &bob_http, &alice, &timeline).await?;
    invite_and_join(&http, &bob_http, &alice).await?;
    direct_chat(&http, &bob_http, &alice).await?;

    let bob = SdkUser::login(base, &bob_name, PASSWORD).await?;
    step("second SDK user logged in");
    encrypted_exchange(&http, &alice_http, &alice, &bob).await?;

    alice.stop().await?;
    bob.stop().await?;
    step("sync services stopped");
    Ok(())
}

/// The room list shows both rooms with their names and latest messages, the newer one first.
async fn room_list(alice: &SdkUser, garden: &RoomId, kitchen: &RoomId) -> Result<()> {
    let last = format!("history {}", HISTORY - 1);
    alice
        .until_listed(
            "Garden in the room list with its name and latest message",
            garden,
            |room| {
                is(room, RoomState::Joined)
                    && display_name(room).as_deref() == Some("Garden")
                    && latest_body(room).as_deref() == Some(last.as_str())
                    && room.unread_notification_counts().notification_count == HISTORY as u64
            },
        )
        .await?;
    alice
        .until_listed(
            "Kitchen in the room list with its name and latest message",
            kitchen,
            |room| {
                is(room, RoomState::Joined)
                    && display_name(room).as_deref() == Some("Kitchen")
                    && latest_body(room).as_deref() == Some("kitchen latest")
                    && room.unread_notification_counts().notification_count == 0
            },
        )
        .await?;
    alice
        .until_order("the room with the newest message first", |order| {
            order.first().map(|id| &**id) == Some(kitchen) && order.len() == 2
        })
        .await?;
    step("room list shows the rooms with names, latest events and unread counts, by recency");
    Ok(())
}

/// Opens Garden's timeline as Element X does: subscribe to the room, then build the timeline.
async fn open_timeline(alice: &SdkUser, garden: &RoomId) -> Result<Timeline> {
    alice
        .sync
        .room_list_service()
        .subscribe_to_rooms(&[garden])
        .await;
    let room = alice.listed(garden).context("Garden left the room list")?;
    let timeline = within("building Garden's timeline", async {
        room.timeline().await.context("Room::timeline")
    })
    .await?;
    let last = format!("history {}", HISTORY - 1);
    until("Garden's timeline to show the latest message", async || {
        alice.healthy()?;
        let shown = messages(&timeline).await;
        Ok(shown
            .iter()
            .any(|(_, body, _)| body.as_deref() == Some(last.as_str()))
            .then_some(()))
    })
    .await?;
    step("timeline opened on the latest messages");
    Ok(timeline)
}

/// A message bob sends now reaches the open timeline through the sync, and moves its room to
/// the top of the room list with the message as its latest event.
async fn live_message(
    http: &Http,
    bob: &Account,
    alice: &SdkUser,
    timeline: &Timeline,
) -> Result<()> {
    let room = timeline.room().room_id().to_owned();
    http.send_text(bob, room.as_str(), "live from bob").await?;
    until("bob's live message in the timeline", async || {
        alice.healthy()?;
        let shown = messages(timeline).await;
        Ok(shown
            .iter()
            .any(|(sender, body, _)| {
                sender == &bob.user_id && body.as_deref() == Some("live from bob")
            })
            .then_some(()))
    })
    .await?;
    step("receive a message sent by another user");
    alice
        .until_listed(
            "Garden's latest event updated in the room list",
            &room,
            |listed| {
                latest_body(listed).as_deref() == Some("live from bob")
                    && listed.unread_notification_counts().notification_count == HISTORY as u64 + 1
            },
        )
        .await?;
    alice
        .until_order("the room with the new message moved to the top", |order| {
            order.first() == Some(&room)
        })
        .await?;
    step("the room list moves the room to the top with its new latest event and count");
    Ok(())
}

/// Bob types in Garden; alice sees it (typing extension).
async fn typing(http: &Http, bob: &Account, alice: &SdkUser, garden: &RoomId) -> Result<()> {
    let room = alice.listed(garden).context("Garden left the room list")?;
    let (_guard, mut typing) = room.subscribe_to_typing_notifications();
    http.typing(bob, garden.as_str(), 10_000).await?;
    within("bob typing in Garden", async {
        loop {
            let users = typing.recv().await.context("typing notifications ended")?;
            if users.iter().any(|user| user.as_str() == bob.user_id) {
                return Ok(());
            }
        }
    })
    .await?;
    step("see another user typing");
    Ok(())
}

/// Alice reads Garden: her read receipt clears the room's unread count (receipts, counts).
async fn read_receipt(alice: &SdkUser, timeline: &Timeline) -> Result<()> {
    let sent = within("marking Garden as read", async {
        timeline
            .mark_as_read(ReceiptType::Read)
            .await
            .context("Timeline::mark_as_read")
    })
    .await?;
    ensure!(sent, "mark_as_read sent no receipt");
    let garden = timeline.room().room_id().to_owned();
    alice
        .until_listed(
            "Garden's unread count cleared by the read receipt",
            &garden,
            |room| room.unread_notification_counts().notification_count == 0,
        )
        .await?;
    step("a read receipt clears the unread count");
    Ok(())
}

/// Alice's sync stops (the app goes to the background), bob writes, the sync starts again from
/// its position: the message arrives in the still-open timeline.
async fn resume(http: &Http, bob: &Account, alice: &SdkUser, timeline: &Timeline) -> Result<()> {
    within("stopping alice's sync", async {
        alice.sync.stop().await;
        Ok(())
    })
    .await?;
    let room = timeline.room().room_id().to_string();
    http.send_text(bob, &room, "while you were away").await?;
    within("restarting alice's sync", async {
        alice.sync.start().await;
        Ok(())
    })
    .await?;
    until("the message sent while the sync was stopped", async || {
        alice.healthy()?;
        let shown = messages(timeline).await;
        Ok(shown
            .iter()
            .any(|(_, body, _)| body.as_deref() == Some("while you were away"))
            .then_some(()))
    })
    .await?;
    step("sync stopped and started again: resumes and catches up");
    Ok(())
}

/// The server forgets alice's connections while her sync is stopped (she opens more
/// connections from another device than it keeps for one user: Hearth keeps 16). Started
/// again, the SDK's position is unknown: the server answers `M_UNKNOWN_POS`, the SyncService
/// reports the error, and started once more (as Element X does on an error) it opens new
/// connections and catches up.
async fn unknown_position(
    http: &Http,
    alice_http: &Account,
    bob: &Account,
    alice: &SdkUser,
    timeline: &Timeline,
) -> Result<()> {
    within("stopping alice's sync", async {
        alice.sync.stop().await;
        Ok(())
    })
    .await?;
    for i in 0..CROWD {
        http.open_sliding_sync(alice_http, &format!("crowd-{i}"))
            .await?;
    }
    let room = timeline.room().room_id().to_string();
    http.send_text(bob, &room, "after a new connection").await?;
    let mut states = alice.sync.state();
    within("restarting alice's sync", async {
        alice.sync.start().await;
        Ok(())
    })
    .await?;
    within("the SyncService to report the unknown position", async {
        loop {
            let state = states.next().await.context("the sync state stream ended")?;
            match state {
                sync_service::State::Error(error) => {
                    let text = format!("{error} {error:?}");
                    ensure!(
                        text.contains("UNKNOWN_POS") || text.contains("UnknownPos"),
                        "the sync failed otherwise than on an unknown position: {text}"
                    );
                    return Ok(());
                }
                sync_service::State::Running | sync_service::State::Idle => {}
                other => bail!("unexpected sync state {other:?}"),
            }
        }
    })
    .await?;
    within("starting alice's sync after the error", async {
        alice.sync.start().await;
        Ok(())
    })
    .await?;
    until(
        "the message sent before the connection was restarted",
        async || {
            alice.healthy()?;
            let shown = messages(timeline).await;
            Ok(shown
                .iter()
                .any(|(_, body, _)| body.as_deref() == Some("after a new connection"))
                .then_some(()))
        },
    )
    .await?;
    let garden = timeline.room().room_id().to_owned();
    alice
        .until_listed(
            "Garden still listed with its latest message",
            &garden,
            |room| latest_body(room).as_deref() == Some("after a new connection"),
        )
        .await?;
    step("an unknown position (M_UNKNOWN_POS): the SDK starts a new connection and catches up");
    Ok(())
}

/// Back-paginates to the start of the room; the whole history shows in order.
async fn paginate_back(timeline: &Timeline) -> Result<()> {
    let first = "history 0";
    for _ in 0..20 {
        let shown = messages(timeline).await;
        if shown
            .iter()
            .any(|(_, body, _)| body.as_deref() == Some(first))
        {
            break;
        }
        let at_start = within("a back pagination", async {
            timeline
                .paginate_backwards(10)
                .await
                .context("paginate_backwards")
        })
        .await?;
        if at_start {
            break;
        }
    }
    let bodies: Vec<String> = messages(timeline)
        .await
        .into_iter()
        .filter_map(|(_, body, _)| body)
        .collect();
    let expected: Vec<String> = (0..HISTORY)
        .map(|i| format!("history {i}"))
        .chain(["live from bob".to_owned()])
        .collect();
    ensure!(
        bodies == expected,
        "after back pagination the timeline shows {bodies:?}"
    );
    step("paginate back to the start of the room, history in order");
    Ok(())
}

/// Bob invites alice to a new room: it shows as an invite with its name; alice joins it.
async fn invite_and_join(http: &Http, bob: &Account, alice: &SdkUser) -> Result<()> {
    let alice_id = alice.user_id()?;
    let porch = http
        .create_room(bob, json!({"name": "Porch", "invite": [alice_id.as_str()]}))
        .await?;
    let porch = room_id(&porch)?;
    let room = alice
        .until_listed("the invite to Porch in the room list", &porch, |room| {
            is(room, RoomState::Invited) && display_name(room).as_deref() == Some("Porch")
        })
        .await?;
    step("a new invite shows in the room list with its name");
    within("joining Porch", async {
        room.join().await.context("Room::join")
    })
    .await?;
    alice
        .until_listed("Porch joined in the room list", &porch, |room| {
            is(room, RoomState::Joined)
        })
        .await?;
    step("join the invite");
    Ok(())
}

/// Bob opens a direct chat with alice (no room name): the invite and then the joined room are
/// named after bob and marked direct (the invite's `is_direct`; after the join the SDK writes
/// `m.direct`, which comes back through the account data extension).
async fn direct_chat(http: &Http, bob: &Account, alice: &SdkUser) -> Result<()> {
    let alice_id = alice.user_id()?;
    let body =
        json!({"is_direct": true, "preset": "trusted_private_chat", "invite": [alice_id.as_str()]});
    let dm = room_id(&http.create_room(bob, body).await?)?;
    let room = alice
        .until_listed("bob's direct chat invite, named after bob", &dm, |room| {
            is(room, RoomState::Invited) && display_name(room).as_deref() == Some(BOB)
        })
        .await?;
    ensure!(
        room.is_direct().await?,
        "the invite to bob's direct chat is not direct"
    );
    within("joining the direct chat", async {
        room.join().await.context("Room::join")
    })
    .await?;
    let joined = alice
        .until_listed("the joined direct chat, named after bob", &dm, |room| {
            is(room, RoomState::Joined) && display_name(room).as_deref() == Some(BOB)
        })
        .await?;
    until(
        "the joined direct chat marked direct (m.direct)",
        async || {
            alice.healthy()?;
            Ok(joined.is_direct().await?.then_some(()))
        },
    )
    .await?;
    step("a direct chat invite and room, named after the other user, marked direct");
    Ok(())
}

/// Alice creates an encrypted room with bob (both on the SDK); each decrypts the other's message.
async fn encrypted_exchange(
    http: &Http,
    alice_http: &Account,
    alice: &SdkUser,
    bob: &SdkUser,
) -> Result<()> {
    let (alice_id, bob_id) = (alice.user_id()?, bob.user_id()?);
    // The encryption sync uploads each device's keys; the room keys go to devices the
    // server lists, so wait until it lists both.
    for (user, device) in [(&alice_id, alice.device_id()?), (&bob_id, bob.device_id()?)] {
        until(&format!("{user}'s device keys on the server"), async || {
            alice.healthy()?;
            bob.healthy()?;
            Ok(http
                .has_device_keys(alice_http, user.as_str(), device.as_str())
                .await?
                .then_some(()))
        })
        .await?;
    }
    step("both SDK devices uploaded their keys (encryption sync)");

    let mut request = CreateRoom::new();
    request.name = Some("Secrets".to_owned());
    request.preset = Some(RoomPreset::PrivateChat);
    request.invite = vec![bob_id.clone()];
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let created = within("creating the encrypted room", async {
        alice
            .client
            .create_room(request)
            .await
            .context("Client::create_room")
    })
    .await?;
    let secrets = created.room_id().to_owned();

    let invited = bob
        .until_listed("bob's invite to Secrets", &secrets, |room| {
            is(room, RoomState::Invited)
        })
        .await?;
    within("bob joining Secrets", async {
        invited.join().await.context("Room::join")
    })
    .await?;
    let bob_room = bob
        .until_listed("Secrets joined in bob's room list", &secrets, |room| {
            is(room, RoomState::Joined)
        })
        .await?;
    let alice_room = alice
        .until_listed(
            "bob joined, as alice's room list counts members",
            &secrets,
            |room| room.joined_members_count() == 2,
        )
        .await?;
    step("bob joined the encrypted room");

    let alice_timeline = within("alice's Secrets timeline", async {
        alice_room.timeline().await.context("Room::timeline")
    })
    .await?;
    let bob_timeline = within("bob's Secrets timeline", async {
        bob_room.timeline().await.context("Room::timeline")
    })
    .await?;

    send_and_decrypt(
        alice,
        &alice_timeline,
        bob,
        &bob_timeline,
        "secret from alice",
    )
    .await?;
    step("alice's encrypted message decrypted by bob");
    send_and_decrypt(
        bob,
        &bob_timeline,
        alice,
        &alice_timeline,
        "secret from bob",
    )
    .await?;
    step("bob's encrypted message decrypted by alice");
    alice
        .until_listed(
            "Secrets previewing the decrypted message",
            &secrets,
            |room| latest_body(room).as_deref() == Some("secret from bob"),
        )
        .await?;
    step("the room list previews the decrypted latest message");
    Ok(())
}

/// `from` sends `text` on its timeline; `to`'s timeline must show it decrypted.
async fn send_and_decrypt(
    from: &SdkUser,
    from_timeline: &Timeline,
    to: &SdkUser,
    to_timeline: &Timeline,
    text: &str,
) -> Result<()> {
    within("sending an encrypted message", async {
        from_timeline
            .send(RoomMessageEventContent::text_plain(text).into())
            .await
            .context("Timeline::send")
    })
    .await?;
    let sender = from.user_id()?.to_string();
    let result = until(&format!("{text:?} decrypted"), async || {
        from.healthy()?;
        to.healthy()?;
        let shown = messages(to_timeline).await;
        Ok(shown
            .iter()
            .any(|(who, body, encrypted)| {
                who == &sender && body.as_deref() == Some(text) && *encrypted
            })
            .then_some(()))
    })
    .await;
    if let Err(error) = result {
        bail!(
            "{error:#}; the receiving timeline shows {:?}",
            messages(to_timeline).await
        );
    }
    Ok(())
}
