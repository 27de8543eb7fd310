//! The keyring against a scripted fetcher: verification, cache, validity, single flight,
//! retry interval, notaries. The HTTP path is covered by `tests/it/fed_keys.rs`.

use std::sync::atomic::AtomicUsize;

use ruma::{server_name, signatures::Ed25519KeyPair};
use serde_json::json;

use super::*;
use crate::store::EngineKind;
use ruma::CanonicalJsonValue;

const DAY: u64 = 24 * 3_600_000;

fn keypair(version: &str) -> Ed25519KeyPair {
    Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), version.into()).unwrap()
}

fn b64(key: &Ed25519KeyPair) -> String {
    Base64::<ruma::serde::base64::Standard, _>::new(key.public_key()).encode()
}

/// A key response of `server` listing `key` (and `old`), signed by each of `signers`.
fn response(
    server: &str,
    key: &Ed25519KeyPair,
    old: &[(&Ed25519KeyPair, u64)],
    valid_until_ts: u64,
    signers: &[(&str, &Ed25519KeyPair)],
) -> String {
    let old: serde_json::Map<_, _> = old
        .iter()
        .map(|(k, ts)| {
            (
                format!("ed25519:{}", k.version()),
                json!({"key": b64(k), "expired_ts": ts}),
            )
        })
        .collect();
    let value = json!({
        "server_name": server,
        "verify_keys": {format!("ed25519:{}", key.version()): {"key": b64(key)}},
        "old_verify_keys": old,
        "valid_until_ts": valid_until_ts,
    });
    let mut object: CanonicalJsonObject = serde_json::from_value(value).unwrap();
    for (entity, signer) in signers {
        ruma::signatures::sign_json(entity, *signer, &mut object).unwrap();
    }
    serde_json::to_string(&object).unwrap()
}

#[derive(Default)]
struct Script {
    /// server → its answer to `GET /_matrix/key/v2/server` (None: unreachable).
    direct: Mutex<HashMap<String, String>>,
    /// notary → answers it relays.
    notary: Mutex<HashMap<String, Vec<String>>>,
    calls: AtomicUsize,
    delay_ms: u64,
}

impl KeyFetcher for Script {
    fn server_keys<'a>(
        &'a self,
        server: &'a ServerName,
    ) -> BoxFuture<'a, Result<Raw<ServerSigningKeys>, String>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(self.delay_ms)).await;
            let json = self.direct.lock().unwrap().get(server.as_str()).cloned();
            let json = json.ok_or_else(|| "connection refused".to_owned())?;
            Ok(Raw::from_json(
                serde_json::value::RawValue::from_string(json).unwrap(),
            ))
        })
    }

    fn query_notary<'a>(
        &'a self,
        notary: &'a ServerName,
        _: batch::Request,
    ) -> BoxFuture<'a, Result<Vec<Raw<ServerSigningKeys>>, String>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let answers = self.notary.lock().unwrap().get(notary.as_str()).cloned();
            let answers = answers.ok_or_else(|| "connection refused".to_owned())?;
            Ok(answers
                .into_iter()
                .map(|j| Raw::from_json(serde_json::value::RawValue::from_string(j).unwrap()))
                .collect())
        })
    }
}

struct Ring {
    ring: KeyRing,
    script: Arc<Script>,
    _dir: tempfile::TempDir,
}

fn ring_with(script: Script, notaries: Vec<Notary>) -> Ring {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db"), EngineKind::Redb, 1 << 20).unwrap();
    let own = ServerKeys::load_or_generate(&dir.path().join("keys")).unwrap();
    let script = Arc::new(script);
    let ring = KeyRing::new(
        store,
        Arc::new(own),
        server_name!("us.example").to_owned(),
        script.clone(),
        notaries,
    );
    Ring {
        ring,
        script,
        _dir: dir,
    }
}

fn ring(script: Script) -> Ring {
    ring_with(script, Vec::new())
}

fn at(ms: u64) -> MilliSecondsSinceUnixEpoch {
    MilliSecondsSinceUnixEpoch(ms.try_into().unwrap())
}

fn ids(key: &Ed25519KeyPair) -> Vec<String> {
    vec![format!("ed25519:{}", key.version())]
}

#[tokio::test]
async fn fetched_keys_are_verified_and_cached() {
    let key = keypair("a1");
    let script = Script::default();
    let now = now_ms();
    script.direct.lock().unwrap().insert(
        "them.example".into(),
        response(
            "them.example",
            &key,
            &[],
            now + DAY,
            &[("them.example", &key)],
        ),
    );
    let r = ring(script);
    let them = server_name!("them.example");
    let found = r.ring.verify_keys(them, &ids(&key), at(now)).await.unwrap();
    assert_eq!(found[&ids(&key)[0]].as_bytes(), key.public_key());
    // The server goes away: the cache answers.
    r.script.direct.lock().unwrap().clear();
    let again = r.ring.verify_keys(them, &[], at(now)).await.unwrap();
    assert_eq!(again, found);
    assert_eq!(r.script.calls.load(Ordering::SeqCst), 1);
    assert_eq!(r.ring.stats().requests, 1);
    assert_eq!(r.ring.stats().cache_hits, 1);
}

#[tokio::test]
async fn forged_responses_are_refused() {
    let key = keypair("a1");
    let other = keypair("a1");
    let now = now_ms();
    let them = server_name!("them.example");
    let forgeries = [
        // Signed by a key that is not the one listed.
        response(
            "them.example",
            &key,
            &[],
            now + DAY,
            &[("them.example", &other)],
        ),
        // For another server.
        response(
            "else.example",
            &key,
            &[],
            now + DAY,
            &[("else.example", &key)],
        ),
        // Unsigned.
        response("them.example", &key, &[], now + DAY, &[]),
    ];
    for forged in forgeries {
        let script = Script::default();
        script
            .direct
            .lock()
            .unwrap()
            .insert("them.example".into(), forged);
        let r = ring(script);
        let err = r
            .ring
            .verify_keys(them, &ids(&key), at(now))
            .await
            .unwrap_err();
        assert_eq!(err.errcode, "M_UNAUTHORIZED", "{err}");
        assert!(r
            .ring
            .cached(
                them,
                &Want {
                    key_ids: &[],
                    valid_at: 0,
                    validity: KeyValidity::Ignored
                }
            )
            .unwrap()
            .is_empty());
    }
    // A listed key whose signature was tampered with after signing.
    let mut object: serde_json::Value = serde_json::from_str(&response(
        "them.example",
        &key,
        &[],
        now + DAY,
        &[("them.example", &key)],
    ))
    .unwrap();
    object["valid_until_ts"] = json!(now + 300 * DAY);
    let script = Script::default();
    script
        .direct
        .lock()
        .unwrap()
        .insert("them.example".into(), object.to_string());
    let r = ring(script);
    let err = r.ring.verify_keys(them, &[], at(now)).await.unwrap_err();
    assert!(err.message.contains("bad self-signature"), "{err}");
}

#[tokio::test]
async fn keys_are_used_only_inside_their_validity() {
    let key = keypair("a1");
    let old = keypair("o1");
    let now = now_ms();
    let script = Script::default();
    script.direct.lock().unwrap().insert(
        "them.example".into(),
        response(
            "them.example",
            &key,
            &[(&old, now - DAY)],
            now + 365 * DAY,
            &[("them.example", &key)],
        ),
    );
    let r = ring(script);
    let them = server_name!("them.example");
    assert!(r
        .ring
        .verify_keys(them, &ids(&old), at(now - 2 * DAY))
        .await
        .is_ok());
    // A year of validity counts as 7 days from the fetch.
    assert!(r
        .ring
        .verify_keys(them, &ids(&key), at(now + 6 * DAY))
        .await
        .is_ok());
    let calls = r.script.calls.load(Ordering::SeqCst);
    r.ring.age_cached(them, 8 * DAY).await.unwrap();
    // Expired in the cache: fetched again, and usable from the new answer.
    assert!(r.ring.verify_keys(them, &ids(&key), at(now)).await.is_ok());
    assert_eq!(r.script.calls.load(Ordering::SeqCst), calls + 1);
    // The old key verifies signatures made before it expired, not after.
    assert!(r
        .ring
        .verify_keys(them, &ids(&old), at(now - 2 * DAY))
        .await
        .is_ok());
    let err = r
        .ring
        .verify_keys(them, &ids(&old), at(now))
        .await
        .unwrap_err();
    assert_eq!(err.errcode, "M_UNAUTHORIZED");
    // Room versions 1–4 ignore validity.
    let any = r
        .ring
        .verify_keys_with(them, &ids(&old), at(now), KeyValidity::Ignored)
        .await
        .unwrap();
    assert_eq!(any.len(), 1);
}

#[tokio::test]
async fn one_fetch_for_concurrent_lookups_and_a_pause_after_a_failure() {
    let key = keypair("a1");
    let now = now_ms();
    let script = Script {
        delay_ms: 200,
        ..Default::default()
    };
    script.direct.lock().unwrap().insert(
        "them.example".into(),
        response(
            "them.example",
            &key,
            &[],
            now + DAY,
            &[("them.example", &key)],
        ),
    );
    let r = ring(script);
    let them = server_name!("them.example");
    let lookups = (0..10).map(|_| r.ring.verify_keys(them, &[], at(now)));
    for found in futures_util::future::join_all(lookups).await {
        assert_eq!(found.unwrap().len(), 1);
    }
    assert_eq!(r.script.calls.load(Ordering::SeqCst), 1);

    // An unknown key id: one fetch, then none during the retry interval.
    let bogus = vec!["ed25519:nope".to_owned()];
    for _ in 0..3 {
        let err = r.ring.verify_keys(them, &bogus, at(now)).await.unwrap_err();
        assert_eq!(err.errcode, "M_UNAUTHORIZED");
    }
    assert_eq!(r.script.calls.load(Ordering::SeqCst), 2);
    // A server that cannot be reached: the same.
    let down = server_name!("down.example");
    for _ in 0..3 {
        assert!(r.ring.verify_keys(down, &[], at(now)).await.is_err());
    }
    assert_eq!(r.script.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn notaries_are_asked_when_the_server_cannot_answer() {
    let key = keypair("a1");
    let notary_key = keypair("n1");
    let now = now_ms();
    let relayed = |signers: &[(&str, &Ed25519KeyPair)]| {
        response("them.example", &key, &[], now + DAY, signers)
    };
    let notary = Notary {
        server_name: server_name!("notary.example").to_owned(),
        verify_keys: BTreeMap::from([(
            "ed25519:n1".to_owned(),
            Base64::new(notary_key.public_key().to_vec()),
        )]),
    };
    let them = server_name!("them.example");
    // Without the notary's signature the answer is refused.
    let script = Script::default();
    script.notary.lock().unwrap().insert(
        "notary.example".into(),
        vec![relayed(&[("them.example", &key)])],
    );
    let r = ring_with(script, vec![notary.clone()]);
    let err = r.ring.verify_keys(them, &[], at(now)).await.unwrap_err();
    assert!(err.message.contains("bad notary signature"), "{err}");

    let script = Script::default();
    script.notary.lock().unwrap().insert(
        "notary.example".into(),
        vec![relayed(&[
            ("them.example", &key),
            ("notary.example", &notary_key),
        ])],
    );
    let r = ring_with(script, vec![notary]);
    let found = r.ring.verify_keys(them, &ids(&key), at(now)).await.unwrap();
    assert_eq!(found.len(), 1);
    // As a notary ourselves, we serve what we got, with the origin's signature and ours only.
    let served = r.ring.notary_responses(them, now).await.unwrap();
    let signatures = served[0]["signatures"].as_object().unwrap();
    let signers: Vec<&String> = signatures.keys().collect();
    assert_eq!(signers, ["them.example", "us.example"]);
}

#[tokio::test]
async fn our_own_keys_need_no_fetch() {
    let r = ring(Script::default());
    let us = server_name!("us.example");
    let found = r.ring.verify_keys(us, &[], at(now_ms())).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(r.script.calls.load(Ordering::SeqCst), 0);
    let served = r.ring.notary_responses(us, 0).await.unwrap();
    assert_eq!(
        served[0]["server_name"],
        CanonicalJsonValue::from("us.example")
    );
}
