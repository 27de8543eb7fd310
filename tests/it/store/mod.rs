//! The store: one conformance suite run against both engines, kill -9 crash tests, and
//! power cuts under redb.

mod conformance;
mod crash;
mod power;
mod power_server;
