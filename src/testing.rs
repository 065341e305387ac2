//! What integration tests need to know about the crate's formats, taken from the crate's own
//! code (feature `test-util`): the Redis key layout, the bus's wire format and the value
//! envelope. Thin wrappers around crate-private items, so a test never spells a key, a byte
//! offset or a message by hand and cannot drift from what the crate writes.
//!
//! Not a stable API: it follows the formats, and changes whenever they do.

pub mod fuzz;

use crate::codec::{self, Opened};
use crate::key::KeySpace;
use crate::wire::{self, Outgoing, Scope};

// ---------------------------------------------------------------------------------------------
// Keys.

/// The Redis names a cache with a given prefix and database uses (`key::KeySpace`).
#[derive(Debug, Clone)]
pub struct Keys(KeySpace);

impl Keys {
    /// The names of a cache with this prefix on database `db`.
    pub fn new(prefix: &str, db: i64) -> Self {
        Self(KeySpace::new(prefix, db))
    }

    /// `{prefix}:{namespace}:{key}`.
    pub fn value_key(&self, namespace: &str, key: &str) -> String {
        self.0.value_key(namespace, key)
    }

    /// The meta hash: version counter, epoch and namespace floors.
    pub fn meta_key(&self) -> String {
        self.0.meta_key().to_owned()
    }

    /// The invalidation log: the stream of recent messages, by version.
    pub fn log_key(&self) -> String {
        self.0.log_key()
    }

    /// The invalidation bus's channel.
    pub fn channel(&self) -> String {
        self.0.channel().to_owned()
    }

    /// The set of value keys written with `tag` in `namespace`.
    pub fn tag_key(&self, namespace: &str, tag: &str) -> String {
        self.0.tag_key(namespace, tag)
    }

    /// The namespace's tag registry (when each tag set expires; see `l2/multi.rs`).
    pub fn tag_registry_key(&self, namespace: &str) -> String {
        self.0.tag_registry_key(namespace)
    }

    /// The version and epoch of the tag's last invalidation.
    pub fn tag_floor_key(&self, namespace: &str, tag: &str) -> String {
        self.0.tag_floor_key(namespace, tag)
    }

    /// The fleet-wide load lock of a key.
    pub fn lock_key(&self, namespace: &str, key: &str) -> String {
        self.0.lock_key(namespace, key)
    }

    /// A `KEYS`/`SCAN` pattern matching every bookkeeping key of the prefix.
    pub fn bookkeeping_pattern(&self) -> String {
        self.0.bookkeeping_pattern()
    }

    /// The meta hash field holding a namespace's floor.
    pub fn floor_field(namespace: &str) -> String {
        KeySpace::floor_field(namespace)
    }
}

/// The field of an invalidation log entry (id `{version}-0`) that holds the message.
pub const LOG_FIELD: &str = crate::l2::log::FIELD;

/// The meta hash field holding the version counter.
pub const VERSION_FIELD: &str = KeySpace::VERSION_FIELD;
/// The meta hash field holding the counter's epoch.
pub const EPOCH_FIELD: &str = KeySpace::EPOCH_FIELD;

// ---------------------------------------------------------------------------------------------
// The bus.

/// The first byte of every bus message.
pub const BUS_MAGIC: u8 = wire::MAGIC;
/// The bus format this build publishes.
pub const BUS_FORMAT: u8 = wire::FORMAT;
/// The older bus format (no send time) this build still reads.
pub const BUS_FORMAT_1: u8 = wire::FORMAT_1;

/// A message as a write script would publish it, before the script splices in its version and
/// epoch (`wire::Outgoing`).
#[derive(Debug, Clone)]
pub struct Message(Outgoing);

impl Message {
    /// Invalidates the given keys of a namespace.
    pub fn keys(origin: u64, namespace: &str, keys: &[&str]) -> Self {
        Self(Outgoing::keys(origin, namespace, keys))
    }

    /// Invalidates a whole namespace.
    pub fn namespace(origin: u64, namespace: &str) -> Self {
        Self(Outgoing::namespace(origin, namespace))
    }

    /// A node's heartbeat, carrying its own clock reading.
    pub fn heartbeat(origin: u64, sent_ms: u64) -> Self {
        Self(Outgoing::heartbeat(origin, sent_ms))
    }

    /// The same message, stamped as sent at `sent_ms` (unix ms) instead of now.
    pub fn sent_at(self, sent_ms: u64) -> Self {
        Self(self.0.with_sent_ms(sent_ms))
    }

    /// The bytes published for this message at `version` and `epoch`.
    pub fn assemble(&self, version: u64, epoch: u64) -> Vec<u8> {
        self.0.assemble(version, epoch)
    }
}

/// What a received message invalidates (`wire::Scope`, owned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageScope {
    /// Keys of the message's namespace.
    Keys(Vec<String>),
    /// Keys of several namespaces (the message's own namespace is empty).
    Multi(Vec<(String, Vec<String>)>),
    /// The whole namespace.
    Namespace,
    /// A heartbeat, with the sender's own clock reading.
    Heartbeat {
        /// The sender's clock, unix ms.
        sent_ms: u64,
    },
}

/// A parsed bus message (`wire::Incoming`, owned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The node id of the writer.
    pub origin: u64,
    /// The write's version.
    pub version: u64,
    /// The incarnation of the version counter.
    pub epoch: u64,
    /// The publisher's wall clock when it built the message (`None` from format 1).
    pub sent_ms: Option<u64>,
    /// The namespace (empty for heartbeats and multi-namespace messages).
    pub namespace: String,
    /// What it invalidates.
    pub scope: MessageScope,
}

/// Parses a bus message as a subscriber does; `None` for anything it would call unreadable.
pub fn decode_message(bytes: &[u8]) -> Option<Decoded> {
    let m = wire::decode(bytes)?;
    let strings = |keys: &[&str]| keys.iter().map(|k| (*k).to_owned()).collect();
    let scope = match &m.scope {
        Scope::Keys(keys) => MessageScope::Keys(strings(keys)),
        Scope::Multi(sections) => MessageScope::Multi(
            sections
                .iter()
                .map(|(ns, keys)| ((*ns).to_owned(), strings(keys)))
                .collect(),
        ),
        Scope::Namespace => MessageScope::Namespace,
        Scope::Heartbeat { sent_ms } => MessageScope::Heartbeat { sent_ms: *sent_ms },
    };
    Some(Decoded {
        origin: m.origin,
        version: m.version,
        epoch: m.epoch,
        sent_ms: m.sent_ms,
        namespace: m.namespace.to_owned(),
        scope,
    })
}

// ---------------------------------------------------------------------------------------------
// The value envelope.

/// The first byte of every stored value.
pub const ENVELOPE_MAGIC: u8 = codec::MAGIC;
/// The envelope format this build writes and reads.
pub const ENVELOPE_FORMAT: u8 = codec::FORMAT;
/// Flag: an invalidated key.
pub const FLAG_TOMBSTONE: u8 = codec::FLAG_TOMBSTONE;
/// Flag: the payload is lz4-compressed.
pub const FLAG_COMPRESSED: u8 = codec::FLAG_COMPRESSED;
/// Flag: an expiry follows the header.
pub const FLAG_EXPIRY: u8 = codec::FLAG_EXPIRY;
/// Flag: a cached "not found".
pub const FLAG_ABSENT: u8 = codec::FLAG_ABSENT;
/// Flag: a source version follows the expiry (`set_if_newer`).
pub const FLAG_SOURCE: u8 = codec::FLAG_SOURCE;

/// The three bytes a client sends before the version: magic, `format`, `flags`.
pub fn envelope_head(format: u8, flags: u8) -> [u8; 3] {
    [codec::MAGIC, format, flags]
}

/// A whole envelope as Redis stores it: the head, the version the script splices in, the body.
pub fn envelope(format: u8, flags: u8, version: u64, body: &[u8]) -> Vec<u8> {
    [
        &envelope_head(format, flags)[..],
        &version.to_be_bytes(),
        body,
    ]
    .concat()
}

/// The flags of stored bytes, if they are long enough to have any.
pub fn envelope_flags(bytes: &[u8]) -> Option<u8> {
    envelope_flags_at(bytes).map(|at| bytes[at])
}

/// The flags of stored bytes, to forge an envelope from a real one.
pub fn envelope_flags_mut(bytes: &mut [u8]) -> Option<&mut u8> {
    envelope_flags_at(bytes).map(|at| &mut bytes[at])
}

/// Where the flags are: the last byte of the head (see [`envelope_head`]).
fn envelope_flags_at(bytes: &[u8]) -> Option<usize> {
    let at = envelope_head(0, 0).len() - 1;
    (at < bytes.len()).then_some(at)
}

/// Stored bytes read as the cache reads them, up to the (decompressed) payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    /// An invalidated key.
    Tombstone,
    /// A live entry.
    Value {
        /// The version of the write that stored it.
        version: u64,
        /// When it stops being fresh, unix ms.
        expires_ms: Option<u64>,
        /// The MessagePack payload, decompressed; `None` for a cached "not found".
        payload: Option<Vec<u8>>,
    },
}

impl Envelope {
    /// The version of a live entry.
    pub fn version(&self) -> Option<u64> {
        match self {
            Envelope::Value { version, .. } => Some(*version),
            Envelope::Tombstone => None,
        }
    }
}

/// Opens stored bytes; `Err` with the decode error's label (`foreign`, `unknown_format`, ...).
pub fn open_envelope(bytes: &[u8]) -> Result<Envelope, &'static str> {
    match codec::open(bytes).map_err(|e| e.kind())? {
        Opened::Tombstone => Ok(Envelope::Tombstone),
        Opened::Value {
            version,
            expires_ms,
            payload,
        } => Ok(Envelope::Value {
            version,
            expires_ms,
            payload: payload
                .bytes()
                .map_err(|e| e.kind())?
                .map(|p| p.into_owned()),
        }),
    }
}
