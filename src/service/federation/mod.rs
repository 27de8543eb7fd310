//! Federation: talking to other homeservers (spec: Server-Server API).
//!
//! - `client`: typed, X-Matrix signed requests to other servers.
//! - `acl`: server ACLs of rooms, for every inbound request about a room.
//! - `auth`: verification of the X-Matrix signature of incoming requests.
//! - `queries`: queries to other servers for clients (profiles, aliases, keys, directories),
//!   bounded per request and per destination; `answers`: what this server answers to them.

pub mod acl;
pub mod answers;
pub mod auth;
pub mod client;
pub mod keyring;
pub mod queries;
