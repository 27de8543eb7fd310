//! Push evaluation of staged events: what the notifications service needs of the room (its
//! local members, their display names, power levels), gathered from the staged state so that
//! the events are judged against the state they will have once committed.

use ruma::{
    events::{
        room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent},
        StateEventType, TimelineEventType,
    },
    push::{PushConditionPowerLevelsCtx, PushConditionRoomCtx},
    OwnedRoomId, OwnedUserId, UInt, UserId,
};
use serde_json::Value;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use super::Staged;
use crate::{
    error::{Error, Result},
    service::{
        push::notifications::{NewEvent, Recipient},
        receipts::thread_of_pdu,
        rooms::{Pdu, Rooms},
    },
};

/// Most members (over all rooms) whose memberships and display names [`MembersCache`] keeps;
/// it starts over when an insert would exceed this.
const CACHED_MEMBERS: usize = 200_000;

/// A room's committed members as push evaluation reads them.
struct CommittedMembers {
    /// `RoomRecord::last_state` when this was read.
    last_state: Option<u64>,
    /// Every member with their membership.
    members: Vec<(OwnedUserId, String)>,
    /// Display names (else localparts) of the local members that are joined or invited.
    names: HashMap<OwnedUserId, String>,
}

/// Committed members and display names of recently written rooms, by room, so that persisting
/// an event in a room of 1,000 does not read and parse 1,000 member events each time.
///
/// Invariant: an entry equals what the store holds for the room while the room's
/// `last_state` is the entry's. Every change to a room's members (`RoomMembers`) or to its
/// member events comes with a new state event (a new `last_state`), except a redaction of a
/// member event (it can drop the `displayname`), which drops the room's entry. Entries are
/// read, written and dropped only by event persistence, under the room's lock, and hold only
/// committed state: a commit that fails leaves them true. Memory is bounded by
/// [`CACHED_MEMBERS`].
#[derive(Default)]
pub(crate) struct MembersCache {
    rooms: Mutex<HashMap<u64, Arc<CommittedMembers>>>,
}

impl MembersCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<CommittedMembers>>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The room's committed members at state position `last_state`: from memory when they
    /// were read at that position, else from the store (and remembered).
    fn get(
        &self,
        rooms: &Rooms,
        room_sid: u64,
        last_state: Option<u64>,
    ) -> Result<Arc<CommittedMembers>> {
        if let Some(entry) = self.lock().get(&room_sid) {
            if entry.last_state == last_state {
                return Ok(entry.clone());
            }
        }
        let entry = Arc::new(CommittedMembers::load(rooms, room_sid, last_state)?);
        let mut cache = self.lock();
        cache.remove(&room_sid);
        let held: usize = cache.values().map(|e| e.members.len()).sum();
        if held + entry.members.len() > CACHED_MEMBERS {
            cache.clear();
        }
        if entry.members.len() <= CACHED_MEMBERS {
            cache.insert(room_sid, entry.clone());
        }
        Ok(entry)
    }

    /// Forgets the room (its member events may change without a new state position).
    pub(crate) fn forget(&self, room_sid: u64) {
        self.lock().remove(&room_sid);
    }
}

impl CommittedMembers {
    fn load(rooms: &Rooms, room_sid: u64, last_state: Option<u64>) -> Result<Self> {
        let local = |user: &UserId| user.server_name() == rooms.server_name;
        let members: Vec<(OwnedUserId, String)> = rooms
            .members(room_sid)?
            .into_iter()
            .filter_map(|(user, m)| Some((UserId::parse(user).ok()?, m)))
            .collect();
        let names = members
            .iter()
            .filter(|(u, m)| (m == "join" || m == "invite") && local(u))
            .map(|(user, _)| {
                let event = rooms
                    .state_event(room_sid, &StateEventType::RoomMember, user.as_str())
                    .ok()
                    .flatten();
                let name = display_name(event.map(|e| e.pdu).as_ref(), user);
                (user.clone(), name)
            })
            .collect();
        Ok(Self {
            last_state,
            members,
            names,
        })
    }
}

/// One staged event, owned, as the notifications service reads it.
struct EventInput {
    sid: u64,
    kind: String,
    pdu: Pdu,
    json: Box<serde_json::value::RawValue>,
    thread: String,
    membership: Option<String>,
}

/// Everything push evaluation needs of one room's staged events.
struct RoomInput {
    room_id: OwnedRoomId,
    base: PushConditionRoomCtx,
    events: Vec<EventInput>,
    recipients: Vec<Recipient>,
    /// Display names of local users invited by these events (not members yet).
    invitees: Vec<Recipient>,
}

/// The `displayname` of a member event, else the user's localpart.
pub(crate) fn display_name(pdu: Option<&Pdu>, user_id: &UserId) -> String {
    pdu.and_then(|p| p.content_as::<Value>())
        .and_then(|c| c.get("displayname")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| user_id.localpart().to_owned())
}

fn membership_of(pdu: &Pdu) -> Option<String> {
    pdu.content_as::<Value>()
        .and_then(|c| c.get("membership")?.as_str().map(str::to_owned))
}

impl Staged<'_> {
    /// Evaluates push rules for the staged events of this room and of the rooms absorbed into
    /// this commit, staging the results into the commit's batch. Returns the users whose
    /// unread counts change.
    pub(super) async fn stage_push(&mut self) -> Result<Vec<OwnedUserId>> {
        let mut inputs = Vec::new();
        for staged in std::iter::once(&*self).chain(&self.absorbed) {
            inputs.extend(staged.push_input()?);
        }
        let notifications = self.rooms.notifications.clone();
        let mut changed = Vec::new();
        for input in inputs {
            let events: Vec<NewEvent<'_>> = input
                .events
                .iter()
                .map(|e| NewEvent {
                    sid: e.sid,
                    event_id: e.pdu.event_id.as_str(),
                    sender: &e.pdu.sender,
                    kind: &e.kind,
                    state_key: e.pdu.state_key.as_deref(),
                    json: &e.json,
                    thread: e.thread.clone(),
                    membership: e.membership.as_deref(),
                })
                .collect();
            let invitees = &input.invitees;
            let invitee = |event: &NewEvent<'_>| {
                if event.membership != Some("invite") {
                    return None;
                }
                let target = event.state_key?;
                invitees
                    .iter()
                    .find(|r| r.user_id.as_str() == target)
                    .cloned()
            };
            changed.extend(
                notifications
                    .stage_events(
                        &mut self.batch,
                        &input.room_id,
                        &input.base,
                        &events,
                        &input.recipients,
                        invitee,
                    )
                    .await?,
            );
        }
        Ok(changed)
    }

    fn push_input(&self) -> Result<Option<RoomInput>> {
        let (Some(room_id), Some(record)) = (&self.room_id, &self.record) else {
            return Ok(None);
        };
        if self.events.is_empty() {
            return Ok(None);
        }
        let local = |user: &UserId| user.server_name() == self.rooms.server_name;

        // Members after the staged changes: the committed ones (read at the state position
        // before this commit), then the staged member events over them.
        let cache = &self.rooms.push_members;
        let redacts = self
            .events
            .values()
            .any(|(_, pdu, _)| pdu.kind == TimelineEventType::RoomRedaction);
        let committed = match &self.old_record {
            Some(old) if !redacts => cache.get(self.rooms, record.sid, old.last_state)?,
            _ => {
                cache.forget(record.sid);
                let last_state = self.old_record.as_ref().and_then(|r| r.last_state);
                Arc::new(CommittedMembers::load(self.rooms, record.sid, last_state)?)
            }
        };
        let mut members = committed.members.clone();
        for ((kind, state_key), (_, pdu)) in &self.state {
            if kind != "m.room.member" {
                continue;
            }
            let Ok(user) = UserId::parse(state_key.as_str()) else {
                continue;
            };
            let membership = membership_of(pdu).unwrap_or_else(|| "leave".into());
            match members.iter_mut().find(|(u, _)| *u == user) {
                Some(entry) => entry.1 = membership,
                None => members.push((user, membership)),
            }
        }
        let joined = members.iter().filter(|(_, m)| m == "join").count();
        let named = |user: &UserId| {
            let key = ("m.room.member".to_owned(), user.as_str().to_owned());
            let display_name = match (self.state.get(&key), committed.names.get(user)) {
                (Some((_, staged)), _) => display_name(Some(staged), user),
                (None, Some(name)) => name.clone(),
                (None, None) => display_name(
                    self.state_pdu(&StateEventType::RoomMember, user.as_str())
                        .as_ref(),
                    user,
                ),
            };
            Recipient {
                user_id: user.to_owned(),
                display_name,
            }
        };
        let recipients = members
            .iter()
            .filter(|(u, m)| m == "join" && local(u))
            .map(|(u, _)| named(u))
            .collect();
        let invitees = members
            .iter()
            .filter(|(u, m)| m == "invite" && local(u))
            .map(|(u, _)| named(u))
            .collect();

        let mut events: Vec<EventInput> = Vec::with_capacity(self.events.len());
        for (sid, pdu, object) in self.events.values() {
            let json = serde_json::value::to_raw_value(object)
                .map_err(|e| Error::unknown(format!("cannot serialize event: {e}")))?;
            let membership = (pdu.kind == TimelineEventType::RoomMember)
                .then(|| membership_of(pdu))
                .flatten();
            events.push(EventInput {
                sid: *sid,
                kind: pdu.kind.to_string(),
                pdu: pdu.clone(),
                json,
                thread: thread_of_pdu(self.rooms, pdu, record.sid)?,
                membership,
            });
        }
        events.sort_by_key(|e| e.sid);

        let base = PushConditionRoomCtx::new(
            room_id.clone(),
            UInt::try_from(joined).unwrap_or(UInt::MAX),
            // Replaced by each recipient's id during evaluation.
            UserId::parse(format!("@_:{}", self.rooms.server_name))
                .map_err(|_| Error::unknown("bad server name"))?,
            String::new(),
        );
        let base = match self.power_levels() {
            Some(power) => base.with_power_levels(power),
            None => base,
        };
        Ok(Some(RoomInput {
            room_id: room_id.clone(),
            base,
            events,
            recipients,
            invitees,
        }))
    }

    /// The power levels as push conditions read them (`sender_notification_permission`).
    fn power_levels(&self) -> Option<PushConditionPowerLevelsCtx> {
        let create = self.state_pdu(&StateEventType::RoomCreate, "");
        let mut creators = Vec::new();
        if let Some(create) = &create {
            creators.push(create.sender.clone());
            let content = create.content_as::<Value>().unwrap_or(Value::Null);
            let additional = content
                .get("additional_creators")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter_map(|u| UserId::parse(u).ok());
            creators.extend(additional);
        }
        let content = self
            .state_pdu(&StateEventType::RoomPowerLevels, "")
            .and_then(|e| e.content_as::<RoomPowerLevelsEventContent>());
        let power = RoomPowerLevels::new(content.into(), &self.rules.authorization, creators);
        Some(PushConditionPowerLevelsCtx::from(power))
    }
}
