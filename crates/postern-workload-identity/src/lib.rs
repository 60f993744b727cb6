//! Workload ID tokens, checked against a service account's trust rule: the issuer's key set
//! (JWKS), the signature (asymmetric algorithms only: `none` and the HMAC ones, which a public
//! key set cannot verify, are refused before any key is looked at), the issuer, the audience,
//! the times, then the rule's subject and claim patterns. And the OIDC discovery document that
//! names where the keys are.
//!
//! Pure: the caller fetches documents and passes the time, so every refusal is testable.

use std::collections::HashSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use postern_domain::workload_identity::{match_claims, ClaimMismatch, MatchedClaims};
use postern_domain::WorkloadIdentity;
use serde_json::{Map, Value};

/// The largest ID token taken (GitHub's are ~1.5 KiB; Kubernetes' ~1 KiB).
pub const MAX_ID_TOKEN_BYTES: usize = 16 * 1024;
/// The largest key set or discovery document taken.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Clock skew allowed on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECONDS: i64 = 60;

/// The claims of a verified ID token.
pub type Claims = Map<String, Value>;

/// Why an ID token is refused; the text is what the workload is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the ID token is not a JWT: {0}")]
    Malformed(String),
    #[error("the ID token is larger than {MAX_ID_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("the ID token's algorithm 'none' is refused: it must be signed with the issuer's key")]
    Unsigned,
    #[error(
        "the ID token's algorithm '{0}' is refused: only asymmetric algorithms (RS*, PS*, ES*, \
         EdDSA) verify against an issuer's published keys"
    )]
    AlgorithmRefused(String),
    #[error("the issuer publishes no key with id '{kid}' (its keys: {known})")]
    UnknownKey { kid: String, known: String },
    #[error("the ID token names no key id and the issuer publishes {0} keys")]
    NoKeyId(usize),
    #[error("the issuer's key '{kid}' is for {key_alg}, not the token's {alg}")]
    KeyAlgorithm {
        kid: String,
        key_alg: String,
        alg: String,
    },
    #[error("the ID token's signature does not verify with the issuer's key '{0}'")]
    BadSignature(String),
    #[error("the ID token has no expiry (exp)")]
    NoExpiry,
    #[error("the ID token expired at {0} (unix seconds)")]
    Expired(i64),
    #[error("the ID token is not valid before {0} (unix seconds)")]
    NotYetValid(i64),
    #[error("the ID token was issued by '{found}', not '{expected}'")]
    WrongIssuer { found: String, expected: String },
    #[error("the ID token is for the audience {found}, not '{expected}'")]
    WrongAudience { found: String, expected: String },
    #[error("{0}")]
    Claims(#[from] ClaimMismatch),
}

/// What an ID token says of itself before its signature is checked: enough to find the rules
/// that could trust it. Nothing here may be believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    pub issuer: String,
    pub audiences: Vec<String>,
}

#[derive(serde::Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
}

fn parts(id_token: &str) -> Result<[&str; 3], Refusal> {
    if id_token.len() > MAX_ID_TOKEN_BYTES {
        return Err(Refusal::TooLarge);
    }
    let mut parts = id_token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature), None) => Ok([header, payload, signature]),
        _ => Err(Refusal::Malformed(
            "it must be three parts joined by '.'".into(),
        )),
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str, what: &str) -> Result<T, Refusal> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| Refusal::Malformed(format!("its {what} is not base64url")))?;
    serde_json::from_slice(&bytes)
        .map_err(|err| Refusal::Malformed(format!("its {what} is not the expected JSON ({err})")))
}

fn audiences(claims: &Claims) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(many)) => many
            .iter()
            .filter_map(|value| value.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// Reads the issuer and audiences an ID token claims, without checking anything.
pub fn peek(id_token: &str) -> Result<Unverified, Refusal> {
    let [_, payload, _] = parts(id_token.trim())?;
    let claims: Claims = decode_json(payload, "payload")?;
    let issuer = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::Malformed("it names no issuer (iss)".into()))?
        .to_string();
    Ok(Unverified {
        issuer,
        audiences: audiences(&claims),
    })
}

/// An issuer's public keys.
#[derive(Debug, Clone)]
pub struct KeySet(JwkSet);

/// Why a key set or discovery document cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    #[error("is not a JSON Web Key Set: {0}")]
    NotAKeySet(String),
    #[error("holds no key that can verify a signature")]
    NoSigningKey,
    #[error("is not an OpenID discovery document: {0}")]
    NotDiscovery(String),
    #[error("names the issuer '{found}', not '{expected}'")]
    IssuerMismatch { found: String, expected: String },
    #[error("has a jwks_uri that is not https:// (or http:// to this machine): {0}")]
    InsecureKeysUrl(String),
}

impl KeySet {
    pub fn parse(bytes: &[u8]) -> Result<Self, DocumentError> {
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(DocumentError::TooLarge);
        }
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|err| DocumentError::NotAKeySet(err.to_string()))?;
        Self::from_value(&value)
    }

    /// A key set given as JSON (a rule's inline `jwks`). Keys this build cannot use (an
    /// encryption key, an unknown type) are left out; at least one must remain.
    pub fn from_value(value: &Value) -> Result<Self, DocumentError> {
        let keys = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| DocumentError::NotAKeySet("it has no \"keys\" list".into()))?;
        let usable: Vec<_> = keys
            .iter()
            .filter_map(|key| serde_json::from_value::<jsonwebtoken::jwk::Jwk>(key.clone()).ok())
            .filter(|key| key.common.public_key_use != Some(PublicKeyUse::Encryption))
            .filter(|key| DecodingKey::from_jwk(key).is_ok())
            .collect();
        if usable.is_empty() {
            return Err(DocumentError::NoSigningKey);
        }
        Ok(Self(JwkSet { keys: usable }))
    }

    pub fn key_ids(&self) -> Vec<String> {
        self.0
            .keys
            .iter()
            .filter_map(|key| key.common.key_id.clone())
            .collect()
    }

    /// Whether a key with this id is in the set (so a refetch would not help).
    pub fn has_key(&self, kid: &str) -> bool {
        self.0.find(kid).is_some()
    }
}

/// The id of the key an ID token says signed it, if it names one.
pub fn key_id(id_token: &str) -> Option<String> {
    let [header, _, _] = parts(id_token.trim()).ok()?;
    decode_json::<RawHeader>(header, "header").ok()?.kid
}

const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

fn algorithm_name<T: serde::Serialize>(alg: &T) -> String {
    serde_json::to_value(alg)
        .ok()
        .and_then(|value| value.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Verifies an ID token's signature with `keys`, then its issuer, audience and times at
/// `now` (unix seconds); returns its claims.
pub fn verify(
    id_token: &str,
    keys: &KeySet,
    issuer: &str,
    audience: &str,
    now: i64,
) -> Result<Claims, Refusal> {
    let id_token = id_token.trim();
    let [header, _, _] = parts(id_token)?;
    let raw: RawHeader = decode_json(header, "header")?;
    if raw.alg.eq_ignore_ascii_case("none") {
        return Err(Refusal::Unsigned);
    }
    let alg = ASYMMETRIC
        .into_iter()
        .find(|alg| algorithm_name(alg) == raw.alg)
        .ok_or_else(|| Refusal::AlgorithmRefused(raw.alg.clone()))?;
    let key = match &raw.kid {
        Some(kid) => keys.0.find(kid).ok_or_else(|| Refusal::UnknownKey {
            kid: kid.clone(),
            known: keys.key_ids().join(", "),
        })?,
        None => match keys.0.keys.as_slice() {
            [only] => only,
            many => return Err(Refusal::NoKeyId(many.len())),
        },
    };
    let kid = key.common.key_id.clone().unwrap_or_default();
    if let Some(key_alg) = &key.common.key_algorithm {
        let key_alg = algorithm_name(key_alg);
        if key_alg != raw.alg {
            return Err(Refusal::KeyAlgorithm {
                kid,
                key_alg,
                alg: raw.alg,
            });
        }
    }
    let decoding = DecodingKey::from_jwk(key).map_err(|_| Refusal::BadSignature(kid.clone()))?;
    // Times, issuer and audience are checked below against the caller's clock.
    let mut validation = Validation::new(alg);
    validation.required_spec_claims = HashSet::new();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let claims: Claims = jsonwebtoken::decode::<Claims>(id_token, &decoding, &validation)
        .map_err(|err| match err.kind() {
            jsonwebtoken::errors::ErrorKind::Json(_)
            | jsonwebtoken::errors::ErrorKind::Base64(_)
            | jsonwebtoken::errors::ErrorKind::Utf8(_) => {
                Refusal::Malformed("its payload is not a JSON object".into())
            }
            _ => Refusal::BadSignature(kid.clone()),
        })?
        .claims;
    let found_issuer = claims
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if found_issuer != issuer {
        return Err(Refusal::WrongIssuer {
            found: found_issuer.to_string(),
            expected: issuer.to_string(),
        });
    }
    let found_audiences = audiences(&claims);
    if !found_audiences.iter().any(|aud| aud == audience) {
        return Err(Refusal::WrongAudience {
            found: format!("{found_audiences:?}"),
            expected: audience.to_string(),
        });
    }
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(Refusal::NoExpiry)?;
    if exp + LEEWAY_SECONDS <= now {
        return Err(Refusal::Expired(exp));
    }
    if let Some(nbf) = claims.get("nbf").and_then(Value::as_i64) {
        if nbf - LEEWAY_SECONDS > now {
            return Err(Refusal::NotYetValid(nbf));
        }
    }
    if let Some(iat) = claims.get("iat").and_then(Value::as_i64) {
        if iat - LEEWAY_SECONDS > now {
            return Err(Refusal::NotYetValid(iat));
        }
    }
    Ok(claims)
}

/// Checks a new trust rule: its fields (`postern_domain::workload_identity::validate`) and its
/// inline key set, if any, which must hold a key that verifies signatures.
pub fn validate_rule(
    new: postern_domain::workload_identity::NewWorkloadIdentity,
) -> Result<postern_domain::workload_identity::ValidWorkloadIdentity, postern_domain::ValidationError>
{
    let valid = postern_domain::workload_identity::validate(new)?;
    if let Some(jwks) = &valid.jwks {
        KeySet::from_value(jwks).map_err(|err| {
            postern_domain::ValidationError::new("jwks", format!("the key set {err}"))
        })?;
    }
    Ok(valid)
}

/// Verifies an ID token against a trust rule (its issuer, audience, subject and claims) with
/// the issuer's `keys`; returns the claims that matched, for the audit log.
pub fn check(
    id_token: &str,
    rule: &WorkloadIdentity,
    keys: &KeySet,
    now: i64,
) -> Result<MatchedClaims, Refusal> {
    let claims = verify(id_token, keys, &rule.issuer, &rule.audience, now)?;
    Ok(match_claims(rule, &claims)?)
}

/// Where an issuer's discovery document is (OpenID Connect Discovery 1.0, section 4).
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// The `jwks_uri` of an issuer's discovery document, which must name that issuer.
pub fn keys_url(document: &[u8], issuer: &str) -> Result<url::Url, DocumentError> {
    if document.len() > MAX_DOCUMENT_BYTES {
        return Err(DocumentError::TooLarge);
    }
    #[derive(serde::Deserialize)]
    struct Discovery {
        issuer: String,
        jwks_uri: String,
    }
    let discovery: Discovery = serde_json::from_slice(document)
        .map_err(|err| DocumentError::NotDiscovery(err.to_string()))?;
    if discovery.issuer != issuer {
        return Err(DocumentError::IssuerMismatch {
            found: discovery.issuer,
            expected: issuer.to_string(),
        });
    }
    postern_domain::webhooks::validate_url("jwks_uri", &discovery.jwks_uri)
        .map_err(|_| DocumentError::InsecureKeysUrl(discovery.jwks_uri))
}

#[cfg(test)]
mod tests;

#[cfg(feature = "test-issuer")]
pub mod test_issuer;
