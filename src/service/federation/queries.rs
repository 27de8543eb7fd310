//! Queries this server makes to other servers for its clients: profiles, room aliases, device
//! and cross-signing keys, one-time keys and room directories.
//!
//! Nothing here is stored: each client request asks the remote server again (the spec lets
//! servers cache these answers; device lists of remote users are kept by the transaction
//! side, not here).
//!
//! Every query is bounded so that no client can make this server open an unbounded number of
//! connections or wait without end:
//! - one client request queries at most [`PARALLEL_PER_REQUEST`] servers at a time;
//! - at most [`PER_DESTINATION`] queries are in flight to one server (over all clients),
//!   [`PER_REQUESTER`] for one user (over all of their requests) and [`MAX_IN_FLIGHT`] in all;
//!   waiting for a slot counts against the request's time;
//! - answers are size-capped per endpoint (1 to 16 MiB);
//! - a client request ends at its deadline ([`QUERY_TIMEOUT`] for single queries, the
//!   request's own `timeout` for key queries, at most [`MAX_KEYS_TIMEOUT`]): servers that
//!   have not answered by then — including those not yet asked — are reported as failures.
//!
//! Answers are checked before they reach a client: a server only speaks for its own users
//! (keys of users of other servers, or of users not asked about, are dropped), and a device's
//! keys must name the user and device they are filed under.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use http::StatusCode;
use ruma::{
    api::{
        federation::{
            authentication::ServerSignatures,
            directory::{get_public_rooms, get_public_rooms_filtered},
            keys::{claim_keys, get_keys},
            query::{get_profile_information, get_room_information},
        },
        path_builder::SinglePath,
        OutgoingRequest,
    },
    directory::{Filter, RoomNetwork},
    profile::ProfileFieldName,
    serde::Raw,
    OwnedDeviceId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomAliasId, ServerName, UInt,
    UserId,
};
use serde_json::{json, Value};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use super::client::{FedError, FederationClient};
use crate::error::{Error, Result};
use crate::outbound::OutboundError;

/// Deadline of a single query (profile, alias, directory).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of a key query when the client gives none (the spec's default).
pub const DEFAULT_KEYS_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest deadline a client may ask for in a key query.
pub const MAX_KEYS_TIMEOUT: Duration = Duration::from_secs(30);
/// Servers one client request queries at the same time.
pub const PARALLEL_PER_REQUEST: usize = 16;
/// Queries in flight to one destination, over every client.
pub const PER_DESTINATION: usize = 8;
/// Queries in flight for one user (or address), over all of their requests: a quarter of
/// [`MAX_IN_FLIGHT`], so that servers that hang, asked by one user, cannot take every slot.
pub const PER_REQUESTER: usize = 16;
/// Queries in flight over every client and destination (with the answer caps below, this
/// bounds the memory remote answers can take at once).
pub const MAX_IN_FLIGHT: usize = 64;
/// Largest answer to a profile or alias query.
const MAX_SMALL_ANSWER: usize = 1024 * 1024;
/// Largest answer to a directory listing.
const MAX_DIRECTORY_ANSWER: usize = 8 * 1024 * 1024;
/// Largest answer to a device key query (many users with many devices).
const MAX_KEYS_ANSWER: usize = 16 * 1024 * 1024;
/// Largest answer to a one-time key claim.
const MAX_CLAIM_ANSWER: usize = 4 * 1024 * 1024;
/// Most servers one alias resolution passes on to the client.
const MAX_ALIAS_SERVERS: usize = 100;

/// Slots per key (a destination, or who asked): the semaphore of each key and how many
/// callers hold or wait for one of its slots. Invariant: a key is in the map exactly while
/// that count is above zero (both change under the lock), so the map never outgrows the keys
/// in use.
struct KeyedSlots {
    capacity: usize,
    map: Mutex<HashMap<String, (Arc<Semaphore>, usize)>>,
}

/// A slot of one key (or the wait for one); leaving it updates the key's count, also when the
/// wait is cancelled.
struct Slot<'a> {
    slots: &'a KeyedSlots,
    key: String,
    permit: Option<OwnedSemaphorePermit>,
}

impl KeyedSlots {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            map: Mutex::default(),
        }
    }

    async fn acquire(&self, key: &str) -> Slot<'_> {
        let semaphore = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            let entry = map
                .entry(key.to_owned())
                .or_insert_with(|| (Arc::new(Semaphore::new(self.capacity)), 0));
            entry.1 += 1;
            entry.0.clone()
        };
        let mut slot = Slot {
            slots: self,
            key: key.to_owned(),
            permit: None,
        };
        // The semaphore is never closed.
        slot.permit = semaphore.acquire_owned().await.ok();
        slot
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.permit.take();
        let mut map = self.slots.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get_mut(&self.key) {
            entry.1 -= 1;
            if entry.1 == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Who a query is made for: its slots are shared by all of their requests.
#[derive(Debug, Clone, Copy)]
pub enum Requester<'a> {
    User(&'a UserId),
    /// Requests without an access token (directory listings, profiles), by address.
    Address(IpAddr),
}

impl<'a> Requester<'a> {
    /// The user when the request carried a token, else its address.
    pub fn new(user: Option<&'a UserId>, ip: IpAddr) -> Self {
        user.map_or(Requester::Address(ip), Requester::User)
    }

    fn key(&self) -> String {
        match self {
            Requester::User(user) => user.to_string(),
            Requester::Address(ip) => ip.to_string(),
        }
    }
}

/// How one server's part of a key query ended, for the response's `failures`.
pub fn failure(error: &FedError) -> Value {
    match error {
        FedError::Remote {
            status,
            errcode,
            error,
        } => json!({ "status": status.as_u16(), "errcode": errcode, "error": error }),
        other => json!({ "status": 503, "errcode": "M_UNKNOWN", "error": other.to_string() }),
    }
}

/// A server's answer to a fanned-out request, or `None` after recording in `failures` why it
/// has none (timed out, never asked before the deadline, or failed).
fn answered<T>(
    server: &ServerName,
    answer: Option<Result<T, FedError>>,
    failures: &mut BTreeMap<String, Value>,
    endpoint: &str,
) -> Option<T> {
    match answer {
        Some(Ok(response)) => Some(response),
        Some(Err(FedError::Outbound(OutboundError::Timeout))) | None => {
            failures.insert(server.to_string(), timed_out());
            None
        }
        Some(Err(e)) => {
            log::info!("{endpoint} to {server} failed: {e}");
            failures.insert(server.to_string(), failure(&e));
            None
        }
    }
}

fn timed_out() -> Value {
    json!({
        "status": 504,
        "errcode": "M_UNKNOWN",
        "error": "The server did not answer in time",
    })
}

/// A remote server's error as an answer to the client: "not found" and "forbidden" are
/// passed on; anything else is the remote server's failure, a 502.
fn client_error(destination: &ServerName, error: FedError, what: &str) -> Error {
    match error {
        FedError::Remote { status, .. } if status == StatusCode::NOT_FOUND => {
            Error::not_found(format!("{what} not found on {destination}"))
        }
        FedError::Remote { status, error, .. } if status == StatusCode::FORBIDDEN => {
            Error::forbidden(format!("{destination} refused: {error}"))
        }
        FedError::Remote {
            status, errcode, ..
        } if status == StatusCode::BAD_REQUEST && errcode == "M_INVALID_PARAM" => {
            Error::invalid_param(format!("{destination} refused the request as invalid"))
        }
        other => {
            log::info!("query to {destination} failed: {other}");
            Error::new(
                StatusCode::BAD_GATEWAY,
                "M_UNKNOWN",
                format!("Cannot get an answer from {destination}: {other}"),
            )
        }
    }
}

fn deadline_error(destination: &ServerName) -> Error {
    Error::new(
        StatusCode::GATEWAY_TIMEOUT,
        "M_UNKNOWN",
        format!("{destination} did not answer in time"),
    )
}

/// One server's keys, after the checks of the module documentation.
#[derive(Debug, Default)]
pub struct RemoteKeys {
    pub device_keys:
        BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, Raw<ruma::encryption::DeviceKeys>>>,
    pub master_keys: BTreeMap<OwnedUserId, Raw<ruma::encryption::CrossSigningKey>>,
    pub self_signing_keys: BTreeMap<OwnedUserId, Raw<ruma::encryption::CrossSigningKey>>,
    /// Server name → why its part is missing.
    pub failures: BTreeMap<String, Value>,
}

/// Claimed one-time keys of remote users, and the servers that failed.
#[derive(Debug, Default)]
pub struct RemoteClaims {
    pub one_time_keys: claim_keys::v1::OneTimeKeys,
    pub failures: BTreeMap<String, Value>,
}

/// A directory listing request to pass on to another server.
#[derive(Debug, Default)]
pub struct DirectoryRequest {
    pub limit: Option<UInt>,
    pub since: Option<String>,
    /// `None` for the unfiltered (GET) form.
    pub filter: Option<Filter>,
    pub room_network: RoomNetwork,
}

/// The client for remote queries; see the module documentation for its limits.
pub struct Queries {
    client: Arc<FederationClient>,
    destinations: KeyedSlots,
    requesters: KeyedSlots,
    in_flight: Arc<Semaphore>,
}

impl Queries {
    pub fn new(client: Arc<FederationClient>) -> Self {
        Self {
            client,
            destinations: KeyedSlots::new(PER_DESTINATION),
            requesters: KeyedSlots::new(PER_REQUESTER),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    pub fn server_name(&self) -> &ServerName {
        self.client.server_name()
    }

    /// Whether `server` is this server.
    pub fn is_local(&self, server: &ServerName) -> bool {
        server == self.client.server_name()
    }

    /// Sends `request` once a slot for `destination` and an overall slot are free, all of it
    /// bounded by `deadline` (`None` once it passed) and the answer by `max_body` bytes.
    async fn send<R>(
        &self,
        requester: Requester<'_>,
        destination: &ServerName,
        request: R,
        deadline: Instant,
        max_body: usize,
    ) -> Option<Result<R::IncomingResponse, FedError>>
    where
        R: OutgoingRequest<Authentication = ServerSignatures, PathBuilder = SinglePath> + Send,
    {
        // A query whose turn comes after the deadline is not started at all (`timeout_at`
        // would still poll it once, which may open a connection).
        if Instant::now() >= deadline {
            return None;
        }
        let work = async {
            let _mine = self.requesters.acquire(&requester.key()).await;
            let _slot = self.destinations.acquire(destination.as_str()).await;
            // Never closed.
            let _permit = self.in_flight.acquire().await.ok();
            let left = deadline.saturating_duration_since(Instant::now());
            self.client
                .send_with_limits(destination, request, left, max_body)
                .await
        };
        tokio::time::timeout_at(deadline, work).await.ok()
    }

    /// A single query with [`QUERY_TIMEOUT`], its failures as client errors.
    async fn single<R>(
        &self,
        requester: Requester<'_>,
        destination: &ServerName,
        request: R,
        what: &str,
        max_body: usize,
    ) -> Result<R::IncomingResponse>
    where
        R: OutgoingRequest<Authentication = ServerSignatures, PathBuilder = SinglePath> + Send,
    {
        let deadline = Instant::now() + QUERY_TIMEOUT;
        match self
            .send(requester, destination, request, deadline, max_body)
            .await
        {
            Some(Ok(response)) => Ok(response),
            Some(Err(FedError::Outbound(OutboundError::Timeout))) | None => {
                Err(deadline_error(destination))
            }
            Some(Err(e)) => Err(client_error(destination, e, what)),
        }
    }

    /// The profile of a user of another server (only `field` when given). Fields set to
    /// `null` are unset (spec) and left out.
    pub async fn profile(
        &self,
        requester: Requester<'_>,
        user_id: &UserId,
        field: Option<ProfileFieldName>,
    ) -> Result<BTreeMap<String, Value>> {
        let mut request = get_profile_information::v1::Request::new(user_id.to_owned());
        request.field = field.clone();
        let response = self
            .single(
                requester,
                user_id.server_name(),
                request,
                "Profile",
                MAX_SMALL_ANSWER,
            )
            .await?;
        Ok(response
            .into_iter()
            .filter(|(key, value)| {
                !value.is_null() && field.as_ref().is_none_or(|f| f.as_str() == key)
            })
            .collect())
    }

    /// The room an alias of another server names, and servers that are in it.
    pub async fn resolve_alias(
        &self,
        requester: Requester<'_>,
        alias: &RoomAliasId,
    ) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        let request = get_room_information::v1::Request::new(alias.to_owned());
        let mut response = self
            .single(
                requester,
                alias.server_name(),
                request,
                "Room alias",
                MAX_SMALL_ANSWER,
            )
            .await?;
        response.servers.truncate(MAX_ALIAS_SERVERS);
        if response.servers.is_empty() {
            response.servers.push(alias.server_name().to_owned());
        }
        Ok((response.room_id, response.servers))
    }

    /// Another server's published room directory.
    pub async fn public_rooms(
        &self,
        requester: Requester<'_>,
        server: &ServerName,
        request: DirectoryRequest,
    ) -> Result<get_public_rooms_filtered::v1::Response> {
        match request.filter {
            None => {
                let mut get = get_public_rooms::v1::Request::new();
                get.limit = request.limit;
                get.since = request.since;
                get.room_network = request.room_network;
                let r = self
                    .single(
                        requester,
                        server,
                        get,
                        "Room directory",
                        MAX_DIRECTORY_ANSWER,
                    )
                    .await?;
                let mut response = get_public_rooms_filtered::v1::Response::new();
                response.chunk = r.chunk;
                response.next_batch = r.next_batch;
                response.prev_batch = r.prev_batch;
                response.total_room_count_estimate = r.total_room_count_estimate;
                Ok(response)
            }
            Some(filter) => {
                let mut post = get_public_rooms_filtered::v1::Request::new();
                post.limit = request.limit;
                post.since = request.since;
                post.filter = filter;
                post.room_network = request.room_network;
                self.single(
                    requester,
                    server,
                    post,
                    "Room directory",
                    MAX_DIRECTORY_ANSWER,
                )
                .await
            }
        }
    }

    /// Runs `query` for every server, [`PARALLEL_PER_REQUEST`] at a time, until `timeout`:
    /// each server's answer, or `None` when it did not come in time.
    async fn fan_out<T, Q, Fut, Out>(
        &self,
        per_server: BTreeMap<OwnedServerName, T>,
        timeout: Duration,
        query: Q,
    ) -> Vec<(OwnedServerName, T, Option<Result<Out, FedError>>)>
    where
        T: Clone,
        Q: Fn(OwnedServerName, T, Instant) -> Fut,
        Fut: Future<Output = Option<Result<Out, FedError>>>,
    {
        let deadline = Instant::now() + timeout.min(MAX_KEYS_TIMEOUT);
        futures_util::stream::iter(per_server)
            .map(|(server, asked)| {
                let fut = query(server.clone(), asked.clone(), deadline);
                async move { (server, asked, fut.await) }
            })
            .buffer_unordered(PARALLEL_PER_REQUEST)
            .collect()
            .await
    }

    /// The entries of `wanted` about users of other servers, grouped by server.
    fn remote_by_server<V>(
        &self,
        wanted: BTreeMap<OwnedUserId, V>,
    ) -> BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, V>> {
        let mut per_server: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, V>> = BTreeMap::new();
        for (user, value) in wanted {
            if !self.is_local(user.server_name()) {
                per_server
                    .entry(user.server_name().to_owned())
                    .or_default()
                    .insert(user, value);
            }
        }
        per_server
    }

    /// `/keys/query` for users of other servers: one `user/keys/query` per server.
    pub async fn query_keys(
        &self,
        requester: Requester<'_>,
        wanted: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
        timeout: Duration,
    ) -> RemoteKeys {
        let per_server = self.remote_by_server(wanted);
        let answers = self
            .fan_out(per_server, timeout, |server, asked, deadline| async move {
                let request = get_keys::v1::Request::new(asked);
                self.send(requester, &server, request, deadline, MAX_KEYS_ANSWER)
                    .await
            })
            .await;
        let mut out = RemoteKeys::default();
        for (server, asked, answer) in answers {
            let Some(response) = answered(&server, answer, &mut out.failures, "user/keys/query")
            else {
                continue;
            };
            let asked_about = |user: &UserId| asked.contains_key(user);
            for (user, devices) in response.device_keys {
                if !asked_about(&user) {
                    continue;
                }
                let wanted = &asked[&user];
                let devices: BTreeMap<_, _> = devices
                    .into_iter()
                    .filter(|(device, keys)| {
                        (wanted.is_empty() || wanted.contains(device))
                            && names_match(keys.json().get(), &user, Some(device))
                    })
                    .collect();
                out.device_keys.insert(user, devices);
            }
            for (from, to) in [
                (response.master_keys, &mut out.master_keys),
                (response.self_signing_keys, &mut out.self_signing_keys),
            ] {
                for (user, key) in from {
                    if asked_about(&user) && names_match(key.json().get(), &user, None) {
                        to.insert(user, key);
                    }
                }
            }
        }
        out
    }

    /// `/keys/claim` for devices of users of other servers: one `user/keys/claim` per server.
    pub async fn claim_keys(
        &self,
        requester: Requester<'_>,
        wanted: claim_keys::v1::OneTimeKeyClaims,
        timeout: Duration,
    ) -> RemoteClaims {
        let per_server = self.remote_by_server(wanted);
        let answers = self
            .fan_out(per_server, timeout, |server, asked, deadline| async move {
                let request = claim_keys::v1::Request::new(asked);
                self.send(requester, &server, request, deadline, MAX_CLAIM_ANSWER)
                    .await
            })
            .await;
        let mut out = RemoteClaims::default();
        for (server, asked, answer) in answers {
            let Some(response) = answered(&server, answer, &mut out.failures, "user/keys/claim")
            else {
                continue;
            };
            for (user, devices) in response.one_time_keys {
                let Some(asked_devices) = asked.get(&user) else {
                    continue;
                };
                let devices: BTreeMap<_, _> = devices
                    .into_iter()
                    .filter(|(device, _)| asked_devices.contains_key(device))
                    .collect();
                if !devices.is_empty() {
                    out.one_time_keys.insert(user, devices);
                }
            }
        }
        out
    }
}

/// Whether a key object's `user_id` (and `device_id`, for device keys) are the ones it is
/// filed under.
fn names_match(json: &str, user: &UserId, device: Option<&OwnedDeviceId>) -> bool {
    #[derive(serde::Deserialize)]
    struct Names {
        user_id: String,
        device_id: Option<String>,
    }
    let Ok(names) = serde_json::from_str::<Names>(json) else {
        return false;
    };
    names.user_id == user.as_str()
        && device.is_none_or(|d| names.device_id.as_deref() == Some(d.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_must_match_where_they_are_filed() {
        let user = UserId::parse("@bob:b.example").unwrap();
        let device: OwnedDeviceId = "DEV".into();
        let ok = r#"{"user_id":"@bob:b.example","device_id":"DEV","keys":{}}"#;
        assert!(names_match(ok, &user, Some(&device)));
        assert!(names_match(ok, &user, None));
        let other_device = r#"{"user_id":"@bob:b.example","device_id":"X"}"#;
        assert!(!names_match(other_device, &user, Some(&device)));
        let other_user = r#"{"user_id":"@eve:c.example","device_id":"DEV"}"#;
        assert!(!names_match(other_user, &user, Some(&device)));
        assert!(!names_match("[]", &user, None));
    }

    #[tokio::test]
    async fn slots_are_bounded_and_forgotten() {
        let slots = KeyedSlots::new(PER_DESTINATION);
        let dest = "b.example";
        let mut held = Vec::new();
        for _ in 0..PER_DESTINATION {
            held.push(slots.acquire(dest).await);
        }
        let more = tokio::time::timeout(Duration::from_millis(50), slots.acquire(dest)).await;
        assert!(
            more.is_err(),
            "a slot beyond PER_DESTINATION was handed out"
        );
        assert_eq!(slots.map.lock().unwrap().len(), 1);
        held.clear();
        assert!(slots.map.lock().unwrap().is_empty());
        let again = slots.acquire(dest).await;
        assert!(again.permit.is_some());
        drop(again);
        assert!(slots.map.lock().unwrap().is_empty());
    }
}
