//! Bit-exact serde forms, for fields whose default form loses information in the cache.
//!
//! What the envelope (MessagePack, structs as maps) does to the usual exact types, checked by
//! property tests here (codec only) and in `tests/decimal.rs` (through Redis, node to node):
//! `Decimal`s at every scale 0..=28 and at the extreme mantissas, compared by
//! `Decimal::serialize()` (mantissa, sign and scale bits), not just `==`.
//!
//! | type | default serde form | round trip |
//! |---|---|---|
//! | `rust_decimal::Decimal` | its string, e.g. `"-1.500"` | exact (mantissa, scale, trailing zeros: `1.500` stays `1.500`) for every value **except negative zero**: `-0.00` comes back as `0.00` (same scale, equal by `==`, sign bit lost: `Decimal`'s parser drops it) |
//! | `Decimal` with [`exact::decimal`](crate::exact::decimal) | its 16-byte binary form (`Decimal::serialize`) | exact for every value, negative zero included; smaller and cheaper to decode; still reads values stored in the string form |
//! | `std::time::SystemTime` | `{secs_since_epoch, nanos_since_epoch}` | exact to the nanosecond from the Unix epoch on; a time before the epoch cannot be encoded (`set` returns `Error::Encode`, nothing is cached) |
//! | `i64` Unix nanoseconds | a MessagePack integer | exact |
//!
//! ```
//! use rust_decimal::Decimal;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Quote {
//!     #[serde(with = "tiered_cache::exact::decimal")]
//!     bid: Decimal,
//! }
//! ```

/// `#[serde(with = "tiered_cache::exact::decimal")]`: a `Decimal` as its 16-byte binary form
/// (`Decimal::serialize`), bit-exact for every value including negative zero.
///
/// Reading also accepts the default string form, so a field switched to this form keeps
/// reading values cached before the switch (in a rolling deploy, switch readers first: the
/// default form cannot read the binary one). Bytes that are not a valid `Decimal` (a scale
/// over 28, reserved bits set) are an error, so the cache reads them as a miss.
pub mod decimal {
    use rust_decimal::Decimal;
    use serde::de::{self, Deserializer, SeqAccess, Visitor};
    use serde::Serializer;
    use std::fmt;

    /// Writes the 16-byte binary form.
    pub fn serialize<S: Serializer>(value: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&value.serialize())
    }

    /// Reads the binary form, or the default string form.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
        deserializer.deserialize_any(Exact)
    }

    struct Exact;

    fn from_bytes<E: de::Error>(bytes: &[u8]) -> Result<Decimal, E> {
        let bytes: [u8; 16] = bytes
            .try_into()
            .map_err(|_| E::invalid_length(bytes.len(), &Exact))?;
        // Flags: bits 0-15 unused, 16-23 the scale (0..=28), 24-30 unused, 31 the sign.
        if bytes[0] != 0 || bytes[1] != 0 || bytes[2] > 28 || bytes[3] & 0x7f != 0 {
            return Err(E::invalid_value(de::Unexpected::Bytes(&bytes), &Exact));
        }
        Ok(Decimal::deserialize(bytes))
    }

    impl<'de> Visitor<'de> for Exact {
        type Value = Decimal;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a Decimal as 16 bytes (or as a string)")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Decimal, E> {
            from_bytes(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Decimal, A::Error> {
            let mut bytes = Vec::with_capacity(16);
            while let Some(b) = seq.next_element::<u8>()? {
                if bytes.len() == 16 {
                    return Err(de::Error::invalid_length(17, &self));
                }
                bytes.push(b);
            }
            from_bytes(&bytes)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Decimal, E> {
            v.parse()
                .or_else(|_| Decimal::from_scientific(v))
                .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Property tests of the codec alone (no Redis): many more cases than `tests/decimal.rs`.

    use crate::codec::{self, Stored};
    use proptest::prelude::*;
    use rust_decimal::Decimal;
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Serialize};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// Every `Decimal` shape that matters: random 96-bit mantissas at every scale 0..=28, the
    /// largest and smallest mantissas, zero and negative zero at every scale, and trailing
    /// zeros (which `Decimal` keeps as scale: `1.500` is not `1.5` bit for bit).
    pub(crate) fn any_decimal() -> impl Strategy<Value = Decimal> {
        let scale = 0u32..=28;
        prop_oneof![
            (
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<bool>(),
                scale.clone()
            )
                .prop_map(|(lo, mid, hi, neg, s)| Decimal::from_parts(lo, mid, hi, neg, s)),
            (any::<bool>(), scale.clone()).prop_map(|(neg, s)| Decimal::from_parts(
                u32::MAX,
                u32::MAX,
                u32::MAX,
                neg,
                s
            )),
            (any::<bool>(), scale.clone())
                .prop_map(|(neg, s)| Decimal::from_parts(1, 0, 0, neg, s)),
            scale
                .clone()
                .prop_map(|s| Decimal::from_parts(0, 0, 0, false, s)),
            scale.clone().prop_map(negative_zero),
            (any::<i64>(), 0u32..=10, 0u32..=18).prop_filter_map(
                "mantissa over 96 bits",
                |(m, s, zeros)| {
                    // m, then `zeros` trailing zeros kept as scale: 1.5 -> 1.500.
                    let m = i128::from(m) * 10i128.pow(zeros);
                    Decimal::try_from_i128_with_scale(m, s + zeros).ok()
                }
            ),
        ]
    }

    pub(crate) fn negative_zero(scale: u32) -> Decimal {
        let mut z = Decimal::new(0, scale);
        z.set_sign_negative(true);
        z
    }

    pub(crate) fn is_negative_zero(d: &Decimal) -> bool {
        d.is_zero() && d.is_sign_negative()
    }

    /// Through the real envelope: encode (compressing whatever lz4 can shrink), splice a version
    /// in as the write script does, decode.
    fn through_codec<V: Serialize + DeserializeOwned>(value: &V) -> V {
        let encoded = codec::encode(Some(value), 0, Some(16)).expect("encodes");
        match codec::decode::<V>(&codec::envelope(42, &encoded)) {
            Ok(Stored::Value {
                version,
                value: Some(value),
                ..
            }) => {
                assert_eq!(version, 42);
                value
            }
            Ok(Stored::Value { value: None, .. }) => panic!("read back as \"not found\""),
            Ok(Stored::Tombstone) => panic!("read back as a tombstone"),
            Err(e) => panic!("did not decode: {e}"),
        }
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Quote {
        bid: Decimal,
        ask: Option<Decimal>,
        #[serde(with = "crate::exact::decimal")]
        exact_bid: Decimal,
        at: SystemTime,
        at_unix_nanos: i64,
        legs: Vec<Decimal>,
    }

    fn any_time() -> impl Strategy<Value = SystemTime> {
        (0u64..=(u64::MAX >> 30), 0u32..1_000_000_000)
            .prop_map(|(s, n)| UNIX_EPOCH + Duration::new(s, n))
    }

    fn any_quote() -> impl Strategy<Value = Quote> {
        (
            any_decimal(),
            proptest::option::of(any_decimal()),
            any_decimal(),
            any_time(),
            any::<i64>(),
            proptest::collection::vec(any_decimal(), 0..4),
        )
            .prop_map(|(bid, ask, exact_bid, at, at_unix_nanos, legs)| Quote {
                bid,
                ask,
                exact_bid,
                at,
                at_unix_nanos,
                legs,
            })
    }

    /// The default (string) form: bit-exact except negative zero, which keeps its scale and
    /// compares equal but loses its sign bit (the known, documented exception).
    pub(crate) fn assert_default_form(sent: &Decimal, got: &Decimal) {
        if is_negative_zero(sent) {
            assert_eq!(got, sent);
            assert_eq!(got.scale(), sent.scale());
            assert!(
                !got.is_sign_negative(),
                "negative zero now survives: update the docs"
            );
        } else {
            assert_eq!(
                got.serialize(),
                sent.serialize(),
                "{sent} came back as {got}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn decimal_default_form(d in any_decimal()) {
            assert_default_form(&d, &through_codec(&d));
        }

        #[test]
        fn decimal_exact_form(d in any_decimal()) {
            #[derive(Serialize, Deserialize)]
            struct W(#[serde(with = "crate::exact::decimal")] Decimal);
            prop_assert_eq!(through_codec(&W(d)).0.serialize(), d.serialize());
        }

        #[test]
        fn system_time_and_unix_nanos(t in any_time(), n in any::<i64>()) {
            prop_assert_eq!(through_codec(&t), t);
            prop_assert_eq!(through_codec(&n), n);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5_000))]

        #[test]
        fn struct_with_decimal_and_time_fields(q in any_quote()) {
            let got = through_codec(&q);
            assert_default_form(&q.bid, &got.bid);
            match (&q.ask, &got.ask) {
                (Some(sent), Some(got)) => assert_default_form(sent, got),
                (None, None) => {}
                other => panic!("ask: {other:?}"),
            }
            prop_assert_eq!(got.exact_bid.serialize(), q.exact_bid.serialize());
            prop_assert_eq!(got.at, q.at);
            prop_assert_eq!(got.at_unix_nanos, q.at_unix_nanos);
            prop_assert_eq!(got.legs.len(), q.legs.len());
            for (sent, got) in q.legs.iter().zip(&got.legs) {
                assert_default_form(sent, got);
            }
        }
    }

    #[test]
    fn negative_zero_is_what_it_claims() {
        let z = negative_zero(2);
        assert_eq!(z.to_string(), "-0.00");
        assert_eq!(z.serialize()[3], 0x80);
        assert_ne!(z.serialize(), Decimal::new(0, 2).serialize());
    }

    #[test]
    fn exact_form_reads_the_default_form_and_rejects_bad_bytes() {
        #[derive(Serialize, Deserialize)]
        struct Plain(Decimal);
        #[derive(Debug, Serialize, Deserialize)]
        struct Exact(#[serde(with = "crate::exact::decimal")] Decimal);
        let d: Decimal = "-12.3400".parse().unwrap();
        let old = rmp_serde::to_vec_named(&Plain(d)).unwrap();
        let read: Exact = rmp_serde::from_slice(&old).unwrap();
        assert_eq!(read.0.serialize(), d.serialize());
        let mut bad = d.serialize();
        bad[2] = 29; // scale over 28
        let bytes = rmp_serde::to_vec(&serde_bytes_like(&bad)).unwrap();
        assert!(rmp_serde::from_slice::<Exact>(&bytes).is_err());
        let short = rmp_serde::to_vec(&serde_bytes_like(&bad[..15])).unwrap();
        assert!(rmp_serde::from_slice::<Exact>(&short).is_err());
    }

    /// Serializes as MessagePack bin, as `exact::decimal` does.
    fn serde_bytes_like(b: &[u8]) -> impl Serialize + '_ {
        struct B<'a>(&'a [u8]);
        impl Serialize for B<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        B(b)
    }

    #[test]
    fn a_time_before_the_epoch_is_an_encode_error_not_a_wrong_value() {
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert!(codec::encode(Some(&before), 0, None).is_err());
    }
}
