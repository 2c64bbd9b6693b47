//! Bounds on what probes may hold of the process: sockets to registries and bytes of bodies
//! being read.
//!
//! Sockets are counted as connections, not requests. A request to an origin not known to
//! speak HTTP/2 may need a connection of its own, so it takes a slot; requests to an origin
//! that answered over HTTP/2 are multiplexed on one connection and share one slot, which keeps
//! the parallel blob probes that make the round-trip figures. Slots are bounded per registry
//! host (its ports folded together: a hostile registry may listen on thousands) and in total,
//! well under the process's descriptors. Idle pooled connections are not slots; they are
//! bounded by the descriptor ceiling, checked before every new connection (see
//! [`FdGuardLayer`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{Either, Ready, ready};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use url::Url;

use crate::fds::OpenFds;

/// Limits on sockets and body bytes, parsed from flags at the edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundLimits {
    /// Connections to registries, token endpoints and blob hosts at once, in total.
    pub max_connections: usize,
    /// Connections to one host at once (all its ports together).
    pub max_connections_per_host: usize,
    /// Memory for registry answers (manifests, tokens, error bodies) being read and parsed
    /// at once, over all probes; each takes three times its length.
    pub bodies_in_flight: usize,
    /// New connections are refused while this many descriptors are open (`None`: not
    /// counted); the rest are kept for the webhook's own connections.
    pub fd_ceiling: Option<u64>,
}

impl Default for OutboundLimits {
    fn default() -> Self {
        OutboundLimits {
            max_connections: 128,
            max_connections_per_host: 32,
            bodies_in_flight: 24 * 1024 * 1024,
            fd_ceiling: None,
        }
    }
}

/// The slots and the body budget, shared by every session of a client.
pub(crate) struct Outbound {
    total: Arc<Semaphore>,
    per_host: usize,
    hosts: moka::sync::Cache<String, Arc<Semaphore>>,
    /// Origins that answered over HTTP/2.
    multiplexed: moka::sync::Cache<String, ()>,
    /// The slot of each HTTP/2 origin with requests in flight, shared by them.
    shared: Mutex<SharedSlots>,
    /// The body budget, in KiB.
    bodies: Arc<Semaphore>,
}

#[derive(Default)]
struct SharedSlots {
    by_origin: HashMap<String, Weak<Lease>>,
    /// Dead entries are dropped when the map grows to this size.
    prune_at: usize,
}

/// One connection's worth of permits: its host's and the total's.
pub(crate) struct Lease {
    _host: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

/// What a request in flight holds until its response is dropped.
pub(crate) enum Slot {
    /// A connection of its own (HTTP/1, or not known yet).
    Own(#[allow(dead_code)] Lease),
    /// The HTTP/2 connection of its origin, shared with the other requests to it.
    Shared(#[allow(dead_code)] Arc<Lease>),
}

/// The smallest size at which the shared-slot map is pruned.
const MIN_PRUNE: usize = 256;

/// `bytes` in KiB, rounded up, the body budget's unit; at least one.
fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX)
}

/// The registry host a URL is counted against: its host without the port.
pub(crate) fn host_of(url: &Url) -> String {
    url.host_str().unwrap_or_default().to_ascii_lowercase()
}

/// scheme://host:port, the unit connections are pooled (and multiplexed) by.
fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

impl Outbound {
    pub(crate) fn new(limits: &OutboundLimits) -> Self {
        Outbound {
            total: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            per_host: limits.max_connections_per_host.max(1),
            hosts: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            multiplexed: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            shared: Mutex::default(),
            bodies: Arc::new(Semaphore::new(kib(limits.bodies_in_flight) as usize)),
        }
    }

    /// Waits for a connection's worth of permits for a request to `url`; the caller bounds
    /// the wait by its deadline.
    pub(crate) async fn slot(&self, url: &Url) -> Slot {
        let origin = origin(url);
        if !self.multiplexed.contains_key(&origin) {
            return Slot::Own(self.lease(url).await);
        }
        if let Some(live) = self.live(&origin) {
            return Slot::Shared(live);
        }
        let lease = Arc::new(self.lease(url).await);
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        // Another request may have taken the origin's slot while this one waited; then this
        // lease is given back and theirs shared.
        if let Some(live) = shared.by_origin.get(&origin).and_then(Weak::upgrade) {
            return Slot::Shared(live);
        }
        if shared.by_origin.len() >= shared.prune_at {
            shared.by_origin.retain(|_, lease| lease.strong_count() > 0);
            shared.prune_at = (2 * shared.by_origin.len()).max(MIN_PRUNE);
        }
        shared.by_origin.insert(origin, Arc::downgrade(&lease));
        Slot::Shared(lease)
    }

    /// A connection's worth of permits for a request that may as well not be sent (a
    /// warm-up): only when one is free at once, and never the last free one of its host or
    /// of the total, which a request that must be sent may be about to ask for.
    pub(crate) fn spare_slot(&self, url: &Url) -> Option<Slot> {
        let host = self
            .hosts
            .get_with(host_of(url), || Arc::new(Semaphore::new(self.per_host)));
        if host.available_permits() < 2 || self.total.available_permits() < 2 {
            return None;
        }
        let host = host.try_acquire_owned().ok()?;
        let total = self.total.clone().try_acquire_owned().ok()?;
        Some(Slot::Own(Lease {
            _host: host,
            _total: total,
        }))
    }

    fn live(&self, origin: &str) -> Option<Arc<Lease>> {
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        shared.by_origin.get(origin).and_then(Weak::upgrade)
    }

    /// The host's permit first, so requests queued for a slow host hold none of the total.
    async fn lease(&self, url: &Url) -> Lease {
        let host = self
            .hosts
            .get_with(host_of(url), || Arc::new(Semaphore::new(self.per_host)));
        let host = host
            .acquire_owned()
            .await
            .expect("connection semaphores are never closed");
        let total = self
            .total
            .clone()
            .acquire_owned()
            .await
            .expect("connection semaphores are never closed");
        Lease {
            _host: host,
            _total: total,
        }
    }

    /// Notes the protocol `url`'s origin answered with.
    pub(crate) fn learn(&self, url: &Url, version: http::Version) {
        if version == http::Version::HTTP_2 {
            let origin = origin(url);
            if !self.multiplexed.contains_key(&origin) {
                self.multiplexed.insert(origin, ());
            }
        }
    }

    /// Waits for `bytes` of the body budget; the caller bounds the wait by its deadline.
    pub(crate) async fn body_share(&self, bytes: usize) -> OwnedSemaphorePermit {
        self.bodies
            .clone()
            .acquire_many_owned(kib(bytes))
            .await
            .expect("the body semaphore is never closed")
    }

    /// Connections to `url`'s host in use now, for tests.
    #[cfg(test)]
    fn in_use(&self, url: &Url) -> usize {
        self.hosts
            .get(&host_of(url))
            .map_or(0, |s| self.per_host - s.available_permits())
    }
}

/// Why a new registry connection was not opened.
#[derive(Debug, thiserror::Error)]
#[error(
    "pullgate has {open} file descriptors open, its ceiling for registry connections is {ceiling}; the rest are kept for the apiserver's requests"
)]
pub struct OutOfDescriptors {
    pub open: u64,
    pub ceiling: u64,
}

/// A layer for reqwest's connector that refuses a new connection while the process has
/// `ceiling` descriptors or more open.
#[derive(Clone)]
pub(crate) struct FdGuardLayer {
    fds: Arc<OpenFds>,
    ceiling: u64,
    /// Set when a connection was refused, for the client to start a fresh pool (which
    /// closes the idle connections of the old one).
    pub(crate) pressed: Arc<std::sync::atomic::AtomicBool>,
}

impl FdGuardLayer {
    pub(crate) fn new(ceiling: u64) -> Self {
        FdGuardLayer {
            fds: Arc::new(OpenFds::default()),
            ceiling,
            pressed: Arc::default(),
        }
    }
}

impl<S> tower::Layer<S> for FdGuardLayer {
    type Service = FdGuard<S>;

    fn layer(&self, inner: S) -> FdGuard<S> {
        FdGuard {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct FdGuard<S> {
    inner: S,
    layer: FdGuardLayer,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, R> tower::Service<R> for FdGuard<S>
where
    S: tower::Service<R, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Either<Ready<Result<S::Response, BoxError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let ceiling = self.layer.ceiling;
        match self.layer.fds.get() {
            Some(open) if open >= ceiling => {
                self.layer
                    .pressed
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                Either::Left(ready(Err(Box::new(OutOfDescriptors { open, ceiling }))))
            }
            _ => Either::Right(self.inner.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn limits(total: usize, per_host: usize) -> OutboundLimits {
        OutboundLimits {
            max_connections: total,
            max_connections_per_host: per_host,
            ..OutboundLimits::default()
        }
    }

    #[tokio::test]
    async fn the_ports_of_one_host_share_its_connections() {
        let out = Outbound::new(&limits(100, 2));
        let a = out.slot(&url("https://127.0.0.2:1000/v2/")).await;
        let _b = out.slot(&url("https://127.0.0.2:1001/v2/")).await;
        let third_url = url("https://127.0.0.2:1002/v2/");
        let third = out.slot(&third_url);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), third)
                .await
                .is_err(),
            "a third connection to the host waits"
        );
        // Another host is not held up.
        let _c = out.slot(&url("https://127.0.0.3:1000/v2/")).await;
        drop(a);
        let _d = out.slot(&url("https://127.0.0.2:1003/v2/")).await;
    }

    #[tokio::test]
    async fn the_total_bounds_every_host_together() {
        let out = Outbound::new(&limits(2, 10));
        let _a = out.slot(&url("https://a.example/")).await;
        let _b = out.slot(&url("https://b.example/")).await;
        let c_url = url("https://c.example/");
        let c = out.slot(&c_url);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), c)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn requests_to_an_http2_origin_share_one_connection() {
        let out = Outbound::new(&limits(100, 2));
        let registry = url("https://r.example/v2/a/blobs/1");
        out.learn(&registry, http::Version::HTTP_2);
        let slots: Vec<Slot> =
            futures_util::future::join_all((0..50).map(|_| out.slot(&registry))).await;
        assert_eq!(out.in_use(&registry), 1, "fifty streams, one connection");
        drop(slots);
        assert_eq!(out.in_use(&registry), 0);
        // HTTP/1 requests each count.
        let plain = url("https://s.example/v2/");
        out.learn(&plain, http::Version::HTTP_11);
        let _x = out.slot(&plain).await;
        let _y = out.slot(&plain).await;
        assert_eq!(out.in_use(&plain), 2);
    }

    #[tokio::test]
    async fn spare_slots_never_take_the_last_free_one() {
        let out = Outbound::new(&limits(100, 3));
        let registry = url("https://r.example/v2/");
        let a = out.spare_slot(&registry).expect("3 free");
        let b = out.spare_slot(&registry).expect("2 free");
        assert!(out.spare_slot(&registry).is_none(), "the last one is kept");
        let _c = out.slot(&registry).await;
        drop((a, b));
        let few = Outbound::new(&limits(2, 10));
        let _d = few.slot(&registry).await;
        assert!(few.spare_slot(&url("https://s.example/")).is_none());
    }

    #[tokio::test]
    async fn body_shares_are_taken_in_kib() {
        let out = Outbound::new(&OutboundLimits {
            bodies_in_flight: 8 * 1024,
            ..OutboundLimits::default()
        });
        let a = out.body_share(4 * 1024).await;
        let _b = out.body_share(3 * 1024 + 1).await;
        let c = out.body_share(1024);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), c)
                .await
                .is_err()
        );
        drop(a);
        let _c = out.body_share(1024).await;
    }
}
