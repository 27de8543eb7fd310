//! Federation transactions both ways: the durable outbound queue (delivery, backoff and
//! catch-up, restart with the same transaction id) and inbound `/send` (idempotency, EDUs and
//! their origin check), with to-device messages and device lists as the EDUs that show it.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use serde_json::value::RawValue;

use hearth::service::federation::receive::{self, Transaction};

use crate::common::TestServer;

/// The body of a transaction's EDU.
fn edu(edu_type: &str, content: Value) -> Box<RawValue> {
    RawValue::from_string(json!({"edu_type": edu_type, "content": content}).to_string()).unwrap()
}

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Figure: inbound handling of transactions of 100 EDUs, in process (no HTTP, no X-Matrix:
/// the router's share is measured elsewhere). `cargo test --release --test it
/// fed_transactions::figure_inbound -- --ignored --nocapture`
#[tokio::test]
#[ignore]
async fn figure_inbound_100_edus() {
    let srv = TestServer::start().await;
    let (bob, _, _) = srv.register("bob", "pw-bob-123456").await;
    let services = srv.server.as_ref().unwrap().services.clone();
    let origin = ruma::ServerName::parse("remote.example").unwrap();
    for (label, kind) in [("to-device", "m.direct_to_device"), ("unknown type", "x.custom")] {
        let rounds = 20;
        let start = Instant::now();
        for round in 0..rounds {
            let edus: Vec<_> = (0..100)
                .map(|i| {
                    edu(
                        kind,
                        json!({
                            "sender": "@alice:remote.example",
                            "type": "m.figure",
                            "message_id": format!("{round}-{i}"),
                            "messages": { &bob: { "*": { "n": i } } },
                        }),
                    )
                })
                .collect();
            receive::receive(
                &services,
                Transaction {
                    origin: &origin,
                    txn_id: &format!("{label}-{round}"),
                    body_origin: &origin,
                    pdus: &[],
                    edus: &edus,
                },
            )
            .await
            .unwrap();
        }
        let per_txn = start.elapsed() / rounds;
        println!(
            "inbound transaction of 100 {label} EDUs: {:?} per transaction, {:?} per EDU",
            per_txn,
            per_txn / 100
        );
    }
}

/// Figure: memory of the outbound queue per destination: none for an idle destination (no
/// task, no entry), and what a destination with queued items that is backing off costs.
/// `cargo test --release --test it fed_transactions::figure_queue_memory -- --ignored
/// --nocapture`
#[tokio::test]
#[ignore]
async fn figure_queue_memory() {
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw-alice-123456").await;
    let services = srv.server.as_ref().unwrap().services.clone();
    let destinations = 1000;
    let before = rss_kb();
    let messages: serde_json::Map<String, Value> = (0..destinations)
        .map(|i| (format!("@u:d{i}.invalid"), json!({ "*": { "n": i } })))
        .collect();
    let (status, body) = srv
        .put(
            "/_matrix/client/v3/sendToDevice/m.figure/t1",
            Some(&token),
            json!({ "messages": messages }),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let deadline = Instant::now() + Duration::from_secs(120);
    // Every destination fails once and backs off, its task sleeping.
    loop {
        let failed = (0..destinations)
            .filter(|i| {
                let name = ruma::ServerName::parse(format!("d{i}.invalid")).unwrap();
                services
                    .fed_queue
                    .destination_state(&name)
                    .is_ok_and(|s| s.failures > 0)
            })
            .count();
        if failed == destinations || Instant::now() > deadline {
            println!("{failed} of {destinations} destinations backing off");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = rss_kb();
    println!(
        "{} delivery tasks; RSS {} KiB -> {} KiB: about {} bytes per backing-off destination \
         (an idle destination has no task and no entry: 0 bytes)",
        services.fed_sender.active_destinations(),
        before,
        after,
        after.saturating_sub(before) * 1024 / destinations as u64
    );
}
