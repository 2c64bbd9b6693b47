//! The deep probe: is this image really pullable? GET the manifest (answering every
//! endpoint's challenge), resolve an index to each requested platform's manifest, and GET one
//! byte of the config and of every layer. A refusal anywhere decides the verdict, and the
//! registry's own words travel with it.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use futures_util::future::join_all;
use reqwest::{
    StatusCode,
    header::{self, HeaderMap, HeaderValue},
};
use serde::Serialize;

use crate::{
    client::{FetchError, RegistryClient, Session},
    digest::{Digest, DigestError},
    keyring::Credential,
    manifest::{self, BlobRef, Document, ImageManifest},
    platform::Platform,
    reference::ImageRef,
    verdict::{RegistryMessage, Verdict, classify_status},
};

/// Blob probes of one image running at once. Real images have a handful to a few dozen
/// layers, all probed in one round; a manifest listing hundreds cannot open hundreds of
/// connections.
pub const MAX_PARALLEL_BLOBS: usize = 16;

/// Platforms an index is said to offer, by name, when none matches; the rest are counted.
pub const MAX_PLATFORMS_NAMED: usize = 12;

/// What to check an image for.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Every platform the workload could run on; each must be pullable.
    pub platforms: Vec<Platform>,
    /// Deadline for the whole probe, all credentials included.
    pub timeout: Duration,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            platforms: vec![Platform::linux_amd64()],
            timeout: Duration::from_secs(10),
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
    /// The blob whose refusal decided the verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_blob: Option<Digest>,
    /// Where the credential of the reported attempt came from (never the secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Credentials tried, in the kubelet's order (1 for an anonymous probe).
    pub attempts: u32,
    /// HTTP requests made, over all attempts.
    pub requests: u32,
    pub elapsed_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PlatformReport {
    pub platform: Platform,
    /// The image manifest this platform resolves to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
}

/// Why one part of the probe failed.
#[derive(Clone, Debug)]
struct Failure {
    verdict: Verdict,
    reason: String,
    registry: Option<RegistryMessage>,
    blob: Option<Digest>,
}

impl Failure {
    fn new(verdict: Verdict, reason: impl Into<String>) -> Self {
        Failure {
            verdict,
            reason: reason.into(),
            registry: None,
            blob: None,
        }
    }

    fn from_fetch(what: &str, e: &FetchError) -> Self {
        Failure {
            verdict: e.verdict(),
            reason: format!("{what}: {e}"),
            registry: e.registry_message().cloned(),
            blob: None,
        }
    }

    /// A refusal by HTTP status, with the registry's message.
    fn refused(what: &str, status: StatusCode, message: RegistryMessage) -> Self {
        let verdict = classify_status(status.as_u16(), &message);
        let mut reason = format!("{what}: HTTP {status}");
        if !message.is_empty() {
            reason.push_str(&format!(": {message}"));
        }
        Failure {
            verdict,
            reason,
            registry: (!message.is_empty()).then_some(message),
            blob: None,
        }
    }
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
    let mut best: Option<Report> = None;
    let mut requests = 0;
    let mut tried = 0;
    for credential in attempts {
        tried += 1;
        // Boxed: the task of a probe still waiting for its host's turn then holds a few hundred
        // bytes, not the tens of kilobytes of a running probe's state; a burst of reviews for
        // one registry queues hundreds of them.
        let report = Box::pin(probe_once(client, image, credential, options, deadline)).await;
        requests += report.requests;
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
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    tracing::debug!(
        image = %report.reference,
        verdict = %report.verdict,
        requests = report.requests,
        elapsed_ms = report.elapsed_ms,
        "probed image"
    );
    report
}

/// One attempt with one credential (or none).
async fn probe_once(
    client: &RegistryClient,
    image: &ImageRef,
    credential: Option<&Credential>,
    options: &ProbeOptions,
    deadline: Instant,
) -> Report {
    let started = Instant::now();
    let session = client.session(image, credential, deadline);
    let mut report = Report {
        reference: image.to_string(),
        verdict: Verdict::Pullable,
        reason: String::new(),
        registry: None,
        digest: None,
        media_type: None,
        platforms: Vec::new(),
        blobs: Vec::new(),
        failed_blob: None,
        credential: credential.map(|c| c.source().to_owned()),
        attempts: 1,
        requests: 0,
        elapsed_ms: 0,
    };
    let outcome = tokio::time::timeout_at(
        deadline.into(),
        run(&session, image, &options.platforms, &mut report),
    )
    .await;
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
    }
    report.requests = session.requests();
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report
}

/// The probe proper. Fills `report` as it goes so a deadline still shows what was learnt.
async fn run(
    session: &Session<'_>,
    image: &ImageRef,
    platforms: &[Platform],
    report: &mut Report,
) -> Result<(), Failure> {
    let reference = image.manifest_reference();
    // "manifest", not "manifest <tag>": every message already names the image, and one
    // text for all of a registry's missing tags is one copy in the verdict cache.
    let top = fetch_manifest(session, &reference, image.digest(), "manifest").await?;
    report.digest = Some(top.digest.clone());
    report.media_type = Some(top.media_type.clone());

    // Each platform resolves to one image manifest (or fails to); several may share one.
    let mut resolved: Vec<(Platform, Resolved)> = Vec::new();
    match top.document {
        Document::Image(m) => {
            for p in platforms {
                resolved.push((p.clone(), Ok((top.digest.clone(), m.clone()))));
            }
        }
        Document::Index(index) => {
            // What each platform selects, copied out so the index (up to a thousand entries)
            // is let go before the children are fetched.
            let wanted: Vec<(&Platform, Option<Digest>)> = platforms
                .iter()
                .map(|p| (p, index.select(p).map(|e| e.digest.clone())))
                .collect();
            let offered = index.offered(MAX_PLATFORMS_NAMED);
            drop(index);
            // Several platforms may resolve to one entry; fetch each entry once.
            let mut digests: Vec<&Digest> = Vec::new();
            let mut seen: HashSet<&Digest> = HashSet::new();
            for digest in wanted.iter().filter_map(|(_, d)| d.as_ref()) {
                if seen.insert(digest) {
                    digests.push(digest);
                }
            }
            // Policy engines (Harbor) gate the platform manifest, not the index: fetch it.
            let children = join_all(digests.iter().map(|&digest| async move {
                let what = format!("platform manifest {}", digest.short());
                let fetched =
                    fetch_manifest(session, &digest.to_string(), Some(digest), &what).await;
                (digest, fetched)
            }))
            .await;
            for (platform, entry) in &wanted {
                let result = match entry {
                    None => Err(Failure::new(
                        Verdict::NotFound,
                        format!(
                            "no matching manifest for {platform} in the index (it offers: {offered})"
                        ),
                    )),
                    Some(entry) => {
                        let (_, fetched) = children
                            .iter()
                            .find(|(d, _)| *d == entry)
                            .expect("every selected entry was fetched");
                        match fetched {
                            Ok(f) => match &f.document {
                                Document::Image(m) => Ok((f.digest.clone(), m.clone())),
                                Document::Index(_) => Err(Failure::new(
                                    Verdict::Invalid,
                                    manifest::ManifestError::NestedIndex(entry.short()).to_string(),
                                )),
                            },
                            Err(e) => Err(e.clone()),
                        }
                    }
                };
                resolved.push(((*platform).clone(), result));
            }
        }
    }

    // Probe every distinct blob once, a bounded number at a time: a manifest may list
    // hundreds, and each probe is a request.
    let mut blobs: Vec<(BlobKind, BlobRef)> = Vec::new();
    let mut seen: HashSet<Digest> = HashSet::new();
    for (_, r) in &resolved {
        if let Ok((_, m)) = r {
            let all = std::iter::once((BlobKind::Config, &m.config))
                .chain(m.layers.iter().map(|l| (BlobKind::Layer, l)));
            for (kind, b) in all {
                if seen.insert(b.digest.clone()) {
                    blobs.push((kind, b.clone()));
                }
            }
        }
    }
    // Each probe's future is made when its turn comes: made up front, hundreds of them would
    // take megabytes while they wait. (By index: a closure taking a reference would need a
    // future for every lifetime of it.)
    let results: Vec<(BlobReport, Option<Failure>)> = futures_util::stream::iter(0..blobs.len())
        .map(|i| probe_blob(session, blobs[i].0, &blobs[i].1))
        .buffered(MAX_PARALLEL_BLOBS)
        .collect()
        .await;
    report.blobs = results.iter().map(|(r, _)| r.clone()).collect();
    let failures: HashMap<&Digest, &Failure> = results
        .iter()
        .filter_map(|(r, f)| Some((&r.digest, f.as_ref()?)))
        .collect();

    let mut worst: Option<Failure> = None;
    let mut consider = |f: &Failure| {
        if worst
            .as_ref()
            .is_none_or(|w| f.verdict.severity() > w.verdict.severity())
        {
            worst = Some(f.clone());
        }
    };
    for (platform, r) in resolved {
        let failure = match &r {
            Err(f) => Some(f.clone()),
            Ok((_, m)) => std::iter::once(&m.config.digest)
                .chain(m.layers.iter().map(|l| &l.digest))
                .filter_map(|d| failures.get(d).copied())
                .max_by_key(|f| f.verdict.severity())
                .cloned(),
        };
        if let Some(f) = &failure {
            consider(f);
        }
        report.platforms.push(PlatformReport {
            platform,
            digest: r.as_ref().ok().map(|(d, _)| d.clone()),
            verdict: failure.as_ref().map_or(Verdict::Pullable, |f| f.verdict),
            reason: failure.map(|f| f.reason),
        });
    }
    match worst {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// A platform's image manifest and its digest, or why there is none.
type Resolved = Result<(Digest, ImageManifest), Failure>;

struct Fetched {
    digest: Digest,
    media_type: String,
    document: Document,
}

/// GETs a manifest by tag or digest, bounded, verified against `expected` and against the
/// registry's own `Docker-Content-Digest`.
async fn fetch_manifest(
    session: &Session<'_>,
    reference: &str,
    expected: Option<&Digest>,
    what: &str,
) -> Result<Fetched, Failure> {
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static(manifest::ACCEPT));
    let path = format!("v2/{}/manifests/{reference}", session.repository());
    let mut resp = session
        .get(&path, &headers)
        .await
        .map_err(|e| Failure::from_fetch(what, &e))?;
    let status = resp.status();
    if !status.is_success() {
        let message = resp.error_message().await;
        return Err(Failure::refused(what, status, message));
    }
    let content_type = header_str(resp.headers(), header::CONTENT_TYPE);
    let claimed = header_str(resp.headers(), "docker-content-digest");
    let body = resp
        .read_body(manifest::MAX_MANIFEST_BYTES)
        .await
        .map_err(|e| match e {
            FetchError::TooLarge { .. } => Failure::new(
                Verdict::Invalid,
                format!("{what}: larger than {} bytes", manifest::MAX_MANIFEST_BYTES),
            ),
            other => Failure::from_fetch(what, &other),
        })?;
    drop(resp);
    let body = &body.bytes;
    let claimed = claimed
        .map(|c| Digest::parse(&c))
        .transpose()
        .map_err(|e: DigestError| {
            Failure::new(
                Verdict::Invalid,
                format!("{what}: bad Docker-Content-Digest header: {e}"),
            )
        })?;
    let algorithm = expected
        .or(claimed.as_ref())
        .map_or(crate::digest::Algorithm::Sha256, Digest::algorithm);
    let actual = Digest::compute(algorithm, body);
    if let Some(expected) = expected
        && *expected != actual
    {
        return Err(Failure::new(
            Verdict::Invalid,
            format!(
                "{what}: digest mismatch: asked for {expected}, the registry served content with digest {actual}"
            ),
        ));
    }
    if let Some(claimed) = claimed
        && !claimed.matches(body)
    {
        return Err(Failure::new(
            Verdict::Invalid,
            format!(
                "{what}: the registry's Docker-Content-Digest {claimed} does not match the manifest it served"
            ),
        ));
    }
    let document = manifest::parse(body, content_type.as_deref())
        .map_err(|e| Failure::new(Verdict::Invalid, format!("{what}: {e}")))?;
    let media_type = match &document {
        Document::Image(m) => m.media_type.clone(),
        Document::Index(i) => i.media_type.clone(),
    };
    Ok(Fetched {
        digest: actual,
        media_type,
        document,
    })
}

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// GETs the first byte of a blob. Reads at most one chunk and then drops the response, which
/// closes the stream even when the server ignored Range and started sending the whole blob.
async fn probe_blob(
    session: &Session<'_>,
    kind: BlobKind,
    blob: &BlobRef,
) -> (BlobReport, Option<Failure>) {
    let label = match kind {
        BlobKind::Config => format!("config blob {}", blob.digest.short()),
        BlobKind::Layer => format!("layer {}", blob.digest.short()),
    };
    let mut report = BlobReport {
        digest: blob.digest.clone(),
        kind,
        size: blob.size,
        status: None,
        verdict: Verdict::Pullable,
        skipped: false,
        cached: false,
        reason: None,
    };
    if blob.foreign {
        report.skipped = true;
        report.reason =
            Some("foreign layer: served from its own URLs, not by the registry".to_owned());
        return (report, None);
    }
    if session.blob_known(&blob.digest) {
        report.cached = true;
        return (report, None);
    }
    let result = probe_blob_inner(session, blob, &label, &mut report).await;
    match result {
        Ok(()) => {
            session.remember_blob(&blob.digest);
            (report, None)
        }
        Err(mut f) => {
            f.blob = Some(blob.digest.clone());
            report.verdict = f.verdict;
            report.reason = Some(f.reason.clone());
            (report, Some(f))
        }
    }
}

async fn probe_blob_inner(
    session: &Session<'_>,
    blob: &BlobRef,
    label: &str,
    report: &mut BlobReport,
) -> Result<(), Failure> {
    let mut headers = HeaderMap::new();
    headers.insert(header::RANGE, HeaderValue::from_static("bytes=0-0"));
    let path = format!("v2/{}/blobs/{}", session.repository(), blob.digest);
    let mut resp = session
        .get(&path, &headers)
        .await
        .map_err(|e| Failure::from_fetch(label, &e))?;
    let status = resp.status();
    report.status = Some(status.as_u16());
    match status {
        StatusCode::OK | StatusCode::PARTIAL_CONTENT => {
            if status == StatusCode::PARTIAL_CONTENT
                && let Some(range) = header_str(resp.headers(), header::CONTENT_RANGE)
                && !range.trim_start().starts_with("bytes 0-")
            {
                return Err(Failure::new(
                    Verdict::Invalid,
                    format!("{label}: answered a request for byte 0 with range {range:?}"),
                ));
            }
            if let Some(claimed) = header_str(resp.headers(), "docker-content-digest")
                && claimed != blob.digest.to_string()
            {
                return Err(Failure::new(
                    Verdict::Invalid,
                    format!("{label}: the registry served a blob with digest {claimed}"),
                ));
            }
            let first = resp.chunk().await.map_err(|e| {
                Failure::new(
                    Verdict::Unavailable,
                    format!("{label}: reading the first byte failed: {e}"),
                )
            })?;
            if first.is_none_or(|c| c.is_empty()) && blob.size > 0 {
                return Err(Failure::new(
                    Verdict::Invalid,
                    format!(
                        "{label}: the registry answered with an empty body for a {} byte blob",
                        blob.size
                    ),
                ));
            }
            // Dropping the response here ends the stream after the first chunk.
            Ok(())
        }
        StatusCode::RANGE_NOT_SATISFIABLE => {
            // A zero-length blob has no byte 0: Go's ServeContent (distribution) and Azure
            // answer 416 with `bytes */0`, which still proves the blob exists.
            let empty = header_str(resp.headers(), header::CONTENT_RANGE)
                .is_some_and(|r| r.trim().ends_with("/0"));
            if blob.size == 0 || empty {
                Ok(())
            } else {
                Err(Failure::new(
                    Verdict::Unavailable,
                    format!(
                        "{label}: the registry refused the range request for byte 0 (HTTP 416)"
                    ),
                ))
            }
        }
        _ => {
            let message = resp.error_message().await;
            Err(Failure::refused(label, status, message))
        }
    }
}

/// The report for a reference that does not parse: `invalid`, decided without network I/O.
pub fn invalid_reference(input: &str, error: &crate::reference::ReferenceError) -> Report {
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
    Report {
        reference: reference.chars().take(256).collect(),
        verdict,
        reason,
        registry: None,
        digest: None,
        media_type: None,
        platforms: Vec::new(),
        blobs: Vec::new(),
        failed_blob: None,
        credential: None,
        attempts: 0,
        requests: 0,
        elapsed_ms: 0,
    }
}
