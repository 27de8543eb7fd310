//! Rooms shared by Hearth and Synapse users: joins both ways (room versions 10, 11 and 12),
//! messages, edits, reactions, redactions, typing, receipts, invites (accepted and rejected)
//! and bans, each checked on the other server through its client API.

use serde_json::{json, Value};

use super::{unique, Pair, Side};
use crate::common::enc;
use crate::e2ee::Dev;

/// A user and the server its client talks to.
pub struct Member<'a> {
    pub side: Side<'a>,
    pub dev: Dev,
}

impl Member<'_> {
    pub(super) fn user(&self) -> &str {
        &self.dev.user
    }

    pub(super) fn token(&self) -> &str {
        &self.dev.token
    }

    pub(super) fn label(&self) -> String {
        format!("{} on {}", self.dev.user, self.side.label())
    }
}

pub(super) async fn members(p: &Pair) -> (Member<'_>, Member<'_>) {
    let alice = Member {
        side: p.hearth_side(),
        dev: p.hearth_user("alice").await,
    };
    let bob = Member {
        side: p.synapse_side(),
        dev: p.syn.register("bob").await,
    };
    (alice, bob)
}

/// A public room of `version` created by `m`, with an alias; (room id, alias).
pub(super) async fn create(p: &Pair, m: &Member<'_>, version: &str) -> (String, String) {
    let local = unique("room-");
    let (status, body) = m
        .side
        .post(
            "/_matrix/client/v3/createRoom",
            m.token(),
            json!({
                "room_version": version,
                "preset": "public_chat",
                "room_alias_name": local,
                "name": format!("{local} on {}", m.side.label()),
            }),
        )
        .await;
    p.ensure_eq(
        status.as_u16(),
        200,
        format!("{} creating a v{version} room: {body}", m.label()),
    );
    (
        body["room_id"].as_str().unwrap().to_owned(),
        format!("#{local}:{}", m.side.name()),
    )
}

/// `m` joins `target` (an alias or a room id, with `via` servers).
pub(super) async fn join(p: &Pair, m: &Member<'_>, target: &str, via: &str) -> String {
    let (status, body) = m
        .side
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}&via={}",
                enc(target),
                enc(via),
                enc(via)
            ),
            m.token(),
            json!({}),
        )
        .await;
    p.ensure_eq(
        status.as_u16(),
        200,
        format!("{} joining {target}: {body}", m.label()),
    );
    body["room_id"].as_str().unwrap().to_owned()
}

/// `m` sends an event; its id.
pub(super) async fn send(
    p: &Pair,
    m: &Member<'_>,
    room: &str,
    kind: &str,
    content: Value,
) -> String {
    let (status, body) = m
        .side
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/{kind}/{}",
                enc(room),
                unique("txn")
            ),
            m.token(),
            content,
        )
        .await;
    p.ensure_eq(
        status.as_u16(),
        200,
        format!("{} sending {kind}: {body}", m.label()),
    );
    body["event_id"].as_str().unwrap().to_owned()
}

/// The event `id` as `m`'s server serves it, once it has it.
pub(super) async fn event_on(p: &Pair, m: &Member<'_>, room: &str, id: &str) -> Value {
    let path = format!("/_matrix/client/v3/rooms/{}/event/{}", enc(room), enc(id));
    p.eventually(&format!("{id} reaching {}", m.label()), || async {
        let (status, body) = m.side.get(&path, m.token()).await;
        (status.as_u16() == 200).then_some(body)
    })
    .await
}

/// Waits until `m`'s server has `user`'s membership in `room` as `want`.
pub(super) async fn membership_on(p: &Pair, m: &Member<'_>, room: &str, user: &str, want: &str) {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
        enc(room),
        enc(user)
    );
    p.eventually(
        &format!("{user}'s membership {want} as {} sees it", m.label()),
        || async {
            let (status, body) = m.side.get(&path, m.token()).await;
            (status.as_u16() == 200 && body["membership"] == want).then_some(())
        },
    )
    .await
}

/// Syncs as `m` (a full sync, then incremental ones, all with left rooms) until `found`
/// picks something.
pub(super) async fn sync_until<T>(
    p: &Pair,
    m: &Member<'_>,
    what: &str,
    found: impl Fn(&Value) -> Option<T>,
) -> T {
    let since = std::sync::Mutex::new(None::<String>);
    let found = &found;
    let since = &since;
    p.eventually(&format!("{what} in {}'s sync", m.label()), || async move {
        let filter = enc(r#"{"room":{"include_leave":true}}"#);
        let path = match since.lock().unwrap().clone() {
            None => format!("/_matrix/client/v3/sync?timeout=0&filter={filter}"),
            Some(s) => format!(
                "/_matrix/client/v3/sync?timeout=500&filter={filter}&since={}",
                enc(&s)
            ),
        };
        let (status, body) = m.side.get(&path, m.token()).await;
        if status.as_u16() != 200 {
            return None;
        }
        *since.lock().unwrap() = body["next_batch"].as_str().map(str::to_owned);
        found(&body)
    })
    .await
}

/// `from` sends a message, `to` gets it with the same sender and content.
pub(super) async fn message_travels(
    p: &Pair,
    from: &Member<'_>,
    to: &Member<'_>,
    room: &str,
) -> String {
    let content = json!({"msgtype": "m.text", "body": format!("hello from {}", from.label())});
    let id = send(p, from, room, "m.room.message", content.clone()).await;
    let got = event_on(p, to, room, &id).await;
    p.ensure_eq(
        &got["sender"],
        &json!(from.user()),
        format!("sender: {got}"),
    );
    p.ensure_eq(&got["content"], &content, format!("content: {got}"));
    id
}

/// `host` creates a room of `version`, `guest` (on the other server) joins it by alias, and
/// a message goes each way.
pub(super) async fn joined_room(
    p: &Pair,
    host: &Member<'_>,
    guest: &Member<'_>,
    version: &str,
) -> String {
    let (room, alias) = create(p, host, version).await;
    let joined = join(p, guest, &alias, host.side.name()).await;
    p.ensure_eq(&joined, &room, format!("the room {alias} names"));
    membership_on(p, host, &room, guest.user(), "join").await;
    membership_on(p, guest, &room, host.user(), "join").await;
    message_travels(p, host, guest, &room).await;
    message_travels(p, guest, host, &room).await;
    room
}

const VERSIONS: [&str; 3] = ["10", "11", "12"];

#[tokio::test]
#[ignore = "needs Synapse: a Python in SYNAPSE_PYTHON; .ci/run runs it"]
async fn a_synapse_user_joins_hearth_rooms() {
    let p = Pair::start().await;
    let (alice, bob) = members(&p).await;
    for version in VERSIONS {
        println!("room version {version}");
        joined_room(&p, &alice, &bob, version).await;
    }
}

#[tokio::test]
#[ignore = "needs Synapse: a Python in SYNAPSE_PYTHON; .ci/run runs it"]
async fn a_hearth_user_joins_synapse_rooms() {
    let p = Pair::start().await;
    let (alice, bob) = members(&p).await;
    for version in VERSIONS {
        println!("room version {version}");
        joined_room(&p, &bob, &alice, version).await;
    }
}

/// Edits, reactions and redactions by `from`, as `to` sees them.
async fn relations_travel(p: &Pair, from: &Member<'_>, to: &Member<'_>, room: &str) {
    let original = message_travels(p, from, to, room).await;
    // An edit.
    let edit = json!({
        "msgtype": "m.text",
        "body": "* edited",
        "m.new_content": {"msgtype": "m.text", "body": "edited"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": original},
    });
    let edit_id = send(p, from, room, "m.room.message", edit.clone()).await;
    let got = event_on(p, to, room, &edit_id).await;
    p.ensure_eq(
        &got["content"],
        &edit,
        format!("the edit on {}", to.label()),
    );
    // A reaction, and the relations endpoint listing it.
    let reaction =
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": original, "key": "👍"}});
    let reaction_id = send(p, from, room, "m.reaction", reaction.clone()).await;
    let got = event_on(p, to, room, &reaction_id).await;
    p.ensure_eq(
        &got["content"],
        &reaction,
        format!("the reaction on {}", to.label()),
    );
    let path = format!(
        "/_matrix/client/v1/rooms/{}/relations/{}/m.annotation",
        enc(room),
        enc(&original)
    );
    let (status, body) = to.side.get(&path, to.token()).await;
    p.ensure_eq(status.as_u16(), 200, format!("relations: {body}"));
    let listed: Vec<&str> = body["chunk"]
        .as_array()
        .map(|c| c.iter().filter_map(|e| e["event_id"].as_str()).collect())
        .unwrap_or_default();
    p.ensure_eq(
        listed,
        vec![reaction_id.as_str()],
        format!("annotations on {}: {body}", to.label()),
    );
    // A redaction of the reaction.
    let (status, body) = from
        .side
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/{}",
                enc(room),
                enc(&reaction_id),
                unique("txn")
            ),
            from.token(),
            json!({"reason": "changed my mind"}),
        )
        .await;
    p.ensure_eq(status.as_u16(), 200, format!("redacting: {body}"));
    let redaction_id = body["event_id"].as_str().unwrap().to_owned();
    let got = event_on(p, to, room, &redaction_id).await;
    p.ensure_eq(&got["type"], &json!("m.room.redaction"), format!("{got}"));
    let path = format!(
        "/_matrix/client/v3/rooms/{}/event/{}",
        enc(room),
        enc(&reaction_id)
    );
    let redacted = p
        .eventually(
            &format!("the reaction redacted on {}", to.label()),
            || async {
                let (_, body) = to.side.get(&path, to.token()).await;
                (body["content"] == json!({})).then_some(body)
            },
        )
        .await;
    p.ensure_eq(
        &redacted["unsigned"]["redacted_because"]["event_id"],
        &json!(redaction_id),
        format!("redacted_because: {redacted}"),
    );
}

/// Typing (started, then stopped) and a read receipt by `from`, as `to` sees them in its
/// sync.
async fn ephemeral_travel(p: &Pair, from: &Member<'_>, to: &Member<'_>, room: &str) {
    let user = from.user().to_owned();
    // The typing users `to` sees in the room, when a sync carries them.
    let typing = |sync: &Value| -> Option<Vec<Value>> {
        let events = sync["rooms"]["join"][room]["ephemeral"]["events"].as_array()?;
        let event = events.iter().rev().find(|e| e["type"] == "m.typing")?;
        event["content"]["user_ids"].as_array().cloned()
    };
    for on in [true, false] {
        let (status, body) = from
            .side
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/typing/{}",
                    enc(room),
                    enc(&user)
                ),
                from.token(),
                json!({"typing": on, "timeout": 30000}),
            )
            .await;
        p.ensure_eq(status.as_u16(), 200, format!("typing {on}: {body}"));
        if on {
            sync_until(p, to, &format!("{user} typing"), |sync| {
                typing(sync)?.contains(&json!(user)).then_some(())
            })
            .await;
        } else {
            // Full syncs: each shows who is typing now (no typing event: nobody).
            p.eventually(&format!("{user} no longer typing"), || async {
                let (status, sync) = to
                    .side
                    .get("/_matrix/client/v3/sync?timeout=0", to.token())
                    .await;
                let users = typing(&sync).unwrap_or_default();
                (status.as_u16() == 200 && !users.contains(&json!(user))).then_some(())
            })
            .await;
        }
    }

    let read = message_travels(p, to, from, room).await;
    let (status, body) = from
        .side
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(room),
                enc(&read)
            ),
            from.token(),
            json!({}),
        )
        .await;
    p.ensure_eq(status.as_u16(), 200, format!("receipt: {body}"));
    sync_until(p, to, &format!("{user}'s receipt for {read}"), |sync| {
        let events = sync["rooms"]["join"][room]["ephemeral"]["events"].as_array()?;
        events
            .iter()
            .any(|e| {
                e["type"] == "m.receipt" && e["content"][&read]["m.read"][&user]["ts"].is_u64()
            })
            .then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs Synapse: a Python in SYNAPSE_PYTHON; .ci/run runs it"]
async fn edits_reactions_and_redactions_travel_both_ways() {
    let p = Pair::start().await;
    let (alice, bob) = members(&p).await;
    let room = joined_room(&p, &alice, &bob, "11").await;
    relations_travel(&p, &alice, &bob, &room).await;
    relations_travel(&p, &bob, &alice, &room).await;
    let room = joined_room(&p, &bob, &alice, "11").await;
    relations_travel(&p, &alice, &bob, &room).await;
    relations_travel(&p, &bob, &alice, &room).await;
}

#[tokio::test]
#[ignore = "needs Synapse: a Python in SYNAPSE_PYTHON; .ci/run runs it"]
async fn typing_and_receipts_travel_both_ways() {
    let p = Pair::start().await;
    let (alice, bob) = members(&p).await;
    let room = joined_room(&p, &alice, &bob, "11").await;
    ephemeral_travel(&p, &alice, &bob, &room).await;
    ephemeral_travel(&p, &bob, &alice, &room).await;
    let room = joined_room(&p, &bob, &alice, "12").await;
    ephemeral_travel(&p, &alice, &bob, &room).await;
    ephemeral_travel(&p, &bob, &alice, &room).await;
}

/// `host` invites `guest` to a new room; the invite shows in the guest's sync; the guest
/// accepts (`accept`) or rejects it, and the host's server sees the result.
async fn invite(p: &Pair, host: &Member<'_>, guest: &Member<'_>, accept: bool) {
    let (room, _) = create(p, host, "11").await;
    let (status, body) = host
        .side
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            host.token(),
            json!({"user_id": guest.user()}),
        )
        .await;
    p.ensure_eq(
        status.as_u16(),
        200,
        format!("{} inviting {}: {body}", host.label(), guest.label()),
    );
    let inviter = host.user().to_owned();
    sync_until(p, guest, &format!("the invite to {room}"), |sync| {
        let state = sync["rooms"]["invite"][&room]["invite_state"]["events"].as_array()?;
        state
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["sender"] == inviter.as_str())
            .then_some(())
    })
    .await;
    if accept {
        let joined = join(p, guest, &room, host.side.name()).await;
        p.ensure_eq(&joined, &room, "the joined room");
        membership_on(p, host, &room, guest.user(), "join").await;
        message_travels(p, guest, host, &room).await;
    } else {
        let (status, body) = guest
            .side
            .post(
                &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
                guest.token(),
                json!({}),
            )
            .await;
        p.ensure_eq(
            status.as_u16(),
            200,
            format!("{} rejecting: {body}", guest.label()),
        );
        membership_on(p, host, &room, guest.user(), "leave").await;
    }
}

#[tokio::test]
#[ignore = "needs Synapse: a Python in SYNAPSE_PYTHON; .ci/run runs it"]
async fn invites_are_accepted_and_rejected_both_ways() {
    let p = Pair::start().await;
    let (alice, bob) = members(&p).await;
    invite(&p, &alice, &bob, true).await;
    invite(&p, &bob, &alice, true).await;
    invite(&p, &alice, &bob, false).await;
    invite(&p, &bob, &alice, false).await;
}

/// `host` bans `guest` from a room they share; `guest`'s server sees the ban and refuses to
/// send for the guest.
async fn ban(p: &Pair, host: &Member<'_>, guest: &Member<'_>) {
    let room = joined_room(p, host, guest, "11").await;
    let (status, body) = host
        .side
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)),
            host.token(),
            json!({"user_id": guest.user(), "reason": "test"}),
        )
        .await;
    p.ensure_eq(status.as_u16(), 200, format!("banning: {body}"));
    membership_on(p, host, &room, guest.user(), "ban").await;
    // The guest's server: its own view of the room after the ban. The guest can no longer
    // read the room's state, so the ban shows in the guest's sync (rooms.leave).
    let banned = guest.user().to_owned();
    sync_until(p, guest, "the ban", |sync| {
        let events = sync["rooms"]["leave"][&room]["timeline"]["events"].as_array()?;
        events
            .iter()
            .any(|e| {
                e["type"] == "m.room.member"
                    && e["state_key"] == banned.as_str()
                    && e["content"]["membership"] == "ban"
            })
            .then_some(())
    })
    .await;
    let (status, body) = guest
        .side
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                enc(&room),
                unique("txn")
            ),
            guest.token(),
            json!({"msgtype": "m.text", "body": "still here?"}),
        )
        .await;
    p.ensure_eq(
        status.as_u16(),
        403,
        format!("{} sending after the ban: {body}", guest.label()),
    );
}

#[tokio::test]
#[ignore = "needs Synapse: a Python in SYNAPSE_PYTHON; .ci/run runs it"]
async fn bans_take_effect_on_the_other_server() {
    let p = Pair::start().await;
    let (alice, bob) = members(&p).await;
    ban(&p, &alice, &bob).await;
    let (alice, bob) = members(&p).await;
    ban(&p, &bob, &alice).await;
}
