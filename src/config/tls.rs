//! The `[tls]` section: where HTTPS certificates come from, and its validation.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{split_server_name, Config, ConfigError};

/// HTTPS (`[tls]`). The `[[listeners]]` stay plain HTTP; `tls.listeners` are the HTTPS ones.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// `acme`, `files` or `off`.
    pub mode: TlsMode,
    /// The HTTPS listening addresses (e.g. `[::]:443`, `[::]:8448`); required unless off.
    pub listeners: Vec<SocketAddr>,
    /// acme: the names on the certificate; empty means the host of `server_name`.
    pub domains: Vec<String>,
    /// acme: the contact e-mail for the ACME account (required).
    pub email: String,
    /// acme: `letsencrypt`, `letsencrypt-staging`, or an https:// directory URL.
    pub directory: String,
    /// acme: a PEM file with a CA to trust for the ACME directory itself (test servers such
    /// as pebble); empty means the public web PKI roots.
    pub directory_ca: String,
    /// files: PEM certificate chain. Reloaded on SIGHUP.
    pub cert: String,
    /// files: PEM private key. Reloaded on SIGHUP.
    pub key: String,
}

/// Where certificates come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Obtained and renewed automatically over ACME (TLS-ALPN-01), cached in `data_dir/acme`.
    Acme,
    /// Read from `cert` and `key`.
    Files,
    /// No HTTPS: plain HTTP behind a reverse proxy.
    #[default]
    Off,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            mode: TlsMode::Off,
            listeners: Vec::new(),
            domains: Vec::new(),
            email: String::new(),
            directory: "letsencrypt".into(),
            directory_ca: String::new(),
            cert: String::new(),
            key: String::new(),
        }
    }
}

impl Tls {
    /// The ACME directory URL.
    pub fn directory_url(&self) -> &str {
        match self.directory.as_str() {
            "letsencrypt" => "https://acme-v02.api.letsencrypt.org/directory",
            "letsencrypt-staging" => "https://acme-staging-v02.api.letsencrypt.org/directory",
            other => other,
        }
    }

    /// The certificate names for ACME: `domains`, or the host of `server_name`.
    pub fn acme_domains(&self, server_name: &str) -> Vec<String> {
        if !self.domains.is_empty() {
            return self.domains.clone();
        }
        vec![split_server_name(server_name)
            .map_or(server_name, |h| h.0)
            .to_owned()]
    }

    pub(super) fn validate(&self, config: &Config) -> Result<(), ConfigError> {
        let err = |key: &str, message: String| ConfigError::Invalid {
            key: format!("tls.{key}"),
            message,
        };
        for (i, addr) in self.listeners.iter().enumerate() {
            if self.listeners[..i].contains(addr)
                || config.listeners.iter().any(|l| l.bind == *addr)
            {
                return Err(err(
                    &format!("listeners[{i}]"),
                    format!("{addr} is listed twice (in tls.listeners or [[listeners]])"),
                ));
            }
        }
        match self.mode {
            TlsMode::Off => {
                if !self.listeners.is_empty() {
                    return Err(err(
                        "listeners",
                        "HTTPS listeners are set but tls.mode is \"off\"; set mode = \"acme\" \
                         or \"files\", or remove them"
                            .into(),
                    ));
                }
            }
            TlsMode::Files => {
                if self.listeners.is_empty() {
                    return Err(err("listeners", "required when mode = \"files\"".into()));
                }
                if self.cert.trim().is_empty() || self.key.trim().is_empty() {
                    return Err(err(
                        if self.cert.trim().is_empty() {
                            "cert"
                        } else {
                            "key"
                        },
                        "mode = \"files\" needs both cert and key (PEM file paths)".into(),
                    ));
                }
            }
            TlsMode::Acme => {
                if self.listeners.is_empty() {
                    return Err(err(
                        "listeners",
                        "required when mode = \"acme\" (the ACME TLS-ALPN-01 challenge arrives \
                         on port 443)"
                            .into(),
                    ));
                }
                let email = self.email.trim();
                if !email.contains('@') || email.contains(char::is_whitespace) {
                    return Err(err(
                        "email",
                        format!("mode = \"acme\" needs a contact e-mail address, got {email:?}"),
                    ));
                }
                let url = self.directory_url();
                if !url.starts_with("https://") && !url.starts_with("http://") {
                    return Err(err(
                        "directory",
                        format!(
                            "expected \"letsencrypt\", \"letsencrypt-staging\" or an https:// \
                             URL, got {:?}",
                            self.directory
                        ),
                    ));
                }
                for d in self.acme_domains(&config.server_name) {
                    let bare = d.trim_start_matches('[').trim_end_matches(']');
                    if bare.parse::<std::net::IpAddr>().is_ok() {
                        let whose = if self.domains.is_empty() {
                            format!(" (the host of server_name {:?})", config.server_name)
                        } else {
                            String::new()
                        };
                        return Err(err(
                            "domains",
                            format!(
                                "ACME cannot issue a certificate for an IP address: {d}{whose}; \
                                 use mode = \"files\" with a certificate for the IP address, or \
                                 a DNS name"
                            ),
                        ));
                    }
                    let ok = !d.is_empty()
                        && d.split('.').all(|l| {
                            !l.is_empty()
                                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        });
                    if !ok {
                        return Err(err(
                            "domains",
                            format!("{d:?} is not a DNS name a certificate can be issued for"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
