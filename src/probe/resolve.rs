//! The probe's course: the manifest (fetched, or on a metered registry read from the store
//! once a HEAD has confirmed the digest), each platform resolved to its image manifest
//! (fetching each chosen index entry, since policy engines such as Harbor gate the platform
//! manifest, not the index), then one byte of every blob; the verdict of each platform and
//! the worst failure.

use std::collections::{HashMap, HashSet};

use futures_util::future::join_all;

use super::blobs::{BlobMemory, probe_all};
use super::fetch::{Confirmed, Fetched, confirm, fetch_manifest, from_store};
use super::ledger::Fetch;
use super::route::{Host, Hosts, MANIFEST, Pick};
use super::verdict::{Failure, Verdict};
use super::{BlobKind, BlobReport, MAX_PLATFORMS_NAMED, PlatformReport, Report};
use crate::oci::digest::Digest;
use crate::oci::manifest::{self, Document, ImageManifest, Index};
use crate::oci::platform::{DescriptorPlatform, Platform, PlatformRules};
use crate::oci::reference::ImageRef;
use crate::registry::hosts::Fallback;

/// A platform's image manifest and its digest, or why there is none.
pub(super) type Resolved = Result<(Digest, ImageManifest), Failure>;

/// A platform the workload may land on, and the platform of the index entry its node takes
/// when that is another one (`linux/arm/v6` for `linux/arm/v7`).
pub(super) struct Wanted {
    pub(super) platform: Platform,
    pub(super) entry: Option<Platform>,
}

impl Wanted {
    fn exact(platform: &Platform) -> Wanted {
        Wanted {
            platform: platform.clone(),
            entry: None,
        }
    }
}

/// An index entry's digest, and its platform when a node takes it for another one.
type Choice = (Digest, Option<Platform>);

/// The entry of `index` a node of `platform` takes under `rules`, and its platform when it
/// is not `platform` itself.
fn choose(index: &Index, platform: &Platform, rules: PlatformRules) -> Option<Choice> {
    let entry = index.select(platform, rules)?;
    let named = entry
        .platform
        .as_ref()
        .map(Platform::of_entry)
        .filter(|p| p != platform);
    Some((entry.digest.clone(), named))
}

/// What the probe of one attempt needs besides the session.
pub(super) struct Course<'a> {
    /// The hosts the node's runtime would ask, each with its session and ledger.
    pub(super) hosts: &'a Hosts<'a>,
    pub(super) image: &'a ImageRef,
    pub(super) platforms: &'a [Platform],
    /// How the node's runtime picks an index entry for a platform.
    pub(super) rules: PlatformRules,
    pub(super) memory: &'a BlobMemory,
}

/// The platforms' verdicts and the blobs' reports, and the worst failure among them.
struct Assessed {
    platforms: Vec<PlatformReport>,
    blobs: Vec<BlobReport>,
    worst: Option<Failure>,
    caution: Option<String>,
}

/// The probe proper. Fills `report` as it goes so a deadline still shows what was learnt.
pub(super) async fn run(course: &Course<'_>, report: &mut Report) -> Result<(), Failure> {
    let hosts = course.hosts;
    // On a metered registry, a digest whose documents are all stored is confirmed with a HEAD
    // (no pull counted) while its blobs are probed; only a moved tag is fetched again. (Not
    // through mirrors: they count no pulls, and the nodes go to them first.)
    if let [only] = &hosts.list[..]
        && let Some(known) = known(course, only)
    {
        report.digest = Some(known.digest.clone());
        report.media_type = Some(known.media_type.clone());
        let content = [only];
        let (confirmed, assessed) = tokio::join!(
            confirm(&only.session, &only.ledger, course.image, &known.digest),
            assess(course, &content, known.resolved, known.single),
        );
        match confirmed {
            Confirmed::Same => return finish(assessed, report),
            Confirmed::Refused(failure) => return Err(failure),
            Confirmed::Changed => {
                report.digest = None;
                report.media_type = None;
            }
        }
    }
    let reference = course.image.manifest_reference();
    let pick = match hosts.fallback {
        Fallback::PerRequest => Pick::Furthest,
        Fallback::PerSource => Pick::Last,
    };
    // "manifest", not "manifest <tag>": every message already names the image, and one
    // text for all of a registry's missing tags is one copy in the verdict cache.
    let (top, served_by) = hosts
        .first_served(&hosts.for_manifest(course.image), MANIFEST, pick, |host| {
            fetch_manifest(
                &host.session,
                &host.ledger,
                course.image,
                Fetch::Top,
                &reference,
                course.image.digest(),
                MANIFEST,
            )
        })
        .await?;
    if hosts.configured {
        report.host = Some(served_by.name.clone());
    }
    // containerd fetches every later object from the first host that has it; containers/image
    // from the host that served the manifest.
    let content = match hosts.fallback {
        Fallback::PerRequest => hosts.for_content(),
        Fallback::PerSource => vec![served_by],
    };
    report.digest = Some(top.digest.clone());
    report.media_type = Some(top.media_type.clone());
    let single = matches!(top.document, Document::Image(_));
    let resolved = resolve(course, &content, top).await;
    finish(assess(course, &content, resolved, single).await, report)
}

/// The top document and every platform's image manifest, all from the store, for the digest
/// the reference names or its tag last resolved to; `None` unless the registry is metered and
/// everything needed is stored.
struct Known {
    digest: Digest,
    media_type: String,
    resolved: Vec<(Wanted, Resolved)>,
    /// A single-platform image, not an index.
    single: bool,
}

fn known(course: &Course<'_>, host: &Host<'_>) -> Option<Known> {
    let digest = host.ledger.known_digest(course.image)?;
    let top = from_store(&digest, &host.ledger.stored(&digest)?)?;
    let mut resolved = Vec::with_capacity(course.platforms.len());
    match &top.document {
        Document::Image(m) => {
            for p in course.platforms {
                resolved.push((Wanted::exact(p), Ok((top.digest.clone(), m.clone()))));
            }
        }
        Document::Index(index) => {
            let offered = index.offered(MAX_PLATFORMS_NAMED);
            for p in course.platforms {
                let mut wanted = Wanted::exact(p);
                let entry = match choose(index, p, course.rules) {
                    None => Err(no_match(p, &offered)),
                    Some((digest, named)) => {
                        wanted.entry = named;
                        let child = from_store(&digest, &host.ledger.stored(&digest)?)?;
                        match child.document {
                            Document::Image(m) => Ok((child.digest, m)),
                            Document::Index(_) => return None,
                        }
                    }
                };
                resolved.push((wanted, entry));
            }
        }
    }
    Some(Known {
        digest: top.digest,
        media_type: top.media_type,
        single: matches!(top.document, Document::Image(_)),
        resolved,
    })
}

fn no_match(platform: &Platform, offered: &str) -> Failure {
    Failure::new(
        Verdict::NotFound,
        format!("no matching manifest for {platform} in the index (it offers: {offered})"),
    )
}

/// Each platform resolved to one image manifest (or a failure); several may share one.
async fn resolve(
    course: &Course<'_>,
    content: &[&Host<'_>],
    top: Fetched,
) -> Vec<(Wanted, Resolved)> {
    let index = match top.document {
        Document::Image(m) => {
            return course
                .platforms
                .iter()
                .map(|p| (Wanted::exact(p), Ok((top.digest.clone(), m.clone()))))
                .collect();
        }
        Document::Index(index) => index,
    };
    // What each platform selects, copied out so the index (up to a thousand entries) is let
    // go before the children are fetched.
    let wanted: Vec<(&Platform, Option<Choice>)> = course
        .platforms
        .iter()
        .map(|p| (p, choose(&index, p, course.rules)))
        .collect();
    let offered = index.offered(MAX_PLATFORMS_NAMED);
    drop(index);
    // Several platforms may resolve to one entry; fetch each entry once.
    let mut digests: Vec<&Digest> = Vec::new();
    let mut seen: HashSet<&Digest> = HashSet::new();
    for (digest, _) in wanted.iter().filter_map(|(_, d)| d.as_ref()) {
        if seen.insert(digest) {
            digests.push(digest);
        }
    }
    // Policy engines (Harbor) gate the platform manifest, not the index: fetch it. On a
    // metered registry a stored child is content-addressed and needs no GET.
    let children = join_all(digests.iter().map(|&digest| async move {
        let what = format!("platform manifest {}", digest.short());
        let fetched = course
            .hosts
            .first_served(content, &what, Pick::First, |host| {
                let what = &what;
                async move {
                    let stored = host
                        .ledger
                        .stored(digest)
                        .and_then(|s| from_store(digest, &s));
                    match stored {
                        Some(stored) => Ok(stored),
                        None => {
                            fetch_manifest(
                                &host.session,
                                &host.ledger,
                                course.image,
                                Fetch::Child,
                                &digest.to_string(),
                                Some(digest),
                                what,
                            )
                            .await
                        }
                    }
                }
            })
            .await
            .map(|(fetched, _)| fetched);
        (digest, fetched)
    }))
    .await;
    let mut resolved = Vec::with_capacity(wanted.len());
    for (platform, chosen) in &wanted {
        let result = match chosen {
            None => Err(no_match(platform, &offered)),
            Some((entry, _)) => {
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
        let wanted = Wanted {
            platform: (*platform).clone(),
            entry: chosen.as_ref().and_then(|(_, named)| named.clone()),
        };
        resolved.push((wanted, result));
    }
    resolved
}

/// Probes the blobs of every resolved manifest and gives each platform its verdict. For a
/// `single`-platform image, says when its config names a platform some node cannot run.
async fn assess(
    course: &Course<'_>,
    content: &[&Host<'_>],
    resolved: Vec<(Wanted, Resolved)>,
    single: bool,
) -> Assessed {
    let results = probe_all(course.hosts, content, course.memory, &resolved, single).await;
    let built_for = results
        .iter()
        .find_map(|(r, _)| r.platform.as_ref().filter(|_| r.kind == BlobKind::Config));
    let caution = built_for.and_then(|built| foreign_nodes(built, course.platforms));
    let failures: HashMap<&Digest, &Failure> = results
        .iter()
        .filter_map(|(r, f)| Some((&r.digest, f.as_ref()?)))
        .collect();
    let mut worst: Option<Failure> = None;
    let mut platforms = Vec::with_capacity(resolved.len());
    for (wanted, r) in resolved {
        let failure = match &r {
            Err(f) => Some(f.clone()),
            Ok((_, m)) => std::iter::once(&m.config.digest)
                .chain(m.layers.iter().map(|l| &l.digest))
                .filter_map(|d| failures.get(d).copied())
                .max_by_key(|f| f.verdict.severity())
                .cloned(),
        };
        if let Some(f) = &failure
            && worst
                .as_ref()
                .is_none_or(|w| f.verdict.severity() > w.verdict.severity())
        {
            worst = Some(f.clone());
        }
        platforms.push(PlatformReport {
            platform: wanted.platform,
            entry: wanted.entry,
            digest: r.as_ref().ok().map(|(d, _)| d.clone()),
            verdict: failure.as_ref().map_or(Verdict::Pullable, |f| f.verdict),
            reason: failure.map(|f| f.reason),
        });
    }
    let blobs = results.into_iter().map(|(r, _)| r).collect();
    Assessed {
        platforms,
        blobs,
        worst,
        caution,
    }
}

/// The caution for an image `built` for one platform when some of the `nodes` cannot run it.
/// Every runtime pulls such an image anywhere (there is no index to choose from); whether a
/// CPU runs it is containerd's vector (an amd64 node runs 386, an arm64 node arm/v8…v5),
/// whichever runtime pulls.
fn foreign_nodes(built: &Platform, nodes: &[Platform]) -> Option<String> {
    let entry = DescriptorPlatform {
        os: built.os().to_owned(),
        architecture: built.architecture().to_owned(),
        variant: built.variant().map(str::to_owned),
    };
    let foreign: Vec<String> = nodes
        .iter()
        .filter(|n| PlatformRules::Containerd.rank(n, &entry).is_none())
        .map(ToString::to_string)
        .collect();
    (!foreign.is_empty()).then(|| {
        format!(
            "built for {built} only (a single-platform image, no index): a {} node pulls it, \
             but its processes will not start there (exec format error)",
            foreign.join(" or ")
        )
    })
}

fn finish(assessed: Assessed, report: &mut Report) -> Result<(), Failure> {
    report.caution = assessed.caution;
    report.platforms = assessed.platforms;
    report.blobs = assessed.blobs;
    match assessed.worst {
        Some(f) => Err(f),
        None => Ok(()),
    }
}
