//! The value envelope, from the crate's own `codec` (feature `test-util`): tests read and forge
//! stored values through here, never by byte offset.
#![allow(dead_code, unused_imports)]

pub use tiered_cache::testing::{
    envelope_flags as flags, envelope_flags_mut as flags_mut, envelope_head as head,
    open_envelope as open, Envelope, ENVELOPE_FORMAT as FORMAT, ENVELOPE_MAGIC as MAGIC,
    FLAG_ABSENT, FLAG_COMPRESSED, FLAG_EXPIRY, FLAG_SOURCE, FLAG_TOMBSTONE,
};

/// A flag bit this build does not know (a newer deploy's).
pub const UNKNOWN_FLAG: u8 =
    (FLAG_TOMBSTONE | FLAG_COMPRESSED | FLAG_EXPIRY | FLAG_ABSENT | FLAG_SOURCE) + 1;

/// A format this build does not know (a newer deploy's).
pub const NEWER_FORMAT: u8 = FORMAT + 1;

/// Whether stored bytes start with the crate's magic byte.
pub fn is_envelope(raw: &[u8]) -> bool {
    raw.first() == Some(&MAGIC)
}

/// A whole envelope of `format` with `flags`, `version` and `body`, as Redis would store it.
pub fn forge(format: u8, flags: u8, version: u64, body: &[u8]) -> Vec<u8> {
    tiered_cache::testing::envelope(format, flags, version, body)
}

/// The version of a live entry's stored bytes.
pub fn version(raw: &[u8]) -> u64 {
    open(raw)
        .expect("an envelope")
        .version()
        .expect("a live entry")
}

/// The expiry (unix ms) of a live entry's stored bytes.
pub fn expires_ms(raw: &[u8]) -> Option<u64> {
    match open(raw).expect("an envelope") {
        Envelope::Value { expires_ms, .. } => expires_ms,
        Envelope::Tombstone => panic!("a tombstone has no expiry"),
    }
}

/// Sets `flag` in stored bytes (to forge one this build cannot read, say).
pub fn add_flag(raw: &mut [u8], flag: u8) {
    *flags_mut(raw).expect("an envelope head") |= flag;
}

/// Whether a flag is set in stored bytes.
pub fn has_flag(raw: &[u8], flag: u8) -> bool {
    flags(raw).is_some_and(|f| f & flag != 0)
}
