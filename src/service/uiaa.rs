//! User-Interactive Authentication (spec: Client Authentication, UIAA).
//!
//! Sessions live in memory: they are short-lived by design (expire after `SESSION_TTL`), and a
//! restart only makes a client start its auth flow again. Each session is bound to one
//! endpoint kind, for authenticated endpoints one user, and a digest of the operation's
//! parameters (which devices to delete, the new password, …), so a completed stage cannot be
//! replayed on another request: a session started to delete device A cannot complete the
//! deletion of device B.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::Engine as _;
use rand::RngExt;
use ruma::{
    api::client::uiaa::{AuthData, UserIdentifier},
    OwnedUserId, UserId,
};
use serde_json::{json, Value};
use sha2::Digest as _;

use super::{reg_tokens::RegTokens, threepids::Threepids, users::Users};
use crate::error::{Error, Result};

const SESSION_TTL: Duration = Duration::from_secs(15 * 60);
/// Bound on concurrent sessions; beyond it the oldest are dropped.
const MAX_SESSIONS: usize = 10_000;

pub const DUMMY: &str = "m.login.dummy";
pub const PASSWORD: &str = "m.login.password";
pub const REGISTRATION_TOKEN: &str = "m.login.registration_token";
pub const EMAIL_IDENTITY: &str = "m.login.email.identity";

/// The flows of account management: the user's current password.
pub const PASSWORD_FLOWS: &[&[&str]] = &[&[PASSWORD]];

struct Session {
    kind: &'static str,
    user: Option<OwnedUserId>,
    operation: OperationDigest,
    completed: Vec<&'static str>,
    registration_token: Option<String>,
    email: Option<EmailCreds>,
    created: Instant,
}

/// The `threepid_creds` of a completed `m.login.email.identity` stage: a validated e-mail
/// session, which the endpoint spends when its operation succeeds.
#[derive(Debug, Clone)]
pub struct EmailCreds {
    pub sid: String,
    pub client_secret: String,
}

/// What the stages are checked against.
#[derive(Clone, Copy)]
pub struct StageChecks<'a> {
    pub users: &'a Users,
    pub reg_tokens: &'a RegTokens,
    pub threepids: &'a Threepids,
}

/// One verified stage.
struct Stage {
    kind: &'static str,
    registration_token: Option<String>,
    email: Option<EmailCreds>,
}

/// What a completed flow proved, for the endpoint to act on.
#[derive(Debug, Default)]
pub struct Completed {
    /// The registration token accepted by `m.login.registration_token`, to be spent when the
    /// registration itself succeeds.
    pub registration_token: Option<String>,
    /// The e-mail session validated by `m.login.email.identity`, to be spent with the
    /// operation (it is not spent by the flow itself).
    pub email: Option<EmailCreds>,
}

/// SHA-256 of the parameters of a protected operation (see [`operation_digest`]).
pub type OperationDigest = [u8; 32];

/// The digest binding a session to one operation: `parameters` holds whatever decides what
/// the operation does (device ids, new password, keys to upload), built the same way on
/// every step of the flow. Only the digest is kept, never the parameters themselves.
pub fn operation_digest(parameters: &Value) -> OperationDigest {
    // serde_json's map is ordered by key (no `preserve_order` feature in this build), so equal
    // values serialize identically whatever order a client sent their keys in.
    sha2::Sha256::digest(parameters.to_string().as_bytes()).into()
}

/// One UIAA-protected call: which endpoint, for whom, on what, and which flows it offers.
pub struct Request<'a> {
    pub kind: &'static str,
    pub user: Option<&'a UserId>,
    /// The client's address (password stages share the failed-attempt backoff of logins
    /// from the same address).
    pub client: std::net::IpAddr,
    pub operation: OperationDigest,
    pub flows: &'a [&'a [&'static str]],
}

/// Whether a session named by the client may continue the current request.
enum Liveness {
    Live,
    /// Unknown, expired, or belonging to another endpoint or user.
    Unknown,
    /// The right endpoint and user, but other parameters than those it was started with.
    OtherOperation,
}

pub struct Uiaa {
    /// session id → session. Guards only the map (no I/O, no await under it).
    sessions: Mutex<HashMap<String, Session>>,
}

impl Default for Uiaa {
    fn default() -> Self {
        Self::new()
    }
}

impl Uiaa {
    pub fn new() -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Runs one UIAA step. `Ok` once a whole flow is complete; otherwise the 401 the spec
    /// describes (flows, params, session, completed, and errcode/error after a failed stage).
    pub async fn authorize(
        &self,
        request: Request<'_>,
        auth: Option<&AuthData>,
        checks: StageChecks<'_>,
    ) -> Result<Completed> {
        let Some(auth) = auth else {
            let session = self.start(&request);
            return Err(self.challenge(&request, &session, None));
        };
        let session_id = match auth.session().map(|id| (id, self.liveness(id, &request))) {
            Some((id, Liveness::Live)) => id.to_owned(),
            Some((_, liveness)) => {
                let message = match liveness {
                    Liveness::OtherOperation => {
                        "This authentication session was started for a different request"
                    }
                    _ => "Unknown or expired authentication session",
                };
                let session = self.start(&request);
                return Err(self.challenge(&request, &session, Some(Error::forbidden(message))));
            }
            None => self.start(&request),
        };

        let stage = match self.verify_stage(&request, auth, checks).await {
            Ok(stage) => stage,
            Err(error) => return Err(self.challenge(&request, &session_id, Some(error))),
        };

        let mut sessions = self.lock();
        let Some(session) = sessions.get_mut(&session_id) else {
            drop(sessions);
            return Err(self.challenge(&request, &session_id, None));
        };
        let Stage {
            kind: stage,
            registration_token: token,
            email,
        } = stage;
        if !session.completed.contains(&stage) {
            let mut next = session.completed.clone();
            next.push(stage);
            let in_order = request.flows.iter().any(|flow| flow.starts_with(&next));
            if !in_order {
                drop(sessions);
                return Err(self.challenge(
                    &request,
                    &session_id,
                    Some(Error::forbidden(format!(
                        "Stage {stage} is not the next stage of any flow"
                    ))),
                ));
            }
            session.completed = next;
        }
        if token.is_some() {
            session.registration_token = token;
        }
        if email.is_some() {
            session.email = email;
        }
        if request.flows.contains(&session.completed.as_slice()) {
            let session = sessions
                .remove(&session_id)
                .expect("present: just looked up");
            return Ok(Completed {
                registration_token: session.registration_token,
                email: session.email,
            });
        }
        drop(sessions);
        Err(self.challenge(&request, &session_id, None))
    }

    /// Checks the credentials of one stage.
    async fn verify_stage(
        &self,
        request: &Request<'_>,
        auth: &AuthData,
        checks: StageChecks<'_>,
    ) -> Result<Stage> {
        let (users, reg_tokens) = (checks.users, checks.reg_tokens);
        let stage = |kind| Stage {
            kind,
            registration_token: None,
            email: None,
        };
        match auth {
            AuthData::Dummy(_) => Ok(stage(DUMMY)),
            AuthData::Password(password) => {
                let expected = request
                    .user
                    .ok_or_else(|| Error::forbidden("Password auth needs a user"))?;
                let named = match &password.identifier {
                    UserIdentifier::Matrix(id) => id.user.clone(),
                    _ => return Err(Error::forbidden("Only m.id.user identifiers are supported")),
                };
                let matches = named == expected.as_str() || named == expected.localpart();
                if !matches
                    || !users
                        .check_password(expected, request.client, &password.password)
                        .await?
                {
                    return Err(Error::forbidden("Invalid username or password"));
                }
                Ok(stage(PASSWORD))
            }
            AuthData::RegistrationToken(token) => {
                if !reg_tokens.is_usable(&token.token)? {
                    return Err(Error::new(
                        http::StatusCode::UNAUTHORIZED,
                        "M_UNAUTHORIZED",
                        "Registration token is not valid",
                    ));
                }
                Ok(Stage {
                    registration_token: Some(token.token.clone()),
                    ..stage(REGISTRATION_TOKEN)
                })
            }
            // Only offered when e-mail is configured; the flows decide where it is accepted.
            AuthData::EmailIdentity(email)
                if request.flows.iter().any(|f| f.contains(&EMAIL_IDENTITY)) =>
            {
                let creds = &email.thirdparty_id_creds;
                let (sid, client_secret) = (creds.sid.as_str(), creds.client_secret.as_str());
                checks.threepids.validated(sid, client_secret, None)?;
                Ok(Stage {
                    email: Some(EmailCreds {
                        sid: sid.to_owned(),
                        client_secret: client_secret.to_owned(),
                    }),
                    ..stage(EMAIL_IDENTITY)
                })
            }
            other => Err(Error::forbidden(format!(
                "Authentication type {} is not supported here",
                other.auth_type().map(|t| t.to_string()).unwrap_or_default()
            ))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn liveness(&self, id: &str, request: &Request<'_>) -> Liveness {
        let sessions = self.lock();
        match sessions.get(id) {
            Some(s)
                if s.kind == request.kind
                    && s.user.as_deref() == request.user
                    && s.created.elapsed() < SESSION_TTL =>
            {
                if s.operation == request.operation {
                    Liveness::Live
                } else {
                    Liveness::OtherOperation
                }
            }
            _ => Liveness::Unknown,
        }
    }

    fn start(&self, request: &Request<'_>) -> String {
        let mut bytes = [0u8; 18];
        rand::rng().fill(&mut bytes[..]);
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let mut sessions = self.lock();
        sessions.retain(|_, s| s.created.elapsed() < SESSION_TTL);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                kind: request.kind,
                user: request.user.map(ToOwned::to_owned),
                operation: request.operation,
                completed: Vec::new(),
                registration_token: None,
                email: None,
                created: Instant::now(),
            },
        );
        id
    }

    /// The 401 UIAA body for `session`, carrying `error`'s code and message if a stage failed.
    fn challenge(&self, request: &Request<'_>, session: &str, error: Option<Error>) -> Error {
        let completed = self
            .lock()
            .get(session)
            .map(|s| s.completed.clone())
            .unwrap_or_default();
        let flows: Vec<Value> = request
            .flows
            .iter()
            .map(|stages| json!({ "stages": stages }))
            .collect();
        let (errcode, message) = match error {
            // Server failures and rate limits (busy password hashing, failed-attempt backoff,
            // with their retry_after_ms) are not authentication failures: pass them through.
            Some(e)
                if e.status.is_server_error()
                    || e.status == http::StatusCode::TOO_MANY_REQUESTS =>
            {
                return e
            }
            Some(e) => (e.errcode, e.message),
            None => ("", String::new()),
        };
        Error::new(http::StatusCode::UNAUTHORIZED, errcode, message)
            .with("flows", flows)
            .with("params", json!({}))
            .with("session", session)
            .with("completed", completed)
    }
}

#[cfg(test)]
mod tests {
    use super::operation_digest;

    #[test]
    fn digest_ignores_key_order_and_sees_values() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"x": 1, "keys": {"b": 2, "a": 1}}"#).expect("valid JSON");
        let b: serde_json::Value =
            serde_json::from_str(r#"{"keys": {"a": 1, "b": 2}, "x": 1}"#).expect("valid JSON");
        let c: serde_json::Value =
            serde_json::from_str(r#"{"keys": {"a": 1, "b": 3}, "x": 1}"#).expect("valid JSON");
        assert_eq!(operation_digest(&a), operation_digest(&b));
        assert_ne!(operation_digest(&a), operation_digest(&c));
    }
}
