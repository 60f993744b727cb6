#![no_main]

use libfuzzer_sys::fuzz_target;

// Port lists, window specs and condition/filter JSON: refused or parsed without a panic; what
// parses formats back to something that parses to the same value.
fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(ports) = postern_policy::parse_ports(text) {
        let again = postern_policy::parse_ports(&postern_policy::format_ports(&ports));
        assert_eq!(again.ok(), Some(ports));
    }
    if let Ok((zone, window)) = postern_policy::parse_window_spec(text) {
        let spec = postern_policy::format_window_spec(zone, &window);
        let again = postern_policy::parse_window_spec(&spec).ok();
        assert_eq!(again.map(|(z, w)| (z, w)), Some((zone, window)));
    }
    if let Ok(condition) = serde_json::from_str::<postern_policy::Condition>(text) {
        let json = serde_json::to_string(&condition).unwrap_or_default();
        assert_eq!(serde_json::from_str::<postern_policy::Condition>(&json).ok(), Some(condition));
    }
    let _ = serde_json::from_str::<postern_policy::Filter>(text);
});
