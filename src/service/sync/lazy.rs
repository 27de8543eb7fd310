//! Lazy-loaded members: which member events each device has been sent, so an incremental
//! sync sends a timeline sender's member event once per client session (spec: "Lazy-loading
//! room members"; redundant ones are sent when the filter asks for them).
//!
//! The record lives in memory only: the spec lets a server send redundant member events, so
//! forgetting (a restart, a device or the whole record over its bound) costs bandwidth, never correctness. An
//! entry counts as delivered only once the client syncs with a token at or past the response
//! that carried it, so a lost response does not make the member event go missing.

use std::{collections::HashMap, sync::Mutex};

/// Entries kept per device before its record is forgotten.
const MAX_ENTRIES_PER_DEVICE: usize = 20_000;
/// Devices tracked before every record is forgotten.
const MAX_DEVICES: usize = 10_000;
/// Entries kept over all devices before every record is forgotten (an entry is some 100
/// bytes, so about 20 MB): the per-device and device bounds alone would allow 200 million.
const MAX_ENTRIES: usize = 200_000;

/// `(room sid, member) → (member event sid, position of the first response carrying it)`.
type Sent = HashMap<(u64, String), (u64, u64)>;

#[derive(Default)]
struct Record {
    devices: HashMap<(String, String), Sent>,
    /// The entries over all devices.
    entries: usize,
}

#[derive(Default)]
pub struct LazyMembers {
    record: Mutex<Record>,
}

impl LazyMembers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        // Plain data: a panic while holding the lock leaves it usable.
        self.record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new client session (an initial sync): the device has none of the earlier events.
    pub fn reset(&self, user: &str, device: &str) {
        let mut record = self.lock();
        if let Some(sent) = record.devices.remove(&(user.to_owned(), device.to_owned())) {
            record.entries -= sent.len();
        }
    }

    /// The entries held over all devices.
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.lock().entries
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
        self.lock()
            .devices
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
        let mut guard = self.lock();
        let record = &mut *guard;
        let key = (user.to_owned(), device.to_owned());
        let new_device = !record.devices.contains_key(&key);
        if record.entries >= MAX_ENTRIES || (new_device && record.devices.len() >= MAX_DEVICES) {
            record.devices.clear();
            record.entries = 0;
        }
        let sent = record.devices.entry(key).or_default();
        if sent.len() >= MAX_ENTRIES_PER_DEVICE {
            record.entries -= sent.len();
            sent.clear();
        }
        let before = sent.len();
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
        record.entries += sent.len() - before;
    }
}

#[cfg(test)]
mod tests {
    use super::{LazyMembers, MAX_ENTRIES, MAX_ENTRIES_PER_DEVICE};

    /// Many devices each under their own bound still stay under the global one.
    #[test]
    fn entries_stay_bounded_over_all_devices() {
        let lazy = LazyMembers::default();
        let per_device = MAX_ENTRIES_PER_DEVICE / 2;
        for device in 0..(2 * MAX_ENTRIES / per_device) {
            let device = device.to_string();
            for member in 0..per_device {
                lazy.record("@u:x", &device, 1, &member.to_string(), 1, 1);
            }
            assert!(lazy.entries() <= MAX_ENTRIES, "{}", lazy.entries());
        }
        // The count follows resets and re-records exactly.
        lazy.record("@u:x", "fresh", 1, "@m:x", 1, 1);
        lazy.record("@u:x", "fresh", 1, "@m:x", 2, 2);
        let with_fresh = lazy.entries();
        lazy.reset("@u:x", "fresh");
        assert_eq!(lazy.entries(), with_fresh - 1);
        let total: usize = lazy.lock().devices.values().map(|s| s.len()).sum();
        assert_eq!(lazy.entries(), total);
    }
}
