//! Nested request objects must be JSON objects. serde's derived `Deserialize` for a struct
//! also takes an array of its fields in order, which no client means and the API document
//! does not allow.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// `T`, read only from a JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }

        deserializer
            .deserialize_map(ObjectVisitor(PhantomData))
            .map(Object)
    }
}

/// For `#[serde(deserialize_with = "object")]`.
pub fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    Object::deserialize(deserializer).map(|Object(value)| value)
}

/// For `#[serde(default, deserialize_with = "optional_object")]` on an `Option`.
pub fn optional_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    Option::<Object<T>>::deserialize(deserializer).map(|value| value.map(|Object(value)| value))
}

/// For `#[serde(deserialize_with = "whole_number")]`: JSON Schema's `integer` includes `7.0`.
pub fn whole_number<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
    deserializer: D,
) -> Result<T, D::Error> {
    struct WholeNumber;

    impl Visitor<'_> for WholeNumber {
        type Value = u64;

        fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
            formatter.write_str("a whole number")
        }

        fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<u64, E> {
            Ok(value)
        }

        fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<u64, E> {
            u64::try_from(value).map_err(|_| E::custom(format!("{value} is below 0")))
        }

        fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<u64, E> {
            let whole = value.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&value);
            if !whole {
                return Err(E::custom(format!("{value} is not a whole number")));
            }
            Ok(value as u64)
        }
    }

    let value = deserializer.deserialize_any(WholeNumber)?;
    T::try_from(value).map_err(|_| serde::de::Error::custom(format!("{value} is too large")))
}

/// A whole number that may be written with a zero fraction (`7.0`), for fields that are
/// optional (`Option<Whole<u32>>`) or nullable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Whole<T>(pub T);

impl<'de, T: TryFrom<u64>> Deserialize<'de> for Whole<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        whole_number(deserializer).map(Whole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Inner {
        #[serde(deserialize_with = "whole_number")]
        days: u32,
    }

    #[derive(Debug, Deserialize)]
    struct Outer {
        #[serde(default, deserialize_with = "optional_object")]
        inner: Option<Inner>,
    }

    fn parse(text: &str) -> Result<Outer, serde_json::Error> {
        serde_json::from_str(text)
    }

    #[test]
    fn nested_structs_come_only_from_objects() {
        assert_eq!(
            parse(r#"{"inner": {"days": 3}}"#).unwrap().inner,
            Some(Inner { days: 3 })
        );
        assert_eq!(parse(r#"{"inner": null}"#).unwrap().inner, None);
        assert_eq!(parse("{}").unwrap().inner, None);
        let error = parse(r#"{"inner": [3]}"#).unwrap_err().to_string();
        assert!(error.contains("a JSON object"), "{error}");
    }

    #[test]
    fn whole_numbers_may_be_written_with_a_zero_fraction() {
        assert_eq!(
            parse(r#"{"inner": {"days": 7.0}}"#).unwrap().inner,
            Some(Inner { days: 7 })
        );
        for bad in ["7.5", "-1", "1e12", "\"7\""] {
            let text = format!(r#"{{"inner": {{"days": {bad}}}}}"#);
            assert!(parse(&text).is_err(), "{bad} was accepted");
        }
    }
}
