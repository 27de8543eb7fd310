//! Federation: talking to other homeservers (spec: Server-Server API).
//!
//! - `client`: typed, X-Matrix signed requests to other servers.
//! - `acl`: server ACLs of rooms, for every inbound request about a room.
//! - `auth`: verification of the X-Matrix signature of incoming requests.
//! - `queries`: queries to other servers for clients (profiles, aliases, keys, directories),
//!   bounded per request and per destination; `answers`: what this server answers to them.
//! - `queue`, `sender`: the durable outbound transaction queue and its delivery tasks.
//! - `receive`: inbound transactions and their EDUs.
//! - `devices`: device lists over federation (announcements, the remote cache).
//! - `pdus`: checks and storage of received PDUs.
//! - `fetch`: fetching events this server lacks (missing prev and auth events, state, backfill).
//! - `invite`: invites across servers, both ways; `remote_membership`: rejecting remote
//!   invites and knocking through resident servers (`make_leave`/`send_leave`,
//!   `make_knock`/`send_knock` as the leaving or knocking server).
//! - `membership`: make/send join, leave and knock, as the resident and as the joining server.
//! - `spaces`: space hierarchies of rooms on other servers (federation `/hierarchy`).

pub mod acl;
pub mod answers;
pub mod auth;
pub mod client;
pub mod devices;
pub mod fetch;
pub mod invite;
pub mod keyring;
pub mod membership;
pub mod pdus;
pub mod queries;
pub mod queue;
pub mod receive;
pub mod remote_membership;
pub mod sender;
pub mod spaces;
