//! Read authorization: what a user may see of a room. Every read path (`/state`, `/members`,
//! `/joined_members`, `/context`, `/messages`, `/event`, relations, threads, receipts, sync)
//! asks [`Rooms::read_access`] first, then checks each event with [`Reader::may_see`], which
//! adds the spec's per-event history visibility (`visibility.rs`) on top.
//!
//! The rules (spec: client-server API, "Room history visibility", "Getting events for a room"):
//! - joined now: the current state, and history as its visibility allows;
//! - not joined and the room is `world_readable`: the same (peeking);
//! - joined once and no longer (left, kicked, banned): the state as it was when their last
//!   membership ended, and history up to that point only;
//! - invited or knocking, never joined: the stripped state of the invite or knock only (served
//!   by `/sync`), and their own membership events;
//! - anything else (never a member, a rejected invite, a pre-emptive ban, a forgotten room):
//!   nothing, exactly like a room the user never heard of.

use std::collections::{HashMap, HashSet};

use ruma::{RoomId, UserId};
use serde_json::Value;

use super::{EventMeta, EventMetaTable, Rooms, StoredEvent, SNAPSHOT_EVERY};
use crate::error::{Error, Result};

/// Bound on the states one reader caches (a request's scan is bounded too; this caps memory).
const MAX_CACHED_RUNS: usize = 8192;

/// What a user may read of one room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Joined now: the current state and the history its visibility allows.
    Joined,
    /// Not joined, but the room's history is `world_readable`: read like a member.
    WorldReadable,
    /// Joined once, not any more: state and history up to `until`, the member event that ended
    /// the user's last join (their leave, kick or ban).
    Departed { until: u64 },
    /// Invited and never joined: only the stripped state (in `/sync`) and their own member
    /// events.
    Invited,
    /// Knocking and never joined: as `Invited`.
    Knocked,
    /// Nothing at all.
    None,
}

impl Access {
    /// The head of the state chain the user may read (`Some(None)` is a room without state
    /// events, which cannot happen for a created room), or `None` when they may not read the
    /// room's state at all.
    pub fn state_head(&self, current: Option<u64>) -> Option<Option<u64>> {
        match self {
            Access::Joined | Access::WorldReadable => Some(current),
            // The departure is a state event: the state at it includes it.
            Access::Departed { until } => Some(Some(*until)),
            Access::Invited | Access::Knocked | Access::None => None,
        }
    }

    /// The state head, or 403.
    pub fn require_state(&self, current: Option<u64>) -> Result<Option<u64>> {
        self.state_head(current)
            .ok_or_else(|| Error::forbidden("You are not allowed to read this room"))
    }

    /// Whether the user may read the room's history at all (`/messages`, threads): 403 if not.
    pub fn require_history(&self) -> Result<()> {
        match self {
            Access::Joined | Access::WorldReadable | Access::Departed { .. } => Ok(()),
            _ => Err(Error::forbidden("You are not allowed to read this room")),
        }
    }

    /// The newest stream position the user may read, if bounded.
    pub fn until(&self) -> Option<u64> {
        match self {
            Access::Departed { until } => Some(*until),
            _ => None,
        }
    }
}

impl Rooms {
    /// What `user_id` may read of `room_id` now. Unknown rooms are `Access::None`.
    pub fn read_access(&self, room_id: &RoomId, user_id: &UserId) -> Result<Access> {
        let Some(room) = self.room(room_id)? else {
            return Ok(Access::None);
        };
        // A forgotten room is as if the user had never been in it.
        let membership = match self.membership(room_id, user_id)? {
            Some(_) if self.is_forgotten(room_id, user_id)? => None,
            m => m,
        };
        use ruma::events::room::member::MembershipState as M;
        if membership == Some(M::Join) {
            return Ok(Access::Joined);
        }
        if self.is_world_readable(room.sid)? {
            return Ok(Access::WorldReadable);
        }
        if membership.is_none() {
            return Ok(Access::None);
        }
        if let Some(until) = self.last_departure(room.sid, user_id)? {
            return Ok(Access::Departed { until });
        }
        Ok(match membership {
            Some(M::Invite) => Access::Invited,
            Some(M::Knock) => Access::Knocked,
            _ => Access::None,
        })
    }

    /// The member event that ended the user's most recent join, if they were ever joined (and
    /// are not now).
    fn last_departure(&self, room_sid: u64, user_id: &UserId) -> Result<Option<u64>> {
        Ok(self
            .last_join(room_sid, user_id)?
            .and_then(|(_, departure)| departure))
    }

    /// A reader of one room for one request: the user's access, and a visibility cache.
    pub fn reader<'a>(&'a self, room_id: &RoomId, user_id: &'a UserId) -> Result<Reader<'a>> {
        let access = self.read_access(room_id, user_id)?;
        Ok(Reader::new(self, user_id, access))
    }
}

pub(super) fn membership_of(event: &StoredEvent) -> Option<String> {
    event.pdu.content_as::<Value>().and_then(|c| {
        c.get("membership")
            .and_then(Value::as_str)
            .map(str::to_owned)
    })
}

/// Per-request reads of one room by one user. Events that share a state (a "state run": the
/// messages between two state events) share the history visibility and the user's membership
/// at them, so these are looked up once per run, not once per event.
pub struct Reader<'a> {
    rooms: &'a Rooms,
    user_id: &'a UserId,
    pub access: Access,
    /// State head → (history visibility, the user's membership) at that state.
    runs: HashMap<Option<u64>, (String, Option<String>)>,
    /// The sid of the user's newest join event in the room (`Some(None)`: never joined).
    latest_join: Option<Option<u64>>,
    /// Senders whose non-state events the user does not want (`m.ignored_user_list`); set by
    /// the read paths that deliver a timeline ([`Reader::ignore`]).
    ignored: HashSet<String>,
}

impl<'a> Reader<'a> {
    pub fn new(rooms: &'a Rooms, user_id: &'a UserId, access: Access) -> Self {
        Self {
            rooms,
            user_id,
            access,
            runs: HashMap::new(),
            latest_join: None,
            ignored: HashSet::new(),
        }
    }

    /// From now on, leaves out non-state events sent by `ignored` users (spec: "Ignoring
    /// Users": the client no longer receives their events, state events excepted).
    pub fn ignore(&mut self, ignored: HashSet<String>) {
        self.ignored = ignored;
    }

    /// Whether the user may see the event: the room-level access, then the event's history
    /// visibility.
    pub fn may_see(&mut self, event: &StoredEvent) -> Result<bool> {
        self.may_see_meta(event.sid, &event.meta)
    }

    /// [`Reader::may_see`] from the event's metadata alone, so a scan need not load and parse
    /// the events the user may not see.
    pub fn may_see_meta(&mut self, sid: u64, meta: &EventMeta) -> Result<bool> {
        // Soft-failed remote events are stored for the room's graph, never for clients.
        if self.rooms.is_soft_failed(sid)? {
            return Ok(false);
        }
        // Outliers are not in the timeline; only those of the room's state are readable.
        if self.rooms.is_hidden_outlier(sid)? {
            return Ok(false);
        }
        let own_membership = meta.kind == "m.room.member"
            && meta.state_key.as_deref() == Some(self.user_id.as_str());
        match self.access {
            Access::None => return Ok(false),
            Access::Invited | Access::Knocked => return Ok(own_membership),
            Access::Departed { until } if sid > until => return Ok(false),
            _ => {}
        }
        if own_membership {
            return Ok(true);
        }
        if meta.state_key.is_none() && self.ignored.contains(&meta.sender) {
            return Ok(false);
        }
        // The state at an event: a state event includes itself (see `state::state_head`).
        let head = if meta.state_key.is_some() {
            Some(sid)
        } else {
            meta.state_link
        };
        if self.visible_in(head, sid, meta.room_sid)? {
            return Ok(true);
        }
        // Spec: a history visibility change is visible if the visibility before *or* after
        // it allows (the state before a state event is at its link).
        if meta.kind == "m.room.history_visibility" && meta.state_key.as_deref() == Some("") {
            return self.visible_in(meta.state_link, sid, meta.room_sid);
        }
        Ok(false)
    }

    /// The spec's visibility rule for the event `sid` in the state whose head is `head`.
    fn visible_in(&mut self, head: Option<u64>, sid: u64, room_sid: u64) -> Result<bool> {
        let (visibility, membership) = self.run_at(head)?;
        if let Some(decided) = super::visibility::decide(&visibility, membership.as_deref()) {
            return Ok(decided);
        }
        // `shared`: visible if the user joined at any point after the event.
        let latest_join = match self.latest_join {
            Some(latest) => latest,
            None => {
                let latest = self.rooms.latest_join(room_sid, self.user_id)?;
                self.latest_join = Some(latest);
                latest
            }
        };
        Ok(latest_join.is_some_and(|join| join > sid))
    }

    /// History visibility and the user's membership in the state whose newest state event is
    /// `head`. State events that change neither (a name, a topic, another user's membership)
    /// leave the answer as it was before them, so a walk down the state chain over such events
    /// ends at one lookup, and every state passed on the way is cached with its answer: a scan
    /// over a long run of state events costs one lookup per `SNAPSHOT_EVERY` of them.
    fn run_at(&mut self, head: Option<u64>) -> Result<(String, Option<String>)> {
        if let Some(run) = self.runs.get(&head) {
            return Ok(run.clone());
        }
        let mut passed = Vec::new();
        let mut cursor = head;
        for _ in 0..SNAPSHOT_EVERY {
            let Some(sid) = cursor else { break };
            if self.runs.contains_key(&cursor) {
                break;
            }
            let Some(meta) = self.rooms.store.get::<EventMetaTable>(&sid)? else {
                break;
            };
            let relevant = meta.kind == "m.room.history_visibility"
                || (meta.kind == "m.room.member"
                    && meta.state_key.as_deref() == Some(self.user_id.as_str()));
            if relevant {
                break;
            }
            passed.push(cursor);
            cursor = meta.state_link;
        }
        let run = match self.runs.get(&cursor) {
            Some(run) => run.clone(),
            None => (
                self.rooms.visibility_at_head(cursor)?,
                self.rooms.membership_at_head(cursor, self.user_id)?,
            ),
        };
        if self.runs.len() + passed.len() < MAX_CACHED_RUNS {
            for head in passed.into_iter().chain([cursor]) {
                self.runs.insert(head, run.clone());
            }
        }
        Ok(run)
    }

    /// The event if the user may see it, else 404 (not 403, so that existence does not leak).
    pub fn visible(&mut self, event: Option<StoredEvent>) -> Result<StoredEvent> {
        match event {
            Some(event) if self.may_see(&event)? => Ok(event),
            _ => Err(Error::not_found("Event not found")),
        }
    }
}
