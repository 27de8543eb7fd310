//! The outbound HTTP client (`hearth::outbound`) against real servers the tests start on
//! loopback: plain HTTP and HTTPS, the IP policy, the body cap, the timeout, no redirects.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hearth::outbound::{Outbound, OutboundError};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::common::{test_config, TestServer};

/// What a test server has seen.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    echo_hits: AtomicUsize,
}

struct Gateway {
    addr: SocketAddr,
    seen: Arc<Seen>,
}

impl Gateway {
    /// `base` (scheme and host) with the server's port and `path`.
    fn url(&self, base: &str, path: &str) -> String {
        format!("{base}:{}{path}", self.addr.port())
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// A hyper server on `listener` (over TLS when `tls` is given) with the paths the tests use:
/// `/echo` answers what it received as JSON, `/big` 64 KiB with a Content-Length,
/// `/big-chunked` 64 KiB chunked, `/redirect` a 302 to `/echo`.
fn serve(listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) -> Gateway {
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let counters = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counters.connections.fetch_add(1, SeqCst);
            let (counters, acceptor) = (counters.clone(), acceptor.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| handle(req, counters.clone()));
                let http = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(tls) = acceptor.accept(stream).await {
                            let _ = http.serve_connection(TokioIo::new(tls), service).await;
                        }
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            });
        }
    });
    Gateway { addr, seen }
}

async fn gateway() -> Gateway {
    serve(TcpListener::bind("127.0.0.1:0").await.unwrap(), None)
}

async fn handle(
    req: http::Request<Incoming>,
    seen: Arc<Seen>,
) -> Result<http::Response<Body>, Infallible> {
    let full = |b: Vec<u8>| Full::new(Bytes::from(b)).boxed();
    let response = match req.uri().path() {
        "/echo" => {
            seen.echo_hits.fetch_add(1, SeqCst);
            let header = |name: &str| {
                let value = req.headers().get(name).and_then(|v| v.to_str().ok());
                value.unwrap_or_default().to_owned()
            };
            let mut echo = json!({
                "method": req.method().as_str(),
                "target": req.uri().to_string(),
                "host": header("host"),
                "user_agent": header("user-agent"),
                "content_type": header("content-type"),
            });
            let body = req.into_body().collect().await.unwrap().to_bytes();
            echo["body"] = String::from_utf8_lossy(&body).into();
            http::Response::new(full(echo.to_string().into_bytes()))
        }
        "/big" => http::Response::new(full(vec![b'x'; 64 * 1024])),
        "/big-chunked" => {
            let frames = (0..64).map(|_| Ok(Frame::data(Bytes::from(vec![b'y'; 1024]))));
            http::Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        }
        "/redirect" => http::Response::builder()
            .status(302)
            .header("location", "/echo")
            .body(full(Vec::new()))
            .unwrap(),
        _ => http::Response::builder()
            .status(404)
            .body(full(Vec::new()))
            .unwrap(),
    };
    Ok(response)
}

/// A client with the test configuration's `[outbound]` (loopback allowed).
fn loopback_client(extra_ca: Option<&Path>) -> Outbound {
    let mut config = test_config(Path::new("unused")).outbound;
    config.extra_ca_file = extra_ca.map(Path::to_path_buf);
    Outbound::new(&config).unwrap()
}

async fn get(
    client: &Outbound,
    url: &str,
    max_body: usize,
) -> Result<http::Response<Bytes>, OutboundError> {
    let req = http::Request::get(url).body(Vec::new()).unwrap();
    client.request(req, Duration::from_secs(10), max_body).await
}

#[tokio::test]
async fn post_json_round_trips_over_plain_http_when_loopback_is_allowed() {
    let gw = gateway().await;
    // The client the server builds from its configuration.
    let srv = TestServer::start().await;
    let client = &srv.server.as_ref().unwrap().services.outbound;
    let port = gw.addr.port();
    let body = br#"{"notification":{"event_id":"$x"}}"#.to_vec();
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("http://{host}:{port}/echo?secret=s3cr3t");
        let response = client.post_json(&url, body.clone()).await.unwrap();
        assert_eq!(response.status(), 200, "{host}");
        let echo: Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(
            echo,
            json!({
                "method": "POST",
                "target": "/echo?secret=s3cr3t",
                "host": format!("{host}:{port}"),
                "user_agent": concat!("Hearth/", env!("CARGO_PKG_VERSION")),
                "content_type": "application/json",
                "body": String::from_utf8(body.clone()).unwrap(),
            }),
            "{host}"
        );
    }
    assert_eq!(gw.seen.echo_hits.load(SeqCst), 2);
    // IPv6 loopback, where the machine has it.
    match TcpListener::bind("[::1]:0").await {
        Ok(listener) => {
            let gw6 = serve(listener, None);
            let url = format!("http://[::1]:{}/echo", gw6.addr.port());
            let response = client.post_json(&url, b"{}".to_vec()).await.unwrap();
            let echo: Value = serde_json::from_slice(response.body()).unwrap();
            assert_eq!(echo["host"], format!("[::1]:{}", gw6.addr.port()));
        }
        Err(e) => eprintln!("no IPv6 loopback here ({e}); [::1] round trip not tested"),
    }
    srv.server.unwrap().stop().await;
}

#[tokio::test]
async fn default_policy_refuses_loopback_by_address_and_by_name() {
    let gw = gateway().await;
    let port = gw.addr.port();
    let client = Outbound::new(&Default::default()).unwrap();
    for host in [
        "127.0.0.1",
        "localhost",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "127.0.0.2",
    ] {
        let url = format!("http://{host}:{port}/echo");
        let err = client.post_json(&url, b"{}".to_vec()).await.unwrap_err();
        assert!(matches!(err, OutboundError::Refused), "{host}: {err:?}");
        let url = format!("https://{host}:{port}/echo");
        let err = get(&client, &url, 1024).await.unwrap_err();
        assert!(matches!(err, OutboundError::Refused), "{host}: {err:?}");
    }
    // Nothing reached the server, which does count connections that do.
    assert_eq!(gw.seen.connections.load(SeqCst), 0);
    let response = get(
        &loopback_client(None),
        &gw.url("http://127.0.0.1", "/echo"),
        4096,
    )
    .await;
    assert_eq!(response.unwrap().status(), 200);
    assert_eq!(gw.seen.connections.load(SeqCst), 1);
}

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn ca() -> Ca {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hearth outbound test CA");
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A rustls server config with a certificate for `localhost` signed by `ca`.
fn tls_server(ca: &Ca) -> Arc<rustls::ServerConfig> {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key.into())
        .unwrap();
    Arc::new(config)
}

#[tokio::test]
async fn https_is_trusted_through_the_extra_ca_file_only() {
    let ca = ca();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = serve(listener, Some(tls_server(&ca)));
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();

    let trusting = loopback_client(Some(&ca_file));
    let url = gw.url("https://localhost", "/echo?k=v");
    let response = trusting
        .post_json(&url, b"{\"a\":1}".to_vec())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(
        (echo["target"].as_str(), echo["body"].as_str()),
        (Some("/echo?k=v"), Some("{\"a\":1}"))
    );

    // The certificate names `localhost`, not the address: the name is checked.
    let err = get(&trusting, &gw.url("https://127.0.0.1", "/echo"), 4096)
        .await
        .unwrap_err();
    assert!(matches!(err, OutboundError::Tls), "{err:?}");
    // Without the extra CA, only the public roots: the test CA is unknown.
    let err = get(&loopback_client(None), &url, 4096).await.unwrap_err();
    assert!(matches!(err, OutboundError::Tls), "{err:?}");
    assert_eq!(gw.seen.echo_hits.load(SeqCst), 1);
}

#[tokio::test]
async fn an_unusable_extra_ca_file_is_a_clear_start_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-ca.pem");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "no certificate here\n").unwrap();
    for path in [&missing, &not_pem] {
        let mut config = test_config(dir.path()).outbound;
        config.extra_ca_file = Some(path.clone());
        let err = Outbound::new(&config).expect_err("refused");
        let msg = err.to_string();
        assert!(
            matches!(err, OutboundError::Setup(_)) && msg.contains("extra_ca_file"),
            "{msg}"
        );
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }
    // The server refuses to start with it, naming the setting.
    let mut config = test_config(dir.path());
    config.outbound.extra_ca_file = Some(missing);
    let err = hearth::server::start(config)
        .await
        .err()
        .expect("start refused");
    assert!(err.to_string().contains("outbound.extra_ca_file"), "{err}");
}

#[tokio::test]
async fn a_body_over_the_cap_is_too_large() {
    let gw = gateway().await;
    let client = loopback_client(None);
    for path in ["/big", "/big-chunked"] {
        let url = gw.url("http://127.0.0.1", path);
        let err = get(&client, &url, 1024).await.unwrap_err();
        assert!(matches!(err, OutboundError::TooLarge), "{path}: {err:?}");
        // Exactly at the cap is fine.
        let response = get(&client, &url, 64 * 1024).await.unwrap();
        assert_eq!(response.body().len(), 64 * 1024, "{path}");
    }
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_within_the_bound() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts connections and holds them open without reading or answering.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let client = loopback_client(None);
    let req = http::Request::post(format!("http://127.0.0.1:{port}/notify"))
        .body(b"{}".to_vec())
        .unwrap();
    let started = Instant::now();
    let err = client
        .request(req, Duration::from_millis(400), 1024)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, OutboundError::Timeout), "{err:?}");
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    holder.abort();
}

#[tokio::test]
async fn a_redirect_is_returned_not_followed() {
    let gw = gateway().await;
    let client = loopback_client(None);
    let response = get(&client, &gw.url("http://127.0.0.1", "/redirect"), 1024)
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["location"], "/echo");
    assert_eq!(gw.seen.echo_hits.load(SeqCst), 0);
}

#[tokio::test]
async fn urls_that_are_not_absolute_http_are_invalid() {
    let client = loopback_client(None);
    for url in [
        "/relative",
        "ftp://127.0.0.1/",
        "http://user:pw@127.0.0.1:9/",
        "http://127.0.0.1:0/",
    ] {
        let err = client.post_json(url, Vec::new()).await.unwrap_err();
        assert!(matches!(err, OutboundError::InvalidUrl), "{url}: {err:?}");
        assert!(!err.to_string().contains("pw"), "{err}");
    }
}
