//! Account data: per-user JSON objects set by clients, global or scoped to a room.
//!
//! Global and room account data share one table; room entries have the room id in the key.
//! Two types are managed by the server and cannot be set through the account data API (spec:
//! "Server Behaviour"): `m.fully_read` (read markers, written by the receipts service as room
//! account data) and `m.push_rules` (read from the push rules service, never stored here).
//! Room tags are the `m.tag` room account data entry (`{"tags": {name: {"order": n}}}`), changed
//! one tag at a time by a read-modify-write. Every write takes a position in the global stream,
//! recorded in a change log that `/sync` reads.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use ruma::{OwnedUserId, RoomId, UserId};
use serde_json::{json, Map, Value};

use super::{notifier::Notifier, stream::Stream};
use crate::{
    error::{Error, Result},
    store::{Batch, CommitError, Raw, Store},
    table,
};

table!(
    /// `(user_id, room_id or "", type) → content` as compact JSON bytes. The middle part is the
    /// empty string for global account data and a room id for room account data (room ids
    /// are never empty, so the two never mix and `(user_id, "")` scans exactly the global
    /// data). Every stored content is a JSON object; `m.push_rules` is never stored here and
    /// `m.fully_read` only as room data written by the read markers API.
    pub AccountDataTable: "account_data", (String, String, String) => Raw
);

table!(
    /// `(user_id, room_id or "", type) → position` of the entry's latest write.
    pub AccountDataPositions: "account_data_positions", (String, String, String) => u64
);
table!(
    /// `(user_id, position) → (room_id or "", type)`: the change log `/sync` reads. Each entry
    /// has exactly one row here (its latest write); older rows are deleted in the same batch.
    pub AccountDataChanges: "account_data_changes", (String, u64) => (String, String)
);

/// Types the server manages; setting them through this API is a 405 `M_BAD_JSON`.
pub const SERVER_MANAGED: &[&str] = &["m.fully_read", "m.push_rules"];

/// Longest accepted type, in bytes (the spec's limit on event types).
pub const MAX_TYPE_BYTES: usize = 255;

/// More entries than any user has; bounds a scan of one user's data.
const MAX_ENTRIES: usize = 100_000;

/// How often a write retries after losing a race with a concurrent write of the same entry.
const UPDATE_ATTEMPTS: usize = 8;

/// Longest tag name, in bytes (spec: "Room Tagging").
pub const MAX_TAG_BYTES: usize = 255;

/// One changed entry as `/sync` reads it: `(room_id or "", type, content)`.
pub type Change = (String, String, Vec<u8>);

pub struct AccountData {
    store: Store,
    stream: Arc<Stream>,
    notifier: Arc<Notifier>,
    /// Parsed `m.ignored_user_list`s, for push evaluation when an event is persisted (a
    /// message to a room of 1,000 needs 1,000 of them).
    ignored: Arc<Mutex<IgnoredCache>>,
}

/// Ignored users by user. Invariant: an entry is never older than the stored
/// `m.ignored_user_list`: its only writer, [`AccountData::update`], bumps `generation` and
/// drops the entry after its commit, and a reader only inserts what it loaded when no change
/// happened since it started loading.
#[derive(Default)]
struct IgnoredCache {
    generation: u64,
    users: HashMap<OwnedUserId, Arc<HashSet<String>>>,
}

/// Most ignore lists kept parsed; the cache starts over when full.
const IGNORED_CACHE_ENTRIES: usize = 10_000;

fn key(user_id: &UserId, room_id: Option<&RoomId>, kind: &str) -> (String, String, String) {
    (
        user_id.to_string(),
        room_id.map(|r| r.to_string()).unwrap_or_default(),
        kind.to_owned(),
    )
}

/// The content as stored: a compact JSON object, or `M_BAD_JSON` if `content` is not one.
pub fn normalize_content(content: &[u8]) -> Result<Vec<u8>> {
    let object: Map<String, Value> = serde_json::from_slice(content)
        .map_err(|_| Error::bad_json("Account data content must be a JSON object"))?;
    serde_json::to_vec(&object).map_err(|_| Error::bad_json("Account data cannot be serialized"))
}

/// The global account data type listing the users whose events the user does not want.
pub const IGNORED_USER_LIST: &str = "m.ignored_user_list";

/// `m.ignored_user_list` content must be `{"ignored_users": {user_id: {}, ...}}` (spec:
/// "Ignoring Users"): a list the server cannot read would silently ignore nobody.
fn check_ignored_user_list(content: &[u8]) -> Result<()> {
    let content: Map<String, Value> = serde_json::from_slice(content)
        .map_err(|_| Error::bad_json("Account data content must be a JSON object"))?;
    let Some(Value::Object(users)) = content.get("ignored_users") else {
        return Err(Error::bad_json(
            "m.ignored_user_list needs an ignored_users object",
        ));
    };
    if let Some(bad) = users.keys().find(|u| UserId::parse(u.as_str()).is_err()) {
        return Err(Error::bad_json(format!(
            "ignored_users: {bad:?} is not a user ID"
        )));
    }
    Ok(())
}

/// The users `content` (an `m.ignored_user_list`) ignores; nothing for unreadable content.
pub fn ignored_users(content: &[u8]) -> std::collections::HashSet<String> {
    serde_json::from_slice::<Value>(content)
        .ok()
        .and_then(|c| match c.get("ignored_users") {
            Some(Value::Object(users)) => Some(users.keys().cloned().collect()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Checks that clients may set `kind`.
pub fn check_settable(kind: &str) -> Result<()> {
    if kind.is_empty() || kind.len() > MAX_TYPE_BYTES {
        return Err(Error::invalid_param(format!(
            "The type must be 1 to {MAX_TYPE_BYTES} bytes long"
        )));
    }
    if SERVER_MANAGED.contains(&kind) {
        return Err(Error::new(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "M_BAD_JSON",
            format!("Cannot set {kind} through this API"),
        ));
    }
    Ok(())
}

impl AccountData {
    pub fn new(store: Store, stream: Arc<Stream>, notifier: Arc<Notifier>) -> Self {
        Self {
            store,
            stream,
            notifier,
            ignored: Arc::default(),
        }
    }

    fn ignored_cache(&self) -> std::sync::MutexGuard<'_, IgnoredCache> {
        self.ignored.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The users `user_id` ignores, shared: from memory when they were read before.
    pub fn cached_ignored_users(&self, user_id: &UserId) -> Result<Arc<HashSet<String>>> {
        let generation = {
            let cache = self.ignored_cache();
            if let Some(users) = cache.users.get(user_id) {
                return Ok(users.clone());
            }
            cache.generation
        };
        let users = Arc::new(self.ignored_users_of(user_id)?);
        let mut cache = self.ignored_cache();
        if cache.generation == generation {
            if cache.users.len() >= IGNORED_CACHE_ENTRIES {
                cache.users.clear();
            }
            cache.users.insert(user_id.to_owned(), users.clone());
        }
        Ok(users)
    }

    /// The content of one entry as JSON bytes (always an object), `None` when unset.
    /// The users `user_id` ignores (their `m.ignored_user_list`; none when unset).
    pub fn ignored_users_of(&self, user_id: &UserId) -> Result<std::collections::HashSet<String>> {
        Ok(self
            .get(user_id, None, IGNORED_USER_LIST)?
            .map(|content| ignored_users(&content))
            .unwrap_or_default())
    }

    pub fn get(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        kind: &str,
    ) -> Result<Option<Vec<u8>>> {
        Ok(self
            .store
            .get::<AccountDataTable>(&key(user_id, room_id, kind))?
            .map(|Raw(bytes)| bytes))
    }

    /// Every global entry of the user as `(type, content)`, in type order.
    pub fn global(&self, user_id: &UserId) -> Result<Vec<(String, Vec<u8>)>> {
        let rows = self
            .store
            .scan_prefix::<AccountDataTable, _>(&(user_id.as_str(), ""), MAX_ENTRIES)?;
        Ok(rows
            .into_iter()
            .map(|((_, _, kind), Raw(bytes))| (kind, bytes))
            .collect())
    }

    /// Stages writing an entry at stream position `pos`. `content` must already be normalized
    /// (a compact JSON object, see [`normalize_content`]); the type is not checked, so the
    /// server may stage the types it manages itself.
    pub fn stage_set(
        &self,
        batch: &mut Batch,
        pos: u64,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        kind: &str,
        content: Vec<u8>,
    ) -> Result<()> {
        let key = key(user_id, room_id, kind);
        let old = self.store.get::<AccountDataPositions>(&key)?;
        if let Some(old) = old {
            batch.delete::<AccountDataChanges>(&(key.0.clone(), old));
        }
        // A concurrent write of the same entry makes the batch conflict (and the writer
        // retry), so each entry keeps exactly one change-log row.
        batch.expect_value::<AccountDataPositions>(&key, old.as_ref());
        batch
            .put::<AccountDataChanges>(&(key.0.clone(), pos), &(key.1.clone(), key.2.clone()))
            .put::<AccountDataPositions>(&key, &pos)
            .put::<AccountDataTable>(&key, &Raw(content));
        Ok(())
    }

    /// Sets an entry on behalf of a client: the type must be settable and the content a JSON
    /// object. Replaces any earlier content of that type.
    pub async fn set(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        kind: &str,
        content: &[u8],
    ) -> Result<()> {
        check_settable(kind)?;
        let content = normalize_content(content)?;
        if kind == IGNORED_USER_LIST && room_id.is_none() {
            check_ignored_user_list(&content)?;
        }
        self.update(user_id, room_id, kind, |_| Ok(Some(content.clone())))
            .await
            .map(|_| ())
    }

    /// Read-modify-write of one entry: `change` gets the current content and returns the new
    /// one (`None`: leave it as it is). Retried when a concurrent write of the entry won.
    /// Returns whether anything was written. The type is not checked.
    pub async fn update(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        kind: &str,
        change: impl Fn(Option<&[u8]>) -> Result<Option<Vec<u8>>>,
    ) -> Result<bool> {
        let entry = key(user_id, room_id, kind);
        for _ in 0..UPDATE_ATTEMPTS {
            let current = self.store.get::<AccountDataTable>(&entry)?;
            let Some(content) = change(current.as_ref().map(|Raw(b)| b.as_slice()))? else {
                return Ok(false);
            };
            let pending = self.stream.allocate()?;
            let mut batch = Batch::new();
            batch.expect_value::<AccountDataTable>(&entry, current.as_ref());
            self.stage_set(&mut batch, pending.pos, user_id, room_id, kind, content)?;
            let (notifier, user) = (self.notifier.clone(), user_id.to_owned());
            let wake = move || notifier.notify([user.as_ref()]);
            // Whatever the outcome, a reader must not keep or insert the old list. The commit
            // task drops this once the write is done, even if this request is cancelled.
            let evict = (kind == IGNORED_USER_LIST && room_id.is_none()).then(|| {
                let (cache, user) = (self.ignored.clone(), user_id.to_owned());
                super::OnDrop::new(move || {
                    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
                    cache.generation += 1;
                    cache.users.remove(&user);
                })
            });
            let result = self
                .stream
                .commit(&self.store, batch, vec![pending], evict, wake)
                .await;
            match result {
                Ok(()) => return Ok(true),
                Err(CommitError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommitError::Conflict.into())
    }

    /// Every entry (global and room) written after position `since` and at or before `upto`,
    /// in position order.
    pub fn changes_since(&self, user_id: &UserId, since: u64, upto: u64) -> Result<Vec<Change>> {
        let from = (user_id.to_string(), since + 1);
        let rows = self.store.range_in_prefix::<AccountDataChanges, _>(
            &(user_id.as_str(),),
            Some(&from),
            false,
            MAX_ENTRIES,
        )?;
        let mut out = Vec::new();
        for ((_, pos), (room, kind)) in rows {
            if pos > upto {
                break;
            }
            let room_id = match room.as_str() {
                "" => None,
                room => Some(RoomId::parse(room).map_err(|_| Error::unknown("corrupt room id"))?),
            };
            if let Some(content) = self.get(user_id, room_id.as_deref(), &kind)? {
                out.push((room, kind, content));
            }
        }
        Ok(out)
    }

    /// Every entry of the user in one room as `(type, content)`, in type order.
    pub fn room(&self, user_id: &UserId, room_id: &RoomId) -> Result<Vec<(String, Vec<u8>)>> {
        let rows = self.store.scan_prefix::<AccountDataTable, _>(
            &(user_id.as_str(), room_id.as_str()),
            MAX_ENTRIES,
        )?;
        Ok(rows
            .into_iter()
            .map(|((_, _, kind), Raw(bytes))| (kind, bytes))
            .collect())
    }

    /// The room's tags (the `tags` object of `m.tag`), empty when there are none.
    pub fn tags(&self, user_id: &UserId, room_id: &RoomId) -> Result<Map<String, Value>> {
        let Some(content) = self.get(user_id, Some(room_id), "m.tag")? else {
            return Ok(Map::new());
        };
        Ok(tags_of(&content))
    }

    /// Adds or replaces one tag. `info` is the tag's object; its `order`, when present, must be
    /// a number from 0 to 1.
    pub async fn set_tag(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        tag: &str,
        info: Map<String, Value>,
    ) -> Result<()> {
        check_tag(tag)?;
        if let Some(order) = info.get("order") {
            if !order.as_f64().is_some_and(|o| (0.0..=1.0).contains(&o)) {
                return Err(Error::invalid_param("order must be a number from 0 to 1"));
            }
        }
        self.update(user_id, Some(room_id), "m.tag", |current| {
            let mut tags = current.map(tags_of).unwrap_or_default();
            if tags.get(tag).and_then(Value::as_object) == Some(&info) {
                return Ok(None);
            }
            tags.insert(tag.to_owned(), Value::Object(info.clone()));
            tag_content(tags).map(Some)
        })
        .await
        .map(|_| ())
    }

    /// Removes one tag; removing a tag the room does not have is a no-op.
    pub async fn delete_tag(&self, user_id: &UserId, room_id: &RoomId, tag: &str) -> Result<()> {
        check_tag(tag)?;
        self.update(user_id, Some(room_id), "m.tag", |current| {
            let mut tags = current.map(tags_of).unwrap_or_default();
            if tags.remove(tag).is_none() {
                return Ok(None);
            }
            tag_content(tags).map(Some)
        })
        .await
        .map(|_| ())
    }
}

fn check_tag(tag: &str) -> Result<()> {
    if tag.is_empty() || tag.len() > MAX_TAG_BYTES {
        return Err(Error::invalid_param(format!(
            "A tag must be 1 to {MAX_TAG_BYTES} bytes long"
        )));
    }
    Ok(())
}

/// The `tags` object of an `m.tag` content; anything malformed counts as no tags.
fn tags_of(content: &[u8]) -> Map<String, Value> {
    serde_json::from_slice::<Value>(content)
        .ok()
        .and_then(|mut v| match v.get_mut("tags").map(Value::take) {
            Some(Value::Object(tags)) => Some(tags),
            _ => None,
        })
        .unwrap_or_default()
}

fn tag_content(tags: Map<String, Value>) -> Result<Vec<u8>> {
    serde_json::to_vec(&json!({ "tags": tags }))
        .map_err(|_| Error::unknown("Cannot serialize the tags"))
}
