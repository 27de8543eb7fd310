//! Server-side key backups (spec: "Server-side key backups"): `/room_keys/version` and
//! `/room_keys/keys` at all three levels.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    api::client::backup::{
        add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session,
        create_backup_version, delete_backup_keys, delete_backup_keys_for_room,
        delete_backup_keys_for_session, delete_backup_version, get_backup_info, get_backup_keys,
        get_backup_keys_for_room, get_backup_keys_for_session, get_latest_backup_info,
        update_backup_version, RoomKeyBackup,
    },
    serde::Raw,
    OwnedRoomId, UInt,
};
use serde_json::{json, value::to_raw_value, Map, Value};

use crate::{
    error::{Error, Result},
    http::{Ctx, Router},
    service::{
        e2ee::{backup::VersionInfo, parse_object},
        Services,
    },
};

pub fn routes(router: &mut Router) {
    router.ruma(create_version);
    router.ruma(latest_version);
    router.ruma(get_version);
    router.ruma(update_version);
    router.ruma(delete_version);
    router.ruma(put_keys);
    router.ruma(put_room_keys);
    router.ruma(put_session_key);
    router.ruma(get_keys);
    router.ruma(get_room_keys);
    router.ruma(get_session_key);
    router.ruma(delete_keys);
    router.ruma(delete_room_keys);
    router.ruma(delete_session_key);
}

fn raw<T>(value: &Value) -> Result<Raw<T>> {
    to_raw_value(value)
        .map(Raw::from_json)
        .map_err(|_| Error::unknown("Cannot serialize the backup"))
}

fn uint(n: u64) -> UInt {
    UInt::new(n).unwrap_or(UInt::MAX)
}

/// `{algorithm, auth_data[, version]}` from a request body.
fn algorithm_body(body: &str) -> Result<(String, Map<String, Value>, Option<String>)> {
    let mut body = parse_object(body, "The request body")?;
    let Some(Value::String(algorithm)) = body.remove("algorithm") else {
        return Err(Error::bad_json("algorithm must be a string"));
    };
    let Some(Value::Object(auth_data)) = body.remove("auth_data") else {
        return Err(Error::bad_json("auth_data must be an object"));
    };
    let version = match body.remove("version") {
        None | Some(Value::Null) => None,
        Some(Value::String(v)) => Some(v),
        Some(_) => return Err(Error::bad_json("version must be a string")),
    };
    Ok((algorithm, auth_data, version))
}

/// Key data from a request, as an object.
fn key_data(raw: &Raw<ruma::api::client::backup::KeyBackupData>) -> Result<Map<String, Value>> {
    parse_object(raw.json().get(), "Key data")
}

fn sessions_raw(
    sessions: BTreeMap<String, Value>,
) -> Result<BTreeMap<String, Raw<ruma::api::client::backup::KeyBackupData>>> {
    sessions
        .into_iter()
        .map(|(session, data)| Ok((session, raw(&data)?)))
        .collect()
}

fn info_parts(
    info: VersionInfo,
) -> Result<(
    Raw<ruma::api::client::backup::BackupAlgorithm>,
    UInt,
    String,
    String,
)> {
    let algorithm = raw(&json!({"algorithm": info.algorithm, "auth_data": info.auth_data}))?;
    Ok((algorithm, uint(info.count), info.etag, info.version))
}

async fn create_version(
    services: Arc<Services>,
    ctx: Ctx,
    body: create_backup_version::v3::Request,
) -> Result<create_backup_version::v3::Response> {
    let me = ctx.authed()?;
    let (algorithm, auth_data, _) = algorithm_body(body.algorithm.json().get())?;
    let version = services
        .e2ee
        .create_backup(&me.user_id, &algorithm, auth_data)
        .await?;
    Ok(create_backup_version::v3::Response::new(version))
}

async fn latest_version(
    services: Arc<Services>,
    ctx: Ctx,
    _: get_latest_backup_info::v3::Request,
) -> Result<get_latest_backup_info::v3::Response> {
    let me = ctx.authed()?;
    let (algorithm, count, etag, version) =
        info_parts(services.e2ee.backup_info(&me.user_id, None)?)?;
    Ok(get_latest_backup_info::v3::Response::new(
        algorithm, count, etag, version,
    ))
}

async fn get_version(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_backup_info::v3::Request,
) -> Result<get_backup_info::v3::Response> {
    let me = ctx.authed()?;
    let (algorithm, count, etag, version) = info_parts(
        services
            .e2ee
            .backup_info(&me.user_id, Some(&body.version))?,
    )?;
    Ok(get_backup_info::v3::Response::new(
        algorithm, count, etag, version,
    ))
}

async fn update_version(
    services: Arc<Services>,
    ctx: Ctx,
    body: update_backup_version::v3::Request,
) -> Result<update_backup_version::v3::Response> {
    let me = ctx.authed()?;
    let (algorithm, auth_data, version) = algorithm_body(body.algorithm.json().get())?;
    services
        .e2ee
        .update_backup(
            &me.user_id,
            &body.version,
            &algorithm,
            auth_data,
            version.as_deref(),
        )
        .await?;
    Ok(update_backup_version::v3::Response::new())
}

async fn delete_version(
    services: Arc<Services>,
    ctx: Ctx,
    body: delete_backup_version::v3::Request,
) -> Result<delete_backup_version::v3::Response> {
    let me = ctx.authed()?;
    services
        .e2ee
        .delete_backup(&me.user_id, &body.version)
        .await?;
    Ok(delete_backup_version::v3::Response::new())
}

async fn put_keys(
    services: Arc<Services>,
    ctx: Ctx,
    body: add_backup_keys::v3::Request,
) -> Result<add_backup_keys::v3::Response> {
    let me = ctx.authed()?;
    let mut keys = Vec::new();
    for (room_id, room) in &body.rooms {
        for (session, data) in &room.sessions {
            keys.push((room_id.to_string(), session.clone(), key_data(data)?));
        }
    }
    let (etag, count) = services
        .e2ee
        .put_backup_keys(&me.user_id, &body.version, &keys)
        .await?;
    Ok(add_backup_keys::v3::Response::new(etag, uint(count)))
}

async fn put_room_keys(
    services: Arc<Services>,
    ctx: Ctx,
    body: add_backup_keys_for_room::v3::Request,
) -> Result<add_backup_keys_for_room::v3::Response> {
    let me = ctx.authed()?;
    let mut keys = Vec::new();
    for (session, data) in &body.sessions {
        keys.push((body.room_id.to_string(), session.clone(), key_data(data)?));
    }
    let (etag, count) = services
        .e2ee
        .put_backup_keys(&me.user_id, &body.version, &keys)
        .await?;
    Ok(add_backup_keys_for_room::v3::Response::new(
        etag,
        uint(count),
    ))
}

async fn put_session_key(
    services: Arc<Services>,
    ctx: Ctx,
    body: add_backup_keys_for_session::v3::Request,
) -> Result<add_backup_keys_for_session::v3::Response> {
    let me = ctx.authed()?;
    let keys = [(
        body.room_id.to_string(),
        body.session_id.clone(),
        key_data(&body.session_data)?,
    )];
    let (etag, count) = services
        .e2ee
        .put_backup_keys(&me.user_id, &body.version, &keys)
        .await?;
    Ok(add_backup_keys_for_session::v3::Response::new(
        etag,
        uint(count),
    ))
}

async fn get_keys(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_backup_keys::v3::Request,
) -> Result<get_backup_keys::v3::Response> {
    let me = ctx.authed()?;
    let rooms = services
        .e2ee
        .get_backup_keys(&me.user_id, &body.version, None, None)?;
    let mut out = BTreeMap::new();
    for (room_id, sessions) in rooms {
        let Ok(room_id) = OwnedRoomId::try_from(room_id) else {
            continue;
        };
        out.insert(room_id, RoomKeyBackup::new(sessions_raw(sessions)?));
    }
    Ok(get_backup_keys::v3::Response::new(out))
}

async fn get_room_keys(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_backup_keys_for_room::v3::Request,
) -> Result<get_backup_keys_for_room::v3::Response> {
    let me = ctx.authed()?;
    let mut rooms = services.e2ee.get_backup_keys(
        &me.user_id,
        &body.version,
        Some(body.room_id.as_str()),
        None,
    )?;
    let sessions = rooms.remove(body.room_id.as_str()).unwrap_or_default();
    Ok(get_backup_keys_for_room::v3::Response::new(sessions_raw(
        sessions,
    )?))
}

async fn get_session_key(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_backup_keys_for_session::v3::Request,
) -> Result<get_backup_keys_for_session::v3::Response> {
    let me = ctx.authed()?;
    let mut rooms = services.e2ee.get_backup_keys(
        &me.user_id,
        &body.version,
        Some(body.room_id.as_str()),
        Some(&body.session_id),
    )?;
    let data = rooms
        .remove(body.room_id.as_str())
        .and_then(|mut sessions| sessions.remove(&body.session_id))
        .ok_or_else(|| Error::not_found("Key not found"))?;
    Ok(get_backup_keys_for_session::v3::Response::new(raw(&data)?))
}

async fn delete_keys(
    services: Arc<Services>,
    ctx: Ctx,
    body: delete_backup_keys::v3::Request,
) -> Result<delete_backup_keys::v3::Response> {
    let me = ctx.authed()?;
    let (etag, count) = services
        .e2ee
        .delete_backup_keys(&me.user_id, &body.version, None, None)
        .await?;
    Ok(delete_backup_keys::v3::Response::new(etag, uint(count)))
}

async fn delete_room_keys(
    services: Arc<Services>,
    ctx: Ctx,
    body: delete_backup_keys_for_room::v3::Request,
) -> Result<delete_backup_keys_for_room::v3::Response> {
    let me = ctx.authed()?;
    let (etag, count) = services
        .e2ee
        .delete_backup_keys(
            &me.user_id,
            &body.version,
            Some(body.room_id.as_str()),
            None,
        )
        .await?;
    Ok(delete_backup_keys_for_room::v3::Response::new(
        etag,
        uint(count),
    ))
}

async fn delete_session_key(
    services: Arc<Services>,
    ctx: Ctx,
    body: delete_backup_keys_for_session::v3::Request,
) -> Result<delete_backup_keys_for_session::v3::Response> {
    let me = ctx.authed()?;
    let (etag, count) = services
        .e2ee
        .delete_backup_keys(
            &me.user_id,
            &body.version,
            Some(body.room_id.as_str()),
            Some(&body.session_id),
        )
        .await?;
    Ok(delete_backup_keys_for_session::v3::Response::new(
        etag,
        uint(count),
    ))
}
