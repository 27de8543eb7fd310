//! Command-line tools beyond serving: backup, restore, check. `main.rs` parses the arguments
//! and calls into these modules.

pub mod backup;
pub mod check;
pub mod media;
pub mod progress;
