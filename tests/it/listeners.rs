//! Listener limits over raw TCP: header-read, idle and body-read timeouts, the connection
//! cap, and shutdown waking long-polls with a bounded drain.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::TestServer;

async fn connect(srv: &TestServer) -> TcpStream {
    let addr = srv.server.as_ref().unwrap().addrs[0];
    TcpStream::connect(addr).await.unwrap()
}

/// Reads until the server closes the connection (or resets it); returns what it sent and how
/// long that took. Panics after `limit`.
async fn read_until_closed(tcp: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "connection still open after {limit:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

const VERSIONS: &[u8] = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test]
async fn slow_loris_headers_are_cut_off() {
    let srv = TestServer::start_with(|c| c.limits.read_timeout_secs = 1).await;
    let mut tcp = connect(&srv).await;
    tcp.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Drip one header line every 300 ms, never finishing the head.
    let drip = async {
        for i in 0..30 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if tcp
                .write_all(format!("X-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(4), drip).await;
    let mut buf = [0u8; 1024];
    let closed = matches!(
        tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    ) || tcp.write_all(b"X-last: y\r\n\r\n").await.is_err();
    assert!(closed, "a client dripping headers keeps its connection");
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let srv = TestServer::start_with(|c| c.limits.read_timeout_secs = 1).await;
    let mut tcp = connect(&srv).await;
    tcp.write_all(VERSIONS).await.unwrap();
    let (got, waited) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
}

/// An HTTP/2 connection (prior knowledge, as on the plain listener) that answers the server's
/// pings but sends no request is idle too, and closed.
#[tokio::test]
async fn idle_http2_connection_is_closed() {
    let srv = TestServer::start_with(|c| c.limits.read_timeout_secs = 1).await;
    let mut tcp = connect(&srv).await;
    // Client preface and an empty SETTINGS frame.
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let started = Instant::now();
    let mut goaway = false;
    loop {
        let mut head = [0u8; 9];
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut head)).await;
        let Ok(read) = read else {
            panic!("HTTP/2 connection still open after {:?}", started.elapsed());
        };
        if read.is_err() {
            break; // closed
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).await.unwrap();
        match (kind, flags & 1) {
            // SETTINGS: acknowledge.
            (4, 0) => tcp.write_all(b"\0\0\0\x04\x01\0\0\0\0").await.unwrap(),
            // PING: answer like a live client.
            (6, 0) => {
                let mut ack = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                ack.extend_from_slice(&payload);
                if tcp.write_all(&ack).await.is_err() {
                    break;
                }
            }
            (7, _) => goaway = true,
            _ => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "HTTP/2 connection still open after 5 s"
        );
    }
    assert!(goaway, "closed without GOAWAY");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn stalled_body_is_cut_off() {
    let srv = TestServer::start_with(|c| c.limits.read_timeout_secs = 1).await;
    let (_, token, _) = srv.register("alice", "password").await;
    let mut tcp = connect(&srv).await;
    let head = format!(
        "POST /_matrix/client/v3/createRoom HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \
         {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let (got, waited) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(waited >= Duration::from_millis(900), "cut after {waited:?}");
}

#[tokio::test]
async fn connection_cap_holds() {
    let srv = TestServer::start_with(|c| c.limits.max_connections = 2).await;
    let mut first = connect(&srv).await;
    let _second = connect(&srv).await;
    // Both are accepted and idle; a third connects (the kernel completes the handshake) but
    // is not served while both slots are taken.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = connect(&srv).await;
    third.write_all(VERSIONS).await.unwrap();
    let mut buf = [0u8; 4096];
    let early = tokio::time::timeout(Duration::from_millis(700), third.read(&mut buf)).await;
    assert!(early.is_err(), "served beyond the cap: {early:?}");
    // A slot in use still serves.
    first.write_all(VERSIONS).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buf))
        .await
        .expect("a connection within the cap is served")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Closing one lets the waiting client in.
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("the waiting client is served once a slot frees")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

/// The real binary: SIGTERM while a /sync long-polls with a 30 s timeout. The poll answers
/// 200 at once with its current result, and the process exits 0 well before the drain
/// deadline (10 s) and systemd's stop timeout (30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_wakes_a_30s_long_poll_and_exits_promptly() {
    use serde_json::{json, Value};
    use std::process::Command;

    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = crate::common::spawn_binary(dir.path()).await;
    let http = reqwest::Client::new();
    let register = |body: Value| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let r: Value = http
                .post(format!("{base}/_matrix/client/v3/register"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r
        }
    };
    let challenge = register(json!({"username": "dora", "password": "pw"})).await;
    let session = challenge["session"].as_str().unwrap().to_owned();
    let done = register(json!({"username": "dora", "password": "pw",
        "auth": {"type": "m.login.dummy", "session": session}}))
    .await;
    let token = done["access_token"].as_str().unwrap().to_owned();
    let first: Value = http
        .get(format!("{base}/_matrix/client/v3/sync"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let poll = {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        tokio::spawn(async move {
            let r = http
                .get(format!(
                    "{base}/_matrix/client/v3/sync?timeout=30000&since={since}"
                ))
                .bearer_auth(&token)
                .send()
                .await
                .expect("the long poll is answered");
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            (status, body, Instant::now())
        })
    };
    // Let the poll settle into its wait.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!poll.is_finished(), "the long poll returned before SIGTERM");
    let signalled = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let (status, body, answered) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the long poll is answered within 10 s of SIGTERM")
        .unwrap();
    let answered_after = answered - signalled;
    assert_eq!(status, 200, "{body}");
    assert!(body["next_batch"].is_string(), "{body}");
    assert!(
        answered_after < Duration::from_secs(2),
        "the long poll answered {answered_after:?} after SIGTERM"
    );
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if signalled.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("still running 10 s after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let exited_after = signalled.elapsed();
    assert_eq!(exit.code(), Some(0), "exit status after SIGTERM");
    assert!(
        exited_after < Duration::from_secs(5),
        "exited {exited_after:?} after SIGTERM"
    );
    eprintln!("long poll answered {answered_after:?}, exit {exited_after:?} after SIGTERM");
}

/// Sends unauthenticated requests (charged to the client IP's bucket) with the given
/// forwarding header and returns how many were answered before the first 429.
async fn answered_before_limit(srv: &TestServer, header: &str, values: &[String]) -> usize {
    for (i, value) in values.iter().enumerate() {
        let response = srv
            .http
            .get(format!("{}/_matrix/client/versions", srv.base))
            .header(header, value)
            .send()
            .await
            .unwrap();
        if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return i;
        }
    }
    values.len()
}

fn limited(c: &mut hearth::config::Config) {
    c.rate_limit.enabled = true;
    c.rate_limit.per_ip_burst = 2;
    c.rate_limit.per_ip_per_second = 0.01;
}

#[tokio::test]
async fn forwarded_for_is_honoured_only_from_trusted_proxies() {
    let distinct: Vec<String> = (1..=6).map(|i| format!("198.51.100.{i}")).collect();

    // No trusted proxies: a client cannot pick its own bucket by spoofing the headers.
    let srv = TestServer::start_with(limited).await;
    assert_eq!(
        answered_before_limit(&srv, "x-forwarded-for", &distinct).await,
        2
    );
    let srv = TestServer::start_with(limited).await;
    let forwarded: Vec<String> = distinct.iter().map(|ip| format!("for={ip}")).collect();
    assert_eq!(
        answered_before_limit(&srv, "forwarded", &forwarded).await,
        2
    );
    // Trusting another network is not trusting this peer.
    let srv = TestServer::start_with(|c| {
        limited(c);
        c.trusted_proxies = vec!["10.0.0.0/8".into()];
    })
    .await;
    assert_eq!(
        answered_before_limit(&srv, "x-forwarded-for", &distinct).await,
        2
    );

    // The peer (127.0.0.1) is a trusted proxy: each forwarded client has its own bucket.
    let trusted = |c: &mut hearth::config::Config| {
        limited(c);
        c.trusted_proxies = vec!["127.0.0.1/32".into(), "::1".into()];
    };
    let srv = TestServer::start_with(trusted).await;
    assert_eq!(
        answered_before_limit(&srv, "x-forwarded-for", &distinct).await,
        6
    );
    let srv = TestServer::start_with(trusted).await;
    assert_eq!(
        answered_before_limit(&srv, "forwarded", &forwarded).await,
        6
    );
    // ...and the client is the right-most untrusted hop: what it wrote itself to the left
    // does not change its bucket.
    let srv = TestServer::start_with(trusted).await;
    let spoofed: Vec<String> = distinct
        .iter()
        .map(|ip| format!("{ip}, 203.0.113.5, 127.0.0.1"))
        .collect();
    assert_eq!(
        answered_before_limit(&srv, "x-forwarded-for", &spoofed).await,
        2
    );
}

/// Behind the documented nginx or Caddy setup, the proxy writes `X-Forwarded-For` and passes a
/// client's own `Forwarded` header on untouched: that header must not let the client pick its
/// rate-limit bucket.
#[tokio::test]
async fn client_forwarded_header_does_not_override_the_proxy_header() {
    let srv = TestServer::start_with(|c| {
        limited(c);
        c.trusted_proxies = vec!["127.0.0.1/32".into(), "::1".into()];
    })
    .await;
    let mut answered = 0;
    for i in 1..=6 {
        let response = srv
            .http
            .get(format!("{}/_matrix/client/versions", srv.base))
            // What the proxy saw and wrote...
            .header("x-forwarded-for", "203.0.113.5")
            // ...and what the client made up.
            .header("forwarded", format!("for=198.51.100.{i}"))
            .send()
            .await
            .unwrap();
        if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        answered += 1;
    }
    assert_eq!(
        answered, 2,
        "a client-chosen Forwarded header picked the bucket"
    );
}

/// An IPv6 host can send from any address of its /64: every address there shares one bucket,
/// or each request would come with a fresh one.
#[tokio::test]
async fn ipv6_clients_share_a_bucket_per_64() {
    let srv = TestServer::start_with(|c| {
        limited(c);
        c.trusted_proxies = vec!["127.0.0.1/32".into(), "::1".into()];
    })
    .await;
    let same_64: Vec<String> = (1..=6).map(|i| format!("2001:db8:0:7::{i:x}")).collect();
    assert_eq!(
        answered_before_limit(&srv, "x-forwarded-for", &same_64).await,
        2
    );
    // Another /64 is another client.
    assert_eq!(
        answered_before_limit(&srv, "x-forwarded-for", &["2001:db8:0:8::1".to_owned()]).await,
        1
    );
}

/// The real binary: SIGTERM while `hearth backup` streams from the admin socket and its reader
/// has stalled. The server must still exit well within systemd's stop timeout (30 s): the
/// stalled backup fails, the acknowledged data is durable anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_promptly_while_a_backup_reader_stalls() {
    use serde_json::{json, Value};
    use std::io::Write as _;
    use std::process::Command;

    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = crate::common::spawn_binary(dir.path()).await;
    let base = format!("{base}/_matrix/client/v3");
    let http = reqwest::Client::new();
    let done: Value = http
        .post(format!("{base}/register"))
        .json(&json!({"username": "bea", "password": "pw", "auth": {"type": "m.login.dummy"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = done["access_token"]
        .as_str()
        .expect("registered")
        .to_owned();
    // Far more than a socket buffer holds, so the export blocks on the stalled reader.
    let filler = json!({ "x": "a".repeat(60_000) });
    for i in 0..40 {
        let status = http
            .put(format!(
                "{base}/user/@bea:localhost/account_data/t.fill.{i}"
            ))
            .bearer_auth(&token)
            .json(&filler)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
    let mut admin =
        std::os::unix::net::UnixStream::connect(dir.path().join("admin/admin.sock")).unwrap();
    admin.write_all(b"backup\n").unwrap();
    // Never read: the server's writes fill the socket and block.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let signalled = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if signalled.elapsed() > Duration::from_secs(25) {
            let _ = child.kill();
            panic!("still running 25 s after SIGTERM, with a backup reader stalled");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(admin);
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
    assert!(exit.code().is_some(), "ended by a signal: {exit:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "exited {:?} after SIGTERM",
        signalled.elapsed()
    );
}

/// The cap is shared by all listeners: a slot goes to a connection that arrived, on whichever
/// listener, and is never parked on a listener nobody connects to.
#[tokio::test]
async fn connection_cap_serves_every_listener() {
    let srv = TestServer::start_with(|c| {
        c.limits.max_connections = 1;
        c.listeners.push(hearth::config::Listener {
            bind: "127.0.0.2:0".parse().unwrap(),
        });
    })
    .await;
    let addrs = srv.server.as_ref().unwrap().addrs.clone();
    assert_eq!(addrs.len(), 2);
    // Each listener in turn, with the other one idle.
    for addr in addrs.iter().rev().chain(addrs.iter()) {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(VERSIONS).await.unwrap();
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("the client of {addr} was never served"))
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
}
