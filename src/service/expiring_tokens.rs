//! Short-lived bearer tokens that are not access tokens: OpenID tokens (spec: OpenID, exchanged
//! by third parties over federation for the user id) and login tokens (spec: `m.login.token`,
//! exchanged once at `/login` for a new device).
//!
//! Each kind has its own tables, so a token of one kind is never found when another kind (or
//! an access token) is looked up. As with access tokens, only the SHA-256 of a token is
//! stored. An expiry index (`expires_ms ‖ hash`) lets the sweep delete expired tokens without
//! walking the whole table; a token is refused from its expiry on, whether swept yet or not.

use std::{
    marker::PhantomData,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use base64::Engine as _;
use rand::RngExt;
use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::sync::watch;

use super::users::now_ms;
use crate::{
    error::Result,
    store::{Batch, CommitError, Record, Store, Table},
    table,
};

table!(
    /// `sha256(OpenID token) → ExpiringToken`.
    pub OpenIdTokensTable: "openid_tokens", String => ExpiringToken
);
table!(
    /// `(expires_ms, sha256(OpenID token)) → user_id`: one row per `openid_tokens` row.
    pub OpenIdExpiryTable: "openid_token_expiry", (u64, String) => String
);
table!(
    /// `sha256(login token) → ExpiringToken`; a row is deleted by the login that spends it.
    pub LoginTokensTable: "login_tokens", String => ExpiringToken
);
table!(
    /// `(expires_ms, sha256(login token)) → user_id`: one row per `login_tokens` row.
    pub LoginExpiryTable: "login_token_expiry", (u64, String) => String
);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExpiringToken {
    pub user_id: String,
    pub expires_ms: u64,
}
impl Record for ExpiringToken {}

/// A kind of expiring token: its tables, the prefix of its tokens and its lifetime.
pub trait TokenKind: Send + Sync + 'static {
    type Tokens: Table<Key = String, Value = ExpiringToken>;
    type Expiry: Table<Key = (u64, String), Value = String>;
    const PREFIX: &'static str;
    const LIFETIME: Duration;
}

pub struct OpenIdKind;
impl TokenKind for OpenIdKind {
    type Tokens = OpenIdTokensTable;
    type Expiry = OpenIdExpiryTable;
    const PREFIX: &'static str = "hoi_";
    /// What the spec's example shows; the token only proves who the user is.
    const LIFETIME: Duration = Duration::from_secs(3600);
}

pub struct LoginKind;
impl TokenKind for LoginKind {
    type Tokens = LoginTokensTable;
    type Expiry = LoginExpiryTable;
    const PREFIX: &'static str = "hlt_";
    /// The spec's recommended default (`expires_in_ms: 120000`).
    const LIFETIME: Duration = Duration::from_secs(120);
}

pub type OpenIdTokens = ExpiringTokens<OpenIdKind>;
pub type LoginTokens = ExpiringTokens<LoginKind>;

/// A token found valid, for a caller that spends it ([`ExpiringTokens::stage_spend`]).
#[derive(Debug, Clone)]
pub struct Found {
    pub user_id: OwnedUserId,
    hash: String,
    record: ExpiringToken,
}

pub struct ExpiringTokens<K: TokenKind> {
    store: Store,
    /// Lifetime of new tokens in ms; `K::LIFETIME` except in tests ([`Self::set_lifetime`]).
    lifetime_ms: AtomicU64,
    _kind: PhantomData<K>,
}

/// Rows deleted per sweep batch.
const SWEEP_PAGE: usize = 500;

/// How a token is stored (here and for access and refresh tokens, `sessions.rs`): the
/// lowercase hex SHA-256 of its text, so the store never holds a usable token.
pub(crate) fn token_hash(token: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = sha2::Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(2 * digest.len());
    for byte in digest {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

impl<K: TokenKind> ExpiringTokens<K> {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            lifetime_ms: AtomicU64::new(K::LIFETIME.as_millis() as u64),
            _kind: PhantomData,
        }
    }

    /// Changes the lifetime of tokens issued from now on. Only for tests (expiry without
    /// waiting an hour); not a setting.
    #[doc(hidden)]
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.lifetime_ms
            .store(lifetime.as_millis() as u64, Ordering::Relaxed);
    }

    /// Issues a new token for `user_id`, durable before it is returned; the token and how
    /// long it is valid.
    pub async fn issue(&self, user_id: &UserId) -> Result<(String, Duration)> {
        let mut bytes = [0u8; 32];
        rand::rng().fill(&mut bytes[..]);
        let token = format!(
            "{}{}",
            K::PREFIX,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        let lifetime = self.lifetime_ms.load(Ordering::Relaxed);
        let record = ExpiringToken {
            user_id: user_id.to_string(),
            expires_ms: now_ms() + lifetime,
        };
        let hash = token_hash(&token);
        let mut batch = Batch::new();
        batch
            .expect_absent::<K::Tokens>(&hash)
            .put::<K::Tokens>(&hash, &record)
            .put::<K::Expiry>(&(record.expires_ms, hash.clone()), &record.user_id);
        self.store.commit(batch).await?;
        Ok((token, Duration::from_millis(lifetime)))
    }

    /// The unexpired token `token`, if there is one.
    pub fn find(&self, token: &str) -> Result<Option<Found>> {
        let hash = token_hash(token);
        let Some(record) = self.store.get::<K::Tokens>(&hash)? else {
            return Ok(None);
        };
        if record.expires_ms <= now_ms() {
            return Ok(None);
        }
        let Ok(user_id) = UserId::parse(&record.user_id) else {
            return Ok(None);
        };
        Ok(Some(Found {
            user_id,
            hash,
            record,
        }))
    }

    /// Stages spending `found`: the batch deletes the token and fails with a conflict if the
    /// token was spent (or swept) meanwhile, so of two concurrent uses at most one commits.
    pub fn stage_spend(&self, batch: &mut Batch, found: &Found) {
        batch
            .expect_value::<K::Tokens>(&found.hash, Some(&found.record))
            .delete::<K::Tokens>(&found.hash)
            .delete::<K::Expiry>(&(found.record.expires_ms, found.hash.clone()));
    }

    /// Deletes every token expired at `now_ms`; how many. Each page is one batch, guarded on
    /// the token rows so a page never deletes a row it did not read.
    pub async fn sweep(&self, now_ms: u64) -> Result<usize> {
        let mut deleted = 0;
        let mut conflicts = 0;
        loop {
            let rows = self.store.range::<K::Expiry>(None, false, SWEEP_PAGE)?;
            let expired: Vec<_> = rows
                .into_iter()
                .filter(|((t, _), _)| *t <= now_ms)
                .collect();
            if expired.is_empty() {
                return Ok(deleted);
            }
            let mut batch = Batch::new();
            for ((expires_ms, hash), _) in &expired {
                let token = self.store.get::<K::Tokens>(hash)?;
                batch
                    .expect_value::<K::Tokens>(hash, token.as_ref())
                    .delete::<K::Tokens>(hash)
                    .delete::<K::Expiry>(&(*expires_ms, hash.clone()));
            }
            match self.store.commit(batch).await {
                Ok(()) => deleted += expired.len(),
                // A token of the page was spent meanwhile: read the page again.
                Err(CommitError::Conflict) if conflicts < 8 => conflicts += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// How often expired tokens are swept.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10 * 60);

/// Sweeps both kinds at start and then every [`SWEEP_EVERY`] until `shutdown`.
pub async fn run_sweeps(
    openid: std::sync::Arc<OpenIdTokens>,
    login: std::sync::Arc<LoginTokens>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let now = now_ms();
        for (kind, swept) in [
            ("OpenID", openid.sweep(now).await),
            ("login", login.sweep(now).await),
        ] {
            match swept {
                Ok(0) => {}
                Ok(n) => log::debug!("removed {n} expired {kind} tokens"),
                Err(e) => log::warn!("cannot sweep expired {kind} tokens: {e}"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_hashes_are_lowercase_hex_sha256() {
        assert_eq!(
            super::token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
