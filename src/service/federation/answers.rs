//! What this server answers to other servers' queries: profiles, aliases, a user's devices,
//! device keys, one-time key claims and the published room directory.
//!
//! Queries may only ask about this server's users and aliases (spec: "MUST be a user local to
//! the receiving homeserver"). The spec names no error for other servers' users; this server
//! answers as the spec's error list of each endpoint allows:
//! - `query/profile` and `query/directory` list only 404 `M_NOT_FOUND`, which is the answer
//!   for a user or alias of another server too (it does not exist here);
//! - `user/devices`, `user/keys/query` and `user/keys/claim` list no error; a request naming
//!   another server's user is malformed for this server, so it is refused whole with 400
//!   `M_INVALID_PARAM` rather than answered in part.
//!
//! Signatures on keys are shown as their owner sees them (no other local user's view: the
//! asking server speaks for none of them).

use std::collections::BTreeMap;

use ruma::{
    api::federation::{device::get_devices, keys::claim_keys},
    profile::ProfileFieldName,
    OwnedDeviceId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomAliasId, UserId,
};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    service::{
        e2ee::{
            device_lists::DeviceListLatest,
            keys::{Claimed, DeviceKeysTable},
        },
        rooms::directory::{DirectoryPage, DirectoryQuery},
        sessions::DevicesTable,
        Services,
    },
};

/// Most servers a `query/directory` answer names.
const MAX_ALIAS_SERVERS: usize = 50;

fn is_local_user(services: &Services, user_id: &UserId) -> bool {
    user_id.server_name() == services.rooms.server_name()
}

fn not_ours(user_id: &UserId) -> Error {
    Error::invalid_param(format!("{user_id} is not a user of this server"))
}

/// `query/profile`: the user's public profile, or the one field asked for (404 when unset).
pub fn profile(
    services: &Services,
    user_id: &UserId,
    field: Option<&ProfileFieldName>,
) -> Result<BTreeMap<String, Value>> {
    let active = is_local_user(services, user_id)
        && services
            .users
            .get(user_id)?
            .is_some_and(|user| !user.deactivated);
    if !active {
        return Err(Error::not_found("User does not exist"));
    }
    match field {
        None => services.profiles.profile(user_id),
        Some(field) => {
            let value = services
                .profiles
                .field(user_id, field.as_str())?
                .ok_or_else(|| Error::not_found(format!("The profile has no {field}")))?;
            Ok(BTreeMap::from([(field.to_string(), value)]))
        }
    }
}

/// `query/directory`: the room a local alias names, and servers in it — this one first,
/// then the servers of its joined members.
pub fn resolve_alias(
    services: &Services,
    alias: &RoomAliasId,
) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
    let not_found = || Error::not_found("Room alias not found");
    if alias.server_name() != services.rooms.server_name() {
        return Err(not_found());
    }
    let room_id = services.rooms.alias_room(alias)?.ok_or_else(not_found)?;
    let mut servers = vec![services.rooms.server_name().to_owned()];
    if let Some(room) = services.rooms.room(&room_id)? {
        for (member, membership) in services.rooms.members(room.sid)? {
            if servers.len() >= MAX_ALIAS_SERVERS {
                break;
            }
            if membership != "join" {
                continue;
            }
            let Ok(member) = UserId::parse(member) else {
                continue;
            };
            if !servers.iter().any(|s| s == member.server_name()) {
                servers.push(member.server_name().to_owned());
            }
        }
    }
    Ok((room_id, servers))
}

/// An object from a stored key, without `unsigned` (what the device uploaded).
fn without_unsigned(mut keys: Value) -> Value {
    if let Value::Object(map) = &mut keys {
        map.remove("unsigned");
    }
    keys
}

fn raw<T>(value: &Value) -> Result<ruma::serde::Raw<T>> {
    serde_json::value::to_raw_value(value)
        .map(ruma::serde::Raw::from_json)
        .map_err(|_| Error::unknown("Cannot serialize a key"))
}

/// `user/devices/{userId}`: the user's devices that have identity keys, their display names,
/// and the master and self-signing keys. `stream_id` is the stream position of the user's
/// latest device-list change (0 when none), read before the devices so that an answer is
/// never newer-labelled than what it shows.
pub fn user_devices(services: &Services, user_id: &UserId) -> Result<get_devices::v1::Response> {
    if !is_local_user(services, user_id) {
        return Err(not_ours(user_id));
    }
    if services.users.get(user_id)?.is_none() {
        return Err(Error::not_found("User does not exist"));
    }
    let stream_id = services
        .store
        .get::<DeviceListLatest>(&user_id.to_string())?
        .unwrap_or(0);
    let mut response =
        get_devices::v1::Response::new(user_id.to_owned(), ruma::UInt::new_saturating(stream_id));
    let e2ee = &services.e2ee;
    let with_keys = services
        .store
        .scan_prefix::<DeviceKeysTable, _>(&(user_id.as_str(),), usize::MAX)?;
    for ((_, device_id), _) in with_keys {
        let Some(keys) = e2ee.device_keys_for(user_id, user_id, &device_id)? else {
            continue;
        };
        let display_name = services
            .store
            .get::<DevicesTable>(&(user_id.to_string(), device_id.clone()))?
            .and_then(|d| d.display_name);
        let mut device = get_devices::v1::UserDevice::new(
            OwnedDeviceId::from(device_id),
            raw(&without_unsigned(keys))?,
        );
        device.device_display_name = display_name;
        response.devices.push(device);
    }
    if let Some(key) = e2ee.cross_signing_key_for(user_id, user_id, "master")? {
        response.master_key = Some(raw(&key)?);
    }
    if let Some(key) = e2ee.cross_signing_key_for(user_id, user_id, "self_signing")? {
        response.self_signing_key = Some(raw(&key)?);
    }
    Ok(response)
}

/// Device and cross-signing keys of local users, for `user/keys/query`.
#[derive(Debug, Default)]
pub struct LocalKeys {
    pub device_keys: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, Value>>,
    pub master_keys: BTreeMap<OwnedUserId, Value>,
    pub self_signing_keys: BTreeMap<OwnedUserId, Value>,
}

/// `user/keys/query`: unknown users are left out, as on the client API.
pub fn query_keys(
    services: &Services,
    wanted: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
) -> Result<LocalKeys> {
    if let Some(user) = wanted.keys().find(|u| !is_local_user(services, u)) {
        return Err(not_ours(user));
    }
    let mut out = LocalKeys::default();
    for (user_id, devices) in wanted {
        if services.users.get(user_id)?.is_none() {
            continue;
        }
        let one = BTreeMap::from([(user_id.clone(), devices.clone())]);
        let mut result = services.e2ee.query_keys(user_id, &one)?;
        if let Some(devices) = result.device_keys.remove(user_id) {
            out.device_keys.insert(user_id.clone(), devices);
        }
        if let Some(key) = result.master_keys.remove(user_id) {
            out.master_keys.insert(user_id.clone(), key);
        }
        if let Some(key) = result.self_signing_keys.remove(user_id) {
            out.self_signing_keys.insert(user_id.clone(), key);
        }
    }
    Ok(out)
}

/// `user/keys/claim`: one key per asked device that has one.
pub async fn claim_keys(
    services: &Services,
    wanted: &claim_keys::v1::OneTimeKeyClaims,
) -> Result<Claimed> {
    if let Some(user) = wanted.keys().find(|u| !is_local_user(services, u)) {
        return Err(not_ours(user));
    }
    let requests: Vec<_> = wanted
        .iter()
        .flat_map(|(user, devices)| {
            devices.iter().map(move |(device, algorithm)| {
                (user.clone(), device.clone(), algorithm.to_string())
            })
        })
        .collect();
    services.e2ee.claim_keys(&requests).await
}

/// `publicRooms` (GET and POST): this server's published rooms. A limit of 0 means no limit
/// (spec), which is still one page of at most the directory's page size.
pub fn public_rooms(services: &Services, mut query: DirectoryQuery) -> Result<DirectoryPage> {
    if query.limit == Some(0) {
        query.limit = None;
    }
    services.rooms.public_rooms(&query)
}
