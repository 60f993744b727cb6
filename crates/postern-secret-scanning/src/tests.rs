use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey as EcdsaKey};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use proptest::prelude::*;

use super::*;

fn key() -> EcdsaKey {
    EcdsaKey::random(&mut rand::rngs::OsRng)
}

fn keys_json(keys: &[(&str, &EcdsaKey)]) -> String {
    let entries: Vec<_> = keys
        .iter()
        .map(|(id, key)| {
            serde_json::json!({
                "key_identifier": id,
                "key": key.verifying_key().to_public_key_pem(LineEnding::LF).unwrap(),
                "is_current": true,
            })
        })
        .collect();
    serde_json::json!({ "public_keys": entries }).to_string()
}

fn sign(key: &EcdsaKey, body: &[u8]) -> String {
    let signature: Signature = key.sign(body);
    base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
}

const BODY: &[u8] = br#"[{"token":"postern_client_x","type":"postern_client_token","url":"https://github.com/o/r/blob/main/.env","source":"content"}]"#;

#[test]
fn a_body_signed_by_a_listed_key_verifies() {
    let (old, current) = (key(), key());
    let keys = SigningKeys::from_json(&keys_json(&[("old", &old), ("current", &current)])).unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(
        keys.verify(Some("current"), Some(&sign(&current, BODY)), BODY),
        Ok(())
    );
    // A key GitHub is retiring still verifies what it signed.
    assert_eq!(
        keys.verify(Some("old"), Some(&sign(&old, BODY)), BODY),
        Ok(())
    );
}

#[test]
fn anything_else_is_refused_with_its_reason() {
    let (listed, stranger) = (key(), key());
    let keys = SigningKeys::from_json(&keys_json(&[("k1", &listed)])).unwrap();
    let good = sign(&listed, BODY);
    assert_eq!(
        keys.verify(None, Some(&good), BODY),
        Err(SignatureError::MissingKeyId)
    );
    assert_eq!(
        keys.verify(Some("k1"), None, BODY),
        Err(SignatureError::MissingSignature)
    );
    assert_eq!(
        keys.verify(Some("k2"), Some(&good), BODY),
        Err(SignatureError::UnknownKey)
    );
    assert_eq!(
        keys.verify(Some("k1"), Some(&sign(&stranger, BODY)), BODY),
        Err(SignatureError::Mismatch)
    );
    let mut tampered = BODY.to_vec();
    tampered[3] ^= 1;
    assert_eq!(
        keys.verify(Some("k1"), Some(&good), &tampered),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        keys.verify(Some("k1"), Some("not base64!"), BODY),
        Err(SignatureError::Malformed)
    );
    assert_eq!(
        keys.verify(Some("k1"), Some("AAAA"), BODY),
        Err(SignatureError::Malformed)
    );
}

#[test]
fn keys_documents_that_are_not_githubs_are_refused() {
    assert!(matches!(
        SigningKeys::from_json("[]"),
        Err(KeysError::Json(_))
    ));
    assert_eq!(
        SigningKeys::from_json(r#"{"public_keys":[]}"#).unwrap_err(),
        KeysError::Empty
    );
    assert_eq!(
        SigningKeys::from_json(r#"{"public_keys":[{"key_identifier":"a","key":"nope"}]}"#)
            .unwrap_err(),
        KeysError::Key("a".into())
    );
}

#[test]
fn a_report_is_read_and_answered_without_the_secret() {
    let matches = parse_report(BODY).unwrap();
    assert_eq!(matches.len(), 1);
    assert_eq!(matches[0].url, "https://github.com/o/r/blob/main/.env");
    let verdict = Verdict::new(&matches[0], Label::TruePositive);
    let answer = serde_json::to_string(&[verdict]).unwrap();
    assert!(!answer.contains("postern_client_x"), "{answer}");
    assert!(answer.contains(r#""label":"true_positive""#), "{answer}");
    assert!(
        answer.contains(r#""token_type":"postern_client_token""#),
        "{answer}"
    );
    assert_eq!(
        token_hash("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn a_report_error_never_quotes_the_body() {
    let err = parse_report(br#"[{"token": 12345678, "type": "x", "url": "u"}]"#).unwrap_err();
    assert!(!err.to_string().contains("12345678"), "{err}");
    let err = parse_report(br#"{"token": "postern_client_secret"}"#).unwrap_err();
    assert!(!err.to_string().contains("postern_client_secret"), "{err}");
}

#[test]
fn an_oversized_report_is_refused() {
    let one = r#"{"token":"t","type":"x","url":"u","source":"content"}"#;
    let body = format!("[{}]", vec![one; MAX_MATCHES + 1].join(","));
    assert_eq!(
        parse_report(body.as_bytes()).unwrap_err(),
        ReportError::TooMany(MAX_MATCHES + 1)
    );
}

proptest! {
    #[test]
    fn any_headers_and_body_are_an_answer_never_a_panic(
        key_id in proptest::option::of(".{0,40}"),
        signature in proptest::option::of(".{0,120}"),
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let listed = key();
        let keys = SigningKeys::from_json(&keys_json(&[("k1", &listed)])).unwrap();
        prop_assert!(keys.verify(key_id.as_deref(), signature.as_deref(), &body).is_err());
        let _ = parse_report(&body);
    }
}
