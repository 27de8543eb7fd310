//! Building, authorising and staging new events.
//!
//! A [`Staged`] append holds the room lock and an overlay of what it has staged but not yet
//! committed, so several events (a whole `createRoom`) can be built on each other and land in
//! one atomic batch: a crash leaves either the whole room or nothing.

pub mod extremities;
pub mod fetched;
mod fork;
mod guests;
pub mod joined;
pub(crate) mod push;
mod queue;
pub mod remote;
mod template;
pub mod unaccept;

pub(crate) use push::MembersCache;
pub(crate) use queue::SendQueues;

use std::collections::{BTreeSet, HashMap};

use ruma::{
    canonical_json::to_canonical_value,
    events::{StateEventType, TimelineEventType},
    room_version_rules::{EventIdFormatVersion, EventsReferenceFormatVersion, RoomVersionRules},
    signatures::{hash_and_sign_event, reference_hash},
    state_res::{
        auth_types_for_event, check_state_dependent_auth_rules, check_state_independent_auth_rules,
    },
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, OwnedServerName,
    RoomId, RoomVersionId, UserId,
};
use serde_json::{json, Map, Value};

use super::{
    validate, CurrentState, EventIds, EventMeta, EventMetaTable, NewEvent, Pdu, Pdus, RoomMembers,
    RoomRecord, Rooms, RoomsTable, StateSnapshot, StateSnapshots, Timeline, TxnIds, UserRooms,
    SNAPSHOT_EVERY,
};
use crate::{
    error::{Error, Result},
    service::{
        search::{index as search_index, pending as search_pending},
        stream::Pending,
        users::now_ms,
    },
    store::{Batch, CommitError, Raw},
};

/// The most `prev_events` a PDU may cite (spec: room versions, event format).
const MAX_PREV_EVENTS: usize = 20;

/// The most forward extremities a room keeps.
const MAX_EXTREMITIES: usize = 100;

/// Events staged for one room under its lock, committed together.
pub struct Staged<'a> {
    rooms: &'a Rooms,
    /// The room lock; moved into the commit task so it is released only after the write.
    lock: Option<tokio::sync::OwnedMutexGuard<()>>,
    room_id: Option<OwnedRoomId>,
    version: RoomVersionId,
    rules: RoomVersionRules,
    old_record: Option<RoomRecord>,
    record: Option<RoomRecord>,
    batch: Batch,
    /// Staged current-state changes: `(type, state_key) → (sid, pdu)`.
    state: HashMap<(String, String), (u64, Pdu)>,
    /// Staged events by id, for auth-event lookups.
    events: HashMap<OwnedEventId, (u64, Pdu, CanonicalJsonObject)>,
    pending: Vec<Pending>,
    pub event_ids: Vec<OwnedEventId>,
    /// Search index counters staged in `batch` and not yet committed (the removals of
    /// redacted or taken-back events that were indexed).
    search: search_index::Overlay,
    /// Whether `batch` holds pending rows for the search indexer (told once it commits).
    search_pending: bool,
    /// Other rooms' staged events that commit in this batch (see [`Staged::absorb`]); kept
    /// here so their locks are held until the commit.
    absorbed: Vec<Staged<'a>>,
    /// What remote events staged here look like to the ones staged after them.
    remote: remote::Overlay,
    /// The `origin_server_ts` of the events staged here, when the caller fixed it (see
    /// [`Staged::set_origin_server_ts`]); otherwise the clock at each event.
    origin_ts: Option<u64>,
    /// Stored PDUs read while staging (auth events, mostly), by position. Valid for the
    /// whole append: the room lock keeps the room's stored events as they are.
    read_pdus: std::sync::Mutex<HashMap<u64, Pdu>>,
}

impl Rooms {
    /// Starts appending to an existing room (takes its lock).
    pub async fn stage(&self, room_id: &RoomId) -> Result<Staged<'_>> {
        let lock = self.lock_room(room_id).await;
        self.stage_locked(room_id, lock)
    }

    /// [`Rooms::stage`] with the room's lock already held.
    fn stage_locked(
        &self,
        room_id: &RoomId,
        lock: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<Staged<'_>> {
        let record = self
            .room(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let version = self.room_version(&record)?;
        let rules = version
            .rules()
            .ok_or_else(|| Error::unknown("unsupported room version"))?;
        Ok(Staged {
            rooms: self,
            lock: Some(lock),
            room_id: Some(room_id.to_owned()),
            version,
            rules,
            old_record: Some(record.clone()),
            record: Some(record),
            batch: Batch::new(),
            state: HashMap::new(),
            events: HashMap::new(),
            pending: Vec::new(),
            event_ids: Vec::new(),
            search: search_index::Overlay::default(),
            search_pending: false,
            absorbed: Vec::new(),
            remote: remote::Overlay::default(),
            origin_ts: None,
            read_pdus: Default::default(),
        })
    }

    /// Starts a new room. For room versions before 12 the id is chosen here; from 12 on it is
    /// the hash of the create event, known once that is added.
    pub async fn stage_new_room(&self, version: RoomVersionId) -> Result<Staged<'_>> {
        let rules = version.rules().ok_or_else(|| {
            Error::new(
                http::StatusCode::BAD_REQUEST,
                "M_UNSUPPORTED_ROOM_VERSION",
                "Unsupported room version",
            )
        })?;
        let room_id = if rules.authorization.room_create_event_id_as_room_id {
            None
        } else {
            Some(RoomId::new_v1(&self.server_name))
        };
        // A fresh random id cannot be contended; the lock only keeps the API uniform.
        let lock = match &room_id {
            Some(id) => self.lock_room(id).await,
            None => {
                std::sync::Arc::new(tokio::sync::Mutex::new(()))
                    .lock_owned()
                    .await
            }
        };
        Ok(Staged {
            rooms: self,
            lock: Some(lock),
            room_id,
            version,
            rules,
            old_record: None,
            record: None,
            batch: Batch::new(),
            state: HashMap::new(),
            events: HashMap::new(),
            pending: Vec::new(),
            event_ids: Vec::new(),
            search: search_index::Overlay::default(),
            search_pending: false,
            absorbed: Vec::new(),
            remote: remote::Overlay::default(),
            origin_ts: None,
            read_pdus: Default::default(),
        })
    }
}

impl<'a> Staged<'a> {
    /// The room's short id (once the room exists).
    pub fn room_sid(&self) -> Option<u64> {
        self.record.as_ref().map(|r| r.sid)
    }

    pub fn room_id(&self) -> Option<&RoomId> {
        self.room_id.as_deref()
    }

    pub fn rules(&self) -> &RoomVersionRules {
        &self.rules
    }

    pub fn version(&self) -> &RoomVersionId {
        &self.version
    }

    /// Fixes the `origin_server_ts` of the events staged from now on. A v12 room id is the hash
    /// of its create event, so two creations by one user with the same content in the same
    /// millisecond would otherwise build the same room (`createRoom` claims distinct times).
    pub fn set_origin_server_ts(&mut self, ts: u64) {
        self.origin_ts = Some(ts);
    }

    fn state_sid(&self, kind: &str, state_key: &str) -> Result<Option<u64>> {
        if let Some((sid, _)) = self.state.get(&(kind.to_owned(), state_key.to_owned())) {
            return Ok(Some(*sid));
        }
        let Some(record) = &self.record else {
            return Ok(None);
        };
        Ok(self.rooms.store.get::<CurrentState>(&(
            record.sid,
            kind.to_owned(),
            state_key.to_owned(),
        ))?)
    }

    /// The current (staged or stored) state event for a key.
    pub fn state_pdu(&self, kind: &StateEventType, state_key: &str) -> Option<Pdu> {
        if let Some((_, pdu)) = self.state.get(&(kind.to_string(), state_key.to_owned())) {
            return Some(pdu.clone());
        }
        let record = self.record.as_ref()?;
        let sid = self
            .rooms
            .state_sid(record.sid, &kind.to_string(), state_key)
            .ok()
            .flatten()?;
        self.stored_pdu(sid, None)
    }

    fn event_pdu(&self, event_id: &EventId) -> Option<Pdu> {
        if let Some((_, pdu, _)) = self.events.get(event_id) {
            return Some(pdu.clone());
        }
        let sid = self.rooms.event_sid(event_id).ok().flatten()?;
        self.stored_pdu(sid, Some(event_id))
    }

    /// The stored PDU at `sid`, read once per append.
    fn stored_pdu(&self, sid: u64, event_id: Option<&EventId>) -> Option<Pdu> {
        let mut read = self.read_pdus.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pdu) = read.get(&sid) {
            return Some(pdu.clone());
        }
        let event_id = match event_id {
            Some(id) => id.to_owned(),
            None => {
                let meta = self
                    .rooms
                    .store
                    .get::<EventMetaTable>(&sid)
                    .ok()
                    .flatten()?;
                EventId::parse(meta.event_id).ok()?
            }
        };
        let pdu = self.rooms.pdu_by_sid(sid, event_id).ok().flatten()?;
        read.insert(sid, pdu.clone());
        Some(pdu)
    }

    fn event_json(&self, sid: u64) -> Result<CanonicalJsonObject> {
        if let Some((_, _, json)) = self.events.values().find(|(s, _, _)| *s == sid) {
            return Ok(json.clone());
        }
        Ok(self
            .rooms
            .event_by_sid(sid)?
            .ok_or_else(|| Error::unknown("referenced event is missing"))?
            .json)
    }

    fn event_id_of(&self, sid: u64) -> Result<String> {
        if let Some((id, _)) = self.events.iter().find(|(_, (s, _, _))| *s == sid) {
            return Ok(id.to_string());
        }
        let meta = self.rooms.store.get::<EventMetaTable>(&sid)?;
        Ok(meta
            .ok_or_else(|| Error::unknown("referenced event is missing"))?
            .event_id)
    }

    /// `prev_events`/`auth_events` entries in the room version's format.
    fn references(&self, sids: &[u64]) -> Result<Vec<Value>> {
        sids.iter()
            .map(|&sid| {
                let id = self.event_id_of(sid)?;
                Ok(match self.rules.events_reference_format {
                    EventsReferenceFormatVersion::V1 => {
                        let hash = reference_hash(&self.event_json(sid)?, &self.rules)
                            .map_err(|e| Error::unknown(format!("cannot hash event: {e}")))?;
                        json!([id, {"sha256": hash}])
                    }
                    _ => json!(id),
                })
            })
            .collect()
    }

    /// Builds, signs and authorises an event and stages it. Returns its id.
    pub fn add(&mut self, sender: &UserId, new: NewEvent) -> Result<OwnedEventId> {
        let rooms = self.rooms;
        self.check_guest_join(sender, &new)?;
        let revokes_guest_access = self.revokes_guest_access(&new);
        let kind = new.kind.to_string();
        validate::check_sizes(&kind, new.state_key.as_deref())?;
        if new.state_key.is_some() {
            validate::check_state_content(&kind, &new.content)?;
        }
        if new.kind == TimelineEventType::RoomPowerLevels {
            let current = self
                .state_pdu(&StateEventType::RoomPowerLevels, "")
                .and_then(|pdu| pdu.content_as::<Value>());
            validate::check_power_levels_keep_sender(current.as_ref(), &new.content, sender)?;
        }
        let content_raw = serde_json::value::to_raw_value(&new.content)
            .map_err(|e| Error::bad_json(e.to_string()))?;
        let auth_types = auth_types_for_event(
            &new.kind,
            sender,
            new.state_key.as_deref(),
            &content_raw,
            &self.rules.authorization,
        )
        .map_err(|e| Error::bad_json(format!("Invalid event content: {e}")))?;
        let mut auth_sids = Vec::new();
        for (kind, state_key) in &auth_types {
            if let Some(sid) = self.state_sid(&kind.to_string(), state_key)? {
                if !auth_sids.contains(&sid) {
                    auth_sids.push(sid);
                }
            }
        }
        // A PDU may cite at most 20 prev_events; the newest extremities are cited, the others
        // stay extremities for the next event.
        let prev = self
            .record
            .as_ref()
            .map(|r| {
                let skip = r.extremities.len().saturating_sub(MAX_PREV_EVENTS);
                r.extremities[skip..].to_vec()
            })
            .unwrap_or_default();
        let depth = self.record.as_ref().map_or(1, |r| r.depth + 1);

        let mut object = Map::new();
        object.insert("type".into(), json!(new.kind.to_string()));
        object.insert("sender".into(), json!(sender));
        let origin_server_ts = self.origin_ts.unwrap_or_else(now_ms);
        object.insert("origin_server_ts".into(), json!(origin_server_ts));
        object.insert("depth".into(), json!(depth));
        object.insert("prev_events".into(), Value::Array(self.references(&prev)?));
        object.insert(
            "auth_events".into(),
            Value::Array(self.references(&auth_sids)?),
        );
        let mut content = new.content.clone();
        if let Some(redacts) = &new.redacts {
            if self.rules.redaction.content_field_redacts {
                if let Some(map) = content.as_object_mut() {
                    map.insert("redacts".into(), json!(redacts));
                }
            } else {
                object.insert("redacts".into(), json!(redacts));
            }
        }
        object.insert("content".into(), content);
        if let Some(room_id) = &self.room_id {
            object.insert("room_id".into(), json!(room_id));
        }
        if let Some(state_key) = &new.state_key {
            object.insert("state_key".into(), json!(state_key));
        }
        let assigned_id = match self.rules.event_id_format {
            EventIdFormatVersion::V1 => {
                let id = EventId::new_v1(&rooms.server_name);
                object.insert("event_id".into(), json!(id));
                Some(id)
            }
            _ => None,
        };
        let CanonicalJsonValue::Object(mut object) = to_canonical_value(Value::Object(object))
            .map_err(|e| Error::bad_json(format!("Event is not canonical JSON: {e}")))?
        else {
            return Err(Error::unknown("event is not an object"));
        };
        hash_and_sign_event(
            rooms.server_name.as_str(),
            &rooms.keys.keypair,
            &mut object,
            &self.rules.redaction,
        )
        .map_err(|e| match e {
            ruma::signatures::JsonError::PduTooLarge => {
                Error::too_large("Event is larger than 65536 bytes")
            }
            e => Error::unknown(format!("cannot sign event: {e}")),
        })?;
        let event_id = match assigned_id {
            Some(id) => id,
            None => {
                let hash = reference_hash(&object, &self.rules).map_err(|e| match e {
                    ruma::signatures::JsonError::PduTooLarge => {
                        Error::too_large("Event is larger than 65536 bytes")
                    }
                    e => Error::unknown(format!("cannot hash event: {e}")),
                })?;
                EventId::parse(format!("${hash}")).map_err(|_| Error::unknown("bad event id"))?
            }
        };
        if self.room_id.is_none() {
            // v12: the room id is the create event's reference hash.
            let room_id = format!("!{}", &event_id.as_str()[1..]);
            self.room_id = Some(RoomId::parse(room_id).map_err(|_| Error::unknown("bad room id"))?);
        }
        let pdu = Pdu::from_object(event_id.clone(), &object).map_err(Error::unknown)?;

        check_state_independent_auth_rules(&self.rules.authorization, &pdu, |id| {
            self.event_pdu(id)
        })
        .map_err(|e| Error::forbidden(format!("Event is not authorised: {e}")))?;
        check_state_dependent_auth_rules(&self.rules.authorization, &pdu, |kind, key| {
            self.state_pdu(kind, key)
        })
        .map_err(|e| Error::forbidden(format!("Event is not authorised: {e}")))?;

        let state_before = self.record.as_ref().and_then(|r| r.last_state);
        self.stage_event(pdu, object, new.txn, &prev, state_before)?;
        self.event_ids.push(event_id.clone());
        if revokes_guest_access {
            self.stage_guest_removal()?;
        }
        Ok(event_id)
    }

    /// Stages an authorised event into the timeline and, for a state event, onto the room's
    /// current state (the head of the state chain). `prev_sids` are its known prev events (no
    /// longer extremities once it is stored); `state_before` is the head of the state before
    /// it, recorded as the `state_link` of a non-state event (local events: the current state).
    /// Returns the metadata staged for it.
    fn stage_event(
        &mut self,
        pdu: Pdu,
        object: CanonicalJsonObject,
        txn: Option<super::Txn>,
        prev_sids: &[u64],
        state_before: Option<u64>,
    ) -> Result<EventMeta> {
        let rooms = self.rooms;
        let sender = pdu.sender.clone();
        let room_id = self
            .room_id
            .clone()
            .ok_or_else(|| Error::unknown("room id unknown"))?;
        let pending = rooms.stream.allocate()?;
        let sid = pending.pos;
        self.pending.push(pending);
        if self.record.is_none() {
            let room_sid = rooms
                .store
                .intern_in("room", room_id.as_str(), &mut self.batch)?;
            self.record = Some(RoomRecord {
                sid: room_sid,
                version: self.version.to_string(),
                depth: 0,
                extremities: Vec::new(),
                last_state: None,
                since_snapshot: 0,
                created_ms: now_ms(),
            });
        }
        let state_key = pdu.state_key.clone();
        let kind = pdu.kind.to_string();
        let replaces_state = match &state_key {
            Some(key) => self.state_sid(&kind, key)?,
            None => None,
        };
        // Relations are indexed, and a redaction applied to its target, in this event's batch.
        let room_sid = self.record.as_ref().expect("set above").sid;
        if pdu.kind == TimelineEventType::RoomRedaction {
            let power = self.state_pdu(&StateEventType::RoomPowerLevels, "");
            let create = self.state_pdu(&StateEventType::RoomCreate, "");
            rooms.stage_redaction(
                &mut self.batch,
                &mut self.search,
                &self.rules,
                &pdu,
                room_sid,
                power,
                create,
            )?;
        }
        rooms.stage_relation(&mut self.batch, sid, room_sid, &pdu, &object)?;
        // An event with text to search lands with its pending row; the indexer replaces it
        // with the index rows (search/pending.rs).
        if search_index::indexable(&object) {
            search_pending::stage(&mut self.batch, room_sid, sid);
            self.search_pending = true;
        }
        let record = self.record.as_mut().expect("set above");
        let meta = EventMeta {
            room_sid,
            event_id: pdu.event_id.to_string(),
            kind: kind.clone(),
            state_key: state_key.clone(),
            sender: sender.to_string(),
            state_link: if state_key.is_some() {
                record.last_state
            } else {
                state_before
            },
            depth: pdu.depth,
            origin_server_ts: u64::from(pdu.origin_server_ts.0),
            txn: txn
                .as_ref()
                .map(|t| (t.device_id.clone(), t.txn_id.clone())),
            redacted_by: None,
            replaces_state,
        };
        let json = serde_json::to_vec(&object).map_err(|e| Error::unknown(e.to_string()))?;
        let event_key = pdu.event_id.to_string();
        joined::guard_event_id(&mut self.batch, &mut self.remote, &pdu.event_id);
        self.batch
            .put::<EventIds>(&event_key, &sid)
            .put::<Pdus>(&sid, &Raw(json))
            .put::<EventMetaTable>(&sid, &meta)
            .put::<Timeline>(&(room_sid, sid), &true);
        rooms.mark_timeline_row(&room_id, sid)?;
        if let Some(txn) = txn {
            self.batch.put::<TxnIds>(
                &(sender.to_string(), txn.device_id, txn.scope, txn.txn_id),
                &event_key,
            );
        }
        record.depth = record.depth.max(pdu.depth);
        record.extremities.retain(|s| !prev_sids.contains(s));
        record.extremities.push(sid);
        // Remote events with unknown prev events each add one; the oldest are let go (the room
        // record is rewritten with every event, so it must stay small).
        if record.extremities.len() > MAX_EXTREMITIES {
            let excess = record.extremities.len() - MAX_EXTREMITIES;
            record.extremities.drain(..excess);
        }

        if let Some(state_key) = &state_key {
            let record = self.record.as_mut().expect("set above");
            record.last_state = Some(sid);
            record.since_snapshot += 1;
            let snapshot_due = record.since_snapshot >= SNAPSHOT_EVERY;
            if snapshot_due {
                record.since_snapshot = 0;
            }
            self.batch
                .put::<CurrentState>(&(room_sid, kind.clone(), state_key.clone()), &sid);
            if pdu.kind == TimelineEventType::RoomMember {
                rooms.mark_member_change(&room_id, sid)?;
                let membership = pdu
                    .content_as::<Value>()
                    .and_then(|c| {
                        c.get("membership")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    })
                    .unwrap_or_else(|| "leave".into());
                self.batch
                    .put::<UserRooms>(
                        &(state_key.clone(), room_id.to_string()),
                        &super::UserRoom {
                            membership: membership.clone(),
                            sid,
                        },
                    )
                    .put::<RoomMembers>(&(room_sid, state_key.clone()), &membership)
                    .delete::<super::Forgotten>(&(state_key.clone(), room_id.to_string()));
            }
            self.state
                .insert((kind, state_key.clone()), (sid, pdu.clone()));
            if snapshot_due {
                let entries = self.full_state_entries()?;
                self.batch
                    .put::<StateSnapshots>(&sid, &StateSnapshot { entries });
            }
        }
        self.events.insert(pdu.event_id.clone(), (sid, pdu, object));
        Ok(meta)
    }

    /// Wakes the syncs of everyone the committed events concern: the room's current members
    /// (joined, invited, knocking) and the targets of membership changes (so a kicked user
    /// learns of it).
    fn wake_targets(&self, room_sid: u64) -> Result<Vec<ruma::OwnedUserId>> {
        let mut users: Vec<ruma::OwnedUserId> = self
            .rooms
            .members(room_sid)?
            .into_iter()
            .filter(|(_, m)| matches!(m.as_str(), "join" | "invite" | "knock"))
            .filter_map(|(user, _)| UserId::parse(user).ok())
            .collect();
        for (kind, state_key) in self.state.keys() {
            if kind == "m.room.member" {
                users.extend(UserId::parse(state_key.as_str()).ok());
            }
        }
        Ok(users)
    }

    /// The other servers that get this staging's local events: those with members joined
    /// before or after it (a server whose last user leaves gets the leave). With the events'
    /// positions; nothing when no event is local (remote events are not relayed).
    fn federation_targets(&self) -> Result<(BTreeSet<OwnedServerName>, Vec<u64>)> {
        let Some(record) = &self.record else {
            return Ok(Default::default());
        };
        let queue = &self.rooms.fed_queue;
        let mut local: Vec<u64> = self
            .events
            .values()
            .filter(|(_, pdu, _)| pdu.sender.server_name() == queue.server_name())
            .map(|(sid, _, _)| *sid)
            .collect();
        if local.is_empty() {
            return Ok(Default::default());
        }
        local.sort_unstable();
        let mut users: Vec<ruma::OwnedUserId> = self
            .rooms
            .members(record.sid)?
            .into_iter()
            .filter(|(_, m)| m == "join")
            .filter_map(|(user, _)| UserId::parse(user).ok())
            .collect();
        for ((kind, state_key), (_, pdu)) in &self.state {
            let joined = pdu
                .content_as::<Value>()
                .is_some_and(|c| c["membership"] == "join");
            if kind == "m.room.member" && joined {
                users.extend(UserId::parse(state_key.as_str()).ok());
            }
        }
        let mut servers = queue.remote_servers(users.iter().map(|u| u.as_ref()));
        // A partial-state room: the servers in the room before the join, whose members are
        // not known yet (`rooms/partial_state.rs`).
        if let Some(room_id) = &self.room_id {
            servers.extend(self.rooms.partial_state_servers(room_id));
        }
        Ok((servers, local))
    }

    /// Extra destinations of single local events: a member event that makes a remote user
    /// leave or banned goes to that user's server even when none of its users is joined (a
    /// rescinded invite, a rejected knock, a pre-emptive ban), so it learns of it. Invites
    /// reach the invitee's server through `/invite` instead.
    fn member_targets(&self) -> Vec<(u64, OwnedServerName)> {
        let own = self.rooms.fed_queue.server_name();
        self.events
            .values()
            .filter(|(_, pdu, _)| pdu.sender.server_name() == own)
            .filter(|(_, pdu, _)| pdu.kind == TimelineEventType::RoomMember)
            .filter(|(_, pdu, _)| {
                pdu.content_as::<Value>()
                    .is_some_and(|c| matches!(c["membership"].as_str(), Some("leave" | "ban")))
            })
            .filter_map(|(sid, pdu, _)| {
                let target = UserId::parse(pdu.state_key.as_deref()?).ok()?;
                (target.server_name() != own).then(|| (*sid, target.server_name().to_owned()))
            })
            .collect()
    }

    /// The whole current state including staged changes.
    fn full_state_entries(&self) -> Result<Vec<(String, String, u64)>> {
        let mut map: HashMap<(String, String), u64> = HashMap::new();
        if let Some(old) = &self.old_record {
            for ((_, kind, key), sid) in self
                .rooms
                .store
                .scan_prefix::<CurrentState, _>(&(old.sid,), usize::MAX)?
            {
                map.insert((kind, key), sid);
            }
        }
        for (key, (sid, _)) in &self.state {
            map.insert(key.clone(), *sid);
        }
        let mut entries: Vec<_> = map.into_iter().map(|((k, s), sid)| (k, s, sid)).collect();
        entries.sort();
        Ok(entries)
    }

    /// Stages the room record's update, guarded against any change since staging began.
    fn stage_record(&mut self) -> Result<()> {
        let room_id = self
            .room_id
            .clone()
            .ok_or_else(|| Error::unknown("nothing staged"))?;
        if let Some(record) = &self.record {
            let key = room_id.to_string();
            self.batch
                .expect_value::<RoomsTable>(&key, self.old_record.as_ref())
                .put::<RoomsTable>(&key, record);
        }
        Ok(())
    }

    /// Makes another room's staged events part of this commit, so both rooms change in one
    /// atomic batch (a room upgrade: the new room and the old room's tombstone).
    pub fn absorb(&mut self, mut other: Staged<'a>) -> Result<()> {
        other.stage_record()?;
        self.batch.append(std::mem::take(&mut other.batch));
        self.absorbed.push(other);
        Ok(())
    }

    /// The canonical JSON of an event staged here (as signed so far).
    pub fn staged_json(&self, event_id: &EventId) -> Option<&CanonicalJsonObject> {
        self.events.get(event_id).map(|(_, _, json)| json)
    }

    /// Adds another server's signatures to a staged event (an invite the invitee's server
    /// signed). Signatures are outside the reference hash, so the event and its id stay the
    /// same; the caller has verified them.
    pub fn add_signatures(
        &mut self,
        event_id: &EventId,
        server: &str,
        signatures: CanonicalJsonValue,
    ) -> Result<()> {
        let (sid, _, object) = self
            .events
            .get_mut(event_id)
            .ok_or_else(|| Error::unknown("the event is not staged"))?;
        let Some(CanonicalJsonValue::Object(all)) = object.get_mut("signatures") else {
            return Err(Error::unknown("a staged event has no signatures"));
        };
        all.insert(server.to_owned(), signatures);
        let json = serde_json::to_vec(&*object).map_err(|e| Error::unknown(e.to_string()))?;
        // The later write of the same key wins within a batch.
        self.batch.put::<Pdus>(sid, &Raw(json));
        Ok(())
    }

    /// Extra writes to commit atomically with the staged events.
    pub fn batch_mut(&mut self) -> &mut Batch {
        &mut self.batch
    }

    /// Commits everything staged in one durable batch.
    pub async fn commit(self) -> Result<OwnedRoomId> {
        // The room record changed under the lock: only possible if something wrote to the room
        // without it, which is a bug, not a client error.
        self.commit_with(|| Error::unknown("concurrent change to the room"))
            .await
    }

    /// `commit`, with `on_conflict` describing a failed precondition of extra writes.
    pub async fn commit_with(self, on_conflict: impl FnOnce() -> Error) -> Result<OwnedRoomId> {
        self.try_commit().await?.ok_or_else(on_conflict)
    }

    /// Commits everything staged in one durable batch; `None` if a precondition failed (nothing
    /// was written), for callers that tell contention from a real clash and retry.
    pub async fn try_commit(self) -> Result<Option<OwnedRoomId>> {
        self.try_commit_then(|_| {}).await
    }

    /// [`Staged::try_commit`], with `done` told the outcome in the commit task (see
    /// [`crate::service::stream::Stream::commit_then`]); not called if nothing was written.
    pub async fn try_commit_then(
        mut self,
        done: impl FnOnce(&Result<(), CommitError>) + Send + 'static,
    ) -> Result<Option<OwnedRoomId>> {
        let room_id = self
            .room_id
            .clone()
            .ok_or_else(|| Error::unknown("nothing staged"))?;
        if self.record.is_none() {
            return Ok(Some(room_id));
        }
        let counts_changed = self.stage_push().await?;
        self.stage_record()?;
        // Everything the commit task needs, owned: the batch, the positions, the room locks
        // and whom to wake (read now, while the staged member changes are known).
        let batch = std::mem::take(&mut self.batch);
        let mut positions = std::mem::take(&mut self.pending);
        let mut locks: Vec<_> = self.lock.take().into_iter().collect();
        let mut wake = Vec::new();
        let mut batch = batch;
        let mut destinations = BTreeSet::new();
        let mut search_rooms = Vec::new();
        for staged in std::iter::once(&self).chain(&self.absorbed) {
            if let Some(record) = &staged.record {
                wake.extend(staged.wake_targets(record.sid)?);
                if let (true, Some(room_id)) = (staged.search_pending, &staged.room_id) {
                    search_rooms.push((record.sid, room_id.clone()));
                }
            }
            // Queued in the event's own batch: an event is queued exactly when it commits.
            let (servers, sids) = staged.federation_targets()?;
            for sid in sids {
                self.rooms.fed_queue.stage_pdu(&mut batch, sid, &servers);
            }
            destinations.extend(servers);
            for (sid, server) in staged.member_targets() {
                let server = BTreeSet::from([server]);
                self.rooms.fed_queue.stage_pdu(&mut batch, sid, &server);
                destinations.extend(server);
            }
        }
        let fed_queue = self.rooms.fed_queue.clone();
        for staged in &mut self.absorbed {
            positions.append(&mut staged.pending);
            locks.extend(staged.lock.take());
        }
        let notifier = self.rooms.notifier.clone();
        let notifications = self.rooms.notifications.clone();
        let search_pending = self.rooms.search_pending.clone();
        let result = self
            .rooms
            .stream
            .commit_then(
                &self.rooms.store,
                batch,
                positions,
                locks,
                // Marked once committed (the indexer must find the rows when it looks) and
                // before anyone is answered (a search after the answer must index them).
                move |result: &std::result::Result<(), CommitError>| {
                    if result.is_ok() {
                        for (room_sid, room_id) in &search_rooms {
                            search_pending.mark(*room_sid, room_id);
                        }
                    }
                    done(result)
                },
                move || {
                    notifier.notify(wake.iter().map(|u| u.as_ref()));
                    notifications.changed(counts_changed);
                    fed_queue.wake(destinations);
                },
            )
            .await;
        match result {
            Ok(()) => Ok(Some(room_id)),
            Err(CommitError::Conflict) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
