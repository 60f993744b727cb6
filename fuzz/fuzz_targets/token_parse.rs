#![no_main]

use libfuzzer_sys::fuzz_target;

// Any text is refused or parsed without a panic, and a parsed token round-trips its kind and
// prefix; its error never echoes the input.
fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match postern_token::parse(text) {
        Ok(parsed) => assert!(text.starts_with(parsed.kind.prefix())),
        Err(err) => {
            let shown = format!("{err} {err:?}");
            if text.len() >= 12 {
                assert!(!shown.contains(text));
            }
        }
    }
});
