//! Server discovery and the federation transport (`Outbound::federation_request`) against
//! real TLS servers and a small DNS server, all on loopback: which address is reached, which
//! certificate name is checked, what SNI and `Host` the server sees, the well-known cache and
//! its redirects and limits, SRV records, and the IP policy.
//!
//! The ports 443 and 8448 and the system's DNS are replaced through `TestHooks`; names live
//! under `.test`, answered by [`FakeDns`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hearth::outbound::{Outbound, OutboundError, TestHooks};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use ruma::ServerName;
use serde_json::{json, Value};
use tokio::net::{TcpListener, UdpSocket};

/// A CA generated for one test, written as PEM to `pem`.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    pub pem: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "hearth discovery test CA");
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, cert.pem()).unwrap();
        TestCa {
            cert,
            key,
            pem,
            _dir: dir,
        }
    }

    /// A certificate for `names` (DNS names or IP addresses) and its key, as PEM.
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A rustls server config with a certificate for `names`.
    pub fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let (cert, key) = self.leaf(names);
        let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        Arc::new(config)
    }
}

/// One request a [`TlsServer`] answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub sni: Option<String>,
    pub host: String,
    pub path: String,
}

/// The answer a [`TlsServer`] gives to a path: status, headers, body.
pub type Answer = (u16, Vec<(&'static str, String)>, Vec<u8>);
type Handler = Arc<dyn Fn(&str) -> Answer + Send + Sync>;

/// An HTTPS server on loopback that records the SNI, `Host` and path of every request.
pub struct TlsServer {
    pub addr: SocketAddr,
    pub hits: Arc<Mutex<Vec<Hit>>>,
}

impl TlsServer {
    pub async fn start(
        config: Arc<rustls::ServerConfig>,
        handler: impl Fn(&str) -> Answer + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let recorded = hits.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, handler, hits) =
                    (acceptor.clone(), handler.clone(), recorded.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().map(str::to_owned);
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let host = req
                                .headers()
                                .get("host")
                                .and_then(|h| h.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let path = req.uri().path().to_owned();
                            hits.lock().unwrap().push(Hit {
                                sni: sni.clone(),
                                host,
                                path: path.clone(),
                            });
                            let (status, headers, body) = handler(&path);
                            let mut response = http::Response::builder().status(status);
                            for (name, value) in headers {
                                response = response.header(name, value);
                            }
                            let response = response.body(Full::new(Bytes::from(body))).unwrap();
                            async move { Ok::<_, Infallible>(response) }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsServer { addr, hits }
    }

    /// A server that answers every path with `{"ok": true}`, as a federation API would.
    pub async fn federation(ca: &TestCa, names: &[&str]) -> Self {
        TlsServer::start(ca.server_config(names), |_| {
            (
                200,
                vec![("content-type", "application/json".into())],
                br#"{"ok":true}"#.to_vec(),
            )
        })
        .await
    }

    /// A server answering `/.well-known/matrix/server` with `body` and `Cache-Control`.
    pub async fn well_known(ca: &TestCa, names: &[&str], body: Value, cache_control: &str) -> Self {
        let (body, cc) = (body.to_string().into_bytes(), cache_control.to_owned());
        TlsServer::start(ca.server_config(names), move |path| match path {
            "/.well-known/matrix/server" => {
                (200, vec![("cache-control", cc.clone())], body.clone())
            }
            _ => (404, Vec::new(), Vec::new()),
        })
        .await
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// A DNS server on loopback UDP answering from a table: SRV records and A records for names
/// under `.test`; any other name does not exist (NXDOMAIN), a known name without the asked
/// type has no data.
pub struct FakeDns {
    pub addr: SocketAddr,
}

#[derive(Default, Clone)]
pub struct Zone {
    /// name (lowercase, no trailing dot) → (priority, weight, port, target)
    pub srv: HashMap<String, Vec<(u16, u16, u16, String)>>,
    /// name → IPv4 address
    pub a: HashMap<String, [u8; 4]>,
}

impl Zone {
    pub fn srv(mut self, name: &str, records: &[(u16, u16, u16, &str)]) -> Self {
        let records = records
            .iter()
            .map(|&(p, w, port, t)| (p, w, port, t.to_owned()));
        self.srv.insert(name.into(), records.collect());
        self
    }

    pub fn a(mut self, names: &[&str]) -> Self {
        for name in names {
            self.a.insert(name.to_string(), [127, 0, 0, 1]);
        }
        self
    }
}

impl FakeDns {
    pub async fn start(zone: Zone) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((len, peer)) = socket.recv_from(&mut buf).await {
                if let Some(reply) = answer(&zone, &buf[..len]) {
                    let _ = socket.send_to(&reply, peer).await;
                }
            }
        });
        FakeDns { addr }
    }
}

fn encode_name(name: &str, out: &mut Vec<u8>) {
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// The reply to one query (only the first question is answered).
fn answer(zone: &Zone, query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
    let question_end = pos + 4;
    let name = labels.join(".");
    let mut records: Vec<(u16, Vec<u8>)> = Vec::new();
    match qtype {
        33 => {
            for (priority, weight, port, target) in zone.srv.get(&name).into_iter().flatten() {
                let mut rdata = Vec::new();
                rdata.extend_from_slice(&priority.to_be_bytes());
                rdata.extend_from_slice(&weight.to_be_bytes());
                rdata.extend_from_slice(&port.to_be_bytes());
                encode_name(target, &mut rdata);
                records.push((33, rdata));
            }
        }
        1 => {
            if let Some(ip) = zone.a.get(&name) {
                records.push((1, ip.to_vec()));
            }
        }
        _ => {}
    }
    let exists = zone.srv.contains_key(&name) || zone.a.contains_key(&name);
    let rcode = if exists { 0 } else { 3 };
    let mut reply = Vec::with_capacity(512);
    reply.extend_from_slice(&query[..2]);
    // QR, AA, RD copied, RA; the rcode.
    reply.push(0x84 | (query[2] & 0x01));
    reply.push(0x80 | rcode);
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&(records.len() as u16).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(query.get(12..question_end)?);
    for (rtype, rdata) in records {
        reply.extend_from_slice(&[0xc0, 0x0c]);
        reply.extend_from_slice(&rtype.to_be_bytes());
        reply.extend_from_slice(&1u16.to_be_bytes());
        reply.extend_from_slice(&300u32.to_be_bytes());
        reply.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        reply.extend_from_slice(&rdata);
    }
    Some(reply)
}

/// A client that may reach loopback, trusts `ca`, and uses the given hooks.
pub fn client(ca: &Path, hooks: TestHooks) -> Outbound {
    let config = hearth::config::Outbound {
        allow_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
        extra_ca_file: Some(ca.to_path_buf()),
    };
    Outbound::with_hooks(&config, hooks).unwrap()
}

async fn fed_get(client: &Outbound, destination: &str) -> Result<Value, OutboundError> {
    let req = http::Request::get("/_matrix/federation/v1/version")
        .body(Vec::new())
        .unwrap();
    let name = ServerName::parse(destination).unwrap();
    let response = client
        .federation_request(&name, req, Duration::from_secs(20), 4096)
        .await?;
    assert_eq!(response.status(), 200);
    Ok(serde_json::from_slice(response.body()).unwrap())
}

fn hit(sni: Option<&str>, host: &str) -> Hit {
    Hit {
        sni: sni.map(str::to_owned),
        host: host.to_owned(),
        path: "/_matrix/federation/v1/version".into(),
    }
}

#[tokio::test]
async fn ip_literals_get_no_sni_and_need_a_certificate_for_the_ip() {
    let ca = TestCa::new();
    let fed = TlsServer::federation(&ca, &["127.0.0.1"]).await;
    let c = client(&ca.pem, TestHooks::default());
    let dest = format!("127.0.0.1:{}", fed.port());
    assert_eq!(fed_get(&c, &dest).await.unwrap(), json!({"ok": true}));
    assert_eq!(fed.hits(), vec![hit(None, &dest)]);
    // Without a port: 8448 (here the hook's port).
    let c = client(
        &ca.pem,
        TestHooks {
            default_port: Some(fed.port()),
            ..Default::default()
        },
    );
    fed_get(&c, "127.0.0.1").await.unwrap();
    assert_eq!(fed.hits()[1], hit(None, "127.0.0.1"));
    // A certificate only for a name is not valid for the IP.
    let named = TlsServer::federation(&ca, &["localhost"]).await;
    let dest = format!("127.0.0.1:{}", named.port());
    assert_eq!(fed_get(&c, &dest).await, Err(OutboundError::Tls));
    assert!(named.hits().is_empty());
}

#[tokio::test]
async fn an_explicit_port_skips_well_known_and_checks_the_host_name() {
    let ca = TestCa::new();
    let dns = FakeDns::start(Zone::default().a(&["fed.test"])).await;
    let wk = TlsServer::well_known(
        &ca,
        &["fed.test"],
        json!({"m.server": "elsewhere.test:1"}),
        "",
    )
    .await;
    let fed = TlsServer::federation(&ca, &["fed.test"]).await;
    let c = client(
        &ca.pem,
        TestHooks {
            well_known_port: Some(wk.port()),
            name_servers: vec![dns.addr],
            ..Default::default()
        },
    );
    let dest = format!("fed.test:{}", fed.port());
    fed_get(&c, &dest).await.unwrap();
    assert_eq!(fed.hits(), vec![hit(Some("fed.test"), &dest)]);
    assert!(wk.hits().is_empty(), "no well-known for an explicit port");
    // The certificate must be for the name, not just any name the CA signed.
    let other = TlsServer::federation(&ca, &["other.test"]).await;
    let dest = format!("fed.test:{}", other.port());
    assert_eq!(fed_get(&c, &dest).await, Err(OutboundError::Tls));
}

#[tokio::test]
async fn well_known_delegation_is_followed_and_cached() {
    let ca = TestCa::new();
    let dns = FakeDns::start(Zone::default().a(&["example.test", "matrix.test"])).await;
    let fed = TlsServer::federation(&ca, &["matrix.test"]).await;
    let delegated = format!("matrix.test:{}", fed.port());
    let wk = TlsServer::well_known(
        &ca,
        &["example.test"],
        json!({"m.server": delegated}),
        "public, max-age=3600",
    )
    .await;
    let c = client(
        &ca.pem,
        TestHooks {
            well_known_port: Some(wk.port()),
            name_servers: vec![dns.addr],
            ..Default::default()
        },
    );
    let route = c.discover("example.test").await.unwrap();
    assert_eq!(route.host_header, delegated);
    for _ in 0..3 {
        fed_get(&c, "example.test").await.unwrap();
    }
    // SNI and certificate: the delegated name; Host: the delegated name with its port.
    assert_eq!(fed.hits(), vec![hit(Some("matrix.test"), &delegated); 3]);
    // One well-known fetch for four discoveries, with SNI for the server name.
    let wk_hits = wk.hits();
    assert_eq!(wk_hits.len(), 1, "{wk_hits:?}");
    assert_eq!(wk_hits[0].sni.as_deref(), Some("example.test"));
    assert_eq!(wk_hits[0].path, "/.well-known/matrix/server");
    assert_eq!(c.cached_well_known(), 1);

    // Delegation to an IP literal: no SNI, a certificate for the IP, Host = the IP and port.
    let fed_ip = TlsServer::federation(&ca, &["127.0.0.1"]).await;
    let delegated = format!("127.0.0.1:{}", fed_ip.port());
    let wk =
        TlsServer::well_known(&ca, &["example.test"], json!({"m.server": delegated}), "").await;
    let c = client(
        &ca.pem,
        TestHooks {
            well_known_port: Some(wk.port()),
            name_servers: vec![dns.addr],
            ..Default::default()
        },
    );
    fed_get(&c, "example.test").await.unwrap();
    assert_eq!(fed_ip.hits(), vec![hit(None, &delegated)]);
}

#[tokio::test]
async fn srv_records_of_the_delegated_name_or_the_server_name_are_used() {
    let ca = TestCa::new();
    let fed = TlsServer::federation(&ca, &["deleg.test", "srv.test", "old.test"]).await;
    let port = fed.port();
    let dns = FakeDns::start(
        Zone::default()
            .a(&["example.test", "srv.test", "old.test", "target.test"])
            // The first target refuses connections (port 1): the next one is tried.
            .srv(
                "_matrix-fed._tcp.deleg.test",
                &[(10, 0, 1, "target.test."), (20, 0, port, "target.test.")],
            )
            .srv("_matrix-fed._tcp.srv.test", &[(0, 5, port, "target.test.")])
            .srv("_matrix._tcp.old.test", &[(0, 0, port, "target.test.")]),
    )
    .await;
    let wk = TlsServer::start(
        ca.server_config(&["example.test", "srv.test", "old.test"]),
        |path| match path {
            "/.well-known/matrix/server" => {
                (200, Vec::new(), br#"{"m.server":"deleg.test"}"#.to_vec())
            }
            _ => (404, Vec::new(), Vec::new()),
        },
    )
    .await;
    let c = client(
        &ca.pem,
        TestHooks {
            well_known_port: Some(wk.port()),
            name_servers: vec![dns.addr],
            ..Default::default()
        },
    );
    // Delegated to a name without port: SRV of the delegated name; its name for TLS and Host.
    let route = c.discover("example.test").await.unwrap();
    assert_eq!(route.srv.as_deref(), Some("_matrix-fed._tcp.deleg.test."));
    fed_get(&c, "example.test").await.unwrap();
    assert_eq!(fed.hits(), vec![hit(Some("deleg.test"), "deleg.test")]);

    // No delegation (the well-known answers 404): SRV of the server name itself.
    let no_wk = TlsServer::start(
        ca.server_config(&["srv.test", "old.test", "plain.test"]),
        |_| (404, Vec::new(), Vec::new()),
    )
    .await;
    let c = client(
        &ca.pem,
        TestHooks {
            well_known_port: Some(no_wk.port()),
            default_port: Some(port),
            name_servers: vec![dns.addr],
            ..Default::default()
        },
    );
    fed_get(&c, "srv.test").await.unwrap();
    // The deprecated _matrix._tcp record when there is no _matrix-fed one.
    fed_get(&c, "old.test").await.unwrap();
    assert_eq!(
        fed.hits()[1..],
        [
            hit(Some("srv.test"), "srv.test"),
            hit(Some("old.test"), "old.test")
        ]
    );
    // The certificate must be valid for the server name, not for the SRV target.
    let target_only = TlsServer::federation(&ca, &["target.test"]).await;
    let dns = FakeDns::start(Zone::default().a(&["srv.test", "target.test"]).srv(
        "_matrix-fed._tcp.srv.test",
        &[(0, 0, target_only.port(), "target.test.")],
    ))
    .await;
    let c = client(
        &ca.pem,
        TestHooks {
            well_known_port: Some(no_wk.port()),
            name_servers: vec![dns.addr],
            ..Default::default()
        },
    );
    assert_eq!(fed_get(&c, "srv.test").await, Err(OutboundError::Tls));
}

#[tokio::test]
async fn without_well_known_nor_srv_the_name_is_used_on_8448() {
    let ca = TestCa::new();
    let dns = FakeDns::start(Zone::default().a(&["plain.test"])).await;
    let fed = TlsServer::federation(&ca, &["plain.test"]).await;
    // Nothing listens on the well-known port at all.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let c = client(
        &ca.pem,
        TestHooks {
            well_known_port: Some(closed_port),
            default_port: Some(fed.port()),
            name_servers: vec![dns.addr],
            ..Default::default()
        },
    );
    let route = c.discover("plain.test").await.unwrap();
    assert!(matches!(
        route.well_known,
        Some(hearth::outbound::discovery::WellKnownOutcome::Unreachable(
            _
        ))
    ));
    fed_get(&c, "plain.test").await.unwrap();
    assert_eq!(fed.hits(), vec![hit(Some("plain.test"), "plain.test")]);
}

#[tokio::test]
async fn well_known_redirects_are_bounded_and_bad_answers_ignored() {
    use hearth::outbound::discovery::WellKnownOutcome::{Delegated, Invalid};
    let ca = TestCa::new();
    let dns = FakeDns::start(Zone::default().a(&["example.test", "www.test"])).await;
    let wk = TlsServer::start(ca.server_config(&["example.test", "www.test"]), |path| {
        let redirect = |to: &str| (302, vec![("location", to.to_owned())], Vec::new());
        match path {
            "/.well-known/matrix/server" => redirect("/step"),
            "/step" => redirect("relative"),
            "/relative" => (200, Vec::new(), br#"{"m.server":"m.test:443"}"#.to_vec()),
            _ => (404, Vec::new(), Vec::new()),
        }
    })
    .await;
    let hooks = TestHooks {
        well_known_port: Some(wk.port()),
        name_servers: vec![dns.addr],
        ..Default::default()
    };
    let c = client(&ca.pem, hooks.clone());
    assert_eq!(
        c.fetch_well_known("example.test").await.0,
        Delegated("m.test:443".into())
    );

    let bad = |answer: Answer| {
        let (ca, hooks) = (&ca, &hooks);
        async move {
            let server =
                TlsServer::start(
                    ca.server_config(&["example.test"]),
                    move |path| match path {
                        "/loop" => (
                            301,
                            vec![("location", "/.well-known/matrix/server".into())],
                            Vec::new(),
                        ),
                        _ => answer.clone(),
                    },
                )
                .await;
            let c = client(
                &ca.pem,
                TestHooks {
                    well_known_port: Some(server.port()),
                    ..hooks.clone()
                },
            );
            let outcome = c.fetch_well_known("example.test").await.0;
            (outcome, server.hits().len())
        }
    };
    let (loop_outcome, requests) = bad((302, vec![("location", "/loop".into())], Vec::new())).await;
    assert_eq!(loop_outcome, Invalid("redirect loop".into()));
    assert_eq!(requests, 2);
    let (outcome, _) = bad((
        302,
        vec![("location", "http://example.test/x".into())],
        Vec::new(),
    ))
    .await;
    assert!(
        matches!(outcome, Invalid(ref e) if e.contains("https")),
        "{outcome:?}"
    );
    let (outcome, _) = bad((200, Vec::new(), vec![b' '; 64 * 1024])).await;
    assert!(
        matches!(outcome, Invalid(ref e) if e.contains("larger")),
        "{outcome:?}"
    );
    let (outcome, _) = bad((200, Vec::new(), br#"{"m.server":"not a name"}"#.to_vec())).await;
    assert!(matches!(outcome, Invalid(_)), "{outcome:?}");
    let (outcome, _) = bad((404, Vec::new(), Vec::new())).await;
    assert_eq!(outcome, Invalid("HTTP 404 Not Found".into()));
}

#[tokio::test]
async fn the_ip_policy_applies_to_discovered_addresses() {
    let ca = TestCa::new();
    let fed = TlsServer::federation(&ca, &["127.0.0.1"]).await;
    let config = hearth::config::Outbound {
        allow_networks: Vec::new(),
        extra_ca_file: Some(ca.pem.clone()),
    };
    let c = Outbound::new(&config).unwrap();
    let dest = format!("127.0.0.1:{}", fed.port());
    assert_eq!(fed_get(&c, &dest).await, Err(OutboundError::Refused));
    assert!(fed.hits().is_empty());
}

/// Figures for the report (not a check): a cold discovery (well-known fetch over TLS, SRV
/// lookup, fresh caches) against a cached one, and the memory one cached well-known answer
/// takes. Run alone: `cargo test --test it fed_discovery::figures -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints figures; run alone"]
async fn figures() {
    use hearth::outbound::discovery::{WellKnownCache, WellKnownOutcome};
    use std::time::Instant;
    let ca = TestCa::new();
    let fed = TlsServer::federation(&ca, &["deleg.test"]).await;
    let dns = FakeDns::start(Zone::default().a(&["example.test", "target.test"]).srv(
        "_matrix-fed._tcp.deleg.test",
        &[(0, 0, fed.port(), "target.test.")],
    ))
    .await;
    let wk = TlsServer::well_known(
        &ca,
        &["example.test"],
        json!({"m.server": "deleg.test"}),
        "",
    )
    .await;
    let hooks = TestHooks {
        well_known_port: Some(wk.port()),
        name_servers: vec![dns.addr],
        ..Default::default()
    };
    let rounds = 30;
    let mut cold = Vec::new();
    for _ in 0..rounds {
        let c = client(&ca.pem, hooks.clone());
        let t = Instant::now();
        c.discover("example.test").await.unwrap();
        cold.push(t.elapsed());
    }
    let c = client(&ca.pem, hooks.clone());
    c.discover("example.test").await.unwrap();
    let warm_rounds = 2000;
    let t = Instant::now();
    for _ in 0..warm_rounds {
        c.discover("example.test").await.unwrap();
    }
    let warm = t.elapsed() / warm_rounds;
    cold.sort();
    // A whole request (discovery, TCP, TLS handshake, HTTP) cold and with discovery cached.
    let t = Instant::now();
    fed_get(&client(&ca.pem, hooks.clone()), "example.test")
        .await
        .unwrap();
    let request_cold = t.elapsed();
    let t = Instant::now();
    for _ in 0..20 {
        fed_get(&c, "example.test").await.unwrap();
    }
    let request_warm = t.elapsed() / 20;
    println!(
        "discovery (well-known over TLS + SRV): cold median {:?} (min {:?}, max {:?}); cached {:?}",
        cold[cold.len() / 2],
        cold[0],
        cold[cold.len() - 1],
        warm
    );
    println!("federation request: cold {request_cold:?}, discovery cached {request_warm:?}");

    // Memory per cached destination: RSS before and after 100k well-known answers.
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
    let n = 100_000;
    let cache = WellKnownCache::new(n);
    let now = std::time::Instant::now();
    let before = rss_kib();
    for i in 0..n {
        let host = format!("host{i}.example.org");
        let answer = WellKnownOutcome::Delegated(format!("matrix.host{i}.example.org:443"));
        cache
            .get_or_fetch(&host, now, || async move { (answer, None) })
            .await;
    }
    let after = rss_kib();
    println!(
        "well-known cache: {n} entries, RSS +{} KiB, {} bytes per destination (names of ~18 and ~30 bytes)",
        after - before,
        (after - before) * 1024 / n as u64
    );
}
