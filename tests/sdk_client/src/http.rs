//! Plain client-server HTTP for what the other users do (register, create rooms, send, invite):
//! the SDK client under test only sees their effects through its own sync.

use anyhow::{Context, Result, bail};
use matrix_sdk::reqwest::{self, Method, header::CONTENT_TYPE};
use serde_json::{Value, json};

/// A bare HTTP client for one homeserver.
pub struct Http {
    base: String,
    client: reqwest::Client,
    /// Transaction ids for `PUT .../send`, unique within this run.
    txn: std::sync::atomic::AtomicU64,
}

/// A user registered over plain HTTP.
pub struct Account {
    pub user_id: String,
    pub token: String,
}

impl Http {
    pub fn new(base: &str) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            client,
            txn: 0.into(),
        })
    }

    /// One request; answers the status and the JSON body (`null` when there is none).
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(&body)?);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("{method} {path}: body"))?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{method} {path}: answer is not JSON"))?
        };
        Ok((status, value))
    }

    /// A request that must answer 200; answers its body.
    async fn ok(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let (status, value) = self.call(method.clone(), path, Some(token), body).await?;
        if status != 200 {
            bail!("{method} {path} answered {status}: {value}");
        }
        Ok(value)
    }

    /// Registers `name` with `password` through the dummy User-Interactive Auth stage.
    pub async fn register(&self, name: &str, password: &str) -> Result<Account> {
        let path = "/_matrix/client/v3/register";
        let first = json!({"username": name, "password": password, "inhibit_login": false});
        let (status, challenge) = self.call(Method::POST, path, None, Some(first)).await?;
        if status != 401 {
            bail!("register {name}: expected a 401 challenge, got {status}: {challenge}");
        }
        let session = challenge["session"]
            .as_str()
            .context("register: no UIA session")?;
        let second = json!({
            "username": name,
            "password": password,
            "auth": {"type": "m.login.dummy", "session": session},
        });
        let (status, body) = self.call(Method::POST, path, None, Some(second)).await?;
        if status != 200 {
            bail!("register {name}: {status}: {body}");
        }
        Ok(Account {
            user_id: body["user_id"]
                .as_str()
                .context("register: no user_id")?
                .to_owned(),
            token: body["access_token"]
                .as_str()
                .context("register: no access_token")?
                .to_owned(),
        })
    }

    /// Creates a room; answers its id.
    pub async fn create_room(&self, who: &Account, body: Value) -> Result<String> {
        let answer = self
            .ok(
                Method::POST,
                "/_matrix/client/v3/createRoom",
                &who.token,
                Some(body),
            )
            .await?;
        Ok(answer["room_id"]
            .as_str()
            .context("createRoom: no room_id")?
            .to_owned())
    }

    /// Sends an `m.text` message; answers the event id.
    pub async fn send_text(&self, who: &Account, room_id: &str, text: &str) -> Result<String> {
        let txn = self.txn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/sdkclient-{txn}",
            encode(room_id)
        );
        let answer = self
            .ok(
                Method::PUT,
                &path,
                &who.token,
                Some(json!({"msgtype": "m.text", "body": text})),
            )
            .await?;
        Ok(answer["event_id"]
            .as_str()
            .context("send: no event_id")?
            .to_owned())
    }

    /// Joins a room by id.
    pub async fn join(&self, who: &Account, room_id: &str) -> Result<()> {
        let path = format!("/_matrix/client/v3/rooms/{}/join", encode(room_id));
        self.ok(Method::POST, &path, &who.token, Some(json!({})))
            .await?;
        Ok(())
    }

    /// Sets `who`'s display name.
    pub async fn set_displayname(&self, who: &Account, name: &str) -> Result<()> {
        let path = format!(
            "/_matrix/client/v3/profile/{}/displayname",
            encode(&who.user_id)
        );
        self.ok(
            Method::PUT,
            &path,
            &who.token,
            Some(json!({"displayname": name})),
        )
        .await?;
        Ok(())
    }

    /// Marks `who` as typing in a room (for `timeout_ms`).
    pub async fn typing(&self, who: &Account, room_id: &str, timeout_ms: u64) -> Result<()> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/typing/{}",
            encode(room_id),
            encode(&who.user_id)
        );
        let body = json!({"typing": true, "timeout": timeout_ms});
        self.ok(Method::PUT, &path, &who.token, Some(body)).await?;
        Ok(())
    }

    /// Opens a fresh simplified sliding sync connection `conn_id` for `who` (one request, no
    /// position, nothing asked for).
    pub async fn open_sliding_sync(&self, who: &Account, conn_id: &str) -> Result<()> {
        let path = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?timeout=0";
        let body = json!({"conn_id": conn_id, "lists": {}});
        self.ok(Method::POST, path, &who.token, Some(body)).await?;
        Ok(())
    }

    /// Whether `user_id`'s device `device_id` has published device keys (asked as `who`).
    pub async fn has_device_keys(
        &self,
        who: &Account,
        user_id: &str,
        device_id: &str,
    ) -> Result<bool> {
        let body = json!({"device_keys": {user_id: []}});
        let answer = self
            .ok(
                Method::POST,
                "/_matrix/client/v3/keys/query",
                &who.token,
                Some(body),
            )
            .await?;
        Ok(answer["device_keys"][user_id][device_id].is_object())
    }
}

/// Percent-encodes a path segment (room ids carry `!` and `:`).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len() * 3);
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
