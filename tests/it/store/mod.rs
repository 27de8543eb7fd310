//! The store: one conformance suite run against both engines, and kill -9 crash tests.

mod conformance;
mod crash;
