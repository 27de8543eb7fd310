//! E-mail 3PIDs: validation mails through a real SMTP server on loopback (`aiosmtpd`, driven
//! by `tests/email/smtp_sink.py` with the Python named in `SMTP_SINK_PYTHON`), adding and
//! removing addresses, forgotten-password reset, registration with an e-mail address, and the
//! error cases. The SMTP tests are `#[ignore]`d for a plain `cargo test`; `.ci/run` installs
//! aiosmtpd and runs them. The tests without mail delivery (`email_no_delivery.rs`) always run.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hearth::{
    config::{Email, SmtpSecurity},
    service::threepids::ValidationSessions,
    store::Batch,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{errcode, TestServer};

pub(crate) const PUBLIC_BASE: &str = "https://hearth.test";

/// The SMTP sink process and the directory it writes mails to; killed when dropped.
struct Sink {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Sink {
    fn start() -> Sink {
        let python = std::env::var("SMTP_SINK_PYTHON").unwrap_or_else(|_| {
            panic!("SMTP_SINK_PYTHON must name a Python with aiosmtpd (.ci/run sets one up)")
        });
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/email/smtp_sink.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the SMTP sink starts");
        // The port line comes once the socket listens; a sink that dies closes stdout.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the SMTP sink did not start (is aiosmtpd installed?): {line:?}")
        });
        Sink { child, dir, port }
    }

    fn path(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("{n:04}.eml"))
    }

    /// Mail number `n` (from 1), decoded: waits up to 10 s for it.
    async fn mail(&self, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(raw) = std::fs::read_to_string(self.path(n)) {
                return decode_quoted_printable(&raw);
            }
            assert!(Instant::now() < deadline, "mail {n} did not arrive");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn count(&self) -> usize {
        (1..)
            .take_while(|n| self.path(*n).exists())
            .take(1000)
            .count()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Undoes quoted-printable (the mail's long link lines are soft-wrapped and `=` escaped).
fn decode_quoted_printable(raw: &str) -> String {
    let joined = raw.replace("=\r\n", "").replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'=', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn email_config(port: u16) -> Email {
    Email {
        host: Some("127.0.0.1".into()),
        port,
        security: SmtpSecurity::None,
        from: Some("Hearth <noreply@hearth.test>".into()),
        base_url: Some(PUBLIC_BASE.into()),
        ..Default::default()
    }
}

async fn start_with_mail(sink: &Sink) -> TestServer {
    let port = sink.port;
    TestServer::start_with(|c| c.email = email_config(port)).await
}

/// The validation link of a mail, pointed at the test server, and the code in it.
fn link_and_code(srv: &TestServer, mail: &str) -> (String, String) {
    let start = mail
        .find(&format!("{PUBLIC_BASE}/_hearth/email/validate?"))
        .expect("the mail has a validation link");
    let link: String = mail[start..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    let code = mail
        .split("enter this code in your app: ")
        .nth(1)
        .expect("the mail has the code")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    (link.replacen(PUBLIC_BASE, &srv.base, 1), code)
}

/// Follows a validation link without following a redirect.
pub(crate) async fn click(link: &str) -> reqwest::Response {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(link)
        .send()
        .await
        .unwrap()
}

pub(crate) async fn request_token(
    srv: &TestServer,
    kind: &str,
    secret: &str,
    email: &str,
    attempt: u64,
) -> (StatusCode, Value) {
    let path = match kind {
        "add" => "/_matrix/client/v3/account/3pid/email/requestToken",
        "register" => "/_matrix/client/v3/register/email/requestToken",
        _ => "/_matrix/client/v3/account/password/email/requestToken",
    };
    srv.post(
        path,
        None,
        json!({"client_secret": secret, "email": email, "send_attempt": attempt}),
    )
    .await
}

pub(crate) fn email_auth(sid: &str, secret: &str, session: &str) -> Value {
    json!({"type": "m.login.email.identity", "threepid_creds": {"sid": sid, "client_secret": secret}, "session": session})
}

/// Adds `email` to the account with password UIA; `n` is the number the mail will have.
async fn add_email(
    srv: &TestServer,
    sink: &Sink,
    n: usize,
    (user, password, token): (&str, &str, &str),
    email: &str,
) {
    let secret = format!("add-{n}");
    let (status, body) = request_token(srv, "add", &secret, email, 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sid = body["sid"].as_str().unwrap().to_owned();
    let (link, _) = link_and_code(srv, &sink.mail(n).await);
    assert_eq!(click(&link).await.status(), StatusCode::OK);
    let add = json!({"sid": sid, "client_secret": secret});
    let (status, challenge) = srv
        .post(
            "/_matrix/client/v3/account/3pid/add",
            Some(token),
            add.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    let mut add = add;
    add["auth"] = TestServer::password_auth(user, password, challenge["session"].as_str().unwrap());
    let (status, body) = srv
        .post("/_matrix/client/v3/account/3pid/add", Some(token), add)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn threepids(srv: &TestServer, token: &str) -> Vec<Value> {
    let (status, body) = srv
        .get("/_matrix/client/v3/account/3pid", Some(token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["threepids"].as_array().expect("a list").clone()
}

#[tokio::test]
#[ignore = "needs aiosmtpd: a Python in SMTP_SINK_PYTHON; .ci/run runs it"]
async fn add_list_and_delete_an_address() {
    let sink = Sink::start();
    let srv = start_with_mail(&sink).await;
    let (_, token, _) = srv.register("alice", "alice-password").await;
    assert!(threepids(&srv, &token).await.is_empty());
    let (_, caps) = srv
        .get("/_matrix/client/v3/capabilities", Some(&token))
        .await;
    // Enabled is the default, which ruma leaves out.
    assert_ne!(
        caps["capabilities"]["m.3pid_changes"]["enabled"], false,
        "{caps}"
    );

    let (status, body) = request_token(&srv, "add", "s3cret", "Alice@Example.org", 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sid = body["sid"].as_str().unwrap().to_owned();
    assert!(body["submit_url"]
        .as_str()
        .unwrap()
        .starts_with(PUBLIC_BASE));
    let mail = sink.mail(1).await;
    assert!(mail.contains("X-Envelope-To: alice@example.org"), "{mail}");
    for header in [
        "From: Hearth <noreply@hearth.test>",
        "To: alice@example.org",
        "Subject: Confirm your e-mail address",
        "Content-Type: text/plain; charset=utf-8",
    ] {
        assert!(mail.contains(header), "{header}: {mail}");
    }
    // The same attempt again: the same session, and no second mail.
    let (status, again) = request_token(&srv, "add", "s3cret", "alice@example.org", 1).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["sid"], sid);
    assert_eq!(sink.count(), 1);

    // Not validated yet.
    let add = json!({"sid": sid, "client_secret": "s3cret"});
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/account/3pid/add",
            Some(&token),
            add.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(errcode(&body), "M_THREEPID_AUTH_FAILED");

    let (link, _) = link_and_code(&srv, &mail);
    let page = click(&link).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("confirmed"));

    // UIA: the password first.
    let (status, challenge) = srv
        .post(
            "/_matrix/client/v3/account/3pid/add",
            Some(&token),
            add.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    assert_eq!(
        challenge["flows"],
        json!([{"stages": ["m.login.password"]}])
    );
    let mut authed = add.clone();
    authed["auth"] = TestServer::password_auth(
        "alice",
        "alice-password",
        challenge["session"].as_str().unwrap(),
    );
    let (status, body) = srv
        .post("/_matrix/client/v3/account/3pid/add", Some(&token), authed)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let list = threepids(&srv, &token).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["medium"], "email");
    assert_eq!(list[0]["address"], "alice@example.org");
    assert!(list[0]["validated_at"].as_u64().unwrap() > 0);
    assert!(list[0]["added_at"].as_u64().unwrap() > 0);

    // The session is spent.
    let (status, body) = srv
        .post("/_matrix/client/v3/account/3pid/add", Some(&token), add)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(errcode(&body), "M_THREEPID_AUTH_FAILED");
    // The address is taken, for adding and for registering.
    for kind in ["add", "register"] {
        let (status, body) = request_token(&srv, kind, "other", "alice@example.org", 1).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(errcode(&body), "M_THREEPID_IN_USE");
    }

    let delete = json!({"medium": "email", "address": "alice@example.org"});
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/account/3pid/delete",
            Some(&token),
            delete.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id_server_unbind_result"], "no-support");
    assert!(threepids(&srv, &token).await.is_empty());
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/account/3pid/delete",
            Some(&token),
            delete,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(errcode(&body), "M_THREEPID_NOT_FOUND");
    // Free again.
    let (status, body) = request_token(&srv, "register", "free", "alice@example.org", 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A forgotten password: the reset needs no access token, only the validated address.
#[tokio::test]
#[ignore = "needs aiosmtpd: a Python in SMTP_SINK_PYTHON; .ci/run runs it"]
async fn forgotten_password_reset() {
    let sink = Sink::start();
    let srv = start_with_mail(&sink).await;
    let (_, token, _) = srv.register("carol", "old-password").await;
    add_email(
        &srv,
        &sink,
        1,
        ("carol", "old-password", &token),
        "carol@example.org",
    )
    .await;
    let (status, other) = srv.login("carol", "old-password").await;
    assert_eq!(status, StatusCode::OK);
    let other_token = other["access_token"].as_str().unwrap().to_owned();

    let (status, body) = request_token(&srv, "password", "r1", "nobody@example.org", 1).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(errcode(&body), "M_THREEPID_NOT_FOUND");

    let (status, body) = srv
        .post(
            "/_matrix/client/v3/account/password/email/requestToken",
            None,
            json!({"client_secret": "r1", "email": "carol@example.org", "send_attempt": 1,
                   "next_link": "https://app.example.org/done"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sid = body["sid"].as_str().unwrap().to_owned();
    let reset = json!({"new_password": "new-password"});
    let (status, challenge) = srv
        .post("/_matrix/client/v3/account/password", None, reset.clone())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    assert_eq!(
        challenge["flows"],
        json!([{"stages": ["m.login.email.identity"]}])
    );
    let session = challenge["session"].as_str().unwrap().to_owned();
    let mut with_auth = reset.clone();
    with_auth["auth"] = email_auth(&sid, "r1", &session);
    // Before the link is followed the stage fails.
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/account/password",
            None,
            with_auth.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(errcode(&body), "M_THREEPID_AUTH_FAILED");

    let mail = sink.mail(2).await;
    assert!(mail.contains("Subject: Reset your password"), "{mail}");
    let (link, _) = link_and_code(&srv, &mail);
    let page = click(&link).await;
    assert_eq!(page.status(), StatusCode::FOUND);
    assert_eq!(page.headers()["location"], "https://app.example.org/done");

    let (status, body) = srv
        .post(
            "/_matrix/client/v3/account/password",
            None,
            with_auth.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        srv.login("carol", "old-password").await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(srv.login("carol", "new-password").await.0, StatusCode::OK);
    // Every device is logged out (there was no access token to keep).
    for t in [&token, &other_token] {
        let (status, body) = srv.get("/_matrix/client/v3/account/whoami", Some(t)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    // The session was spent.
    let (status, challenge) = srv
        .post("/_matrix/client/v3/account/password", None, reset.clone())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut again = reset;
    again["auth"] = email_auth(&sid, "r1", challenge["session"].as_str().unwrap());
    let (status, body) = srv
        .post("/_matrix/client/v3/account/password", None, again)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(errcode(&body), "M_THREEPID_AUTH_FAILED");

    // Again through submit_url with the code, keeping the other devices.
    let (_, login) = srv.login("carol", "new-password").await;
    let kept = login["access_token"].as_str().unwrap().to_owned();
    let (status, body) = request_token(&srv, "password", "r2", "carol@example.org", 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sid = body["sid"].as_str().unwrap().to_owned();
    let submit_url = body["submit_url"]
        .as_str()
        .unwrap()
        .replacen(PUBLIC_BASE, &srv.base, 1);
    let (_, code) = link_and_code(&srv, &sink.mail(3).await);
    let wrong = srv
        .http
        .post(&submit_url)
        .json(&json!({"sid": sid, "client_secret": "r2", "token": "WRONG"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    assert_eq!(errcode(&wrong.json().await.unwrap()), "M_TOKEN_INCORRECT");
    let right = srv
        .http
        .post(&submit_url)
        .json(&json!({"sid": sid, "client_secret": "r2", "token": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::OK);
    assert_eq!(
        right.json::<Value>().await.unwrap(),
        json!({"success": true})
    );
    let reset = json!({"new_password": "newer-password", "logout_devices": false});
    let (_, challenge) = srv
        .post("/_matrix/client/v3/account/password", None, reset.clone())
        .await;
    let mut with_auth = reset;
    with_auth["auth"] = email_auth(&sid, "r2", challenge["session"].as_str().unwrap());
    let (status, body) = srv
        .post("/_matrix/client/v3/account/password", None, with_auth)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(srv.login("carol", "newer-password").await.0, StatusCode::OK);
    // The address identifies the account at login too.
    let by_email = |password: &str| {
        json!({"type": "m.login.password", "password": password,
               "identifier": {"type": "m.id.thirdparty", "medium": "email", "address": "Carol@Example.org"}})
    };
    let (status, body) = srv
        .post("/_matrix/client/v3/login", None, by_email("newer-password"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["user_id"].as_str().unwrap().starts_with("@carol:"));
    let (status, _) = srv
        .post("/_matrix/client/v3/login", None, by_email("new-password"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = srv
        .get("/_matrix/client/v3/account/whoami", Some(&kept))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
#[ignore = "needs aiosmtpd: a Python in SMTP_SINK_PYTHON; .ci/run runs it"]
async fn register_with_an_email_address() {
    let sink = Sink::start();
    let srv = start_with_mail(&sink).await;
    let (status, challenge) = srv
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": "dave", "password": "dave-password"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge["flows"],
        json!([{"stages": ["m.login.dummy"]}, {"stages": ["m.login.email.identity"]}])
    );
    let session = challenge["session"].as_str().unwrap().to_owned();
    let (status, body) = request_token(&srv, "register", "reg", "dave@example.org", 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sid = body["sid"].as_str().unwrap().to_owned();
    let (link, _) = link_and_code(&srv, &sink.mail(1).await);
    assert_eq!(click(&link).await.status(), StatusCode::OK);
    // Following the link twice is harmless.
    assert_eq!(click(&link).await.status(), StatusCode::OK);
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": "dave", "password": "dave-password", "auth": email_auth(&sid, "reg", &session)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"].as_str().unwrap();
    let list = threepids(&srv, token).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["address"], "dave@example.org");
    let (status, body) = request_token(&srv, "register", "reg2", "dave@example.org", 1).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(errcode(&body), "M_THREEPID_IN_USE");

    // Deactivation removes the address: a password reset finds no account, a new
    // registration may use it.
    let (_, challenge) = srv
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(token),
            json!({}),
        )
        .await;
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(token),
            json!({"auth": TestServer::password_auth("dave", "dave-password", challenge["session"].as_str().unwrap())}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id_server_unbind_result"], "no-support");
    let (status, body) = request_token(&srv, "password", "pw", "dave@example.org", 1).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(errcode(&body), "M_THREEPID_NOT_FOUND");
    let (status, body) = request_token(&srv, "register", "reg3", "dave@example.org", 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
#[ignore = "needs aiosmtpd: a Python in SMTP_SINK_PYTHON; .ci/run runs it"]
async fn validation_errors_expiry_and_rate_limit() {
    let sink = Sink::start();
    let srv = start_with_mail(&sink).await;
    for (body, what) in [
        (
            json!({"client_secret": "bad secret!", "email": "e@example.org", "send_attempt": 1}),
            "client_secret",
        ),
        (
            json!({"client_secret": "ok", "email": "not an address", "send_attempt": 1}),
            "email",
        ),
        (
            json!({"client_secret": "ok", "email": "e@example.org", "send_attempt": 1, "next_link": "javascript:alert(1)"}),
            "next_link",
        ),
    ] {
        let (status, body) = srv
            .post("/_matrix/client/v3/register/email/requestToken", None, body)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert_eq!(errcode(&body), "M_INVALID_PARAM", "{what}");
    }
    assert_eq!(sink.count(), 0);

    // An expired link.
    let (status, body) = request_token(&srv, "register", "exp", "erin@example.org", 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sid = body["sid"].as_str().unwrap().to_owned();
    let (link, _) = link_and_code(&srv, &sink.mail(1).await);
    let store = &srv.server.as_ref().unwrap().services.store;
    let mut session = store.get::<ValidationSessions>(&sid).unwrap().unwrap();
    session.expires_ms = 1;
    let mut batch = Batch::new();
    batch.put::<ValidationSessions>(&sid, &session);
    store.commit(batch).await.unwrap();
    let page = click(&link).await;
    assert_eq!(page.status(), StatusCode::BAD_REQUEST);
    assert!(page.text().await.unwrap().contains("expired"));
    // A link with a wrong token.
    let (status, body) = request_token(&srv, "register", "tok", "erin@example.org", 1).await;
    assert_eq!(status, StatusCode::OK);
    let sid = body["sid"].as_str().unwrap().to_owned();
    let (link, _) = link_and_code(&srv, &sink.mail(2).await);
    assert_eq!(
        click(&format!("{link}X")).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(click(&link).await.status(), StatusCode::OK);
    // A validated session that expired cannot register.
    let mut session = store.get::<ValidationSessions>(&sid).unwrap().unwrap();
    session.expires_ms = 1;
    let mut batch = Batch::new();
    batch.put::<ValidationSessions>(&sid, &session);
    store.commit(batch).await.unwrap();
    let (_, challenge) = srv
        .post("/_matrix/client/v3/register", None, json!({}))
        .await;
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": "erin", "password": "erin-password",
                   "auth": email_auth(&sid, "tok", challenge["session"].as_str().unwrap())}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(errcode(&body), "M_THREEPID_AUTH_FAILED");

    // Higher send_attempts send reminders, up to the per-address limit (5 an hour).
    for attempt in 1..=3 {
        let (status, body) =
            request_token(&srv, "register", "rem", "erin@example.org", attempt).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(sink.count(), 5);
    let (status, body) = request_token(&srv, "register", "rem", "erin@example.org", 4).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(errcode(&body), "M_LIMIT_EXCEEDED");
    assert_eq!(sink.count(), 5);
}
