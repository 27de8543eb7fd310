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
}

/// The numeric id of a filter id string, `None` for anything `create` never hands out
/// (including non-canonical forms such as `01` or `+1`).
fn parse_id(filter_id: &str) -> Option<u64> {
    let id: u64 = filter_id.parse().ok()?;
    (id.to_string() == filter_id).then_some(id)
}

/// The filter as stored: `content` must be a JSON object (`M_NOT_JSON` if it is not JSON at
/// all, `M_BAD_JSON` otherwise) that parses as a `FilterDefinition` (`M_BAD_JSON`).
pub fn normalize_filter(content: &[u8]) -> Result<Vec<u8>> {
    let value: Value = serde_json::from_slice(content).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            Error::not_json(format!("The filter is not valid JSON: {e}"))
        } else {
            Error::bad_json(format!("The filter is not valid: {e}"))
        }
    })?;
    let object: &Map<String, Value> = value
        .as_object()
        .ok_or_else(|| Error::bad_json("A filter must be a JSON object"))?;
    FilterDefinition::deserialize(&value)
        .map_err(|e| Error::bad_json(format!("The filter is not valid: {e}")))?;
    serde_json::to_vec(object).map_err(|_| Error::bad_json("The filter cannot be serialized"))
}

impl Filters {
    pub fn new(store: Store) -> Self {
        Self { store }
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
        let filter = serde_json::from_slice(&bytes).map_err(|e| {
            log::error!("corrupt filter {filter_id} of {user_id}: {e}");
            Error::unknown("Internal storage error")
        })?;
        Ok(Some(filter))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_id;

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
