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
//! ([`super::unread`]), and the top-level `presence` of the users sharing a room with the user
//! (changed since the token, everyone's initially, and everyone's in rooms joined since).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    time::Instant,
};

use ruma::{
    api::client::filter::{Filter, FilterDefinition, LazyLoadOptions, RoomEventFilter},
    events::{room::member::MembershipState, StateEventType},
    push::Ruleset,
    OwnedRoomId, OwnedUserId, RoomId, UserId,
};
use serde_json::{json, Map, Value};

use super::{
    account_data::AccountData,
    e2ee::E2ee,
    presence::{co_members, Presence, View},
    push_rules::PushRules,
    receipts::Receipts,
    rooms::{format::Viewer, Rooms, StoredEvent},
    typing::Typing,
    unread,
    users::now_ms,
};
use crate::error::Result;

/// Timeline events per room when the filter gives no limit (the spec suggests 10 or so).
const DEFAULT_TIMELINE_LIMIT: usize = 10;
const MAX_TIMELINE_LIMIT: usize = 100;
/// Heroes shown in a room summary.
const HEROES: usize = 5;
/// State types shown to invitees and knockers (spec: stripped state).
const STRIPPED_STATE: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

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
    pub e2ee: &'a E2ee,
}

/// Whether an event passes a room event filter's type and sender conditions.
pub fn event_passes(filter: &RoomEventFilter, event: &StoredEvent) -> bool {
    let kind = event.meta.kind.as_str();
    let matches = |pattern: &String| match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    };
    if filter.not_types.iter().any(matches) {
        return false;
    }
    if filter
        .types
        .as_ref()
        .is_some_and(|types| !types.iter().any(matches))
    {
        return false;
    }
    if filter
        .not_senders
        .iter()
        .any(|s| s.as_str() == event.meta.sender)
    {
        return false;
    }
    if filter
        .senders
        .as_ref()
        .is_some_and(|s| !s.iter().any(|s| s.as_str() == event.meta.sender))
    {
        return false;
    }
    true
}

fn room_wanted(filter: &FilterDefinition, room_id: &RoomId) -> bool {
    if filter.room.not_rooms.iter().any(|r| r == room_id) {
        return false;
    }
    filter
        .room
        .rooms
        .as_ref()
        .is_none_or(|rooms| rooms.iter().any(|r| r == room_id))
}

/// Whether an event type passes a filter's `types` / `not_types` (with `*` wildcards).
fn type_passes(types: Option<&[String]>, not_types: &[String], kind: &str) -> bool {
    let matches = |pattern: &String| match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    };
    !not_types.iter().any(matches) && types.is_none_or(|types| types.iter().any(matches))
}

/// Whether a non-room event (presence, global account data) passes a filter.
fn filter_passes(filter: &Filter, kind: &str, sender: Option<&str>) -> bool {
    if !type_passes(filter.types.as_deref(), &filter.not_types, kind) {
        return false;
    }
    let Some(sender) = sender else {
        return true;
    };
    !filter.not_senders.iter().any(|s| s.as_str() == sender)
        && filter
            .senders
            .as_ref()
            .is_none_or(|s| s.iter().any(|s| s.as_str() == sender))
}

/// Whether a room's ephemeral or account data event of `kind` passes a room event filter.
fn room_event_passes(filter: &RoomEventFilter, room_id: &RoomId, kind: &str) -> bool {
    type_passes(filter.types.as_deref(), &filter.not_types, kind)
        && !filter.not_rooms.iter().any(|r| r == room_id)
        && filter
            .rooms
            .as_ref()
            .is_none_or(|rooms| rooms.iter().any(|r| r == room_id))
}

fn limit_of(limit: Option<ruma::UInt>) -> usize {
    limit
        .map(|l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX))
        .unwrap_or(usize::MAX)
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
    ruleset: Ruleset,
}

/// The result of one sync pass: the response body, whether it carries anything new, and when
/// a typing notification in one of the user's rooms lapses (a waiting sync should look again
/// then).
pub struct SyncResult {
    pub body: Value,
    pub has_updates: bool,
    pub wake_at: Option<Instant>,
}

pub async fn sync_once(
    sources: &Sources<'_>,
    request: &SyncRequest<'_>,
    now: u64,
) -> Result<SyncResult> {
    let mut join = Map::new();
    let mut invite = Map::new();
    let mut knock = Map::new();
    let mut leave = Map::new();
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
        ruleset: sources.push_rules.ruleset(user_id)?,
    };
    let mut joined_rooms: Vec<OwnedRoomId> = Vec::new();
    let mut newly_joined: Vec<OwnedRoomId> = Vec::new();

    let memberships = rooms.memberships_of(request.user_id)?;
    for (room_id, membership, member_sid) in memberships {
        if !room_wanted(&request.filter, &room_id) {
            continue;
        }
        let (membership, member_sid) = if member_sid > now {
            // The membership changed after this pass's horizon (its write is still settling):
            // sync the room as the membership stood at `now`, so nothing before it is skipped.
            let Some(record) = rooms.room(&room_id)? else {
                continue;
            };
            match rooms.membership_as_of(record.sid, request.user_id, now)? {
                Some(earlier) => earlier,
                None => continue,
            }
        } else {
            (membership, member_sid)
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
                    join.insert(room_id.to_string(), room);
                }
            }
            "invite" | "knock" if changed_membership => {
                let Some(record) = rooms.room(&room_id)? else {
                    continue;
                };
                let mut events = Vec::new();
                for kind in STRIPPED_STATE {
                    if let Some(e) =
                        rooms.state_event(record.sid, &StateEventType::from(*kind), "")?
                    {
                        events.push(rooms.stripped_event(&e));
                    }
                }
                if let Some(own) = rooms.state_event(
                    record.sid,
                    &StateEventType::RoomMember,
                    request.user_id.as_str(),
                )? {
                    let mut stripped = rooms.stripped_event(&own);
                    stripped["origin_server_ts"] = json!(own.meta.origin_server_ts);
                    stripped["event_id"] = json!(own.pdu.event_id);
                    events.push(stripped);
                }
                if membership == "invite" {
                    invite.insert(
                        room_id.to_string(),
                        json!({"invite_state": {"events": events}}),
                    );
                } else {
                    knock.insert(
                        room_id.to_string(),
                        json!({"knock_state": {"events": events}}),
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
                // Everything up to and including the user's final membership event, but
                // never past what the read-access rules allow (`rooms::access`).
                let access = rooms.read_access(&room_id, request.user_id)?;
                let upto = access.until().unwrap_or(member_sid).min(now);
                let since = if request.since.is_some() {
                    request.since
                } else {
                    None
                };
                if let Some(mut room) =
                    room_timeline(sources, request, &room_id, since, upto, false)?
                {
                    // A user who never joined (a rejected invite, a pre-emptive ban) gets their
                    // own membership events, not the room's state.
                    if access.state_head(None).is_none() {
                        room["state"] = json!({ "events": [] });
                    }
                    leave.insert(room_id.to_string(), room);
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
    let mut rooms_body = Map::new();
    for (key, section) in [
        ("join", join),
        ("invite", invite),
        ("knock", knock),
        ("leave", leave),
    ] {
        if !section.is_empty() {
            rooms_body.insert(key.into(), Value::Object(section));
        }
    }
    if !rooms_body.is_empty() {
        body.insert("rooms".into(), Value::Object(rooms_body));
    }

    let account_filter = &request.filter.account_data;
    let mut events: Vec<Value> = global_account_data
        .into_iter()
        .filter(|(kind, _)| filter_passes(account_filter, kind, None))
        .filter_map(|(kind, content)| {
            let content: Value = serde_json::from_slice(&content).ok()?;
            Some(json!({"type": kind, "content": content}))
        })
        .collect();
    let rules_changed = match request.since {
        None => true,
        Some(since) => sources
            .push_rules
            .changed_since(request.user_id, since, now)?,
    };
    if rules_changed && filter_passes(account_filter, "m.push_rules", None) {
        events.push(json!({"type": "m.push_rules", "content": {"global": pass.ruleset}}));
    }
    events.truncate(limit_of(account_filter.limit));
    if !events.is_empty() {
        has_updates = true;
        body.insert("account_data".into(), json!({ "events": events }));
    }

    let presence = presence_events(sources, request, now, &newly_joined)?;
    if !presence.is_empty() {
        has_updates = true;
        body.insert("presence".into(), json!({ "events": presence }));
    }

    // End-to-end encryption: to-device messages (those up to the client's token are
    // acknowledged by this request and deleted), device-list changes, key counts.
    let e2ee = sources.e2ee;
    let device: &ruma::DeviceId = request.device_id.into();
    if let Some(since) = request.since {
        e2ee.acknowledge_to_device(request.user_id, device, since)
            .await?;
    }
    let to_device = e2ee.to_device_for_sync(request.user_id, device, request.since, now)?;
    has_updates |= !to_device.is_empty();
    body.insert("to_device".into(), json!({ "events": to_device }));
    if let Some(since) = request.since {
        let (changed, left) = e2ee.device_list_changes(request.user_id, since, now)?;
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
        body: Value::Object(body),
        has_updates,
        wake_at,
    })
}

/// The `m.presence` events of a sync: users sharing a room with the syncing user (and the user
/// themself) whose presence changed since the token, everyone's on an initial sync, and the
/// members of rooms joined since the token.
fn presence_events(
    sources: &Sources<'_>,
    request: &SyncRequest<'_>,
    now: u64,
    newly_joined: &[OwnedRoomId],
) -> Result<Vec<Value>> {
    let filter = &request.filter.presence;
    if !filter_passes(filter, "m.presence", None) {
        return Ok(Vec::new());
    }
    let rooms = sources.rooms;
    let mut wanted: BTreeSet<OwnedUserId> = BTreeSet::new();
    match request.since {
        None => wanted = co_members(rooms, request.user_id)?,
        Some(since) => {
            let changes = sources.presence.changes_since(since, now)?;
            if !changes.is_empty() {
                let members = co_members(rooms, request.user_id)?;
                wanted.extend(
                    changes
                        .into_iter()
                        .filter_map(|(user, _)| UserId::parse(user).ok())
                        .filter(|user| members.contains(user)),
                );
            }
            for room_id in newly_joined {
                let Some(room) = rooms.room(room_id)? else {
                    continue;
                };
                for (member, membership) in rooms.members(room.sid)? {
                    if membership == "join" {
                        if let Ok(member) = UserId::parse(member) {
                            wanted.insert(member);
                        }
                    }
                }
            }
        }
    }
    let now_ms = now_ms();
    let limit = limit_of(filter.limit);
    let mut events = Vec::new();
    for user in wanted {
        if events.len() >= limit {
            break;
        }
        if !filter_passes(filter, "m.presence", Some(user.as_str())) {
            continue;
        }
        let Some(record) = sources.presence.get(&user)? else {
            continue;
        };
        if record.pos > now {
            // Changed after this pass's position: the next sync sends it.
            continue;
        }
        let view = View::of(Some(&record), now_ms);
        events.push(json!({"type": "m.presence", "sender": user, "content": view.content()}));
    }
    Ok(events)
}

/// A joined room's section, or `None` when nothing changed since the token.
async fn joined_room(
    pass: &mut Pass<'_>,
    room_id: &RoomId,
    since: Option<u64>,
) -> Result<Option<Value>> {
    let sources = pass.sources;
    let request = pass.request;
    let now = pass.now;
    let user_id = request.user_id;
    let rooms = sources.rooms;
    let Some(record) = rooms.room(room_id)? else {
        return Ok(None);
    };
    let timeline = room_timeline(sources, request, room_id, since, now, true)?;

    // Ephemeral events: typing and receipts.
    let ephemeral_filter = &request.filter.room.ephemeral;
    let mut ephemeral = Vec::new();
    if room_event_passes(ephemeral_filter, room_id, "m.typing") {
        let (typing_since, send_empty) = match (since, pass.typing) {
            (None, _) | (_, TypingSince::Initial) => (None, false),
            (Some(_), TypingSince::Serial(serial)) => (Some(serial), true),
            (Some(_), TypingSince::Unknown) => (None, true),
        };
        if let Some(mut users) = sources.typing.room_since(room_id, typing_since) {
            // Someone who left while typing is not shown until their timeout lapses.
            let mut still_joined = Vec::with_capacity(users.len());
            for user in users.drain(..) {
                if rooms.membership(room_id, &user)? == Some(MembershipState::Join) {
                    still_joined.push(user);
                }
            }
            let users = still_joined;
            if send_empty || !users.is_empty() {
                ephemeral.push(json!({"type": "m.typing", "content": {"user_ids": users}}));
            }
        }
    }
    if room_event_passes(ephemeral_filter, room_id, "m.receipt") {
        if let Some(content) = sources.receipts.room_since(room_id, since, now, user_id)? {
            ephemeral.push(json!({"type": "m.receipt", "content": content}));
        }
    }
    ephemeral.truncate(limit_of(ephemeral_filter.limit));

    // Room account data (tags, the fully read marker, anything the client set).
    let account_filter = &request.filter.room.account_data;
    let entries = match since {
        None => sources.account_data.room(user_id, room_id)?,
        Some(_) => pass
            .room_account_data
            .remove(room_id.as_str())
            .unwrap_or_default(),
    };
    let mut account_data: Vec<Value> = entries
        .into_iter()
        .filter(|(kind, _)| room_event_passes(account_filter, room_id, kind))
        .filter_map(|(kind, content)| {
            let content: Value = serde_json::from_slice(&content).ok()?;
            Some(json!({"type": kind, "content": content}))
        })
        .collect();
    account_data.truncate(limit_of(account_filter.limit));

    let mut room = match timeline {
        Some(room) => room,
        None if !ephemeral.is_empty() || !account_data.is_empty() => {
            json!({"timeline": {"events": [], "limited": false}, "state": {"events": []}})
        }
        None => return Ok(None),
    };

    // The summary changes rarely; it is sent whenever membership changed in this batch or
    // on a fresh start.
    let members = rooms.members(record.sid)?;
    let joined = members.iter().filter(|(_, m)| m == "join").count();
    let invited = members.iter().filter(|(_, m)| m == "invite").count();
    let heroes: Vec<&str> = members
        .iter()
        .filter(|(u, m)| u != user_id.as_str() && (m == "join" || m == "invite"))
        .map(|(u, _)| u.as_str())
        .take(HEROES)
        .collect();
    room["summary"] = json!({
        "m.heroes": heroes,
        "m.joined_member_count": joined,
        "m.invited_member_count": invited,
    });
    room["ephemeral"] = json!({ "events": ephemeral });
    room["account_data"] = json!({ "events": account_data });

    let counts = unread::room_counts(
        rooms,
        sources.receipts,
        &pass.ruleset,
        user_id,
        room_id,
        now,
    )
    .await?;
    if request.filter.room.timeline.unread_thread_notifications {
        room["unread_notifications"] = counts.main.json();
        let threads: Map<String, Value> = counts
            .threads
            .iter()
            .filter(|(_, c)| c.notifications > 0 || c.highlights > 0)
            .map(|(root, c)| (root.clone(), c.json()))
            .collect();
        if !threads.is_empty() {
            room["unread_thread_notifications"] = Value::Object(threads);
        }
    } else {
        room["unread_notifications"] = counts.total().json();
    }
    Ok(Some(room))
}

/// The timeline and state of a room between `since` (exclusive) and `upto` (inclusive).
fn room_timeline(
    sources: &Sources<'_>,
    request: &SyncRequest<'_>,
    room_id: &RoomId,
    since: Option<u64>,
    upto: u64,
    skip_if_empty: bool,
) -> Result<Option<Value>> {
    let rooms = sources.rooms;
    let Some(record) = rooms.room(room_id)? else {
        return Ok(None);
    };
    let filter = &request.filter.room.timeline;
    let limit = filter
        .limit
        .map(|l| usize::try_from(u64::from(l)).unwrap_or(MAX_TIMELINE_LIMIT))
        .unwrap_or(DEFAULT_TIMELINE_LIMIT)
        .clamp(1, MAX_TIMELINE_LIMIT);
    let viewer = Viewer {
        user_id: request.user_id,
        device_id: Some(request.device_id),
    };

    // Newest first, down to the token; one more than the limit tells whether it is limited.
    let mut picked: Vec<StoredEvent> = Vec::new();
    let mut limited = false;
    let mut cursor = Some(upto);
    let mut budget = limit * 20 + 100;
    'scan: while let Some(from) = cursor {
        let page = rooms.timeline(record.sid, Some(from), true, limit + 1)?;
        if page.is_empty() {
            break;
        }
        for event in page {
            cursor = event.sid.checked_sub(1);
            budget = budget.saturating_sub(1);
            if since.is_some_and(|s| event.sid <= s) {
                break 'scan;
            }
            if !rooms.can_see(request.user_id, &event)? {
                // History the user may not read ends the timeline here.
                limited = true;
                break 'scan;
            }
            if !event_passes(filter, &event) {
                continue;
            }
            if picked.len() == limit || budget == 0 {
                limited = true;
                break 'scan;
            }
            picked.push(event);
        }
    }
    picked.reverse();
    if skip_if_empty && picked.is_empty() && since.is_some() && !request.full_state {
        return Ok(None);
    }

    // State: everything the client lacks before the first timeline event.
    let start_head = match picked.first() {
        Some(first) => first.meta.state_link,
        None => record.last_state,
    };
    let full = since.is_none() || request.full_state;
    let lazy = matches!(
        request.filter.room.state.lazy_load_options,
        LazyLoadOptions::Enabled { .. }
    );
    let include_redundant = matches!(
        request.filter.room.state.lazy_load_options,
        LazyLoadOptions::Enabled {
            include_redundant_members: true
        }
    );
    let timeline_senders: HashSet<&str> = picked.iter().map(|e| e.meta.sender.as_str()).collect();
    let timeline_sids: HashSet<u64> = picked.iter().map(|e| e.sid).collect();
    let mut state = Vec::new();
    for (kind, key, sid) in rooms.full_state_at(start_head)? {
        if timeline_sids.contains(&sid) {
            continue;
        }
        if !full && since.is_some_and(|s| sid <= s) {
            continue;
        }
        if lazy && kind == "m.room.member" && key != request.user_id.as_str() {
            // Lazy loading: only members who sent something in this timeline (the client
            // has the others or will fetch them), unless it asked for redundant ones.
            if !timeline_senders.contains(key.as_str()) {
                continue;
            }
            if !include_redundant && !full && since.is_some_and(|s| sid <= s) {
                continue;
            }
        }
        if let Some(event) = rooms.event_by_sid(sid)? {
            if event_passes(&request.filter.room.state, &event) {
                state.push(rooms.client_event(&event, Some(viewer)));
            }
        }
    }

    let prev_batch = picked.first().map(|e| e.sid.to_string());
    // Timeline events carry their bundled aggregations (threads, edits, references), as on
    // every other read path.
    let events: Vec<Value> = picked
        .iter()
        .map(|e| rooms.client_event_bundled(e, Some(viewer)))
        .collect::<Result<_>>()?;
    let mut timeline = json!({"events": events, "limited": limited});
    if let Some(prev_batch) = prev_batch {
        timeline["prev_batch"] = json!(prev_batch);
    }
    Ok(Some(
        json!({"timeline": timeline, "state": {"events": state}}),
    ))
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
