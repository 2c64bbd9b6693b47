//! The audit's metrics, in the conventions of k8s-image-availability-exporter: one series per
//! workload container whose image is not pullable, with the verdict as a label value, plus
//! totals per verdict and per namespace, the time of the last complete pass and its duration.
//!
//! Pullable images get no series of their own (a cluster has far more of them than anyone
//! alerts on), and the problem series are capped: past [`MAX_PROBLEM_SERIES`] they are only
//! counted, in the totals and in `pullgate_audit_problem_series_dropped`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Problem series kept at most.
pub const MAX_PROBLEM_SERIES: usize = 2000;
/// Namespaces given a total of their own at most.
const MAX_NAMESPACE_SERIES: usize = 1000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProblemLabels {
    pub namespace: String,
    pub kind: String,
    pub name: String,
    pub container: String,
    pub image: String,
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictTotal {
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceTotal {
    namespace: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PassResult {
    result: &'static str,
}

/// Every audit metric.
#[derive(Clone)]
pub struct AuditMetrics {
    problems: Family<ProblemLabels, Gauge>,
    totals: Family<VerdictTotal, Gauge>,
    namespaces: Family<NamespaceTotal, Gauge>,
    dropped: Gauge,
    workloads: Gauge,
    last_pass: Gauge<f64, AtomicU64>,
    duration: Gauge<f64, AtomicU64>,
    passes: Family<PassResult, Counter>,
    leader: Gauge,
}

/// One pass's numbers, as [`AuditMetrics::publish`] takes them.
#[derive(Debug, Default)]
pub struct PassFigures {
    /// (labels) of every container whose image is not pullable.
    pub problems: Vec<ProblemLabels>,
    /// (verdict, count) over every image of every workload.
    pub totals: Vec<(String, i64)>,
    /// (namespace, verdict, count).
    pub namespaces: Vec<(String, String, i64)>,
    pub workloads: i64,
    /// Seconds since the epoch when the pass ended.
    pub ended: f64,
    pub seconds: f64,
}

impl AuditMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = AuditMetrics {
            problems: Family::default(),
            totals: Family::default(),
            namespaces: Family::default(),
            dropped: Gauge::default(),
            workloads: Gauge::default(),
            last_pass: Gauge::default(),
            duration: Gauge::default(),
            passes: Family::default(),
            leader: Gauge::default(),
        };
        let audit = registry.sub_registry_with_prefix("audit");
        audit.register(
            "image_problem",
            "1 for each workload container whose image the last audit pass found not pullable, the verdict as a label",
            m.problems.clone(),
        );
        audit.register(
            "images",
            "Images of running workloads at the last audit pass, by verdict",
            m.totals.clone(),
        );
        audit.register(
            "namespace_images",
            "Images of running workloads at the last audit pass, by namespace and verdict",
            m.namespaces.clone(),
        );
        audit.register(
            "problem_series_dropped",
            "Problem series not exported at the last pass, past the cap",
            m.dropped.clone(),
        );
        audit.register(
            "workloads",
            "Workloads audited at the last pass",
            m.workloads.clone(),
        );
        audit.register(
            "last_pass_timestamp_seconds",
            "When the last complete audit pass ended (Unix time)",
            m.last_pass.clone(),
        );
        audit.register(
            "pass_duration_seconds",
            "How long the last complete audit pass took",
            m.duration.clone(),
        );
        audit.register(
            "passes",
            "Audit passes run, by result (ok, error)",
            m.passes.clone(),
        );
        audit.register(
            "leader",
            "1 while this replica holds the audit Lease",
            m.leader.clone(),
        );
        m
    }

    /// Replaces the last pass's series with this one's.
    pub fn publish(&self, figures: PassFigures) {
        self.problems.clear();
        let dropped = figures.problems.len().saturating_sub(MAX_PROBLEM_SERIES);
        for labels in figures.problems.into_iter().take(MAX_PROBLEM_SERIES) {
            self.problems.get_or_create(&labels).set(1);
        }
        self.dropped.set(i64::try_from(dropped).unwrap_or(i64::MAX));
        self.totals.clear();
        for (verdict, n) in figures.totals {
            self.totals.get_or_create(&VerdictTotal { verdict }).set(n);
        }
        self.namespaces.clear();
        for (namespace, verdict, n) in figures
            .namespaces
            .into_iter()
            .take(MAX_NAMESPACE_SERIES * 6)
        {
            self.namespaces
                .get_or_create(&NamespaceTotal { namespace, verdict })
                .set(n);
        }
        self.workloads.set(figures.workloads);
        self.last_pass.set(figures.ended);
        self.duration.set(figures.seconds);
        self.passes
            .get_or_create(&PassResult { result: "ok" })
            .inc();
    }

    pub fn failed_pass(&self) {
        self.passes
            .get_or_create(&PassResult { result: "error" })
            .inc();
    }

    pub fn leader(&self, holds: bool) {
        self.leader.set(i64::from(holds));
    }
}
