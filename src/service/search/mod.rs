//! Server-side search (`POST /search`, category `room_events`): a full-text index of the
//! `body`, `name` and `topic` of events, kept in the store beside the events.
//!
//! - `tokenize`: Unicode words, case folding, ideograph bigrams (same for text and queries);
//! - `index`: the tables, and the rows an event adds (staged by the rooms service into the
//!   event's own batch) or a redaction removes;
//! - `query`: candidate generation under a work budget, read authorization, BM25 ranking.
//!
//! Events stored before the index existed (schema version 3) are indexed once, at the first
//! start of a build with the index ([`Search::backfill`]), before the server answers requests.

pub mod index;
pub mod query;
pub mod tokenize;

use std::sync::Arc;

use serde_json::Value;

use crate::{
    error::Result,
    service::rooms::{EventMetaTable, Pdus, Rooms},
    store::{Batch, Store},
};

/// Events looked at per backfill commit.
const BACKFILL_CHUNK: usize = 1_000;

pub struct Search {
    store: Store,
    rooms: Arc<Rooms>,
}

impl Search {
    pub fn new(store: Store, rooms: Arc<Rooms>) -> Self {
        Self { store, rooms }
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
            let mut overlay = index::Overlay::default();
            let Some(last) = rows.last().map(|(sid, _)| *sid) else {
                batch.put::<index::Progress>(&"backfill_done".to_owned(), &1);
                self.store.commit_blocking(batch)?;
                if indexed > 0 {
                    log::info!("search index: indexed {indexed} existing events");
                }
                return Ok(indexed);
            };
            for (sid, meta) in &rows {
                if meta.redacted_by.is_some() || self.store.get::<index::Docs>(sid)?.is_some() {
                    continue;
                }
                let Some(raw) = self.store.get::<Pdus>(sid)? else {
                    continue;
                };
                let Ok(json) = serde_json::from_slice::<Value>(&raw.0) else {
                    continue;
                };
                let Some(content) = json.get("content") else {
                    continue;
                };
                let before = batch.len();
                index::stage_add(
                    &self.store,
                    &mut batch,
                    &mut overlay,
                    meta.room_sid,
                    *sid,
                    content,
                )?;
                if batch.len() > before {
                    indexed += 1;
                }
            }
            next = last + 1;
            batch.put::<index::Progress>(&"backfill_next".to_owned(), &next);
            self.store.commit_blocking(batch)?;
        }
    }
}
