//! Notifications (spec: "Push Notifications", "Receiving notifications", "Marking
//! notifications as read"): push actions are evaluated once, when an event is persisted, for
//! every local user it concerns, and the result is stored, so `/sync` reads unread counts
//! instead of working them out.
//!
//! Three tables, all written only under the room's lock (event persistence and receipts both
//! take it), so their read-modify-writes never race:
//! - [`NotificationsTable`] `(user, event position) → Notification`: every event that notified
//!   the user, for `GET /notifications`.
//! - [`UnreadTable`] `(user, room, event position) → Unread`: the notifications not yet read.
//!   A receipt, or the user's own event, deletes the rows it covers.
//! - [`CountsTable`] `(user, room) → RoomCounts`: the aggregate of the room's [`UnreadTable`]
//!   rows (per thread), what `/sync` sends. Invariant: always equal to counting those rows.
//!
//! What counts as read follows the receipts: an unthreaded receipt reads everything up to its
//! event, a threaded one (`main` or a thread root) that thread up to its event. The user's own
//! event reads what came before it in its thread (all threads for an event in the main
//! timeline), and leaving a room drops its counts.

use std::collections::{BTreeMap, HashMap, HashSet};

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
    store::{Batch, Record, Store},
    table,
};
use std::sync::Arc;

table!(
    /// `(user_id, event position) → Notification`: the events that notified the user, newest
    /// last. Rows stay after they are read (`GET /notifications` shows them as read).
    pub NotificationsTable: "notifications", (String, u64) => Notification
);
table!(
    /// `(user_id, room_id, event position) → Unread`: the user's unread notifications in the
    /// room. Every row has a row in [`NotificationsTable`] at the same position.
    pub UnreadTable: "unread", (String, String, u64) => Unread
);
table!(
    /// `(user_id, room_id) → RoomCounts`: the counts of the room's [`UnreadTable`] rows.
    /// Absent means zero.
    pub CountsTable: "unread_counts", (String, String) => RoomCounts
);

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

    fn is_zero(&self) -> bool {
        self.notifications == 0 && self.highlights == 0
    }
}

/// A room's unread counts: the main timeline's and each thread's (by root id).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomCounts {
    pub main: Counts,
    pub threads: BTreeMap<String, Counts>,
    /// Unread call invites, main timeline and threads together.
    pub calls: u64,
}
impl Record for RoomCounts {}

impl RoomCounts {
    /// Main timeline and threads together.
    pub fn total(&self) -> Counts {
        self.threads.values().fold(self.main, |a, b| Counts {
            notifications: a.notifications + b.notifications,
            highlights: a.highlights + b.highlights,
        })
    }

    fn add(&mut self, row: &Unread) {
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

impl ReadUpTo {
    fn covers(&self, sid: u64, thread: &str) -> bool {
        match self {
            ReadUpTo::All(upto) => sid <= *upto,
            ReadUpTo::Thread(t, upto) => sid <= *upto && t == thread,
        }
    }
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

/// A page of `GET /notifications`: `(event position, notification, read)` newest first, and
/// the position to continue from when more may follow.
pub type Page = (Vec<(u64, Notification, bool)>, Option<u64>);

/// Bounds one scan of a user's unread rows in a room.
const MAX_UNREAD_ROWS: usize = 1_000_000;

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

    /// The user's notifications after position `after`, oldest first, at most `limit`, each
    /// with whether it was read.
    pub fn after(
        &self,
        user_id: &UserId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Notification, bool)>> {
        let user = user_id.to_string();
        let from = (user.clone(), after.saturating_add(1));
        let rows = self.store.range_in_prefix::<NotificationsTable, _>(
            &(user.as_str(),),
            Some(&from),
            false,
            limit,
        )?;
        rows.into_iter()
            .map(|((_, sid), row)| {
                let unread = self
                    .store
                    .get::<UnreadTable>(&(user.clone(), row.room_id.clone(), sid))?
                    .is_some();
                Ok((sid, row, !unread))
            })
            .collect()
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
                counts.read(batch, event.sender, &read)?;
            }
            if let (Some(target), Some("leave" | "ban")) = (event.state_key, event.membership) {
                if let Ok(target) = UserId::parse(target) {
                    counts.read(batch, &target, &ReadUpTo::All(event.sid))?;
                }
            }
            let flat = FlattenedJson::from_raw(&Raw::<Value>::from_json(event.json.to_owned()));
            let mut rules = EventRules::new(&flat);
            let extra = invitee(event);
            for recipient in recipients.iter().chain(extra.as_ref()) {
                if recipient.user_id == event.sender {
                    continue;
                }
                let ruleset = self.push_rules.cached_ruleset(&recipient.user_id)?;
                ctx.user_id = recipient.user_id.clone();
                ctx.user_display_name.clone_from(&recipient.display_name);
                let actions = rules.actions(&ruleset, &ctx).await;
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
                let user = recipient.user_id.to_string();
                batch.put::<NotificationsTable>(
                    &(user, event.sid),
                    &Notification {
                        room_id: room_id.to_string(),
                        event_id: event.event_id.to_owned(),
                        thread: event.thread.clone(),
                        highlight,
                        actions: serde_json::to_string(&actions).unwrap_or_else(|_| "[]".into()),
                        ts: now,
                    },
                );
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
            changed |= counts.read(batch, user_id, read)?;
        }
        let new = counts.get(user_id)?.clone();
        counts.stage(batch);
        Ok(changed.then_some(new))
    }

    /// The user's notifications, newest first, before position `from` (all when `None`), at
    /// most `limit`, only highlights when `highlights_only`. Each comes with whether it was
    /// read, and the position to continue from when more may follow.
    pub fn list(
        &self,
        user_id: &UserId,
        from: Option<u64>,
        limit: usize,
        highlights_only: bool,
    ) -> Result<Page> {
        const PAGE: usize = 100;
        // Highlights-only pages skip rows; the walk is bounded all the same.
        const MAX_WALK: usize = 10_000;
        let user = user_id.to_string();
        let mut out = Vec::new();
        let mut cursor = match from {
            Some(0) => return Ok((out, None)),
            Some(from) => Some(from - 1),
            None => None,
        };
        let mut walked = 0;
        loop {
            let key = cursor.map(|c| (user.clone(), c));
            let rows = self.store.range_in_prefix::<NotificationsTable, _>(
                &(user.as_str(),),
                key.as_ref(),
                true,
                PAGE,
            )?;
            let done = rows.len() < PAGE;
            for ((_, sid), row) in rows {
                walked += 1;
                cursor = sid.checked_sub(1);
                if highlights_only && !row.highlight {
                    continue;
                }
                let unread = self
                    .store
                    .get::<UnreadTable>(&(user.clone(), row.room_id.clone(), sid))?
                    .is_some();
                out.push((sid, row, !unread));
                if out.len() == limit {
                    return Ok((out, Some(sid)));
                }
            }
            if done || cursor.is_none() {
                return Ok((out, None));
            }
            if walked >= MAX_WALK {
                return Ok((out, cursor.map(|c| c + 1)));
            }
        }
    }

    /// The user's unread notifications and unread call invites over all rooms (a push
    /// badge and `missed_calls`).
    pub fn unread_totals(&self, user_id: &UserId) -> Result<(u64, u64)> {
        let rows = self
            .store
            .scan_prefix::<CountsTable, _>(&(user_id.as_str(),), MAX_UNREAD_ROWS)?;
        Ok(rows.iter().fold((0, 0), |(unread, calls), (_, counts)| {
            (unread + counts.total().notifications, calls + counts.calls)
        }))
    }
}

/// The counts rows of one room touched by one batch, read once and written at the end, and the
/// unread rows this batch adds (kept here until then, so a later event of the same batch can
/// mark them read).
struct CountsOverlay<'a> {
    store: &'a Store,
    room_id: String,
    /// `user → (stored counts, new counts)`.
    counts: HashMap<OwnedUserId, (RoomCounts, RoomCounts)>,
    added: Vec<(OwnedUserId, u64, Unread)>,
    /// Stored unread rows this batch deletes.
    deleted: HashSet<(OwnedUserId, u64)>,
}

impl<'a> CountsOverlay<'a> {
    fn new(store: &'a Store, room_id: &RoomId) -> Self {
        Self {
            store,
            room_id: room_id.to_string(),
            counts: HashMap::new(),
            added: Vec::new(),
            deleted: HashSet::new(),
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
        self.get(user_id)?.add(&row);
        self.added.push((user_id.to_owned(), sid, row));
        Ok(())
    }

    /// Deletes the user's unread rows that `read` covers (stored ones and those added in this
    /// batch) and recounts the rest. Returns whether anything was read.
    fn read(&mut self, batch: &mut Batch, user_id: &UserId, read: &ReadUpTo) -> Result<bool> {
        if self.get(user_id)?.total().is_zero() {
            // No unread rows: the counts are their aggregate.
            return Ok(false);
        }
        let user = user_id.to_string();
        let stored = self.store.scan_prefix::<UnreadTable, _>(
            &(user.as_str(), self.room_id.as_str()),
            MAX_UNREAD_ROWS,
        )?;
        let mut recount = RoomCounts::default();
        let mut changed = false;
        for ((_, _, sid), row) in stored {
            if self.deleted.contains(&(user_id.to_owned(), sid)) {
                continue;
            }
            if read.covers(sid, &row.thread) {
                batch.delete::<UnreadTable>(&(user.clone(), self.room_id.clone(), sid));
                self.deleted.insert((user_id.to_owned(), sid));
                changed = true;
            } else {
                recount.add(&row);
            }
        }
        self.added.retain(|(u, sid, row)| {
            if u != user_id {
                return true;
            }
            if read.covers(*sid, &row.thread) {
                changed = true;
                return false;
            }
            recount.add(row);
            true
        });
        *self.get(user_id)? = recount;
        Ok(changed)
    }

    /// Stages the added unread rows and every counts row that changed; returns whose changed.
    fn stage(self, batch: &mut Batch) -> Vec<OwnedUserId> {
        let mut changed = Vec::new();
        for (user, sid, row) in self.added {
            batch.put::<UnreadTable>(&(user.to_string(), self.room_id.clone(), sid), &row);
        }
        for (user, (old, new)) in self.counts {
            if old == new {
                continue;
            }
            let key = (user.to_string(), self.room_id.clone());
            changed.push(user);
            if new.total().is_zero() {
                batch.delete::<CountsTable>(&key);
            } else {
                batch.put::<CountsTable>(&key, &new);
            }
        }
        changed
    }
}
