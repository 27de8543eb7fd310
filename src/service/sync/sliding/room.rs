//! One room of a sliding sync response: its timeline (the /sync timeline window, with the
//! same history visibility and ignored users), the state the client requires, and the room
//! fields Element X shows in its room list (name, avatar, heroes, counts, bump stamp).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use ruma::UserId;
use serde_json::{json, Map, Value};

use super::{
    super::{
        format::EventFormat,
        room::{needs_heroes, timeline_window, Span, HEROES},
        LazyMembers,
    },
    connections::{RoomConfig, RoomSent},
    lists::Candidate,
};
use crate::{
    error::Result,
    service::{
        push::notifications::Notifications,
        rooms::{access::Access, format::Viewer, RoomRecord, Rooms, StoredEvent},
    },
};

/// `required_state` wildcards and placeholders (MSC4186).
const WILDCARD: &str = "*";
const LAZY: &str = "$LAZY";

/// What every room of one pass shares.
pub struct RoomCtx<'a> {
    pub rooms: &'a Rooms,
    pub notifications: &'a Notifications,
    pub lazy_members: &'a LazyMembers,
    pub user_id: &'a UserId,
    pub device_id: &'a str,
    /// The key lazy-loaded members are tracked under for this connection.
    pub lazy_key: &'a str,
    pub ignored: &'a HashSet<String>,
    /// The pass's horizon.
    pub now: u64,
    /// The connection sequence of this response and of the one the client continues from:
    /// lazy-loaded members count as delivered once the client continues from a response
    /// that carried them.
    pub seq: u64,
    pub acked_seq: Option<u64>,
    pub format: &'a EventFormat,
}

/// The room's section (`None`: nothing changed since `previous`) and what the connection
/// holds of it afterwards.
pub fn room_data(
    ctx: &RoomCtx<'_>,
    room: &Candidate,
    config: &Arc<RoomConfig>,
    previous: Option<&RoomSent>,
) -> Result<(Option<Value>, RoomSent)> {
    let sent = |counts| RoomSent {
        upto: ctx.now,
        config: config.clone(),
        counts,
        joined: false,
    };
    if let Some(stripped) = &room.stripped {
        // An invite or knock: its stripped state, once per membership.
        if previous.is_some_and(|p| p.upto >= room.member_sid) {
            return Ok((None, sent((0, 0))));
        }
        return Ok((
            Some(invited_room(room, stripped, previous.is_none())),
            sent((0, 0)),
        ));
    }
    let Some(record) = &room.record else {
        // A remote invite that ended (rejected, rescinded): only the membership is known.
        if previous.is_some_and(|p| p.upto >= room.member_sid) {
            return Ok((None, sent((0, 0))));
        }
        let mut body = Map::new();
        body.insert("bump_stamp".into(), json!(room.bump));
        body.insert("timeline".into(), json!([]));
        return Ok((Some(Value::Object(body)), sent((0, 0))));
    };
    joined_or_left(ctx, room, record, config, previous)
}

fn invited_room(room: &Candidate, stripped: &[Value], initial: bool) -> Value {
    let mut body = Map::new();
    if initial {
        body.insert("initial".into(), json!(true));
    }
    let content = |kind: &str| {
        stripped
            .iter()
            .find(|e| e["type"] == kind && e["state_key"] == "")
            .map(|e| e["content"].clone())
    };
    if let Some(name) = content("m.room.name").and_then(|c| c["name"].as_str().map(str::to_owned)) {
        body.insert("name".into(), json!(name));
    }
    if let Some(url) = content("m.room.avatar").and_then(|c| c["url"].as_str().map(str::to_owned)) {
        body.insert("avatar".into(), json!(url));
    }
    body.insert("bump_stamp".into(), json!(room.bump));
    if room.is_dm {
        body.insert("is_dm".into(), json!(true));
    }
    // Clients read `invite_state` for knocks too (as Synapse sends them); `knock_state` is
    // the field MSC4186 names for them.
    body.insert("invite_state".into(), json!(stripped));
    if room.membership == "knock" {
        body.insert("knock_state".into(), json!(stripped));
    }
    Value::Object(body)
}

/// Where a room's state is read: its current state, or (a room the user left) the state
/// as of their departure.
enum StateView {
    Current(u64),
    At(HashMap<(String, String), u64>),
}

impl StateView {
    fn get(&self, rooms: &Rooms, kind: &str, key: &str) -> Result<Option<u64>> {
        match self {
            Self::Current(room_sid) => rooms.state_sid(*room_sid, kind, key),
            Self::At(map) => Ok(map.get(&(kind.to_owned(), key.to_owned())).copied()),
        }
    }

    /// Every `(type, state key, sid)` matching `kind` (`None`: every type).
    fn all(&self, rooms: &Rooms, kind: Option<&str>) -> Result<Vec<(String, String, u64)>> {
        match self {
            Self::Current(room_sid) => rooms.current_state_sids(*room_sid, kind),
            Self::At(map) => Ok(map
                .iter()
                .filter(|((k, _), _)| kind.is_none_or(|kind| kind == k))
                .map(|((k, key), sid)| (k.clone(), key.clone(), *sid))
                .collect()),
        }
    }

    fn content(&self, rooms: &Rooms, kind: &str) -> Result<Option<Value>> {
        Ok(match self.get(rooms, kind, "")? {
            Some(sid) => rooms
                .event_by_sid(sid)?
                .and_then(|e| e.pdu.content_as::<Value>()),
            None => None,
        })
    }
}

/// The state rows `pairs` select (without `$LAZY`, handled with the timeline).
fn select_state(
    rooms: &Rooms,
    view: &StateView,
    pairs: &[(String, String)],
) -> Result<BTreeSet<(String, String, u64)>> {
    let mut out = BTreeSet::new();
    if pairs.iter().any(|(kind, _)| kind == WILDCARD) {
        // A wildcard type: the whole state, filtered.
        for row in view.all(rooms, None)? {
            if pairs.iter().any(|(kind, key)| {
                (kind == WILDCARD || *kind == row.0) && (key == WILDCARD || *key == row.1)
            }) {
                out.insert(row);
            }
        }
        return Ok(out);
    }
    for (kind, key) in pairs {
        if key == LAZY {
            continue;
        }
        if key == WILDCARD {
            out.extend(view.all(rooms, Some(kind))?);
        } else if let Some(sid) = view.get(rooms, kind, key)? {
            out.insert((kind.clone(), key.clone(), sid));
        }
    }
    Ok(out)
}

fn joined_or_left(
    ctx: &RoomCtx<'_>,
    room: &Candidate,
    record: &RoomRecord,
    config: &Arc<RoomConfig>,
    previous: Option<&RoomSent>,
) -> Result<(Option<Value>, RoomSent)> {
    let rooms = ctx.rooms;
    let joined = room.membership == "join";
    let access = if joined {
        Access::Joined
    } else {
        rooms.read_access(&room.room_id, ctx.user_id)?
    };
    let upto = access.until().unwrap_or(ctx.now).min(ctx.now);
    // A larger timeline limit than the room was sent with: the client wants more history
    // (opening a room it saw in the list), so the timeline starts over.
    let expanded = previous.is_some_and(|p| p.config.timeline_limit < config.timeline_limit);
    let since = previous.filter(|_| !expanded).map(|p| p.upto.min(upto));
    let window = timeline_window(
        rooms,
        record,
        ctx.user_id,
        access,
        ctx.ignored,
        Span {
            since,
            upto,
            limit: config.timeline_limit,
        },
        |_| true,
    )?;
    // The state the user may read: the current state, the state at their departure, or (an
    // invite rejected, a knock withdrawn) only their own membership.
    let view = match access {
        Access::Joined | Access::WorldReadable => StateView::Current(record.sid),
        Access::Departed { .. } => {
            let rows = rooms.full_state_at(window.end_head)?;
            StateView::At(
                rows.into_iter()
                    .map(|(k, key, sid)| ((k, key), sid))
                    .collect(),
            )
        }
        Access::Invited | Access::Knocked | Access::None => StateView::At(HashMap::from([(
            ("m.room.member".to_owned(), ctx.user_id.to_string()),
            room.member_sid,
        )])),
    };

    // Required state: all of it for a room new to the connection, else what changed since
    // and what the client newly asks for.
    let selected = select_state(rooms, &view, &config.required_state)?;
    let newly_required: Vec<(String, String)> = match previous {
        Some(p) => config
            .required_state
            .iter()
            .filter(|pair| !p.config.required_state.contains(pair))
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    let newly = if newly_required.is_empty() {
        BTreeSet::new()
    } else {
        select_state(rooms, &view, &newly_required)?
    };
    let mut state_sids: Vec<u64> = selected
        .iter()
        .filter(|row| {
            previous.is_none_or(|p| row.2 > p.upto && row.2 <= upto) || newly.contains(*row)
        })
        .map(|row| row.2)
        .collect();

    // `$LAZY` members: the timeline's senders, each once per connection.
    let lazy = config
        .required_state
        .iter()
        .any(|(kind, key)| kind == "m.room.member" && key == LAZY);
    let all_members = config
        .required_state
        .iter()
        .any(|(kind, key)| (kind == "m.room.member" || kind == WILDCARD) && key == WILDCARD);
    if lazy && !all_members {
        let senders: BTreeSet<&str> = window
            .events
            .iter()
            .map(|e| e.meta.sender.as_str())
            .collect();
        for sender in senders {
            let Some(sid) = view.get(rooms, "m.room.member", sender)? else {
                continue;
            };
            let delivered = ctx.acked_seq.is_some_and(|acked| {
                ctx.lazy_members.delivered(
                    ctx.user_id.as_str(),
                    ctx.lazy_key,
                    record.sid,
                    sender,
                    sid,
                    acked,
                )
            });
            if !delivered {
                state_sids.push(sid);
                ctx.lazy_members.record(
                    ctx.user_id.as_str(),
                    ctx.lazy_key,
                    record.sid,
                    sender,
                    sid,
                    ctx.seq,
                );
            }
        }
        for event in window
            .events
            .iter()
            .filter(|e| e.meta.kind == "m.room.member")
        {
            if let Some(member) = event.meta.state_key.as_deref() {
                ctx.lazy_members.record(
                    ctx.user_id.as_str(),
                    ctx.lazy_key,
                    record.sid,
                    member,
                    event.sid,
                    ctx.seq,
                );
            }
        }
    }
    state_sids.sort_unstable();
    state_sids.dedup();

    let counts = if joined {
        let counts = ctx
            .notifications
            .room_counts(ctx.user_id, &room.room_id)?
            .total();
        (counts.notifications, counts.highlights)
    } else {
        (0, 0)
    };
    let sent = RoomSent {
        upto: ctx.now,
        config: config.clone(),
        counts,
        joined,
    };
    let changed = previous.is_none()
        || expanded
        || !window.events.is_empty()
        || !state_sids.is_empty()
        || previous.is_some_and(|p| p.counts != counts);
    if !changed {
        return Ok((None, sent));
    }

    let viewer = Some(Viewer {
        user_id: ctx.user_id,
        device_id: Some(ctx.device_id),
    });
    let mut body = Map::new();
    if previous.is_none() {
        body.insert("initial".into(), json!(true));
    }
    if expanded {
        // What Synapse sends when a raised limit restarts the timeline (clients rely on it).
        body.insert("unstable_expanded_timeline".into(), json!(true));
    }
    let reads_state = matches!(
        access,
        Access::Joined | Access::WorldReadable | Access::Departed { .. }
    );
    room_fields(ctx, room, record, &view, reads_state, &mut body)?;
    let mut required_state = Vec::with_capacity(state_sids.len());
    for sid in state_sids {
        if let Some(event) = rooms.event_by_sid(sid)? {
            required_state.push(ctx.format.event(rooms, &event, viewer, false)?);
        }
    }
    if !required_state.is_empty() {
        body.insert("required_state".into(), Value::Array(required_state));
    }
    let live = |e: &&Arc<StoredEvent>| previous.is_some_and(|p| e.sid > p.upto);
    let num_live = window.events.iter().filter(live).count();
    let timeline: Vec<Value> = window
        .events
        .iter()
        .map(|e| ctx.format.event(rooms, e, viewer, true))
        .collect::<Result<_>>()?;
    body.insert("timeline".into(), Value::Array(timeline));
    body.insert("prev_batch".into(), json!(window.prev_batch));
    body.insert("limited".into(), json!(window.limited));
    body.insert("num_live".into(), json!(num_live));
    body.insert("notification_count".into(), json!(counts.0));
    body.insert("highlight_count".into(), json!(counts.1));
    Ok((Some(Value::Object(body)), sent))
}

/// Name, avatar, heroes, member counts, bump stamp and DM flag of a room with state here
/// (members and heroes only when the user may read the room's state: `reads_state`).
fn room_fields(
    ctx: &RoomCtx<'_>,
    room: &Candidate,
    record: &RoomRecord,
    view: &StateView,
    reads_state: bool,
    body: &mut Map<String, Value>,
) -> Result<()> {
    let rooms = ctx.rooms;
    if let Some(name) = view
        .content(rooms, "m.room.name")?
        .and_then(|c| c["name"].as_str().map(str::to_owned))
        .filter(|n| !n.is_empty())
    {
        body.insert("name".into(), json!(name));
    }
    if let Some(content) = view.content(rooms, "m.room.avatar")? {
        // An avatar event without a URL removed the avatar: `null` tells the client so.
        body.insert(
            "avatar".into(),
            content.get("url").cloned().unwrap_or(Value::Null),
        );
    }
    let members = match reads_state {
        true => Some(rooms.member_summary(record)?),
        false => None,
    };
    if let Some(members) = members.as_ref() {
        if !rooms.is_partial_state(&room.room_id) {
            body.insert("joined_count".into(), json!(members.joined));
            body.insert("invited_count".into(), json!(members.invited));
        }
    }
    let heroes_wanted = members.is_some() && needs_heroes(rooms, record.sid)?;
    if let Some(members) = members.as_ref().filter(|_| heroes_wanted) {
        let mut heroes = Vec::new();
        for hero in members.heroes(ctx.user_id.as_str(), HEROES) {
            let mut entry = json!({"user_id": hero});
            if let Some(sid) = view.get(rooms, "m.room.member", hero)? {
                if let Some(content) = rooms
                    .event_by_sid(sid)?
                    .and_then(|e| e.pdu.content_as::<Value>())
                {
                    for field in ["displayname", "avatar_url"] {
                        if let Some(value) = content.get(field).filter(|v| v.is_string()) {
                            entry[field] = value.clone();
                        }
                    }
                }
            }
            heroes.push(entry);
        }
        if !heroes.is_empty() {
            body.insert("heroes".into(), json!(heroes));
        }
    }
    body.insert("bump_stamp".into(), json!(room.bump));
    if room.is_dm {
        body.insert("is_dm".into(), json!(true));
    }
    Ok(())
}
