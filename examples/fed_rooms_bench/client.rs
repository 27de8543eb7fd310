//! The client API calls of the benchmark.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Semaphore;

#[derive(Clone)]
pub struct User {
    pub id: String,
    pub token: String,
    pub base: String,
}

pub async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> Value {
    for attempt in 0.. {
        let mut request = http.request(method.clone(), &url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = &body {
            request = request.json(body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let value: Value = response.json().await.unwrap_or(Value::Null);
                // Registration has a rate limit of its own: wait as asked.
                if status == 429 && attempt < 600 {
                    let ms = value["retry_after_ms"].as_u64().unwrap_or(500);
                    tokio::time::sleep(Duration::from_millis(ms.min(100))).await;
                    continue;
                }
                // 401 is the first step of registration (user-interactive auth).
                if status.is_success() || status == 401 {
                    return value;
                }
                panic!("{method} {url}: {status} {value}");
            }
            Err(e) if attempt < 5 => {
                eprintln!("{method} {url}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{method} {url}: {e}"),
        }
    }
    unreachable!()
}

impl User {
    pub async fn register(http: &reqwest::Client, base: &str, name: &str) -> User {
        let url = format!("{base}/_matrix/client/v3/register");
        let body = json!({"username": name, "password": "benchmark-password"});
        let first = call(http, reqwest::Method::POST, url.clone(), None, Some(body)).await;
        let body = json!({"username": name, "password": "benchmark-password",
            "auth": {"type": "m.login.dummy", "session": first["session"]}});
        let done = call(http, reqwest::Method::POST, url, None, Some(body)).await;
        User {
            id: done["user_id"].as_str().expect("registered").to_owned(),
            token: done["access_token"].as_str().unwrap().to_owned(),
            base: base.to_owned(),
        }
    }

    pub async fn post(&self, http: &reqwest::Client, path: &str, body: Value) -> Value {
        let url = format!("{}/_matrix/client/v3/{path}", self.base);
        call(
            http,
            reqwest::Method::POST,
            url,
            Some(&self.token),
            Some(body),
        )
        .await
    }

    pub async fn put(&self, http: &reqwest::Client, path: &str, body: Value) -> Value {
        let url = format!("{}/_matrix/client/v3/{path}", self.base);
        call(
            http,
            reqwest::Method::PUT,
            url,
            Some(&self.token),
            Some(body),
        )
        .await
    }

    pub async fn get(&self, http: &reqwest::Client, path: &str) -> Value {
        let url = format!("{}/_matrix/client/v3/{path}", self.base);
        call(http, reqwest::Method::GET, url, Some(&self.token), None).await
    }

    pub async fn create_room(&self, http: &reqwest::Client, version: &Option<String>) -> String {
        let mut body = json!({"preset": "public_chat", "name": "bench"});
        if let Some(v) = version {
            body["room_version"] = json!(v);
        }
        let created = self.post(http, "createRoom", body).await;
        created["room_id"]
            .as_str()
            .expect("room created")
            .to_owned()
    }

    pub async fn join(&self, http: &reqwest::Client, room: &str, via: Option<&str>) {
        let path = match via {
            Some(server) => format!("join/{}?server_name={}", enc(room), enc(server)),
            None => format!("join/{}", enc(room)),
        };
        self.post(http, &path, json!({})).await;
    }

    pub async fn send(&self, http: &reqwest::Client, room: &str, txn: &str, body: &str) {
        let path = format!("rooms/{}/send/m.room.message/{txn}", enc(room));
        self.put(http, &path, json!({"msgtype": "m.text", "body": body}))
            .await;
    }

    /// A `/sync` without room state (the timeline's last events only); `None`: initial.
    pub async fn sync(
        &self,
        http: &reqwest::Client,
        since: Option<&str>,
        timeout_ms: u64,
    ) -> Value {
        let filter = enc(
            r#"{"room":{"state":{"types":[]},"timeline":{"limit":50}},"presence":{"types":[]}}"#,
        );
        let mut path = format!("sync?timeout={timeout_ms}&filter={filter}");
        if let Some(since) = since {
            path.push_str(&format!("&since={}", enc(since)));
        }
        self.get(http, &path).await
    }

    /// Long-polls `/sync` from `since` until a message with `body` arrives in `room`.
    pub async fn wait_for(&self, http: &reqwest::Client, room: &str, since: &str, body: &str) {
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut since = since.to_owned();
        loop {
            let sync = self.sync(http, Some(&since), 10_000).await;
            let events = &sync["rooms"]["join"][room]["timeline"]["events"];
            if events
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["content"]["body"] == body))
            {
                return;
            }
            since = sync["next_batch"].as_str().expect("next_batch").to_owned();
            assert!(Instant::now() < deadline, "{} never saw {body:?}", self.id);
        }
    }

    /// The body of the room's latest message event (as this server has it).
    pub async fn latest_body(&self, http: &reqwest::Client, room: &str) -> Option<String> {
        let filter = enc(r#"{"types":["m.room.message"]}"#);
        let path = format!("rooms/{}/messages?dir=b&limit=1&filter={filter}", enc(room));
        let page = self.get(http, &path).await;
        page["chunk"][0]["content"]["body"]
            .as_str()
            .map(str::to_owned)
    }
}

pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs `f(i)` for `i` in `0..n`, `limit` at a time.
pub async fn bounded<F, Fut>(n: usize, limit: usize, f: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limit));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let work = f(i);
        tasks.push(tokio::spawn(async move {
            work.await;
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}
