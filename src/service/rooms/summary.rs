//! `GET /room_summary/{roomIdOrAlias}` (spec: client-server API, "Room Summaries"): the
//! summary the space hierarchy shows for each room ([`Rooms::summary`]), for one room named by
//! id or local alias, with the requester's membership.
//!
//! Who may see it is the hierarchy's rule ([`Rooms::can_peek`]): members and invitees, and
//! anyone for rooms that are public, knockable, restricted to a room they are in, or
//! world-readable; unauthenticated requesters only the public, knockable and world-readable
//! ones (the spec's condition for unauthenticated access). Any other room is answered exactly
//! like a room this server does not know (404), so the endpoint does not reveal which rooms
//! exist. Only rooms this server knows are summarised: `via` would need federation.
//!
//! Also `GET /mutual_rooms` ([`Rooms::mutual_rooms`]): the rooms two users are both joined to.

use std::collections::HashSet;

use ruma::{
    events::room::member::MembershipState, room::RoomSummary, OwnedRoomId, RoomId, RoomOrAliasId,
    UserId,
};

use super::{RoomRecord, Rooms};
use crate::error::{Error, Result};

/// Rooms per page of `/mutual_rooms`.
pub const MUTUAL_ROOMS_PAGE: usize = 50;

/// One page of the rooms two users share.
#[derive(Debug, Clone)]
pub struct MutualRooms {
    /// In room-id order.
    pub rooms: Vec<OwnedRoomId>,
    /// All the rooms they share, on every page.
    pub total: usize,
    /// The last room of this page, when more follow.
    pub next_after: Option<OwnedRoomId>,
}

fn room_not_found() -> Error {
    Error::not_found("Room not found")
}

impl Rooms {
    /// The room a room id or alias names, if this server knows it: a room id this server has
    /// a room for, or a local alias.
    fn resolve_known_room(
        &self,
        room: &RoomOrAliasId,
    ) -> Result<Option<(OwnedRoomId, RoomRecord)>> {
        let room_id = match <&RoomId>::try_from(room) {
            Ok(room_id) => room_id.to_owned(),
            Err(alias) => {
                if alias.server_name() != self.server_name() {
                    return Ok(None);
                }
                match self.alias_room(alias)? {
                    Some(room_id) => room_id,
                    None => return Ok(None),
                }
            }
        };
        Ok(self.room(&room_id)?.map(|record| (room_id, record)))
    }

    /// The summary of `room` for `requester` (`None`: unauthenticated) and the requester's
    /// membership (`leave` when they have none; absent when unauthenticated). 404 when the
    /// room is unknown or the requester may not see it.
    pub fn room_summary(
        &self,
        requester: Option<&UserId>,
        room: &RoomOrAliasId,
    ) -> Result<(RoomSummary, Option<MembershipState>)> {
        let (room_id, record) = self.resolve_known_room(room)?.ok_or_else(room_not_found)?;
        if !self.can_peek(requester, &room_id, &record)? {
            return Err(room_not_found());
        }
        let membership = match requester {
            None => None,
            Some(user_id) => {
                let membership = match self.membership(&room_id, user_id)? {
                    // A forgotten room is as if the user had never been in it.
                    Some(_) if self.is_forgotten(&room_id, user_id)? => None,
                    m => m,
                };
                Some(membership.unwrap_or(MembershipState::Leave))
            }
        };
        Ok((self.summary(&room_id, &record)?, membership))
    }

    /// The rooms `me` and `other` are both joined to, in room-id order, starting after
    /// `after`, at most [`MUTUAL_ROOMS_PAGE`]. An unknown `other` shares no rooms. Costs one
    /// scan of each user's memberships.
    pub fn mutual_rooms(
        &self,
        me: &UserId,
        other: &UserId,
        after: Option<&RoomId>,
    ) -> Result<MutualRooms> {
        let theirs: HashSet<OwnedRoomId> = self
            .rooms_of(other, &MembershipState::Join)?
            .into_iter()
            .collect();
        let mut shared: Vec<OwnedRoomId> = self
            .rooms_of(me, &MembershipState::Join)?
            .into_iter()
            .filter(|room| theirs.contains(room))
            .collect();
        shared.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let total = shared.len();
        let start = after.map_or(0, |after| {
            shared.partition_point(|r| r.as_str() <= after.as_str())
        });
        let rooms: Vec<OwnedRoomId> = shared
            .into_iter()
            .skip(start)
            .take(MUTUAL_ROOMS_PAGE + 1)
            .collect();
        let (rooms, next_after) = if rooms.len() > MUTUAL_ROOMS_PAGE {
            let page = rooms[..MUTUAL_ROOMS_PAGE].to_vec();
            let last = page.last().cloned();
            (page, last)
        } else {
            (rooms, None)
        };
        Ok(MutualRooms {
            rooms,
            total,
            next_after,
        })
    }
}
