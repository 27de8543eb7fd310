//! HTTPS: certificates and the TLS handshake. warp 0.4 has no TLS; connections are served by
//! [`super::listener`] on a tokio-rustls stream.
//!
//! Certificates come from ACME (rustls-acme, TLS-ALPN-01: a challenge connection is answered on
//! the same listener, recognised by its ALPN `acme-tls/1`) or from PEM files reloaded on SIGHUP.
//! The crypto provider is named explicitly: ring.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::sync::watch;

use crate::config::{Config, TlsMode};

/// The crypto provider for every TLS use in Hearth.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What an HTTPS listener needs: the config for normal connections and, with ACME, the one
/// that answers TLS-ALPN-01 challenges.
pub struct TlsServer {
    config: Arc<ServerConfig>,
    challenge: Option<Arc<ServerConfig>>,
}

/// A certificate from PEM files, swapped in place on reload.
#[derive(Debug)]
struct FileCerts {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for FileCerts {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// Loads a PEM certificate chain and private key.
pub fn load_pem(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("tls.cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("tls.cert {}: no certificate in it", cert.display()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls.key {}: {e}", key.display()))?;
    let ck = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| format!("tls.cert/tls.key: {e}"))?;
    Ok(ck)
}

fn with_alpn(mut config: ServerConfig) -> Arc<ServerConfig> {
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Restricts every file in `dir` (and `dir`) to the server's user: the ACME cache holds the
/// account key and the certificate's private key.
fn tighten(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600));
        }
    }
}

/// Sets up certificates per `[tls]`; `None` when TLS is off. Background tasks (ACME order and
/// renewal, SIGHUP reload) end when `shutdown` turns true.
pub async fn setup(
    config: &Config,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<Arc<TlsServer>>, String> {
    let tls = &config.tls;
    if tls.mode != TlsMode::Files {
        // `systemctl reload` sends SIGHUP whatever the mode; without a handler it would end the
        // process.
        tokio::spawn(ignore_sighup(shutdown.clone()));
    }
    match tls.mode {
        TlsMode::Off => Ok(None),
        TlsMode::Files => {
            let (cert, key) = (PathBuf::from(&tls.cert), PathBuf::from(&tls.key));
            let certs = Arc::new(FileCerts {
                current: RwLock::new(Arc::new(load_pem(&cert, &key)?)),
            });
            let server = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_no_client_auth()
                .with_cert_resolver(certs.clone());
            tokio::spawn(reload_on_sighup(certs, cert, key, shutdown));
            Ok(Some(Arc::new(TlsServer {
                config: with_alpn(server),
                challenge: None,
            })))
        }
        TlsMode::Acme => {
            let cache_dir = config.data_dir.join("acme");
            std::fs::create_dir_all(&cache_dir)
                .map_err(|e| format!("cannot create {}: {e}", cache_dir.display()))?;
            tighten(&cache_dir);
            let domains = tls.acme_domains(&config.server_name);
            if !tls.listeners.iter().any(|l| l.port() == 443) {
                log::warn!(
                    "tls.mode = \"acme\" but no tls.listeners entry is on port 443: the CA \
                     validates on port 443 of {}, so forward 443 to one of {:?}",
                    domains.join(", "),
                    tls.listeners
                );
            }
            let mut acme = rustls_acme::AcmeConfig::new_with_provider(&domains, provider())
                .contact_push(format!("mailto:{}", tls.email.trim()))
                .directory(tls.directory_url());
            if !tls.directory_ca.is_empty() {
                acme = acme.client_tls_config(directory_client(Path::new(&tls.directory_ca))?);
            }
            let state = acme
                .cache(rustls_acme::caches::DirCache::new(cache_dir.clone()))
                .state();
            let resolver = state.resolver();
            let challenge = state.challenge_rustls_config_with_provider(provider());
            let server = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_no_client_auth()
                .with_cert_resolver(resolver);
            tokio::spawn(drive_acme(state, cache_dir, domains, shutdown));
            Ok(Some(Arc::new(TlsServer {
                config: with_alpn(server),
                challenge: Some(challenge),
            })))
        }
    }
}

/// A client config for talking to an ACME directory whose certificate is signed by `ca`.
fn directory_client(ca: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("tls.directory_ca {}: {e}", ca.display()))?
    {
        let cert = cert.map_err(|e| format!("tls.directory_ca {}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("tls.directory_ca {}: {e}", ca.display()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Polls the ACME state forever: it orders the first certificate, deploys cached ones and
/// renews before expiry. Errors are logged and retried by the state itself.
async fn drive_acme<EC, EA>(
    mut state: rustls_acme::AcmeState<EC, EA>,
    cache_dir: PathBuf,
    domains: Vec<String>,
    mut shutdown: watch::Receiver<bool>,
) where
    EC: std::fmt::Debug + std::fmt::Display + 'static,
    EA: std::fmt::Debug + std::fmt::Display + 'static,
{
    loop {
        let event = tokio::select! {
            event = state.next() => event,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match event {
            Some(Ok(ok)) => {
                log::info!("acme ({}): {ok:?}", domains.join(", "));
                tighten(&cache_dir);
            }
            Some(Err(e)) => log::warn!("acme ({}): {e}", domains.join(", ")),
            None => return,
        }
    }
}

async fn ignore_sighup(mut shutdown: watch::Receiver<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => log::info!("SIGHUP: nothing to reload (tls.mode is not \"files\")"),
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

async fn reload_on_sighup(
    certs: Arc<FileCerts>,
    cert: PathBuf,
    key: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        log::warn!("cannot listen for SIGHUP; certificate reload needs a restart");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        match load_pem(&cert, &key) {
            Ok(ck) => {
                *certs.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ck);
                log::info!("SIGHUP: reloaded {} and {}", cert.display(), key.display());
            }
            Err(e) => log::error!("SIGHUP: keeping the old certificate: {e}"),
        }
    }
}

/// Completes the TLS handshake of a new connection. `None` when there is nothing more to
/// serve: an ACME validation was answered, or the handshake failed (logged at debug: scanners
/// and plain-HTTP clients do that all day).
pub(super) async fn accept(
    tls: &TlsServer,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let handshake = async {
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
        if let Some(challenge) = &tls.challenge {
            if rustls_acme::is_tls_alpn_challenge(&start.client_hello()) {
                // Answer the ACME validation and close.
                let mut stream = start.into_stream(challenge.clone()).await?;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
                return Ok(None);
            }
        }
        start.into_stream(tls.config.clone()).await.map(Some)
    };
    match handshake.await {
        Ok(stream) => stream,
        Err(e) => {
            log::debug!("TLS handshake with {peer}: {e}");
            None
        }
    }
}
