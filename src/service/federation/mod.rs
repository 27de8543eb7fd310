//! Federation services: talking to other Matrix servers.

pub mod keyring;
