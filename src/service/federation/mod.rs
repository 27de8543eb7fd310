//! Federation services.

pub mod client;
pub mod devices;
pub mod queue;
pub mod receive;
pub mod sender;
