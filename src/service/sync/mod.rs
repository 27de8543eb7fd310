//! `/sync`: what changed for a user between a token and now.
//!
//! A token is `"{p}_{t}"`: `p` a stream position (the client has seen everything with a
//! position up to and including `p`) and `t` the typing serial it has seen (see
//! [`super::typing`]). "Now" is the stream's settled position, so a write that commits late is
//! never skipped: the next sync picks it up. Positions are in the durable stream, so tokens stay
//! valid across restarts; a typing serial from an earlier run makes the sync send every joined
//! room's (then usually empty) typing list once. A bare `"{p}"` is accepted as well.
//!
//! Besides timelines and state, a sync carries: global and room account data changed since the
//! token (all of it initially, plus `m.push_rules` on an initial sync), each joined room's
//! ephemeral events (`m.typing` when the list changed, `m.receipt` with the receipts changed
//! since the token, `m.read.private` only the user's own), unread notification counts
//! (stored when events are persisted, [`super::push::notifications`]), and the top-level `presence` of the users sharing a room with the user
//! (changed since the token, everyone's initially, and everyone's in rooms joined since).
//!
//! To-device messages are bounded per response ([`super::e2ee::to_device`]): when more wait,
//! the pass's horizon moves back so the token stops just before the first one held back. The
//! users in the user's `m.ignored_user_list` are left out (their non-state events, invites,
//! typing and to-device messages). Lazy-loaded member events are tracked per device
//! (`lazy.rs`).

use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

use ruma::{
    api::client::filter::FilterDefinition, events::room::member::MembershipState, OwnedRoomId,
    UserId,
};
use serde_json::{json, Map, Value};

mod filters;
pub mod format;
mod lazy;
mod legacy;
mod presence;
mod remote;
mod room;
pub mod sliding;

pub use filters::event_passes;
use filters::{filter_passes, limit_of, room_wanted};
use format::{EventFormat, Json};
pub use lazy::LazyMembers;
pub use legacy::{
    events_since, initial_sync, peek_access, room_initial_sync, EventsPage, InitialSyncQuery,
};
use presence::presence_events;
pub use remote::stripped;
use room::{joined_room, room_timeline, stripped_room_state};

use super::{
    account_data::AccountData, e2ee::E2ee, presence::Presence, push::notifications::Notifications,
    push_rules::PushRules, receipts::Receipts, rooms::Rooms, typing::Typing,
};
use crate::{error::Result, service::rooms::format::object};

/// A parsed `since` token: a stream position and, optionally, a typing serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncToken {
    pub pos: u64,
    pub typing: Option<u64>,
}

impl SyncToken {
    /// `"{pos}"` or `"{pos}_{typing serial}"`; anything else is `None`.
    pub fn parse(token: &str) -> Option<Self> {
        let mut parts = token.split('_');
        let pos = parts.next()?.parse().ok()?;
        let typing = match parts.next() {
            Some(serial) => Some(serial.parse().ok()?),
            None => None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Self { pos, typing })
    }
}

impl std::fmt::Display for SyncToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.typing {
            Some(serial) => write!(f, "{}_{serial}", self.pos),
            None => write!(f, "{}", self.pos),
        }
    }
}

pub struct SyncRequest<'a> {
    pub user_id: &'a UserId,
    pub device_id: &'a str,
    pub since: Option<u64>,
    /// The typing serial of the `since` token, if it had one.
    pub typing_since: Option<u64>,
    pub full_state: bool,
    pub filter: FilterDefinition,
}

/// What `/sync` reads, passed explicitly.
pub struct Sources<'a> {
    pub rooms: &'a Rooms,
    pub account_data: &'a AccountData,
    pub typing: &'a Typing,
    pub receipts: &'a Receipts,
    pub presence: &'a Presence,
    pub push_rules: &'a PushRules,
    pub notifications: &'a Notifications,
    pub e2ee: &'a E2ee,
    pub lazy_members: &'a LazyMembers,
}

/// How a sync treats typing notifications.
#[derive(Clone, Copy)]
enum TypingSince {
    /// Initial sync: rooms where someone is typing.
    Initial,
    /// Rooms whose typing list changed after this serial.
    Serial(u64),
    /// The client's serial is unknown (another run, or none): every room, empty lists too.
    Unknown,
}

/// What one sync pass reads once and shares between rooms.
struct Pass<'a> {
    sources: &'a Sources<'a>,
    request: &'a SyncRequest<'a>,
    now: u64,
    typing: TypingSince,
    /// Room account data changed since the token, by room id (incremental syncs only).
    room_account_data: HashMap<String, Vec<(String, Vec<u8>)>>,
    /// Users the syncing user ignores.
    ignored: &'a HashSet<String>,
    /// How the filter wants events served.
    format: EventFormat,
}

/// The result of one sync pass: the response body, whether it carries anything new, and when
/// a typing notification in one of the user's rooms lapses (a waiting sync should look again
/// then).
pub struct SyncResult {
    pub body: Json,
    pub has_updates: bool,
    pub wake_at: Option<Instant>,
}

/// Whether a pass for `request` at horizon `now` would carry nothing, known without reading
/// anything. Every section of a pass is bounded by stream positions in `(since, now]` (events,
/// memberships, receipts, account data, presence, to-device messages, device lists, push rules)
/// or by typing serials after the token's. So a token at the settled position whose typing
/// serial is the current one has nothing new, and a long-poll can wait without a pass (until a
/// wake-up, or [`next_typing_lapse`]). The to-device messages up to the token, which a pass
/// acknowledges, are then acknowledged by the pass that answers; until then they stay in the
/// device's inbox, already delivered.
pub fn nothing_new(sources: &Sources<'_>, request: &SyncRequest<'_>, now: u64) -> bool {
    !request.full_state
        && request.since == Some(now)
        // This run's serials are at least its first one, so equality also means "this run".
        && request.typing_since == Some(sources.typing.current_serial())
}

/// When a typing entry in one of the user's joined rooms next lapses: a lapse changes the
/// typing list without waking anyone, so a long-poll that waits without a pass looks again
/// then. Nothing is read while nobody types anywhere.
pub fn next_typing_lapse(sources: &Sources<'_>, user_id: &UserId) -> Result<Option<Instant>> {
    if !sources.typing.anyone_typing() {
        return Ok(None);
    }
    let joined = sources.rooms.rooms_of(user_id, &MembershipState::Join)?;
    Ok(sources
        .typing
        .earliest_deadline(joined.iter().map(|room| room.as_ref())))
}

pub async fn sync_once(
    sources: &Sources<'_>,
    request: &SyncRequest<'_>,
    now: u64,
) -> Result<SyncResult> {
    // Users the user ignores (spec: "Ignoring Users"): their non-state events, invites and
    // to-device messages are left out, from the first sync after the list changes on.
    let ignored = sources.account_data.ignored_users_of(request.user_id)?;
    let from_ignored = |event: &Value| {
        event["sender"]
            .as_str()
            .is_some_and(|sender| ignored.contains(sender))
    };

    // To-device messages first: when a response cannot carry all of them, the pass's horizon
    // moves back to just before the first one held back, so every stream of this response
    // (and its token) stops there and the next sync continues from it.
    let device: &ruma::DeviceId = request.device_id.into();
    let to_device = sources
        .e2ee
        .to_device_batch(request.user_id, device, request.since, now)?;
    // Messages held back are news even if all of these were from ignored users.
    let held_back = to_device.upto < now;
    let now = to_device.upto;
    let to_device: Vec<Value> = to_device
        .events
        .into_iter()
        .filter(|event| !from_ignored(event))
        .collect();

    if request.since.is_none() {
        // A new client session: what earlier syncs sent the device no longer counts.
        sources
            .lazy_members
            .reset(request.user_id.as_str(), request.device_id);
    }

    // Rooms with their sections; invites and knocks are plain values, the others carry
    // timelines (shared event JSON text).
    let mut join: Vec<(String, Json)> = Vec::new();
    let mut invite = Map::new();
    let mut knock = Map::new();
    let mut leave: Vec<(String, Json)> = Vec::new();
    let rooms = sources.rooms;
    let user_id = request.user_id;

    let typing_now = sources.typing.current_serial();
    let typing = match (request.since, request.typing_since) {
        (None, _) => TypingSince::Initial,
        (Some(_), Some(serial)) if sources.typing.is_current_run(serial) => {
            TypingSince::Serial(serial)
        }
        (Some(_), _) => TypingSince::Unknown,
    };

    // Account data: one scan of the user's change log serves global and room entries.
    let mut global_account_data = Vec::new();
    let mut room_account_data: HashMap<String, Vec<(String, Vec<u8>)>> = HashMap::new();
    match request.since {
        None => global_account_data = sources.account_data.global(user_id)?,
        Some(since) => {
            for (room, kind, content) in sources.account_data.changes_since(user_id, since, now)? {
                if room.is_empty() {
                    global_account_data.push((kind, content));
                } else {
                    room_account_data
                        .entry(room)
                        .or_default()
                        .push((kind, content));
                }
            }
        }
    }
    let mut pass = Pass {
        sources,
        request,
        now,
        typing,
        room_account_data,
        ignored: &ignored,
        format: EventFormat::of(&request.filter),
    };
    let mut joined_rooms: Vec<OwnedRoomId> = Vec::new();
    let mut newly_joined: Vec<OwnedRoomId> = Vec::new();

    let memberships = remote::memberships(rooms, request.user_id)?;
    for (room_id, membership, member_sid, source) in memberships {
        if !room_wanted(&request.filter, &room_id) {
            continue;
        }
        if let remote::Source::Remote(record) = source {
            // Known through another server only: shown once settled and changed since the
            // token; a departure like any left room.
            let changed = request.since.is_none_or(|since| member_sid > since);
            let leave_wanted = request.since.is_some() || request.filter.room.include_leave;
            if member_sid > now || !changed {
                continue;
            }
            let departed = record.membership == "leave" || record.membership == "ban";
            if departed && (!leave_wanted || rooms.is_forgotten(&room_id, request.user_id)?) {
                continue;
            }
            match remote::section(&record, &ignored) {
                Some(("invite", body)) => {
                    invite.insert(room_id.to_string(), body);
                }
                Some(("knock", body)) => {
                    knock.insert(room_id.to_string(), body);
                }
                Some((_, body)) => leave.push((room_id.to_string(), Json::Value(body))),
                None => {}
            }
            continue;
        }
        let Some((membership, member_sid)) =
            settled_membership(rooms, &room_id, user_id, (membership, member_sid), now)?
        else {
            continue;
        };
        let changed_membership = request.since.is_none_or(|since| member_sid > since);
        match membership.as_str() {
            "join" => {
                joined_rooms.push(room_id.clone());
                // A room joined since the token is new to the client: give it in full. A new
                // member event of a user who was already joined (a display name change) is not
                // a join.
                let newly_joined_room = match request.since {
                    Some(since) if changed_membership => {
                        let record = rooms.room(&room_id)?;
                        let before = match &record {
                            Some(record) => {
                                rooms.membership_as_of(record.sid, request.user_id, since)?
                            }
                            None => None,
                        };
                        before.is_none_or(|(m, _)| m != "join")
                    }
                    _ => false,
                };
                let since = if request.since.is_none() || newly_joined_room {
                    if newly_joined_room {
                        newly_joined.push(room_id.clone());
                    }
                    None
                } else {
                    request.since
                };
                if let Some(room) = joined_room(&mut pass, &room_id, since).await? {
                    join.push((room_id.to_string(), room));
                }
            }
            "invite" | "knock" if changed_membership => {
                let Some(record) = rooms.room(&room_id)? else {
                    continue;
                };
                // An invite (or knock answer) from an ignored user is not shown.
                let Some(events) = stripped_room_state(rooms, &record, user_id, &ignored)? else {
                    continue;
                };
                if membership == "invite" {
                    invite.insert(
                        room_id.to_string(),
                        object([("invite_state", object([("events", Value::Array(events))]))]),
                    );
                } else {
                    knock.insert(
                        room_id.to_string(),
                        object([("knock_state", object([("events", Value::Array(events))]))]),
                    );
                }
            }
            "leave" | "ban"
                if changed_membership
                    && (request.since.is_some() || request.filter.room.include_leave) =>
            {
                if rooms.is_forgotten(&room_id, request.user_id)? {
                    continue;
                }
                // Everything up to and including the user's final membership event. A client
                // that knew the room (joined at its token) gets what changed since; a room
                // joined and left inside the window is new to it and comes in full, as of the
                // leave; a room the user never joined (a rejected invite, a ban of a
                // non-member) shows only the user's own membership events, no state.
                // Never past what the read-access rules allow (`rooms::access`).
                let access = rooms.read_access(&room_id, request.user_id)?;
                let upto = access.until().unwrap_or(member_sid).min(now);
                let Some(record) = rooms.room(&room_id)? else {
                    continue;
                };
                let joined_at_since = match request.since {
                    Some(since) => rooms
                        .membership_as_of(record.sid, request.user_id, since)?
                        .is_some_and(|(m, _)| m == "join"),
                    None => false,
                };
                let (since, with_state) = if joined_at_since {
                    (request.since, true)
                } else {
                    let after = request.since.unwrap_or(0);
                    (
                        None,
                        rooms.joined_since(record.sid, request.user_id, after)?,
                    )
                };
                if let Some(room) =
                    room_timeline(&pass, &record, access, since, upto, false, with_state)?
                {
                    leave.push((room_id.to_string(), Json::Object(room)));
                }
            }
            _ => {}
        }
    }

    let mut body = Map::new();
    let mut has_updates =
        !invite.is_empty() || !knock.is_empty() || !leave.is_empty() || !join.is_empty();
    let next_batch = SyncToken {
        pos: now,
        typing: Some(typing_now),
    };
    body.insert("next_batch".into(), json!(next_batch.to_string()));
    let mut rooms_body = Vec::new();
    for (key, empty, section) in [
        ("join", join.is_empty(), Json::Object(join)),
        (
            "invite",
            invite.is_empty(),
            Json::Value(Value::Object(invite)),
        ),
        ("knock", knock.is_empty(), Json::Value(Value::Object(knock))),
        ("leave", leave.is_empty(), Json::Object(leave)),
    ] {
        if !empty {
            rooms_body.push((key.to_owned(), section));
        }
    }

    let account_filter = &request.filter.account_data;
    let mut events: Vec<Value> = global_account_data
        .into_iter()
        .filter(|(kind, _)| filter_passes(account_filter, kind, None))
        .filter_map(|(kind, content)| {
            let content: Value = serde_json::from_slice(&content).ok()?;
            Some(object([
                ("type", Value::String(kind)),
                ("content", content),
            ]))
        })
        .collect();
    let rules_changed = match request.since {
        None => true,
        Some(since) => sources
            .push_rules
            .changed_since(request.user_id, since, now)?,
    };
    if rules_changed && filter_passes(account_filter, "m.push_rules", None) {
        // Read (and parsed) only when sent: most syncs do not carry the rules.
        let ruleset = sources.push_rules.ruleset(user_id)?;
        events.push(json!({"type": "m.push_rules", "content": {"global": ruleset}}));
    }
    events.truncate(limit_of(account_filter.limit));
    if !events.is_empty() {
        has_updates = true;
        body.insert(
            "account_data".into(),
            object([("events", Value::Array(events))]),
        );
    }

    let presence = presence_events(sources, request, now, &newly_joined)?;
    if !presence.is_empty() {
        has_updates = true;
        body.insert(
            "presence".into(),
            object([("events", Value::Array(presence))]),
        );
    }

    // End-to-end encryption: to-device messages (those up to the client's token are
    // acknowledged by this request and deleted), device-list changes, key counts.
    let e2ee = sources.e2ee;
    if let Some(since) = request.since {
        e2ee.acknowledge_to_device(request.user_id, device, since)
            .await?;
    }
    has_updates |= held_back || !to_device.is_empty();
    body.insert(
        "to_device".into(),
        object([("events", Value::Array(to_device))]),
    );
    if let Some(since) = request.since {
        let (changed, left) = e2ee.device_list_changes(rooms, request.user_id, since, now)?;
        if !changed.is_empty() || !left.is_empty() {
            has_updates = true;
            body.insert(
                "device_lists".into(),
                json!({ "changed": changed, "left": left }),
            );
        }
    }
    body.insert(
        "device_one_time_keys_count".into(),
        json!(e2ee.one_time_key_counts(request.user_id, device)?),
    );
    body.insert(
        "device_unused_fallback_key_types".into(),
        json!(e2ee.unused_fallback_key_types(request.user_id, device)?),
    );

    let wake_at = sources
        .typing
        .earliest_deadline(joined_rooms.iter().map(|r| r.as_ref()));
    Ok(SyncResult {
        body: Json::Object(
            body.into_iter()
                .map(|(key, value)| (key, Json::Value(value)))
                .chain((!rooms_body.is_empty()).then(|| ("rooms".into(), Json::Object(rooms_body))))
                .collect(),
        ),
        has_updates,
        wake_at,
    })
}

/// A local membership `(membership, position)` as it stood at `now`: one that changed after
/// the pass's horizon (its write is still settling) is taken as it was before, so nothing
/// before it is skipped; `None` when the user had no membership then.
fn settled_membership(
    rooms: &Rooms,
    room_id: &ruma::RoomId,
    user_id: &UserId,
    (membership, member_sid): (String, u64),
    now: u64,
) -> Result<Option<(String, u64)>> {
    if member_sid <= now {
        return Ok(Some((membership, member_sid)));
    }
    let Some(record) = rooms.room(room_id)? else {
        return Ok(None);
    };
    rooms.membership_as_of(record.sid, user_id, now)
}

#[cfg(test)]
mod tests {
    use super::SyncToken;

    #[test]
    fn tokens_parse_and_print() {
        let token = SyncToken::parse("42_1700000000000000").unwrap();
        assert_eq!(
            token,
            SyncToken {
                pos: 42,
                typing: Some(1_700_000_000_000_000)
            }
        );
        assert_eq!(token.to_string(), "42_1700000000000000");
        assert_eq!(
            SyncToken::parse("42"),
            Some(SyncToken {
                pos: 42,
                typing: None
            })
        );
        for bad in ["", "_", "x", "1_", "1_x", "1_2_3", "-1"] {
            assert_eq!(SyncToken::parse(bad), None, "{bad:?}");
        }
    }
}
