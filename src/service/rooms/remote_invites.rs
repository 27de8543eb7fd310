//! Invites and knocks of local users in rooms this server may not take part in (spec:
//! server-server API, "Inviting to a room", "Knocking upon a room", "Leaving Rooms (Rejecting
//! Invites)").
//!
//! An invite from another server arrives through `/invite` with stripped state, not as part
//! of a room this server has; a knock is sent through a resident server. Either is recorded
//! here, keyed by `(user, room)`, with a position in the global stream so `/sync` orders it
//! with everything else (its `invite`, `knock` and, once rejected, rescinded or withdrawn,
//! `leave` sections). When the same room is known here too (`user_rooms`), the newer of the
//! two records (by stream position) is the user's membership.
//!
//! An invite recorded here notifies the invitee as a local invite does: its event goes
//! through the same push evaluation (`push/notifications.rs`, `.m.rule.invite_for_me`), in
//! the record's batch and at its position, so it is counted, listed and pushed like any
//! notification; whatever replaces the invite (a rejection, a rescind, a ban, a knock) reads
//! it.
//!
//! Invariants: a record's `sid` is a stream position allocated for its write, so every write
//! is seen once by an incremental sync; writes are conditional on the record read before
//! (`expect_value`), so two concurrent changes (a rejection and a rescind) cannot both win;
//! they are made under the room's lock, as every write of notification rows and counts is.

use ruma::{
    push::PushConditionRoomCtx, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{build::push::display_name, Pdu, Rooms};
use crate::{
    error::{Error, Result},
    service::{
        push::notifications::{NewEvent, ReadUpTo, Recipient},
        users::now_ms,
    },
    store::{Batch, CommitError, Record},
    table,
};

table!(
    /// `(user_id, room_id) → RemoteInvite`: a local user's invite to, knock on, or departure
    /// from a room known through another server.
    pub RemoteInvites: "remote_invites", (String, String) => RemoteInvite
);

/// What this server knows of a local user's membership in a room held by other servers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RemoteInvite {
    /// `invite`, `knock`, `leave` (rejected, rescinded, withdrawn or kicked) or `ban`.
    pub membership: String,
    /// Stream position of this record's last write (set by [`Rooms::record_remote_invite`]).
    pub sid: u64,
    pub room_version: String,
    /// The member event as signed (canonical JSON): the invite with our signature, the knock
    /// or leave this server signed, or the remote leave or ban that ended it. `None` for a
    /// rejection recorded here only (no resident server could be reached).
    pub event: Option<String>,
    /// The id of `event`.
    pub event_id: Option<String>,
    /// The stripped state events (JSON objects with `type`, `state_key`, `sender`, `content`
    /// only), pruned from what the other server sent.
    pub stripped_state: Vec<String>,
    /// Servers to go through to leave the room, most likely first (the inviter's server, the
    /// server a knock went through, the room id's server).
    pub servers: Vec<String>,
    /// The user whose event made the record (the inviter; the knocking user for a knock).
    pub sender: String,
    pub updated_ms: u64,
}
impl Record for RemoteInvite {}

impl RemoteInvite {
    /// The event as JSON, if there is one.
    pub fn event_json(&self) -> Option<serde_json::Value> {
        self.event
            .as_deref()
            .and_then(|e| serde_json::from_str(e).ok())
    }

    /// The event in the client format of the timeline, if there is one.
    pub fn client_event(&self) -> Option<Value> {
        let pdu = self.event_json()?;
        let mut out = Map::new();
        for key in [
            "content",
            "sender",
            "type",
            "state_key",
            "origin_server_ts",
            "room_id",
        ] {
            if let Some(value) = pdu.get(key) {
                out.insert(key.to_owned(), value.clone());
            }
        }
        out.insert("event_id".into(), json!(self.event_id));
        out.insert("unsigned".into(), json!({}));
        Some(Value::Object(out))
    }

    /// The content of the stripped state event at `(kind, state_key)`, if the record has it.
    pub fn stripped_content(&self, kind: &str, state_key: &str) -> Option<Value> {
        self.stripped_state
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .find(|e| e["type"] == kind && e["state_key"] == state_key)
            .map(|mut e| e["content"].take())
    }
}

impl Rooms {
    pub fn remote_invite(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
    ) -> Result<Option<RemoteInvite>> {
        Ok(self
            .store
            .get::<RemoteInvites>(&(user_id.to_string(), room_id.to_string()))?)
    }

    /// The user's record in the room, if its last write was at stream position `sid` (what a
    /// notification at `sid` is about).
    pub fn remote_invite_at(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        sid: u64,
    ) -> Result<Option<RemoteInvite>> {
        Ok(self
            .remote_invite(user_id, room_id)?
            .filter(|record| record.sid == sid))
    }

    /// Every remote invite, knock or departure of a user.
    pub fn remote_invites_of(&self, user_id: &UserId) -> Result<Vec<(OwnedRoomId, RemoteInvite)>> {
        let rows = self
            .store
            .scan_prefix::<RemoteInvites, _>(&(user_id.to_string(),), usize::MAX)?;
        Ok(rows
            .into_iter()
            .filter_map(|((_, room), record)| Some((RoomId::parse(room).ok()?, record)))
            .collect())
    }

    /// The user's membership from a remote record, when that record is newer than what the
    /// room's own state (if this server has the room) says.
    pub fn remote_membership(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
    ) -> Result<Option<RemoteInvite>> {
        let Some(remote) = self.remote_invite(user_id, room_id)? else {
            return Ok(None);
        };
        let local = self
            .store
            .get::<super::UserRooms>(&(user_id.to_string(), room_id.to_string()))?;
        Ok(match local {
            Some(local) if local.sid > remote.sid => None,
            _ => Some(remote),
        })
    }

    /// Writes `record` for `(user, room)` at a new stream position, if the stored record is
    /// still `previous` (409-like `M_UNKNOWN` otherwise: something else changed it), clears a
    /// `/forget` of the room, stages the record's push (see the module doc), and wakes the
    /// user's syncs and push delivery once the write settled.
    pub async fn record_remote_invite(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        mut record: RemoteInvite,
        previous: Option<&RemoteInvite>,
    ) -> Result<u64> {
        // Held until the write lands, even if this future is dropped meanwhile.
        let lock = self.lock_room(room_id).await;
        let pending = self.stream.allocate()?;
        let sid = pending.pos;
        record.sid = sid;
        record.updated_ms = now_ms();
        let key = (user_id.to_string(), room_id.to_string());
        let mut batch = Batch::new();
        batch
            .expect_value::<RemoteInvites>(&key, previous)
            .put::<RemoteInvites>(&key, &record)
            .delete::<super::Forgotten>(&key);
        let pushed = self
            .stage_remote_push(&mut batch, user_id, room_id, &record)
            .await?;
        let notifier = self.notifier.clone();
        let notifications = self.notifications.clone();
        let user = user_id.to_owned();
        let result = self
            .stream
            .commit(&self.store, batch, vec![pending], lock, move || {
                notifier.notify(std::iter::once(&*user));
                notifications.changed(pushed);
            })
            .await;
        match result {
            Ok(()) => Ok(sid),
            Err(CommitError::Conflict) => Err(Error::unknown(
                "The membership changed concurrently; try again",
            )),
            Err(e) => Err(e.into()),
        }
    }
}

impl Rooms {
    /// Stages the push of a record at its position: an invite is evaluated for the invitee
    /// like a local invite; any other record reads what notified the user in the room before
    /// (the invite it replaces). Returns the users whose counts change.
    async fn stage_remote_push(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        room_id: &RoomId,
        record: &RemoteInvite,
    ) -> Result<Vec<OwnedUserId>> {
        let invite = match (&record.event, &record.event_id) {
            (Some(json), Some(id)) if record.membership == "invite" => {
                let id = OwnedEventId::try_from(id.as_str())
                    .map_err(|_| Error::unknown("recorded event id is invalid"))?;
                Pdu::from_json(id, json).ok()
            }
            _ => None,
        };
        let Some(pdu) = invite else {
            let read = [ReadUpTo::All(record.sid)];
            let changed = self
                .notifications
                .stage_read(batch, room_id, user_id, &read)?;
            return Ok(changed.map(|_| user_id.to_owned()).into_iter().collect());
        };
        let json =
            serde_json::value::RawValue::from_string(record.event.clone().unwrap_or_default())
                .map_err(|e| Error::unknown(format!("recorded event is not JSON: {e}")))?;
        let kind = pdu.kind.to_string();
        let event = NewEvent {
            sid: record.sid,
            event_id: pdu.event_id.as_str(),
            sender: &pdu.sender,
            kind: &kind,
            state_key: Some(user_id.as_str()),
            json: &json,
            thread: "main".into(),
            membership: Some("invite"),
        };
        // The room's members are not known here: rules on the member count do not match.
        let base = PushConditionRoomCtx::new(
            room_id.to_owned(),
            UInt::MIN,
            user_id.to_owned(),
            String::new(),
        );
        let invitee = Recipient {
            user_id: user_id.to_owned(),
            display_name: display_name(Some(&pdu), user_id),
        };
        self.notifications
            .stage_events(batch, room_id, &base, &[event], &[], |_| {
                Some(invitee.clone())
            })
            .await
    }
}
