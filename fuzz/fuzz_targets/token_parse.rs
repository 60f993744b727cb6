#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_token::TokenKind;

// Any text is refused or parsed without a panic, and a parsed token round-trips its kind and
// prefix. An error never echoes what follows a token prefix (where a secret would be): checked
// for token-like bodies, base62 runs at least as long as a token id, which no message contains.
fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match postern_token::parse(text) {
        Ok(parsed) => assert!(text.starts_with(parsed.kind.prefix())),
        Err(err) => {
            let shown = format!("{err} {err:?}");
            let body = TokenKind::ALL
                .iter()
                .find_map(|kind| text.strip_prefix(kind.prefix()));
            let token_like = |b: &&str| b.len() >= 22 && b.chars().all(|c| c.is_ascii_alphanumeric());
            if let Some(body) = body.filter(token_like) {
                assert!(!shown.contains(body), "the error echoes the token: {shown}");
            }
        }
    }
});
