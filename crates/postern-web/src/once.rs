//! Secrets shown once. A created token's secret waits, for a few minutes, for the session that
//! created it, until the page that shows it is read once: a reload, the back button or another
//! browser shows nothing. It waits in the database, so any portal node can show it, sealed
//! (ChaCha20-Poly1305) with a key derived (HKDF-SHA-256) from the session id — which only the
//! browser's cookie holds; the database has its SHA-256 — so a database dump does not reveal it.

use std::time::Duration;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use chrono::Utc;
use hkdf::Hkdf;
use postern_domain::Token;
use postern_token::SecretString;
use rand::RngCore;
use sha2::Sha256;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::auth::Admin;
use crate::error::WebResult;
use crate::WebState;

const KEEP_FOR: Duration = Duration::from_secs(300);
const KEY_INFO: &[u8] = b"postern web shown-once v1";
const NONCE_LEN: usize = 12;

pub struct Shown {
    pub token: Token,
    pub secret: SecretString,
}

/// The key that seals a session's shown-once secrets, derived from its session id.
#[derive(Clone)]
pub struct SealKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    pub fn from_session_id(session_id: &str) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA-256's 8 160-byte limit: expanding cannot fail.
        let _ = Hkdf::<Sha256>::new(None, session_id.as_bytes()).expand(KEY_INFO, &mut key[..]);
        Self(key)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0[..]))
    }

    /// `nonce || ciphertext`, hex; `aad` binds it to one session, holder and token.
    fn seal(&self, aad: &[u8], secret: &str) -> Option<String> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad,
                },
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend(sealed);
        Some(hex::encode(out))
    }

    fn open(&self, aad: &[u8], sealed: &str) -> Option<SecretString> {
        let bytes = hex::decode(sealed).ok()?;
        if bytes.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: ciphertext,
                        aad,
                    },
                )
                .ok()?,
        );
        let text = std::str::from_utf8(&plain).ok()?;
        Some(SecretString::from(text.to_string()))
    }
}

fn aad(session_hash: &str, holder: Uuid, token_id: Uuid) -> Vec<u8> {
    format!("{session_hash}/{holder}/{token_id}").into_bytes()
}

/// Keeps `shown` for the admin's session, to be shown once on `holder`'s token page.
pub async fn put(state: &WebState, admin: &Admin, holder: Uuid, shown: Shown) -> WebResult<()> {
    let session_hash = &admin.session.id_hash;
    let Some(sealed) = admin.seal_key.seal(
        &aad(session_hash, holder, shown.token.id),
        shown.secret.expose(),
    ) else {
        tracing::error!("could not seal a token secret to show once");
        return Ok(());
    };
    let expires_at = Utc::now() + chrono::Duration::from_std(KEEP_FOR).unwrap_or_default();
    state
        .store()
        .put_shown_secret(session_hash, holder, &shown.token, &sealed, expires_at)
        .await?;
    Ok(())
}

/// The secret waiting for the admin's session and `holder`, gone once read.
pub async fn take(state: &WebState, admin: &Admin, holder: Uuid) -> WebResult<Option<Shown>> {
    let session_hash = &admin.session.id_hash;
    let Some((token, sealed)) = state
        .store()
        .take_shown_secret(session_hash, holder, Utc::now())
        .await?
    else {
        return Ok(None);
    };
    let secret = admin
        .seal_key
        .open(&aad(session_hash, holder, token.id), &sealed);
    Ok(secret.map(|secret| Shown { token, secret }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_session_and_binding() {
        let key = SealKey::from_session_id("a-session-id");
        let (holder, token) = (Uuid::now_v7(), Uuid::now_v7());
        let binding = aad("hash", holder, token);
        let sealed = key.seal(&binding, "postern_client_secret").unwrap();
        assert!(!sealed.contains("secret"));
        assert_eq!(
            key.open(&binding, &sealed).unwrap().expose(),
            "postern_client_secret"
        );
        let other_session = SealKey::from_session_id("another-session-id");
        assert!(other_session.open(&binding, &sealed).is_none());
        let other_holder = aad("hash", Uuid::now_v7(), token);
        assert!(key.open(&other_holder, &sealed).is_none());
        let mut tampered = sealed.clone();
        tampered.replace_range(30..32, if &sealed[30..32] == "00" { "01" } else { "00" });
        assert!(key.open(&binding, &tampered).is_none());
        assert!(key.open(&binding, "00").is_none());
        assert!(key.open(&binding, "not hex").is_none());
    }
}
