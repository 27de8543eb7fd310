//! Filters uploaded by clients (`POST /user/{userId}/filter`), referred to later by id in
//! `/sync` and `/messages`.
//!
//! Filter ids are per user: `0`, `1`, `2`, … in upload order. The next id is one more than the
//! user's highest stored id, claimed with an `expect_absent` precondition, so two concurrent
//! uploads can never get the same id (the loser re-reads and takes the next one). Ids never
//! start with `{`, as the spec requires (inline filters are told apart by that).
//!
//! A filter is stored as the JSON object the client uploaded (compacted), after checking that
//! it parses as a `FilterDefinition`, so downloading it returns exactly what was uploaded,
//! including keys this server does not know; [`Filters::get`] parses it for use.

use std::{collections::HashMap, sync::Mutex};

use ruma::{api::client::filter::FilterDefinition, UserId};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{
    error::{Error, Result},
    store::{Batch, CommitError, Raw, Store},
    table,
};

table!(
    /// `(user_id, filter_id) → filter` as the compact JSON object the client uploaded; it
    /// always parses as a `FilterDefinition`.
    /// Filter ids of a user are allocated in increasing order and never reused or changed;
    /// filters are never modified once written, so a cached filter is never stale.
    pub FiltersTable: "filters", (String, u64) => Raw
);

/// How often an upload retries after losing the race for an id.
const ALLOCATION_ATTEMPTS: usize = 16;

pub struct Filters {
    store: Store,
    /// Filters parsed lately, by their JSON text: a client sends the same filter (inline or
    /// by id) with every sync, and parsing and checking it cost more than the clone. At most
    /// [`PARSED_KEPT`] entries (emptied when full). The lock guards only the map.
    parsed: Mutex<HashMap<Box<[u8]>, FilterDefinition>>,
}

/// Parsed filters kept at most.
const PARSED_KEPT: usize = 256;

/// The numeric id of a filter id string, `None` for anything `create` never hands out
/// (including non-canonical forms such as `01` or `+1`).
fn parse_id(filter_id: &str) -> Option<u64> {
    let id: u64 = filter_id.parse().ok()?;
    (id.to_string() == filter_id).then_some(id)
}

/// The filter as stored: `content` must be a JSON object (`M_NOT_JSON` if it is not JSON at
/// all, `M_BAD_JSON` otherwise) that is a valid filter (see [`parse_filter`]).
pub fn normalize_filter(content: &[u8]) -> Result<Vec<u8>> {
    let (value, _) = parse_filter(content)?;
    serde_json::to_vec(&value).map_err(|_| Error::bad_json("The filter cannot be serialized"))
}

/// Parses a filter (uploaded, or inline in `/sync`'s `filter` parameter): JSON, an object,
/// every known field of the type and with the values the spec gives (`M_BAD_JSON` naming the
/// field otherwise), and then ruma's `FilterDefinition`. Unknown fields are allowed.
pub fn parse_filter(content: &[u8]) -> Result<(Value, FilterDefinition)> {
    let value: Value = serde_json::from_slice(content).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            Error::not_json(format!("The filter is not valid JSON: {e}"))
        } else {
            Error::bad_json(format!("The filter is not valid: {e}"))
        }
    })?;
    let object = value
        .as_object()
        .ok_or_else(|| Error::bad_json("A filter must be a JSON object"))?;
    check_filter(object)
        .map_err(|message| Error::bad_json(format!("Invalid filter: {message}")))?;
    let filter = FilterDefinition::deserialize(&value)
        .map_err(|e| Error::bad_json(format!("The filter is not valid: {e}")))?;
    Ok((value, filter))
}

/// How one field of a filter object must look (spec: `Filter`, `EventFilter`,
/// `RoomEventFilter`, `RoomFilter`).
enum Field {
    Strings,
    Bool,
    /// An integer; the spec asks for more than 0, but 0 is accepted (clients send it to ask
    /// for no events, and the server clamps limits anyway).
    Limit,
    EventFormat,
    EventFilter,
    RoomEventFilter,
    RoomFilter,
}

const EVENT_FILTER: &[(&str, Field)] = &[
    ("limit", Field::Limit),
    ("types", Field::Strings),
    ("not_types", Field::Strings),
    ("senders", Field::Strings),
    ("not_senders", Field::Strings),
];
const ROOM_EVENT_FILTER_EXTRA: &[(&str, Field)] = &[
    ("rooms", Field::Strings),
    ("not_rooms", Field::Strings),
    ("contains_url", Field::Bool),
    ("lazy_load_members", Field::Bool),
    ("include_redundant_members", Field::Bool),
    ("unread_thread_notifications", Field::Bool),
];
const ROOM_FILTER: &[(&str, Field)] = &[
    ("rooms", Field::Strings),
    ("not_rooms", Field::Strings),
    ("include_leave", Field::Bool),
    ("ephemeral", Field::RoomEventFilter),
    ("state", Field::RoomEventFilter),
    ("timeline", Field::RoomEventFilter),
    ("account_data", Field::RoomEventFilter),
];
const FILTER: &[(&str, Field)] = &[
    ("event_fields", Field::Strings),
    ("event_format", Field::EventFormat),
    ("presence", Field::EventFilter),
    ("account_data", Field::EventFilter),
    ("room", Field::RoomFilter),
];

fn check_filter(object: &Map<String, Value>) -> std::result::Result<(), String> {
    check_object(object, &[FILTER], "")
}

/// Checks the fields of `object` listed in `schemas`; `path` prefixes field names in errors.
fn check_object(
    object: &Map<String, Value>,
    schemas: &[&[(&str, Field)]],
    path: &str,
) -> std::result::Result<(), String> {
    for (name, field) in schemas.iter().flat_map(|s| s.iter()) {
        let Some(value) = object.get(*name) else {
            continue;
        };
        let at = format!("{path}{name}");
        let nested = |schemas: &[&[(&str, Field)]]| match value {
            Value::Object(inner) => check_object(inner, schemas, &format!("{at}.")),
            _ => Err(format!("{at} must be an object")),
        };
        match field {
            Field::Strings => {
                let strings = value
                    .as_array()
                    .is_some_and(|items| items.iter().all(Value::is_string));
                if !strings {
                    return Err(format!("{at} must be a list of strings"));
                }
            }
            Field::Bool if !value.is_boolean() => return Err(format!("{at} must be a boolean")),
            Field::Bool => {}
            Field::Limit if value.as_u64().is_none() => {
                return Err(format!("{at} must be a non-negative integer"));
            }
            Field::Limit => {}
            Field::EventFormat => {
                if !matches!(value.as_str(), Some("client" | "federation")) {
                    return Err(format!("{at} must be \"client\" or \"federation\""));
                }
            }
            Field::EventFilter => nested(&[EVENT_FILTER])?,
            Field::RoomEventFilter => nested(&[EVENT_FILTER, ROOM_EVENT_FILTER_EXTRA])?,
            Field::RoomFilter => nested(&[ROOM_FILTER])?,
        }
    }
    Ok(())
}

impl Filters {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            parsed: Mutex::new(HashMap::new()),
        }
    }

    /// `text` parsed by `parse`, or its earlier parse when it was seen lately (a parse
    /// depends on the text alone). Errors are not kept.
    fn cached(
        &self,
        text: &[u8],
        parse: impl FnOnce(&[u8]) -> Result<FilterDefinition>,
    ) -> Result<FilterDefinition> {
        let lock = || self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(filter) = lock().get(text) {
            return Ok(filter.clone());
        }
        let filter = parse(text)?;
        let mut parsed = lock();
        if parsed.len() >= PARSED_KEPT {
            parsed.clear();
        }
        parsed.insert(text.into(), filter.clone());
        Ok(filter)
    }

    /// An inline filter (`/sync`'s `filter` parameter) parsed and checked as
    /// [`parse_filter`] does.
    pub fn inline(&self, text: &str) -> Result<FilterDefinition> {
        self.cached(text.as_bytes(), |text| Ok(parse_filter(text)?.1))
    }

    /// Checks the uploaded JSON `content` (see [`normalize_filter`]), stores it under the next
    /// free id of the user and returns the id.
    pub async fn create(&self, user_id: &UserId, content: &[u8]) -> Result<String> {
        let json = normalize_filter(content)?;
        let user = user_id.to_string();
        for _ in 0..ALLOCATION_ATTEMPTS {
            let last =
                self.store
                    .range_in_prefix::<FiltersTable, _>(&(user.as_str(),), None, true, 1)?;
            let id = match last.first() {
                Some(((_, last_id), _)) => last_id
                    .checked_add(1)
                    .ok_or_else(|| Error::unknown("No filter ids left for this user"))?,
                None => 0,
            };
            let key = (user.clone(), id);
            let mut batch = Batch::new();
            batch
                .expect_absent::<FiltersTable>(&key)
                .put::<FiltersTable>(&key, &Raw(json.clone()));
            match self.store.commit(batch).await {
                Ok(()) => return Ok(id.to_string()),
                Err(CommitError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommitError::Conflict.into())
    }

    /// The user's filter with this id as uploaded (JSON object bytes), `None` if there is none.
    pub fn get_json(&self, user_id: &UserId, filter_id: &str) -> Result<Option<Vec<u8>>> {
        let Some(id) = parse_id(filter_id) else {
            return Ok(None);
        };
        let row = self.store.get::<FiltersTable>(&(user_id.to_string(), id))?;
        Ok(row.map(|Raw(bytes)| bytes))
    }

    /// The user's filter with this id, parsed, `None` if there is none.
    pub fn get(&self, user_id: &UserId, filter_id: &str) -> Result<Option<FilterDefinition>> {
        let Some(bytes) = self.get_json(user_id, filter_id)? else {
            return Ok(None);
        };
        let filter = self.cached(&bytes, |bytes| {
            serde_json::from_slice(bytes).map_err(|e| {
                log::error!("corrupt filter {filter_id} of {user_id}: {e}");
                Error::unknown("Internal storage error")
            })
        })?;
        Ok(Some(filter))
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_id, Filters, PARSED_KEPT};
    use crate::store::{EngineKind, Store};

    /// The parsed-filter cache answers each text with its own parse, keeps no error, and
    /// stays bounded.
    #[test]
    fn inline_filters_are_cached_by_their_text() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), EngineKind::Redb, 1 << 20).unwrap();
        let filters = Filters::new(store);
        let limit = |text: &str| {
            filters
                .inline(text)
                .unwrap()
                .room
                .timeline
                .limit
                .map(u64::from)
        };
        for _ in 0..2 {
            assert_eq!(limit(r#"{"room":{"timeline":{"limit":5}}}"#), Some(5));
            assert_eq!(limit(r#"{"room":{"timeline":{"limit":7}}}"#), Some(7));
            assert_eq!(limit("{}"), None);
            // Refused every time, not remembered as something else.
            assert!(filters
                .inline(r#"{"room":{"timeline":{"limit":"x"}}}"#)
                .is_err());
        }
        for n in 0..(PARSED_KEPT * 2) {
            assert_eq!(
                limit(&format!(
                    r#"{{"room":{{"timeline":{{"limit":{}}}}}}}"#,
                    n + 1
                )),
                Some(n as u64 + 1)
            );
        }
        assert!(filters.parsed.lock().unwrap().len() <= PARSED_KEPT);
    }

    #[test]
    fn only_canonical_ids_parse() {
        assert_eq!(parse_id("0"), Some(0));
        assert_eq!(parse_id("42"), Some(42));
        assert_eq!(parse_id("042"), None);
        assert_eq!(parse_id("+1"), None);
        assert_eq!(parse_id("-1"), None);
        assert_eq!(parse_id("{}"), None);
        assert_eq!(parse_id(""), None);
        assert_eq!(parse_id("18446744073709551616"), None);
    }
}
