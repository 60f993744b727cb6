//! Leaked-token reports from GitHub's secret-scanning partner program, without I/O.
//!
//! When GitHub finds a string matching one of Postern's token patterns in a public place, it
//! posts a JSON array of matches (`[{"token", "type", "url", "source"}]`) to the partner's
//! endpoint, signed with ECDSA P-256 over SHA-256 of the raw body: the header
//! `Github-Public-Key-Identifier` names the key, `Github-Public-Key-Signature` carries the
//! base64 of the DER signature. The keys are the ones GitHub publishes at
//! `https://api.github.com/meta/public_keys/secret_scanning` ([`SigningKeys::from_json`] reads
//! that document). The answer is one [`Verdict`] per match, naming the token by the SHA-256 of
//! its text so the secret is never sent back.

use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The most matches one report may carry; GitHub sends them in small batches.
pub const MAX_MATCHES: usize = 1000;

/// The most keys a keys document may list.
pub const MAX_KEYS: usize = 64;

/// Why a keys document was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeysError {
    #[error("the keys file is not GitHub's public-keys JSON ({0})")]
    Json(String),
    #[error("the keys file lists no key")]
    Empty,
    #[error("the keys file lists {0} keys; at most {MAX_KEYS} are read")]
    TooMany(usize),
    #[error("key '{0}' is not a PEM-encoded P-256 public key")]
    Key(String),
}

/// Why a report's signature was refused. Each one is a 401 to the sender.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the header Github-Public-Key-Identifier is missing")]
    MissingKeyId,
    #[error("the header Github-Public-Key-Signature is missing")]
    MissingSignature,
    #[error("no configured GitHub signing key has this identifier")]
    UnknownKey,
    #[error("the signature is not base64 of a DER-encoded ECDSA signature")]
    Malformed,
    #[error("the signature does not match the body")]
    Mismatch,
}

/// Why a signed report could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("the report is not a JSON array of matches ({0})")]
    Json(String),
    #[error("the report carries {0} matches; at most {MAX_MATCHES} are read")]
    TooMany(usize),
}

#[derive(Debug, Clone)]
struct SigningKey {
    id: String,
    key: VerifyingKey,
}

/// GitHub's secret-scanning signing keys, as the operator configured them.
#[derive(Debug, Clone)]
pub struct SigningKeys {
    keys: Vec<SigningKey>,
}

#[derive(Deserialize)]
struct KeysDocument {
    public_keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
struct KeyEntry {
    key_identifier: String,
    key: String,
}

impl SigningKeys {
    /// Reads GitHub's public-keys document:
    /// `{"public_keys": [{"key_identifier": "…", "key": "-----BEGIN PUBLIC KEY-----…", "is_current": true}]}`.
    /// Every listed key verifies, current or not: GitHub may still sign with a key it is
    /// retiring.
    pub fn from_json(text: &str) -> Result<Self, KeysError> {
        let document: KeysDocument =
            serde_json::from_str(text).map_err(|err| KeysError::Json(err.to_string()))?;
        if document.public_keys.is_empty() {
            return Err(KeysError::Empty);
        }
        if document.public_keys.len() > MAX_KEYS {
            return Err(KeysError::TooMany(document.public_keys.len()));
        }
        let keys = document
            .public_keys
            .into_iter()
            .map(|entry| {
                let key = VerifyingKey::from_public_key_pem(entry.key.trim())
                    .map_err(|_| KeysError::Key(entry.key_identifier.clone()))?;
                Ok(SigningKey {
                    id: entry.key_identifier,
                    key,
                })
            })
            .collect::<Result<Vec<_>, KeysError>>()?;
        Ok(Self { keys })
    }

    /// How many keys are configured.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks that `body` was signed by the key named `key_id` (the two headers' values, as
    /// received). Nothing in the body may be trusted before this succeeds.
    pub fn verify(
        &self,
        key_id: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        let key_id = key_id.ok_or(SignatureError::MissingKeyId)?.trim();
        let signature = signature.ok_or(SignatureError::MissingSignature)?.trim();
        let key = self
            .keys
            .iter()
            .find(|key| key.id == key_id)
            .ok_or(SignatureError::UnknownKey)?;
        let der = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .map_err(|_| SignatureError::Malformed)?;
        let signature = Signature::from_der(&der).map_err(|_| SignatureError::Malformed)?;
        key.key
            .verify(body, &signature)
            .map_err(|_| SignatureError::Mismatch)
    }
}

/// One string GitHub found.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Match {
    /// The text found (a candidate token).
    pub token: String,
    /// The pattern's type, as registered with GitHub (e.g. `postern_client_token`).
    #[serde(rename = "type")]
    pub token_type: String,
    /// Where it was found.
    pub url: String,
    /// What kind of place (`content`, `commit`, `pull_request_description`, `npm`, …).
    #[serde(default)]
    pub source: String,
}

/// Reads a verified report's matches.
pub fn parse_report(body: &[u8]) -> Result<Vec<Match>, ReportError> {
    let matches: Vec<Match> =
        serde_json::from_slice(body).map_err(|err| ReportError::Json(strip_secret(&err)))?;
    if matches.len() > MAX_MATCHES {
        return Err(ReportError::TooMany(matches.len()));
    }
    Ok(matches)
}

/// serde_json's messages can quote the value that failed: keep only what names the position.
fn strip_secret(err: &serde_json::Error) -> String {
    format!(
        "{:?} error at line {} column {}",
        err.classify(),
        err.line(),
        err.column()
    )
}

/// What the partner says of a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// A real token of this portal (now revoked).
    TruePositive,
    /// Not a token of this portal.
    FalsePositive,
}

/// The answer for one match, in GitHub's format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Verdict {
    /// The SHA-256 of the token's text, hexadecimal: GitHub matches it to its finding.
    pub token_hash: String,
    pub token_type: String,
    pub label: Label,
}

impl Verdict {
    pub fn new(found: &Match, label: Label) -> Self {
        Self {
            token_hash: token_hash(&found.token),
            token_type: found.token_type.clone(),
            label,
        }
    }
}

/// The SHA-256 of a token's text in lowercase hexadecimal, as GitHub's `token_hash`.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests;
