//! Partial-state joins, as the joining server (server-server API, `send_join` v2 with
//! `omit_members`; the "faster joins" design). The join asks the resident to leave member
//! events out of its answer; when it did (`members_omitted`), `join.rs` stores the room with a
//! partial-state mark holding `servers_in_room` (`rooms/partial_state.rs`) and the local user
//! reads and sends at once: the events it creates need only the create event, power levels,
//! join rules and its own member event, all in the answer.
//!
//! While the room is partial:
//! - received events are authorised as far as the stored state allows: a state key missing
//!   from it is taken from the event's own auth events (`rooms/build/remote.rs`), so a
//!   message from a member whose event this server has not fetched yet is accepted on its
//!   (checked) auth events instead of rejected;
//! - the room's events go to `servers_in_room` as well as to the servers of known members
//!   (`rooms/build.rs`, `federation_targets`);
//! - `/members` and `/joined_members` answer from what is known (see [`PartialSync`]).
//!
//! In the background, [`PartialSync::run`] fetches the state before the join (`/v1/state` at
//! the join event) from the resident, then from each server of `servers_in_room`; checks it
//! like a `send_join` answer (formats, ids, signatures, hashes, each event against its auth
//! events, the join against the state: `verify.check_answer`); and stores it in one batch
//! (`Rooms::complete_partial_state`). Then every event accepted since the join is judged again
//! against the full state, those that fail are rejected after all, and the mark is cleared
//! (`pdus/recheck.rs`). The mark is durable, so a restart resumes an unfinished resync: `run`
//! starts with every room still marked.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{
    api::federation::{event::get_room_state, membership::create_join_event},
    OwnedRoomId, OwnedServerName, RoomId, RoomVersionId, ServerName,
};
use tokio::sync::{mpsc, watch};

use crate::service::{rooms::partial_state::PartialState, Services};

/// Time limit of one `/state` request (the answer holds the whole state of the room).
const STATE_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause before a room whose resync failed at every server is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// The partial-state mark of a `send_join` answer that omitted members: `None` for a full
/// answer.
pub(super) fn partial_of(
    answer: &create_join_event::v2::RoomState,
    resident: &ServerName,
    join_id: &ruma::EventId,
) -> Option<PartialState> {
    if !answer.members_omitted {
        return None;
    }
    let mut servers: Vec<String> = answer.servers_in_room.clone().unwrap_or_default();
    if !servers.iter().any(|s| s == resident.as_str()) {
        servers.push(resident.to_string());
    }
    Some(PartialState {
        join_event_id: join_id.to_string(),
        resident: resident.to_string(),
        servers,
    })
}

/// The background resync of partial-state rooms: one room at a time (a small server joining
/// a large room should not fetch several full states at once).
///
/// `/members` and `/joined_members` of a partial room answer from what is known rather than
/// wait: the client-server API has no notion of partial state, a request held for minutes
/// would look like a hung server to a client, and clients refresh their member lists from
/// the member events `/sync` delivers as they arrive.
pub struct PartialSync {
    wake: mpsc::UnboundedSender<OwnedRoomId>,
    /// `federation.partial_state_resync_delay_secs`: waited before each room's resync.
    delay: Duration,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<OwnedRoomId>>>,
}

impl PartialSync {
    pub fn new(delay: Duration) -> Self {
        let (wake, receiver) = mpsc::unbounded_channel();
        Self {
            wake,
            delay,
            receiver: Mutex::new(Some(receiver)),
        }
    }

    /// Asks for the resync of a room just joined with partial state.
    pub fn start(&self, room_id: &RoomId) {
        // Only fails when `run` is gone (the server stops): the mark stays for the next start.
        let _ = self.wake.send(room_id.to_owned());
    }

    /// Resyncs every partial-state room, those marked at start first, until `shutdown`. A
    /// resync cut short leaves its room marked (its store write is one batch).
    pub async fn run(
        self: Arc<Self>,
        services: Arc<Services>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let Some(mut receiver) = self
            .receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let mut queue: VecDeque<OwnedRoomId> = VecDeque::new();
        match services.rooms.partial_state_rooms() {
            Ok(rooms) => queue.extend(rooms.iter().filter_map(|(r, _)| r.parse().ok())),
            Err(e) => log::error!("cannot read the partial-state rooms: {e}"),
        }
        let mut failed: HashSet<OwnedRoomId> = HashSet::new();
        loop {
            let Some(room_id) = queue.pop_front() else {
                tokio::select! {
                    room = receiver.recv() => match room {
                        Some(room) => queue.push_back(room),
                        None => return,
                    },
                    _ = shutdown.wait_for(|stop| *stop) => return,
                    // Rooms that failed everywhere: again after a pause.
                    _ = tokio::time::sleep(RETRY_AFTER), if !failed.is_empty() => {
                        queue.extend(failed.drain());
                    }
                }
                continue;
            };
            if !self.delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(self.delay) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
            tokio::select! {
                done = resync(&services, &room_id) => {
                    if let Err(e) = done {
                        log::warn!("resync of partial-state room {room_id} failed: {e}");
                        failed.insert(room_id);
                    }
                }
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            while let Ok(room) = receiver.try_recv() {
                queue.push_back(room);
            }
        }
    }
}

/// Fetches, checks and stores the full state of one partial-state room (see the module
/// doc). Ok when the room is no longer partial.
async fn resync(services: &Services, room_id: &RoomId) -> Result<(), String> {
    let Some(partial) = services
        .rooms
        .partial_state(room_id)
        .map_err(|e| e.to_string())?
    else {
        return Ok(());
    };
    let started = std::time::Instant::now();
    let room = services
        .rooms
        .room(room_id)
        .map_err(|e| e.to_string())?
        .ok_or("the room is not stored")?;
    let version = RoomVersionId::try_from(room.version.as_str()).map_err(|e| e.to_string())?;
    let rules = version.rules().ok_or("unsupported room version")?;
    let join_id = ruma::EventId::parse(&partial.join_event_id).map_err(|e| e.to_string())?;
    let join = services
        .rooms
        .event(&join_id)
        .map_err(|e| e.to_string())?
        .ok_or("the join is not stored")?;
    let own = services.rooms.server_name().to_owned();
    let mut servers: Vec<OwnedServerName> = Vec::new();
    for server in std::iter::once(&partial.resident).chain(&partial.servers) {
        if let Ok(server) = OwnedServerName::try_from(server.as_str()) {
            if server != own && !servers.contains(&server) {
                servers.push(server);
            }
        }
    }
    let mut failures = Vec::new();
    for server in &servers {
        let request = get_room_state::v1::Request::new(join_id.clone(), room_id.to_owned());
        let answer = match services
            .federation
            .send_with_limits(
                server,
                request,
                STATE_TIMEOUT,
                super::super::client::MAX_RESPONSE_BYTES,
            )
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                failures.push(format!("{server}: {e}"));
                continue;
            }
        };
        let mut state = create_join_event::v2::RoomState::new();
        state.state = answer.pdus;
        state.auth_chain = answer.auth_chain;
        let checked = match super::verify::check_answer(
            services,
            room_id,
            &version,
            &rules,
            (join_id.clone(), join.json.clone()),
            state,
        )
        .await
        {
            Ok(checked) => checked,
            Err(e) => {
                failures.push(format!("{server}: {e}"));
                continue;
            }
        };
        let events = checked.state.len();
        let added = services
            .rooms
            .complete_partial_state(room_id, checked.state, checked.auth_chain)
            .await
            .map_err(|e| e.to_string())?;
        let rejected = services
            .pdus
            .recheck_partial_state(room_id, &partial)
            .await
            .map_err(|e| e.to_string())?;
        log::info!(
            "full state of {room_id} from {server}: {events} events, {added} new keys, {} events \
             accepted meanwhile rejected, in {:?}",
            rejected.len(),
            started.elapsed()
        );
        return Ok(());
    }
    Err(failures.join("; "))
}
