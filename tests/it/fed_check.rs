//! `hearth check` for federation: it follows discovery for our own server name as a remote
//! server would, fetches our keys through it, and names what is broken. Against a real
//! federating server (an IP-literal server name whose one TLS listener serves the client and
//! federation APIs), and against small TLS servers and a DNS server on loopback that play a
//! broken deployment.

use std::process::Command;

use ruma::signatures::Ed25519KeyPair;
use ruma::CanonicalJsonObject;
use serde_json::json;

use crate::fed_common::start_many;
use crate::fed_discovery::{Answer, FakeDns, TestCa, TlsServer, Zone};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

/// `hearth check` with `server_name` and extra environment; (success, output).
fn check(server_name: &str, env: &[(&str, String)], args: &[String]) -> (bool, String) {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .env_clear()
        .env("HEARTH_SERVER_NAME", server_name)
        .env("HEARTH_DATA_DIR", data.path())
        .env("HEARTH_LOG_LEVEL", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("check")
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// [`check`] off the runtime's threads (the servers it checks run on them).
async fn check_async(server_name: &str, args: &[String]) -> (bool, String) {
    let (name, args) = (server_name.to_owned(), args.to_vec());
    tokio::task::spawn_blocking(move || check(&name, &[], &args))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fetches_our_keys_from_a_running_server_through_discovery() {
    let fed = start_many(1).await;
    let server = &fed.servers[0];
    let ca = fed._certs.path().join("ca.pem");
    let args = ["--ca".to_owned(), ca.display().to_string()];
    let (ok, text) = check_async(&server.name, &args).await;
    assert!(ok, "{text}");
    assert!(
        text.contains("is an IP address or has a port: no .well-known lookup"),
        "{text}"
    );
    let port = server.name.rsplit_once(':').unwrap().1;
    assert!(
        text.contains(&format!(
            "connects to 127.0.0.1:{port}; the certificate must be valid for 127.0.0.1; Host: 127.0.0.1:{port}"
        )),
        "{text}"
    );
    assert!(
        text.contains("certificate valid for 127.0.0.1, localhost"),
        "{text}"
    );
    assert!(
        text.contains("/_matrix/key/v2/server: keys ed25519:")
            && text.contains(&format!("for {}, self-signature valid", server.name)),
        "{text}"
    );
    // The same listener serves the client API.
    assert!(
        text.contains("client API answers /_matrix/client/versions"),
        "{text}"
    );
    assert!(text.contains("no problems found"), "{text}");

    // Without the CA the certificate is refused, and check says so.
    let (ok, text) = check_async(&server.name, &[]).await;
    assert!(!ok, "{text}");
    assert!(text.contains("PROBLEM: TLS with 127.0.0.1:"), "{text}");
}

/// A signed `/_matrix/key/v2/server` answer for `name`; `tamper` changes it after signing.
fn key_response(name: &str, tamper: impl FnOnce(&mut CanonicalJsonObject)) -> Vec<u8> {
    let der = Ed25519KeyPair::generate();
    let key = Ed25519KeyPair::from_der(&der, "k1".into()).unwrap();
    let public: ruma::serde::Base64 = ruma::serde::Base64::new(key.public_key().to_vec());
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 3_600_000;
    let value = json!({
        "server_name": name,
        "valid_until_ts": until,
        "verify_keys": {"ed25519:k1": {"key": public.encode()}},
        "old_verify_keys": {},
    });
    let mut object: CanonicalJsonObject = serde_json::from_value(value).unwrap();
    ruma::signatures::sign_json(name, &key, &mut object).unwrap();
    tamper(&mut object);
    serde_json::to_vec(&object).unwrap()
}

/// A deployment of `example.test`: the well-known (and client API) on one server delegating to
/// `delegate`, and a federation server answering `/_matrix/key/v2/server` with `keys`, with a
/// certificate for `fed_names`. Returns the check's output.
async fn deployment(
    delegate: impl Fn(u16) -> String,
    fed_names: &[&str],
    keys: Vec<u8>,
    env: &[(&'static str, String)],
) -> (bool, String) {
    let ca = TestCa::new();
    let fed = TlsServer::start(ca.server_config(fed_names), move |path| -> Answer {
        match path {
            "/_matrix/key/v2/server" => (200, Vec::new(), keys.clone()),
            _ => (404, Vec::new(), Vec::new()),
        }
    })
    .await;
    let well_known = json!({"m.server": delegate(fed.port())})
        .to_string()
        .into_bytes();
    let wk = TlsServer::start(ca.server_config(&["example.test"]), move |path| -> Answer {
        match path {
            "/.well-known/matrix/server" => (200, Vec::new(), well_known.clone()),
            "/_matrix/client/versions" => (200, Vec::new(), br#"{"versions":["v1.11"]}"#.to_vec()),
            _ => (404, Vec::new(), Vec::new()),
        }
    })
    .await;
    let dns = FakeDns::start(Zone::default().a(&["example.test", "matrix.test"])).await;
    let args = [
        "--ca".to_owned(),
        ca.pem.display().to_string(),
        "--test-well-known-port".to_owned(),
        wk.port().to_string(),
        "--test-dns".to_owned(),
        dns.addr.to_string(),
    ];
    let env = env.to_vec();
    tokio::task::spawn_blocking(move || check("example.test", &env, &args))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_follows_well_known_and_names_what_is_broken() {
    let good = key_response("example.test", |_| {});
    // All well: delegated by well-known, certificate for the delegated name, keys signed.
    let (ok, text) = deployment(
        |p| format!("matrix.test:{p}"),
        &["matrix.test"],
        good.clone(),
        &[],
    )
    .await;
    assert!(ok, "{text}");
    assert!(
        text.contains("https://example.test/.well-known/matrix/server delegates to matrix.test:"),
        "{text}"
    );
    assert!(text.contains("self-signature valid"), "{text}");

    // The delegation points to a port where nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let (ok, text) = deployment(
        move |_| format!("matrix.test:{closed_port}"),
        &["matrix.test"],
        good.clone(),
        &[],
    )
    .await;
    assert!(!ok);
    assert!(
        text.contains(&format!(
            "PROBLEM: the well-known delegation points to matrix.test:{closed_port}, but nothing listens there"
        )),
        "{text}"
    );

    // A certificate for another name.
    let (ok, text) = deployment(
        |p| format!("matrix.test:{p}"),
        &["wrong.test"],
        good.clone(),
        &[],
    )
    .await;
    assert!(!ok);
    assert!(
        text.contains("is for wrong.test, not matrix.test"),
        "{text}"
    );

    // Keys of another server.
    let other = key_response("other.test", |_| {});
    let (ok, text) = deployment(|p| format!("matrix.test:{p}"), &["matrix.test"], other, &[]).await;
    assert!(!ok);
    assert!(
        text.contains("the key response is for another server name: other.test, not example.test"),
        "{text}"
    );

    // Keys changed after signing.
    let tampered = key_response("example.test", |o| {
        let later = ruma::Int::try_from(4_000_000_000_000i64).unwrap();
        o.insert(
            "valid_until_ts".into(),
            ruma::CanonicalJsonValue::Integer(later),
        );
    });
    let (ok, text) = deployment(
        |p| format!("matrix.test:{p}"),
        &["matrix.test"],
        tampered,
        &[],
    )
    .await;
    assert!(!ok);
    assert!(
        text.contains("self-signature of the key response does not verify"),
        "{text}"
    );

    // The configuration delegates elsewhere than the well-known that is served.
    let env = [("HEARTH_WELL_KNOWN__SERVER", "matrix.test:1".to_owned())];
    let (ok, text) = deployment(|p| format!("matrix.test:{p}"), &["matrix.test"], good, &env).await;
    assert!(!ok);
    assert!(
        text.contains("the configuration delegates to matrix.test:1 ([well_known] server), but"),
        "{text}"
    );
}

#[test]
fn key_responses_are_checked() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let check = |body: &[u8]| hearth::cli::check::check_key_response(body, "example.test", now);
    assert!(check(&key_response("example.test", |_| {})).is_ok());
    let unsigned = key_response("example.test", |o| {
        o.remove("signatures");
    });
    assert!(check(&unsigned)
        .unwrap_err()
        .contains("not signed by example.test"));
    let expired = key_response("example.test", |o| {
        o.insert(
            "valid_until_ts".into(),
            ruma::CanonicalJsonValue::Integer(1000u32.into()),
        );
    });
    assert!(check(&expired).unwrap_err().contains("expired"));
    assert!(check(b"[]")
        .unwrap_err()
        .contains("not a canonical JSON object"));
}
