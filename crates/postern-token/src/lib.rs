//! The Postern token format: kinds, generation, parsing, checksum, keyed
//! hashing and constant-time verification. Pure: no I/O, no async, no logging.
//!
//! # Format
//!
//! ```text
//! <prefix><id><secret><checksum>
//! ```
//!
//! | part       | content                                         | encoding                 | width |
//! |------------|-------------------------------------------------|--------------------------|-------|
//! | `prefix`   | `postern_client_`, `postern_gateway_` or `postern_api_` | literal          | 12–16 |
//! | `id`       | the token's UUID (16 bytes)                     | base62, fixed width      | 22    |
//! | `secret`   | 32 bytes (256 bits) from the OS CSPRNG          | base62, fixed width      | 43    |
//! | `checksum` | CRC-32 (IEEE) of the ASCII `prefix + id + secret` | base62, fixed width    | 6     |
//!
//! Everything after the prefix is 71 characters of `[0-9A-Za-z]`: each byte
//! array is read as a big-endian unsigned integer and written in base62
//! (digits `0-9`, `A-Z`, `a-z`, most significant first), left-padded with
//! `0`. The widths are the smallest that fit: `62^22 > 2^128`,
//! `62^43 > 2^256` and `62^6 > 2^32`. Decoding rejects values that overflow
//! the byte width. With no separators after the prefix a token is selectable
//! by double-click.
//!
//! Regular expressions for secret scanners (one per kind):
//!
//! ```text
//! client:  postern_client_[0-9A-Za-z]{71}
//! gateway: postern_gateway_[0-9A-Za-z]{71}
//! api:     postern_api_[0-9A-Za-z]{71}
//! ```
//!
//! A scanner can confirm a match offline with the checksum ([`parse`]).
//!
//! `Client` tokens belong to service accounts (headless clients), `Gateway`
//! tokens to gateways and `Api` tokens to API callers.
//!
//! # Storage and verification
//!
//! The server never stores a token. It stores [`TokenHash`] =
//! HMAC-SHA-256 keyed with a server-side [`HashKey`] ("pepper") over
//!
//! ```text
//! kind.as_str() || 0x00 || id (16 bytes) || secret (32 bytes)
//! ```
//!
//! The kind is part of the MAC input, so a token of one kind never verifies
//! as another kind even with the same id and secret. To verify: [`parse`]
//! (prefix, length, charset, checksum), look up the stored hash by
//! [`ParsedToken::id`], then [`ParsedToken::verify`] (constant time).
//!
//! Errors ([`TokenError`]) never contain any part of the input.

mod base62;

use std::fmt;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;
use zeroize::Zeroize;

/// Number of base62 characters encoding the token id.
pub const ID_CHARS: usize = 22;
/// Number of base62 characters encoding the secret.
pub const SECRET_CHARS: usize = 43;
/// Number of base62 characters encoding the checksum.
pub const CHECKSUM_CHARS: usize = 6;
/// Number of base62 characters after the prefix.
pub const BODY_CHARS: usize = ID_CHARS + SECRET_CHARS + CHECKSUM_CHARS;
/// Length of the random secret in bytes.
pub const SECRET_BYTES: usize = 32;

/// What a token authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// A service-account (headless client) token.
    Client,
    /// A gateway token.
    Gateway,
    /// An API token.
    Api,
}

impl TokenKind {
    /// Every kind, in a stable order.
    pub const ALL: [TokenKind; 3] = [TokenKind::Client, TokenKind::Gateway, TokenKind::Api];

    /// The literal prefix of tokens of this kind.
    pub fn prefix(self) -> &'static str {
        match self {
            TokenKind::Client => "postern_client_",
            TokenKind::Gateway => "postern_gateway_",
            TokenKind::Api => "postern_api_",
        }
    }

    /// Stable lowercase name: `"client"`, `"gateway"` or `"api"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Client => "client",
            TokenKind::Gateway => "gateway",
            TokenKind::Api => "api",
        }
    }

    /// Inverse of [`TokenKind::as_str`].
    pub fn parse_str(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == s)
    }

    /// Regular expression matching tokens of this kind, for secret scanners.
    pub fn scanner_regex(self) -> &'static str {
        match self {
            TokenKind::Client => "postern_client_[0-9A-Za-z]{71}",
            TokenKind::Gateway => "postern_gateway_[0-9A-Za-z]{71}",
            TokenKind::Api => "postern_api_[0-9A-Za-z]{71}",
        }
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a token or hex string was rejected. Never carries any part of the input.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The token does not start with any known prefix.
    #[error(
        "token does not start with a Postern prefix (postern_client_, postern_gateway_, postern_api_)"
    )]
    UnknownPrefix,
    /// Wrong length, a character outside `[0-9A-Za-z]`, or an encoded value out of range.
    #[error("token has the wrong length or characters")]
    Malformed,
    /// The checksum does not match the rest of the token.
    #[error("token checksum does not match: it was mistyped or truncated")]
    ChecksumMismatch,
    /// A key or hash was not exactly 64 hexadecimal characters.
    #[error("expected exactly 64 hexadecimal characters")]
    InvalidHex,
}

/// Server-side HMAC key ("pepper") for token hashes. Zeroized on drop.
#[derive(Clone)]
pub struct HashKey([u8; 32]);

impl HashKey {
    /// A fresh random key from the OS CSPRNG.
    pub fn generate() -> Self {
        let mut key = HashKey([0; 32]);
        OsRng.fill_bytes(&mut key.0);
        key
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        HashKey(bytes)
    }

    /// Parses 64 hexadecimal characters (either case).
    pub fn from_hex(s: &str) -> Result<Self, TokenError> {
        let mut key = HashKey([0; 32]);
        decode_hex(s, &mut key.0)?;
        Ok(key)
    }

    /// Lowercase hex. This exposes the key; handle the result as a secret.
    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }
}

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey([redacted])")
    }
}

impl Drop for HashKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// The keyed hash of a token: what the database stores.
///
/// Deliberately not `PartialEq`: compare with [`TokenHash::verify`] or
/// [`ConstantTimeEq`].
#[derive(Clone, Copy)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        TokenHash(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }

    /// Parses 64 hexadecimal characters (either case).
    pub fn from_hex(s: &str) -> Result<Self, TokenError> {
        let mut bytes = [0; 32];
        decode_hex(s, &mut bytes)?;
        Ok(TokenHash(bytes))
    }

    /// Constant-time equality.
    pub fn verify(&self, other: &TokenHash) -> bool {
        self.ct_eq(other).into()
    }
}

impl ConstantTimeEq for TokenHash {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        // Word-wise: one `subtle` comparison per 8 bytes instead of per byte.
        self.0
            .chunks_exact(8)
            .zip(other.0.chunks_exact(8))
            .fold(subtle::Choice::from(1), |equal, (a, b)| {
                equal & word(a).ct_eq(&word(b))
            })
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", self.to_hex())
    }
}

/// A secret string (the full token). Zeroized on drop; `Debug` and
/// `Display` print `[redacted]`.
pub struct SecretString(String);

impl SecretString {
    pub fn new(secret: String) -> Self {
        SecretString(secret)
    }

    /// The secret itself. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretString {
    fn from(secret: String) -> Self {
        SecretString(secret)
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A freshly generated token: show `secret` to the user once, store `hash`.
#[derive(Debug)]
pub struct NewToken {
    pub kind: TokenKind,
    pub id: Uuid,
    /// The full token string.
    pub secret: SecretString,
    pub hash: TokenHash,
}

/// Generates a token of `kind` for `id` with 32 bytes of fresh OS CSPRNG secret.
pub fn generate(kind: TokenKind, id: Uuid, key: &HashKey) -> NewToken {
    let mut secret = [0u8; SECRET_BYTES];
    OsRng.fill_bytes(&mut secret);
    let hash = hash_secret(key, kind, id, &secret);
    let token = encode_token(kind, id, &secret);
    secret.zeroize();
    NewToken {
        kind,
        id,
        secret: token,
        hash,
    }
}

/// A syntactically valid token (prefix, length, charset and checksum
/// checked). The secret bytes are private and zeroized on drop.
pub struct ParsedToken {
    pub kind: TokenKind,
    pub id: Uuid,
    secret: [u8; SECRET_BYTES],
}

impl ParsedToken {
    /// The keyed hash of this token, comparable with the stored one.
    pub fn hash(&self, key: &HashKey) -> TokenHash {
        hash_secret(key, self.kind, self.id, &self.secret)
    }

    /// Whether this token hashes to `stored`, compared in constant time.
    pub fn verify(&self, key: &HashKey, stored: &TokenHash) -> bool {
        self.hash(key).verify(stored)
    }
}

impl fmt::Debug for ParsedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedToken")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl Drop for ParsedToken {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

/// Checks prefix, length, charset and checksum, and decodes id and secret.
/// Needs no key and no lookup. Surrounding whitespace is not accepted.
pub fn parse(token: &str) -> Result<ParsedToken, TokenError> {
    let (kind, body) = TokenKind::ALL
        .into_iter()
        .find_map(|kind| Some((kind, token.strip_prefix(kind.prefix())?)))
        .ok_or(TokenError::UnknownPrefix)?;
    let body = body.as_bytes();
    if body.len() != BODY_CHARS || !base62::all_digits(body) {
        return Err(TokenError::Malformed);
    }

    let (checked, checksum) = token.as_bytes().split_at(token.len() - CHECKSUM_CHARS);
    let mut expected = [0u8; 4];
    if !base62::decode(checksum, &mut expected)
        || u32::from_be_bytes(expected) != crc32fast::hash(checked)
    {
        return Err(TokenError::ChecksumMismatch);
    }

    let mut id = [0u8; 16];
    if !base62::decode(&body[..ID_CHARS], &mut id) {
        return Err(TokenError::Malformed);
    }
    let mut parsed = ParsedToken {
        kind,
        id: Uuid::from_bytes(id),
        secret: [0; SECRET_BYTES],
    };
    if !base62::decode(&body[ID_CHARS..ID_CHARS + SECRET_CHARS], &mut parsed.secret) {
        return Err(TokenError::Malformed);
    }
    Ok(parsed)
}

/// HMAC-SHA-256 under `key` of `kind.as_str() || 0x00 || id || secret`.
pub fn hash_secret(
    key: &HashKey,
    kind: TokenKind,
    id: Uuid,
    secret: &[u8; SECRET_BYTES],
) -> TokenHash {
    let mut mac = new_mac(key);
    mac.update(kind.as_str().as_bytes());
    mac.update(&[0]);
    mac.update(id.as_bytes());
    mac.update(secret);
    TokenHash(mac.finalize().into_bytes().into())
}

fn new_mac(key: &HashKey) -> Hmac<Sha256> {
    match <Hmac<Sha256> as KeyInit>::new_from_slice(&key.0) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

fn word(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(bytes);
    u64::from_ne_bytes(word)
}

fn encode_token(kind: TokenKind, id: Uuid, secret: &[u8; SECRET_BYTES]) -> SecretString {
    let prefix = kind.prefix();
    let mut body = [0u8; BODY_CHARS];
    let (id_chars, rest) = body.split_at_mut(ID_CHARS);
    let (secret_chars, checksum_chars) = rest.split_at_mut(SECRET_CHARS);
    base62::encode(id.as_bytes(), id_chars);
    base62::encode(secret, secret_chars);
    let mut crc = crc32fast::Hasher::new();
    crc.update(prefix.as_bytes());
    crc.update(id_chars);
    crc.update(secret_chars);
    base62::encode(&crc.finalize().to_be_bytes(), checksum_chars);

    // Sized up front so the secret is never left behind in a reallocation.
    let mut token = String::with_capacity(prefix.len() + BODY_CHARS);
    token.push_str(prefix);
    token.extend(body.iter().map(|&c| char::from(c)));
    body.zeroize();
    SecretString(token)
}

fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn decode_hex(s: &str, out: &mut [u8; 32]) -> Result<(), TokenError> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let s = s.as_bytes();
    if s.len() != out.len() * 2 {
        return Err(TokenError::InvalidHex);
    }
    for (byte, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(hi), Some(lo)) => *byte = (hi << 4) | lo,
            _ => {
                out.zeroize();
                return Err(TokenError::InvalidHex);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
