//! Room aliases and the published room directory.
//!
//! Aliases live in two tables written together: `aliases` (`#alias → room and creator`, the
//! lookup) and `room_aliases` (`(room, alias)`, so a room's aliases are a prefix scan, not a
//! scan of every alias). The directory is the set of published rooms (`public_rooms`); a
//! listing reads each published room's current state and orders the rooms by joined members
//! (most first), then room id. Pagination tokens name the boundary entry of a page in that
//! order, so a room published or unpublished between two pages neither repeats nor hides the
//! others.

use std::cmp::Reverse;

use ruma::{
    events::{
        room::{
            member::MembershipState,
            power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent},
        },
        StateEventType, TimelineEventType,
    },
    room_version_rules::AuthorizationRules,
    OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId,
};
use serde_json::{json, Value};

use super::{NewEvent, Pdu, RoomRecord, Rooms};
use crate::{
    error::{Error, Result},
    store::{Batch, CommitError, Record},
    table,
};

table!(
    /// `#alias:server → AliasRecord` for local aliases.
    pub Aliases: "aliases", String => AliasRecord
);
table!(
    /// `(room_id, #alias:server) → true`: the local aliases of each room, mirroring `aliases`.
    pub RoomAliases: "room_aliases", (String, String) => bool
);
table!(
    /// `room_id → true`: rooms published in this server's room directory.
    pub PublicRooms: "public_rooms", String => bool
);

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AliasRecord {
    pub room_id: String,
    /// The user who created the alias (may always delete it).
    pub creator: String,
}
impl Record for AliasRecord {}

/// Most rooms one directory page returns.
pub const MAX_DIRECTORY_PAGE: usize = 500;

/// A room as the published directory shows it.
#[derive(Debug, Clone)]
pub struct DirectoryRoom {
    pub room_id: OwnedRoomId,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub canonical_alias: Option<OwnedRoomAliasId>,
    /// `alt_aliases` of the canonical alias event (searched, not shown).
    pub alt_aliases: Vec<String>,
    pub num_joined_members: u64,
    pub world_readable: bool,
    pub guest_can_join: bool,
    pub join_rule: String,
    pub avatar_url: Option<String>,
    pub room_type: Option<String>,
}

/// What a directory listing asks for.
#[derive(Debug, Clone, Default)]
pub struct DirectoryQuery {
    pub limit: Option<usize>,
    pub since: Option<String>,
    /// Case-insensitive substring of the name, topic or aliases.
    pub search: Option<String>,
    /// Room types to include (`None` = rooms without a type); empty = every type.
    pub room_types: Vec<Option<String>>,
}

#[derive(Debug, Clone)]
pub struct DirectoryPage {
    pub rooms: Vec<DirectoryRoom>,
    pub next_batch: Option<String>,
    pub prev_batch: Option<String>,
    /// Rooms matching the query, over all pages.
    pub total: usize,
}

/// A directory pagination token: the rooms after (`n`) or before (`p`) the entry with this
/// sort key.
enum DirectoryToken {
    After(u64, String),
    Before(u64, String),
}

impl DirectoryToken {
    fn parse(token: &str) -> Result<Self> {
        let invalid = || Error::invalid_param("Invalid pagination token");
        let (dir, rest) = token.split_at_checked(1).ok_or_else(invalid)?;
        let (count, room) = rest.split_once('.').ok_or_else(invalid)?;
        let count: u64 = count.parse().map_err(|_| invalid())?;
        if !room.starts_with('!') {
            return Err(invalid());
        }
        match dir {
            "n" => Ok(Self::After(count, room.to_owned())),
            "p" => Ok(Self::Before(count, room.to_owned())),
            _ => Err(invalid()),
        }
    }
}

fn token(dir: char, room: &DirectoryRoom) -> String {
    format!("{dir}{}.{}", room.num_joined_members, room.room_id)
}

fn sort_key(room: &DirectoryRoom) -> (Reverse<u64>, &str) {
    (Reverse(room.num_joined_members), room.room_id.as_str())
}

/// The room's creators: the create event's sender (its `creator` field before v11) and, in
/// room versions that privilege creators, its `additional_creators`.
pub fn creators_of(create: &Pdu, rules: &AuthorizationRules) -> Vec<OwnedUserId> {
    let content = create.content_as::<Value>().unwrap_or(Value::Null);
    let mut creators = Vec::new();
    if rules.use_room_create_sender {
        creators.push(create.sender.clone());
    } else {
        let creator = content
            .get("creator")
            .and_then(Value::as_str)
            .and_then(|c| UserId::parse(c).ok())
            .unwrap_or_else(|| create.sender.clone());
        creators.push(creator);
    }
    if rules.explicitly_privilege_room_creators {
        let additional = content
            .get("additional_creators")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter_map(|u| UserId::parse(u).ok());
        for user in additional {
            if !creators.contains(&user) {
                creators.push(user);
            }
        }
    }
    creators
}

/// A string field of a state event's content, if present and not empty.
fn content_str(content: &Value, field: &str) -> Option<String> {
    content
        .get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The plain-text topic: the `text/plain` representation of `m.topic` when there is one,
/// otherwise the `topic` field.
pub fn plain_topic(content: &Value) -> Option<String> {
    let blocks = content
        .get("m.topic")
        .and_then(|t| t.get("m.text").or(Some(t)))
        .and_then(Value::as_array);
    if let Some(blocks) = blocks {
        let plain = blocks.iter().find(|b| {
            b.get("mimetype")
                .and_then(Value::as_str)
                .is_none_or(|m| m == "text/plain")
        });
        if let Some(body) = plain.and_then(|b| content_str(b, "body")) {
            return Some(body);
        }
    }
    content_str(content, "topic")
}

impl Rooms {
    /// The room an alias of this server points to.
    pub fn alias_room(&self, alias: &RoomAliasId) -> Result<Option<OwnedRoomId>> {
        let record = self.store.get::<Aliases>(&alias.to_string())?;
        Ok(record.and_then(|r| RoomId::parse(r.room_id).ok()))
    }

    pub fn alias_record(&self, alias: &RoomAliasId) -> Result<Option<AliasRecord>> {
        Ok(self.store.get::<Aliases>(&alias.to_string())?)
    }

    /// The local aliases pointing to a room, in alias order.
    pub fn local_aliases(&self, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
        let rows = self
            .store
            .scan_prefix::<RoomAliases, _>(&(room_id.to_string(),), usize::MAX)?;
        Ok(rows
            .into_iter()
            .filter_map(|((_, alias), _)| RoomAliasId::parse(alias).ok())
            .collect())
    }

    /// Stages a new alias (both tables) with the precondition that it is still free.
    pub fn stage_alias(batch: &mut Batch, alias: &RoomAliasId, room_id: &RoomId, creator: &UserId) {
        let record = AliasRecord {
            room_id: room_id.to_string(),
            creator: creator.to_string(),
        };
        batch
            .expect_absent::<Aliases>(&alias.to_string())
            .put::<Aliases>(&alias.to_string(), &record)
            .put::<RoomAliases>(&(room_id.to_string(), alias.to_string()), &true);
    }

    /// Stages pointing an existing alias (`record`) at another room, keeping its creator;
    /// refused at commit if the alias changed meanwhile.
    pub fn stage_alias_move(
        batch: &mut Batch,
        alias: &RoomAliasId,
        record: &AliasRecord,
        to: &RoomId,
    ) {
        let moved = AliasRecord {
            room_id: to.to_string(),
            creator: record.creator.clone(),
        };
        batch
            .expect_value::<Aliases>(&alias.to_string(), Some(record))
            .put::<Aliases>(&alias.to_string(), &moved)
            .delete::<RoomAliases>(&(record.room_id.clone(), alias.to_string()))
            .put::<RoomAliases>(&(to.to_string(), alias.to_string()), &true);
    }

    /// Creates a local alias for a room this server knows: 404 for an unknown room, 403 if
    /// `creator` is not joined to it, 409 `M_UNKNOWN` if the alias is taken.
    pub async fn set_alias(
        &self,
        alias: &RoomAliasId,
        room_id: &RoomId,
        creator: &UserId,
    ) -> Result<()> {
        let taken = || {
            Error::new(
                http::StatusCode::CONFLICT,
                "M_UNKNOWN",
                format!("Room alias {alias} already exists"),
            )
        };
        if alias.server_name() != self.server_name {
            return Err(Error::invalid_param(
                "Room aliases can only be created on this server's domain",
            ));
        }
        if self.room(room_id)?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        // An alias speaks for a room: only its members may name it. Whether the alias becomes
        // the room's published (canonical) alias is the room's decision, by power level.
        if self.membership(room_id, creator)? != Some(MembershipState::Join) {
            return Err(Error::forbidden(
                "You must be joined to a room to create an alias for it",
            ));
        }
        if self.alias_record(alias)?.is_some() {
            return Err(taken());
        }
        let mut batch = Batch::new();
        Self::stage_alias(&mut batch, alias, room_id, creator);
        match self.store.commit(batch).await {
            Ok(()) => Ok(()),
            Err(CommitError::Conflict) => Err(taken()),
            Err(e) => Err(e.into()),
        }
    }

    /// The room's power levels as ruma computes them (creators included).
    pub fn power_levels(&self, room: &RoomRecord) -> Result<RoomPowerLevels> {
        let version = self.room_version(room)?;
        let rules = version
            .rules()
            .ok_or_else(|| Error::unknown("unsupported room version"))?;
        let creators = self
            .state_event(room.sid, &StateEventType::RoomCreate, "")?
            .map(|e| creators_of(&e.pdu, &rules.authorization))
            .unwrap_or_default();
        let content = self
            .state_event(room.sid, &StateEventType::RoomPowerLevels, "")?
            .and_then(|e| e.pdu.content_as::<RoomPowerLevelsEventContent>());
        Ok(RoomPowerLevels::new(
            content.into(),
            &rules.authorization,
            creators,
        ))
    }

    /// Whether the user is joined to the room and may send state events of `kind` there.
    pub fn can_send_state(
        &self,
        room_id: &RoomId,
        room: &RoomRecord,
        user_id: &UserId,
        kind: StateEventType,
    ) -> Result<bool> {
        if self.membership(room_id, user_id)? != Some(MembershipState::Join) {
            return Ok(false);
        }
        Ok(self.power_levels(room)?.user_can_send_state(user_id, kind))
    }

    /// Deletes a local alias. Allowed for its creator and for members who may send
    /// `m.room.canonical_alias` in its room. If the room's canonical alias event names the
    /// alias, the event is updated without it, sent as `user_id` when the room's rules allow
    /// (otherwise the alias is still deleted, as the spec recommends).
    pub async fn delete_alias(&self, alias: &RoomAliasId, user_id: &UserId) -> Result<()> {
        let not_found = || Error::not_found(format!("Room alias {alias} not found"));
        let record = self.alias_record(alias)?.ok_or_else(not_found)?;
        let room_id = RoomId::parse(&record.room_id)
            .map_err(|_| Error::unknown("stored alias names an invalid room id"))?;
        let key = alias.to_string();
        let stage_delete = |batch: &mut Batch| {
            batch
                .expect_value::<Aliases>(&key, Some(&record))
                .delete::<Aliases>(&key)
                .delete::<RoomAliases>(&(record.room_id.clone(), key.clone()));
        };
        let is_creator = record.creator == user_id.as_str();

        let Some(room) = self.room(&room_id)? else {
            // The room is gone from this server; only the creator may clean up.
            if !is_creator {
                return Err(Error::forbidden("You may not delete this alias"));
            }
            let mut batch = Batch::new();
            stage_delete(&mut batch);
            return match self.store.commit(batch).await {
                Ok(()) => Ok(()),
                Err(CommitError::Conflict) => Err(not_found()),
                Err(e) => Err(e.into()),
            };
        };
        if !is_creator
            && !self.can_send_state(&room_id, &room, user_id, StateEventType::RoomCanonicalAlias)?
        {
            return Err(Error::forbidden(
                "Only the alias's creator or a room member who may set the canonical alias \
                 may delete it",
            ));
        }

        let mut staged = self.stage(&room_id).await?;
        if let Some(content) = staged
            .state_pdu(&StateEventType::RoomCanonicalAlias, "")
            .and_then(|pdu| pdu.content_as::<Value>())
        {
            if let Some(updated) = without_alias(&content, alias.as_str()) {
                let event = NewEvent::state(TimelineEventType::RoomCanonicalAlias, "", updated);
                match staged.add(user_id, event) {
                    Ok(_) => {}
                    // Not allowed to update the event: delete the alias regardless.
                    Err(e) if e.errcode == "M_FORBIDDEN" => {}
                    Err(e) => return Err(e),
                }
            }
        }
        stage_delete(staged.batch_mut());
        staged.commit_with(not_found).await?;
        Ok(())
    }

    pub fn is_published(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self
            .store
            .get::<PublicRooms>(&room_id.to_string())?
            .unwrap_or(false))
    }

    /// Publishes or hides a room in the directory. Only the room's administrators (joined
    /// members who may send `m.room.power_levels`) may change it.
    pub async fn set_published(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        publish: bool,
    ) -> Result<()> {
        let room = self
            .room(room_id)?
            .ok_or_else(|| Error::not_found("Room not found"))?;
        if !self.can_send_state(room_id, &room, user_id, StateEventType::RoomPowerLevels)? {
            return Err(Error::forbidden(
                "Only the room's administrators may change its visibility in the directory",
            ));
        }
        let mut batch = Batch::new();
        if publish {
            batch.put::<PublicRooms>(&room_id.to_string(), &true);
        } else {
            batch.delete::<PublicRooms>(&room_id.to_string());
        }
        Ok(self.store.commit(batch).await?)
    }

    fn state_content(&self, room_sid: u64, kind: StateEventType) -> Result<Option<Value>> {
        Ok(self
            .state_event(room_sid, &kind, "")?
            .and_then(|e| e.pdu.content_as::<Value>()))
    }

    /// One room's directory entry, from its current state.
    pub fn directory_room(&self, room_id: &RoomId, room: &RoomRecord) -> Result<DirectoryRoom> {
        let sid = room.sid;
        let content = |kind| self.state_content(sid, kind);
        let name = content(StateEventType::RoomName)?.and_then(|c| content_str(&c, "name"));
        let topic = content(StateEventType::RoomTopic)?.and_then(|c| plain_topic(&c));
        let canonical = content(StateEventType::RoomCanonicalAlias)?.unwrap_or(Value::Null);
        let canonical_alias =
            content_str(&canonical, "alias").and_then(|a| RoomAliasId::parse(a).ok());
        let alt_aliases = canonical
            .get("alt_aliases")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        let world_readable = content(StateEventType::RoomHistoryVisibility)?
            .and_then(|c| content_str(&c, "history_visibility"))
            .is_some_and(|v| v == "world_readable");
        let guest_can_join = content(StateEventType::RoomGuestAccess)?
            .and_then(|c| content_str(&c, "guest_access"))
            .is_some_and(|v| v == "can_join");
        // No join rules event: the room is invite-only (the auth rules' default).
        let join_rule = content(StateEventType::RoomJoinRules)?
            .and_then(|c| content_str(&c, "join_rule"))
            .unwrap_or_else(|| "invite".into());
        let avatar_url = content(StateEventType::RoomAvatar)?.and_then(|c| content_str(&c, "url"));
        let room_type = content(StateEventType::RoomCreate)?.and_then(|c| content_str(&c, "type"));
        let num_joined_members = self
            .members(sid)?
            .iter()
            .filter(|(_, m)| m == "join")
            .count() as u64;
        Ok(DirectoryRoom {
            room_id: room_id.to_owned(),
            name,
            topic,
            canonical_alias,
            alt_aliases,
            num_joined_members,
            world_readable,
            guest_can_join,
            join_rule,
            avatar_url,
            room_type,
        })
    }

    /// A page of the published room directory.
    pub fn public_rooms(&self, query: &DirectoryQuery) -> Result<DirectoryPage> {
        let since = query
            .since
            .as_deref()
            .map(DirectoryToken::parse)
            .transpose()?;
        let search = query.search.as_ref().map(|s| s.to_lowercase());
        let mut rooms = Vec::new();
        for (room_id, published) in self.store.scan_prefix::<PublicRooms, _>(&(), usize::MAX)? {
            let Ok(room_id) = RoomId::parse(&room_id) else {
                continue;
            };
            let (true, Some(record)) = (published, self.room(&room_id)?) else {
                continue;
            };
            let entry = self.directory_room(&room_id, &record)?;
            if !query.room_types.is_empty() && !query.room_types.contains(&entry.room_type) {
                continue;
            }
            if let Some(term) = &search {
                let matches = [&entry.name, &entry.topic]
                    .into_iter()
                    .flatten()
                    .map(String::as_str)
                    .chain(entry.canonical_alias.as_ref().map(|a| a.as_str()))
                    .chain(entry.alt_aliases.iter().map(String::as_str))
                    .any(|text| text.to_lowercase().contains(term.as_str()));
                if !matches {
                    continue;
                }
            }
            rooms.push(entry);
        }
        rooms.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
        let total = rooms.len();
        let limit = query
            .limit
            .unwrap_or(MAX_DIRECTORY_PAGE)
            .min(MAX_DIRECTORY_PAGE);
        let (start, end) = match &since {
            None => (0, limit.min(total)),
            Some(DirectoryToken::After(count, room)) => {
                let key = (Reverse(*count), room.as_str());
                let start = rooms.partition_point(|r| sort_key(r) <= key);
                (start, (start + limit).min(total))
            }
            Some(DirectoryToken::Before(count, room)) => {
                let key = (Reverse(*count), room.as_str());
                let end = rooms.partition_point(|r| sort_key(r) < key);
                (end.saturating_sub(limit), end)
            }
        };
        let page: Vec<DirectoryRoom> = rooms[start..end].to_vec();
        let prev_batch = match page.first() {
            Some(first) if start > 0 => Some(token('p', first)),
            _ => None,
        };
        let next_batch = match page.last() {
            Some(last) if end < total => Some(token('n', last)),
            _ => None,
        };
        Ok(DirectoryPage {
            rooms: page,
            next_batch,
            prev_batch,
            total,
        })
    }
}

/// The canonical alias content without `alias`, or `None` if it does not name it.
fn without_alias(content: &Value, alias: &str) -> Option<Value> {
    let mut updated = content.as_object()?.clone();
    let mut changed = false;
    if updated.get("alias").and_then(Value::as_str) == Some(alias) {
        updated.remove("alias");
        changed = true;
    }
    if let Some(alt) = updated.get_mut("alt_aliases").and_then(Value::as_array_mut) {
        let before = alt.len();
        alt.retain(|a| a.as_str() != Some(alias));
        changed |= alt.len() != before;
        if alt.is_empty() {
            updated.remove("alt_aliases");
        }
    }
    changed.then(|| json!(updated))
}
