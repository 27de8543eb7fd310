//! The one integration test binary; each area of the server adds a module.

mod account;
mod cli;
mod common;
mod http;
mod store;
