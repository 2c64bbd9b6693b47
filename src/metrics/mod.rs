//! Prometheus metrics of the webhook, served in text format on the admin port.
//!
//! Labels hold only bounded, non-secret values: decisions, resource kinds, verdicts, registry
//! hosts and HTTP statuses. Image names and namespaces are left out on purpose, because they
//! would make the series count grow with the cluster.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

mod audit;

pub use audit::{AuditMetrics, MAX_PROBLEM_SERIES, PassFigures, ProblemLabels};

/// The buckets kube-apiserver uses for `apiserver_admission_webhook_admission_duration_seconds`,
/// so the two can be read side by side.
const APISERVER_BUCKETS: [f64; 8] = [0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 10.0, 25.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReviewLabels {
    decision: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    host: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegistryLabels {
    registry: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedLabels {
    listener: &'static str,
    reason: &'static str,
}

/// Registry hosts named in the `host` label; the hosts seen after these are counted under
/// [`OTHER_HOSTS`]. Hosts come from pod specs, so without a bound any pod author could add
/// series to the webhook's metrics.
pub const MAX_HOST_LABELS: usize = 64;
/// The `host` label of every host past the first [`MAX_HOST_LABELS`].
pub const OTHER_HOSTS: &str = "other";

fn review_histogram() -> Histogram {
    Histogram::new(APISERVER_BUCKETS)
}

/// Every metric the webhook exports.
pub struct Metrics {
    registry: Registry,
    reviews: Family<ReviewLabels, Counter>,
    review_seconds: Family<KindLabels, Histogram, fn() -> Histogram>,
    probes: Family<VerdictLabels, Counter>,
    registry_requests: Family<RequestLabels, Counter>,
    cache: Family<CacheLabels, Counter>,
    probes_in_flight: Gauge,
    /// The hosts given a label of their own, first come first served.
    hosts: Mutex<HashSet<String>>,
    connections: Family<ListenerLabels, Gauge>,
    connections_closed: Family<ClosedLabels, Counter>,
    cache_entries: Gauge,
    cache_bytes: Gauge,
    pulls: Family<RegistryLabels, Counter>,
    pulls_remaining: Family<RegistryLabels, Gauge>,
    pulls_limit: Family<RegistryLabels, Gauge>,
    /// The metered registries given a label of their own, first come first served.
    registries: Mutex<HashSet<String>>,
    store_documents: Gauge,
    store_bytes: Gauge,
    /// The audit's (`serve --audit-interval`); empty until a pass ends.
    pub audit: AuditMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pullgate");
        let reviews = Family::<ReviewLabels, Counter>::default();
        registry.register(
            "reviews",
            "Admission reviews answered, by decision (allow, warn, deny, exempt, error) and resource kind",
            reviews.clone(),
        );
        let review_seconds = Family::new_with_constructor(review_histogram as fn() -> Histogram);
        registry.register(
            "review_duration_seconds",
            "Time to answer an admission review, by resource kind",
            review_seconds.clone(),
        );
        let probes = Family::<VerdictLabels, Counter>::default();
        registry.register(
            "probes",
            "Image probes run against registries (cache misses), by verdict",
            probes.clone(),
        );
        let registry_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "registry_requests",
            "HTTP requests sent to registries, token endpoints and blob hosts, by host and status (error: no answer)",
            registry_requests.clone(),
        );
        let cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "verdict_cache_lookups",
            "Verdict cache lookups, by result (hit, miss)",
            cache.clone(),
        );
        let probes_in_flight = Gauge::default();
        registry.register(
            "probes_in_flight",
            "Image probes currently running",
            probes_in_flight.clone(),
        );
        let connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "connections",
            "Connections open, by listener (webhook, admin)",
            connections.clone(),
        );
        let connections_closed = Family::<ClosedLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Connections refused or closed by pullgate, by listener and reason (refused: at a cap with every connection busy; evicted: closed to make room; handshake: TLS failed or timed out; idle: no request within the deadline)",
            connections_closed.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "verdict_cache_entries",
            "Verdicts held by the cache (expired ones until the next sweep)",
            cache_entries.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "verdict_cache_bytes",
            "Estimated bytes held by the verdict cache",
            cache_bytes.clone(),
        );
        let pulls = Family::<RegistryLabels, Counter>::default();
        registry.register(
            "registry_pulls",
            "Pulls spent on metered registries (Docker Hub), as they count them: a manifest GET, an index and its first child together one; by registry",
            pulls.clone(),
        );
        let pulls_remaining = Family::<RegistryLabels, Gauge>::default();
        registry.register(
            "registry_pulls_remaining",
            "Pulls left in the window on metered registries, as their last answer said less those spent since; the least over credentials, by registry",
            pulls_remaining.clone(),
        );
        let pulls_limit = Family::<RegistryLabels, Gauge>::default();
        registry.register(
            "registry_pulls_limit",
            "Pulls allowed in a window on metered registries (ratelimit-limit), for the budget in pullgate_registry_pulls_remaining, by registry",
            pulls_limit.clone(),
        );
        let store_documents = Gauge::default();
        registry.register(
            "manifest_store_documents",
            "Manifests and indexes of metered registries kept by digest",
            store_documents.clone(),
        );
        let store_bytes = Gauge::default();
        registry.register(
            "manifest_store_bytes",
            "Estimated bytes held by the manifest store, tags included",
            store_bytes.clone(),
        );
        let audit = AuditMetrics::register(&mut registry);
        Metrics {
            registry,
            audit,
            pulls,
            pulls_remaining,
            pulls_limit,
            registries: Mutex::default(),
            store_documents,
            store_bytes,
            reviews,
            review_seconds,
            probes,
            registry_requests,
            cache,
            probes_in_flight,
            hosts: Mutex::default(),
            connections,
            connections_closed,
            cache_entries,
            cache_bytes,
        }
    }

    /// The `host` label for `host`: itself while fewer than [`MAX_HOST_LABELS`] hosts have a
    /// label, [`OTHER_HOSTS`] after that.
    fn host_label(&self, host: &str) -> String {
        bounded_label(&self.hosts, host)
    }

    /// Pulls spent on the metered registry `registry`.
    pub fn pulls(&self, registry: &str, pulls: u32) {
        self.pulls
            .get_or_create(&RegistryLabels {
                registry: bounded_label(&self.registries, registry),
            })
            .inc_by(u64::from(pulls));
    }

    /// What is left of each metered registry's pulls (registry, left, limit), set before each
    /// scrape.
    pub fn pull_budgets(&self, budgets: &[(String, u32, u32)]) {
        for (registry, left, limit) in budgets {
            let labels = RegistryLabels {
                registry: bounded_label(&self.registries, registry),
            };
            self.pulls_remaining
                .get_or_create(&labels)
                .set(i64::from(*left));
            self.pulls_limit
                .get_or_create(&labels)
                .set(i64::from(*limit));
        }
    }

    /// The manifest store's size, set before each scrape.
    pub fn manifest_store(&self, documents: u64, bytes: u64) {
        self.store_documents
            .set(i64::try_from(documents).unwrap_or(i64::MAX));
        self.store_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The number of connections open on `listener`.
    pub fn connections(&self, listener: &'static str, open: usize) {
        self.connections
            .get_or_create(&ListenerLabels { listener })
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// A connection refused or closed by the server on `listener`.
    pub fn connection_closed(&self, listener: &'static str, reason: &'static str) {
        self.connections_closed
            .get_or_create(&ClosedLabels { listener, reason })
            .inc();
    }

    /// The verdict cache's size, set before each scrape.
    pub fn verdict_cache(&self, entries: u64, bytes: u64) {
        self.cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn review(&self, kind: &'static str, decision: &'static str, took: Duration) {
        self.reviews
            .get_or_create(&ReviewLabels { decision, kind })
            .inc();
        self.review_seconds
            .get_or_create(&KindLabels { kind })
            .observe(took.as_secs_f64());
    }

    /// A probe ran and gave `verdict` (`pullable`, `blocked`…).
    pub fn probe(&self, verdict: &'static str) {
        self.probes.get_or_create(&VerdictLabels { verdict }).inc();
    }

    pub fn cache_lookup(&self, hit: bool) {
        self.cache
            .get_or_create(&CacheLabels {
                result: if hit { "hit" } else { "miss" },
            })
            .inc();
    }

    /// Counts a probe as running until the guard is dropped.
    pub fn probe_started(&self) -> InFlight {
        self.probes_in_flight.inc();
        InFlight(self.probes_in_flight.clone())
    }

    /// An observer of registry requests (host, and status when one came), for the registry
    /// client.
    pub fn request_observer(self: &Arc<Self>) -> RequestCounter {
        let metrics = self.clone();
        Arc::new(move |host: &str, status: Option<u16>| {
            metrics
                .registry_requests
                .get_or_create(&RequestLabels {
                    host: metrics.host_label(host),
                    status: status.map_or_else(|| "error".to_owned(), |s| s.to_string()),
                })
                .inc();
        })
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// `value` itself while fewer than [`MAX_HOST_LABELS`] values have a label in `given`,
/// [`OTHER_HOSTS`] after that.
fn bounded_label(given: &Mutex<HashSet<String>>, value: &str) -> String {
    let mut given = given.lock().unwrap_or_else(PoisonError::into_inner);
    if given.contains(value) {
        return value.to_owned();
    }
    if given.len() < MAX_HOST_LABELS {
        given.insert(value.to_owned());
        return value.to_owned();
    }
    OTHER_HOSTS.to_owned()
}

/// Told about every registry request: the host, and the HTTP status (`None` when no answer
/// came); the registry client's `RequestObserver`.
pub type RequestCounter = Arc<dyn Fn(&str, Option<u16>) + Send + Sync>;

/// Decrements the in-flight gauge when dropped, also when a probe is cancelled.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_every_family_with_its_labels() {
        let metrics = Arc::new(Metrics::new());
        metrics.review("Deployment", "deny", Duration::from_millis(30));
        metrics.probe("blocked");
        metrics.cache_lookup(true);
        metrics.request_observer()("registry.example.com", Some(206));
        metrics.request_observer()("registry.example.com", None);
        let guard = metrics.probe_started();
        let text = metrics.encode();
        for line in [
            "pullgate_reviews_total{decision=\"deny\",kind=\"Deployment\"} 1",
            "pullgate_review_duration_seconds_bucket{le=\"0.1\",kind=\"Deployment\"} 1",
            "pullgate_review_duration_seconds_bucket{le=\"0.025\",kind=\"Deployment\"} 0",
            "pullgate_probes_total{verdict=\"blocked\"} 1",
            "pullgate_verdict_cache_lookups_total{result=\"hit\"} 1",
            "pullgate_registry_requests_total{host=\"registry.example.com\",status=\"206\"} 1",
            "pullgate_registry_requests_total{host=\"registry.example.com\",status=\"error\"} 1",
            "pullgate_probes_in_flight 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        drop(guard);
        assert!(metrics.encode().contains("pullgate_probes_in_flight 0"));
    }

    #[test]
    fn registry_hosts_past_the_first_sixty_four_share_one_label() {
        let metrics = Arc::new(Metrics::new());
        let observe = metrics.request_observer();
        for i in 0..250 {
            observe(&format!("10.0.{}.{}", i / 256, i % 256), None);
        }
        // A host that has its label keeps it.
        observe("10.0.0.0", Some(200));
        let text = metrics.encode();
        let hosts: HashSet<&str> = text
            .lines()
            .filter(|l| l.starts_with("pullgate_registry_requests_total{"))
            .filter_map(|l| l.split("host=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(hosts.len(), MAX_HOST_LABELS + 1, "{hosts:?}");
        assert!(hosts.contains(OTHER_HOSTS));
        assert!(
            text.contains("pullgate_registry_requests_total{host=\"other\",status=\"error\"} 186")
        );
        assert!(
            text.contains("pullgate_registry_requests_total{host=\"10.0.0.0\",status=\"200\"} 1")
        );
    }
}
