//! Fetching events this server lacks from another server in the room: the events between the
//! room's forward extremities and a received PDU (`get_missing_events`), the state at an event
//! (`state_ids`, then `event/{id}` for each event unknown here), an event's auth chain
//! (`event_auth`), and older history (`backfill`).
//!
//! Everything here is bounded: each request has its own short time limit and response size
//! (far below the client's defaults, which are sized for joins), and the callers bound how
//! many requests one transaction or one `/messages` page may make ([`Bounds`]). Nothing here
//! holds a room lock: callers fetch first, then stage what they fetched.
//!
//! The source is a trait so that the PDU pipeline can be driven by a test without a second
//! server; in production it is the [`FederationClient`].

use std::{future::Future, pin::Pin, time::Duration};

use ruma::{
    api::federation::{
        authorization::get_event_authorization,
        backfill::get_backfill,
        event::{get_event, get_missing_events, get_room_state_ids},
    },
    OwnedEventId, RoomId, ServerName, UInt,
};
use serde_json::value::RawValue as RawJsonValue;

use super::client::FederationClient;

/// How long one fetch may take. A `/send` transaction waits for its fetches, and the sender
/// retries a transaction that takes too long, so this stays well below its patience.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest response of one fetch (a `state_ids` of a very large room fits easily).
pub const MAX_FETCH_BYTES: usize = 16 * 1024 * 1024;

/// The bounds of the fetching done for one room's PDUs of one transaction.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// `get_missing_events` requests: one per PDU with unknown prev events, at most this many.
    pub gap_requests: usize,
    /// The `limit` of each `get_missing_events` request.
    pub gap_limit: u32,
    /// PDUs whose gap remains after `get_missing_events` and get the state at their prev
    /// events from the origin (`state_ids`).
    pub state_fallbacks: usize,
    /// Events fetched one by one (`event/{id}`) for state and auth chains, in all.
    pub single_events: usize,
    /// `event_auth` requests, for PDUs whose auth events are unknown here.
    pub auth_requests: usize,
    /// Events taken from one `event_auth` or `state_ids` answer.
    pub chain_events: usize,
}

/// The bounds for one room's part of an inbound transaction.
pub const TRANSACTION_BOUNDS: Bounds = Bounds {
    gap_requests: 5,
    gap_limit: 20,
    state_fallbacks: 2,
    single_events: 200,
    auth_requests: 5,
    chain_events: 500,
};

/// A fetch in flight.
pub type FetchFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// Where events this server lacks come from. Every answer is unverified: the caller checks
/// each event as it checks a received PDU.
pub trait RemoteEvents: Send + Sync {
    /// `POST /v1/get_missing_events/{room}`: events before `latest` and after `earliest`.
    fn missing_events<'a>(
        &'a self,
        origin: &'a ServerName,
        room_id: &'a RoomId,
        earliest: Vec<OwnedEventId>,
        latest: Vec<OwnedEventId>,
        limit: u32,
        min_depth: u64,
    ) -> FetchFuture<'a, Vec<Box<RawJsonValue>>>;

    /// `GET /v1/state_ids/{room}?event_id=`: the ids of the state before `event_id` and of its
    /// auth chain, as `(state, auth_chain)`.
    fn state_ids<'a>(
        &'a self,
        origin: &'a ServerName,
        room_id: &'a RoomId,
        event_id: &'a ruma::EventId,
    ) -> FetchFuture<'a, (Vec<OwnedEventId>, Vec<OwnedEventId>)>;

    /// `GET /v1/event/{id}`: one event.
    fn event<'a>(
        &'a self,
        origin: &'a ServerName,
        event_id: &'a ruma::EventId,
    ) -> FetchFuture<'a, Box<RawJsonValue>>;

    /// `GET /v1/event_auth/{room}/{id}`: the auth chain of an event.
    fn event_auth<'a>(
        &'a self,
        origin: &'a ServerName,
        room_id: &'a RoomId,
        event_id: &'a ruma::EventId,
    ) -> FetchFuture<'a, Vec<Box<RawJsonValue>>>;

    /// `GET /v1/backfill/{room}?v=&limit=`: events before (and including) `from`.
    fn backfill<'a>(
        &'a self,
        origin: &'a ServerName,
        room_id: &'a RoomId,
        from: Vec<OwnedEventId>,
        limit: u32,
    ) -> FetchFuture<'a, Vec<Box<RawJsonValue>>>;
}

fn uint(n: u64) -> UInt {
    UInt::try_from(n).unwrap_or(UInt::MAX)
}

impl RemoteEvents for FederationClient {
    fn missing_events<'a>(
        &'a self,
        origin: &'a ServerName,
        room_id: &'a RoomId,
        earliest: Vec<OwnedEventId>,
        latest: Vec<OwnedEventId>,
        limit: u32,
        min_depth: u64,
    ) -> FetchFuture<'a, Vec<Box<RawJsonValue>>> {
        Box::pin(async move {
            let mut request =
                get_missing_events::v1::Request::new(room_id.to_owned(), earliest, latest);
            request.limit = UInt::from(limit);
            request.min_depth = uint(min_depth);
            let response = self
                .send_with_limits(origin, request, FETCH_TIMEOUT, MAX_FETCH_BYTES)
                .await
                .map_err(|e| e.to_string())?;
            Ok(response.events)
        })
    }

    fn state_ids<'a>(
        &'a self,
        origin: &'a ServerName,
        room_id: &'a RoomId,
        event_id: &'a ruma::EventId,
    ) -> FetchFuture<'a, (Vec<OwnedEventId>, Vec<OwnedEventId>)> {
        Box::pin(async move {
            let request =
                get_room_state_ids::v1::Request::new(event_id.to_owned(), room_id.to_owned());
            let response = self
                .send_with_limits(origin, request, FETCH_TIMEOUT, MAX_FETCH_BYTES)
                .await
                .map_err(|e| e.to_string())?;
            Ok((response.pdu_ids, response.auth_chain_ids))
        })
    }

    fn event<'a>(
        &'a self,
        origin: &'a ServerName,
        event_id: &'a ruma::EventId,
    ) -> FetchFuture<'a, Box<RawJsonValue>> {
        Box::pin(async move {
            let request = get_event::v1::Request::new(event_id.to_owned());
            let response = self
                .send_with_limits(origin, request, FETCH_TIMEOUT, MAX_FETCH_BYTES)
                .await
                .map_err(|e| e.to_string())?;
            Ok(response.pdu)
        })
    }

    fn event_auth<'a>(
        &'a self,
        origin: &'a ServerName,
        room_id: &'a RoomId,
        event_id: &'a ruma::EventId,
    ) -> FetchFuture<'a, Vec<Box<RawJsonValue>>> {
        Box::pin(async move {
            let request =
                get_event_authorization::v1::Request::new(room_id.to_owned(), event_id.to_owned());
            let response = self
                .send_with_limits(origin, request, FETCH_TIMEOUT, MAX_FETCH_BYTES)
                .await
                .map_err(|e| e.to_string())?;
            Ok(response.auth_chain)
        })
    }

    fn backfill<'a>(
        &'a self,
        origin: &'a ServerName,
        room_id: &'a RoomId,
        from: Vec<OwnedEventId>,
        limit: u32,
    ) -> FetchFuture<'a, Vec<Box<RawJsonValue>>> {
        Box::pin(async move {
            let request = get_backfill::v1::Request::new(room_id.to_owned(), from, limit.into());
            let response = self
                .send_with_limits(origin, request, FETCH_TIMEOUT, MAX_FETCH_BYTES)
                .await
                .map_err(|e| e.to_string())?;
            Ok(response.pdus)
        })
    }
}
