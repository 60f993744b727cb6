//! WireGuard preshared keys inside authorization documents are sealed before they reach the
//! database or the change feed, and opened when read back: ChaCha20-Poly1305 under a key derived
//! (HKDF-SHA-256) from the server's secret, bound to the authorization's id. A copy of the
//! `authorizations` or `change_events` tables, a NOTIFY payload or a log of either shows no key;
//! the server secret (`server_secrets`) opens them, so a dump that includes that table does too.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rand::RngCore;
use serde_json::Value;
use sha2::Sha256;
use uuid::Uuid;

use crate::StoreError;

const KEY_INFO: &[u8] = b"postern authorization preshared keys v1";
const NONCE_LEN: usize = 12;
/// The field whose string value is sealed, wherever it is in the document.
const PLAIN: &str = "preshared_key";
const SEALED: &str = "preshared_key_sealed";

pub(crate) struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    pub(crate) fn new(server_secret: &str) -> Self {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        // 32 bytes are well within HKDF-SHA-256's output limit: expand cannot fail.
        let _ = Hkdf::<Sha256>::new(None, server_secret.as_bytes()).expand(KEY_INFO, &mut key[..]);
        Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key[..])),
        }
    }

    /// `plain` sealed and bound to `aad` (what it belongs to), as hex of nonce + ciphertext.
    pub(crate) fn seal_text(&self, aad: &[u8], plain: &str) -> crate::Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad,
                },
            )
            .map_err(|_| StoreError::Corrupt("cannot seal a secret".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(hex::encode(out))
    }

    /// What [`Sealer::seal_text`] sealed with the same `aad`; `None` if it does not open
    /// (another server secret, another `aad`, tampering).
    pub(crate) fn open_text(&self, aad: &[u8], sealed: &str) -> Option<String> {
        let bytes = hex::decode(sealed).ok()?;
        if bytes.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()?;
        String::from_utf8(plain).ok()
    }

    /// The document with every `preshared_key` string replaced by `preshared_key_sealed`.
    pub(crate) fn seal(&self, id: Uuid, body: &Value) -> crate::Result<Value> {
        let mut body = body.clone();
        self.walk(&mut body, &mut |map| {
            let Some(Value::String(plain)) = map.remove(PLAIN) else {
                return Ok(());
            };
            let sealed = self.seal_text(id.as_bytes(), &plain)?;
            map.insert(SEALED.to_string(), Value::String(sealed));
            Ok(())
        })?;
        Ok(body)
    }

    /// The document as it was before [`Sealer::seal`]; a sealed key that does not open (another
    /// server secret, tampering) is an error.
    pub(crate) fn open(&self, id: Uuid, body: Value) -> crate::Result<Value> {
        let mut body = body;
        let corrupt = || {
            StoreError::Corrupt(format!(
                "authorization {id}: its preshared key does not open"
            ))
        };
        self.walk(&mut body, &mut |map| {
            let Some(Value::String(sealed)) = map.remove(SEALED) else {
                return Ok(());
            };
            let plain = self.open_text(id.as_bytes(), &sealed).ok_or_else(corrupt)?;
            map.insert(PLAIN.to_string(), Value::String(plain));
            Ok(())
        })?;
        Ok(body)
    }

    fn walk(
        &self,
        value: &mut Value,
        visit: &mut dyn FnMut(&mut serde_json::Map<String, Value>) -> crate::Result<()>,
    ) -> crate::Result<()> {
        match value {
            Value::Object(map) => {
                visit(map)?;
                for child in map.values_mut() {
                    self.walk(child, visit)?;
                }
                Ok(())
            }
            Value::Array(items) => items.iter_mut().try_for_each(|item| self.walk(item, visit)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sealed_documents_hold_no_key_and_open_only_for_their_id_and_secret() {
        let sealer = Sealer::new("secret-one");
        let id = Uuid::now_v7();
        let body = json!({"authorization": {"id": id, "preshared_key": "c2VjcmV0LXBzaw=="}, "client_ip": "10.0.0.1"});
        let sealed = sealer.seal(id, &body).unwrap();
        let text = sealed.to_string();
        assert!(!text.contains("c2VjcmV0LXBzaw=="), "{text}");
        assert!(!text.contains("\"preshared_key\""), "{text}");
        assert_eq!(sealer.open(id, sealed.clone()).unwrap(), body);
        assert!(
            sealer.open(Uuid::now_v7(), sealed.clone()).is_err(),
            "bound to the id"
        );
        assert!(
            Sealer::new("secret-two").open(id, sealed).is_err(),
            "bound to the secret"
        );
        let without = json!({"authorization": {"id": id}});
        assert_eq!(sealer.seal(id, &without).unwrap(), without);
    }
}
