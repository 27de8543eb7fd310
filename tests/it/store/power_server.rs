//! A power cut under the whole server: the real server runs on the fault-injecting redb disk
//! of `store::power` (its `Store::open` is redirected there), messages are sent concurrently
//! over HTTP, the power goes at a seeded I/O operation while they are in flight, and a new
//! server started on what the medium kept must serve every message that was answered 200
//! before the cut.

use std::sync::Arc;

use hearth::store::{set_opener, CommitSync, Store};
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::power::{Disk, Rng, Torn, CACHE};
use crate::common::{create_room, enc, TestServer};

const SENDERS: u64 = 4;
const MESSAGES: u64 = 6;

fn put_opener(config: &hearth::config::Config, disk: &Disk, sync: CommitSync) {
    let disk = disk.clone();
    set_opener(
        &config.data_dir.join("db"),
        Some(Arc::new(move || {
            Store::open_redb_with_backend(disk.clone(), CACHE, sync)
        })),
    );
}

struct Outcome {
    /// Mutating I/O operations while the messages were sent (all of them, when not cut).
    operations: u64,
    acknowledged: usize,
    /// Acknowledged messages that the server started after the cut does not serve.
    lost: Vec<String>,
}

/// Registers, creates a room, arms the cut (`cut_within`: at a seeded operation within that
/// many; `None`: after the last message), sends the messages, cuts, restarts on the medium.
async fn server_power_cut(seed: u64, sync: CommitSync, cut_within: Option<u64>) -> Outcome {
    let mut rng = Rng(seed);
    let torn = match seed % 3 {
        0 => Torn::Nothing,
        1 => Torn::Everything,
        _ => Torn::Random,
    };
    let disk = Disk::new(Vec::new(), torn, rng.next());
    let opener_disk = disk.clone();
    let mut srv = TestServer::start_with(move |c| put_opener(c, &opener_disk, sync)).await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let room = create_room(&srv, &token, json!({})).await;

    let before = disk.ops();
    if let Some(within) = cut_within {
        disk.arm(1 + rng.below(within));
    }
    let mut tasks = Vec::new();
    for sender in 0..SENDERS {
        let (http, base, token, room, disk) = (
            srv.http.clone(),
            srv.base.clone(),
            token.clone(),
            room.clone(),
            disk.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..MESSAGES {
                let body = format!("message {sender}/{n}");
                let response = http
                    .put(format!(
                        "{base}/_matrix/client/v3/rooms/{}/send/m.room.message/s{sender}n{n}",
                        enc(&room)
                    ))
                    .bearer_auth(&token)
                    .json(&json!({ "msgtype": "m.text", "body": body }))
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                if status != StatusCode::OK {
                    assert!(disk.is_cut(), "send failed with the power on: {status}");
                    break;
                }
                let event: Value = response.json().await.unwrap();
                // Answered 200 while the power was still on: acknowledged before the cut.
                if disk.is_cut() {
                    break;
                }
                acked.push((event["event_id"].as_str().unwrap().to_owned(), body));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let operations = disk.ops() - before;
    let image = disk.cut_now();
    srv.server.take().unwrap().stop().await;

    let survivor = Disk::new(image, Torn::Nothing, 0);
    put_opener(&srv.config, &survivor, sync);
    let server = hearth::server::start(srv.config.clone())
        .await
        .expect("the server starts on what the medium kept");
    srv.base = server.base_url();
    srv.server = Some(server);

    let mut lost = Vec::new();
    for (event_id, body) in &acked {
        let (status, event) = srv
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/event/{}",
                    enc(&room),
                    enc(event_id)
                ),
                Some(&token),
            )
            .await;
        if status != StatusCode::OK || event["content"]["body"] != *body.as_str() {
            lost.push(format!("{event_id} ({body}): {status} {event}"));
        }
    }
    if lost.is_empty() {
        // Whole events only: every message the timeline lists is readable, and the server
        // takes new writes on the repaired database.
        let (status, page) = srv
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
                    enc(&room)
                ),
                Some(&token),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "seed {seed}: {page}");
        let listed: Vec<&Value> = page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.message")
            .collect();
        assert!(listed.len() >= acked.len(), "seed {seed}: {page}");
        for event in listed {
            let id = event["event_id"].as_str().unwrap();
            let (status, fetched) = srv
                .get(
                    &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(id)),
                    Some(&token),
                )
                .await;
            assert_eq!(
                status,
                StatusCode::OK,
                "seed {seed}: listed {id}: {fetched}"
            );
            assert_eq!(fetched["content"], event["content"], "seed {seed}: {id}");
        }
        let (status, sent) = srv
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/after",
                    enc(&room)
                ),
                Some(&token),
                json!({ "msgtype": "m.text", "body": "after the cut" }),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "seed {seed}: write after the cut: {sent}"
        );
    }
    srv.server.take().unwrap().stop().await;
    set_opener(&srv.config.data_dir.join("db"), None);
    Outcome {
        operations,
        acknowledged: acked.len(),
        lost,
    }
}

#[tokio::test]
async fn acknowledged_messages_survive_a_power_cut_of_the_server() {
    // The first run is not cut before its end; it measures how much I/O the sends take.
    let first = server_power_cut(0, CommitSync::Durable, None).await;
    assert_eq!(first.lost, Vec::<String>::new(), "seed 0");
    assert_eq!(first.acknowledged as u64, SENDERS * MESSAGES);
    let mut acknowledged = first.acknowledged;
    for seed in 1..6 {
        let outcome = server_power_cut(seed, CommitSync::Durable, Some(first.operations)).await;
        assert_eq!(
            outcome.lost,
            Vec::<String>::new(),
            "seed {seed}: acknowledged messages lost at the power cut"
        );
        acknowledged += outcome.acknowledged;
    }
    eprintln!(
        "server power cuts: 6 runs, {} I/O operations per run, {acknowledged} acknowledged \
         messages checked",
        first.operations
    );
}

/// The test above fails if the store's commit does not fsync.
#[tokio::test]
async fn a_missing_store_fsync_loses_an_acknowledged_message() {
    let outcome = server_power_cut(0, CommitSync::SkipFsync, None).await;
    assert_eq!(outcome.acknowledged as u64, SENDERS * MESSAGES);
    assert!(
        !outcome.lost.is_empty(),
        "without the fsync every acknowledged message survived: the test cannot see it"
    );
}
