//! The blob side of a probe: one byte of each blob (`Range: bytes=0-0`), the first chunk read
//! and the stream dropped, which closes it even when the registry ignores the range; and the
//! memory of blobs that answered, so that layers shared by many images are asked for once
//! while they are trusted.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header;
use ring::hmac;

use futures_util::StreamExt as _;

use super::fetch::header_str;
use super::resolve::{Resolved, Wanted};
use super::route::{Host, Hosts, Pick};
use super::verdict::{Failure, Verdict};
use super::{BlobKind, BlobReport, MAX_PARALLEL_BLOBS};
use crate::fingerprint::{Fingerprint, random_hmac_key};
use crate::oci::digest::Digest;
use crate::oci::manifest::BlobRef;
use crate::oci::platform::Platform;
use crate::registry::{FetchError, Reply, Session};

/// Probes every distinct blob of the manifests `resolved`, once each and a bounded number at
/// a time: a manifest may list hundreds, and each probe is a request.
///
/// With `read_config` (a single-platform image, whose config is the only word on what it was
/// built for), the config is read whole when it is small, in the same one request.
///
/// Each blob is asked of the `content` hosts in order until one serves it (one host unless
/// the nodes' configuration lists mirrors).
pub(super) async fn probe_all(
    hosts: &Hosts<'_>,
    content: &[&Host<'_>],
    memory: &BlobMemory,
    resolved: &[(Wanted, Resolved)],
    read_config: bool,
) -> Vec<(BlobReport, Option<Failure>)> {
    let mut blobs: Vec<(BlobKind, BlobRef)> = Vec::new();
    let mut seen: HashSet<Digest> = HashSet::new();
    for (_, r) in resolved {
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
    futures_util::stream::iter(0..blobs.len())
        .map(|i| {
            let (kind, blob) = (blobs[i].0, &blobs[i].1);
            let read = read_config && kind == BlobKind::Config;
            async move {
                let served = hosts
                    .first_served(
                        content,
                        &label(kind, blob),
                        Pick::First,
                        |host| async move {
                            match probe_blob(&host.session, memory, kind, blob, read).await {
                                (report, None) => Ok(report),
                                (_, Some(failure)) => Err(failure),
                            }
                        },
                    )
                    .await;
                match served {
                    Ok((mut report, host)) => {
                        if hosts.configured {
                            report.host = Some(host.name.clone());
                        }
                        (report, None)
                    }
                    Err(failure) => (refused(kind, blob, &failure), Some(failure)),
                }
            }
        })
        .buffered(MAX_PARALLEL_BLOBS)
        .collect()
        .await
}

fn label(kind: BlobKind, blob: &BlobRef) -> String {
    match kind {
        BlobKind::Config => format!("config blob {}", blob.digest.short()),
        BlobKind::Layer => format!("layer {}", blob.digest.short()),
    }
}

/// The report of a blob no host served.
fn refused(kind: BlobKind, blob: &BlobRef, failure: &Failure) -> BlobReport {
    BlobReport {
        digest: blob.digest.clone(),
        kind,
        size: blob.size,
        status: failure.status,
        verdict: failure.verdict,
        skipped: false,
        cached: false,
        reason: Some(failure.reason.clone()),
        platform: None,
        host: None,
    }
}

/// GETs the first byte of a blob (or, with `read`, the whole of a small config). Reads at most
/// one chunk and then drops the response, which closes the stream even when the server ignored
/// Range and started sending the whole blob.
async fn probe_blob(
    session: &Session<'_>,
    memory: &BlobMemory,
    kind: BlobKind,
    blob: &BlobRef,
    read: bool,
) -> (BlobReport, Option<Failure>) {
    let label = label(kind, blob);
    let mut report = BlobReport {
        digest: blob.digest.clone(),
        kind,
        size: blob.size,
        status: None,
        verdict: Verdict::Pullable,
        skipped: false,
        cached: false,
        reason: None,
        platform: None,
        host: None,
    };
    if blob.foreign {
        report.skipped = true;
        report.reason =
            Some("foreign layer: served from its own URLs, not by the registry".to_owned());
        return (report, None);
    }
    // A config to be read counts as known only with what it says.
    if let Some(known) = memory.recall(session, &blob.digest)
        && (!read || known.is_some())
    {
        report.cached = true;
        report.platform = known.map(|p| (*p).clone());
        return (report, None);
    }
    let result = probe_blob_inner(session, blob, &label, &mut report, read).await;
    match result {
        Ok(platform) => {
            memory.remember(session, &blob.digest, platform.as_ref());
            report.platform = platform;
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

/// A config is read whole up to this size; Docker's and BuildKit's are a few KiB, long
/// histories some tens. A larger one is only probed.
const CONFIG_READ_LIMIT: usize = 256 * 1024;

async fn probe_blob_inner(
    session: &Session<'_>,
    blob: &BlobRef,
    label: &str,
    report: &mut BlobReport,
    read: bool,
) -> Result<Option<Platform>, Failure> {
    let read = read && blob.size <= CONFIG_READ_LIMIT as u64 && blob.size > 0;
    let sent = match read {
        true => session.blob_whole(&blob.digest, blob.size).await,
        false => session.blob_range(&blob.digest).await,
    };
    let mut resp = sent.map_err(|e| Failure::from_fetch(label, &e))?;
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
            if read {
                return read_config(&mut resp, blob, label).await;
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
            Ok(None)
        }
        StatusCode::RANGE_NOT_SATISFIABLE => {
            // A zero-length blob has no byte 0: Go's ServeContent (distribution) and Azure
            // answer 416 with `bytes */0`, which still proves the blob exists.
            let empty = header_str(resp.headers(), header::CONTENT_RANGE)
                .is_some_and(|r| r.trim().ends_with("/0"));
            if blob.size == 0 || empty {
                Ok(None)
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

/// Reads a small config whole, checks it is the blob the manifest names (the node checks
/// too), and takes the platform it was built for from it.
async fn read_config(
    resp: &mut Reply<'_>,
    blob: &BlobRef,
    label: &str,
) -> Result<Option<Platform>, Failure> {
    let body = match resp.read_body(CONFIG_READ_LIMIT).await {
        Ok(body) => body,
        // Larger than it said: it was served, which is what the probe asks.
        Err(FetchError::TooLarge { .. }) => return Ok(None),
        Err(e) => return Err(Failure::from_fetch(label, &e)),
    };
    if !blob.digest.matches(&body.bytes) {
        return Err(Failure::new(
            Verdict::Invalid,
            format!(
                "{label}: the registry served {} bytes whose digest is not the one the manifest names",
                body.bytes.len()
            ),
        ));
    }
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        os: String,
        #[serde(default)]
        architecture: String,
        #[serde(default)]
        variant: Option<String>,
    }
    Ok(serde_json::from_slice::<Config>(&body.bytes)
        .ok()
        .filter(|c| !c.os.is_empty() && !c.architecture.is_empty())
        .and_then(|c| {
            let written = [c.os.as_str(), c.architecture.as_str()]
                .into_iter()
                .chain(c.variant.as_deref().filter(|v| !v.is_empty()))
                .collect::<Vec<_>>()
                .join("/");
            Platform::parse(&written).ok()
        }))
}

/// A blob that was served: the same bytes in the same repository with the same credential,
/// as a 128-bit keyed hash of the four (see [`Fingerprint`]). Held that way, 100,000
/// remembered blobs cost moka's bookkeeping and 16 bytes each, not three more strings.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct BlobKey(u128);

/// Blobs that answered their probe, trusted for a while per registry, repository and
/// credential. Shared by every probe that is given it; [`BlobMemory::off`] remembers nothing.
#[derive(Clone, Default)]
pub struct BlobMemory(Option<std::sync::Arc<Remembered>>);

struct Remembered {
    /// For a config read whole, the platform it names (shared, 8 bytes an entry).
    blobs: moka::sync::Cache<BlobKey, Option<Arc<Platform>>>,
    /// The key of the keyed hash that names remembered blobs; never leaves the process.
    secret: hmac::Key,
}

impl std::fmt::Debug for BlobMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("BlobMemory(off)"),
            Some(r) => write!(f, "BlobMemory({} blobs)", r.blobs.entry_count()),
        }
    }
}

impl BlobMemory {
    /// Remembers nothing: every blob is probed.
    pub fn off() -> Self {
        BlobMemory(None)
    }

    /// Remembers at most `capacity` blobs, each for `ttl`; a zero `ttl` is [`BlobMemory::off`].
    /// Blobs are content-addressed, so only a registry policy change can turn the answer, as
    /// it can for a cached verdict.
    pub fn new(ttl: Duration, capacity: u64) -> Self {
        if ttl.is_zero() {
            return Self::off();
        }
        BlobMemory(Some(std::sync::Arc::new(Remembered {
            blobs: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            secret: random_hmac_key(),
        })))
    }

    fn key(secret: &hmac::Key, session: &Session<'_>, digest: &Digest) -> BlobKey {
        let (registry, repository, credential) = session.scope();
        let mut f = Fingerprint::new(secret);
        f.field(registry.as_bytes())
            .field(repository.as_bytes())
            .field(digest.to_string().as_bytes());
        match credential {
            None => f.fixed(&[0]),
            Some(c) => f.fixed(&[1]).fixed(c.id().as_bytes()),
        };
        BlobKey(u128::from_le_bytes(f.finish()))
    }

    /// Whether this blob answered a probe recently, in this repository with this credential
    /// (`Some`), and the platform it names when it is a config that was read.
    fn recall(&self, session: &Session<'_>, digest: &Digest) -> Option<Option<Arc<Platform>>> {
        let r = self.0.as_ref()?;
        r.blobs.get(&Self::key(&r.secret, session, digest))
    }

    /// Remembers a blob that answered its probe, with the platform its content names.
    fn remember(&self, session: &Session<'_>, digest: &Digest, platform: Option<&Platform>) {
        if let Some(r) = &self.0 {
            let platform = platform.map(|p| Arc::new(p.clone()));
            r.blobs
                .insert(Self::key(&r.secret, session, digest), platform);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::oci::reference::ImageRef;
    use crate::registry::{ClientOptions, Credential, RegistryClient};

    #[test]
    fn remembered_blobs_are_told_apart_by_host_repository_digest_and_credential() {
        let client = RegistryClient::new(ClientOptions::default()).unwrap();
        let memory = BlobMemory::new(Duration::from_secs(60), 100);
        let secret = &memory.0.as_ref().unwrap().secret;
        let deadline = Instant::now() + Duration::from_secs(60);
        let (alice, bob) = (
            Credential::new("alice", "p", "test"),
            Credential::new("bob", "p", "test"),
        );
        let image = |r: &str| ImageRef::parse(r).unwrap();
        let digest =
            |c: char| Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap();
        let key = |r: &str, c: Option<&Credential>, d: char| {
            BlobMemory::key(secret, &client.session(&image(r), c, deadline), &digest(d))
        };
        let keys = [
            key("r.example/a/b:1", None, 'a'),
            key("r.example/a/b:1", None, 'b'),
            key("r.example/a/c:1", None, 'a'),
            key("r.example/a:1", None, 'a'),
            key("q.example/a/b:1", None, 'a'),
            key("r.example:5000/a/b:1", None, 'a'),
            key("r.example/a/b:1", Some(&alice), 'a'),
            key("r.example/a/b:1", Some(&bob), 'a'),
        ];
        for (i, x) in keys.iter().enumerate() {
            for y in &keys[i + 1..] {
                assert!(x != y, "{i}");
            }
        }
        // The tag does not matter, nor the default port spelled out, and an anonymous
        // credential is no credential.
        assert!(key("r.example/a/b:1", None, 'a') == key("r.example:443/a/b:2", None, 'a'));
        let anonymous = Credential::new("", "", "test");
        assert!(key("r.example/a/b:1", None, 'a') == key("r.example/a/b:2", Some(&anonymous), 'a'));
        // Another memory names the same blob apart: keys are keyed per process (and memory).
        let other = BlobMemory::new(Duration::from_secs(60), 100);
        let other_secret = &other.0.as_ref().unwrap().secret;
        assert!(
            key("r.example/a/b:1", None, 'a')
                != BlobMemory::key(
                    other_secret,
                    &client.session(&image("r.example/a/b:1"), None, deadline),
                    &digest('a')
                )
        );
    }
}
