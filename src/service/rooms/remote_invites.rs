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
//! Invariants: a record's `sid` is a stream position allocated for its write, so every write
//! is seen once by an incremental sync; writes are conditional on the record read before
//! (`expect_value`), so two concurrent changes (a rejection and a rescind) cannot both win.

use ruma::{OwnedRoomId, RoomId, UserId};
use serde::{Deserialize, Serialize};

use super::Rooms;
use crate::{
    error::{Error, Result},
    service::users::now_ms,
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
    /// `/forget` of the room, and wakes the user's syncs once the write settled.
    pub async fn record_remote_invite(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        mut record: RemoteInvite,
        previous: Option<&RemoteInvite>,
    ) -> Result<u64> {
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
        let notifier = self.notifier.clone();
        let user = user_id.to_owned();
        let result = self
            .stream
            .commit(&self.store, batch, vec![pending], (), move || {
                notifier.notify(std::iter::once(&*user));
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
