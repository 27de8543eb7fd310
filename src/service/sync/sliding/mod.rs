//! Simplified sliding sync (MSC4186, `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`):
//! the sync Element X and matrix-rust-sdk use.
//!
//! A request names lists (ranges over the user's rooms, newest activity first, filtered) and
//! room subscriptions, with the timeline limit and `required_state` each room is served with,
//! and extensions (to-device, e2ee, account data, receipts, typing). The server keeps, per
//! connection, what it sent as of each position it handed out ([`connections`]), so a
//! response carries only what changed since the client's position: a room is sent again
//! only when its timeline, required state or unread counts changed, or the client asks for
//! more of it (more state, a longer timeline).
//!
//! Room data is the /sync implementation's: the same timeline window (history visibility,
//! ignored users, `prev_batch`, `limited`), lazy-loaded member tracking ([`LazyMembers`],
//! per connection), unread counts, stripped state of invites and event formats.
//! Positions live in memory only: after a restart the client gets `M_UNKNOWN_POS` and starts
//! its connection again.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Instant,
};

use ruma::{
    api::client::{
        filter::FilterDefinition,
        sync::sync_events::v5::{self, request::RoomDetails},
    },
    OwnedRoomId, UserId,
};
use serde_json::{json, Map, Value};

pub mod connections;
mod extensions;
mod lists;
mod room;

pub use connections::Connections;
use connections::{Resume, RoomConfig, Snapshot, MAX_ROOMS};

use super::{format::EventFormat, room::MAX_TIMELINE_LIMIT, Sources};
use crate::error::{Error, Result};

/// One sliding sync request.
pub struct SlidingRequest<'a> {
    pub user_id: &'a UserId,
    pub device_id: &'a str,
    /// The connection id (`""` when the client sends none).
    pub conn_id: &'a str,
    pub body: &'a v5::Request,
}

impl SlidingRequest<'_> {
    /// The key lazy-loaded members of this connection are tracked under ([`LazyMembers`]
    /// keys by device; a connection is a device's session of its own).
    fn lazy_key(&self) -> String {
        format!("{}\u{0}sliding\u{0}{}", self.device_id, self.conn_id)
    }
}

/// A pass's response body, whether it carries anything new, when a typing notification it
/// follows lapses, and what the connection holds once the client has it.
pub struct SlidingResult {
    pub body: Value,
    pub has_updates: bool,
    pub wake_at: Option<Instant>,
    pub snapshot: Snapshot,
}

/// `M_UNKNOWN_POS`: the client must start the connection again without a position.
pub fn unknown_pos() -> Error {
    Error::new(
        http::StatusCode::BAD_REQUEST,
        "M_UNKNOWN_POS",
        "Unknown position; start the connection again",
    )
}

/// Longest `required_state` list and most lists or subscriptions one request may name.
const MAX_REQUIRED_STATE: usize = 256;
const MAX_LISTS: usize = 64;
const MAX_SUBSCRIPTIONS: usize = 1_000;

/// Checks a request's sizes before any work (bad input is a Matrix error, never a panic).
pub fn validate(body: &v5::Request) -> Result<()> {
    if body.lists.len() > MAX_LISTS {
        return Err(Error::invalid_param("Too many lists"));
    }
    if body.room_subscriptions.len() > MAX_SUBSCRIPTIONS {
        return Err(Error::invalid_param("Too many room subscriptions"));
    }
    let details = body
        .lists
        .values()
        .map(|l| (&l.room_details.required_state, l.ranges.len()))
        .chain(
            body.room_subscriptions
                .values()
                .map(|s| (&s.required_state, 0)),
        );
    for (required_state, ranges) in details {
        if required_state.len() > MAX_REQUIRED_STATE || ranges > MAX_LISTS {
            return Err(Error::invalid_param("List or subscription too large"));
        }
    }
    Ok(())
}

/// Merges one list's or subscription's settings into a room's configuration.
fn merge(
    config: &mut RoomConfig,
    user_id: &UserId,
    required: &[(ruma::events::StateEventType, String)],
    limit: u64,
) {
    for (kind, key) in required {
        let key = if key == "$ME" {
            user_id.to_string()
        } else {
            key.clone()
        };
        config.required_state.push((kind.to_string(), key));
    }
    let limit = usize::try_from(limit)
        .unwrap_or(MAX_TIMELINE_LIMIT)
        .min(MAX_TIMELINE_LIMIT);
    config.timeline_limit = config.timeline_limit.max(limit);
}

/// One pass: the response to `request` continuing from `resume`, as of stream position `now`.
pub async fn sliding_sync_once(
    sources: &Sources<'_>,
    request: &SlidingRequest<'_>,
    resume: &Resume,
    now: u64,
) -> Result<SlidingResult> {
    let user_id = request.user_id;
    let body = request.body;
    let rooms = sources.rooms;
    let previous = resume.previous.as_ref().map(|(_, s)| s.as_ref());
    let lazy_key = request.lazy_key();
    if previous.is_none() {
        // A new connection holds none of the member events earlier ones were sent.
        sources.lazy_members.reset(user_id.as_str(), &lazy_key);
    }
    let ignored = sources.account_data.ignored_users_of(user_id)?;
    let typing_now = sources.typing.current_serial();
    // A connection without lists or subscriptions (an encryption-only one) needs no rooms.
    let candidates = if body.lists.is_empty() && body.room_subscriptions.is_empty() {
        Vec::new()
    } else {
        lists::candidates(
            rooms,
            sources.account_data,
            user_id,
            previous,
            &ignored,
            now,
        )?
    };

    // Each list's count and rooms; each room's configuration over all that include it.
    let mut configs: HashMap<usize, RoomConfig> = HashMap::new();
    let mut lists_body = Map::new();
    let mut list_counts = std::collections::BTreeMap::new();
    let mut list_rooms: HashMap<String, Vec<OwnedRoomId>> = HashMap::new();
    for (name, list) in &body.lists {
        let (count, covered) = lists::window(rooms, list, &candidates)?;
        lists_body.insert(name.clone(), json!({ "count": count }));
        list_counts.insert(name.clone(), count as u64);
        let RoomDetails {
            required_state,
            timeline_limit,
            ..
        } = &list.room_details;
        for &i in &covered {
            merge(
                configs.entry(i).or_default(),
                user_id,
                required_state,
                u64::from(*timeline_limit),
            );
        }
        list_rooms.insert(
            name.clone(),
            covered
                .iter()
                .map(|&i| candidates[i].room_id.clone())
                .collect(),
        );
    }
    let index: HashMap<&OwnedRoomId, usize> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| (&c.room_id, i))
        .collect();
    let mut subscribed = Vec::new();
    for (room_id, subscription) in &body.room_subscriptions {
        // Rooms the user has no membership in are not served (nothing to show of them).
        let Some(&i) = index.get(room_id) else {
            continue;
        };
        subscribed.push(room_id.clone());
        merge(
            configs.entry(i).or_default(),
            user_id,
            &subscription.required_state,
            u64::from(subscription.timeline_limit),
        );
    }

    // The rooms, in list order; identical configurations share one allocation.
    let format = EventFormat::of(&FilterDefinition::default());
    let ctx = room::RoomCtx {
        rooms,
        notifications: sources.notifications,
        lazy_members: sources.lazy_members,
        user_id,
        device_id: request.device_id,
        lazy_key: &lazy_key,
        ignored: &ignored,
        now,
        seq: resume.seq,
        acked_seq: resume.previous.as_ref().map(|(seq, _)| *seq),
        format: &format,
    };
    let mut order: Vec<usize> = configs.keys().copied().collect();
    order.sort_unstable();
    let mut shared: Vec<Arc<RoomConfig>> = Vec::new();
    let mut snapshot = Snapshot {
        stream: now,
        typing: typing_now,
        rooms: previous.map(|p| p.rooms.clone()).unwrap_or_default(),
        lists: list_counts,
    };
    let mut rooms_body = Map::new();
    let mut room_upto = HashMap::new();
    let mut all = HashSet::new();
    for i in order {
        let room = &candidates[i];
        let mut config = configs.remove(&i).unwrap_or_default();
        config.required_state.sort();
        config.required_state.dedup();
        let config = match shared.iter().find(|c| ***c == config) {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(config);
                shared.push(c.clone());
                c
            }
        };
        // A room joined since it was sent (an invite accepted) is new to the client.
        let before = previous
            .and_then(|p| p.rooms.get(&room.room_id))
            .filter(|p| p.joined || room.membership != "join");
        if let Some(before) = before {
            room_upto.insert(room.room_id.clone(), before.upto);
        }
        all.insert(room.room_id.clone());
        let (section, sent) = room::room_data(&ctx, room, &config, before)?;
        if let Some(section) = section {
            rooms_body.insert(room.room_id.to_string(), section);
        }
        snapshot.rooms.insert(room.room_id.clone(), sent);
    }
    if snapshot.rooms.len() > MAX_ROOMS {
        snapshot.rooms.retain(|room, _| all.contains(room));
    }

    let mut typing_rooms = Vec::new();
    let scope = extensions::Scope {
        lists: &list_rooms,
        subscriptions: &subscribed,
        all: &all,
        room_upto: &room_upto,
    };
    let (extensions_body, extension_news) = extensions::extensions(
        sources,
        user_id,
        request.device_id,
        &body.extensions,
        &scope,
        previous,
        &ignored,
        now,
        &mut typing_rooms,
    )
    .await?;

    let lists_changed = previous.is_none_or(|p| p.lists != snapshot.lists);
    let has_updates = !rooms_body.is_empty() || lists_changed || extension_news;
    let mut out = Map::new();
    out.insert("pos".into(), json!(resume.pos()));
    if let Some(txn_id) = &body.txn_id {
        out.insert("txn_id".into(), json!(txn_id));
    }
    out.insert("lists".into(), Value::Object(lists_body));
    out.insert("rooms".into(), Value::Object(rooms_body));
    out.insert("extensions".into(), extensions_body);
    let wake_at = sources
        .typing
        .earliest_deadline(typing_rooms.iter().map(|r| r.as_ref()));
    Ok(SlidingResult {
        body: Value::Object(out),
        has_updates,
        wake_at,
        snapshot,
    })
}
