//! Device-list tracking: which users' devices or cross-signing keys changed, and who started
//! or stopped sharing an encrypted room with whom.
//!
//! Key changes are a stream: every change of a user's device keys (upload, device deletion) or
//! cross-signing keys takes a stream position and is recorded as "this user changed at this
//! position" — one row per user, the latest, so the log is bounded by the number of users.
//! Signatures that only one user may see (made with their user-signing key) are announced to
//! that user alone through a per-viewer notice.
//!
//! Membership-driven changes are not stored: they are read from the rooms' current state when
//! asked. For a viewer and a range of positions `(since, upto]`:
//! - `changed` gets users whose keys changed in the range and who share a room with the viewer
//!   (the viewer included), plus users who *now* share an encrypted room with the viewer
//!   because of a membership event or the room becoming encrypted in the range;
//! - `left` gets users whose membership in an encrypted room of the viewer changed to
//!   something else than join/invite in the range, or who were in an encrypted room the viewer
//!   left in the range, and who no longer share any encrypted room with the viewer.
//!
//! The membership reads use the rooms service's tables (`user_rooms`, `rooms`,
//! `room_members`, `current_state`; see `schema/rooms.md`) read-only.

use std::collections::BTreeSet;

use ruma::{OwnedUserId, RoomId, UserId};

use super::E2ee;
use crate::{
    error::Result,
    service::federation::devices::DeviceListDirty,
    service::rooms::{CurrentState, RoomMembers, Rooms, RoomsTable, UserRooms},
    store::{Batch, Store},
    table,
};

table!(
    /// `position → user_id`: the user's devices or cross-signing keys changed at that position.
    /// One row per user (its latest change), named by `e2ee_device_list_latest`.
    pub DeviceListChanges: "e2ee_device_list_changes", u64 => String
);
table!(
    /// `user_id → position` of the user's row in `e2ee_device_list_changes`.
    pub DeviceListLatest: "e2ee_device_list_latest", String => u64
);
table!(
    /// `(viewer user_id, position) → user_id`: a change of `user_id`'s keys that only the viewer
    /// can see (a signature made with the viewer's user-signing key).
    pub DeviceListNotices: "e2ee_device_list_notices", (String, u64) => String
);

/// Bounds a scan of the change log (one row per user, so this many users).
const MAX_ROWS: usize = 1_000_000;

/// Memberships that count as sharing a room with its joined members.
fn shares(membership: &str) -> bool {
    membership == "join" || membership == "invite"
}

/// One room the viewer has a membership in, as the device lists see it.
struct ViewerRoom {
    room_id: String,
    room_sid: u64,
    membership: String,
    /// Position of the viewer's membership event.
    member_sid: u64,
    /// Position of the current `m.room.encryption` event, if the room is encrypted.
    encrypted_at: Option<u64>,
}

/// The rooms the viewer has a membership in, as the device lists see them: those with a
/// timeline position past `since` in full (`active`); of the others (nothing of theirs changed
/// in the range, `rooms::latest`) the joined ones by id (`quiet`), whose members are read only
/// when a key change needs the users the viewer shares a room with. Unencrypted active rooms
/// join `quiet` later: only sharing matters of them.
struct ViewerRooms {
    active: Vec<ViewerRoom>,
    /// Room ids.
    quiet: Vec<String>,
}

fn viewer_rooms(store: &Store, rooms: &Rooms, user_id: &UserId, since: u64) -> Result<ViewerRooms> {
    let rows = store.scan_prefix::<UserRooms, _>(&(user_id.as_str(),), usize::MAX)?;
    let mut out = ViewerRooms {
        active: Vec::new(),
        quiet: Vec::new(),
    };
    for ((_, room_id), row) in rows {
        let quiet = match RoomId::parse(&room_id) {
            Ok(id) => rooms.latest_position(&id)? <= since,
            Err(_) => false,
        };
        if quiet {
            if row.membership == "join" {
                out.quiet.push(room_id);
            }
            continue;
        }
        if let Some(room) = viewer_room(store, &room_id, row.membership, row.sid)? {
            out.active.push(room);
        }
    }
    Ok(out)
}

fn viewer_room(
    store: &Store,
    room_id: &str,
    membership: String,
    member_sid: u64,
) -> Result<Option<ViewerRoom>> {
    let Some(room) = store.get::<RoomsTable>(&room_id.to_owned())? else {
        return Ok(None);
    };
    let encrypted_at =
        store.get::<CurrentState>(&(room.sid, "m.room.encryption".to_owned(), String::new()))?;
    Ok(Some(ViewerRoom {
        room_id: room_id.to_owned(),
        room_sid: room.sid,
        membership,
        member_sid,
        encrypted_at,
    }))
}

fn room_members(store: &Store, room_sid: u64) -> Result<Vec<(String, String)>> {
    Ok(store
        .scan_prefix::<RoomMembers, _>(&(room_sid,), usize::MAX)?
        .into_iter()
        .map(|((_, user), membership)| (user, membership))
        .collect())
}

impl E2ee {
    /// Stages "`user_id`'s devices or cross-signing keys changed at `pos`", replacing the
    /// user's earlier row. Guarded: a concurrent change of the same user makes the batch
    /// conflict, so the caller retries with a new position.
    pub(crate) fn stage_change(&self, batch: &mut Batch, pos: u64, user_id: &UserId) -> Result<()> {
        let user = user_id.to_string();
        let old = self.store.get::<DeviceListLatest>(&user)?;
        if let Some(old) = old {
            batch.delete::<DeviceListChanges>(&old);
        }
        batch
            .expect_value::<DeviceListLatest>(&user, old.as_ref())
            .put::<DeviceListLatest>(&user, &pos)
            .put::<DeviceListChanges>(&pos, &user);
        if self.is_local(user_id) {
            // Announced to other servers after the commit (`federation::devices`).
            batch.put::<DeviceListDirty>(&user, &pos);
        }
        Ok(())
    }

    /// Stages a change of `user_id`'s keys that only `viewer` sees.
    pub(crate) fn stage_notice(
        &self,
        batch: &mut Batch,
        pos: u64,
        viewer: &UserId,
        user_id: &UserId,
    ) {
        batch.put::<DeviceListNotices>(&(viewer.to_string(), pos), &user_id.to_string());
    }

    /// The users whose syncs a change of `user_id`'s devices or keys concerns: the user and
    /// everyone joined to a room the user shares.
    pub(crate) fn device_change_targets(&self, user_id: &UserId) -> Result<Vec<OwnedUserId>> {
        let mut users = BTreeSet::from([user_id.to_owned()]);
        let rows = self
            .store
            .scan_prefix::<UserRooms, _>(&(user_id.as_str(),), usize::MAX)?;
        for ((_, room_id), row) in rows {
            let Some(room) = viewer_room(&self.store, &room_id, row.membership, row.sid)? else {
                continue;
            };
            if !shares(&room.membership) {
                continue;
            }
            for (member, membership) in room_members(&self.store, room.room_sid)? {
                if membership == "join" {
                    if let Ok(member) = UserId::parse(member) {
                        users.insert(member);
                    }
                }
            }
        }
        Ok(users.into_iter().collect())
    }

    /// The users whose device lists changed for `user_id` in `(since, upto]`, and those who
    /// stopped sharing every encrypted room with them: `(changed, left)`, each sorted, never
    /// overlapping. See the module documentation for the rules.
    pub fn device_list_changes(
        &self,
        rooms: &Rooms,
        user_id: &UserId,
        since: u64,
        upto: u64,
    ) -> Result<(Vec<OwnedUserId>, Vec<OwnedUserId>)> {
        let in_range = |pos: u64| pos > since && pos <= upto;
        let mut changed = BTreeSet::<String>::new();
        let mut left_candidates = BTreeSet::<String>::new();
        // Users sharing any room / an encrypted room with the viewer now.
        let mut share_any = BTreeSet::<String>::from([user_id.to_string()]);
        let mut share_encrypted = BTreeSet::<String>::new();

        let mut viewer = viewer_rooms(&self.store, rooms, user_id, since)?;
        for room in viewer.active {
            if room.encrypted_at.is_none() {
                // Its members matter only as users the viewer shares a room with, which only
                // a key change needs: read lazily, as for quiet rooms.
                if room.membership == "join" {
                    viewer.quiet.push(room.room_id);
                }
                continue;
            }
            let newly_shared =
                in_range(room.member_sid) || room.encrypted_at.is_some_and(&in_range);
            if room.membership == "join" {
                let quiet_members = match RoomId::parse(&room.room_id) {
                    Ok(id) => rooms.latest_member_change(&id)? <= since,
                    Err(_) => false,
                };
                if !newly_shared && quiet_members {
                    // No member event of the room in the range (`rooms::latest`): its members
                    // matter only as users the viewer shares a room with, read lazily as for
                    // quiet rooms. Reading them here cost O(members) per sync.
                    viewer.quiet.push(room.room_id);
                    continue;
                }
            }
            let members = room_members(&self.store, room.room_sid)?;
            if room.membership != "join" {
                // A room the viewer left in the range: its members may no longer share an
                // encrypted room with the viewer.
                let gone = room.membership == "leave" || room.membership == "ban";
                if gone && in_range(room.member_sid) {
                    left_candidates.extend(
                        members
                            .into_iter()
                            .filter(|(_, m)| shares(m))
                            .map(|(u, _)| u),
                    );
                }
                continue;
            }
            for (member, membership) in &members {
                if shares(membership) {
                    share_any.insert(member.clone());
                    share_encrypted.insert(member.clone());
                }
            }
            if newly_shared {
                changed.extend(
                    members
                        .iter()
                        .filter(|(_, m)| shares(m))
                        .map(|(u, _)| u.clone()),
                );
                continue;
            }
            // Member events in the range: joins and invites start sharing, anything else may
            // stop it.
            let member_events = self
                .store
                .scan_prefix::<CurrentState, _>(&(room.room_sid, "m.room.member"), usize::MAX)?;
            let memberships: std::collections::HashMap<&str, &str> = members
                .iter()
                .map(|(u, m)| (u.as_str(), m.as_str()))
                .collect();
            for ((_, _, member), sid) in member_events {
                if !in_range(sid) {
                    continue;
                }
                match memberships.get(member.as_str()) {
                    Some(m) if shares(m) => {
                        changed.insert(member);
                    }
                    _ => {
                        left_candidates.insert(member);
                    }
                }
            }
        }

        // Key changes of users sharing a room with the viewer.
        let rows: Vec<String> = self
            .store
            .range::<DeviceListChanges>(Some(&(since + 1)), false, MAX_ROWS)?
            .into_iter()
            .take_while(|(pos, _)| *pos <= upto)
            .map(|(_, user)| user)
            .collect();
        // Who the viewer shares its quiet rooms with matters only now.
        if !rows.is_empty() || !left_candidates.is_empty() {
            for room_id in &viewer.quiet {
                let Some(room) = viewer_room(&self.store, room_id, "join".into(), 0)? else {
                    continue;
                };
                for (member, membership) in room_members(&self.store, room.room_sid)? {
                    if shares(&membership) {
                        if room.encrypted_at.is_some() {
                            share_encrypted.insert(member.clone());
                        }
                        share_any.insert(member);
                    }
                }
            }
        }
        for user in rows {
            if share_any.contains(&user) {
                changed.insert(user);
            }
        }
        // Changes only this viewer sees.
        let notices = self.store.range_in_prefix::<DeviceListNotices, _>(
            &(user_id.as_str(),),
            Some(&(user_id.to_string(), since + 1)),
            false,
            MAX_ROWS,
        )?;
        for ((_, pos), user) in notices {
            if pos > upto {
                break;
            }
            changed.insert(user);
        }

        let left: BTreeSet<String> = left_candidates
            .into_iter()
            .filter(|u| !share_encrypted.contains(u) && u != user_id.as_str())
            .collect();
        let parse = |set: BTreeSet<String>| -> Vec<OwnedUserId> {
            set.into_iter()
                .filter_map(|u| UserId::parse(u).ok())
                .collect()
        };
        let changed: BTreeSet<String> = changed.difference(&left).cloned().collect();
        Ok((parse(changed), parse(left)))
    }
}
