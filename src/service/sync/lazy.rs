//! Lazy-loaded members: which member events each device has been sent, so an incremental
//! sync sends a timeline sender's member event once per client session (spec: "Lazy-loading
//! room members"; redundant ones are sent when the filter asks for them).
//!
//! The record lives in memory only: the spec lets a server send redundant member events, so
//! forgetting (a restart, a device over its bound) costs bandwidth, never correctness. An
//! entry counts as delivered only once the client syncs with a token at or past the response
//! that carried it, so a lost response does not make the member event go missing.

use std::{collections::HashMap, sync::Mutex};

/// Entries kept per device before its record is forgotten.
const MAX_ENTRIES_PER_DEVICE: usize = 20_000;
/// Devices tracked before every record is forgotten.
const MAX_DEVICES: usize = 10_000;

/// `(room sid, member) → (member event sid, position of the first response carrying it)`.
type Sent = HashMap<(u64, String), (u64, u64)>;

#[derive(Default)]
pub struct LazyMembers {
    devices: Mutex<HashMap<(String, String), Sent>>,
}

impl LazyMembers {
    fn devices(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Sent>> {
        // Plain data: a panic while holding the lock leaves it usable.
        self.devices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new client session (an initial sync): the device has none of the earlier events.
    pub fn reset(&self, user: &str, device: &str) {
        self.devices().remove(&(user.to_owned(), device.to_owned()));
    }

    /// Whether the client syncing from `since` already holds member event `member_sid`.
    pub fn delivered(
        &self,
        user: &str,
        device: &str,
        room_sid: u64,
        member: &str,
        member_sid: u64,
        since: u64,
    ) -> bool {
        self.devices()
            .get(&(user.to_owned(), device.to_owned()))
            .and_then(|sent| sent.get(&(room_sid, member.to_owned())))
            .is_some_and(|&(sid, at)| sid == member_sid && at <= since)
    }

    /// Records that a response with token position `at` carries member event `member_sid`.
    pub fn record(
        &self,
        user: &str,
        device: &str,
        room_sid: u64,
        member: &str,
        member_sid: u64,
        at: u64,
    ) {
        let mut devices = self.devices();
        let key = (user.to_owned(), device.to_owned());
        if !devices.contains_key(&key) && devices.len() >= MAX_DEVICES {
            devices.clear();
        }
        let sent = devices.entry(key).or_default();
        if sent.len() >= MAX_ENTRIES_PER_DEVICE {
            sent.clear();
        }
        let entry = sent
            .entry((room_sid, member.to_owned()))
            .or_insert((member_sid, at));
        // The earliest response carrying this event is the one that counts: a client past
        // its token has it, whichever response (or retry) it received.
        if entry.0 != member_sid {
            *entry = (member_sid, at);
        } else {
            entry.1 = entry.1.min(at);
        }
    }
}
