//! The bus's wire format, from the crate's own `wire` module (feature `test-util`): tests build
//! the messages they publish and read the ones they receive through here, never byte by byte.
#![allow(dead_code, unused_imports)]

pub use tiered_cache::testing::{
    decode_message as decode, Decoded, Message, MessageScope, BUS_FORMAT, BUS_FORMAT_1, BUS_MAGIC,
};

/// An origin no real node has: messages a test publishes as "another node".
pub const FOREIGN_ORIGIN: u64 = 0x1A66;

/// A format no build knows yet (a newer deploy's), for tests of what an older node does with it.
pub const NEWER_FORMAT: u8 = BUS_FORMAT + 7;

/// Bytes that start like a message of `format` and go on with `rest`: unreadable to this build
/// unless `rest` happens to be a valid message body.
pub fn with_header(format: u8, rest: &[u8]) -> Vec<u8> {
    [&[BUS_MAGIC, format][..], rest].concat()
}

/// A message from a newer build: the magic byte, a format this build does not know, `rest`.
pub fn from_a_newer_build(rest: &[u8]) -> Vec<u8> {
    with_header(NEWER_FORMAT, rest)
}

/// Whether `bytes` is a heartbeat (of any sender).
pub fn is_heartbeat(bytes: &[u8]) -> bool {
    decode(bytes).is_some_and(|m| matches!(m.scope, MessageScope::Heartbeat { .. }))
}
