//! Push notifications (spec: "Push Notifications"): push actions evaluated once when an event
//! is persisted and the notification rows and unread counts they produce (`notifications`;
//! older layouts converted by `conversions`) and what they are about (`notified`), the
//! pushers a user registered (`pushers`), and delivery to their push gateways (`delivery`).
//! Push rules live in `push_rules.rs`.

pub mod conversions;
pub mod delivery;
pub mod notifications;
pub mod notified;
pub mod pushers;
pub mod retention;
pub(crate) mod rules_eval;
