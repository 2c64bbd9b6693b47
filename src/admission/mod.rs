//! The answer to one AdmissionReview: which images a workload pulls, with which credentials
//! and for which platforms, the probes (through the verdict cache, all in parallel, cut off at
//! the review's deadline), and the policy's decision turned into an AdmissionResponse.

mod images;
mod object;
mod placement;
mod podspec;
pub mod request;
mod response;
pub mod workload;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use kube::core::admission::AdmissionResponse;

pub use object::Kind;

use crate::credentials::CredentialProviders;
use crate::credentials::{Keyring, SecretStore};
use crate::metrics::Metrics;
use crate::oci::platform::{Platform, PlatformRules};
use crate::policy::{Decision, DecisionKind, Finding, Policy, PolicyError};
use crate::probe::{BlobMemory, ManifestStore, PullBudgets, Verdict};
use crate::probe::{CacheOptions, VerdictCache};
use crate::registry::NodeHosts;
use crate::registry::RegistryClient;
use crate::reload::Reloading;
use images::{Checked, Resolved, finding};
use request::AdmissionRequest;
use response::{overran, response, unreadable};
use workload::{Workload, WorkloadError};

/// Distinct images one review may probe. Real pods use a handful; a spec listing more is an
/// attempt to make the webhook open connections on someone's behalf.
pub const MAX_IMAGES_PER_REVIEW: usize = 256;

/// Probes waiting for their registry's turn or running, over all reviews. A probe past this
/// is not started: its image is `unavailable` for a few seconds, which the policy decides on
/// like any outage, instead of tasks piling up without bound.
pub const MAX_PROBES_IN_FLIGHT: usize = 256;

/// A workload as read from a request, or why it could not be.
pub type WorkloadRead = Result<Option<Workload>, WorkloadError>;

/// What a [`Reviewer`] is built from.
pub struct ReviewerConfig {
    pub registry: RegistryClient,
    /// `None` when there is no API server to read pull secrets from.
    pub secrets: Option<SecretStore>,
    pub node: Arc<Keyring>,
    pub cache: CacheOptions,
    pub policy: Arc<Reloading<Policy, PolicyError>>,
    pub metrics: Arc<Metrics>,
    pub probe_timeout: Duration,
    /// Verified manifests of metered registries, by digest.
    pub store: ManifestStore,
    /// What is left of metered registries' pulls.
    pub budgets: PullBudgets,
    /// How the nodes' runtime picks an index entry for a platform.
    pub rules: PlatformRules,
    /// The hosts the nodes pull from (mirrors), as their runtime's configuration says.
    pub hosts: Arc<NodeHosts>,
    /// The kubelet's credential-provider plugins: node credentials after the docker configs'.
    pub providers: CredentialProviders,
}

/// Decides AdmissionReviews. Cheap to share: everything inside is reference-counted.
pub struct Reviewer {
    registry: RegistryClient,
    secrets: Option<SecretStore>,
    node: Arc<Keyring>,
    cache: VerdictCache,
    policy: Arc<Reloading<Policy, PolicyError>>,
    metrics: Arc<Metrics>,
    probe_timeout: Duration,
    resolved: moka::sync::Cache<String, Arc<Resolved>>,
    /// Permits for [`MAX_PROBES_IN_FLIGHT`].
    probes: Arc<tokio::sync::Semaphore>,
    /// Blobs that answered, trusted as long as a pullable tag.
    blobs: BlobMemory,
    store: ManifestStore,
    budgets: PullBudgets,
    rules: PlatformRules,
    hosts: Arc<NodeHosts>,
    providers: CredentialProviders,
}

/// Blobs remembered at most: 16 bytes of key each, and moka's bookkeeping.
const REMEMBERED_BLOBS: u64 = 100_000;

/// Image references remembered parsed. Only the images reviews keep coming back to need to
/// stay (moka admits by frequency, so a stream of one-off images does not push them out), and
/// resolving one again costs microseconds, while an entry with moka's bookkeeping costs several
/// hundred bytes.
const RESOLVED_IMAGES: u64 = 4_096;

/// The decision for one request, before it becomes an AdmissionResponse.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The resource kind, for metrics (`unknown` when it was not read).
    pub kind: &'static str,
    pub decision: Decision,
    /// Every image's finding, pullable ones included (for `pullgate review`).
    pub findings: Vec<Finding>,
}

impl Outcome {
    /// allow, warn, deny or exempt: the `decision` label of the review metric.
    pub fn label(&self) -> &'static str {
        self.decision.kind.as_str()
    }
}

impl Reviewer {
    pub fn new(config: ReviewerConfig) -> Self {
        Reviewer {
            blobs: BlobMemory::new(config.cache.pullable_ttl, REMEMBERED_BLOBS),
            registry: config.registry,
            secrets: config.secrets,
            node: config.node,
            cache: VerdictCache::new(config.cache),
            policy: config.policy,
            metrics: config.metrics,
            probe_timeout: config.probe_timeout,
            store: config.store,
            budgets: config.budgets,
            rules: config.rules,
            hosts: config.hosts,
            providers: config.providers,
            resolved: moka::sync::Cache::new(RESOLVED_IMAGES),
            probes: Arc::new(tokio::sync::Semaphore::new(MAX_PROBES_IN_FLIGHT)),
        }
    }

    pub(crate) fn cache(&self) -> &VerdictCache {
        &self.cache
    }

    pub(crate) fn store(&self) -> &ManifestStore {
        &self.store
    }

    pub(crate) fn budgets(&self) -> &PullBudgets {
        &self.budgets
    }

    /// Answers `request` within `budget`, with its workload when it was read already
    /// (`read`: the server reads large bodies off the async workers); `None` reads it here.
    /// Never fails: a problem is a decision.
    pub async fn review(
        &self,
        request: &AdmissionRequest,
        read: Option<WorkloadRead>,
        budget: Duration,
    ) -> AdmissionResponse {
        let started = Instant::now();
        let policy = self.policy.current();
        // The inner steps each stop at the deadline; this guard only catches a step that
        // does not, so the apiserver still gets an answer in time.
        let guard = budget + Duration::from_millis(200);
        let decided = self.decide_read(request, read, &policy, budget);
        let outcome = match tokio::time::timeout(guard, decided).await {
            Ok(outcome) => outcome,
            Err(_) => overran(&policy, budget),
        };
        let took = started.elapsed();
        self.metrics.review(outcome.kind, outcome.label(), took);
        // Every refusal and warning is logged; plain admissions only at debug, because at
        // thousands of reviews a second the log would cost more than the review.
        macro_rules! log_review {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    uid = %request.uid,
                    kind = outcome.kind,
                    namespace = request.namespace.as_deref().unwrap_or_default(),
                    name = %request.name,
                    dry_run = request.dry_run,
                    decision = outcome.label(),
                    took_ms = took.as_millis() as u64,
                    "reviewed"
                )
            };
        }
        match outcome.decision.kind {
            DecisionKind::Allow | DecisionKind::Exempt => log_review!(tracing::Level::DEBUG),
            DecisionKind::Warn | DecisionKind::Deny => log_review!(tracing::Level::INFO),
        }
        response(request, outcome.decision)
    }

    /// The decision for `request`, with every image probed before `budget` runs out.
    pub async fn decide(
        &self,
        request: &AdmissionRequest,
        policy: &Policy,
        budget: Duration,
    ) -> Outcome {
        self.decide_read(request, None, policy, budget).await
    }

    /// [`Reviewer::decide`], with the workload already read when `read` holds it.
    async fn decide_read(
        &self,
        request: &AdmissionRequest,
        read: Option<WorkloadRead>,
        policy: &Policy,
        budget: Duration,
    ) -> Outcome {
        let namespace = request.namespace.as_deref().unwrap_or_default();
        // Checked before the object is read, so nothing in an exempt namespace is refused,
        // not even a malformed object.
        if policy.namespace_exempt(namespace) {
            return Outcome {
                kind: "unknown",
                decision: policy.decide(namespace, &[]),
                findings: Vec::new(),
            };
        }
        match read.unwrap_or_else(|| workload::from_request(request)) {
            Ok(Some(workload)) => self.decide_workload(&workload, policy, budget).await,
            Ok(None) => Outcome {
                kind: "unknown",
                decision: policy.decide(namespace, &[]),
                findings: Vec::new(),
            },
            Err(e) => unreadable(policy, &e),
        }
    }

    /// The decision for a workload already read (also used by `pullgate review`), with every
    /// image probed before `budget` runs out. An exempt namespace is admitted without probing.
    pub async fn decide_workload(
        &self,
        workload: &Workload,
        policy: &Policy,
        budget: Duration,
    ) -> Outcome {
        self.decide_workload_on(workload, policy, budget, None)
            .await
    }

    /// [`Reviewer::decide_workload`] for a workload already running: when `running_on` names
    /// the platforms of the nodes its pods run on, those are the platforms checked, instead of
    /// the ones its placement and the policy allow.
    pub async fn decide_workload_on(
        &self,
        workload: &Workload,
        policy: &Policy,
        budget: Duration,
        running_on: Option<&Vec<Platform>>,
    ) -> Outcome {
        if policy.namespace_exempt(&workload.namespace) {
            return Outcome {
                kind: workload.kind.as_str(),
                decision: policy.decide(&workload.namespace, &[]),
                findings: Vec::new(),
            };
        }
        let deadline = Instant::now() + budget;
        let credentials = self.credentials(workload, deadline).await;
        let platforms: Arc<[Platform]> = match running_on {
            Some(on) => on.as_slice().into(),
            None => workload.platforms(policy.platforms()).into(),
        };

        // One probe per distinct image, however many containers use it (the uses are at most
        // `workload::MAX_IMAGE_USES`, counted before they were read).
        let mut distinct: Vec<&str> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::with_capacity(workload.images.len());
        for use_ in &workload.images {
            if seen.insert(&use_.image) {
                distinct.push(&use_.image);
            }
        }
        if distinct.len() > MAX_IMAGES_PER_REVIEW {
            let message = format!(
                "pullgate: the {} uses {} distinct images; at most {MAX_IMAGES_PER_REVIEW} are checked per review",
                workload.kind.as_str(),
                distinct.len()
            );
            return Outcome {
                kind: workload.kind.as_str(),
                decision: policy.decide_problem(Verdict::Invalid, message),
                findings: Vec::new(),
            };
        }
        let reports = join_all(distinct.iter().map(|image| {
            self.check_image(image, &credentials, &platforms, policy, deadline, budget)
        }))
        .await;
        let by_image: HashMap<&str, &Checked> =
            distinct.iter().copied().zip(reports.iter()).collect();
        let findings: Vec<Finding> = workload
            .images
            .iter()
            .filter_map(|use_| by_image.get(use_.image.as_str()).map(|c| finding(use_, c)))
            .collect();
        let mut decision = policy.decide(&workload.namespace, &findings);
        let provider_warnings = reports.iter().flat_map(|c| c.warnings.iter());
        let mut said: HashSet<&str> = HashSet::new();
        for warning in credentials.warnings.iter().chain(provider_warnings) {
            if said.insert(warning) {
                decision.add_warning(format!("pullgate: {warning}"));
            }
        }
        Outcome {
            kind: workload.kind.as_str(),
            decision,
            findings,
        }
    }
}
