//! The cluster secret: the CA and the bootstrap admin token are made once and kept in PostgreSQL, sealed
//! with a secret every replica is given (as k3s keeps its bootstrap data), so replicas with different data
//! dirs share them. Sealing: ChaCha20-Poly1305 with a key derived from the secret by HKDF-SHA256 over a
//! random salt kept beside the sealed data (ring; docs/decisions.md).

use std::path::{Path, PathBuf};

use ring::{aead, hkdf};
use serde::{Deserialize, Serialize};

use crate::admin_token::{self, ADMIN_TOKEN_FILE};
use crate::pki::{CA_CERT_FILE, CA_KEY_FILE, Pki, PkiError};
use crate::store::{PgStore, Sealed, StoreError};
use drover_files::write_atomic;

/// A secret shorter than this is refused: it is a key, not a password (HKDF does not slow guessing).
const MIN_SECRET: usize = 16;
const MAX_SECRET: usize = 4096;
const INFO: &[u8] = b"drover cluster bootstrap v1";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read the cluster secret file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the cluster secret file {0} must hold {MIN_SECRET} to {MAX_SECRET} bytes (make one with `openssl rand -hex 32`)"
    )]
    BadSecret(PathBuf),
    #[error(
        "the cluster secret in {0} does not open the CA kept in PostgreSQL: it was sealed with another secret (give every replica the same file)"
    )]
    WrongSecret(PathBuf),
    #[error(
        "the data dir {0} holds another CA than the cluster's in PostgreSQL: move its ca.crt and ca.key away to use the cluster's"
    )]
    OtherCa(PathBuf),
    #[error("the bootstrap data in PostgreSQL is unreadable: {0}")]
    Corrupt(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    AdminToken(String),
}

/// What is sealed.
#[derive(Serialize, Deserialize)]
struct Bootstrap {
    ca_cert: String,
    ca_key: String,
    admin_token: String,
}

pub struct ClusterSecret {
    path: PathBuf,
    secret: Vec<u8>,
}

impl ClusterSecret {
    /// Reads the secret (surrounding whitespace ignored).
    pub fn read(path: &Path) -> Result<Self, ClusterError> {
        let text = std::fs::read(path).map_err(|source| ClusterError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let secret = text.trim_ascii().to_vec();
        if !(MIN_SECRET..=MAX_SECRET).contains(&secret.len()) {
            return Err(ClusterError::BadSecret(path.to_path_buf()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            secret,
        })
    }

    fn key(&self, salt: &[u8]) -> aead::LessSafeKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&self.secret);
        // A 32-byte output is always within HKDF-SHA256's limit (255 blocks).
        let okm = prk
            .expand(&[INFO], &aead::CHACHA20_POLY1305)
            .unwrap_or_else(|_| unreachable!("32 bytes is within HKDF's output limit"));
        aead::LessSafeKey::new(aead::UnboundKey::from(okm))
    }

    fn seal(&self, plain: &[u8]) -> Sealed {
        let salt = rand::random::<[u8; 16]>().to_vec();
        let nonce = rand::random::<[u8; 12]>();
        let mut data = plain.to_vec();
        // Sealing fails only for inputs over ChaCha20's 256 GiB limit; ours is a few KiB.
        self.key(&salt)
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(INFO),
                &mut data,
            )
            .unwrap_or_else(|_| unreachable!("a few KiB is within ChaCha20's limit"));
        Sealed {
            salt,
            nonce: nonce.to_vec(),
            data,
        }
    }

    fn open(&self, sealed: &Sealed) -> Result<Vec<u8>, ClusterError> {
        let nonce: [u8; 12] = sealed
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| ClusterError::Corrupt("the nonce is not 12 bytes".into()))?;
        let mut data = sealed.data.clone();
        let plain = self
            .key(&sealed.salt)
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(INFO),
                &mut data,
            )
            .map_err(|_| ClusterError::WrongSecret(self.path.clone()))?;
        Ok(plain.to_vec())
    }
}

fn read(path: &Path) -> Result<String, ClusterError> {
    std::fs::read_to_string(path).map_err(|source| ClusterError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Makes the data dir hold the cluster's CA and admin token: the first replica seals its own (made now if
/// the dir has none) into PostgreSQL, under a lock so replicas starting together make one; the others
/// write the cluster's into their dir. Returns whether this replica made the cluster's.
pub async fn join(
    dir: &Path,
    store: &PgStore,
    secret: &ClusterSecret,
    sans: &[String],
) -> Result<bool, ClusterError> {
    let make = || -> Result<Sealed, ClusterError> {
        Pki::load_or_create(dir, sans)?;
        let (admin_token, _) = admin_token::load_or_create(dir)
            .map_err(|e| ClusterError::AdminToken(e.to_string()))?;
        let plain = serde_json::to_vec(&Bootstrap {
            ca_cert: read(&dir.join(CA_CERT_FILE))?,
            ca_key: read(&dir.join(CA_KEY_FILE))?,
            admin_token,
        })
        .map_err(|e| ClusterError::Corrupt(e.to_string()))?;
        Ok(secret.seal(&plain))
    };
    let (sealed, created) = store.bootstrap_data(make).await?;
    if created {
        return Ok(true);
    }
    let plain = secret.open(&sealed)?;
    let b: Bootstrap =
        serde_json::from_slice(&plain).map_err(|e| ClusterError::Corrupt(e.to_string()))?;
    let cert_path = dir.join(CA_CERT_FILE);
    match std::fs::read_to_string(&cert_path) {
        Ok(have) if have != b.ca_cert => return Err(ClusterError::OtherCa(dir.to_path_buf())),
        _ => {}
    }
    let write = |name: &str, text: &str, private: bool| {
        let path = dir.join(name);
        write_atomic(&path, text.as_bytes(), private)
            .map_err(|source| ClusterError::Write { path, source })
    };
    // Key first: a CA certificate without its key on disk would be unusable.
    write(CA_KEY_FILE, &b.ca_key, true)?;
    write(CA_CERT_FILE, &b.ca_cert, false)?;
    let token_path = dir.join(ADMIN_TOKEN_FILE);
    let have = std::fs::read_to_string(&token_path).unwrap_or_default();
    if have.trim() != b.admin_token {
        if !have.trim().is_empty() {
            tracing::warn!(
                "replacing {} with the cluster's admin token",
                token_path.display()
            );
        }
        write(ADMIN_TOKEN_FILE, &format!("{}\n", b.admin_token), true)?;
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(text: &str) -> ClusterSecret {
        ClusterSecret {
            path: PathBuf::from("secret"),
            secret: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn sealed_data_opens_with_its_secret_only() {
        let a = secret("0123456789abcdef0123456789abcdef");
        let sealed = a.seal(b"the CA");
        assert_eq!(a.open(&sealed).unwrap(), b"the CA");
        let b = secret("0123456789abcdef0123456789abcdeX");
        assert!(matches!(b.open(&sealed), Err(ClusterError::WrongSecret(_))));
        let mut tampered = sealed.clone();
        tampered.data[0] ^= 1;
        assert!(a.open(&tampered).is_err());
    }

    #[test]
    fn short_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "short\n").unwrap();
        assert!(matches!(
            ClusterSecret::read(&path),
            Err(ClusterError::BadSecret(_))
        ));
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(ClusterSecret::read(&path).unwrap().secret.len(), 32);
    }
}
