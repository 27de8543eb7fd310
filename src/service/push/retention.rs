//! Retention of the notifications list: read notifications older than [`KEEP_READ_MS`] are
//! deleted, so `notifications` does not grow for ever. Unread ones stay (they still count and
//! may still be delivered); their rows go once read and old enough.

use std::time::Duration;

use tokio::sync::watch;

use super::notifications::{MarksByRoom, NotificationsTable};
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
/// many. Walks the whole table a page at a time; each page is its own batch, so a crash
/// mid-way leaves only some deletions done, never a half-written row.
pub async fn sweep(store: &Store, cutoff: u64) -> Result<usize> {
    let mut deleted = 0;
    let mut from: Option<(String, u64)> = None;
    let mut marks: Option<MarksByRoom<'_>> = None;
    loop {
        let rows = store.range::<NotificationsTable>(from.as_ref(), false, PAGE)?;
        let done = rows.len() < PAGE;
        let mut batch = Batch::new();
        for ((user, sid), row) in &rows {
            if row.ts >= cutoff {
                continue;
            }
            let marks = match &mut marks {
                Some(m) if m.user() == user => m,
                _ => marks.insert(MarksByRoom::new(store, user)),
            };
            if marks.is_read(&row.room_id, *sid, &row.thread)? {
                batch.delete::<NotificationsTable>(&(user.clone(), *sid));
                deleted += 1;
            }
        }
        if !batch.is_empty() {
            store.commit(batch).await?;
        }
        match rows.last() {
            Some(((user, sid), _)) if !done => from = Some((user.clone(), sid + 1)),
            _ => return Ok(deleted),
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
