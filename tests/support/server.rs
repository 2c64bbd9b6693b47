//! In-process HTTPS servers (token server, policy proxy, CDN, ad-hoc fakes) built from an
//! axum router. Each numbers the connections it accepts, tells a request which connection
//! it came on ([`ConnectionId`] in its extensions), and notes which connections ended, so
//! tests can see how a client used its connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

pub struct TestServer {
    pub addr: SocketAddr,
    connections: Arc<Connections>,
    task: JoinHandle<()>,
}

/// The number of the connection (from 0, in the order accepted) a request came on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionId(pub u64);

#[derive(Default)]
struct Connections {
    accepted: AtomicU64,
    ended: Mutex<Vec<u64>>,
}

impl TestServer {
    /// `IP:PORT`, the form image references and `Host` headers use.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `https://127.0.0.1:PORT`, without a trailing slash.
    pub fn base(&self) -> String {
        format!("https://{}", self.host())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// TCP connections accepted so far.
    pub fn connections_accepted(&self) -> u64 {
        self.connections.accepted.load(Ordering::SeqCst)
    }

    /// The connections that have ended (closed by either side, or failed their handshake).
    pub fn connections_ended(&self) -> Vec<ConnectionId> {
        let ended = self.connections.ended.lock().unwrap();
        ended.iter().map(|&n| ConnectionId(n)).collect()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every open connection, so
        // a dropped server really stops answering (tests rely on that for "registry gone").
        self.task.abort();
    }
}

/// Serves `router` over TLS on a fresh 127.0.0.1 port, speaking HTTP/1.1 or HTTP/2 as ALPN
/// decides (the server config offers both), like real registries and CDNs do.
pub async fn serve_tls(router: axum::Router, tls: Arc<rustls::ServerConfig>) -> TestServer {
    serve_tls_on("127.0.0.1", router, tls).await
}

/// [`serve_tls`] on another loopback address (`127.0.0.2`…), which Linux routes to `lo` like
/// `127.0.0.1`: a second "host" for tests where hosts must differ.
pub async fn serve_tls_on(
    ip: &str,
    router: axum::Router,
    tls: Arc<rustls::ServerConfig>,
) -> TestServer {
    let listener = TcpListener::bind(format!("{ip}:0"))
        .await
        .unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
    let addr = listener.local_addr().expect("local addr");
    let acceptor = TlsAcceptor::from(tls);
    let connections = Arc::new(Connections::default());
    let book = connections.clone();
    let task = tokio::spawn(async move {
        let mut open = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else { continue };
                    // As Go's net/http and nginx do: with Nagle's algorithm, an answer written
                    // in two pieces waits for the client's delayed ACK, 40 ms on Linux.
                    let _ = tcp.set_nodelay(true);
                    let acceptor = acceptor.clone();
                    let id = book.accepted.fetch_add(1, Ordering::SeqCst);
                    let service = TowerToHyperService::new(
                        router.clone().layer(axum::Extension(ConnectionId(id))),
                    );
                    let book = book.clone();
                    open.spawn(async move {
                        // A failed handshake is part of some tests (wrong CA); nothing to do.
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            let _ = auto::Builder::new(TokioExecutor::new())
                                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                                .await;
                        }
                        book.ended.lock().unwrap().push(id);
                    });
                }
                // Reap finished connections so a long test does not accumulate handles.
                Some(_) = open.join_next(), if !open.is_empty() => {}
            }
        }
    });
    TestServer {
        addr,
        connections,
        task,
    }
}
