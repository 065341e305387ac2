//! `Admin::watch`: a subscription to the invalidation bus, and each message as a
//! [`BusEvent`].

use crate::codec;
use crate::error::{Error, Result};
use crate::l2::admin::BusTap;
use crate::wire::{self, Scope};
use std::fmt;
use std::time::Duration;

/// A subscription to the invalidation bus, from [`Admin::watch`](crate::Admin::watch).
pub struct Watch {
    pub(super) tap: BusTap,
    pub(super) malformed: u64,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("malformed", &self.malformed)
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// The next message on the bus, heartbeats included. Messages that do not parse are
    /// skipped and counted ([`malformed`](Self::malformed)). `Err(Unavailable)` once the
    /// connection is lost.
    pub async fn next(&mut self) -> Result<BusEvent> {
        loop {
            let payload = self
                .tap
                .next()
                .await
                .ok_or_else(|| Error::unavailable("watch", None))?;
            match wire::decode(&payload) {
                Some(msg) => return Ok(BusEvent::from_message(&msg, codec::unix_ms())),
                None => self.malformed += 1,
            }
        }
    }

    /// The next invalidation (heartbeats skipped).
    pub async fn next_invalidation(&mut self) -> Result<BusEvent> {
        loop {
            let event = self.next().await?;
            if event.kind != BusEventKind::Heartbeat {
                return Ok(event);
            }
        }
    }

    /// Messages received that did not parse.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

/// What a bus message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusEventKind {
    /// Some keys of one namespace were written or invalidated.
    Keys,
    /// A whole namespace was invalidated.
    Namespace,
    /// Keys of several namespaces at once: a tag invalidation.
    Tag,
    /// A node's heartbeat (carries the current version; invalidates nothing).
    Heartbeat,
}

impl BusEventKind {
    /// A short lowercase name: `keys`, `namespace`, `tag`, `heartbeat`.
    pub fn as_str(self) -> &'static str {
        match self {
            BusEventKind::Keys => "keys",
            BusEventKind::Namespace => "namespace",
            BusEventKind::Tag => "tag",
            BusEventKind::Heartbeat => "heartbeat",
        }
    }
}

/// What one message invalidates in one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventTarget {
    /// The namespace.
    pub namespace: String,
    /// The keys; `None` for the whole namespace.
    pub keys: Option<Vec<String>>,
}

/// One message seen on the bus, from [`Watch::next`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusEvent {
    /// What it invalidates.
    pub kind: BusEventKind,
    /// The bus id of the node that published it.
    pub origin: u64,
    /// The version of the write (a heartbeat: the current version).
    pub version: u64,
    /// The incarnation of the version counter.
    pub epoch: u64,
    /// Per namespace, what it invalidates (empty for a heartbeat).
    pub targets: Vec<EventTarget>,
    /// When the publisher built it: its wall clock, unix milliseconds (a replayed write
    /// carries its replay time). `None` from a publisher of the older format without it.
    pub sent_ms: Option<u64>,
    /// When it was received here, unix milliseconds.
    pub received_ms: u64,
    /// `received_ms - sent_ms`: the invalidation's lag, as good as the clock sync between
    /// the publisher's host and this one. Zero when the publisher's clock is ahead; `None`
    /// without a send time.
    pub lag: Option<Duration>,
}

impl BusEvent {
    fn from_message(msg: &wire::Incoming<'_>, received_ms: u64) -> Self {
        let owned = |keys: &[&str]| keys.iter().map(|k| (*k).to_owned()).collect();
        let (kind, targets) = match &msg.scope {
            Scope::Keys(keys) => (
                BusEventKind::Keys,
                vec![EventTarget {
                    namespace: msg.namespace.to_owned(),
                    keys: Some(owned(keys)),
                }],
            ),
            Scope::Namespace => (
                BusEventKind::Namespace,
                vec![EventTarget {
                    namespace: msg.namespace.to_owned(),
                    keys: None,
                }],
            ),
            Scope::Multi(sections) => (
                BusEventKind::Tag,
                sections
                    .iter()
                    .map(|(ns, keys)| EventTarget {
                        namespace: (*ns).to_owned(),
                        keys: Some(owned(keys)),
                    })
                    .collect(),
            ),
            Scope::Heartbeat { .. } => (BusEventKind::Heartbeat, Vec::new()),
        };
        BusEvent {
            kind,
            origin: msg.origin,
            version: msg.version,
            epoch: msg.epoch,
            targets,
            sent_ms: msg.sent_ms,
            received_ms,
            lag: msg
                .sent_ms
                .map(|sent| Duration::from_millis(received_ms.saturating_sub(sent))),
        }
    }
}
