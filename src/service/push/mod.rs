//! Push notifications (spec: "Push Notifications"): the pushers a user registered, i.e. where
//! the server sends notifications for them. Push rules live in `push_rules.rs`.

pub mod pushers;
