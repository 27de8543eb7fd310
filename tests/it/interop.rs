//! Interoperability with a real end-to-end-encryption client library: matrix-nio, whose crypto
//! is vodozemac. `.ci/run` installs it in a virtualenv and names its Python in
//! `NIO_INTEROP_PYTHON`; without that variable the test says it is skipped.

use std::process::Command;

use crate::common::TestServer;

#[tokio::test]
async fn nio_clients_exchange_encrypted_messages() {
    let Ok(python) = std::env::var("NIO_INTEROP_PYTHON") else {
        // CI must run it; a developer without the virtualenv is told it was skipped.
        assert!(
            std::env::var_os("CI").is_none(),
            "NIO_INTEROP_PYTHON must be set in CI (.ci/run sets it)"
        );
        eprintln!("skipped: NIO_INTEROP_PYTHON is not set (.ci/run sets it)");
        return;
    };
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
