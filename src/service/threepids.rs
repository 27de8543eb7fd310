//! Third-party identifiers (3PIDs) of accounts, and the validation sessions that prove
//! ownership of an e-mail address (spec: Adding Account Administrative Contact Information,
//! `m.login.email.identity`). Only the `email` medium is supported; Hearth sends the mails
//! itself and talks to no identity server.
//!
//! A validation session is made by a `requestToken` call, validated by the token mailed to
//! the address (a link to `/_hearth/email/validate`, or `submit_url`), and then spent once by
//! the operation it was made for: registering, adding the address, or resetting a password.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::Engine as _;
use http::StatusCode;
use rand::RngExt;
use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::{mailer::Mailer, users::now_ms};
use crate::{
    error::{Error, Result},
    store::{Batch, CommitError, Record, Store},
    table,
};

table!(
    /// `(medium, address) → ThreepidOwner`: who has the address. At most one account per
    /// address; mirrored by `user_threepids`.
    pub ThreepidOwners: "threepid_owners", (String, String) => ThreepidOwner
);
table!(
    /// `(user, medium, address) → ThreepidTimes`: the addresses of a user (`GET /account/3pid`).
    pub UserThreepids: "user_threepids", (String, String, String) => ThreepidTimes
);
table!(
    /// `sid → ValidationSession`. The sid starts with the creation time (hex), so the table
    /// is in creation order and the expired sessions are at its start.
    pub ValidationSessions: "threepid_sessions", String => ValidationSession
);
table!(
    /// `(client_secret, purpose, address) → sid`: the session a repeated `requestToken`
    /// (same `send_attempt`) answers with instead of sending another mail.
    pub ValidationKeys: "threepid_session_keys", (String, String, String) => String
);

pub const EMAIL: &str = "email";
/// A token is valid this long after it was sent, and a validated session this long after it
/// was validated.
pub const SESSION_TTL: Duration = Duration::from_secs(60 * 60);
/// Mails to one address within [`MAIL_WINDOW`]; more are refused with 429.
const MAILS_PER_WINDOW: usize = 5;
const MAIL_WINDOW: Duration = Duration::from_secs(60 * 60);
/// Expired sessions removed per `requestToken` (bounds the work of one request).
const SWEEP_BATCH: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThreepidOwner {
    pub user_id: OwnedUserId,
    pub added_ms: u64,
    pub validated_ms: u64,
}
impl Record for ThreepidOwner {}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThreepidTimes {
    pub added_ms: u64,
    pub validated_ms: u64,
}
impl Record for ThreepidTimes {}

/// What a validation session may be spent on (each `requestToken` endpoint makes one kind).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Purpose {
    Register,
    Add,
    Password,
}

impl Purpose {
    fn key(self) -> &'static str {
        match self {
            Purpose::Register => "register",
            Purpose::Add => "add",
            Purpose::Password => "password",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ValidationSession {
    pub medium: String,
    pub address: String,
    pub client_secret: String,
    pub purpose: Purpose,
    /// SHA-256 of the mailed token (the token itself is only in the mail).
    pub token_sha256: Vec<u8>,
    pub send_attempt: u64,
    pub next_link: Option<String>,
    pub created_ms: u64,
    /// Token expiry before validation; end of usability after it.
    pub expires_ms: u64,
    pub validated_ms: Option<u64>,
}
impl Record for ValidationSession {}

/// A `requestToken` call.
pub struct TokenRequest<'a> {
    pub purpose: Purpose,
    pub client_secret: &'a str,
    pub email: &'a str,
    pub send_attempt: u64,
    pub next_link: Option<&'a str>,
}

/// The outcome of [`Threepids::request_token`].
pub struct NewSession {
    pub sid: String,
    /// The token to mail to the address; `None` when an earlier attempt's session is answered
    /// again (no mail to send).
    pub token: Option<String>,
    pub address: String,
}

pub struct Threepids {
    store: Store,
    /// address → send times within the window. Guards only the map.
    mails: Mutex<HashMap<String, VecDeque<Instant>>>,
}

fn threepid_error(status: StatusCode, errcode: &'static str, message: &str) -> Error {
    Error::new(status, errcode, message)
}

pub fn medium_not_supported(what: &str) -> Error {
    threepid_error(
        StatusCode::BAD_REQUEST,
        "M_THREEPID_MEDIUM_NOT_SUPPORTED",
        &format!("This server does not support {what}"),
    )
}

fn auth_failed(message: &str) -> Error {
    threepid_error(StatusCode::BAD_REQUEST, "M_THREEPID_AUTH_FAILED", message)
}

/// The spec's grammar for `client_secret` and `sid`: 1-255 of `[0-9a-zA-Z.=_-]`.
pub fn is_valid_secret(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".=_-".contains(&b))
}

/// The canonical form of an e-mail address (lower case, trimmed), or `M_INVALID_PARAM`.
pub fn canonical_email(email: &str) -> Result<String> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.parse::<lettre::Address>().is_ok()
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if !valid {
        return Err(Error::invalid_param("Not a valid e-mail address"));
    }
    Ok(email)
}

fn sha256(token: &str) -> Vec<u8> {
    sha2::Sha256::digest(token.as_bytes()).to_vec()
}

fn random_token() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..16)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn new_sid(now: u64) -> String {
    let mut bytes = [0u8; 12];
    rand::rng().fill(&mut bytes[..]);
    let random = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    format!("{now:012x}{random}")
}

impl Threepids {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            mails: Mutex::new(HashMap::new()),
        }
    }

    /// The account that has `address`.
    pub fn owner(&self, medium: &str, address: &str) -> Result<Option<OwnedUserId>> {
        let key = (medium.to_owned(), address.to_owned());
        Ok(self
            .store
            .get::<ThreepidOwners>(&key)?
            .map(|owner| owner.user_id))
    }

    /// The user's 3PIDs: `(medium, address, times)`, by medium and address.
    pub fn list(&self, user_id: &UserId) -> Result<Vec<(String, String, ThreepidTimes)>> {
        let rows = self
            .store
            .scan_prefix::<UserThreepids, _>(&user_id.to_string(), usize::MAX)?;
        Ok(rows
            .into_iter()
            .map(|((_, medium, address), times)| (medium, address, times))
            .collect())
    }

    /// Starts (or, for a repeated `send_attempt`, answers again) a validation session.
    /// Checks the request and whether the address may be used for `purpose`; the caller sends
    /// the returned mail (then [`Threepids::forget_session`] if sending failed).
    pub async fn request_token(&self, request: TokenRequest<'_>) -> Result<NewSession> {
        if !is_valid_secret(request.client_secret) {
            return Err(Error::invalid_param(
                "client_secret must be 1-255 characters of 0-9 a-z A-Z . = _ -",
            ));
        }
        let address = canonical_email(request.email)?;
        if let Some(next_link) = request.next_link {
            if !crate::config::is_http_url(next_link) {
                return Err(Error::invalid_param(
                    "next_link must be an http:// or https:// URL",
                ));
            }
        }
        let owner = self.owner(EMAIL, &address)?;
        match (request.purpose, owner) {
            (Purpose::Register | Purpose::Add, Some(_)) => {
                return Err(threepid_error(
                    StatusCode::BAD_REQUEST,
                    "M_THREEPID_IN_USE",
                    "This e-mail address is already in use",
                ))
            }
            (Purpose::Password, None) => {
                return Err(threepid_error(
                    StatusCode::BAD_REQUEST,
                    "M_THREEPID_NOT_FOUND",
                    "No account has this e-mail address",
                ))
            }
            _ => {}
        }
        self.sweep().await?;

        let now = now_ms();
        let key = (
            request.client_secret.to_owned(),
            request.purpose.key().to_owned(),
            address.clone(),
        );
        let existing = match self.store.get::<ValidationKeys>(&key)? {
            Some(sid) => self
                .store
                .get::<ValidationSessions>(&sid)?
                .filter(|s| s.expires_ms > now)
                .map(|s| (sid, s)),
            None => None,
        };
        if let Some((sid, session)) = &existing {
            if request.send_attempt <= session.send_attempt || session.validated_ms.is_some() {
                return Ok(NewSession {
                    sid: sid.clone(),
                    token: None,
                    address,
                });
            }
        }
        self.check_mail_rate(&address)?;

        let token = random_token();
        let sid = existing
            .as_ref()
            .map_or_else(|| new_sid(now), |(sid, _)| sid.clone());
        let session = ValidationSession {
            medium: EMAIL.to_owned(),
            address: address.clone(),
            client_secret: request.client_secret.to_owned(),
            purpose: request.purpose,
            token_sha256: sha256(&token),
            send_attempt: request.send_attempt,
            next_link: request.next_link.map(ToOwned::to_owned),
            created_ms: existing.as_ref().map_or(now, |(_, s)| s.created_ms),
            expires_ms: now + SESSION_TTL.as_millis() as u64,
            validated_ms: None,
        };
        let mut batch = Batch::new();
        batch
            .expect_value::<ValidationSessions>(&sid, existing.as_ref().map(|(_, s)| s))
            .put::<ValidationSessions>(&sid, &session)
            .put::<ValidationKeys>(&key, &sid);
        self.store.commit(batch).await.map_err(|e| match e {
            CommitError::Conflict => Error::new(
                StatusCode::CONFLICT,
                "M_UNKNOWN",
                "Another request for this address is in progress; try again",
            ),
            other => other.into(),
        })?;
        Ok(NewSession {
            sid,
            token: Some(token),
            address,
        })
    }

    /// [`Threepids::request_token`], then the mail with the validation link (under
    /// `link_base`, the server's public URL). Returns the sid.
    pub async fn request_and_send(
        &self,
        mailer: &Mailer,
        link_base: &str,
        request: TokenRequest<'_>,
    ) -> Result<String> {
        let (purpose, client_secret) = (request.purpose, request.client_secret.to_owned());
        let session = self.request_token(request).await?;
        let Some(token) = session.token else {
            return Ok(session.sid);
        };
        let (subject, body) =
            validation_mail(purpose, link_base, &session.sid, &client_secret, &token);
        if let Err(e) = mailer.send(&session.address, &subject, body).await {
            self.forget_session(&session.sid).await;
            return Err(e);
        }
        Ok(session.sid)
    }

    /// Removes a session whose mail could not be sent (best effort: it expires anyway).
    pub async fn forget_session(&self, sid: &str) {
        let Ok(Some(session)) = self.store.get::<ValidationSessions>(&sid.to_owned()) else {
            return;
        };
        let mut batch = Batch::new();
        if let Err(e) = self.stage_spend(&mut batch, sid, &session) {
            log::warn!("cannot remove validation session: {e}");
            return;
        }
        if let Err(e) = self.store.commit(batch).await {
            log::warn!("cannot remove validation session: {e}");
        }
    }

    /// Counts one mail to `address`, or refuses it with 429 past the per-address limit.
    fn check_mail_rate(&self, address: &str) -> Result<()> {
        let mut mails = self.mails.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        mails.retain(|_, times| {
            while times.front().is_some_and(|t| now - *t > MAIL_WINDOW) {
                times.pop_front();
            }
            !times.is_empty()
        });
        let times = mails.entry(address.to_owned()).or_default();
        if times.len() >= MAILS_PER_WINDOW {
            let oldest = times.front().copied().unwrap_or(now);
            let wait = MAIL_WINDOW.saturating_sub(now - oldest);
            return Err(Error::limit_exceeded(wait.as_millis() as u64));
        }
        times.push_back(now);
        Ok(())
    }

    /// Deletes a few sessions past their last possible use, oldest first.
    async fn sweep(&self) -> Result<()> {
        let now = now_ms();
        // A session can live `SESSION_TTL` after its last mail and again after validation;
        // resent mails restart it, so only `expires_ms` decides, checked row by row.
        let rows = self
            .store
            .range::<ValidationSessions>(None, false, SWEEP_BATCH)?;
        let mut batch = Batch::new();
        for (sid, session) in rows.iter().filter(|(_, s)| s.expires_ms <= now) {
            self.stage_spend(&mut batch, sid, session)?;
        }
        if !batch.is_empty() {
            match self.store.commit(batch).await {
                Ok(()) | Err(CommitError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Validates a session with the mailed token (the link, or `submit_url`). Returns the
    /// session's `next_link`. Validating an already validated session again succeeds.
    pub async fn submit_token(
        &self,
        sid: &str,
        client_secret: &str,
        token: &str,
    ) -> Result<Option<String>> {
        let unknown = || Error::invalid_param("Unknown validation session");
        if !is_valid_secret(sid) || !is_valid_secret(client_secret) {
            return Err(unknown());
        }
        let sid = sid.to_owned();
        let session = self
            .store
            .get::<ValidationSessions>(&sid)?
            .filter(|s| s.client_secret == client_secret)
            .ok_or_else(unknown)?;
        let now = now_ms();
        if session.expires_ms <= now {
            return Err(threepid_error(
                StatusCode::BAD_REQUEST,
                "M_SESSION_EXPIRED",
                "This validation link has expired; request a new one",
            ));
        }
        if session.validated_ms.is_some() {
            return Ok(session.next_link);
        }
        let given = sha256(token.trim());
        // Equal length digests; compared without an early exit.
        let matches = given.len() == session.token_sha256.len()
            && given
                .iter()
                .zip(&session.token_sha256)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !matches {
            return Err(threepid_error(
                StatusCode::BAD_REQUEST,
                "M_TOKEN_INCORRECT",
                "The validation token is incorrect",
            ));
        }
        let mut validated = session.clone();
        validated.validated_ms = Some(now);
        validated.expires_ms = now + SESSION_TTL.as_millis() as u64;
        let mut batch = Batch::new();
        batch
            .expect_value::<ValidationSessions>(&sid, Some(&session))
            .put::<ValidationSessions>(&sid, &validated);
        match self.store.commit(batch).await {
            Ok(()) => Ok(validated.next_link),
            // Validated (or resent) meanwhile: the caller may try the link again.
            Err(CommitError::Conflict) => Err(Error::new(
                StatusCode::CONFLICT,
                "M_UNKNOWN",
                "The session changed meanwhile; try again",
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// The validated, unexpired session `sid` (any purpose when `purpose` is `None`), or
    /// `M_THREEPID_AUTH_FAILED`.
    pub fn validated(
        &self,
        sid: &str,
        client_secret: &str,
        purpose: Option<Purpose>,
    ) -> Result<ValidationSession> {
        let session = self
            .store
            .get::<ValidationSessions>(&sid.to_owned())?
            .filter(|s| s.client_secret == client_secret)
            .ok_or_else(|| auth_failed("Unknown or already used validation session"))?;
        if session.expires_ms <= now_ms() {
            return Err(auth_failed("This validation session has expired"));
        }
        if session.validated_ms.is_none() {
            return Err(auth_failed(
                "The e-mail address has not been validated yet: follow the link in the mail",
            ));
        }
        if purpose.is_some_and(|p| p != session.purpose) {
            return Err(auth_failed(
                "This validation session was requested for another purpose",
            ));
        }
        Ok(session)
    }

    /// Stages the removal of a session, guarded so that it is spent only once: a second
    /// batch spending it conflicts. Its `threepid_session_keys` row goes with it unless that
    /// row already names a newer session (made after this one expired).
    pub fn stage_spend(
        &self,
        batch: &mut Batch,
        sid: &str,
        session: &ValidationSession,
    ) -> Result<()> {
        let sid = sid.to_owned();
        let key = (
            session.client_secret.clone(),
            session.purpose.key().to_owned(),
            session.address.clone(),
        );
        batch
            .expect_value::<ValidationSessions>(&sid, Some(session))
            .delete::<ValidationSessions>(&sid);
        if self.store.get::<ValidationKeys>(&key)?.as_ref() == Some(&sid) {
            batch
                .expect_value::<ValidationKeys>(&key, Some(&sid))
                .delete::<ValidationKeys>(&key);
        }
        Ok(())
    }

    /// Stages adding the validated address of `session` to `user_id` (conflicts if the
    /// address was taken meanwhile).
    pub fn stage_add(&self, batch: &mut Batch, user_id: &UserId, session: &ValidationSession) {
        let now = now_ms();
        let validated_ms = session.validated_ms.unwrap_or(now);
        let owner_key = (session.medium.clone(), session.address.clone());
        batch
            .expect_absent::<ThreepidOwners>(&owner_key)
            .put::<ThreepidOwners>(
                &owner_key,
                &ThreepidOwner {
                    user_id: user_id.to_owned(),
                    added_ms: now,
                    validated_ms,
                },
            )
            .put::<UserThreepids>(
                &(user_id.to_string(), owner_key.0, owner_key.1),
                &ThreepidTimes {
                    added_ms: now,
                    validated_ms,
                },
            );
    }

    /// Stages removing `address` from `user_id`; false if the user does not have it.
    pub fn stage_remove(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        medium: &str,
        address: &str,
    ) -> Result<bool> {
        let owner_key = (medium.to_owned(), address.to_owned());
        let Some(owner) = self.store.get::<ThreepidOwners>(&owner_key)? else {
            return Ok(false);
        };
        if owner.user_id != user_id {
            return Ok(false);
        }
        batch
            .expect_value::<ThreepidOwners>(&owner_key, Some(&owner))
            .delete::<ThreepidOwners>(&owner_key)
            .delete::<UserThreepids>(&(user_id.to_string(), owner_key.0, owner_key.1));
        Ok(true)
    }

    /// Stages removing every 3PID of `user_id` (deactivation).
    pub fn stage_remove_user(&self, batch: &mut Batch, user_id: &UserId) -> Result<()> {
        for (medium, address, _) in self.list(user_id)? {
            self.stage_remove(batch, user_id, &medium, &address)?;
        }
        Ok(())
    }
}

/// A session-spending commit that conflicted: the session was used (or changed) meanwhile.
pub fn spent_meanwhile() -> Error {
    auth_failed("This validation session was used meanwhile")
}

/// Where the validation link points (served by `api::client::threepid`).
pub const VALIDATE_PATH: &str = "/_hearth/email/validate";
/// The spec's `submit_url` (same parameters as the identity service's `submitToken`).
pub const SUBMIT_PATH: &str = "/_hearth/email/submit_token";

/// The subject and text of the mail carrying a validation token.
pub fn validation_mail(
    purpose: Purpose,
    link_base: &str,
    sid: &str,
    client_secret: &str,
    token: &str,
) -> (String, String) {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    let link = format!(
        "{link_base}{VALIDATE_PATH}?sid={}&client_secret={}&token={}",
        enc(sid),
        enc(client_secret),
        enc(token)
    );
    let (subject, what) = match purpose {
        Purpose::Register => ("Confirm your e-mail address", "register an account with"),
        Purpose::Add => ("Confirm your e-mail address", "add to an account"),
        Purpose::Password => (
            "Reset your password",
            "reset the password of the account of",
        ),
    };
    let body = format!(
        "Someone asked to {what} this e-mail address on the Matrix server {link_base}.\n\n\
         If it was you, open this link to confirm:\n\n{link}\n\n\
         or enter this code in your app: {token}\n\n\
         The link is valid for one hour. If it was not you, ignore this mail.\n"
    );
    (subject.to_owned(), body)
}

/// For a mailer-less server, the error every e-mail endpoint answers.
pub fn require_mailer(mailer: Option<&Mailer>) -> Result<&Mailer> {
    mailer.ok_or_else(|| medium_not_supported("e-mail: no SMTP server is configured"))
}

#[cfg(test)]
mod tests {
    use super::{canonical_email, is_valid_secret};
    use crate::config::is_http_url;

    #[test]
    fn secrets_addresses_and_links() {
        assert!(is_valid_secret("monkeys_are_GREAT.=-1"));
        assert!(!is_valid_secret(""));
        assert!(!is_valid_secret("a b"));
        assert!(!is_valid_secret("a/b"));
        assert!(is_valid_secret(&"a".repeat(255)));
        assert!(!is_valid_secret(&"a".repeat(256)));

        assert_eq!(
            canonical_email(" Alice@Example.ORG ").unwrap(),
            "alice@example.org"
        );
        assert!(canonical_email("alice").is_err());
        assert!(canonical_email("a@b@c").is_err());

        assert!(is_http_url("https://app.example.org/done?x=1"));
        assert!(is_http_url("http://localhost:8080"));
        assert!(!is_http_url("javascript:alert(1)"));
        assert!(!is_http_url("https://"));
        assert!(!is_http_url("https://a b/"));
        assert!(!is_http_url("https://user@evil.example/"));
        assert!(!is_http_url("https://exämple.org/"));
    }
}
