//! The checks of a `send_join` answer before anything of it is stored (see `join.rs` for
//! the list): every event's format, id, signatures (keys valid at its time from room version
//! 5) and hash; the auth chain and the state authorised in topological order of their auth
//! events; the state's shape; the join against its auth events and the state; the resident's
//! signature on a restricted join it vouched for.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use ruma::{
    api::federation::membership::create_join_event,
    events::StateEventType,
    room_version_rules::RoomVersionRules,
    signatures::PublicKeyMap,
    state_res::{check_state_dependent_auth_rules, check_state_independent_auth_rules},
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedServerName, RoomId, RoomVersionId,
};
use serde_json::{value::RawValue as RawJsonValue, Value};

use super::super::{keyring::KeyValidity, pdus::checks};
use crate::service::{
    rooms::{build::joined::JoinedRoom, Pdu},
    Services,
};

/// The servers and key ids an event's signatures need (`checks::wanted_keys`).
type Wanted = BTreeMap<OwnedServerName, Vec<String>>;

/// An event of the answer, read once (id, format, room, the keys it needs) and kept as the
/// JSON text the resident sent until its signatures are checked. A parsed canonical JSON
/// object is several times the size of its text (a map node and a string per field), so the
/// answer is never held parsed: each event is parsed again when it is verified and kept
/// after that as its canonical JSON and its `Pdu`.
struct Received {
    event_id: OwnedEventId,
    raw: Box<RawJsonValue>,
    /// From room version 5: the keys valid at the event's `origin_server_ts` (shared by the
    /// events that need the same keys: one map per group, not one per event).
    keys: Option<Arc<PublicKeyMap>>,
}

/// The first reading of an event: its checks that need no keys, the keys its signatures
/// need and the time they must be valid at.
fn read_event(
    raw: Box<RawJsonValue>,
    rules: &RoomVersionRules,
    room_id: &RoomId,
) -> std::result::Result<(Received, Wanted, MilliSecondsSinceUnixEpoch), String> {
    let object = checks::parse(&raw)?;
    let event_id = checks::event_id(&object, rules)?;
    checks::check_format(&object, rules).map_err(|e| format!("{event_id}: {e}"))?;
    match object.get("room_id") {
        Some(CanonicalJsonValue::String(id)) if id == room_id.as_str() => {}
        // From v12 the create event has no room id: its id names the room.
        None if rules.authorization.room_create_event_id_as_room_id
            && room_id.strip_sigil() == &event_id.as_str()[1..] => {}
        _ => return Err(format!("{event_id} is not an event of {room_id}")),
    }
    let wanted = checks::wanted_keys(&object, rules).map_err(|e| format!("{event_id}: {e}"))?;
    let (valid_at, _) = checks::key_validity(&object, rules);
    let event = Received {
        event_id,
        raw,
        keys: None,
    };
    Ok((event, wanted, valid_at))
}

/// Checks the `send_join` answer (see the module doc) and returns the room to store.
pub(super) async fn check_answer(
    services: &Services,
    room_id: &RoomId,
    version: &RoomVersionId,
    rules: &RoomVersionRules,
    (join_id, own_join): (OwnedEventId, CanonicalJsonObject),
    answer: create_join_event::v2::RoomState,
) -> std::result::Result<JoinedRoom, String> {
    // A partial state is only asked for (and usable) with `partial_state_joins`.
    if answer.members_omitted && !services.config.federation.partial_state_joins {
        return Err("the resident left members out of the state unasked".into());
    }
    // The join as the resident has it: ours, or ours with the authoriser's signature added.
    let create_join_event::v2::RoomState {
        event: answer_event,
        state: answer_state,
        auth_chain: answer_chain,
        ..
    } = answer;
    let join_object = match answer_event {
        Some(raw) => {
            let returned = checks::parse(&raw)?;
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
    // Every event read once, the state first. The events that need the same keys form a
    // group (keys valid at the latest time of the group serve them all, `valid_keys`).
    let state_len = answer_state.len();
    let mut events = Vec::with_capacity(state_len + answer_chain.len());
    let mut groups: BTreeMap<Wanted, Vec<(usize, MilliSecondsSinceUnixEpoch)>> = BTreeMap::new();
    for raw in answer_state.into_iter().chain(answer_chain) {
        let (event, wanted, valid_at) = read_event(raw, rules, room_id)?;
        groups
            .entry(wanted)
            .or_default()
            .push((events.len(), valid_at));
        events.push(event);
    }

    // Every key any of them needs, fetched at once (so that a server's keys are fetched
    // once); then, from room version 5, each event's signatures must be by keys valid at its
    // `origin_server_ts` (read from the keyring's cache, filled by the first lookup).
    let mut wanted = checks::wanted_keys(&join_object, rules)?;
    for group in groups.keys() {
        merge_wanted(&mut wanted, group.clone());
    }
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
        valid_keys(services, &mut events, groups).await?;
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
            (join_id, join_object),
            events,
            state_len,
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
    events: &mut [Received],
    groups: BTreeMap<Wanted, Vec<(usize, MilliSecondsSinceUnixEpoch)>>,
) -> std::result::Result<(), String> {
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
        let keys = Arc::new(lookup(&wanted, latest).await?);
        let complete = wanted.iter().all(|(server, ids)| {
            keys.get(server.as_str())
                .is_some_and(|found| ids.iter().all(|id| found.contains_key(id)))
        });
        for (index, at) in members {
            events[index].keys = Some(if complete {
                keys.clone()
            } else {
                Arc::new(lookup(&wanted, at).await?)
            });
        }
    }
    Ok(())
}

/// Steps 2 and 3 for one event: parsed again from its text, its signatures and hash checked
/// (a wrong hash means its redacted form counts), and kept as its canonical JSON and `Pdu`.
/// The parsed object lives only within this call.
fn verify_one(
    keys: &PublicKeyMap,
    event: Received,
    rules: &RoomVersionRules,
) -> std::result::Result<(Pdu, Vec<u8>), String> {
    let Received {
        event_id,
        raw,
        keys: own_keys,
    } = event;
    let object = checks::parse(&raw)?;
    drop(raw);
    let (object, _redacted) = checks::verify(own_keys.as_deref().unwrap_or(keys), object, rules)
        .map_err(|e| format!("{event_id}: {e}"))?;
    let json = serde_json::to_string(&object).map_err(|e| format!("{event_id}: {e}"))?;
    drop(object);
    let pdu = Pdu::from_json(event_id, &json)?;
    Ok((pdu, json.into_bytes()))
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

/// Checks and authorises the events (the state's first: `state_len` of them), consuming
/// them: each is held parsed only while it is verified.
fn verify_and_authorise(
    keys: PublicKeyMap,
    room_id: &RoomId,
    version: &RoomVersionId,
    rules: &RoomVersionRules,
    (join_id, join_object): (OwnedEventId, CanonicalJsonObject),
    received: Vec<Received>,
    state_len: usize,
) -> std::result::Result<JoinedRoom, String> {
    // Signatures and hashes: a forged event fails the join; a wrong hash means the redacted
    // form is what counts (as for any received PDU).
    let mut events: HashMap<OwnedEventId, (Pdu, Vec<u8>)> = HashMap::new();
    let mut state_ids = Vec::with_capacity(state_len);
    for (index, event) in received.into_iter().enumerate() {
        if index < state_len {
            state_ids.push(event.event_id.clone());
        }
        if events.contains_key(&event.event_id) {
            continue;
        }
        let (pdu, json) = verify_one(&keys, event, rules)?;
        events.insert(pdu.event_id.clone(), (pdu, json));
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
        authorise(rules, pdu, |id| events.get(id).map(|(p, _)| p))
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
    authorise(rules, &join_pdu, |id| events.get(id).map(|(p, _)| p))
        .map_err(|e| format!("the join is not authorised by its auth events: {e}"))?;
    check_state_dependent_auth_rules(&rules.authorization, &join_pdu, |kind, key| {
        by_key.get(&(kind.to_string(), key.to_owned())).copied()
    })
    .map_err(|e| format!("the join is not authorised by the state: {e}"))?;
    drop(by_key);

    // Each event moved out once, never copied: the state (one per id), then the rest of the
    // auth chain in authorisation order (an event of both is given once, with the state —
    // the store stages every event of either once).
    let mut state = Vec::with_capacity(state_ids.len());
    for id in &state_ids {
        if let Some(event) = events.remove(id) {
            state.push(event);
        }
    }
    let mut auth_chain = Vec::with_capacity(events.len());
    for id in &order {
        if let Some(event) = events.remove(id) {
            auth_chain.push(event);
        }
    }
    Ok(JoinedRoom {
        room_id: room_id.to_owned(),
        version: version.clone(),
        auth_chain,
        state,
        join: (join_pdu, join_object),
        partial: None,
    })
}

/// Runs the authorisation rules on `pdu` against its own auth events (looked up with
/// `lookup`): the state-independent rules, then the state-dependent ones with the auth events
/// as the state.
fn authorise<'a>(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    lookup: impl Fn(&EventId) -> Option<&'a Pdu>,
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
    // A handful of auth events: borrowed, looked up by a scan (no maps, no copies).
    check_state_independent_auth_rules(&rules.authorization, pdu, |id| {
        auth.iter().copied().find(|p| &*p.event_id == id)
    })
    .map_err(|e| e.to_string())?;
    check_state_dependent_auth_rules(&rules.authorization, pdu, |kind: &StateEventType, key| {
        auth.iter()
            .copied()
            .find(|p| p.state_key.as_deref() == Some(key) && p.kind.to_string() == kind.to_string())
    })
    .map_err(|e| e.to_string())
}

/// The events in an order where each comes after its auth events (Kahn's algorithm, ties by
/// depth). A cycle — only a forged set can have one — fails.
fn auth_order(
    events: &HashMap<OwnedEventId, (Pdu, Vec<u8>)>,
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
