//! Joining a room this server is not in, as the joining server (spec: server-server API,
//! "Joining Rooms"): `make_join` then `send_join` (v2) at a resident server, each candidate in
//! turn (at most [`MAX_ATTEMPTS`], each request bounded in time), then every event of the
//! answer is checked before anything is stored (`verify.rs`):
//! - each event of `state` and `auth_chain`: its format for the room version, its id, the
//!   signatures its room version requires (keys from the keyring, valid at the event's time
//!   from room version 5), its content hash (a mismatch means its redacted form is used, as for
//!   any received PDU);
//! - the auth chain and the state are authorised in topological order of their auth events,
//!   each against its own auth events (ruma's authorisation rules); one that fails — or cites an
//!   auth event the answer lacks — fails the join;
//! - the state holds one event per key, including the room's create event, and the join
//!   passes the rules against its auth events and against that state;
//! - the join that comes back signed by the resident (`event`) must be ours (same id) and,
//!   when it names `join_authorised_via_users_server`, carry a valid signature of that user's
//!   server.
//!
//! Then `rooms::build::joined` stores the room in one batch. A resident whose answer fails a
//! check is given up like an unreachable one, and the next is tried; nothing of a failed answer
//! is stored.
//!
//! Errors to the client: no candidate server at all → 404 `M_NOT_FOUND`; every candidate
//! unreachable or answering with a broken or forged answer → 502 `M_UNKNOWN`; a resident that
//! refused (403 `M_FORBIDDEN`, 400 `M_UNABLE_TO_AUTHORISE_JOIN`, …) and no other that accepted →
//! that refusal passed through (a `M_INVALID_PARAM`/`M_MISSING_PARAM` becomes 502, as the spec
//! asks for errors that concern the server-server request).
//!
//! Keys: from room version 5, each event's signatures must be by keys valid at its
//! `origin_server_ts` (as for any received PDU); the join itself, which this server just
//! signed, is checked with any key the resident published.
//!
//! With `federation.partial_state_joins` (the default) the join asks for `omit_members`; an
//! answer that omitted members stores the room with partial state (`partial.rs`).
//!
//! From just before `send_join` until the room is stored, the room's PDUs that arrive are held
//! and received once it is (`pdus/held.rs`): the resident sends the room's events as soon as
//! it has accepted the join.

use std::time::Duration;

use http::StatusCode;
use ruma::{
    api::federation::membership::{create_join_event, prepare_join_event},
    CanonicalJsonObject, OwnedServerName, RoomId, RoomVersionId, ServerName, UserId,
};
use serde_json::{Map, Value};

use super::super::client::FedError;
use super::fill::raw_object;
use super::verify::check_answer;
use crate::{
    error::{Error, Result},
    service::{rooms::Pdu, Services},
};

/// The most resident servers tried for one join.
pub const MAX_ATTEMPTS: usize = 5;
/// Time limit of a `make_join`.
const MAKE_JOIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Time limit of a `send_join` (the answer holds the whole state of the room).
const SEND_JOIN_TIMEOUT: Duration = Duration::from_secs(90);
/// Largest `make_join` answer.
const MAKE_JOIN_MAX_BYTES: usize = 256 * 1024;

/// The room versions this server joins (and creates): 1 to 12.
pub fn supported_versions() -> Vec<RoomVersionId> {
    use RoomVersionId as V;
    vec![
        V::V1,
        V::V2,
        V::V3,
        V::V4,
        V::V5,
        V::V6,
        V::V7,
        V::V8,
        V::V9,
        V::V10,
        V::V11,
        V::V12,
    ]
}

/// A local user's join of a room through other servers.
pub struct RemoteJoin<'a> {
    pub room_id: &'a RoomId,
    pub user_id: &'a UserId,
    /// Extra content of the join (`displayname`, `avatar_url`, `reason`).
    pub content: Map<String, Value>,
    /// Resident servers to try, in order (the `via`/`server_name` parameters, an alias'
    /// servers, an inviter's server...); see [`candidates`] for the rest added here.
    pub servers: Vec<OwnedServerName>,
}

/// The servers to try, in order: those given, then the servers of the room's members this
/// server knows of (a room it was in), then the room id's server (room versions before 12).
/// Each once, this server left out, at most [`MAX_ATTEMPTS`].
pub fn candidates(
    services: &Services,
    room_id: &RoomId,
    given: &[OwnedServerName],
) -> Result<Vec<OwnedServerName>> {
    let own = services.rooms.server_name();
    let mut out: Vec<OwnedServerName> = Vec::new();
    let mut push = |server: &ServerName| {
        if server != own && !out.iter().any(|s| s == server) && out.len() < MAX_ATTEMPTS {
            out.push(server.to_owned());
        }
    };
    for server in given {
        push(server);
    }
    if let Some(room) = services.rooms.room(room_id)? {
        for (user, membership) in services.rooms.members(room.sid)? {
            if membership == "join" {
                if let Ok(user) = UserId::parse(user) {
                    push(user.server_name());
                }
            }
        }
    }
    if let Some(server) = room_id.server_name() {
        push(server);
    }
    Ok(out)
}

/// Why one resident could not be used.
enum Attempt {
    /// It answered with a Matrix error about the join itself.
    Refused(Error),
    /// Unreachable, or its answer was broken or failed a check.
    Failed(String),
}

/// Joins `join.user_id` to a room this server is not in (see the module doc).
pub async fn join_remote(services: &Services, join: RemoteJoin<'_>) -> Result<()> {
    let servers = candidates(services, join.room_id, &join.servers)?;
    if servers.is_empty() {
        return Err(Error::not_found(
            "This server is not in the room and knows no server to join it through",
        ));
    }
    let mut refusal: Option<Error> = None;
    let mut failures = Vec::new();
    for server in &servers {
        match try_join(services, &join, server).await {
            Ok(()) => return Ok(()),
            Err(Attempt::Refused(e)) => {
                log::info!("join of {} via {server} refused: {e}", join.room_id);
                refusal.get_or_insert(e);
            }
            Err(Attempt::Failed(why)) => {
                log::info!("join of {} via {server} failed: {why}", join.room_id);
                failures.push(format!("{server}: {why}"));
            }
        }
    }
    Err(refusal.unwrap_or_else(|| {
        Error::new(
            StatusCode::BAD_GATEWAY,
            "M_UNKNOWN",
            format!("No server could join the room: {}", failures.join("; ")),
        )
    }))
}

/// A remote error as the client should see it.
fn refusal_of(e: FedError) -> Attempt {
    match e {
        FedError::Remote {
            status,
            errcode,
            error,
        } if status.is_client_error()
            && !matches!(
                errcode.as_str(),
                "M_INVALID_PARAM" | "M_MISSING_PARAM" | "M_UNRECOGNIZED" | "M_UNAUTHORIZED"
            ) =>
        {
            let errcode: &'static str = match errcode.as_str() {
                "M_FORBIDDEN" => "M_FORBIDDEN",
                "M_NOT_FOUND" => "M_NOT_FOUND",
                "M_INCOMPATIBLE_ROOM_VERSION" => "M_INCOMPATIBLE_ROOM_VERSION",
                "M_UNABLE_TO_AUTHORISE_JOIN" => "M_UNABLE_TO_AUTHORISE_JOIN",
                "M_UNABLE_TO_GRANT_JOIN" => "M_UNABLE_TO_GRANT_JOIN",
                "M_LIMIT_EXCEEDED" => "M_LIMIT_EXCEEDED",
                _ => "M_UNKNOWN",
            };
            Attempt::Refused(Error::new(status, errcode, error))
        }
        e => Attempt::Failed(e.to_string()),
    }
}

fn failed(e: impl std::fmt::Display) -> Attempt {
    Attempt::Failed(e.to_string())
}

/// One resident: make_join, build and sign, send_join, check, store.
async fn try_join(
    services: &Services,
    join: &RemoteJoin<'_>,
    server: &ServerName,
) -> std::result::Result<(), Attempt> {
    let mut request =
        prepare_join_event::v1::Request::new(join.room_id.to_owned(), join.user_id.to_owned());
    request.ver = supported_versions();
    let made = services
        .federation
        .send_with_limits(server, request, MAKE_JOIN_TIMEOUT, MAKE_JOIN_MAX_BYTES)
        .await
        .map_err(refusal_of)?;
    let version = made.room_version.unwrap_or(RoomVersionId::V1);
    let rules = version
        .rules()
        .filter(|_| supported_versions().contains(&version))
        .ok_or_else(|| failed(format!("unsupported room version {version}")))?;
    let (event_id, object) = super::fill::sign_member_template(
        services,
        &made.event,
        &rules,
        join.room_id,
        join.user_id,
        "join",
        &join.content,
    )
    .map_err(failed)?;
    let raw = raw_object(&object).map_err(failed)?;
    // From here on the resident may send the room's events: held until the join is stored.
    let hold = services.pdus.hold_room(join.room_id, &rules);
    let mut request =
        create_join_event::v2::Request::new(join.room_id.to_owned(), event_id.clone(), raw);
    // Partial state (`partial.rs`): the member events come later, in the background.
    request.omit_members = services.config.federation.partial_state_joins;
    let answer = services
        .federation
        .send_with_limits(
            server,
            request,
            SEND_JOIN_TIMEOUT,
            super::super::client::MAX_RESPONSE_BYTES,
        )
        .await
        .map_err(refusal_of)?;
    let partial = super::partial::partial_of(&answer.room_state, server, &event_id);
    let mut joined = check_answer(
        services,
        join.room_id,
        &version,
        &rules,
        (event_id, object),
        answer.room_state,
    )
    .await
    .map_err(failed)?;
    joined.partial = partial;
    let is_partial = joined.partial.is_some();
    let started = std::time::Instant::now();
    // Another local user's join may have got here first: then this one is one more event of
    // the room (checked again under the room lock by `store_joined_room`).
    if services
        .rooms
        .is_resident(join.room_id)
        .map_err(Attempt::Refused)?
    {
        add_to_joined_room(services, join.room_id, joined.join).await?;
        hold.release().await;
        return Ok(());
    }
    let join_event = joined.join.clone();
    match services.rooms.store_joined_room(joined).await {
        Ok(_) => {}
        Err(e) if e.status == StatusCode::CONFLICT => {
            add_to_joined_room(services, join.room_id, join_event).await?;
            hold.release().await;
            return Ok(());
        }
        Err(e) => return Err(Attempt::Refused(e)),
    }
    log::info!(
        "{} joined {} via {server} (stored in {:?}, partial state: {is_partial})",
        join.user_id,
        join.room_id,
        started.elapsed()
    );
    if is_partial {
        services.partial_sync.start(join.room_id);
    }
    // What the resident sent meanwhile, now that the room is here.
    hold.release().await;
    Ok(())
}

/// Stores the join as an event of a room this server is in by now (see [`try_join`]).
async fn add_to_joined_room(
    services: &Services,
    room_id: &RoomId,
    (pdu, object): (Pdu, CanonicalJsonObject),
) -> std::result::Result<(), Attempt> {
    let own = services.rooms.server_name().to_owned();
    let outcome = services
        .pdus
        .receive_direct(room_id, &own, pdu.event_id.clone(), pdu, object)
        .await
        .map_err(Attempt::Refused)?;
    match outcome {
        super::super::pdus::Direct::Refused(reason) => Err(Attempt::Failed(reason)),
        _ => Ok(()),
    }
}

/// A local user's join (`/join`): through this server when it is in the room (a local user
/// is joined), else over federation through `servers` (and the others [`candidates`] adds).
/// The invites of other servers add their inviter's server to `servers`.
pub async fn join_room(
    services: &Services,
    room_id: &RoomId,
    user_id: &UserId,
    reason: Option<&str>,
    profile: Map<String, Value>,
    servers: Vec<OwnedServerName>,
) -> Result<()> {
    if services.rooms.is_resident(room_id)? {
        return services
            .rooms
            .join_room(room_id, user_id, reason, profile)
            .await;
    }
    let mut content = profile;
    if let Some(reason) = reason.filter(|r| !r.is_empty()) {
        content.insert("reason".into(), Value::from(reason));
    }
    // An invite (or knock) from another server names the servers to go through.
    let mut servers = servers;
    if let Some(invite) = services.rooms.remote_membership(user_id, room_id)? {
        servers.extend(
            invite
                .servers
                .iter()
                .filter_map(|s| ServerName::parse(s).ok()),
        );
    }
    join_remote(
        services,
        RemoteJoin {
            room_id,
            user_id,
            content,
            servers,
        },
    )
    .await
}
