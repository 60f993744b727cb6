use super::test_issuer::TestIssuer;
use super::*;
use postern_domain::workload_identity::{validate, NewWorkloadIdentity};
use serde_json::json;

const NOW: i64 = 1_800_000_000;
const ISSUER: &str = "https://token.actions.githubusercontent.com";

fn issuer() -> TestIssuer {
    TestIssuer::new(ISSUER, "k1")
}

fn keys(issuer: &TestIssuer) -> KeySet {
    KeySet::from_value(&issuer.jwks()).unwrap()
}

fn rule() -> WorkloadIdentity {
    let valid = validate(NewWorkloadIdentity {
        issuer: ISSUER.into(),
        audience: "postern".into(),
        subject: "repo:acme/deploy:*".into(),
        claims: [("repository_owner".to_string(), "acme".to_string())].into(),
        ..Default::default()
    })
    .unwrap();
    WorkloadIdentity {
        id: uuid_nil(),
        account_id: uuid_nil(),
        actor_id: uuid_nil(),
        name: valid.name,
        issuer: valid.issuer,
        audience: valid.audience,
        subject: valid.subject,
        claims: valid.claims,
        token_lifetime_seconds: 3600,
        jwks: None,
        created_at: chrono_min(),
        created_by: None,
        last_used_at: None,
    }
}

fn uuid_nil() -> uuid::Uuid {
    uuid::Uuid::nil()
}

fn chrono_min() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::<chrono::Utc>::MIN_UTC
}

fn job(issuer: &TestIssuer) -> Value {
    issuer.claims("postern", "repo:acme/deploy:ref:refs/heads/main", NOW)
}

#[test]
fn a_matching_token_is_accepted_with_the_claims_that_matched() {
    let issuer = issuer();
    let token = issuer.sign(&job(&issuer));
    let matched = check(&token, &rule(), &keys(&issuer), NOW).unwrap();
    assert_eq!(matched["sub"], "repo:acme/deploy:ref:refs/heads/main");
    assert_eq!(matched["repository_owner"], "acme");
    assert_eq!(
        peek(&token).unwrap(),
        Unverified {
            issuer: ISSUER.into(),
            audiences: vec!["postern".into()]
        }
    );
    assert_eq!(key_id(&token).as_deref(), Some("k1"));
}

#[test]
fn every_kind_of_bad_token_is_refused_with_its_reason() {
    let issuer = issuer();
    let keys = keys(&issuer);
    let refused = |token: String| check(&token, &rule(), &keys, NOW).unwrap_err();

    let mut claims = job(&issuer);
    claims["aud"] = json!(["other", "another"]);
    assert!(matches!(
        refused(issuer.sign(&claims)),
        Refusal::WrongAudience { .. }
    ));

    let mut claims = job(&issuer);
    claims["sub"] = json!("repo:evil/deploy:ref:refs/heads/main");
    assert!(matches!(
        refused(issuer.sign(&claims)),
        Refusal::Claims(ClaimMismatch::Subject(_))
    ));

    let mut claims = job(&issuer);
    claims["repository_owner"] = json!("evil");
    assert!(matches!(
        refused(issuer.sign(&claims)),
        Refusal::Claims(ClaimMismatch::Claim { .. })
    ));

    let mut claims = job(&issuer);
    claims["exp"] = json!(NOW - 61);
    assert_eq!(refused(issuer.sign(&claims)), Refusal::Expired(NOW - 61));
    // Within the leeway it still counts.
    claims["exp"] = json!(NOW - 30);
    assert!(check(&issuer.sign(&claims), &rule(), &keys, NOW).is_ok());

    let mut claims = job(&issuer);
    claims.as_object_mut().unwrap().remove("exp");
    assert_eq!(refused(issuer.sign(&claims)), Refusal::NoExpiry);

    let mut claims = job(&issuer);
    claims["nbf"] = json!(NOW + 600);
    assert_eq!(
        refused(issuer.sign(&claims)),
        Refusal::NotYetValid(NOW + 600)
    );

    let mut claims = job(&issuer);
    claims["iss"] = json!("https://evil.example");
    assert!(matches!(
        refused(issuer.sign(&claims)),
        Refusal::WrongIssuer { .. }
    ));

    // Signed by another key that claims the same id.
    let impostor = TestIssuer::new(ISSUER, "k1");
    assert_eq!(
        refused(impostor.sign(&job(&issuer))),
        Refusal::BadSignature("k1".into())
    );
    // A payload changed after signing.
    let token = issuer.sign(&job(&issuer));
    let mut claims = job(&issuer);
    claims["sub"] = json!("repo:acme/deploy:ref:refs/heads/evil");
    let forged_payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let pieces: Vec<&str> = token.split('.').collect();
    let forged = format!("{}.{forged_payload}.{}", pieces[0], pieces[2]);
    assert_eq!(refused(forged), Refusal::BadSignature("k1".into()));

    let header = json!({"alg": "ES256", "kid": "k2"});
    assert_eq!(
        refused(issuer.sign_with_header(&header, &job(&issuer))),
        Refusal::UnknownKey {
            kid: "k2".into(),
            known: "k1".into()
        }
    );
    assert_eq!(
        refused(TestIssuer::unsigned(&job(&issuer))),
        Refusal::Unsigned
    );
    // HS256 keyed with the public key's bytes: the classic confusion, refused by name.
    let header = json!({"alg": "HS256", "kid": "k1"});
    assert_eq!(
        refused(issuer.sign_with_header(&header, &job(&issuer))),
        Refusal::AlgorithmRefused("HS256".into())
    );
    // A key published for ES256 does not verify an RS256 header.
    let header = json!({"alg": "RS256", "kid": "k1"});
    assert!(matches!(
        refused(issuer.sign_with_header(&header, &job(&issuer))),
        Refusal::KeyAlgorithm { .. }
    ));
    assert!(matches!(refused("not a jwt".into()), Refusal::Malformed(_)));
    assert!(matches!(refused("a.b.c".into()), Refusal::Malformed(_)));
    assert_eq!(
        refused("x".repeat(MAX_ID_TOKEN_BYTES + 1)),
        Refusal::TooLarge
    );
}

#[test]
fn a_token_without_a_key_id_uses_the_only_key() {
    let issuer = issuer();
    let header = json!({"alg": "ES256"});
    let token = issuer.sign_with_header(&header, &job(&issuer));
    assert!(check(&token, &rule(), &keys(&issuer), NOW).is_ok());
    let other = TestIssuer::new(ISSUER, "k2");
    let mut both = issuer.jwks();
    let extra = other.jwks()["keys"][0].clone();
    both["keys"].as_array_mut().unwrap().push(extra);
    let two = KeySet::from_value(&both).unwrap();
    assert_eq!(
        check(&token, &rule(), &two, NOW).unwrap_err(),
        Refusal::NoKeyId(2)
    );
    // The key set rotates: the new key verifies, the old one no longer is looked at.
    let rotated = other.sign(&job(&issuer));
    assert!(check(&rotated, &rule(), &two, NOW).is_ok());
    assert!(matches!(
        check(&rotated, &rule(), &keys(&issuer), NOW),
        Err(Refusal::UnknownKey { .. })
    ));
}

#[test]
fn documents_are_checked() {
    let issuer = issuer();
    assert_eq!(
        discovery_url("https://issuer.example/"),
        "https://issuer.example/.well-known/openid-configuration"
    );
    let document = issuer.discovery("https://token.actions.githubusercontent.com/.well-known/jwks");
    let url = keys_url(document.to_string().as_bytes(), ISSUER).unwrap();
    assert_eq!(url.path(), "/.well-known/jwks");
    assert!(matches!(
        keys_url(document.to_string().as_bytes(), "https://other.example"),
        Err(DocumentError::IssuerMismatch { .. })
    ));
    let plain = issuer.discovery("http://keys.example/jwks");
    assert!(matches!(
        keys_url(plain.to_string().as_bytes(), ISSUER),
        Err(DocumentError::InsecureKeysUrl(_))
    ));
    assert!(matches!(
        KeySet::parse(br#"{"keys": []}"#),
        Err(DocumentError::NoSigningKey)
    ));
    assert!(matches!(
        KeySet::parse(b"[]"),
        Err(DocumentError::NotAKeySet(_))
    ));
    // An encryption key alone cannot verify anything.
    let mut encryption = issuer.jwks();
    encryption["keys"][0]["use"] = json!("enc");
    assert!(matches!(
        KeySet::from_value(&encryption),
        Err(DocumentError::NoSigningKey)
    ));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the text, checking it answers; it never panics.
        #[test]
        fn any_text_is_refused_without_panicking(text in ".{0,300}") {
            let issuer = TestIssuer::new(ISSUER, "k1");
            let keys = KeySet::from_value(&issuer.jwks()).unwrap();
            prop_assert!(check(&text, &rule(), &keys, NOW).is_err());
            let _ = peek(&text);
            let _ = key_id(&text);
        }

        /// Three base64url parts of arbitrary JSON-ish bytes are refused too.
        #[test]
        fn arbitrary_parts_are_refused(
            header in proptest::collection::vec(any::<u8>(), 0..80),
            payload in proptest::collection::vec(any::<u8>(), 0..120),
            signature in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let issuer = TestIssuer::new(ISSUER, "k1");
            let keys = KeySet::from_value(&issuer.jwks()).unwrap();
            let token = format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(payload),
                URL_SAFE_NO_PAD.encode(signature)
            );
            prop_assert!(check(&token, &rule(), &keys, NOW).is_err());
        }
    }
}
