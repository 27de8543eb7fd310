//! The `hearth` binary as a new user and an admin run it: no config, then admin commands.

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `hearth` with no config file in `dir`; only the listener is moved off 8008 so tests can
/// run in parallel with anything else on the machine.
fn spawn_server(dir: &Path, port: u16) -> Child {
    Command::new(BIN)
        .current_dir(dir)
        .env_clear()
        .env("HEARTH_LISTENERS", format!("127.0.0.1:{port}"))
        .env("HEARTH_BCRYPT_COST", "4")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hearth starts")
}

async fn wait_until_up(base: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if reqwest::get(format!("{base}/_matrix/client/versions"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("hearth exited early: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("hearth did not come up within 20 s");
}

fn stop(mut child: Child) -> String {
    // SIGTERM: a graceful stop, as systemd does it.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut log = String::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            log.push_str(&line);
            log.push('\n');
        }
    }
    log
}

async fn post(base: &str, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (
        response.status(),
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn fresh_machine_register_login_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_server(dir.path(), port);
    wait_until_up(&base, &mut child).await;

    let (status, challenge) = post(
        &base,
        "/_matrix/client/v3/register",
        None,
        json!({"username": "new", "password": "first-pw"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let auth = json!({"type": "m.login.dummy", "session": challenge["session"]});
    let (status, reg) = post(
        &base,
        "/_matrix/client/v3/register",
        None,
        json!({"username": "new", "password": "first-pw", "auth": auth}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reg}");
    let login = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "new"}, "password": "first-pw"});
    let (status, body) = post(&base, "/_matrix/client/v3/login", None, login.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let token = body["access_token"].as_str().unwrap().to_owned();
    let who: Value = reqwest::Client::new()
        .get(format!("{base}/_matrix/client/v3/account/whoami"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(who["user_id"], "@new:localhost");
    let log = stop(child);
    // One line per request with status and duration, never the token.
    assert!(log.contains("POST /_matrix/client/v3/login 200"), "{log}");
    assert!(
        !log.contains(&token),
        "the access token leaked into the log"
    );
    assert!(
        dir.path().join("data").is_dir(),
        "data directory in the current folder"
    );

    let mut child = spawn_server(dir.path(), port);
    wait_until_up(&base, &mut child).await;
    let (status, _) = post(&base, "/_matrix/client/v3/login", None, login).await;
    assert_eq!(status, StatusCode::OK, "account persisted across restart");
    stop(child);
}

fn hearth(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(BIN)
        .current_dir(dir)
        .env_clear()
        .env("HEARTH_BCRYPT_COST", "4")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn admin_commands_manage_users_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ok, out, err) = hearth(d, &["user", "create", "alice", "--password", "pw1"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("@alice:localhost"));
    let (ok, _, err) = hearth(d, &["user", "create", "alice", "--password", "pw1"]);
    assert!(!ok && err.contains("taken"), "{err}");
    let (ok, _, err) = hearth(
        d,
        &["user", "create", "@bob:elsewhere.org", "--password", "x"],
    );
    assert!(!ok && err.contains("not a user of this server"), "{err}");

    let (ok, out, _) = hearth(
        d,
        &["token", "create", "--uses", "2", "--expires-in-hours", "24"],
    );
    assert!(ok);
    let token = out.trim().to_owned();
    assert!(!token.is_empty());
    let (ok, out, _) = hearth(d, &["token", "list"]);
    assert!(
        ok && out.contains(&token) && out.contains("used 0/2") && out.contains("valid"),
        "{out}"
    );

    let (_, out, _) = hearth(d, &["user", "list"]);
    assert!(out.contains("@alice:localhost\tactive"), "{out}");
    let (ok, _, err) = hearth(d, &["user", "reset-password", "alice", "--password", "pw2"]);
    assert!(ok, "{err}");
    let (ok, _, _) = hearth(d, &["user", "deactivate", "alice"]);
    assert!(ok);
    let (_, out, _) = hearth(d, &["user", "list"]);
    assert!(out.contains("@alice:localhost\tdeactivated"), "{out}");
    let (ok, _, _) = hearth(d, &["token", "revoke", &token]);
    assert!(ok);
    let (ok, _, err) = hearth(d, &["token", "revoke", &token]);
    assert!(!ok && err.contains("no such token"), "{err}");

    // The server sees what the CLI did: reset password works, deactivated account cannot log in.
    let (ok, _, _) = hearth(d, &["user", "create", "carol", "--password", "c1"]);
    assert!(ok);
    let (ok, _, _) = hearth(d, &["user", "reset-password", "carol", "--password", "c2"]);
    assert!(ok);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_server(d, port);
    wait_until_up(&base, &mut child).await;
    let login = |user: &str, pw: &str| json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": pw});
    assert_eq!(
        post(
            &base,
            "/_matrix/client/v3/login",
            None,
            login("carol", "c1")
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(
            &base,
            "/_matrix/client/v3/login",
            None,
            login("carol", "c2")
        )
        .await
        .0,
        StatusCode::OK
    );
    let (status, body) = post(
        &base,
        "/_matrix/client/v3/login",
        None,
        login("alice", "pw2"),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::FORBIDDEN, Some("M_USER_DEACTIVATED"))
    );
    // While the server runs, admin commands refuse clearly instead of corrupting anything.
    let (ok, _, err) = hearth(d, &["user", "list"]);
    assert!(!ok && err.contains("is the server running?"), "{err}");
    stop(child);
}

#[test]
fn init_writes_a_valid_config_and_bad_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = hearth(dir.path(), &["init"]);
    assert!(ok, "{err}");
    let written = std::fs::read_to_string(dir.path().join("hearth.toml")).unwrap();
    assert!(written.contains("server_name"));
    let (ok, _, err) = hearth(dir.path(), &["init"]);
    assert!(!ok && err.contains("--force"), "{err}");

    std::fs::write(dir.path().join("bad.toml"), "[storage]\ncache_mb = 0\n").unwrap();
    let (ok, _, err) = hearth(dir.path(), &["--config", "bad.toml", "user", "list"]);
    assert!(!ok && err.contains("cache_mb"), "{err}");
}

#[test]
fn admin_commands_refuse_empty_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ok, _, err) = hearth(d, &["user", "create", "erin", "--password", ""]);
    assert!(!ok && err.contains("must not be empty"), "{err}");
    let (ok, _, err) = hearth(d, &["user", "create", "erin", "--password", "pw"]);
    assert!(ok, "{err}");
    let (ok, _, err) = hearth(d, &["user", "reset-password", "erin", "--password", ""]);
    assert!(!ok && err.contains("must not be empty"), "{err}");
}

/// Every path under `root` with its kind, mode and content hash, in order.
fn tree_digest(root: &Path) -> Vec<(String, u32, String)> {
    use sha2::Digest;
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let content = if meta.is_file() {
                let digest = sha2::Sha256::digest(std::fs::read(&path).unwrap());
                digest.iter().map(|b| format!("{b:02x}")).collect()
            } else {
                String::new()
            };
            if meta.is_dir() {
                stack.push(path);
            }
            out.push((rel, meta.permissions().mode(), content));
        }
    }
    out.sort();
    out
}

#[test]
fn backup_directory_and_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ok, _, err) = hearth(d, &["user", "create", "pam", "--password", "pw"]);
    assert!(ok, "{err}");
    // Media files as an upload leaves them, readable by others in the source.
    let media = d.join("data/media/ab/cd");
    std::fs::create_dir_all(&media).unwrap();
    std::fs::write(media.join("abcd0123"), b"picture").unwrap();
    std::fs::set_permissions(
        media.join("abcd0123"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (ok, out, err) = hearth(d, &["backup", "copy/of/data"]);
    assert!(ok, "{out}{err}");
    let dest = d.join("copy/of/data");
    assert_eq!(
        std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let entries = tree_digest(&dest);
    assert!(
        entries.iter().any(|(p, _, _)| p.ends_with("abcd0123")),
        "{entries:?}"
    );
    assert!(
        entries.iter().any(|(p, _, _)| p.starts_with("db")),
        "{entries:?}"
    );
    for (path, mode, content) in entries {
        let expected = if content.is_empty() { 0o700 } else { 0o600 };
        assert_eq!(mode & 0o777, expected, "{path}: {:o}", mode & 0o777);
    }
}

#[test]
fn check_data_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ok, _, err) = hearth(d, &["user", "create", "quin", "--password", "pw"]);
    assert!(ok, "{err}");
    let data = d.join("data");
    // No signing key yet, and a leftover upload in media/tmp: a server start would create
    // the one and delete the other; a check must do neither.
    std::fs::remove_dir_all(data.join("keys")).unwrap();
    std::fs::create_dir_all(data.join("media/tmp")).unwrap();
    std::fs::write(data.join("media/tmp/upload-1"), b"partial").unwrap();
    let before = tree_digest(&data);
    let (ok, out, err) = hearth(d, &["check", "--data", "data"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("all readable"), "{out}");
    assert!(out.contains("users"), "{out}");
    assert!(out.contains("no signing key yet"), "{out}");
    assert_eq!(
        tree_digest(&data),
        before,
        "the check changed the data directory"
    );
}

#[test]
fn closed_output_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in ["rob", "sue"] {
        let (ok, _, err) = hearth(d, &["user", "create", name, "--password", "pw"]);
        assert!(ok, "{err}");
    }
    for args in [&["user", "list"][..], &["check", "--data", "data"][..]] {
        let mut child = Command::new(BIN)
            .current_dir(d)
            .env_clear()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before anything is written (like `| head -0`).
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{args:?}: {:?} {stderr}",
            output.status
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.trim().is_empty(), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn admin_flag_is_set_by_the_cli_and_honoured_by_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ok, out, err) = hearth(
        d,
        &["user", "create", "root", "--password", "pw", "--admin"],
    );
    assert!(ok && out.contains("server admin"), "{out}{err}");
    let (ok, _, err) = hearth(d, &["user", "create", "dave", "--password", "pw"]);
    assert!(ok, "{err}");
    let (_, out, _) = hearth(d, &["user", "list"]);
    assert!(out.contains("@root:localhost\tactive\tadmin\n"), "{out}");
    assert!(out.contains("@dave:localhost\tactive\n"), "{out}");
    let (ok, out, err) = hearth(d, &["user", "admin", "dave", "on"]);
    assert!(ok && out.contains("is a server admin"), "{out}{err}");
    let (_, out, _) = hearth(d, &["user", "list"]);
    assert!(out.contains("@dave:localhost\tactive\tadmin\n"), "{out}");
    let (ok, _, err) = hearth(d, &["user", "admin", "dave", "off"]);
    assert!(ok, "{err}");
    let (_, out, _) = hearth(d, &["user", "list"]);
    assert!(out.contains("@dave:localhost\tactive\n"), "{out}");
    let (ok, _, err) = hearth(d, &["user", "admin", "nobody", "on"]);
    assert!(!ok && err.contains("Unknown user"), "{err}");
    let (ok, _, _) = hearth(d, &["user", "admin", "dave", "maybe"]);
    assert!(!ok);

    // The server takes the flag from the store: root may lock dave, dave may not lock root.
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_server(d, port);
    wait_until_up(&base, &mut child).await;
    let mut tokens = Vec::new();
    for user in ["root", "dave"] {
        let login = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": "pw"});
        let (status, body) = post(&base, "/_matrix/client/v3/login", None, login).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        tokens.push(body["access_token"].as_str().unwrap().to_owned());
    }
    let client = reqwest::Client::new();
    let lock = |who: &str, token: &str| {
        client
            .put(format!(
                "{base}/_matrix/client/v1/admin/lock/%40{who}%3Alocalhost"
            ))
            .bearer_auth(token)
            .json(&json!({"locked": false}))
            .send()
    };
    assert_eq!(
        lock("dave", &tokens[0]).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        lock("root", &tokens[1]).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    stop(child);
}
