//! WireGuard keys as 32-byte values. They are base64 text only on the wire, in the database and
//! in the API; parsing happens once, where the text comes in, so the data plane never decodes.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// Base64 of 32 bytes: 43 characters and one `=`.
const ENCODED_LEN: usize = 44;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a WireGuard key: a key is 32 bytes in base64 (44 characters ending in '=')")]
pub struct KeyError;

fn decode(text: &str) -> Result<[u8; 32], KeyError> {
    let text = text.trim();
    if text.len() != ENCODED_LEN {
        return Err(KeyError);
    }
    let bytes = Zeroizing::new(STANDARD.decode(text).map_err(|_| KeyError)?);
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError)
}

/// A WireGuard public key (X25519).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WireGuardKey([u8; 32]);

impl WireGuardKey {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for WireGuardKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        decode(text).map(Self)
    }
}

impl fmt::Display for WireGuardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for WireGuardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WireGuardKey({self})")
    }
}

impl Serialize for WireGuardKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WireGuardKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A WireGuard preshared key, as the portal hands it out to one client–gateway pair. Wiped from
/// memory when dropped; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct PresharedKey(Zeroizing<[u8; 32]>);

impl PresharedKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for PresharedKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        decode(text).map(Self::from_bytes)
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(..)")
    }
}

impl Serialize for PresharedKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&Zeroizing::new(STANDARD.encode(*self.0)))
    }
}

impl<'de> Deserialize<'de> for PresharedKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Zeroizing::new(String::deserialize(deserializer)?);
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn malformed_keys_are_refused() {
        for text in ["", "c2hvcnQ=", "!!", &"A".repeat(44), &"A".repeat(45)] {
            assert_eq!(text.parse::<WireGuardKey>(), Err(KeyError), "{text:?}");
        }
        let json = serde_json::from_str::<WireGuardKey>("\"c2hvcnQ=\"");
        assert!(json.is_err());
    }

    #[test]
    fn preshared_keys_never_show_in_debug_output() {
        let key = PresharedKey::from_bytes([7; 32]);
        let encoded = serde_json::to_string(&key).unwrap();
        assert!(!format!("{key:?}").contains(encoded.trim_matches('"')));
        assert_eq!(serde_json::from_str::<PresharedKey>(&encoded).unwrap(), key);
    }

    proptest! {
        #[test]
        fn keys_round_trip_through_text_and_json(bytes in any::<[u8; 32]>()) {
            let key = WireGuardKey::from_bytes(bytes);
            let text = key.to_string();
            prop_assert_eq!(text.len(), ENCODED_LEN);
            prop_assert_eq!(text.parse::<WireGuardKey>(), Ok(key));
            let json = serde_json::to_string(&key).unwrap();
            prop_assert_eq!(serde_json::from_str::<WireGuardKey>(&json).unwrap(), key);
        }

        #[test]
        fn no_text_panics_the_parser(text in ".{0,64}") {
            let _ = text.parse::<WireGuardKey>();
            let _ = text.parse::<PresharedKey>();
        }
    }
}
