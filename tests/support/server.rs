//! In-process HTTPS servers (token server, policy proxy, CDN, ad-hoc fakes) built from an
//! axum router.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

pub struct TestServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
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
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else { continue };
                    // As Go's net/http and nginx do: with Nagle's algorithm, an answer written
                    // in two pieces waits for the client's delayed ACK, 40 ms on Linux.
                    let _ = tcp.set_nodelay(true);
                    let acceptor = acceptor.clone();
                    let service = TowerToHyperService::new(router.clone());
                    connections.spawn(async move {
                        // A failed handshake is part of some tests (wrong CA); nothing to do.
                        let Ok(tls) = acceptor.accept(tcp).await else { return };
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(TokioIo::new(tls), service)
                            .await;
                    });
                }
                // Reap finished connections so a long test does not accumulate handles.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    });
    TestServer { addr, task }
}
