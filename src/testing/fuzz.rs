//! Entry points of the fuzz targets in `fuzz/`: each hands arbitrary bytes to a decoder the
//! crate runs on what Redis or the bus delivers, and checks what must hold for any input. A
//! panic here is a crash the fuzzer reports. (The `INFO` reader and the admin tool's
//! `inspect` are fuzzed through `RedisInfo::parse` and `admin::inspect_bytes`.)

use crate::codec::{self, Opened};
use crate::l2::link::{tracked_from_resp, Tracked};
use crate::wire::{self, Outgoing, Scope};
use std::collections::HashMap;

/// A value envelope as read from Redis, decoded as the value types users store. Any input
/// is a value or a typed error; a payload never expands past the decompression bound.
pub fn envelope(bytes: &[u8]) {
    type Position = (
        String,
        rust_decimal::Decimal,
        Vec<(String, f64)>,
        Option<u64>,
    );
    let _ = codec::decode::<u64>(bytes);
    let _ = codec::decode::<String>(bytes);
    let _ = codec::decode::<Vec<u8>>(bytes);
    let _ = codec::decode::<Position>(bytes);
    let _ = codec::decode::<HashMap<String, Vec<i64>>>(bytes);
    if let Ok(Opened::Value { payload, .. }) = codec::open(bytes) {
        if let Ok(Some(plain)) = payload.bytes() {
            assert!(
                plain.len() <= codec::MAX_DECOMPRESSED,
                "expanded past the bound"
            );
        }
    }
}

/// A bus message. What parses re-encodes to a message that parses the same.
pub fn bus_message(bytes: &[u8]) {
    let Some(m) = wire::decode(bytes) else {
        return;
    };
    let rebuilt = match &m.scope {
        Scope::Keys(keys) => Outgoing::keys(m.origin, m.namespace, keys),
        Scope::Namespace => Outgoing::namespace(m.origin, m.namespace),
        // A heartbeat's namespace means nothing (the library sends none): not rebuilt.
        Scope::Heartbeat { .. } if !m.namespace.is_empty() => return,
        Scope::Heartbeat { sent_ms } => Outgoing::heartbeat(m.origin, *sent_ms),
        // Built by a script from sections (see `l2/multi.rs`): nothing to rebuild here.
        Scope::Multi(_) => return,
    };
    let again = rebuilt.assemble(m.version, m.epoch);
    let d = wire::decode(&again).expect("a rebuilt message parses");
    assert_eq!(
        (d.origin, d.version, d.epoch, d.namespace, &d.scope),
        (m.origin, m.version, m.epoch, m.namespace, &m.scope)
    );
}

/// A RESP3 reply from the tracking connection: redis-rs's parser, then the crate's reading of
/// an invalidation push (a list of keys, or a flush).
pub fn tracking_push(bytes: &[u8]) {
    if let Some(Tracked::Keys(keys)) = tracked_from_resp(bytes) {
        assert!(keys.len() <= bytes.len(), "more keys than bytes");
    }
}
