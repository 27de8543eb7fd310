//! The one integration test binary; each area of the server adds a module.

mod account;
mod account_data;
mod aliases;
mod cli;
mod common;
mod directory;
mod ephemeral;
mod filter;
mod http;
mod media;
mod interop;
mod profile;
mod push_rules;
mod redaction;
mod relations;
mod reports;
mod rooms;
mod spaces;
mod store;
mod timestamp;
mod user_directory;
mod upgrade;
mod sync;
mod deploy;
mod crash;
