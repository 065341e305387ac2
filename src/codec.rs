//! The envelope every value is stored in on the shared tier.
//!
//! ```text
//! byte 0      0xC1      magic: a byte MessagePack never emits, so foreign values are spotted at once
//! byte 1      format    1 today; a reader skips formats it does not know (a miss, never a panic)
//! byte 2      flags     bit 0 tombstone (an invalidated key), bit 1 payload compressed (lz4),
//!                       bit 2 expiry present, bit 3 absent ("not found", cached negatively),
//!                       bit 4 source version present
//! bytes 3-10  version   u64 big-endian, drawn from Redis in the same script as the write
//! bytes 11-18 expiry    (bit 2) u64 big-endian, unix milliseconds: when the value stops being
//!                       fresh. Redis may keep it longer, for fail-safe (see `NamespacePolicy::fail_safe`)
//! next 8      source    (bit 4) u64 big-endian: the writer's own version of the value (a
//!                       database LSN, a log offset) given to `set_if_newer`; a tombstone
//!                       written by `invalidate_if_newer` carries it too
//! then        payload   MessagePack (rmp-serde, structs as maps); lz4 with a u32 LE length
//!                       prefix when bit 1 is set; empty when bit 3 is set
//! ```
//!
//! Structs are written as MessagePack *maps* (`to_vec_named`): a fleet in the middle of a rolling
//! deploy shares one Redis, and a map tolerates a field added with `#[serde(default)]`, where a
//! positional array would turn every read of the other version into a miss.
//!
//! The header is written by Redis itself (see `l2.rs`): the client sends the three leading bytes
//! and the body (expiry and payload); the script splices in the version it drew.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) const MAGIC: u8 = 0xC1;
pub(crate) const FORMAT: u8 = 1;
pub(crate) const FLAG_TOMBSTONE: u8 = 0b0001;
pub(crate) const FLAG_COMPRESSED: u8 = 0b0010;
pub(crate) const FLAG_EXPIRY: u8 = 0b0100;
pub(crate) const FLAG_ABSENT: u8 = 0b1000;
pub(crate) const FLAG_SOURCE: u8 = 0b1_0000;
const KNOWN_FLAGS: u8 = FLAG_TOMBSTONE | FLAG_COMPRESSED | FLAG_EXPIRY | FLAG_ABSENT | FLAG_SOURCE;
pub(crate) const HEADER_LEN: usize = 11;
/// lz4 cannot expand data more than about 255 times: a length prefix claiming more is corrupt,
/// and is refused before anything is allocated for it.
const LZ4_MAX_RATIO: usize = 255;
/// The largest decompressed payload accepted, whatever the prefix claims.
pub(crate) const MAX_DECOMPRESSED: usize = 256 << 20;

/// Milliseconds since the unix epoch, by this host's clock: expiries are compared across the
/// fleet, so they use the wall clock (hosts are assumed NTP-synchronised).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What was found under a key on the shared tier.
#[derive(Debug)]
pub(crate) enum Stored<V> {
    /// A live entry and the version of the write that stored it. `value` is `None` for a
    /// cached "not found".
    Value {
        version: u64,
        /// When the value stops being fresh (unix ms), if the writer said.
        expires_ms: Option<u64>,
        value: Option<V>,
    },
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
    /// The compressed payload is corrupt.
    Compression,
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
            DecodeError::Compression => "compression",
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

/// An entry ready for the write scripts: the three bytes before the version, and the rest.
#[derive(Debug, Clone)]
pub(crate) struct Encoded {
    pub(crate) head: [u8; 3],
    pub(crate) body: Vec<u8>,
    /// The serialized payload's size before compression: what L1 weighs the entry at.
    pub(crate) plain_len: usize,
}

impl Encoded {
    /// Whether the payload was compressed.
    #[cfg(test)]
    pub(crate) fn compressed(&self) -> bool {
        self.head[2] & FLAG_COMPRESSED != 0
    }
}

/// Serializes a value (`None`: a cached "not found") into an envelope body that expires at
/// `expires_ms`, compressing payloads longer than `compress_above` bytes.
pub(crate) fn encode<V: Serialize + ?Sized>(
    value: Option<&V>,
    expires_ms: u64,
    compress_above: Option<usize>,
) -> Result<Encoded, rmp_serde::encode::Error> {
    let mut flags = FLAG_EXPIRY;
    let mut body = expires_ms.to_be_bytes().to_vec();
    let mut plain_len = 0;
    match value {
        None => flags |= FLAG_ABSENT,
        Some(v) => {
            let payload = rmp_serde::to_vec_named(v)?;
            plain_len = payload.len();
            match compress_above {
                Some(limit) if payload.len() > limit => {
                    let packed = lz4_flex::compress_prepend_size(&payload);
                    // Incompressible data is stored as it is.
                    if packed.len() < payload.len() {
                        flags |= FLAG_COMPRESSED;
                        body.extend_from_slice(&packed);
                    } else {
                        body.extend_from_slice(&payload);
                    }
                }
                _ => body.extend_from_slice(&payload),
            }
        }
    }
    Ok(Encoded {
        head: [MAGIC, FORMAT, flags],
        body,
        plain_len,
    })
}

/// What an envelope weighs in L1: its serialized payload before compression (read from the
/// lz4 length prefix), never less than the stored bytes.
pub(crate) fn plain_len(bytes: &[u8]) -> usize {
    let flags = bytes.get(2).copied().unwrap_or(0);
    let compressed = flags & FLAG_COMPRESSED != 0;
    let at = HEADER_LEN + 8 + if flags & FLAG_SOURCE != 0 { 8 } else { 0 };
    match bytes.get(at..at + 4) {
        Some(prefix) if compressed => {
            let len = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
            len.max(bytes.len())
        }
        _ => bytes.len(),
    }
}

impl Encoded {
    /// The same entry carrying the writer's source version (see `set_if_newer`).
    pub(crate) fn with_source(mut self, source: u64) -> Self {
        let at = if self.head[2] & FLAG_EXPIRY != 0 {
            8
        } else {
            0
        };
        self.body.splice(at..at, source.to_be_bytes());
        self.head[2] |= FLAG_SOURCE;
        self
    }

    /// A tombstone carrying a source version (see `invalidate_if_newer`).
    pub(crate) fn source_tombstone(source: u64) -> Self {
        Self {
            head: [MAGIC, FORMAT, FLAG_TOMBSTONE | FLAG_SOURCE],
            body: source.to_be_bytes().to_vec(),
            plain_len: 0,
        }
    }

    /// When the value stops being fresh (unix ms), if it says.
    pub(crate) fn expires_ms(&self) -> Option<u64> {
        let at = self.body.first_chunk::<8>()?;
        (self.head[2] & FLAG_EXPIRY != 0).then(|| u64::from_be_bytes(*at))
    }
}

/// The three bytes a tombstone starts with.
pub(crate) fn tombstone_head() -> [u8; 3] {
    [MAGIC, FORMAT, FLAG_TOMBSTONE]
}

/// Reads an envelope. Never panics, whatever the bytes.
pub(crate) fn decode<V: DeserializeOwned>(bytes: &[u8]) -> Result<Stored<V>, DecodeError> {
    let (version, expires_ms, payload) = match open(bytes)? {
        Opened::Tombstone => return Ok(Stored::Tombstone),
        Opened::Value {
            version,
            expires_ms,
            payload,
        } => (version, expires_ms, payload),
    };
    let value = match payload.bytes()? {
        None => None,
        Some(plain) => Some(rmp_serde::from_slice(&plain).map_err(DecodeError::Payload)?),
    };
    Ok(Stored::Value {
        version,
        expires_ms,
        value,
    })
}

/// An envelope read up to its payload, which is left serialized (and compressed).
pub(crate) enum Opened<'a> {
    Tombstone,
    Value {
        version: u64,
        expires_ms: Option<u64>,
        payload: Payload<'a>,
    },
}

/// A value's serialized bytes, as the envelope holds them.
pub(crate) enum Payload<'a> {
    /// A cached "not found": no value.
    Absent,
    Plain(&'a [u8]),
    /// A length-prefixed lz4 block.
    Compressed(&'a [u8]),
}

impl<'a> Payload<'a> {
    /// The serialized value (`None` for a cached "not found"), decompressed if need be.
    pub(crate) fn bytes(&self) -> Result<Option<std::borrow::Cow<'a, [u8]>>, DecodeError> {
        Ok(match *self {
            Payload::Absent => None,
            Payload::Plain(b) => Some(b.into()),
            Payload::Compressed(b) => Some(decompress(b)?.into()),
        })
    }
}

/// Reads an envelope's header, flags and expiry: what [`decode`] and the admin tool's
/// inspection share. Never panics, whatever the bytes.
pub(crate) fn open(bytes: &[u8]) -> Result<Opened<'_>, DecodeError> {
    let (flags, version, rest) = split_header(bytes)?;
    if flags & FLAG_TOMBSTONE != 0 {
        return Ok(Opened::Tombstone);
    }
    if flags & !KNOWN_FLAGS != 0 {
        return Err(DecodeError::UnknownFormat);
    }
    let (expires_ms, rest) = if flags & FLAG_EXPIRY != 0 {
        let Some((at, rest)) = rest.split_first_chunk::<8>() else {
            return Err(DecodeError::Truncated);
        };
        (Some(u64::from_be_bytes(*at)), rest)
    } else {
        (None, rest)
    };
    let rest = if flags & FLAG_SOURCE != 0 {
        match rest.split_first_chunk::<8>() {
            Some((_, rest)) => rest,
            None => return Err(DecodeError::Truncated),
        }
    } else {
        rest
    };
    let payload = if flags & FLAG_ABSENT != 0 {
        Payload::Absent
    } else if flags & FLAG_COMPRESSED != 0 {
        Payload::Compressed(rest)
    } else {
        Payload::Plain(rest)
    };
    Ok(Opened::Value {
        version,
        expires_ms,
        payload,
    })
}

/// Decompresses a length-prefixed lz4 block, refusing a prefix no real block could have.
pub(crate) fn decompress(packed: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let Some((len, block)) = packed.split_first_chunk::<4>() else {
        return Err(DecodeError::Truncated);
    };
    let len = u32::from_le_bytes(*len) as usize;
    if len > MAX_DECOMPRESSED || len > block.len().saturating_mul(LZ4_MAX_RATIO) + 16 {
        return Err(DecodeError::Compression);
    }
    let plain = lz4_flex::decompress(block, len).map_err(|_| DecodeError::Compression)?;
    if plain.len() != len {
        return Err(DecodeError::Compression);
    }
    Ok(plain)
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

/// A whole envelope as Redis would store it (the version spliced in after the head).
#[cfg(test)]
pub(crate) fn envelope(version: u64, e: &Encoded) -> Vec<u8> {
    let mut out = e.head.to_vec();
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&e.body);
    out
}

#[cfg(test)]
pub(crate) fn encode_for_test<V: Serialize>(version: u64, value: &V) -> Vec<u8> {
    envelope(version, &encode(Some(value), u64::MAX, None).unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The stored format outlives a deploy: values written by one build are read by the next.
    /// These bytes are the format; a change here is a format change (bump `FORMAT`).
    #[test]
    fn the_envelope_bytes_are_the_format() {
        assert_eq!((MAGIC, FORMAT), (0xC1, 1));
        assert_eq!(
            [FLAG_TOMBSTONE, FLAG_COMPRESSED, FLAG_EXPIRY, FLAG_ABSENT],
            [1, 2, 4, 8]
        );
        assert_eq!(HEADER_LEN, 11);
        let bytes = envelope(
            0x0102_0304_0506_0708,
            &encode(Some(&7u8), 0x1122, None).unwrap(),
        );
        assert_eq!(
            bytes,
            [
                0xC1, 1, 0b0100, // magic, format, flags (expiry)
                1, 2, 3, 4, 5, 6, 7, 8, // version
                0, 0, 0, 0, 0, 0, 0x11, 0x22, // expiry, unix ms
                7,    // MessagePack 7
            ]
        );
        assert_eq!(tombstone_head(), [0xC1, 1, 1]);
        // With a source version (`set_if_newer`): after the expiry, before the payload.
        let sourced = encode(Some(&7u8), 0x1122, None).unwrap().with_source(0x33);
        assert_eq!(
            envelope(1, &sourced),
            [
                0xC1, 1, 0b1_0100, // flags: expiry, source
                0, 0, 0, 0, 0, 0, 0, 1, // version
                0, 0, 0, 0, 0, 0, 0x11, 0x22, // expiry
                0, 0, 0, 0, 0, 0, 0, 0x33, // source version
                7,
            ]
        );
        assert!(matches!(
            decode::<u8>(&envelope(1, &sourced)),
            Ok(Stored::Value {
                value: Some(7),
                expires_ms: Some(0x1122),
                ..
            })
        ));
        let big = encode(Some(&"x".repeat(4000)), 1, Some(64)).unwrap();
        let plain = plain_len(&envelope(1, &big));
        assert_eq!(plain_len(&envelope(1, &big.with_source(9))), plain);
    }

    #[test]
    fn round_trip() {
        let mut m = BTreeMap::new();
        m.insert("price".to_string(), 150.25f64);
        let bytes = encode_for_test(42, &m);
        match decode::<BTreeMap<String, f64>>(&bytes).unwrap() {
            Stored::Value { version, value, .. } => {
                assert_eq!(version, 42);
                assert_eq!(value, Some(m));
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
        let mut unknown = encode_for_test(1, &5u32);
        unknown[2] |= 0b1000_0000; // a flag from a future build
        assert!(matches!(
            decode::<u32>(&unknown),
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
    fn large_payloads_are_compressed_and_round_trip() {
        let big: Vec<String> = (0..200).map(|i| format!("symbol-{i}")).collect();
        let e = encode(Some(&big), 99, Some(1024)).unwrap();
        assert!(e.compressed());
        assert!(e.body.len() < e.plain_len);
        match decode::<Vec<String>>(&envelope(3, &e)).unwrap() {
            Stored::Value {
                expires_ms, value, ..
            } => {
                assert_eq!(expires_ms, Some(99));
                assert_eq!(value, Some(big.clone()));
            }
            other => panic!("unexpected {other:?}"),
        }
        // Under the threshold, or with compression off, the payload is stored as it is.
        assert!(!encode(Some(&5u32), 0, Some(1024)).unwrap().compressed());
        assert!(!encode(Some(&big), 0, None).unwrap().compressed());
    }

    #[test]
    fn corrupt_compressed_payloads_are_errors_not_panics() {
        let big: Vec<u64> = (0..2000).map(|i| i % 7).collect();
        let e = encode(Some(&big), 0, Some(16)).unwrap();
        assert!(e.compressed());
        let good = envelope(1, &e);
        // A length prefix claiming 4 GiB is refused before anything is allocated.
        let mut huge = good.clone();
        huge[HEADER_LEN + 8..HEADER_LEN + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode::<Vec<u64>>(&huge),
            Err(DecodeError::Compression)
        ));
        for i in HEADER_LEN..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x5a;
            let _ = decode::<Vec<u64>>(&bad);
        }
        for n in 0..good.len() {
            let _ = decode::<Vec<u64>>(&good[..n]);
        }
    }

    #[test]
    fn absent_entries_have_no_payload() {
        let e = encode::<u32>(None, 7, Some(0)).unwrap();
        assert_eq!(e.body.len(), 8);
        assert!(matches!(
            decode::<u32>(&envelope(2, &e)),
            Ok(Stored::Value {
                value: None,
                expires_ms: Some(7),
                ..
            })
        ));
    }

    #[test]
    fn tombstones_carry_their_version() {
        let mut t = tombstone_head().to_vec();
        t.extend_from_slice(&9u64.to_be_bytes());
        assert!(matches!(decode::<u32>(&t), Ok(Stored::Tombstone)));
    }
}
