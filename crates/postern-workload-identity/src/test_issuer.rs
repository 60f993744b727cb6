//! An OIDC issuer for tests: an ES256 key that signs ID tokens, and its key set and discovery
//! document. Built only with the `test-issuer` feature.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use serde_json::{json, Value};

pub struct TestIssuer {
    pub issuer: String,
    pub kid: String,
    key: SigningKey,
}

impl TestIssuer {
    pub fn new(issuer: &str, kid: &str) -> Self {
        Self {
            issuer: issuer.to_string(),
            kid: kid.to_string(),
            key: SigningKey::random(&mut rand::rngs::OsRng),
        }
    }

    /// The public key set (`{"keys": [...]}`).
    pub fn jwks(&self) -> Value {
        let point = self.key.verifying_key().to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            unreachable!("an uncompressed point has both coordinates")
        };
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }]})
    }

    /// The discovery document naming `jwks_uri`.
    pub fn discovery(&self, jwks_uri: &str) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": jwks_uri,
            "id_token_signing_alg_values_supported": ["ES256"],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
        })
    }

    /// An ID token with these claims, signed with the issuer's key.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            &json!({"alg": "ES256", "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }

    /// An ID token with any header, signed with the issuer's key.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature: Signature = self.key.sign(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }

    /// The same claims with `alg: none` and no signature.
    pub fn unsigned(claims: &Value) -> String {
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    /// Typical claims of a CI job for `audience` and `subject`, valid from `now` for 5 minutes.
    pub fn claims(&self, audience: &str, subject: &str, now: i64) -> Value {
        json!({
            "iss": self.issuer, "aud": audience, "sub": subject,
            "iat": now, "nbf": now, "exp": now + 300,
            "repository_owner": "acme", "ref": "refs/heads/main",
        })
    }
}
