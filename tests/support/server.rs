//! A private `redis-server` on a free loopback port, stopped on drop. Shared by the tests, the
//! demo and the benches (`#[path]`-included), so all three start Redis the same way.
//!
//! With `TIERED_TEST_REDIS=secure` (the test command's second pass), every server is TLS-only
//! (certificates from `TIERED_TEST_TLS_DIR`, made by `scripts/test-certs.sh`), its `default`
//! user has a password, and [`RedisServer::url`] logs the library in as `cache`, a user with
//! only the rights the README's ACL line grants. The library finds the CA through
//! `REDIS_TLS_CA_FILE`, as a deployment would.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process owned by one test.
pub struct RedisServer {
    bin: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// Where `redis-server` is, if anywhere: `REDIS_SERVER_BIN`, then `PATH`, then the usual places.
pub fn redis_server_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("REDIS_SERVER_BIN") {
        return Some(p.into());
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = PathBuf::from(dir).join("redis-server");
        if p.is_file() {
            return Some(p);
        }
    }
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// The secure mode's settings, when it is on.
pub struct Secure {
    pub dir: PathBuf,
    pub ca: Vec<u8>,
}

/// The library's user in secure mode, and its password (with the characters a URL must
/// percent-encode).
pub const CACHE_USER: &str = "cache";
pub const CACHE_PASSWORD: &str = "p@ss/w#rd%?:1";
/// The `default` user's password in secure mode: the tests' own commands use it.
const ADMIN_PASSWORD: &str = "admin-secret-7f3a";

/// The key prefixes the tests use: the ACL grants the library user these and nothing else.
pub const TEST_PREFIXES: &[&str] = &["v1", "trading", "obs", "risk", "deltran"];

/// The least-privilege ACL rules of the library's user for `prefix` (README, "Redis users").
pub fn acl_rules(prefix: &str) -> String {
    format!(
        "~{prefix}:* &{prefix}:_tc:* -@all +ping +get +mget +set +exists +pttl +hmget \
         +evalsha +eval +script|load +publish +subscribe +unsubscribe +select +hello \
         +client|tracking +del +hget +hset +hdel +hincrby +hscan +xadd +xrange +pexpire +getrange \
         +setrange +smembers +type +zadd +zscore +zrange +zremrangebyscore +time +info +slowlog|len"
    )
    .split_whitespace()
    .collect::<Vec<_>>()
    .join(" ")
}

/// The secure mode's settings, or `None` in the plain mode.
pub fn secure() -> Option<&'static Secure> {
    static SECURE: std::sync::OnceLock<Option<Secure>> = std::sync::OnceLock::new();
    SECURE
        .get_or_init(|| {
            if std::env::var("TIERED_TEST_REDIS").ok().as_deref() != Some("secure") {
                return None;
            }
            let dir: PathBuf = std::env::var("TIERED_TEST_TLS_DIR")
                .expect("TIERED_TEST_REDIS=secure needs TIERED_TEST_TLS_DIR (see scripts/test.sh)")
                .into();
            let ca = std::fs::read(dir.join("ca.crt"))
                .unwrap_or_else(|e| panic!("{}: {e} (run scripts/test-certs.sh)", dir.display()));
            assert!(
                std::env::var_os("REDIS_TLS_CA_FILE").is_some(),
                "TIERED_TEST_REDIS=secure needs REDIS_TLS_CA_FILE set to the test CA"
            );
            Some(Secure { dir, ca })
        })
        .as_ref()
}

/// A URL for the library on `port`: plain, or in secure mode TLS as the `cache` user.
pub fn url_for_port(port: u16) -> String {
    match secure() {
        None => format!("redis://127.0.0.1:{port}"),
        Some(_) => {
            let pw: String = CACHE_PASSWORD
                .bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("rediss://{CACHE_USER}:{pw}@127.0.0.1:{port}")
        }
    }
}

/// A redis-rs client for `url` (one of [`url_for_port`]'s), trusting the test CA in secure mode.
pub fn client(url: &str) -> redis::Client {
    match secure() {
        None => redis::Client::open(url),
        Some(secure) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(secure.ca.clone()),
            },
        ),
    }
    .expect("a valid test URL")
}

const MISSING: &str = "redis-server not found: it is started privately per test. Install it \
    (Debian: `apt-get install redis-server`), or run the README's test command \
    (`./scripts/test.sh`), which installs it, or point REDIS_SERVER_BIN at the binary.";

/// A loopback port free a moment ago (another process may take it before it is bound).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

impl RedisServer {
    /// Starts a server and waits until it answers PING; panics with set-up advice if it can't.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a server, or says why it could not.
    pub fn try_start() -> Result<Self, String> {
        let bin = redis_server_bin().ok_or(MISSING)?;
        // The free port is released before the server binds it, so another process may take it
        // first: then the server exits, and another port is tried.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir()
                .join(format!("tiered-cache-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut server = Self {
                bin: bin.clone(),
                port,
                dir,
                child: None,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(&self.bin);
        match secure() {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some(secure) => {
                let file = |f: &str| secure.dir.join(f).display().to_string();
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .args(["--tls-cert-file", &file("server.crt")])
                    .args(["--tls-key-file", &file("server.key")])
                    .args(["--tls-ca-cert-file", &file("ca.crt")])
                    .args(["--tls-auth-clients", "optional"])
                    .args(["--requirepass", ADMIN_PASSWORD])
                    .args(["--user", CACHE_USER, "on", &format!(">{CACHE_PASSWORD}")]);
                for prefix in TEST_PREFIXES {
                    cmd.args(acl_rules(prefix).split(' '));
                }
                &mut cmd
            }
        };
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--enable-debug-command", "local", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("could not start {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(format!(
                    "redis-server on port {} exited at start ({status}): {}",
                    self.port,
                    self.log().trim()
                ));
            }
            // Answering is not enough: another process's server may hold the port.
            if self.ping() && self.is_ours() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!(
            "redis-server on port {} did not answer within 10 s",
            self.port
        ))
    }

    fn ping(&self) -> bool {
        self.admin_client()
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    /// The tests' own client: the `default` user, with every right.
    fn admin_client(&self) -> redis::RedisResult<redis::Client> {
        match secure() {
            None => redis::Client::open(self.url()),
            Some(secure) => {
                let url = format!("rediss://default:{ADMIN_PASSWORD}@127.0.0.1:{}", self.port);
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(secure.ca.clone()),
                };
                redis::Client::build_with_tls(url, certs)
            }
        }
    }

    /// Whether the server answering on the port is this one (its working directory is ours).
    fn is_ours(&self) -> bool {
        let dir: Option<Vec<String>> = self
            .admin_client()
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("CONFIG").arg("GET").arg("dir").query(&mut c))
            .ok();
        let ours = std::fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
        dir.and_then(|d| d.into_iter().nth(1))
            .is_some_and(|d| std::path::Path::new(&d) == ours)
    }

    /// What the server has logged so far (warnings and up).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for the tests' own privileged commands (`DEBUG`, `CLIENT KILL`, `CONFIG`): the
    /// `default` user; open it with [`client`].
    pub fn admin_url(&self) -> String {
        match secure() {
            None => self.url(),
            Some(_) => format!("rediss://default:{ADMIN_PASSWORD}@127.0.0.1:{}", self.port),
        }
    }

    /// The URL the library connects with (see the module's note on the secure mode).
    pub fn url(&self) -> String {
        url_for_port(self.port)
    }

    /// SIGKILLs the server: no goodbye to clients, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty unless the test ran `SAVE` (nothing is
    /// saved on its own). Panics if another process took the port meanwhile.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn().unwrap_or_else(|e| panic!("{e}"));
    }

    /// A plain connection for the test's own commands.
    pub fn conn(&self) -> redis::Connection {
        self.admin_client()
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap()
    }

    /// What the server's `INFO` says, read as the crate reads it.
    pub fn info(&self) -> tiered_cache::RedisInfo {
        tiered_cache::RedisInfo::parse(&self.cmd::<String>(&[b"INFO"]))
    }

    /// Runs one command on a fresh connection.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&[u8]]) -> T {
        let mut c = redis::cmd(std::str::from_utf8(args[0]).unwrap());
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query(&mut self.conn()).unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
