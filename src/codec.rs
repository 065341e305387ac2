//! The envelope every value is stored in on the shared tier.
//!
//! ```text
//! byte 0      0xC1      magic: a byte MessagePack never emits, so foreign values are spotted at once
//! byte 1      format    1 today; a reader skips formats it does not know (a miss, never a panic)
//! byte 2      flags     bit 0 tombstone (an invalidated key), bit 1 compressed (reserved)
//! bytes 3-10  version   u64 big-endian, drawn from Redis in the same script as the write
//! bytes 11-   payload   MessagePack (rmp-serde, structs as maps)
//! ```
//!
//! Structs are written as MessagePack *maps* (`to_vec_named`): a fleet in the middle of a rolling
//! deploy shares one Redis, and a map tolerates a field added with `#[serde(default)]`, where a
//! positional array would turn every read of the other version into a miss.
//!
//! The header is written by Redis itself (see `l2.rs`): the client sends the three leading bytes
//! and the payload; the script splices in the version it drew.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;

pub(crate) const MAGIC: u8 = 0xC1;
pub(crate) const FORMAT: u8 = 1;
pub(crate) const FLAG_TOMBSTONE: u8 = 0b01;
pub(crate) const HEADER_LEN: usize = 11;

/// What was found under a key on the shared tier.
#[derive(Debug)]
pub(crate) enum Stored<V> {
    /// A live value and the version of the write that stored it.
    Value { version: u64, value: V },
    /// The key was invalidated; nothing to serve.
    Tombstone,
}

/// Why stored bytes could not be used. Each is counted, and read as a miss.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// Not written by this crate (no magic byte).
    Foreign,
    /// Written by a newer or older envelope format, or with flags this build cannot read.
    UnknownFormat,
    /// The envelope is cut short.
    Truncated,
    /// The payload does not deserialize into the namespace's value type.
    Payload(rmp_serde::decode::Error),
}

impl DecodeError {
    /// A short label for metrics and logs.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            DecodeError::Foreign => "foreign",
            DecodeError::UnknownFormat => "unknown_format",
            DecodeError::Truncated => "truncated",
            DecodeError::Payload(_) => "payload",
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Payload(e) => write!(f, "payload: {e}"),
            other => f.write_str(other.kind()),
        }
    }
}

/// The three bytes the write script puts before the version.
pub(crate) fn value_head() -> [u8; 3] {
    [MAGIC, FORMAT, 0]
}

/// The three bytes a tombstone starts with.
pub(crate) fn tombstone_head() -> [u8; 3] {
    [MAGIC, FORMAT, FLAG_TOMBSTONE]
}

/// Serializes a value into the envelope's payload.
pub(crate) fn encode_payload<V: Serialize + ?Sized>(
    value: &V,
) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(value)
}

/// Reads an envelope. Never panics, whatever the bytes.
pub(crate) fn decode<V: DeserializeOwned>(bytes: &[u8]) -> Result<Stored<V>, DecodeError> {
    let (flags, version, payload) = split_header(bytes)?;
    if flags & FLAG_TOMBSTONE != 0 {
        return Ok(Stored::Tombstone);
    }
    if flags & !FLAG_TOMBSTONE != 0 {
        return Err(DecodeError::UnknownFormat);
    }
    let value = rmp_serde::from_slice(payload).map_err(DecodeError::Payload)?;
    Ok(Stored::Value { version, value })
}

fn split_header(bytes: &[u8]) -> Result<(u8, u64, &[u8]), DecodeError> {
    match bytes {
        [] => Err(DecodeError::Truncated),
        [first, ..] if *first != MAGIC => Err(DecodeError::Foreign),
        [_, format, ..] if *format != FORMAT => Err(DecodeError::UnknownFormat),
        _ if bytes.len() < HEADER_LEN => Err(DecodeError::Truncated),
        _ => {
            let version = u64::from_be_bytes(bytes[3..HEADER_LEN].try_into().expect("8 bytes"));
            Ok((bytes[2], version, &bytes[HEADER_LEN..]))
        }
    }
}

#[cfg(test)]
pub(crate) fn encode_for_test<V: Serialize>(version: u64, value: &V) -> Vec<u8> {
    let mut out = value_head().to_vec();
    out.extend_from_slice(&version.to_be_bytes());
    out.extend(encode_payload(value).unwrap());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn round_trip() {
        let mut m = BTreeMap::new();
        m.insert("price".to_string(), 150.25f64);
        let bytes = encode_for_test(42, &m);
        match decode::<BTreeMap<String, f64>>(&bytes).unwrap() {
            Stored::Value { version, value } => {
                assert_eq!(version, 42);
                assert_eq!(value, m);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        assert!(matches!(decode::<u32>(b""), Err(DecodeError::Truncated)));
        assert!(matches!(
            decode::<u32>(b"{\"a\":1}"),
            Err(DecodeError::Foreign)
        ));
        assert!(matches!(
            decode::<u32>(&[MAGIC, 9, 0]),
            Err(DecodeError::UnknownFormat)
        ));
        assert!(matches!(
            decode::<u32>(&[MAGIC, FORMAT, 0, 1]),
            Err(DecodeError::Truncated)
        ));
        let mut compressed = encode_for_test(1, &5u32);
        compressed[2] = 0b10; // the reserved "compressed" bit
        assert!(matches!(
            decode::<u32>(&compressed),
            Err(DecodeError::UnknownFormat)
        ));
        let wrong_type = encode_for_test(1, &"text");
        assert!(matches!(
            decode::<u32>(&wrong_type),
            Err(DecodeError::Payload(_))
        ));
        // Every prefix of a valid envelope, and every single-byte corruption, is handled.
        let good = encode_for_test(7, &vec![1u64, 2, 3]);
        for n in 0..good.len() {
            let _ = decode::<Vec<u64>>(&good[..n]);
        }
        for i in 0..good.len() {
            for b in [0u8, 0x7f, 0xc1, 0xff] {
                let mut bad = good.clone();
                bad[i] = b;
                let _ = decode::<Vec<u64>>(&bad);
            }
        }
    }

    #[test]
    fn tombstones_carry_their_version() {
        let mut t = tombstone_head().to_vec();
        t.extend_from_slice(&9u64.to_be_bytes());
        assert!(matches!(decode::<u32>(&t), Ok(Stored::Tombstone)));
    }
}
