//! Relationships between events (`content["m.relates_to"]` with `rel_type` and `event_id`):
//! the child index written with each event, bundled aggregations (`unsigned["m.relations"]`),
//! `/relations` pages and the thread list.
//!
//! Storage (see `schema/rooms.md`): every child is indexed twice, by parent alone (all children
//! in stream order, for `/relations/{eventId}`) and by parent and relation type (for one type's
//! children and for aggregations). Thread roots are listed newest activity first from
//! `thread_activity`, keyed by the newest reply. Rows are per child, so two events staged in one
//! batch never overwrite each other's counters: counts are taken from the rows when read.

use std::collections::BTreeSet;

use ruma::{
    events::TimelineEventType, CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId,
    UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{access::Reader, format::Viewer, Pdu, Rooms, StoredEvent};
use crate::{
    error::{Error, Result},
    store::{Batch, Record},
    table,
};

table!(
    /// `(parent sid, child sid) → RelationRecord`: every child of a parent in stream order.
    pub Relations: "relations", (u64, u64) => RelationRecord
);
table!(
    /// `(parent sid, rel_type, child sid) → RelationRecord`: the same rows by relation type.
    pub RelationsByType: "relations_by_type", (u64, String, u64) => RelationRecord
);
table!(
    /// `(room sid, sid of a thread's newest reply) → sid of the thread root`: thread roots by
    /// latest activity. A row whose reply is no longer its thread's newest is stale and skipped.
    pub ThreadActivity: "thread_activity", (u64, u64) => u64
);

pub const THREAD: &str = "m.thread";
pub const REPLACE: &str = "m.replace";
pub const REFERENCE: &str = "m.reference";
pub const ANNOTATION: &str = "m.annotation";

/// How many levels of relations `recurse=true` follows (the spec asks for at least 3).
pub const RECURSION_DEPTH: u32 = 3;
/// At most this many related events are collected for one recursive `/relations` request.
const RECURSION_CAP: usize = 10_000;
/// The most index rows one `/relations` request examines (filtered-out and invisible ones
/// included); a page cut short returns what it found and a token to continue.
pub const SCAN_BUDGET: usize = 2_000;
/// The same for `/threads`, whose rows cost more (each loads the thread's root and checks
/// that the row is its newest activity).
pub const THREADS_SCAN_BUDGET: usize = 200;

/// One child of a parent: what filters and aggregations need without loading the event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RelationRecord {
    pub rel_type: String,
    /// The child's event type.
    pub event_type: String,
    pub sender: String,
    pub origin_server_ts: u64,
    /// The annotation key (`m.annotation`).
    pub key: Option<String>,
    /// Whether the child counts in aggregations: an `m.replace` that meets the spec's validity
    /// rules, an `m.thread` whose root has no relation itself; always true for other types.
    pub valid: bool,
}
impl Record for RelationRecord {}

/// The `m.relates_to` of an event's content, if it names a `rel_type` and an `event_id`
/// (replies, which have neither, are not relations here).
#[derive(Debug, Clone, PartialEq)]
pub struct RelatesTo {
    pub rel_type: String,
    pub event_id: OwnedEventId,
    pub key: Option<String>,
}

pub fn relates_to(object: &CanonicalJsonObject) -> Option<RelatesTo> {
    let CanonicalJsonValue::Object(content) = object.get("content")? else {
        return None;
    };
    let CanonicalJsonValue::Object(relation) = content.get("m.relates_to")? else {
        return None;
    };
    let string = |key: &str| match relation.get(key) {
        Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    Some(RelatesTo {
        rel_type: string("rel_type")?,
        event_id: EventId::parse(string("event_id")?).ok()?,
        key: string("key"),
    })
}

fn has_object(object: &CanonicalJsonObject, key: &str) -> bool {
    matches!(
        object.get("content"),
        Some(CanonicalJsonValue::Object(c)) if matches!(c.get(key), Some(CanonicalJsonValue::Object(_)))
    )
}

/// What `/relations` asks for.
#[derive(Debug, Clone, Default)]
pub struct RelationsQuery {
    pub rel_type: Option<String>,
    pub event_type: Option<String>,
    /// Token (stream position): backwards returns children below it, forwards from it on.
    pub from: Option<u64>,
    /// Token where the page stops (exclusive boundary, as in `/messages`).
    pub to: Option<u64>,
    pub backwards: bool,
    pub limit: usize,
    pub recurse: bool,
}

/// A page of children, newest first when paging backwards.
pub struct RelationsPage {
    pub events: Vec<StoredEvent>,
    /// Token for the next page, if the page was cut by the limit.
    pub next: Option<u64>,
}

/// A page of thread roots, newest activity first.
pub struct ThreadsPage {
    pub roots: Vec<StoredEvent>,
    pub next: Option<u64>,
}

impl Rooms {
    /// Indexes the relation of an event being staged (same batch as the event). For events of
    /// local users it also enforces the spec's server-side checks: a thread cannot start at an
    /// event that has a relation itself (400 `M_UNKNOWN`) and the same annotation cannot be
    /// sent twice (400 `M_DUPLICATE_ANNOTATION`). Relations to unknown events or events of
    /// other rooms are ignored, as the spec asks.
    pub(super) fn stage_relation(
        &self,
        batch: &mut Batch,
        sid: u64,
        room_sid: u64,
        pdu: &Pdu,
        object: &CanonicalJsonObject,
    ) -> Result<()> {
        let Some(relation) = relates_to(object) else {
            return Ok(());
        };
        let Some(parent) = self.event(&relation.event_id)? else {
            return Ok(());
        };
        if parent.meta.room_sid != room_sid {
            return Ok(());
        }
        let local = pdu.sender.server_name() == self.server_name();
        let parent_relation = relates_to(&parent.json);
        let kind = pdu.kind.to_string();
        let valid = match relation.rel_type.as_str() {
            THREAD => {
                if parent_relation.is_some() && local {
                    return Err(Error::new(
                        http::StatusCode::BAD_REQUEST,
                        "M_UNKNOWN",
                        "Cannot start a thread from an event with a relation",
                    ));
                }
                parent_relation.is_none()
            }
            REPLACE => {
                parent.meta.sender == pdu.sender.as_str()
                    && parent.meta.kind == kind
                    && parent.meta.state_key.is_none()
                    && pdu.state_key.is_none()
                    && parent_relation.is_none_or(|r| r.rel_type != REPLACE)
                    && (pdu.kind == TimelineEventType::RoomEncrypted
                        || has_object(object, "m.new_content"))
            }
            ANNOTATION => {
                if local && self.has_annotation(parent.sid, pdu, relation.key.as_deref())? {
                    return Err(Error::new(
                        http::StatusCode::BAD_REQUEST,
                        "M_DUPLICATE_ANNOTATION",
                        "You already sent this annotation for this event",
                    ));
                }
                true
            }
            _ => true,
        };
        let record = RelationRecord {
            rel_type: relation.rel_type.clone(),
            event_type: kind,
            sender: pdu.sender.to_string(),
            origin_server_ts: u64::from(pdu.origin_server_ts.0),
            key: relation.key.clone(),
            valid,
        };
        if relation.rel_type == THREAD && valid {
            if let Some(previous) = self.thread_latest_sid(parent.sid, None)? {
                batch.delete::<ThreadActivity>(&(room_sid, previous));
            }
            batch.put::<ThreadActivity>(&(room_sid, sid), &parent.sid);
        }
        batch
            .put::<Relations>(&(parent.sid, sid), &record)
            .put::<RelationsByType>(&(parent.sid, relation.rel_type, sid), &record);
        Ok(())
    }

    /// Whether `pdu`'s sender already annotated the parent with this type and key.
    fn has_annotation(&self, parent_sid: u64, pdu: &Pdu, key: Option<&str>) -> Result<bool> {
        let rows = self
            .store
            .scan_prefix::<RelationsByType, _>(&(parent_sid, ANNOTATION.to_owned()), usize::MAX)?;
        Ok(rows.iter().any(|(_, r)| {
            r.sender == pdu.sender.as_str()
                && r.event_type == pdu.kind.to_string()
                && r.key.as_deref() == key
        }))
    }

    /// Removes the index rows of a child whose relation a redaction removed (same batch as the
    /// redaction). `redacted` is the child's redacted form.
    pub(super) fn unstage_relation(
        &self,
        batch: &mut Batch,
        child: &StoredEvent,
        redacted: &CanonicalJsonObject,
    ) -> Result<()> {
        let Some(relation) = relates_to(&child.json) else {
            return Ok(());
        };
        if relates_to(redacted).as_ref() == Some(&relation) {
            return Ok(());
        }
        let Some(parent_sid) = self.event_sid(&relation.event_id)? else {
            return Ok(());
        };
        let Some(record) = self.store.get::<Relations>(&(parent_sid, child.sid))? else {
            return Ok(());
        };
        batch
            .delete::<Relations>(&(parent_sid, child.sid))
            .delete::<RelationsByType>(&(parent_sid, record.rel_type.clone(), child.sid));
        let room_sid = child.meta.room_sid;
        if record.rel_type == THREAD
            && self
                .store
                .get::<ThreadActivity>(&(room_sid, child.sid))?
                .is_some()
        {
            batch.delete::<ThreadActivity>(&(room_sid, child.sid));
            if let Some(next) = self.thread_latest_sid(parent_sid, Some(child.sid))? {
                batch.put::<ThreadActivity>(&(room_sid, next), &parent_sid);
            }
        }
        Ok(())
    }

    /// The newest valid reply of a thread, skipping `except`.
    fn thread_latest_sid(&self, root_sid: u64, except: Option<u64>) -> Result<Option<u64>> {
        let mut from = None;
        loop {
            let rows = self.store.range_in_prefix::<RelationsByType, _>(
                &(root_sid, THREAD.to_owned()),
                from.as_ref(),
                true,
                16,
            )?;
            let Some(((_, _, last), _)) = rows.last() else {
                return Ok(None);
            };
            let last = *last;
            if let Some(((_, _, sid), _)) = rows
                .iter()
                .find(|((_, _, sid), r)| r.valid && Some(*sid) != except)
            {
                return Ok(Some(*sid));
            }
            if last == 0 {
                return Ok(None);
            }
            from = Some((root_sid, THREAD.to_owned(), last - 1));
        }
    }

    /// Whether a served `event` carries aggregations: other events relate to it, and it is not
    /// a state event (which gets none, as in the spec).
    pub fn bundles_aggregations(&self, event: &StoredEvent) -> Result<bool> {
        Ok(event.meta.state_key.is_none()
            && !self
                .store
                .scan_prefix::<Relations, _>(&(event.sid,), 1)?
                .is_empty())
    }

    /// The ClientEvent JSON of an event with its bundled aggregations, for `viewer`.
    pub fn client_event_bundled(
        &self,
        event: &StoredEvent,
        viewer: Option<Viewer<'_>>,
    ) -> Result<Value> {
        let value = self.client_event(event, viewer);
        self.with_aggregations(value, event, viewer)
    }

    /// Adds `unsigned["m.relations"]` to a served event: `m.thread` (latest reply, count,
    /// whether the viewer participated), `m.replace` (the most recent valid edit, unless the
    /// original is redacted) and `m.reference` (the referencing event ids). Children the
    /// viewer may not see are left out. State events get no aggregations (as in the spec).
    pub fn with_aggregations(
        &self,
        value: Value,
        event: &StoredEvent,
        viewer: Option<Viewer<'_>>,
    ) -> Result<Value> {
        self.aggregate(value, event, viewer, true)
    }

    fn aggregate(
        &self,
        mut value: Value,
        event: &StoredEvent,
        viewer: Option<Viewer<'_>>,
        with_thread: bool,
    ) -> Result<Value> {
        if !self.bundles_aggregations(event)? {
            return Ok(value);
        }
        // Children are read with the same room-level access and history visibility as every
        // other read path (`access.rs`): one reader per parent.
        let mut reader = match (viewer, &event.pdu.room_id) {
            (Some(v), Some(room_id)) => Some(self.reader(room_id, v.user_id)?),
            _ => None,
        };
        let mut relations = Map::new();
        if with_thread {
            if let Some(thread) = self.thread_summary(event, viewer, reader.as_mut())? {
                relations.insert(THREAD.into(), thread);
            }
        }
        if event.meta.redacted_by.is_none() {
            if let Some(edit) = self.latest_edit(event, reader.as_mut())? {
                relations.insert(REPLACE.into(), self.client_event(&edit, viewer));
            }
        }
        let references = self.children_of_type(event.sid, REFERENCE)?;
        let mut chunk = Vec::new();
        for (sid, _) in references {
            if let Some(child) = self.visible_child(sid, reader.as_mut())? {
                chunk.push(json!({"event_id": child.pdu.event_id}));
            }
        }
        if !chunk.is_empty() {
            relations.insert(REFERENCE.into(), json!({ "chunk": chunk }));
        }
        if !relations.is_empty() {
            if let Some(unsigned) = value
                .as_object_mut()
                .map(|o| o.entry("unsigned").or_insert_with(|| json!({})))
                .and_then(Value::as_object_mut)
            {
                unsigned.insert("m.relations".into(), Value::Object(relations));
            }
        }
        Ok(value)
    }

    fn children_of_type(
        &self,
        parent_sid: u64,
        rel_type: &str,
    ) -> Result<Vec<(u64, RelationRecord)>> {
        Ok(self
            .store
            .scan_prefix::<RelationsByType, _>(&(parent_sid, rel_type.to_owned()), usize::MAX)?
            .into_iter()
            .filter(|(_, r)| r.valid)
            .map(|((_, _, sid), r)| (sid, r))
            .collect())
    }

    /// The child event, if the reader may see it (any child when there is no reader).
    fn visible_child(
        &self,
        sid: u64,
        reader: Option<&mut Reader<'_>>,
    ) -> Result<Option<StoredEvent>> {
        let Some(event) = self.event_by_sid(sid)? else {
            return Ok(None);
        };
        if let Some(reader) = reader {
            if !reader.may_see(&event)? {
                return Ok(None);
            }
        }
        Ok(Some(event))
    }

    /// The `m.thread` aggregation of a thread root, if it has replies.
    fn thread_summary(
        &self,
        root: &StoredEvent,
        viewer: Option<Viewer<'_>>,
        mut reader: Option<&mut Reader<'_>>,
    ) -> Result<Option<Value>> {
        let replies = self.children_of_type(root.sid, THREAD)?;
        if replies.is_empty() {
            return Ok(None);
        }
        let participated = viewer.is_some_and(|v| {
            root.meta.sender == v.user_id.as_str()
                || replies.iter().any(|(_, r)| r.sender == v.user_id.as_str())
        });
        let mut latest = None;
        for (sid, _) in replies.iter().rev() {
            if let Some(event) = self.visible_child(*sid, reader.as_deref_mut())? {
                latest = Some(event);
                break;
            }
        }
        let Some(latest) = latest else {
            return Ok(None);
        };
        let latest_value = self.client_event(&latest, viewer);
        let latest_value = self.aggregate(latest_value, &latest, viewer, false)?;
        Ok(Some(json!({
            "latest_event": latest_value,
            "count": replies.len(),
            "current_user_participated": participated,
        })))
    }

    /// The most recent valid edit of an event (by `origin_server_ts`, then event id).
    fn latest_edit(
        &self,
        event: &StoredEvent,
        mut reader: Option<&mut Reader<'_>>,
    ) -> Result<Option<StoredEvent>> {
        let mut edits = self.children_of_type(event.sid, REPLACE)?;
        edits.sort_by_key(|(sid, r)| std::cmp::Reverse((r.origin_server_ts, *sid)));
        let mut best: Option<StoredEvent> = None;
        for (sid, record) in edits {
            if best
                .as_ref()
                .is_some_and(|b| b.meta.origin_server_ts > record.origin_server_ts)
            {
                break;
            }
            let Some(edit) = self.visible_child(sid, reader.as_deref_mut())? else {
                continue;
            };
            let newer = best.as_ref().is_none_or(|b| {
                (edit.meta.origin_server_ts, edit.pdu.event_id.as_str())
                    > (b.meta.origin_server_ts, b.pdu.event_id.as_str())
            });
            if newer {
                best = Some(edit);
            }
        }
        Ok(best)
    }

    /// Children of `parent` for `/relations`, visible to `user_id`, paged by stream position.
    pub fn relations(
        &self,
        parent: &StoredEvent,
        reader: &mut Reader<'_>,
        query: &RelationsQuery,
    ) -> Result<RelationsPage> {
        let limit = query.limit.max(1);
        let in_range = |sid: u64| match (query.backwards, query.from, query.to) {
            (true, Some(from), _) if sid >= from => false,
            (false, Some(from), _) if sid < from => false,
            (true, _, Some(to)) if sid < to => false,
            (false, _, Some(to)) if sid >= to => false,
            _ => true,
        };
        if query.recurse {
            let mut sids: Vec<u64> = self
                .related_tree(parent.sid, query)?
                .into_iter()
                .filter(|sid| in_range(*sid))
                .collect();
            if query.backwards {
                sids.reverse();
            }
            let mut events = Vec::new();
            let mut next = None;
            let mut rest = sids.into_iter().peekable();
            while events.len() < limit {
                let Some(sid) = rest.next() else { break };
                next = Some(if query.backwards { sid } else { sid + 1 });
                if let Some(event) = self.visible_child(sid, Some(&mut *reader))? {
                    events.push(event);
                }
            }
            let more = rest.peek().is_some();
            return Ok(RelationsPage {
                events,
                next: next.filter(|_| more),
            });
        }

        // Direct children: a range scan of one index, page by page from the token.
        let mut events = Vec::new();
        let mut cursor = query.from;
        let mut budget = SCAN_BUDGET;
        loop {
            if budget == 0 {
                return Ok(RelationsPage {
                    events,
                    next: cursor,
                });
            }
            let want = limit.min(budget);
            let rows = self.child_rows(parent.sid, query, cursor, want)?;
            budget -= rows.len().min(budget);
            let exhausted = rows.len() < want;
            if rows.is_empty() {
                return Ok(RelationsPage { events, next: None });
            }
            let count = rows.len();
            for (index, (sid, record)) in rows.into_iter().enumerate() {
                if !in_range(sid) {
                    return Ok(RelationsPage { events, next: None });
                }
                cursor = Some(if query.backwards { sid } else { sid + 1 });
                if query
                    .event_type
                    .as_ref()
                    .is_some_and(|t| *t != record.event_type)
                {
                    continue;
                }
                if let Some(event) = self.visible_child(sid, Some(&mut *reader))? {
                    events.push(event);
                    if events.len() == limit {
                        let last = exhausted && index + 1 == count;
                        return Ok(RelationsPage {
                            events,
                            next: cursor.filter(|_| !last),
                        });
                    }
                }
            }
            if exhausted || cursor == Some(0) {
                return Ok(RelationsPage { events, next: None });
            }
        }
    }

    /// Up to `limit` index rows of direct children from `cursor` (a token) on.
    fn child_rows(
        &self,
        parent_sid: u64,
        query: &RelationsQuery,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, RelationRecord)>> {
        // A token `t` sits between `t - 1` and `t`: backwards starts at `t - 1`.
        let start = match (query.backwards, cursor) {
            (true, Some(0)) => return Ok(Vec::new()),
            (true, Some(t)) => Some(t - 1),
            (false, Some(t)) => Some(t),
            (_, None) => None,
        };
        Ok(match &query.rel_type {
            Some(rel_type) => {
                let prefix = (parent_sid, rel_type.clone());
                let from = start.map(|s| (parent_sid, rel_type.clone(), s));
                self.store
                    .range_in_prefix::<RelationsByType, _>(
                        &prefix,
                        from.as_ref(),
                        query.backwards,
                        limit,
                    )?
                    .into_iter()
                    .map(|((_, _, sid), r)| (sid, r))
                    .collect()
            }
            None => {
                let from = start.map(|s| (parent_sid, s));
                self.store
                    .range_in_prefix::<Relations, _>(
                        &(parent_sid,),
                        from.as_ref(),
                        query.backwards,
                        limit,
                    )?
                    .into_iter()
                    .map(|((_, sid), r)| (sid, r))
                    .collect()
            }
        })
    }

    /// Every event related to `root` through at most `RECURSION_DEPTH` relations that all
    /// match the query's filters, in stream order.
    fn related_tree(&self, root: u64, query: &RelationsQuery) -> Result<BTreeSet<u64>> {
        let mut found = BTreeSet::new();
        let mut level = vec![root];
        for _ in 0..RECURSION_DEPTH {
            let mut next_level = Vec::new();
            for parent in level {
                let rows = self.child_rows(
                    parent,
                    &RelationsQuery {
                        backwards: false,
                        ..query.clone()
                    },
                    None,
                    RECURSION_CAP,
                )?;
                for (sid, record) in rows {
                    if query
                        .event_type
                        .as_ref()
                        .is_some_and(|t| *t != record.event_type)
                    {
                        continue;
                    }
                    if found.insert(sid) {
                        next_level.push(sid);
                    }
                    if found.len() >= RECURSION_CAP {
                        return Ok(found);
                    }
                }
            }
            if next_level.is_empty() {
                break;
            }
            level = next_level;
        }
        Ok(found)
    }

    /// A page of the room's thread roots that `user_id` may see, newest activity first.
    /// `from` is a previous page's `next`; `participated` keeps only threads the user started
    /// or replied to.
    pub fn threads(
        &self,
        room_sid: u64,
        reader: &mut Reader<'_>,
        user_id: &UserId,
        participated: bool,
        from: Option<u64>,
        limit: usize,
    ) -> Result<ThreadsPage> {
        let limit = limit.max(1);
        let mut roots = Vec::new();
        let mut cursor = from;
        let mut budget = THREADS_SCAN_BUDGET;
        loop {
            if budget == 0 {
                // Out of budget: what was found, and where to go on.
                return Ok(ThreadsPage {
                    roots,
                    next: cursor,
                });
            }
            let start = match cursor {
                Some(0) => break,
                Some(t) => Some((room_sid, t - 1)),
                None => None,
            };
            let rows = self.store.range_in_prefix::<ThreadActivity, _>(
                &(room_sid,),
                start.as_ref(),
                true,
                limit.min(budget),
            )?;
            budget -= rows.len().min(budget);
            if rows.is_empty() {
                break;
            }
            for ((_, latest), root_sid) in rows {
                cursor = Some(latest);
                if self.thread_latest_sid(root_sid, None)? != Some(latest) {
                    continue; // stale row: the thread has newer activity further up
                }
                let Some(root) = self.event_by_sid(root_sid)? else {
                    continue;
                };
                if !reader.may_see(&root)? {
                    continue;
                }
                if participated && !self.participated(&root, user_id)? {
                    continue;
                }
                roots.push(root);
                if roots.len() == limit {
                    return Ok(ThreadsPage {
                        roots,
                        next: cursor,
                    });
                }
            }
        }
        Ok(ThreadsPage { roots, next: None })
    }

    /// Whether the user sent the thread root or a reply in the thread.
    pub fn participated(&self, root: &StoredEvent, user_id: &UserId) -> Result<bool> {
        if root.meta.sender == user_id.as_str() {
            return Ok(true);
        }
        Ok(self
            .children_of_type(root.sid, THREAD)?
            .iter()
            .any(|(_, r)| r.sender == user_id.as_str()))
    }
}
