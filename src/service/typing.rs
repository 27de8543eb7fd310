//! Typing notifications: who is typing in which room, in memory only (spec: "Typing
//! Notifications"; they are ephemeral and not part of the event graph).
//!
//! Every change (a user starts or stops typing, or a timeout lapses) takes the next value of a
//! *typing serial* and stamps the room with it. A sync token carries the serial the client has
//! seen (`"{pos}_{serial}"`), so a sync sends `m.typing` for exactly the rooms stamped after it.
//! Serials start at the server's start time in microseconds, so they keep increasing across
//! restarts and a token from an earlier run is recognisable (its serial is below this run's
//! first one); such a client gets the current typing list of every joined room once, which
//! clears anyone it still shows as typing.
//!
//! Expiry is lazy: [`Typing::current_serial`] first drops every lapsed entry (stamping its room),
//! and a waiting `/sync` sleeps no longer than the earliest deadline among its rooms
//! ([`Typing::earliest_deadline`]), so a lapse reaches every member's long poll on time without
//! a timer task. Memory: one small entry per room in which someone typed since the start.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

use super::notifier::Notifier;

/// Longest typing timeout honoured; longer requests are cut to this.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Default)]
struct RoomTyping {
    /// Serial of the latest change in this room.
    changed: u64,
    /// Who is typing, until when.
    users: BTreeMap<OwnedUserId, Instant>,
}

struct Inner {
    serial: u64,
    rooms: HashMap<OwnedRoomId, RoomTyping>,
}

pub struct Typing {
    /// The first serial of this run; serials of earlier runs are below it.
    epoch: u64,
    notifier: Arc<Notifier>,
    inner: Mutex<Inner>,
}

impl Typing {
    pub fn new(notifier: Arc<Notifier>) -> Self {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
            .unwrap_or(1);
        Self {
            epoch,
            notifier,
            inner: Mutex::new(Inner {
                serial: epoch,
                rooms: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a serial from a client's token was issued by this run (and can be compared with
    /// room stamps); anything else means "unknown, send everything".
    pub fn is_current_run(&self, serial: u64) -> bool {
        serial >= self.epoch && serial <= self.lock().serial
    }

    /// Starts (`Some(timeout)`) or stops (`None`) `user_id` typing in `room_id`, then wakes the
    /// syncs of `members` (the room's joined members) if the visible list changed.
    pub fn set<'a>(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        timeout: Option<Duration>,
        members: impl IntoIterator<Item = &'a UserId>,
    ) {
        let now = Instant::now();
        let changed = {
            let mut inner = self.lock();
            Self::expire(&mut inner, now);
            let inner = &mut *inner;
            let room = inner.rooms.entry(room_id.to_owned()).or_default();
            let changed = match timeout {
                Some(timeout) => room
                    .users
                    .insert(user_id.to_owned(), now + timeout.min(MAX_TIMEOUT))
                    .is_none(),
                None => room.users.remove(user_id).is_some(),
            };
            if changed {
                inner.serial += 1;
                room.changed = inner.serial;
            }
            changed
        };
        // Renewing a running timeout changes nothing a client sees.
        if changed {
            self.notifier.notify(members);
        }
    }

    /// Drops lapsed entries, stamping their rooms with a new serial.
    fn expire(inner: &mut Inner, now: Instant) {
        let mut serial = inner.serial;
        for room in inner.rooms.values_mut() {
            let before = room.users.len();
            room.users.retain(|_, deadline| *deadline > now);
            if room.users.len() != before {
                serial += 1;
                room.changed = serial;
            }
        }
        inner.serial = serial;
    }

    /// The serial a sync reads up to, after applying every lapsed timeout.
    pub fn current_serial(&self) -> u64 {
        let mut inner = self.lock();
        Self::expire(&mut inner, Instant::now());
        inner.serial
    }

    /// The typing list of a room if it changed after serial `since`; always when `since` is
    /// `None` (the client knows nothing: an initial sync, or a token from an earlier run).
    pub fn room_since(&self, room_id: &RoomId, since: Option<u64>) -> Option<Vec<OwnedUserId>> {
        let inner = self.lock();
        let room = inner.rooms.get(room_id);
        let changed = match (since, room) {
            (None, _) => true,
            (Some(since), Some(room)) => room.changed > since,
            (Some(_), None) => false,
        };
        changed.then(|| {
            room.map(|r| r.users.keys().cloned().collect())
                .unwrap_or_default()
        })
    }

    /// Whether anyone is typing in any room (entries not yet found lapsed included).
    pub fn anyone_typing(&self) -> bool {
        self.lock()
            .rooms
            .values()
            .any(|room| !room.users.is_empty())
    }

    /// The earliest moment a typing entry in one of these rooms lapses.
    pub fn earliest_deadline<'a>(
        &self,
        rooms: impl IntoIterator<Item = &'a RoomId>,
    ) -> Option<Instant> {
        let inner = self.lock();
        rooms
            .into_iter()
            .filter_map(|room| inner.rooms.get(room))
            .flat_map(|room| room.users.values().copied())
            .min()
    }
}
