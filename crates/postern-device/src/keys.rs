//! The device's WireGuard key pair: generated on the machine, the private key kept in the state
//! directory (mode 600) and never sent anywhere; only the public key goes to the portal.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use boringtun::x25519::{PublicKey, StaticSecret};
use postern_protocol::WireGuardKey;
use rand::RngCore;
use zeroize::Zeroizing;

const FILE: &str = "wireguard.key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the WireGuard private key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the WireGuard private key {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the WireGuard private key {path} is readable by others (mode {mode:o}): run chmod 600 on it")]
    Unsafe { path: PathBuf, mode: u32 },
    #[error("the WireGuard private key {path} is not a base64 32-byte key")]
    Malformed { path: PathBuf },
}

pub struct KeyPair {
    pub private: StaticSecret,
    pub public: PublicKey,
}

impl KeyPair {
    pub fn public_key(&self) -> WireGuardKey {
        WireGuardKey::from_bytes(self.public.to_bytes())
    }
}

/// Loads the key pair from `state_dir`, creating it on first use.
pub fn load_or_create(state_dir: &Path) -> Result<KeyPair, KeyError> {
    let path = state_dir.join(FILE);
    match std::fs::metadata(&path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Unsafe { path, mode });
            }
            let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|source| {
                KeyError::Read {
                    path: path.clone(),
                    source,
                }
            })?);
            let bytes = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|_| KeyError::Malformed { path: path.clone() })?,
            );
            let key: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| KeyError::Malformed { path: path.clone() })?;
            Ok(pair(StaticSecret::from(key)))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = Zeroizing::new([0u8; 32]);
            rand::rngs::OsRng.fill_bytes(bytes.as_mut());
            let secret = StaticSecret::from(*bytes);
            let text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(*bytes));
            let write = |source| KeyError::Write {
                path: path.clone(),
                source,
            };
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(write)?;
            file.write_all(format!("{}\n", text.as_str()).as_bytes())
                .map_err(write)?;
            file.sync_all().map_err(write)?;
            Ok(pair(secret))
        }
        Err(source) => Err(KeyError::Read { path, source }),
    }
}

fn pair(private: StaticSecret) -> KeyPair {
    let public = PublicKey::from(&private);
    KeyPair { private, public }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_mode_600_then_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create(dir.path()).unwrap();
        assert_eq!(first.public_key(), again.public_key());
        assert_eq!(first.public_key().to_string().len(), 44);
    }

    #[test]
    fn an_unsafe_or_malformed_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        std::fs::write(&path, "not a key").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(KeyError::Malformed { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(dir.path()).err().unwrap();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
