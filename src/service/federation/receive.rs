//! Inbound transactions (`PUT /_matrix/federation/v1/send/{txnId}`): idempotent per origin and
//! transaction id, PDUs handed to the PDU service, EDUs applied here.
//!
//! The answer to a transaction is stored (`fed_inbound_txns`) after its PDUs and EDUs were
//! processed; a replay with the same origin and id gets the stored answer and changes nothing.
//! Two copies of one transaction arriving at once are serialised by a lock of that
//! `(origin, txn id)` alone, so transactions of other origins (or other transactions) never
//! wait. EDUs that take locks take the lock of their own room only (receipts).
//!
//! An EDU about a user is only accepted from that user's server; anything else is dropped and
//! logged, as are EDUs about rooms or users this server does not share with the origin. A
//! malformed EDU is dropped alone: the spec gives EDUs no per-item result, and the rest of the
//! transaction must not be lost to one bad item.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use ruma::{
    events::room::member::MembershipState, OwnedDeviceId, OwnedServerName, RoomId, ServerName,
    UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{value::RawValue as RawJsonValue, Value};

use crate::{
    error::{Error, Result},
    service::{
        e2ee::to_device::{Messages, Target},
        receipts::{self, Mark},
        users::now_ms,
        Services,
    },
    store::{Batch, Record},
    table,
};

use super::queue::{MAX_EDUS, MAX_PDUS};

table!(
    /// `(origin, txn_id) → InboundTxn`: transactions processed, with their answer.
    pub InboundTxns: "fed_inbound_txns", (String, String) => InboundTxn
);
table!(
    /// `(received ms, origin, txn_id) → ()`: the same, by age, so old entries are pruned.
    pub InboundTxnAges: "fed_inbound_txn_ages", (u64, String, String) => bool
);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InboundTxn {
    pub received_ms: u64,
    /// Per PDU: its id and the error, if it was not accepted.
    pub pdus: Vec<(String, Option<String>)>,
}
impl Record for InboundTxn {}

/// How long a transaction id is remembered. A sender retries for at most about its backoff
/// cap; a day covers that with margin.
const REMEMBER_TXN: Duration = Duration::from_secs(24 * 3600);
/// Old entries pruned per transaction (keeps the table bounded by the inbound rate).
const PRUNE_PER_TXN: usize = 16;
/// How long a remote user's typing notification lasts without a renewal (remote servers send
/// no timeout; they resend while the user types).
pub const REMOTE_TYPING_TIMEOUT: Duration = Duration::from_secs(30);
/// The sender "device" of to-device messages from other servers in the to-device service's
/// transaction table: `(sender, this, type, message_id)` makes a repeated `message_id` of the
/// same sender a no-op. Not a valid device id of a local user (who never sends as remote).
const FEDERATION_DEVICE: &str = "*federation";

/// The PDU results of a transaction.
pub use super::pdus::PduResults;

/// `(origin, txn_id) →` the lock of a transaction being processed.
type TxnLocks = HashMap<(OwnedServerName, String), Weak<tokio::sync::Mutex<()>>>;

#[derive(Default)]
pub struct Inbound {
    /// One lock per transaction being processed; weak, so finished ones cost nothing.
    locks: Mutex<TxnLocks>,
}

impl Inbound {
    fn lock_for(&self, origin: &ServerName, txn_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.retain(|_, weak| weak.strong_count() > 0);
        let key = (origin.to_owned(), txn_id.to_owned());
        if let Some(lock) = locks.get(&key).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(key, Arc::downgrade(&lock));
        lock
    }
}

/// A transaction as the handler received it.
pub struct Transaction<'a> {
    pub origin: &'a ServerName,
    pub txn_id: &'a str,
    pub body_origin: &'a ServerName,
    pub pdus: &'a [Box<RawJsonValue>],
    pub edus: &'a [Box<RawJsonValue>],
}

/// Processes a transaction (or returns the stored answer of a replay).
pub async fn receive(services: &Arc<Services>, txn: Transaction<'_>) -> Result<PduResults> {
    if txn.body_origin != txn.origin {
        return Err(Error::forbidden(format!(
            "The transaction's origin {} is not the signing server {}",
            txn.body_origin, txn.origin
        )));
    }
    if txn.pdus.len() > MAX_PDUS || txn.edus.len() > MAX_EDUS {
        return Err(Error::bad_json(format!(
            "A transaction carries at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs"
        )));
    }
    let origin = txn.origin;
    // The origin is evidently up: anything queued for it goes now.
    services.fed_sender.destination_alive(origin).await;
    let lock = services.fed_inbound.lock_for(origin, txn.txn_id);
    let _guard = lock.lock().await;
    let key = (origin.to_string(), txn.txn_id.to_owned());
    if let Some(done) = services.store.get::<InboundTxns>(&key)? {
        log::debug!("replayed transaction {} from {origin}", txn.txn_id);
        return Ok(results_of(&done));
    }

    let pdu_results = services.pdus.receive_pdus(origin, txn.pdus).await;

    apply_edus(services, origin, txn.edus).await;

    let received_ms = now_ms();
    let record = InboundTxn {
        received_ms,
        pdus: pdu_results
            .iter()
            .map(|(id, r)| (id.to_string(), r.clone().err()))
            .collect(),
    };
    let mut batch = Batch::new();
    batch
        .put::<InboundTxns>(&key, &record)
        .put::<InboundTxnAges>(&(received_ms, key.0.clone(), key.1.clone()), &true);
    stage_prune(services, &mut batch, received_ms)?;
    services.store.commit(batch).await?;
    Ok(pdu_results)
}

fn results_of(done: &InboundTxn) -> PduResults {
    done.pdus
        .iter()
        .filter_map(|(id, error)| {
            let id = ruma::EventId::parse(id).ok()?;
            Some((id, error.clone().map_or(Ok(()), Err)))
        })
        .collect()
}

fn stage_prune(services: &Services, batch: &mut Batch, now: u64) -> Result<()> {
    let cutoff = now.saturating_sub(REMEMBER_TXN.as_millis() as u64);
    for ((ms, origin, txn_id), _) in
        services
            .store
            .range::<InboundTxnAges>(None, false, PRUNE_PER_TXN)?
    {
        if ms >= cutoff {
            break;
        }
        batch
            .delete::<InboundTxns>(&(origin.clone(), txn_id.clone()))
            .delete::<InboundTxnAges>(&(ms, origin, txn_id));
    }
    Ok(())
}

/// Applies a transaction's EDUs. Device-list EDUs go one after the other (each builds on the
/// `stream_id` the previous one stored); the others run together, so their writes share
/// durable flushes (group commit) instead of paying one each. They still keep their order
/// where it shows: each takes its stream position (or its room's lock, which is fair) on its
/// first poll, and `join_all` first polls them in transaction order.
async fn apply_edus(services: &Arc<Services>, origin: &ServerName, edus: &[Box<RawJsonValue>]) {
    let mut sequential = Vec::new();
    let mut together = Vec::new();
    for raw in edus {
        let edu: RawEdu = match serde_json::from_str(raw.get()) {
            Ok(edu) => edu,
            Err(e) => {
                log::info!("dropping an EDU from {origin}: not an EDU: {e}");
                continue;
            }
        };
        match edu.edu_type.as_str() {
            "m.device_list_update" | "m.signing_key_update" => sequential.push(edu),
            _ => together.push(edu),
        }
    }
    let log_error = |result: Result<()>| {
        if let Err(e) = result {
            log::info!("dropping an EDU from {origin}: {e}");
        }
    };
    let device_lists = async {
        for edu in &sequential {
            log_error(apply_edu(services, origin, edu).await);
        }
    };
    let others =
        futures_util::future::join_all(together.iter().map(|edu| apply_edu(services, origin, edu)));
    let ((), results) = tokio::join!(device_lists, others);
    results.into_iter().for_each(log_error);
}

#[derive(Deserialize)]
struct RawEdu {
    edu_type: String,
    #[serde(default)]
    content: Value,
}

async fn apply_edu(services: &Arc<Services>, origin: &ServerName, edu: &RawEdu) -> Result<()> {
    let content = &edu.content;
    match edu.edu_type.as_str() {
        "m.typing" => typing(services, origin, content).await,
        "m.receipt" => receipt(services, origin, content).await,
        "m.presence" => presence(services, origin, content).await,
        "m.device_list_update" => {
            about_origin(origin, content, "user_id")?;
            services.fed_devices.device_list_update(content).await
        }
        "m.signing_key_update" => {
            about_origin(origin, content, "user_id")?;
            services.fed_devices.signing_key_update(content).await
        }
        "m.direct_to_device" => direct_to_device(services, origin, content).await,
        other => {
            log::debug!("ignoring an EDU of unknown type {other} from {origin}");
            Ok(())
        }
    }
}

/// The user named by `field`, who must belong to `origin`.
fn about_origin(origin: &ServerName, content: &Value, field: &str) -> Result<ruma::OwnedUserId> {
    let user = content
        .get(field)
        .and_then(Value::as_str)
        .and_then(|u| UserId::parse(u).ok())
        .ok_or_else(|| Error::bad_json(format!("EDU without a valid {field}")))?;
    check_origin(origin, &user)?;
    Ok(user)
}

fn check_origin(origin: &ServerName, user: &UserId) -> Result<()> {
    if user.server_name() != origin {
        return Err(Error::forbidden(format!(
            "{origin} sent an EDU about {user}, a user of another server"
        )));
    }
    Ok(())
}

/// The joined members of a room, if `user` is one of them.
fn joined_members_with(
    services: &Services,
    room_id: &RoomId,
    user: &UserId,
) -> Result<Vec<ruma::OwnedUserId>> {
    let room = match services.rooms.membership(room_id, user)? {
        Some(MembershipState::Join) => services.rooms.room(room_id)?,
        _ => None,
    }
    .ok_or_else(|| Error::forbidden(format!("{user} is not joined to {room_id}")))?;
    Ok(services
        .rooms
        .members(room.sid)?
        .into_iter()
        .filter(|(_, m)| m == "join")
        .filter_map(|(u, _)| UserId::parse(u).ok())
        .collect())
}

async fn typing(services: &Services, origin: &ServerName, content: &Value) -> Result<()> {
    let user = about_origin(origin, content, "user_id")?;
    let room_id = content
        .get("room_id")
        .and_then(Value::as_str)
        .and_then(|r| RoomId::parse(r).ok())
        .ok_or_else(|| Error::bad_json("m.typing without a valid room_id"))?;
    let typing = content
        .get("typing")
        .and_then(Value::as_bool)
        .ok_or_else(|| Error::bad_json("m.typing without a boolean typing"))?;
    super::acl::check(&services.rooms, &room_id, origin)?;
    let members = joined_members_with(services, &room_id, &user)?;
    services.typing.set(
        &room_id,
        &user,
        typing.then_some(REMOTE_TYPING_TIMEOUT),
        members.iter().map(|m| m.as_ref()),
    );
    Ok(())
}

/// `m.receipt`: `{room_id: {"m.read": {user_id: {data: {ts, thread_id?}, event_ids}}}}`. Only
/// public read receipts travel; each applies like a local one (it never moves back).
async fn receipt(services: &Services, origin: &ServerName, content: &Value) -> Result<()> {
    let rooms = content
        .as_object()
        .ok_or_else(|| Error::bad_json("m.receipt content must be an object"))?;
    for (room_id, by_type) in rooms {
        let Ok(room_id) = RoomId::parse(room_id) else {
            log::info!("m.receipt from {origin} names an invalid room {room_id:?}");
            continue;
        };
        // All receipts for a room are ignored when the room's ACL denies the origin.
        if !super::acl::allows(&services.rooms, &room_id, origin)? {
            log::info!("m.receipt from {origin} in {room_id}: denied by the server ACL");
            continue;
        }
        let Some(reads) = by_type.get(receipts::READ).and_then(Value::as_object) else {
            continue;
        };
        for (user, receipt) in reads {
            if let Err(e) = one_receipt(services, origin, &room_id, user, receipt).await {
                log::info!("dropping a receipt from {origin} in {room_id}: {e}");
            }
        }
    }
    Ok(())
}

async fn one_receipt(
    services: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    user: &str,
    receipt: &Value,
) -> Result<()> {
    let user = UserId::parse(user).map_err(|_| Error::bad_json("invalid user id"))?;
    check_origin(origin, &user)?;
    let members = joined_members_with(services, room_id, &user)?;
    let room = services
        .rooms
        .room(room_id)?
        .ok_or_else(|| Error::not_found("unknown room"))?;
    let thread = receipt
        .pointer("/data/thread_id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    // Several ids are allowed; the latest known one of this room counts.
    let mut latest = None;
    for id in receipt
        .get("event_ids")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|id| ruma::EventId::parse(id).ok())
    {
        if let Some(event) = services.rooms.event(&id)? {
            if event.meta.room_sid == room.sid
                && latest
                    .as_ref()
                    .is_none_or(|l: &crate::service::rooms::StoredEvent| l.sid < event.sid)
            {
                latest = Some(event);
            }
        }
    }
    let event = latest.ok_or_else(|| Error::not_found("the receipt's event is not known here"))?;
    receipts::Receipts::check_thread(&services.rooms, &thread, &event)?;
    let mark = Mark {
        receipt_type: receipts::READ,
        thread,
        event: &event,
    };
    services
        .receipts
        .update(
            &services.rooms,
            &services.account_data,
            room_id,
            &user,
            &[mark],
            &members,
        )
        .await
}

async fn presence(services: &Services, origin: &ServerName, content: &Value) -> Result<()> {
    let updates = content
        .get("push")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::bad_json("m.presence without a push list"))?;
    for update in updates {
        let result = async {
            let user = about_origin(origin, update, "user_id")?;
            let state = update
                .get("presence")
                .and_then(Value::as_str)
                .filter(|s| matches!(*s, "online" | "unavailable" | "offline"))
                .ok_or_else(|| Error::bad_json("invalid presence state"))?;
            let status_msg = update
                .get("status_msg")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let ago = update
                .get("last_active_ago")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            services
                .presence
                .set_remote(&services.rooms, &user, state, status_msg, ago)
                .await
        }
        .await;
        if let Err(e) = result {
            log::info!("dropping a presence update from {origin}: {e}");
        }
    }
    Ok(())
}

/// `m.direct_to_device`: delivered to local devices (`*`: all of the user's devices), once
/// per `(sender, message_id)`.
async fn direct_to_device(services: &Services, origin: &ServerName, content: &Value) -> Result<()> {
    let sender = about_origin(origin, content, "sender")?;
    let event_type = content
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_json("m.direct_to_device without a type"))?;
    let message_id = content
        .get("message_id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| Error::bad_json("m.direct_to_device without a message_id"))?;
    let by_user = content
        .get("messages")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::bad_json("m.direct_to_device without messages"))?;
    let mut messages = Messages::new();
    for (user, devices) in by_user {
        let Ok(user_id) = UserId::parse(user) else {
            continue;
        };
        if !services.e2ee.is_local(&user_id) {
            log::info!("{origin} sent a to-device message for {user_id}, not a user of ours");
            continue;
        }
        let Some(devices) = devices.as_object() else {
            continue;
        };
        for (device, message) in devices {
            let Some(message) = message.as_object() else {
                continue;
            };
            let target = if device == "*" {
                Target::AllDevices
            } else {
                Target::Device(OwnedDeviceId::from(device.as_str()))
            };
            messages.push((user_id.clone(), target, message.clone()));
        }
    }
    if messages.is_empty() {
        return Ok(());
    }
    services
        .e2ee
        .send_to_device(
            &sender,
            &OwnedDeviceId::from(FEDERATION_DEVICE),
            event_type,
            message_id,
            &messages,
        )
        .await
}
