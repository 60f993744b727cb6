//! JSON text frames with a size limit: an oversized or malformed message is an error for that
//! one session, never a panic.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest message either side accepts.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("message of {0} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
}

pub fn decode<T: DeserializeOwned>(text: &str) -> Result<T, CodecError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(CodecError::TooLarge(text.len()));
    }
    serde_json::from_str(text).map_err(|err| CodecError::Malformed(err.to_string()))
}

pub fn encode<T: Serialize>(message: &T) -> String {
    // Serializing these plain data types cannot fail (no maps with non-string keys, no
    // fallible Serialize impls); an empty object would be refused by the peer, failing closed.
    serde_json::to_string(message).unwrap_or_else(|_| "{}".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_tags() {
        let message = ClientToPortal::RequestAccess {
            resource_id: uuid::Uuid::nil(),
            dns: None,
        };
        let text = encode(&message);
        assert!(text.contains("\"type\":\"request_access\""));
        assert_eq!(decode::<ClientToPortal>(&text).unwrap(), message);
    }

    #[test]
    fn rejects_oversized_and_malformed() {
        let big = format!("\"{}\"", "x".repeat(MAX_MESSAGE_BYTES));
        assert!(matches!(
            decode::<ClientToPortal>(&big),
            Err(CodecError::TooLarge(_))
        ));
        assert!(matches!(
            decode::<ClientToPortal>("{\"type\":\"launch_missiles\"}"),
            Err(CodecError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,512}") {
            let _ = decode::<PortalToClient>(&text);
            let _ = decode::<ClientToPortal>(&text);
            let _ = decode::<PortalToGateway>(&text);
            let _ = decode::<GatewayToPortal>(&text);
        }
    }
}
