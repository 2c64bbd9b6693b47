//! What is known of each origin (scheme://host:port) pullgate talks to: the HTTP version its
//! connections negotiate, how many requests its last session had in flight at once, when
//! its connections went idle, and whether a burst of warm-ups is opening connections to it
//! now. The warm-ups (see `warm.rs`) are sized from this.
//!
//! The protocol is learnt when a connection's TLS handshake ends (ALPN), by a layer on the
//! HTTP client's connector ([`HandshakeLayer`]), one round trip before the first answer. The
//! connector is not told which origin it connects to, so every request is sent inside a
//! [`Dial`] (a task-local) naming its origin and whether it is a warm-up: a connection is
//! opened by the first poll of the request that needs it, in that request's task.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::client::legacy::connect::Connection;
use tokio::sync::Notify;
use url::Url;

/// An origin's HTTP version, as its last new connection negotiated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Protocol {
    /// No connection to it has been opened yet.
    Unknown,
    /// HTTP/1.x: one request in flight per connection.
    Http1,
    /// HTTP/2: every request on one connection.
    Http2,
}

impl Protocol {
    fn from_u8(value: u8) -> Protocol {
        match value {
            1 => Protocol::Http1,
            2 => Protocol::Http2,
            _ => Protocol::Unknown,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Protocol::Unknown => 0,
            Protocol::Http1 => 1,
            Protocol::Http2 => 2,
        }
    }
}

/// Origins remembered; a registry not asked for an hour is learnt again.
const ORIGINS: u64 = 10_000;
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Every origin's [`Origin`], shared by all sessions of a client.
pub(super) struct Origins {
    known: moka::sync::Cache<String, Arc<Origin>>,
}

impl Origins {
    pub(super) fn new() -> Self {
        Origins {
            known: moka::sync::Cache::builder()
                .max_capacity(ORIGINS)
                .time_to_idle(FORGET_AFTER)
                .build(),
        }
    }

    /// What is known of `url`'s origin.
    pub(super) fn of(&self, url: &Url) -> Arc<Origin> {
        self.known.get_with(url.origin().ascii_serialization(), || {
            Arc::new(Origin::default())
        })
    }
}

/// What is known of one origin.
#[derive(Default)]
pub(super) struct Origin {
    /// A [`Protocol`], as a byte.
    protocol: AtomicU8,
    /// Requests its last session had in flight at once (0: no session ended yet).
    wanted: AtomicUsize,
    /// When its last session ended, and with it the use of its connections.
    idle_since: Mutex<Option<Instant>>,
    /// A burst of warm-ups is opening connections to it.
    warming: AtomicBool,
    /// Woken when a connection to it negotiates HTTP/2, which ends any burst.
    multiplexed: Notify,
}

impl Origin {
    pub(super) fn protocol(&self) -> Protocol {
        Protocol::from_u8(self.protocol.load(Ordering::SeqCst))
    }

    /// Notes the protocol a new connection to the origin negotiated. The latest connection
    /// tells: a registry moved behind another proxy speaks what that proxy speaks.
    pub(super) fn connected(&self, protocol: Protocol) {
        self.protocol.store(protocol.as_u8(), Ordering::SeqCst);
        if protocol == Protocol::Http2 {
            self.multiplexed.notify_waiters();
        }
    }

    /// Returns once a connection to the origin has negotiated HTTP/2.
    pub(super) async fn until_multiplexed(&self) {
        loop {
            let notified = self.multiplexed.notified();
            if self.protocol() == Protocol::Http2 {
                return;
            }
            notified.await;
        }
    }

    /// Notes the end (`at`) of a session that had at most `peak` requests to the origin in
    /// flight at once: their connections then wait in the pool for the next one.
    pub(super) fn session_ended(&self, peak: usize, at: Instant) {
        if peak > 0 {
            self.wanted.store(peak, Ordering::SeqCst);
        }
        *self
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(at);
    }

    /// Requests the origin's last session had in flight at once, 0 before one ended.
    pub(super) fn wanted(&self) -> usize {
        self.wanted.load(Ordering::SeqCst)
    }

    /// Whether the origin's connections went idle less than `within` ago.
    pub(super) fn idle_within(&self, within: Duration) -> bool {
        self.idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|t| t.elapsed() < within)
    }

    /// Claims the origin's one burst of warm-ups; `None` while another runs.
    pub(super) fn claim_burst(self: &Arc<Self>) -> Option<BurstClaim> {
        self.warming
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .ok()
            .map(|_| BurstClaim(self.clone()))
    }
}

/// The right to open an origin's connections ahead of need, given back when dropped.
pub(super) struct BurstClaim(Arc<Origin>);

impl BurstClaim {
    pub(super) fn origin(&self) -> &Arc<Origin> {
        &self.0
    }
}

impl Drop for BurstClaim {
    fn drop(&mut self) {
        self.0.warming.store(false, Ordering::SeqCst);
    }
}

tokio::task_local! {
    /// The request being sent by this task: read by the connector when it opens a connection.
    static DIAL: Dial;
}

/// Whom a request is sent to, for the connector to note what its new connection negotiated.
#[derive(Clone)]
pub(super) struct Dial {
    pub(super) origin: Arc<Origin>,
    /// For a warm-up: set when its connection negotiated HTTP/1.1, on which it is then sent.
    /// A warm-up's connection that negotiates HTTP/2 is of no use (that one connection
    /// carries every request, and the first request to the origin is opening it already).
    pub(super) warm_up: Option<Arc<AtomicBool>>,
}

impl Dial {
    /// Runs `request` (the future sending it) inside this dial.
    pub(super) async fn run<F: Future>(self, request: F) -> F::Output {
        DIAL.scope(self, request).await
    }
}

/// Why a warm-up's connection was closed unused.
#[derive(Debug, thiserror::Error)]
#[error("the connection negotiated HTTP/2, which needs no warm-up")]
pub(crate) struct WarmUpOnHttp2;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A layer for reqwest's connector that notes each new connection's protocol for the origin
/// its [`Dial`] names, and closes a warm-up's connection that negotiated HTTP/2 before a
/// request is sent on it.
#[derive(Clone, Copy, Default)]
pub(super) struct HandshakeLayer;

impl<S> tower::Layer<S> for HandshakeLayer {
    type Service = Handshakes<S>;

    fn layer(&self, inner: S) -> Handshakes<S> {
        Handshakes { inner }
    }
}

#[derive(Clone)]
pub(super) struct Handshakes<S> {
    inner: S,
}

impl<S, R> tower::Service<R> for Handshakes<S>
where
    S: tower::Service<R, Error = BoxError>,
    S::Response: Connection + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // Called from the first poll of the request that needs the connection.
        let dial = DIAL.try_with(Dial::clone).ok();
        let connecting = self.inner.call(request);
        Box::pin(async move {
            let conn = connecting.await?;
            if let Some(dial) = dial {
                let protocol = if conn.connected().is_negotiated_h2() {
                    Protocol::Http2
                } else {
                    Protocol::Http1
                };
                // Noted before the connection reaches the pool, so that a burst of warm-ups
                // stops before any of them could be sent on it.
                dial.origin.connected(protocol);
                match (&dial.warm_up, protocol) {
                    (Some(_), Protocol::Http2) => {
                        return Err(Box::new(WarmUpOnHttp2) as BoxError);
                    }
                    (Some(on_wire), _) => on_wire.store(true, Ordering::SeqCst),
                    (None, _) => {}
                }
            }
            Ok(conn)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_burst_at_a_time_and_http2_wakes_its_waiters() {
        let origins = Origins::new();
        let url = Url::parse("https://r.example/v2/").unwrap();
        let origin = origins.of(&url);
        assert!(Arc::ptr_eq(
            &origin,
            &origins.of(&Url::parse("https://r.example:443/x").unwrap())
        ));
        let claim = origin.claim_burst().expect("first claim");
        assert!(origin.claim_burst().is_none(), "a second burst waits");
        drop(claim);
        assert!(origin.claim_burst().is_some());

        let waiter = tokio::spawn({
            let origin = origin.clone();
            async move { origin.until_multiplexed().await }
        });
        origin.connected(Protocol::Http1);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        origin.connected(Protocol::Http2);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(origin.protocol(), Protocol::Http2);
    }

    #[test]
    fn a_session_end_notes_its_peak_and_idle_time() {
        let origin = Origin::default();
        assert_eq!(origin.wanted(), 0);
        assert!(!origin.idle_within(Duration::from_secs(30)));
        origin.session_ended(7, Instant::now());
        origin.session_ended(0, Instant::now());
        assert_eq!(
            origin.wanted(),
            7,
            "a session without requests keeps the last peak"
        );
        assert!(origin.idle_within(Duration::from_secs(30)));
        assert!(!origin.idle_within(Duration::ZERO));
    }
}
