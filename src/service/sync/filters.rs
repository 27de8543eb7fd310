//! Sync filters: which events, rooms and account data a filter lets through.

use ruma::{
    api::client::filter::{Filter, FilterDefinition, RoomEventFilter, UrlFilter},
    RoomId,
};

use crate::service::rooms::StoredEvent;

/// Whether an event passes a room event filter's type, sender and `contains_url` conditions.
pub fn event_passes(filter: &RoomEventFilter, event: &StoredEvent) -> bool {
    let kind = event.meta.kind.as_str();
    let matches = |pattern: &String| match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    };
    if filter.not_types.iter().any(matches) {
        return false;
    }
    if filter
        .types
        .as_ref()
        .is_some_and(|types| !types.iter().any(matches))
    {
        return false;
    }
    if filter
        .not_senders
        .iter()
        .any(|s| s.as_str() == event.meta.sender)
    {
        return false;
    }
    if filter
        .senders
        .as_ref()
        .is_some_and(|s| !s.iter().any(|s| s.as_str() == event.meta.sender))
    {
        return false;
    }
    // `contains_url`: only events with (`true`) or without (`false`) a `url` in their content.
    if let Some(wanted) = &filter.url_filter {
        let has_url = event
            .pdu
            .content_as::<serde_json::Value>()
            .is_some_and(|content| content.get("url").is_some());
        if has_url != matches!(wanted, UrlFilter::EventsWithUrl) {
            return false;
        }
    }
    true
}

pub(super) fn room_wanted(filter: &FilterDefinition, room_id: &RoomId) -> bool {
    if filter.room.not_rooms.iter().any(|r| r == room_id) {
        return false;
    }
    filter
        .room
        .rooms
        .as_ref()
        .is_none_or(|rooms| rooms.iter().any(|r| r == room_id))
}

/// Whether an event type passes a filter's `types` / `not_types` (with `*` wildcards).
pub(super) fn type_passes(types: Option<&[String]>, not_types: &[String], kind: &str) -> bool {
    let matches = |pattern: &String| match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    };
    !not_types.iter().any(matches) && types.is_none_or(|types| types.iter().any(matches))
}

/// Whether a non-room event (presence, global account data) passes a filter.
pub(super) fn filter_passes(filter: &Filter, kind: &str, sender: Option<&str>) -> bool {
    if !type_passes(filter.types.as_deref(), &filter.not_types, kind) {
        return false;
    }
    let Some(sender) = sender else {
        return true;
    };
    !filter.not_senders.iter().any(|s| s.as_str() == sender)
        && filter
            .senders
            .as_ref()
            .is_none_or(|s| s.iter().any(|s| s.as_str() == sender))
}

/// Whether a room's ephemeral or account data event of `kind` passes a room event filter.
pub(super) fn room_event_passes(filter: &RoomEventFilter, room_id: &RoomId, kind: &str) -> bool {
    type_passes(filter.types.as_deref(), &filter.not_types, kind)
        && !filter.not_rooms.iter().any(|r| r == room_id)
        && filter
            .rooms
            .as_ref()
            .is_none_or(|rooms| rooms.iter().any(|r| r == room_id))
}

pub(super) fn limit_of(limit: Option<ruma::UInt>) -> usize {
    limit
        .map(|l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX))
        .unwrap_or(usize::MAX)
}
