//! Retention of the notifications list: read notifications older than [`KEEP_READ_MS`] are
//! deleted, so `notified_events` does not grow for ever. Unread ones stay (they still count
//! and may still be delivered); they go once read and old enough. An event's row loses the
//! users who read it, and goes when none is left.

use std::{collections::HashMap, time::Duration};

use tokio::sync::watch;

use super::notifications::{MarksByRoom, NotifiedTable};
use crate::{
    error::Result,
    service::users::now_ms,
    store::{Batch, Store},
};

/// How long a read notification stays listed (`GET /notifications`).
pub const KEEP_READ_MS: u64 = 30 * 24 * 3600 * 1000;
/// How often the sweep runs.
pub const SWEEP_EVERY: Duration = Duration::from_secs(6 * 3600);
/// Rows looked at per read, and most deletions per batch.
const PAGE: usize = 1000;

/// Deletes read notifications persisted before `cutoff` (ms since the epoch). Returns how
/// many (one per user and event). Walks the whole table a page at a time; each page is its
/// own batch, so a crash mid-way leaves only some deletions done, never a half-written row.
pub async fn sweep(store: &Store, cutoff: u64) -> Result<usize> {
    let mut deleted = 0;
    let mut from: Option<(String, u64)> = None;
    let mut marks: HashMap<String, MarksByRoom<'_>> = HashMap::new();
    loop {
        let rows = store.range::<NotifiedTable>(from.as_ref(), false, PAGE)?;
        // Where the next page starts, unless this one was the last.
        let next = match rows.last() {
            Some(((room, sid), _)) if rows.len() == PAGE => Some(match sid.checked_add(1) {
                Some(next) => (room.clone(), next),
                // The last position a room can have: the next room's rows follow.
                None => (format!("{room}\0"), 0),
            }),
            _ => None,
        };
        let mut batch = Batch::new();
        for ((room, sid), mut row) in rows {
            if row.ts >= cutoff {
                continue;
            }
            let listed = row.users.len();
            let mut unread = Vec::with_capacity(listed);
            for user in std::mem::take(&mut row.users) {
                let marks = marks
                    .entry(user.user_id.clone())
                    .or_insert_with(|| MarksByRoom::new(store, &user.user_id));
                if marks.is_read(&room, sid, &row.thread)? {
                    deleted += 1;
                } else {
                    unread.push(user);
                }
            }
            row.users = unread;
            let key = (room, sid);
            if row.users.is_empty() {
                batch.delete::<NotifiedTable>(&key);
            } else if row.users.len() < listed {
                // Rows are written once, with their event, and only this sweep rewrites
                // them: nothing changed this one since it was read.
                batch.put::<NotifiedTable>(&key, &row);
            }
        }
        // The read marks change with receipts: read again for each page.
        marks.clear();
        if !batch.is_empty() {
            store.commit(batch).await?;
        }
        match next {
            Some(next) => from = Some(next),
            None => return Ok(deleted),
        }
    }
}

/// Sweeps at start and then every [`SWEEP_EVERY`] until `shutdown`.
pub async fn run(store: Store, mut shutdown: watch::Receiver<bool>) {
    loop {
        match sweep(&store, now_ms().saturating_sub(KEEP_READ_MS)).await {
            Ok(0) => {}
            Ok(n) => log::info!("removed {n} read notifications older than 30 days"),
            Err(e) => log::warn!("cannot sweep old notifications: {e:?}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}
