//! Inbound PDUs (server-server API, "Transactions" and "Checks performed on receipt of a
//! PDU"): each PDU of a transaction is checked — format and size limits of its room version,
//! event id, signatures, content hash ([`checks`]), then the authorization rules against its
//! auth events, the state before it and the current state (`rooms::build::remote`) — and
//! stored with its outcome (`schema/federation-events.md`): accepted events take the same
//! timeline path as local events; soft-failed events are stored but never served; rejected
//! events are kept apart, in `rejected_events`; events that fail the format or signature
//! checks are dropped.
//!
//! PDUs of different rooms are processed concurrently and only ever wait for their own room's
//! lock. The PDUs of one room are processed in causal order (what an event cites first, else by
//! `depth`) and staged into one batch under the room's lock, committed once; an event that
//! needs the committed form of one staged before it (a redaction or relation target, the state
//! at a staged event other than the current state) commits the batch first.

pub mod backfill;
pub mod checks;
mod direct;
mod gaps;
mod held;
mod outside;
mod recheck;

pub use direct::Direct;
pub use held::JoinHold;

use std::{collections::BTreeMap, future::Future, pin::Pin, sync::Arc};

use futures_util::future::join_all;
use ruma::{
    room_version_rules::RoomVersionRules, signatures::PublicKeyMap, CanonicalJsonObject,
    CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    OwnedServerName, RoomId, RoomVersionId, ServerName,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue as RawJsonValue;

use crate::{
    error::{Error, Result},
    service::{
        federation::fetch::RemoteEvents,
        rooms::{
            build::{remote::Verdict, Staged},
            outliers::Promotion,
            resolve::StateIds,
            Pdu, Rooms,
        },
        users::now_ms,
    },
    store::{Record, Store},
    table,
};

table!(
    /// `event_id → RejectedEvent`: remote events that failed the authorization rules against
    /// their auth events or the state before them. Never in `event_ids`, so no read path of
    /// the client API can reach them; kept so a resent copy is answered without reprocessing
    /// and events citing them as auth events are rejected in turn.
    pub RejectedEvents: "rejected_events", String => RejectedEvent
);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RejectedEvent {
    pub room_id: String,
    /// Which rule failed, as returned to the sending server.
    pub reason: String,
    pub received_ms: u64,
    /// The canonical JSON as processed (redacted if its content hash did not match).
    pub pdu: Vec<u8>,
}
impl Record for RejectedEvent {}

/// A future returned by [`SigningKeys::public_key_map`].
pub type KeysFuture<'a> = Pin<Box<dyn Future<Output = Result<PublicKeyMap>> + Send + 'a>>;

/// Where the verify keys of other servers come from (the keyring, `services.keyring`).
pub trait SigningKeys: Send + Sync {
    /// The keys of each wanted server (only the key ids listed, all if empty) that are valid at
    /// `valid_at` — when `enforce_validity`; else any key the server published —, as a map
    /// `verify_event` reads. A server whose keys cannot be had is left out (its events then
    /// fail the signature check).
    fn public_key_map<'a>(
        &'a self,
        wanted: &'a BTreeMap<OwnedServerName, Vec<String>>,
        valid_at: MilliSecondsSinceUnixEpoch,
        enforce_validity: bool,
    ) -> KeysFuture<'a>;
}

impl SigningKeys for super::keyring::KeyRing {
    fn public_key_map<'a>(
        &'a self,
        wanted: &'a BTreeMap<OwnedServerName, Vec<String>>,
        valid_at: MilliSecondsSinceUnixEpoch,
        enforce_validity: bool,
    ) -> KeysFuture<'a> {
        use super::keyring::KeyValidity;
        let validity = if enforce_validity {
            KeyValidity::Enforced
        } else {
            KeyValidity::Ignored
        };
        Box::pin(self.public_key_map_with(wanted, valid_at, validity))
    }
}

/// The outcome for each PDU of a transaction, as the `/send` response reports it.
pub type PduResults = BTreeMap<OwnedEventId, Result<(), String>>;

/// The events in an order where each comes after those of the same transaction it cites as
/// prev or auth events, and otherwise by `depth` (a sender's depths may be wrong; the
/// references are what the checks need).
fn causal_order(mut events: Vec<Prepared>) -> Vec<Prepared> {
    events.sort_by_key(|e| e.pdu.depth);
    let index: std::collections::HashMap<OwnedEventId, usize> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.event_id.clone(), i))
        .collect();
    // Kahn's algorithm, taking the ready event of least (depth, position) each time.
    let mut waiting_on = vec![0usize; events.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); events.len()];
    for (i, event) in events.iter().enumerate() {
        let cited: std::collections::BTreeSet<usize> = event
            .pdu
            .prev_events
            .iter()
            .chain(&event.pdu.auth_events)
            .filter_map(|id| index.get(id).copied())
            .filter(|&j| j != i)
            .collect();
        waiting_on[i] = cited.len();
        for j in cited {
            dependents[j].push(i);
        }
    }
    let mut ready: std::collections::BTreeSet<usize> =
        (0..events.len()).filter(|&i| waiting_on[i] == 0).collect();
    let mut order = Vec::with_capacity(events.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &d in &dependents[i] {
            waiting_on[d] -= 1;
            if waiting_on[d] == 0 {
                ready.insert(d);
            }
        }
    }
    // A cycle (only a forged set of events can have one): the rest by depth.
    let placed: std::collections::HashSet<usize> = order.iter().copied().collect();
    order.extend((0..events.len()).filter(|i| !placed.contains(i)));
    let mut slots: Vec<Option<Prepared>> = events.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// What [`Pdus::judge`] made of an event.
enum Judged {
    /// Staged into the batch: the outcome stands once it commits.
    Staged(std::result::Result<(), String>),
    /// Nothing staged: the outcome stands as it is.
    Final(std::result::Result<(), String>),
    /// It needs the events staged before it committed first.
    CommitFirst,
}

/// What [`Pdus::prepare`] made of a PDU.
enum Ready {
    /// Checked, to be judged in its room.
    Room(OwnedRoomId, Box<Prepared>),
    /// A member event for a room this server is not in, recorded (`outside`).
    Outside(OwnedEventId),
}

/// A PDU that passed the state-independent checks, ready for its room.
struct Prepared {
    event_id: OwnedEventId,
    pdu: Pdu,
    object: CanonicalJsonObject,
    /// For an event with prev events unknown here: the state before it as its origin gave it
    /// (`gaps.rs`), empty otherwise.
    fetched_state: Vec<StateIds>,
}

pub struct Pdus {
    store: Store,
    rooms: Arc<Rooms>,
    keys: Arc<dyn SigningKeys>,
    /// Where missing events are fetched from; without it, nothing is fetched.
    remote: Option<Arc<dyn RemoteEvents>>,
    /// When a backfill of a room (its start, or a hole) last brought nothing (`backfill.rs`),
    /// so that paging there in a room whose servers do not answer does not wait for them on
    /// every page.
    backfill_misses:
        std::sync::Mutex<std::collections::HashMap<backfill::MissKey, std::time::Instant>>,
    /// Rooms being joined and the PDUs held for them (`held.rs`).
    joins: held::Joins,
}

impl Pdus {
    pub fn new(store: Store, rooms: Arc<Rooms>, keys: Arc<dyn SigningKeys>) -> Self {
        Self {
            store,
            rooms,
            keys,
            remote: None,
            backfill_misses: Default::default(),
            joins: Default::default(),
        }
    }

    /// Fetches the prev events, auth events and state that received PDUs lack from `remote`
    /// (see `gaps.rs`).
    pub fn with_remote(mut self, remote: Arc<dyn RemoteEvents>) -> Self {
        self.remote = Some(remote);
        self
    }

    /// Checks and stores the PDUs of a transaction from `origin`. Every PDU whose event id
    /// can be computed has an entry: `Ok` when it is stored as accepted or soft-failed (or was
    /// already), else why not.
    pub async fn receive_pdus(
        &self,
        origin: &ServerName,
        pdus: &[Box<RawJsonValue>],
    ) -> PduResults {
        let mut results = PduResults::new();
        let mut by_room: BTreeMap<OwnedRoomId, Vec<Prepared>> = BTreeMap::new();
        for raw in pdus {
            // A room being joined: held until the join is stored (`held.rs`).
            match self.hold(origin, raw) {
                Some(Ok(event_id)) => {
                    results.insert(event_id, Ok(()));
                    continue;
                }
                Some(Err(error)) => {
                    log::info!("PDU without an event id from {origin} dropped: {error}");
                    continue;
                }
                None => {}
            }
            match self.prepare(origin, raw).await {
                Ok(Ready::Room(room_id, prepared)) => {
                    by_room.entry(room_id).or_default().push(*prepared)
                }
                Ok(Ready::Outside(event_id)) => {
                    results.insert(event_id, Ok(()));
                }
                Err((Some(event_id), error)) => {
                    log::info!("PDU {event_id} from {origin} dropped: {error}");
                    results.insert(event_id, Err(error));
                }
                Err((None, error)) => {
                    log::info!("PDU without an event id from {origin} dropped: {error}");
                }
            }
        }
        let rooms = by_room
            .into_iter()
            .map(|(room_id, events)| self.receive_in_room(origin, room_id, events));
        for room_results in join_all(rooms).await {
            results.extend(room_results);
        }
        results
    }

    /// Steps 1 to 3 (see [`checks`]) and the room checks that need no lock: the room is known
    /// here, and `origin` is not denied by its server ACL.
    async fn prepare(
        &self,
        origin: &ServerName,
        raw: &RawJsonValue,
    ) -> std::result::Result<Ready, (Option<OwnedEventId>, String)> {
        let object = checks::parse(raw).map_err(|e| (None, e))?;
        let room_id = match object.get("room_id") {
            Some(CanonicalJsonValue::String(id)) => RoomId::parse(id).ok(),
            _ => None,
        };
        let room = match &room_id {
            Some(room_id) => self
                .rooms
                .room(room_id)
                .map_err(|e| (None, e.to_string()))?,
            None => None,
        };
        if let Some(room_id) = &room_id {
            // A member event about a local user's remote invite or knock (a rescinded
            // invite, a refused knock) is all this server takes of a room it is not in.
            let known = room.is_some();
            if let Some(outcome) = self.outside_room(origin, &object, room_id, known).await {
                return outcome.map(Ready::Outside);
            }
        }
        let Some((room_id, room)) = room_id.zip(room) else {
            // The room version is unknown, so the id can only be a best guess: the one the
            // room versions in use today (3 and later) would give.
            let guess = checks::event_id(&object, &RoomVersionId::V11.rules().expect("known"));
            return Err((
                guess.ok(),
                "the room is not known to this server".to_owned(),
            ));
        };
        let version = self
            .rooms
            .room_version(&room)
            .map_err(|e| (None, e.to_string()))?;
        let rules: RoomVersionRules = version
            .rules()
            .ok_or_else(|| (None, format!("room version {version} is not supported")))?;
        let event_id = checks::event_id(&object, &rules).map_err(|e| (None, e))?;
        let fail = |e: String| (Some(event_id.clone()), e);
        checks::check_format(&object, &rules).map_err(fail)?;
        if !super::acl::allows(&self.rooms, &room_id, origin).map_err(|e| fail(e.to_string()))? {
            return Err(fail(format!("{origin} is denied by the room's server ACL")));
        }
        let wanted = checks::wanted_keys(&object, &rules).map_err(fail)?;
        let (valid_at, enforce) = checks::key_validity(&object, &rules);
        let keys = self
            .keys
            .public_key_map(&wanted, valid_at, enforce)
            .await
            .map_err(|e| fail(format!("cannot get the signing keys: {e}")))?;
        let (object, redacted) = checks::verify(&keys, object, &rules).map_err(fail)?;
        if redacted {
            log::info!("PDU {event_id} has a wrong content hash: processed redacted");
        }
        let pdu = Pdu::from_object(event_id.clone(), &object).map_err(fail)?;
        Ok(Ready::Room(
            room_id,
            Box::new(Prepared {
                event_id,
                pdu,
                object,
                fetched_state: Vec::new(),
            }),
        ))
    }

    /// Processes one room's PDUs in causal order (so that a join is stored before the
    /// messages that follow it in the same transaction), staging as many as possible into one
    /// batch under the room's lock: one durable commit for a run of events that follow each
    /// other, more only where an event needs the committed form of one staged before it.
    async fn receive_in_room(
        &self,
        origin: &ServerName,
        room_id: OwnedRoomId,
        events: Vec<Prepared>,
    ) -> PduResults {
        let received: std::collections::HashSet<OwnedEventId> =
            events.iter().map(|e| e.event_id.clone()).collect();
        let events = self.fetch_missing(origin, &room_id, events).await;
        let events = causal_order(events);
        let mut results = PduResults::new();
        // Outcomes that stand only once the staged batch commits.
        let mut pending: Vec<(OwnedEventId, std::result::Result<(), String>)> = Vec::new();
        let mut staged: Option<Staged<'_>> = None;
        for event in events {
            let event_id = event.event_id.clone();
            if results.contains_key(&event_id) || pending.iter().any(|(id, _)| *id == event_id) {
                continue;
            }
            let mut attempt = 0;
            // `(staged, outcome)`: whether the outcome waits for the batch to commit.
            let judged = loop {
                attempt += 1;
                if staged.is_none() {
                    match self.rooms.stage(&room_id).await {
                        Ok(s) => staged = Some(s),
                        Err(e) => break Err(e),
                    }
                }
                let s = staged.as_mut().expect("staged above");
                match self.judge(s, &room_id, &event, &pending) {
                    Ok(Judged::Staged(outcome)) => break Ok((true, outcome)),
                    Ok(Judged::Final(outcome)) => break Ok((false, outcome)),
                    // A fresh batch can always judge it; the bound is only a guard.
                    Ok(Judged::CommitFirst) if attempt < 3 => {
                        let s = staged.take().expect("staged above");
                        self.commit(s, &mut pending, &mut results).await;
                    }
                    Ok(Judged::CommitFirst) => {
                        break Err(Error::unknown("cannot place the event"));
                    }
                    Err(e) => break Err(e),
                }
            };
            match judged {
                Ok((true, outcome)) => pending.push((event_id, outcome)),
                Ok((false, outcome)) => {
                    results.insert(event_id, outcome);
                }
                Err(e) => {
                    // The batch may hold part of this event: drop it, and with it the events
                    // staged before (they were not stored; the sender will retry them).
                    log::warn!("cannot store PDU {event_id}: {e}");
                    staged = None;
                    for (id, _) in pending.drain(..) {
                        results.insert(id, Err(format!("internal error: {e}")));
                    }
                    results.insert(event_id, Err(format!("internal error: {e}")));
                }
            }
        }
        if let Some(s) = staged {
            self.commit(s, &mut pending, &mut results).await;
        }
        for (event_id, outcome) in &results {
            if let Err(reason) = outcome {
                log::info!("PDU {event_id} in {room_id} not accepted: {reason}");
            }
        }
        match self.rooms.merge_extremities(&room_id).await {
            Ok(sent) if !sent.is_empty() => {
                log::info!(
                    "{} dummy events merged the extremities of {room_id}",
                    sent.len()
                );
            }
            Ok(_) => {}
            Err(e) => log::warn!("cannot merge the forward extremities of {room_id}: {e}"),
        }
        // The answer names the transaction's PDUs only, not the events fetched for them.
        results.retain(|id, _| received.contains(id));
        results
    }

    /// Commits a batch; its events' outcomes stand if it does, else they become errors.
    async fn commit(
        &self,
        staged: Staged<'_>,
        pending: &mut Vec<(OwnedEventId, std::result::Result<(), String>)>,
        results: &mut PduResults,
    ) {
        let committed = staged
            .commit_with(|| Error::unknown("the room changed concurrently"))
            .await;
        for (event_id, outcome) in pending.drain(..) {
            let outcome = match &committed {
                Ok(_) => outcome,
                Err(e) => Err(format!("internal error: {e}")),
            };
            results.insert(event_id, outcome);
        }
        if let Err(e) = committed {
            log::warn!("cannot store received PDUs: {e}");
        }
    }

    /// The stored outcome of an event already known here, if it is.
    fn known_outcome(&self, event_id: &EventId) -> Result<Option<std::result::Result<(), String>>> {
        if self.rooms.is_stored(event_id)? {
            return Ok(Some(Ok(())));
        }
        Ok(self
            .store
            .get::<RejectedEvents>(&event_id.to_string())?
            .map(|r| Err(format!("rejected: {}", r.reason))))
    }

    /// Steps 4 to 6 for one event, under the room's lock held by `staged`, staging what is to
    /// be stored. `pending` are the outcomes of the events staged before it.
    fn judge(
        &self,
        staged: &mut Staged<'_>,
        room_id: &RoomId,
        event: &Prepared,
        pending: &[(OwnedEventId, std::result::Result<(), String>)],
    ) -> Result<Judged> {
        // An outlier received as a timeline event (`rooms/outliers.rs`): old history is
        // promoted where it is; new history is judged and stored again like any event.
        match self
            .rooms
            .outlier_fate(&event.event_id, staged.extremities())?
        {
            Some(Promotion::InPlace { sid }) => {
                let room_sid = self.rooms.room(room_id)?.map(|r| r.sid).unwrap_or_default();
                self.rooms
                    .stage_promote_in_place(staged.batch_mut(), (room_id, room_sid), sid)?;
                return Ok(Judged::Staged(Ok(())));
            }
            Some(Promotion::Replace { sid }) => staged.replace_outlier(&event.event_id, sid),
            None => {
                if let Some(outcome) = self.known_outcome(&event.event_id)? {
                    return Ok(Judged::Final(outcome));
                }
            }
        }
        if staged.needs_commit_before(&event.pdu, &event.object) {
            return Ok(Judged::CommitFirst);
        }
        let staged_rejection = event.pdu.auth_events.iter().find(|id| {
            pending
                .iter()
                .any(|(p, outcome)| p == *id && outcome.is_err())
        });
        let rejected = match staged_rejection {
            Some(id) => Some(id.clone()),
            None => self.rejected_auth_event(&event.pdu)?,
        };
        if let Some(rejected) = rejected {
            let reason = format!("auth event {rejected} was rejected");
            self.stage_rejected(staged, room_id, event, &reason)?;
            return Ok(Judged::Staged(Err(format!("rejected: {reason}"))));
        }
        let Some(placement) = staged.place_remote(&event.pdu, &event.fetched_state)? else {
            return Ok(Judged::CommitFirst);
        };
        let verdict = staged.authorise_remote(&event.pdu, &placement.state)?;
        Ok(match verdict {
            Verdict::Accepted => {
                staged.add_remote(event.pdu.clone(), event.object.clone(), &placement)?;
                self.note_hole(staged, event, pending)?;
                Judged::Staged(Ok(()))
            }
            Verdict::SoftFailed(reason) => {
                log::info!("PDU {} soft-failed: {reason}", event.event_id);
                staged.add_soft_failed(&event.pdu, &event.object, &placement.state)?;
                Judged::Staged(Ok(()))
            }
            Verdict::Rejected(reason) => {
                self.stage_rejected(staged, room_id, event, &reason)?;
                Judged::Staged(Err(format!("rejected: {reason}")))
            }
            // Nothing to store: with the auth event fetched, the same PDU may yet pass.
            Verdict::MissingAuth(reason) => Judged::Final(Err(reason)),
        })
    }

    /// An event just accepted into the timeline whose prev events are not all in the room's
    /// history here (nor rejected) opens a hole before it (`rooms/holes.rs`), filled when
    /// `/messages` gets there.
    fn note_hole(
        &self,
        staged: &mut Staged<'_>,
        event: &Prepared,
        pending: &[(OwnedEventId, std::result::Result<(), String>)],
    ) -> Result<()> {
        let mut missing = Vec::new();
        for prev in &event.pdu.prev_events {
            let rejected = pending.iter().any(|(id, o)| id == prev && o.is_err())
                || self
                    .store
                    .get::<RejectedEvents>(&prev.to_string())?
                    .is_some();
            if !rejected && !staged.in_history(prev)? {
                missing.push(prev.clone());
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let (Some(room_sid), Some(sid)) = (staged.room_sid(), staged.staged_sid(&event.event_id))
        else {
            return Ok(());
        };
        Rooms::stage_hole(staged.batch_mut(), room_sid, sid, &missing);
        Ok(())
    }

    /// The first of the event's auth events that was itself rejected here, if any.
    fn rejected_auth_event(&self, pdu: &Pdu) -> Result<Option<OwnedEventId>> {
        for id in &pdu.auth_events {
            if self.rooms.is_stored(id)? {
                continue;
            }
            if self.store.get::<RejectedEvents>(&id.to_string())?.is_some() {
                return Ok(Some(id.clone()));
            }
        }
        Ok(None)
    }

    fn stage_rejected(
        &self,
        staged: &mut Staged<'_>,
        room_id: &RoomId,
        event: &Prepared,
        reason: &str,
    ) -> Result<()> {
        let record = RejectedEvent {
            room_id: room_id.to_string(),
            reason: reason.to_owned(),
            received_ms: now_ms(),
            pdu: serde_json::to_vec(&event.object).map_err(|e| Error::unknown(e.to_string()))?,
        };
        let key = event.event_id.to_string();
        staged
            .batch_mut()
            .expect_absent::<RejectedEvents>(&key)
            .put::<RejectedEvents>(&key, &record);
        Ok(())
    }

    /// Why an event was rejected, if it was (for tests and the admin view).
    pub fn rejection(&self, event_id: &EventId) -> Result<Option<RejectedEvent>> {
        Ok(self.store.get::<RejectedEvents>(&event_id.to_string())?)
    }
}
