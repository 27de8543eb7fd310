//! A real server in-process on 127.0.0.1:0 with a temporary data directory, and a small HTTP
//! client to drive it.

use hearth::{
    config::{Config, Listener, Outbound, RateLimit, Registration, RegistrationMode},
    server::{self, Server},
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

pub struct TestServer {
    pub server: Option<Server>,
    pub config: Config,
    /// Deleted when the test server is dropped.
    _dir: tempfile::TempDir,
    pub base: String,
    pub http: reqwest::Client,
}

pub fn test_config(dir: &std::path::Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        listeners: vec![Listener {
            bind: "127.0.0.1:0".parse().unwrap(),
        }],
        registration: Registration {
            mode: RegistrationMode::Open,
            ..Default::default()
        },
        bcrypt_cost: 4,
        rate_limit: RateLimit {
            enabled: false,
            ..Default::default()
        },
        // Test servers (push gateways, ...) listen on loopback, which the policy refuses by
        // default.
        outbound: Outbound {
            allow_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            ..Default::default()
        },
        ..Default::default()
    }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(change: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        change(&mut config);
        let server = server::start(config.clone()).await.expect("server starts");
        let base = server.base_url();
        Self {
            server: Some(server),
            config,
            _dir: dir,
            base,
            http: reqwest::Client::new(),
        }
    }

    /// Like [`TestServer::start_with`], but `None` when a listener's address is taken (the
    /// caller picked a port that another test grabbed first); other failures panic.
    pub async fn try_start_with(change: impl FnOnce(&mut Config)) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        change(&mut config);
        let server = match server::start(config.clone()).await {
            Ok(server) => server,
            Err(server::StartError::Bind { .. }) => return None,
            Err(e) => panic!("server starts: {e}"),
        };
        let base = server.base_url();
        Some(Self {
            server: Some(server),
            config,
            _dir: dir,
            base,
            http: reqwest::Client::new(),
        })
    }

    /// Stops the server; its data directory stays for [`TestServer::start_again`].
    pub async fn stop(&mut self) {
        self.server.take().expect("running").stop().await;
    }

    /// Starts a stopped server again on the same data directory and configuration.
    pub async fn start_again(&mut self) {
        assert!(self.server.is_none(), "already running");
        let server = server::start(self.config.clone())
            .await
            .expect("server restarts");
        self.base = server.base_url();
        self.server = Some(server);
    }

    /// Stops the server and starts a new one on the same data directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    /// The stopped server's store, opened directly: a test writes data there as an older
    /// version left it, then calls [`TestServer::start_again`].
    pub fn open_store(&self) -> hearth::store::Store {
        assert!(self.server.is_none(), "stop the server first");
        hearth::store::Store::open(
            &self.config.data_dir.join("db"),
            self.config.storage.engine,
            1 << 20,
        )
        .expect("the stopped server's store opens")
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        request.send().await.expect("request sent")
    }

    /// Sends a JSON request and returns the status and JSON body (`Null` if empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string());
        let response = self.raw(method, path, token, body.as_deref()).await;
        let status = response.status();
        let bytes = response.bytes().await.unwrap();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        (status, value)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, token, Some(body)).await
    }

    /// Registers `name` through the dummy flow; returns (user_id, access_token, device_id).
    pub async fn register(&self, name: &str, password: &str) -> (String, String, String) {
        let (status, challenge) = self
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({"username": name, "password": password}),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
        let session = challenge["session"].as_str().unwrap();
        let (status, body) = self
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({"username": name, "password": password, "auth": {"type": "m.login.dummy", "session": session}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (
            body["user_id"].as_str().unwrap().to_owned(),
            body["access_token"].as_str().unwrap().to_owned(),
            body["device_id"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn login(&self, user: &str, password: &str) -> (StatusCode, Value) {
        self.post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}),
        )
        .await
    }

    /// Body of a password UIAA stage for `user`.
    pub fn password_auth(user: &str, password: &str, session: &str) -> Value {
        json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password, "session": session})
    }
}

pub fn errcode(body: &Value) -> &str {
    body["errcode"].as_str().unwrap_or("")
}

/// Percent-encodes a path segment (event ids of v3 rooms contain `/` and `+`).
pub fn enc(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Creates a room (asserting success) and returns its id.
pub async fn create_room(srv: &TestServer, token: &str, body: Value) -> String {
    let (status, body) = srv
        .post("/_matrix/client/v3/createRoom", Some(token), body)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["room_id"].as_str().unwrap().to_owned()
}

/// Joins a room by id (asserting success).
pub async fn join(srv: &TestServer, token: &str, room: &str) {
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(room)),
            Some(token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The real `hearth` binary serving `data_dir` on a free loopback port (low bcrypt cost, no
/// rate limits), once it answers `/versions`: the child and its base URL (`http://127.0.0.1:PORT`).
/// For tests of signals and process exit; everything else uses [`TestServer`].
pub async fn spawn_binary(data_dir: &std::path::Path) -> (std::process::Child, String) {
    use std::time::{Duration, Instant};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .env_clear()
        .env("HEARTH_DATA_DIR", data_dir)
        .env("HEARTH_LISTENERS", format!("127.0.0.1:{port}"))
        .env("HEARTH_BCRYPT_COST", "4")
        .env("HEARTH_RATE_LIMIT__ENABLED", "false")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http
        .get(format!("{base}/_matrix/client/versions"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, base)
}

hearth::table!(MetaRaw: "meta", String => hearth::store::Raw);

/// Stages `version` as the store's schema version (what an older build wrote).
pub fn put_schema_version(batch: &mut hearth::store::Batch, version: u32) {
    batch.put::<MetaRaw>(
        &"schema_version".into(),
        &hearth::store::Raw(version.to_be_bytes().to_vec()),
    );
}

/// Redacts `event` with transaction `txn`, which must succeed.
pub async fn redact(srv: &TestServer, token: &str, room: &str, event: &str, txn: &str) {
    let (status, body) = srv
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/{txn}",
                enc(room),
                enc(event)
            ),
            Some(token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
