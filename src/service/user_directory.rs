//! The user directory (spec: client-server API, user directory): search the users a requester
//! may know about — those who share a joined room with them, and those joined to a room with
//! a `public` join rule or `world_readable` history.
//!
//! There is no index: a search is computed from the rooms' current state when it is asked.
//! That is one pass over every room this server knows (two point lookups each, for the join
//! rule and history visibility, bounded by `MAX_ROOMS`), one scan of the members of each room
//! that qualifies, and one profile read per distinct member. On a small server (tens of rooms,
//! tens of users) that is a few hundred reads and always current; it grows linearly with rooms
//! and members, which is the trade this server makes to avoid keeping a second copy of
//! membership up to date on every member event.

use std::collections::{BTreeSet, HashSet};

use ruma::{events::room::member::MembershipState, room::JoinRule, OwnedUserId, UserId};
use serde_json::Value;

use super::{profiles::Profiles, rooms::Rooms, users::Users};
use crate::error::Result;

/// The most rooms one search looks at for public and world-readable rooms.
pub const MAX_ROOMS: usize = 10_000;
/// Rooms read per step of that scan.
const ROOM_PAGE: usize = 500;
/// The most results one search returns.
pub const MAX_LIMIT: usize = 100;

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectoryUser {
    pub user_id: OwnedUserId,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
}

pub struct UserDirectory;

/// How well a user matches: lower is better.
fn rank(tokens: &[String], term: &str, user_id: &UserId, name: Option<&str>) -> Option<u8> {
    let localpart = user_id.localpart().to_lowercase();
    let full_id = user_id.as_str().to_lowercase();
    let name = name.map(str::to_lowercase);
    let fields: Vec<&str> = std::iter::once(localpart.as_str())
        .chain(name.as_deref())
        .collect();
    // Every token must occur in the (whole) user id or the display name.
    let all_match = tokens
        .iter()
        .all(|t| full_id.contains(t.as_str()) || name.as_deref().is_some_and(|n| n.contains(t)));
    if !all_match {
        return None;
    }
    let rank = if fields.contains(&term) {
        0
    } else if fields.iter().any(|f| {
        f.starts_with(term)
            || f.split(|c: char| !c.is_alphanumeric())
                .any(|word| !word.is_empty() && word.starts_with(tokens[0].as_str()))
    }) {
        1
    } else {
        2
    };
    Some(rank)
}

impl UserDirectory {
    pub fn new() -> Self {
        Self
    }

    /// The users `requester` may see whose user id or display name matches `term`
    /// (case-insensitive; every whitespace-separated word must match), best matches first, at
    /// most `limit`; the flag tells whether more matched.
    pub fn search(
        &self,
        rooms: &Rooms,
        profiles: &Profiles,
        users: &Users,
        requester: &UserId,
        term: &str,
        limit: usize,
    ) -> Result<(Vec<DirectoryUser>, bool)> {
        let term = term.trim().to_lowercase();
        let tokens: Vec<String> = term.split_whitespace().map(str::to_owned).collect();
        if tokens.is_empty() {
            return Ok((Vec::new(), false));
        }
        let limit = limit.min(MAX_LIMIT);

        // The rooms whose joined members the requester may see.
        let mut visible: BTreeSet<u64> = BTreeSet::new();
        for room_id in rooms.rooms_of(requester, &MembershipState::Join)? {
            if let Some(record) = rooms.room(&room_id)? {
                visible.insert(record.sid);
            }
        }
        let mut after: Option<String> = None;
        let mut scanned = 0;
        while scanned < MAX_ROOMS {
            let page = rooms.known_rooms(after.as_deref(), ROOM_PAGE.min(MAX_ROOMS - scanned))?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.to_string());
            scanned += page.len();
            for (_, record) in page {
                if visible.contains(&record.sid) {
                    continue;
                }
                if rooms.join_rule(record.sid)? == JoinRule::Public
                    || rooms.is_world_readable(record.sid)?
                {
                    visible.insert(record.sid);
                }
            }
        }
        if scanned >= MAX_ROOMS {
            log::info!("user directory search looked at the first {MAX_ROOMS} rooms only");
        }

        let mut seen: HashSet<String> = HashSet::new();
        let mut matches = Vec::new();
        for room_sid in visible {
            for (user, membership) in rooms.members(room_sid)? {
                if membership != "join" || !seen.insert(user.clone()) {
                    continue;
                }
                let Ok(user_id) = UserId::parse(&user) else {
                    continue;
                };
                let (name, avatar) = self.profile(rooms, profiles, room_sid, &user_id)?;
                let Some(rank) = rank(&tokens, &term, &user_id, name.as_deref()) else {
                    continue;
                };
                if users.get(&user_id)?.is_some_and(|u| u.deactivated) {
                    continue;
                }
                matches.push((
                    rank,
                    DirectoryUser {
                        user_id,
                        display_name: name,
                        avatar_url: avatar,
                    },
                ));
            }
        }
        // Rank, then users with profile information first, then by id.
        matches.sort_by(|(ra, a), (rb, b)| {
            ra.cmp(rb)
                .then(b.display_name.is_some().cmp(&a.display_name.is_some()))
                .then(b.avatar_url.is_some().cmp(&a.avatar_url.is_some()))
                .then_with(|| a.user_id.cmp(&b.user_id))
        });
        let limited = matches.len() > limit;
        matches.truncate(limit);
        Ok((matches.into_iter().map(|(_, u)| u).collect(), limited))
    }

    /// A user's display name and avatar: the global profile of a local user, the member event
    /// of anyone else (what their server told the room).
    fn profile(
        &self,
        rooms: &Rooms,
        profiles: &Profiles,
        room_sid: u64,
        user_id: &UserId,
    ) -> Result<(Option<String>, Option<String>)> {
        if user_id.server_name() == rooms.server_name() {
            let name = profiles.displayname(user_id)?.filter(|n| !n.is_empty());
            return Ok((name, profiles.avatar_url(user_id)?));
        }
        let member = rooms.state_event(
            room_sid,
            &ruma::events::StateEventType::RoomMember,
            user_id.as_str(),
        )?;
        let content = member.and_then(|e| e.pdu.content_as::<Value>());
        let field = |name: &str| {
            content
                .as_ref()
                .and_then(|c| c.get(name)?.as_str().map(str::to_owned))
                .filter(|s| !s.is_empty())
        };
        Ok((field("displayname"), field("avatar_url")))
    }
}

impl Default for UserDirectory {
    fn default() -> Self {
        Self::new()
    }
}
