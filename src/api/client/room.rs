//! Creating rooms, sending events, reading state, events and the timeline.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    api::{
        client::{
            membership::{get_member_events, joined_members, joined_rooms},
            message::{get_message_events, send_message_event},
            room::{
                create_room::{self, v3::RoomPreset},
                get_room_event, Visibility,
            },
            state::{get_state_event_for_key, get_state_events, send_state_event},
        },
        Direction,
    },
    events::{room::member::MembershipState, StateEventType},
    serde::Raw,
    OwnedRoomAliasId, RoomAliasId, RoomId, RoomVersionId, UserId,
};
use serde_json::{Map, Value};

use crate::{
    error::{Error, Result},
    http::{Authed, Ctx, Router},
    service::{
        federation::pdus::backfill::BACKFILL_LIMIT,
        rooms::{
            access::Access,
            backfill::Position,
            create::{CreateRoom, Preset},
            format::Viewer,
            state::state_head,
            timeline::MessagesQuery,
            NewEvent, RoomRecord, StoredEvent, Txn,
        },
        Services,
    },
};

/// New rooms use the version the spec recommends.
pub const DEFAULT_ROOM_VERSION: RoomVersionId = RoomVersionId::V12;

/// Page size bounds for `/messages`.
const MAX_PAGE: usize = 1000;

pub fn routes(router: &mut Router) {
    router.ruma(create);
    router.ruma(send_message);
    router.ruma(send_state);
    router.ruma(get_state_event);
    router.ruma(get_state);
    router.ruma(get_event);
    router.ruma(members);
    router.ruma(joined_members_of);
    router.ruma(joined_rooms_of);
    router.ruma(messages);
}

pub fn viewer(me: &Authed) -> Viewer<'_> {
    Viewer {
        user_id: &me.user_id,
        device_id: Some(me.device_id.as_str()),
    }
}

pub fn raw<T>(value: Value) -> Result<Raw<T>> {
    let raw = serde_json::value::to_raw_value(&value).map_err(|e| Error::unknown(e.to_string()))?;
    Ok(Raw::from_json(raw))
}

/// The room, or 404 if this server does not know it.
pub fn known_room(services: &Services, room_id: &RoomId) -> Result<RoomRecord> {
    services
        .rooms
        .room(room_id)?
        .ok_or_else(|| Error::not_found("Unknown room"))
}

/// Refuses a user who is not joined (403, as the spec asks of most room endpoints).
pub fn require_joined(
    services: &Services,
    room_id: &RoomId,
    user_id: &UserId,
) -> Result<RoomRecord> {
    let room = known_room(services, room_id)?;
    if services.rooms.membership(room_id, user_id)? != Some(MembershipState::Join) {
        return Err(Error::forbidden("You are not joined to this room"));
    }
    Ok(room)
}

fn object(value: Value, what: &str) -> Result<Map<String, Value>> {
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(Error::bad_json(format!("{what} must be a JSON object"))),
    }
}

fn parse_json(raw: &serde_json::value::RawValue, what: &str) -> Result<Value> {
    serde_json::from_str(raw.get()).map_err(|e| Error::bad_json(format!("{what}: {e}")))
}

async fn create(
    services: Arc<Services>,
    ctx: Ctx,
    body: create_room::v3::Request,
) -> Result<create_room::v3::Response> {
    let me = ctx.authed()?;
    if !body.invite_3pid.is_empty() {
        return Err(Error::invalid_param(
            "Third-party invites are not supported by this server",
        ));
    }
    let version = body.room_version.clone().unwrap_or(DEFAULT_ROOM_VERSION);
    if version.rules().is_none() {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            "M_UNSUPPORTED_ROOM_VERSION",
            "Unsupported room version",
        ));
    }
    let preset = match (&body.preset, &body.visibility) {
        (Some(RoomPreset::PublicChat), _) => Preset::PublicChat,
        (Some(RoomPreset::TrustedPrivateChat), _) => Preset::TrustedPrivateChat,
        (Some(RoomPreset::PrivateChat), _) => Preset::PrivateChat,
        (Some(other), _) => return Err(Error::invalid_param(format!("Unknown preset {other:?}"))),
        (None, Visibility::Public) => Preset::PublicChat,
        (None, _) => Preset::PrivateChat,
    };
    let creation_content = match &body.creation_content {
        Some(raw) => object(
            parse_json(raw.json(), "creation_content")?,
            "creation_content",
        )?,
        None => Map::new(),
    };
    let power_level_override = match &body.power_level_content_override {
        Some(raw) => Some(object(
            parse_json(raw.json(), "power_level_content_override")?,
            "power_level_content_override",
        )?),
        None => None,
    };
    let mut initial_state = Vec::new();
    for raw in &body.initial_state {
        let event = object(
            parse_json(raw.json(), "initial_state")?,
            "initial_state event",
        )?;
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::bad_json("initial_state event needs a type"))?;
        let state_key = event.get("state_key").and_then(Value::as_str).unwrap_or("");
        let content = event
            .get("content")
            .cloned()
            .ok_or_else(|| Error::bad_json("initial_state event needs content"))?;
        object(content.clone(), "initial_state content")?;
        initial_state.push((kind.to_owned(), state_key.to_owned(), content));
    }
    let alias = match &body.room_alias_name {
        Some(localpart) => {
            let alias = format!("#{localpart}:{}", services.config.server_name);
            Some(
                RoomAliasId::parse(&alias)
                    .map_err(|_| Error::invalid_param("Invalid room_alias_name"))?,
            )
        }
        None => None,
    };
    let alias: Option<OwnedRoomAliasId> = alias;
    let mut member_profiles = BTreeMap::new();
    for user in body.invite.iter().chain([&me.user_id]) {
        if user.server_name().as_str() != services.config.server_name {
            continue;
        }
        if !services.users.exists(user)? {
            return Err(Error::not_found(format!("Unknown user {user}")));
        }
        member_profiles.insert(user.clone(), profile_fields(&services, user)?);
    }
    let request = CreateRoom {
        creator: me.user_id.clone(),
        version,
        preset,
        publish: body.visibility == Visibility::Public,
        creation_content,
        power_level_override,
        initial_state,
        name: body.name.clone(),
        topic: body.topic.clone(),
        invite: body.invite.clone(),
        is_direct: body.is_direct,
        alias,
        member_profiles,
    };
    let room_id = services.rooms.create_room(request).await?;
    // Users of other servers are invited through their servers once the room exists. The room
    // stands either way: a failed invite is logged and the client can invite again.
    for user in body
        .invite
        .iter()
        .filter(|u| u.server_name().as_str() != services.config.server_name)
    {
        if let Err(e) = crate::service::federation::invite::invite_remote(
            &services,
            &room_id,
            &me.user_id,
            user,
            None,
            body.is_direct,
        )
        .await
        {
            log::warn!("createRoom {room_id}: inviting {user} failed: {e}");
        }
    }
    Ok(create_room::v3::Response::new(room_id))
}

/// The timeline position a pagination token stands for: the boundary before the event at that
/// position. Tokens from `/sync` (`next_batch`, `{pos}_{typing}`) are accepted too, as the spec
/// allows: the client has seen everything up to and including `pos`, so the boundary is
/// `pos + 1`.
pub fn pagination_position(token: &str) -> Result<u64> {
    let invalid = || Error::invalid_param(format!("Invalid pagination token {token}"));
    match token.split_once('_') {
        Some((pos, typing)) if typing.bytes().all(|b| b.is_ascii_digit()) => {
            let pos: u64 = pos.parse().map_err(|_| invalid())?;
            pos.checked_add(1).ok_or_else(invalid)
        }
        Some(_) => Err(invalid()),
        None => token.parse().map_err(|_| invalid()),
    }
}

/// A local user's profile as member-event fields.
pub fn profile_fields(services: &Services, user_id: &UserId) -> Result<Map<String, Value>> {
    let mut fields = Map::new();
    if let Some(name) = services.profiles.displayname(user_id)? {
        fields.insert("displayname".into(), Value::String(name));
    }
    if let Some(url) = services.profiles.avatar_url(user_id)? {
        fields.insert("avatar_url".into(), Value::String(url));
    }
    Ok(fields)
}

async fn send_message(
    services: Arc<Services>,
    ctx: Ctx,
    body: send_message_event::v3::Request,
) -> Result<send_message_event::v3::Response> {
    let me = ctx.authed()?;
    // A retransmission is the same device, endpoint path and transaction id.
    let txn = Txn {
        device_id: me.device_id.to_string(),
        scope: format!("send/{}/{}", body.room_id, body.event_type),
        txn_id: body.txn_id.to_string(),
    };
    if let Some(event_id) = services.rooms.txn_event(&me.user_id, &txn)? {
        return Ok(send_message_event::v3::Response::new(event_id));
    }
    require_joined(&services, &body.room_id, &me.user_id)?;
    let content = parse_json(body.body.json(), "content")?;
    object(content.clone(), "content")?;
    let mut event = NewEvent::message(body.event_type.to_string(), content);
    if body.event_type.to_string() == "m.room.redaction" {
        // Clients put `redacts` in the content (v11 form); the builder places it where the
        // room version wants it.
        let redacts = event
            .content
            .as_object_mut()
            .and_then(|c| c.remove("redacts"));
        let redacts = redacts.and_then(|r| r.as_str().and_then(|r| ruma::EventId::parse(r).ok()));
        event.redacts = Some(
            redacts
                .ok_or_else(|| Error::bad_json("A redaction needs a valid `redacts` event id"))?,
        );
    }
    event.txn = Some(txn);
    let event_id = services
        .rooms
        .send(&body.room_id, &me.user_id, event)
        .await?;
    // Sending is activity: it refreshes presence (`last_active_ago`, online).
    services
        .presence
        .touch(&services.rooms, &me.user_id, "online")
        .await?;
    Ok(send_message_event::v3::Response::new(event_id))
}

async fn send_state(
    services: Arc<Services>,
    ctx: Ctx,
    body: send_state_event::v3::Request,
) -> Result<send_state_event::v3::Response> {
    let me = ctx.authed()?;
    let room = known_room(&services, &body.room_id)?;
    let mut content = parse_json(body.body.json(), "content")?;
    object(content.clone(), "content")?;
    if body.event_type == StateEventType::RoomMember {
        // Fields only a server may set are dropped; a restricted join is authorised here.
        services.rooms.prepare_member_content(
            &body.room_id,
            &me.user_id,
            &body.state_key,
            &mut content,
        )?;
    }
    if body.event_type == StateEventType::RoomCanonicalAlias {
        // Publishing an alias is the room's decision: who may not send the event learns
        // nothing about which aliases point where.
        if !services.rooms.can_send_state(
            &body.room_id,
            &room,
            &me.user_id,
            StateEventType::RoomCanonicalAlias,
        )? {
            return Err(Error::forbidden(
                "You may not set this room's canonical alias",
            ));
        }
        check_canonical_alias(&services, &body.room_id, &content)?;
    }
    let event = NewEvent::state(body.event_type.to_string(), body.state_key.clone(), content);
    let event_id = services
        .rooms
        .send(&body.room_id, &me.user_id, event)
        .await?;
    Ok(send_state_event::v3::Response::new(event_id))
}

/// `m.room.canonical_alias` may only name aliases that point to this room (spec: 400
/// `M_BAD_ALIAS`); only local aliases can be checked without federation.
fn check_canonical_alias(services: &Services, room_id: &RoomId, content: &Value) -> Result<()> {
    let mut aliases: Vec<&str> = content
        .get("alt_aliases")
        .and_then(Value::as_array)
        .map_or(Vec::new(), |a| a.iter().filter_map(Value::as_str).collect());
    aliases.extend(content.get("alias").and_then(Value::as_str));
    for alias in aliases {
        let alias = RoomAliasId::parse(alias)
            .map_err(|_| Error::invalid_param(format!("Invalid alias {alias}")))?;
        if alias.server_name().as_str() != services.config.server_name {
            continue;
        }
        if services.rooms.alias_room(&alias)?.as_deref() != Some(room_id) {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                "M_BAD_ALIAS",
                format!("{alias} does not point to this room"),
            ));
        }
    }
    Ok(())
}

/// The head of the state the user may read (see `service::rooms::access`), or 403.
pub fn readable_state(
    services: &Services,
    room: &RoomRecord,
    room_id: &RoomId,
    user_id: &UserId,
) -> Result<Option<u64>> {
    services
        .rooms
        .read_access(room_id, user_id)?
        .require_state(room.last_state)
}

async fn get_state_event(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_state_event_for_key::v3::Request,
) -> Result<get_state_event_for_key::v3::Response> {
    let me = ctx.authed()?;
    let room = known_room(&services, &body.room_id)?;
    let head = readable_state(&services, &room, &body.room_id, &me.user_id)?;
    let sid = services
        .rooms
        .state_at(head, &body.event_type, &body.state_key)?;
    let event = sid
        .map(|sid| services.rooms.event_by_sid(sid))
        .transpose()?
        .flatten()
        .ok_or_else(|| Error::not_found("No such state event"))?;
    let value = match body.format {
        get_state_event_for_key::v3::StateEventFormat::Event => {
            services.rooms.client_event(&event, Some(viewer(me)))
        }
        _ => services.rooms.client_event(&event, None)["content"].clone(),
    };
    let raw = serde_json::value::to_raw_value(&value).map_err(|e| Error::unknown(e.to_string()))?;
    Ok(get_state_event_for_key::v3::Response::new(raw))
}

fn state_events(services: &Services, head: Option<u64>) -> Result<Vec<StoredEvent>> {
    let entries = services.rooms.full_state_at(head)?;
    entries
        .into_iter()
        .filter_map(|(_, _, sid)| services.rooms.event_by_sid(sid).transpose())
        .collect()
}

async fn get_state(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_state_events::v3::Request,
) -> Result<get_state_events::v3::Response> {
    let me = ctx.authed()?;
    let room = known_room(&services, &body.room_id)?;
    let head = readable_state(&services, &room, &body.room_id, &me.user_id)?;
    let events = state_events(&services, head)?;
    let state = events
        .iter()
        .map(|e| raw(services.rooms.client_event(e, Some(viewer(me)))))
        .collect::<Result<_>>()?;
    Ok(get_state_events::v3::Response::new(state))
}

/// An event of the room that the user may see, or 404 (not 403, so that existence does not
/// leak).
pub fn visible_event(
    services: &Services,
    room_id: &RoomId,
    user_id: &UserId,
    event_id: &ruma::EventId,
) -> Result<StoredEvent> {
    let room = known_room(services, room_id)?;
    let event = services
        .rooms
        .event(event_id)?
        .filter(|e| e.meta.room_sid == room.sid);
    services.rooms.reader(room_id, user_id)?.visible(event)
}

async fn get_event(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_room_event::v3::Request,
) -> Result<get_room_event::v3::Response> {
    let me = ctx.authed()?;
    let event = visible_event(&services, &body.room_id, &me.user_id, &body.event_id)?;
    Ok(get_room_event::v3::Response::new(raw(services
        .rooms
        .client_event_bundled(&event, Some(viewer(me)))?)?))
}

async fn members(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_member_events::v3::Request,
) -> Result<get_member_events::v3::Response> {
    let me = ctx.authed()?;
    let room = known_room(&services, &body.room_id)?;
    let mut reader = services.rooms.reader(&body.room_id, &me.user_id)?;
    let mut head = reader.access.require_state(room.last_state)?;
    if let Some(at) = &body.at {
        // `at` is a pagination (or sync) token: the state at that point, if visible.
        let pos = pagination_position(at)?;
        let before = services
            .rooms
            .timeline(room.sid, Some(pos.saturating_sub(1)), true, 1)?;
        head = match before.first() {
            Some(event) if reader.may_see(event)? => state_head(event),
            Some(_) => return Err(Error::forbidden("You may not see the room at that point")),
            None => None,
        };
    }
    let mut chunk = Vec::new();
    for (kind, _, sid) in services.rooms.full_state_at(head)? {
        if kind != "m.room.member" {
            continue;
        }
        let Some(event) = services.rooms.event_by_sid(sid)? else {
            continue;
        };
        let membership = event.pdu.content_as::<Value>().and_then(|c| {
            c.get("membership")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        let membership = membership.as_deref().map(MembershipState::from);
        // Spec: given together, the two filters are an "or" (the membership is `membership`,
        // or it is not `not_membership`); each alone filters on its own.
        let is = body
            .membership
            .as_ref()
            .map(|m| membership.as_ref() == Some(m));
        let is_not = body
            .not_membership
            .as_ref()
            .map(|m| membership.as_ref() != Some(m));
        let wanted = match (is, is_not) {
            (Some(is), Some(is_not)) => is || is_not,
            (Some(is), None) => is,
            (None, Some(is_not)) => is_not,
            (None, None) => true,
        };
        if !wanted {
            continue;
        }
        chunk.push(raw(services.rooms.client_event(&event, Some(viewer(me))))?);
    }
    Ok(get_member_events::v3::Response::new(chunk))
}

async fn joined_members_of(
    services: Arc<Services>,
    ctx: Ctx,
    body: joined_members::v3::Request,
) -> Result<joined_members::v3::Response> {
    let me = ctx.authed()?;
    let room = known_room(&services, &body.room_id)?;
    // The spec asks the caller to be in the room: a joined member (or a peeker of a
    // world-readable room) sees who is joined now.
    match services.rooms.read_access(&body.room_id, &me.user_id)? {
        Access::Joined | Access::WorldReadable => {}
        _ => return Err(Error::forbidden("You are not joined to this room")),
    }
    let mut joined = BTreeMap::new();
    for event in services
        .rooms
        .current_state(room.sid, Some(&StateEventType::RoomMember))?
    {
        let content = event.pdu.content_as::<Value>().unwrap_or_default();
        if content.get("membership").and_then(Value::as_str) != Some("join") {
            continue;
        }
        let Some(user) = event
            .pdu
            .state_key
            .as_deref()
            .and_then(|k| UserId::parse(k).ok())
        else {
            continue;
        };
        let mut member = joined_members::v3::RoomMember::new();
        member.display_name = content
            .get("displayname")
            .and_then(Value::as_str)
            .map(str::to_owned);
        member.avatar_url = content
            .get("avatar_url")
            .and_then(Value::as_str)
            .map(Into::into);
        joined.insert(user, member);
    }
    Ok(joined_members::v3::Response::new(joined))
}

async fn joined_rooms_of(
    services: Arc<Services>,
    ctx: Ctx,
    _: joined_rooms::v3::Request,
) -> Result<joined_rooms::v3::Response> {
    let me = ctx.authed()?;
    Ok(joined_rooms::v3::Response::new(
        services
            .rooms
            .rooms_of(&me.user_id, &MembershipState::Join)?,
    ))
}

/// The room event filter shared with `/sync`.
pub use crate::service::sync::event_passes as passes;

/// `GET /rooms/{roomId}/messages` (paging rules in `service::rooms::timeline`). `start` is
/// the `from` token exactly as given; `end` is present while more events may follow; with
/// `lazy_load_members`, `state` carries the member events of the chunk's senders.
///
/// Paging backwards past the oldest event here (a room joined over federation starts at the
/// join), or to the older edge of a hole in the timeline (`rooms/holes.rs`), fetches older
/// events from another server in the room (`pdus/backfill.rs`) and answers with them.
async fn messages(
    services: Arc<Services>,
    ctx: Ctx,
    body: get_message_events::v3::Request,
) -> Result<get_message_events::v3::Response> {
    let me = ctx.authed()?.clone();
    let (reading, asked, reader) = (services.clone(), body.clone(), me.clone());
    let (page, open_hole) = services
        .rooms
        .heavy_read(move || messages_page(&reading, &reader, &asked))
        .await?;
    if let Some(anchor) = open_hole {
        match services.pdus.fill_hole(&body.room_id, anchor).await {
            Ok(0) => {}
            Ok(_) => {
                let reading = services.clone();
                return services
                    .rooms
                    .heavy_read(move || messages_page(&reading, &me, &body))
                    .await
                    .map(|(page, _)| page);
            }
            Err(e) => log::warn!("cannot fill the hole in {}: {e}", body.room_id),
        }
    }
    let short = u64::try_from(page.chunk.len()).unwrap_or(u64::MAX) < u64::from(body.limit);
    let at_start = body.dir == Direction::Backward && page.end.is_none() && body.to.is_none();
    if !(at_start && short) {
        return Ok(page);
    }
    match services.pdus.backfill(&body.room_id, BACKFILL_LIMIT).await {
        Ok(0) => Ok(page),
        Ok(_) => {
            let reading = services.clone();
            services
                .rooms
                .heavy_read(move || messages_page(&reading, &me, &body))
                .await
                .map(|(page, _)| page)
        }
        Err(e) => {
            log::warn!("cannot backfill {}: {e}", body.room_id);
            Ok(page)
        }
    }
}

/// A `/messages` page, and the anchor of an open hole it reached (paging backwards).
fn messages_page(
    services: &Services,
    me: &Authed,
    body: &get_message_events::v3::Request,
) -> Result<(get_message_events::v3::Response, Option<u64>)> {
    let room = known_room(services, &body.room_id)?;
    let mut reader = services.rooms.reader(&body.room_id, &me.user_id)?;
    reader.access.require_history()?;
    reader.ignore(services.account_data.ignored_users_of(&me.user_id)?);
    let backwards = body.dir == Direction::Backward;
    let from = match body.from.as_deref() {
        Some(t) => match Position::parse_history(t) {
            Some(position) => position,
            None => Position::Stream(pagination_position(t)?),
        },
        None if backwards => Position::Stream(services.rooms.stream_position() + 1),
        None => Position::Stream(0),
    };
    // A backfill or hole token as `to` bounds nothing: only stream positions do.
    let to = match body.to.as_deref() {
        Some(t) if Position::parse_history(t).is_some() => None,
        Some(t) => Some(pagination_position(t)?),
        None => None,
    };
    let query = MessagesQuery {
        from: match from {
            Position::Stream(n) => n,
            Position::Hole { .. } | Position::Backfill(_) => 0,
        },
        to,
        backwards,
        limit: usize::try_from(u64::from(body.limit))
            .unwrap_or(MAX_PAGE)
            .clamp(1, MAX_PAGE),
        filter: &body.filter,
    };
    let page = services
        .rooms
        .messages_across(&mut reader, room.sid, from, &query)?;
    let (events, end) = (page.events, page.end);
    let mut response = get_message_events::v3::Response::new();
    response.start = body.from.clone().unwrap_or_else(|| from.to_string());
    response.end = end.map(|e| e.to_string());
    response.chunk = events
        .iter()
        .map(|e| raw(services.rooms.client_event_bundled(e, Some(viewer(me)))?))
        .collect::<Result<_>>()?;
    if !body.filter.lazy_load_options.is_disabled() {
        response.state = services
            .rooms
            .sender_members(&events)?
            .iter()
            .map(|e| raw(services.rooms.client_event(e, Some(viewer(me)))))
            .collect::<Result<_>>()?;
    }
    Ok((response, page.open_hole))
}
