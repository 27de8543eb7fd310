//! End-to-end encryption between a Hearth user and a Synapse user, with real matrix-nio
//! clients (vodozemac crypto): `tests/interop/synapse/nio_e2ee.py`, run with the Python in
//! `NIO_INTEROP_PYTHON` (as `tests/it/interop.rs` is), against this test's Hearth and the
//! shared Synapse.

use std::process::Command;

use super::{unique, Pair};

#[tokio::test]
#[ignore = "needs Synapse and matrix-nio: SYNAPSE_PYTHON and NIO_INTEROP_PYTHON; .ci/run runs it"]
async fn encrypted_messages_decrypt_across_the_servers() {
    let python = std::env::var("NIO_INTEROP_PYTHON")
        .expect("NIO_INTEROP_PYTHON must name a Python with matrix-nio[e2e] (.ci/run sets one up)");
    let p = Pair::start().await;
    let work = tempfile::tempdir().unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/synapse/nio_e2ee.py"
    );
    let args = [
        p.hearth.base.clone(),
        p.hearth.name.clone(),
        p.syn.server.base.clone(),
        p.syn.name.clone(),
        work.path().display().to_string(),
        unique(""),
    ];
    // The script drives both servers over HTTP; run it off the async runtime Hearth uses.
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(args)
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    p.ensure(
        output.status.success() && stdout.contains("\nOK"),
        format!("nio across Hearth and Synapse failed:\n{stdout}\n{stderr}"),
    );
}
