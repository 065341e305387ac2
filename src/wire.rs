//! The invalidation bus's wire format: what a write script publishes and a subscriber parses.
//! Builds and parses bytes only; imports nothing but the clock its send time is read from.
//!
//! Messages are published by the L2 write scripts (see `l2.rs`), so a write and its broadcast
//! are one atomic step. Layout, all integers big-endian:
//!
//! ```text
//! 0      0xC1     magic          1      1        format
//! 2      kind     0 keys, 1 whole namespace, 2 heartbeat (then 8 bytes: the sender's clock)
//! 3-10   origin   node id of the writer (a node skips its own messages: its L1 is already right)
//! 11-18  version  the write's version, spliced in by the script
//! 19-26  epoch    the incarnation of Redis's version counter (see `l2.rs`)
//! 27-34  sent     the publisher's wall clock when it built the message, unix ms
//! 35-36  ns len   then the namespace's bytes
//! ...    count    u32, then per key: u32 length and the key's bytes
//! ```
//!
//! `sent` feeds the invalidation lag metric only (receiver's wall clock minus `sent`): it is
//! as good as the clock sync between nodes, and never decides what is applied. A message the
//! outbox replays is built at replay time and carries that time.
//!
//! Format 1 (before the send time) is still read, without a lag sample. A format 1 node reads
//! format 2 as unreadable and resynchronises on every message, heartbeats included: safe, but
//! its L1 is as good as off until it is upgraded, so upgrade a fleet's nodes together.
//!
//! Kind 3 (keys of several namespaces, one tag invalidation: see `l2/multi.rs`) has an empty
//! namespace, then a u16 count of sections, each a u16-length namespace and a key list as above.
//! Its script appends the sections after the tail it is handed, so the send time (built here,
//! into the tail) sits at the same offset as in every other kind.
//! A node older than kind 3 reads it as unreadable and resynchronises: safe, if costly.

use crate::codec::unix_ms;

pub(crate) const MAGIC: u8 = 0xC1;
pub(crate) const FORMAT: u8 = 2;
/// The format before the send time: still read (without a lag sample), so nodes of this
/// version tolerate older ones during a rolling upgrade.
pub(crate) const FORMAT_1: u8 = 1;
const KIND_KEYS: u8 = 0;
const KIND_NAMESPACE: u8 = 1;
const KIND_HEARTBEAT: u8 = 2;
const KIND_MULTI: u8 = 3;
const VERSION_AT: usize = 11;

/// The most bytes a message the library publishes may take, far below Redis's default
/// `client-output-buffer-limit pubsub 32mb 8mb 60`, over which Redis drops every subscriber: a
/// key list longer than this is sent as several messages (see [`key_chunks`]), each with its
/// own version. A single key longer than this still goes out, alone.
pub(crate) const MAX_MESSAGE: usize = 256 * 1024;

/// What identifies a message: its first bytes, up to and with the send time (kind, origin,
/// version, epoch, send time). The invalidation log keeps this much of a message too large
/// to keep whole (the scripts spell the length: see `l2/scripts.rs`).
pub(crate) const HEADER: usize = VERSION_AT + 16 + 8;

/// What a message takes before its key list: the header, the send time, the namespace and
/// the count (a multi message's section head and count are budgeted per key list the same way).
const ENVELOPE: usize = VERSION_AT + 16 + 8 + 2 + 4 + 2;

/// Splits `keys` into runs whose message (in `namespace`) fits [`MAX_MESSAGE`], in order.
pub(crate) fn key_chunks<'a, K: AsRef<str>>(namespace: &str, keys: &'a [K]) -> Vec<&'a [K]> {
    split_by_size(keys, MAX_MESSAGE - ENVELOPE - namespace.len(), |k| {
        4 + k.as_ref().len()
    })
}

/// Splits `items` into consecutive runs of at most `budget` bytes as `size` counts them; an item
/// over the budget alone makes a run of its own.
fn split_by_size<T>(items: &[T], budget: usize, size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut runs = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let n = size(item);
        if i > start && used + n > budget {
            runs.push(&items[start..i]);
            (start, used) = (i, 0);
        }
        used += n;
    }
    if start < items.len() || items.is_empty() {
        runs.push(&items[start..]);
    }
    runs
}

/// A message to publish, split around the version and epoch the script will splice in.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl Outgoing {
    /// Invalidates the given keys of a namespace.
    pub(crate) fn keys(origin: u64, namespace: &str, keys: &[&str]) -> Self {
        let mut tail = Self::tail_start(namespace);
        tail.extend_from_slice(&(keys.len() as u32).to_be_bytes());
        for k in keys {
            tail.extend_from_slice(&(k.len() as u32).to_be_bytes());
            tail.extend_from_slice(k.as_bytes());
        }
        Self {
            head: Self::head_bytes(KIND_KEYS, origin),
            tail,
        }
    }

    /// Invalidates a whole namespace.
    pub(crate) fn namespace(origin: u64, namespace: &str) -> Self {
        Self {
            head: Self::head_bytes(KIND_NAMESPACE, origin),
            tail: Self::tail_start(namespace),
        }
    }

    /// A node's heartbeat: carries the current version, so a receiver behind it knows it has
    /// missed a message even when no write follows; and the sender's own clock reading when it
    /// sent it, so the sender, receiving it back in sequence, knows how fresh its L1 is.
    pub(crate) fn heartbeat(origin: u64, sent_ms: u64) -> Self {
        let mut tail = Self::tail_start("");
        tail.extend_from_slice(&sent_ms.to_be_bytes());
        Self {
            head: Self::head_bytes(KIND_HEARTBEAT, origin),
            tail,
        }
    }

    /// Keys of several namespaces, listed by the script that publishes it (a tag
    /// invalidation): after this tail it appends a u16 count of sections, and per namespace
    /// that has keys, its [`section_head`](Self::section_head) and its key list.
    pub(crate) fn multi(origin: u64) -> Self {
        Self {
            head: Self::head_bytes(KIND_MULTI, origin),
            tail: Self::tail_start(""),
        }
    }

    /// What precedes a namespace's key list in a [`multi`](Self::multi) message.
    pub(crate) fn section_head(namespace: &str) -> Vec<u8> {
        let mut t = Vec::with_capacity(2 + namespace.len());
        t.extend_from_slice(&(namespace.len() as u16).to_be_bytes());
        t.extend_from_slice(namespace.as_bytes());
        t
    }

    fn head_bytes(kind: u8, origin: u64) -> Vec<u8> {
        let mut h = Vec::with_capacity(VERSION_AT);
        h.extend_from_slice(&[MAGIC, FORMAT, kind]);
        h.extend_from_slice(&origin.to_be_bytes());
        h
    }

    /// The send time, then the namespace.
    fn tail_start(namespace: &str) -> Vec<u8> {
        let mut t = Vec::with_capacity(8 + 2 + namespace.len() + 4);
        t.extend_from_slice(&unix_ms().to_be_bytes());
        t.extend_from_slice(&Self::section_head(namespace));
        t
    }

    /// The same message, stamped as sent at `sent_ms` instead of when it was built.
    #[cfg(feature = "test-util")]
    pub(crate) fn with_sent_ms(mut self, sent_ms: u64) -> Self {
        // The tail starts with the send time (see `tail_start`).
        self.tail[..8].copy_from_slice(&sent_ms.to_be_bytes());
        self
    }

    /// The bytes this message takes besides what a script appends to it (a multi message's
    /// sections): its head, version, epoch and tail, and the section count.
    pub(crate) fn overhead(&self) -> usize {
        self.head.len() + 16 + self.tail.len() + 2
    }

    pub(crate) fn head(&self) -> &[u8] {
        &self.head
    }

    pub(crate) fn tail(&self) -> &[u8] {
        &self.tail
    }

    /// The message as published at `version` and `epoch` (what the script's splice yields).
    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn assemble(&self, version: u64, epoch: u64) -> Vec<u8> {
        [
            &self.head[..],
            &version.to_be_bytes(),
            &epoch.to_be_bytes(),
            &self.tail,
        ]
        .concat()
    }
}

/// What a received message invalidates.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scope<'a> {
    Keys(Vec<&'a str>),
    /// Keys of several namespaces (the message's own namespace is empty).
    Multi(Vec<(&'a str, Vec<&'a str>)>),
    Namespace,
    /// `sent_ms` is on the sender's own clock: meaningful to the sender only.
    Heartbeat {
        sent_ms: u64,
    },
}

/// A parsed message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Incoming<'a> {
    pub(crate) origin: u64,
    pub(crate) version: u64,
    pub(crate) epoch: u64,
    /// The publisher's wall clock when it built the message, unix ms (`None` from a format 1
    /// publisher, which did not send it).
    pub(crate) sent_ms: Option<u64>,
    pub(crate) namespace: &'a str,
    pub(crate) scope: Scope<'a>,
}

/// Parses a message; `None` for anything malformed. Never panics.
pub(crate) fn decode(bytes: &[u8]) -> Option<Incoming<'_>> {
    let mut r = Reader(bytes);
    let format = match r.take(2)? {
        [MAGIC, f @ (FORMAT_1 | FORMAT)] => *f,
        _ => return None,
    };
    let kind = r.take(1)?[0];
    let origin = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let version = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let epoch = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let sent_ms = if format == FORMAT_1 {
        None
    } else {
        Some(u64::from_be_bytes(r.take(8)?.try_into().ok()?))
    };
    let ns_len = u16::from_be_bytes(r.take(2)?.try_into().ok()?) as usize;
    let namespace = std::str::from_utf8(r.take(ns_len)?).ok()?;
    let scope = match kind {
        KIND_NAMESPACE => Scope::Namespace,
        KIND_HEARTBEAT => Scope::Heartbeat {
            sent_ms: u64::from_be_bytes(r.take(8)?.try_into().ok()?),
        },
        KIND_KEYS => Scope::Keys(r.keys()?),
        KIND_MULTI if namespace.is_empty() => {
            let count = u16::from_be_bytes(r.take(2)?.try_into().ok()?) as usize;
            // Each section needs at least 6 bytes: bounds the allocation by the input.
            if count > r.0.len() / 6 {
                return None;
            }
            let mut sections = Vec::with_capacity(count);
            for _ in 0..count {
                let len = u16::from_be_bytes(r.take(2)?.try_into().ok()?) as usize;
                let ns = std::str::from_utf8(r.take(len)?).ok()?;
                sections.push((ns, r.keys()?));
            }
            Scope::Multi(sections)
        }
        _ => return None,
    };
    r.0.is_empty().then_some(Incoming {
        origin,
        version,
        epoch,
        sent_ms,
        namespace,
        scope,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    /// A key list: u32 count, then per key a u32 length and its bytes.
    fn keys(&mut self) -> Option<Vec<&'a str>> {
        let count = self.u32()? as usize;
        // Each key needs at least its 4-byte length: bounds the allocation by the input.
        if count > self.0.len() / 4 {
            return None;
        }
        let mut keys = Vec::with_capacity(count);
        for _ in 0..count {
            let len = self.u32()? as usize;
            keys.push(std::str::from_utf8(self.take(len)?).ok()?);
        }
        Some(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lists_are_split_below_the_cap_in_order() {
        let keys: Vec<String> = (0..40_000).map(|i| format!("account:{i:08}")).collect();
        let chunks = key_chunks("positions", &keys);
        assert!(
            chunks.len() > 1,
            "{} bytes of keys in one message",
            keys.len() * 20
        );
        for c in &chunks {
            let refs: Vec<&str> = c.iter().map(String::as_str).collect();
            let bytes = Outgoing::keys(1, "positions", &refs).assemble(1, 1).len();
            assert!(bytes <= MAX_MESSAGE, "a {bytes}-byte message");
        }
        assert_eq!(chunks.concat(), keys, "keys lost or reordered");
        let huge = ["x".repeat(MAX_MESSAGE), "a".into(), "b".into()];
        let runs = key_chunks("n", &huge);
        assert_eq!(runs.iter().map(|r| r.len()).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            key_chunks::<&str>("n", &[]).len(),
            1,
            "an empty list is one (empty) message"
        );
    }

    #[test]
    fn keys_round_trip() {
        let before = unix_ms();
        let m = Outgoing::keys(7, "rate", &["CNGN:USD", "", "é"]).assemble(42, 5);
        let after = unix_ms();
        let d = decode(&m).unwrap();
        let sent = d.sent_ms.unwrap();
        assert!(
            (before..=after).contains(&sent),
            "send time {sent} not within [{before}, {after}]"
        );
        assert_eq!(
            d,
            Incoming {
                origin: 7,
                version: 42,
                epoch: 5,
                sent_ms: d.sent_ms,
                namespace: "rate",
                scope: Scope::Keys(vec!["CNGN:USD", "", "é"])
            }
        );
    }

    #[test]
    fn every_kind_carries_its_send_time_after_the_epoch() {
        let before = unix_ms();
        let messages = [
            Outgoing::keys(7, "rate", &["a"]).assemble(1, 5),
            Outgoing::namespace(7, "rate").assemble(2, 5),
            Outgoing::heartbeat(7, 77).assemble(3, 5),
            multi_message(7, 4, &[("rate", &["a"])]),
        ];
        let after = unix_ms();
        for m in &messages {
            assert_eq!(m[1], 2, "format");
            let at = u64::from_be_bytes(m[27..35].try_into().unwrap());
            assert!((before..=after).contains(&at), "kind {}: {at}", m[2]);
            assert_eq!(decode(m).unwrap().sent_ms, Some(at));
        }
    }

    #[test]
    fn a_format_1_message_is_read_without_a_send_time() {
        // Format 1 is format 2 without the 8 bytes of send time after the epoch.
        let mut m = Outgoing::keys(7, "rate", &["a", "b"]).assemble(1, 5);
        m[1] = 1;
        m.drain(27..35);
        let d = decode(&m).unwrap();
        assert_eq!(
            (d.sent_ms, d.version, d.namespace, d.scope),
            (None, 1, "rate", Scope::Keys(vec!["a", "b"]))
        );
        m[1] = 3;
        assert!(decode(&m).is_none(), "an unknown format is unreadable");
    }

    #[test]
    fn namespace_round_trip() {
        let m = Outgoing::namespace(1, "quote").assemble(3, 5);
        assert_eq!(decode(&m).unwrap().scope, Scope::Namespace);
        let h = Outgoing::heartbeat(1, 77).assemble(9, 5);
        let h = decode(&h).unwrap();
        assert_eq!(
            (h.scope, h.version, h.namespace),
            (Scope::Heartbeat { sent_ms: 77 }, 9, "")
        );
    }

    /// A kind 3 message as the tag invalidation script builds it.
    fn multi_message(origin: u64, version: u64, sections: &[(&str, &[&str])]) -> Vec<u8> {
        let mut m = Outgoing::multi(origin).assemble(version, 5);
        m.extend_from_slice(&(sections.len() as u16).to_be_bytes());
        for (ns, keys) in sections {
            m.extend(Outgoing::section_head(ns));
            m.extend_from_slice(&(keys.len() as u32).to_be_bytes());
            for k in *keys {
                m.extend_from_slice(&(k.len() as u32).to_be_bytes());
                m.extend_from_slice(k.as_bytes());
            }
        }
        m
    }

    #[test]
    fn multi_round_trip_and_malformed() {
        let m = multi_message(7, 42, &[("rate", &["a", "b:c"]), ("quote", &["é"])]);
        let d = decode(&m).unwrap();
        assert_eq!((d.origin, d.version, d.namespace), (7, 42, ""));
        assert_eq!(
            d.scope,
            Scope::Multi(vec![("rate", vec!["a", "b:c"]), ("quote", vec!["é"])])
        );
        let empty = multi_message(7, 43, &[]);
        assert_eq!(decode(&empty).unwrap().scope, Scope::Multi(vec![]));
        for n in 0..m.len() {
            assert!(decode(&m[..n]).is_none(), "prefix of {n} bytes accepted");
        }
        let mut trailing = m.clone();
        trailing.push(0);
        assert!(decode(&trailing).is_none());
        let mut huge = empty.clone();
        let at = huge.len() - 2;
        huge[at..].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(decode(&huge).is_none());
        for i in 0..m.len() {
            let mut bad = m.clone();
            bad[i] ^= 0xff;
            let _ = decode(&bad);
        }
    }

    #[test]
    fn malformed_messages_are_rejected_without_panic() {
        let good = Outgoing::keys(7, "rate", &["a", "bc"]).assemble(42, 5);
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_none(), "prefix of {n} bytes accepted");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode(&trailing).is_none());
        let mut huge = Outgoing::keys(7, "rate", &[]).assemble(1, 5);
        let at = huge.len() - 4;
        huge[at..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&huge).is_none());
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xff;
            let _ = decode(&bad);
        }
    }
}
