#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_protocol::{
    decode, encode, ClientToPortal, GatewayToPortal, PortalToClient, PortalToGateway,
};

// Every message type decodes arbitrary text without a panic, and whatever decodes re-encodes to
// text that decodes to the same message.
fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(message) = decode::<PortalToClient>(text) {
        assert_eq!(decode::<PortalToClient>(&encode(&message)).ok(), Some(message));
    }
    if let Ok(message) = decode::<ClientToPortal>(text) {
        assert_eq!(decode::<ClientToPortal>(&encode(&message)).ok(), Some(message));
    }
    if let Ok(message) = decode::<PortalToGateway>(text) {
        assert_eq!(decode::<PortalToGateway>(&encode(&message)).ok(), Some(message));
    }
    if let Ok(message) = decode::<GatewayToPortal>(text) {
        assert_eq!(decode::<GatewayToPortal>(&encode(&message)).ok(), Some(message));
    }
});
