//! Warm-ups: opening a registry's connections before the requests that need them.
//!
//! Over HTTP/1.1 each request in flight needs a connection of its own, and a probe's blob
//! GETs go out together as soon as the manifest arrives; opened only then, each connection
//! would cost the blob GET on it two round trips (TCP + TLS). So a session starts, beside its
//! first request, a burst of warm-ups: `GET /v2/` without credentials, each on a new
//! connection, read to the end so that the connection waits in the pool for the blob GETs.
//! The connection pool cannot open a connection without a request on it, hence the ping.
//!
//! The size of the burst comes from what is known of the origin: none for HTTP/2 (one
//! connection carries every request), none for an HTTP/1.1 origin whose pool is likely still
//! warm, else as many as its last session had requests in flight at once; for an origin
//! never seen, a guess of [`MAX_WARM`], unless it is a registry known to speak HTTP/2. When
//! the origin turns out to speak HTTP/2 (its first connection's TLS handshake tells, see
//! `origins.rs`), the burst stops before any warm-up is sent. One burst runs per origin at a
//! time. Each later request of the session waits for a warmed connection rather than race
//! the burst with a new connection of its own.

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::sync::Semaphore;
use url::Url;

use super::error::display_url;
use super::origins::{BurstClaim, Origin, Protocol};
use super::transport::{POOL_IDLE_PER_ORIGIN, Transport};

/// The most warm-ups of one burst: with the first request's connection, as many
/// connections as the pool keeps idle for an origin (and a probe's blob GETs use at once).
pub(super) const MAX_WARM: usize = POOL_IDLE_PER_ORIGIN - 1;

/// An origin whose connections went idle less than this share of the pool's idle time ago
/// still has them pooled (the rest of it is a margin for the session about to use them).
fn still_pooled(pool_idle: Duration) -> Duration {
    pool_idle * 3 / 4
}

/// Registry hosts that speak HTTP/2: their first probe sends no warm-ups. (A host wrongly
/// listed only goes without warm-ups until its first connection has told its protocol.)
const HTTP2_HOSTS: [&str; 7] = [
    "registry-1.docker.io",
    "ghcr.io",
    "gcr.io",
    "quay.io",
    "public.ecr.aws",
    "mcr.microsoft.com",
    "registry.k8s.io",
];
const HTTP2_DOMAINS: [&str; 4] = [".gcr.io", ".pkg.dev", ".amazonaws.com", ".azurecr.io"];

fn known_http2(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    HTTP2_HOSTS.contains(&host.as_str()) || HTTP2_DOMAINS.iter().any(|d| host.ends_with(d))
}

/// How many warm-ups a session to `origin` (on `host`) starting now sends, when pooled
/// connections are kept `pool_idle`.
fn burst_size(origin: &Origin, host: &str, pool_idle: Duration) -> usize {
    match origin.protocol() {
        Protocol::Http2 => 0,
        Protocol::Http1 if origin.idle_within(still_pooled(pool_idle)) => 0,
        Protocol::Http1 => origin.wanted().saturating_sub(1).min(MAX_WARM),
        Protocol::Unknown if known_http2(host) => 0,
        Protocol::Unknown => MAX_WARM,
    }
}

/// A session's warm-ups, as its own requests see them.
pub(super) struct Warming {
    /// A permit for each pooled connection made ready for a later request: each warm-up's
    /// when its answer was read, the first request's when its answer came. Closed when the
    /// burst is over (or there is none): the pool then holds all it will get.
    ready: Semaphore,
    /// Whether the session's first request has been sent.
    started: AtomicBool,
    /// How long the session's first request took, its connection included.
    first_took: OnceLock<Duration>,
    /// Warm-ups sent.
    sent: AtomicU32,
}

impl Default for Warming {
    fn default() -> Self {
        Warming {
            ready: Semaphore::new(0),
            started: AtomicBool::new(false),
            first_took: OnceLock::new(),
            sent: AtomicU32::new(0),
        }
    }
}

impl Warming {
    pub(super) fn sent(&self) -> u32 {
        self.sent.load(Ordering::Relaxed)
    }

    fn set_over(&self) {
        self.ready.close();
    }

    /// Called before each request of the session; returns whether it is the first. The first
    /// goes at once, beside the burst. A later one, while the burst runs, waits for a warmed
    /// connection, which is ready sooner than a new one would be; but no longer than the
    /// first request took (a new connection and an answer): a warm-up not answered by then
    /// is stuck, and the request goes ahead on a connection of its own.
    pub(super) async fn before_request(&self) -> bool {
        if !self.started.swap(true, Ordering::SeqCst) {
            return true;
        }
        let Some(&limit) = self.first_took.get() else {
            return false;
        };
        match tokio::time::timeout(limit, self.ready.acquire()).await {
            // Taken for good: the connection it stands for is this request's.
            Ok(Ok(permit)) => permit.forget(),
            // The burst is over.
            Ok(Err(_)) => {}
            Err(_) => tracing::debug!("no warmed connection in time: the request opens its own"),
        }
        false
    }

    /// Notes how long the session's first request took; its connection is then ready for
    /// another request.
    pub(super) fn first_took(&self, took: Duration) {
        if self.first_took.set(took).is_ok() {
            self.ready.add_permits(1);
        }
    }

    /// Notes a warm-up's connection ready in the pool.
    fn warmed(&self) {
        self.ready.add_permits(1);
    }
}

/// What a session needs to warm its registry's connections.
pub(super) struct Burst<'a> {
    pub(super) transport: &'a Transport,
    /// The registry's base URL.
    pub(super) base: &'a Url,
    pub(super) deadline: Instant,
    pub(super) warming: &'a Warming,
}

impl Burst<'_> {
    /// Runs `work` (the session's requests) with the burst of warm-ups its registry calls
    /// for beside it, in the same task; when `work` is done, warm-ups still running are let go.
    pub(super) async fn beside<F: Future>(self, work: F) -> F::Output {
        let origin = self.transport.origin(self.base);
        let size = burst_size(
            &origin,
            self.base.host_str().unwrap_or_default(),
            self.transport.options().pool_idle,
        );
        let claim = if size == 0 {
            None
        } else {
            origin.claim_burst()
        };
        let Some(claim) = claim else {
            self.warming.set_over();
            return work.await;
        };
        tracing::debug!(registry = %display_url(self.base), warm_ups = size, "warming registry connections");
        let warming = self.warming;
        let burst = self.run(claim, size);
        tokio::pin!(work, burst);
        let mut burst_over = false;
        loop {
            // `work` first: the session's first request takes its connection slot and starts
            // its connection before any warm-up does.
            tokio::select! {
                biased;
                out = &mut work => {
                    warming.set_over();
                    return out;
                }
                () = &mut burst, if !burst_over => burst_over = true,
            }
        }
    }

    async fn run(&self, claim: BurstClaim, size: usize) {
        let ping = self.base.join("/v2/").expect("an absolute path joins");
        let warm_ups = join_all((0..size).map(|_| async {
            let sent = &self.warming.sent;
            match self.transport.warm_up(&ping, self.deadline, sent).await {
                Ok(true) => self.warming.warmed(),
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "warm-up failed"),
            }
        }));
        // HTTP/2 is checked first, every time: a connection that negotiated it may have
        // reached the pool, and a warm-up polled now could be sent on it.
        tokio::select! {
            biased;
            () = claim.origin().until_multiplexed() => {
                tracing::debug!(registry = %display_url(self.base), "registry speaks HTTP/2: warm-ups stopped");
            }
            _ = warm_ups => {}
        }
        self.warming.set_over();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::origins::Origins;

    const POOL_IDLE: Duration = Duration::from_secs(30);

    #[test]
    fn the_burst_follows_what_is_known_of_the_origin() {
        let burst_size = |o: &Origin, host: &str| burst_size(o, host, POOL_IDLE);
        let origins = Origins::new();
        let at = |s: &str| origins.of(&Url::parse(s).unwrap());
        let fresh = at("https://registry.example/");
        assert_eq!(burst_size(&fresh, "registry.example"), MAX_WARM);
        for host in [
            "registry-1.docker.io",
            "ghcr.io",
            "europe-docker.pkg.dev",
            "x.AzureCR.io",
        ] {
            assert_eq!(
                burst_size(&at(&format!("https://{host}/")), host),
                0,
                "{host}"
            );
        }
        let h2 = at("https://h2.example/");
        h2.connected(Protocol::Http2);
        assert_eq!(burst_size(&h2, "h2.example"), 0);

        let h1 = at("https://h1.example/");
        h1.connected(Protocol::Http1);
        assert_eq!(
            burst_size(&h1, "h1.example"),
            0,
            "no session ended: nothing to go by"
        );
        h1.session_ended(9, Instant::now());
        assert_eq!(
            burst_size(&h1, "h1.example"),
            0,
            "its connections are still pooled"
        );
        h1.session_ended(9, Instant::now() - POOL_IDLE);
        assert_eq!(burst_size(&h1, "h1.example"), 8, "its pool has gone cold");
        h1.session_ended(40, Instant::now() - POOL_IDLE);
        assert_eq!(burst_size(&h1, "h1.example"), MAX_WARM);
    }

    #[tokio::test(start_paused = true)]
    async fn later_requests_wait_for_a_warmed_connection_at_most_as_long_as_the_first_took() {
        let warming = Warming::default();
        let waited = || async {
            let started = tokio::time::Instant::now();
            assert!(!warming.before_request().await);
            started.elapsed()
        };
        assert!(warming.before_request().await, "the first goes at once");
        warming.first_took(Duration::from_millis(50));
        assert_eq!(
            waited().await,
            Duration::ZERO,
            "the first request's connection"
        );
        warming.warmed();
        warming.warmed();
        assert_eq!(waited().await, Duration::ZERO, "a warm-up's connection");
        assert_eq!(waited().await, Duration::ZERO, "another");
        assert_eq!(
            waited().await,
            Duration::from_millis(50),
            "none left: the limit"
        );
        warming.set_over();
        assert_eq!(
            waited().await,
            Duration::ZERO,
            "an ended burst holds nothing up"
        );
    }
}
