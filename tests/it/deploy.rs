//! Deployment: online backup of a running server, restore, `check --data`, graceful SIGTERM.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hearth::cli::backup::SOCKET_NAME;
use serde_json::json;

use crate::common::{enc, TestServer};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

fn hearth(data_dir: &Path, engine: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .env_clear()
        .env("HEARTH_DATA_DIR", data_dir)
        .env("HEARTH_STORAGE__ENGINE", engine)
        .env("HEARTH_LOG_LEVEL", "warn")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("hearth runs")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn backup_restore(engine: &str) {
    let kind = engine.parse().unwrap();
    let srv = TestServer::start_with(|c| c.storage.engine = kind).await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let (_, room) = srv
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&token),
            json!({"name": "family"}),
        )
        .await;
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    let mut sent = Vec::new();
    for i in 0..20 {
        let (status, body) = srv
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/t{i}",
                    enc(&room_id)
                ),
                Some(&token),
                json!({"msgtype": "m.text", "body": format!("message {i}")}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        sent.push(body["event_id"].as_str().unwrap().to_owned());
    }
    // A file beside the store (as media is) travels with the backup.
    std::fs::create_dir_all(srv.config.data_dir.join("media/ab")).unwrap();
    std::fs::write(srv.config.data_dir.join("media/ab/cdef"), b"picture").unwrap();
    // An upload in progress is not part of a backup.
    std::fs::create_dir_all(srv.config.data_dir.join("media/tmp")).unwrap();
    std::fs::write(srv.config.data_dir.join("media/tmp/partial"), b"half").unwrap();

    // Writes go on while the backup runs; the backup holds what was committed at its start.
    let backup_dir = tempfile::tempdir().unwrap();
    let dest = backup_dir.path().join("b");
    let (data_dir, dest2) = (srv.config.data_dir.clone(), dest.clone());
    let engine2 = engine.to_owned();
    let backup = tokio::task::spawn_blocking(move || {
        hearth(&data_dir, &engine2, &["backup", dest2.to_str().unwrap()])
    });
    for i in 20..25 {
        let (status, _) = srv
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/t{i}",
                    enc(&room_id)
                ),
                Some(&token),
                json!({"msgtype": "m.text", "body": "during"}),
            )
            .await;
        assert_eq!(status, 200);
    }
    let out = backup.await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("from the running server"), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rows"),
        "progress: {}",
        text(&out)
    );
    assert!(dest.join("hearth-backup.txt").exists());
    // The running server's admin socket is where the test looks, and is not copied.
    assert!(srv.config.data_dir.join(SOCKET_NAME).exists());
    assert!(!dest.join(SOCKET_NAME).exists());
    assert!(!dest.join("media/tmp/partial").exists());
    assert_eq!(
        std::fs::read(dest.join("media/ab/cdef")).unwrap(),
        b"picture"
    );

    // A second backup into a non-empty directory is refused.
    let out = hearth(
        &srv.config.data_dir,
        engine,
        &["backup", dest.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("not empty"), "{}", text(&out));

    // check --data verifies the backup.
    let out = hearth(
        &srv.config.data_dir,
        engine,
        &["check", "--data", dest.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("all readable"), "{}", text(&out));

    // Restore refuses a non-empty data directory, then restores into an empty one.
    let out = hearth(
        &srv.config.data_dir,
        engine,
        &["restore", dest.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let restored = tempfile::tempdir().unwrap();
    let target = restored.path().join("data");
    let out = hearth(&target, engine, &["restore", dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(target.join("media/ab/cdef")).unwrap(),
        b"picture"
    );

    // A server on the restored directory has the account, the room and the messages.
    let mut config = srv.config.clone();
    config.data_dir = target.clone();
    let restored_srv = hearth::server::start(config).await.expect("starts");
    let http = reqwest::Client::new();
    let base = restored_srv.base_url();
    let login: serde_json::Value = http
        .post(format!("{base}/_matrix/client/v3/login"))
        .json(&json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token2 = login["access_token"]
        .as_str()
        .expect("login works")
        .to_owned();
    for event_id in &sent {
        let r = http
            .get(format!(
                "{base}/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room_id),
                enc(event_id)
            ))
            .bearer_auth(&token2)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{event_id} restored");
    }
    restored_srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_of_running_server_and_restore_redb() {
    backup_restore("redb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_of_running_server_and_restore_sled() {
    backup_restore("sled").await;
}

#[test]
fn backup_of_stopped_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // `check --data` on a directory without a database says so.
    std::fs::create_dir_all(&data).unwrap();
    let out = hearth(&data, "redb", &["check", "--data", data.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("holds no database"), "{}", text(&out));
    // A user created offline, then an offline backup.
    let out = Command::new(BIN)
        .env_clear()
        .env("HEARTH_DATA_DIR", &data)
        .env("HEARTH_BCRYPT_COST", "4")
        .env("HEARTH_PASSWORD", "pw")
        .args(["user", "create", "bob"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let dest = dir.path().join("backup");
    let out = hearth(&data, "redb", &["backup", dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("server stopped"), "{}", text(&out));
    let out = hearth(&data, "redb", &["check", "--data", dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("users"), "{}", text(&out));
}

/// SIGTERM: the listener stops accepting, a request in flight (a long-polling sync) still gets
/// its answer, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = crate::common::spawn_binary(dir.path()).await;
    let http = reqwest::Client::new();
    let srv_register = |name: &'static str| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let r: serde_json::Value = http
                .post(format!("{base}/_matrix/client/v3/register"))
                .json(
                    &json!({"username": name, "password": "pw", "auth": {"type": "m.login.dummy"}}),
                )
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["access_token"].as_str().unwrap_or_default().to_owned()
        }
    };
    let mut token = srv_register("carol").await;
    if token.is_empty() {
        // Registration wants the UIAA session first.
        let r: serde_json::Value = http
            .post(format!("{base}/_matrix/client/v3/register"))
            .json(&json!({"username": "carol2", "password": "pw"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = r["session"].as_str().unwrap();
        let r: serde_json::Value = http
            .post(format!("{base}/_matrix/client/v3/register"))
            .json(&json!({"username": "carol2", "password": "pw", "auth": {"type": "m.login.dummy", "session": session}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        token = r["access_token"].as_str().unwrap().to_owned();
    }
    // A long poll in flight: 3 s of waiting for events.
    let in_flight = {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        tokio::spawn(async move {
            let first: serde_json::Value = http
                .get(format!("{base}/_matrix/client/v3/sync"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let since = first["next_batch"].as_str().unwrap().to_owned();
            let started = Instant::now();
            let r = http
                .get(format!(
                    "{base}/_matrix/client/v3/sync?timeout=3000&since={since}"
                ))
                .bearer_auth(&token)
                .send()
                .await
                .expect("in-flight request answered");
            (r.status(), started.elapsed())
        })
    };
    // SIGHUP (`systemctl reload`) with nothing to reload leaves the server running.
    assert!(Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP ended the server"
    );
    assert!(
        dir.path().join(SOCKET_NAME).exists(),
        "the running server's admin socket"
    );
    let killed_at = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    // New connections are refused soon after the signal.
    let mut refused = false;
    while killed_at.elapsed() < Duration::from_secs(2) {
        if tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
            .await
            .is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the listener still accepts after SIGTERM");
    let (status, waited) = in_flight.await.unwrap();
    assert_eq!(status, 200, "the in-flight long poll completes");
    // Shutdown wakes it: it answers before its 3 s timeout (listeners.rs tests a 30 s one).
    assert!(waited < Duration::from_millis(2900), "waited {waited:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(exit.code(), Some(0), "exit status after SIGTERM");
    assert!(!dir.path().join(SOCKET_NAME).exists(), "socket removed");
}
