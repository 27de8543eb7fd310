//! TURN credentials for VoIP clients (spec: client-server API, Voice over IP, "Server
//! behaviour").
//!
//! With a shared secret the credentials follow the TURN REST API convention that coturn
//! implements as `use-auth-secret`: the username is `<expiry unix seconds>:<user id>` and the
//! password is base64(HMAC-SHA1(secret, username)). The TURN server recomputes the password
//! from the username and refuses it after the expiry, so nothing is stored here and a leaked
//! credential stops working by itself.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ruma::UserId;
use sha1::{Digest, Sha1};

use crate::config::Turn;

/// What `GET /voip/turnServer` hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnCredentials {
    pub username: String,
    pub password: String,
    pub uris: Vec<String>,
    pub ttl: Duration,
}

/// The credentials for `user_id` at time `now`, or `None` when no TURN server is configured.
pub fn credentials(turn: &Turn, user_id: &UserId, now: SystemTime) -> Option<TurnCredentials> {
    if !turn.is_configured() {
        return None;
    }
    let (username, password) = match (&turn.shared_secret, &turn.username, &turn.password) {
        (Some(secret), _, _) => {
            let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            let username = format!("{}:{user_id}", now.saturating_add(turn.ttl));
            let mac = hmac_sha1(secret.as_bytes(), username.as_bytes());
            let password = base64::engine::general_purpose::STANDARD.encode(mac);
            (username, password)
        }
        (None, Some(username), Some(password)) => (username.clone(), password.clone()),
        // Validation refuses URIs without credentials.
        _ => return None,
    };
    Some(TurnCredentials {
        username,
        password,
        uris: turn.uris.clone(),
        ttl: Duration::from_secs(turn.ttl),
    })
}

/// SHA-1's block size in bytes.
const BLOCK: usize = 64;

/// HMAC-SHA1 (RFC 2104). SHA-1 is what coturn's `use-auth-secret` uses; as a MAC it is not
/// affected by SHA-1's collision weakness.
pub fn hmac_sha1(key: &[u8], message: &[u8]) -> [u8; 20] {
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..20].copy_from_slice(&Sha1::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha1::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha1::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::{credentials, hmac_sha1};
    use crate::config::Turn;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// RFC 2202 test cases 1, 2 and 6 (a key longer than the block).
    #[test]
    fn rfc2202_vectors() {
        assert_eq!(
            hex(&hmac_sha1(&[0x0b; 20], b"Hi There")),
            "b617318655057264e28bc0b6fb378c8ef146be00"
        );
        assert_eq!(
            hex(&hmac_sha1(b"Jefe", b"what do ya want for nothing?")),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        assert_eq!(
            hex(&hmac_sha1(
                &[0xaa; 80],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "aa4ae5e15272d00e95705637ce8a3b55ed402112"
        );
    }

    /// The password coturn expects, computed independently with
    /// `printf %s '1700000000:@alice:localhost' | openssl dgst -sha1 -hmac hearth-turn-secret -binary | base64`.
    #[test]
    fn shared_secret_credentials_match_openssl() {
        let turn = Turn {
            uris: vec!["turn:turn.example.org:3478?transport=udp".into()],
            shared_secret: Some("hearth-turn-secret".into()),
            ttl: 3600,
            ..Turn::default()
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000 - 3600);
        let user = ruma::user_id!("@alice:localhost");
        let creds = credentials(&turn, user, now).unwrap();
        assert_eq!(creds.username, "1700000000:@alice:localhost");
        assert_eq!(creds.password, "2anooOu3t8akvWfp6k30ZWf9e2M=");
        assert_eq!(creds.ttl, Duration::from_secs(3600));
        assert_eq!(creds.uris, turn.uris);
        assert!(credentials(&Turn::default(), user, now).is_none());
    }
}
