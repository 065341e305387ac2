//! How the cache reaches Redis: the address (a URL, or host, port and database), credentials,
//! TLS, the number of connections and the timeouts. Each comes from the builder or, where the
//! builder was not given it, from the environment (`REDIS_*`, see `docs/configuration.md`);
//! `build()` resolves and checks them together. Secrets are held so that no `Debug` or error
//! message can print them.

use std::path::PathBuf;
use std::time::Duration;

/// A password, or a URL that may hold one: printed as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `url` with its credentials hidden: the password of the user part (everything up to the last
/// `@`, since a password that should have been percent-encoded may hold `/ # ? @`) and any
/// `pass`/`password` query value (unix-socket URLs) become `***`; a URL with an `@` after a
/// `?` is shown as its scheme alone. Safe to print.
///
/// ```
/// use tiered_cache::config::redact_url;
/// assert_eq!(redact_url("rediss://app:s3cr%40t@db:6380/2"), "rediss://app:***@db:6380/2");
/// assert_eq!(redact_url("redis://:pa/ss@db"), "redis://:***@db");
/// assert_eq!(redact_url("unix:///run/redis.sock?pass=x"), "unix:///run/redis.sock?pass=***");
/// assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
/// assert_eq!(redact_url("unix:///s.sock?password=ab@cd"), "unix://<redacted>");
/// assert_eq!(redact_url("redis://:pa?ss@db"), "redis://<redacted>");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        // Not a URL: it may be anything, a password pasted in the wrong place included.
        return "<not a URL>".to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end);
    if rest
        .split_once('?')
        .is_some_and(|(_, query)| query.contains('@'))
    {
        // A password in the user part holding `?`, or a query value holding `@`: no split
        // of this text can be trusted to show one without the other.
        return format!("{scheme}<redacted>");
    }
    let (user, rest) = match rest.rfind('@') {
        Some(at) => {
            let user = &rest[..at];
            let shown = match user.find(':') {
                Some(colon) => format!("{}:***@", &user[..colon]),
                // A lone user part may be a password (some clients read `redis://secret@host`
                // as one): hide it too.
                None => "***@".to_owned(),
            };
            (shown, &rest[at + 1..])
        }
        None => (String::new(), rest),
    };
    let rest = match rest.split_once('?') {
        None => rest.to_owned(),
        Some((path, query)) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _))
                        if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
                    {
                        format!("{k}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", pairs.join("&"))
        }
    };
    format!("{scheme}{user}{rest}")
}

/// PEM bytes given in code, or a file read by `build()`.
#[derive(Clone)]
pub(crate) enum Pem {
    Bytes(Vec<u8>),
    File(PathBuf),
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pem::Bytes(b) => write!(f, "<{} bytes of PEM>", b.len()),
            Pem::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Pem {
    fn read(&self, what: &str) -> Result<Vec<u8>, String> {
        match self {
            Pem::Bytes(b) => Ok(b.clone()),
            Pem::File(path) => std::fs::read(path)
                .map_err(|e| format!("{what}: cannot read {}: {e}", path.display())),
        }
    }
}

/// The connection settings given to the builder; `None` means "not given in code".
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnectionSettings {
    pub(crate) url: Option<Secret>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Secret>,
    pub(crate) tls: Option<bool>,
    pub(crate) ca: Option<Pem>,
    pub(crate) identity: Option<(Pem, Pem)>,
    pub(crate) connections: Option<usize>,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) command_timeout: Option<Duration>,
    pub(crate) sentinel_password: Option<Secret>,
}

/// Where Redis is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Address {
    Url(Secret),
    Parts {
        host: String,
        port: u16,
        db: i64,
    },
    /// The primary of `master`, as the Sentinels at `nodes` know it.
    Sentinel {
        nodes: Vec<(String, u16)>,
        master: String,
        db: i64,
    },
}

/// The Sentinel URL schemes: `redis+sentinel://` and, TLS to every node, `rediss+sentinel://`.
const SENTINEL: &str = "redis+sentinel://";
const SENTINEL_TLS: &str = "rediss+sentinel://";

/// What a Sentinel URL holds: the address, the data nodes' credentials, whether TLS is on.
type SentinelUrl = (Address, Option<String>, Option<Secret>, bool);

/// Parses `redis+sentinel://[user:password@]host[:port][,host[:port]...]/master[/db]`
/// (ports default to 26379); `None` for any other URL.
fn parse_sentinel(url: &str) -> Result<Option<SentinelUrl>, String> {
    let (rest, tls) = if let Some(rest) = url.strip_prefix(SENTINEL) {
        (rest, false)
    } else if let Some(rest) = url.strip_prefix(SENTINEL_TLS) {
        (rest, true)
    } else {
        return Ok(None);
    };
    let bad = |why: &str| format!("Sentinel URL {} {why}", redact_url(url));
    let (user, rest) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| bad("has credentials that are not UTF-8"))
    };
    let (username, password) = match user.map(|u| u.split_once(':').unwrap_or((u, ""))) {
        None => (None, None),
        Some((u, p)) => (
            Some(decode(u)?).filter(|u| !u.is_empty()),
            Some(decode(p)?).filter(|p| !p.is_empty()).map(Secret),
        ),
    };
    let (hosts, path) = rest
        .split_once('/')
        .ok_or_else(|| bad("names no master (…/master)"))?;
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut parts = path.split('/');
    let master = parts.next().filter(|m| !m.is_empty());
    let master = master.ok_or_else(|| bad("names no master (…/master)"))?;
    let db = match parts.next().filter(|d| !d.is_empty()) {
        None => 0,
        Some(d) => d
            .parse()
            .map_err(|_| bad("has a database that is not a number"))?,
    };
    let mut nodes = Vec::new();
    for node in hosts.split(',').filter(|n| !n.is_empty()) {
        let (host, port) = match node.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse()
                    .map_err(|_| bad("has a port that is not a number"))?,
            ),
            None => (node, 26379),
        };
        nodes.push((host.to_owned(), port));
    }
    if nodes.is_empty() {
        return Err(bad("lists no Sentinel"));
    }
    let address = Address::Sentinel {
        nodes,
        master: master.to_owned(),
        db,
    };
    Ok(Some((address, username, password, tls)))
}

/// The connection settings after the environment filled what the builder was not given.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) address: Address,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Secret>,
    /// `Some(true)`: TLS even for a `redis://` URL; `Some(false)`: refuse a `rediss://` one.
    pub(crate) tls: Option<bool>,
    pub(crate) ca: Option<Vec<u8>>,
    /// The client certificate and its key (mutual TLS).
    pub(crate) identity: Option<(Vec<u8>, Vec<u8>)>,
    pub(crate) connections: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    /// The Sentinels' own password, if they require one.
    pub(crate) sentinel_password: Option<Secret>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // By hand: the client key is as secret as a password.
        f.debug_struct("Endpoint")
            .field("address", &self.describe())
            .field("username", &self.username)
            .field("password", &self.password)
            .field("tls", &self.tls)
            .field("ca", &self.ca.as_ref().map(Vec::len))
            .field("identity", &self.identity.is_some())
            .field("connections", &self.connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("sentinel_password", &self.sentinel_password)
            .finish()
    }
}

impl Endpoint {
    /// Whether the connection is TLS: asked for, or a `rediss://` URL.
    pub(crate) fn wants_tls(&self) -> bool {
        match (&self.address, self.tls) {
            (_, Some(tls)) => tls,
            (Address::Url(url), None) => url.expose().starts_with("rediss://"),
            (Address::Parts { .. } | Address::Sentinel { .. }, None) => false,
        }
    }

    /// The address, safe to print.
    pub(crate) fn describe(&self) -> String {
        match &self.address {
            Address::Url(url) => redact_url(url.expose()),
            Address::Parts { host, port, db } => {
                let scheme = if self.wants_tls() { "rediss" } else { "redis" };
                format!("{scheme}://{host}:{port}/{db}")
            }
            Address::Sentinel { nodes, master, db } => {
                let scheme = if self.wants_tls() {
                    SENTINEL_TLS
                } else {
                    SENTINEL
                };
                let nodes: Vec<String> = nodes.iter().map(|(h, p)| format!("{h}:{p}")).collect();
                format!("{scheme}{}/{master}/{db}", nodes.join(","))
            }
        }
    }
}

/// The environment variables read, in the order of `docs/configuration.md`'s table.
pub const ENV_VARS: &[&str] = &[
    "REDIS_URL",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_DB",
    "REDIS_USERNAME",
    "REDIS_PASSWORD",
    "REDIS_SSL",
    "REDIS_TLS_CA_FILE",
    "REDIS_TLS_CERT_FILE",
    "REDIS_TLS_KEY_FILE",
    "REDIS_MAX_CONNECTIONS",
    "REDIS_CONNECTION_TIMEOUT",
    "REDIS_COMMAND_TIMEOUT",
    "REDIS_SENTINEL_PASSWORD",
];

/// The most connections [`ConnectionSettings::connections`] accepts.
pub(crate) const MAX_CONNECTIONS: usize = 256;
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub(crate) const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(250);

/// Reads one variable: unset and empty are the same.
struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    fn get(&self, var: &str) -> Option<String> {
        (self.0)(var).filter(|v| !v.trim().is_empty())
    }

    fn number<T>(&self, var: &str, range: (T, T)) -> Result<Option<T>, String>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(raw) = self.get(var) else {
            return Ok(None);
        };
        match raw.trim().parse::<T>() {
            Ok(n) if n >= range.0 && n <= range.1 => Ok(Some(n)),
            _ => Err(format!(
                "{var}={raw:?} is not a whole number from {} to {}",
                range.0, range.1
            )),
        }
    }

    fn flag(&self, var: &str) -> Result<Option<bool>, String> {
        let Some(raw) = self.get(var) else {
            return Ok(None);
        };
        match raw.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(Some(true)),
            "0" | "false" | "no" | "off" => Ok(Some(false)),
            _ => Err(format!("{var}={raw:?} is not true or false")),
        }
    }

    /// Seconds, fractions allowed (`5`, `0.25`), or with a unit (`250ms`, `5s`).
    fn duration(&self, var: &str) -> Result<Option<Duration>, String> {
        let Some(raw) = self.get(var) else {
            return Ok(None);
        };
        let t = raw.trim();
        let (number, scale) = match t.strip_suffix("ms") {
            Some(n) => (n, 1e-3),
            None => (t.strip_suffix('s').unwrap_or(t), 1.0),
        };
        match number.trim().parse::<f64>() {
            Ok(n) if n.is_finite() && n > 0.0 && n * scale <= 3600.0 => {
                Ok(Some(Duration::from_secs_f64(n * scale)))
            }
            _ => Err(format!(
                "{var}={raw:?} is not a duration from 1 ms to 1 hour (seconds, or with ms/s)"
            )),
        }
    }
}

impl ConnectionSettings {
    /// Fills what the builder was not given from `env`, and checks the whole.
    pub(crate) fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Endpoint, String> {
        let env = Env(env);
        let address = match &self.url {
            Some(url) => Address::Url(url.clone()),
            None => self.address_from(&env)?,
        };
        // A URL given in code names its server: credentials and REDIS_SSL meant for the
        // environment's server are not sent to it.
        let from_code = self.url.is_some();
        let env_for_url = |var: &str| if from_code { None } else { env.get(var) };
        let username = self
            .username
            .clone()
            .or_else(|| env_for_url("REDIS_USERNAME"));
        let password =
            (self.password.clone()).or_else(|| env_for_url("REDIS_PASSWORD").map(Secret));
        let tls = match (self.tls, from_code) {
            (Some(tls), _) => Some(tls),
            (None, true) => None,
            (None, false) => env.flag("REDIS_SSL")?,
        };
        let ca = match &self.ca {
            Some(pem) => Some(pem.read("the TLS CA bundle")?),
            None => (env.get("REDIS_TLS_CA_FILE"))
                .map(|p| Pem::File(p.into()).read("REDIS_TLS_CA_FILE"))
                .transpose()?,
        };
        let identity = match &self.identity {
            Some((cert, key)) => Some((
                cert.read("the TLS client certificate")?,
                key.read("the TLS client key")?,
            )),
            None => match (
                env.get("REDIS_TLS_CERT_FILE"),
                env.get("REDIS_TLS_KEY_FILE"),
            ) {
                (Some(cert), Some(key)) => Some((
                    Pem::File(cert.into()).read("REDIS_TLS_CERT_FILE")?,
                    Pem::File(key.into()).read("REDIS_TLS_KEY_FILE")?,
                )),
                (None, None) => None,
                _ => return Err(
                    "REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together: set both or neither"
                        .into(),
                ),
            },
        };
        let connections = match self.connections {
            Some(n) => n,
            None => env
                .number("REDIS_MAX_CONNECTIONS", (1, MAX_CONNECTIONS))?
                .unwrap_or(1),
        };
        if connections == 0 || connections > MAX_CONNECTIONS {
            return Err(format!(
                "redis_connections must be from 1 to {MAX_CONNECTIONS}, not {connections}"
            ));
        }
        let connect_timeout = match self.connect_timeout {
            Some(d) => d,
            None => env
                .duration("REDIS_CONNECTION_TIMEOUT")?
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        };
        let command_timeout = match self.command_timeout {
            Some(d) => d,
            None => env
                .duration("REDIS_COMMAND_TIMEOUT")?
                .unwrap_or(DEFAULT_COMMAND_TIMEOUT),
        };
        // A Sentinel URL: the address, and its credentials and scheme as if given apart.
        let (mut address, mut username, mut password, mut tls) = (address, username, password, tls);
        if let Address::Url(url) = &address {
            if let Some((sentinel, user, pass, on)) = parse_sentinel(url.expose())? {
                let twice = |what| {
                    format!(
                        "the Redis {what} is given twice, in the Sentinel URL and apart from it"
                    )
                };
                if user.is_some() && username.is_some() && user != username {
                    return Err(twice("user"));
                }
                if pass.is_some() && password.is_some() && pass != password {
                    return Err(twice("password"));
                }
                if on && tls == Some(false) {
                    return Err("a rediss+sentinel:// URL, but TLS is turned off".into());
                }
                address = sentinel;
                username = username.or(user);
                password = password.or(pass);
                tls = tls.or(Some(on));
            }
        }
        let sentinel_password = (self.sentinel_password.clone())
            .or_else(|| env.get("REDIS_SENTINEL_PASSWORD").map(Secret));
        let mut endpoint = Endpoint {
            address,
            username,
            password,
            tls,
            ca,
            identity,
            connections,
            connect_timeout,
            command_timeout,
            sentinel_password,
        };
        // The environment's TLS files complete a URL given in code only if it is a TLS one.
        if from_code && !endpoint.wants_tls() {
            if self.ca.is_none() {
                endpoint.ca = None;
            }
            if self.identity.is_none() {
                endpoint.identity = None;
            }
        }
        Ok(endpoint)
    }

    /// `REDIS_URL`, or `REDIS_HOST`/`REDIS_PORT`/`REDIS_DB`, or the default URL.
    fn address_from(&self, env: &Env<'_>) -> Result<Address, String> {
        let parts = ["REDIS_HOST", "REDIS_PORT", "REDIS_DB"];
        let given: Vec<&str> = parts.into_iter().filter(|v| env.get(v).is_some()).collect();
        if let Some(url) = env.get("REDIS_URL") {
            if !given.is_empty() {
                return Err(format!(
                    "REDIS_URL and {} are both set: give the address one way",
                    given.join("/")
                ));
            }
            return Ok(Address::Url(Secret(url.trim().to_owned())));
        }
        if given.is_empty() {
            return Ok(Address::Url(Secret(super::DEFAULT_REDIS_URL.to_owned())));
        }
        let host = env.get("REDIS_HOST").unwrap_or_else(|| "127.0.0.1".into());
        let host = host.trim().to_owned();
        if host.contains(['/', '@', ' ', '?', '#', ':']) {
            // Not echoed: it may hold credentials pasted in the wrong place.
            return Err(
                "REDIS_HOST is not a host name or address (it holds / @ : ? # or a space)".into(),
            );
        }
        Ok(Address::Parts {
            host,
            port: env.number("REDIS_PORT", (1, u16::MAX))?.unwrap_or(6379),
            db: env
                .number("REDIS_DB", (0, i64::from(i32::MAX)))?
                .unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests;
