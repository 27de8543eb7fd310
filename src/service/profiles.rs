//! User profiles: the global `displayname` and `avatar_url` of local users.
//!
//! Each field is its own row holding the field's JSON value, so `GET /profile/{userId}` is one
//! prefix scan and further fields (`m.tz`, custom fields) need no layout change. Only
//! `displayname` and `avatar_url` can be set today; the handlers answer other fields with the
//! spec's errors. Propagating a change into `m.room.member` events of joined rooms belongs to
//! the room service once it exists.

use std::collections::BTreeMap;

use ruma::{MxcUri, UserId};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    store::{Batch, Raw, Store},
    table,
};

table!(
    /// `(user_id, field) → JSON value` of a local user's profile field (`"displayname"` →
    /// `"Alice"`, `"avatar_url"` → `"mxc://…"`). A row exists only while the field is set: an
    /// unset field has no row (never a stored `null`). Values are always valid JSON; the two
    /// defined fields always hold strings that passed `check_displayname`/`check_avatar_url`.
    pub ProfileFields: "profile_fields", (String, String) => Raw
);

/// The display name field.
pub const DISPLAYNAME: &str = "displayname";
/// The avatar field.
pub const AVATAR_URL: &str = "avatar_url";

/// Longest accepted display name, in characters (Synapse uses the same limit).
pub const MAX_DISPLAYNAME_CHARS: usize = 256;
/// Longest accepted avatar URL, in bytes.
pub const MAX_AVATAR_URL_BYTES: usize = 1000;

/// More fields than any profile can have; bounds the scan of one user's profile.
const MAX_FIELDS: usize = 1024;

pub struct Profiles {
    store: Store,
}

/// Rejects display names over the length limit.
pub fn check_displayname(name: &str) -> Result<()> {
    if name.chars().count() > MAX_DISPLAYNAME_CHARS {
        return Err(Error::invalid_param(format!(
            "Display name is longer than {MAX_DISPLAYNAME_CHARS} characters"
        )));
    }
    Ok(())
}

/// Rejects avatar URLs that are not `mxc://server/media_id` URIs or are too long.
pub fn check_avatar_url(url: &MxcUri) -> Result<()> {
    if url.as_str().len() > MAX_AVATAR_URL_BYTES {
        return Err(Error::invalid_param(format!(
            "Avatar URL is longer than {MAX_AVATAR_URL_BYTES} bytes"
        )));
    }
    // ruma accepts an empty media id (`mxc://server/`), which names no media.
    if !url.is_valid() || url.media_id().is_ok_and(str::is_empty) {
        return Err(Error::invalid_param("avatar_url must be an mxc:// URI"));
    }
    Ok(())
}

impl Profiles {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    fn key(user_id: &UserId, field: &str) -> (String, String) {
        (user_id.to_string(), field.to_owned())
    }

    /// The value of one profile field, `None` when unset.
    pub fn field(&self, user_id: &UserId, field: &str) -> Result<Option<Value>> {
        let Some(Raw(bytes)) = self
            .store
            .get::<ProfileFields>(&Self::key(user_id, field))?
        else {
            return Ok(None);
        };
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            log::error!("corrupt profile field {field} of {user_id}: {e}");
            Error::unknown("Internal storage error")
        })?;
        Ok(Some(value))
    }

    /// The user's display name, if set.
    pub fn displayname(&self, user_id: &UserId) -> Result<Option<String>> {
        Ok(self
            .field(user_id, DISPLAYNAME)?
            .and_then(|v| v.as_str().map(str::to_owned)))
    }

    /// The user's avatar URL, if set.
    pub fn avatar_url(&self, user_id: &UserId) -> Result<Option<String>> {
        Ok(self
            .field(user_id, AVATAR_URL)?
            .and_then(|v| v.as_str().map(str::to_owned)))
    }

    /// Every set field of the user's profile.
    pub fn profile(&self, user_id: &UserId) -> Result<BTreeMap<String, Value>> {
        let rows = self
            .store
            .scan_prefix::<ProfileFields, _>(&(user_id.as_str(),), MAX_FIELDS)?;
        let mut profile = BTreeMap::new();
        for ((_, field), Raw(bytes)) in rows {
            match serde_json::from_slice(&bytes) {
                Ok(value) => {
                    profile.insert(field, value);
                }
                Err(e) => log::error!("corrupt profile field {field} of {user_id}: {e}"),
            }
        }
        Ok(profile)
    }

    fn stage_string(batch: &mut Batch, user_id: &UserId, field: &str, value: Option<&str>) {
        let key = Self::key(user_id, field);
        match value {
            Some(value) => {
                let json = Value::String(value.to_owned()).to_string().into_bytes();
                batch.put::<ProfileFields>(&key, &Raw(json));
            }
            None => {
                batch.delete::<ProfileFields>(&key);
            }
        }
    }

    /// Stages setting (or with `None`, removing) the display name into `batch`. The value is
    /// not checked: callers pass names they built or checked with [`check_displayname`].
    pub fn stage_set_displayname(&self, batch: &mut Batch, user_id: &UserId, name: Option<String>) {
        Self::stage_string(batch, user_id, DISPLAYNAME, name.as_deref());
    }

    /// Stages setting (or with `None`, removing) the avatar URL into `batch`. The value is not
    /// checked: callers pass URLs checked with [`check_avatar_url`].
    pub fn stage_set_avatar_url(&self, batch: &mut Batch, user_id: &UserId, url: Option<&MxcUri>) {
        Self::stage_string(batch, user_id, AVATAR_URL, url.map(MxcUri::as_str));
    }

    /// Sets or removes the display name after checking it.
    pub async fn set_displayname(&self, user_id: &UserId, name: Option<String>) -> Result<()> {
        if let Some(name) = &name {
            check_displayname(name)?;
        }
        let mut batch = Batch::new();
        self.stage_set_displayname(&mut batch, user_id, name);
        Ok(self.store.commit(batch).await?)
    }

    /// Sets or removes the avatar URL after checking it.
    pub async fn set_avatar_url(&self, user_id: &UserId, url: Option<&MxcUri>) -> Result<()> {
        if let Some(url) = url {
            check_avatar_url(url)?;
        }
        let mut batch = Batch::new();
        self.stage_set_avatar_url(&mut batch, user_id, url);
        Ok(self.store.commit(batch).await?)
    }

    /// Stages removing every field of the user's profile (deactivation).
    pub fn stage_clear(&self, batch: &mut Batch, user_id: &UserId) -> Result<()> {
        // The two defined fields unconditionally, anything else that is stored.
        self.stage_set_displayname(batch, user_id, None);
        self.stage_set_avatar_url(batch, user_id, None);
        let rows = self
            .store
            .scan_prefix::<ProfileFields, _>(&(user_id.as_str(),), MAX_FIELDS)?;
        for (key, _) in rows {
            if key.1 != DISPLAYNAME && key.1 != AVATAR_URL {
                batch.delete::<ProfileFields>(&key);
            }
        }
        Ok(())
    }
}
