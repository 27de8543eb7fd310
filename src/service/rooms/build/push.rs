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

use super::Staged;
use crate::{
    error::{Error, Result},
    service::{
        push::notifications::{NewEvent, Recipient},
        receipts::thread_of_pdu,
        rooms::Pdu,
    },
};

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
fn display_name(pdu: Option<&Pdu>, user_id: &UserId) -> String {
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

        // Members after the staged changes.
        let mut members: Vec<(OwnedUserId, String)> = self
            .rooms
            .members(record.sid)?
            .into_iter()
            .filter_map(|(user, m)| Some((UserId::parse(user).ok()?, m)))
            .collect();
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
        let named = |user: &UserId| Recipient {
            user_id: user.to_owned(),
            display_name: display_name(
                self.state_pdu(&StateEventType::RoomMember, user.as_str())
                    .as_ref(),
                user,
            ),
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
