//! Delivery of notifications to push gateways (Push Gateway API: `POST
//! /_matrix/push/v1/notify`).
//!
//! The queue is durable without a queue table: the [`NotifiedTable`] rows listing the user are the
//! work, and each pusher keeps how far it got ([`PusherProgress`]). A pusher task takes the
//! next unread notification after its progress, sends it, and moves its progress on only when
//! the gateway answered 2xx, so a crash or restart sends again what was not acknowledged (the
//! gateway suppresses duplicates by `event_id`, as the spec asks of it). When nothing is left
//! it compares the user's unread count with the badge the gateway last got and sends a
//! counts-only notification when they differ (a receipt lowered it).
//!
//! One task per pusher at most, so one request in flight per pusher; failures back off
//! exponentially ([`BACKOFF_INITIAL`] doubling up to [`BACKOFF_MAX`]) and notifications older
//! than [`MAX_AGE_MS`] are given up. A gateway that lists the pushkey as `rejected` removes the
//! pusher. Logs name the app id and the gateway host, never the pushkey or the URL's path.
//!
//! [`NotifiedTable`]: super::notifications::NotifiedTable

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use ruma::{events::StateEventType, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc::UnboundedReceiver, watch};

use super::{
    notifications::{Notification, Notifications},
    notified::notified,
    pushers::{Pusher, Pushers},
};
use crate::{
    error::{Error, Result},
    outbound::Outbound,
    service::{rooms::Rooms, users::now_ms},
    store::{Batch, Record, Store},
    table,
};

table!(
    /// `(user_id, app_id, pushkey) → Progress`: how far each pusher's delivery got. Only its
    /// pusher's task writes it; deleted when the task finds the pusher gone.
    pub PusherProgress: "pusher_progress", (String, String, String) => Progress
);

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    /// The position of the last notification delivered (or given up).
    pub notified_upto: u64,
    /// The unread count the gateway last acknowledged, if any.
    pub badge: Option<u64>,
}
impl Record for Progress {}

/// First delay after a failed delivery; each further failure doubles it.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Longest delay between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30 * 60);
/// Notifications older than this when their turn comes are not sent any more.
pub const MAX_AGE_MS: u64 = 24 * 3600 * 1000;
/// Notifications looked at per step (read or too old ones are skipped in bulk).
const SCAN: usize = 100;

type PusherKey = (OwnedUserId, String, String);

/// What one step of a pusher's task did.
enum Step {
    /// Sent something (or skipped stale rows); look again at once.
    Progressed,
    /// Nothing to send.
    Idle,
    /// The pusher no longer exists (deleted, or its pushkey rejected).
    Gone,
}

pub struct Delivery {
    store: Store,
    pushers: Arc<Pushers>,
    notifications: Arc<Notifications>,
    rooms: Arc<Rooms>,
    outbound: Outbound,
    /// Running pusher tasks and, per task, whether it was woken since it last looked for
    /// work. A task leaves the map (under this lock) only after seeing the flag unset, so
    /// a wake is never lost between its last look and its exit.
    tasks: Mutex<HashMap<PusherKey, Arc<AtomicBool>>>,
    /// Users that have (or had, since the start) a pusher; wakes for anyone else are dropped
    /// without a store read (a message to a big room wakes every member it notified). Only
    /// ever grows while the server runs.
    with_pushers: Mutex<HashSet<OwnedUserId>>,
    /// The server's stop signal, set when [`Delivery::run`] starts; nothing is delivered
    /// before (admin commands open the services without delivering).
    shutdown: std::sync::OnceLock<watch::Receiver<bool>>,
}

impl Delivery {
    pub fn new(
        store: Store,
        pushers: Arc<Pushers>,
        notifications: Arc<Notifications>,
        rooms: Arc<Rooms>,
        outbound: Outbound,
    ) -> Self {
        Self {
            store,
            pushers,
            notifications,
            rooms,
            outbound,
            tasks: Mutex::new(HashMap::new()),
            with_pushers: Mutex::new(HashSet::new()),
            shutdown: std::sync::OnceLock::new(),
        }
    }

    /// Delivers until `shutdown`: first whatever every pusher has left from before a
    /// restart, then as the notifications service reports users whose notifications changed.
    pub async fn run(
        self: Arc<Self>,
        mut changes: UnboundedReceiver<OwnedUserId>,
        shutdown: watch::Receiver<bool>,
    ) {
        let mut stop = shutdown.clone();
        let _ = self.shutdown.set(shutdown);
        match self.pushers.users() {
            Ok(users) => {
                for user in users {
                    self.user_has_pushers(&user);
                }
            }
            Err(e) => log::error!("push delivery cannot list pushers: {e:?}"),
        }
        loop {
            tokio::select! {
                user = changes.recv() => match user {
                    Some(user) => self.wake_user(&user),
                    None => return,
                },
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Notes that a user set a pusher, so their notifications are delivered from now on,
    /// and delivers any they got since the pusher was created.
    pub fn user_has_pushers(self: &Arc<Self>, user_id: &UserId) {
        lock(&self.with_pushers).insert(user_id.to_owned());
        self.wake_user(user_id);
    }

    fn wake_user(self: &Arc<Self>, user_id: &UserId) {
        let Some(shutdown) = self.shutdown.get() else {
            return;
        };
        if !lock(&self.with_pushers).contains(user_id) {
            return;
        }
        let pushers = match self.pushers.of_user(user_id) {
            Ok(pushers) => pushers,
            Err(e) => {
                log::error!("push delivery cannot read pushers: {e:?}");
                return;
            }
        };
        // Users stay in `with_pushers` once there (a few per family): removing one here could
        // race with a pusher being set again and silence them until a restart.
        let mut tasks = lock(&self.tasks);
        for pusher in pushers {
            let key = (user_id.to_owned(), pusher.app_id, pusher.pushkey);
            if let Some(woken) = tasks.get(&key) {
                woken.store(true, Ordering::SeqCst);
                continue;
            }
            let woken = Arc::new(AtomicBool::new(false));
            tasks.insert(key.clone(), woken.clone());
            tokio::spawn(self.clone().pusher_task(key, woken, shutdown.clone()));
        }
    }

    async fn pusher_task(
        self: Arc<Self>,
        key: PusherKey,
        woken: Arc<AtomicBool>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut failures: u32 = 0;
        loop {
            if *shutdown.borrow() {
                break;
            }
            woken.store(false, Ordering::SeqCst);
            let step = tokio::select! {
                step = self.step(&key) => step,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            match step {
                Ok(Step::Progressed) => failures = 0,
                Ok(Step::Idle | Step::Gone) => {
                    // Gone too: the pusher may have been set again under the same key.
                    failures = 0;
                    let mut tasks = lock(&self.tasks);
                    if !woken.load(Ordering::SeqCst) {
                        tasks.remove(&key);
                        return;
                    }
                }
                Err(why) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff(failures);
                    log::warn!(
                        "push to {} for {} failed ({why}); attempt {failures}, next in {}s",
                        key.1,
                        key.0,
                        delay.as_secs()
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.wait_for(|stop| *stop) => break,
                    }
                }
            }
        }
        lock(&self.tasks).remove(&key);
    }

    /// Sends the pusher's next notification, or its badge, or finds nothing to do.
    async fn step(&self, key: &PusherKey) -> std::result::Result<Step, String> {
        let (user_id, app_id, pushkey) = key;
        let progress_key = (user_id.to_string(), app_id.clone(), pushkey.clone());
        let pusher = self
            .pushers
            .get(user_id, app_id, pushkey)
            .map_err(|e| format!("cannot read the pusher: {e:?}"))?;
        let Some(pusher) = pusher else {
            let mut batch = Batch::new();
            batch.delete::<PusherProgress>(&progress_key);
            self.store
                .commit(batch)
                .await
                .map_err(|e| format!("cannot store progress: {e}"))?;
            return Ok(Step::Gone);
        };
        let mut progress = self
            .store
            .get::<PusherProgress>(&progress_key)
            .map_err(|e| format!("cannot read progress: {e}"))?
            .unwrap_or_default();
        // Only settled positions: a commit at a lower position may still be in flight, and
        // progress must never pass it (it would never be sent). Its wake comes once settled.
        // Read before the counts: every notification up to it has then landed with its
        // counts row, so the rooms with unread notifications below hold every unread one.
        let settled = self.rooms.stream_position();
        // Counts before the rows: every notification they include is then among the rows
        // read below (settled or not), so a badge-only push never runs ahead of its
        // notification. Only rooms with unread notifications are walked: the others have
        // nothing to send, and passing over their rows is what progress may do anyway.
        let (unread, missed_calls, rooms) = self
            .notifications
            .unread_totals(user_id)
            .map_err(|e| format!("cannot count unread notifications: {e:?}"))?;
        let (mut rows, walked_to) = self
            .notifications
            .after(user_id, &rooms, progress.notified_upto, SCAN)
            .map_err(|e| format!("cannot read notifications: {e:?}"))?;
        let listed = rows.len();
        rows.retain(|(sid, _, _)| *sid <= settled);
        let unsettled = rows.len() < listed;
        let now = now_ms();
        let next = rows.iter().find(|(_, row, read)| {
            !read && row.ts >= pusher.created_ms && now.saturating_sub(row.ts) <= MAX_AGE_MS
        });
        let upto = match next {
            Some((sid, _, _)) => *sid,
            None => {
                let last = rows
                    .last()
                    .map_or(progress.notified_upto, |(sid, _, _)| *sid);
                // Every notification up to `walked_to` was listed: what lies between the
                // last one and it is none of the user's, so passed too (up to what settled).
                match walked_to {
                    Some(walked) if !unsettled => last.max(walked.min(settled)),
                    _ => last,
                }
            }
        };
        let skipped = upto > progress.notified_upto && next.is_none();
        let payload = match next {
            Some((sid, row, _)) => self
                .event_payload(&pusher, user_id, *sid, row)
                .map_err(|e| format!("cannot build the notification: {e:?}"))?,
            // A notification still settling comes first; its wake follows.
            None if unsettled && !skipped => return Ok(Step::Idle),
            None if progress.badge.unwrap_or(0) != unread => Map::new(),
            None if skipped => {
                progress.notified_upto = upto;
                self.save(&progress_key, &progress).await?;
                return Ok(Step::Progressed);
            }
            None => return Ok(Step::Idle),
        };
        let rejected = self.send(&pusher, payload, unread, missed_calls).await?;
        if rejected {
            log::info!(
                "push gateway rejected a pushkey of {} for {user_id}; removing the pusher",
                pusher.app_id
            );
            self.pushers
                .remove(user_id, app_id, pushkey)
                .await
                .map_err(|e| format!("cannot remove the pusher: {e:?}"))?;
            let mut batch = Batch::new();
            batch.delete::<PusherProgress>(&progress_key);
            self.store
                .commit(batch)
                .await
                .map_err(|e| format!("cannot store progress: {e}"))?;
            return Ok(Step::Gone);
        }
        progress.notified_upto = upto;
        progress.badge = Some(unread);
        self.save(&progress_key, &progress).await?;
        Ok(Step::Progressed)
    }

    async fn save(
        &self,
        key: &(String, String, String),
        progress: &Progress,
    ) -> std::result::Result<(), String> {
        let mut batch = Batch::new();
        batch.put::<PusherProgress>(key, progress);
        self.store
            .commit(batch)
            .await
            .map_err(|e| format!("cannot store progress: {e}"))
    }

    /// The event fields of a notification (all of them, or the ids only for `event_id_only`).
    fn event_payload(
        &self,
        pusher: &Pusher,
        user_id: &UserId,
        sid: u64,
        row: &Notification,
    ) -> Result<Map<String, Value>> {
        let actions: Vec<Value> = serde_json::from_str(&row.actions).unwrap_or_default();
        let mut out = Map::new();
        out.insert("event_id".into(), json!(row.event_id));
        out.insert("room_id".into(), json!(row.room_id));
        let event = notified(&self.rooms, user_id, &row.room_id, sid)?
            .ok_or_else(|| Error::unknown("notified event is missing"))?;
        let kind = event.kind();
        let sound = actions.iter().any(|a| a["set_tweak"] == "sound");
        let urgent =
            row.highlight || sound || matches!(kind.as_str(), "m.call.invite" | "m.room.encrypted");
        out.insert("prio".into(), json!(if urgent { "high" } else { "low" }));
        out.insert("tweaks".into(), Value::Object(tweaks(&actions)));
        if pusher.event_id_only() {
            return Ok(out);
        }
        let sender = event.sender();
        out.insert("type".into(), json!(kind));
        out.insert("sender".into(), json!(sender));
        if let Some(content) = event.content() {
            out.insert("content".into(), content);
        }
        if kind == "m.room.member" {
            out.insert(
                "user_is_target".into(),
                json!(event.state_key().as_deref() == Some(user_id.as_str())),
            );
        }
        let state = |kind: StateEventType, key: &str, field: &str| {
            event.state_field(&self.rooms, kind, key, field)
        };
        if let Some(name) = state(StateEventType::RoomMember, &sender, "displayname") {
            out.insert("sender_display_name".into(), json!(name));
        }
        if let Some(name) = state(StateEventType::RoomName, "", "name") {
            out.insert("room_name".into(), json!(name));
        }
        if let Some(alias) = state(StateEventType::RoomCanonicalAlias, "", "alias") {
            out.insert("room_alias".into(), json!(alias));
        }
        Ok(out)
    }

    /// POSTs one notification (`fields` empty: counts only) to the pusher's gateway. Returns
    /// whether the gateway rejected the pushkey; `Err` for anything to retry.
    async fn send(
        &self,
        pusher: &Pusher,
        mut fields: Map<String, Value>,
        unread: u64,
        missed_calls: u64,
    ) -> std::result::Result<bool, String> {
        let url = pusher.url().ok_or("the pusher has no URL")?;
        let host = url
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_owned))
            .unwrap_or_default();
        let tweaks = fields.remove("tweaks").unwrap_or_else(|| json!({}));
        let mut device = json!({
            "app_id": pusher.app_id,
            "pushkey": pusher.pushkey,
            "pushkey_ts": pusher.updated_ms / 1000,
            "data": pusher.gateway_data(),
        });
        if !fields.is_empty() {
            device["tweaks"] = tweaks;
        } else {
            // A badge update alerts nobody.
            fields.insert("prio".into(), json!("low"));
        }
        fields.insert(
            "counts".into(),
            json!({"unread": unread, "missed_calls": missed_calls}),
        );
        fields.insert("devices".into(), json!([device]));
        let body = json!({ "notification": fields }).to_string().into_bytes();
        let response = self
            .outbound
            .post_json(url, body)
            .await
            .map_err(|e| format!("gateway {host}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("gateway {host} answered {}", response.status()));
        }
        let rejected = serde_json::from_slice::<Value>(response.body())
            .ok()
            .and_then(|v| v.get("rejected").cloned())
            .and_then(|r| r.as_array().cloned())
            .unwrap_or_default();
        Ok(rejected.iter().any(|k| k.as_str() == Some(&pusher.pushkey)))
    }
}

/// The tweaks of a notification's actions (`set_tweak` entries), as the gateway receives them.
fn tweaks(actions: &[Value]) -> Map<String, Value> {
    actions
        .iter()
        .filter_map(|a| {
            let name = a.get("set_tweak")?.as_str()?;
            Some((
                name.to_owned(),
                a.get("value").cloned().unwrap_or(json!(true)),
            ))
        })
        .collect()
}

fn backoff(failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
    BACKOFF_INITIAL.saturating_mul(factor).min(BACKOFF_MAX)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
