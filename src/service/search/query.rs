//! Answering a search: candidates from the postings of the query's rarest term in each room
//! the user may read, checked against the other terms by point lookups, the user's read
//! authorization and the filter, then scored with BM25.
//!
//! Work bound: at most [`CANDIDATE_BUDGET`] postings are examined per query, shared among the
//! rooms (rooms with fewer matches first, each taking at most an even share of what is left),
//! newest first. Each costs one point read per further query term, one for its metadata and
//! one for its length. Queries with a rarer term, the usual case, examine all their matches;
//! for a term in more than that many of a user's messages, `recent` order pages through all of
//! them (each page continues below the oldest position examined) while `rank` ranks the
//! newest examined ones, and `count` is extrapolated from the share that matched.

use std::collections::HashSet;

use ruma::{api::client::filter::RoomEventFilter, OwnedRoomId, UserId};

use super::index::{posting_parts, Docs, Postings, RoomStatsTable, TermCounts};
use crate::{
    error::{Error, Result},
    service::{
        rooms::{access::Access, EventMeta, EventMetaTable, Rooms},
        sync::event_passes,
    },
    store::Store,
};

/// The most postings one query examines (see the module documentation).
pub const CANDIDATE_BUDGET: usize = 5_000;
/// The most terms a query matches; further words of the search term are ignored.
pub const MAX_QUERY_TERMS: usize = 16;
/// The most rooms one query searches (the user's newest memberships first).
pub const MAX_ROOMS: usize = 2_000;

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
    /// The further results found by this query after the page, in order.
    pub rest: Vec<Hit>,
    /// Approximate number of results in all.
    pub count: u64,
    /// Where the next page starts, if there may be one.
    pub next: Option<Cursor>,
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

/// One room taking part in a query.
struct RoomPlan {
    room_id: OwnedRoomId,
    room_sid: u64,
    access: Access,
    /// Per query term: events of the room holding it.
    dfs: Vec<u64>,
}

/// What scanning one room found.
struct RoomScan {
    hits: Vec<Hit>,
    examined: u64,
    /// Set when the budget stopped the scan before the room's postings ran out: the oldest
    /// position examined.
    cut_at: Option<u64>,
    rarest_df: u64,
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

/// Runs a search for `query.user_id`.
pub fn search(store: &Store, rooms: &Rooms, query: &Query<'_>) -> Result<Page> {
    let mut terms = query.terms.clone();
    terms.truncate(MAX_QUERY_TERMS);
    if terms.is_empty() {
        return Ok(Page {
            hits: Vec::new(),
            rest: Vec::new(),
            count: 0,
            next: None,
        });
    }
    let plans = plan(store, rooms, query, &terms)?;
    // Collection statistics over every room searched, matching or not.
    let (mut docs, mut words) = (0u64, 0u64);
    let mut totals = vec![0u64; terms.len()];
    for plan in &plans.all {
        for (total, df) in totals.iter_mut().zip(&plan.dfs) {
            *total += df;
        }
    }
    for room_sid in &plans.sids {
        let stats = store.get::<RoomStatsTable>(room_sid)?.unwrap_or_default();
        docs += stats.docs;
        words += stats.words;
    }
    let avg_len = if docs == 0 {
        1.0
    } else {
        words as f64 / docs as f64
    };
    let weights: Vec<f64> = totals
        .iter()
        .map(|df| idf(docs as f64, *df as f64))
        .collect();

    let mut matching: Vec<&RoomPlan> = plans
        .all
        .iter()
        .filter(|p| p.dfs.iter().all(|df| *df > 0))
        .collect();
    matching.sort_by_key(|p| p.dfs.iter().copied().min().unwrap_or(0));
    let mut budget = CANDIDATE_BUDGET;
    let mut scans = Vec::new();
    for (i, plan) in matching.iter().enumerate() {
        let share = (budget / (matching.len() - i)).max(1);
        let scan = scan_room(store, rooms, query, &terms, plan, share, &weights, avg_len)?;
        budget = budget.saturating_sub(scan.examined as usize);
        scans.push(scan);
    }

    let mut count = 0f64;
    for scan in &scans {
        count += match scan.cut_at {
            Some(_) if scan.examined > 0 => {
                scan.hits.len() as f64 * scan.rarest_df as f64 / scan.examined as f64
            }
            _ => scan.hits.len() as f64,
        };
    }
    // In `recent` order only the positions every cut scan reached are complete.
    let horizon = match query.order {
        Order::Recent => scans.iter().filter_map(|s| s.cut_at).max(),
        Order::Rank => None,
    };
    let mut hits: Vec<Hit> = scans
        .into_iter()
        .flat_map(|s| s.hits)
        .filter(|h| horizon.is_none_or(|h0| h.sid >= h0))
        .filter(|h| query.after.is_none_or(|c| query.order.is_after(h, &c)))
        .collect();
    hits.sort_by(|a, b| query.order.before(a, b));
    let limit = query.limit.max(1);
    let rest = if hits.len() > limit {
        hits.split_off(limit)
    } else {
        Vec::new()
    };
    let next = match (hits.last(), rest.is_empty(), horizon) {
        (Some(last), false, _) => Some(Cursor {
            sid: last.sid,
            score: last.score,
        }),
        (_, true, Some(h0)) => Some(Cursor {
            sid: h0,
            score: 0.0,
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

struct Plans {
    all: Vec<RoomPlan>,
    sids: Vec<u64>,
}

/// The rooms to search: those the user is or was in that they may read history of, as the
/// filter and a group restriction allow, with each term's count in each.
fn plan(store: &Store, rooms: &Rooms, query: &Query<'_>, terms: &[String]) -> Result<Plans> {
    let mut memberships = rooms.memberships_of(query.user_id)?;
    memberships.sort_by(|a, b| b.2.cmp(&a.2));
    memberships.truncate(MAX_ROOMS);
    let filter = query.filter;
    let mut all = Vec::new();
    let mut sids = Vec::new();
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
            dfs.push(
                store
                    .get::<TermCounts>(&(record.sid, term.clone()))?
                    .unwrap_or(0),
            );
        }
        sids.push(record.sid);
        all.push(RoomPlan {
            room_id,
            room_sid: record.sid,
            access,
            dfs,
        });
    }
    Ok(Plans { all, sids })
}

/// Reads the postings of the plan's rarest term, newest first, examining at most `share`.
#[allow(clippy::too_many_arguments)]
fn scan_room(
    store: &Store,
    rooms: &Rooms,
    query: &Query<'_>,
    terms: &[String],
    plan: &RoomPlan,
    share: usize,
    weights: &[f64],
    avg_len: f64,
) -> Result<RoomScan> {
    let (rarest, rarest_df) = plan
        .dfs
        .iter()
        .enumerate()
        .min_by_key(|(_, df)| **df)
        .map(|(i, df)| (i, *df))
        .ok_or_else(|| Error::unknown("query without terms"))?;
    let mut reader = rooms.reader(&plan.room_id, query.user_id)?;
    reader.ignore(query.ignored.clone());
    // The newest position to look at: below the cursor in `recent` order, and not past the
    // user's departure.
    let mut upper = u64::MAX;
    if let (Order::Recent, Some(c)) = (query.order, query.after) {
        upper = c.sid.saturating_sub(1);
        if c.sid == 0 {
            return Ok(RoomScan {
                hits: Vec::new(),
                examined: 0,
                cut_at: None,
                rarest_df,
            });
        }
    }
    if let Access::Departed { until } = plan.access {
        upper = upper.min(until);
    }
    let prefix = (terms[rarest].clone(), plan.room_sid);
    let mut scan = RoomScan {
        hits: Vec::new(),
        examined: 0,
        cut_at: None,
        rarest_df,
    };
    let mut from = Some(upper);
    while let Some(top) = from {
        let left = share - scan.examined as usize;
        if left == 0 {
            // More postings below? Then this room was cut here.
            let more = store.range_in_prefix::<Postings, _>(
                &prefix,
                Some(&(prefix.0.clone(), plan.room_sid, top)),
                true,
                1,
            )?;
            if !more.is_empty() {
                scan.cut_at = Some(top + 1);
            }
            break;
        }
        let rows = store.range_in_prefix::<Postings, _>(
            &prefix,
            Some(&(prefix.0.clone(), plan.room_sid, top)),
            true,
            left.min(256),
        )?;
        if rows.is_empty() {
            break;
        }
        from = None;
        for ((_, _, sid), value) in rows {
            scan.examined += 1;
            from = sid.checked_sub(1);
            if let Some(hit) = check(
                store,
                rooms,
                &mut reader,
                query,
                terms,
                plan,
                (rarest, sid, value),
                weights,
                avg_len,
            )? {
                scan.hits.push(hit);
            }
        }
    }
    Ok(scan)
}

/// The hit for the posting `(rarest term index, sid, value)`, if every other term matches, the
/// user may see the event and the filter keeps it.
#[allow(clippy::too_many_arguments)]
fn check(
    store: &Store,
    rooms: &Rooms,
    reader: &mut crate::service::rooms::access::Reader<'_>,
    query: &Query<'_>,
    terms: &[String],
    plan: &RoomPlan,
    (rarest, sid, value): (usize, u64, u64),
    weights: &[f64],
    avg_len: f64,
) -> Result<Option<Hit>> {
    let mut tfs = vec![0u64; terms.len()];
    let (tf, fields) = posting_parts(value);
    if fields & query.fields == 0 {
        return Ok(None);
    }
    tfs[rarest] = tf;
    for (i, term) in terms.iter().enumerate() {
        if i == rarest {
            continue;
        }
        let Some(value) = store.get::<Postings>(&(term.clone(), plan.room_sid, sid))? else {
            return Ok(None);
        };
        let (tf, fields) = posting_parts(value);
        if fields & query.fields == 0 {
            return Ok(None);
        }
        tfs[i] = tf;
    }
    let Some(meta) = store.get::<EventMetaTable>(&sid)? else {
        return Ok(None);
    };
    if let Some(Group::Sender(only)) = &query.group {
        if *only != meta.sender {
            return Ok(None);
        }
    }
    if !meta_passes(query.filter, &meta) || !reader.may_see_meta(sid, &meta)? {
        return Ok(None);
    }
    if query.filter.url_filter.is_some() {
        let Some(event) = rooms.event_by_sid(sid)? else {
            return Ok(None);
        };
        if !event_passes(query.filter, &event) {
            return Ok(None);
        }
    }
    let len = store.get::<Docs>(&sid)?.unwrap_or(1) as f64;
    let norm = K1 * (1.0 - B + B * len / avg_len);
    let score = tfs
        .iter()
        .zip(weights)
        .map(|(tf, w)| {
            let tf = *tf as f64;
            w * tf * (K1 + 1.0) / (tf + norm)
        })
        .sum();
    Ok(Some(Hit {
        sid,
        event_id: meta.event_id,
        room_id: plan.room_id.clone(),
        sender: meta.sender,
        score,
    }))
}
