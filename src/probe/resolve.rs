//! The manifest side of a probe: GET the manifest by tag or digest, verify its digest against
//! the one asked for and the registry's `Docker-Content-Digest`, and resolve an index to each
//! platform's image manifest (fetching each chosen entry, since policy engines such as Harbor
//! gate the platform manifest, not the index).

use std::collections::{HashMap, HashSet};

use futures_util::future::join_all;
use reqwest::header::{self, HeaderMap};

use super::blobs::{BlobMemory, probe_all};
use super::verdict::{Failure, Verdict};
use super::{MAX_PLATFORMS_NAMED, PlatformReport, Report};
use crate::oci::digest::{Digest, DigestError};
use crate::oci::manifest::{self, Document, ImageManifest};
use crate::oci::platform::Platform;
use crate::oci::reference::ImageRef;
use crate::registry::{FetchError, Session};

/// The probe proper. Fills `report` as it goes so a deadline still shows what was learnt.
pub(super) async fn run(
    session: &Session<'_>,
    image: &ImageRef,
    platforms: &[Platform],
    memory: &BlobMemory,
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

    let results = probe_all(session, memory, &resolved).await;
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
pub(super) type Resolved = Result<(Digest, ImageManifest), Failure>;

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
    let mut resp = session
        .manifest(reference)
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
        .map_or(crate::oci::digest::Algorithm::Sha256, Digest::algorithm);
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

pub(super) fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
