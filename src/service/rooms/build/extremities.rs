//! Keeping a room's forward extremities few. Concurrent events from several servers each
//! leave one; every local event cites up to 20 of them (`MAX_PREV_EVENTS`) and so merges
//! them, but a room where only other servers speak would gather them until the cap of 100.
//! When received events leave more than [`MERGE_ABOVE`], this server sends
//! `org.matrix.dummy_event`s (as servers do) from one of its joined users, each merging up to
//! 20, so that the room record, rewritten with every event, and the `prev_events` of the next
//! event stay small.

use ruma::{OwnedEventId, RoomId, UserId};
use serde_json::json;

use crate::{
    error::Result,
    service::rooms::{NewEvent, Rooms},
};

/// Above this many forward extremities, dummy events merge them.
pub const MERGE_ABOVE: usize = 10;

/// The most dummy events one merge sends (each merges 20: enough for the cap of 100).
const MAX_DUMMIES: usize = 5;

/// The event type of a dummy event.
pub const DUMMY_EVENT: &str = "org.matrix.dummy_event";

impl Rooms {
    /// Sends dummy events until the room has at most [`MERGE_ABOVE`] forward extremities, if
    /// one of this server's users is joined to send them. Returns their ids.
    pub async fn merge_extremities(&self, room_id: &RoomId) -> Result<Vec<OwnedEventId>> {
        let mut sent = Vec::new();
        for _ in 0..MAX_DUMMIES {
            let Some(record) = self.room(room_id)? else {
                break;
            };
            if record.extremities.len() <= MERGE_ABOVE {
                break;
            }
            let sender = self
                .members(record.sid)?
                .into_iter()
                .filter(|(_, membership)| membership == "join")
                .filter_map(|(user, _)| UserId::parse(user).ok())
                .find(|user| user.server_name() == self.server_name());
            let Some(sender) = sender else {
                break;
            };
            let event = NewEvent::message(DUMMY_EVENT, json!({}));
            sent.push(self.send(room_id, &sender, event).await?);
        }
        Ok(sent)
    }
}
