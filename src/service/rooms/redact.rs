//! Redactions: applying an `m.room.redaction` to its target.
//!
//! The authorization rules decide whether the redaction event itself is accepted; whether it
//! *applies* to its target is decided here (room versions 3+: the sender has the `redact` power
//! level, or is the original sender — for events of other servers, shares its domain). An
//! applied redaction rewrites the target's stored PDU with its redacted form (the room
//! version's redaction algorithm), records `redacted_by` in its meta and drops its relation
//! from the index, all in the batch of the redaction event, so no read path can see the old
//! content once the redaction is visible.

use std::collections::HashSet;

use ruma::{
    canonical_json::redact,
    events::TimelineEventType,
    room_version_rules::RoomVersionRules,
    state_res::events::{RoomCreateEvent, RoomPowerLevelsEvent, RoomPowerLevelsIntField},
    OwnedEventId, OwnedUserId, RoomId, UserId,
};
use serde_json::json;

use super::{EventMetaTable, NewEvent, Pdu, Pdus, Rooms, StoredEvent, Txn};
use crate::{
    error::{Error, Result},
    service::search::index,
    store::{Batch, Raw},
};

/// Whether `user` reaches the room's `redact` level, given its power levels and create events.
pub fn can_redact_others(
    rules: &RoomVersionRules,
    power_levels: Option<Pdu>,
    create: Option<Pdu>,
    user: &UserId,
) -> Result<bool> {
    let auth = &rules.authorization;
    let creators: HashSet<OwnedUserId> = match create {
        Some(create) => RoomCreateEvent::new(create)
            .creators(auth)
            .map_err(Error::unknown)?,
        None => HashSet::new(),
    };
    let (power, redact_level) = match power_levels {
        _ if auth.explicitly_privilege_room_creators && creators.contains(user) => {
            return Ok(true);
        }
        Some(pl) => {
            let pl = RoomPowerLevelsEvent::new(pl);
            let power = pl.user_power_level(user, auth).map_err(Error::unknown)?;
            let redact = pl
                .get_as_int_or_default(RoomPowerLevelsIntField::Redact, auth)
                .map_err(Error::unknown)?;
            (i64::from(power), i64::from(redact))
        }
        None => {
            // No power levels yet: creators have 100, everyone else 0; `redact` defaults to 50.
            let power = if creators.contains(user) { 100 } else { 0 };
            let redact = RoomPowerLevelsIntField::Redact.default_value();
            (power, i64::from(redact))
        }
    };
    Ok(power >= redact_level)
}

impl Rooms {
    /// Applies a redaction event being staged to its target (same batch). For a local sender
    /// an unknown target is 404 and a target the sender may not redact is 403, so nothing is
    /// stored; a remote redaction that does not apply (yet) is stored without effect.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn stage_redaction(
        &self,
        batch: &mut Batch,
        search: &mut index::Overlay,
        rules: &RoomVersionRules,
        redaction: &Pdu,
        room_sid: u64,
        power_levels: Option<Pdu>,
        create: Option<Pdu>,
    ) -> Result<()> {
        if redaction.kind != TimelineEventType::RoomRedaction {
            return Ok(());
        }
        let Some(target_id) = &redaction.redacts else {
            return Ok(());
        };
        let local = redaction.sender.server_name() == self.server_name();
        let target = self
            .event(target_id)?
            .filter(|t| t.meta.room_sid == room_sid);
        let Some(target) = target else {
            return if local {
                Err(Error::not_found("Event not found"))
            } else {
                Ok(())
            };
        };
        let own = target.meta.sender == redaction.sender.as_str();
        let same_server = UserId::parse(&target.meta.sender)
            .is_ok_and(|s| s.server_name() == redaction.sender.server_name());
        let applies = own
            || (!local && same_server)
            || can_redact_others(rules, power_levels, create, &redaction.sender)?;
        if !applies {
            return if local {
                Err(Error::forbidden(
                    "You may only redact your own events unless you have the redact power level",
                ))
            } else {
                Ok(())
            };
        }
        self.apply_redaction(batch, search, rules, &target, &redaction.event_id)
    }

    /// Rewrites the target with its redacted form and marks it redacted (first redaction wins);
    /// its search index rows go in the same batch.
    fn apply_redaction(
        &self,
        batch: &mut Batch,
        search: &mut index::Overlay,
        rules: &RoomVersionRules,
        target: &StoredEvent,
        redaction_id: &ruma::EventId,
    ) -> Result<()> {
        if target.meta.redacted_by.is_some() {
            return Ok(());
        }
        let redacted = redact(target.json.clone(), &rules.redaction, None)
            .map_err(|e| Error::unknown(format!("cannot redact event: {e}")))?;
        let bytes = serde_json::to_vec(&redacted).map_err(|e| Error::unknown(e.to_string()))?;
        let mut meta = target.meta.clone();
        meta.redacted_by = Some(redaction_id.to_string());
        batch
            .put::<Pdus>(&target.sid, &Raw(bytes))
            .put::<EventMetaTable>(&target.sid, &meta);
        if let Some(content) = target.pdu.content_as::<serde_json::Value>() {
            index::stage_remove(
                &self.store,
                batch,
                search,
                target.meta.room_sid,
                target.sid,
                &content,
            )?;
        }
        self.unstage_relation(batch, target, &redacted)
    }

    /// Sends an `m.room.redaction` of `target` for a local user (`PUT /redact`): idempotent per
    /// device and transaction id. 404 if the target is not an event of the room, 403 if the
    /// user may not redact it.
    pub async fn redact(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: OwnedEventId,
        reason: Option<String>,
        txn: Txn,
    ) -> Result<OwnedEventId> {
        let mut content = json!({});
        if let Some(reason) = reason {
            content["reason"] = json!(reason);
        }
        let mut event = NewEvent::message(TimelineEventType::RoomRedaction, content);
        event.redacts = Some(target);
        event.txn = Some(txn);
        self.send(room_id, sender, event).await
    }
}
