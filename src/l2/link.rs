//! The bus's dedicated connections, opened from the tier's own client, both RESP3: the
//! subscription to the invalidation channel (its messages pushed into a bounded buffer), and
//! the one that tracks writes made outside the library (`CLIENT TRACKING`). The bus tasks
//! drive them (see `bus/`); only this tier speaks Redis.
//!
//! Each open is bounded by the connect timeout and each command by the tier's timeout; a
//! failure comes back as a short reason for the log, and the caller reconnects.

use super::{no_primary, L2Tier};
use redis::{PushInfo, PushKind, Value};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// A confirmed subscription to the bus channel: nothing published from now on is missed, or
/// a loss is reported (see [`Delivery::Overflowed`]).
pub(crate) struct Subscription {
    pub(crate) messages: Messages,
    pub(crate) pinger: Pinger,
    /// Changes when the tier switches to another server: this subscription is then on the
    /// old one (a demoted primary still delivers what is published on it, which is nothing).
    pub(crate) moved: tokio::sync::watch::Receiver<u64>,
}

/// What a subscription delivered next.
pub(crate) enum Delivery {
    Message(Message),
    /// Messages were dropped, the buffer being full: `n` of them, since the last report.
    Overflowed(u64),
}

/// The messages of a subscription, in the order Redis delivered them. The connection's reader
/// hands them over through a buffer of at most `budget` bytes: beyond it, a message is
/// dropped and counted, so a flood (or a stalled subscriber) costs a resync, not memory.
pub(crate) struct Messages {
    rx: UnboundedReceiver<Vec<u8>>,
    buffer: Arc<Buffer>,
}

/// The bytes waiting in a subscription's buffer, and what was dropped.
struct Buffer {
    bytes: AtomicUsize,
    budget: usize,
    dropped: AtomicU64,
}

impl Messages {
    /// Messages dropped since the last report, and now reported.
    pub(crate) fn take_dropped(&self) -> u64 {
        self.buffer.dropped.swap(0, SeqCst)
    }

    /// The next message or loss; `None` once the connection is closed.
    pub(crate) async fn next(&mut self) -> Option<Delivery> {
        let dropped = self.take_dropped();
        if dropped > 0 {
            return Some(Delivery::Overflowed(dropped));
        }
        let payload = self.rx.recv().await?;
        self.buffer.bytes.fetch_sub(payload.len(), SeqCst);
        Some(Delivery::Message(Message(payload)))
    }
}

/// One message received on the bus channel.
pub(crate) struct Message(Vec<u8>);

impl Message {
    pub(crate) fn payload(&self) -> &[u8] {
        &self.0
    }
}

/// The connection's push handler: a message into the buffer if it fits, else counted as
/// dropped; the connection's end closes the buffer (by dropping the sender).
fn push_handler(
    tx: UnboundedSender<Vec<u8>>,
    buffer: Arc<Buffer>,
) -> impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static {
    let tx = std::sync::Mutex::new(Some(tx));
    move |push: PushInfo| {
        let mut tx = tx.lock().unwrap_or_else(|e| e.into_inner());
        match push.kind {
            PushKind::Disconnection => drop(tx.take()),
            PushKind::Message => {
                let Some(Value::BulkString(payload)) = push.data.into_iter().nth(1) else {
                    return Ok(());
                };
                let len = payload.len();
                if buffer.bytes.fetch_add(len, SeqCst) + len > buffer.budget {
                    buffer.bytes.fetch_sub(len, SeqCst);
                    buffer.dropped.fetch_add(1, SeqCst);
                } else if let Some(sender) = tx.as_ref() {
                    let _ = sender.send(payload);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Pings a subscription's connection, beside its message stream (a slow link must not hold
/// back the messages it does deliver).
pub(crate) struct Pinger(redis::aio::MultiplexedConnection);

impl Pinger {
    /// One PING, answered within `within`.
    pub(crate) async fn ping(&mut self, within: Duration) -> Result<(), String> {
        let ping = redis::cmd("PING");
        match tokio::time::timeout(within, ping.query_async::<Value>(&mut self.0)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("ping: {e}")),
            Err(_) => Err("ping timed out".to_string()),
        }
    }
}

/// What the tracking connection reported.
pub(crate) enum Tracked {
    /// Keys modified under the prefix, by anyone.
    Keys(Vec<String>),
    /// The whole keyspace was flushed.
    Flushed,
    /// The connection is gone.
    Lost(&'static str),
}

/// A RESP3 connection with `CLIENT TRACKING ON BCAST PREFIX` on.
pub(crate) struct Tracker {
    conn: redis::aio::MultiplexedConnection,
    pushes: UnboundedReceiver<PushInfo>,
}

impl Tracker {
    /// The next invalidation push (other pushes are skipped).
    pub(crate) async fn next(&mut self) -> Tracked {
        loop {
            match self.pushes.recv().await {
                None => return Tracked::Lost("push channel closed"),
                Some(p) if p.kind == PushKind::Disconnection => {
                    return Tracked::Lost("disconnected")
                }
                Some(p) if p.kind == PushKind::Invalidate => return keys_of(&p.data),
                Some(_) => {}
            }
        }
    }

    /// One PING on the tracking connection (bounded by its response timeout).
    pub(crate) async fn ping(&mut self) -> Result<(), String> {
        redis::cmd("PING")
            .query_async::<Value>(&mut self.conn)
            .await
            .map(drop)
            .map_err(|e| format!("ping: {e}"))
    }
}

/// A RESP reply as the tracking connection could receive it, read as an invalidation push
/// (`None`: not RESP). For the fuzz target (see `testing::fuzz`).
#[cfg(feature = "test-util")]
pub(crate) fn tracked_from_resp(bytes: &[u8]) -> Option<Tracked> {
    let data = match redis::parse_redis_value(bytes).ok()? {
        Value::Push { data, .. } | Value::Array(data) => data,
        other => vec![other],
    };
    Some(keys_of(&data))
}

/// An invalidation push: a list of keys, or null for a flush of everything.
fn keys_of(data: &[Value]) -> Tracked {
    let Some(Value::Array(keys)) = data.first() else {
        return Tracked::Flushed;
    };
    let keys = keys
        .iter()
        .filter_map(|key| match key {
            Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    Tracked::Keys(keys)
}

impl L2Tier {
    /// Opens a dedicated RESP3 connection and subscribes it to the bus channel, its messages
    /// buffered up to `budget` bytes; returns once Redis confirmed the subscription.
    pub(crate) async fn subscribe(&self, budget: usize) -> Result<Subscription, String> {
        // Taken first: a move from here on ends the subscription (see `Subscription::moved`).
        let mut moved = self.moves();
        moved.borrow_and_update();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let buffer = Arc::new(Buffer {
            bytes: AtomicUsize::new(0),
            budget,
            dropped: AtomicU64::new(0),
        });
        let mut conn = self
            // Each command here is bounded by its caller (the subscribe below, the pinger).
            .resp3(push_handler(tx, buffer.clone()), None)
            .await?;
        tokio::time::timeout(self.timeout, conn.subscribe(self.keys.channel()))
            .await
            .map_err(|_| "subscribe timed out".to_string())?
            .map_err(|e| format!("subscribe: {e}"))?;
        Ok(Subscription {
            messages: Messages { rx, buffer },
            pinger: Pinger(conn),
            moved,
        })
    }

    /// A RESP3 connection to the current server, its pushes handed to `pushes`; each command
    /// answered within `response`, if given.
    async fn resp3(
        &self,
        pushes: impl redis::aio::AsyncPushSender,
        response: Option<Duration>,
    ) -> Result<redis::aio::MultiplexedConnection, String> {
        let live = (self.topology.live().await).ok_or_else(|| no_primary().to_string())?;
        let info = live.client.get_connection_info().clone();
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let client = super::connect::client_for(info.set_redis_settings(resp3), &self.topology.tls)
            .map_err(|e| format!("RESP3 connection settings rejected: {e}"))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(response)
            .set_push_sender(pushes);
        tokio::time::timeout(
            self.connect_timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))
    }

    /// Opens a RESP3 connection to the same server and turns broadcast tracking on for every
    /// key under `prefix`; returns once Redis accepted it.
    pub(crate) async fn track(&self, prefix: &str) -> Result<Tracker, String> {
        let (tx, pushes) = tokio::sync::mpsc::unbounded_channel();
        let mut conn = self.resp3(tx, Some(self.timeout)).await?;
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("PREFIX")
            .arg(prefix)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| format!("CLIENT TRACKING: {e}"))?;
        Ok(Tracker { conn, pushes })
    }
}
