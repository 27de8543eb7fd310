//! The `[turn]` section (TURN relays offered to VoIP clients) and the support contacts of
//! `[well_known]`, with their validation.

use serde::Deserialize;

use super::{empty_as_none, ConfigError};

/// Default lifetime of TURN credentials, in seconds (a day, as coturn's examples use).
pub const DEFAULT_TURN_TTL: u64 = 86_400;

/// TURN for VoIP calls (`[turn]`), served at `GET /voip/turnServer`. Empty `uris`: no TURN
/// server is offered. Either `shared_secret` (coturn's `use-auth-secret`: short-lived
/// credentials derived per user) or a static `username`/`password`, never both.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Turn {
    /// `turn:` / `turns:` URIs handed to clients.
    pub uris: Vec<String>,
    /// The secret shared with the TURN server (coturn `static-auth-secret`).
    #[serde(deserialize_with = "empty_as_none")]
    pub shared_secret: Option<String>,
    /// Static credentials (coturn `user=` / `lt-cred-mech`), given to every user.
    #[serde(deserialize_with = "empty_as_none")]
    pub username: Option<String>,
    #[serde(deserialize_with = "empty_as_none")]
    pub password: Option<String>,
    /// How long clients may use the credentials, in seconds (>= 60). With `shared_secret` it
    /// is also when the derived credentials expire at the TURN server.
    pub ttl: u64,
}

impl Default for Turn {
    fn default() -> Self {
        Turn {
            uris: Vec::new(),
            shared_secret: None,
            username: None,
            password: None,
            ttl: DEFAULT_TURN_TTL,
        }
    }
}

impl Turn {
    /// Whether a TURN server is offered at all.
    pub fn is_configured(&self) -> bool {
        !self.uris.is_empty()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let err = |key: &str, message: &str| ConfigError::Invalid {
            key: format!("turn.{key}"),
            message: message.to_owned(),
        };
        for (i, uri) in self.uris.iter().enumerate() {
            let scheme_ok = uri.starts_with("turn:") || uri.starts_with("turns:");
            if !scheme_ok || uri.contains(char::is_whitespace) {
                return Err(err(
                    &format!("uris[{i}]"),
                    &format!("must be a turn: or turns: URI, got {uri:?}"),
                ));
            }
        }
        let statics = (self.username.is_some(), self.password.is_some());
        if statics.0 != statics.1 {
            return Err(err("username", "username and password go together"));
        }
        let has_secret = self.shared_secret.is_some();
        if has_secret && statics.0 {
            return Err(err(
                "shared_secret",
                "set either shared_secret or username/password, not both",
            ));
        }
        if self.is_configured() && !has_secret && !statics.0 {
            return Err(err(
                "uris",
                "needs shared_secret (coturn use-auth-secret) or username and password",
            ));
        }
        if !self.is_configured() && (has_secret || statics.0) {
            return Err(err("uris", "credentials are set but no TURN URIs"));
        }
        if self.ttl < 60 {
            return Err(err("ttl", "must be at least 60 seconds"));
        }
        Ok(())
    }
}

/// One way to reach the server's administrators (`[[well_known.contacts]]`), served at
/// `/.well-known/matrix/support`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupportContact {
    /// `m.role.admin`, `m.role.security`, or a namespaced role of your own.
    pub role: String,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub matrix_id: Option<String>,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub email_address: Option<String>,
}

/// Validates `well_known.support_page` and `well_known.contacts`.
pub(super) fn validate_support(
    support_page: Option<&str>,
    contacts: &[SupportContact],
) -> Result<(), ConfigError> {
    let err = |key: String, message: String| ConfigError::Invalid { key, message };
    if let Some(page) = support_page {
        let ok = (page.starts_with("https://") || page.starts_with("http://"))
            && !page.contains(char::is_whitespace);
        if !ok {
            return Err(err(
                "well_known.support_page".into(),
                format!("must be an http:// or https:// URL, got {page:?}"),
            ));
        }
    }
    for (i, c) in contacts.iter().enumerate() {
        let key = |field: &str| format!("well_known.contacts[{i}].{field}");
        if c.role.trim().is_empty() {
            return Err(err(
                key("role"),
                "must be set, e.g. \"m.role.admin\"".into(),
            ));
        }
        if c.matrix_id.is_none() && c.email_address.is_none() {
            return Err(err(
                key("matrix_id"),
                "a contact needs matrix_id or email_address".into(),
            ));
        }
        if let Some(id) = &c.matrix_id {
            if ruma::UserId::parse(id.as_str()).is_err() {
                return Err(err(
                    key("matrix_id"),
                    format!("not a Matrix user id: {id:?}"),
                ));
            }
        }
        if let Some(email) = &c.email_address {
            let ok = email
                .split_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
                && !email.contains(char::is_whitespace);
            if !ok {
                return Err(err(
                    key("email_address"),
                    format!("not an e-mail address: {email:?}"),
                ));
            }
        }
    }
    Ok(())
}
