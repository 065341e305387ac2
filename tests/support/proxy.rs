//! A fault-injecting TCP proxy on loopback, between cache nodes and a test's redis-server.
//!
//! Faults apply to the connections of one kind: the subscriber's (recognised by the
//! `SUBSCRIBE` it sends), the data connections, or all. A fault set later applies to existing
//! connections too; `Fault::None` heals them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to the traffic of the targeted connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    None,
    /// Hold every chunk this long before forwarding it.
    Delay(Duration),
    /// Forward nothing in either direction and keep the sockets open: no FIN, no RST, like a
    /// link that died silently (a half-open connection).
    Blackhole,
    /// Stop reading what the server sends: the server's output buffer for the client grows.
    StopReading,
    /// Forward this many more bytes (server to client), then reset both sides.
    CutAfter(usize),
    /// Read what clients send and forward none of it, nor anything back: a server that takes
    /// requests and never answers. What was swallowed is kept (`swallowed`), so a test can
    /// count the requests that reached "Redis". The connection's request/reply pairing is lost
    /// for good: `reset` after healing.
    Swallow,
}

/// Which connections a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Subscriber,
    Data,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Setting {
    fault: Fault,
    target: Target,
    /// Bumped by `reset`: connections open at that moment are torn down with an RST.
    resets: u64,
}

pub struct FaultProxy {
    port: u16,
    setting: watch::Sender<Setting>,
    accept: tokio::task::JoinHandle<()>,
    open: Arc<AtomicUsize>,
    swallowed: Swallowed,
}

/// Bytes swallowed per connection.
type Swallowed = Arc<Mutex<HashMap<usize, Vec<u8>>>>;

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (setting, _) = watch::channel(Setting {
            fault: Fault::None,
            target: Target::All,
            resets: 0,
        });
        let open = Arc::new(AtomicUsize::new(0));
        let swallowed = Swallowed::default();
        let (tx, o, sw) = (setting.clone(), open.clone(), swallowed.clone());
        let accept = tokio::spawn(async move {
            let mut id = 0;
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue; // upstream down: the client sees its connection closed
                };
                id += 1;
                let record = (id, sw.clone());
                tokio::spawn(relay(client, server, tx.subscribe(), o.clone(), record));
            }
        });
        Self {
            port,
            setting,
            accept,
            open,
            swallowed,
        }
    }

    pub fn url(&self) -> String {
        super::server::url_for_port(self.port)
    }

    pub fn set(&self, fault: Fault, target: Target) {
        self.setting.send_modify(|s| {
            s.fault = fault;
            s.target = target;
        });
    }

    pub fn heal(&self) {
        self.set(Fault::None, Target::All);
    }

    /// Tears down every open connection with an RST.
    pub fn reset(&self) {
        self.setting.send_modify(|s| s.resets += 1);
    }

    /// Connections currently relayed.
    pub fn open_connections(&self) -> usize {
        self.open.load(SeqCst)
    }

    /// How many times `needle` occurs in what `Fault::Swallow` has swallowed so far, each
    /// connection's bytes taken whole (a request split across reads still counts once).
    pub fn swallowed_count(&self, needle: &[u8]) -> usize {
        self.swallowed
            .lock()
            .unwrap()
            .values()
            .map(|bytes| bytes.windows(needle.len()).filter(|w| *w == needle).count())
            .sum()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset();
    }
}

/// In the tests' secure mode the proxy terminates TLS on both sides (the server's certificate
/// towards the client, the test CA towards Redis), so it sees, and faults, the protocol
/// itself as it does in the plain mode.
mod tls {
    use std::sync::{Arc, OnceLock};
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    pub fn pair() -> &'static (TlsAcceptor, TlsConnector) {
        static PAIR: OnceLock<(TlsAcceptor, TlsConnector)> = OnceLock::new();
        PAIR.get_or_init(|| {
            let secure = super::super::server::secure().expect("secure mode");
            let file = |f: &str| secure.dir.join(f);
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(file("server.crt"))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
            let key = PrivateKeyDer::from_pem_file(file("server.key")).unwrap();
            let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
            let server = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_file_iter(file("ca.crt")).unwrap() {
                roots.add(ca.unwrap()).unwrap();
            }
            let client = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            (
                TlsAcceptor::from(Arc::new(server)),
                TlsConnector::from(Arc::new(client)),
            )
        })
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    setting: watch::Receiver<Setting>,
    open: Arc<AtomicUsize>,
    record: (usize, Swallowed),
) {
    // Every close the proxy makes is abortive (RST), like a reset link, never a polite FIN.
    let _ = client.set_zero_linger();
    let _ = server.set_zero_linger();
    if super::server::secure().is_none() {
        return relay_streams(client, server, setting, open, record).await;
    }
    let (acceptor, connector) = tls::pair();
    let ip = tokio_rustls::rustls::pki_types::ServerName::IpAddress(
        std::net::IpAddr::from([127, 0, 0, 1]).into(),
    );
    let Ok(client) = acceptor.accept(client).await else {
        return;
    };
    let Ok(server) = connector.connect(ip, server).await else {
        return;
    };
    relay_streams(client, server, setting, open, record).await
}

async fn relay_streams<C, S>(
    client: C,
    server: S,
    mut setting: watch::Receiver<Setting>,
    open: Arc<AtomicUsize>,
    record: (usize, Swallowed),
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    open.fetch_add(1, SeqCst);
    let resets_at_start = setting.borrow().resets;
    let is_subscriber = Arc::new(Mutex::new(false));
    let (client_r, client_w) = tokio::io::split(client);
    let (server_r, server_w) = tokio::io::split(server);
    let up = pump(
        client_r,
        server_w,
        setting.clone(),
        is_subscriber.clone(),
        Dir::Up,
        record.clone(),
    );
    let down = pump(
        server_r,
        client_w,
        setting.clone(),
        is_subscriber,
        Dir::Down,
        record,
    );
    let reset = async {
        while setting.changed().await.is_ok() {
            if setting.borrow().resets != resets_at_start {
                return;
            }
        }
    };
    // Either side ending (EOF, a cut, an error) ends the relay: both sockets are dropped with
    // an RST.
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = reset => {}
    }
    open.fetch_sub(1, SeqCst);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

fn applies(s: &Setting, is_subscriber: bool) -> Fault {
    match (s.target, is_subscriber) {
        (Target::All, _) | (Target::Subscriber, true) | (Target::Data, false) => s.fault,
        _ => Fault::None,
    }
}

async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    mut setting: watch::Receiver<Setting>,
    is_subscriber: Arc<Mutex<bool>>,
    dir: Dir,
    record: (usize, Swallowed),
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut cut_budget: Option<usize> = None;
    loop {
        // Wait while the fault says not to read.
        loop {
            let fault = applies(&setting.borrow(), *is_subscriber.lock().unwrap());
            let hold = match fault {
                Fault::Blackhole => true,
                Fault::StopReading | Fault::Swallow => dir == Dir::Down,
                _ => false,
            };
            if !hold {
                break;
            }
            if setting.changed().await.is_err() {
                return;
            }
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // Re-check the fault when it changes mid-read.
            r = setting.changed() => {
                if r.is_err() { return; }
                continue;
            }
        };
        if dir == Dir::Up && is_subscribe(&buf[..n]) {
            *is_subscriber.lock().unwrap() = true;
        }
        let fault = applies(&setting.borrow(), *is_subscriber.lock().unwrap());
        match fault {
            Fault::Delay(d) => tokio::time::sleep(d).await,
            Fault::Blackhole => continue, // arrived just as the link died: dropped
            Fault::Swallow => {
                let (id, swallowed) = &record;
                swallowed
                    .lock()
                    .unwrap()
                    .entry(*id)
                    .or_default()
                    .extend_from_slice(&buf[..n]);
                continue;
            }
            Fault::CutAfter(budget) if dir == Dir::Down => {
                let left = cut_budget.get_or_insert(budget);
                if n >= *left {
                    let _ = to.write_all(&buf[..*left]).await;
                    return;
                }
                *left -= n;
            }
            _ => cut_budget = None,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// True when the chunk holds a SUBSCRIBE *command* (`*N\r\n$9\r\nSUBSCRIBE\r\n`), not merely
/// the word as a key or value.
fn is_subscribe(chunk: &[u8]) -> bool {
    const NAME: &[u8] = b"$9\r\nSUBSCRIBE\r\n";
    (2..chunk.len()).any(|i| {
        chunk[i..].len() >= NAME.len()
            && chunk[i..i + NAME.len()].eq_ignore_ascii_case(NAME)
            && chunk[..i].ends_with(b"\r\n")
            && {
                // The line before must be the array header `*N`, at a command boundary.
                let head = &chunk[..i - 2];
                let start = head.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
                head[start..].first() == Some(&b'*')
                    && head[start + 1..].iter().all(u8::is_ascii_digit)
            }
    })
}
