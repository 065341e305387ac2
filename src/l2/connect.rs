//! Opening Redis: the client built from the resolved connection settings (address,
//! credentials, TLS), and the pool of multiplexed connections the tier's calls are spread over.

use super::topology::Topology;
use crate::config::{redact_url, Address, Endpoint};
use crate::error::Error;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// The CA bundle and client identity, kept to open more connections to the same server.
#[derive(Clone, Default)]
pub(crate) struct Tls {
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl Tls {
    /// For redis-rs's own TLS setup (Sentinel's clients), if there is any material.
    #[cfg(feature = "tls")]
    pub(crate) fn certificates(&self) -> Option<redis::TlsCertificates> {
        if self.ca.is_none() && self.identity.is_none() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: (self.identity.clone()).map(|(client_cert, client_key)| {
                redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                }
            }),
            root_cert: self.ca.clone(),
        })
    }
}

/// Where the tier's connections go for `endpoint`, and the database its keys live in.
pub(crate) fn open(
    endpoint: &Endpoint,
    reconnect_delay: Duration,
) -> Result<(Topology, i64), Error> {
    let where_ = endpoint.describe();
    if endpoint.wants_tls() && !cfg!(feature = "tls") {
        return Err(Error::Config(format!(
            "{where_} needs TLS, but tiered-cache was built without its `tls` feature"
        )));
    }
    let tls = Tls {
        ca: endpoint.ca.clone(),
        identity: endpoint.identity.clone(),
    };
    if let Address::Sentinel { nodes, master, db } = &endpoint.address {
        let topology = Topology::sentinel((nodes, master, *db), tls, endpoint, reconnect_delay)?;
        return Ok((topology, *db));
    }
    let info = connection_info(endpoint).map_err(Error::Config)?;
    let client = client_for(info, &tls)
        .map_err(|e| Error::Config(format!("redis settings for {where_} rejected: {e}")))?;
    let db = client.get_connection_info().redis_settings().db();
    Ok((Topology::fixed(client, tls, endpoint, reconnect_delay)?, db))
}

/// A client for `info`, with the CA bundle and client identity if there are any.
pub(crate) fn client_for(info: ConnectionInfo, tls: &Tls) -> redis::RedisResult<Client> {
    #[cfg(feature = "tls")]
    if tls.ca.is_some() || tls.identity.is_some() {
        let certs = redis::TlsCertificates {
            client_tls: (tls.identity.clone()).map(|(client_cert, client_key)| {
                redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                }
            }),
            root_cert: tls.ca.clone(),
        };
        return Client::build_with_tls(info, certs);
    }
    let _ = tls;
    Client::open(info)
}

/// The redis-rs connection info: the URL parsed, or the parts assembled; then TLS and the
/// credentials given apart from the URL, each refused if the URL says otherwise.
fn connection_info(endpoint: &Endpoint) -> Result<ConnectionInfo, String> {
    let where_ = endpoint.describe();
    let mut info = match &endpoint.address {
        Address::Url(url) => url
            .expose()
            .into_connection_info()
            .map_err(|e| format!("redis URL {} is not valid: {e}", redact_url(url.expose())))?,
        Address::Parts { host, port, db } => (ConnectionAddr::Tcp(host.clone(), *port))
            .into_connection_info()
            .map_err(|e| format!("redis address {where_} is not valid: {e}"))?
            .set_redis_settings(RedisConnectionInfo::default().set_db(*db)),
        Address::Sentinel { .. } => unreachable!("opened through Sentinel"),
    };
    let addr = match (info.addr().clone(), endpoint.tls) {
        (ConnectionAddr::Tcp(host, port), Some(true)) => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: false,
            tls_params: None,
        },
        (ConnectionAddr::TcpTls { .. }, Some(false)) => {
            return Err(format!(
                "{where_} is a TLS URL, but TLS is turned off (REDIS_SSL=false or redis_tls(false))"
            ))
        }
        (ConnectionAddr::Unix(_), Some(true)) => {
            return Err(format!(
                "{where_} is a unix socket: TLS cannot be turned on for it"
            ))
        }
        (addr, _) => addr,
    };
    let tls_files = endpoint.ca.is_some() || endpoint.identity.is_some();
    if tls_files && !matches!(addr, ConnectionAddr::TcpTls { .. }) {
        return Err(format!(
            "a TLS CA bundle or client certificate is set, but {where_} is not a TLS connection \
             (use a rediss:// URL, REDIS_SSL=true or redis_tls(true))"
        ));
    }
    info = info.set_addr(addr);
    let mut redis = info.redis_settings().clone();
    if let Some(user) = &endpoint.username {
        if redis.username().is_some_and(|u| u != user) {
            return Err(format!(
                "the Redis user is given twice, in the URL and apart from it ({where_})"
            ));
        }
        redis = redis.set_username(user);
    }
    if let Some(password) = &endpoint.password {
        if redis.password().is_some_and(|p| p != password.expose()) {
            return Err(format!(
                "the Redis password is given twice, in the URL and apart from it ({where_})"
            ));
        }
        redis = redis.set_password(password.expose());
    }
    Ok(info.set_redis_settings(redis))
}

/// How a pooled connection's last call went.
const UNUSED: u8 = 0;
const OPEN: u8 = 1;
const FAILING: u8 = 2;

/// The multiplexed connections calls are spread over, each re-opened by its manager after a
/// failure; one is picked per call, in turn.
pub(crate) struct Pool {
    conns: Vec<ConnectionManager>,
    state: Vec<AtomicU8>,
    next: AtomicUsize,
}

/// How the pooled connections stand, by their last call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionCensus {
    /// Connections configured (`redis_connections`).
    pub configured: usize,
    /// Whose last call was answered.
    pub open: usize,
    /// Whose last call failed at the connection level: re-opened on their next call.
    pub reconnecting: usize,
}

impl Pool {
    /// `n` connections, each opened on first use.
    pub(crate) fn new(
        client: &Client,
        n: usize,
        (connect, response, max_delay): (Duration, Duration, Duration),
    ) -> Result<Self, Error> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(response))
            // Reconnection is retried per call, under our own breaker, rather than inside
            // one long-lived future every caller would queue behind.
            .set_number_of_retries(1)
            .set_max_delay(max_delay);
        let conns = (0..n)
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Config(format!("redis connection settings rejected: {e}")))?;
        Ok(Self {
            state: (0..n).map(|_| AtomicU8::new(UNUSED)).collect(),
            conns,
            next: AtomicUsize::new(0),
        })
    }

    /// The next connection in turn, and its index for [`record`](Self::record).
    pub(crate) fn pick(&self) -> (usize, ConnectionManager) {
        let i = match self.conns.len() {
            1 => 0,
            n => self.next.fetch_add(1, Relaxed) % n,
        };
        (i, self.conns[i].clone())
    }

    /// Notes whether connection `i`'s last call was answered, or failed at the connection
    /// level so its manager re-opens it (a call that timed out is not noted).
    pub(crate) fn record(&self, i: usize, answered: bool) {
        self.state[i].store(if answered { OPEN } else { FAILING }, Relaxed);
    }

    pub(crate) fn census(&self) -> ConnectionCensus {
        let count = |s| self.state.iter().filter(|a| a.load(Relaxed) == s).count();
        ConnectionCensus {
            configured: self.conns.len(),
            open: count(OPEN),
            reconnecting: count(FAILING),
        }
    }
}
