//! Sliding sync connections: what each connection has been sent, so a response carries only
//! what changed since the position the client continues from.
//!
//! A connection is keyed by `(user, device, conn_id)`. Each response gets a new position
//! `"{run}_{seq}"`: `run` is random per server run, `seq` counts the connection's responses.
//! The connection keeps the [`Snapshot`] of its last few positions (the one a retry after a
//! lost response continues from among them), so memory per connection is bounded by
//! [`MAX_SNAPSHOTS`] times the rooms it was sent. Idle connections expire after
//! [`IDLE_EXPIRY`], and the oldest go when there are more than [`MAX_CONNECTIONS`] (or
//! [`MAX_PER_USER`] for one user).
//!
//! Nothing is stored: after a restart (another `run`) or once a connection expired, its
//! positions are unknown and the request is answered with `M_UNKNOWN_POS`; the client then
//! starts the connection again without a position (MSC4186 asks exactly that of it).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rand::RngExt;
use ruma::{OwnedRoomId, OwnedUserId, UserId};

/// Snapshots kept per connection: the newest and the ones a retry may still continue from.
pub const MAX_SNAPSHOTS: usize = 3;
/// A connection not used for this long is forgotten.
pub const IDLE_EXPIRY: Duration = Duration::from_secs(2 * 3600);
/// Connections kept over all users, and per user.
pub const MAX_CONNECTIONS: usize = 1_000;
pub const MAX_PER_USER: usize = 16;
/// Rooms a snapshot remembers; past it only the rooms of the newest response are kept (the
/// others, if they come back into view, are sent again in full: redundant, never wrong).
pub const MAX_ROOMS: usize = 20_000;

/// What the client was sent of one room, as of a position.
#[derive(Debug, Clone)]
pub struct RoomSent {
    /// The stream position up to which the room's timeline and state were sent.
    pub upto: u64,
    /// The room's configuration when it was last sent (`required_state`, timeline limit).
    pub config: Arc<RoomConfig>,
    /// The unread counts last sent `(notifications, highlights)`.
    pub counts: (u64, u64),
    /// Whether the user was joined then: a room joined since is sent in full again.
    pub joined: bool,
}

/// How a room is to be served: the union of the lists and subscriptions that include it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomConfig {
    /// `(event type, state key)` pairs, sorted and deduplicated, `$ME` already replaced.
    pub required_state: Vec<(String, String)>,
    pub timeline_limit: usize,
}

/// What a connection has been sent as of one of its positions.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The stream position the response covered.
    pub stream: u64,
    /// The typing serial the response covered.
    pub typing: u64,
    pub rooms: HashMap<OwnedRoomId, RoomSent>,
    /// The count of each list.
    pub lists: BTreeMap<String, u64>,
}

/// Where a request continues from.
pub struct Resume {
    /// The connection's position this response will carry.
    pub seq: u64,
    /// What the client holds: `None` for a new connection.
    pub previous: Option<(u64, Arc<Snapshot>)>,
    /// The run part of positions.
    run: u32,
}

impl Resume {
    /// The position string of this response.
    pub fn pos(&self) -> String {
        format!("{:08x}_{}", self.run, self.seq)
    }
}

struct Connection {
    /// The last position handed out.
    seq: u64,
    last_used: Instant,
    /// Oldest first.
    snapshots: VecDeque<(u64, Arc<Snapshot>)>,
}

type Key = (OwnedUserId, String, String);

pub struct Connections {
    run: u32,
    conns: Mutex<HashMap<Key, Connection>>,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            run: rand::rng().random(),
            conns: Mutex::new(HashMap::new()),
        }
    }
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Connection>> {
        // Plain data: a panic while holding the lock leaves it usable.
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a request of connection `conn_id`: a new connection without `pos` (replacing
    /// any of that id), else the snapshot of `pos`. `None`: the position is unknown (another
    /// run, an expired or replaced connection, a position the connection no longer keeps).
    pub fn resume(
        &self,
        user: &UserId,
        device: &str,
        conn_id: &str,
        pos: Option<&str>,
    ) -> Option<Resume> {
        let now = Instant::now();
        let mut conns = self.lock();
        conns.retain(|_, c| now.duration_since(c.last_used) < IDLE_EXPIRY);
        let key = (user.to_owned(), device.to_owned(), conn_id.to_owned());
        let Some(pos) = pos else {
            if !conns.contains_key(&key) {
                make_room(&mut conns, user);
            }
            conns.insert(
                key,
                Connection {
                    seq: 1,
                    last_used: now,
                    snapshots: VecDeque::new(),
                },
            );
            return Some(Resume {
                seq: 1,
                previous: None,
                run: self.run,
            });
        };
        let (run, seq) = pos.split_once('_')?;
        if u32::from_str_radix(run, 16).ok()? != self.run {
            return None;
        }
        let seq: u64 = seq.parse().ok()?;
        let conn = conns.get_mut(&key)?;
        let snapshot = conn
            .snapshots
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, snapshot)| snapshot.clone())?;
        conn.seq += 1;
        conn.last_used = now;
        Some(Resume {
            seq: conn.seq,
            previous: Some((seq, snapshot)),
            run: self.run,
        })
    }

    /// Records what the response of `resume` sent. Snapshots older than the one the request
    /// continued from are dropped: the client acknowledged a newer position.
    pub fn commit(
        &self,
        user: &UserId,
        device: &str,
        conn_id: &str,
        resume: &Resume,
        snapshot: Snapshot,
    ) {
        let mut conns = self.lock();
        let key = (user.to_owned(), device.to_owned(), conn_id.to_owned());
        let Some(conn) = conns.get_mut(&key) else {
            // Expired or replaced while the request ran: its position will be unknown.
            return;
        };
        if let Some((acked, _)) = &resume.previous {
            conn.snapshots.retain(|(s, _)| s >= acked);
        }
        conn.snapshots.push_back((resume.seq, Arc::new(snapshot)));
        while conn.snapshots.len() > MAX_SNAPSHOTS {
            conn.snapshots.pop_front();
        }
        conn.last_used = Instant::now();
    }

    /// The open connections.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Makes room for one more connection of `user`: drops the user's least recently used one
/// past [`MAX_PER_USER`], and the least recently used of all past [`MAX_CONNECTIONS`].
fn make_room(conns: &mut HashMap<Key, Connection>, user: &UserId) {
    let oldest = |conns: &HashMap<Key, Connection>, only: Option<&UserId>| {
        conns
            .iter()
            .filter(|(k, _)| only.is_none_or(|u| k.0 == u))
            .min_by_key(|(_, c)| c.last_used)
            .map(|(k, _)| k.clone())
    };
    if conns.keys().filter(|k| k.0 == user).count() >= MAX_PER_USER {
        if let Some(key) = oldest(conns, Some(user)) {
            conns.remove(&key);
        }
    }
    if conns.len() >= MAX_CONNECTIONS {
        if let Some(key) = oldest(conns, None) {
            conns.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> OwnedUserId {
        "@u:x".try_into().unwrap()
    }

    #[test]
    fn positions_resume_and_expire() {
        let conns = Connections::default();
        let first = conns.resume(&user(), "D", "c", None).unwrap();
        assert!(first.previous.is_none());
        let pos1 = first.pos();
        conns.commit(&user(), "D", "c", &first, Snapshot::default());
        let second = conns.resume(&user(), "D", "c", Some(&pos1)).unwrap();
        assert_eq!(second.previous.as_ref().unwrap().0, 1);
        let pos2 = second.pos();
        conns.commit(&user(), "D", "c", &second, Snapshot::default());
        // A retry from the older position still works (the newer response may be lost).
        let retry = conns.resume(&user(), "D", "c", Some(&pos1)).unwrap();
        conns.commit(&user(), "D", "c", &retry, Snapshot::default());
        assert!(conns.resume(&user(), "D", "c", Some(&pos2)).is_some());
        // Another connection id, device, run or a garbled position is unknown.
        assert!(conns.resume(&user(), "D", "other", Some(&pos1)).is_none());
        assert!(conns.resume(&user(), "E", "c", Some(&pos1)).is_none());
        assert!(conns.resume(&user(), "D", "c", Some("0_1")).is_none());
        assert!(conns.resume(&user(), "D", "c", Some("x")).is_none());
        // Restarting the connection forgets its positions.
        conns.resume(&user(), "D", "c", None).unwrap();
        assert!(conns.resume(&user(), "D", "c", Some(&pos2)).is_none());
    }

    #[test]
    fn connections_stay_bounded() {
        let conns = Connections::default();
        for i in 0..(MAX_PER_USER + 5) {
            conns.resume(&user(), "D", &i.to_string(), None).unwrap();
        }
        assert_eq!(conns.len(), MAX_PER_USER);
        for i in 0..(MAX_CONNECTIONS + 5) {
            let other: OwnedUserId = format!("@u{i}:x").try_into().unwrap();
            conns.resume(&other, "D", "c", None).unwrap();
        }
        assert_eq!(conns.len(), MAX_CONNECTIONS);
    }

    #[test]
    fn snapshots_stay_bounded() {
        let conns = Connections::default();
        let mut resume = conns.resume(&user(), "D", "c", None).unwrap();
        for _ in 0..10 {
            // Retries from the first position keep every snapshot but the bound.
            conns.commit(&user(), "D", "c", &resume, Snapshot::default());
            let pos = resume.pos();
            resume = conns.resume(&user(), "D", "c", Some(&pos)).unwrap();
        }
        let conns_map = conns.lock();
        let conn = conns_map.values().next().unwrap();
        assert!(conn.snapshots.len() <= MAX_SNAPSHOTS);
    }
}
