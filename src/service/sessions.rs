//! Devices and their access and refresh tokens.
//!
//! Tokens are random 256-bit strings handed to the client once; only their SHA-256 is stored,
//! so a copy of the database does not let anyone act as a user.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine as _;
use rand::RngExt;
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use super::{e2ee::E2ee, expiring_tokens::token_hash, push::pushers::Pushers, users::now_ms};
use crate::{
    error::{Error, Result},
    store::{Batch, CommitError, Record, Store},
    table,
};

table!(
    /// `(user_id, device_id) → DeviceRecord`. The record names the device's current token
    /// hashes, so deleting a device finds and deletes its tokens in the same batch.
    pub DevicesTable: "devices", (String, String) => DeviceRecord
);
table!(
    /// `sha256(access token) → AccessToken`; exactly the tokens named by some DeviceRecord.
    pub AccessTokensTable: "access_tokens", String => AccessToken
);
table!(
    /// `sha256(refresh token) → RefreshToken`; exactly the tokens named by some DeviceRecord.
    pub RefreshTokensTable: "refresh_tokens", String => RefreshToken
);

table!(
    /// `(user_id, device_id, ip) → Connection`: where a device was used from, at most
    /// [`MAX_CONNECTIONS`] rows per device (the least recently seen goes), deleted with the
    /// device. Written with the device's last-seen data, so at most every five minutes per
    /// device and address.
    pub ConnectionsTable: "device_connections", (String, String, String) => Connection
);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Connection {
    pub last_seen_ms: u64,
    /// The `User-Agent` last seen from this address (at most [`MAX_USER_AGENT`] bytes).
    pub user_agent: Option<String>,
}
impl Record for Connection {}

/// Addresses remembered per device.
pub const MAX_CONNECTIONS: usize = 10;
/// Longest user agent stored; longer ones are cut (at a character boundary).
const MAX_USER_AGENT: usize = 512;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceRecord {
    pub display_name: Option<String>,
    pub created_ms: u64,
    pub last_seen_ms: Option<u64>,
    pub last_seen_ip: Option<String>,
    pub access_hash: String,
    pub refresh_hash: Option<String>,
    /// The refresh token being replaced: still valid until the new pair is first used (spec:
    /// refreshing access tokens), so a client that lost the response can refresh again.
    pub previous_refresh_hash: Option<String>,
}
impl Record for DeviceRecord {}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccessToken {
    pub user_id: String,
    pub device_id: String,
    /// Expiry for tokens issued with a refresh token; `None` never expires.
    pub expires_ms: Option<u64>,
}
impl Record for AccessToken {}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RefreshToken {
    pub user_id: String,
    pub device_id: String,
}
impl Record for RefreshToken {}

/// Lifetime of an access token issued together with a refresh token.
pub const ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// Last-seen data is written at most this often per device: it is informational, and a
/// durable write per request would cost more than everything else the request does.
const LAST_SEEN_EVERY_MS: u64 = 5 * 60 * 1000;

/// What a fresh login hands to the client.
pub struct IssuedTokens {
    /// The login created the device (rather than replacing an existing device's tokens).
    pub new_device: bool,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: Option<Duration>,
}

/// An authenticated caller: the user and the device whose access token the request carried.
#[derive(Debug, Clone)]
pub struct Authed {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
}

pub struct Sessions {
    store: Store,
    /// Removes a deleted device's end-to-end keys and inbox with it.
    e2ee: Arc<E2ee>,
    /// Removes a deleted device's pushers with it.
    pushers: Arc<Pushers>,
    /// Device → when and from which address its last-seen record was last written (protects
    /// only this map).
    last_seen_written: Mutex<HashMap<(OwnedUserId, OwnedDeviceId), (u64, IpAddr)>>,
}

fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes[..]);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

pub fn random_device_id() -> OwnedDeviceId {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::rng();
    let id: String = (0..10)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    id.into()
}

fn device_key(user_id: &UserId, device_id: &DeviceId) -> (String, String) {
    (user_id.to_string(), device_id.to_string())
}

impl Sessions {
    pub fn new(store: Store, e2ee: Arc<E2ee>, pushers: Arc<Pushers>) -> Self {
        Self {
            store,
            e2ee,
            pushers,
            last_seen_written: Mutex::new(HashMap::new()),
        }
    }

    /// Resolves an access token to its user and device. An expired token is refused with
    /// `soft_logout: true`: the device still exists and a refresh (or re-login) restores it.
    pub async fn authenticate(
        &self,
        token: &str,
        ip: IpAddr,
        user_agent: Option<&str>,
    ) -> Result<Authed> {
        let Some(record) = self.store.get::<AccessTokensTable>(&token_hash(token))? else {
            return Err(Error::unknown_token(false));
        };
        let now = now_ms();
        if record.expires_ms.is_some_and(|expiry| expiry <= now) {
            return Err(Error::unknown_token(true));
        }
        let (Ok(user_id), device_id) = (
            UserId::parse(&record.user_id),
            OwnedDeviceId::from(record.device_id),
        ) else {
            return Err(Error::unknown_token(false));
        };
        self.touch(&user_id, &device_id, ip, user_agent, now)
            .await?;
        Ok(Authed { user_id, device_id })
    }

    /// Records last-seen time, IP and user agent, throttled per device (a new address is
    /// recorded at once). The first use of a new token pair also retires the refresh token it
    /// replaced.
    async fn touch(
        &self,
        user_id: &OwnedUserId,
        device_id: &OwnedDeviceId,
        ip: IpAddr,
        user_agent: Option<&str>,
        now: u64,
    ) -> Result<()> {
        let key = (user_id.clone(), device_id.clone());
        {
            let written = self
                .last_seen_written
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if written
                .get(&key)
                .is_some_and(|&(t, from)| from == ip && now.saturating_sub(t) < LAST_SEEN_EVERY_MS)
            {
                return Ok(());
            }
        }
        let dkey = device_key(user_id, device_id);
        let Some(old) = self.store.get::<DevicesTable>(&dkey)? else {
            return Ok(());
        };
        let mut new = old.clone();
        new.last_seen_ms = Some(now);
        new.last_seen_ip = Some(ip.to_string());
        let mut batch = Batch::new();
        if let Some(previous) = new.previous_refresh_hash.take() {
            batch.delete::<RefreshTokensTable>(&previous);
        }
        batch
            .expect_value::<DevicesTable>(&dkey, Some(&old))
            .put::<DevicesTable>(&dkey, &new);
        self.stage_connection(&mut batch, user_id, device_id, ip, user_agent, now)?;
        match self.store.commit(batch).await {
            // Someone else updated the device concurrently; last-seen can wait for next time.
            Ok(()) | Err(CommitError::Conflict) => {}
            Err(e) => return Err(e.into()),
        }
        let mut written = self
            .last_seen_written
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if written.len() > 10_000 {
            written.clear();
        }
        written.insert(key, (now, ip));
        Ok(())
    }

    /// Stages the connection row of `ip`, dropping the least recently seen address when the
    /// device would have more than [`MAX_CONNECTIONS`].
    fn stage_connection(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        device_id: &DeviceId,
        ip: IpAddr,
        user_agent: Option<&str>,
        now: u64,
    ) -> Result<()> {
        let (user, device) = device_key(user_id, device_id);
        let ip = ip.to_string();
        let rows = self.store.scan_prefix::<ConnectionsTable, _>(
            &(user.clone(), device.clone()),
            MAX_CONNECTIONS + 1,
        )?;
        let known = rows.iter().any(|((_, _, from), _)| *from == ip);
        if !known && rows.len() >= MAX_CONNECTIONS {
            if let Some((oldest, _)) = rows.iter().min_by_key(|(_, c)| c.last_seen_ms) {
                batch.delete::<ConnectionsTable>(oldest);
            }
        }
        let user_agent = user_agent.map(|ua| {
            let mut end = ua.len().min(MAX_USER_AGENT);
            while !ua.is_char_boundary(end) {
                end -= 1;
            }
            ua[..end].to_owned()
        });
        batch.put::<ConnectionsTable>(
            &(user, device, ip),
            &Connection {
                last_seen_ms: now,
                user_agent,
            },
        );
        Ok(())
    }

    /// Where the device was used from: `(ip, connection)`, most recently seen first.
    pub fn connections(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<Vec<(String, Connection)>> {
        let rows = self.store.scan_prefix::<ConnectionsTable, _>(
            &device_key(user_id, device_id),
            MAX_CONNECTIONS * 2,
        )?;
        let mut out: Vec<_> = rows.into_iter().map(|((_, _, ip), c)| (ip, c)).collect();
        out.sort_by_key(|(_, c)| std::cmp::Reverse(c.last_seen_ms));
        Ok(out)
    }

    pub fn device(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Option<DeviceRecord>> {
        Ok(self
            .store
            .get::<DevicesTable>(&device_key(user_id, device_id))?)
    }

    pub fn devices(&self, user_id: &UserId) -> Result<Vec<(OwnedDeviceId, DeviceRecord)>> {
        let rows = self
            .store
            .scan_prefix::<DevicesTable, _>(&(user_id.to_string(),), usize::MAX)?;
        Ok(rows
            .into_iter()
            .map(|((_, device), record)| (device.into(), record))
            .collect())
    }

    /// Stages a login on `device_id`: a new device, or new tokens for an existing one (whose
    /// old tokens are revoked, as the spec asks when a client names its device). The login
    /// counts as a sighting from `ip`, so a device never used since has last-seen data.
    pub fn stage_login(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        device_id: &DeviceId,
        display_name: Option<String>,
        with_refresh: bool,
        ip: IpAddr,
    ) -> Result<IssuedTokens> {
        let key = device_key(user_id, device_id);
        let existing = self.store.get::<DevicesTable>(&key)?;
        let mut record = match &existing {
            Some(old) => {
                stage_revoke_tokens(batch, old);
                let mut record = old.clone();
                if display_name.is_some() {
                    record.display_name = display_name;
                }
                record
            }
            None => DeviceRecord {
                display_name,
                created_ms: now_ms(),
                last_seen_ms: None,
                last_seen_ip: None,
                access_hash: String::new(),
                refresh_hash: None,
                previous_refresh_hash: None,
            },
        };
        batch.expect_value::<DevicesTable>(&key, existing.as_ref());
        let mut issued = stage_new_tokens(batch, user_id, device_id, &mut record, with_refresh);
        issued.new_device = existing.is_none();
        record.previous_refresh_hash = None;
        record.last_seen_ms = Some(now_ms());
        record.last_seen_ip = Some(ip.to_string());
        // The new token's first use records its sighting once more (the in-memory throttle
        // knows nothing of this device's new token yet).
        self.forget_last_seen(user_id, device_id);
        batch.put::<DevicesTable>(&key, &record);
        Ok(issued)
    }

    /// The user a refresh token belongs to, if it is one.
    pub fn refresh_token_owner(&self, refresh_token: &str) -> Result<Option<OwnedUserId>> {
        Ok(self
            .store
            .get::<RefreshTokensTable>(&token_hash(refresh_token))?
            .and_then(|owner| UserId::parse(owner.user_id).ok()))
    }

    /// Exchanges a refresh token for a new access and refresh token on the same device.
    pub async fn refresh(&self, refresh_token: &str) -> Result<IssuedTokens> {
        let hash = token_hash(refresh_token);
        for _ in 0..8 {
            let Some(owner) = self.store.get::<RefreshTokensTable>(&hash)? else {
                return Err(Error::unknown_token(false));
            };
            let user_id = UserId::parse(&owner.user_id).map_err(|_| Error::unknown_token(false))?;
            let device_id: OwnedDeviceId = owner.device_id.into();
            let key = device_key(&user_id, &device_id);
            let Some(old) = self.store.get::<DevicesTable>(&key)? else {
                return Err(Error::unknown_token(false));
            };
            let mut record = old.clone();
            let mut batch = Batch::new();
            batch.expect_value::<DevicesTable>(&key, Some(&old));
            // Retire the access token of the pair being replaced, and any older refresh token
            // still kept; the one being used stays valid until the new pair is used.
            batch.delete::<AccessTokensTable>(&old.access_hash);
            if let Some(previous) = old.previous_refresh_hash.as_ref().filter(|p| **p != hash) {
                batch.delete::<RefreshTokensTable>(previous);
            }
            if old
                .refresh_hash
                .as_ref()
                .is_some_and(|current| *current != hash)
            {
                // An older token of this device is being replayed: the newer pair was never
                // used, so the replay replaces it.
                if let Some(current) = &old.refresh_hash {
                    batch.delete::<RefreshTokensTable>(current);
                }
            }
            let issued = stage_new_tokens(&mut batch, &user_id, &device_id, &mut record, true);
            record.previous_refresh_hash = Some(hash.clone());
            batch.put::<DevicesTable>(&key, &record);
            self.forget_last_seen(&user_id, &device_id);
            match self.store.commit(batch).await {
                Err(CommitError::Conflict) => continue,
                other => return other.map(|_| issued).map_err(Into::into),
            }
        }
        Err(CommitError::Conflict.into())
    }

    /// Stages a precondition that the device is still as it is now (so the batch fails with
    /// `Conflict` if the device is deleted or changed before it commits); whether it exists.
    pub fn stage_expect_device(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<bool> {
        let key = device_key(user_id, device_id);
        let record = self.store.get::<DevicesTable>(&key)?;
        batch.expect_value::<DevicesTable>(&key, record.as_ref());
        Ok(record.is_some())
    }

    /// Stages deletion of a device with its tokens, end-to-end keys and pushers.
    pub fn stage_delete_device(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<bool> {
        let key = device_key(user_id, device_id);
        let Some(record) = self.store.get::<DevicesTable>(&key)? else {
            return Ok(false);
        };
        stage_revoke_tokens(batch, &record);
        batch
            .expect_value::<DevicesTable>(&key, Some(&record))
            .delete::<DevicesTable>(&key);
        for (row, _) in self
            .store
            .scan_prefix::<ConnectionsTable, _>(&key, MAX_CONNECTIONS * 2)?
        {
            batch.delete::<ConnectionsTable>(&row);
        }
        self.e2ee.stage_device_removed(batch, user_id, device_id)?;
        self.pushers
            .stage_delete_device(batch, user_id, device_id)?;
        self.forget_last_seen(user_id, device_id);
        Ok(true)
    }

    /// Deletes the given devices (all of the user's when `None`) except `keep`, in one batch.
    pub async fn delete_devices(
        &self,
        user_id: &UserId,
        which: Option<&[OwnedDeviceId]>,
        keep: Option<&DeviceId>,
    ) -> Result<()> {
        for _ in 0..8 {
            let mut batch = Batch::new();
            self.stage_delete_devices(&mut batch, user_id, which, keep)?;
            if batch.is_empty() {
                return Ok(());
            }
            match self.store.commit(batch).await {
                Err(CommitError::Conflict) => continue,
                Ok(()) => {
                    self.e2ee.devices_removed(user_id).await;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommitError::Conflict.into())
    }

    pub fn stage_delete_devices(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        which: Option<&[OwnedDeviceId]>,
        keep: Option<&DeviceId>,
    ) -> Result<()> {
        let targets: Vec<OwnedDeviceId> = match which {
            Some(list) => list.to_vec(),
            None => self
                .devices(user_id)?
                .into_iter()
                .map(|(id, _)| id)
                .collect(),
        };
        for device_id in targets.iter().filter(|d| Some(d.as_ref()) != keep) {
            self.stage_delete_device(batch, user_id, device_id)?;
        }
        Ok(())
    }

    /// Renames a device; a change of name is a device-list change of the user.
    pub async fn set_display_name(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        name: Option<String>,
    ) -> Result<()> {
        let key = device_key(user_id, device_id);
        for _ in 0..8 {
            let old = self
                .store
                .get::<DevicesTable>(&key)?
                .ok_or_else(|| Error::not_found("Unknown device"))?;
            if old.display_name == name {
                return Ok(());
            }
            let mut new = old.clone();
            new.display_name = name.clone();
            let mut batch = Batch::new();
            batch
                .expect_value::<DevicesTable>(&key, Some(&old))
                .put::<DevicesTable>(&key, &new);
            match self.commit_device_change(batch, user_id).await? {
                Err(CommitError::Conflict) => continue,
                other => return Ok(other?),
            }
        }
        Err(CommitError::Conflict.into())
    }

    /// Commits a batch that adds or renames a device of `user_id`, with the device-list
    /// change it is (see `E2ee::commit_with_device_change`).
    pub async fn commit_device_change(
        &self,
        batch: Batch,
        user_id: &UserId,
    ) -> Result<Result<(), CommitError>> {
        self.e2ee.commit_with_device_change(batch, user_id).await
    }

    /// Commits a batch holding a login staged by [`Sessions::stage_login`]: a login that
    /// created a device is a device-list change of the user.
    pub async fn commit_login(
        &self,
        batch: Batch,
        user_id: &UserId,
        issued: Option<&IssuedTokens>,
    ) -> Result<Result<(), CommitError>> {
        if issued.is_some_and(|i| i.new_device) {
            self.commit_device_change(batch, user_id).await
        } else {
            Ok(self.store.commit(batch).await)
        }
    }

    fn forget_last_seen(&self, user_id: &UserId, device_id: &DeviceId) {
        let mut written = self
            .last_seen_written
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        written.remove(&(user_id.to_owned(), device_id.to_owned()));
    }
}

fn stage_revoke_tokens(batch: &mut Batch, record: &DeviceRecord) {
    batch.delete::<AccessTokensTable>(&record.access_hash);
    for hash in record
        .refresh_hash
        .iter()
        .chain(&record.previous_refresh_hash)
    {
        batch.delete::<RefreshTokensTable>(hash);
    }
}

/// Creates a token pair for the device, stages the token records, and points `record` at them.
fn stage_new_tokens(
    batch: &mut Batch,
    user_id: &UserId,
    device_id: &DeviceId,
    record: &mut DeviceRecord,
    with_refresh: bool,
) -> IssuedTokens {
    let access_token = random_token("hat_");
    let expires_ms = with_refresh.then(|| now_ms() + ACCESS_TOKEN_LIFETIME.as_millis() as u64);
    record.access_hash = token_hash(&access_token);
    batch.put::<AccessTokensTable>(
        &record.access_hash,
        &AccessToken {
            user_id: user_id.to_string(),
            device_id: device_id.to_string(),
            expires_ms,
        },
    );
    let refresh_token = with_refresh.then(|| random_token("hrt_"));
    record.refresh_hash = refresh_token.as_deref().map(token_hash);
    if let Some(hash) = &record.refresh_hash {
        batch.put::<RefreshTokensTable>(
            hash,
            &RefreshToken {
                user_id: user_id.to_string(),
                device_id: device_id.to_string(),
            },
        );
    }
    IssuedTokens {
        new_device: false,
        access_token,
        refresh_token,
        expires_in: with_refresh.then_some(ACCESS_TOKEN_LIFETIME),
    }
}
