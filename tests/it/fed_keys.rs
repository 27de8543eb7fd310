//! Server signing keys between real servers on loopback: our key response, rotation, remote
//! keys fetched and cached, the notary endpoints, expiry, and forged key responses served by
//! a small TLS server of the test.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use hearth::config::TrustedKeyServer;
use hearth::service::federation::keyring::KeyRing;
use reqwest::StatusCode;
use ruma::{
    serde::Base64,
    signatures::{Ed25519KeyPair, PublicKeyMap},
    CanonicalJsonObject, MilliSecondsSinceUnixEpoch, ServerName,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::TestServer;
use crate::fed_common::{start_many, FedServer};

const DAY: u64 = 24 * 3_600_000;
const BIN: &str = env!("CARGO_BIN_EXE_hearth");

fn keyring(s: &TestServer) -> &KeyRing {
    &s.server.as_ref().expect("running").services.keyring
}

fn now() -> u64 {
    hearth::service::users::now_ms()
}

fn at(ms: u64) -> MilliSecondsSinceUnixEpoch {
    MilliSecondsSinceUnixEpoch(ms.try_into().unwrap())
}

fn name(s: &FedServer) -> &ServerName {
    <&ServerName>::try_from(s.name.as_str()).unwrap()
}

/// Checks that `object` is signed by `entity` with `keys` (key id → unpadded base64).
fn verify_signed(object: &Value, entity: &str, keys: &BTreeMap<String, String>) {
    let object: CanonicalJsonObject = serde_json::from_value(object.clone()).unwrap();
    let set = keys
        .iter()
        .map(|(id, key)| (id.clone(), Base64::parse(key).unwrap()))
        .collect();
    let map = PublicKeyMap::from([(entity.to_owned(), set)]);
    // `verify_json` wants keys for every signer: check `entity`'s signatures alone.
    let mut only = object.clone();
    if let Some(ruma::CanonicalJsonValue::Object(signatures)) = only.get_mut("signatures") {
        signatures.retain(|e, _| e == entity);
    }
    ruma::signatures::verify_json(&map, &only)
        .unwrap_or_else(|e| panic!("signature of {entity}: {e}"));
}

/// `verify_keys` of a key response, as key id → key.
fn verify_keys_of(response: &Value) -> BTreeMap<String, String> {
    response["verify_keys"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, k)| (id.clone(), k["key"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test]
async fn our_key_response_is_self_signed_and_fresh() {
    let srv = TestServer::start().await;
    let before = now();
    let (status, body) = srv.get("/_matrix/key/v2/server", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let keys = hearth::service::keys::ServerKeys::load(&srv.config.data_dir.join("keys")).unwrap();
    assert_eq!(body["server_name"], "localhost");
    let published = verify_keys_of(&body);
    assert_eq!(
        published,
        BTreeMap::from([(keys.key_id(), keys.public_key_base64())])
    );
    assert_eq!(body["old_verify_keys"], json!({}));
    verify_signed(&body, "localhost", &published);
    let until = body["valid_until_ts"].as_u64().unwrap();
    assert!(
        until >= before + 7 * DAY && until <= now() + 7 * DAY,
        "{until}"
    );

    // The deprecated form with a key id answers the same keys.
    let path = format!("/_matrix/key/v2/server/{}", keys.key_id());
    let (status, old_form) = srv.get(&path, None).await;
    assert_eq!(status, StatusCode::OK, "{old_form}");
    assert_eq!(verify_keys_of(&old_form), published);
    verify_signed(&old_form, "localhost", &published);
}

fn rotate(data_dir: &Path) -> String {
    let output = std::process::Command::new(BIN)
        .args(["keys", "rotate"])
        .env_clear()
        .env("HEARTH_DATA_DIR", data_dir)
        .output()
        .expect("hearth runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn rotation_keeps_the_old_key_verifiable() {
    let mut fed = start_many(3).await;
    let old_keys = fed.servers[0].signing_key();
    let old_id = old_keys.key_id();
    // B knows A's key before the rotation.
    let b_has = keyring(&fed.servers[1])
        .verify_keys(name(&fed.servers[0]), &[old_id.clone()], at(now()))
        .await
        .unwrap();
    assert_eq!(b_has.len(), 1);

    // The command refuses while the server holds the data directory.
    let running = std::process::Command::new(BIN)
        .args(["keys", "rotate"])
        .env_clear()
        .env("HEARTH_DATA_DIR", &fed.servers[0].config.data_dir)
        .output()
        .unwrap();
    assert!(!running.status.success());

    fed.servers[0].stop().await;
    let rotated_at = now();
    let said = rotate(&fed.servers[0].config.data_dir);
    assert!(said.contains(&old_id), "{said}");
    fed.servers[0].start_again().await;
    let a = &fed.servers[0];
    let new_keys = a.signing_key();
    assert_ne!(new_keys.key_id(), old_id);

    let (status, body) = a.get("/_matrix/key/v2/server", None).await;
    assert_eq!(status, StatusCode::OK);
    let published = verify_keys_of(&body);
    assert_eq!(published.keys().collect::<Vec<_>>(), [&new_keys.key_id()]);
    verify_signed(&body, &a.name, &published);
    let old = &body["old_verify_keys"][&old_id];
    assert_eq!(old["key"], old_keys.public_key_base64());
    let expired_ts = old["expired_ts"].as_u64().unwrap();
    assert!(expired_ts >= rotated_at && expired_ts <= now());

    // B still accepts the old key for the validity window it fetched, without asking again.
    let requests = keyring(&fed.servers[1]).stats().requests;
    let still = keyring(&fed.servers[1])
        .verify_keys(name(a), &[old_id.clone()], at(now()))
        .await
        .unwrap();
    assert_eq!(still, b_has);
    assert_eq!(keyring(&fed.servers[1]).stats().requests, requests);

    // C, which never saw it, learns it as an old key: valid for what it signed before it
    // expired, not after.
    let c = keyring(&fed.servers[2]);
    let before = c
        .verify_keys(name(a), &[old_id.clone()], at(expired_ts - 1000))
        .await
        .unwrap();
    assert_eq!(before, b_has);
    let after = c
        .verify_keys(name(a), &[old_id.clone()], at(expired_ts + 1))
        .await
        .unwrap_err();
    assert_eq!(after.errcode, "M_UNAUTHORIZED");
    let current = c
        .verify_keys(name(a), &[new_keys.key_id()], at(now()))
        .await
        .unwrap();
    assert_eq!(current.len(), 1);
}

#[tokio::test]
async fn remote_keys_are_fetched_once_and_cached() {
    let mut fed = start_many(2).await;
    let a_keys = fed.servers[0].signing_key();
    let a_name = name(&fed.servers[0]).to_owned();
    let found = keyring(&fed.servers[1])
        .verify_keys(&a_name, &[], at(now()))
        .await
        .unwrap();
    assert_eq!(
        found.keys().collect::<Vec<_>>(),
        [&a_keys.key_id()],
        "all of A's current keys"
    );
    assert_eq!(found[&a_keys.key_id()].encode(), a_keys.public_key_base64());
    assert_eq!(keyring(&fed.servers[1]).stats().requests, 1);

    // A goes down: B answers from its cache, also after a restart of its own.
    fed.servers[0].stop().await;
    let again = keyring(&fed.servers[1])
        .verify_keys(&a_name, &[a_keys.key_id()], at(now()))
        .await
        .unwrap();
    assert_eq!(again, found);
    fed.servers[1].stop().await;
    fed.servers[1].start_again().await;
    let after_restart = keyring(&fed.servers[1])
        .verify_keys(&a_name, &[a_keys.key_id()], at(now()))
        .await
        .unwrap();
    assert_eq!(after_restart, found);
    assert_eq!(keyring(&fed.servers[1]).stats().requests, 0);

    // A key A never had: asked once, then not again for a while, and refused.
    let bogus = ["ed25519:nope".to_owned()];
    for _ in 0..3 {
        let err = keyring(&fed.servers[1])
            .verify_keys(&a_name, &bogus, at(now()))
            .await
            .unwrap_err();
        assert_eq!(err.errcode, "M_UNAUTHORIZED");
    }
    assert_eq!(keyring(&fed.servers[1]).stats().requests, 1);

    // Our own keys need no request.
    let b_name = name(&fed.servers[1]).to_owned();
    let own = keyring(&fed.servers[1])
        .verify_keys(&b_name, &[], at(now()))
        .await
        .unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(keyring(&fed.servers[1]).stats().requests, 1);
}

#[tokio::test]
async fn expired_cached_keys_are_fetched_again() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let ring = keyring(b);
    ring.verify_keys(name(a), &[], at(now())).await.unwrap();
    assert_eq!(ring.stats().requests, 1);
    // Eight days later the cached response is past the 7-day cap.
    ring.age_cached(name(a), 8 * DAY).await.unwrap();
    let found = ring.verify_keys(name(a), &[], at(now())).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(ring.stats().requests, 2);
    // Fresh again: no third request.
    ring.verify_keys(name(a), &[], at(now())).await.unwrap();
    assert_eq!(ring.stats().requests, 2);
}

/// `{"server_keys": {A: {key: {minimum_valid_until_ts: now}}, B: {}}}`.
fn query_body(a: &str, a_key: &str, b: &str) -> Value {
    let mut criteria = serde_json::Map::new();
    criteria.insert(a_key.to_owned(), json!({"minimum_valid_until_ts": now()}));
    let mut servers = serde_json::Map::new();
    servers.insert(a.to_owned(), Value::Object(criteria));
    servers.insert(b.to_owned(), json!({}));
    json!({ "server_keys": servers })
}

#[tokio::test]
async fn notaries_relay_keys_with_their_signature() {
    let mut fed = start_many(4).await;
    let a_keys = fed.servers[0].signing_key();
    let b_keys = fed.servers[1].signing_key();
    let (a_name, b_name) = (fed.servers[0].name.clone(), fed.servers[1].name.clone());
    let a_published = BTreeMap::from([(a_keys.key_id(), a_keys.public_key_base64())]);
    let b_published = BTreeMap::from([(b_keys.key_id(), b_keys.public_key_base64())]);

    // B as a notary, asked over HTTP: fetches A's keys and signs them.
    let b = &fed.servers[1];
    let (status, body) = b
        .get(&format!("/_matrix/key/v2/query/{a_name}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let relayed = &body["server_keys"][0];
    assert_eq!(relayed["server_name"], a_name.as_str());
    verify_signed(relayed, &a_name, &a_published);
    verify_signed(relayed, &b_name, &b_published);
    let (status, body) = b
        .post(
            "/_matrix/key/v2/query",
            None,
            query_body(&a_name, &a_keys.key_id(), &b_name),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let responses = body["server_keys"].as_array().unwrap();
    assert_eq!(responses.len(), 2, "{body}");
    for response in responses {
        let origin = response["server_name"].as_str().unwrap();
        let keys = if origin == a_name {
            &a_published
        } else {
            &b_published
        };
        verify_signed(response, origin, keys);
        verify_signed(response, &b_name, &b_published);
    }
    let (status, body) = b
        .get(
            &format!("/_matrix/key/v2/query/{a_name}/{}", a_keys.key_id()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    verify_signed(&body["server_keys"][0], &b_name, &b_published);

    // C trusts B as its notary (B's key fetched from B). A goes down: C gets A's keys from B.
    fed.servers[0].stop().await;
    let c = &mut fed.servers[2];
    c.stop().await;
    c.config.federation.trusted_key_servers = vec![TrustedKeyServer {
        server_name: b_name.clone(),
        verify_keys: BTreeMap::new(),
    }];
    c.start_again().await;
    let found = keyring(c)
        .verify_keys(
            <&ServerName>::try_from(a_name.as_str()).unwrap(),
            &[a_keys.key_id()],
            at(now()),
        )
        .await
        .unwrap();
    assert_eq!(found[&a_keys.key_id()].encode(), a_keys.public_key_base64());

    // D pins a key for B that is not B's: B's answers are refused.
    let d = &mut fed.servers[3];
    d.stop().await;
    d.config.federation.trusted_key_servers = vec![TrustedKeyServer {
        server_name: b_name.clone(),
        verify_keys: BTreeMap::from([(b_keys.key_id(), a_keys.public_key_base64())]),
    }];
    d.start_again().await;
    let err = keyring(d)
        .verify_keys(
            <&ServerName>::try_from(a_name.as_str()).unwrap(),
            &[a_keys.key_id()],
            at(now()),
        )
        .await
        .unwrap_err();
    assert!(
        err.message.contains("bad notary signature"),
        "{}",
        err.message
    );
}

/// A TLS server with the federation test certificate that answers every request with what
/// `body` holds then, for at most `max` connections. Returns its server name.
async fn forger(certs: &Path, body: Arc<Mutex<String>>, max: usize) -> String {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certs.join("cert.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(certs.join("key.pem")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        for _ in 0..max {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(Ok(mut tls)) =
                tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp)).await
            else {
                continue;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65_536 {
                match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            let body = body.lock().unwrap().clone();
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(answer.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    });
    format!("127.0.0.1:{port}")
}

#[tokio::test]
async fn forged_key_responses_are_refused() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, genuine) = a.get("/_matrix/key/v2/server", None).await;
    let certs = fed._certs.path();
    let serve = |body: String| Arc::new(Mutex::new(body));

    // A's genuine, correctly signed response replayed under another name.
    let replayed = forger(certs, serve(genuine.to_string()), 4).await;
    // A's response claiming to be the forger's: its self-signature no longer matches.
    let body = serve(String::new());
    let renamed = forger(certs, body.clone(), 4).await;
    let mut forged = genuine.clone();
    forged["server_name"] = json!(renamed);
    *body.lock().unwrap() = forged.to_string();
    // A well-formed response of the forger, signed with a key other than the one it lists.
    let body = serve(String::new());
    let other_key = forger(certs, body.clone(), 4).await;
    let listed = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "k1".into()).unwrap();
    let signer = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "k1".into()).unwrap();
    let mut object: CanonicalJsonObject = serde_json::from_value(json!({
        "server_name": other_key,
        "verify_keys": {"ed25519:k1": {"key": Base64::<ruma::serde::base64::Standard, _>::new(listed.public_key()).encode()}},
        "old_verify_keys": {},
        "valid_until_ts": now() + DAY,
    }))
    .unwrap();
    ruma::signatures::sign_json(&other_key, &signer, &mut object).unwrap();
    *body.lock().unwrap() = serde_json::to_string(&object).unwrap();

    for (forged, why) in [
        (&replayed, "not 127.0.0.1"),
        (&renamed, "bad self-signature"),
        (&other_key, "bad self-signature"),
    ] {
        let server = <&ServerName>::try_from(forged.as_str()).unwrap();
        let err = keyring(b)
            .verify_keys(server, &[], at(now()))
            .await
            .unwrap_err();
        assert_eq!(err.errcode, "M_UNAUTHORIZED");
        assert!(err.message.contains(why), "{}", err.message);
        // Nothing was cached: the notary endpoint has nothing to serve.
        let (status, body) = b
            .get(&format!("/_matrix/key/v2/query/{forged}"), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["server_keys"], json!([]), "{body}");
    }
}
