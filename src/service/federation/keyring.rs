//! Other servers' signing keys: fetched from the server itself (`GET /_matrix/key/v2/server`)
//! or, when that fails, through the configured notaries (`POST /_matrix/key/v2/query`), every
//! answer verified, and cached in the store (`schema/federation-keys.md`).
//!
//! Invariants:
//! - Nothing enters the cache unless its response names the server it was asked for and is
//!   signed by that server with a key the response lists in `verify_keys`; an answer relayed
//!   by a notary must also carry a valid signature of the notary, by a key pinned in the
//!   config or fetched from the notary itself.
//! - A key is returned only if it is usable at the instant asked about ([`KeyValidity`]).
//! - At most one fetch per server runs at a time (callers asking meanwhile wait for it and
//!   read its result from the cache), and after a fetch that did not yield what was asked, the
//!   server is not asked again for [`RETRY_INTERVAL_MS`]: a request naming a bogus origin or
//!   key id cannot make us hammer anyone.
//! - Our own keys come from [`ServerKeys`], never from the network or the cache.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use futures_util::future::BoxFuture;
use ruma::{
    api::federation::discovery::{
        get_remote_server_keys_batch::v2 as batch, OldVerifyKey, ServerSigningKeys,
    },
    serde::{Base64, Raw},
    signatures::PublicKeyMap,
    CanonicalJsonObject, MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedServerSigningKeyId,
    ServerName,
};
use serde::{Deserialize, Serialize};

mod fetch;
#[cfg(test)]
mod tests;
mod verify;

use verify::{verify_response, Verified};

use crate::{
    config::TrustedKeyServer,
    error::{Error, Result},
    service::{keys::ServerKeys, users::now_ms},
    store::{Batch, Record, Store},
    table,
};

/// How long after a fetch that failed (or lacked the key asked for) a server is not asked
/// again.
pub const RETRY_INTERVAL_MS: u64 = 60_000;

/// The longest a fetched key response is trusted, whatever its `valid_until_ts` says (spec:
/// "the lesser of this field and 7 days into the future").
pub const MAX_KEY_VALIDITY_MS: u64 = 7 * 24 * 3_600_000;

/// Bound on one key request (the direct fetch, or one notary).
const FETCH_TIMEOUT: Duration = Duration::from_secs(20);

/// At most this many cached keys of one server are read.
const MAX_CACHED_KEYS: usize = 4096;

/// Above this many remembered servers, those with no fetch in flight and no pending retry
/// interval are forgotten.
const MAX_SLOTS: usize = 4096;

table!(
    /// `(server name, key id) → CachedKey`: every key a verified response listed, merged over
    /// responses (a key a server stopped publishing stays, with the validity it last had).
    pub ServerKeysTable: "server_keys", (String, String) => CachedKey
);

table!(
    /// `server name → KeyResponseRecord`: the latest verified key response of the server, with
    /// only its own signatures, as the notary endpoints serve it.
    pub ServerKeyResponses: "server_key_responses", String => KeyResponseRecord
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedKey {
    /// The ed25519 public key, unpadded base64.
    pub key: String,
    /// `valid_until_ts` of the response that listed it last.
    pub valid_until_ts: u64,
    /// When that response was received here (ms).
    pub fetched_ts: u64,
    /// Set when that response listed it in `old_verify_keys`: when the server stopped using it.
    pub expired_ts: Option<u64>,
}
impl Record for CachedKey {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyResponseRecord {
    /// The response as canonical JSON, signed by its server (other signatures removed).
    pub json: String,
    pub valid_until_ts: u64,
    pub fetched_ts: u64,
}
impl Record for KeyResponseRecord {}

/// Which validity rules a key must pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyValidity {
    /// Request signatures, and events of room versions 5 and later: a current key up to its
    /// `valid_until_ts`, capped at 7 days after we fetched it; an old key up to its
    /// `expired_ts`.
    Enforced,
    /// Events of room versions 1 to 4, whose rules say `valid_until_ts` MUST be ignored: any
    /// key the server published.
    Ignored,
}

impl CachedKey {
    /// The last instant (ms) at which the key may be used under `validity`.
    pub fn usable_until(&self, validity: KeyValidity) -> u64 {
        match (validity, self.expired_ts) {
            (KeyValidity::Ignored, _) => u64::MAX,
            (KeyValidity::Enforced, Some(expired)) => expired,
            (KeyValidity::Enforced, None) => {
                capped_valid_until(self.valid_until_ts, self.fetched_ts)
            }
        }
    }
}

/// `valid_until_ts` as the spec lets it be used: at most 7 days after the response arrived.
pub fn capped_valid_until(valid_until_ts: u64, fetched_ts: u64) -> u64 {
    valid_until_ts.min(fetched_ts.saturating_add(MAX_KEY_VALIDITY_MS))
}

/// How the keyring reaches other servers (the federation client in production).
pub trait KeyFetcher: Send + Sync {
    /// `GET /_matrix/key/v2/server` on `server`.
    fn server_keys<'a>(
        &'a self,
        server: &'a ServerName,
    ) -> BoxFuture<'a, Result<Raw<ServerSigningKeys>, String>>;
    /// `POST /_matrix/key/v2/query` on `notary`.
    fn query_notary<'a>(
        &'a self,
        notary: &'a ServerName,
        request: batch::Request,
    ) -> BoxFuture<'a, Result<Vec<Raw<ServerSigningKeys>>, String>>;
}

/// A notary from `federation.trusted_key_servers`.
#[derive(Debug, Clone)]
pub struct Notary {
    pub server_name: OwnedServerName,
    /// Pinned keys; empty: fetched from the notary itself.
    pub verify_keys: BTreeMap<String, Base64>,
}

impl Notary {
    /// From the (validated) config.
    pub fn from_config(config: &[TrustedKeyServer]) -> Vec<Notary> {
        config
            .iter()
            .filter_map(|n| {
                Some(Notary {
                    server_name: ServerName::parse(&n.server_name).ok()?,
                    verify_keys: n
                        .verify_keys
                        .iter()
                        .filter_map(|(id, key)| {
                            Some((id.clone(), crate::config::parse_public_key(key)?))
                        })
                        .collect(),
                })
            })
            .collect()
    }
}

/// Counters since start (for tests and figures).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyRingStats {
    /// Lookups answered from the cache (or our own keys) without waiting for a fetch.
    pub cache_hits: u64,
    /// Key requests sent to other servers (direct fetches and notary queries).
    pub requests: u64,
}

#[derive(Default)]
struct Slot {
    /// Held while a fetch for the server runs.
    fetch: tokio::sync::Mutex<()>,
    /// No new fetch before this instant (ms).
    retry_after: AtomicU64,
}

pub struct KeyRing {
    store: Store,
    own_keys: Arc<ServerKeys>,
    own_name: OwnedServerName,
    fetcher: Arc<dyn KeyFetcher>,
    notaries: Vec<Notary>,
    slots: Mutex<HashMap<OwnedServerName, Arc<Slot>>>,
    cache_hits: AtomicU64,
    requests: AtomicU64,
}

/// What a lookup wants: some key ids (all usable ones if empty) at an instant.
struct Want<'a> {
    key_ids: &'a [String],
    valid_at: u64,
    validity: KeyValidity,
}

impl KeyRing {
    pub fn new(
        store: Store,
        own_keys: Arc<ServerKeys>,
        own_name: OwnedServerName,
        fetcher: Arc<dyn KeyFetcher>,
        notaries: Vec<Notary>,
    ) -> Self {
        Self {
            store,
            own_keys,
            own_name,
            fetcher,
            notaries,
            slots: Mutex::new(HashMap::new()),
            cache_hits: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }
    }

    /// Our server name.
    pub fn server_name(&self) -> &ServerName {
        &self.own_name
    }

    pub fn stats(&self) -> KeyRingStats {
        KeyRingStats {
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }

    /// The verify keys of `server` that are usable at `valid_at` under
    /// [`KeyValidity::Enforced`] (fetched directly or through a notary when not cached or
    /// expired); only the ids asked for (all if empty).
    ///
    /// Returns those of the asked keys that could be obtained (at least one), or 401
    /// `M_UNAUTHORIZED` saying why none could.
    pub async fn verify_keys(
        &self,
        server: &ServerName,
        key_ids: &[String],
        valid_at: MilliSecondsSinceUnixEpoch,
    ) -> Result<BTreeMap<String, Base64>, Error> {
        self.verify_keys_with(server, key_ids, valid_at, KeyValidity::Enforced)
            .await
    }

    /// [`KeyRing::verify_keys`] with the validity rules of the caller (room versions 1–4
    /// ignore `valid_until_ts`).
    pub async fn verify_keys_with(
        &self,
        server: &ServerName,
        key_ids: &[String],
        valid_at: MilliSecondsSinceUnixEpoch,
        validity: KeyValidity,
    ) -> Result<BTreeMap<String, Base64>, Error> {
        let want = Want {
            key_ids,
            valid_at: valid_at.get().into(),
            validity,
        };
        self.lookup(server, &want, true).await
    }

    /// Keys for several servers at once, as ruma's `PublicKeyMap` (for PDU checks), under
    /// [`KeyValidity::Enforced`]. A server whose keys cannot be obtained gets an empty set, so
    /// ruma's verification of a signature by it fails; `Err` only if the store fails.
    pub async fn public_key_map(
        &self,
        wanted: &BTreeMap<OwnedServerName, Vec<String>>,
        valid_at: MilliSecondsSinceUnixEpoch,
    ) -> Result<PublicKeyMap, Error> {
        self.public_key_map_with(wanted, valid_at, KeyValidity::Enforced)
            .await
    }

    /// [`KeyRing::public_key_map`] with the caller's validity rules.
    pub async fn public_key_map_with(
        &self,
        wanted: &BTreeMap<OwnedServerName, Vec<String>>,
        valid_at: MilliSecondsSinceUnixEpoch,
        validity: KeyValidity,
    ) -> Result<PublicKeyMap, Error> {
        let lookups = wanted.iter().map(|(server, ids)| async move {
            let keys = self.verify_keys_with(server, ids, valid_at, validity).await;
            (server, keys)
        });
        let mut map = PublicKeyMap::new();
        for (server, keys) in futures_util::future::join_all(lookups).await {
            let keys = match keys {
                Ok(keys) => keys,
                Err(e) if e.errcode == "M_UNAUTHORIZED" => {
                    log::debug!("no usable keys of {server}: {}", e.message);
                    BTreeMap::new()
                }
                Err(e) => return Err(e),
            };
            map.insert(server.to_string(), keys);
        }
        Ok(map)
    }

    async fn lookup(
        &self,
        server: &ServerName,
        want: &Want<'_>,
        allow_notaries: bool,
    ) -> Result<BTreeMap<String, Base64>> {
        if server == self.own_name {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return finish(server, self.own(want), want, None);
        }
        if let Some(found) = complete(self.cached(server, want)?, want) {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(found);
        }
        let failure = self
            .fetch_once(
                server,
                || Ok(complete(self.cached(server, want)?, want).is_some()),
                |s| Box::pin(self.fetch(s, want, allow_notaries)),
            )
            .await?;
        finish(server, self.cached(server, want)?, want, failure)
    }

    /// [`KeyRing::lookup`] without notaries (for a notary's own keys, which are never taken
    /// from another notary). Boxed with its type spelled out: the lookup recurses through it.
    fn lookup_direct<'a>(
        &'a self,
        server: &'a ServerName,
        want: &'a Want<'a>,
    ) -> BoxFuture<'a, Result<BTreeMap<String, Base64>>> {
        Box::pin(self.lookup(server, want, false))
    }

    /// Runs `fetch` for `server` unless `satisfied` holds (checked again once a fetch already
    /// running for the server ended) or the server is in its retry interval. `Some(reason)`
    /// when what was wanted is still missing.
    async fn fetch_once<'a>(
        &'a self,
        server: &'a ServerName,
        satisfied: impl Fn() -> Result<bool>,
        fetch: impl FnOnce(&'a ServerName) -> BoxFuture<'a, Result<(), String>>,
    ) -> Result<Option<String>> {
        let slot = self.slot(server);
        let failure = {
            let _running = slot.fetch.lock().await;
            if satisfied()? {
                None
            } else {
                let now = now_ms();
                let retry_after = slot.retry_after.load(Ordering::Relaxed);
                if now < retry_after {
                    Some(format!(
                        "its keys were fetched without success {} s ago",
                        (RETRY_INTERVAL_MS - (retry_after - now)) / 1000
                    ))
                } else {
                    let result = fetch(server).await;
                    if satisfied()? {
                        slot.retry_after.store(0, Ordering::Relaxed);
                        None
                    } else {
                        slot.retry_after
                            .store(now_ms() + RETRY_INTERVAL_MS, Ordering::Relaxed);
                        Some(match result {
                            Err(reason) => reason,
                            Ok(()) => "no such key".to_owned(),
                        })
                    }
                }
            }
        };
        self.release(server, slot);
        Ok(failure)
    }

    fn slot(&self, server: &ServerName) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.len() >= MAX_SLOTS {
            let now = now_ms();
            slots.retain(|_, slot| {
                Arc::strong_count(slot) > 1 || slot.retry_after.load(Ordering::Relaxed) > now
            });
        }
        slots.entry(server.to_owned()).or_default().clone()
    }

    /// Forgets the slot of `server` when no one else uses it and it holds no retry interval.
    fn release(&self, server: &ServerName, slot: Arc<Slot>) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        // Two references: the map's and ours.
        if Arc::strong_count(&slot) == 2 && slot.retry_after.load(Ordering::Relaxed) == 0 {
            slots.remove(server);
        }
    }

    /// Our own keys: the current one is usable at any instant, old ones until they expired.
    fn own(&self, want: &Want<'_>) -> BTreeMap<String, Base64> {
        let mut keys = BTreeMap::new();
        keys.insert(
            self.own_keys.key_id(),
            Base64::new(self.own_keys.keypair.public_key().to_vec()),
        );
        for (id, old) in &self.own_keys.old {
            let usable = want.validity == KeyValidity::Ignored || want.valid_at <= old.expired_ts;
            if let (true, Some(key)) = (usable, crate::config::parse_public_key(&old.key)) {
                keys.insert(id.clone(), key);
            }
        }
        keys.into_iter()
            .filter(|(id, _)| want.key_ids.is_empty() || want.key_ids.contains(id))
            .collect()
    }

    /// The cached keys of `server` usable as `want` says (asked ids only, unless none asked).
    fn cached(&self, server: &ServerName, want: &Want<'_>) -> Result<BTreeMap<String, Base64>> {
        let rows = self
            .store
            .scan_prefix::<ServerKeysTable, _>(&(server.as_str().to_owned(),), MAX_CACHED_KEYS)?;
        Ok(rows
            .into_iter()
            .filter(|((_, id), key)| {
                (want.key_ids.is_empty() || want.key_ids.contains(id))
                    && want.valid_at <= key.usable_until(want.validity)
            })
            .filter_map(|((_, id), key)| Some((id, crate::config::parse_public_key(&key.key)?)))
            .collect())
    }

    /// Fetches the keys of `server`: directly, then from each notary until `want` is met.
    async fn fetch(
        &self,
        server: &ServerName,
        want: &Want<'_>,
        allow_notaries: bool,
    ) -> Result<(), String> {
        let direct = self.fetch_direct(server).await;
        let mut failure = match direct {
            Ok(()) if self.satisfied(server, want) => return Ok(()),
            Ok(()) => "its key response lacks the key".to_owned(),
            Err(e) => e,
        };
        if !allow_notaries {
            return Err(failure);
        }
        for notary in &self.notaries {
            if notary.server_name == server {
                continue;
            }
            match self.fetch_from_notary(notary, server, want).await {
                Ok(()) if self.satisfied(server, want) => return Ok(()),
                Ok(()) => {
                    failure = format!("{failure}; notary {} lacks the key", notary.server_name)
                }
                Err(e) => failure = format!("{failure}; notary {}: {e}", notary.server_name),
            }
        }
        Err(failure)
    }

    fn satisfied(&self, server: &ServerName, want: &Want<'_>) -> bool {
        self.cached(server, want)
            .is_ok_and(|found| complete(found, want).is_some())
    }

    async fn fetch_direct(&self, server: &ServerName) -> Result<(), String> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let raw = tokio::time::timeout(FETCH_TIMEOUT, self.fetcher.server_keys(server))
            .await
            .map_err(|_| "its key request timed out".to_owned())?
            .map_err(|e| format!("cannot fetch its keys: {e}"))?;
        let verified = verify_response(server, raw.json().get(), None)?;
        self.store_response(verified).await
    }

    async fn fetch_from_notary(
        &self,
        notary: &Notary,
        server: &ServerName,
        want: &Want<'_>,
    ) -> Result<(), String> {
        let notary_keys = if notary.verify_keys.is_empty() {
            let now_want = Want {
                key_ids: &[],
                valid_at: now_ms(),
                validity: KeyValidity::Enforced,
            };
            self.lookup_direct(&notary.server_name, &now_want)
                .await
                .map_err(|e| e.message)?
        } else {
            notary.verify_keys.clone()
        };
        let mut criteria = batch::QueryCriteria::new();
        criteria.minimum_valid_until_ts = Some(MilliSecondsSinceUnixEpoch(
            want.valid_at.try_into().unwrap_or(ruma::UInt::MAX),
        ));
        let ids: BTreeMap<OwnedServerSigningKeyId, batch::QueryCriteria> = want
            .key_ids
            .iter()
            .filter_map(|id| Some((id.as_str().try_into().ok()?, criteria.clone())))
            .collect();
        let mut query = BTreeMap::new();
        query.insert(server.to_owned(), ids);
        self.requests.fetch_add(1, Ordering::Relaxed);
        let responses = tokio::time::timeout(
            FETCH_TIMEOUT,
            self.fetcher
                .query_notary(&notary.server_name, batch::Request::new(query)),
        )
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| format!("cannot query: {e}"))?;
        let mut last_error = None;
        let mut stored = 0;
        for raw in responses {
            let outcome = verify_response(
                server,
                raw.json().get(),
                Some((&notary.server_name, &notary_keys)),
            );
            match outcome {
                Ok(verified) => {
                    self.store_response(verified).await?;
                    stored += 1;
                }
                Err(e) => last_error = Some(e),
            }
        }
        match (stored, last_error) {
            (0, Some(e)) => Err(e),
            (0, None) => Err("no key response".to_owned()),
            _ => Ok(()),
        }
    }

    /// Merges a verified response into the cache: a key's record is replaced only by a
    /// response valid at least as long as the one it came from, so a notary's stale copy never
    /// overrides a fresher answer.
    async fn store_response(&self, verified: Verified) -> Result<(), String> {
        let server = verified.keys.server_name.as_str().to_owned();
        let fetched_ts = now_ms();
        let valid_until_ts: u64 = verified.keys.valid_until_ts.get().into();
        let store_err = |e: crate::store::StoreError| e.to_string();
        let mut batch = Batch::new();
        let listed = verified
            .keys
            .verify_keys
            .iter()
            .map(|(id, k)| (id, &k.key, None))
            .chain(verified.keys.old_verify_keys.iter().map(
                |(
                    id,
                    OldVerifyKey {
                        key, expired_ts, ..
                    },
                )| { (id, key, Some(u64::from(expired_ts.get()))) },
            ));
        for (id, key, expired_ts) in listed {
            let row = (server.clone(), id.to_string());
            let current = self.store.get::<ServerKeysTable>(&row).map_err(store_err)?;
            if current.is_some_and(|c| c.valid_until_ts > valid_until_ts) {
                continue;
            }
            let record = CachedKey {
                key: key.encode(),
                valid_until_ts,
                fetched_ts,
                expired_ts,
            };
            batch.put::<ServerKeysTable>(&row, &record);
        }
        let current = self
            .store
            .get::<ServerKeyResponses>(&server)
            .map_err(store_err)?;
        if current.is_none_or(|c| c.valid_until_ts <= valid_until_ts) {
            let json = serde_json::to_string(&verified.signed).map_err(|e| e.to_string())?;
            let record = KeyResponseRecord {
                json,
                valid_until_ts,
                fetched_ts,
            };
            batch.put::<ServerKeyResponses>(&server, &record);
        }
        self.store
            .commit(batch)
            .await
            .map_err(|e| format!("cannot store its keys: {e}"))
    }

    /// Key responses for the notary endpoints: ours for our own name; otherwise the cached
    /// response of `server`, refreshed first when it is past half its lifetime or not valid
    /// until `minimum_valid_until_ts` (directly from the server; if that fails, the last
    /// response we have is served, as the spec asks of notaries). Each response keeps its
    /// server's signature and gets ours.
    pub async fn notary_responses(
        &self,
        server: &ServerName,
        minimum_valid_until_ts: u64,
    ) -> Result<Vec<CanonicalJsonObject>> {
        let now = now_ms();
        if server == self.own_name {
            return Ok(vec![self.own_keys.key_response(&self.own_name, now)]);
        }
        let fresh = |record: &KeyResponseRecord| {
            let half_life =
                record.fetched_ts + record.valid_until_ts.saturating_sub(record.fetched_ts) / 2;
            now <= half_life && minimum_valid_until_ts <= record.valid_until_ts
        };
        let is_fresh = || -> Result<bool> {
            Ok(self
                .store
                .get::<ServerKeyResponses>(&server.as_str().to_owned())?
                .is_some_and(|r| fresh(&r)))
        };
        if !is_fresh()? {
            self.fetch_once(server, is_fresh, |s| Box::pin(self.fetch_direct(s)))
                .await?;
        }
        let Some(record) = self
            .store
            .get::<ServerKeyResponses>(&server.as_str().to_owned())?
        else {
            return Ok(Vec::new());
        };
        let mut object: CanonicalJsonObject = serde_json::from_str(&record.json)
            .map_err(|e| Error::unknown(format!("corrupt cached key response: {e}")))?;
        self.own_keys.sign_object(&self.own_name, &mut object);
        Ok(vec![object])
    }

    /// Moves the cached keys of `server` `by_ms` into the past, as if they had been fetched
    /// that long ago (tests of expiry).
    #[doc(hidden)]
    pub async fn age_cached(&self, server: &ServerName, by_ms: u64) -> Result<()> {
        let prefix = (server.as_str().to_owned(),);
        let mut batch = Batch::new();
        for (row, mut key) in self
            .store
            .scan_prefix::<ServerKeysTable, _>(&prefix, MAX_CACHED_KEYS)?
        {
            key.valid_until_ts = key.valid_until_ts.saturating_sub(by_ms);
            key.fetched_ts = key.fetched_ts.saturating_sub(by_ms);
            batch.put::<ServerKeysTable>(&row, &key);
        }
        let name = server.as_str().to_owned();
        if let Some(mut record) = self.store.get::<ServerKeyResponses>(&name)? {
            record.valid_until_ts = record.valid_until_ts.saturating_sub(by_ms);
            record.fetched_ts = record.fetched_ts.saturating_sub(by_ms);
            batch.put::<ServerKeyResponses>(&name, &record);
        }
        Ok(self.store.commit(batch).await?)
    }
}

/// The keys `want` asks for, if all of them were found (or any, when none is named).
fn complete(found: BTreeMap<String, Base64>, want: &Want<'_>) -> Option<BTreeMap<String, Base64>> {
    let all = if want.key_ids.is_empty() {
        !found.is_empty()
    } else {
        want.key_ids.iter().all(|id| found.contains_key(id))
    };
    all.then_some(found)
}

/// What a lookup returns after the fetch: the keys found if any, else why there are none.
fn finish(
    server: &ServerName,
    found: BTreeMap<String, Base64>,
    want: &Want<'_>,
    failure: Option<String>,
) -> Result<BTreeMap<String, Base64>> {
    if !found.is_empty() {
        return Ok(found);
    }
    let which = if want.key_ids.is_empty() {
        "signing key".to_owned()
    } else {
        format!("signing key {}", want.key_ids.join(", "))
    };
    let why = failure.unwrap_or_else(|| "no such key".to_owned());
    Err(Error::new(
        http::StatusCode::UNAUTHORIZED,
        "M_UNAUTHORIZED",
        format!(
            "No {which} of {server} valid at {} could be obtained: {why}",
            want.valid_at
        ),
    ))
}
