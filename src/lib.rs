//! Hearth: a Matrix homeserver in one binary for small hosts.

pub mod config;
pub mod store;
