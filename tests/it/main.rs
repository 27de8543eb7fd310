//! The one integration test binary; each area of the server adds a module.

mod account;
mod account_data;
mod cli;
mod common;
mod filter;
mod http;
mod profile;
mod push_rules;
mod reports;
mod rooms;
mod spaces;
mod store;
mod sync;
