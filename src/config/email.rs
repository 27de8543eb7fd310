//! Outgoing e-mail (`[email]`): the SMTP server that carries validation mails for e-mail
//! addresses (adding one to an account, registering with one, resetting a password).

use serde::Deserialize;

use super::{empty_as_none, ConfigError};

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS, which is required (port 587 by default).
    #[default]
    Starttls,
    /// TLS from the first byte ("implicit TLS", port 465 by default).
    Tls,
    /// No encryption (port 25 by default): only for a relay on the same host or network.
    None,
}

/// `[email]`. E-mail is off while `host` is empty: the e-mail endpoints then answer
/// `M_THREEPID_MEDIUM_NOT_SUPPORTED` and no flow offers `m.login.email.identity`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Email {
    /// The SMTP server's host name (also the name its TLS certificate must carry).
    #[serde(deserialize_with = "empty_as_none")]
    pub host: Option<String>,
    /// 0: the usual port of `security` (587, 465 or 25).
    pub port: u16,
    pub security: SmtpSecurity,
    /// SMTP login; empty: the server accepts mail without one.
    #[serde(deserialize_with = "empty_as_none")]
    pub user: Option<String>,
    #[serde(deserialize_with = "empty_as_none")]
    pub password: Option<String>,
    /// The sender, e.g. `Hearth <noreply@example.org>`; required when `host` is set.
    #[serde(deserialize_with = "empty_as_none")]
    pub from: Option<String>,
    /// The public http(s) URL of this server, for the links in the mails. Empty: the
    /// `[well_known] client_base_url`; one of the two is required when `host` is set.
    #[serde(deserialize_with = "empty_as_none")]
    pub base_url: Option<String>,
}

impl Email {
    pub fn enabled(&self) -> bool {
        self.host.is_some()
    }

    pub fn port(&self) -> u16 {
        match (self.port, self.security) {
            (0, SmtpSecurity::Starttls) => 587,
            (0, SmtpSecurity::Tls) => 465,
            (0, SmtpSecurity::None) => 25,
            (port, _) => port,
        }
    }

    /// Checks the section; `client_base_url` is the `[well_known]` fallback for links.
    pub(super) fn validate(&self, client_base_url: Option<&str>) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: format!("email.{key}"),
            message,
        };
        if !self.enabled() {
            return Ok(());
        }
        let from = self.from.as_deref().unwrap_or_default();
        if from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(invalid(
                "from",
                format!("must be an address like \"Hearth <noreply@example.org>\", got {from:?}"),
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(invalid(
                "password",
                "user and password are set together or not at all".into(),
            ));
        }
        match self.base_url.as_deref().or(client_base_url) {
            None => Err(invalid(
                "base_url",
                "required for the links in mails (or set well_known.client_base_url)".into(),
            )),
            Some(url) if !is_http_url(url) => Err(invalid(
                "base_url",
                format!("must be an http:// or https:// URL, got {url:?}"),
            )),
            Some(_) => Ok(()),
        }
    }

    /// The base URL for links (validation guarantees one when e-mail is on).
    pub fn link_base(&self, client_base_url: Option<&str>) -> String {
        self.base_url
            .as_deref()
            .or(client_base_url)
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_owned()
    }
}

/// An absolute http(s) URL with a host, in ASCII (it may go into a `Location` header), with
/// no whitespace or control characters.
pub fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let host = rest.map_or("", |r| r.split(['/', '?', '#']).next().unwrap_or_default());
    !host.is_empty()
        && !host.contains('@')
        && url.len() <= 2048
        && url.is_ascii()
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}
