//! Where the L2 tier's connections go: one fixed server, or the primary Sentinel names,
//! asked again after a connection failure or a READONLY reply (the server was demoted) and
//! followed through failovers. A move is announced (`moves`), so the bus resubscribes on the
//! new primary and resyncs.

use super::connect::{client_for, ConnectionCensus, Pool, Tls};
use crate::config::Endpoint;
use crate::error::Error;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Client, ConnectionAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The connections to the current server.
pub(crate) struct Live {
    /// Where the bus's dedicated connections are opened from.
    pub(crate) client: Client,
    pool: Pool,
    /// The bus thread's own connection (see [`Live::pool`]), made there on first use.
    bus: std::sync::OnceLock<Option<Pool>>,
    timeouts: Timeouts,
    /// `host:port`, to tell a move from a reconnect.
    at: String,
}

thread_local! {
    static ON_BUS_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as the bus's (see `bus/runtime.rs`).
pub(crate) fn mark_bus_thread() {
    ON_BUS_THREAD.with(|on| on.set(true));
}

impl Live {
    /// `app`: the application's runtime, where `pool`'s managers are made (a manager runs
    /// its reconnects on the runtime it was made on), whichever thread found the server.
    fn new(
        client: Client,
        connections: usize,
        timeouts: Timeouts,
        app: Option<&tokio::runtime::Handle>,
    ) -> Result<Self, Error> {
        let pool = {
            let _on_app = app.map(tokio::runtime::Handle::enter);
            Pool::new(&client, connections, timeouts)?
        };
        Ok(Self {
            at: at(&client),
            pool,
            bus: std::sync::OnceLock::new(),
            timeouts,
            client,
        })
    }

    /// The connections a call made here takes. A connection runs on the runtime of the call
    /// that opened it, so the bus's thread has one of its own: a heartbeat or a resync must
    /// not wait on the application's runtime, which may be blocked.
    pub(crate) fn pool(&self) -> &Pool {
        if !ON_BUS_THREAD.with(std::cell::Cell::get) {
            return &self.pool;
        }
        // Made here, so whatever the manager starts runs on the bus's runtime too. The settings
        // were accepted for `pool` already; should they not be now, the bus shares `pool`.
        let made = (self.bus).get_or_init(|| {
            Pool::new(&self.client, 1, self.timeouts)
                .inspect_err(|e| {
                    tracing::warn!(target: "tiered_cache::l2", error = %e,
                        "the bus's own connection could not be made; it shares the pool's")
                })
                .ok()
        });
        made.as_ref().unwrap_or(&self.pool)
    }
}

/// (connect, response, longest reconnect delay) of a pooled connection.
type Timeouts = (Duration, Duration, Duration);

/// How often Sentinel is asked at most, however many calls fail.
const ASK_EVERY: Duration = Duration::from_millis(100);

pub(crate) struct Topology {
    live: RwLock<Option<Arc<Live>>>,
    sentinel: Option<Asker>,
    /// (connect, response, longest reconnect delay) of every pooled connection.
    timeouts: Timeouts,
    connections: usize,
    pub(crate) tls: Tls,
    moved: watch::Sender<u64>,
    /// The runtime the tier was opened on (the application's), if any.
    app: Option<tokio::runtime::Handle>,
}

struct Asker {
    client: tokio::sync::Mutex<SentinelClient>,
    last: Mutex<Option<Instant>>,
}

fn at(client: &Client) -> String {
    match client.get_connection_info().addr() {
        ConnectionAddr::Tcp(h, p)
        | ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => {
            format!("{h}:{p}")
        }
        other => format!("{other:?}"),
    }
}

impl Topology {
    /// One server, at `client`.
    pub(crate) fn fixed(
        client: Client,
        tls: Tls,
        endpoint: &Endpoint,
        reconnect_delay: Duration,
    ) -> Result<Self, Error> {
        let timeouts = timeouts(endpoint, reconnect_delay);
        let app = tokio::runtime::Handle::try_current().ok();
        let live = Live::new(client, endpoint.connections, timeouts, app.as_ref())?;
        Ok(Self {
            live: RwLock::new(Some(Arc::new(live))),
            sentinel: None,
            timeouts,
            connections: endpoint.connections,
            tls,
            moved: watch::channel(0).0,
            app,
        })
    }

    /// The primary of `master` behind the Sentinels at `nodes`; found on first use.
    pub(crate) fn sentinel(
        (nodes, master, db): (&[(String, u16)], &str, i64),
        tls: Tls,
        endpoint: &Endpoint,
        reconnect_delay: Duration,
    ) -> Result<Self, Error> {
        let secure = endpoint.wants_tls();
        let addrs = nodes.iter().map(|(host, port)| match secure {
            false => ConnectionAddr::Tcp(host.clone(), *port),
            true => ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: false,
                tls_params: None,
            },
        });
        let rejected = |e: redis::RedisError| {
            Error::Config(format!(
                "Sentinel settings for {} rejected: {e}",
                endpoint.describe()
            ))
        };
        let mut b = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
            .map_err(rejected)?
            .set_client_to_redis_db(db);
        if let Some(user) = &endpoint.username {
            b = b.set_client_to_redis_username(user);
        }
        if let Some(password) = &endpoint.password {
            b = b.set_client_to_redis_password(password.expose());
        }
        if let Some(password) = &endpoint.sentinel_password {
            b = b.set_client_to_sentinel_password(password.expose());
        }
        if secure {
            b = b
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
            #[cfg(feature = "tls")]
            if let Some(certs) = tls.certificates() {
                b = b
                    .set_client_to_redis_certificates(certs.clone())
                    .set_client_to_sentinel_certificates(certs);
            }
        }
        let client = b.build().map_err(rejected)?;
        Ok(Self {
            live: RwLock::new(None),
            sentinel: Some(Asker {
                client: tokio::sync::Mutex::new(client),
                last: Mutex::new(None),
            }),
            timeouts: timeouts(endpoint, reconnect_delay),
            connections: endpoint.connections,
            tls,
            moved: watch::channel(0).0,
            app: tokio::runtime::Handle::try_current().ok(),
        })
    }

    /// The current connections, without asking anyone.
    pub(crate) fn current(&self) -> Option<Arc<Live>> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The current connections; behind Sentinel, asked for first if none is known yet.
    pub(crate) async fn live(&self) -> Option<Arc<Live>> {
        if let Some(live) = self.current() {
            return Some(live);
        }
        self.rediscover().await;
        self.current()
    }

    /// After a failure that may mean the primary moved: asks Sentinel (at most every
    /// 100 ms) and, if it names another server, switches to it. True when the connections
    /// changed since `seen` (by this call or a concurrent one).
    pub(crate) async fn rediscover_from(&self, seen: Option<&Arc<Live>>) -> bool {
        if self.sentinel.is_none() {
            return false;
        }
        let moved_since = |now: &Option<Arc<Live>>| match (seen, now) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
            (None, Some(_)) => true,
            _ => false,
        };
        // Another call switched already: no need to ask again.
        if moved_since(&self.current()) {
            return true;
        }
        self.rediscover().await;
        moved_since(&self.current())
    }

    /// Follows Sentinel's decisions as they are made, until the task is aborted: subscribed
    /// to a Sentinel's `+switch-master`, the moment one picks a new primary this tier asks
    /// for it and switches; and once a second anyway, in case that subscription went quiet.
    /// A demoted primary stays writable until Sentinel reconfigures it, seconds later: waiting
    /// for its READONLY would let writes land where they are lost.
    pub(crate) async fn watch(&self) {
        let Some(asker) = &self.sentinel else { return };
        loop {
            let subscribe = async {
                let sentinel = asker
                    .client
                    .lock()
                    .await
                    .async_get_sentinel_client()
                    .await?;
                let mut pubsub = sentinel.get_async_pubsub().await?;
                pubsub.subscribe("+switch-master").await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            match tokio::time::timeout(self.timeouts.0, subscribe).await {
                Ok(Ok(mut pubsub)) => {
                    let mut switches = pubsub.on_message();
                    loop {
                        tokio::select! {
                            switch = futures_util::StreamExt::next(&mut switches) => {
                                let Some(_) = switch else { break };
                                self.forget_last_ask();
                                self.rediscover().await;
                            }
                            _ = tick.tick() => self.rediscover().await,
                        }
                    }
                }
                _ => {
                    self.rediscover().await;
                    tick.tick().await;
                    tick.tick().await;
                }
            }
        }
    }

    /// Lets the next ask through at once (Sentinel announced a switch).
    fn forget_last_ask(&self) {
        if let Some(asker) = &self.sentinel {
            *asker.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// Boxed, its type erased: every L2 call's future would otherwise carry Sentinel's, past
    /// what the compiler's auto-trait checks follow.
    fn rediscover(&self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(self.ask_sentinel())
    }

    async fn ask_sentinel(&self) {
        let Some(asker) = &self.sentinel else { return };
        let mut client = asker.client.lock().await;
        {
            let mut last = asker.last.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < ASK_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let asked = tokio::time::timeout(self.timeouts.0, client.async_get_client()).await;
        let found = match asked {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::warn!(target: "tiered_cache::l2", error = %e, "Sentinel named no reachable primary");
                return;
            }
            Err(_) => {
                tracing::warn!(target: "tiered_cache::l2", "Sentinel did not answer in time");
                return;
            }
        };
        // Rebuilt with this crate's TLS material, as every other client is.
        let found = match client_for(found.get_connection_info().clone(), &self.tls) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(target: "tiered_cache::l2", error = %e, "primary's settings rejected");
                return;
            }
        };
        let now = at(&found);
        if self.current().is_some_and(|live| live.at == now) {
            return;
        }
        let Ok(live) = Live::new(found, self.connections, self.timeouts, self.app.as_ref()) else {
            return;
        };
        let previous = (self.live.write().unwrap_or_else(|e| e.into_inner()))
            .replace(Arc::new(live))
            .map(|l| l.at.clone());
        // The first primary found is not a move: nothing was connected to another one.
        if previous.is_some() {
            tracing::warn!(target: "tiered_cache::l2", from = previous.as_deref(), to = %now,
                "Redis primary moved; following it");
            self.moved.send_modify(|n| *n += 1);
        }
    }

    /// Bumped at every switch to another server.
    pub(crate) fn moves(&self) -> watch::Receiver<u64> {
        self.moved.subscribe()
    }

    pub(crate) fn census(&self) -> ConnectionCensus {
        match self.current() {
            Some(live) => live.pool.census(),
            None => ConnectionCensus {
                configured: self.connections,
                ..Default::default()
            },
        }
    }

    /// The current server, `host:port`, if one is known.
    pub(crate) fn at(&self) -> Option<String> {
        self.current().map(|l| l.at.clone())
    }
}

fn timeouts(endpoint: &Endpoint, reconnect_delay: Duration) -> Timeouts {
    (
        endpoint.connect_timeout,
        endpoint.command_timeout,
        reconnect_delay,
    )
}
