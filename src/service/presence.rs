//! Presence (spec: "Presence"): each user's state (`online`, `unavailable`, `offline`), status
//! message and last active time, shown to the users who share a room with them.
//!
//! The stored record changes in two ways:
//! - a *visible* change (state, status message, or whether the user counts as currently active)
//!   takes a position in the global stream and a row in the change log, and wakes the syncs of
//!   everyone sharing a room with the user;
//! - a mere refresh of the last active time (a syncing client, at most once a minute) rewrites
//!   the record without a position: per the spec's `currently_active` rule, clients are not sent
//!   every move of the last active time while the user is active.
//!
//! Idle timeout: an `online` user whose last activity is more than [`IDLE_AFTER_MS`] old is shown
//! as `unavailable` (and not currently active). This is applied when presence is read (GET, sync)
//! and does not produce a stream update of its own; the next visible change of the user does.

use std::{collections::BTreeSet, sync::Arc};

use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{
    federation::queue::{Edu, Queue},
    notifier::Notifier,
    rooms::Rooms,
    stream::Stream,
    users::now_ms,
};
use crate::{
    error::{Error, Result},
    store::{Batch, CommitError, Record, Store},
    table,
};

table!(
    /// `user_id → PresenceRecord`: the user's latest presence. No row: the user never set one
    /// (shown as `offline`).
    pub PresenceTable: "presence", String => PresenceRecord
);
table!(
    /// `position → user_id`: the change log `/sync` reads. Each user has exactly one row, at
    /// their record's `pos`; the previous row is deleted in the same batch.
    pub PresenceChanges: "presence_changes", u64 => String
);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PresenceRecord {
    /// `online`, `unavailable` or `offline`.
    pub state: String,
    pub status_msg: Option<String>,
    /// The last pro-active action, in ms since the Unix epoch.
    pub last_active_ms: u64,
    /// Stream position of the latest visible change.
    pub pos: u64,
}
impl Record for PresenceRecord {}

/// An online user inactive for longer than this is shown as `unavailable`.
pub const IDLE_AFTER_MS: u64 = 5 * 60 * 1000;
/// A syncing client refreshes the last active time at most this often.
const REFRESH_EVERY_MS: u64 = 60 * 1000;
/// Longest status message, in bytes.
pub const MAX_STATUS_BYTES: usize = 1024;
const UPDATE_ATTEMPTS: usize = 8;
const MAX_ROWS: usize = 100_000;

/// Presence as a client sees it at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub state: String,
    pub status_msg: Option<String>,
    pub last_active_ago: Option<u64>,
    pub currently_active: bool,
}

impl View {
    pub fn of(record: Option<&PresenceRecord>, now: u64) -> Self {
        let Some(record) = record else {
            return Self {
                state: "offline".into(),
                status_msg: None,
                last_active_ago: None,
                currently_active: false,
            };
        };
        let ago = now.saturating_sub(record.last_active_ms);
        let idle = ago > IDLE_AFTER_MS;
        let state = if record.state == "online" && idle {
            "unavailable".to_owned()
        } else {
            record.state.clone()
        };
        Self {
            currently_active: state == "online",
            state,
            status_msg: record.status_msg.clone(),
            last_active_ago: Some(ago),
        }
    }

    /// What a change is compared on: everything but the last active time.
    fn visible(&self) -> (&str, Option<&str>, bool) {
        (
            &self.state,
            self.status_msg.as_deref(),
            self.currently_active,
        )
    }

    /// The `m.presence` event content.
    pub fn content(&self) -> Value {
        let mut content = json!({
            "presence": self.state,
            "currently_active": self.currently_active,
        });
        if let Some(ago) = self.last_active_ago {
            content["last_active_ago"] = json!(ago);
        }
        if let Some(msg) = &self.status_msg {
            content["status_msg"] = json!(msg);
        }
        content
    }
}

/// The users who share a joined room with `user_id`, the user included.
pub fn co_members(rooms: &Rooms, user_id: &UserId) -> Result<BTreeSet<OwnedUserId>> {
    let mut out = BTreeSet::from([user_id.to_owned()]);
    for (room_id, membership, _) in rooms.memberships_of(user_id)? {
        if membership != "join" {
            continue;
        }
        let Some(room) = rooms.room(&room_id)? else {
            continue;
        };
        for (member, membership) in rooms.members(room.sid)? {
            if membership == "join" {
                if let Ok(member) = UserId::parse(member) {
                    out.insert(member);
                }
            }
        }
    }
    Ok(out)
}

/// Whether two users share a joined room.
pub fn share_a_room(rooms: &Rooms, a: &UserId, b: &UserId) -> Result<bool> {
    let joined = |user: &UserId| -> Result<BTreeSet<ruma::OwnedRoomId>> {
        Ok(rooms
            .memberships_of(user)?
            .into_iter()
            .filter(|(_, m, _)| m == "join")
            .map(|(r, _, _)| r)
            .collect())
    };
    let mine = joined(a)?;
    Ok(joined(b)?.iter().any(|r| mine.contains(r)))
}

pub struct Presence {
    store: Store,
    stream: Arc<Stream>,
    notifier: Arc<Notifier>,
    /// Local users' visible changes go to the servers sharing a room with them.
    fed_queue: Arc<Queue>,
}

/// Most servers one presence change is sent to (the first ones by name): presence is the
/// chattiest EDU, and a user in rooms with thousands of servers must not cost thousands of
/// queue rows per change.
pub const MAX_PRESENCE_DESTINATIONS: usize = 100;

/// What a write does to the status message.
pub enum StatusMsg {
    Keep,
    Set(Option<String>),
}

impl Presence {
    pub fn new(
        store: Store,
        stream: Arc<Stream>,
        notifier: Arc<Notifier>,
        fed_queue: Arc<Queue>,
    ) -> Self {
        Self {
            store,
            stream,
            notifier,
            fed_queue,
        }
    }

    /// A remote user's presence from their server (`m.presence`), kept only for users who
    /// share a room with a local user; `last_active_ago` as the remote server counted it.
    pub async fn set_remote(
        &self,
        rooms: &Rooms,
        user_id: &UserId,
        state: &str,
        status_msg: Option<String>,
        last_active_ago: u64,
    ) -> Result<()> {
        let shared = co_members(rooms, user_id)?
            .iter()
            .any(|u| u.server_name() == self.fed_queue.server_name());
        if !shared {
            log::debug!("ignoring presence of {user_id}: no room shared with a local user");
            return Ok(());
        }
        let status_msg = status_msg.filter(|m| !m.is_empty()).map(|mut m| {
            // Cut on a character boundary, as a local client's message is limited.
            while m.len() > MAX_STATUS_BYTES {
                m.pop();
            }
            m
        });
        self.write(rooms, user_id, |_, now| {
            Some((
                state.to_owned(),
                status_msg.clone(),
                now.saturating_sub(last_active_ago),
            ))
        })
        .await
    }

    pub fn get(&self, user_id: &UserId) -> Result<Option<PresenceRecord>> {
        Ok(self.store.get::<PresenceTable>(&user_id.to_string())?)
    }

    /// Sets the user's state (spec: `PUT /presence/{userId}/status`); counts as activity.
    pub async fn set(
        &self,
        rooms: &Rooms,
        user_id: &UserId,
        state: &str,
        status_msg: StatusMsg,
    ) -> Result<()> {
        if let StatusMsg::Set(Some(msg)) = &status_msg {
            if msg.len() > MAX_STATUS_BYTES {
                return Err(Error::invalid_param(format!(
                    "status_msg must be at most {MAX_STATUS_BYTES} bytes"
                )));
            }
        }
        self.write(rooms, user_id, |current, now| {
            let status_msg = match &status_msg {
                StatusMsg::Keep => current.and_then(|c| c.status_msg.clone()),
                StatusMsg::Set(msg) => msg.clone().filter(|m| !m.is_empty()),
            };
            Some((state.to_owned(), status_msg, now))
        })
        .await
    }

    /// A syncing client's `set_presence`: `online` marks the user online and active,
    /// `unavailable` marks them unavailable, `offline` changes nothing.
    pub async fn touch(&self, rooms: &Rooms, user_id: &UserId, state: &str) -> Result<()> {
        if state == "offline" {
            return Ok(());
        }
        // Nothing to write if the user is in that state and (online) was refreshed lately.
        let unchanged = |current: Option<&PresenceRecord>, now: u64| {
            current.is_some_and(|c| {
                let fresh = now.saturating_sub(c.last_active_ms) < REFRESH_EVERY_MS;
                c.state == state && (state != "online" || fresh)
            })
        };
        // The common case costs one read. Checked again inside the write, so that concurrent
        // requests of one user (a burst of sends) stop once one of them has refreshed it.
        if unchanged(self.get(user_id)?.as_ref(), now_ms()) {
            return Ok(());
        }
        self.write(rooms, user_id, |current, now| {
            if unchanged(current, now) {
                return None;
            }
            let status_msg = current.and_then(|c| c.status_msg.clone());
            if state == "online" {
                Some((state.to_owned(), status_msg, now))
            } else {
                let last = current.map(|c| c.last_active_ms).unwrap_or(now);
                Some((state.to_owned(), status_msg, last))
            }
        })
        .await
    }

    /// Read-modify-write of the user's record: `change` returns the new state, message and
    /// last active time. A visible change takes a stream position and wakes co-members.
    async fn write(
        &self,
        rooms: &Rooms,
        user_id: &UserId,
        change: impl Fn(Option<&PresenceRecord>, u64) -> Option<(String, Option<String>, u64)>,
    ) -> Result<()> {
        let key = user_id.to_string();
        for _ in 0..UPDATE_ATTEMPTS {
            let now = now_ms();
            let current = self.get(user_id)?;
            let Some((state, status_msg, last_active_ms)) = change(current.as_ref(), now) else {
                return Ok(());
            };
            let mut next = PresenceRecord {
                state,
                status_msg,
                last_active_ms,
                pos: current.as_ref().map(|c| c.pos).unwrap_or(0),
            };
            let before = View::of(current.as_ref(), now);
            let after = View::of(Some(&next), now);
            let visible = current.is_none() || before.visible() != after.visible();
            let mut batch = Batch::new();
            batch.expect_value::<PresenceTable>(&key, current.as_ref());
            let pending = if visible {
                let pending = self.stream.allocate()?;
                if let Some(c) = &current {
                    batch.delete::<PresenceChanges>(&c.pos);
                }
                next.pos = pending.pos;
                batch.put::<PresenceChanges>(&pending.pos, &key);
                Some(pending)
            } else if current.as_ref() == Some(&next) {
                return Ok(());
            } else {
                None
            };
            batch.put::<PresenceTable>(&key, &next);
            // Only visible changes wake anyone: those who share a room with the user.
            let wake_users = if pending.is_some() {
                co_members(rooms, user_id)?
            } else {
                BTreeSet::new()
            };
            let local = user_id.server_name() == self.fed_queue.server_name();
            let destinations: BTreeSet<_> = match &pending {
                Some(pending) if local => {
                    let destinations = self
                        .fed_queue
                        .remote_servers(wake_users.iter().map(|m| m.as_ref()))
                        .into_iter()
                        .take(MAX_PRESENCE_DESTINATIONS)
                        .collect();
                    let view = View::of(Some(&next), now);
                    let mut update = view.content();
                    update["user_id"] = json!(user_id);
                    update["last_active_ago"] = json!(view.last_active_ago.unwrap_or(0));
                    let edu = Edu::new("m.presence", json!({ "push": [update] }));
                    self.fed_queue
                        .stage_edu(&mut batch, pending.pos, &destinations, &edu)?;
                    destinations
                }
                _ => BTreeSet::new(),
            };
            let notifier = self.notifier.clone();
            let fed_queue = self.fed_queue.clone();
            let wake = move || {
                notifier.notify(wake_users.iter().map(|m| m.as_ref()));
                fed_queue.wake(destinations);
            };
            let positions: Vec<_> = pending.into_iter().collect();
            match self
                .stream
                .commit(&self.store, batch, positions, (), wake)
                .await
            {
                Ok(()) => return Ok(()),
                Err(CommitError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommitError::Conflict.into())
    }

    /// Users whose presence changed visibly after position `since` and at or before `upto`,
    /// with their records.
    pub fn changes_since(&self, since: u64, upto: u64) -> Result<Vec<(String, PresenceRecord)>> {
        let rows = self
            .store
            .range::<PresenceChanges>(Some(&(since + 1)), false, MAX_ROWS)?;
        let mut out = Vec::new();
        for (pos, user) in rows {
            if pos > upto {
                break;
            }
            if let Some(record) = self.store.get::<PresenceTable>(&user)? {
                if record.pos == pos {
                    out.push((user, record));
                }
            }
        }
        Ok(out)
    }
}
