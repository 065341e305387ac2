//! `Admin::inspect`'s reading of a stored envelope: header, expiry, and the payload as a
//! generic JSON value, as far as the bytes go.

use crate::codec;
use std::time::Duration;

/// A stored value, as [`Admin::inspect`](crate::Admin::inspect) found it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Inspection {
    /// The Redis key read (`{prefix}:{namespace}:{key}`).
    pub redis_key: String,
    /// The envelope's size in Redis, in bytes.
    pub stored_bytes: usize,
    /// The envelope format (1 today).
    pub format: u8,
    /// The envelope's flags.
    pub flags: EnvelopeFlags,
    /// The version of the write that stored it; `None` if the envelope is cut short.
    pub version: Option<u64>,
    /// When the value stops being fresh, unix milliseconds, if the writer said (Redis may
    /// keep it longer, for fail-safe).
    pub expires_at_ms: Option<u64>,
    /// Time left before Redis drops the key; `None` when it has no expiry.
    pub pttl: Option<Duration>,
    /// The writer's source version (`Namespace::set_if_newer`), if the envelope carries one.
    pub source_version: Option<u64>,
    /// The payload as a generic value; `None` for a tombstone, a cached "not found", or a
    /// payload that could not be read (see [`problem`](Self::problem)).
    pub value: Option<serde_json::Value>,
    /// Why the envelope could not be read in full, if it could not.
    pub problem: Option<String>,
}

/// The flags byte of an envelope (see the codec's layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct EnvelopeFlags {
    /// The byte as stored.
    pub raw: u8,
    /// An invalidated key: nothing to serve.
    pub tombstone: bool,
    /// The payload is lz4-compressed.
    pub compressed: bool,
    /// An expiry (fresh-until time) is present.
    pub expiry: bool,
    /// A cached "not found".
    pub absent: bool,
    /// A source version is present (`Namespace::set_if_newer`).
    pub source: bool,
}

impl EnvelopeFlags {
    fn from_byte(raw: u8) -> Self {
        Self {
            raw,
            tombstone: raw & codec::FLAG_TOMBSTONE != 0,
            compressed: raw & codec::FLAG_COMPRESSED != 0,
            expiry: raw & codec::FLAG_EXPIRY != 0,
            absent: raw & codec::FLAG_ABSENT != 0,
            source: raw & codec::FLAG_SOURCE != 0,
        }
    }
}

/// The source version an envelope carries (flag bit 4: `set_if_newer`, or a tombstone that
/// kept it), if any and if the bytes hold it.
fn source_version(bytes: &[u8]) -> Option<u64> {
    let flags = *bytes.get(2)?;
    if flags & codec::FLAG_SOURCE == 0 {
        return None;
    }
    // After the expiry, when there is one (as the scripts' `source_of` reads it).
    let at = codec::HEADER_LEN
        + if flags & codec::FLAG_EXPIRY != 0 {
            8
        } else {
            0
        };
    let field = bytes.get(at..at + 8)?;
    Some(u64::from_be_bytes(field.try_into().ok()?))
}

/// Reads an envelope that starts with the magic byte, as far as it goes. Never panics.
pub(crate) fn read_envelope(bytes: &[u8]) -> Inspection {
    let flags = bytes.get(2).copied().unwrap_or(0);
    let mut seen = Inspection {
        redis_key: String::new(),
        stored_bytes: bytes.len(),
        format: bytes.get(1).copied().unwrap_or(0),
        flags: EnvelopeFlags::from_byte(flags),
        version: bytes
            .get(3..codec::HEADER_LEN)
            .and_then(|v| v.try_into().ok())
            .map(u64::from_be_bytes),
        expires_at_ms: None,
        pttl: None,
        source_version: source_version(bytes),
        value: None,
        problem: None,
    };
    let problem = match read_body(bytes, &mut seen) {
        Ok(()) => return seen,
        Err(p) => p,
    };
    seen.problem = Some(problem);
    seen
}

fn read_body(bytes: &[u8], seen: &mut Inspection) -> std::result::Result<(), String> {
    let opened = codec::open(bytes).map_err(|e| match e {
        codec::DecodeError::UnknownFormat if seen.format != codec::FORMAT => format!(
            "envelope format {} is unknown to this build (it reads {})",
            seen.format,
            codec::FORMAT
        ),
        codec::DecodeError::UnknownFormat => {
            format!("flags {:#04x} unknown to this build", seen.flags.raw)
        }
        codec::DecodeError::Foreign => "not an envelope of this crate".into(),
        _ => "envelope cut short".into(),
    })?;
    let codec::Opened::Value {
        expires_ms,
        payload,
        ..
    } = opened
    else {
        return Ok(()); // a tombstone
    };
    seen.expires_at_ms = expires_ms;
    let plain = payload
        .bytes()
        .map_err(|e| format!("compressed payload: {e}"))?;
    let Some(payload) = plain else {
        return Ok(()); // a cached "not found"
    };
    let mut reader = &payload[..];
    let value = rmpv::decode::read_value(&mut reader)
        .map_err(|e| format!("payload is not MessagePack: {e}"))?;
    seen.value = Some(to_json(value));
    if !reader.is_empty() {
        return Err(format!("{} bytes after the payload", reader.len()));
    }
    Ok(())
}

/// MessagePack to JSON, losing nothing a JSON reader could need: integers stay exact, binary
/// becomes an array of byte values (serde_json's own form for bytes).
fn to_json(value: rmpv::Value) -> serde_json::Value {
    use rmpv::Value as M;
    use serde_json::Value as J;
    match value {
        M::Nil => J::Null,
        M::Boolean(b) => J::Bool(b),
        M::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => J::from(u),
            (None, Some(s)) => J::from(s),
            (None, None) => J::Null,
        },
        // An f32 widened to f64 shows the digits the f32 really holds (0.1f32 is
        // 0.10000000149011612), which is what the cache stores.
        M::F32(f) => float(f64::from(f)),
        M::F64(f) => float(f),
        M::String(s) => match s.into_str() {
            Some(s) => J::String(s),
            None => J::Null,
        },
        M::Binary(b) => bytes(&b),
        M::Array(items) => J::Array(items.into_iter().map(to_json).collect()),
        M::Map(entries) => J::Object(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        M::String(s) if s.is_str() => s.into_str().unwrap_or_default(),
                        other => key_text(other),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        M::Ext(kind, data) => serde_json::json!({ "ext": kind, "data": bytes(&data) }),
    }
}

/// The most of a non-string map key's JSON text kept as the key.
const KEY_TEXT_MAX: usize = 256;

/// A map key that is not a string, as its JSON text, cut at [`KEY_TEXT_MAX`] bytes: keys made
/// of maps keyed by maps nest their quotes, and each level would double the text (a 216-byte
/// value once asked for gigabytes).
fn key_text(key: rmpv::Value) -> String {
    let mut text = to_json(key).to_string();
    if text.len() > KEY_TEXT_MAX {
        let mut cut = KEY_TEXT_MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// A float; NaN and infinities, which JSON cannot hold, as their names.
fn float(f: f64) -> serde_json::Value {
    serde_json::Number::from_f64(f)
        .map(serde_json::Value::Number)
        .unwrap_or_else(|| serde_json::Value::String(f.to_string()))
}

fn bytes(b: &[u8]) -> serde_json::Value {
    serde_json::Value::Array(b.iter().map(|x| serde_json::Value::from(*x)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_keys_made_of_maps_render_in_bounded_space() {
        // {{{…{nil: nil}…: nil}: nil}: nil}, 200 levels of maps as keys (found by the fuzzer).
        let depth = 200;
        let mut body = vec![0x81u8; depth];
        body.extend(std::iter::repeat_n(0xC0, depth + 1));
        let bytes = [
            &[codec::MAGIC, codec::FORMAT, 0][..],
            &7u64.to_be_bytes(),
            &body,
        ]
        .concat();
        let seen = read_envelope(&bytes);
        assert_eq!(seen.problem, None);
        let text = seen.value.unwrap().to_string();
        assert!(text.len() < 4 * KEY_TEXT_MAX, "{} bytes", text.len());
    }

    #[test]
    fn envelopes_are_read_as_far_as_they_go() {
        let e = codec::encode(Some(&("a", 7u32)), 1234, None).unwrap();
        let bytes = codec::envelope(9, &e);
        let seen = read_envelope(&bytes);
        assert_eq!(seen.version, Some(9));
        assert_eq!(seen.expires_at_ms, Some(1234));
        assert_eq!(seen.value, Some(serde_json::json!(["a", 7])));
        assert_eq!(seen.problem, None);
        // Every prefix reads without panicking, and says what is wrong.
        for n in 1..bytes.len() {
            assert!(read_envelope(&bytes[..n]).problem.is_some(), "prefix {n}");
        }
        let mut future = bytes.clone();
        future[1] = 2;
        assert!(read_envelope(&future).problem.unwrap().contains("format 2"));
    }
}
