//! Several Hearth servers federating on loopback: each is named `127.0.0.1:<port>` and serves
//! HTTPS on that port with a certificate from a CA made for the test run, which every server
//! trusts (`outbound.extra_ca_file`); loopback is allowed by their outbound IP policy. The
//! client API is driven over each server's plain HTTP listener (the same routing table serves
//! both APIs there, so tests can also send hand-signed federation requests to it).

use std::path::Path;

use hearth::config::{Config, Tls, TlsMode};
use reqwest::StatusCode;
use ruma::api::federation::authentication::{XMatrix, XMatrixSigningInput};
use serde_json::Value;

use crate::common::TestServer;

pub struct Fed {
    pub servers: Vec<FedServer>,
    /// Holds the test CA's certificate (`ca.pem`), trusted by every server.
    pub _certs: tempfile::TempDir,
}

pub struct FedServer {
    pub srv: TestServer,
    /// The server name, `127.0.0.1:<tls port>`.
    pub name: String,
}

impl std::ops::Deref for FedServer {
    type Target = TestServer;
    fn deref(&self) -> &TestServer {
        &self.srv
    }
}

impl std::ops::DerefMut for FedServer {
    fn deref_mut(&mut self) -> &mut TestServer {
        &mut self.srv
    }
}

/// `n` federating servers.
pub async fn start_many(n: usize) -> Fed {
    start_many_with(n, |_, _| {}).await
}

/// `n` federating servers, each config changed by `change(index, config)` before it starts.
pub async fn start_many_with(n: usize, change: impl Fn(usize, &mut Config)) -> Fed {
    let certs = tempfile::tempdir().unwrap();
    let (ca_cert, ca_key) = ca();
    let ca_pem = certs.path().join("ca.pem");
    std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
    let cert = certs.path().join("cert.pem");
    let key = certs.path().join("key.pem");
    leaf(&ca_cert, &ca_key, &cert, &key);
    let mut servers = Vec::new();
    for i in 0..n {
        servers.push(start_one(i, &ca_pem, &cert, &key, &change).await);
    }
    Fed {
        servers,
        _certs: certs,
    }
}

pub async fn start_one(
    index: usize,
    ca_pem: &Path,
    cert: &Path,
    key: &Path,
    change: &impl Fn(usize, &mut Config),
) -> FedServer {
    // The port is the server's name, so it is chosen before the server starts; another test
    // may take it in between, hence a few attempts.
    for _ in 0..5 {
        let port = free_port();
        let name = format!("127.0.0.1:{port}");
        let started = TestServer::try_start_with(|config| {
            config.server_name = name.clone();
            config.tls = Tls {
                mode: TlsMode::Files,
                listeners: vec![format!("127.0.0.1:{port}").parse().unwrap()],
                cert: cert.display().to_string(),
                key: key.display().to_string(),
                ..Default::default()
            };
            config.outbound.extra_ca_file = Some(ca_pem.to_path_buf());
            change(index, config);
        })
        .await;
        if let Some(srv) = started {
            return FedServer { srv, name };
        }
    }
    panic!("no free port for a federating test server");
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn ca() -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hearth federation test CA");
    let cert = params.self_signed(&key).unwrap();
    (cert, key)
}

/// One certificate for every server: they all listen on 127.0.0.1 (IP SAN) and `localhost`.
pub fn leaf(ca: &rcgen::Certificate, ca_key: &rcgen::KeyPair, cert: &Path, key: &Path) {
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let leaf = params.signed_by(&leaf_key, ca, ca_key).unwrap();
    std::fs::write(cert, leaf.pem()).unwrap();
    std::fs::write(key, leaf_key.serialize_pem()).unwrap();
}

impl FedServer {
    /// `@local:<this server>`.
    pub fn user_id(&self, local: &str) -> String {
        format!("@{local}:{}", self.name)
    }

    /// This server's signing key, read from its data directory.
    pub fn signing_key(&self) -> hearth::service::keys::ServerKeys {
        hearth::service::keys::ServerKeys::load(&self.config.data_dir.join("keys")).unwrap()
    }

    /// A federation request to `to` (over its plain HTTP listener), signed X-Matrix by this
    /// server's real key; `destination` is what the header names (normally `to.name`).
    pub async fn signed(
        &self,
        to: &FedServer,
        destination: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let keys = self.signing_key();
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let request = http::Request::builder()
            .method(method.as_str())
            .uri(path)
            .body(bytes.clone())
            .unwrap();
        let input = XMatrixSigningInput::new(
            self.name.as_str().try_into().unwrap(),
            destination.try_into().unwrap(),
            &keys.keypair,
        );
        let header = XMatrix::sign_http_request(&request, input).unwrap();
        let mut req = to
            .http
            .request(method, format!("{}{path}", to.base))
            .header("authorization", header.to_string());
        if !bytes.is_empty() {
            req = req.header("content-type", "application/json").body(bytes);
        }
        let response = req.send().await.expect("request sent");
        let status = response.status();
        let bytes = response.bytes().await.unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }
}

/// CPU time (user + system) of this whole process so far, threads that already exited
/// included (`/proc/self/stat`, in clock ticks of 10 ms): summing the live threads instead
/// would go backwards when a blocking-pool thread exits.
pub fn process_cpu() -> std::time::Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    std::time::Duration::from_millis(ticks * 10)
}
