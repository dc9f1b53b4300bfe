//! Secrets at rest: each secret setting is sealed with XChaCha20-Poly1305 under a key
//! kept in a file (`secret_key_file`, by default in the data folder), created readable
//! by its owner only. Engines sharing a database hold copies of one key file; the
//! key check stored beside the secrets (`check`) stops an engine with another key
//! before it starts.
//!
//! The database alone then reveals nothing; the key file and the database together
//! do, so back them up (and protect them) separately.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

/// The key file inside the data folder.
pub const KEY_FILE: &str = "secret.key";
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const PREFIX: &str = "v1:";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read or create the key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the key file {path} is damaged (it must hold exactly {KEY_LEN} bytes); restore it from a backup")]
    BadKey { path: PathBuf },
    #[error("the system's random number generator failed: {0}")]
    Random(String),
    #[error(
        "a stored secret cannot be decrypted (was the key file replaced?); enter the secret again"
    )]
    Undecryptable,
}

pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl SecretBox {
    /// Reads the key file at `path`, creating it (and its folder, owner-only) on first
    /// start.
    pub fn open_or_create(path: &Path) -> Result<Self, SecretsError> {
        let path = path.to_path_buf();
        let key_file_error = |source| SecretsError::KeyFile {
            path: path.clone(),
            source,
        };
        let key = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    create_private_folder(folder).map_err(key_file_error)?;
                }
                let mut key = vec![0u8; KEY_LEN];
                getrandom::fill(&mut key).map_err(|e| SecretsError::Random(e.to_string()))?;
                write_private(&path, &key).map_err(key_file_error)?;
                tracing::info!(path = %path.display(), "created the key file for secrets");
                key
            }
            Err(e) => return Err(key_file_error(e)),
        };
        if key.len() != KEY_LEN {
            return Err(SecretsError::BadKey { path });
        }
        warn_if_shared(&path);
        Ok(Self {
            cipher: XChaCha20Poly1305::new(Key::from_slice(&key)),
        })
    }

    /// Seals `plaintext`, bound to `label` (the setting's key), so a sealed value
    /// cannot be moved to another field.
    pub fn seal(&self, label: &str, plaintext: &str) -> Result<String, SecretsError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| SecretsError::Random(e.to_string()))?;
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: label.as_bytes(),
                },
            )
            .map_err(|_| SecretsError::Random("encryption failed".into()))?;
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{}", BASE64.encode(bytes)))
    }

    pub fn unseal(&self, label: &str, sealed: &str) -> Result<String, SecretsError> {
        let bytes = sealed
            .strip_prefix(PREFIX)
            .and_then(|b| BASE64.decode(b).ok())
            .filter(|b| b.len() > NONCE_LEN)
            .ok_or(SecretsError::Undecryptable)?;
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: label.as_bytes(),
                },
            )
            .map_err(|_| SecretsError::Undecryptable)?;
        String::from_utf8(plain).map_err(|_| SecretsError::Undecryptable)
    }
}

/// What the key check seals: a database holds it sealed by the first engine's key,
/// and every engine opens it at start.
const CHECK_LABEL: &str = "key_check";
const CHECK_TEXT: &str = "middleware-engine secret key check";

impl SecretBox {
    /// The key check to store when the database has none yet.
    pub fn key_check(&self) -> Result<String, SecretsError> {
        self.seal(CHECK_LABEL, CHECK_TEXT)
    }

    /// Whether this key opens the stored key check and a sample stored secret
    /// (`label`, sealed value), if there is one.
    pub fn opens(&self, check: &str, sample: Option<(&str, &str)>) -> bool {
        self.unseal(CHECK_LABEL, check)
            .is_ok_and(|t| t == CHECK_TEXT)
            && sample.is_none_or(|(label, sealed)| self.unseal(label, sealed).is_ok())
    }
}

fn create_private_folder(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn warn_if_shared(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "the key file is readable by others; run chmod 600 on it");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_round_trip_and_are_bound_to_their_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secrets = SecretBox::open_or_create(&dir.path().join(KEY_FILE)).expect("key");
        let sealed = secrets.seal("bt_client_secret", "hunter2").expect("seal");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(
            secrets.unseal("bt_client_secret", &sealed).expect("unseal"),
            "hunter2"
        );
        assert!(matches!(
            secrets.unseal("azure_client_secret", &sealed),
            Err(SecretsError::Undecryptable)
        ));
        // The same key is read back on the next start.
        let again = SecretBox::open_or_create(&dir.path().join(KEY_FILE)).expect("key again");
        assert_eq!(
            again.unseal("bt_client_secret", &sealed).expect("unseal"),
            "hunter2"
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_key_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        SecretBox::open_or_create(&dir.path().join(KEY_FILE)).expect("key");
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_damaged_key_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(KEY_FILE), b"short").expect("write");
        let err = SecretBox::open_or_create(&dir.path().join(KEY_FILE))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("is damaged"), "{err}");
    }
}
