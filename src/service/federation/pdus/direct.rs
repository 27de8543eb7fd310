//! One PDU handed to this server directly rather than in a transaction: the member event of a
//! `send_join`, `send_leave` or `send_knock` (`federation::membership`). It is judged exactly
//! as a PDU of `/send` (steps 4 to 6, the same [`Pdus::judge`]) and, when accepted, stored
//! through the same staging path (timeline, state, membership) and queued for the other
//! servers of the room *in the same batch*: the resident server is the one that tells them.
//! Unlike `/send`, nothing is stored when the event is not accepted (no `rejected_events`
//! row): the sending server learns the refusal from the answer.

use std::collections::BTreeSet;

use ruma::{CanonicalJsonObject, OwnedEventId, OwnedServerName, RoomId, ServerName, UserId};

use super::{Judged, Pdus, Prepared};
use crate::{
    error::{Error, Result},
    service::rooms::Pdu,
};

/// What became of a directly sent PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Direct {
    /// Stored now, at this position, and queued for these servers.
    Accepted {
        sid: u64,
        relayed_to: BTreeSet<OwnedServerName>,
    },
    /// Stored before (a resent request): at this position.
    Known { sid: u64 },
    /// Not authorised (or an auth event is unknown): why.
    Refused(String),
}

impl Pdus {
    /// Judges and stores one checked PDU (format, id, signatures and hash verified by the
    /// caller) sent by `origin`; see the module doc.
    pub async fn receive_direct(
        &self,
        room_id: &RoomId,
        origin: &ServerName,
        event_id: OwnedEventId,
        pdu: Pdu,
        object: CanonicalJsonObject,
    ) -> Result<Direct> {
        let event = Prepared {
            event_id: event_id.clone(),
            pdu,
            object,
            fetched_state: Vec::new(),
        };
        let mut staged = self.rooms.stage(room_id).await?;
        // Known already — even as an outlier, e.g. a join that is part of the state another
        // join's answer brought — it is not judged again.
        if let Some(sid) = self.rooms.event_sid(&event_id)? {
            if !self.rooms.is_soft_failed(sid)? {
                return Ok(Direct::Known { sid });
            }
        }
        match self.judge(&mut staged, room_id, &event, &[])? {
            Judged::Final(Ok(())) => {
                let sid = self
                    .rooms
                    .event_sid(&event_id)?
                    .ok_or_else(|| Error::unknown("stored event vanished"))?;
                if self.rooms.is_soft_failed(sid)? {
                    return Ok(Direct::Refused(
                        "the event was not authorised by the room's current state".into(),
                    ));
                }
                Ok(Direct::Known { sid })
            }
            Judged::Final(Err(reason)) => Ok(Direct::Refused(reason)),
            // Nothing is staged: the staging (and the room lock) is dropped here.
            Judged::Staged(Err(reason)) => Ok(Direct::Refused(reason)),
            Judged::CommitFirst => Err(Error::unknown("cannot place the event")),
            Judged::Staged(Ok(())) => {
                let Some(sid) = staged.staged_sid(&event_id) else {
                    // Soft-failed: passes its auth events and the state before it, not the
                    // current state. Not stored (the staging is dropped).
                    return Ok(Direct::Refused(
                        "the event is not authorised by the room's current state".into(),
                    ));
                };
                let record = self
                    .rooms
                    .room(room_id)?
                    .ok_or_else(|| Error::not_found("Unknown room"))?;
                // The servers in the room before the event, but for the sender's and ours.
                let joined: Vec<_> = self
                    .rooms
                    .members(record.sid)?
                    .into_iter()
                    .filter(|(_, m)| m == "join")
                    .filter_map(|(user, _)| UserId::parse(user).ok())
                    .collect();
                let queue = self.rooms.fed_queue();
                let mut relayed_to = queue.remote_servers(joined.iter().map(|u| u.as_ref()));
                relayed_to.remove(origin);
                queue.stage_pdu(staged.batch_mut(), sid, &relayed_to);
                staged
                    .commit_with(|| Error::unknown("the room changed concurrently"))
                    .await?;
                queue.wake(relayed_to.iter().cloned());
                Ok(Direct::Accepted { sid, relayed_to })
            }
        }
    }
}
