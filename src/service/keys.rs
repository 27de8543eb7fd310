//! The server's ed25519 signing key, kept in `data/keys/`. Generated on first start; the key id
//! (`ed25519:<version>`) is stored with it so it stays stable across restarts.

use std::{fs, io::Write, path::Path};

use rand::RngExt;
use ruma::signatures::{Ed25519KeyPair, KeyPair};

pub struct ServerKeys {
    pub keypair: Ed25519KeyPair,
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

impl ServerKeys {
    /// Loads `dir/signing.key` (PKCS#8 DER) and `dir/signing.key.id`, creating both if absent.
    pub fn load_or_generate(dir: &Path) -> Result<Self, KeyError> {
        let key_path = dir.join("signing.key");
        let id_path = dir.join("signing.key.id");
        let io = |source| KeyError::Io {
            path: dir.display().to_string(),
            source,
        };
        if !key_path.exists() {
            fs::create_dir_all(dir).map_err(io)?;
            let der = Ed25519KeyPair::generate();
            let version: String = {
                const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
                let mut rng = rand::rng();
                (0..6)
                    .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                    .collect()
            };
            // Write to temporary files and rename, so a crash never leaves half a key.
            write_private(&dir.join("signing.key.tmp"), &der).map_err(io)?;
            write_private(&dir.join("signing.key.id.tmp"), version.as_bytes()).map_err(io)?;
            fs::rename(dir.join("signing.key.id.tmp"), &id_path).map_err(io)?;
            fs::rename(dir.join("signing.key.tmp"), &key_path).map_err(io)?;
            log::info!("generated server signing key ed25519:{version}");
        }
        Self::load(dir)
    }

    /// Loads `dir/signing.key` and `dir/signing.key.id` as they are (nothing is created).
    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        let key_path = dir.join("signing.key");
        let id_path = dir.join("signing.key.id");
        let io = |source| KeyError::Io {
            path: dir.display().to_string(),
            source,
        };
        let der = fs::read(&key_path).map_err(io)?;
        let version = fs::read_to_string(&id_path).map_err(io)?.trim().to_owned();
        let invalid = |detail: String| KeyError::Invalid {
            path: key_path.display().to_string(),
            detail,
        };
        if version.is_empty()
            || !version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(invalid(format!("bad key version {version:?}")));
        }
        let keypair =
            Ed25519KeyPair::from_der(&der, version).map_err(|e| invalid(e.to_string()))?;
        Ok(Self { keypair })
    }

    /// `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.keypair.version())
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.keypair.sign(message).as_bytes().to_vec()
    }
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
