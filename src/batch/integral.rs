//! Reading integer fields the way JSON Schema counts integers: a number with a zero fractional
//! part (`2.0`, `1e3`) is an integer, and the published schema's `"type": "integer"` takes it.
//! serde's integer types refuse such numbers, so the batch model reads its optional integers
//! through [`opt`], which takes them when they are in the field's range.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, Visitor};

/// An optional integer of type `T` (`null` or absent is `None`), taking integral floats.
pub fn opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    d.deserialize_option(OptVisitor(PhantomData))
}

/// A required integer of type `T`, taking integral floats.
pub fn int<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    d.deserialize_any(IntVisitor(PhantomData))
}

struct OptVisitor<T>(PhantomData<T>);

impl<'de, T: TryFrom<u64>> Visitor<'de> for OptVisitor<T> {
    type Value = Option<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a non-negative integer or null")
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        int(d).map(Some)
    }
}

struct IntVisitor<T>(PhantomData<T>);

impl<T: TryFrom<u64>> IntVisitor<T> {
    fn fit<E: de::Error>(n: u64) -> Result<T, E> {
        T::try_from(n)
            .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(n), &"an integer in range"))
    }
}

impl<'de, T: TryFrom<u64>> Visitor<'de> for IntVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a non-negative integer")
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
        Self::fit(n)
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
        u64::try_from(n)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(n), &self))
            .and_then(Self::fit)
    }
    fn visit_f64<E: de::Error>(self, x: f64) -> Result<T, E> {
        // Exactly representable integers only: past 2^53 a float no longer names one integer.
        if x.fract() == 0.0 && (0.0..=crate::batch::limits::MAX_JSON_INTEGER as f64).contains(&x) {
            Self::fit(x as u64)
        } else {
            Err(E::invalid_value(de::Unexpected::Float(x), &self))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    struct S {
        #[serde(default, deserialize_with = "super::opt")]
        n: Option<u32>,
    }

    fn n(text: &str) -> Result<Option<u32>, serde_json::Error> {
        serde_json::from_str::<S>(text).map(|s| s.n)
    }

    #[test]
    fn integral_numbers_in_range_are_taken() {
        assert_eq!(n(r#"{"n": 2}"#).unwrap(), Some(2));
        assert_eq!(n(r#"{"n": 2.0}"#).unwrap(), Some(2));
        assert_eq!(n(r#"{"n": 1e3}"#).unwrap(), Some(1000));
        assert_eq!(n(r#"{"n": -0.0}"#).unwrap(), Some(0));
        assert_eq!(n(r#"{"n": null}"#).unwrap(), None);
        assert_eq!(n(r#"{}"#).unwrap(), None);
        assert_eq!(n(r#"{"n": 4294967295.0}"#).unwrap(), Some(u32::MAX));
    }

    #[test]
    fn others_are_refused() {
        for bad in [
            "2.5",
            "-1",
            "-1.0",
            "4294967296",
            "4294967296.0",
            "\"2\"",
            "1e300",
            "true",
        ] {
            assert!(n(&format!(r#"{{"n": {bad}}}"#)).is_err(), "{bad}");
        }
    }
}
