//! `hearth check --data DIR`: verifies a data directory (a stopped server's, or a backup).

use std::net::SocketAddr;
use std::path::Path;

use crate::config::Config;
use crate::service::keys::ServerKeys;
use crate::store;

mod federation;
pub use federation::check_key_response;

/// Verifies a data directory without changing anything in it: the database is opened
/// read-only (no migration, no repair, no write), every row of every table is read, and the
/// signing key is loaded if there is one (none is generated); nothing is cleaned up. Prints
/// the row counts.
pub fn check_data(config: &Config, dir: &Path) -> Result<(), String> {
    if crate::cli::backup::server_running(dir) {
        return Err(format!(
            "a server is running on {}; check its backup instead (hearth backup DEST, then \
             hearth check --data DEST)",
            dir.display()
        ));
    }
    let db = dir.join("db");
    let engine = if db.join("db.redb").exists() {
        store::EngineKind::Redb
    } else if db.join("db.sled").exists() {
        store::EngineKind::Sled
    } else {
        return Err(format!(
            "{} holds no database (db/db.redb or db/db.sled)",
            dir.display()
        ));
    };
    let inspection = store::inspect(&db, engine, config.storage.cache_mb << 20)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let version = match inspection.schema_version {
        None => {
            return Err(format!(
                "{}: the database holds no schema version",
                dir.display()
            ))
        }
        Some(v) if v > store::SCHEMA_VERSION => {
            return Err(format!(
                "{}: schema version {v} is newer than this build supports ({})",
                dir.display(),
                store::SCHEMA_VERSION
            ))
        }
        Some(v) if v < store::SCHEMA_VERSION => {
            format!(
                "{v} (migrated to {} at the next start)",
                store::SCHEMA_VERSION
            )
        }
        Some(v) => v.to_string(),
    };
    let keys = dir.join("keys");
    let key = if keys.join("signing.key").exists() {
        let key = ServerKeys::load(&keys).map_err(|e| e.to_string())?;
        format!("signing key {}", key.key_id())
    } else {
        "no signing key yet (one is generated at the first start)".to_owned()
    };
    let rows: u64 = inspection.counts.iter().map(|(_, n)| n).sum();
    crate::outln!(
        "{}: {engine} database, schema version {version}, {} tables, {rows} rows, all \
         readable; {key}",
        dir.display(),
        inspection.counts.len()
    )?;
    for (table, n) in inspection.counts {
        crate::outln!("  {table:<28} {n}")?;
    }
    Ok(())
}

/// `hearth check` arguments.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Verify this data directory instead of checking the network view.
    #[arg(long, value_name = "DIR")]
    pub data: Option<std::path::PathBuf>,
    /// The server name to check (default: `server_name` from the configuration).
    #[arg(long)]
    pub name: Option<String>,
    /// Send every connection to this address instead of what DNS says (like curl's
    /// --connect-to), e.g. to check a server before its DNS records exist.
    #[arg(long, value_name = "ADDR")]
    pub connect: Option<SocketAddr>,
    /// Also trust this CA (PEM) when verifying certificates (a private or test CA).
    #[arg(long, value_name = "PEM")]
    pub ca: Option<std::path::PathBuf>,
    /// Tests only: the port of the well-known and client API instead of 443.
    #[arg(long, hide = true)]
    pub test_well_known_port: Option<u16>,
    /// Tests only: the federation port instead of 8448.
    #[arg(long, hide = true)]
    pub test_federation_port: Option<u16>,
    /// Tests only: this DNS server instead of the system's.
    #[arg(long, hide = true)]
    pub test_dns: Option<SocketAddr>,
}

/// `hearth check`.
pub fn run(config: &Config, args: CheckArgs) -> Result<(), String> {
    if let Some(dir) = &args.data {
        return check_data(config, dir);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let problems = rt.block_on(check_network(config, &args))?;
    if problems == 0 {
        crate::outln!("no problems found")?;
        Ok(())
    } else {
        Err(format!("{problems} problem(s) found"))
    }
}

/// What one HTTPS request saw.
#[derive(Debug, Clone)]
pub struct HttpsResult {
    /// The protocol the server chose by ALPN.
    pub alpn: Option<String>,
    /// Subject alternative names of the server's certificate.
    pub names: Vec<String>,
    /// Its expiry (Unix seconds).
    pub not_after: i64,
    /// Status code and body of the response (HTTP/1.1).
    pub status: u16,
    pub body: String,
}

/// The roots for verification: the public web PKI plus `ca` (PEM) if given.
pub fn roots(ca: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = ca {
        for cert in
            CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?
        {
            let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
        }
    }
    Ok(roots)
}

/// Why an HTTPS request of `check` failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpsError {
    /// No TCP connection.
    Connect(String),
    /// The certificate is not valid for the name; the names it is valid for.
    WrongName { presented: Vec<String> },
    /// Another TLS failure (unknown issuer, expired, handshake).
    Tls(String),
    /// Anything else (a timeout, no HTTP answer).
    Other(String),
}

impl std::fmt::Display for HttpsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpsError::Connect(e) | HttpsError::Tls(e) | HttpsError::Other(e) => f.write_str(e),
            HttpsError::WrongName { presented } => {
                write!(f, "the certificate is only for {}", presented.join(", "))
            }
        }
    }
}

/// `GET path` over HTTPS to `addr`, verifying the certificate for `host` against `roots`,
/// offering ALPN `alpn` (the request itself is HTTP/1.1, so offer `h2` only to see whether the
/// server picks it; the request is then skipped and `status` is 0).
pub async fn https_get(
    addr: SocketAddr,
    host: &str,
    roots: rustls::RootCertStore,
    path: &str,
    alpn: &[&str],
) -> Result<HttpsResult, String> {
    https_get_as(addr, host, host, roots, path, alpn)
        .await
        .map_err(|e| match e {
            HttpsError::Connect(e) => format!("cannot connect to {addr}: {e}"),
            HttpsError::Tls(e) => format!("TLS with {addr} as {host}: {e}"),
            e => format!("{addr}: {e}"),
        })
}

/// [`https_get`] with a `Host` header other than the certificate name `tls_name` (an IP
/// address there means no SNI and a certificate for the IP).
pub async fn https_get_as(
    addr: SocketAddr,
    tls_name: &str,
    host_header: &str,
    roots: rustls::RootCertStore,
    path: &str,
    alpn: &[&str],
) -> Result<HttpsResult, HttpsError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let other = |e: String| HttpsError::Other(e);
    let mut config = rustls::ClientConfig::builder_with_provider(crate::http::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| other(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let server_name = rustls::pki_types::ServerName::try_from(tls_name.to_owned())
        .map_err(|e| other(format!("{tls_name}: {e}")))?;
    let io = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| HttpsError::Connect(e.to_string()))?;
        let mut tls = connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| tls_error(&e))?;
        let (_, conn) = tls.get_ref();
        let alpn = conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| other("no certificate".into()))?
            .clone();
        let (names, not_after) = cert_info(&leaf).map_err(other)?;
        if alpn.as_deref() == Some("h2") {
            return Ok(HttpsResult {
                alpn,
                names,
                not_after,
                status: 0,
                body: String::new(),
            });
        }
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| other(e.to_string()))?;
        let mut response = Vec::new();
        // A peer that closes without close_notify still delivered what it sent.
        let _ = tls.read_to_end(&mut response).await;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| other(format!("no HTTP response from {addr}")))?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, b)| b.to_owned());
        Ok(HttpsResult {
            alpn,
            names,
            not_after,
            status,
            body,
        })
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), io)
        .await
        .map_err(|_| other(format!("{addr}: timed out")))?
}

/// A TLS handshake failure, with the certificate's names when they are the problem.
fn tls_error(e: &std::io::Error) -> HttpsError {
    use rustls::{CertificateError, Error};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            presented,
            ..
        })) => HttpsError::WrongName {
            presented: presented
                .iter()
                // rustls writes them as `DnsName("x")` / `IpAddress(x)`.
                .map(|n| {
                    let inner = n
                        .split_once('(')
                        .and_then(|(_, rest)| rest.rsplit_once(')'))
                        .map_or(n.as_str(), |(inner, _)| inner);
                    inner.trim_matches('"').to_owned()
                })
                .collect(),
        },
        _ => HttpsError::Tls(e.to_string()),
    }
}

fn cert_info(der: &[u8]) -> Result<(Vec<String>, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    let ip = match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip).map(std::net::IpAddr::from).ok(),
                        16 => <[u8; 16]>::try_from(*ip).map(std::net::IpAddr::from).ok(),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Reports, as a remote server and a client would see it: federation (discovery, the
/// certificate and our own keys through it), the client side (well-known, certificate and
/// client API on port 443 or the server name's port), and the configured listeners. Returns
/// the number of problems.
async fn check_network(config: &Config, args: &CheckArgs) -> Result<u32, String> {
    use crate::outbound::discovery::{split_server_name, Host};
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| config.server_name.clone());
    let roots = roots(args.ca.as_deref())?;
    let outbound = federation::client(config, args)?;
    let mut problems = 0;
    let mut bad = |what: String| {
        // A closed output shows at the next checked line.
        let _ = crate::outln!("  PROBLEM: {what}");
        problems += 1;
    };
    let (host, port) =
        split_server_name(&name).ok_or_else(|| format!("{name:?} is not a Matrix server name"))?;
    crate::outln!("server name {name}")?;

    // 1. Name resolution (and the address the client side uses).
    let client_port = port.or(args.test_well_known_port).unwrap_or(443);
    let client_addr = match (&host, args.connect) {
        (_, Some(addr)) => Some(addr),
        (Host::Ip(ip), None) => Some(SocketAddr::new(*ip, client_port)),
        (Host::Name(h), None) => match outbound.lookup(h).await {
            Ok(ips) => {
                let shown: Vec<String> = ips.iter().map(ToString::to_string).collect();
                crate::outln!("  resolves to {}", shown.join(", "))?;
                ips.first().map(|ip| SocketAddr::new(*ip, client_port))
            }
            Err(_) => {
                bad(format!("{h} does not resolve (no A or AAAA record)"));
                None
            }
        },
    };

    // 2. Federation, as another server finds us.
    federation::check(config, args, &outbound, &name, &roots, &mut bad).await?;

    // 3. Client side: well-known and the client API on 443 (or the given port).
    let tls_name = match &host {
        Host::Ip(ip) => ip.to_string(),
        Host::Name(h) => h.clone(),
    };
    crate::outln!(
        "client side, https://{host}{}",
        port.map_or(String::new(), |p| format!(":{p}"))
    )?;
    if let Some(addr) = client_addr {
        let path = "/.well-known/matrix/client";
        match https_get(addr, &tls_name, roots.clone(), path, &["http/1.1"]).await {
            Ok(r) if r.status == 200 => crate::outln!("  {path}: {}", r.body.trim())?,
            Ok(r) => crate::outln!("  {path}: {} (clients must be told the URL)", r.status)?,
            Err(e) => bad(format!("{path}: {e}")),
        }
        let versions = "/_matrix/client/versions";
        match https_get(
            addr,
            &tls_name,
            roots.clone(),
            versions,
            &["h2", "http/1.1"],
        )
        .await
        {
            Ok(r) => {
                let days = (r.not_after - now_secs()) / 86_400;
                crate::outln!(
                    "  {addr}: certificate valid for {} (expires in {days} days), ALPN {}",
                    r.names.join(", "),
                    r.alpn.as_deref().unwrap_or("none")
                )?;
                if days < 14 {
                    bad(format!("the certificate expires in {days} days"));
                }
            }
            Err(e) => bad(format!("client API over HTTPS: {e}")),
        }
        match https_get(addr, &tls_name, roots.clone(), versions, &["http/1.1"]).await {
            Ok(r) if r.status == 200 => crate::outln!("  client API answers {versions}")?,
            Ok(r) => bad(format!("{versions} answered {}", r.status)),
            Err(e) => bad(format!("client API: {e}")),
        }
    }

    // 4. The listeners this configuration opens.
    crate::outln!("listeners in the configuration")?;
    for l in &config.listeners {
        let up = tokio::net::TcpStream::connect(l.bind).await.is_ok();
        crate::outln!(
            "  http://{}  {}",
            l.bind,
            if up {
                "accepting"
            } else {
                "not accepting here"
            }
        )?;
    }
    for b in &config.tls.listeners {
        let up = tokio::net::TcpStream::connect(b).await.is_ok();
        crate::outln!(
            "  https://{b}  {}",
            if up {
                "accepting"
            } else {
                "not accepting here"
            }
        )?;
    }
    if config.tls.listeners.is_empty() {
        crate::outln!(
            "  (no HTTPS listener: tls.mode = \"off\"; a reverse proxy must terminate TLS and \
             forward /_matrix/ and /.well-known/matrix/)"
        )?;
    }
    Ok(problems)
}
