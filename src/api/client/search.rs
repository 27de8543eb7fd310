//! `POST /search`: server-side search of room events (spec: "Server Side Search").
//!
//! The service (`service::search`) finds and ranks the matches the user may see; this handler
//! checks the request, turns `next_batch` tokens into cursors and back, and dresses each hit
//! with its context, profiles, groups and the rooms' state.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use ruma::{
    api::client::{
        filter::RoomEventFilter,
        search::search_events::v3::{
            Criteria, EventContextResult, GroupingKey, OrderBy, Request, Response, ResultGroup,
            ResultGroupMap, ResultRoomEvents, SearchKeys, SearchResult, UserProfile,
        },
    },
    events::StateEventType,
    OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};
use serde_json::Value;

use super::{
    context::around,
    room::{known_room, raw, viewer},
};
use crate::{
    error::{Error, Result},
    http::{Authed, Ctx, Router},
    service::{
        rooms::{state::state_head, StoredEvent},
        search::{
            index::{FIELD_BODY, FIELD_NAME, FIELD_TOPIC},
            query::{Cursor, Group, Hit, Order, Page, Query, CANDIDATE_BUDGET},
            tokenize::query_terms,
        },
        Services,
    },
};

/// Results per page when the filter sets no limit, and the most it may ask for.
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 50;
/// The most context events on each side of a result.
const MAX_CONTEXT: usize = 20;

pub fn routes(router: &mut Router) {
    router.ruma_checked(check_categories, search);
}

/// Refuses a body that names a search category other than `room_events` (the only one the
/// spec defines) or none at all: ruma would drop an unknown one silently and search nothing.
fn check_categories(body: &[u8]) -> Result<()> {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
        return Ok(()); // ruma reports malformed bodies
    };
    let Some(Value::Object(categories)) = body.get("search_categories") else {
        return Ok(());
    };
    if let Some(unknown) = categories.keys().find(|k| *k != "room_events") {
        return Err(Error::invalid_param(format!(
            "Unknown search category {unknown:?}; only room_events is supported"
        )));
    }
    if categories.is_empty() {
        return Err(Error::invalid_param("search_categories names no category"));
    }
    Ok(())
}

/// A `next_batch` token: `s1.<k|r>.<sid>.<score bits in hex>[.<r|s><group value>]` (`k`:
/// rank order, `r`: recent; the group restricts the results to one room or one sender).
fn encode_token(order: Order, cursor: Cursor, group: Option<&Group>) -> String {
    let kind = match order {
        Order::Rank => 'k',
        Order::Recent => 'r',
    };
    let mut token = format!("s1.{kind}.{}.{:x}", cursor.sid, cursor.score.to_bits());
    match group {
        Some(Group::Room(room)) => token.push_str(&format!(".r{room}")),
        Some(Group::Sender(sender)) => token.push_str(&format!(".s{sender}")),
        None => {}
    }
    token
}

fn decode_token(token: &str, order: Order) -> Result<(Cursor, Option<Group>)> {
    let invalid = || Error::invalid_param(format!("Invalid next_batch token {token:?}"));
    let mut parts = token.splitn(5, '.');
    if parts.next() != Some("s1") {
        return Err(invalid());
    }
    let token_order = match parts.next() {
        Some("k") => Order::Rank,
        Some("r") => Order::Recent,
        _ => return Err(invalid()),
    };
    if token_order != order {
        return Err(Error::invalid_param(
            "next_batch belongs to a search with another order_by",
        ));
    }
    let sid = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(invalid)?;
    let score = parts
        .next()
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .map(f64::from_bits)
        .filter(|s| s.is_finite())
        .ok_or_else(invalid)?;
    let group = match parts.next() {
        None => None,
        Some(g) if g.starts_with('r') => {
            Some(Group::Room(RoomId::parse(&g[1..]).map_err(|_| invalid())?))
        }
        Some(g) if g.starts_with('s') => Some(Group::Sender(
            UserId::parse(&g[1..]).map_err(|_| invalid())?.to_string(),
        )),
        Some(_) => return Err(invalid()),
    };
    Ok((Cursor { sid, score }, group))
}

fn fields_of(keys: Option<&[SearchKeys]>) -> Result<u64> {
    let Some(keys) = keys.filter(|k| !k.is_empty()) else {
        return Ok(FIELD_BODY | FIELD_NAME | FIELD_TOPIC);
    };
    let mut fields = 0;
    for key in keys {
        fields |= match key {
            SearchKeys::ContentBody => FIELD_BODY,
            SearchKeys::ContentName => FIELD_NAME,
            SearchKeys::ContentTopic => FIELD_TOPIC,
            other => {
                return Err(Error::invalid_param(format!(
                    "Unknown search key {:?}",
                    other.as_str()
                )))
            }
        };
    }
    Ok(fields)
}

async fn search(services: Arc<Services>, ctx: Ctx, body: Request) -> Result<Response> {
    let me = ctx.authed()?.clone();
    let criteria = body
        .search_categories
        .room_events
        .ok_or_else(|| Error::invalid_param("search_categories names no category"))?;
    // Events sent a moment ago may still wait for the indexer.
    services.search.catch_up().await?;
    let reading = services.clone();
    let next_batch = body.next_batch;
    let room_events = services
        .rooms
        .heavy_read(move || room_events(&reading, &me, &criteria, next_batch.as_deref()))
        .await?;
    let mut response = Response::new(Default::default());
    response.search_categories.room_events = room_events;
    Ok(response)
}

fn room_events(
    services: &Services,
    me: &Authed,
    criteria: &Criteria,
    next_batch: Option<&str>,
) -> Result<ResultRoomEvents> {
    let order = match &criteria.order_by {
        None | Some(OrderBy::Rank) => Order::Rank,
        Some(OrderBy::Recent) => Order::Recent,
        Some(other) => {
            return Err(Error::invalid_param(format!(
                "Unknown order_by {:?}",
                other.as_str()
            )))
        }
    };
    let fields = fields_of(criteria.keys.as_deref())?;
    let mut group_keys = Vec::new();
    for grouping in &criteria.groupings.group_by {
        match &grouping.key {
            Some(key @ (GroupingKey::RoomId | GroupingKey::Sender)) => group_keys.push(key.clone()),
            _ => return Err(Error::invalid_param("Unknown grouping key")),
        }
    }
    let (after, group) = match next_batch {
        Some(token) => {
            let (cursor, group) = decode_token(token, order)?;
            (Some(cursor), group)
        }
        None => (None, None),
    };
    let limit = criteria
        .filter
        .limit
        .map_or(DEFAULT_LIMIT, |l| {
            usize::try_from(u64::from(l)).unwrap_or(MAX_LIMIT)
        })
        .clamp(1, MAX_LIMIT);
    let (terms, highlights) = query_terms(&criteria.search_term);
    let query = Query {
        user_id: &me.user_id,
        terms,
        fields,
        filter: &criteria.filter,
        order,
        after,
        group: group.clone(),
        limit,
        ignored: services.account_data.ignored_users_of(&me.user_id)?,
        budget: CANDIDATE_BUDGET,
    };
    let page = services.search.search(&query)?;

    let mut out = ResultRoomEvents::new();
    out.count = Some(UInt::try_from(page.count).unwrap_or(UInt::MAX));
    out.highlights = highlights;
    out.next_batch = page
        .next
        .map(|cursor| encode_token(order, cursor, group.as_ref()));
    for hit in &page.hits {
        let Some(event) = services.rooms.event_by_sid(hit.sid)? else {
            continue;
        };
        let mut result = SearchResult::new();
        result.rank = Some(hit.score);
        result.context = context_of(services, me, &hit.room_id, &event, criteria)?;
        result.result = Some(raw(services
            .rooms
            .client_event_bundled(&event, Some(viewer(me)))?)?);
        out.results.push(result);
    }
    for key in &group_keys {
        let more = |group: &Group, last: &Hit| group_has_more(services, &query, &page, group, last);
        out.groups.insert(groups(key, order, &page, more)?);
    }
    if criteria.include_state == Some(true) {
        out.state = room_states(services, me, &page.hits)?;
    }
    Ok(out)
}

/// The most postings examined to learn whether a group has results beyond the page.
const GROUP_PROBE_BUDGET: usize = 500;

/// Whether the search has results of `group` after `last`, its last result in the page. In
/// `rank` order the page already holds every later match; in `recent` order a small search
/// within the group looks (if that is cut by its budget, the answer is yes: the token may
/// lead to an empty page, never hide results).
fn group_has_more(
    services: &Services,
    query: &Query<'_>,
    page: &Page,
    group: &Group,
    last: &Hit,
) -> Result<bool> {
    let in_group = |h: &Hit| match group {
        Group::Room(room) => h.room_id == *room,
        Group::Sender(sender) => h.sender == *sender,
    };
    if page.rest.iter().any(in_group) {
        return Ok(true);
    }
    if query.order == Order::Rank || page.next.is_none() {
        return Ok(false);
    }
    let probe = Query {
        user_id: query.user_id,
        terms: query.terms.clone(),
        fields: query.fields,
        filter: query.filter,
        order: query.order,
        after: Some(Cursor {
            sid: last.sid,
            score: last.score,
        }),
        group: Some(group.clone()),
        limit: 1,
        ignored: query.ignored.clone(),
        budget: GROUP_PROBE_BUDGET,
    };
    let found = services.search.search(&probe)?;
    Ok(!found.hits.is_empty() || found.next.is_some())
}

/// The groups of one grouping key over this page: each group's results, its order (by its
/// best result) and, when `more` says the search has more of it beyond the page, a token
/// continuing within that group.
fn groups(
    key: &GroupingKey,
    order: Order,
    page: &Page,
    mut more: impl FnMut(&Group, &Hit) -> Result<bool>,
) -> Result<ResultGroupMap> {
    let group_of = |hit: &Hit| match key {
        GroupingKey::Sender => Group::Sender(hit.sender.clone()),
        _ => Group::Room(hit.room_id.clone()),
    };
    let mut found: Vec<(Group, ResultGroup, Option<&Hit>)> = Vec::new();
    for hit in &page.hits {
        let group = group_of(hit);
        let index = match found.iter().position(|(g, _, _)| *g == group) {
            Some(i) => i,
            None => {
                let mut result_group = ResultGroup::new();
                result_group.order = UInt::try_from(found.len() as u64 + 1).ok();
                found.push((group, result_group, None));
                found.len() - 1
            }
        };
        let entry = &mut found[index];
        if let Ok(event_id) = ruma::EventId::parse(&hit.event_id) {
            entry.1.results.push(event_id);
        }
        entry.2 = Some(hit);
    }
    for (group, result_group, last) in &mut found {
        let Some(last) = last else { continue };
        if more(group, last)? {
            let cursor = Cursor {
                sid: last.sid,
                score: last.score,
            };
            result_group.next_batch = Some(encode_token(order, cursor, Some(group)));
        }
    }
    Ok(match key {
        GroupingKey::Sender => ResultGroupMap::Sender(
            found
                .into_iter()
                .filter_map(|(g, r, _)| match g {
                    Group::Sender(s) => Some((OwnedUserId::try_from(s).ok()?, r)),
                    Group::Room(_) => None,
                })
                .collect(),
        ),
        _ => ResultGroupMap::RoomId(
            found
                .into_iter()
                .filter_map(|(g, r, _)| match g {
                    Group::Room(room) => Some((room, r)),
                    Group::Sender(_) => None,
                })
                .collect(),
        ),
    })
}

/// The events around a result (the user's read authorization applies, as in `/context`), the
/// tokens to page on from them, and the senders' profiles as of the result when asked.
fn context_of(
    services: &Services,
    me: &Authed,
    room_id: &RoomId,
    event: &StoredEvent,
    criteria: &Criteria,
) -> Result<EventContextResult> {
    let ctx = &criteria.event_context;
    let before_limit = usize::try_from(u64::from(ctx.before_limit))
        .unwrap_or(MAX_CONTEXT)
        .min(MAX_CONTEXT);
    let after_limit = usize::try_from(u64::from(ctx.after_limit))
        .unwrap_or(MAX_CONTEXT)
        .min(MAX_CONTEXT);
    let mut out = EventContextResult::new();
    if before_limit == 0 && after_limit == 0 && !ctx.include_profile {
        return Ok(out);
    }
    let mut reader = services.rooms.reader(room_id, &me.user_id)?;
    reader.ignore(services.account_data.ignored_users_of(&me.user_id)?);
    let filter = RoomEventFilter::default();
    let (before, start) = around(services, &mut reader, event, &filter, true, before_limit)?;
    let (after, end) = around(services, &mut reader, event, &filter, false, after_limit)?;
    out.start = Some(start.to_string());
    out.end = Some(end.to_string());
    if ctx.include_profile {
        for e in before
            .iter()
            .chain(after.iter())
            .chain(std::iter::once(event))
        {
            let Ok(sender) = OwnedUserId::try_from(e.meta.sender.clone()) else {
                continue;
            };
            if out.profile_info.contains_key(&sender) {
                continue;
            }
            out.profile_info.insert(sender, profile_at(services, e)?);
        }
    }
    let client = |e: &StoredEvent| raw(services.rooms.client_event(e, Some(viewer(me))));
    out.events_before = before.iter().map(client).collect::<Result<_>>()?;
    out.events_after = after.iter().map(client).collect::<Result<_>>()?;
    Ok(out)
}

/// The sender's display name and avatar in the room's state at `event`.
fn profile_at(services: &Services, event: &StoredEvent) -> Result<UserProfile> {
    let mut profile = UserProfile::new();
    let sid = services.rooms.state_at(
        state_head(event),
        &StateEventType::RoomMember,
        &event.meta.sender,
    )?;
    let Some(member) = sid
        .map(|s| services.rooms.event_by_sid(s))
        .transpose()?
        .flatten()
    else {
        return Ok(profile);
    };
    let content = member.pdu.content_as::<Value>().unwrap_or_default();
    profile.displayname = content
        .get("displayname")
        .and_then(Value::as_str)
        .map(str::to_owned);
    profile.avatar_url = content
        .get("avatar_url")
        .and_then(Value::as_str)
        .map(Into::into);
    Ok(profile)
}

/// The state of each room with a result, as far as the user may read it (the current state,
/// or the state when they left).
fn room_states(
    services: &Services,
    me: &Authed,
    hits: &[Hit],
) -> Result<BTreeMap<OwnedRoomId, Vec<ruma::serde::Raw<ruma::events::AnyStateEvent>>>> {
    let mut heads: HashMap<&OwnedRoomId, Option<u64>> = HashMap::new();
    let mut out = BTreeMap::new();
    for hit in hits {
        if heads.contains_key(&hit.room_id) {
            continue;
        }
        let room = known_room(services, &hit.room_id)?;
        let access = services.rooms.read_access(&hit.room_id, &me.user_id)?;
        let Some(head) = access.state_head(room.last_state) else {
            continue;
        };
        heads.insert(&hit.room_id, head);
        let mut state = Vec::new();
        for (_, _, sid) in services.rooms.full_state_at(head)? {
            if let Some(event) = services.rooms.event_by_sid(sid)? {
                state.push(raw(services.rooms.client_event(&event, Some(viewer(me))))?);
            }
        }
        out.insert(hit.room_id.clone(), state);
    }
    Ok(out)
}
