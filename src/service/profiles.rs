//! User profiles: the global `displayname` and `avatar_url` of local users.
//!
//! Each field is its own row holding the field's JSON value, so `GET /profile/{userId}` is one
//! prefix scan and further fields (`m.tz`, custom fields) need no layout change. Only
//! `displayname` and `avatar_url` can be set today; the handlers answer other fields with the
//! spec's errors. After a change, [`Profiles::update_member_events`] sends the new profile as a
//! new `m.room.member` join event into every room the user is joined to (spec: "Events on
//! Change of Profile Information").

use std::{collections::BTreeMap, time::Instant};

use ruma::{
    events::{room::member::MembershipState, StateEventType},
    MxcUri, OwnedRoomId, UserId,
};
use serde_json::{Map, Value};

use super::{
    ratelimit::{Buckets, Rate},
    rooms::{membership::SERVER_ONLY_MEMBER_FIELDS, NewEvent, Rooms},
};
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

/// Profile-change member events a room takes in a burst, and per second after it: the limit
/// is per room (a busy room is not flooded by members renaming), and a room over it only
/// misses that update (logged); the profile change itself and the other rooms go through.
const ROOM_RATE: Rate = Rate {
    per_second: 1.0,
    burst: 20,
};

pub struct Profiles {
    store: Store,
    /// Per-room token buckets for profile-change member events.
    room_buckets: Buckets<OwnedRoomId>,
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
        Self {
            store,
            room_buckets: Buckets::new(ROOM_RATE),
        }
    }

    /// After the user's profile changed: a new `m.room.member` join event carrying the
    /// profile (`displayname` and `avatar_url`, absent when unset) in every room the user is
    /// joined to, sent through the normal room path. Each room is checked under its lock
    /// (a room left meanwhile is skipped, never rejoined) and is independent: a room that
    /// refuses the event or is over its rate limit is logged and skipped. Returns the number
    /// of rooms updated.
    pub async fn update_member_events(&self, rooms: &Rooms, user_id: &UserId) -> Result<usize> {
        let displayname = self.displayname(user_id)?;
        let avatar_url = self.avatar_url(user_id)?;
        let mut updated = 0;
        for room_id in rooms.rooms_of(user_id, &MembershipState::Join)? {
            match self
                .update_member_event(rooms, &room_id, user_id, &displayname, &avatar_url)
                .await
            {
                Ok(true) => updated += 1,
                Ok(false) => {}
                Err(e) => log::warn!("profile change of {user_id} not announced in {room_id}: {e}"),
            }
        }
        Ok(updated)
    }

    async fn update_member_event(
        &self,
        rooms: &Rooms,
        room_id: &ruma::RoomId,
        user_id: &UserId,
        displayname: &Option<String>,
        avatar_url: &Option<String>,
    ) -> Result<bool> {
        let mut staged = rooms.stage(room_id).await?;
        let Some(current) = staged.state_pdu(&StateEventType::RoomMember, user_id.as_str()) else {
            return Ok(false);
        };
        let mut content: Map<String, Value> = current.content_as().unwrap_or_default();
        if content.get("membership").and_then(Value::as_str) != Some("join") {
            return Ok(false);
        }
        // Keys that belong to one membership change, not to the profile announcement.
        for key in SERVER_ONLY_MEMBER_FIELDS.iter().chain(&["reason"]) {
            content.remove(*key);
        }
        let before = content.clone();
        for (field, value) in [(DISPLAYNAME, displayname), (AVATAR_URL, avatar_url)] {
            match value {
                Some(value) => content.insert(field.to_owned(), Value::String(value.clone())),
                None => content.remove(field),
            };
        }
        if content == before {
            return Ok(false);
        }
        if self
            .room_buckets
            .take(&room_id.to_owned(), Instant::now())
            .is_err()
        {
            return Err(Error::new(
                http::StatusCode::TOO_MANY_REQUESTS,
                "M_LIMIT_EXCEEDED",
                "Too many profile changes in this room",
            ));
        }
        staged.add(
            user_id,
            NewEvent::state(
                StateEventType::RoomMember.to_string(),
                user_id.as_str(),
                Value::Object(content),
            ),
        )?;
        staged.commit().await?;
        Ok(true)
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
