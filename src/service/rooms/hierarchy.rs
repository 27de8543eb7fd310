//! Room summaries and the space hierarchy (spec: client-server API, spaces).
//!
//! A room's summary is read from its current state: a handful of point lookups plus one prefix
//! scan of `room_members` to count joined members, so O(members) per room.
//!
//! The hierarchy walk is depth-first (pre-order) from the root, following the
//! `m.space.child` events (with a non-empty `via`) of space-rooms in the spec's child order.
//! Only rooms the user may see or peek are returned; a room the user cannot see is neither
//! returned nor walked into. Every room is visited at most once, so loops end.
//!
//! A child room this server does not know is asked of the servers in its `via` list with the
//! federation `/hierarchy` ([`remote`]): at most [`remote::MAX_REMOTE_REQUESTS`] requests per
//! walk, each with a short time limit; the answer's room and its `children` summaries stand in
//! for local data (rooms known here always use the local data, as the spec asks), filtered for
//! the user by the same rule as local rooms, applied to the summary ([`remote`]).
//!
//! Pagination is an offset into the walk: each page walks again from the root and skips the
//! rooms already returned. That costs O(rooms before the page end) per page, so the walk is
//! bounded to `MAX_WALK` rooms; on a small server a space tree is far smaller. A tree that
//! changes between pages may shift rooms between pages (the walk is not a snapshot).

use std::collections::HashSet;

pub mod remote;

use ruma::{
    events::{room::member::MembershipState, StateEventType},
    room::{AllowRule, JoinRule, JoinRuleSummary, RoomSummary, RoomType},
    EventEncryptionAlgorithm, OwnedMxcUri, OwnedRoomAliasId, OwnedRoomId, OwnedServerName, RoomId,
    UInt, UserId,
};

use self::remote::{RemoteSpace, RemoteSpaces, Remotes};

use serde_json::Value;

use super::{RoomRecord, Rooms, StoredEvent};
use crate::error::{Error, Result};

/// The most rooms one hierarchy request visits (including those skipped by the offset).
pub const MAX_WALK: usize = 2000;
/// Default and largest `max_depth`.
pub const MAX_DEPTH: u64 = 10;
/// Default page size.
pub const DEFAULT_LIMIT: usize = 20;
/// Largest page size.
pub const MAX_LIMIT: usize = 100;

/// Longest valid `order` of an `m.space.child` event, in characters.
const MAX_ORDER_CHARS: usize = 50;

/// One room of a hierarchy page.
#[derive(Debug, Clone)]
pub struct HierarchyRoom {
    pub summary: RoomSummary,
    /// The room's `m.space.child` events as stripped state events with `origin_server_ts`
    /// (empty unless the room is a space).
    pub children_state: Vec<Value>,
}

/// A page of the hierarchy and the offset of the next page, if there is one.
#[derive(Debug, Clone)]
pub struct HierarchyPage {
    pub rooms: Vec<HierarchyRoom>,
    pub next_offset: Option<usize>,
}

/// What the walk is asked for.
#[derive(Debug, Clone, Copy)]
pub struct HierarchyQuery {
    pub suggested_only: bool,
    /// Rooms at this depth (root: 0) are returned, their children are not.
    pub max_depth: u64,
    /// Rooms of the walk to skip (rooms returned by earlier pages).
    pub offset: usize,
    pub limit: usize,
}

/// A child link of a space: the child room, its (possibly absent) ordering key and the
/// servers to ask about it.
struct Child {
    room_id: OwnedRoomId,
    order: Option<String>,
    ts: u64,
    via: Vec<OwnedServerName>,
}

impl Child {
    /// The child an `m.space.child` event (state key, content, timestamp) links, if it is a
    /// valid link (`via` a non-empty list of strings) that `suggested_only` keeps.
    fn from_event(state_key: &str, content: &Value, ts: u64, suggested_only: bool) -> Option<Self> {
        let via = content.get("via").and_then(Value::as_array)?;
        if via.is_empty() || !via.iter().all(Value::is_string) {
            return None;
        }
        let room_id = RoomId::parse(state_key).ok()?;
        if suggested_only && content.get("suggested") != Some(&Value::Bool(true)) {
            return None;
        }
        let order = content
            .get("order")
            .and_then(Value::as_str)
            .filter(|o| {
                o.chars().count() <= MAX_ORDER_CHARS
                    && o.chars().all(|c| ('\x20'..='\x7e').contains(&c))
            })
            .map(str::to_owned);
        let via = via
            .iter()
            .filter_map(|v| OwnedServerName::try_from(v.as_str()?).ok())
            .collect();
        Some(Child {
            room_id,
            order,
            ts,
            via,
        })
    }
}

/// Sorts children in the spec's order: valid `order` keys first (by code point), then by the
/// child event's timestamp, then room id.
fn sort_children(children: &mut [Child]) {
    children.sort_by(|a, b| {
        let order = match (&a.order, &b.order) {
            (Some(x), Some(y)) => x.cmp(y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        order
            .then(a.ts.cmp(&b.ts))
            .then_with(|| a.room_id.cmp(&b.room_id))
    });
}

fn content(event: &StoredEvent) -> Value {
    event.pdu.content_as::<Value>().unwrap_or(Value::Null)
}

fn string_field(event: Option<StoredEvent>, field: &str) -> Option<String> {
    event.and_then(|e| content(&e).get(field)?.as_str().map(str::to_owned))
}

impl Rooms {
    /// Rooms this server knows, in room-id order, starting after `after` (`None`: from the
    /// first), at most `limit`. For server-wide scans (the user directory) that page through
    /// every room.
    pub fn known_rooms(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(OwnedRoomId, RoomRecord)>> {
        let from = after.map(str::to_owned);
        let rows =
            self.store
                .range::<super::RoomsTable>(from.as_ref(), false, limit.saturating_add(1))?;
        Ok(rows
            .into_iter()
            .filter(|(id, _)| Some(id) != from.as_ref())
            .take(limit)
            .filter_map(|(id, record)| Some((RoomId::parse(id).ok()?, record)))
            .collect())
    }

    fn current_content(&self, room_sid: u64, kind: StateEventType) -> Result<Option<Value>> {
        Ok(self.state_event(room_sid, &kind, "")?.map(|e| content(&e)))
    }

    /// The room's join rule from its current state (`invite` when unset, as the auth rules
    /// treat it).
    pub fn join_rule(&self, room_sid: u64) -> Result<JoinRule> {
        let rule = self
            .current_content(room_sid, StateEventType::RoomJoinRules)?
            .and_then(|c| serde_json::from_value::<JoinRule>(c).ok());
        Ok(rule.unwrap_or(JoinRule::Invite))
    }

    /// Whether the room's current history visibility is `world_readable`.
    pub fn is_world_readable(&self, room_sid: u64) -> Result<bool> {
        Ok(self
            .current_content(room_sid, StateEventType::RoomHistoryVisibility)?
            .is_some_and(|c| c.get("history_visibility") == Some(&"world_readable".into())))
    }

    /// How many users are joined to the room now.
    pub fn joined_count(&self, room_sid: u64) -> Result<u64> {
        let count = self
            .members(room_sid)?
            .iter()
            .filter(|(_, m)| m == "join")
            .count();
        Ok(count as u64)
    }

    /// The `type` of the room's create event (`m.space` for spaces).
    pub fn room_type(&self, room_sid: u64) -> Result<Option<RoomType>> {
        let create = self.state_event(room_sid, &StateEventType::RoomCreate, "")?;
        Ok(string_field(create, "type").map(RoomType::from))
    }

    /// Whether the user may see or peek the room, per the hierarchy and room summary
    /// endpoints: joined or invited, the room is public, knockable, restricted to a room the
    /// user is joined to, or world-readable. Banned users may not. `None` is an
    /// unauthenticated requester, who may see public, knockable and world-readable rooms.
    pub fn can_peek(
        &self,
        user_id: Option<&UserId>,
        room_id: &RoomId,
        room: &RoomRecord,
    ) -> Result<bool> {
        if let Some(user_id) = user_id {
            match self.membership(room_id, user_id)? {
                Some(MembershipState::Join | MembershipState::Invite) => return Ok(true),
                Some(MembershipState::Ban) => return Ok(false),
                _ => {}
            }
        }
        let rules = self.room_version(room)?.rules();
        let (knocking, restricted, knock_restricted) = rules.map_or((false, false, false), |r| {
            (
                r.authorization.knocking,
                r.authorization.restricted_join_rule,
                r.authorization.knock_restricted_join_rule,
            )
        });
        let joined_to_allowed = |allow: &[AllowRule]| -> Result<bool> {
            let Some(user_id) = user_id else {
                return Ok(false);
            };
            for rule in allow {
                if let AllowRule::RoomMembership(m) = rule {
                    if self.membership(&m.room_id, user_id)? == Some(MembershipState::Join) {
                        return Ok(true);
                    }
                }
            }
            Ok(false)
        };
        let by_rule = match self.join_rule(room.sid)? {
            JoinRule::Public => true,
            JoinRule::Knock => knocking,
            JoinRule::KnockRestricted(_) if knock_restricted => true,
            JoinRule::Restricted(r) if restricted => joined_to_allowed(&r.allow)?,
            _ => false,
        };
        Ok(by_rule || self.is_world_readable(room.sid)?)
    }

    /// The room's summary (the fields of the spec's `RoomSummary`) from its current state.
    pub fn summary(&self, room_id: &RoomId, room: &RoomRecord) -> Result<RoomSummary> {
        let sid = room.sid;
        let join_rule = match self.join_rule(sid)? {
            // A rule this server does not know cannot be described to clients; like an
            // invite-only room, it cannot be joined without an invite.
            JoinRule::_Custom(_) => JoinRuleSummary::Invite,
            rule => JoinRuleSummary::from(rule),
        };
        let guest_can_join = self
            .current_content(sid, StateEventType::RoomGuestAccess)?
            .is_some_and(|c| c.get("guest_access") == Some(&"can_join".into()));
        let joined = UInt::try_from(self.joined_count(sid)?).unwrap_or(UInt::MAX);
        let mut summary = RoomSummary::new(
            room_id.to_owned(),
            join_rule,
            guest_can_join,
            joined,
            self.is_world_readable(sid)?,
        );
        let field = |kind: StateEventType, name: &str| -> Result<Option<String>> {
            Ok(string_field(self.state_event(sid, &kind, "")?, name))
        };
        summary.name = field(StateEventType::RoomName, "name")?.filter(|n| !n.is_empty());
        summary.topic = field(StateEventType::RoomTopic, "topic")?.filter(|t| !t.is_empty());
        summary.canonical_alias = field(StateEventType::RoomCanonicalAlias, "alias")?
            .and_then(|a| OwnedRoomAliasId::try_from(a).ok());
        summary.avatar_url = field(StateEventType::RoomAvatar, "url")?
            .map(OwnedMxcUri::from)
            .filter(|u| u.is_valid());
        summary.encryption =
            field(StateEventType::RoomEncryption, "algorithm")?.map(EventEncryptionAlgorithm::from);
        summary.room_type = self.room_type(sid)?;
        summary.room_version = self.room_version(room).ok();
        Ok(summary)
    }

    /// The space's valid children (`via` a non-empty list), in the spec's order: valid
    /// `order` keys first (by code point), then by the child event's timestamp, then room id.
    fn space_children(
        &self,
        room_sid: u64,
        suggested_only: bool,
    ) -> Result<(Vec<Child>, Vec<Value>)> {
        let mut children = Vec::new();
        let mut stripped = Vec::new();
        for event in self.current_state(room_sid, Some(&StateEventType::SpaceChild))? {
            let Some(state_key) = event.meta.state_key.as_deref() else {
                continue;
            };
            let Some(child) = Child::from_event(
                state_key,
                &content(&event),
                event.meta.origin_server_ts,
                suggested_only,
            ) else {
                continue;
            };
            let mut value = self.stripped_event(&event);
            value["origin_server_ts"] = event.meta.origin_server_ts.into();
            stripped.push(value);
            children.push(child);
        }
        sort_children(&mut children);
        Ok((children, stripped))
    }

    /// One page of the space hierarchy below `root` as `user_id` may see it, asking `remote`
    /// about child rooms this server does not know. 403 when the root is unknown or the user
    /// may not see it (the spec does not tell the two apart).
    pub async fn hierarchy(
        &self,
        user_id: &UserId,
        root: &RoomId,
        query: HierarchyQuery,
        remote: &dyn RemoteSpaces,
    ) -> Result<HierarchyPage> {
        let root_record = match self.room(root)? {
            Some(record) if self.can_peek(Some(user_id), root, &record)? => record,
            _ => return Err(Error::forbidden("You are not allowed to view this room")),
        };
        let limit = query.limit.max(1);
        let mut stack = vec![(root.to_owned(), Vec::new(), 0u64)];
        let mut visited = HashSet::new();
        let mut remotes = Remotes::new(remote, self.server_name().to_owned(), query.suggested_only);
        let mut position = 0usize;
        let mut rooms = Vec::new();
        let mut next_offset = None;
        let mut root_record = Some(root_record);
        while let Some((room_id, via, depth)) = stack.pop() {
            if !visited.insert(room_id.clone()) {
                continue;
            }
            if visited.len() > MAX_WALK {
                log::info!("hierarchy of {root} stopped after {MAX_WALK} rooms");
                break;
            }
            let record = match root_record.take() {
                Some(record) => Some(record),
                None => self.room(&room_id)?,
            };
            let (summary, children, children_state) = match record {
                Some(record) => {
                    if depth > 0 && !self.can_peek(Some(user_id), &room_id, &record)? {
                        continue;
                    }
                    let is_space = self.room_type(record.sid)? == Some(RoomType::Space);
                    let (children, children_state) = if is_space {
                        self.space_children(record.sid, query.suggested_only)?
                    } else {
                        (Vec::new(), Vec::new())
                    };
                    (self.summary(&room_id, &record)?, children, children_state)
                }
                // Unknown here: a remote room, described by a server of its `via` list.
                None => match remotes.describe(&room_id, &via).await {
                    Some(space) if self.can_peek_summary(user_id, &space.summary)? => {
                        let children = remote_children(&space, query.suggested_only);
                        (space.summary, children, space.children_state)
                    }
                    _ => continue,
                },
            };
            if rooms.len() == limit {
                // One more visible room exists after this page.
                next_offset = Some(position);
                break;
            }
            if position >= query.offset {
                rooms.push(HierarchyRoom {
                    summary,
                    children_state,
                });
            }
            position += 1;
            if depth < query.max_depth {
                for child in children.into_iter().rev() {
                    if !visited.contains(&child.room_id) {
                        stack.push((child.room_id, child.via, depth + 1));
                    }
                }
            }
        }
        Ok(HierarchyPage { rooms, next_offset })
    }
}

/// The children a remote space lists in its `children_state`, in the spec's order.
fn remote_children(space: &RemoteSpace, suggested_only: bool) -> Vec<Child> {
    let mut children: Vec<Child> = space
        .children_state
        .iter()
        .filter(|event| event.get("type").and_then(Value::as_str) == Some("m.space.child"))
        .filter_map(|event| {
            let state_key = event.get("state_key")?.as_str()?;
            let ts = event
                .get("origin_server_ts")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            Child::from_event(state_key, event.get("content")?, ts, suggested_only)
        })
        .collect();
    sort_children(&mut children);
    children
}
