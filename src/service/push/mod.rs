//! Push notifications: push actions evaluated when an event is persisted, the per-user
//! notification rows and unread counts they produce.

pub mod notifications;
