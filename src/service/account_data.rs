//! Account data: per-user JSON objects set by clients, global or scoped to a room.
//!
//! The client API serves global account data today; room account data uses the same table with
//! the room id in the key. Two types are managed by the server and cannot be set through the
//! account data API (spec: "Server Behaviour"): `m.fully_read` (read markers) and
//! `m.push_rules` (see the push rules service). Every write takes a position in the global
//! stream, recorded in a change log that `/sync` reads.

use std::sync::Arc;

use ruma::{RoomId, UserId};
use serde_json::{Map, Value};

use super::{notifier::Notifier, stream::Stream};
use crate::{
    error::{Error, Result},
    store::{Batch, Raw, Store},
    table,
};

table!(
    /// `(user_id, room_id or "", type) → content` as compact JSON bytes. The middle part is the
    /// empty string for global account data and a room id for room account data (room ids
    /// are never empty, so the two never mix and `(user_id, "")` scans exactly the global
    /// data). Every stored content is a JSON object; the types `m.fully_read` and
    /// `m.push_rules` are never stored here.
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

pub struct AccountData {
    store: Store,
    stream: Arc<Stream>,
    notifier: Arc<Notifier>,
}

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
        }
    }

    /// Global entries written after position `since` (all of them without one) and at or
    /// before `upto`, as `(type, content)`.
    pub fn global_since(
        &self,
        user_id: &UserId,
        since: Option<u64>,
        upto: u64,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let Some(since) = since else {
            return self.global(user_id);
        };
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
            if !room.is_empty() {
                continue;
            }
            if let Some(content) = self.get(user_id, None, &kind)? {
                out.push((kind, content));
            }
        }
        Ok(out)
    }

    /// The content of one entry as JSON bytes (always an object), `None` when unset.
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
        if let Some(old) = self.store.get::<AccountDataPositions>(&key)? {
            batch.delete::<AccountDataChanges>(&(key.0.clone(), old));
        }
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
        let pending = self.stream.allocate()?;
        let mut batch = Batch::new();
        self.stage_set(&mut batch, pending.pos, user_id, room_id, kind, content)?;
        self.store.commit(batch).await?;
        drop(pending);
        self.notifier.notify([user_id]);
        Ok(())
    }
}
