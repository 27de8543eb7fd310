//! The server-server API's services.

pub mod pdus;
