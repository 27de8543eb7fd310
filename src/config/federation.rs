//! The `[federation]` section: how this server talks to other Matrix servers.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::ConfigError;

/// `[federation]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Federation {
    /// Notary servers asked for a server's signing keys when that server cannot give them
    /// itself (it is down, or no longer publishes the key an old event was signed with).
    /// Empty (the default): keys are only fetched from the servers themselves.
    pub trusted_key_servers: Vec<TrustedKeyServer>,
    /// Join remote rooms with partial state (`omit_members`): the join returns without most
    /// member events, which are fetched in the background. Default true.
    pub partial_state_joins: bool,
    /// Seconds to wait before fetching the full state of a room joined with partial state
    /// (default 0): a small server may let its user's first requests in the room go first.
    /// Rooms still partial at a restart are resynced after the same wait.
    pub partial_state_resync_delay_secs: u64,
}

impl Default for Federation {
    fn default() -> Self {
        Self {
            trusted_key_servers: Vec::new(),
            partial_state_joins: true,
            partial_state_resync_delay_secs: 0,
        }
    }
}

/// One notary (`{ server_name = "…", verify_keys = { "ed25519:…" = "…" } }`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKeyServer {
    pub server_name: String,
    /// The notary's own keys (key id → unpadded base64). When set, only these verify its
    /// answers; when empty, its keys are fetched from it directly at first use.
    #[serde(default)]
    pub verify_keys: BTreeMap<String, String>,
}

impl Federation {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (i, notary) in self.trusted_key_servers.iter().enumerate() {
            let err = |field: &str, message: String| ConfigError::Invalid {
                key: format!("federation.trusted_key_servers[{i}].{field}"),
                message,
            };
            if ruma::ServerName::parse(&notary.server_name).is_err() {
                return Err(err(
                    "server_name",
                    format!("not a Matrix server name: {:?}", notary.server_name),
                ));
            }
            let repeated = self.trusted_key_servers[..i]
                .iter()
                .any(|other| other.server_name == notary.server_name);
            if repeated {
                return Err(err(
                    "server_name",
                    format!("{} is listed twice", notary.server_name),
                ));
            }
            for (id, key) in &notary.verify_keys {
                let valid_id = id.strip_prefix("ed25519:").is_some_and(|v| {
                    !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                });
                if !valid_id {
                    return Err(err(
                        "verify_keys",
                        format!("{id:?} is not an ed25519 key id (\"ed25519:<version>\")"),
                    ));
                }
                if parse_public_key(key).is_none() {
                    return Err(err(
                        "verify_keys",
                        format!("the key of {id} is not an unpadded base64 ed25519 public key"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// An ed25519 public key in unpadded (or padded) standard base64.
pub fn parse_public_key(key: &str) -> Option<ruma::serde::Base64> {
    let parsed = ruma::serde::Base64::<ruma::serde::base64::Standard, [u8; 32]>::parse(key).ok()?;
    Some(ruma::serde::Base64::new(parsed.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notary(name: &str, keys: &[(&str, &str)]) -> TrustedKeyServer {
        TrustedKeyServer {
            server_name: name.into(),
            verify_keys: keys
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    #[test]
    fn notaries_are_validated() {
        const KEY: &str = "Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw";
        let ok = Federation {
            trusted_key_servers: vec![
                notary("matrix.org", &[("ed25519:auto", KEY)]),
                notary("127.0.0.1:8448", &[]),
            ],
            ..Federation::default()
        };
        ok.validate().unwrap();
        for bad in [
            notary("not a name", &[]),
            notary("matrix.org", &[("auto", KEY)]),
            notary("matrix.org", &[("ed25519:auto", "short")]),
        ] {
            let config = Federation {
                trusted_key_servers: vec![bad],
                ..Federation::default()
            };
            assert!(config.validate().is_err());
        }
        // The commented example of examples/hearth.toml, uncommented.
        let example: Federation = toml::from_str(
            r#"trusted_key_servers = [
  { server_name = "matrix.org", verify_keys = { "ed25519:auto" = "Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw" } },
]"#,
        )
        .unwrap();
        example.validate().unwrap();
        assert_eq!(example.trusted_key_servers[0].verify_keys.len(), 1);
        let twice = Federation {
            trusted_key_servers: vec![notary("a.org", &[]), notary("a.org", &[])],
            ..Federation::default()
        };
        assert!(twice.validate().is_err());
    }
}
