#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = postern_dataplane::packet::parse(data);
    let _ = postern_dataplane::packet::addresses(data);
});
