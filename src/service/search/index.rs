//! The search index rows and how an event adds them or takes them away (layouts in
//! `schema/search.md`).
//!
//! Rows are staged by the indexer, which replaces a room's pending events (`pending.rs`) with
//! their rows, and removed in the batch that redacts an indexed event. The per-room counters are
//! read-modify-write: they are only changed under the room's append lock (every write to a
//! room's events holds it until its commit), and [`Overlay`] carries the values staged but not
//! yet committed when one batch holds several events of a room.

use std::collections::HashMap;

use ruma::{CanonicalJsonObject, CanonicalJsonValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::tokenize::document_terms;
use crate::{
    store::{Batch, Record, Store, StoreError},
    table,
};

/// Bit of a posting's field mask per indexed content field.
pub const FIELD_BODY: u64 = 1;
pub const FIELD_NAME: u64 = 2;
pub const FIELD_TOPIC: u64 = 4;
pub const ALL_FIELDS: u64 = FIELD_BODY | FIELD_NAME | FIELD_TOPIC;
const FIELD_BITS: u32 = 3;

table!(
    /// `(term, room_sid, sid) → tf << 3 | fields`: the term occurs `tf` times in the event
    /// `sid` (its stream position) of the room, in the content fields of the mask (1 body,
    /// 2 name, 4 topic). A prefix scan on `(term, room_sid)` lists the room's matches oldest
    /// first (newest first backwards).
    pub Postings: "search_postings", (String, u64, u64) => u64
);
table!(
    /// `sid → length in words` of every indexed event. Absent: not indexed.
    pub Docs: "search_docs", u64 => u64
);
table!(
    /// `(room_sid, term) → number of indexed events of the room holding the term`. Removed
    /// at zero.
    pub TermCounts: "search_terms", (u64, String) => u64
);
table!(
    /// `room_sid → RoomStats`: indexed events of the room and their total length.
    pub RoomStatsTable: "search_rooms", u64 => RoomStats
);
table!(
    /// `name → u64`: progress of the first indexing of events stored before the index
    /// existed. `"backfill_next"`: the next sid to look at; `"backfill_done"`: 1 once done.
    pub Progress: "search_progress", String => u64
);

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct RoomStats {
    pub docs: u64,
    pub words: u64,
}
impl Record for RoomStats {}

/// Packs a term frequency and a field mask into a posting value.
pub fn posting_value(tf: u64, fields: u64) -> u64 {
    (tf << FIELD_BITS) | (fields & ALL_FIELDS)
}

/// `(tf, fields)` of a posting value.
pub fn posting_parts(value: u64) -> (u64, u64) {
    (value >> FIELD_BITS, value & ALL_FIELDS)
}

/// The indexable text of an event's content: `(field bit, text)` for each of `body`, `name`
/// and `topic` that is a string. Encrypted events have none of these in clear.
pub fn fields_of(content: &Value) -> Vec<(u64, &str)> {
    FIELDS
        .into_iter()
        .filter_map(|(bit, key)| Some((bit, content.get(key)?.as_str()?)))
        .collect()
}

/// The indexed content fields and their bits.
const FIELDS: [(u64, &str); 3] = [
    (FIELD_BODY, "body"),
    (FIELD_NAME, "name"),
    (FIELD_TOPIC, "topic"),
];

/// An event's postings: term → (tf, fields), and its length.
fn postings_of(content: &Value) -> (HashMap<String, (u64, u64)>, u64) {
    let mut map: HashMap<String, (u64, u64)> = HashMap::new();
    let mut length = 0;
    for (bit, text) in fields_of(content) {
        let (terms, words) = document_terms(text);
        length += words;
        for term in terms {
            let entry = map.entry(term).or_default();
            entry.0 += 1;
            entry.1 |= bit;
        }
    }
    (map, length)
}

/// Counter values staged in a batch but not yet committed (one room's events in one batch).
#[derive(Default)]
pub struct Overlay {
    terms: HashMap<(u64, String), u64>,
    rooms: HashMap<u64, RoomStats>,
    /// Counters are put into the batch by [`Overlay::write`], once each, rather than with
    /// every change (many events of a room in one batch share most of their words).
    deferred: bool,
}

impl Overlay {
    /// An overlay whose counters are put into the batch by [`Overlay::write`].
    pub fn deferred() -> Self {
        Self {
            deferred: true,
            ..Self::default()
        }
    }

    /// Puts the counters of a deferred overlay into `batch`.
    pub fn write(&self, batch: &mut Batch) {
        if !self.deferred {
            return;
        }
        for (key, count) in &self.terms {
            put_term(batch, key, *count);
        }
        for (room_sid, stats) in &self.rooms {
            batch.put::<RoomStatsTable>(room_sid, stats);
        }
    }

    fn term_count(&self, store: &Store, key: &(u64, String)) -> Result<u64, StoreError> {
        match self.terms.get(key) {
            Some(n) => Ok(*n),
            None => Ok(store.get::<TermCounts>(key)?.unwrap_or(0)),
        }
    }

    fn room_stats(&self, store: &Store, room_sid: u64) -> Result<RoomStats, StoreError> {
        match self.rooms.get(&room_sid) {
            Some(s) => Ok(*s),
            None => Ok(store.get::<RoomStatsTable>(&room_sid)?.unwrap_or_default()),
        }
    }

    fn set_term(&mut self, batch: &mut Batch, key: (u64, String), count: u64) {
        if !self.deferred {
            put_term(batch, &key, count);
        }
        self.terms.insert(key, count);
    }

    fn set_room(&mut self, batch: &mut Batch, room_sid: u64, stats: RoomStats) {
        if !self.deferred {
            batch.put::<RoomStatsTable>(&room_sid, &stats);
        }
        self.rooms.insert(room_sid, stats);
    }
}

fn put_term(batch: &mut Batch, key: &(u64, String), count: u64) {
    if count == 0 {
        batch.delete::<TermCounts>(key);
    } else {
        batch.put::<TermCounts>(key, &count);
    }
}

/// Whether an event (its canonical JSON, as staged) has text to index: a string `body`,
/// `name` or `topic` in its content (as [`fields_of`] reads them).
pub fn indexable(event: &CanonicalJsonObject) -> bool {
    let Some(CanonicalJsonValue::Object(content)) = event.get("content") else {
        return false;
    };
    FIELDS
        .iter()
        .any(|(_, key)| matches!(content.get(*key), Some(CanonicalJsonValue::String(_))))
}

/// Stages the index rows of a new event (nothing if it has no indexable text). The caller
/// holds the room's append lock.
pub fn stage_add(
    store: &Store,
    batch: &mut Batch,
    overlay: &mut Overlay,
    room_sid: u64,
    sid: u64,
    content: &Value,
) -> Result<(), StoreError> {
    let (postings, length) = postings_of(content);
    if postings.is_empty() {
        return Ok(());
    }
    for (term, (tf, fields)) in postings {
        batch.put::<Postings>(&(term.clone(), room_sid, sid), &posting_value(tf, fields));
        let key = (room_sid, term);
        let count = overlay.term_count(store, &key)? + 1;
        overlay.set_term(batch, key, count);
    }
    batch.put::<Docs>(&sid, &length);
    let mut stats = overlay.room_stats(store, room_sid)?;
    stats.docs += 1;
    stats.words += length;
    overlay.set_room(batch, room_sid, stats);
    Ok(())
}

/// Stages the removal of an indexed event's rows (a redaction): `content` is its content as
/// it was indexed. Nothing if the event is not indexed. The caller holds the room's lock.
pub fn stage_remove(
    store: &Store,
    batch: &mut Batch,
    overlay: &mut Overlay,
    room_sid: u64,
    sid: u64,
    content: &Value,
) -> Result<(), StoreError> {
    let Some(length) = store.get::<Docs>(&sid)? else {
        return Ok(());
    };
    let (postings, _) = postings_of(content);
    for term in postings.into_keys() {
        batch.delete::<Postings>(&(term.clone(), room_sid, sid));
        let key = (room_sid, term);
        let count = overlay.term_count(store, &key)?.saturating_sub(1);
        overlay.set_term(batch, key, count);
    }
    batch.delete::<Docs>(&sid);
    let mut stats = overlay.room_stats(store, room_sid)?;
    stats.docs = stats.docs.saturating_sub(1);
    stats.words = stats.words.saturating_sub(length);
    overlay.set_room(batch, room_sid, stats);
    Ok(())
}
