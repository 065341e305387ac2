//! The bus's dedicated connections, opened from the tier's own client: the pub/sub
//! subscription to the invalidation channel, and the RESP3 connection that tracks writes made
//! outside the library (`CLIENT TRACKING`). The bus tasks drive them (see `bus/`); only this
//! tier speaks Redis.
//!
//! Each open is bounded by the connect timeout and each command by the tier's timeout; a
//! failure comes back as a short reason for the log, and the caller reconnects.

use super::{no_primary, L2Tier};
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::{PushInfo, PushKind, Value};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

/// A confirmed subscription to the bus channel: nothing published from now on is missed.
pub(crate) struct Subscription {
    pub(crate) messages: Messages,
    pub(crate) pinger: Pinger,
    /// Changes when the tier switches to another server: this subscription is then on the
    /// old one (a demoted primary still delivers what is published on it, which is nothing).
    pub(crate) moved: tokio::sync::watch::Receiver<u64>,
}

/// The messages of a subscription, in the order Redis delivered them.
pub(crate) struct Messages(PubSubStream);

impl Messages {
    /// The next message; `None` once the connection is closed.
    pub(crate) async fn next(&mut self) -> Option<Message> {
        self.0.next().await.map(Message)
    }
}

/// One message received on the bus channel.
pub(crate) struct Message(redis::Msg);

impl Message {
    pub(crate) fn payload(&self) -> &[u8] {
        self.0.get_payload_bytes()
    }
}

/// Pings a subscription's connection, beside its message stream (a slow link must not hold
/// back the messages it does deliver).
pub(crate) struct Pinger(PubSubSink);

impl Pinger {
    /// One PING, answered within `within`.
    pub(crate) async fn ping(&mut self, within: Duration) -> Result<(), String> {
        match tokio::time::timeout(within, self.0.ping::<Value>()).await {
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
    /// Opens a dedicated pub/sub connection and subscribes it to the bus channel; returns once
    /// Redis confirmed the subscription.
    pub(crate) async fn subscribe(&self) -> Result<Subscription, String> {
        // Taken first: a move from here on ends the subscription (see `Subscription::moved`).
        let mut moved = self.moves();
        moved.borrow_and_update();
        let live = (self.topology.live().await).ok_or_else(|| no_primary().to_string())?;
        let pubsub = tokio::time::timeout(self.connect_timeout, live.client.get_async_pubsub())
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sink, stream) = pubsub.split();
        tokio::time::timeout(self.timeout, sink.subscribe(self.keys.channel()))
            .await
            .map_err(|_| "subscribe timed out".to_string())?
            .map_err(|e| format!("subscribe: {e}"))?;
        Ok(Subscription {
            messages: Messages(stream),
            pinger: Pinger(sink),
            moved,
        })
    }

    /// Opens a RESP3 connection to the same server and turns broadcast tracking on for every
    /// key under `prefix`; returns once Redis accepted it.
    pub(crate) async fn track(&self, prefix: &str) -> Result<Tracker, String> {
        let live = (self.topology.live().await).ok_or_else(|| no_primary().to_string())?;
        let info = live.client.get_connection_info().clone();
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let client = super::connect::client_for(info.set_redis_settings(resp3), &self.topology.tls)
            .map_err(|e| format!("tracking connection settings rejected: {e}"))?;
        let (tx, pushes) = tokio::sync::mpsc::unbounded_channel();
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.timeout))
            .set_push_sender(tx);
        let mut conn = tokio::time::timeout(
            self.connect_timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
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
