//! Password hashing and checking, with the CPU it may use bounded.
//!
//! bcrypt is deliberately slow (hundreds of milliseconds at cost 12 on a small board), so:
//! - at most `concurrency` hashes run at once (default: cores − 1, at least 1); a request
//!   that finds every slot busy fails at once with 429 `M_LIMIT_EXCEEDED` instead of queueing,
//!   so a burst of logins cannot occupy every core or pile up work;
//! - each account has an in-memory failed-attempt record per client address: after
//!   [`FREE_FAILURES`] consecutive failures, further attempts (right or wrong) from that
//!   address are refused with 429 and `retry_after_ms` for an exponentially growing delay,
//!   without running bcrypt. Per address, because a record per account alone would let
//!   anybody who knows a user id keep its owner locked out for good (one wrong attempt per
//!   delay); guessing from many addresses is what the per-IP rate limiter bounds. An IPv6
//!   client is its /64 here (see `ratelimit::network`), as one host can send from all of it;
//! - an unknown or password-less account is checked against a dummy hash of the configured
//!   cost, so a login costs the same whether or not the account exists.
//!
//! Stored format (see `schema/accounts.md`): `sha256:` followed by the bcrypt hash of the
//! unpadded standard base64 of the password's SHA-256. bcrypt only reads 72 bytes of its
//! input; pre-hashing makes every byte of a longer password count. Hashes written before this
//! scheme (a bare `$2b$…` bcrypt of the password) still verify, and are rewritten in the new
//! format on the next successful check.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::Engine as _;
use sha2::Digest as _;
use tokio::sync::Semaphore;

use crate::error::{Error, Result};

/// Marks hashes of the pre-hashed scheme.
const PREHASH_PREFIX: &str = "sha256:";
/// Consecutive failures of an account that are answered without delay.
pub const FREE_FAILURES: u32 = 3;
/// Delay after the first failure beyond the free ones; doubles with each further failure.
const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(5 * 60);
/// A failure record untouched this long is forgotten (the count starts over).
const FORGET_AFTER: Duration = Duration::from_secs(30 * 60);
/// Bound on failure records; beyond it the stalest are dropped.
const MAX_RECORDS: usize = 10_000;
/// What a caller is told to wait when every hashing slot is busy.
const BUSY_RETRY_MS: u64 = 1_000;

struct Failures {
    count: u32,
    /// Attempts before this instant are refused.
    blocked_until: Instant,
    last: Instant,
}

/// Whether a password matched its stored hash.
#[derive(Debug, PartialEq, Eq)]
pub enum Verified {
    No,
    Yes,
    /// It matched a hash in the legacy format, which should be rewritten.
    YesLegacy,
}

pub struct Passwords {
    cost: u32,
    slots: Arc<Semaphore>,
    /// A well-formed bcrypt hash of the configured cost that no password matches.
    dummy: String,
    /// (account, client network) → consecutive failed attempts (protects only this map).
    failures: Mutex<HashMap<(String, IpAddr), Failures>>,
}

/// Refuses passwords no account may have (spec: `M_WEAK_PASSWORD`).
pub fn check_acceptable(password: &str) -> Result<()> {
    if password.is_empty() {
        return Err(Error::weak_password("The password must not be empty"));
    }
    Ok(())
}

/// What bcrypt is given for `password`: 44 ASCII bytes, whatever the password's length.
fn prehash(password: &str) -> String {
    let digest = sha2::Sha256::digest(password.as_bytes());
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
}

/// Hashing slots by default: all cores but one, so the server stays responsive.
fn default_concurrency() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1))
        .unwrap_or(1)
        .max(1)
}

impl Passwords {
    /// `concurrency` 0 means the default (cores − 1, at least 1).
    pub fn new(cost: u32, concurrency: usize) -> Self {
        let slots = if concurrency == 0 {
            default_concurrency()
        } else {
            concurrency
        };
        // bcrypt's base64 alphabet starts with '.', so all dots decode to a zero salt and a
        // zero hash: valid input that costs a full bcrypt run and never matches.
        let dummy = format!("$2b${cost:02}${}", ".".repeat(53));
        Self {
            cost,
            slots: Arc::new(Semaphore::new(slots)),
            dummy,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `work` on the blocking pool in one of the hashing slots, or fails with 429 at once
    /// if none is free.
    async fn in_slot<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let permit = self.slots.clone().try_acquire_owned().map_err(|_| {
            log::debug!("password hashing slots all busy");
            Error::limit_exceeded(BUSY_RETRY_MS)
        })?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|_| Error::unknown("password hashing task failed"))
    }

    /// The stored form of a new password.
    pub async fn hash(&self, password: &str) -> Result<String> {
        check_acceptable(password)?;
        let (input, cost) = (prehash(password), self.cost);
        let hash = self
            .in_slot(move || bcrypt::hash(input, cost))
            .await?
            .map_err(|e| Error::unknown(format!("password hashing failed: {e}")))?;
        Ok(format!("{PREHASH_PREFIX}{hash}"))
    }

    /// Checks `password` against `stored` (`None`: no such account, or no password) as an
    /// attempt on `account` from `client`, which is subject to the failed-attempt backoff.
    pub async fn verify(
        &self,
        account: &str,
        client: IpAddr,
        password: &str,
        stored: Option<String>,
    ) -> Result<Verified> {
        let key = (account.to_owned(), super::ratelimit::network(client));
        self.check_backoff(&key)?;
        let hash = stored.unwrap_or_else(|| self.dummy.clone());
        let password = password.to_owned();
        let verified = self
            .in_slot(move || match hash.strip_prefix(PREHASH_PREFIX) {
                Some(hash) => match bcrypt::verify(prehash(&password), hash) {
                    Ok(true) => Verified::Yes,
                    _ => Verified::No,
                },
                None => match bcrypt::verify(password, &hash) {
                    Ok(true) => Verified::YesLegacy,
                    _ => Verified::No,
                },
            })
            .await?;
        self.record(key, verified != Verified::No);
        Ok(verified)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, IpAddr), Failures>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// 429 with the remaining wait if `key` is in its backoff period.
    fn check_backoff(&self, key: &(String, IpAddr)) -> Result<()> {
        let now = Instant::now();
        match self.lock().get(key) {
            Some(f) if f.blocked_until > now => {
                let wait = f.blocked_until - now;
                Err(Error::limit_exceeded(wait.as_millis().max(1) as u64))
            }
            _ => Ok(()),
        }
    }

    fn record(&self, key: (String, IpAddr), success: bool) {
        let mut failures = self.lock();
        if success {
            failures.remove(&key);
            return;
        }
        let now = Instant::now();
        if failures.len() >= MAX_RECORDS && !failures.contains_key(&key) {
            failures.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
            if failures.len() >= MAX_RECORDS {
                let stalest = failures
                    .iter()
                    .min_by_key(|(_, f)| f.last)
                    .map(|(k, _)| k.clone());
                if let Some(stalest) = stalest {
                    failures.remove(&stalest);
                }
            }
        }
        let entry = failures.entry(key).or_insert(Failures {
            count: 0,
            blocked_until: now,
            last: now,
        });
        if now.duration_since(entry.last) >= FORGET_AFTER {
            entry.count = 0;
        }
        entry.count += 1;
        entry.last = now;
        entry.blocked_until = now + backoff_delay(entry.count);
    }
}

/// How long an account is refused after its `count`-th consecutive failure.
fn backoff_delay(count: u32) -> Duration {
    if count < FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (count - FREE_FAILURES).min(16);
    (FIRST_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prehashed_legacy_and_dummy_hashes() {
        let passwords = Passwords::new(4, 1);
        let long = "x".repeat(72);
        let hash = passwords.hash(&format!("{long}A")).await.unwrap();
        assert!(hash.starts_with(PREHASH_PREFIX));
        let verify = |pw: String, stored: Option<String>| {
            let passwords = &passwords;
            async move {
                let client = std::net::Ipv4Addr::LOCALHOST.into();
                passwords.verify("@a:x", client, &pw, stored).await.unwrap()
            }
        };
        assert_eq!(
            verify(format!("{long}A"), Some(hash.clone())).await,
            Verified::Yes
        );
        assert_eq!(verify(format!("{long}B"), Some(hash)).await, Verified::No);
        // A hash from before pre-hashing still verifies, and is reported for rewriting.
        let legacy = bcrypt::hash("old secret", 4).unwrap();
        assert_eq!(
            verify("old secret".into(), Some(legacy.clone())).await,
            Verified::YesLegacy
        );
        assert_eq!(verify("other".into(), Some(legacy)).await, Verified::No);
        // The dummy hash is valid bcrypt of the configured cost that matches nothing.
        assert_eq!(bcrypt::verify("", &passwords.dummy).ok(), Some(false));
        assert_eq!(verify(String::new(), None).await, Verified::No);
        assert!(passwords.hash("").await.is_err());
    }

    #[test]
    fn backoff_grows_exponentially_to_a_cap() {
        assert_eq!(backoff_delay(1), Duration::ZERO);
        assert_eq!(backoff_delay(FREE_FAILURES), FIRST_DELAY);
        assert_eq!(backoff_delay(FREE_FAILURES + 2), FIRST_DELAY * 4);
        assert_eq!(backoff_delay(1000), MAX_DELAY);
    }
}
