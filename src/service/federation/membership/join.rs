//! Joining a room this server is not in, as the joining server (spec: server-server API,
//! "Joining Rooms"): `make_join` then `send_join` (v2) at a resident server, each candidate in
//! turn (at most [`MAX_ATTEMPTS`], each request bounded in time), then every event of the
//! answer is checked before anything is stored:
//! - each event of `state` and `auth_chain`: its format for the room version, its id, the
//!   signatures its room version requires (keys from the keyring, valid at the event's time
//!   from room version 5), its content hash (a
//!   mismatch means its redacted form is used, as for any received PDU);
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
//! Not built: partial-state joins (`omit_members` is never asked for here).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use http::StatusCode;
use ruma::{
    api::federation::membership::{create_join_event, prepare_join_event},
    canonical_json::to_canonical_value,
    events::StateEventType,
    room_version_rules::{EventIdFormatVersion, RoomVersionRules},
    signatures::{hash_and_sign_event, reference_hash, PublicKeyMap},
    state_res::{check_state_dependent_auth_rules, check_state_independent_auth_rules},
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedServerName, RoomId, RoomVersionId, ServerName, UserId,
};
use serde_json::{value::RawValue as RawJsonValue, Map, Value};

use super::super::{client::FedError, keyring::KeyValidity, pdus::checks};
use crate::{
    error::{Error, Result},
    service::{
        rooms::{build::joined::JoinedRoom, Pdu},
        users::now_ms,
        Services,
    },
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
    let (event_id, object) = build_join(services, join, &made.event, &rules)?;
    let raw = raw_object(&object).map_err(failed)?;
    let request =
        create_join_event::v2::Request::new(join.room_id.to_owned(), event_id.clone(), raw);
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
    let joined = check_answer(
        services,
        join.room_id,
        &version,
        &rules,
        (event_id, object),
        answer.room_state,
    )
    .await
    .map_err(failed)?;
    let started = std::time::Instant::now();
    // Another local user's join may have got here first: then this one is one more event of
    // the room (checked again under the room lock by `store_joined_room`).
    if services
        .rooms
        .is_resident(join.room_id)
        .map_err(Attempt::Refused)?
    {
        return add_to_joined_room(services, join.room_id, joined.join).await;
    }
    let join_event = joined.join.clone();
    match services.rooms.store_joined_room(joined).await {
        Ok(_) => {}
        Err(e) if e.status == StatusCode::CONFLICT => {
            return add_to_joined_room(services, join.room_id, join_event).await;
        }
        Err(e) => return Err(Attempt::Refused(e)),
    }
    log::info!(
        "{} joined {} via {server} (stored in {:?})",
        join.user_id,
        join.room_id,
        started.elapsed()
    );
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

fn raw_object(object: &CanonicalJsonObject) -> Result<Box<RawJsonValue>> {
    let text = serde_json::to_string(object).map_err(|e| Error::unknown(e.to_string()))?;
    RawJsonValue::from_string(text).map_err(|e| Error::unknown(e.to_string()))
}

/// The join event from the resident's template: our origin and time, the user's content,
/// hashed and signed by this server. Returns its id and the signed object.
fn build_join(
    services: &Services,
    join: &RemoteJoin<'_>,
    template: &RawJsonValue,
    rules: &RoomVersionRules,
) -> std::result::Result<(OwnedEventId, CanonicalJsonObject), Attempt> {
    let mut value: Value =
        serde_json::from_str(template.get()).map_err(|e| failed(format!("bad template: {e}")))?;
    let Some(map) = value.as_object_mut() else {
        return Err(failed("the template is not an object"));
    };
    let own = services.rooms.server_name();
    let field = |map: &Map<String, Value>, key: &str| {
        map.get(key).and_then(Value::as_str).map(str::to_owned)
    };
    if field(map, "type").as_deref() != Some("m.room.member")
        || field(map, "sender").as_deref() != Some(join.user_id.as_str())
        || field(map, "state_key").as_deref() != Some(join.user_id.as_str())
        || field(map, "room_id").as_deref() != Some(join.room_id.as_str())
        || map
            .get("content")
            .and_then(|c| c.get("membership"))
            .and_then(Value::as_str)
            != Some("join")
    {
        return Err(failed(
            "the template is not a join of this user to this room",
        ));
    }
    for key in ["signatures", "hashes", "unsigned", "event_id"] {
        map.remove(key);
    }
    map.insert("origin".into(), Value::String(own.to_string()));
    map.insert("origin_server_ts".into(), Value::from(now_ms()));
    let content = map
        .get_mut("content")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| failed("the template has no content"))?;
    let authoriser = content.get("join_authorised_via_users_server").cloned();
    content.clear();
    content.insert("membership".into(), Value::from("join"));
    for (key, value) in &join.content {
        content.insert(key.clone(), value.clone());
    }
    if let Some(authoriser) = authoriser {
        content.insert("join_authorised_via_users_server".into(), authoriser);
    }
    if rules.event_id_format == EventIdFormatVersion::V1 {
        map.insert(
            "event_id".into(),
            Value::String(EventId::new_v1(own).to_string()),
        );
    }
    let CanonicalJsonValue::Object(mut object) =
        to_canonical_value(value).map_err(|e| failed(format!("bad template: {e}")))?
    else {
        return Err(failed("the template is not an object"));
    };
    hash_and_sign_event(
        own.as_str(),
        &services.keys.keypair,
        &mut object,
        &rules.redaction,
    )
    .map_err(|e| failed(format!("cannot sign the join: {e}")))?;
    let event_id = match rules.event_id_format {
        EventIdFormatVersion::V1 => checks::event_id(&object, rules).map_err(failed)?,
        _ => {
            let hash = reference_hash(&object, rules).map_err(failed)?;
            EventId::parse(format!("${hash}")).map_err(failed)?
        }
    };
    Ok((event_id, object))
}

/// An event of the answer, parsed (not yet verified).
struct Received {
    event_id: OwnedEventId,
    object: CanonicalJsonObject,
    /// From room version 5: the keys valid at the event's `origin_server_ts`.
    keys: Option<PublicKeyMap>,
}

fn parse_event(
    raw: &RawJsonValue,
    rules: &RoomVersionRules,
    room_id: &RoomId,
) -> std::result::Result<Received, String> {
    let object = checks::parse(raw)?;
    let event_id = checks::event_id(&object, rules)?;
    checks::check_format(&object, rules).map_err(|e| format!("{event_id}: {e}"))?;
    match object.get("room_id") {
        Some(CanonicalJsonValue::String(id)) if id == room_id.as_str() => {}
        // From v12 the create event has no room id: its id names the room.
        None if rules.authorization.room_create_event_id_as_room_id
            && room_id.strip_sigil() == &event_id.as_str()[1..] => {}
        _ => return Err(format!("{event_id} is not an event of {room_id}")),
    }
    Ok(Received {
        event_id,
        object,
        keys: None,
    })
}

/// Checks the `send_join` answer (see the module doc) and returns the room to store.
async fn check_answer(
    services: &Services,
    room_id: &RoomId,
    version: &RoomVersionId,
    rules: &RoomVersionRules,
    (join_id, own_join): (OwnedEventId, CanonicalJsonObject),
    answer: create_join_event::v2::RoomState,
) -> std::result::Result<JoinedRoom, String> {
    // This server does not ask for a partial state, and cannot use one.
    if answer.members_omitted {
        return Err("the resident left members out of the state unasked".into());
    }
    // The join as the resident has it: ours, or ours with the authoriser's signature added.
    let join_object = match &answer.event {
        Some(raw) => {
            let returned = checks::parse(raw)?;
            let returned_id = checks::event_id(&returned, rules)?;
            if returned_id != join_id {
                return Err(format!(
                    "the resident returned another join event ({returned_id})"
                ));
            }
            returned
        }
        None => own_join,
    };
    let mut state = Vec::with_capacity(answer.state.len());
    for raw in &answer.state {
        state.push(parse_event(raw, rules, room_id)?);
    }
    let mut chain = Vec::with_capacity(answer.auth_chain.len());
    for raw in &answer.auth_chain {
        chain.push(parse_event(raw, rules, room_id)?);
    }

    // Every key any of them needs, fetched at once (so that a server's keys are fetched
    // once); then, from room version 5, each event's signatures must be by keys valid at its
    // `origin_server_ts` (read from the keyring's cache, filled by the first lookup).
    let mut wanted: BTreeMap<OwnedServerName, Vec<String>> = BTreeMap::new();
    let join_wanted = checks::wanted_keys(&join_object, rules)?;
    for event in state.iter().chain(&chain) {
        let needed = checks::wanted_keys(&event.object, rules)
            .map_err(|e| format!("{}: {e}", event.event_id))?;
        merge_wanted(&mut wanted, needed);
    }
    merge_wanted(&mut wanted, join_wanted);
    let keys = services
        .keyring
        .public_key_map_with(
            &wanted,
            MilliSecondsSinceUnixEpoch::now(),
            KeyValidity::Ignored,
        )
        .await
        .map_err(|e| format!("cannot get signing keys: {e}"))?;
    if rules.enforce_key_validity {
        valid_keys(services, rules, state.iter_mut().chain(chain.iter_mut())).await?;
    }

    // The CPU-heavy part (signatures, hashes, the rules) off the async workers.
    let room_id = room_id.to_owned();
    let version = version.clone();
    let rules = rules.clone();
    tokio::task::spawn_blocking(move || {
        verify_and_authorise(
            keys,
            &room_id,
            &version,
            &rules,
            join_id,
            join_object,
            state,
            chain,
        )
    })
    .await
    .map_err(|e| format!("verification task failed: {e}"))?
}

/// Sets each event's keys to those valid at its `origin_server_ts`. A key's validity has an
/// end and no start, so the keys valid at the latest time of the events that need the same
/// keys serve them all: one lookup per such group, per event only when a key has expired
/// within the group's span.
async fn valid_keys(
    services: &Services,
    rules: &RoomVersionRules,
    events: impl Iterator<Item = &mut Received>,
) -> std::result::Result<(), String> {
    type Wanted = BTreeMap<OwnedServerName, Vec<String>>;
    let mut groups: BTreeMap<Wanted, Vec<(&mut Received, MilliSecondsSinceUnixEpoch)>> =
        BTreeMap::new();
    for event in events {
        let needed = checks::wanted_keys(&event.object, rules)?;
        let (valid_at, _) = checks::key_validity(&event.object, rules);
        groups.entry(needed).or_default().push((event, valid_at));
    }
    let lookup = |wanted: &Wanted, at: MilliSecondsSinceUnixEpoch| {
        let keyring = services.keyring.clone();
        let wanted = wanted.clone();
        async move {
            keyring
                .public_key_map_with(&wanted, at, KeyValidity::Enforced)
                .await
                .map_err(|e| format!("cannot get signing keys: {e}"))
        }
    };
    for (wanted, members) in groups {
        let Some(latest) = members.iter().map(|(_, at)| *at).max() else {
            continue;
        };
        let keys = lookup(&wanted, latest).await?;
        let complete = wanted.iter().all(|(server, ids)| {
            keys.get(server.as_str())
                .is_some_and(|found| ids.iter().all(|id| found.contains_key(id)))
        });
        for (event, at) in members {
            event.keys = Some(if complete {
                keys.clone()
            } else {
                lookup(&wanted, at).await?
            });
        }
    }
    Ok(())
}

fn merge_wanted(
    into: &mut BTreeMap<OwnedServerName, Vec<String>>,
    from: BTreeMap<OwnedServerName, Vec<String>>,
) {
    for (server, ids) in from {
        let entry = into.entry(server).or_default();
        for id in ids {
            if !entry.contains(&id) {
                entry.push(id);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn verify_and_authorise(
    keys: PublicKeyMap,
    room_id: &RoomId,
    version: &RoomVersionId,
    rules: &RoomVersionRules,
    join_id: OwnedEventId,
    join_object: CanonicalJsonObject,
    state: Vec<Received>,
    chain: Vec<Received>,
) -> std::result::Result<JoinedRoom, String> {
    // Signatures and hashes: a forged event fails the join; a wrong hash means the redacted
    // form is what counts (as for any received PDU).
    let mut events: HashMap<OwnedEventId, (Pdu, CanonicalJsonObject)> = HashMap::new();
    let mut state_ids = Vec::with_capacity(state.len());
    let mut chain_ids = Vec::with_capacity(chain.len());
    for (event, is_state) in state
        .into_iter()
        .map(|e| (e, true))
        .chain(chain.into_iter().map(|e| (e, false)))
    {
        if is_state {
            state_ids.push(event.event_id.clone());
        } else {
            chain_ids.push(event.event_id.clone());
        }
        if events.contains_key(&event.event_id) {
            continue;
        }
        let event_keys = event.keys.as_ref().unwrap_or(&keys);
        let (object, _redacted) = checks::verify(event_keys, event.object, rules)
            .map_err(|e| format!("{}: {e}", event.event_id))?;
        let pdu = Pdu::from_object(event.event_id.clone(), &object)?;
        events.insert(event.event_id, (pdu, object));
    }
    let (join_object, redacted) =
        checks::verify(&keys, join_object, rules).map_err(|e| format!("the join event: {e}"))?;
    if redacted {
        return Err("the join event's content hash does not match".into());
    }
    let join_pdu = Pdu::from_object(join_id.clone(), &join_object)?;

    // The auth chain and the state, each event against its own auth events, in an order
    // where auth events come first.
    let order = auth_order(&events)?;
    for id in &order {
        let (pdu, _) = &events[id];
        authorise(rules, pdu, |id| events.get(id).map(|(p, _)| p.clone()))
            .map_err(|e| format!("{id} is not authorised by its auth events: {e}"))?;
    }

    // The state: one event per key, with the create event.
    let mut by_key: HashMap<(String, String), &Pdu> = HashMap::new();
    for id in &state_ids {
        let (pdu, _) = &events[id];
        let key = pdu
            .state_key
            .clone()
            .ok_or_else(|| format!("{id} in the state is not a state event"))?;
        if by_key.insert((pdu.kind.to_string(), key), pdu).is_some() {
            return Err(format!("the state has two events for the key of {id}"));
        }
    }
    let create = by_key
        .get(&("m.room.create".to_owned(), String::new()))
        .ok_or("the state has no create event")?;
    if rules.authorization.room_create_event_id_as_room_id
        && &create.event_id.as_str()[1..] != room_id.strip_sigil()
    {
        return Err("the create event does not name this room".into());
    }
    let create_version = create
        .content_as::<Value>()
        .and_then(|c| {
            c.get("room_version")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "1".to_owned());
    if create_version != version.as_str() {
        return Err(format!(
            "the create event says room version {create_version}, the resident {version}"
        ));
    }

    // The join: against its auth events, and against the state.
    authorise(rules, &join_pdu, |id| {
        events.get(id).map(|(p, _)| p.clone())
    })
    .map_err(|e| format!("the join is not authorised by its auth events: {e}"))?;
    check_state_dependent_auth_rules(&rules.authorization, &join_pdu, |kind, key| {
        by_key
            .get(&(kind.to_string(), key.to_owned()))
            .map(|p| (*p).clone())
    })
    .map_err(|e| format!("the join is not authorised by the state: {e}"))?;

    let take = |ids: &[OwnedEventId]| -> Vec<(Pdu, CanonicalJsonObject)> {
        let mut seen = HashSet::new();
        ids.iter()
            .filter(|id| seen.insert((*id).clone()))
            .filter_map(|id| events.get(id).cloned())
            .collect()
    };
    Ok(JoinedRoom {
        room_id: room_id.to_owned(),
        version: version.clone(),
        auth_chain: take(&order),
        state: take(&state_ids),
        join: (join_pdu, join_object),
    })
}

/// Runs the authorisation rules on `pdu` against its own auth events (looked up with
/// `lookup`): the state-independent rules, then the state-dependent ones with the auth events
/// as the state.
fn authorise(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    lookup: impl Fn(&EventId) -> Option<Pdu>,
) -> std::result::Result<(), String> {
    let mut auth = Vec::new();
    for id in &pdu.auth_events {
        auth.push(lookup(id).ok_or_else(|| format!("auth event {id} is missing"))?);
    }
    // From v12 the create event is cited by the room id, not in auth_events.
    if rules.authorization.room_create_event_id_as_room_id {
        if let Some(room_id) = &pdu.room_id {
            if let Ok(id) = EventId::parse(format!("${}", room_id.strip_sigil())) {
                if !pdu.auth_events.contains(&id) {
                    if let Some(create) = lookup(&id) {
                        auth.push(create);
                    }
                }
            }
        }
    }
    let by_id: HashMap<OwnedEventId, Pdu> = auth
        .iter()
        .map(|p| (p.event_id.clone(), p.clone()))
        .collect();
    check_state_independent_auth_rules(&rules.authorization, pdu, |id| by_id.get(id).cloned())
        .map_err(|e| e.to_string())?;
    let by_key: HashMap<(String, String), &Pdu> = auth
        .iter()
        .filter_map(|p| Some(((p.kind.to_string(), p.state_key.clone()?), p)))
        .collect();
    check_state_dependent_auth_rules(&rules.authorization, pdu, |kind: &StateEventType, key| {
        by_key
            .get(&(kind.to_string(), key.to_owned()))
            .map(|p| (*p).clone())
    })
    .map_err(|e| e.to_string())
}

/// The events in an order where each comes after its auth events (Kahn's algorithm, ties by
/// depth). A cycle — only a forged set can have one — fails.
fn auth_order(
    events: &HashMap<OwnedEventId, (Pdu, CanonicalJsonObject)>,
) -> std::result::Result<Vec<OwnedEventId>, String> {
    let mut waiting: HashMap<&EventId, usize> = HashMap::new();
    let mut dependents: HashMap<&EventId, Vec<&EventId>> = HashMap::new();
    for (id, (pdu, _)) in events {
        let cited: HashSet<&EventId> = pdu
            .auth_events
            .iter()
            .map(|a| &**a)
            .filter(|a| events.contains_key(*a) && *a != &**id)
            .collect();
        waiting.insert(id, cited.len());
        for a in cited {
            dependents.entry(a).or_default().push(id);
        }
    }
    let mut ready: std::collections::BTreeSet<(u64, &EventId)> = waiting
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(id, _)| (events[*id].0.depth, *id))
        .collect();
    let mut order = Vec::with_capacity(events.len());
    while let Some((_, id)) = ready.pop_first() {
        order.push(id.to_owned());
        for d in dependents.get(id).into_iter().flatten() {
            let n = waiting.get_mut(d).expect("every event has a count");
            *n -= 1;
            if *n == 0 {
                ready.insert((events[*d].0.depth, d));
            }
        }
    }
    if order.len() != events.len() {
        return Err("the auth events of the answer form a cycle".into());
    }
    Ok(order)
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
