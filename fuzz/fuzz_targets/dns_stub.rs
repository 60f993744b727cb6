#![no_main]

use libfuzzer_sys::fuzz_target;

// DNS messages and resource patterns: any bytes are answered, forwarded or dropped without a
// panic; an answer parses back as a DNS message with the query's id.
fuzz_target!(|data: &[u8]| {
    let mut resolver = postern_dns::StubResolver::new(16);
    let (pattern, message) = data.split_at(data.len().min(40));
    let pattern = String::from_utf8_lossy(pattern);
    if let Ok(valid) = postern_domain::validate::dns_name("address", &pattern) {
        assert!(postern_domain::dns::NamePattern::parse(&valid).is_some(), "{valid}");
    }
    resolver.set_resources([(uuid::Uuid::nil(), pattern.as_ref()), (uuid::Uuid::max(), "**.test")]);
    if let postern_dns::Verdict::Answer(bytes) = resolver.handle_query(message) {
        let answer = hickory_proto::op::Message::from_vec(&bytes).expect("answers parse");
        assert_eq!(answer.id().to_be_bytes(), [message[0], message[1]]);
    }
});
