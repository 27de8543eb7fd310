//! The server's ed25519 signing key, kept in `data/keys/`, and the keys it used before.
//!
//! Files (all written to a temporary name, fsynced, renamed, and the directory fsynced):
//! - `signing.key`: the current private key (PKCS#8 DER, mode 0600);
//! - `signing.key.id`: its version (the key id is `ed25519:<version>`), stable across restarts;
//! - `old_keys.json`: the public halves of the keys used before `hearth keys rotate`, with when
//!   they stopped being used: `{"ed25519:<v>": {"key": "<unpadded base64>", "expired_ts": ms}}`.
//!   Published as `old_verify_keys` so signatures made with them still verify.
//!
//! A rotation replaces two files that must match (`signing.key` and `signing.key.id`). It writes
//! `signing.key.tmp` then `signing.key.id.tmp` (both fsynced), then renames the key and then the
//! id. [`ServerKeys::load`] finishes or undoes a rotation a crash interrupted: `signing.key.tmp`
//! still present means no rename happened (the temporary files are dropped); only
//! `signing.key.id.tmp` left means the key was renamed, so the id is renamed too.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use rand::RngExt;
use ruma::{
    serde::{Base64, Raw},
    signatures::{Ed25519KeyPair, KeyPair},
    CanonicalJsonObject, CanonicalJsonValue, ServerName,
};
use serde::{Deserialize, Serialize};

/// How long our published key response is valid (`valid_until_ts` = now + this). The spec
/// lets receivers keep a key for at most 7 days anyway; each response is computed afresh.
pub const KEY_RESPONSE_VALIDITY_MS: u64 = 7 * 24 * 3_600_000;

const KEY_FILE: &str = "signing.key";
const ID_FILE: &str = "signing.key.id";
const OLD_KEYS_FILE: &str = "old_keys.json";

pub struct ServerKeys {
    pub keypair: Ed25519KeyPair,
    /// Keys used before the current one, by key id (never contains the current key id).
    pub old: BTreeMap<String, OldKey>,
}

/// A key this server used before a rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OldKey {
    /// The public key, unpadded standard base64.
    pub key: String,
    /// When it stopped being used (ms since the epoch).
    pub expired_ts: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or write the signing key in {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the signing key in {path} is unreadable: {detail}")]
    Invalid { path: String, detail: String },
}

/// What `hearth keys rotate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The key id that is now an old verify key (`None` if there was no key yet).
    pub retired: Option<String>,
    pub current: String,
}

impl ServerKeys {
    /// Loads the keys in `dir`, creating a signing key if there is none.
    pub fn load_or_generate(dir: &Path) -> Result<Self, KeyError> {
        recover(dir)?;
        if !dir.join(KEY_FILE).exists() {
            let version = install_new_key(dir, &[])?;
            log::info!("generated server signing key ed25519:{version}");
        }
        Self::load(dir)
    }

    /// Loads the keys in `dir` as they are (nothing is created; an interrupted rotation is
    /// completed or undone first, see the module documentation).
    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        recover(dir)?;
        let key_path = dir.join(KEY_FILE);
        let der = fs::read(&key_path).map_err(io_err(dir))?;
        let version = fs::read_to_string(dir.join(ID_FILE))
            .map_err(io_err(dir))?
            .trim()
            .to_owned();
        let invalid = |detail: String| KeyError::Invalid {
            path: key_path.display().to_string(),
            detail,
        };
        if !is_valid_version(&version) {
            return Err(invalid(format!("bad key version {version:?}")));
        }
        let keypair =
            Ed25519KeyPair::from_der(&der, version).map_err(|e| invalid(e.to_string()))?;
        let mut old = read_old_keys(dir)?;
        // A rotation interrupted before its renames leaves the current key listed as old.
        old.remove(&format!("ed25519:{}", keypair.version()));
        Ok(Self { keypair, old })
    }

    /// Makes a new signing key the current one and keeps the previous one as an old verify key
    /// (expired now). For a stopped server: a running one keeps using the key it loaded until
    /// it is restarted.
    pub fn rotate(dir: &Path, now_ms: u64) -> Result<Rotation, KeyError> {
        recover(dir)?;
        if !dir.join(KEY_FILE).exists() {
            let version = install_new_key(dir, &[])?;
            return Ok(Rotation {
                retired: None,
                current: format!("ed25519:{version}"),
            });
        }
        let previous = Self::load(dir)?;
        let retired = previous.key_id();
        let mut old = previous.old.clone();
        old.insert(
            retired.clone(),
            OldKey {
                key: previous.public_key_base64(),
                expired_ts: now_ms,
            },
        );
        // The old key list goes first: if the rotation stops before the new key is in place,
        // `load` drops the current key from it again.
        let json = serde_json::to_vec_pretty(&old).expect("old keys serialize");
        replace_file(dir, OLD_KEYS_FILE, &json).map_err(io_err(dir))?;
        let taken: Vec<String> = old.keys().cloned().collect();
        let version = install_new_key(dir, &taken)?;
        Ok(Rotation {
            retired: Some(retired),
            current: format!("ed25519:{version}"),
        })
    }

    /// `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.keypair.version())
    }

    /// The current public key, unpadded standard base64 (as `verify_keys` publishes it).
    pub fn public_key_base64(&self) -> String {
        Base64::<ruma::serde::base64::Standard, _>::new(self.keypair.public_key()).encode()
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.keypair.sign(message).as_bytes().to_vec()
    }

    /// Our key response (`GET /_matrix/key/v2/server`): the current key in `verify_keys`, the
    /// rotated ones in `old_verify_keys`, `valid_until_ts` = `now_ms` + 7 days, signed with the
    /// current key.
    pub fn key_response(&self, server_name: &ServerName, now_ms: u64) -> CanonicalJsonObject {
        let mut verify_keys = CanonicalJsonObject::new();
        verify_keys.insert(self.key_id(), key_object(self.public_key_base64(), None));
        let old_verify_keys: CanonicalJsonObject = self
            .old
            .iter()
            .map(|(id, old)| {
                (
                    id.clone(),
                    key_object(old.key.clone(), Some(old.expired_ts)),
                )
            })
            .collect();
        let mut object = CanonicalJsonObject::new();
        object.insert("server_name".into(), server_name.as_str().into());
        object.insert("verify_keys".into(), verify_keys.into());
        object.insert("old_verify_keys".into(), old_verify_keys.into());
        object.insert(
            "valid_until_ts".into(),
            int(now_ms.saturating_add(KEY_RESPONSE_VALIDITY_MS)),
        );
        self.sign_object(server_name, &mut object);
        object
    }

    /// Adds our signature to `object` (under `signatures.<server_name>`), keeping the others.
    pub fn sign_object(&self, server_name: &ServerName, object: &mut CanonicalJsonObject) {
        // Signing fails only for objects whose `signatures` is not an object, which no caller
        // builds (notary responses were parsed as key responses before).
        if let Err(e) = ruma::signatures::sign_json(server_name.as_str(), &self.keypair, object) {
            log::error!("cannot sign a key response: {e}");
        }
    }
}

/// `object` as the raw JSON ruma's response types carry.
pub fn to_raw<T>(object: &CanonicalJsonObject) -> Raw<T> {
    let json = serde_json::to_string(object).expect("canonical JSON serializes");
    Raw::from_json(serde_json::value::RawValue::from_string(json).expect("valid JSON"))
}

fn key_object(key: String, expired_ts: Option<u64>) -> CanonicalJsonValue {
    let mut object = CanonicalJsonObject::new();
    object.insert("key".into(), key.into());
    if let Some(ts) = expired_ts {
        object.insert("expired_ts".into(), int(ts));
    }
    object.into()
}

fn int(value: u64) -> CanonicalJsonValue {
    // Timestamps stay far below 2^53 (the canonical JSON integer range) for millennia.
    CanonicalJsonValue::Integer(ruma::Int::new_saturating(value as i64))
}

fn is_valid_version(version: &str) -> bool {
    !version.is_empty()
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn io_err(dir: &Path) -> impl Fn(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: dir.display().to_string(),
        source,
    }
}

fn read_old_keys(dir: &Path) -> Result<BTreeMap<String, OldKey>, KeyError> {
    let path = dir.join(OLD_KEYS_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let invalid = |detail: String| KeyError::Invalid {
        path: path.display().to_string(),
        detail,
    };
    let old: BTreeMap<String, OldKey> =
        serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    for (id, key) in &old {
        let valid_id = id.strip_prefix("ed25519:").is_some_and(is_valid_version);
        let valid_key = Base64::<ruma::serde::base64::Standard, [u8; 32]>::parse(&key.key).is_ok();
        if !valid_id || !valid_key {
            return Err(invalid(format!("bad old key {id:?}")));
        }
    }
    Ok(old)
}

/// Generates a key with a version not in `taken` and makes it the current one (see the module
/// documentation for the order of writes). Returns its version.
fn install_new_key(dir: &Path, taken: &[String]) -> Result<String, KeyError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let der = Ed25519KeyPair::generate();
    let version = loop {
        let version: String = {
            const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
            let mut rng = rand::rng();
            (0..6)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                .collect()
        };
        if !taken.contains(&format!("ed25519:{version}")) {
            break version;
        }
    };
    let tmp = |name: &str| dir.join(format!("{name}.tmp"));
    write_private(&tmp(KEY_FILE), &der).map_err(io_err(dir))?;
    write_private(&tmp(ID_FILE), version.as_bytes()).map_err(io_err(dir))?;
    fs::rename(tmp(KEY_FILE), dir.join(KEY_FILE)).map_err(io_err(dir))?;
    sync_dir(dir).map_err(io_err(dir))?;
    fs::rename(tmp(ID_FILE), dir.join(ID_FILE)).map_err(io_err(dir))?;
    sync_dir(dir).map_err(io_err(dir))?;
    Ok(version)
}

/// Completes or undoes a key installation that a crash interrupted.
fn recover(dir: &Path) -> Result<(), KeyError> {
    let key_tmp: PathBuf = dir.join(format!("{KEY_FILE}.tmp"));
    let id_tmp: PathBuf = dir.join(format!("{ID_FILE}.tmp"));
    if key_tmp.exists() {
        // No rename happened yet: the previous key and id are intact and match.
        fs::remove_file(&key_tmp).map_err(io_err(dir))?;
        if id_tmp.exists() {
            fs::remove_file(&id_tmp).map_err(io_err(dir))?;
        }
        log::warn!("dropped an unfinished signing key in {}", dir.display());
    } else if id_tmp.exists() {
        // The new key is in place; its id (fsynced before the key's rename) must follow.
        fs::rename(&id_tmp, dir.join(ID_FILE)).map_err(io_err(dir))?;
        log::warn!("completed an interrupted key rotation in {}", dir.display());
    } else {
        return Ok(());
    }
    sync_dir(dir).map_err(io_err(dir))
}

/// Writes `name` in `dir` atomically and durably.
fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    write_private(&tmp, bytes)?;
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_old_key_and_signs_with_the_new() {
        let dir = tempfile::tempdir().unwrap();
        let first = ServerKeys::load_or_generate(dir.path()).unwrap();
        let first_id = first.key_id();
        let first_public = first.public_key_base64();
        let rotation = ServerKeys::rotate(dir.path(), 1_000).unwrap();
        assert_eq!(rotation.retired.as_deref(), Some(first_id.as_str()));
        let second = ServerKeys::load(dir.path()).unwrap();
        assert_eq!(second.key_id(), rotation.current);
        assert_ne!(second.key_id(), first_id);
        assert_eq!(
            second.old.get(&first_id),
            Some(&OldKey {
                key: first_public,
                expired_ts: 1_000
            })
        );
        ServerKeys::rotate(dir.path(), 2_000).unwrap();
        let third = ServerKeys::load(dir.path()).unwrap();
        assert_eq!(third.old.len(), 2);
        assert_eq!(third.old[&second.key_id()].expired_ts, 2_000);
    }

    #[test]
    fn interrupted_rotations_are_completed_or_undone() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ServerKeys::load_or_generate(dir.path()).unwrap();
        let id = keys.key_id();
        // Stopped before any rename: the old key list already names the current key.
        let mut old = BTreeMap::new();
        old.insert(
            id.clone(),
            OldKey {
                key: keys.public_key_base64(),
                expired_ts: 5,
            },
        );
        replace_file(
            dir.path(),
            OLD_KEYS_FILE,
            &serde_json::to_vec(&old).unwrap(),
        )
        .unwrap();
        fs::write(dir.path().join("signing.key.tmp"), b"half").unwrap();
        let reloaded = ServerKeys::load(dir.path()).unwrap();
        assert_eq!(reloaded.key_id(), id);
        assert!(reloaded.old.is_empty());
        assert!(!dir.path().join("signing.key.tmp").exists());

        // Stopped between the two renames: the new key is in place, its id is not.
        let other = Ed25519KeyPair::generate();
        fs::write(dir.path().join("signing.key"), &*other).unwrap();
        fs::write(dir.path().join("signing.key.id.tmp"), b"newver").unwrap();
        let reloaded = ServerKeys::load(dir.path()).unwrap();
        assert_eq!(reloaded.key_id(), "ed25519:newver");
        let expected = Ed25519KeyPair::from_der(&other, "newver".into()).unwrap();
        assert_eq!(reloaded.keypair.public_key(), expected.public_key());
    }

    #[test]
    fn key_response_is_self_signed() {
        let dir = tempfile::tempdir().unwrap();
        ServerKeys::load_or_generate(dir.path()).unwrap();
        ServerKeys::rotate(dir.path(), 7).unwrap();
        let keys = ServerKeys::load(dir.path()).unwrap();
        let name = ruma::server_name!("example.org");
        let object = keys.key_response(name, 1_000);
        let mut map = ruma::signatures::PublicKeyMap::new();
        let mut set = BTreeMap::new();
        set.insert(
            keys.key_id(),
            Base64::parse(keys.public_key_base64()).unwrap(),
        );
        map.insert("example.org".into(), set);
        ruma::signatures::verify_json(&map, &object).unwrap();
        assert_eq!(
            object["valid_until_ts"],
            int(1_000 + KEY_RESPONSE_VALIDITY_MS)
        );
        let old = object["old_verify_keys"].as_object().unwrap();
        assert_eq!(old.len(), 1);
    }
}
