//! One error type for the whole request path: every failure becomes a Matrix error body
//! (`errcode`, `error`, plus any extra fields) with the spec's HTTP status.

use http::StatusCode;
use serde_json::{json, Map, Value};

use crate::store::{CommitError, StoreError};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct Error {
    pub status: StatusCode,
    pub errcode: &'static str,
    pub message: String,
    /// Extra top-level fields (`soft_logout`, `retry_after_ms`, UIAA flows...).
    pub extra: Map<String, Value>,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.errcode,
            self.message
        )
    }
}

impl std::error::Error for Error {}

macro_rules! ctor {
    ($($name:ident => $status:ident, $code:literal;)*) => {
        $(pub fn $name(message: impl Into<String>) -> Self {
            Self::new(StatusCode::$status, $code, message)
        })*
    };
}

impl Error {
    pub fn new(status: StatusCode, errcode: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            errcode,
            message: message.into(),
            extra: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    ctor! {
        forbidden => FORBIDDEN, "M_FORBIDDEN";
        guest_access_forbidden => FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN";
        not_found => NOT_FOUND, "M_NOT_FOUND";
        unrecognized => NOT_FOUND, "M_UNRECOGNIZED";
        bad_json => BAD_REQUEST, "M_BAD_JSON";
        not_json => BAD_REQUEST, "M_NOT_JSON";
        invalid_param => BAD_REQUEST, "M_INVALID_PARAM";
        missing_param => BAD_REQUEST, "M_MISSING_PARAM";
        missing_token => UNAUTHORIZED, "M_MISSING_TOKEN";
        too_large => PAYLOAD_TOO_LARGE, "M_TOO_LARGE";
        user_in_use => BAD_REQUEST, "M_USER_IN_USE";
        invalid_username => BAD_REQUEST, "M_INVALID_USERNAME";
        exclusive => BAD_REQUEST, "M_EXCLUSIVE";
        user_deactivated => FORBIDDEN, "M_USER_DEACTIVATED";
        weak_password => BAD_REQUEST, "M_WEAK_PASSWORD";
        unknown => INTERNAL_SERVER_ERROR, "M_UNKNOWN";
        bad_state => BAD_REQUEST, "M_BAD_STATE";
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "M_UNRECOGNIZED",
            "Method not allowed on this endpoint",
        )
    }

    /// 401 for a token the server does not know. `soft_logout`: the session still exists (e.g. an
    /// expired access token that a refresh token can renew).
    pub fn unknown_token(soft_logout: bool) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
            "Unknown or expired access token",
        )
        .with("soft_logout", soft_logout)
    }

    /// 401 for every request of a locked account but logout (spec: Account locking).
    pub fn user_locked() -> Self {
        Self::new(
            http::StatusCode::UNAUTHORIZED,
            "M_USER_LOCKED",
            "This account has been locked",
        )
        .with("soft_logout", true)
    }

    /// 403 for an action a suspended account may not take (spec: Account suspension).
    pub fn user_suspended() -> Self {
        Self::new(
            http::StatusCode::FORBIDDEN,
            "M_USER_SUSPENDED",
            "You cannot perform this action while suspended",
        )
    }

    pub fn limit_exceeded(retry_after_ms: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "M_LIMIT_EXCEEDED",
            "Too many requests",
        )
        .with("retry_after_ms", retry_after_ms)
    }

    pub fn into_response(self) -> http::Response<Vec<u8>> {
        let mut body = self.extra;
        if !self.errcode.is_empty() {
            body.insert("errcode".into(), json!(self.errcode));
            body.insert("error".into(), json!(self.message));
        }
        let retry_after_ms = body.get("retry_after_ms").and_then(Value::as_u64);
        let mut response = http::Response::new(serde_json::to_vec(&body).unwrap_or_default());
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if let Some(ms) = retry_after_ms {
            let secs = ms.div_ceil(1000).max(1);
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        log::error!("store error: {e}");
        Error::unknown("Internal storage error")
    }
}

impl From<CommitError> for Error {
    fn from(e: CommitError) -> Self {
        match e {
            // Services retry or translate conflicts; one reaching here lost a race it could not
            // resolve, which the client may simply retry.
            CommitError::Conflict => Error::new(
                StatusCode::CONFLICT,
                "M_UNKNOWN",
                "The request conflicted with a concurrent change; retry it",
            ),
            CommitError::Store(e) => e.into(),
        }
    }
}
