//! Hearth's client-side proof with matrix-rust-sdk (the library Element X runs on): a user logs
//! in with a password, syncs through `SyncService` / `RoomListService` (simplified sliding sync,
//! MSC4186), sees their rooms with names and latest events, opens a `Timeline`, receives a live
//! message, paginates back, sees and joins an invite, and two SDK users exchange encrypted
//! messages over their encryption sync.
//!
//! Usage: `hearth-sdk-client HOMESERVER_URL`. The other users' actions go over plain HTTP
//! (`http.rs`) or through a second SDK user. Prints `ok: <step>` per step and `OK` at the end;
//! exits non-zero with `FAIL: <reason>` otherwise. Every wait is bounded (`wait.rs`), and so is
//! the whole run. `RUST_LOG` turns the SDK's logs on (stderr).

// The SDK's futures nest deeply: laying out the scenarios' future needs more than the default.
#![recursion_limit = "256"]

mod http;
mod scenarios;
mod sdk;
mod wait;

use std::{process::ExitCode, time::Duration};

/// The whole run's bound (each wait inside has its own, shorter one).
const RUN: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, base] = args.as_slice() else {
        eprintln!("usage: hearth-sdk-client HOMESERVER_URL");
        return ExitCode::from(2);
    };
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    match tokio::time::timeout(RUN, scenarios::run(base)).await {
        Ok(Ok(())) => {
            println!("OK");
            ExitCode::SUCCESS
        }
        Ok(Err(error)) => {
            println!("FAIL: {error:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            println!("FAIL: the run took longer than {} s", RUN.as_secs());
            ExitCode::FAILURE
        }
    }
}
