//! Federation: talking to other homeservers (spec: Server-Server API).
//!
//! - `client`: typed, X-Matrix signed requests to other servers.
//! - `acl`: server ACLs of rooms, for every inbound request about a room.
//! - `auth`: verification of the X-Matrix signature of incoming requests.
//! - `pdus`: checks and storage of received PDUs.

pub mod acl;
pub mod auth;
pub mod client;
pub mod keyring;
pub mod pdus;
