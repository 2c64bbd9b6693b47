//! Prometheus metrics of the webhook, served in text format on the admin port.
//!
//! Labels hold only bounded, non-secret values: decisions, resource kinds, verdicts, registry
//! hosts and HTTP statuses. Image names and namespaces are left out on purpose, because they
//! would make the series count grow with the cluster.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::client::RequestObserver;
use crate::verdict::Verdict;

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
struct CacheLabels {
    result: &'static str,
}

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
        Metrics {
            registry,
            reviews,
            review_seconds,
            probes,
            registry_requests,
            cache,
            probes_in_flight,
        }
    }

    pub fn review(&self, kind: &'static str, decision: &'static str, took: Duration) {
        self.reviews
            .get_or_create(&ReviewLabels { decision, kind })
            .inc();
        self.review_seconds
            .get_or_create(&KindLabels { kind })
            .observe(took.as_secs_f64());
    }

    pub fn probe(&self, verdict: Verdict) {
        self.probes
            .get_or_create(&VerdictLabels {
                verdict: verdict.as_str(),
            })
            .inc();
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

    /// An observer for [`crate::client::RegistryClient::with_observer`].
    pub fn request_observer(self: &Arc<Self>) -> RequestObserver {
        let metrics = self.clone();
        Arc::new(move |host: &str, status: Option<u16>| {
            metrics
                .registry_requests
                .get_or_create(&RequestLabels {
                    host: host.to_owned(),
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
        metrics.probe(Verdict::Blocked);
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
}
