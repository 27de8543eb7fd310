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
