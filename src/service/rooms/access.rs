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
//!
//! Other servers read through the same [`Reader`] ([`Rooms::server_reader`], server-server
//! API: backfill, events, state): a server reads a room as the best placed of its users would.
//! It may see an event if the history visibility at that event lets at least one of its users
//! see it (`world_readable`; one of them joined at it; `invited` and one of them invited at it;
//! `shared` and one of them joined at any point after it), and its users' own member events.
//! Its room-level access is likewise the best of its users' (joined, then world-readable, then
//! departed up to the latest departure of any of them, then invited). A server denied by the
//! room's server ACL reads nothing. Soft-failed events are served to servers (the spec: "A soft
//! failed event should be returned in response to federation requests where appropriate"),
//! never to clients; rejected events are never stored with the room's events, so no reader
//! reaches them.

use std::collections::{HashMap, HashSet};

use ruma::{OwnedServerName, OwnedUserId, RoomId, ServerName, UserId};

use super::{
    EventMeta, EventMetaTable, RoomRecord, Rooms, StateSnapshots, StoredEvent, SNAPSHOT_EVERY,
};
use crate::error::{Error, Result};

/// Bound on the states one reader caches (a request's scan is bounded too; this caps memory).
const MAX_CACHED_RUNS: usize = 8192;

/// The most users of one server whose memberships a server reader weighs (currently joined
/// users first). A server with more users in a room than this is judged by these; that can
/// only hide an event from it (when only an unweighed user could see it), never reveal one.
pub const MAX_SERVER_USERS: usize = 64;

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

    /// A reader of `room` for the server `server` (federation reads; see the module doc):
    /// its access is the best of its users' in the room, `Access::None` when the room's
    /// server ACL denies it.
    pub fn server_reader<'a>(
        &'a self,
        room_id: &RoomId,
        room: &RoomRecord,
        server: &ServerName,
    ) -> Result<Reader<'a>> {
        let members = self.server_users(room.sid, server)?;
        let access = if !crate::service::federation::acl::allows(self, room_id, server)? {
            Access::None
        } else {
            self.server_access(room.sid, &members)?
        };
        let users = members.into_iter().map(|(user, _)| user).collect();
        Ok(Reader {
            rooms: self,
            who: Who::Server {
                name: server.to_owned(),
                users,
            },
            access,
            runs: HashMap::new(),
            decided: HashMap::new(),
            latest_join: None,
            ignored: HashSet::new(),
        })
    }

    /// The users of `server` with a member event in the room's current state (every user
    /// that ever had a membership there) and their membership now, currently joined users
    /// first, at most [`MAX_SERVER_USERS`].
    fn server_users(
        &self,
        room_sid: u64,
        server: &ServerName,
    ) -> Result<Vec<(OwnedUserId, String)>> {
        let mut users: Vec<(bool, OwnedUserId, String)> = self
            .members(room_sid)?
            .into_iter()
            .filter_map(|(user, membership)| {
                let user = UserId::parse(user).ok()?;
                (user.server_name() == server).then_some((membership != "join", user, membership))
            })
            .collect();
        users.sort();
        users.truncate(MAX_SERVER_USERS);
        Ok(users
            .into_iter()
            .map(|(_, user, membership)| (user, membership))
            .collect())
    }

    /// A server's room-level access: the best of its users'.
    fn server_access(&self, room_sid: u64, members: &[(OwnedUserId, String)]) -> Result<Access> {
        let has = |wanted: &str| members.iter().any(|(_, membership)| membership == wanted);
        if has("join") {
            return Ok(Access::Joined);
        }
        if self.is_world_readable(room_sid)? {
            return Ok(Access::WorldReadable);
        }
        let mut until = None;
        for (user, _) in members {
            until = until.max(self.last_departure(room_sid, user)?);
        }
        if let Some(until) = until {
            return Ok(Access::Departed { until });
        }
        Ok(if has("invite") {
            Access::Invited
        } else if has("knock") {
            Access::Knocked
        } else {
            Access::None
        })
    }
}

/// Who reads through a [`Reader`].
enum Who<'a> {
    /// A user of this server.
    User(&'a UserId),
    /// Another server, for its users in the room (see the module doc).
    Server {
        name: OwnedServerName,
        /// Its users with a membership in the room, joined first ([`MAX_SERVER_USERS`]).
        users: Vec<OwnedUserId>,
    },
}

impl Who<'_> {
    /// Whether a member event with this state key is the reader's own (the user's, or one of
    /// the server's users').
    fn owns(&self, state_key: &str) -> bool {
        match self {
            Who::User(user_id) => user_id.as_str() == state_key,
            Who::Server { name, .. } => {
                UserId::parse(state_key).is_ok_and(|user| user.server_name() == name)
            }
        }
    }
}

/// How an event is served to another server (see [`Reader::serve_to_server`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// As stored.
    Full,
    /// In its redacted form: the server takes part in the room but may not see this event's
    /// content; the redacted form keeps the room's graph and auth rules intact for it.
    Redacted,
    /// Not at all.
    Hidden,
}

/// Per-request reads of one room by one user (or one server). Events that share a state (a
/// "state run": the messages between two state events) share the history visibility and the
/// reader's membership at them, so these are looked up once per run, not once per event.
pub struct Reader<'a> {
    rooms: &'a Rooms,
    who: Who<'a>,
    pub access: Access,
    /// State head → the head that decides its visibility and the reader's membership.
    runs: HashMap<Option<u64>, Option<u64>>,
    /// Deciding head → (history visibility, the reader's membership once looked up).
    decided: HashMap<Option<u64>, (String, Option<Option<String>>)>,
    /// The sid of the reader's newest join event in the room (`Some(None)`: never joined).
    latest_join: Option<Option<u64>>,
    /// Senders whose non-state events the user does not want (`m.ignored_user_list`); set by
    /// the read paths that deliver a timeline ([`Reader::ignore`]).
    ignored: HashSet<String>,
}

impl<'a> Reader<'a> {
    pub fn new(rooms: &'a Rooms, user_id: &'a UserId, access: Access) -> Self {
        Self {
            rooms,
            who: Who::User(user_id),
            access,
            runs: HashMap::new(),
            decided: HashMap::new(),
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
        // Soft-failed remote events are stored for the room's graph, never for clients; other
        // servers are served them (module doc), and outliers too, as events of the graph
        // (auth chains).
        if let Who::User(_) = self.who {
            if self.rooms.is_soft_failed(sid)? {
                return Ok(false);
            }
            // Outliers are not in the timeline; only those of the room's state are readable.
            if self.rooms.is_hidden_outlier(sid)? {
                return Ok(false);
            }
        }
        let own_membership = meta.kind == "m.room.member"
            && meta.state_key.as_deref().is_some_and(|k| self.who.owns(k));
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

    /// The spec's visibility rule for the event `sid` in the state whose head is `head`. The
    /// reader's membership at the event is looked up only when the visibility and a later
    /// join do not decide (a server reader weighs each of its users there).
    fn visible_in(&mut self, head: Option<u64>, sid: u64, room_sid: u64) -> Result<bool> {
        let key = self.run_at(head)?;
        let visibility = self
            .decided
            .get(&key)
            .map(|(visibility, _)| visibility.clone())
            .unwrap_or_else(|| "shared".into());
        if visibility == "world_readable" {
            return Ok(true);
        }
        // `shared`: visible if the user (one of the server's users) joined at any point after
        // the event.
        if visibility == "shared" && self.latest_join(room_sid)?.is_some_and(|join| join > sid) {
            return Ok(true);
        }
        let membership = self.run_membership(key)?;
        Ok(super::visibility::decide(&visibility, membership.as_deref()).unwrap_or(false))
    }

    /// The sid of the reader's newest join event in the room (for a server, of any of its
    /// users), looked up once per reader.
    fn latest_join(&mut self, room_sid: u64) -> Result<Option<u64>> {
        if let Some(latest) = self.latest_join {
            return Ok(latest);
        }
        let latest = match &self.who {
            Who::User(user_id) => self.rooms.latest_join(room_sid, user_id)?,
            Who::Server { users, .. } => {
                let mut latest = None;
                for user in users {
                    latest = latest.max(self.rooms.latest_join(room_sid, user)?);
                }
                latest
            }
        };
        self.latest_join = Some(latest);
        Ok(latest)
    }

    /// The reader's membership in the state whose head is `head`; for a server, the best of
    /// its users' (`join`, then `invite`, then any other), as the visibility rule weighs them.
    fn membership_at(&self, head: Option<u64>) -> Result<Option<String>> {
        match &self.who {
            Who::User(user_id) => self.rooms.membership_at_head(head, user_id),
            Who::Server { users, .. } => {
                let mut best: Option<String> = None;
                for user in users {
                    let membership = self.rooms.membership_at_head(head, user)?;
                    match membership.as_deref() {
                        Some("join") => return Ok(membership),
                        Some("invite") => best = membership,
                        Some(_) if best.is_none() => best = membership,
                        _ => {}
                    }
                }
                Ok(best)
            }
        }
    }

    /// The reader's membership in the run decided at `key` (see [`Reader::run_at`]), looked up
    /// once per run.
    fn run_membership(&mut self, key: Option<u64>) -> Result<Option<String>> {
        if let Some((_, Some(membership))) = self.decided.get(&key) {
            return Ok(membership.clone());
        }
        let membership = self.membership_at(key)?;
        if let Some((_, slot)) = self.decided.get_mut(&key) {
            *slot = Some(membership.clone());
        }
        Ok(membership)
    }

    /// The head that decides the state whose newest state event is `head`: the newest state
    /// event at or below it that changes the history visibility or the reader's membership
    /// (state events that change neither — a name, a topic, another user's membership — leave
    /// the answer as it was before them), or that carries a full state snapshot. Its history visibility is cached with it, and every
    /// state passed on the way maps to it, so a scan over a long run of state events costs one
    /// lookup per `SNAPSHOT_EVERY` of them.
    fn run_at(&mut self, head: Option<u64>) -> Result<Option<u64>> {
        if let Some(key) = self.runs.get(&head) {
            return Ok(*key);
        }
        let mut passed = Vec::new();
        let mut cursor = head;
        for _ in 0..SNAPSHOT_EVERY {
            let Some(sid) = cursor else { break };
            if let Some(key) = self.runs.get(&cursor) {
                cursor = *key;
                break;
            }
            // A head whose whole state is in memory decides at no cost (`state_cache.rs`).
            if self.rooms.cached_state_at(sid).is_some() {
                break;
            }
            let Some(meta) = self.rooms.store.get::<EventMetaTable>(&sid)? else {
                break;
            };
            let relevant = meta.kind == "m.room.history_visibility"
                || (meta.kind == "m.room.member"
                    && meta.state_key.as_deref().is_some_and(|k| self.who.owns(k)));
            // A full snapshot decides too: it is the whole state at its event, and the chain
            // below it may not be (a room joined over federation starts its chain at an
            // outlier carrying the snapshot of the state before the join, whose `state_link`
            // is `None`: walking on would leave the room's state and find no visibility and
            // no membership; a resolved fork's snapshot differs from the chain below it).
            if relevant || self.rooms.store.get::<StateSnapshots>(&sid)?.is_some() {
                break;
            }
            passed.push(cursor);
            cursor = meta.state_link;
        }
        if !self.decided.contains_key(&cursor) {
            let visibility = self.rooms.visibility_at_head(cursor)?;
            if self.decided.len() < MAX_CACHED_RUNS {
                self.decided.insert(cursor, (visibility, None));
            } else {
                // Full: the cache starts afresh (memory stays bounded).
                self.decided.clear();
                self.runs.clear();
                self.decided.insert(cursor, (visibility, None));
            }
        }
        if self.runs.len() + passed.len() < MAX_CACHED_RUNS {
            for head in passed.into_iter().chain([cursor]) {
                self.runs.insert(head, cursor);
            }
        }
        Ok(cursor)
    }

    /// The event if the user may see it, else 404 (not 403, so that existence does not leak).
    pub fn visible(&mut self, event: Option<StoredEvent>) -> Result<StoredEvent> {
        match event {
            Some(event) if self.may_see(&event)? => Ok(event),
            _ => Err(Error::not_found("Event not found")),
        }
    }
}

/// Server reads (federation): see the module doc.
impl Reader<'_> {
    /// Whether the reading server has (or had) a user with a membership in the room: the
    /// spec's "the requesting host is in the room" of the state endpoints. Always false for a
    /// user reader.
    pub fn server_takes_part(&self) -> bool {
        matches!(&self.who, Who::Server { users, .. } if !users.is_empty())
    }

    /// The server's room-level access, or 403: it may read the room's history at all (joined,
    /// departed, world-readable) or, invited or knocking, at least its users' member events.
    pub fn require_server_access(&self) -> Result<()> {
        match self.access {
            Access::None => Err(Error::forbidden(
                "This server is not allowed to read this room",
            )),
            _ => Ok(()),
        }
    }

    /// How the event is served to the reading server: as stored if it may see it; redacted if
    /// the server takes part in the room and may read its history up to this event but not
    /// this event (its users were not there under the visibility then in force), so that the
    /// room's graph stays whole for it; otherwise not at all (past a departure, an invited
    /// server's view of others' events, a server with no user in the room).
    pub fn serve_to_server(&mut self, sid: u64, meta: &EventMeta) -> Result<Served> {
        if self.may_see_meta(sid, meta)? {
            return Ok(Served::Full);
        }
        let history = match self.access {
            Access::Joined | Access::WorldReadable => true,
            Access::Departed { until } => sid <= until,
            Access::Invited | Access::Knocked | Access::None => false,
        };
        Ok(if history && self.server_takes_part() {
            Served::Redacted
        } else {
            Served::Hidden
        })
    }
}
