//! A TCP proxy that adds network latency: every byte is delivered `one_way` after it was
//! sent, in both directions, and a new connection cannot carry data before the TCP handshake
//! would have completed (one round trip after `connect`). TLS passes through untouched, so
//! the client still verifies the upstream's certificate (issued for 127.0.0.1).
//!
//! Latency only, no bandwidth limit: what it models is a registry far away, where each new
//! connection costs TCP + TLS round trips and each request one more.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

pub struct DelayProxy {
    pub addr: SocketAddr,
    pub upstream: SocketAddr,
    pub one_way: Duration,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on a fresh 127.0.0.1 port and forwards every connection to `upstream` with
    /// `one_way` delay each way (round trip `2 * one_way`).
    pub async fn start(upstream: SocketAddr, one_way: Duration) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            let mut open = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        counter.fetch_add(1, Ordering::SeqCst);
                        open.spawn(relay(client, upstream, one_way));
                    }
                    Some(_) = open.join_next(), if !open.is_empty() => {}
                }
            }
        });
        DelayProxy {
            addr,
            upstream,
            one_way,
            connections,
            task,
        }
    }

    /// `127.0.0.1:PORT`, the form image references use.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.addr.port())
    }

    /// `https://127.0.0.1:PORT`, without a trailing slash.
    pub fn base(&self) -> String {
        format!("https://{}", self.host())
    }

    /// The round-trip time every exchange through this proxy pays.
    pub fn rtt(&self) -> Duration {
        self.one_way * 2
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, one_way: Duration) {
    let accepted = std::time::Instant::now();
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    // The relaying is done on plain threads with blocking sockets: `thread::sleep` wakes
    // within tens of microseconds of the deadline, where tokio's timer rounds each delivery up
    // to its next millisecond tick, which made every round trip about 2.6 ms too long.
    let (Ok(client), Ok(server)) = (client.into_std(), server.into_std()) else {
        return;
    };
    let _ = tokio::task::spawn_blocking(move || {
        for s in [&client, &server] {
            let _ = s.set_nonblocking(false);
            let _ = s.set_nodelay(true);
        }
        let (Ok(client_write), Ok(server_write)) = (client.try_clone(), server.try_clone()) else {
            return;
        };
        // The client's SYN reaches the server after one_way and the SYN-ACK comes back after
        // another: nothing the client sends can leave before then.
        let handshake_done = accepted + one_way * 2;
        let up = std::thread::spawn(move || {
            pump(client, server_write, one_way, Some(handshake_done));
        });
        pump(server, client_write, one_way, None);
        let _ = up.join();
    })
    .await;
}

/// Copies `from` to `to`, delivering each chunk `one_way` after it was read (or after
/// `not_before`, whichever is later). Ordering is kept; EOF is forwarded after the delay too.
fn pump(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    one_way: Duration,
    not_before: Option<std::time::Instant>,
) {
    use std::io::{Read as _, Write as _};
    use std::time::Instant;
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Option<Vec<u8>>)>();
    let writer = std::thread::spawn(move || {
        while let Ok((due, chunk)) = rx.recv() {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            match chunk {
                Some(bytes) => {
                    if to.write_all(&bytes).is_err() {
                        return;
                    }
                }
                None => {
                    let _ = to.shutdown(std::net::Shutdown::Write);
                    return;
                }
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).unwrap_or(0);
        let sent = not_before.map_or_else(Instant::now, |t| t.max(Instant::now()));
        let chunk = (n > 0).then(|| buf[..n].to_vec());
        let eof = chunk.is_none();
        if tx.send((sent + one_way, chunk)).is_err() || eof {
            break;
        }
    }
    drop(tx);
    let _ = writer.join();
}
