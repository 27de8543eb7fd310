//! Paging through a room's whole history for `/messages` and `/context`: the backfilled events
//! before the timeline (`backfill.rs`), the `timeline` itself (stream order), and the events
//! fetched into holes of the timeline (`holes.rs`), in one order:
//!
//! ```text
//! backfilled (by seq) … x, [the hole before a, by seq], a, … (timeline events by sid)
//! ```
//!
//! where `x` is the timeline event before `a`. Tokens ([`Position`]) sit between two events
//! of that order:
//! - `n` (a stream position): just below the first timeline event at or after `n`, *above*
//!   the hole before it (the token past an event paging backwards is its own position, and
//!   the hole before it comes next);
//! - `h<a>_<seq>`: between the events of the hole before `a` at `seq - 1` and `seq`;
//! - `b<seq>`: between the backfilled events at `seq - 1` and `seq` (`b2^63` is the boundary
//!   with the timeline).
//!
//! A walk ([`Rooms::walk_history`]) reads positions in that order without loading events,
//! segment by segment: each timeline segment is one range scan up to the next anchor of a
//! hole holding events (found by one range scan of `hole_timeline`), so rooms without holes
//! page as before.

use std::fmt;

use super::{
    access::Reader,
    backfill::FIRST_SEQ,
    timeline::{MessagesQuery, SCAN_BUDGET},
    EventMetaTable, Rooms, StoredEvent, Timeline,
};
use crate::{error::Result, service::sync::event_passes};

/// A place between two events of a room's history, as `/messages` tokens name it (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Just below the `timeline` event at or after `n` (a stream position), above its hole.
    Stream(u64),
    /// Between the events of the hole before the timeline event `anchor` at `seq - 1` and
    /// `seq`.
    Hole { anchor: u64, seq: u64 },
    /// Between the backfilled events at `seq - 1` and `seq`; `b{FIRST_SEQ}` is the boundary
    /// with the `timeline`.
    Backfill(u64),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Stream(n) => write!(f, "{n}"),
            Position::Hole { anchor, seq } => write!(f, "h{anchor}_{seq}"),
            Position::Backfill(seq) => write!(f, "b{seq}"),
        }
    }
}

impl Position {
    /// A `b<seq>` or `h<anchor>_<seq>` token; `None` for anything else (stream positions are
    /// the caller's to parse).
    pub fn parse_history(token: &str) -> Option<Position> {
        if let Some(seq) = token.strip_prefix('b') {
            return Some(Position::Backfill(seq.parse().ok()?));
        }
        let (anchor, seq) = token.strip_prefix('h')?.split_once('_')?;
        Some(Position::Hole {
            anchor: anchor.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// The place of an event or token in the history order: `(timeline sid or anchor, 0 for the
/// hole before it and 1 for the timeline event, seq)`; backfilled events are `(0, 0, seq)`.
type Key = (u64, u8, u64);

/// One event met by a walk.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub sid: u64,
    /// The token just past it in the walk's direction.
    pub past: Position,
    /// Whether it is a `timeline` event.
    pub in_timeline: bool,
}

/// Where a walk is.
#[derive(Debug, Clone, Copy)]
enum At {
    /// At the token `Stream(from)`, in the timeline; `hole_ahead`: the hole before the first
    /// timeline event at or after `from` lies ahead in the walk's direction.
    Timeline {
        from: u64,
        hole_ahead: bool,
    },
    Hole {
        anchor: u64,
        seq: u64,
    },
    Backfill(u64),
    End,
}

/// A page of `/messages` across the history (see [`Rooms::messages_across`]).
pub struct HistoryPage {
    /// In the order read: newest first when paging backwards.
    pub events: Vec<StoredEvent>,
    /// The token to continue from; `None` when no further event may follow.
    pub end: Option<Position>,
    /// Paging backwards: the anchor of an open hole (`holes.rs`) the page reached the older
    /// edge of — the events missing there are worth fetching before the next page.
    pub open_hole: Option<u64>,
}

impl Rooms {
    /// The first timeline event of the room at or after `pos`.
    fn first_timeline_from(&self, room_sid: u64, pos: u64) -> Result<Option<u64>> {
        Ok(self
            .store
            .range_in_prefix::<Timeline, _>(&(room_sid,), Some(&(room_sid, pos)), false, 1)?
            .first()
            .map(|((_, sid), _)| *sid))
    }

    /// The order key of the token `Stream(pos)` (see [`Key`]).
    fn stream_key(&self, room_sid: u64, pos: u64) -> Result<Key> {
        Ok((
            self.first_timeline_from(room_sid, pos)?.unwrap_or(u64::MAX),
            0,
            u64::MAX,
        ))
    }

    /// The token just past the timeline event `sid` paging forwards: below the hole before the
    /// next timeline event when that hole holds events, else the next stream position.
    fn past_forwards(&self, room_sid: u64, sid: u64) -> Result<Position> {
        if let Some(next) = self.first_timeline_from(room_sid, sid + 1)? {
            if let Some(floor) = self.hole_floor(room_sid, next)? {
                return Ok(Position::Hole {
                    anchor: next,
                    seq: floor,
                });
            }
        }
        Ok(Position::Stream(sid + 1))
    }

    /// Up to `limit` events of the room's history from the token `from`, in the walk's
    /// direction, within `bound` (the key of a token the walk does not pass), without loading
    /// them. Fewer than `limit` only at the end (or the bound).
    fn walk_history(
        &self,
        room_sid: u64,
        from: Position,
        backwards: bool,
        bound: Option<Key>,
        limit: usize,
    ) -> Result<Vec<Step>> {
        let mut at = match from {
            Position::Stream(from) => At::Timeline {
                from,
                hole_ahead: backwards,
            },
            Position::Hole { anchor, seq } => At::Hole { anchor, seq },
            Position::Backfill(seq) => At::Backfill(seq),
        };
        let in_bounds = |key: Key| match bound {
            Some(bound) if backwards => key >= bound,
            Some(bound) => key < bound,
            None => true,
        };
        let mut steps: Vec<Step> = Vec::new();
        // Each round emits events or moves to the next segment, and at most three rounds in a
        // row emit nothing (into a hole, through an exhausted one, to the end): this bound is
        // never reached.
        for _ in 0..4 * limit + 8 {
            if steps.len() >= limit {
                break;
            }
            let want = limit - steps.len();
            at = match at {
                At::End => break,
                At::Timeline {
                    from,
                    hole_ahead: true,
                } => match self.first_timeline_from(room_sid, from)? {
                    Some(anchor) if self.hole_floor(room_sid, anchor)?.is_some() => {
                        let seq = if backwards { FIRST_SEQ } else { 0 };
                        At::Hole { anchor, seq }
                    }
                    _ => At::Timeline {
                        from,
                        hole_ahead: false,
                    },
                },
                At::Timeline { from, .. } if backwards => {
                    // Down to (and including) the nearest anchor below of a hole with events.
                    let anchor = self.filled_hole_near(room_sid, from, true)?;
                    let rows = match from.checked_sub(1) {
                        Some(start) => self.store.range_in_prefix::<Timeline, _>(
                            &(room_sid,),
                            Some(&(room_sid, start)),
                            true,
                            want,
                        )?,
                        None => Vec::new(),
                    };
                    let read = rows.len();
                    let mut next = None;
                    for ((_, sid), _) in rows {
                        // Past an anchor that is no timeline event (taken back since): the
                        // next segment starts there.
                        if let Some(anchor) = anchor.filter(|a| sid < *a) {
                            next = Some(At::Timeline {
                                from: anchor,
                                hole_ahead: false,
                            });
                            break;
                        }
                        if !in_bounds((sid, 1, 0)) {
                            next = Some(At::End);
                            break;
                        }
                        steps.push(Step {
                            sid,
                            past: Position::Stream(sid),
                            in_timeline: true,
                        });
                        if Some(sid) == anchor {
                            next = Some(At::Timeline {
                                from: sid,
                                hole_ahead: true,
                            });
                            break;
                        }
                    }
                    match next {
                        Some(next) => next,
                        // A full read: more may follow (the next round, or the next call).
                        None if read == want => match steps.last() {
                            Some(last) => At::Timeline {
                                from: last.sid,
                                hole_ahead: true,
                            },
                            None => break,
                        },
                        // The start of the timeline: the backfilled history below it.
                        None if bound.is_none() && self.has_backfill(room_sid)? => {
                            At::Backfill(FIRST_SEQ)
                        }
                        None => At::End,
                    }
                }
                At::Timeline { from, .. } => {
                    // Up to (not including) the next anchor of a hole with events, past the
                    // first event (whose hole lies behind).
                    let rows = self.store.range_in_prefix::<Timeline, _>(
                        &(room_sid,),
                        Some(&(room_sid, from)),
                        false,
                        want + 1,
                    )?;
                    let Some(((_, first), _)) = rows.first() else {
                        break;
                    };
                    let anchor = self.filled_hole_near(room_sid, first + 1, false)?;
                    let sids: Vec<u64> = rows.iter().map(|((_, sid), _)| *sid).collect();
                    let mut next = None;
                    for (i, &sid) in sids.iter().enumerate().take(want) {
                        // At the anchor (or past one that is no timeline event): its hole
                        // first, if it holds events.
                        if anchor.is_some_and(|a| sid >= a) {
                            next = Some(At::Timeline {
                                from: sid,
                                hole_ahead: true,
                            });
                            break;
                        }
                        if !in_bounds((sid, 1, 0)) {
                            next = Some(At::End);
                            break;
                        }
                        // Just below the next event, or below the hole before it.
                        let past = match sids.get(i + 1) {
                            Some(&next) if Some(next) == anchor => Position::Hole {
                                anchor: next,
                                seq: self.next_hole_floor(room_sid, next)?,
                            },
                            _ => Position::Stream(sid + 1),
                        };
                        steps.push(Step {
                            sid,
                            past,
                            in_timeline: true,
                        });
                    }
                    match next {
                        Some(next) => next,
                        None if sids.len() > want => match steps.last() {
                            Some(last) => match last.past {
                                Position::Hole { anchor, seq } => At::Hole { anchor, seq },
                                _ => At::Timeline {
                                    from: last.sid + 1,
                                    hole_ahead: false,
                                },
                            },
                            None => break,
                        },
                        None => At::End,
                    }
                }
                At::Hole { anchor, seq } => {
                    let rows = self.hole_rows(room_sid, anchor, seq, backwards, want)?;
                    let read = rows.len();
                    let mut next = None;
                    let mut last_seq = seq;
                    for (seq, sid) in rows {
                        if !in_bounds((anchor, 0, seq)) {
                            next = Some(At::End);
                            break;
                        }
                        last_seq = if backwards { seq } else { seq + 1 };
                        steps.push(Step {
                            sid,
                            past: Position::Hole {
                                anchor,
                                seq: last_seq,
                            },
                            in_timeline: false,
                        });
                    }
                    match next {
                        Some(next) => next,
                        None if read == want => At::Hole {
                            anchor,
                            seq: last_seq,
                        },
                        // The hole is walked: on with the timeline beyond it.
                        None => At::Timeline {
                            from: anchor,
                            hole_ahead: false,
                        },
                    }
                }
                At::Backfill(seq) => {
                    let rows = self.backfilled_rows(room_sid, seq, backwards, want)?;
                    let read = rows.len();
                    let mut next = None;
                    let mut last_seq = seq;
                    for (seq, sid) in rows {
                        if !in_bounds((0, 0, seq)) {
                            next = Some(At::End);
                            break;
                        }
                        last_seq = if backwards { seq } else { seq + 1 };
                        steps.push(Step {
                            sid,
                            past: Position::Backfill(last_seq),
                            in_timeline: false,
                        });
                    }
                    match next {
                        Some(next) => next,
                        None if read == want => At::Backfill(last_seq),
                        None if backwards => At::End,
                        // Forwards past the newest backfilled event: on into the timeline.
                        None => At::Timeline {
                            from: 0,
                            hole_ahead: true,
                        },
                    }
                }
            };
        }
        Ok(steps)
    }

    /// A page of `/messages` across the room's history (module doc) that the reader may see
    /// and that passes the filter, from `from`; `query` gives the direction, the limit, the
    /// filter and `to` (a stream position the page does not pass). Events the user may not
    /// see or the filter drops are skipped, within [`SCAN_BUDGET`] events examined; a page cut
    /// by the budget still carries the token to continue. A departed user's history ends at
    /// their departure.
    pub fn messages_across(
        &self,
        reader: &mut Reader<'_>,
        room_sid: u64,
        from: Position,
        query: &MessagesQuery<'_>,
    ) -> Result<HistoryPage> {
        let backwards = query.backwards;
        let limit = query.limit.max(1);
        let until = reader.access.until();
        let mut cursor = match (from, until) {
            (Position::Stream(pos), Some(until)) if backwards => {
                Position::Stream(pos.min(until + 1))
            }
            _ => from,
        };
        let mut bound = query
            .to
            .map(|to| self.stream_key(room_sid, to))
            .transpose()?;
        if let (Some(until), false) = (until, backwards) {
            let departed = self.stream_key(room_sid, until + 1)?;
            bound = Some(bound.map_or(departed, |b| b.min(departed)));
        }
        let mut events = Vec::new();
        let mut budget = SCAN_BUDGET;
        let mut lowest: Option<u64> = None;
        let end = loop {
            if events.len() == limit || budget == 0 {
                let more = !self
                    .walk_history(room_sid, cursor, backwards, bound, 1)?
                    .is_empty();
                break more.then_some(cursor);
            }
            let want = (limit - events.len()).clamp(10, 100).min(budget);
            let steps = self.walk_history(room_sid, cursor, backwards, bound, want)?;
            if steps.is_empty() {
                break None;
            }
            for step in steps {
                budget -= 1;
                cursor = step.past;
                if step.in_timeline {
                    lowest = Some(lowest.map_or(step.sid, |l| l.min(step.sid)));
                }
                let visible = match self.store.get::<EventMetaTable>(&step.sid)? {
                    Some(meta) => reader.may_see_meta(step.sid, &meta)?,
                    None => false,
                };
                if visible {
                    if let Some(event) = self.event_by_sid(step.sid)? {
                        if event_passes(query.filter, &event) {
                            events.push(event);
                        }
                    }
                }
                if events.len() == limit || budget == 0 {
                    break;
                }
            }
        };
        let open_hole = if backwards {
            self.open_hole_reached(room_sid, from, lowest, end)?
        } else {
            None
        };
        Ok(HistoryPage {
            events,
            end,
            open_hole,
        })
    }

    /// The newest open hole whose older edge a backwards page from `from` reached: its anchor
    /// lies between the lowest timeline event the page examined and `from`, and the page went
    /// past the anchor's hole (below it in the timeline, or to the end), or the hole holds no
    /// events yet.
    fn open_hole_reached(
        &self,
        room_sid: u64,
        from: Position,
        lowest: Option<u64>,
        end: Option<Position>,
    ) -> Result<Option<u64>> {
        let high = match from {
            Position::Stream(pos) => match self.first_timeline_from(room_sid, pos)? {
                Some(first) => first + 1,
                None => u64::MAX,
            },
            Position::Hole { anchor, .. } => anchor + 1,
            Position::Backfill(_) => return Ok(None),
        };
        let Some(low) = lowest else {
            return Ok(None);
        };
        for anchor in self.open_holes_between(room_sid, low, high, 4)? {
            let empty = self.hole_floor(room_sid, anchor)?.is_none();
            if low < anchor || empty || end.is_none() {
                return Ok(Some(anchor));
            }
        }
        Ok(None)
    }

    /// Up to `limit` events next to the token `from` in one direction, across the room's
    /// history as `/messages` pages it (no read authorization: the caller's), each with the
    /// token past it.
    pub fn history_page(
        &self,
        room_sid: u64,
        from: Position,
        backwards: bool,
        limit: usize,
    ) -> Result<Vec<(StoredEvent, Position)>> {
        let mut page = Vec::new();
        for step in self.walk_history(room_sid, from, backwards, None, limit)? {
            if let Some(event) = self.event_by_sid(step.sid)? {
                page.push((event, step.past));
            }
        }
        Ok(page)
    }

    /// The tokens just before and just after a stored event.
    pub fn tokens_around(&self, event: &StoredEvent) -> Result<(Position, Position)> {
        if let Some(seq) = self.backfill_seq(event.sid)? {
            return Ok((Position::Backfill(seq), Position::Backfill(seq + 1)));
        }
        if let Some(place) = self.hole_place(event.sid)? {
            let (anchor, seq) = (place.anchor, place.seq);
            return Ok((
                Position::Hole { anchor, seq },
                Position::Hole {
                    anchor,
                    seq: seq + 1,
                },
            ));
        }
        let after = self.past_forwards(event.meta.room_sid, event.sid)?;
        Ok((Position::Stream(event.sid), after))
    }
}
