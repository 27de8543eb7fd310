//! PDUs of rooms this server is not in: only a member event that ends a local user's remote
//! invite or knock (`rooms::remote_invites`) is taken — the inviting side rescinding the
//! invite (a kick of the invitee), a ban, or a resident server refusing a knock. Its servers
//! send it here because the event targets our user (spec: a server learns of the end of an
//! invite only this way).
//!
//! The event passes the same format, id, signature and hash checks as any PDU, for the room
//! version the invite named. Without the room's state the authorization rules cannot be run,
//! so what stands in for them: the sender is a user of a server the record names (the
//! inviter's, the servers the knock went through or the room id's), and the event comes after
//! the recorded invite or knock in the room's DAG (a greater `depth`). Anything else is left
//! to the caller, which drops PDUs of unknown rooms.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, RoomId, RoomVersionId, ServerName,
    UserId,
};

use super::{checks, Pdus};
use crate::service::{federation::invite::membership_of, rooms::remote_invites::RemoteInvite};

type Outcome = std::result::Result<OwnedEventId, (Option<OwnedEventId>, String)>;

fn string<'a>(object: &'a CanonicalJsonObject, key: &str) -> Option<&'a str> {
    match object.get(key) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

fn depth(object: &CanonicalJsonObject) -> Option<i64> {
    match object.get("depth") {
        Some(CanonicalJsonValue::Integer(d)) => Some(i64::from(*d)),
        _ => None,
    }
}

impl Pdus {
    /// `Some` when the PDU is a member event about a local user's remote invite or knock in
    /// `room_id`, a room this server is not in (unknown here, or `known` but without a joined
    /// local user): its outcome. `None`: not such an event (the cheap checks come first, so
    /// PDUs of rooms this server is in cost a lookup or two).
    pub(super) async fn outside_room(
        &self,
        origin: &ServerName,
        object: &CanonicalJsonObject,
        room_id: &RoomId,
        known: bool,
    ) -> Option<Outcome> {
        if string(object, "type") != Some("m.room.member") {
            return None;
        }
        let target = UserId::parse(string(object, "state_key")?).ok()?;
        if target.server_name() != self.rooms.server_name() {
            return None;
        }
        let record = self.rooms.remote_membership(&target, room_id).ok()??;
        if known && self.rooms.is_resident(room_id).ok()? {
            return None;
        }
        let version = RoomVersionId::try_from(record.room_version.as_str()).ok()?;
        let rules = version.rules()?;
        let event_id = match checks::event_id(object, &rules) {
            Ok(id) => id,
            Err(e) => return Some(Err((None, e))),
        };
        if record.event_id.as_deref() == Some(event_id.as_str()) {
            // The recorded event itself (an invite also sent in a transaction).
            return Some(Ok(event_id));
        }
        if !matches!(record.membership.as_str(), "invite" | "knock") {
            return None;
        }
        Some(
            self.end_remote_membership(origin, object.clone(), &record, &target, room_id, event_id)
                .await,
        )
    }

    async fn end_remote_membership(
        &self,
        origin: &ServerName,
        object: CanonicalJsonObject,
        record: &RemoteInvite,
        target: &UserId,
        room_id: &RoomId,
        event_id: OwnedEventId,
    ) -> Outcome {
        let fail = |e: String| Err((Some(event_id.clone()), e));
        let version = RoomVersionId::try_from(record.room_version.as_str())
            .map_err(|e| (Some(event_id.clone()), e.to_string()))?;
        let Some(rules) = version.rules() else {
            return fail(format!("room version {version} is not supported"));
        };
        let membership = match membership_of(&object) {
            Some(m @ ("leave" | "ban")) => m.to_owned(),
            _ => return fail("the room is not known to this server".into()),
        };
        if let Err(e) = checks::check_format(&object, &rules) {
            return fail(e);
        }
        let sender = match string(&object, "sender").map(UserId::parse) {
            Some(Ok(sender)) => sender,
            _ => return fail("invalid sender".into()),
        };
        let inviter = UserId::parse(record.sender.as_str()).ok();
        let allowed = inviter
            .iter()
            .map(|u| u.server_name().as_str())
            .chain(record.servers.iter().map(String::as_str))
            .any(|server| server == sender.server_name().as_str());
        if !allowed || sender.server_name() == self.rooms.server_name() {
            return fail(format!(
                "{sender} may not end {target}'s invite or knock as far as this server knows"
            ));
        }
        let recorded_depth = record
            .event_json()
            .and_then(|e| e["depth"].as_i64())
            .unwrap_or(0);
        if depth(&object).unwrap_or(0) <= recorded_depth {
            return fail("the event does not follow the invite or knock".into());
        }
        let wanted = match checks::wanted_keys(&object, &rules) {
            Ok(wanted) => wanted,
            Err(e) => return fail(e),
        };
        let (valid_at, enforce) = checks::key_validity(&object, &rules);
        let keys = match self.keys.public_key_map(&wanted, valid_at, enforce).await {
            Ok(keys) => keys,
            Err(e) => return fail(format!("cannot get the signing keys: {e}")),
        };
        let object = match checks::verify(&keys, object, &rules) {
            Ok((object, _)) => object,
            Err(e) => return fail(e),
        };
        let json = match serde_json::to_string(&object) {
            Ok(json) => json,
            Err(e) => return fail(e.to_string()),
        };
        let next = RemoteInvite {
            membership,
            event: Some(json),
            event_id: Some(event_id.to_string()),
            sender: sender.to_string(),
            ..record.clone()
        };
        match self
            .rooms
            .record_remote_invite(target, room_id, next, Some(record))
            .await
        {
            Ok(_) => {
                log::info!("{target}'s remote invite or knock in {room_id} ended by {sender} (from {origin})");
                Ok(event_id)
            }
            Err(e) => fail(format!("internal error: {e}")),
        }
    }
}
