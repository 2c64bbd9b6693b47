//! The deep probe: is this image really pullable? GET the manifest (answering every
//! endpoint's challenge), resolve an index to each requested platform's manifest, and GET one
//! byte of the config and of every layer. A refusal anywhere decides the verdict, and the
//! registry's own words travel with it.

mod blobs;
mod budget;
mod cache;
mod fetch;
mod ledger;
mod resolve;
mod route;
mod store;
mod verdict;

use std::time::{Duration, Instant};

use serde::Serialize;

pub use blobs::BlobMemory;
pub use budget::{DEFAULT_RESERVE_PERCENT, PullBudgets};
pub use cache::CacheOptions;
pub(crate) use cache::{Answer, ProbeKey, VerdictCache};
pub use route::HostReport;
pub use store::{DEFAULT_STORE_BYTES, ManifestStore};
pub use verdict::{Verdict, classify_status, verdict_of};

use crate::oci::digest::Digest;
use crate::oci::platform::{Platform, PlatformRules};
use crate::oci::reference::{ImageRef, ReferenceError};
use crate::registry::hosts::Route;
use crate::registry::{Credential, NodeHosts, RateLimit, RegistryClient, RegistryMessage};
use resolve::{Course, run};
use verdict::Failure;

/// Blob probes of one image running at once. Real images have a handful to a few dozen
/// layers, all probed in one round; a manifest listing hundreds cannot open hundreds of
/// connections.
pub const MAX_PARALLEL_BLOBS: usize = 16;

/// Platforms an index is said to offer, by name, when none matches; the rest are counted.
pub const MAX_PLATFORMS_NAMED: usize = 12;

/// How pullgate spends metered registries' pulls, parsed from flags at the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PullOptions {
    /// Bytes of verified manifests kept by digest (0: none).
    pub store_bytes: u64,
    /// Percent of each window's pulls kept for the nodes.
    pub reserve_percent: u8,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            store_bytes: DEFAULT_STORE_BYTES,
            reserve_percent: DEFAULT_RESERVE_PERCENT,
        }
    }
}

/// What to check an image for.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Every platform the workload could run on; each must be pullable.
    pub platforms: Vec<Platform>,
    /// Whose rules pick an index entry for a platform: the nodes' runtime.
    pub rules: PlatformRules,
    /// The hosts the nodes' runtime pulls from (mirrors), as its configuration says; by
    /// default none, and every image goes to its registry.
    pub hosts: std::sync::Arc<NodeHosts>,
    /// Deadline for the whole probe, all credentials included.
    pub timeout: Duration,
    /// Blobs that answered recently, shared with other probes; off by default.
    pub blobs: BlobMemory,
    /// The registry counts manifest GETs against a pull limit (Docker Hub): a known digest is
    /// confirmed with a HEAD and its documents read from `store`, and counted GETs are asked
    /// of `budgets` first.
    pub metered: bool,
    /// Verified manifests of metered registries by digest, and their tags' last digests.
    pub store: ManifestStore,
    /// What is left of each metered registry's pulls, per credential.
    pub budgets: PullBudgets,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            platforms: vec![Platform::linux_amd64()],
            rules: PlatformRules::default(),
            hosts: std::sync::Arc::default(),
            timeout: Duration::from_secs(10),
            blobs: BlobMemory::off(),
            metered: false,
            store: ManifestStore::default(),
            budgets: PullBudgets::default(),
        }
    }
}

/// The outcome for one image.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The normalised reference that was probed.
    pub reference: String,
    pub verdict: Verdict,
    /// One sentence a user can act on.
    pub reason: String,
    /// The registry's error code and message, when it sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistryMessage>,
    /// Digest of the manifest (or index) the reference resolved to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub platforms: Vec<PlatformReport>,
    pub blobs: Vec<BlobReport>,
    /// The host that served the manifest, when the nodes' configuration lists hosts for the
    /// image (a mirror, or the registry after its mirrors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Every host of the nodes' configuration that was asked, with what it answered.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostReport>,
    /// Pullable, but something the node would trip over after the pull: a single-platform
    /// image built for another architecture than a node the pod can land on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caution: Option<String>,
    /// The blob whose refusal decided the verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_blob: Option<Digest>,
    /// Where the credential of the reported attempt came from (never the secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Credentials tried, in the kubelet's order (1 for an anonymous probe).
    pub attempts: u32,
    /// HTTP requests made, over all attempts; warm-ups not.
    pub requests: u32,
    /// Manifest GETs and HEADs sent, over all attempts (one each however many auth rounds it
    /// took).
    pub manifest_gets: u32,
    pub manifest_heads: u32,
    /// Whether the registry counts manifest GETs as pulls (Docker Hub, or as the policy says).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub metered: bool,
    /// Pulls spent on a metered registry, as it counts them (an index and its first child
    /// are one).
    #[serde(skip_serializing_if = "is_zero")]
    pub pulls: u32,
    /// What the registry last said is left of the pulls (`ratelimit-*` headers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Warm-ups sent, over all attempts: `GET /v2/` without credentials, sent beside the
    /// first request to open the connections an HTTP/1.1 registry's later requests use. Not
    /// sent to registries that speak HTTP/2.
    #[serde(skip_serializing_if = "is_zero")]
    pub warmups: u32,
    pub elapsed_ms: u64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Serialize)]
pub struct PlatformReport {
    pub platform: Platform,
    /// The platform of the index entry a node of `platform` takes when it has no entry of its
    /// own (`linux/arm/v6` for `linux/arm/v7`, by the runtime's fallback rules).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<Platform>,
    /// The image manifest this platform resolves to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl PlatformReport {
    /// "linux/arm/v6 for linux/arm/v7" when the node takes another platform's entry.
    pub fn chosen(&self) -> Option<String> {
        let entry = self.entry.as_ref()?;
        Some(format!("{entry} for {}", self.platform))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobKind {
    Config,
    Layer,
}

#[derive(Clone, Debug, Serialize)]
pub struct BlobReport {
    pub digest: Digest,
    pub kind: BlobKind,
    pub size: u64,
    /// HTTP status of the final answer (after redirects), when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub verdict: Verdict,
    /// Foreign layers (with `urls`) are not served by the registry and are not probed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// Served to this repository and credential recently; not asked again.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The platform a single-platform image's config says it was built for (read whole for
    /// that, when small).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// The host that served it, when the nodes' configuration lists hosts for the image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Probes `image` with the credentials that apply to it, in the kubelet's order: the first
/// credential that pulls decides; with none, the probe is anonymous. Never fails: every
/// problem is a verdict.
pub async fn probe(
    client: &RegistryClient,
    image: &ImageRef,
    credentials: &[Credential],
    options: &ProbeOptions,
) -> Report {
    let started = Instant::now();
    let deadline = started + options.timeout;
    let attempts: Vec<Option<&Credential>> = if credentials.is_empty() {
        vec![None]
    } else {
        credentials.iter().map(Some).collect()
    };
    // Waiting for a turn counts against the deadline like any other wait.
    let Ok(_turn) = tokio::time::timeout_at(deadline.into(), client.host_turn(image)).await else {
        return unfinished(&image.to_string(), options.timeout);
    };
    // The hosts the node asks, worked out once for every credential tried.
    let route = options.hosts.route(image);
    let mut best: Option<Report> = None;
    let (mut requests, mut gets, mut heads, mut pulls, mut warmups) = (0, 0, 0, 0, 0);
    let mut rate_limit = None;
    let mut tried = 0;
    for credential in attempts {
        tried += 1;
        // Boxed: the task of a probe still waiting for its host's turn then holds a few hundred
        // bytes, not the tens of kilobytes of a running probe's state; a burst of reviews for
        // one registry queues hundreds of them.
        let report = Box::pin(probe_once(
            client, image, &route, credential, options, deadline,
        ))
        .await;
        requests += report.requests;
        gets += report.manifest_gets;
        heads += report.manifest_heads;
        pulls += report.pulls;
        rate_limit = report.rate_limit.or(rate_limit);
        warmups += report.warmups;
        let done = report.verdict == Verdict::Pullable || Instant::now() >= deadline;
        if best.as_ref().is_none_or(|b| {
            report.verdict == Verdict::Pullable || report.verdict.severity() > b.verdict.severity()
        }) {
            best = Some(report);
        }
        if done {
            break;
        }
    }
    let mut report = best.expect("at least one attempt is made");
    report.attempts = tried;
    report.requests = requests;
    report.manifest_gets = gets;
    report.manifest_heads = heads;
    report.pulls = pulls;
    report.rate_limit = rate_limit;
    report.warmups = warmups;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    tracing::debug!(
        image = %report.reference,
        verdict = %report.verdict,
        requests = report.requests,
        warmups = report.warmups,
        elapsed_ms = report.elapsed_ms,
        "probed image"
    );
    report
}

/// One attempt with one credential (or none), over the hosts of `route`.
async fn probe_once(
    client: &RegistryClient,
    image: &ImageRef,
    route: &Route,
    credential: Option<&Credential>,
    options: &ProbeOptions,
    deadline: Instant,
) -> Report {
    let started = Instant::now();
    let mut report = Report::new(image.to_string(), Verdict::Pullable, String::new());
    report.credential = credential.map(|c| c.source().to_owned());
    report.attempts = 1;
    report.metered = options.metered;
    if let Some(blocked) = &route.blocked {
        report.verdict = Verdict::Blocked;
        report.reason = format!("the nodes' runtime refuses it: {blocked}");
        return report;
    }
    let configured = options.hosts.is_configured();
    let hosts = match route::hosts(
        client, route, configured, image, credential, options, deadline,
    ) {
        Ok(hosts) => hosts,
        Err(f) => {
            report.verdict = f.verdict;
            report.reason = f.reason;
            return report;
        }
    };
    let course = Course {
        hosts: &hosts,
        image,
        platforms: &options.platforms,
        rules: options.rules,
        memory: &options.blobs,
    };
    // Warm-ups for the first host only: the one every request goes to first.
    let first = &hosts.list[0].session;
    let outcome =
        tokio::time::timeout_at(deadline.into(), first.warmed(run(&course, &mut report))).await;
    let failure = match outcome {
        Ok(result) => result.err(),
        Err(_) => Some(Failure::new(
            Verdict::Unavailable,
            format!(
                "the registry did not answer within the deadline of {}",
                humantime::format_duration(options.timeout)
            ),
        )),
    };
    if let Some(f) = failure {
        report.verdict = f.verdict;
        report.reason = f.reason;
        report.registry = f.registry;
        report.failed_blob = f.blob;
    } else {
        report.reason = match report.platforms.len() {
            1 => format!(
                "manifest, config and {} layer(s) are served",
                report.blobs.len().saturating_sub(1)
            ),
            n => format!("pullable on all {n} platforms: every manifest and blob is served"),
        };
        let fallbacks: Vec<String> = report
            .platforms
            .iter()
            .filter_map(PlatformReport::chosen)
            .collect();
        if !fallbacks.is_empty() {
            report.reason = format!(
                "{} (the nodes' runtime takes {}: the index has no entry of their own)",
                report.reason,
                fallbacks.join(", ")
            );
        }
    }
    for host in &hosts.list {
        report.requests += host.session.requests();
        report.manifest_gets += host.session.manifest_gets();
        report.manifest_heads += host.session.manifest_heads();
        report.pulls += host.ledger.pulls();
        report.warmups += host.session.warmups();
        report.rate_limit = host.ledger.stated().or(report.rate_limit);
    }
    if configured {
        report.hosts = hosts.reports();
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report
}

/// The report for a reference that does not parse: `invalid`, decided without network I/O.
pub fn invalid_reference(input: &str, error: &ReferenceError) -> Report {
    failed(input, Verdict::Invalid, error.to_string())
}

/// The report for an image whose probe did not finish before the review had to answer.
pub fn unfinished(reference: &str, waited: Duration) -> Report {
    failed(
        reference,
        Verdict::Unavailable,
        format!(
            "the probe did not finish within the review's deadline of {}",
            humantime::format_duration(waited)
        ),
    )
}

/// The report for an image not probed because `limit` probes are in flight already.
pub fn overloaded(reference: &str, limit: usize) -> Report {
    failed(
        reference,
        Verdict::Unavailable,
        format!("not probed: pullgate is running its limit of {limit} probes at once"),
    )
}

/// The report for an image the policy exempts: not probed.
pub fn exempt(reference: &str) -> Report {
    failed(
        reference,
        Verdict::Pullable,
        "exempt by policy: not probed".to_owned(),
    )
}

/// The report for a probe that failed inside pullgate itself.
pub fn internal_error(problem: &str) -> Report {
    failed(
        "",
        Verdict::Unavailable,
        format!("internal error: {problem}"),
    )
}

/// A report decided without a probe.
fn failed(reference: &str, verdict: Verdict, reason: String) -> Report {
    Report::new(reference.chars().take(256).collect(), verdict, reason)
}

impl Report {
    /// A report of `verdict` for `reference`, with nothing learnt yet.
    fn new(reference: String, verdict: Verdict, reason: String) -> Report {
        Report {
            reference,
            verdict,
            reason,
            registry: None,
            digest: None,
            media_type: None,
            platforms: Vec::new(),
            blobs: Vec::new(),
            failed_blob: None,
            host: None,
            hosts: Vec::new(),
            caution: None,
            credential: None,
            attempts: 0,
            requests: 0,
            manifest_gets: 0,
            manifest_heads: 0,
            metered: false,
            pulls: 0,
            rate_limit: None,
            warmups: 0,
            elapsed_ms: 0,
        }
    }
}
