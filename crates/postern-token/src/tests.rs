use super::*;
use proptest::prelude::*;

const KEY_BYTES: [u8; 32] = {
    let mut k = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        k[i] = i as u8;
        i += 1;
    }
    k
};

fn fixed_id() -> Uuid {
    Uuid::parse_str("0191f3a2-7c4e-7b8a-9d2e-3f4a5b6c7d8e").expect("valid uuid")
}

fn fixed_secret() -> [u8; 32] {
    std::array::from_fn(|i| ((i * 7 + 3) % 256) as u8)
}

/// Vectors computed independently (Python: int.to_bytes base conversion,
/// zlib.crc32, hmac/hashlib) from `KEY_BYTES`, `fixed_id()` and `fixed_secret()`.
const GOLDEN: [(TokenKind, &str, &str); 3] = [
    (
        TokenKind::Client,
        "postern_client_02xgvjhjDwkn336yZDbF4I0igR56x10M1njKSmuE0QDp48jU696MyIa0rYV2ctRU41C871j",
        "7538dcb81a5de36fbf198592d79dbaa6774193cb10974e79232b5fd5f0a4c475",
    ),
    (
        TokenKind::Gateway,
        "postern_gateway_02xgvjhjDwkn336yZDbF4I0igR56x10M1njKSmuE0QDp48jU696MyIa0rYV2ctRU403LpYe",
        "862bb527f08ab66499e4f32ca208332b6169e7bfed2ef95b9ac9dc79fd6f45f5",
    ),
    (
        TokenKind::Api,
        "postern_api_02xgvjhjDwkn336yZDbF4I0igR56x10M1njKSmuE0QDp48jU696MyIa0rYV2ctRU43t3Qkv",
        "df053ad3f8285ebc08e41a39e011b47b96e4d0ad24a88f05a2b5ddc2814ee385",
    ),
];

fn key() -> HashKey {
    HashKey::from_bytes(KEY_BYTES)
}

fn kind_strategy() -> impl Strategy<Value = TokenKind> {
    prop::sample::select(TokenKind::ALL.to_vec())
}

fn token_strategy() -> impl Strategy<Value = (TokenKind, String)> {
    (kind_strategy(), any::<u128>(), any::<[u8; 32]>()).prop_map(|(kind, id, secret)| {
        let token = encode_token(kind, Uuid::from_u128(id), &secret);
        (kind, token.expose().to_owned())
    })
}

fn errors_of(token: &str) -> Vec<String> {
    match parse(token) {
        Ok(_) => Vec::new(),
        Err(e) => vec![e.to_string(), format!("{e:?}"), format!("{e:#?}")],
    }
}

#[test]
fn golden_vectors() {
    let key = key();
    for (kind, token, hash) in GOLDEN {
        assert_eq!(
            encode_token(kind, fixed_id(), &fixed_secret()).expose(),
            token
        );
        assert_eq!(
            hash_secret(&key, kind, fixed_id(), &fixed_secret()).to_hex(),
            hash
        );
        let parsed = parse(token).expect("golden token parses");
        assert_eq!(parsed.kind, kind);
        assert_eq!(parsed.id, fixed_id());
        assert!(parsed.verify(&key, &TokenHash::from_hex(hash).expect("hex")));
    }
}

#[test]
fn kinds_prefixes_and_names() {
    assert_eq!(TokenKind::Client.prefix(), "postern_client_");
    assert_eq!(TokenKind::Gateway.prefix(), "postern_gateway_");
    assert_eq!(TokenKind::Api.prefix(), "postern_api_");
    assert_eq!(TokenKind::Client.as_str(), "client");
    assert_eq!(TokenKind::Gateway.as_str(), "gateway");
    assert_eq!(TokenKind::Api.as_str(), "api");
    for kind in TokenKind::ALL {
        assert_eq!(TokenKind::parse_str(kind.as_str()), Some(kind));
        assert_eq!(kind.to_string(), kind.as_str());
        assert_eq!(kind.prefix(), format!("postern_{}_", kind.as_str()));
        for other in TokenKind::ALL {
            if other != kind {
                assert!(!kind.prefix().starts_with(other.prefix()));
            }
        }
    }
    for bad in [
        "",
        "Client",
        "CLIENT",
        "client ",
        "service",
        "postern_client_",
    ] {
        assert_eq!(TokenKind::parse_str(bad), None);
    }
}

#[test]
fn generate_parse_verify_round_trip() {
    let key = HashKey::generate();
    for kind in TokenKind::ALL {
        let id = Uuid::new_v4();
        let new = generate(kind, id, &key);
        assert_eq!(new.kind, kind);
        assert_eq!(new.id, id);
        let token = new.secret.expose();
        assert!(token.starts_with(kind.prefix()));
        assert_eq!(token.len(), kind.prefix().len() + BODY_CHARS);

        let parsed = parse(token).expect("generated token parses");
        assert_eq!(parsed.kind, kind);
        assert_eq!(parsed.id, id);
        assert!(parsed.verify(&key, &new.hash));
        assert!(parsed.hash(&key).verify(&new.hash));
        assert!(!parsed.verify(&HashKey::generate(), &new.hash), "other key");
    }
}

#[test]
fn generated_secrets_are_fresh() {
    let key = key();
    let id = fixed_id();
    let a = generate(TokenKind::Api, id, &key);
    let b = generate(TokenKind::Api, id, &key);
    assert_ne!(a.secret.expose(), b.secret.expose());
    assert!(!a.hash.verify(&b.hash));
    let pa = parse(a.secret.expose()).expect("parses");
    assert_ne!(pa.secret, [0; 32]);
    assert!(!pa.verify(&key, &b.hash), "same id, other secret");
}

#[test]
fn other_kind_with_same_id_and_secret_never_verifies() {
    let key = key();
    let id = fixed_id();
    let secret = fixed_secret();
    for kind in TokenKind::ALL {
        let stored = hash_secret(&key, kind, id, &secret);
        for other in TokenKind::ALL {
            let token = encode_token(other, id, &secret);
            let parsed = parse(token.expose()).expect("well-formed");
            assert_eq!(parsed.kind, other);
            assert_eq!(parsed.verify(&key, &stored), kind == other);
        }
    }
}

#[test]
fn swapped_prefix_fails_checksum() {
    let token = encode_token(TokenKind::Client, fixed_id(), &fixed_secret());
    let body = &token.expose()[TokenKind::Client.prefix().len()..];
    for other in [TokenKind::Gateway, TokenKind::Api] {
        let forged = format!("{}{body}", other.prefix());
        assert_eq!(parse(&forged).err(), Some(TokenError::ChecksumMismatch));
    }
}

#[test]
fn unknown_prefixes() {
    let body = &GOLDEN[0].1["postern_client_".len()..];
    for prefix in [
        "",
        "postern_",
        "postern_clients_",
        "Postern_client_",
        "postern-client-",
        "postern_service_",
        " postern_client_",
        "pg_client_",
    ] {
        let token = format!("{prefix}{body}");
        assert_eq!(
            parse(&token).err(),
            Some(TokenError::UnknownPrefix),
            "{prefix:?}"
        );
    }
    assert_eq!(parse("").err(), Some(TokenError::UnknownPrefix));
}

#[test]
fn malformed_tokens() {
    let token = GOLDEN[0].1;
    for bad in [
        "postern_client_".to_owned(),
        format!("{token}\n"),
        format!("{token} "),
        token.replacen('0', "-", 1),
        token.replacen('0', "é", 1),
    ] {
        assert_eq!(parse(&bad).err(), Some(TokenError::Malformed), "{bad:?}");
    }
}

#[test]
fn out_of_range_id_or_secret_with_valid_checksum_is_malformed() {
    let prefix = TokenKind::Gateway.prefix();
    let valid_secret =
        &GOLDEN[1].1[prefix.len() + ID_CHARS..prefix.len() + ID_CHARS + SECRET_CHARS];
    let valid_id = &GOLDEN[1].1[prefix.len()..prefix.len() + ID_CHARS];
    for (id, secret) in [
        ("z".repeat(ID_CHARS), valid_secret.to_owned()),
        (valid_id.to_owned(), "z".repeat(SECRET_CHARS)),
    ] {
        let checked = format!("{prefix}{id}{secret}");
        let mut checksum = [0u8; CHECKSUM_CHARS];
        base62::encode(
            &crc32fast::hash(checked.as_bytes()).to_be_bytes(),
            &mut checksum,
        );
        let token = format!(
            "{checked}{}",
            std::str::from_utf8(&checksum).expect("ASCII")
        );
        assert_eq!(parse(&token).err(), Some(TokenError::Malformed));
    }
}

#[test]
fn out_of_range_checksum_is_a_mismatch() {
    let token = GOLDEN[2].1;
    let forged = format!("{}zzzzzz", &token[..token.len() - CHECKSUM_CHARS]);
    assert_eq!(parse(&forged).err(), Some(TokenError::ChecksumMismatch));
}

#[test]
fn scanner_regexes_match_generated_tokens_and_docs() {
    let docs = include_str!("../TOKENS.md");
    let crate_docs = include_str!("lib.rs");
    let key = key();
    for kind in TokenKind::ALL {
        let pattern = kind.scanner_regex();
        assert_eq!(
            pattern,
            format!("{}[0-9A-Za-z]{{{BODY_CHARS}}}", kind.prefix())
        );
        assert!(docs.contains(pattern), "TOKENS.md lacks {pattern}");
        assert!(
            crate_docs.contains(&format!("//! {}:", kind.as_str())),
            "crate docs"
        );
        assert!(crate_docs.contains(pattern), "crate docs lack {pattern}");

        let anchored = regex::Regex::new(&format!("^{pattern}$")).expect("valid regex");
        let unanchored = regex::Regex::new(pattern).expect("valid regex");
        for _ in 0..50 {
            let new = generate(kind, Uuid::new_v4(), &key);
            let token = new.secret.expose();
            assert!(anchored.is_match(token));
            // Hand check independent of the regex engine.
            let body = token.strip_prefix(kind.prefix()).expect("prefix");
            assert_eq!(body.len(), 71);
            assert!(body.bytes().all(|c| c.is_ascii_alphanumeric()));

            let text = format!("export TOKEN=\"{token}\" # leaked");
            let found = unanchored.find(&text).expect("found in text");
            assert_eq!(found.as_str(), token);
            for other in TokenKind::ALL.into_iter().filter(|&o| o != kind) {
                let other_re = regex::Regex::new(other.scanner_regex()).expect("valid regex");
                assert!(!other_re.is_match(token));
            }
        }
    }
    let combined = "postern_(?:client|gateway|api)_[0-9A-Za-z]{71}";
    assert!(docs.contains(combined));
    let combined = regex::Regex::new(&format!("^{combined}$")).expect("valid regex");
    for (_, token, _) in GOLDEN {
        assert!(combined.is_match(token));
    }
}

#[test]
fn hash_matches_reference_hmac() {
    let key = key();
    for kind in TokenKind::ALL {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&KEY_BYTES).expect("any key length");
        let mut input = kind.as_str().as_bytes().to_vec();
        input.push(0);
        input.extend_from_slice(fixed_id().as_bytes());
        input.extend_from_slice(&fixed_secret());
        mac.update(&input);
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        let got = hash_secret(&key, kind, fixed_id(), &fixed_secret());
        assert_eq!(got.as_bytes(), &expected);
    }
}

#[test]
fn redacted_debug_and_display() {
    let key = key();
    let key_hex = key.to_hex();
    assert_eq!(format!("{key:?}"), "HashKey([redacted])");
    assert!(!format!("{key:#?}").contains(&key_hex[..8]));

    let new = generate(TokenKind::Client, fixed_id(), &key);
    let token = new.secret.expose().to_owned();
    let secret_part = &token[TokenKind::Client.prefix().len() + ID_CHARS..];
    assert_eq!(format!("{:?}", new.secret), "[redacted]");
    assert_eq!(format!("{}", new.secret), "[redacted]");
    assert_eq!(
        SecretString::new("hunter2".into()).to_string(),
        "[redacted]"
    );
    for rendered in [format!("{new:?}"), format!("{new:#?}")] {
        assert!(!rendered.contains(secret_part), "{rendered}");
        assert!(rendered.contains("[redacted]"));
    }

    let parsed = parse(&token).expect("parses");
    let rendered = format!("{parsed:?}");
    assert!(rendered.contains("[redacted]"));
    assert!(!rendered.contains(secret_part));
    for byte in parsed.secret.iter().take(4) {
        assert!(!rendered.contains(&format!("{byte}, ")), "{rendered}");
    }
}

#[test]
fn hex_round_trips_and_rejections() {
    let key = HashKey::generate();
    let hex = key.to_hex();
    assert_eq!(hex.len(), 64);
    assert_eq!(HashKey::from_hex(&hex).expect("hex").to_hex(), hex);
    assert_eq!(
        HashKey::from_hex(&hex.to_uppercase())
            .expect("hex")
            .to_hex(),
        hex
    );
    assert_eq!(key.clone().to_hex(), hex);

    let hash = TokenHash::from_bytes(fixed_secret());
    let hex = hash.to_hex();
    assert_eq!(hex, hex.to_lowercase());
    assert!(TokenHash::from_hex(&hex).expect("hex").verify(&hash));
    assert_eq!(format!("{hash:?}"), format!("TokenHash({hex})"));

    for bad in [
        String::new(),
        "0".repeat(63),
        "0".repeat(65),
        format!("{}g", "0".repeat(63)),
        format!("0x{}", "0".repeat(62)),
        format!("{}é", "0".repeat(62)),
    ] {
        assert_eq!(HashKey::from_hex(&bad).err(), Some(TokenError::InvalidHex));
        assert_eq!(
            TokenHash::from_hex(&bad).err(),
            Some(TokenError::InvalidHex)
        );
    }
}

#[test]
fn error_messages() {
    assert_eq!(
        TokenError::UnknownPrefix.to_string(),
        "token does not start with a Postern prefix (postern_client_, postern_gateway_, postern_api_)"
    );
    assert_eq!(
        TokenError::Malformed.to_string(),
        "token has the wrong length or characters"
    );
    assert_eq!(
        TokenError::ChecksumMismatch.to_string(),
        "token checksum does not match: it was mistyped or truncated"
    );
}

proptest! {
    #[test]
    fn any_single_character_change_is_rejected(
        (kind, token) in token_strategy(),
        position in any::<prop::sample::Index>(),
        replacement in any::<char>(),
    ) {
        let position = position.index(token.len());
        let original = char::from(token.as_bytes()[position]);
        prop_assume!(replacement != original);
        let mut mutated = token.clone();
        mutated.replace_range(position..=position, replacement.encode_utf8(&mut [0; 4]));
        let err = parse(&mutated).err();
        prop_assert!(err.is_some(), "accepted {mutated}");
        if position >= kind.prefix().len() && replacement.is_ascii_alphanumeric() {
            prop_assert_eq!(err, Some(TokenError::ChecksumMismatch));
        }
    }

    #[test]
    fn any_base62_substitution_in_body_is_a_checksum_mismatch(
        (kind, token) in token_strategy(),
        position in 0..BODY_CHARS,
        digit in 0..62usize,
    ) {
        let position = kind.prefix().len() + position;
        let replacement = char::from(base62::ALPHABET[digit]);
        prop_assume!(token.as_bytes()[position] != base62::ALPHABET[digit]);
        let mut mutated = token.clone();
        mutated.replace_range(position..=position, replacement.encode_utf8(&mut [0; 4]));
        prop_assert_eq!(parse(&mutated).err(), Some(TokenError::ChecksumMismatch));
    }

    #[test]
    fn truncation_is_rejected((_, token) in token_strategy(), cut in any::<prop::sample::Index>()) {
        let keep = cut.index(token.len());
        prop_assert!(parse(&token[..keep]).is_err());
        prop_assert!(parse(&token[token.len() - keep..]).is_err());
    }

    #[test]
    fn extra_character_is_rejected(
        (_, token) in token_strategy(),
        position in any::<prop::sample::Index>(),
        extra in any::<char>(),
    ) {
        let position = position.index(token.len() + 1);
        let mut longer = token.clone();
        longer.insert(position, extra);
        prop_assert!(parse(&longer).is_err());
    }

    #[test]
    fn errors_never_echo_the_token(
        (kind, token) in token_strategy(),
        position in any::<prop::sample::Index>(),
        replacement in any::<char>(),
        cut in any::<prop::sample::Index>(),
        other_prefix in "[a-z_]{0,20}",
    ) {
        let body = &token[kind.prefix().len()..];
        let position = position.index(token.len());
        let mut changed = token.clone();
        changed.replace_range(position..=position, replacement.encode_utf8(&mut [0; 4]));
        let candidates = [
            changed,
            token[..cut.index(token.len())].to_owned(),
            format!("{token}x"),
            format!("{other_prefix}{body}"),
        ];
        for candidate in &candidates {
            for rendered in errors_of(candidate) {
                for window in body.as_bytes().windows(6) {
                    let window = std::str::from_utf8(window).expect("ASCII");
                    prop_assert!(!rendered.contains(window), "{rendered:?} echoes {window}");
                }
            }
        }
    }

    #[test]
    fn verify_rejects_a_single_bit_flip(bytes in any::<[u8; 32]>(), bit in 0..256usize) {
        let stored = TokenHash::from_bytes(bytes);
        let mut flipped = bytes;
        flipped[bit / 8] ^= 1 << (bit % 8);
        let flipped = TokenHash::from_bytes(flipped);
        prop_assert!(stored.verify(&TokenHash::from_bytes(bytes)));
        prop_assert!(!stored.verify(&flipped));
        prop_assert!(!flipped.verify(&stored));
        prop_assert!(!bool::from(stored.ct_eq(&flipped)));
    }

    #[test]
    fn parse_recovers_id_and_secret(kind in kind_strategy(), id in any::<u128>(), secret in any::<[u8; 32]>()) {
        let token = encode_token(kind, Uuid::from_u128(id), &secret);
        let parsed = parse(token.expose()).expect("well-formed");
        prop_assert_eq!(parsed.kind, kind);
        prop_assert_eq!(parsed.id, Uuid::from_u128(id));
        prop_assert_eq!(parsed.secret, secret);
    }

    #[test]
    fn arbitrary_input_never_panics(input in ".{0,120}") {
        let _ = parse(&input);
        let _ = HashKey::from_hex(&input);
        let _ = TokenHash::from_hex(&input);
    }
}
