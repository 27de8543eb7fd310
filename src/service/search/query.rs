//! Answering a search: candidates from the postings of the query's rarest term in each room
//! the user may read, checked against the other terms by point lookups, the user's read
//! authorization and the filter, then scored with BM25.
//!
//! Work bound: one query examines at most `Query::budget` postings (default
//! [`CANDIDATE_BUDGET`]), newest first. Each examined posting costs one point read per further
//! query term, one for the event's metadata and one for its length.
//! - `recent`: the rooms' posting lists are merged newest first and the scan stops as soon as
//!   the page is full (plus one result, to know whether more follow), so a common word costs
//!   about `limit / selectivity` postings, not its frequency. A scan stopped by the budget
//!   returns what it found with a `next_batch` below the last position examined, so paging
//!   reaches every match.
//! - `rank`: every match within the budget is scored, rooms with fewer matches first, each
//!   room taking at most an even share of the budget left. A term in more than that many of
//!   the user's messages is ranked among its newest matches only.
//!
//! `count` is exact when every matching posting was examined, else extrapolated from the
//! share of examined postings that matched.

use std::collections::{HashSet, VecDeque};

use ruma::{api::client::filter::RoomEventFilter, OwnedRoomId, UserId};

use super::index::{posting_parts, Docs, Postings, RoomStatsTable, TermCounts};
use crate::{
    error::Result,
    service::{
        rooms::{
            access::{Access, Reader},
            EventMeta, EventMetaTable, Rooms,
        },
        sync::event_passes,
    },
    store::Store,
};

/// The most postings one query examines by default (see the module documentation).
pub const CANDIDATE_BUDGET: usize = 5_000;
/// The most terms a query matches; further words of the search term are ignored.
pub const MAX_QUERY_TERMS: usize = 16;
/// The most rooms one query searches (the user's newest memberships first).
pub const MAX_ROOMS: usize = 2_000;
/// Postings read from the store at a time per room.
const CHUNK: usize = 64;

/// BM25 parameters (the usual defaults).
const K1: f64 = 1.2;
const B: f64 = 0.75;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Rank,
    Recent,
}

/// Where a page ends: results continue strictly after it in the order of the search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cursor {
    pub sid: u64,
    pub score: f64,
}

/// A restriction to one group of results (a per-group `next_batch`).
#[derive(Debug, Clone, PartialEq)]
pub enum Group {
    Room(OwnedRoomId),
    Sender(String),
}

pub struct Query<'a> {
    pub user_id: &'a UserId,
    pub terms: Vec<String>,
    /// Content fields to match (bit mask of `index::FIELD_*`).
    pub fields: u64,
    pub filter: &'a RoomEventFilter,
    pub order: Order,
    pub after: Option<Cursor>,
    pub group: Option<Group>,
    pub limit: usize,
    pub ignored: HashSet<String>,
    /// The most postings to examine.
    pub budget: usize,
}

#[derive(Debug, Clone)]
pub struct Hit {
    pub sid: u64,
    pub event_id: String,
    pub room_id: OwnedRoomId,
    pub sender: String,
    pub score: f64,
}

pub struct Page {
    /// This page's results, in order.
    pub hits: Vec<Hit>,
    /// Further results this query found after the page, in order (`rank`: all of them within
    /// the budget; `recent`: at most one).
    pub rest: Vec<Hit>,
    /// Approximate number of results in all.
    pub count: u64,
    /// Where the next page starts, if there may be one.
    pub next: Option<Cursor>,
}

impl Page {
    fn empty() -> Self {
        Page {
            hits: Vec::new(),
            rest: Vec::new(),
            count: 0,
            next: None,
        }
    }
}

impl Order {
    fn before(self, a: &Hit, b: &Hit) -> std::cmp::Ordering {
        match self {
            Order::Recent => b.sid.cmp(&a.sid),
            Order::Rank => b.score.total_cmp(&a.score).then_with(|| b.sid.cmp(&a.sid)),
        }
    }

    fn is_after(self, hit: &Hit, cursor: &Cursor) -> bool {
        match self {
            Order::Recent => hit.sid < cursor.sid,
            Order::Rank => {
                hit.score < cursor.score || (hit.score == cursor.score && hit.sid < cursor.sid)
            }
        }
    }
}

/// The BM25 weight of one term.
fn idf(docs: f64, df: f64) -> f64 {
    (1.0 + (docs - df + 0.5) / (df + 0.5)).ln()
}

fn meta_passes(filter: &RoomEventFilter, meta: &EventMeta) -> bool {
    let kind = meta.kind.as_str();
    let matches = |pattern: &String| match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    };
    !filter.not_types.iter().any(matches)
        && filter.types.as_ref().is_none_or(|t| t.iter().any(matches))
        && !filter.not_senders.iter().any(|s| s.as_str() == meta.sender)
        && filter
            .senders
            .as_ref()
            .is_none_or(|s| s.iter().any(|s| s.as_str() == meta.sender))
}

/// Everything about the query that does not depend on the room being scanned.
struct Scorer<'q> {
    store: &'q Store,
    rooms: &'q Rooms,
    query: &'q Query<'q>,
    terms: Vec<String>,
    /// BM25 weight per term.
    weights: Vec<f64>,
    avg_len: f64,
}

/// One room's postings of the rarest query term, read newest first in chunks.
struct RoomStream<'q> {
    room_id: OwnedRoomId,
    room_sid: u64,
    rarest: usize,
    rarest_df: u64,
    reader: Reader<'q>,
    buffer: VecDeque<(u64, u64)>,
    /// The highest position not read yet; `None` once the list is exhausted.
    top: Option<u64>,
    examined: u64,
    hits: u64,
}

impl<'q> RoomStream<'q> {
    /// The next posting's position, reading a chunk if needed.
    fn peek(&mut self, s: &Scorer<'_>) -> Result<Option<u64>> {
        if self.buffer.is_empty() {
            if let Some(top) = self.top {
                let term = s.terms[self.rarest].clone();
                let rows = s.store.range_in_prefix::<Postings, _>(
                    &(term.clone(), self.room_sid),
                    Some(&(term, self.room_sid, top)),
                    true,
                    CHUNK,
                )?;
                self.top = match rows.last() {
                    Some(((_, _, sid), _)) if rows.len() == CHUNK => sid.checked_sub(1),
                    _ => None,
                };
                self.buffer
                    .extend(rows.into_iter().map(|((_, _, sid), v)| (sid, v)));
            }
        }
        Ok(self.buffer.front().map(|(sid, _)| *sid))
    }

    /// Examines the next posting: the hit, if it is one.
    fn examine(&mut self, s: &Scorer<'_>) -> Result<Option<Hit>> {
        let Some((sid, value)) = self.buffer.pop_front() else {
            return Ok(None);
        };
        self.examined += 1;
        let hit = s.check(self, sid, value)?;
        if hit.is_some() {
            self.hits += 1;
        }
        Ok(hit)
    }

    /// Matches estimated for the whole list from the share examined.
    fn estimate(&self) -> f64 {
        if self.buffer.is_empty() && self.top.is_none() || self.examined == 0 {
            return self.hits as f64;
        }
        self.hits as f64 * self.rarest_df as f64 / self.examined as f64
    }
}

impl Scorer<'_> {
    /// The hit for posting `(sid, value)` of the stream's rarest term, if every other term
    /// matches in a wanted field, the user may see the event and the filter keeps it.
    fn check(&self, stream: &mut RoomStream<'_>, sid: u64, value: u64) -> Result<Option<Hit>> {
        let query = self.query;
        let mut tfs = vec![0u64; self.terms.len()];
        let (tf, fields) = posting_parts(value);
        if fields & query.fields == 0 {
            return Ok(None);
        }
        tfs[stream.rarest] = tf;
        for (i, term) in self.terms.iter().enumerate() {
            if i == stream.rarest {
                continue;
            }
            let key = (term.clone(), stream.room_sid, sid);
            let Some(value) = self.store.get::<Postings>(&key)? else {
                return Ok(None);
            };
            let (tf, fields) = posting_parts(value);
            if fields & query.fields == 0 {
                return Ok(None);
            }
            tfs[i] = tf;
        }
        let Some(meta) = self.store.get::<EventMetaTable>(&sid)? else {
            return Ok(None);
        };
        if let Some(Group::Sender(only)) = &query.group {
            if *only != meta.sender {
                return Ok(None);
            }
        }
        if !meta_passes(query.filter, &meta) || !stream.reader.may_see_meta(sid, &meta)? {
            return Ok(None);
        }
        if query.filter.url_filter.is_some() {
            match self.rooms.event_by_sid(sid)? {
                Some(event) if event_passes(query.filter, &event) => {}
                _ => return Ok(None),
            }
        }
        let len = self.store.get::<Docs>(&sid)?.unwrap_or(1) as f64;
        let norm = K1 * (1.0 - B + B * len / self.avg_len);
        let score = tfs
            .iter()
            .zip(&self.weights)
            .map(|(tf, w)| {
                let tf = *tf as f64;
                w * tf * (K1 + 1.0) / (tf + norm)
            })
            .sum();
        Ok(Some(Hit {
            sid,
            event_id: meta.event_id,
            room_id: stream.room_id.clone(),
            sender: meta.sender,
            score,
        }))
    }
}

/// Runs a search for `query.user_id`.
pub fn search(store: &Store, rooms: &Rooms, query: &Query<'_>) -> Result<Page> {
    let mut terms = query.terms.clone();
    terms.truncate(MAX_QUERY_TERMS);
    if terms.is_empty() {
        return Ok(Page::empty());
    }
    let plans = plan(store, rooms, query, &terms)?;
    // Collection statistics over every room searched, matching or not.
    let (mut docs, mut words) = (0u64, 0u64);
    let mut totals = vec![0u64; terms.len()];
    for plan in &plans {
        for (total, df) in totals.iter_mut().zip(&plan.dfs) {
            *total += df;
        }
        let stats = store
            .get::<RoomStatsTable>(&plan.room_sid)?
            .unwrap_or_default();
        docs += stats.docs;
        words += stats.words;
    }
    let avg_len = if docs == 0 {
        1.0
    } else {
        words as f64 / docs as f64
    };
    let weights = totals
        .iter()
        .map(|df| idf(docs as f64, *df as f64))
        .collect();
    let scorer = Scorer {
        store,
        rooms,
        query,
        terms,
        weights,
        avg_len,
    };
    // The newest position to look at: below the cursor in `recent` order.
    let upper = match (query.order, query.after) {
        (Order::Recent, Some(c)) if c.sid == 0 => return Ok(Page::empty()),
        (Order::Recent, Some(c)) => c.sid - 1,
        _ => u64::MAX,
    };
    let mut streams = Vec::new();
    for plan in plans {
        if plan.dfs.contains(&0) {
            continue;
        }
        let (rarest, rarest_df) = plan
            .dfs
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|(_, df)| *df)
            .expect("terms are not empty");
        let mut reader = rooms.reader(&plan.room_id, query.user_id)?;
        reader.ignore(query.ignored.clone());
        // Not past the user's departure from the room.
        let top = match plan.access {
            Access::Departed { until } => upper.min(until),
            _ => upper,
        };
        streams.push(RoomStream {
            room_id: plan.room_id,
            room_sid: plan.room_sid,
            rarest,
            rarest_df,
            reader,
            buffer: VecDeque::new(),
            top: Some(top),
            examined: 0,
            hits: 0,
        });
    }
    match query.order {
        Order::Recent => recent(&scorer, streams),
        Order::Rank => ranked(&scorer, streams),
    }
}

/// `recent` order: the rooms' lists merged newest first, until the page is full.
fn recent(s: &Scorer<'_>, mut streams: Vec<RoomStream<'_>>) -> Result<Page> {
    let limit = s.query.limit.max(1);
    let mut hits = Vec::new();
    let mut examined = 0;
    let mut last_examined = None;
    let mut cut = false;
    while hits.len() <= limit {
        let mut newest: Option<(usize, u64)> = None;
        for (i, stream) in streams.iter_mut().enumerate() {
            if let Some(sid) = stream.peek(s)? {
                if newest.is_none_or(|(_, best)| sid > best) {
                    newest = Some((i, sid));
                }
            }
        }
        let Some((i, sid)) = newest else { break };
        if examined == s.query.budget {
            cut = true;
            break;
        }
        examined += 1;
        last_examined = Some(sid);
        hits.extend(streams[i].examine(s)?);
    }
    let count = streams.iter().map(RoomStream::estimate).sum::<f64>();
    let rest = if hits.len() > limit {
        hits.split_off(limit)
    } else {
        Vec::new()
    };
    let next = if !rest.is_empty() {
        hits.last().map(|h| Cursor {
            sid: h.sid,
            score: h.score,
        })
    } else if cut {
        // Everything at or above the last examined position was examined.
        last_examined.map(|sid| Cursor { sid, score: 0.0 })
    } else {
        None
    };
    Ok(Page {
        hits,
        rest,
        count: count.round() as u64,
        next,
    })
}

/// `rank` order: every match within the budget, scored and sorted.
fn ranked(s: &Scorer<'_>, mut streams: Vec<RoomStream<'_>>) -> Result<Page> {
    streams.sort_by_key(|st| st.rarest_df);
    let mut budget = s.query.budget;
    let mut hits = Vec::new();
    let rooms = streams.len();
    for (i, stream) in streams.iter_mut().enumerate() {
        let share = (budget / (rooms - i)).max(1);
        while (stream.examined as usize) < share && stream.peek(s)?.is_some() {
            hits.extend(stream.examine(s)?);
        }
        budget = budget.saturating_sub(stream.examined as usize);
        // Make `estimate` see whether the list ran out.
        stream.peek(s)?;
    }
    let count = streams.iter().map(RoomStream::estimate).sum::<f64>();
    let mut hits: Vec<Hit> = hits
        .into_iter()
        .filter(|h| s.query.after.is_none_or(|c| Order::Rank.is_after(h, &c)))
        .collect();
    hits.sort_by(|a, b| Order::Rank.before(a, b));
    let limit = s.query.limit.max(1);
    let rest = if hits.len() > limit {
        hits.split_off(limit)
    } else {
        Vec::new()
    };
    let next = match (hits.last(), rest.is_empty()) {
        (Some(last), false) => Some(Cursor {
            sid: last.sid,
            score: last.score,
        }),
        _ => None,
    };
    Ok(Page {
        hits,
        rest,
        count: count.round() as u64,
        next,
    })
}

/// One room taking part in a query.
struct RoomPlan {
    room_id: OwnedRoomId,
    room_sid: u64,
    access: Access,
    /// Per query term: events of the room holding it.
    dfs: Vec<u64>,
}

/// The rooms to search: those the user is or was in that they may read history of, as the
/// filter and a group restriction allow, with each term's count in each.
fn plan(
    store: &Store,
    rooms: &Rooms,
    query: &Query<'_>,
    terms: &[String],
) -> Result<Vec<RoomPlan>> {
    let mut memberships = rooms.memberships_of(query.user_id)?;
    memberships.sort_by_key(|m| std::cmp::Reverse(m.2));
    memberships.truncate(MAX_ROOMS);
    let filter = query.filter;
    let mut all = Vec::new();
    for (room_id, _, _) in memberships {
        if filter.not_rooms.contains(&room_id)
            || filter.rooms.as_ref().is_some_and(|r| !r.contains(&room_id))
        {
            continue;
        }
        if let Some(Group::Room(only)) = &query.group {
            if *only != room_id {
                continue;
            }
        }
        let access = rooms.read_access(&room_id, query.user_id)?;
        if !matches!(
            access,
            Access::Joined | Access::WorldReadable | Access::Departed { .. }
        ) {
            continue;
        }
        let Some(record) = rooms.room(&room_id)? else {
            continue;
        };
        let mut dfs = Vec::with_capacity(terms.len());
        for term in terms {
            let key = (record.sid, term.clone());
            dfs.push(store.get::<TermCounts>(&key)?.unwrap_or(0));
        }
        all.push(RoomPlan {
            room_id,
            room_sid: record.sid,
            access,
            dfs,
        });
    }
    Ok(all)
}
