//! Wakes long-polling `/sync` requests. Each user with a waiting request has a `Notify`; a
//! write that concerns users (an event in their room, their account data...) notifies exactly
//! them after it commits, so a waiting sync returns at once and idle users cost nothing.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, Weak,
    },
};

use ruma::{OwnedUserId, UserId};
use tokio::sync::Notify;

#[derive(Default)]
pub struct Notifier {
    /// user → the `Notify` their waiting syncs listen on. Weak: an entry lives only while some
    /// sync holds it. The lock guards only the map.
    users: Mutex<HashMap<OwnedUserId, Weak<Notify>>>,
    /// Set once at shutdown: long-polls answer at once instead of waiting.
    closing: AtomicBool,
}

impl Notifier {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OwnedUserId, Weak<Notify>>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The handle a sync for `user_id` waits on. Call `notified()` on it *before* reading the
    /// streams, so a write that lands in between still wakes the wait.
    pub fn subscribe(&self, user_id: &UserId) -> Arc<Notify> {
        let mut users = self.lock();
        if let Some(notify) = users.get(user_id).and_then(Weak::upgrade) {
            return notify;
        }
        if users.len() > 256 {
            users.retain(|_, weak| weak.strong_count() > 0);
        }
        let notify = Arc::new(Notify::new());
        users.insert(user_id.to_owned(), Arc::downgrade(&notify));
        notify
    }

    /// Shutdown has begun: wakes every waiting sync, and [`Notifier::is_closing`] tells new
    /// ones not to wait. A sync that subscribed before this call is woken; one that checks
    /// `is_closing` after it sees `true`, so none sleeps through shutdown.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        for notify in self.lock().values().filter_map(Weak::upgrade) {
            notify.notify_waiters();
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Wakes every waiting sync of these users.
    pub fn notify<'a>(&self, users: impl IntoIterator<Item = &'a UserId>) {
        let users_map = self.lock();
        for user in users {
            if let Some(notify) = users_map.get(user).and_then(Weak::upgrade) {
                notify.notify_waiters();
            }
        }
    }
}
