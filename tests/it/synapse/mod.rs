//! Interoperability with a real Synapse (issue 14): `.ci/run` installs `matrix-synapse` from
//! PyPI in a virtualenv and names its Python in `SYNAPSE_PYTHON`. A plain `cargo test` lists
//! these tests as ignored; `.ci/run` runs them (`--include-ignored`), and then the variable is
//! required.
//!
//! One Synapse serves every test of the run (it takes seconds to start; each test starts its
//! own in-process Hearth, with its own server name, and its own users, so tests do not see
//! each other); a test that stops Synapse starts one of its own ([`Pair::start_private`]). It
//! runs from `tests/interop/synapse/` (configuration templates, and `run.py`, which ends
//! Synapse when the test process closes its standard input, i.e. exits in any way) in a
//! temporary directory that also holds the test CA and the certificate both servers present.
//! A failed check shows Synapse's warnings about the test's Hearth and its errors.
//!
//! Server names: both servers are named by IP literal and port, `127.0.0.1:<TLS port>`, as the
//! Hearth-to-Hearth tests are. A name with an explicit port skips `.well-known` and SRV on both
//! sides (spec: Server-Server, Resolving server names, steps 1–2), and the certificate has the
//! IP SAN `127.0.0.1`, which Synapse's federation client verifies for IP literals (it checks
//! the IP address instead of a host name and sends no SNI), as Hearth's does. So no name needs
//! DNS or a hosts file, and one certificate serves both servers.
//!
//! The clients drive both servers over plain HTTP: Hearth's listener, and a plain listener of
//! Synapse with its client, media and federation resources (federation between the two goes
//! over TLS only; the plain federation resource lets the test read Synapse's notary answers).

mod e2ee;
mod live;
mod partial;
mod queries;
mod rooms;

use std::{
    fmt::Display,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::enc;
use crate::e2ee::{keypair, Dev, PW};
use crate::fed_common::{self, FedServer};

/// The Synapse every test of this run federates with.
pub struct Synapse {
    /// `127.0.0.1:<federation TLS port>`.
    pub name: String,
    /// `http://127.0.0.1:<plain port>`.
    pub base: String,
    /// The run's directory: `ca.pem`, `cert.pem`, `key.pem`, `homeserver.yaml`,
    /// `homeserver.log`, the database and the media store.
    pub dir: PathBuf,
    /// From spawning the process to the client API answering.
    pub started_in: Duration,
    client_port: u16,
    /// The process and the pipe whose end stops it (see `run.py`); `None` while stopped.
    process: Mutex<Option<(Child, ChildStdin)>>,
    /// Whether dropping this value stops the process and removes the directory: the shared
    /// instance lives in a static (never dropped, `run.py` ends it), a test's own instance
    /// ([`Synapse::private`]) is dropped at the end of its test, passed or failed.
    owned: bool,
}

static SYNAPSE: OnceLock<Arc<Synapse>> = OnceLock::new();

/// The shared Synapse, started on first use.
pub fn synapse() -> Arc<Synapse> {
    SYNAPSE
        .get_or_init(|| Arc::new(start_synapse(false)))
        .clone()
}

fn template(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop/synapse")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn python() -> String {
    std::env::var("SYNAPSE_PYTHON")
        .expect("SYNAPSE_PYTHON must name a Python with matrix-synapse (.ci/run sets one up)")
}

/// Starts Synapse on `dir` (configured already) and waits until its client API on
/// `client_port` answers: the process and its pipe, or `None` if it exited (a port taken)
/// or did not answer within a minute (then it is killed).
fn spawn(dir: &Path, client_port: u16) -> Option<(Child, ChildStdin)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/synapse/run.py");
    let output = std::fs::File::create(dir.join("stdout.log")).unwrap();
    let began = Instant::now();
    let mut child = Command::new(python())
        .arg(&script)
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .spawn()
        .expect("SYNAPSE_PYTHON runs");
    let stdin = child.stdin.take().unwrap();
    // Bounded: 600 polls, at most a minute.
    for _ in 0..600 {
        if began.elapsed() > Duration::from_secs(60) || child.try_wait().unwrap().is_some() {
            break;
        }
        if answers(client_port) {
            return Some((child, stdin));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn start_synapse(owned: bool) -> Synapse {
    let dir = tempfile::Builder::new()
        .prefix("hearth-synapse-")
        .tempdir()
        .unwrap()
        .keep();
    let (ca_cert, ca_key) = fed_common::ca();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    fed_common::leaf(
        &ca_cert,
        &ca_key,
        &dir.join("cert.pem"),
        &dir.join("key.pem"),
    );
    let dir_text = dir.display().to_string();
    std::fs::write(
        dir.join("log.yaml"),
        template("log.yaml").replace("@DIR@", &dir_text),
    )
    .unwrap();
    // The ports are chosen before Synapse binds them; another test may take one in between,
    // hence a few attempts.
    for _ in 0..5 {
        let fed_port = fed_common::free_port();
        let client_port = fed_common::free_port();
        let config = template("homeserver.yaml")
            .replace("@DIR@", &dir_text)
            .replace("@FED_PORT@", &fed_port.to_string())
            .replace("@CLIENT_PORT@", &client_port.to_string());
        std::fs::write(dir.join("homeserver.yaml"), config).unwrap();
        let _ = std::fs::remove_file(dir.join("homeserver.db"));
        let began = Instant::now();
        if let Some(process) = spawn(&dir, client_port) {
            return Synapse {
                name: format!("127.0.0.1:{fed_port}"),
                base: format!("http://127.0.0.1:{client_port}"),
                dir,
                started_in: began.elapsed(),
                client_port,
                process: Mutex::new(Some(process)),
                owned,
            };
        }
        let said = std::fs::read_to_string(dir.join("stdout.log")).unwrap_or_default();
        let log = log_excerpt(&dir, None);
        if !said.contains("Address already in use") && !log.contains("Address already in use") {
            panic!("Synapse did not start:\n{said}\n{log}");
        }
    }
    panic!("no free ports for Synapse");
}

impl Synapse {
    /// A Synapse of one test's own, for tests that stop it; stopped and removed when
    /// dropped. Blocks while it starts.
    pub fn private() -> Self {
        start_synapse(true)
    }

    /// Kills the process (no clean shutdown: as a crash or power loss would).
    pub fn stop(&self) {
        if let Some((mut child, _stdin)) = self.process.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same directory, ports and database. Blocks while it starts.
    pub fn start_again(&self) {
        let mut process = self.process.lock().unwrap();
        assert!(process.is_none(), "Synapse is running");
        *process = Some(spawn(&self.dir, self.client_port).unwrap_or_else(|| {
            panic!(
                "Synapse did not start again\n{}",
                log_excerpt(&self.dir, None)
            )
        }));
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        if self.owned {
            self.stop();
            if std::env::var_os("SYNAPSE_KEEP_DIR").is_none() {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }
    }
}

/// Whether the client API on `port` answers `GET /_matrix/client/versions` with 200.
fn answers(port: u16) -> bool {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /_matrix/client/versions HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

/// The warnings and errors in Synapse's log (with the traceback lines that follow them),
/// the last 80 lines of them; with `about`, only the warnings that name it (a test's Hearth
/// server: the Synapse is shared), and every error.
fn log_excerpt(dir: &Path, about: Option<&str>) -> String {
    let log = std::fs::read_to_string(dir.join("homeserver.log")).unwrap_or_default();
    let mut kept = Vec::new();
    let mut keeping = false;
    for line in log.lines() {
        // A log record starts with its date; other lines continue the previous record.
        let record = line.starts_with("20");
        if record {
            let error = line.contains(" - ERROR - ") || line.contains(" - CRITICAL - ");
            let warning = line.contains(" - WARNING - ")
                && !line.contains(" - main - ")
                && about.is_none_or(|name| line.contains(name) || line.contains(&enc(name)));
            keeping = error || warning;
        }
        if keeping {
            kept.push(line);
        }
    }
    let from = kept.len().saturating_sub(80);
    format!(
        "--- Synapse's warnings and errors ({}/homeserver.log) ---\n{}",
        dir.display(),
        kept[from..].join("\n")
    )
}

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// `prefix` with a number no other call in this run got: users and aliases on the shared
/// Synapse stay apart between tests.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", UNIQUE.fetch_add(1, Ordering::Relaxed))
}

/// A client of the shared Synapse, made per test (an HTTP client's connections belong to
/// the test's runtime).
pub struct Syn {
    pub server: Arc<Synapse>,
    pub name: String,
    pub http: reqwest::Client,
}

impl Syn {
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.server.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request to Synapse sent");
        let status = response.status();
        let bytes = response.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
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

    /// A raw request (media).
    pub fn request(&self, method: Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.server.base))
            .bearer_auth(token)
    }

    /// Registers a new user (a unique name from `prefix`) through the dummy flow.
    pub async fn register(&self, prefix: &str) -> Dev {
        let name = unique(prefix);
        let (status, body) = self
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({"username": name, "password": PW, "auth": {"type": "m.login.dummy"}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let device = body["device_id"].as_str().unwrap().to_owned();
        Dev {
            user: body["user_id"].as_str().unwrap().to_owned(),
            token: body["access_token"].as_str().unwrap().to_owned(),
            key: keypair(&device),
            device,
        }
    }
}

/// One test's servers: a fresh Hearth and the shared Synapse, trusting each other's
/// certificates.
pub struct Pair {
    pub hearth: FedServer,
    pub syn: Syn,
}

impl Pair {
    /// A fresh Hearth and the shared Synapse.
    pub async fn start() -> Self {
        Self::start_with(tokio::task::spawn_blocking(synapse).await.unwrap()).await
    }

    /// A fresh Hearth and a Synapse of this test's own ([`Synapse::private`]).
    pub async fn start_private() -> Self {
        let synapse = tokio::task::spawn_blocking(Synapse::private).await.unwrap();
        Self::start_with(Arc::new(synapse)).await
    }

    /// A fresh Hearth with its configuration changed by `change`, and the shared Synapse.
    pub async fn start_configured(change: impl Fn(&mut hearth::config::Config)) -> Self {
        let synapse = tokio::task::spawn_blocking(synapse).await.unwrap();
        Self::start_with_config(synapse, &|_, config| change(config)).await
    }

    async fn start_with(synapse: Arc<Synapse>) -> Self {
        Self::start_with_config(synapse, &|_, _| {}).await
    }

    async fn start_with_config(
        synapse: Arc<Synapse>,
        change: &impl Fn(usize, &mut hearth::config::Config),
    ) -> Self {
        println!(
            "Synapse {} at {} (started in {:?})",
            synapse.name, synapse.base, synapse.started_in
        );
        let dir = &synapse.dir;
        let hearth = fed_common::start_one(
            0,
            &dir.join("ca.pem"),
            &dir.join("cert.pem"),
            &dir.join("key.pem"),
            change,
        )
        .await;
        Self {
            hearth,
            syn: Syn {
                name: synapse.name.clone(),
                server: synapse,
                // Bounded: a request Synapse never answers fails the test instead of hanging.
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .unwrap(),
            },
        }
    }

    /// Registers a Hearth user (a unique name from `prefix`).
    pub async fn hearth_user(&self, prefix: &str) -> Dev {
        Dev::register(&self.hearth, &unique(prefix)).await
    }

    /// Synapse's recent warnings about this test's Hearth, and its errors.
    pub fn log(&self) -> String {
        log_excerpt(&self.syn.server.dir, Some(&self.hearth.name))
    }

    /// Panics with `what` and Synapse's recent warnings and errors unless `ok`.
    #[track_caller]
    pub fn ensure(&self, ok: bool, what: impl Display) {
        if !ok {
            panic!("{what}\n{}", self.log());
        }
    }

    /// `ensure(left == right)`, showing both.
    #[track_caller]
    pub fn ensure_eq<T: PartialEq + std::fmt::Debug>(&self, left: T, right: T, what: impl Display) {
        if left != right {
            panic!(
                "{what}\n  left: {left:?}\n right: {right:?}\n{}",
                self.log()
            );
        }
    }

    /// Polls `check` until it returns `Some` (at most 300 times, 30 s); panics with `what`
    /// and Synapse's log if it never does. Federation is asynchronous on both servers.
    pub async fn eventually<T, F, Fut>(&self, what: &str, check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        self.eventually_within(Duration::from_secs(30), what, check)
            .await
    }

    /// [`Pair::eventually`] with another time limit (at most ten polls a second).
    pub async fn eventually_within<T, F, Fut>(&self, limit: Duration, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let began = Instant::now();
        let polls = limit.as_millis() / 100;
        for _ in 0..polls.max(1) {
            if let Some(found) = check().await {
                return found;
            }
            if began.elapsed() > limit {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out waiting: {what}\n{}", self.log());
    }
}

/// Either server, as its clients see it: the room tests run each scenario in both
/// directions with the same code.
#[derive(Clone, Copy)]
pub enum Side<'a> {
    Hearth(&'a FedServer),
    Synapse(&'a Syn),
}

impl Side<'_> {
    /// "Hearth" or "Synapse", for messages.
    pub fn label(&self) -> &'static str {
        match self {
            Side::Hearth(_) => "Hearth",
            Side::Synapse(_) => "Synapse",
        }
    }

    /// The server name.
    pub fn name(&self) -> &str {
        match self {
            Side::Hearth(s) => &s.name,
            Side::Synapse(s) => &s.name,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        match self {
            Side::Hearth(s) => s.call(method, path, Some(token), body).await,
            Side::Synapse(s) => s.call(method, path, Some(token), body).await,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, token, Some(body)).await
    }
}

impl Pair {
    pub fn hearth_side(&self) -> Side<'_> {
        Side::Hearth(&self.hearth)
    }

    pub fn synapse_side(&self) -> Side<'_> {
        Side::Synapse(&self.syn)
    }
}
