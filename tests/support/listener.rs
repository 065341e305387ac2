//! A raw subscriber on the invalidation channel, for tests that count what was published.
#![allow(dead_code)]

use super::{RedisServer, PATIENCE};
use futures_util::StreamExt;

/// Message kinds (byte 2 of every message; see `src/bus.rs`).
pub const KIND_KEYS: u8 = 0;
pub const KIND_NAMESPACE: u8 = 1;
pub const KIND_HEARTBEAT: u8 = 2;
pub const KIND_MULTI: u8 = 3;

/// Listens on `v1:_tc:inv:db0` with its own connection, from `start` on.
pub struct BusListener {
    stream: redis::aio::PubSubStream,
}

impl BusListener {
    pub async fn start(server: &RedisServer) -> Self {
        let client = redis::Client::open(server.url()).unwrap();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe("v1:_tc:inv:db0").await.unwrap();
        Self {
            stream: pubsub.into_on_message(),
        }
    }

    /// Every message but heartbeats, up to and including the first whose bytes contain
    /// `marker` (publish one after the operation under test: Redis delivers in order, so
    /// everything the operation published has arrived by then).
    pub async fn until(&mut self, marker: &[u8]) -> Vec<Vec<u8>> {
        let collect = async {
            let mut out = Vec::new();
            loop {
                let msg = self
                    .stream
                    .next()
                    .await
                    .expect("listener connection closed");
                let bytes = msg.get_payload_bytes().to_vec();
                if bytes.get(2) == Some(&KIND_HEARTBEAT) {
                    continue;
                }
                let done = bytes.windows(marker.len()).any(|w| w == marker);
                out.push(bytes);
                if done {
                    return out;
                }
            }
        };
        tokio::time::timeout(PATIENCE, collect)
            .await
            .expect("marker message never arrived")
    }
}

/// Where the namespace starts: after magic, format, kind, origin, version, epoch, send time.
const NAMESPACE_AT: usize = 35;

/// The publisher's wall clock (unix ms) a message carries.
pub fn sent_ms(msg: &[u8]) -> u64 {
    u64::from_be_bytes(msg[27..35].try_into().unwrap())
}

/// The version a message carries.
pub fn version(msg: &[u8]) -> u64 {
    u64::from_be_bytes(msg[11..19].try_into().unwrap())
}

/// The keys of a kind 0 message, with its namespace.
pub fn keys_of(msg: &[u8]) -> (String, Vec<String>) {
    assert_eq!(msg[2], KIND_KEYS, "not a keys message");
    let mut at = NAMESPACE_AT;
    let ns = section(msg, &mut at);
    (ns, key_list(msg, &mut at))
}

/// The sections (namespace, keys) of a kind 3 message.
pub fn sections_of(msg: &[u8]) -> Vec<(String, Vec<String>)> {
    assert_eq!(msg[2], KIND_MULTI, "not a multi-namespace message");
    let mut at = NAMESPACE_AT;
    assert_eq!(
        section(msg, &mut at),
        "",
        "a multi message has no namespace of its own"
    );
    let count = u16::from_be_bytes(msg[at..at + 2].try_into().unwrap());
    at += 2;
    let out = (0..count)
        .map(|_| (section(msg, &mut at), key_list(msg, &mut at)))
        .collect();
    assert_eq!(at, msg.len(), "trailing bytes");
    out
}

fn section(msg: &[u8], at: &mut usize) -> String {
    let len = u16::from_be_bytes(msg[*at..*at + 2].try_into().unwrap()) as usize;
    *at += 2;
    let s = String::from_utf8(msg[*at..*at + len].to_vec()).unwrap();
    *at += len;
    s
}

fn key_list(msg: &[u8], at: &mut usize) -> Vec<String> {
    let u32_at = |at: usize| u32::from_be_bytes(msg[at..at + 4].try_into().unwrap()) as usize;
    let count = u32_at(*at);
    *at += 4;
    (0..count)
        .map(|_| {
            let len = u32_at(*at);
            *at += 4;
            let k = String::from_utf8(msg[*at..*at + len].to_vec()).unwrap();
            *at += len;
            k
        })
        .collect()
}

/// How many times Redis has run `command` (from `INFO commandstats`).
pub fn command_calls(server: &RedisServer, command: &str) -> u64 {
    let info: String = server.cmd(&[b"INFO", b"commandstats"]);
    let prefix = format!("cmdstat_{}:calls=", command.to_lowercase());
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}
