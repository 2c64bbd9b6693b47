//! The answer to one AdmissionReview: which images a workload pulls, with which credentials
//! and for which platforms, the probes (through the verdict cache, all in parallel, cut off at
//! the review's deadline), and the policy's decision turned into an AdmissionResponse.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use kube::core::admission::AdmissionResponse;
use kube::core::response::StatusSummary;

use crate::cache::{Answer, CacheOptions, ProbeKey, VerdictCache};
use crate::client::RegistryClient;
use crate::keyring::{Credential, Keyring};
use crate::metrics::Metrics;
use crate::platform::Platform;
use crate::policy::{Action, Decision, Finding, Policy, PolicyError};
use crate::probe::{self, ProbeOptions, Report};
use crate::pullsecrets::{PodCredentials, PullSecretRefs, SecretStore};
use crate::reference::{ImageRef, ReferenceError};
use crate::reload::Reloading;
use crate::request::AdmissionRequest;
use crate::verdict::Verdict;
use crate::workload::{self, ImageUse, Workload, WorkloadError};

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
}

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
        match self.decision.audit.get("decision").map(String::as_str) {
            Some("exempt") => "exempt",
            _ if !self.decision.allowed => "deny",
            _ if !self.decision.warnings.is_empty() => "warn",
            _ => "allow",
        }
    }
}

impl Reviewer {
    pub fn new(config: ReviewerConfig) -> Self {
        Reviewer {
            registry: config.registry,
            secrets: config.secrets,
            node: config.node,
            cache: VerdictCache::new(config.cache),
            policy: config.policy,
            metrics: config.metrics,
            probe_timeout: config.probe_timeout,
            resolved: moka::sync::Cache::new(RESOLVED_IMAGES),
            probes: Arc::new(tokio::sync::Semaphore::new(MAX_PROBES_IN_FLIGHT)),
        }
    }

    pub fn cache(&self) -> &VerdictCache {
        &self.cache
    }

    /// Answers `request` within `budget`. Never fails: a problem is a decision.
    pub async fn review(&self, request: &AdmissionRequest, budget: Duration) -> AdmissionResponse {
        self.review_read(request, None, budget).await
    }

    /// [`Reviewer::review`] for a request whose workload was read already (`read`), as the
    /// server does for large bodies, off the async workers; `None` reads it here.
    pub async fn review_read(
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
        match outcome.label() {
            "allow" | "exempt" => log_review!(tracing::Level::DEBUG),
            _ => log_review!(tracing::Level::INFO),
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
        if policy.namespace_exempt(&workload.namespace) {
            return Outcome {
                kind: workload.kind.as_str(),
                decision: policy.decide(&workload.namespace, &[]),
                findings: Vec::new(),
            };
        }
        let deadline = Instant::now() + budget;
        let credentials = self.credentials(workload, deadline).await;
        let platforms: Arc<[Platform]> = workload.platforms(policy.platforms()).into();

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
                decision: by_action(policy, Verdict::Invalid, message),
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
        decision.warnings.extend(
            credentials
                .warnings
                .iter()
                .map(|w| format!("pullgate: {w}")),
        );
        Outcome {
            kind: workload.kind.as_str(),
            decision,
            findings,
        }
    }

    /// The pod's pull secrets, read before the deadline; what could not be read in time is
    /// treated like an unreadable secret.
    async fn credentials(&self, workload: &Workload, deadline: Instant) -> PodCredentials {
        let Some(secrets) = &self.secrets else {
            return PodCredentials::default();
        };
        let refs = PullSecretRefs {
            names: workload.pod.image_pull_secrets.clone(),
            service_account: workload.pod.service_account.clone(),
            is_template: workload.pod.is_template,
        };
        let lookup = secrets.for_pod(&workload.namespace, &refs);
        match tokio::time::timeout_at(deadline.into(), lookup).await {
            Ok(credentials) => credentials,
            Err(_) => PodCredentials {
                warnings: vec![
                    "pull secrets could not be read before the review's deadline".to_owned(),
                ],
                incomplete: true,
                ..PodCredentials::default()
            },
        }
    }

    /// What `written` names, parsed and matched against the node's keyring once and then
    /// remembered: on the hot path the same few images come back thousands of times a second,
    /// and the keyring lookup (a URL parse and glob match per entry) and the normalised
    /// strings would otherwise be rebuilt for every review.
    fn resolve(&self, written: &str) -> Result<Arc<Resolved>, ReferenceError> {
        if let Some(resolved) = self.resolved.get(written) {
            return Ok(resolved);
        }
        let image = ImageRef::parse(written)?;
        let resolved = Arc::new(Resolved {
            reference: image.to_string(),
            node: self.node.lookup(&image.name()),
            image,
        });
        self.resolved.insert(written.to_owned(), resolved.clone());
        Ok(resolved)
    }

    async fn check_image(
        &self,
        written: &str,
        credentials: &PodCredentials,
        platforms: &Arc<[Platform]>,
        policy: &Policy,
        deadline: Instant,
        budget: Duration,
    ) -> Checked {
        let resolved = match self.resolve(written) {
            Ok(resolved) => resolved,
            Err(e) => {
                return Checked::of(
                    &probe::invalid_reference(written, &e),
                    String::new(),
                    policy.image_exempt(written, written),
                );
            }
        };
        let registry = resolved.image.registry().to_owned();
        if policy.image_exempt(written, &resolved.reference) {
            return Checked::of(&probe::exempt(&resolved.reference), registry, true);
        }
        // The kubelet's order: the pod's secrets first, then the node's credentials.
        let pod = if credentials.keyring.is_empty() {
            Vec::new()
        } else {
            credentials.keyring.lookup(resolved.name())
        };
        let key = ProbeKey {
            reference: resolved.reference.clone(),
            platforms: platforms.to_vec(),
            credentials: pod.iter().chain(&resolved.node).map(|c| c.id()).collect(),
        };
        // Built only on a miss: the probe's future is large, and a cache hit must not pay for
        // creating and moving it.
        let probe = || {
            let (client, metrics) = (self.registry.clone(), self.metrics.clone());
            let options = ProbeOptions {
                platforms: platforms.to_vec(),
                timeout: self.probe_timeout,
            };
            let resolved = resolved.clone();
            let permit = self.probes.clone().try_acquire_owned();
            async move {
                let Ok(_permit) = permit else {
                    return probe::overloaded(&resolved.reference, MAX_PROBES_IN_FLIGHT);
                };
                let _running = metrics.probe_started();
                let found: Vec<_> = pod
                    .into_iter()
                    .chain(resolved.node.iter().cloned())
                    .collect();
                let report = probe::probe(&client, &resolved.image, &found, &options).await;
                metrics.probe(report.verdict);
                report
            }
        };
        let lookup = self.cache.get_or_probe(key, probe);
        let mut checked = match tokio::time::timeout_at(deadline.into(), lookup).await {
            Ok(cached) => {
                self.metrics.cache_lookup(cached.hit);
                Checked {
                    answer: cached.answer,
                    reference: resolved.reference.clone(),
                    registry,
                    exempt: false,
                }
            }
            Err(_) => Checked::of(
                &probe::unfinished(&resolved.reference, budget),
                registry,
                false,
            ),
        };
        // A 401 when a pull secret could not be read says nothing about the node, which may
        // well have that secret.
        let answer = &checked.answer;
        if credentials.incomplete && answer.verdict() == Verdict::Unauthorized {
            checked.answer = Answer::new(
                Verdict::Unavailable,
                &format!(
                    "{} (not conclusive: a pull secret could not be read)",
                    answer.reason()
                ),
                answer.failed_blob(),
                answer.registry_message(),
            );
        }
        checked
    }
}

/// An image reference as written, parsed, with what does not depend on the pod.
struct Resolved {
    image: ImageRef,
    /// The normalised reference, e.g. `docker.io/library/nginx:1.27`.
    reference: String,
    /// The node's credentials for it, in the kubelet's order.
    node: Vec<Credential>,
}

impl Resolved {
    /// The repository without tag or digest, as the kubelet's keyring matches it: the
    /// normalised reference up to its tag or digest.
    fn name(&self) -> &str {
        &self.reference[..self.image.registry().len() + 1 + self.image.repository().len()]
    }
}

/// One distinct image's result.
struct Checked {
    answer: Answer,
    /// The normalised reference (empty when the image is not a reference).
    reference: String,
    /// The registry as the reference names it, for per-registry policy.
    registry: String,
    exempt: bool,
}

impl Checked {
    /// The result of a report made without the cache.
    fn of(report: &Report, registry: String, exempt: bool) -> Self {
        Checked {
            answer: Answer::of(report),
            reference: report.reference.clone(),
            registry,
            exempt,
        }
    }
}

fn finding(use_: &ImageUse, checked: &Checked) -> Finding {
    let answer = &checked.answer;
    Finding {
        image: use_.image.clone(),
        reference: if checked.reference.is_empty() {
            use_.image.clone()
        } else {
            checked.reference.clone()
        },
        registry_host: checked.registry.clone(),
        container: use_.container.clone(),
        location: use_.location.to_string(),
        // An exempt image is reported pullable so the policy never judges it.
        verdict: if checked.exempt {
            Verdict::Pullable
        } else {
            answer.verdict()
        },
        reason: answer.reason().to_owned(),
        failed_blob: answer.failed_blob().map(str::to_owned),
        registry_message: answer.registry_message().map(str::to_owned),
    }
}

/// The decision for a request whose object cannot be read.
fn unreadable(policy: &Policy, error: &WorkloadError) -> Outcome {
    let (verdict, kind) = match error {
        // A kind the webhook is not meant to see (a misconfigured rule): not the user's fault.
        WorkloadError::UnsupportedKind { .. } => (Verdict::Unavailable, "unknown"),
        WorkloadError::Malformed { .. } => (Verdict::Invalid, "unknown"),
        WorkloadError::MissingObject { kind } | WorkloadError::TooMany { kind, .. } => {
            (Verdict::Invalid, kind.as_str())
        }
    };
    let message = format!("pullgate: {error}");
    Outcome {
        kind,
        decision: by_action(policy, verdict, message),
        findings: Vec::new(),
    }
}

/// The answer when the review itself ran out of time: the policy for `unavailable`.
fn overran(policy: &Policy, budget: Duration) -> Outcome {
    let message = format!(
        "pullgate: the review did not finish within {}",
        humantime::format_duration(budget)
    );
    Outcome {
        kind: "unknown",
        decision: by_action(policy, Verdict::Unavailable, message),
        findings: Vec::new(),
    }
}

/// A decision with no image to name: the policy's action for `verdict`, applied directly.
fn by_action(policy: &Policy, verdict: Verdict, message: String) -> Decision {
    let action = policy.effective_action(verdict, "");
    let mut decision = Decision {
        allowed: action != Action::Deny,
        ..Decision::default()
    };
    decision
        .audit
        .insert("decision".into(), format!("{action:?}").to_lowercase());
    match action {
        Action::Deny => decision.message = Some(message),
        Action::Warn => decision.warnings.push(message),
        Action::Allow => {}
    }
    decision
}

/// The AdmissionResponse for `decision`, echoing the request's uid.
pub fn response(request: &AdmissionRequest, decision: Decision) -> AdmissionResponse {
    let mut response = request.response();
    if let Some(message) = decision.message.filter(|_| !decision.allowed) {
        response = response.deny(message);
        response.result.status = Some(StatusSummary::Failure);
        response.result.code = 403;
        response.result.reason = "Forbidden".into();
    }
    response.allowed = decision.allowed;
    if !decision.warnings.is_empty() {
        response.warnings = Some(decision.warnings);
    }
    response.audit_annotations = decision.audit.into_iter().collect();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keyring_name_is_the_reference_without_tag_or_digest() {
        let digest = format!("sha256:{}", "a".repeat(64));
        for written in [
            "nginx".to_owned(),
            "nginx:1.27".to_owned(),
            "library/nginx@".to_owned() + &digest,
            "r.example:5000/team/app:1@".to_owned() + &digest,
            "[::1]:5000/app".to_owned(),
            "localhost/a/b/c:v".to_owned(),
        ] {
            let image = ImageRef::parse(&written).unwrap();
            let resolved = Resolved {
                reference: image.to_string(),
                node: Vec::new(),
                image: image.clone(),
            };
            assert_eq!(resolved.name(), image.name(), "{written}");
        }
    }
}
