//! Federation: talking to other homeservers (spec: Server-Server API).
//!
//! - `client`: typed, X-Matrix signed requests to other servers.
//! - `auth`: verification of the X-Matrix signature of incoming requests.

pub mod auth;
pub mod client;
pub mod keyring;
