//! The room sections of a sync: a joined room's timeline, state, ephemeral events, account
//! data and counts, and the timeline and state of a left room.

use std::{collections::HashSet, sync::Arc};

use ruma::{
    api::client::filter::LazyLoadOptions,
    events::{room::member::MembershipState, StateEventType},
    RoomId, UserId,
};
use serde_json::{json, Map, Value};

use super::{
    filters::{event_passes, limit_of, room_event_passes},
    format::Json,
    Pass, TypingSince,
};
use crate::{
    error::Result,
    service::rooms::{
        access::{Access, Reader},
        format::Viewer,
        state::state_head,
        RoomRecord, Rooms, StoredEvent,
    },
};

/// Timeline events per room when the filter gives no limit (the spec suggests 10 or so).
const DEFAULT_TIMELINE_LIMIT: usize = 10;
pub(super) const MAX_TIMELINE_LIMIT: usize = 100;
/// Heroes shown in a room summary.
pub(super) const HEROES: usize = 5;
use crate::service::rooms::format::{object, STRIPPED_STATE};

/// A joined room's section, or `None` when nothing changed since the token.
pub(super) async fn joined_room(
    pass: &mut Pass<'_>,
    room_id: &RoomId,
    since: Option<u64>,
) -> Result<Option<Json>> {
    let sources = pass.sources;
    let request = pass.request;
    let now = pass.now;
    let user_id = request.user_id;
    let rooms = sources.rooms;
    // A room with nothing past the token (`rooms::latest`) has no timeline section: no event
    // of it is read.
    let unchanged = match since {
        Some(since) if !request.full_state => rooms.latest_position(room_id)? <= since,
        _ => false,
    };
    // The record is read once, and not at all for a room with nothing to show.
    let mut record = None;
    let timeline = if unchanged {
        None
    } else {
        let Some(read) = rooms.room(room_id)? else {
            return Ok(None);
        };
        let timeline = room_timeline(pass, &read, Access::Joined, since, now, true, true)?;
        record = Some(read);
        timeline
    };

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
            let users: Vec<_> = still_joined
                .into_iter()
                .filter(|user| !pass.ignored.contains(user.as_str()))
                .collect();
            if send_empty || !users.is_empty() {
                ephemeral.push(json!({"type": "m.typing", "content": {"user_ids": users}}));
            }
        }
    }
    if room_event_passes(ephemeral_filter, room_id, "m.receipt") {
        if let Some(content) = sources.receipts.room_since(room_id, since, now, user_id)? {
            ephemeral.push(object([("type", json!("m.receipt")), ("content", content)]));
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
            Some(object([
                ("type", Value::String(kind)),
                ("content", content),
            ]))
        })
        .collect();
    account_data.truncate(limit_of(account_filter.limit));

    let mut sections = match timeline {
        Some(sections) => sections,
        None if !ephemeral.is_empty() || !account_data.is_empty() => {
            // Nothing new in the timeline: its (empty) start is this sync's horizon.
            let prev_batch = now.saturating_add(1).to_string();
            timeline_json(Vec::new(), false, prev_batch, Vec::new())
        }
        None => return Ok(None),
    };
    // The room's other members, added to the timeline's.
    let mut room = Value::Object(Map::new());
    let record = match record {
        Some(record) => record,
        None => match rooms.room(room_id)? {
            Some(record) => record,
            None => return Ok(None),
        },
    };

    // The summary changes rarely; it is sent whenever membership changed in this batch or
    // on a fresh start.
    // Shared by every sync of the room at this state (`rooms::member_summary`).
    let members = rooms.member_summary(&record)?;
    let (joined, invited) = (members.joined, members.invited);
    // A partial-state room (`rooms/partial_state.rs`) knows few of its members: no counts
    // rather than wrong ones (the fields are optional) until the full state is stored.
    room["summary"] = if rooms.is_partial_state(room_id) {
        json!({})
    } else {
        json!({
            "m.joined_member_count": joined,
            "m.invited_member_count": invited,
        })
    };
    if needs_heroes(rooms, record.sid)? {
        room["summary"]["m.heroes"] = json!(members.heroes(user_id.as_str(), HEROES));
    }
    room["ephemeral"] = object([("events", Value::Array(ephemeral))]);
    room["account_data"] = object([("events", Value::Array(account_data))]);

    let counts = sources.notifications.room_counts(user_id, room_id)?;
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
    if let Value::Object(room) = room {
        sections.extend(
            room.into_iter()
                .map(|(key, value)| (key, Json::Value(value))),
        );
    }
    Ok(Some(Json::Object(sections)))
}

/// A room's `timeline` and `state` members.
fn timeline_json(
    events: Vec<Json>,
    limited: bool,
    prev_batch: String,
    state: Vec<Value>,
) -> Vec<(String, Json)> {
    vec![
        (
            "timeline".into(),
            Json::Object(vec![
                ("events".into(), Json::Array(events)),
                ("limited".into(), Json::Value(Value::Bool(limited))),
                ("prev_batch".into(), Json::Value(Value::String(prev_batch))),
            ]),
        ),
        (
            "state".into(),
            Json::Value(object([("events", Value::Array(state))])),
        ),
    ]
}

/// The stripped state an invitee or knocker sees of a room this server takes part in (spec:
/// "Stripped state"), with an inviter's member event, ending with their own member event;
/// `None` when that event comes from an ignored user (such an invite is not shown).
pub(super) fn stripped_room_state(
    rooms: &Rooms,
    record: &RoomRecord,
    user_id: &UserId,
    ignored: &HashSet<String>,
) -> Result<Option<Vec<Value>>> {
    let mut events = Vec::new();
    for kind in STRIPPED_STATE {
        if let Some(e) = rooms.state_event(record.sid, &StateEventType::from(*kind), "")? {
            events.push(rooms.stripped_event(&e));
        }
    }
    let own = rooms.state_event(record.sid, &StateEventType::RoomMember, user_id.as_str())?;
    if own
        .as_ref()
        .is_some_and(|own| ignored.contains(own.meta.sender.as_str()))
    {
        return Ok(None);
    }
    if let Some(own) = own {
        // The inviter's own member event too (MSC4319, as Synapse sends it): a room without
        // a name (a direct chat) is then shown under the inviter's name and avatar.
        let inviter = own.meta.sender.as_str();
        let invited = own
            .pdu
            .content_as::<Value>()
            .is_some_and(|c| c["membership"] == "invite");
        if invited && inviter != user_id.as_str() {
            let kind = StateEventType::RoomMember;
            if let Some(e) = rooms.state_event(record.sid, &kind, inviter)? {
                events.push(rooms.stripped_event(&e));
            }
        }
        let mut stripped = rooms.stripped_event(&own);
        stripped["origin_server_ts"] = json!(own.meta.origin_server_ts);
        stripped["event_id"] = json!(own.pdu.event_id);
        events.push(stripped);
    }
    Ok(Some(events))
}

/// Whether the summary names heroes: the spec requires them when the room has no name and no
/// canonical alias (the client then names the room after them), and a lazy-loading client
/// must then get their member events too, so they are left out otherwise.
pub(super) fn needs_heroes(rooms: &Rooms, room_sid: u64) -> Result<bool> {
    for (kind, field) in [
        (StateEventType::RoomName, "name"),
        (StateEventType::RoomCanonicalAlias, "alias"),
    ] {
        let set = rooms
            .state_event(room_sid, &kind, "")?
            .and_then(|e| e.pdu.content_as::<Value>())
            .is_some_and(|c| {
                c.get(field)
                    .and_then(Value::as_str)
                    .is_some_and(|v| !v.is_empty())
            });
        if set {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The timeline and state of a room between `since` (exclusive) and `upto` (inclusive), as
/// the user's `access` to the room (`rooms::access`, which the caller knows) allows.
/// Without `with_state` the state section stays empty (a room the user never joined).
/// A `joined` room's section is skipped in an incremental sync when nothing changed, and, as
/// it carries a summary, a lazy-loading client also gets the member events of the summary's
/// heroes (spec: `m.heroes`).
pub(super) fn room_timeline(
    pass: &Pass<'_>,
    record: &RoomRecord,
    access: Access,
    since: Option<u64>,
    upto: u64,
    joined: bool,
    with_state: bool,
) -> Result<Option<Vec<(String, Json)>>> {
    let (sources, request) = (pass.sources, pass.request);
    let rooms = sources.rooms;
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

    let window = timeline_window(
        rooms,
        record,
        request.user_id,
        access,
        pass.ignored,
        Span { since, upto, limit },
        |event| event_passes(filter, event),
    )?;
    let Window {
        events: picked,
        limited,
        end_head: newest_head,
        prev_batch,
    } = window;
    if joined && picked.is_empty() && since.is_some() && !request.full_state {
        return Ok(None);
    }

    // State: everything the client lacks before the first timeline event.
    let start_head = match picked.first() {
        Some(first) => first.meta.state_link,
        None => newest_head,
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
    // The members a lazy-loading client needs: the timeline's senders and, for a room with a
    // summary, its heroes (their member events "MUST be included ... unless redundant").
    let summary = if lazy && joined && needs_heroes(rooms, record.sid)? {
        Some(rooms.member_summary(record)?)
    } else {
        None
    };
    let mut needed_members: HashSet<&str> = picked.iter().map(|e| e.meta.sender.as_str()).collect();
    if let Some(summary) = &summary {
        needed_members.extend(summary.heroes(request.user_id.as_str(), HEROES));
    }
    let timeline_sids: HashSet<u64> = picked.iter().map(|e| e.sid).collect();
    let mut state = Vec::new();
    // The state at the head is shared by every sync of the room (`rooms::state_cache`).
    let state_rows = if with_state {
        rooms.state_map_at(start_head)?
    } else {
        Default::default()
    };
    let (user, device) = (request.user_id.as_str(), request.device_id);
    for ((kind, key), &sid) in state_rows.iter() {
        if timeline_sids.contains(&sid) {
            continue;
        }
        let lazy_member = lazy && kind == "m.room.member" && key != user;
        if lazy_member {
            // Lazy loading: the members who sent something in this timeline, and the
            // summary's heroes (the client has the others or will fetch them), each once
            // per client session, even when their member event is older than the token;
            // redundant ones on request.
            if !needed_members.contains(key.as_str()) {
                continue;
            }
            let delivered = since.filter(|_| !full).is_some_and(|since| {
                sources
                    .lazy_members
                    .delivered(user, device, record.sid, key, sid, since)
            });
            if delivered && !include_redundant {
                continue;
            }
        } else if !full && since.is_some_and(|s| sid <= s) {
            continue;
        }
        if let Some(event) = rooms.shared_event_by_sid(sid)? {
            if event_passes(&request.filter.room.state, &event) {
                state.push(pass.format.event(rooms, &event, Some(viewer), false)?);
                if lazy_member {
                    sources
                        .lazy_members
                        .record(user, device, record.sid, key, sid, pass.now);
                }
            }
        }
    }
    // Timeline member events reach the client as well.
    if lazy {
        for event in picked.iter().filter(|e| e.meta.kind == "m.room.member") {
            if let Some(member) = event.meta.state_key.as_deref() {
                sources
                    .lazy_members
                    .record(user, device, record.sid, member, event.sid, pass.now);
            }
        }
    }

    // Timeline events carry their bundled aggregations (threads, edits, references), as on
    // every other read path (in the client format the filter may ask for).
    let events: Vec<Json> = picked
        .iter()
        .map(|e| pass.format.timeline_event(rooms, e, Some(viewer)))
        .collect::<Result<_>>()?;
    Ok(Some(timeline_json(events, limited, prev_batch, state)))
}

/// Which part of a room's timeline a sync reads: the events after `since` (exclusive; `None`:
/// from the newest back) up to `upto` (inclusive), at most `limit` of them.
pub(super) struct Span {
    pub since: Option<u64>,
    pub upto: u64,
    pub limit: usize,
}

/// A room's timeline as a sync serves it (/sync v2 and sliding sync alike).
pub(super) struct Window {
    /// Oldest first.
    pub events: Vec<Arc<StoredEvent>>,
    /// Whether events between `since` and the first of `events` were left out (too many, or
    /// history the user may not read).
    pub limited: bool,
    /// The room's state head as of `upto` (the state after the newest event at or below it).
    pub end_head: Option<u64>,
    /// A pagination token below the first event; with no events, below everything the span
    /// covered (`upto` included), so paging back from it never skips an event.
    pub prev_batch: String,
}

/// The newest events of a span that the user may see: the room-level `access` first (a
/// rejected invitee reads only their own membership events, a departed user nothing past
/// their departure), then each event's history visibility, the rules of every other read
/// path; history the user may not read ends the window. Non-state events of `ignored` users
/// are left out (spec: their state events are not), as are events `wanted` refuses.
pub(super) fn timeline_window(
    rooms: &Rooms,
    record: &RoomRecord,
    user_id: &UserId,
    access: Access,
    ignored: &HashSet<String>,
    span: Span,
    wanted: impl Fn(&StoredEvent) -> bool,
) -> Result<Window> {
    let Span { since, upto, limit } = span;
    let mut reader = Reader::new(rooms, user_id, access);
    // Newest first, down to the token; one more than the limit tells whether it is limited.
    let mut picked: Vec<Arc<StoredEvent>> = Vec::new();
    let mut newest_head: Option<Option<u64>> = None;
    let mut limited = false;
    let mut cursor = Some(upto);
    let mut budget = limit * 20 + 100;
    // Pages grow from a few rows: a long-poll woken by one new event reads two positions,
    // not `limit + 1` of them.
    let mut page_len = 4;
    'scan: while let Some(from) = cursor {
        // Positions first: only the newest event (for the state head) and those past the
        // token are read and decoded, so a room with one new event costs two reads, not a
        // page of them.
        let page = rooms.timeline_sids(record.sid, Some(from), true, page_len.min(limit + 1))?;
        page_len = page_len.saturating_mul(4);
        if page.is_empty() {
            break;
        }
        for sid in page {
            cursor = sid.checked_sub(1);
            budget = budget.saturating_sub(1);
            let past_token = since.is_some_and(|s| sid <= s);
            if past_token && newest_head.is_some() {
                break 'scan;
            }
            // Shared: the syncs one new event wakes all read it (and the one before it).
            let Some(event) = rooms.shared_event_by_sid(sid)? else {
                continue;
            };
            newest_head.get_or_insert_with(|| state_head(&event));
            if past_token {
                break 'scan;
            }
            let own_membership = event.meta.kind == "m.room.member"
                && event.meta.state_key.as_deref() == Some(user_id.as_str());
            if !own_membership && !reader.may_see(&event)? {
                limited = true;
                break 'scan;
            }
            if !wanted(&event) {
                continue;
            }
            if event.meta.state_key.is_none() && ignored.contains(event.meta.sender.as_str()) {
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
    let prev_batch = picked
        .first()
        .map_or(upto.saturating_add(1), |e| e.sid)
        .to_string();
    Ok(Window {
        events: picked,
        limited,
        end_head: newest_head.unwrap_or(record.last_state),
        prev_batch,
    })
}
