//! Command-line tools beyond serving: backup, restore, check. `main.rs` parses the arguments
//! and calls into these modules.

pub mod backup;
pub mod check;
pub mod media;
pub mod progress;

use std::io::Write as _;

/// What a command returns when its standard output was closed early (`hearth user list |
/// head`): `main` then ends quietly, as Unix tools do, instead of panicking in `println!`.
pub const OUTPUT_CLOSED: &str = "standard output closed";

/// Writes one line to standard output; a closed pipe is [`OUTPUT_CLOSED`].
pub fn write_line(args: std::fmt::Arguments<'_>) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(OUTPUT_CLOSED.to_owned()),
        Err(e) => Err(format!("cannot write to standard output: {e}")),
    }
}

/// `println!` for CLI commands: evaluates to `Result<(), String>` (see [`write_line`]).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_line(format_args!($($arg)*))
    };
}
