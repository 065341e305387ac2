//! A raw subscriber on the invalidation channel, for tests that count what was published.
#![allow(dead_code)]

use super::wire::{self, MessageScope};
use super::{keys, RedisServer, PATIENCE};
use futures_util::StreamExt;

/// Listens on the invalidation channel (default prefix, database 0) with its own connection,
/// from `start` on.
pub struct BusListener {
    stream: redis::aio::PubSubStream,
}

impl BusListener {
    pub async fn start(server: &RedisServer) -> Self {
        let client = super::client(&server.url());
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe(keys::channel()).await.unwrap();
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
                if wire::is_heartbeat(&bytes) {
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

/// A message as the subscriber reads it; panics on one it would call unreadable.
pub fn decoded(msg: &[u8]) -> wire::Decoded {
    wire::decode(msg).expect("a readable bus message")
}

/// The publisher's wall clock (unix ms) a message carries.
pub fn sent_ms(msg: &[u8]) -> u64 {
    decoded(msg).sent_ms.expect("a message with a send time")
}

/// The version a message carries.
pub fn version(msg: &[u8]) -> u64 {
    decoded(msg).version
}

/// Whether a message invalidates keys of its own namespace (not several, not a whole one).
pub fn is_keys(msg: &[u8]) -> bool {
    matches!(decoded(msg).scope, MessageScope::Keys(_))
}

/// Whether a message invalidates keys of several namespaces (a tag invalidation).
pub fn is_multi(msg: &[u8]) -> bool {
    matches!(decoded(msg).scope, MessageScope::Multi(_))
}

/// The keys of a keys message, with its namespace.
pub fn keys_of(msg: &[u8]) -> (String, Vec<String>) {
    let m = decoded(msg);
    match m.scope {
        MessageScope::Keys(keys) => (m.namespace, keys),
        other => panic!("not a keys message: {other:?}"),
    }
}

/// The sections (namespace, keys) of a multi-namespace message.
pub fn sections_of(msg: &[u8]) -> Vec<(String, Vec<String>)> {
    let m = decoded(msg);
    assert_eq!(
        m.namespace, "",
        "a multi message has no namespace of its own"
    );
    match m.scope {
        MessageScope::Multi(sections) => sections,
        other => panic!("not a multi-namespace message: {other:?}"),
    }
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
