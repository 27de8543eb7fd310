//! Notifications (spec: "Push Notifications", "Receiving notifications", "Marking
//! notifications as read"): push actions are evaluated once, when an event is persisted, for
//! every local user it concerns, and the result is stored, so `/sync` reads unread counts
//! instead of working them out.
//!
//! Two tables, both written only under the room's lock (event persistence and receipts both
//! take it), so their read-modify-writes never race:
//! - [`NotifiedTable`] `(room, event position) → NotifiedEvent`: the users each event
//!   notified and how, one row per event, for `GET /notifications`, push delivery and
//!   recounts. One row per event rather than per user: a commit then writes one B-tree page
//!   of it, not one page per member (each user's rows would sit in their own part of the tree).
//! - [`CountsTable`] `(user, room) → RoomCounts`: the counts of the user's unread
//!   notifications in the room (per thread), what `/sync` sends, and the read marks that say
//!   which of the room's notifications are read. Absent: all of them are.
//!
//! What counts as read follows the receipts: an unthreaded receipt reads everything up to its
//! event, a threaded one (`main` or a thread root) that thread up to its event. The user's own
//! event reads what came before it in its thread (all threads for an event in the main
//! timeline), and leaving a room reads all of it. A read moves a mark; it touches no
//! per-notification row, so an event costs one notifications row plus one counts row per
//! notified user and commit (the counts of several events of one commit are merged).

use std::collections::{BTreeMap, HashMap};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use ruma::{
    push::{Action, FlattenedJson, PushConditionRoomCtx},
    serde::Raw,
    OwnedServerName, OwnedUserId, RoomId, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::super::{account_data::AccountData, push_rules::PushRules};
use super::rules_eval::EventRules;
use crate::{
    error::Result,
    service::rooms::EventMetaTable,
    store::{Batch, Raw as StoredBytes, Record, Store, StoreError, Table},
    table,
};
use std::sync::Arc;

table!(
    /// `(room_id, event position) → NotifiedEvent`: the local users the event notified.
    /// Rows stay after they are read (`GET /notifications` shows them as read) until the
    /// retention sweep.
    pub NotifiedTable: "notified_events", (String, u64) => NotifiedEvent
);
table!(
    /// `(user_id, room_id) → RoomCounts`: the user's unread notifications in the room,
    /// counted, and the marks that tell them from the read ones. Absent: none is unread.
    pub CountsTable: "unread_counts", (String, String) => RoomCounts
);

/// The users one event notified. Invariant: each user is listed once, and every `actions`
/// index is within `actions`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NotifiedEvent {
    pub event_id: String,
    /// `"main"` or the thread root's event id.
    pub thread: String,
    /// When the event was persisted, ms since the Unix epoch.
    pub ts: u64,
    /// The distinct push actions of its users, each as JSON (the spec's `actions` array):
    /// most users share the same few.
    pub actions: Vec<String>,
    pub users: Vec<NotifiedUser>,
}
impl Record for NotifiedEvent {}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NotifiedUser {
    pub user_id: String,
    pub highlight: bool,
    /// Index of the user's actions in [`NotifiedEvent::actions`].
    pub actions: u32,
}

impl NotifiedEvent {
    pub(super) fn add(&mut self, user_id: &str, highlight: bool, actions: String) {
        let index = match self.actions.iter().position(|a| *a == actions) {
            Some(i) => i,
            None => {
                self.actions.push(actions);
                self.actions.len() - 1
            }
        };
        self.users.push(NotifiedUser {
            user_id: user_id.to_owned(),
            highlight,
            actions: u32::try_from(index).unwrap_or(u32::MAX),
        });
    }

    pub fn of(&self, user: &str) -> Option<&NotifiedUser> {
        self.users.iter().find(|u| u.user_id == user)
    }
}

table!(
    /// [`NotifiedTable`]'s rows as stored, for walks that decode them borrowed
    /// ([`NotifiedEventRef`]).
    NotifiedRows: "notified_events", (String, u64) => StoredBytes
);

/// A [`NotifiedEvent`] decoded borrowed from its stored bytes (the same postcard layout,
/// field for field): a walk over a big room's rows then allocates no user id it passes over.
#[derive(Debug, Deserialize)]
struct NotifiedEventRef<'a> {
    event_id: &'a str,
    thread: &'a str,
    ts: u64,
    #[serde(borrow)]
    actions: Vec<&'a str>,
    #[serde(borrow)]
    users: Vec<NotifiedUserRef<'a>>,
}

#[derive(Debug, Deserialize)]
struct NotifiedUserRef<'a> {
    user_id: &'a str,
    highlight: bool,
    actions: u32,
}

impl<'a> NotifiedEventRef<'a> {
    fn of(&self, user: &str) -> Option<&NotifiedUserRef<'a>> {
        self.users.iter().find(|u| u.user_id == user)
    }

    /// The notification of `user` (one of its users) as listed.
    fn notification(&self, room_id: &str, user: &NotifiedUserRef<'_>) -> Notification {
        let actions = usize::try_from(user.actions)
            .ok()
            .and_then(|i| self.actions.get(i))
            .copied()
            .unwrap_or("[]");
        Notification {
            room_id: room_id.to_owned(),
            event_id: self.event_id.to_owned(),
            thread: self.thread.to_owned(),
            highlight: user.highlight,
            actions: actions.to_owned(),
            ts: self.ts,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Notification {
    pub room_id: String,
    pub event_id: String,
    /// `"main"` or the thread root's event id.
    pub thread: String,
    pub highlight: bool,
    /// The push actions, as JSON (the spec's `actions` array).
    pub actions: String,
    /// When the event was persisted, ms since the Unix epoch.
    pub ts: u64,
}
impl Record for Notification {}

/// What counting needs of one notification.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Unread {
    pub thread: String,
    pub highlight: bool,
    /// An `m.call.invite` (counted as a missed call while unread).
    pub call: bool,
}
impl Record for Unread {}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub notifications: u64,
    pub highlights: u64,
}

impl Counts {
    pub fn json(&self) -> Value {
        json!({"notification_count": self.notifications, "highlight_count": self.highlights})
    }

    fn add(&mut self, highlight: bool) {
        self.notifications += 1;
        self.highlights += u64::from(highlight);
    }

    pub(super) fn is_zero(&self) -> bool {
        self.notifications == 0 && self.highlights == 0
    }
}

/// A room's unread counts: the main timeline's and each thread's (by root id), and the read
/// marks they follow from.
///
/// Invariant: the counts are those of the user's notifications in the room that are not
/// [`ReadMarks::covers`]ed; a row exists only while one of them is unread.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomCounts {
    pub main: Counts,
    pub threads: BTreeMap<String, Counts>,
    /// Unread call invites, main timeline and threads together.
    pub calls: u64,
    pub marks: ReadMarks,
}
impl Record for RoomCounts {}

/// Which of a user's notifications in a room are read.
///
/// Every notification before `first` is read; from `first` on, one is read when `all` or its
/// thread's entry in `threads` is at or after its position. `first` and `last` are the oldest
/// and newest unread one. A mark never covers a later notification: notifications take new
/// stream positions, and marks are positions of events already stored.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMarks {
    pub first: u64,
    pub last: u64,
    pub all: u64,
    pub threads: BTreeMap<String, u64>,
}

impl ReadMarks {
    /// Whether the notification at `sid` in `thread` is read.
    pub fn covers(&self, sid: u64, thread: &str) -> bool {
        sid < self.first
            || sid <= self.all
            || self.threads.get(thread).is_some_and(|upto| sid <= *upto)
    }

    /// Moves the marks to include `read`; whether they moved past something unread.
    fn advance(&mut self, read: &ReadUpTo) -> bool {
        let (mark, upto) = match read {
            ReadUpTo::All(upto) => (&mut self.all, *upto),
            ReadUpTo::Thread(thread, upto) => {
                if *upto < self.first {
                    return false;
                }
                (self.threads.entry(thread.clone()).or_insert(0), *upto)
            }
        };
        if upto < self.first || upto <= *mark {
            return false;
        }
        *mark = upto;
        true
    }
}

/// Whether `user`'s notification at `sid` in `thread` is read, given their counts row in its
/// room (`None`: no unread notification there).
pub fn is_read(counts: Option<&RoomCounts>, sid: u64, thread: &str) -> bool {
    counts.is_none_or(|c| c.marks.covers(sid, thread))
}

impl RoomCounts {
    /// Main timeline and threads together.
    pub fn total(&self) -> Counts {
        self.threads.values().fold(self.main, |a, b| Counts {
            notifications: a.notifications + b.notifications,
            highlights: a.highlights + b.highlights,
        })
    }

    fn same_counts(&self, other: &RoomCounts) -> bool {
        (self.main, &self.threads, self.calls) == (other.main, &other.threads, other.calls)
    }

    pub(super) fn add(&mut self, sid: u64, row: &Unread) {
        if self.total().is_zero() {
            self.marks = ReadMarks {
                first: sid,
                last: sid,
                ..ReadMarks::default()
            };
        }
        self.marks.first = self.marks.first.min(sid);
        self.marks.last = self.marks.last.max(sid);
        if row.thread == "main" {
            self.main.add(row.highlight);
        } else {
            self.threads
                .entry(row.thread.clone())
                .or_default()
                .add(row.highlight);
        }
        self.calls += u64::from(row.call);
    }
}

/// What a receipt or an own event marks as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadUpTo {
    /// Everything up to and including this position.
    All(u64),
    /// One thread (`"main"` or a root id) up to and including this position.
    Thread(String, u64),
}

/// One event about to be committed, as push evaluation needs it.
pub struct NewEvent<'a> {
    pub sid: u64,
    pub event_id: &'a str,
    pub sender: &'a UserId,
    pub kind: &'a str,
    pub state_key: Option<&'a str>,
    /// The event's JSON (what push rules match on).
    pub json: &'a serde_json::value::RawValue,
    /// `"main"` or the thread root's event id.
    pub thread: String,
    /// For a membership event about a local user: the new membership.
    pub membership: Option<&'a str>,
}

/// A local user that push rules are evaluated for.
#[derive(Debug, Clone)]
pub struct Recipient {
    pub user_id: OwnedUserId,
    /// Their display name in the room (for `.m.rule.contains_display_name`).
    pub display_name: String,
}

/// A notification listed for a user: `(event position, notification, read)`.
pub type Listed = (u64, Notification, bool);

/// A page of `GET /notifications`, newest first, and the position to continue from when more
/// may follow.
pub type Page = (Vec<Listed>, Option<u64>);

/// Bounds one scan of a user's counts rows (one per room with unread notifications).
const MAX_UNREAD_ROWS: usize = 1_000_000;
/// Rows of one room a listing walks at most per request (`across_rooms`).
const MAX_WALK: usize = 10_000;

pub struct Notifications {
    store: Store,
    push_rules: Arc<PushRules>,
    account_data: Arc<AccountData>,
    server_name: OwnedServerName,
    /// Where [`Notifications::changed`] reports users (push delivery), once subscribed.
    changes: std::sync::Mutex<Option<UnboundedSender<OwnedUserId>>>,
}

impl Notifications {
    pub fn new(
        store: Store,
        push_rules: Arc<PushRules>,
        account_data: Arc<AccountData>,
        server_name: OwnedServerName,
    ) -> Self {
        Self {
            store,
            push_rules,
            account_data,
            server_name,
            changes: std::sync::Mutex::new(None),
        }
    }

    /// The users whose notifications or counts changed, from now on (replacing any earlier
    /// subscriber).
    pub fn subscribe(&self) -> UnboundedReceiver<OwnedUserId> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *self.changes.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        rx
    }

    /// Reports users whose notifications or counts changed in a commit that has landed.
    pub fn changed(&self, users: impl IntoIterator<Item = OwnedUserId>) {
        let changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = changes.as_ref() {
            for user in users {
                // A closed channel means delivery stopped (shutdown); nothing to tell.
                let _ = tx.send(user);
            }
        }
    }

    /// The user's notifications in `rooms` after position `after`, oldest first, at most
    /// `limit`, each with whether it was read; and, when the walk of a room stopped short,
    /// the position up to which every notification of the user was looked at.
    pub fn after(
        &self,
        user_id: &UserId,
        rooms: &[String],
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Listed>, Option<u64>)> {
        let Some(from) = after.checked_add(1) else {
            return Ok((Vec::new(), None));
        };
        across_rooms(
            &self.store,
            user_id.as_str(),
            rooms,
            Walk::Up(from),
            limit,
            MAX_WALK,
            |_| true,
        )
    }

    /// The user's unread counts in a room.
    pub fn room_counts(&self, user_id: &UserId, room_id: &RoomId) -> Result<RoomCounts> {
        Ok(self
            .store
            .get::<CountsTable>(&(user_id.to_string(), room_id.to_string()))?
            .unwrap_or_default())
    }

    /// Evaluates the push rules of each recipient for the events of one commit (in order) and
    /// stages the notification rows, the new counts, and what the events mark as read. Must be
    /// called under the room's lock, with the batch that persists the events. Returns the
    /// users whose counts change, for [`Notifications::changed`] once the batch landed.
    ///
    /// `invitee` adds, per event, the local target of an invite (not yet a member).
    pub async fn stage_events(
        &self,
        batch: &mut Batch,
        room_id: &RoomId,
        base: &PushConditionRoomCtx,
        events: &[NewEvent<'_>],
        recipients: &[Recipient],
        invitee: impl Fn(&NewEvent<'_>) -> Option<Recipient>,
    ) -> Result<Vec<OwnedUserId>> {
        let mut counts = CountsOverlay::new(&self.store, room_id);
        let mut ctx = base.clone();
        let now = crate::service::users::now_ms();
        for event in events {
            if event.sender.server_name() == self.server_name {
                // The sender is local: their own event marks what came before as read.
                let read = if event.thread == "main" {
                    ReadUpTo::All(event.sid)
                } else {
                    ReadUpTo::Thread(event.thread.clone(), event.sid)
                };
                counts.read(event.sender, &read)?;
            }
            if let (Some(target), Some("leave" | "ban")) = (event.state_key, event.membership) {
                if let Ok(target) = UserId::parse(target) {
                    counts.read(&target, &ReadUpTo::All(event.sid))?;
                }
            }
            let flat = FlattenedJson::from_raw(&Raw::<Value>::from_json(event.json.to_owned()));
            let mut rules = EventRules::new(&flat);
            let mut notified = NotifiedEvent {
                event_id: event.event_id.to_owned(),
                thread: event.thread.clone(),
                ts: now,
                ..NotifiedEvent::default()
            };
            let extra = invitee(event);
            for recipient in recipients.iter().chain(extra.as_ref()) {
                if recipient.user_id == event.sender {
                    continue;
                }
                let compiled = self.push_rules.cached_rules(&recipient.user_id)?;
                ctx.user_id = recipient.user_id.clone();
                ctx.user_display_name.clone_from(&recipient.display_name);
                let actions = rules.actions(&compiled, &ctx).await;
                if !actions.iter().any(Action::should_notify) {
                    continue;
                }
                // Non-state events from ignored users are never delivered, nor are their invites
                // (spec: "Ignoring users"), so neither notifies.
                let invites_recipient = event.membership == Some("invite")
                    && event.state_key == Some(recipient.user_id.as_str());
                if event.state_key.is_none() || invites_recipient {
                    let ignored = self.account_data.cached_ignored_users(&recipient.user_id)?;
                    if ignored.contains(event.sender.as_str()) {
                        continue;
                    }
                }
                let highlight = actions.iter().any(Action::is_highlight);
                let actions = serde_json::to_string(&actions).unwrap_or_else(|_| "[]".into());
                notified.add(recipient.user_id.as_str(), highlight, actions);
                counts.add(
                    &recipient.user_id,
                    event.sid,
                    Unread {
                        thread: event.thread.clone(),
                        highlight,
                        call: event.kind == "m.call.invite",
                    },
                )?;
            }
            if !notified.users.is_empty() {
                batch.put::<NotifiedTable>(&(room_id.to_string(), event.sid), &notified);
            }
        }
        Ok(counts.stage(batch))
    }

    /// Stages what receipts mark as read: the covered unread rows go and the counts are
    /// worked out again from the rest. Must be called under the room's lock. Returns the new
    /// counts when they changed.
    pub fn stage_read(
        &self,
        batch: &mut Batch,
        room_id: &RoomId,
        user_id: &UserId,
        reads: &[ReadUpTo],
    ) -> Result<Option<RoomCounts>> {
        let mut counts = CountsOverlay::new(&self.store, room_id);
        let mut changed = false;
        for read in reads {
            changed |= counts.read(user_id, read)?;
        }
        let new = counts.get(user_id)?.clone();
        counts.stage(batch);
        Ok(changed.then_some(new))
    }

    /// The user's notifications in `rooms`, newest first, before position `from` (all when
    /// `None`), at most `limit`, only highlights when `highlights_only`. Each comes with
    /// whether it was read, and the position to continue from when more may follow.
    pub fn list(
        &self,
        user_id: &UserId,
        rooms: &[String],
        from: Option<u64>,
        limit: usize,
        highlights_only: bool,
    ) -> Result<Page> {
        let start = match from {
            Some(0) => return Ok((Vec::new(), None)),
            Some(from) => Some(from - 1),
            None => None,
        };
        // The next page continues below where this one is complete: its last notification
        // when full, else where a room's walk stopped short.
        across_rooms(
            &self.store,
            user_id.as_str(),
            rooms,
            Walk::Down(start),
            limit,
            MAX_WALK,
            |u| !highlights_only || u.highlight,
        )
    }

    /// The user's unread notifications and unread call invites over all rooms (a push
    /// badge and `missed_calls`), and the rooms they are in.
    pub fn unread_totals(&self, user_id: &UserId) -> Result<(u64, u64, Vec<String>)> {
        let rows = self
            .store
            .scan_prefix::<CountsTable, _>(&(user_id.as_str(),), MAX_UNREAD_ROWS)?;
        let (unread, calls) = rows.iter().fold((0, 0), |(unread, calls), (_, counts)| {
            (unread + counts.total().notifications, calls + counts.calls)
        });
        let rooms = rows.into_iter().map(|((_, room), _)| room).collect();
        Ok((unread, calls, rooms))
    }
}

/// The user's notifications in `rooms` that `keep` keeps, in `walk`'s order from its start,
/// at most `want`, with whether each was read. Each room is walked for at most `max_walk`
/// rows (rows of events that did not notify the user, or that `keep` drops, count too). When
/// a room's walk stops short, the result is cut to the positions it was walked past; and
/// when more than `want` were found, to the first `want`. The position the result is
/// complete up to (in `walk`'s direction) is returned too, when it was cut.
fn across_rooms(
    store: &Store,
    user: &str,
    rooms: &[String],
    walk: Walk,
    want: usize,
    max_walk: usize,
    keep: impl Fn(&NotifiedUserRef<'_>) -> bool,
) -> Result<(Vec<Listed>, Option<u64>)> {
    let down = matches!(walk, Walk::Down(_));
    let mut found = Vec::new();
    let mut walked_to: Option<u64> = None;
    for room in rooms {
        let mut kept = 0;
        let mut last = None;
        let ended = walk_room(store, room, walk.clone(), max_walk, |sid, event| {
            last = Some(sid);
            if let Some(u) = event.of(user).filter(|u| keep(u)) {
                found.push((sid, room.as_str(), event.notification(room, u)));
                kept += 1;
            }
            Ok(kept < want)
        })?;
        if let (false, Some(last)) = (ended, last) {
            // The room's notifications past `last` are not known: nothing past it counts.
            walked_to = Some(match walked_to {
                Some(w) if down => w.max(last),
                Some(w) => w.min(last),
                None => last,
            });
        }
    }
    if let Some(w) = walked_to {
        found.retain(|(sid, _, _)| if down { *sid >= w } else { *sid <= w });
    }
    if down {
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
    } else {
        found.sort_by_key(|f| f.0);
    }
    if found.len() >= want {
        found.truncate(want);
        // Complete up to the last one kept, not further: some past it were dropped.
        walked_to = found.last().map(|(sid, _, _)| *sid);
    }
    let mut marks = MarksByRoom::new(store, user);
    let listed = found
        .into_iter()
        .map(|(sid, room, n)| Ok((sid, marks.is_read(room, sid, &n.thread)?, n)))
        .map(|r: Result<_>| r.map(|(sid, read, n)| (sid, n, read)))
        .collect::<Result<Vec<_>>>()?;
    Ok((listed, walked_to))
}

/// Which way [`walk_room`] goes, and where it starts (inclusive).
#[derive(Clone)]
enum Walk {
    /// Oldest first, from this position on.
    Up(u64),
    /// Newest first, from this position down (`None`: from the newest).
    Down(Option<u64>),
}

/// Calls `f` on the room's notified events in the order and from the position `walk` says,
/// a page at a time, until it answers `false` or `max` of them were walked. Returns whether
/// it walked to the end of them.
fn walk_room(
    store: &Store,
    room: &str,
    walk: Walk,
    max: usize,
    mut f: impl FnMut(u64, &NotifiedEventRef<'_>) -> Result<bool>,
) -> Result<bool> {
    const PAGE: usize = 64;
    let (mut next, reverse) = match walk {
        Walk::Up(from) => (Some(from), false),
        Walk::Down(from) => (from, true),
    };
    let mut walked = 0;
    while walked < max {
        let key = next.map(|sid| (room.to_owned(), sid));
        let want = PAGE.min(max - walked);
        let rows =
            store.range_in_prefix::<NotifiedRows, _>(&(room,), key.as_ref(), reverse, want)?;
        let short = rows.len() < want;
        for ((_, sid), StoredBytes(bytes)) in rows {
            let event: NotifiedEventRef<'_> =
                postcard::from_bytes(&bytes).map_err(|e| StoreError::Corrupt {
                    table: NotifiedRows::NAME,
                    detail: e.to_string(),
                })?;
            walked += 1;
            next = if reverse {
                sid.checked_sub(1)
            } else {
                sid.checked_add(1)
            };
            if !f(sid, &event)? {
                return Ok(false);
            }
            if next.is_none() {
                return Ok(true);
            }
        }
        if short {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The counts rows of a user's rooms, read once each: whether a notification is read.
pub(super) struct MarksByRoom<'a> {
    store: &'a Store,
    user: String,
    rooms: HashMap<String, Option<RoomCounts>>,
}

impl<'a> MarksByRoom<'a> {
    pub(super) fn new(store: &'a Store, user: &str) -> Self {
        Self {
            store,
            user: user.to_owned(),
            rooms: HashMap::new(),
        }
    }

    pub(super) fn is_read(&mut self, room_id: &str, sid: u64, thread: &str) -> Result<bool> {
        if !self.rooms.contains_key(room_id) {
            let counts = self
                .store
                .get::<CountsTable>(&(self.user.clone(), room_id.to_owned()))?;
            self.rooms.insert(room_id.to_owned(), counts);
        }
        Ok(is_read(self.rooms[room_id].as_ref(), sid, thread))
    }
}

/// The counts rows of one room touched by one batch, read once and written at the end, and the
/// notifications this batch adds (kept here until then, so that a read later in the batch
/// can count them).
struct CountsOverlay<'a> {
    store: &'a Store,
    room_id: String,
    /// `user → (stored counts, new counts)`; zero counts stand for no row.
    counts: HashMap<OwnedUserId, (RoomCounts, RoomCounts)>,
    added: Vec<(OwnedUserId, u64, Unread)>,
}

impl<'a> CountsOverlay<'a> {
    fn new(store: &'a Store, room_id: &RoomId) -> Self {
        Self {
            store,
            room_id: room_id.to_string(),
            counts: HashMap::new(),
            added: Vec::new(),
        }
    }

    fn get(&mut self, user_id: &UserId) -> Result<&mut RoomCounts> {
        if !self.counts.contains_key(user_id) {
            let stored = self
                .store
                .get::<CountsTable>(&(user_id.to_string(), self.room_id.clone()))?
                .unwrap_or_default();
            self.counts
                .insert(user_id.to_owned(), (stored.clone(), stored));
        }
        Ok(&mut self.counts.get_mut(user_id).expect("inserted above").1)
    }

    fn add(&mut self, user_id: &UserId, sid: u64, row: Unread) -> Result<()> {
        self.get(user_id)?.add(sid, &row);
        self.added.push((user_id.to_owned(), sid, row));
        Ok(())
    }

    /// Moves the user's marks to include `read` and counts again what is left unread.
    /// Returns whether anything was read.
    fn read(&mut self, user_id: &UserId, read: &ReadUpTo) -> Result<bool> {
        let counts = self.get(user_id)?;
        if counts.total().is_zero() {
            // Nothing unread: no marks to keep.
            return Ok(false);
        }
        if let ReadUpTo::All(upto) = read {
            if *upto >= counts.marks.last {
                // The common case (a receipt at the newest event, an own message): all read.
                *counts = RoomCounts::default();
                return Ok(true);
            }
        }
        let mut marks = counts.marks.clone();
        if !marks.advance(read) {
            return Ok(false);
        }
        let before = counts.total();
        let recount = self.recount(user_id, marks)?;
        let changed = recount.total() != before;
        *self.get(user_id)? = recount;
        Ok(changed)
    }

    /// The counts of the user's notifications in the room (stored from `marks.first` to
    /// `marks.last`, and those added by this batch) that `marks` leaves unread.
    fn recount(&self, user_id: &UserId, marks: ReadMarks) -> Result<RoomCounts> {
        let mut unread = Vec::new();
        let user = user_id.as_str();
        // Not bounded by a row count: stopping before `marks.last` would drop unread ones
        // from the counts. The walk ends at `marks.last`, which exists.
        walk_room(
            self.store,
            &self.room_id,
            Walk::Up(marks.first),
            usize::MAX,
            |sid, event| {
                if sid > marks.last {
                    return Ok(false);
                }
                let Some(u) = event.of(user) else {
                    return Ok(true);
                };
                if !marks.covers(sid, event.thread) {
                    // Whether it was a call invite is the event's type (a remote invite has none).
                    let call = self
                        .store
                        .get::<EventMetaTable>(&sid)?
                        .is_some_and(|meta| meta.kind == "m.call.invite");
                    let row = Unread {
                        thread: event.thread.to_owned(),
                        highlight: u.highlight,
                        call,
                    };
                    unread.push((sid, row));
                }
                Ok(true)
            },
        )?;
        let added = self
            .added
            .iter()
            .filter(|(u, sid, row)| u == user_id && !marks.covers(*sid, &row.thread))
            .map(|(_, sid, row)| (*sid, row.clone()));
        let mut counts = RoomCounts::default();
        for (sid, row) in unread.into_iter().chain(added) {
            counts.add(sid, &row);
        }
        if !counts.total().is_zero() {
            // Marks before the oldest unread notification say nothing `first` does not.
            let first = counts.marks.first;
            counts.marks.all = if marks.all >= first { marks.all } else { 0 };
            counts.marks.threads = marks
                .threads
                .into_iter()
                .filter(|(_, upto)| *upto >= first)
                .collect();
        }
        Ok(counts)
    }

    /// Stages every counts row that changed; returns the users whose counts changed.
    fn stage(self, batch: &mut Batch) -> Vec<OwnedUserId> {
        let mut changed = Vec::new();
        for (user, (old, new)) in self.counts {
            if old == new {
                continue;
            }
            let key = (user.to_string(), self.room_id.clone());
            if new.total().is_zero() {
                batch.delete::<CountsTable>(&key);
            } else {
                batch.put::<CountsTable>(&key, &new);
            }
            if !old.same_counts(&new) {
                changed.push(user);
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EngineKind;

    /// The borrowed view decodes what the owned row encodes, field for field.
    #[test]
    fn the_borrowed_row_reads_the_stored_layout() {
        let mut event = NotifiedEvent {
            event_id: "$e".into(),
            thread: "$root".into(),
            ts: 1_700_000_000_000,
            ..NotifiedEvent::default()
        };
        event.add(
            "@a:x",
            true,
            "[\"notify\",{\"set_tweak\":\"highlight\"}]".into(),
        );
        event.add("@b:x", false, "[\"notify\"]".into());
        event.add(
            "@c:x",
            true,
            "[\"notify\",{\"set_tweak\":\"highlight\"}]".into(),
        );
        let bytes = postcard::to_stdvec(&event).unwrap();
        let view: NotifiedEventRef<'_> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(
            (view.event_id, view.thread, view.ts),
            ("$e", "$root", event.ts)
        );
        assert_eq!(view.actions, event.actions);
        let users: Vec<(&str, bool, u32)> = view
            .users
            .iter()
            .map(|u| (u.user_id, u.highlight, u.actions))
            .collect();
        assert_eq!(
            users,
            [("@a:x", true, 0), ("@b:x", false, 1), ("@c:x", true, 0)]
        );
        let listed = view.notification("!r:x", view.of("@b:x").unwrap());
        assert_eq!(
            (
                listed.event_id.as_str(),
                listed.highlight,
                listed.actions.as_str()
            ),
            ("$e", false, "[\"notify\"]")
        );
    }

    /// Listing across rooms, walking each for only a few rows at a time, pages through every
    /// notification of the user once, in order, both ways: a busy room where the user is
    /// rarely notified cuts a page short instead of letting other rooms' older
    /// notifications jump ahead of its unwalked ones.
    #[test]
    fn listing_across_rooms_in_short_walks_misses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), EngineKind::Redb, 1 << 20).unwrap();
        let mut b = Batch::new();
        let mut put = |room: &str, sid: u64, users: &[&str]| {
            let mut event = NotifiedEvent {
                event_id: format!("${sid}"),
                thread: "main".into(),
                ..NotifiedEvent::default()
            };
            for user in users {
                event.add(user, false, "[\"notify\"]".into());
            }
            b.put::<NotifiedTable>(&(room.to_owned(), sid), &event);
        };
        let mut mine = Vec::new();
        for sid in [1, 5, 9, 13] {
            put("!a", sid, &["@alice:x", "@bob:x"]);
            mine.push(sid);
        }
        for sid in 2..=40 {
            if sid % 4 == 2 || sid % 4 == 0 {
                put(
                    "!m",
                    sid,
                    if sid == 10 || sid == 30 {
                        &["@bob:x", "@alice:x"]
                    } else {
                        &["@bob:x"]
                    },
                );
            }
        }
        mine.extend([10, 30]);
        for sid in [3, 23, 35] {
            put("!b", sid, &["@alice:x"]);
            mine.push(sid);
        }
        store.commit_blocking(b).unwrap();
        mine.sort_unstable();
        let rooms: Vec<String> = ["!a", "!b", "!m"].map(String::from).to_vec();
        for want in [1, 2, 3, 20] {
            let mut down = Vec::new();
            let mut start = None;
            for _ in 0..100 {
                let (page, walked_to) = across_rooms(
                    &store,
                    "@alice:x",
                    &rooms,
                    Walk::Down(start),
                    want,
                    4,
                    |_| true,
                )
                .unwrap();
                assert!(page.len() <= want);
                down.extend(page.iter().map(|(sid, _, _)| *sid));
                match walked_to {
                    Some(w) if w > 1 => start = Some(w - 1),
                    _ => break,
                }
            }
            assert_eq!(
                down,
                mine.iter().rev().copied().collect::<Vec<_>>(),
                "down {want}"
            );
            let mut up = Vec::new();
            let mut from = 1;
            for _ in 0..100 {
                let (page, walked_to) =
                    across_rooms(&store, "@alice:x", &rooms, Walk::Up(from), want, 4, |_| {
                        true
                    })
                    .unwrap();
                up.extend(page.iter().map(|(sid, _, _)| *sid));
                match walked_to {
                    Some(w) => from = w + 1,
                    None => break,
                }
            }
            assert_eq!(up, mine, "up {want}");
        }
    }

    /// Marks move forward only, and only past what is unread.
    #[test]
    fn marks_advance_past_unread_only() {
        let mut marks = ReadMarks {
            first: 10,
            last: 20,
            ..ReadMarks::default()
        };
        assert!(
            !marks.advance(&ReadUpTo::All(9)),
            "before the oldest unread"
        );
        assert!(marks.advance(&ReadUpTo::Thread("$t".into(), 15)));
        assert!(!marks.advance(&ReadUpTo::Thread("$t".into(), 14)), "behind");
        assert!(marks.covers(15, "$t") && !marks.covers(15, "main") && !marks.covers(16, "$t"));
        assert!(marks.advance(&ReadUpTo::All(12)));
        assert!(marks.covers(12, "main") && !marks.covers(13, "main"));
    }
}
