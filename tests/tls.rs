//! TLS, authentication and secrets against real TLS `redis-server`s started here: a custom CA,
//! mutual TLS, the `REDIS_*` variables (a password with `@ / # % ?`), a wrong CA and a
//! plaintext client failing fast with a clear error, an ACL user without the channel
//! permission refused at start, a marker password absent from every output, and a TLS primary
//! behind TLS Sentinels followed through a failover.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{eventually, PATIENCE};
use tiered_cache::{NamespacePolicy, TieredCache, TieredCacheBuilder};

/// "Fails fast": far above the 300 ms timeouts configured, far below a hang.
const FAST: Duration = Duration::from_secs(3);
const MARKER: &str = "Mk7@pw/#%?zz";

fn certs() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-tls");
    let status = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/test-certs.sh"
        ))
        .arg(&dir)
        .status()
        .expect("bash");
    assert!(status.success(), "scripts/test-certs.sh failed");
    dir
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(certs().join(name)).unwrap()
}

/// A TLS-only redis-server: `mutual` asks clients for a certificate; `extra` adds arguments.
struct TlsServer {
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl TlsServer {
    fn start(mutual: bool, extra: &[&str]) -> Self {
        let certs = certs();
        let port = support::free_port();
        let dir = std::env::temp_dir().join(format!("tiered-tls-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |f: &str| certs.join(f).display().to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args(["--tls-cert-file", &file("server.crt")])
            .args(["--tls-key-file", &file("server.key")])
            .args(["--tls-ca-cert-file", &file("ca.crt")])
            .args(["--tls-auth-clients", if mutual { "yes" } else { "no" }])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (the test command installs it)");
        let server = Self { port, child, dir };
        server.await_port("TLS redis-server");
        server
    }

    /// Waits (10 s at most) until the server accepts connections.
    fn await_port(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "{what} did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn url(&self, userinfo: &str) -> String {
        format!("rediss://{userinfo}127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A builder with one namespace and short timeouts, reading no environment but `env`.
fn builder(env: &[(&str, String)]) -> TieredCacheBuilder {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    TieredCache::builder()
        .environment(move |k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
        .namespace(
            "rate",
            NamespacePolicy::new(Duration::from_secs(60)).staleness_bound(support::LOOSE_BOUND),
        )
        .heartbeat(Duration::from_millis(50))
        .l2_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300))
        .subscriber_backoff(Duration::from_millis(100))
}

/// Two nodes on `b()` see each other's writes: a write on one evicts the other's copy.
async fn coherent(b: impl Fn() -> TieredCacheBuilder) {
    let (x, y) = (b().build().unwrap(), b().build().unwrap());
    for n in [&x, &y] {
        n.ready(PATIENCE).await.expect("subscribed over TLS");
    }
    let (rx, ry) = (
        x.namespace::<str, u64>("rate").unwrap(),
        y.namespace::<str, u64>("rate").unwrap(),
    );
    rx.set("k", 1).await.unwrap();
    assert_eq!(ry.get("k").await.as_deref(), Some(&1));
    rx.set("k", 2).await.unwrap();
    eventually("y drops its copy", PATIENCE, || async {
        ry.get_local("k").is_none()
    })
    .await;
    assert_eq!(ry.get("k").await.as_deref(), Some(&2));
    for i in 0..8 {
        ry.get(&format!("spread-{i}")).await;
    }
    let health = y.health().await;
    assert!(health.redis_reachable, "{health:?}");
    assert_eq!(health.connections.reconnecting, 0, "{health:?}");
    let c = health.connections;
    assert_eq!(
        c.open, c.configured,
        "calls are spread over every connection: {c:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_custom_ca_keeps_nodes_coherent() {
    let server = TlsServer::start(true, &[]);
    let url = server.url("");
    coherent(|| {
        builder(&[])
            .redis_url(url.clone())
            .tls_ca_pem(pem("ca.crt"))
            .tls_client_identity_pem(pem("client.crt"), pem("client.key"))
            .redis_connections(4)
    })
    .await;
    // Without the client certificate the server refuses the handshake: an error, fast.
    let cache = builder(&[])
        .redis_url(url.clone())
        .tls_ca_pem(pem("ca.crt"))
        .strict_writes(true)
        .build()
        .unwrap();
    let t = Instant::now();
    let e = cache
        .namespace::<str, u64>("rate")
        .unwrap()
        .set("k", 3)
        .await
        .unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert!(t.elapsed() < FAST, "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_reaches_a_tls_server_with_an_acl_user() {
    let user = format!(">{MARKER}");
    let server = TlsServer::start(false, &["--user", "app", "on", &user, "~*", "&*", "+@all"]);
    let ca = certs().join("ca.crt").display().to_string();
    let env = vec![
        ("REDIS_HOST", "127.0.0.1".to_string()),
        ("REDIS_PORT", server.port.to_string()),
        ("REDIS_USERNAME", "app".to_string()),
        ("REDIS_PASSWORD", MARKER.to_string()),
        ("REDIS_SSL", "true".to_string()),
        ("REDIS_TLS_CA_FILE", ca.clone()),
        ("REDIS_MAX_CONNECTIONS", "3".to_string()),
    ];
    coherent(|| builder(&env)).await;
    let cache = builder(&env).build().unwrap();
    assert_eq!(cache.health().await.connections.configured, 3);

    // The same password percent-encoded in a URL.
    let encoded = "Mk7%40pw%2F%23%25%3Fzz";
    let url = server.url(&format!("app:{encoded}@"));
    coherent(|| builder(&[("REDIS_TLS_CA_FILE", ca.clone())]).redis_url(url.clone())).await;

    // A wrong password: refused at start with a clear error, which does not print it.
    let wrong = builder(&[("REDIS_TLS_CA_FILE", ca.clone())])
        .redis_url(server.url("app:not-it@"))
        .build()
        .unwrap();
    let e = wrong.ready(PATIENCE).await.unwrap_err();
    assert!(e.is_config(), "{e}");
    assert!(!e.to_string().contains("not-it"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_a_plaintext_client_fails_fast_with_a_clear_error() {
    let server = TlsServer::start(false, &[]);
    // Redis's certificate does not chain to the CA given.
    let cache = builder(&[])
        .redis_url(server.url(""))
        .tls_ca_pem(pem("other-ca.crt"))
        .l2_timeout(Duration::from_secs(2))
        .strict_writes(true)
        .build()
        .unwrap();
    let rate = cache.namespace::<str, u64>("rate").unwrap();
    let t = Instant::now();
    let e = rate.set("k", 1).await.unwrap_err();
    assert!(t.elapsed() < FAST, "{:?}", t.elapsed());
    assert!(e.is_unavailable(), "{e}");
    let source = format!("{:?}", std::error::Error::source(&e));
    assert!(source.contains("certificate"), "{source}");
    assert!(!cache.health().await.redis_reachable);

    // A plaintext client on the TLS port.
    let plain = builder(&[])
        .redis_url(format!("redis://127.0.0.1:{}", server.port))
        .strict_writes(true)
        .build()
        .unwrap();
    let t = Instant::now();
    let e = (plain.namespace::<str, u64>("rate").unwrap())
        .set("k", 1)
        .await
        .unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert!(t.elapsed() < FAST, "{:?}", t.elapsed());
    // Redis waits for the rest of what it takes for a TLS record (to this client a server
    // that never answers: the call ends at its timeout), or drops the connection on the bytes
    // it cannot read: either way bounded, not hung, and said.
    let source = format!("{:?}", std::error::Error::source(&e));
    assert!(
        source.contains("no answer within")
            || source.contains("reset")
            || source.contains("closed"),
        "{source}"
    );

    // TLS files with a plaintext URL: a configuration error at build().
    let e = builder(&[])
        .redis_url(format!("redis://127.0.0.1:{}", server.port))
        .tls_ca_pem(pem("ca.crt"))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("not a TLS connection"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_the_channel_permission_is_refused_at_start() {
    // Every command and key, but no channel: invalidations could never be heard.
    let user = format!(">{MARKER}");
    let server = TlsServer::start(false, &["--user", "nochan", "on", &user, "~*", "+@all"]);
    let cache = builder(&[])
        .redis_url(server.url("nochan:Mk7%40pw%2F%23%25%3Fzz@"))
        .tls_ca_pem(pem("ca.crt"))
        .build()
        .unwrap();
    let e = cache.ready(PATIENCE).await.unwrap_err();
    assert!(e.is_config(), "{e}");
    assert!(
        e.to_string()
            .contains("refuses the invalidation subscriber"),
        "{e}"
    );
    let health = cache.health().await;
    assert!(health.subscriber_refused.is_some(), "{health:?}");
    // Where a staleness bound is set, L1 is not trusted meanwhile.
    assert_eq!(health.bypassing, ["rate"], "{health:?}");
    assert!(!format!("{health:?}").contains(MARKER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_appears_in_no_output() {
    let logs = capture_logs();
    let server = TlsServer::start(false, &["--requirepass", MARKER]);
    let encoded = "Mk7%40pw%2F%23%25%3Fzz";
    let url = server.url(&format!(":{encoded}@"));
    let ca = certs().join("ca.crt").display().to_string();
    let mut seen = String::new();

    // The password not percent-encoded (a mistake the URL parser may or may not catch), as
    // a URL and as REDIS_URL, and a unix-socket URL carrying it as a query value.
    for raw in [
        format!("rediss://:{MARKER}@127.0.0.1:{}", server.port),
        format!("redis+unix:///nonexistent.sock?password={MARKER}"),
    ] {
        let b = builder(&[("REDIS_TLS_CA_FILE", ca.clone())]).redis_url(raw.clone());
        seen += &format!("{b:?}");
        match b.build() {
            Ok(cache) => {
                let _ = cache.ready(Duration::from_millis(500)).await;
                seen += &format!("{:?}", cache.health().await);
            }
            Err(e) => seen += &format!("{e} {e:?}"),
        }
        let b = builder(&[("REDIS_URL", raw), ("REDIS_TLS_CA_FILE", ca.clone())]);
        seen += &format!("{b:?}");
        if let Err(e) = b.build() {
            seen += &format!("{e} {e:?}");
        }
    }
    // A wrong password: the subscriber logs Redis's refusal.
    let wrong = builder(&[("REDIS_TLS_CA_FILE", ca.clone())])
        .redis_url(server.url(":Mk7%40pw-wrong@"))
        .build()
        .unwrap();
    seen += &format!("{}", wrong.ready(PATIENCE).await.unwrap_err());

    // The builder, the handle's health, a config error, a refused password.
    let b = builder(&[("REDIS_TLS_CA_FILE", ca.clone())]).redis_url(url.clone());
    seen += &format!("{b:?}");
    let b2 = builder(&[("REDIS_PASSWORD", MARKER.into())]).redis_password(MARKER);
    seen += &format!("{b2:?}");
    let cache = b.build().unwrap();
    cache.ready(PATIENCE).await.unwrap();
    let health = cache.health().await;
    assert!(health.redis.contains("***"), "{}", health.redis);
    seen += &format!("{health:?}");
    let e = builder(&[("REDIS_TLS_CA_FILE", ca.clone())])
        .redis_url(format!("{url}/notadb"))
        .build()
        .unwrap_err();
    seen += &format!("{e} {e:?}");
    let e = builder(&[("REDIS_PASSWORD", MARKER.into())])
        .redis_url(url.clone())
        .redis_password("another")
        .build()
        .unwrap_err();
    seen += &format!("{e} {e:?}");

    #[cfg(feature = "cli")]
    cli_output(&url, &ca, &mut seen);
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logged.contains("refuses"),
        "the refusal was logged: {logged}"
    );
    seen += &logged;
    for needle in [MARKER, "Mk7%40pw", "Mk7@pw"] {
        assert!(!seen.contains(needle), "{needle:?} printed in:\n{seen}");
    }
}

/// Two seed examples against a TLS server with a password, configured as their documents
/// say (the trading seed's `REDIS_HOST`/`REDIS_PORT`/`REDIS_SSL`/`REDIS_PASSWORD`, the
/// payments seed's `REDIS_URL`): both run, share Redis, and print no password.
#[test]
fn the_seed_examples_run_over_tls_and_print_no_password() {
    let server = TlsServer::start(false, &["--requirepass", MARKER]);
    let ca = certs().join("ca.crt").display().to_string();
    let port = server.port.to_string();
    let url = server.url(":Mk7%40pw%2F%23%25%3Fzz@");
    let runs: [(&str, &[(&str, &str)]); 2] = [
        (
            "trading",
            &[
                ("REDIS_HOST", "127.0.0.1"),
                ("REDIS_PORT", &port),
                ("REDIS_SSL", "true"),
                ("REDIS_PASSWORD", MARKER),
                ("REDIS_MAX_CONNECTIONS", "4"),
                ("TRADING_READS", "300"),
            ],
        ),
        (
            "payments",
            &[
                ("REDIS_URL", &url),
                ("REDIS_MAX_CONNECTIONS", "4"),
                ("REDIS_MIN_IDLE", "2"),
                ("PAYMENTS_OPS", "300"),
            ],
        ),
    ];
    for (name, vars) in runs {
        let out = Command::new(support::example_binary(name))
            .envs(vars.iter().copied())
            .env("REDIS_TLS_CA_FILE", &ca)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name} failed:\n{text}");
        assert!(
            text.contains("subscribed true") && text.contains("4 configured, 4 open"),
            "{name} used the TLS server over its 4 connections:\n{text}"
        );
        for needle in [MARKER, "Mk7%40pw", "Mk7@pw"] {
            assert!(
                !text.contains(needle),
                "{needle:?} printed by {name}:\n{text}"
            );
        }
    }
}

/// Every log line of this process, at every level, from here on.
fn capture_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = buf.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
        .with_writer(move || Sink(sink.clone()))
        .with_ansi(false)
        .try_init()
        .expect("one subscriber per test process (nextest)");
    buf
}

/// The admin handle and the CLI: --help with REDIS_URL set, health JSON, an error.
#[cfg(feature = "cli")]
fn cli_output(url: &str, ca: &str, seen: &mut String) {
    let admin = tiered_cache::Admin::new(url, "v1").unwrap();
    *seen += &format!("{admin:?} {}", admin.url());
    let bin = env!("CARGO_BIN_EXE_tiered-cache-admin");
    for args in [&["--help"][..], &["health"], &["inspect", "nope", "x"]] {
        let out = Command::new(bin)
            .args(args)
            .env("REDIS_URL", url)
            .env("REDIS_TLS_CA_FILE", ca)
            .output()
            .unwrap();
        *seen += &String::from_utf8_lossy(&out.stdout);
        *seen += &String::from_utf8_lossy(&out.stderr);
    }
    assert!(seen.contains("redis_reachable"), "the CLI ran: {seen}");
}

#[test]
fn the_readmes_acl_line_is_the_one_the_secure_pass_grants() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("ACL SETUSER cache "))
        .expect("the README's ACL line");
    let syntax = [
        "ACL",
        "SETUSER",
        "cache",
        "on",
        ">PASSWORD",
        "resetkeys",
        "resetchannels",
    ];
    let mut documented: Vec<&str> = line.split(' ').filter(|t| !syntax.contains(t)).collect();
    let rules = support::acl_rules("v1");
    let mut granted: Vec<&str> = rules.split(' ').collect();
    documented.sort_unstable();
    granted.sort_unstable();
    assert_eq!(
        documented, granted,
        "README.md and tests/support/server.rs disagree"
    );
}

/// A `redis-server --sentinel` serving TLS only, monitoring `master` over TLS with `password`.
/// Slow to call a primary down (30 s): only the test's own `SENTINEL FAILOVER` moves it, never
/// a stall of a loaded machine.
fn tls_sentinel(primary_port: u16, password: &str) -> TlsServer {
    let certs = certs();
    let port = support::free_port();
    let dir =
        std::env::temp_dir().join(format!("tiered-tls-sentinel-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |f: &str| certs.join(f).display().to_string();
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port 0\ntls-port {port}\nbind 127.0.0.1\ndir {}\n\
             tls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
             tls-auth-clients no\ntls-replication yes\n\
             sentinel monitor mymaster 127.0.0.1 {primary_port} 2\n\
             sentinel auth-pass mymaster {password}\n\
             sentinel down-after-milliseconds mymaster 30000\n\
             sentinel failover-timeout mymaster 3000\n",
            dir.display(),
            file("server.crt"),
            file("server.key"),
            file("ca.crt"),
        ),
    )
    .unwrap();
    let child = Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server --sentinel");
    let sentinel = TlsServer { port, child, dir };
    sentinel.await_port("TLS Sentinel");
    sentinel
}

/// One command over TLS (the test CA), as `password` if given.
fn tls_query<T: redis::FromRedisValue>(
    port: u16,
    password: Option<&str>,
    args: &[&str],
) -> redis::RedisResult<T> {
    let auth = password
        .map(|p| format!("default:{p}@"))
        .unwrap_or_default();
    let certs = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem("ca.crt")),
    };
    let client = redis::Client::build_with_tls(format!("rediss://{auth}127.0.0.1:{port}"), certs)?;
    let mut c = client.get_connection_with_timeout(Duration::from_millis(500))?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_a_tls_primary_through_tls_sentinels_and_follow_a_failover() {
    let pw = "sentinel-data-pw";
    let primary = TlsServer::start(false, &["--requirepass", pw]);
    let p = primary.port.to_string();
    let replica = TlsServer::start(
        false,
        &[
            "--requirepass",
            pw,
            "--masterauth",
            pw,
            "--tls-replication",
            "yes",
            "--replicaof",
            "127.0.0.1",
            &p,
        ],
    );
    let sentinels: Vec<TlsServer> = (0..3).map(|_| tls_sentinel(primary.port, pw)).collect();
    eventually(
        "the Sentinels know the replica and each other",
        PATIENCE,
        || async {
            sentinels.iter().all(|s| {
                let replicas: Vec<redis::Value> =
                    tls_query(s.port, None, &["SENTINEL", "REPLICAS", "mymaster"])
                        .unwrap_or_default();
                let peers: Vec<redis::Value> =
                    tls_query(s.port, None, &["SENTINEL", "SENTINELS", "mymaster"])
                        .unwrap_or_default();
                replicas.len() == 1 && peers.len() == 2
            })
        },
    )
    .await;
    let primary_port = || {
        sentinels.iter().find_map(|s| {
            let addr: Vec<String> = tls_query(
                s.port,
                None,
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"],
            )
            .ok()?;
            addr.get(1)?.parse::<u16>().ok()
        })
    };
    assert_eq!(primary_port(), Some(primary.port));
    let hosts: Vec<String> = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let url = format!("rediss+sentinel://:{pw}@{}/mymaster", hosts.join(","));
    let ca = certs().join("ca.crt").display().to_string();
    let node = || builder(&[("REDIS_TLS_CA_FILE", ca.clone())]).redis_url(url.clone());
    coherent(node).await;
    let (a, b) = (node().build().unwrap(), node().build().unwrap());
    for n in [&a, &b] {
        n.ready(PATIENCE)
            .await
            .expect("subscribed through TLS Sentinels");
    }
    let (ra, rb) = (
        a.namespace::<str, u64>("rate").unwrap(),
        b.namespace::<str, u64>("rate").unwrap(),
    );
    eventually("b reads a's write", PATIENCE, || async {
        ra.set("k", 1).await.is_ok() && rb.get("k").await.as_deref() == Some(&1)
    })
    .await;

    let _: String = tls_query(
        sentinels[0].port,
        None,
        &["SENTINEL", "FAILOVER", "mymaster"],
    )
    .unwrap();
    eventually("the replica is the primary", PATIENCE, || async {
        primary_port() == Some(replica.port)
    })
    .await;
    // Writes land on the new primary, over TLS, and the other node reads them.
    let mut v = 2;
    eventually(
        "a write lands after the failover and b reads it",
        PATIENCE,
        || {
            v += 1;
            let (ra, rb, v) = (&ra, &rb, v);
            async move { ra.set("k", v).await.is_ok() && rb.get("k").await.as_deref() == Some(&v) }
        },
    )
    .await;
    let role: Vec<redis::Value> = tls_query(replica.port, Some(pw), &["ROLE"]).unwrap();
    assert_eq!(
        role.first(),
        Some(&redis::Value::BulkString(b"master".to_vec())),
        "the promoted replica is the primary"
    );
}
