//! Element X's client library against Hearth: the matrix-rust-sdk test client
//! (`tests/sdk_client/`, its own Cargo project built into `target/sdk-client`) logs in, syncs
//! with simplified sliding sync through `SyncService` / `RoomListService`, uses a `Timeline`,
//! joins an invite and exchanges encrypted messages with a second SDK user. `.ci/run` builds
//! it and names the binary in `SDK_CLIENT_BIN`. A plain `cargo test` lists the test as ignored;
//! `.ci/run` runs it (`--include-ignored`), and then the variable is required.

use std::process::Command;

use crate::common::TestServer;

#[tokio::test]
#[ignore = "needs the matrix-sdk test client: a binary in SDK_CLIENT_BIN; .ci/run builds it"]
async fn matrix_sdk_client_syncs_with_sliding_sync() {
    let binary = std::env::var("SDK_CLIENT_BIN")
        .expect("SDK_CLIENT_BIN must name the built tests/sdk_client binary (.ci/run builds it)");
    let srv = TestServer::start().await;
    let base = srv.base.clone();
    // The client drives the server over HTTP; run it off the async runtime the server uses.
    let output = tokio::task::spawn_blocking(move || {
        Command::new(binary)
            .arg(base)
            .output()
            .expect("the SDK client runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success() && stdout.ends_with("\nOK\n"),
        "matrix-sdk client failed:\n{stdout}\n{stderr}"
    );
}
