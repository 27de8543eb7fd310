//! Server-side search (`POST /search`, category `room_events`): a full-text index of the
//! `body`, `name` and `topic` of events, kept in the store beside the events.
//!
//! - `tokenize`: Unicode words, case folding, ideograph bigrams (same for text and queries);
//! - `pending`: the events stored but not indexed yet, and the rooms that have some;
//! - `index`: the tables, and the rows an event adds (staged by the indexer, many events of a
//!   room a commit) or a redaction removes;
//! - `query`: candidate generation under a work budget, read authorization, BM25 ranking.
//!
//! Events stored before the index existed (schema version 3) are indexed once, at the first
//! start of a build with the index ([`Search::backfill`]), before the server answers requests.

pub mod index;
pub mod pending;
pub mod query;
pub mod tokenize;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use serde_json::Value;

use crate::{
    error::Result,
    service::rooms::{EventMetaTable, Pdus, Rooms},
    store::{Batch, Store},
};

/// Events looked at per backfill commit.
const BACKFILL_CHUNK: usize = 1_000;

/// Pending events of a room indexed per commit: the room's sends wait for each such commit
/// (it holds the room lock), so it is kept to about a send batch's commit time.
const INDEX_CHUNK: usize = 128;

/// How long the indexer lets pending events gather after the first one: long enough that a
/// busy room's events are indexed together, short enough that little waits for a query.
const INDEX_DELAY: Duration = Duration::from_millis(500);

pub struct Search {
    store: Store,
    rooms: Arc<Rooms>,
    /// Held by an indexing pass ([`Search::catch_up`]): a query that comes during one waits
    /// for it, then indexes what was marked since.
    pass: Arc<tokio::sync::Mutex<()>>,
}

impl Search {
    pub fn new(store: Store, rooms: Arc<Rooms>) -> Self {
        Self {
            store,
            rooms,
            pass: Default::default(),
        }
    }

    /// Indexes the rooms' pending events as they come (the indexer's task), until `shutdown`.
    pub async fn run_indexer(&self, mut shutdown: watch::Receiver<bool>) {
        let pending = self.rooms.search_pending.clone();
        loop {
            tokio::select! {
                _ = async {
                    pending.marked().await;
                    tokio::time::sleep(INDEX_DELAY).await;
                } => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            if let Err(e) = self.catch_up().await {
                log::warn!("search index: cannot index pending events: {e}");
            }
        }
    }

    /// Indexes the pending events of every room that has some (before a query reads the
    /// index, and from the indexer). The pass runs in a task of its own: a query dropped
    /// meanwhile neither loses the rooms it took nor lets a room's lock go before the commit
    /// made under it has landed.
    pub async fn catch_up(&self) -> Result<()> {
        let (store, rooms, pass) = (self.store.clone(), self.rooms.clone(), self.pass.clone());
        tokio::spawn(async move {
            let _pass = pass.lock().await;
            let mut taken = rooms.search_pending.take().into_iter();
            while let Some((room_sid, room_id)) = taken.next() {
                if let Err(e) = index_room(&store, &rooms, room_sid, &room_id).await {
                    // Left pending: the next pass tries again.
                    rooms.search_pending.mark(room_sid, &room_id);
                    for (room_sid, room_id) in taken {
                        rooms.search_pending.mark(room_sid, &room_id);
                    }
                    return Err(e);
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| crate::error::Error::unknown(format!("search indexing failed: {e}")))?
    }

    /// Runs a query (store reads only; call it on the blocking pool).
    pub fn search(&self, query: &query::Query<'_>) -> Result<query::Page> {
        query::search(&self.store, &self.rooms, query)
    }

    /// Indexes every stored event that is not indexed yet, in commits of
    /// [`BACKFILL_CHUNK`] events, each with its progress. Runs before the server takes
    /// requests, so no room lock is needed; after a crash it continues from the last commit
    /// (and an event already indexed is never indexed twice). Returns the events indexed.
    pub fn backfill(&self) -> Result<u64> {
        if self
            .store
            .get::<index::Progress>(&"backfill_done".to_owned())?
            .is_some()
        {
            return Ok(0);
        }
        let mut next = self
            .store
            .get::<index::Progress>(&"backfill_next".to_owned())?
            .unwrap_or(0);
        let mut indexed = 0;
        loop {
            let rows = self
                .store
                .range::<EventMetaTable>(Some(&next), false, BACKFILL_CHUNK)?;
            let mut batch = Batch::new();
            let mut overlay = index::Overlay::deferred();
            let Some(last) = rows.last().map(|(sid, _)| *sid) else {
                batch.put::<index::Progress>(&"backfill_done".to_owned(), &1);
                self.store.commit_blocking(batch)?;
                if indexed > 0 {
                    log::info!("search index: indexed {indexed} existing events");
                }
                return Ok(indexed);
            };
            for (sid, meta) in &rows {
                let Some(content) = unindexed_content(&self.store, *sid)? else {
                    continue;
                };
                let before = batch.len();
                index::stage_add(
                    &self.store,
                    &mut batch,
                    &mut overlay,
                    meta.room_sid,
                    *sid,
                    &content,
                )?;
                if batch.len() > before {
                    indexed += 1;
                }
            }
            overlay.write(&mut batch);
            next = last + 1;
            batch.put::<index::Progress>(&"backfill_next".to_owned(), &next);
            self.store.commit_blocking(batch)?;
        }
    }
}

/// Indexes the room's pending events, [`INDEX_CHUNK`] a commit, each under the room's append
/// lock (held until the commit has landed).
async fn index_room(
    store: &Store,
    rooms: &Rooms,
    room_sid: u64,
    room_id: &ruma::RoomId,
) -> Result<()> {
    loop {
        let _lock = rooms.lock_room(room_id).await;
        let rows = store.scan_prefix::<pending::Pending, u64>(&room_sid, INDEX_CHUNK)?;
        if rows.is_empty() {
            return Ok(());
        }
        let full = rows.len() == INDEX_CHUNK;
        let mut batch = Batch::new();
        let mut overlay = index::Overlay::deferred();
        for ((_, sid), _) in rows {
            batch.delete::<pending::Pending>(&(room_sid, sid));
            if let Some(content) = unindexed_content(store, sid)? {
                index::stage_add(store, &mut batch, &mut overlay, room_sid, sid, &content)?;
            }
        }
        overlay.write(&mut batch);
        store.commit(batch).await?;
        if !full {
            return Ok(());
        }
    }
}

/// The content of event `sid` if it is stored, not redacted and not indexed yet.
fn unindexed_content(store: &Store, sid: u64) -> Result<Option<Value>> {
    let redacted = store
        .get::<EventMetaTable>(&sid)?
        .is_none_or(|meta| meta.redacted_by.is_some());
    if redacted || store.get::<index::Docs>(&sid)?.is_some() {
        return Ok(None);
    }
    let Some(raw) = store.get::<Pdus>(&sid)? else {
        return Ok(None);
    };
    Ok(serde_json::from_slice::<Value>(&raw.0)
        .ok()
        .and_then(|mut json| json.get_mut("content").map(Value::take)))
}
