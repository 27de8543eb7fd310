//! Rooms: events, state, timeline and membership on this server.
//!
//! Every event Hearth creates is a full, signed PDU for its room version, checked with ruma's
//! authorization rules against the room's current state before it is stored. Appends to one
//! room are serialised by a per-room lock; different rooms proceed in parallel.
//!
//! Storage (see `schema/rooms.md`): an event's short id is its global stream position, so the
//! timeline, the event index and the stream share one key space. State is kept two ways: the
//! current state per room (point lookups, so building an event reads O(auth events), not
//! O(room state)), and, for state at any past event, a chain of state events with a full
//! snapshot every `SNAPSHOT_EVERY` links.

pub mod access;
pub mod backfill;
pub(crate) mod build;
pub mod create;
pub mod directory;
pub mod format;
pub mod hierarchy;
pub mod history;
pub mod holes;
mod latest;
pub mod member_summary;
pub mod membership;
pub mod outliers;
pub mod partial_state;
pub mod recent_events;
pub mod redact;
pub mod relations;
pub mod remote_invites;
pub mod resolve;
pub mod serve;
pub mod state;
pub mod state_cache;
pub mod summary;
pub mod timeline;
pub mod upgrade;
pub mod validate;
pub mod visibility;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
};

use ruma::{
    events::{room::member::MembershipState, StateEventType, TimelineEventType},
    CanonicalJsonObject, EventId, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId,
    RoomVersionId, UserId,
};
use serde::{Deserialize, Serialize};

pub use self::pdu::Pdu;
use super::{keys::ServerKeys, notifier::Notifier, stream::Stream};
use crate::{
    error::{Error, Result},
    store::{Raw, Record, Store},
    table,
};

pub mod pdu;

/// A full state snapshot is written every this many state events of a room, bounding the
/// walk that reconstructs the state at a past event.
pub const SNAPSHOT_EVERY: u64 = 64;

table!(
    /// `room_id → RoomRecord`: every room this server knows.
    pub RoomsTable: "rooms", String => RoomRecord
);
table!(
    /// `event_id → sid`. The sid is the event's stream position; unique across all rooms.
    pub EventIds: "event_ids", String => u64
);
table!(
    /// `sid → canonical JSON` of the PDU exactly as signed (redacted in place once redacted).
    pub Pdus: "pdus", u64 => Raw
);
table!(
    /// `sid → EventMeta`: what reads need without parsing the PDU.
    pub EventMetaTable: "event_meta", u64 => EventMeta
);
table!(
    /// `(room_sid, sid) → ()` in stream order: a room's timeline. Pagination is a range scan.
    pub Timeline: "timeline", (u64, u64) => bool
);
table!(
    /// `(room_sid, event type, state key) → sid`: the room's current state. A prefix scan on
    /// `(room_sid,)` lists it all, on `(room_sid, type)` one type (e.g. every member).
    pub CurrentState: "current_state", (u64, String, String) => u64
);
table!(
    /// `sid of a state event → full state after it`: written every `SNAPSHOT_EVERY` state
    /// events, so the state at any event is at most that many chain links away.
    pub StateSnapshots: "state_snapshots", u64 => StateSnapshot
);
table!(
    /// `(user_id, room_id) → membership`: the rooms a user is in (or was invited to, left…).
    pub UserRooms: "user_rooms", (String, String) => UserRoom
);
table!(
    /// `(room_sid, user_id) → membership` for every member event in the room's current state.
    pub RoomMembers: "room_members", (u64, String) => String
);
table!(
    /// `(user_id, room_id) → true` for rooms the user left and then forgot; cleared by any new
    /// membership of the user in the room.
    pub Forgotten: "forgotten_rooms", (String, String) => bool
);
table!(
    /// `(user_id, device_id, scope, txn_id) → event_id`: idempotent sends per device and
    /// endpoint path (the scope, e.g. `send/!room/m.room.message`).
    pub TxnIds: "txn_ids", (String, String, String, String) => String
);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoomRecord {
    pub sid: u64,
    pub version: String,
    /// Depth of the newest event.
    pub depth: u64,
    /// Forward extremities: the events the next event will reference as `prev_events`.
    pub extremities: Vec<u64>,
    /// The newest state event (head of the state chain).
    pub last_state: Option<u64>,
    /// State events since the last full snapshot.
    pub since_snapshot: u64,
    pub created_ms: u64,
}
impl Record for RoomRecord {}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventMeta {
    pub room_sid: u64,
    pub event_id: String,
    pub kind: String,
    pub state_key: Option<String>,
    pub sender: String,
    /// For a state event: the previous state event of the room (its state before). For other
    /// events: the newest state event when it was sent (the state at it).
    pub state_link: Option<u64>,
    pub depth: u64,
    pub origin_server_ts: u64,
    /// The device and transaction id it was sent with (shown to that device only).
    pub txn: Option<(String, String)>,
    /// Set once redacted: the redaction's event id.
    pub redacted_by: Option<String>,
    /// For state events: the event it replaced in the state, if any (for `prev_content`).
    pub replaces_state: Option<u64>,
}
impl Record for EventMeta {}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StateSnapshot {
    pub entries: Vec<(String, String, u64)>,
}
impl Record for StateSnapshot {}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserRoom {
    pub membership: String,
    /// Stream position of the membership event.
    pub sid: u64,
}
impl Record for UserRoom {}

/// What a client asks to send.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: TimelineEventType,
    pub content: serde_json::Value,
    pub state_key: Option<String>,
    pub redacts: Option<OwnedEventId>,
    /// Set for idempotent client sends.
    pub txn: Option<Txn>,
}

/// A client transaction: retransmissions with the same device, scope and id are the same
/// request.
#[derive(Debug, Clone)]
pub struct Txn {
    pub device_id: String,
    /// The endpoint path the id is scoped to.
    pub scope: String,
    pub txn_id: String,
}

impl NewEvent {
    pub fn message(kind: impl Into<TimelineEventType>, content: serde_json::Value) -> Self {
        Self {
            kind: kind.into(),
            content,
            state_key: None,
            redacts: None,
            txn: None,
        }
    }
    pub fn state(
        kind: impl Into<TimelineEventType>,
        state_key: impl Into<String>,
        content: serde_json::Value,
    ) -> Self {
        Self {
            kind: kind.into(),
            content,
            state_key: Some(state_key.into()),
            redacts: None,
            txn: None,
        }
    }
}

/// A stored event: its sid (stream position), parsed PDU and metadata.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub sid: u64,
    pub pdu: Pdu,
    pub meta: EventMeta,
    pub json: CanonicalJsonObject,
}

pub struct Rooms {
    store: Store,
    stream: Arc<Stream>,
    keys: Arc<ServerKeys>,
    server_name: OwnedServerName,
    notifier: Arc<Notifier>,
    /// Push evaluation of new events, staged into their commit.
    notifications: Arc<crate::service::push::notifications::Notifications>,
    /// One async lock per room that has an append in progress. The map lock guards only the
    /// map; entries are weak so idle rooms cost nothing.
    locks: Mutex<HashMap<OwnedRoomId, Weak<tokio::sync::Mutex<()>>>>,
    /// Local sends waiting to share a room's next commit (`build/queue.rs`).
    send_queues: build::SendQueues,
    /// Bounds the heavy reads (timeline scans, thread lists, relations, context) running at
    /// once on the blocking pool; see [`Rooms::heavy_read`].
    heavy_reads: Arc<tokio::sync::Semaphore>,
    /// Committed members and display names of recently written rooms, for push evaluation.
    push_members: build::MembersCache,
    /// Which local users are guests (guest joins and removals, `build/guests.rs`).
    users: Arc<super::users::Users>,
    /// The newest timeline position of each room (`latest.rs`).
    latest: super::latest::LatestMarks,
    /// The newest position among each room's current member events (`latest.rs`).
    member_changes: super::latest::LatestMarks,
    /// The newest event of given kinds per room, valid while the room's newest-position
    /// mark stays where it was (`latest.rs`).
    newest_of_kinds: latest::NewestOfKinds,
    /// The state at recently read heads (`state_cache.rs`).
    state_cache: state_cache::StateCache,
    /// Member counts and heroes at each room's state (`member_summary.rs`).
    member_summaries: member_summary::SummaryCache,
    /// Content fields that redaction keeps, by event (`visibility.rs`).
    kept_fields: visibility::KeptFields,
    /// Events read since the last commit (`recent_events.rs`).
    recent_events: recent_events::RecentEvents,
    /// Local events are queued for the other servers in their room in their own batch.
    fed_queue: Arc<super::federation::queue::Queue>,
    /// Rooms with events waiting for the search indexer (`search/pending.rs`).
    pub(crate) search_pending: Arc<super::search::pending::PendingRooms>,
}

/// Heavy reads running at once: one per core, at least two (a slow scan must not block all).
fn heavy_read_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

impl Rooms {
    // The services it writes through, each shared with others; built once in `Services`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        stream: Arc<Stream>,
        keys: Arc<ServerKeys>,
        server_name: OwnedServerName,
        notifier: Arc<Notifier>,
        notifications: Arc<crate::service::push::notifications::Notifications>,
        users: Arc<super::users::Users>,
        fed_queue: Arc<super::federation::queue::Queue>,
    ) -> Self {
        Self {
            fed_queue,
            store,
            stream,
            keys,
            server_name,
            notifier,
            notifications,
            locks: Mutex::new(HashMap::new()),
            send_queues: Default::default(),
            heavy_reads: Arc::new(tokio::sync::Semaphore::new(heavy_read_slots())),
            push_members: build::MembersCache::default(),
            users,
            latest: Default::default(),
            member_changes: Default::default(),
            newest_of_kinds: Default::default(),
            state_cache: state_cache::StateCache::default(),
            member_summaries: Default::default(),
            kept_fields: Default::default(),
            recent_events: Default::default(),
            search_pending: Default::default(),
        }
    }

    /// Runs a read that walks many events (store reads and JSON work, no awaits) on the
    /// blocking pool, so that it does not hold an async worker, with at most
    /// `heavy_read_slots()` of them at once; further ones wait for a slot. Each such read also
    /// has its own work budget (e.g. [`timeline::SCAN_BUDGET`]), so a slot is held briefly.
    pub async fn heavy_read<R: Send + 'static>(
        &self,
        read: impl FnOnce() -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let permit = self
            .heavy_reads
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::unknown("the server is shutting down"))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            read()
        })
        .await
        .map_err(|e| Error::unknown(format!("read task failed: {e}")))?
    }

    pub fn server_name(&self) -> &ruma::ServerName {
        &self.server_name
    }

    /// The room's append lock: every writer of the room (events, a join being stored, the
    /// partial-state resync) takes it, so holding it pauses them all. Tests hold it to catch a
    /// join between its answer and its storing.
    pub async fn lock_room(&self, room_id: &RoomId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            if locks.len() > 1024 {
                locks.retain(|_, weak| weak.strong_count() > 0);
            }
            match locks.get(room_id).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(room_id.to_owned(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }

    pub fn room(&self, room_id: &RoomId) -> Result<Option<RoomRecord>> {
        Ok(self.store.get::<RoomsTable>(&room_id.to_string())?)
    }

    pub fn room_version(&self, room: &RoomRecord) -> Result<RoomVersionId> {
        RoomVersionId::try_from(room.version.as_str())
            .map_err(|_| Error::unknown("stored room version is invalid"))
    }

    pub fn event_sid(&self, event_id: &EventId) -> Result<Option<u64>> {
        Ok(self.store.get::<EventIds>(&event_id.to_string())?)
    }

    /// Loads a stored event by sid.
    pub fn event_by_sid(&self, sid: u64) -> Result<Option<StoredEvent>> {
        let (Some(raw), Some(meta)) = (
            self.store.get::<Pdus>(&sid)?,
            self.store.get::<EventMetaTable>(&sid)?,
        ) else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&raw.0)
            .map_err(|e| Error::unknown(format!("stored PDU is corrupt: {e}")))?;
        let json: CanonicalJsonObject = serde_json::from_str(text)
            .map_err(|e| Error::unknown(format!("stored PDU is corrupt: {e}")))?;
        let event_id = EventId::parse(&meta.event_id)
            .map_err(|_| Error::unknown("stored event id is invalid"))?;
        let pdu = Pdu::from_json(event_id, text).map_err(Error::unknown)?;
        Ok(Some(StoredEvent {
            sid,
            pdu,
            meta,
            json,
        }))
    }

    /// The event at `sid` as a PDU only: what authorisation reads, without the JSON object
    /// and metadata of [`Rooms::event_by_sid`].
    pub fn pdu_by_sid(&self, sid: u64, event_id: OwnedEventId) -> Result<Option<Pdu>> {
        let Some(raw) = self.store.get::<Pdus>(&sid)? else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&raw.0)
            .map_err(|e| Error::unknown(format!("stored PDU is corrupt: {e}")))?;
        Ok(Some(
            Pdu::from_json(event_id, text).map_err(Error::unknown)?,
        ))
    }

    pub fn event(&self, event_id: &EventId) -> Result<Option<StoredEvent>> {
        match self.event_sid(event_id)? {
            Some(sid) => self.event_by_sid(sid),
            None => Ok(None),
        }
    }

    /// The current state event for `(kind, state_key)`.
    pub fn state_event(
        &self,
        room_sid: u64,
        kind: &StateEventType,
        state_key: &str,
    ) -> Result<Option<StoredEvent>> {
        let key = (room_sid, kind.to_string(), state_key.to_owned());
        match self.store.get::<CurrentState>(&key)? {
            Some(sid) => self.event_by_sid(sid),
            None => Ok(None),
        }
    }

    /// The position of the current state event for `(kind, state_key)`, without loading it.
    pub fn state_sid(&self, room_sid: u64, kind: &str, state_key: &str) -> Result<Option<u64>> {
        let key = (room_sid, kind.to_owned(), state_key.to_owned());
        Ok(self.store.get::<CurrentState>(&key)?)
    }

    /// `(type, state key, position)` of every current state event of the room (optionally of
    /// one type), in key order, without loading the events.
    pub fn current_state_sids(
        &self,
        room_sid: u64,
        kind: Option<&str>,
    ) -> Result<Vec<(String, String, u64)>> {
        let rows = match kind {
            Some(kind) => self
                .store
                .scan_prefix::<CurrentState, _>(&(room_sid, kind.to_owned()), usize::MAX)?,
            None => self
                .store
                .scan_prefix::<CurrentState, _>(&(room_sid,), usize::MAX)?,
        };
        Ok(rows
            .into_iter()
            .map(|((_, kind, key), sid)| (kind, key, sid))
            .collect())
    }

    /// Every current state event of the room (optionally of one type), in key order.
    pub fn current_state(
        &self,
        room_sid: u64,
        kind: Option<&StateEventType>,
    ) -> Result<Vec<StoredEvent>> {
        let rows = match kind {
            Some(kind) => self
                .store
                .scan_prefix::<CurrentState, _>(&(room_sid, kind.to_string()), usize::MAX)?,
            None => self
                .store
                .scan_prefix::<CurrentState, _>(&(room_sid,), usize::MAX)?,
        };
        rows.into_iter()
            .filter_map(|(_, sid)| self.event_by_sid(sid).transpose())
            .collect()
    }

    /// A user's current membership in a room.
    pub fn membership(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<MembershipState>> {
        let row = self
            .store
            .get::<UserRooms>(&(user_id.to_string(), room_id.to_string()))?;
        Ok(row.map(|r| MembershipState::from(r.membership.as_str())))
    }

    /// The rooms a user has the given membership in.
    pub fn rooms_of(
        &self,
        user_id: &UserId,
        membership: &MembershipState,
    ) -> Result<Vec<OwnedRoomId>> {
        let rows = self
            .store
            .scan_prefix::<UserRooms, _>(&(user_id.to_string(),), usize::MAX)?;
        Ok(rows
            .into_iter()
            .filter(|(_, r)| r.membership == membership.as_str())
            .filter_map(|((_, room), _)| RoomId::parse(room).ok())
            .collect())
    }

    /// Every room the user has a membership in: `(room, membership, sid of the member event)`.
    pub fn memberships_of(&self, user_id: &UserId) -> Result<Vec<(OwnedRoomId, String, u64)>> {
        let rows = self
            .store
            .scan_prefix::<UserRooms, _>(&(user_id.to_string(),), usize::MAX)?;
        Ok(rows
            .into_iter()
            .filter_map(|((_, room), r)| Some((RoomId::parse(room).ok()?, r.membership, r.sid)))
            .collect())
    }

    /// Every room the user may have notifications in (`push::notifications`): each room
    /// they have a membership in, and each room a remote invite record of theirs names.
    pub fn notification_rooms(&self, user_id: &UserId) -> Result<Vec<String>> {
        let mut rooms: Vec<String> = self
            .memberships_of(user_id)?
            .into_iter()
            .map(|(room, _, _)| room.to_string())
            .chain(
                self.remote_invites_of(user_id)?
                    .into_iter()
                    .map(|(room, _)| room.to_string()),
            )
            .collect();
        rooms.sort_unstable();
        rooms.dedup();
        Ok(rooms)
    }

    /// Members of a room with their current membership.
    pub fn members(&self, room_sid: u64) -> Result<Vec<(String, String)>> {
        let rows = self
            .store
            .scan_prefix::<RoomMembers, _>(&(room_sid,), usize::MAX)?;
        Ok(rows
            .into_iter()
            .map(|((_, user), membership)| (user, membership))
            .collect())
    }

    /// A page of a room's timeline from `from` (a stream position, inclusive), forwards or
    /// backwards, at most `limit` events.
    pub fn timeline(
        &self,
        room_sid: u64,
        from: Option<u64>,
        backwards: bool,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        self.timeline_sids(room_sid, from, backwards, limit)?
            .into_iter()
            .filter_map(|sid| self.event_by_sid(sid).transpose())
            .collect()
    }

    /// The positions of a page of a room's timeline, as [`Rooms::timeline`] pages, without
    /// reading the events: a reader that stops at a token decodes only the events past it.
    pub fn timeline_sids(
        &self,
        room_sid: u64,
        from: Option<u64>,
        backwards: bool,
        limit: usize,
    ) -> Result<Vec<u64>> {
        let from_key = from.map(|pos| (room_sid, pos));
        let rows = self.store.range_in_prefix::<Timeline, _>(
            &(room_sid,),
            from_key.as_ref(),
            backwards,
            limit,
        )?;
        Ok(rows.into_iter().map(|((_, sid), _)| sid).collect())
    }

    /// The event previously sent with this transaction id by this device, if any.
    pub fn txn_event(&self, user_id: &UserId, txn: &Txn) -> Result<Option<OwnedEventId>> {
        let key = (
            user_id.to_string(),
            txn.device_id.clone(),
            txn.scope.clone(),
            txn.txn_id.clone(),
        );
        Ok(self
            .store
            .get::<TxnIds>(&key)?
            .and_then(|id| EventId::parse(id).ok()))
    }

    pub fn is_forgotten(&self, room_id: &RoomId, user_id: &UserId) -> Result<bool> {
        Ok(self
            .store
            .get::<Forgotten>(&(user_id.to_string(), room_id.to_string()))?
            .unwrap_or(false))
    }

    /// Marks a left room as forgotten for the user.
    pub async fn forget(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        let mut batch = crate::store::Batch::new();
        batch.put::<Forgotten>(&(user_id.to_string(), room_id.to_string()), &true);
        Ok(self.store.commit(batch).await?)
    }

    /// The highest stream position every write below which has settled.
    pub fn stream_position(&self) -> u64 {
        self.stream.current()
    }
}
