//! Interoperability with a real end-to-end-encryption client library: matrix-nio, whose crypto
//! is vodozemac. `.ci/run` installs it in a virtualenv and names its Python in
//! `NIO_INTEROP_PYTHON`. A plain `cargo test` lists the test as ignored; `.ci/run` runs it
//! (`--include-ignored`), and then the variable is required.

use std::process::Command;

use crate::common::TestServer;

#[tokio::test]
#[ignore = "needs matrix-nio: a Python in NIO_INTEROP_PYTHON; .ci/run runs it"]
async fn nio_clients_exchange_encrypted_messages() {
    let python = std::env::var("NIO_INTEROP_PYTHON")
        .expect("NIO_INTEROP_PYTHON must name a Python with matrix-nio[e2e] (.ci/run sets one up)");
    let srv = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/nio_e2ee.py");
    let base = srv.base.clone();
    let work_path = work.path().to_path_buf();
    // The script drives the server over HTTP; run it off the async runtime the server uses.
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(base)
            .arg(work_path)
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("\nOK"),
        "nio interop failed:\n{stdout}\n{stderr}"
    );
}
