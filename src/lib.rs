//! Hearth: a Matrix homeserver in one binary for small hosts.
//!
//! Layers point one way: `http → api → service → store` (see docs/architecture.md).

pub mod admin;
pub mod api;
pub mod cli;
pub mod config;
pub mod error;
pub mod http;
pub mod memory;
pub mod outbound;
pub mod server;
pub mod service;
pub mod store;
