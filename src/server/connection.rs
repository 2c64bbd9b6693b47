//! The connections of the webhook and admin listeners, each bounded in time and in number.
//!
//! Every phase has a deadline: the TLS handshake, the first request's headers (which covers
//! HTTP/2 and HTTP/1 detection), and the wait for the next request on a kept-alive connection,
//! HTTP/1 and HTTP/2 alike; HTTP/2 connections are also pinged, so a peer that vanished is
//! noticed. Connections are capped in total and per source address, and at a cap the oldest
//! idle connection (one with no request in flight, handshaking ones included) is closed to
//! make room, so a flood of idle connections can never lock the apiserver out. Accept errors
//! that say the process ran out of descriptors or buffers pause the accept loop, and free the
//! oldest idle connection, instead of spinning on the error.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt as _;

use super::tracker::{Ticket, Tracker};

/// Deadlines and caps of one listener's connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once. At the cap a new connection closes the oldest idle one, or
    /// is refused when every connection has a request in flight.
    pub max_connections: usize,
    /// Connections open at once from one source address; at the cap, the same rule within
    /// that address's connections.
    pub max_per_source: usize,
    /// From accept to the end of the TLS handshake.
    pub handshake_timeout: Duration,
    /// From the handshake (accept, without TLS) to the end of the first request's headers;
    /// also the most one HTTP/1 request's headers may take.
    pub request_header_timeout: Duration,
    /// How long a connection stays open with no request in flight after answering one.
    pub idle_timeout: Duration,
}

impl ConnectionLimits {
    /// The webhook port: the apiserver keeps one or a few HTTP/2 connections per replica (one
    /// per concurrent call where HTTP/2 is turned off), so these caps leave it ample room
    /// while bounding what a pod can hold open.
    pub fn webhook() -> Self {
        ConnectionLimits {
            max_connections: 512,
            max_per_source: 256,
            handshake_timeout: Duration::from_secs(10),
            request_header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }

    /// The admin port: kubelet probes and a Prometheus scrape, a few connections at a time.
    pub fn admin() -> Self {
        ConnectionLimits {
            max_connections: 32,
            max_per_source: 8,
            handshake_timeout: Duration::from_secs(5),
            request_header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// HTTP/2 pings on an idle connection, and how long an answer may take, so a peer that is
/// gone is noticed; the apiserver's Go client answers pings.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams one HTTP/2 connection may have open; the apiserver opens another connection when
/// it needs more.
const MAX_STREAMS: u32 = 64;
/// Flow-control windows: what a peer may send before the server reads it. A usual review
/// (tens of KiB) fits in one window and the largest (the apiserver's 3 MiB object, twice on
/// UPDATE) flows in a few dozen round trips of a cluster network; a connection cannot park
/// more than this in the server.
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 128 * 1024;
/// HTTP/1 read buffer, and the HTTP/2 header list: the apiserver's headers are a few hundred
/// bytes.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// How long a connection closed for being idle or for making room gets to finish.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The pause after an accept error, doubled on each error in a row up to the maximum.
const MIN_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// Accept errors are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The address a request came from, in its extensions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub(crate) SocketAddr);

/// Why a connection was not accepted or was closed, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Closed {
    /// Refused at accept: at a cap, with every connection busy.
    Refused,
    /// Closed to make room for a new connection.
    Evicted,
    /// The handshake failed or did not finish in time.
    Handshake,
    /// No request within the phase's deadline.
    Idle,
}

impl Closed {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Closed::Refused => "refused",
            Closed::Evicted => "evicted",
            Closed::Handshake => "handshake",
            Closed::Idle => "idle",
        }
    }
}

/// The accept loop's pause after errors, and when it last warned about one.
#[derive(Debug)]
pub(crate) struct Backoff {
    pause: Duration,
    warned: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            pause: MIN_PAUSE,
            warned: None,
        }
    }
}

/// Whether an accept error says the process (or the system) ran out of something that a
/// closed connection gives back: descriptors, socket buffers, memory.
fn out_of_resources(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS and ENOMEM, as Linux numbers them.
    cfg!(target_os = "linux") && matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

/// The next value `accept` yields. After an error it pauses (longer after each error in a
/// row, up to a second) instead of retrying at once, and after an error that says the process
/// ran out of descriptors it first calls `free` to close an idle connection.
pub(crate) async fn accept_backing_off<T, F, Fut>(
    mut accept: F,
    mut free: impl FnMut() -> bool,
    backoff: &mut Backoff,
    listener: &'static str,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    loop {
        match accept().await {
            Ok(accepted) => {
                backoff.pause = MIN_PAUSE;
                return accepted;
            }
            Err(e) => {
                let exhausted = out_of_resources(&e);
                let freed = exhausted && free();
                if backoff.warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    backoff.warned = Some(Instant::now());
                    tracing::warn!(
                        listener,
                        error = %e,
                        freed_idle_connection = freed,
                        pause_ms = backoff.pause.as_millis() as u64,
                        "accept failed; pausing"
                    );
                }
                tokio::time::sleep(backoff.pause).await;
                backoff.pause = (backoff.pause * 2).min(MAX_PAUSE);
            }
        }
    }
}

/// Accepts connections on `listener` until `stop` resolves, serving each through `handshake`
/// (TLS, or none) with `router`; returns the connections still open, which finish gracefully
/// once `drain` turns true.
pub(crate) async fn accept_until<H, Fut, IO>(
    listener: TcpListener,
    tracker: Arc<Tracker>,
    handshake: H,
    router: Router,
    drain: watch::Receiver<bool>,
    stop: impl Future<Output = ()>,
) -> JoinSet<()>
where
    H: Fn(TcpStream) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = io::Result<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut connections = JoinSet::new();
    let mut backoff = Backoff::default();
    tokio::pin!(stop);
    loop {
        let accept = accept_backing_off(
            || listener.accept(),
            || tracker.evict_oldest_idle(),
            &mut backoff,
            tracker.listener,
        );
        tokio::select! {
            () = &mut stop => break,
            (tcp, peer) = accept => {
                let Some(ticket) = tracker.admit(peer.ip()) else {
                    // Closing at once, without a byte: the peer retries elsewhere or later.
                    drop(tcp);
                    continue;
                };
                connections.spawn(serve(
                    tcp,
                    peer,
                    ticket,
                    handshake.clone(),
                    router.clone(),
                    drain.clone(),
                ));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections
}

/// The HTTP/1 and HTTP/2 settings every connection is served with.
fn http_builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_header_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(MAX_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    builder
}

/// Serves one connection until it closes, its deadline for the phase it is in passes, it is
/// evicted, or draining starts (then HTTP/1 finishes the request in flight and HTTP/2 sends
/// GOAWAY).
async fn serve<H, Fut, IO>(
    tcp: TcpStream,
    peer: SocketAddr,
    ticket: Ticket,
    handshake: H,
    router: Router,
    mut drain: watch::Receiver<bool>,
) where
    H: Fn(TcpStream) -> Fut,
    Fut: Future<Output = io::Result<IO>>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tracker = ticket.tracker.clone();
    let limits = &tracker.limits;
    let activity = ticket.activity.clone();
    let _ = tcp.set_nodelay(true);
    let io = tokio::select! {
        shaken = tokio::time::timeout(limits.handshake_timeout, handshake(tcp)) => match shaken {
            Ok(Ok(io)) => io,
            _ => {
                tracing::debug!(%peer, "handshake failed or timed out");
                tracker.metrics.connection_closed(tracker.listener, Closed::Handshake.as_str());
                return;
            }
        },
        () = activity.evict.notified() => return,
        _ = drain.wait_for(|d| *d) => return,
    };
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            request.extensions_mut().insert(Peer(peer));
            let busy = activity.begin();
            let answer = router.clone().oneshot(request);
            async move {
                let response = answer.await;
                drop(busy);
                response
            }
        })
    };
    let builder = http_builder(limits);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    // `None`: draining, which has its own deadline, kept by the server.
    let closed = loop {
        let deadline = activity
            .idle_deadline(limits)
            .unwrap_or_else(|| Instant::now() + limits.idle_timeout);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = drain.wait_for(|d| *d) => break None,
            () = activity.evict.notified() => break Some(Closed::Evicted),
            () = tokio::time::sleep_until(deadline) => {
                if activity
                    .idle_deadline(limits)
                    .is_some_and(|d| d <= Instant::now())
                {
                    break Some(Closed::Idle);
                }
            }
        }
    };
    conn.as_mut().graceful_shutdown();
    let Some(closed) = closed else {
        let _ = conn.await;
        return;
    };
    if closed == Closed::Idle {
        tracker
            .metrics
            .connection_closed(tracker.listener, Closed::Idle.as_str());
    }
    tracing::debug!(%peer, reason = closed.as_str(), "closing connection");
    let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn accept_errors_pause_the_loop_instead_of_spinning() {
        let calls = std::cell::Cell::new(0u32);
        let freed = std::cell::Cell::new(0u32);
        let mut backoff = Backoff::default();
        let started = Instant::now();
        // EMFILE for the first 40 calls, then a connection.
        let accepted = accept_backing_off(
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    if n <= 40 {
                        Err(io::Error::from_raw_os_error(24))
                    } else {
                        Ok(n)
                    }
                }
            },
            || {
                freed.set(freed.get() + 1);
                true
            },
            &mut backoff,
            "webhook",
        )
        .await;
        assert_eq!(accepted, 41);
        let waited = started.elapsed();
        // 10, 20, 40 … ms, then a second each time: 40 errors wait well over half a minute.
        assert!(waited >= Duration::from_secs(30), "{waited:?}");
        if cfg!(target_os = "linux") {
            assert_eq!(freed.get(), 40, "each EMFILE frees an idle connection");
        }
        assert_eq!(backoff.pause, MIN_PAUSE, "a success resets the pause");
    }
}
