//! The outbound transaction sender: one task per destination with queued items, none for idle
//! destinations.
//!
//! A dispatcher task (started by the server) waits for the queue's wake-ups and starts a
//! delivery task for each destination that has new items and no task yet. A delivery task
//! sends one transaction at a time (the queue fixes its id and content before the first
//! attempt), deletes its items after a 200, and goes on until the queue is empty — so after a
//! destination comes back, its whole backlog follows the first success. Failures back off
//! exponentially (5 s doubling up to 1 h), persisted in the destination's record, so a restart
//! does not hammer a server that is down. A transaction from the destination itself proves it
//! is up and ends the backoff ([`Sender::destination_alive`]).
//!
//! The task leaves the active set only under its lock and only when the queue is empty, and
//! items are always committed before their wake-up: an item is never left without a task.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{
    api::federation::transactions::send_transaction_message, serde::Raw,
    MilliSecondsSinceUnixEpoch, OwnedServerName, ServerName, UInt,
};
use tokio::{sync::watch, sync::Notify, task::JoinSet};

use super::{
    client::{FedError, FederationClient},
    devices::FederatedDevices,
    queue::{InFlight, Queue},
};
use crate::service::users::now_ms;

/// First retry delay after a failure; doubles with each further failure.
const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest retry delay.
const BACKOFF_CAP: Duration = Duration::from_secs(3600);
/// Pause after a store error before the task looks again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// Delay before the next attempt after `failures` failures in a row.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_CAP)
}

enum Outcome {
    Delivered,
    /// The destination refused the content itself (400/413), or the request cannot be made:
    /// sending the same again cannot succeed, so the items are dropped.
    Refused(String),
    Failed(String),
}

pub struct Sender {
    queue: Arc<Queue>,
    client: Arc<FederationClient>,
    devices: Arc<FederatedDevices>,
    /// Destinations with a delivery task, and the handle that wakes it early.
    active: Mutex<HashMap<OwnedServerName, Arc<Notify>>>,
}

impl Sender {
    pub fn new(
        queue: Arc<Queue>,
        client: Arc<FederationClient>,
        devices: Arc<FederatedDevices>,
    ) -> Self {
        Self {
            queue,
            client,
            devices,
            active: Mutex::new(HashMap::new()),
        }
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<OwnedServerName, Arc<Notify>>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of destinations with a running delivery task.
    pub fn active_destinations(&self) -> usize {
        self.active().len()
    }

    /// The dispatcher: resumes every destination with queued items, then starts delivery
    /// tasks as items are queued, until shutdown (then waits for the tasks to stop).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tasks = JoinSet::new();
        match self.queue.destinations_with_items() {
            Ok(destinations) => self.queue.wake(destinations),
            Err(e) => log::error!("cannot read the federation queue: {e}"),
        }
        // Device-list markers left by an earlier run are announced in the first round.
        self.queue.notify.notify_one();
        loop {
            tokio::select! {
                _ = self.queue.notify.notified() => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            if self.queue.take_device_lists_flag() {
                // Queues EDUs and wakes their destinations: the next round picks them up.
                self.devices.announce_local_changes().await;
            }
            for destination in self.queue.take_dirty() {
                let mut active = self.active();
                if let Some(notify) = active.get(&destination) {
                    notify.notify_one();
                    continue;
                }
                let notify = Arc::new(Notify::new());
                active.insert(destination.clone(), notify.clone());
                tasks.spawn(self.clone().deliver(destination, notify, shutdown.clone()));
            }
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }

    /// A transaction from `destination` arrived: it is up, so a backoff ends now.
    pub async fn destination_alive(&self, destination: &ServerName) {
        match self.queue.clear_backoff(destination).await {
            Ok(true) => {
                log::info!("{destination} is reachable again: resuming delivery");
                let notify = self.active().get(destination).cloned();
                match notify {
                    Some(notify) => notify.notify_one(),
                    None => self.queue.wake([destination.to_owned()]),
                }
            }
            Ok(false) => {}
            Err(e) => log::warn!("cannot clear the backoff of {destination}: {e}"),
        }
    }

    /// Leaves the active set if nothing is queued (checked under the set's lock, so an item
    /// queued meanwhile either is seen here or finds no task and starts one).
    fn finish(&self, destination: &ServerName) -> bool {
        let mut active = self.active();
        match self.queue.queued(destination, 1) {
            Ok(0) => {
                active.remove(destination);
                true
            }
            Ok(_) => false,
            Err(e) => {
                log::warn!("cannot read the queue of {destination}: {e}");
                false
            }
        }
    }

    async fn deliver(
        self: Arc<Self>,
        destination: OwnedServerName,
        notify: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let wait = match self.queue.destination_state(&destination) {
                Ok(state) => Duration::from_millis(state.retry_at_ms.saturating_sub(now_ms())),
                Err(e) => {
                    log::warn!("cannot read the state of {destination}: {e}");
                    STORE_RETRY
                }
            };
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = notify.notified() => {}
                    _ = shutdown.wait_for(|stop| *stop) => break,
                }
                continue;
            }
            let in_flight = match self.queue.next_transaction(&destination).await {
                Ok(Some((_, in_flight))) => in_flight,
                Ok(None) => {
                    if self.finish(&destination) {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    log::warn!("cannot build a transaction for {destination}: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(STORE_RETRY) => {}
                        _ = shutdown.wait_for(|stop| *stop) => break,
                    }
                    continue;
                }
            };
            // Shutdown abandons the attempt: the transaction stays in flight and the next
            // start sends it again under the same id.
            let outcome = tokio::select! {
                outcome = self.attempt(&destination, &in_flight) => outcome,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            let result = match outcome {
                Outcome::Delivered => self.queue.transaction_done(&destination, &in_flight).await,
                Outcome::Refused(reason) => {
                    log::warn!(
                        "{destination} refused transaction {} ({} items): {reason}; dropping it",
                        in_flight.txn_id,
                        in_flight.positions.len()
                    );
                    self.queue.transaction_done(&destination, &in_flight).await
                }
                Outcome::Failed(reason) => {
                    let failures = self
                        .queue
                        .destination_state(&destination)
                        .map(|s| s.failures)
                        .unwrap_or(0)
                        + 1;
                    let delay = backoff(failures);
                    log::info!(
                        "sending transaction {} to {destination} failed ({reason}); attempt {} \
                         in {}s",
                        in_flight.txn_id,
                        failures + 1,
                        delay.as_secs()
                    );
                    let retry_at = now_ms() + delay.as_millis() as u64;
                    self.queue
                        .transaction_failed(&destination, retry_at)
                        .await
                        .map(|_| ())
                }
            };
            if let Err(e) = result {
                log::warn!("cannot record the outcome of a transaction to {destination}: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(STORE_RETRY) => {}
                    _ = shutdown.wait_for(|stop| *stop) => break,
                }
            }
        }
        self.active().remove(&destination);
    }

    async fn attempt(&self, destination: &ServerName, in_flight: &InFlight) -> Outcome {
        let (pdus, edus) = match self.queue.transaction_body(destination, in_flight) {
            Ok(body) => body,
            Err(e) => return Outcome::Failed(format!("cannot read the queued items: {e}")),
        };
        if pdus.is_empty() && edus.is_empty() {
            return Outcome::Delivered;
        }
        let ts = UInt::new(in_flight.origin_server_ts).unwrap_or_default();
        let mut request = send_transaction_message::v1::Request::new(
            in_flight.txn_id.clone().into(),
            self.queue.server_name().to_owned(),
            MilliSecondsSinceUnixEpoch(ts),
        );
        request.pdus = pdus;
        request.edus = edus.into_iter().map(Raw::from_json).collect();
        match self.client.send(destination, request).await {
            Ok(response) => {
                for (event_id, result) in response.pdus {
                    if let Err(error) = result {
                        log::info!("{destination} did not accept {event_id}: {error}");
                    }
                }
                Outcome::Delivered
            }
            Err(FedError::Remote {
                status,
                errcode,
                error,
            }) if status == http::StatusCode::BAD_REQUEST
                || status == http::StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Outcome::Refused(format!("{status} {errcode}: {error}"))
            }
            // Nothing to retry: the same items would build the same request, and there is
            // no other server to reach when the destination is this one.
            Err(e @ (FedError::Request(_) | FedError::ToSelf)) => Outcome::Refused(e.to_string()),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_five_seconds_up_to_an_hour() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(20));
        assert_eq!(backoff(10), Duration::from_secs(2560));
        assert_eq!(backoff(11), BACKOFF_CAP);
        assert_eq!(backoff(u32::MAX), BACKOFF_CAP);
    }
}
