//! End-to-end encryption keys: upload, query, claim (including concurrent claims), changes,
//! cross-signing keys and signatures, and what device deletion removes.

use std::collections::{BTreeSet, HashSet};

use base64::Engine as _;
use reqwest::StatusCode;
use ruma::{
    signatures::{sign_json, Ed25519KeyPair},
    CanonicalJsonObject, OwnedDeviceId, OwnedUserId, UserId,
};
use serde_json::{json, Value};

use crate::common::{errcode, TestServer};

pub const PW: &str = "correct horse";

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

/// An ed25519 key pair whose key id is `ed25519:{version}`.
pub fn keypair(version: &str) -> Ed25519KeyPair {
    Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), version.to_owned()).unwrap()
}

/// A key pair named by its own public key (as cross-signing keys are), and that public key.
pub fn named_keypair() -> (Ed25519KeyPair, String) {
    let der = Ed25519KeyPair::generate();
    let public = b64(&Ed25519KeyPair::from_der(&der, "x".into())
        .unwrap()
        .public_key());
    (
        Ed25519KeyPair::from_der(&der, public.clone()).unwrap(),
        public,
    )
}

/// Signs `object` as `signer` with `key` (key id `ed25519:{key.version()}`).
pub fn sign(object: &mut Value, signer: &str, key: &Ed25519KeyPair) {
    let mut canonical: CanonicalJsonObject = serde_json::from_value(object.clone()).unwrap();
    sign_json(signer, key, &mut canonical).unwrap();
    *object = serde_json::to_value(canonical).unwrap();
}

/// A user's device with its token and identity key.
pub struct Dev {
    pub user: String,
    pub token: String,
    pub device: String,
    pub key: Ed25519KeyPair,
}

impl Dev {
    pub async fn register(srv: &TestServer, name: &str) -> Self {
        let (user, token, device) = srv.register(name, PW).await;
        let key = keypair(&device);
        Self {
            user,
            token,
            device,
            key,
        }
    }

    pub async fn login(srv: &TestServer, name: &str) -> Self {
        let (status, body) = srv.login(name, PW).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let device = body["device_id"].as_str().unwrap().to_owned();
        Self {
            user: body["user_id"].as_str().unwrap().to_owned(),
            token: body["access_token"].as_str().unwrap().to_owned(),
            key: keypair(&device),
            device,
        }
    }

    pub fn ed25519(&self) -> String {
        b64(&self.key.public_key())
    }

    /// Signed identity keys of this device.
    pub fn device_keys(&self) -> Value {
        let mut keys = json!({
            "user_id": self.user,
            "device_id": self.device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                format!("curve25519:{}", self.device): b64(&[7u8; 32]),
                format!("ed25519:{}", self.device): self.ed25519(),
            },
        });
        sign(&mut keys, &self.user, &self.key);
        keys
    }

    /// A signed one-time key object.
    pub fn otk(&self, seed: u8) -> Value {
        let mut key = json!({"key": b64(&[seed; 32])});
        sign(&mut key, &self.user, &self.key);
        key
    }

    pub async fn upload(&self, srv: &TestServer, body: Value) -> (StatusCode, Value) {
        srv.post("/_matrix/client/v3/keys/upload", Some(&self.token), body)
            .await
    }

    pub async fn upload_device_keys(&self, srv: &TestServer) {
        let (status, body) = self
            .upload(srv, json!({"device_keys": self.device_keys()}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

pub async fn query(srv: &TestServer, token: &str, device_keys: Value) -> Value {
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/keys/query",
            Some(token),
            json!({ "device_keys": device_keys }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

pub async fn claim(srv: &TestServer, token: &str, one_time_keys: Value) -> Value {
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/keys/claim",
            Some(token),
            json!({ "one_time_keys": one_time_keys }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The current stream position as a sync token.
pub fn token_now(srv: &TestServer) -> String {
    srv.server
        .as_ref()
        .unwrap()
        .services
        .stream
        .current()
        .to_string()
}

pub async fn changes(srv: &TestServer, token: &str, from: &str) -> (Vec<String>, Vec<String>) {
    let to = token_now(srv);
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/keys/changes?from={from}&to={to}"),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let list = |k: &str| {
        body[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    (list("changed"), list("left"))
}

/// A room with `invite`d users, encrypted or not.
pub async fn create_room(
    srv: &TestServer,
    token: &str,
    encrypted: bool,
    invite: &[&str],
) -> String {
    let mut body = json!({"invite": invite});
    if encrypted {
        body["initial_state"] = json!([
            {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
        ]);
    }
    crate::common::create_room(srv, token, body).await
}

pub use crate::common::join;

async fn leave(srv: &TestServer, token: &str, room: &str) {
    let (status, body) = srv
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn services(srv: &TestServer) -> &hearth::service::Services {
    &srv.server.as_ref().unwrap().services
}

fn ids(user: &str, device: &str) -> (OwnedUserId, OwnedDeviceId) {
    (UserId::parse(user).unwrap(), device.into())
}

#[tokio::test]
async fn upload_and_query_device_keys() {
    let srv = TestServer::start().await;
    let alice = Dev::register(&srv, "alice").await;
    let alice2 = Dev::login(&srv, "alice").await;
    let bob = Dev::register(&srv, "bob").await;
    alice.upload_device_keys(&srv).await;
    alice2.upload_device_keys(&srv).await;

    // Every device of a user, seen by another user, with the display name unsigned.
    let body = query(&srv, &bob.token, json!({ &alice.user: [] })).await;
    let devices = body["device_keys"][&alice.user].as_object().unwrap();
    assert_eq!(devices.len(), 2, "{body}");
    let keys = &devices[&alice.device];
    assert_eq!(
        keys["keys"][format!("ed25519:{}", alice.device)],
        alice.ed25519()
    );
    assert_eq!(keys["signatures"], alice.device_keys()["signatures"]);
    assert!(keys["unsigned"].is_object(), "{keys}");
    // The returned object still verifies as uploaded.
    let mut without_unsigned = keys.clone();
    without_unsigned.as_object_mut().unwrap().remove("unsigned");
    assert_eq!(without_unsigned, alice.device_keys());

    // One device; unknown devices and users are left out, not failures.
    let body = query(
        &srv,
        &bob.token,
        json!({ &alice.user: [alice2.device, "NOSUCHDEVICE"], "@nobody:localhost": [] }),
    )
    .await;
    let devices = body["device_keys"][&alice.user].as_object().unwrap();
    assert_eq!(devices.keys().collect::<Vec<_>>(), vec![&alice2.device]);
    assert!(
        body["device_keys"].get("@nobody:localhost").is_none(),
        "{body}"
    );
    assert!(
        body.get("failures")
            .is_none_or(|f| f.as_object().unwrap().is_empty()),
        "{body}"
    );

    // A user without keys is known but has no devices.
    let body = query(&srv, &alice.token, json!({ &bob.user: [] })).await;
    assert_eq!(body["device_keys"][&bob.user], json!({}));

    // Users of a server that cannot be reached are a failure of that server.
    let body = query(&srv, &alice.token, json!({ "@carol:127.0.0.1:9": [] })).await;
    assert!(body["failures"]["127.0.0.1:9"].is_object(), "{body}");
    assert!(
        body["device_keys"].get("@carol:127.0.0.1:9").is_none(),
        "{body}"
    );

    // Display names come from the device.
    let (status, _) = srv
        .put(
            &format!("/_matrix/client/v3/devices/{}", alice.device),
            Some(&alice.token),
            json!({"display_name": "Alice's phone"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let body = query(&srv, &bob.token, json!({ &alice.user: [alice.device] })).await;
    assert_eq!(
        body["device_keys"][&alice.user][&alice.device]["unsigned"]["device_display_name"],
        "Alice's phone"
    );
}

#[tokio::test]
async fn upload_refuses_bad_or_changed_device_keys() {
    let srv = TestServer::start().await;
    let alice = Dev::register(&srv, "alice").await;
    let bob = Dev::register(&srv, "bob").await;

    // Keys of another user or another device.
    let (status, body) = alice
        .upload(&srv, json!({"device_keys": bob.device_keys()}))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );
    let other = Dev {
        user: alice.user.clone(),
        token: alice.token.clone(),
        device: "OTHERDEVICE".into(),
        key: keypair("OTHERDEVICE"),
    };
    let (status, body) = alice
        .upload(&srv, json!({"device_keys": other.device_keys()}))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );

    // Not signed by the device's key.
    let mut forged = alice.device_keys();
    forged["algorithms"] = json!(["m.olm.v1.curve25519-aes-sha2"]);
    let (status, body) = alice.upload(&srv, json!({"device_keys": forged})).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_SIGNATURE")
    );
    let mut unsigned = alice.device_keys();
    unsigned.as_object_mut().unwrap().remove("signatures");
    let (status, _) = alice.upload(&srv, json!({"device_keys": unsigned})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Malformed keys.
    let (status, body) = alice
        .upload(&srv, json!({"device_keys": {"user_id": alice.user}}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    alice.upload_device_keys(&srv).await;
    // The same keys again are fine (a retried upload).
    alice.upload_device_keys(&srv).await;
    // Different signed keys for the same device are refused, and the stored ones stay.
    let replacement = Dev {
        user: alice.user.clone(),
        token: alice.token.clone(),
        device: alice.device.clone(),
        key: keypair(&alice.device),
    };
    let (status, body) = alice
        .upload(&srv, json!({"device_keys": replacement.device_keys()}))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );
    let body = query(&srv, &bob.token, json!({ &alice.user: [] })).await;
    assert_eq!(
        body["device_keys"][&alice.user][&alice.device]["keys"]
            [format!("ed25519:{}", alice.device)],
        alice.ed25519()
    );

    // One-time key ids must be algorithm:name; values strings or objects with a key.
    let (status, body) = alice
        .upload(&srv, json!({"one_time_keys": {"nocolon": "abc"}}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = alice
        .upload(
            &srv,
            json!({"one_time_keys": {"signed_curve25519:AAAA": 5}}),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_BAD_JSON")
    );
    // Without a token.
    let (status, body) = srv
        .post("/_matrix/client/v3/keys/upload", None, json!({}))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN")
    );
}

#[tokio::test]
async fn one_time_and_fallback_keys() {
    let srv = TestServer::start().await;
    let alice = Dev::register(&srv, "alice").await;
    let bob = Dev::register(&srv, "bob").await;
    let (user_id, device_id) = ids(&alice.user, &alice.device);
    let e2ee = &services(&srv).e2ee;

    let (status, body) = alice
        .upload(
            &srv,
            json!({"one_time_keys": {
                "signed_curve25519:AAAAAQ": alice.otk(1),
                "signed_curve25519:AAAAAg": alice.otk(2),
            }}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["one_time_key_counts"], json!({"signed_curve25519": 2}));
    // A later upload: its key is handed out after the earlier ones.
    let (_, body) = alice
        .upload(
            &srv,
            json!({"one_time_keys": {"signed_curve25519:AAAAAA": alice.otk(3)},
                   "fallback_keys": {"signed_curve25519:FFFF": alice.otk(9)}}),
        )
        .await;
    assert_eq!(body["one_time_key_counts"], json!({"signed_curve25519": 3}));
    // Re-uploading the same key is a no-op; the same id with another key is refused.
    let (status, body) = alice
        .upload(
            &srv,
            json!({"one_time_keys": {"signed_curve25519:AAAAAQ": alice.otk(1)}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["one_time_key_counts"], json!({"signed_curve25519": 3}));
    let (status, _) = alice
        .upload(
            &srv,
            json!({"one_time_keys": {"signed_curve25519:AAAAAQ": alice.otk(4)}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Two fallback keys of one algorithm are refused.
    let (status, _) = alice
        .upload(
            &srv,
            json!({"fallback_keys": {"signed_curve25519:F1": alice.otk(5), "signed_curve25519:F2": alice.otk(6)}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    assert_eq!(
        e2ee.one_time_key_counts(&user_id, &device_id).unwrap(),
        [("signed_curve25519".to_owned(), 3)].into()
    );
    assert_eq!(
        e2ee.unused_fallback_key_types(&user_id, &device_id)
            .unwrap(),
        vec!["signed_curve25519".to_owned()]
    );

    // Claims hand out the first upload's keys, then the second's, each once.
    let want = json!({ &alice.user: { &alice.device: "signed_curve25519" } });
    let mut first_batch = BTreeSet::new();
    for _ in 0..2 {
        let body = claim(&srv, &bob.token, want.clone()).await;
        let keys = body["one_time_keys"][&alice.user][&alice.device]
            .as_object()
            .unwrap();
        assert_eq!(keys.len(), 1);
        first_batch.insert(keys.keys().next().unwrap().clone());
    }
    assert_eq!(
        first_batch,
        BTreeSet::from([
            "signed_curve25519:AAAAAQ".to_owned(),
            "signed_curve25519:AAAAAg".to_owned()
        ])
    );
    let body = claim(&srv, &bob.token, want.clone()).await;
    assert_eq!(
        body["one_time_keys"][&alice.user][&alice.device]["signed_curve25519:AAAAAA"],
        alice.otk(3)
    );
    // Out of keys: signed_curve25519 is still counted, as 0.
    assert_eq!(
        e2ee.one_time_key_counts(&user_id, &device_id).unwrap(),
        [("signed_curve25519".to_owned(), 0)].into()
    );

    // Out of one-time keys: the fallback key, again and again, now marked used.
    for _ in 0..2 {
        let body = claim(&srv, &bob.token, want.clone()).await;
        assert_eq!(
            body["one_time_keys"][&alice.user][&alice.device]["signed_curve25519:FFFF"],
            alice.otk(9)
        );
    }
    assert!(e2ee
        .unused_fallback_key_types(&user_id, &device_id)
        .unwrap()
        .is_empty());
    // A new fallback key is unused again; the same one re-uploaded stays used.
    alice
        .upload(
            &srv,
            json!({"fallback_keys": {"signed_curve25519:FFFF": alice.otk(9)}}),
        )
        .await;
    assert!(e2ee
        .unused_fallback_key_types(&user_id, &device_id)
        .unwrap()
        .is_empty());
    alice
        .upload(
            &srv,
            json!({"fallback_keys": {"signed_curve25519:GGGG": alice.otk(10)}}),
        )
        .await;
    assert_eq!(
        e2ee.unused_fallback_key_types(&user_id, &device_id)
            .unwrap(),
        vec!["signed_curve25519".to_owned()]
    );

    // Other algorithms, unknown devices and users: nothing to claim.
    let body = claim(
        &srv,
        &bob.token,
        json!({ &alice.user: { &alice.device: "curve25519", "NOSUCH": "signed_curve25519" },
                "@nobody:localhost": { "X": "signed_curve25519" } }),
    )
    .await;
    assert_eq!(body["one_time_keys"], json!({}), "{body}");
    // Users of a server that cannot be reached are a failure of that server.
    let body = claim(
        &srv,
        &bob.token,
        json!({ "@carol:127.0.0.1:9": { "X": "signed_curve25519" } }),
    )
    .await;
    assert!(body["failures"]["127.0.0.1:9"].is_object(), "{body}");
}

#[tokio::test]
async fn concurrent_claims_hand_out_each_key_once() {
    let srv = TestServer::start().await;
    let alice = Dev::register(&srv, "alice").await;
    let bob = Dev::register(&srv, "bob").await;
    let want = json!({ &alice.user: { &alice.device: "signed_curve25519" } });

    // The last key: of many parallel claims exactly one gets it.
    alice
        .upload(
            &srv,
            json!({"one_time_keys": {"signed_curve25519:LAST": alice.otk(1)}}),
        )
        .await;
    let claims = (0..16).map(|_| claim(&srv, &bob.token, want.clone()));
    let results = futures_util::future::join_all(claims).await;
    let winners: Vec<&Value> = results
        .iter()
        .filter_map(|b| b["one_time_keys"][&alice.user][&alice.device].as_object())
        .flat_map(|keys| keys.values())
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert_eq!(*winners[0], alice.otk(1));

    // Several keys, more claimers: every key once, the rest get the fallback key.
    let mut otks = serde_json::Map::new();
    for i in 0..6u8 {
        otks.insert(format!("signed_curve25519:K{i}"), alice.otk(10 + i));
    }
    alice
        .upload(
            &srv,
            json!({"one_time_keys": otks, "fallback_keys": {"signed_curve25519:FB": alice.otk(99)}}),
        )
        .await;
    let claims = (0..15).map(|_| claim(&srv, &bob.token, want.clone()));
    let results = futures_util::future::join_all(claims).await;
    let mut handed_out = Vec::new();
    let mut fallbacks = 0;
    for body in &results {
        let keys = body["one_time_keys"][&alice.user][&alice.device]
            .as_object()
            .unwrap_or_else(|| panic!("every claim gets a key: {body}"));
        assert_eq!(keys.len(), 1);
        let id = keys.keys().next().unwrap();
        if id == "signed_curve25519:FB" {
            fallbacks += 1;
        } else {
            handed_out.push(id.clone());
        }
    }
    let distinct: HashSet<&String> = handed_out.iter().collect();
    assert_eq!(handed_out.len(), 6, "{handed_out:?}");
    assert_eq!(
        distinct.len(),
        6,
        "a key was handed out twice: {handed_out:?}"
    );
    assert_eq!(fallbacks, 9);
}

#[tokio::test]
async fn key_changes_follow_uploads_memberships_and_deletions() {
    let srv = TestServer::start().await;
    let alice = Dev::register(&srv, "alice").await;
    let bob = Dev::register(&srv, "bob").await;
    let carol = Dev::register(&srv, "carol").await;
    let room = create_room(&srv, &alice.token, true, &[&bob.user]).await;

    // Bob joins the encrypted room: he now shares it with Alice.
    let t0 = token_now(&srv);
    join(&srv, &bob.token, &room).await;
    let (changed, left) = changes(&srv, &alice.token, &t0).await;
    assert!(changed.contains(&bob.user), "{changed:?}");
    assert!(left.is_empty());

    // Bob uploads keys: Alice sees it, Carol (no shared room) does not.
    let t1 = token_now(&srv);
    bob.upload_device_keys(&srv).await;
    let (changed, _) = changes(&srv, &alice.token, &t1).await;
    assert_eq!(changed, vec![bob.user.clone()]);
    let (changed, _) = changes(&srv, &carol.token, &t1).await;
    assert!(changed.is_empty(), "{changed:?}");
    // Bob sees his own change.
    let (changed, _) = changes(&srv, &bob.token, &t1).await;
    assert_eq!(changed, vec![bob.user.clone()]);
    // One-time keys alone are no device-list change.
    let t2 = token_now(&srv);
    bob.upload(
        &srv,
        json!({"one_time_keys": {"signed_curve25519:A": bob.otk(1)}}),
    )
    .await;
    let (changed, _) = changes(&srv, &alice.token, &t2).await;
    assert!(changed.is_empty(), "{changed:?}");

    // A new device of Bob's with keys, then deleted (logout): both are changes.
    let bob2 = Dev::login(&srv, "bob").await;
    let t3 = token_now(&srv);
    bob2.upload_device_keys(&srv).await;
    let (changed, _) = changes(&srv, &alice.token, &t3).await;
    assert_eq!(changed, vec![bob.user.clone()]);
    let t4 = token_now(&srv);
    let (status, _) = srv
        .post("/_matrix/client/v3/logout", Some(&bob2.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (changed, _) = changes(&srv, &alice.token, &t4).await;
    assert_eq!(changed, vec![bob.user.clone()]);
    let body = query(&srv, &alice.token, json!({ &bob.user: [] })).await;
    assert_eq!(
        body["device_keys"][&bob.user]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec![&bob.device]
    );

    // Bob leaves the only encrypted room they shared: he is in Alice's `left`.
    let t5 = token_now(&srv);
    leave(&srv, &bob.token, &room).await;
    let (changed, left) = changes(&srv, &alice.token, &t5).await;
    assert_eq!(left, vec![bob.user.clone()]);
    assert!(!changed.contains(&bob.user));
    // And Alice is in Bob's.
    let (_, left) = changes(&srv, &bob.token, &t5).await;
    assert_eq!(left, vec![alice.user.clone()]);

    // An unencrypted room becoming encrypted makes its members changed.
    let plain = create_room(&srv, &alice.token, false, &[&carol.user]).await;
    join(&srv, &carol.token, &plain).await;
    let t6 = token_now(&srv);
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{plain}/state/m.room.encryption/"),
            Some(&alice.token),
            json!({"algorithm": "m.megolm.v1.aes-sha2"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (changed, _) = changes(&srv, &alice.token, &t6).await;
    assert!(changed.contains(&carol.user), "{changed:?}");

    // Key changes of a user sharing only an unencrypted room count too, whether the room was
    // written to in the range or not (rooms with nothing new are read only for this).
    let dave = Dev::register(&srv, "dave").await;
    let open = create_room(&srv, &alice.token, false, &[&dave.user]).await;
    join(&srv, &dave.token, &open).await;
    let t7 = token_now(&srv);
    dave.upload_device_keys(&srv).await;
    let (changed, _) = changes(&srv, &alice.token, &t7).await;
    assert_eq!(changed, vec![dave.user.clone()], "a quiet room");
    let t8 = token_now(&srv);
    let (status, body) = srv
        .put(
            &format!("/_matrix/client/v3/rooms/{open}/send/m.room.message/t8"),
            Some(&alice.token),
            json!({"msgtype": "m.text", "body": "hi"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let dave2 = Dev::login(&srv, "dave").await;
    dave2.upload_device_keys(&srv).await;
    let (changed, _) = changes(&srv, &alice.token, &t8).await;
    assert_eq!(changed, vec![dave.user.clone()], "a room written to");

    // Bad tokens.
    let (status, body) = srv
        .get(
            "/_matrix/client/v3/keys/changes?from=nonsense&to=1",
            Some(&alice.token),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );
    let (status, _) = srv
        .get("/_matrix/client/v3/keys/changes?from=1", Some(&alice.token))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// Uploads cross-signing keys; returns the response (status, body).
async fn upload_cross_signing(srv: &TestServer, dev: &Dev, body: Value) -> (StatusCode, Value) {
    srv.post(
        "/_matrix/client/v3/keys/device_signing/upload",
        Some(&dev.token),
        body,
    )
    .await
}

/// A user's cross-signing key pairs and signed key objects.
pub struct CrossSigning {
    pub master: (Ed25519KeyPair, String),
    pub self_signing: (Ed25519KeyPair, String),
    pub user_signing: (Ed25519KeyPair, String),
}

impl CrossSigning {
    pub fn new() -> Self {
        Self {
            master: named_keypair(),
            self_signing: named_keypair(),
            user_signing: named_keypair(),
        }
    }

    pub fn key(&self, user: &str, usage: &str) -> Value {
        let (_, public) = match usage {
            "master" => &self.master,
            "self_signing" => &self.self_signing,
            _ => &self.user_signing,
        };
        let mut key = json!({
            "user_id": user,
            "usage": [usage],
            "keys": { format!("ed25519:{public}"): public },
        });
        if usage != "master" {
            sign(&mut key, user, &self.master.0);
        }
        key
    }

    pub fn upload_body(&self, user: &str) -> Value {
        json!({
            "master_key": self.key(user, "master"),
            "self_signing_key": self.key(user, "self_signing"),
            "user_signing_key": self.key(user, "user_signing"),
        })
    }
}

#[tokio::test]
async fn cross_signing_keys_upload_and_replacement() {
    let srv = TestServer::start().await;
    let alice = Dev::register(&srv, "alice").await;
    let bob = Dev::register(&srv, "bob").await;
    let keys = CrossSigning::new();

    // A self-signing key without any master key.
    let (status, body) = upload_cross_signing(
        &srv,
        &alice,
        json!({"self_signing_key": keys.key(&alice.user, "self_signing")}),
    )
    .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_MISSING_PARAM")
    );
    // A self-signing key not signed by the master key.
    let mut bad = keys.key(&alice.user, "self_signing");
    bad["signatures"] = json!({});
    let (status, body) = upload_cross_signing(
        &srv,
        &alice,
        json!({"master_key": keys.key(&alice.user, "master"), "self_signing_key": bad}),
    )
    .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_SIGNATURE")
    );
    // Wrong user, wrong usage, two keys.
    let (status, _) = upload_cross_signing(
        &srv,
        &alice,
        json!({"master_key": keys.key(&bob.user, "master")}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let mut wrong_usage = keys.key(&alice.user, "master");
    wrong_usage["usage"] = json!(["self_signing"]);
    let (status, _) = upload_cross_signing(&srv, &alice, json!({"master_key": wrong_usage})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A public key equal to one of the user's device ids.
    let mut clash = keys.key(&alice.user, "master");
    clash["keys"] = json!({ format!("ed25519:{}", alice.device): alice.device });
    let (status, body) = upload_cross_signing(&srv, &alice, json!({"master_key": clash})).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::FORBIDDEN, "M_FORBIDDEN")
    );

    // The first upload needs no UIA.
    let t0 = token_now(&srv);
    let (status, body) = upload_cross_signing(&srv, &alice, keys.upload_body(&alice.user)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (changed, _) = changes(&srv, &alice.token, &t0).await;
    assert_eq!(changed, vec![alice.user.clone()]);
    // Others see master and self-signing keys; only Alice sees her user-signing key.
    let body = query(&srv, &bob.token, json!({ &alice.user: [] })).await;
    assert_eq!(
        body["master_keys"][&alice.user],
        keys.key(&alice.user, "master")
    );
    assert_eq!(
        body["self_signing_keys"][&alice.user],
        keys.key(&alice.user, "self_signing")
    );
    assert!(
        body.get("user_signing_keys")
            .is_none_or(|k| k.get(&alice.user).is_none()),
        "{body}"
    );
    let body = query(&srv, &alice.token, json!({ &alice.user: [] })).await;
    assert_eq!(
        body["user_signing_keys"][&alice.user],
        keys.key(&alice.user, "user_signing")
    );

    // Uploading the same keys again (a lost response) needs no UIA either.
    let (status, body) = upload_cross_signing(&srv, &alice, keys.upload_body(&alice.user)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Nor does an upload with no keys at all.
    let (status, body) = upload_cross_signing(&srv, &alice, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A new self-signing key alone does.
    let mut other_ssk = CrossSigning::new().key(&alice.user, "self_signing");
    other_ssk.as_object_mut().unwrap().remove("signatures");
    sign(&mut other_ssk, &alice.user, &keys.master.0);
    let (status, body) =
        upload_cross_signing(&srv, &alice, json!({"self_signing_key": other_ssk})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // Replacing the master key does.
    let new_keys = CrossSigning::new();
    let new_master = json!({"master_key": new_keys.key(&alice.user, "master")});
    let (status, challenge) = upload_cross_signing(&srv, &alice, new_master.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    let session = challenge["session"].as_str().unwrap();
    assert_eq!(challenge["flows"][0]["stages"], json!(["m.login.password"]));
    let mut wrong = new_master.clone();
    wrong["auth"] = TestServer::password_auth(&alice.user, "wrong password", session);
    let (status, _) = upload_cross_signing(&srv, &alice, wrong).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Nothing changed meanwhile.
    let body = query(&srv, &bob.token, json!({ &alice.user: [] })).await;
    assert_eq!(
        body["master_keys"][&alice.user],
        keys.key(&alice.user, "master")
    );
    let mut authed = new_master.clone();
    authed["auth"] = TestServer::password_auth(&alice.user, PW, session);
    let (status, body) = upload_cross_signing(&srv, &alice, authed).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The new master key is there; the old self-signing and user-signing keys, signed by the
    // old master key, are gone.
    let body = query(&srv, &alice.token, json!({ &alice.user: [] })).await;
    assert_eq!(
        body["master_keys"][&alice.user],
        new_keys.key(&alice.user, "master")
    );
    assert!(
        body.get("self_signing_keys")
            .is_none_or(|k| k.get(&alice.user).is_none()),
        "{body}"
    );
    assert!(
        body.get("user_signing_keys")
            .is_none_or(|k| k.get(&alice.user).is_none()),
        "{body}"
    );
    // A self-signing key signed by the old master key is refused now.
    let (status, body) = upload_cross_signing(
        &srv,
        &alice,
        json!({"self_signing_key": keys.key(&alice.user, "self_signing")}),
    )
    .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_SIGNATURE"),
    );
}

#[tokio::test]
async fn signatures_upload_and_visibility() {
    let srv = TestServer::start().await;
    let alice = Dev::register(&srv, "alice").await;
    let bob = Dev::register(&srv, "bob").await;
    let carol = Dev::register(&srv, "carol").await;
    alice.upload_device_keys(&srv).await;
    bob.upload_device_keys(&srv).await;
    let alice_keys = CrossSigning::new();
    let bob_keys = CrossSigning::new();
    upload_cross_signing(&srv, &alice, alice_keys.upload_body(&alice.user)).await;
    upload_cross_signing(&srv, &bob, bob_keys.upload_body(&bob.user)).await;
    let alice_ssk_id = format!("ed25519:{}", alice_keys.self_signing.1);
    let alice_usk_id = format!("ed25519:{}", alice_keys.user_signing.1);
    let alice_master = alice_keys.master.1.clone();
    let bob_master = bob_keys.master.1.clone();

    // Alice signs her device with her self-signing key and her master key with her device;
    // Bob signs nothing valid; unknown keys fail.
    let mut device = alice.device_keys();
    device.as_object_mut().unwrap().remove("signatures");
    sign(&mut device, &alice.user, &alice_keys.self_signing.0);
    let mut master = alice_keys.key(&alice.user, "master");
    sign(&mut master, &alice.user, &alice.key);
    let mut forged = alice_keys.key(&alice.user, "master");
    forged["signatures"] =
        json!({ &alice.user: { format!("ed25519:{}", alice.device): b64(&[0u8; 64]) } });
    let t0 = token_now(&srv);
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            Some(&alice.token),
            json!({
                &alice.user: {
                    &alice.device: device,
                    &alice_master: master,
                    "NOSUCHKEY": {"user_id": alice.user},
                },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["failures"][&alice.user]["NOSUCHKEY"]["errcode"], "M_NOT_FOUND",
        "{body}"
    );
    assert!(
        body["failures"][&alice.user].get(&alice.device).is_none(),
        "{body}"
    );
    assert!(
        body["failures"][&alice.user].get(&alice_master).is_none(),
        "{body}"
    );
    let (changed, _) = changes(&srv, &alice.token, &t0).await;
    assert_eq!(changed, vec![alice.user.clone()]);
    // An invalid signature is a failure, and an object that does not match the key too.
    let mut mismatched = alice.device_keys();
    mismatched["algorithms"] = json!([]);
    sign(&mut mismatched, &alice.user, &alice_keys.self_signing.0);
    let (_, body) = srv
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            Some(&alice.token),
            json!({ &alice.user: { &alice_master: forged, &alice.device: mismatched } }),
        )
        .await;
    assert_eq!(
        body["failures"][&alice.user][&alice_master]["errcode"], "M_INVALID_SIGNATURE",
        "{body}"
    );
    assert!(
        body["failures"][&alice.user][&alice.device]["errcode"].is_string(),
        "{body}"
    );

    // Everyone sees signatures on Alice's own keys made by Alice.
    let body = query(&srv, &carol.token, json!({ &alice.user: [] })).await;
    let device_sigs = &body["device_keys"][&alice.user][&alice.device]["signatures"][&alice.user];
    assert!(device_sigs[&alice_ssk_id].is_string(), "{body}");
    assert!(
        device_sigs[format!("ed25519:{}", alice.device)].is_string(),
        "{body}"
    );
    let master_sigs = &body["master_keys"][&alice.user]["signatures"][&alice.user];
    assert!(
        master_sigs[format!("ed25519:{}", alice.device)].is_string(),
        "{body}"
    );

    // Alice signs Bob's master key with her user-signing key: only Alice sees it.
    let mut bobs = bob_keys.key(&bob.user, "master");
    sign(&mut bobs, &alice.user, &alice_keys.user_signing.0);
    let t1 = token_now(&srv);
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            Some(&alice.token),
            json!({ &bob.user: { &bob_master: bobs } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.get("failures")
            .is_none_or(|f| f.as_object().unwrap().is_empty()),
        "{body}"
    );
    let body = query(&srv, &alice.token, json!({ &bob.user: [] })).await;
    assert!(
        body["master_keys"][&bob.user]["signatures"][&alice.user][&alice_usk_id].is_string(),
        "{body}"
    );
    for viewer in [&bob, &carol] {
        let body = query(&srv, &viewer.token, json!({ &bob.user: [] })).await;
        assert!(
            body["master_keys"][&bob.user]["signatures"]
                .get(&alice.user)
                .is_none(),
            "{body}"
        );
    }
    // Alice (only) is told Bob's keys changed for her.
    let (changed, _) = changes(&srv, &alice.token, &t1).await;
    assert_eq!(changed, vec![bob.user.clone()]);
    let (changed, _) = changes(&srv, &bob.token, &t1).await;
    assert!(changed.is_empty(), "{changed:?}");

    // Signing anything of Bob's but his master key, and remote keys, fail.
    let (_, body) = srv
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            Some(&alice.token),
            json!({ &bob.user: { &bob.device: bob.device_keys() },
                    "@dave:elsewhere.example": { "KEY": {"user_id": "@dave:elsewhere.example"} } }),
        )
        .await;
    assert_eq!(
        body["failures"][&bob.user][&bob.device]["errcode"], "M_NOT_FOUND",
        "{body}"
    );
    assert!(
        body["failures"]["@dave:elsewhere.example"]["KEY"]["errcode"].is_string(),
        "{body}"
    );
}

#[tokio::test]
async fn deleting_a_device_removes_its_keys() {
    let srv = TestServer::start().await;
    let alice = Dev::register(&srv, "alice").await;
    let alice2 = Dev::login(&srv, "alice").await;
    let bob = Dev::register(&srv, "bob").await;
    alice2.upload_device_keys(&srv).await;
    alice2
        .upload(
            &srv,
            json!({"one_time_keys": {"signed_curve25519:A": alice2.otk(1)},
                   "fallback_keys": {"signed_curve25519:F": alice2.otk(2)}}),
        )
        .await;
    let (user_id, device_id) = ids(&alice.user, &alice2.device);

    // DELETE /devices/{id} behind UIA.
    let path = format!("/_matrix/client/v3/devices/{}", alice2.device);
    let (status, challenge) = srv
        .call(
            reqwest::Method::DELETE,
            &path,
            Some(&alice.token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let session = challenge["session"].as_str().unwrap();
    let t0 = token_now(&srv);
    let (status, body) = srv
        .call(
            reqwest::Method::DELETE,
            &path,
            Some(&alice.token),
            Some(json!({"auth": TestServer::password_auth(&alice.user, PW, session)})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let body = query(&srv, &bob.token, json!({ &alice.user: [] })).await;
    assert_eq!(body["device_keys"][&alice.user], json!({}), "{body}");
    let body = claim(
        &srv,
        &bob.token,
        json!({ &alice.user: { &alice2.device: "signed_curve25519" } }),
    )
    .await;
    assert_eq!(body["one_time_keys"], json!({}), "{body}");
    let e2ee = &services(&srv).e2ee;
    // Out of keys: signed_curve25519 is still counted, as 0.
    assert_eq!(
        e2ee.one_time_key_counts(&user_id, &device_id).unwrap(),
        [("signed_curve25519".to_owned(), 0)].into()
    );
    assert!(e2ee
        .unused_fallback_key_types(&user_id, &device_id)
        .unwrap()
        .is_empty());
    let (changed, _) = changes(&srv, &alice.token, &t0).await;
    assert_eq!(changed, vec![alice.user.clone()]);

    // The same for deactivation: every device's keys go.
    alice.upload_device_keys(&srv).await;
    let (status, challenge) = srv
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let session = challenge["session"].as_str().unwrap();
    let (status, body) = srv
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&alice.token),
            json!({"auth": TestServer::password_auth(&alice.user, PW, session)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body = query(&srv, &bob.token, json!({ &alice.user: [] })).await;
    assert!(
        body["device_keys"]
            .get(&alice.user)
            .is_none_or(|d| d.as_object().unwrap().is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn a_device_removal_cut_short_by_a_crash_is_finished_at_start() {
    let mut srv = TestServer::start().await;
    let alice = Dev::register(&srv, "alice").await;
    let alice2 = Dev::login(&srv, "alice").await;
    alice2.upload_device_keys(&srv).await;
    let (user_id, device_id) = ids(&alice.user, &alice2.device);
    let t0 = token_now(&srv);
    // The deletion batch commits, and the process dies before announcing it.
    let services = services(&srv);
    let mut batch = hearth::store::Batch::new();
    services
        .sessions
        .stage_delete_device(&mut batch, &user_id, &device_id)
        .unwrap();
    services.store.commit(batch).await.unwrap();
    let body = query(&srv, &alice.token, json!({ &alice.user: [] })).await;
    assert_eq!(body["device_keys"][&alice.user], json!({}), "{body}");
    let (changed, _) = changes(&srv, &alice.token, &t0).await;
    assert!(changed.is_empty(), "{changed:?}");

    // The next start announces the device-list change.
    srv.restart().await;
    let (changed, _) = changes(&srv, &alice.token, &t0).await;
    assert_eq!(changed, vec![alice.user.clone()]);
}
