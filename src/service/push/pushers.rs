//! Pushers (spec: "Push Notifications", `GET /pushers`, `POST /pushers/set`).
//!
//! A pusher is where the server sends a user's notifications: for kind `http` (the only kind
//! this server delivers), a push gateway URL and a `pushkey` the gateway routes by. A pusher
//! belongs to one user, is named by `(app_id, pushkey)` within that user, and is never shown to
//! anyone else. The same `(app_id, pushkey)` exists for several users only when they added it
//! with `append` (one phone signed in to several accounts); without `append` a set takes the
//! pair over from every other user (spec: "the homeserver must remove any other pushers with
//! the same App ID and pushkey for different users").
//!
//! A pusher belongs to the device (session) that set it last. Deleting that device deletes its
//! pushers in the same batch: logout, `/logout/all`, device deletion, the other devices logged
//! out by a password change, deactivation (see [`Pushers::stage_delete_device`]). A refreshed
//! or re-issued access token keeps its device, and so its pushers.
//!
//! Races. The writes of this service are serialised by one lock: they are rare (a few per
//! device lifetime), and it makes the per-user cap and the takeover exact. Device deletions are
//! staged into other services' batches, outside that lock; two preconditions keep them exact:
//! a set expects the setting device as it read it (a pusher never lands after its device was
//! deleted), and a device deletion expects the user's `pusher_versions` counter as it read it,
//! which every set bumps (a pusher set between the deletion's scan and its commit makes the
//! deletion conflict and retry with a fresh scan).

use ruma::{DeviceId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::super::{sessions::Sessions, users::now_ms};
use crate::{
    error::{Error, Result},
    store::{Batch, CommitError, Record, Store},
    table,
};

table!(
    /// `(user_id, app_id, pushkey) → PusherRecord`: every pusher; a prefix scan on the user id
    /// lists a user's pushers.
    pub PushersTable: "pushers", (String, String, String) => PusherRecord
);
table!(
    /// `(app_id, pushkey, user_id) → true`: exactly one row per `pushers` row, written and
    /// deleted in the same batch. A prefix scan on `(app_id, pushkey)` finds every user with
    /// that pusher.
    pub PushersByKey: "pushers_by_key", (String, String, String) => bool
);
table!(
    /// `user_id → counter`, bumped by every set (create or replace) of one of the user's
    /// pushers and expected unchanged by staged device deletions. Never removed, so it never
    /// goes back to a value a deletion may have read.
    pub PusherVersions: "pusher_versions", String => u64
);

/// The pusher kind this server delivers.
pub const KIND_HTTP: &str = "http";
/// The only path a gateway URL may have (spec: `PusherData.url`).
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
/// The only `data.format` value the spec defines (absent means the full format).
pub const FORMAT_EVENT_ID_ONLY: &str = "event_id_only";
/// Spec: "Max length, 64 chars."
pub const MAX_APP_ID_CHARS: usize = 64;
/// Spec: "Max length, 512 bytes."
pub const MAX_PUSHKEY_BYTES: usize = 512;
/// Pushers one user may have. Far above what real use needs (one per app per device); it
/// bounds what a user can store, and what every notification for them fans out to.
pub const MAX_PER_USER: usize = 100;
/// Longest accepted display name, language or profile tag, in bytes (the spec sets none).
pub const MAX_TEXT_BYTES: usize = 1024;
/// Largest accepted `data` object, in bytes of JSON. It is stored, and sent with every
/// notification to the gateway.
pub const MAX_DATA_BYTES: usize = 4096;

/// How often a write retries after losing a race with a concurrent device change.
const WRITE_ATTEMPTS: usize = 8;

/// The stored form of a pusher (the key holds the user, `app_id` and `pushkey`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PusherRecord {
    pub kind: String,
    pub app_display_name: String,
    pub device_display_name: String,
    pub profile_tag: Option<String>,
    pub lang: String,
    /// `data` as the client sent it, a JSON object (including `url`, `format` and any other
    /// keys), as JSON text.
    pub data: String,
    /// The device whose access token set the pusher (last); deleted with that device.
    pub device_id: String,
    /// When the pusher was first created (ms since the epoch); kept when it is replaced.
    pub created_ms: u64,
    /// When it was last set.
    pub updated_ms: u64,
}
impl Record for PusherRecord {}

/// A user's pusher, as [`Pushers::of_user`] lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pusher {
    pub app_id: String,
    pub pushkey: String,
    /// Always [`KIND_HTTP`] for now.
    pub kind: String,
    pub app_display_name: String,
    pub device_display_name: String,
    pub profile_tag: Option<String>,
    pub lang: String,
    /// Everything the client sent in `data`: for `http`, `url` (valid, see [`NewPusher`]),
    /// `format` (absent or [`FORMAT_EVENT_ID_ONLY`]) and any custom keys.
    pub data: Map<String, Value>,
    /// The device (session) that set it.
    pub device_id: String,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl Pusher {
    fn from_row(app_id: String, pushkey: String, record: PusherRecord) -> Result<Self> {
        let data = match serde_json::from_str(&record.data) {
            Ok(Value::Object(map)) => map,
            _ => {
                return Err(crate::store::StoreError::Corrupt {
                    table: "pushers",
                    detail: "data is not a JSON object".into(),
                }
                .into())
            }
        };
        Ok(Self {
            app_id,
            pushkey,
            kind: record.kind,
            app_display_name: record.app_display_name,
            device_display_name: record.device_display_name,
            profile_tag: record.profile_tag,
            lang: record.lang,
            data,
            device_id: record.device_id,
            created_ms: record.created_ms,
            updated_ms: record.updated_ms,
        })
    }

    /// The gateway URL (`data.url`) of an `http` pusher.
    pub fn url(&self) -> Option<&str> {
        self.data.get("url").and_then(Value::as_str)
    }

    /// Whether the gateway asked for `event_id_only` notifications (else the full format).
    pub fn event_id_only(&self) -> bool {
        self.data.get("format").and_then(Value::as_str) == Some(FORMAT_EVENT_ID_ONLY)
    }

    /// The `data` to send to the gateway with each notification: everything the client sent,
    /// `format` and custom keys included, except `url` (spec: `/pushers/set`).
    pub fn gateway_data(&self) -> Map<String, Value> {
        let mut data = self.data.clone();
        data.remove("url");
        data
    }

    /// The pusher as `GET /pushers` shows it to its owner.
    pub fn client_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("app_id".into(), self.app_id.clone().into());
        out.insert("pushkey".into(), self.pushkey.clone().into());
        out.insert("kind".into(), self.kind.clone().into());
        out.insert(
            "app_display_name".into(),
            self.app_display_name.clone().into(),
        );
        out.insert(
            "device_display_name".into(),
            self.device_display_name.clone().into(),
        );
        if let Some(tag) = &self.profile_tag {
            out.insert("profile_tag".into(), tag.clone().into());
        }
        out.insert("lang".into(), self.lang.clone().into());
        out.insert("data".into(), Value::Object(self.data.clone()));
        Value::Object(out)
    }
}

/// A pusher to create or replace, as the client sent it (`POST /pushers/set` with a non-null
/// `kind`); [`Pushers::set`] validates it.
#[derive(Debug, Clone)]
pub struct NewPusher {
    pub app_id: String,
    pub pushkey: String,
    pub kind: String,
    pub app_display_name: String,
    pub device_display_name: String,
    pub profile_tag: Option<String>,
    pub lang: String,
    pub data: Map<String, Value>,
}

/// Checks the pusher's identifiers against the spec's length limits (400 `M_INVALID_PARAM`).
pub fn check_ids(app_id: &str, pushkey: &str) -> Result<()> {
    if app_id.is_empty() || app_id.chars().count() > MAX_APP_ID_CHARS {
        return Err(Error::invalid_param(format!(
            "app_id must be 1 to {MAX_APP_ID_CHARS} characters long"
        )));
    }
    if pushkey.is_empty() || pushkey.len() > MAX_PUSHKEY_BYTES {
        return Err(Error::invalid_param(format!(
            "pushkey must be 1 to {MAX_PUSHKEY_BYTES} bytes long"
        )));
    }
    Ok(())
}

/// Checks an `http` pusher's gateway URL: absolute, `http` or `https`, with a host, no user
/// info, no fragment, and exactly the path `/_matrix/push/v1/notify` (a query is allowed).
/// The spec says "MUST be an HTTPS URL"; plain `http` is accepted too, as the issue asks, for
/// gateways on a trusted network and for tests. Which addresses may be reached at all is the
/// outbound IP policy's decision at delivery time.
pub fn check_gateway_url(url: &str) -> Result<()> {
    let invalid = |why: &str| {
        Error::invalid_param(format!(
            "data.url must be an absolute http(s) URL with the path {NOTIFY_PATH}: {why}"
        ))
    };
    // `http::Uri` reads a fragment and drops it; a URL sent to the gateway has none.
    if url.contains('#') {
        return Err(invalid("a fragment is not allowed"));
    }
    let uri: http::Uri = url.parse().map_err(|_| invalid("not a valid URL"))?;
    match uri.scheme_str() {
        Some("https" | "http") => {}
        Some(_) => return Err(invalid("the scheme must be https or http")),
        None => return Err(invalid("not an absolute URL")),
    }
    let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
    if authority.as_str().contains('@') {
        return Err(invalid("user info (credentials) is not allowed in the URL"));
    }
    if authority.host().is_empty() {
        return Err(invalid("no host"));
    }
    // `http::Uri` keeps a port it cannot read (it then has none): check it here. The port
    // follows the last `:` after the host (an IPv6 host is in brackets).
    let text = authority.as_str();
    let host_end = text.rfind(']').map_or(0, |i| i + 1);
    if let Some(colon) = text[host_end..].rfind(':') {
        let port = &text[host_end + colon + 1..];
        if !port.parse::<u16>().is_ok_and(|p| p != 0) {
            return Err(invalid("invalid port"));
        }
    }
    if uri.path() != NOTIFY_PATH {
        return Err(invalid("wrong path"));
    }
    Ok(())
}

impl NewPusher {
    /// Checks everything the spec and this server require of a pusher, and drops a `null`
    /// `format` (the same as none). Errors are 400: `M_INVALID_PARAM` for a value the
    /// server does not accept, `M_MISSING_PARAM` for a missing `data.url`, `M_BAD_JSON` for a
    /// `data.url` or `data.format` that is not a string.
    pub fn validate(&mut self) -> Result<()> {
        check_ids(&self.app_id, &self.pushkey)?;
        match self.kind.as_str() {
            KIND_HTTP => {}
            "email" => {
                return Err(Error::invalid_param(
                    "E-mail pushers are not supported by this server (it sends no e-mail)",
                ))
            }
            other => {
                return Err(Error::invalid_param(format!(
                    "Unknown pusher kind {other:?}; this server supports \"http\""
                )))
            }
        }
        for (name, value) in [
            ("app_display_name", Some(&self.app_display_name)),
            ("device_display_name", Some(&self.device_display_name)),
            ("lang", Some(&self.lang)),
            ("profile_tag", self.profile_tag.as_ref()),
        ] {
            if value.is_some_and(|v| v.len() > MAX_TEXT_BYTES) {
                return Err(Error::invalid_param(format!(
                    "{name} is longer than {MAX_TEXT_BYTES} bytes"
                )));
            }
        }
        match self.data.get("url") {
            None | Some(Value::Null) => {
                return Err(Error::missing_param(
                    "data.url is required for http pushers",
                ))
            }
            Some(Value::String(url)) => check_gateway_url(url)?,
            Some(_) => return Err(Error::bad_json("data.url must be a string")),
        }
        match self.data.get("format") {
            None => {}
            Some(Value::Null) => {
                self.data.remove("format");
            }
            Some(Value::String(f)) if f == FORMAT_EVENT_ID_ONLY => {}
            Some(Value::String(_)) => {
                return Err(Error::invalid_param(format!(
                    "data.format must be \"{FORMAT_EVENT_ID_ONLY}\" or absent"
                )))
            }
            Some(_) => return Err(Error::bad_json("data.format must be a string")),
        }
        let size = serde_json::to_vec(&self.data).map_or(usize::MAX, |b| b.len());
        if size > MAX_DATA_BYTES {
            return Err(Error::invalid_param(format!(
                "data is larger than {MAX_DATA_BYTES} bytes"
            )));
        }
        Ok(())
    }
}

fn key(user_id: &UserId, app_id: &str, pushkey: &str) -> (String, String, String) {
    (user_id.to_string(), app_id.to_owned(), pushkey.to_owned())
}

fn index_key(user_id: &str, app_id: &str, pushkey: &str) -> (String, String, String) {
    (app_id.to_owned(), pushkey.to_owned(), user_id.to_owned())
}

pub struct Pushers {
    store: Store,
    /// Serialises this service's writes (see the module documentation).
    writes: tokio::sync::Mutex<()>,
}

impl Pushers {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            writes: tokio::sync::Mutex::new(()),
        }
    }

    /// Every user that has a pusher (one read of the whole table: at most 100 rows a user).
    pub fn users(&self) -> Result<Vec<ruma::OwnedUserId>> {
        let mut users: Vec<ruma::OwnedUserId> = Vec::new();
        for ((user, _, _), _) in self.store.range::<PushersTable>(None, false, usize::MAX)? {
            if users.last().is_none_or(|last| last.as_str() != user) {
                users.extend(UserId::parse(user.as_str()).ok());
            }
        }
        Ok(users)
    }

    /// Every pusher of `user_id`, ordered by `(app_id, pushkey)`.
    pub fn of_user(&self, user_id: &UserId) -> Result<Vec<Pusher>> {
        self.store
            .scan_prefix::<PushersTable, _>(&(user_id.as_str(),), usize::MAX)?
            .into_iter()
            .map(|((_, app_id, pushkey), record)| Pusher::from_row(app_id, pushkey, record))
            .collect()
    }

    /// One pusher of `user_id`.
    pub fn get(&self, user_id: &UserId, app_id: &str, pushkey: &str) -> Result<Option<Pusher>> {
        self.store
            .get::<PushersTable>(&key(user_id, app_id, pushkey))?
            .map(|record| Pusher::from_row(app_id.to_owned(), pushkey.to_owned(), record))
            .transpose()
    }

    /// Creates or replaces the `(app_id, pushkey)` pusher of `user_id`, owned by `device_id`
    /// (the caller's device), after validating it. Without `append`, the same pair is removed
    /// from every other user in the same batch. A new pusher beyond [`MAX_PER_USER`] is 429
    /// `M_LIMIT_EXCEEDED`; a device deleted meanwhile is 401 `M_UNKNOWN_TOKEN`.
    pub async fn set(
        &self,
        sessions: &Sessions,
        user_id: &UserId,
        device_id: &DeviceId,
        mut pusher: NewPusher,
        append: bool,
    ) -> Result<()> {
        pusher.validate()?;
        let data = serde_json::to_string(&pusher.data)
            .map_err(|_| Error::unknown("Cannot encode the pusher data"))?;
        let _writing = self.writes.lock().await;
        let key = key(user_id, &pusher.app_id, &pusher.pushkey);
        for _ in 0..WRITE_ATTEMPTS {
            let version = self.store.get::<PusherVersions>(&user_id.to_string())?;
            let existing = self.store.get::<PushersTable>(&key)?;
            if existing.is_none()
                && self
                    .store
                    .scan_prefix::<PushersTable, _>(&(user_id.as_str(),), MAX_PER_USER)?
                    .len()
                    >= MAX_PER_USER
            {
                return Err(Error::new(
                    http::StatusCode::TOO_MANY_REQUESTS,
                    "M_LIMIT_EXCEEDED",
                    format!("A user may have at most {MAX_PER_USER} pushers; delete one first"),
                ));
            }
            let mut batch = Batch::new();
            if !sessions.stage_expect_device(&mut batch, user_id, device_id)? {
                return Err(Error::unknown_token(false));
            }
            if !append {
                self.stage_take_over(&mut batch, user_id, &pusher.app_id, &pusher.pushkey)?;
            }
            let now = now_ms();
            let record = PusherRecord {
                kind: pusher.kind.clone(),
                app_display_name: pusher.app_display_name.clone(),
                device_display_name: pusher.device_display_name.clone(),
                profile_tag: pusher.profile_tag.clone(),
                lang: pusher.lang.clone(),
                data: data.clone(),
                device_id: device_id.to_string(),
                created_ms: existing.as_ref().map_or(now, |e| e.created_ms),
                updated_ms: now,
            };
            batch
                .expect_value::<PusherVersions>(&user_id.to_string(), version.as_ref())
                .put::<PusherVersions>(&user_id.to_string(), &(version.unwrap_or(0) + 1))
                .put::<PushersTable>(&key, &record)
                .put::<PushersByKey>(
                    &index_key(user_id.as_str(), &pusher.app_id, &pusher.pushkey),
                    &true,
                );
            match self.store.commit(batch).await {
                Ok(()) => {
                    log::info!(
                        "pusher of {user_id} for app {:?} set by device {device_id}",
                        pusher.app_id
                    );
                    return Ok(());
                }
                Err(CommitError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommitError::Conflict.into())
    }

    /// Stages the removal of the `(app_id, pushkey)` pusher of every user but `user_id`.
    fn stage_take_over(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        app_id: &str,
        pushkey: &str,
    ) -> Result<()> {
        let rows = self
            .store
            .scan_prefix::<PushersByKey, _>(&(app_id, pushkey), usize::MAX)?;
        for ((_, _, other), _) in rows {
            if other != user_id.as_str() {
                stage_delete(batch, &other, app_id, pushkey);
                log::info!("pusher of {other} for app {app_id:?} taken over by {user_id}");
            }
        }
        Ok(())
    }

    /// Deletes the `(app_id, pushkey)` pusher of `user_id` (`kind: null`, or a gateway that
    /// rejected the pushkey); whether it existed. Deleting a missing pusher is not an error.
    pub async fn remove(&self, user_id: &UserId, app_id: &str, pushkey: &str) -> Result<bool> {
        let _writing = self.writes.lock().await;
        let key = key(user_id, app_id, pushkey);
        let Some(existing) = self.store.get::<PushersTable>(&key)? else {
            return Ok(false);
        };
        let mut batch = Batch::new();
        // The lock keeps this service's writes out; a device deletion that removed the pusher
        // meanwhile only makes this a no-op.
        batch.expect_value::<PushersTable>(&key, Some(&existing));
        stage_delete(&mut batch, user_id.as_str(), app_id, pushkey);
        match self.store.commit(batch).await {
            Ok(()) => {
                log::info!("pusher of {user_id} for app {app_id:?} removed");
                Ok(true)
            }
            Err(CommitError::Conflict) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Stages, into the batch that deletes a device, the deletion of the pushers that device
    /// set, under a precondition that fails the batch (`Conflict`, to be retried) if one of
    /// the user's pushers is set before it commits.
    pub fn stage_delete_device(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<()> {
        self.stage_delete_where(batch, user_id, |record| {
            record.device_id == device_id.as_str()
        })
    }

    /// Stages the deletion of every pusher of `user_id` (deactivation), under the same
    /// precondition as [`Pushers::stage_delete_device`].
    pub fn stage_delete_user(&self, batch: &mut Batch, user_id: &UserId) -> Result<()> {
        self.stage_delete_where(batch, user_id, |_| true)
    }

    fn stage_delete_where(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        which: impl Fn(&PusherRecord) -> bool,
    ) -> Result<()> {
        let version = self.store.get::<PusherVersions>(&user_id.to_string())?;
        batch.expect_value::<PusherVersions>(&user_id.to_string(), version.as_ref());
        let rows = self
            .store
            .scan_prefix::<PushersTable, _>(&(user_id.as_str(),), usize::MAX)?;
        for ((user, app_id, pushkey), record) in rows {
            if which(&record) {
                stage_delete(batch, &user, &app_id, &pushkey);
            }
        }
        Ok(())
    }
}

/// Stages the deletion of one pusher with its index row.
fn stage_delete(batch: &mut Batch, user_id: &str, app_id: &str, pushkey: &str) {
    batch
        .delete::<PushersTable>(&(user_id.to_owned(), app_id.to_owned(), pushkey.to_owned()))
        .delete::<PushersByKey>(&index_key(user_id, app_id, pushkey));
}
