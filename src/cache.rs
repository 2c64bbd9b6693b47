//! The verdict cache: one probe per image, platform set and credential set, shared by every
//! review that asks within the entry's lifetime, and one probe for a burst of identical asks.
//!
//! The key carries the fingerprints of the credentials the probe used (never the secrets), so
//! a verdict obtained with one namespace's pull secret is never handed to a pod that lacks it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;

use crate::keyring::CredentialId;
use crate::platform::Platform;
use crate::probe::Report;
use crate::verdict::Verdict;

/// How long each kind of answer is trusted.
#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// A pullable tag: the tag may move, or a policy may start blocking it.
    pub pullable_ttl: Duration,
    /// A pullable digest: the content cannot change, only a registry policy can.
    pub digest_pullable_ttl: Duration,
    /// blocked, not_found, unauthorized, invalid: short, so a fix (a pushed image, a granted
    /// permission, a lifted policy) is seen soon.
    pub refusal_ttl: Duration,
    /// unavailable: an outage should be retried almost at once; zero means only concurrent
    /// asks share the answer.
    pub unavailable_ttl: Duration,
    /// Entries kept at most.
    pub max_entries: u64,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            pullable_ttl: Duration::from_secs(10 * 60),
            digest_pullable_ttl: Duration::from_secs(60 * 60),
            refusal_ttl: Duration::from_secs(60),
            unavailable_ttl: Duration::from_secs(5),
            max_entries: 100_000,
        }
    }
}

impl CacheOptions {
    /// The lifetime of `report` in the cache.
    pub fn ttl(&self, report: &Report) -> Duration {
        match report.verdict {
            Verdict::Pullable if report.reference.contains('@') => self.digest_pullable_ttl,
            Verdict::Pullable => self.pullable_ttl,
            Verdict::Unavailable => self.unavailable_ttl,
            Verdict::Blocked | Verdict::NotFound | Verdict::Unauthorized | Verdict::Invalid => {
                self.refusal_ttl
            }
        }
    }
}

/// What a verdict depends on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProbeKey {
    /// The normalised reference.
    pub reference: String,
    pub platforms: Vec<Platform>,
    /// The credentials tried, in order; empty for an anonymous probe.
    pub credentials: Vec<CredentialId>,
}

/// A cached (or freshly probed) report.
#[derive(Clone, Debug)]
pub struct Cached {
    pub report: Arc<Report>,
    /// Answered from the cache, or by joining a probe another review started.
    pub hit: bool,
}

struct VerdictExpiry(CacheOptions);

impl Expiry<ProbeKey, Arc<Report>> for VerdictExpiry {
    fn expire_after_create(
        &self,
        _key: &ProbeKey,
        value: &Arc<Report>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(self.0.ttl(value))
    }
}

/// Verdicts by [`ProbeKey`], with per-verdict lifetimes and merged concurrent probes.
#[derive(Clone)]
pub struct VerdictCache {
    cache: Cache<ProbeKey, Arc<Report>>,
}

impl VerdictCache {
    pub fn new(options: CacheOptions) -> Self {
        VerdictCache {
            cache: Cache::builder()
                .max_capacity(options.max_entries)
                .expire_after(VerdictExpiry(options))
                .build(),
        }
    }

    /// The cached report for `key`, or the report of `probe`, run once however many reviews
    /// ask at the same time.
    ///
    /// The probe runs in its own task: a review that stops waiting at its deadline does not
    /// cancel it, so the answer still lands in the cache for the next review.
    pub async fn get_or_probe<P, F>(&self, key: ProbeKey, probe: P) -> Cached
    where
        P: FnOnce() -> F,
        F: Future<Output = Report> + Send + 'static,
    {
        if let Some(report) = self.cache.get(&key).await {
            return Cached { report, hit: true };
        }
        let cache = self.cache.clone();
        let probe = probe();
        let task = tokio::spawn(async move {
            let entry = cache
                .entry(key)
                .or_insert_with(async move { Arc::new(probe.await) })
                .await;
            let fresh = entry.is_fresh();
            (entry.into_value(), fresh)
        });
        match task.await {
            Ok((report, fresh)) => Cached {
                report,
                hit: !fresh,
            },
            // The probe never panics; if it ever did, this review must still get an answer.
            Err(e) => Cached {
                report: Arc::new(crate::probe::internal_error(&e.to_string())),
                hit: false,
            },
        }
    }

    /// Entries held (approximate: moka applies writes in batches).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Flushes pending writes so counts are exact (for metrics and tests).
    pub async fn sync(&self) {
        self.cache.run_pending_tasks().await;
    }

    /// Drops everything, e.g. when the policy's platforms change.
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn report(reference: &str, verdict: Verdict) -> Report {
        let mut r = crate::probe::internal_error("test");
        r.reference = reference.to_owned();
        r.verdict = verdict;
        r
    }

    fn key(reference: &str, credentials: Vec<CredentialId>) -> ProbeKey {
        ProbeKey {
            reference: reference.to_owned(),
            platforms: vec![Platform::linux_amd64()],
            credentials,
        }
    }

    #[test]
    fn lifetimes_follow_the_verdict() {
        let o = CacheOptions::default();
        let tag = "r.example/app:1";
        let digest = format!("r.example/app@sha256:{}", "a".repeat(64));
        assert_eq!(o.ttl(&report(tag, Verdict::Pullable)), o.pullable_ttl);
        assert_eq!(
            o.ttl(&report(&digest, Verdict::Pullable)),
            o.digest_pullable_ttl
        );
        assert!(o.digest_pullable_ttl > o.pullable_ttl);
        for v in [
            Verdict::Blocked,
            Verdict::NotFound,
            Verdict::Unauthorized,
            Verdict::Invalid,
        ] {
            assert_eq!(o.ttl(&report(&digest, v)), o.refusal_ttl);
        }
        assert_eq!(o.ttl(&report(tag, Verdict::Unavailable)), o.unavailable_ttl);
        assert!(o.refusal_ttl < o.pullable_ttl && o.unavailable_ttl < o.refusal_ttl);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_identical_asks_probes_once() {
        let cache = VerdictCache::new(CacheOptions::default());
        let probes = Arc::new(AtomicU32::new(0));
        let asks = (0..1000).map(|_| {
            let probes = probes.clone();
            cache.get_or_probe(key("r.example/app:1", vec![]), move || async move {
                probes.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                report("r.example/app:1", Verdict::Pullable)
            })
        });
        let answers = futures_util::future::join_all(asks).await;
        assert_eq!(probes.load(Ordering::SeqCst), 1);
        assert_eq!(answers.iter().filter(|a| !a.hit).count(), 1);
    }

    #[tokio::test]
    async fn credentials_are_part_of_the_key() {
        let cache = VerdictCache::new(CacheOptions::default());
        let with = crate::keyring::Credential::new("u", "p", "test").id();
        let a = cache
            .get_or_probe(key("r.example/app:1", vec![with]), || async {
                report("r.example/app:1", Verdict::Pullable)
            })
            .await;
        let b = cache
            .get_or_probe(key("r.example/app:1", vec![]), || async {
                report("r.example/app:1", Verdict::Unauthorized)
            })
            .await;
        assert_eq!((a.report.verdict, a.hit), (Verdict::Pullable, false));
        assert_eq!((b.report.verdict, b.hit), (Verdict::Unauthorized, false));
    }

    #[tokio::test]
    async fn an_abandoned_probe_still_fills_the_cache() {
        let cache = VerdictCache::new(CacheOptions::default());
        let k = key("r.example/slow:1", vec![]);
        let slow = cache.get_or_probe(k.clone(), || async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            report("r.example/slow:1", Verdict::Pullable)
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(1), slow)
                .await
                .is_err()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = cache
            .get_or_probe(k, || async { report("r.example/slow:1", Verdict::Blocked) })
            .await;
        assert_eq!((again.report.verdict, again.hit), (Verdict::Pullable, true));
    }

    #[tokio::test]
    async fn unavailable_with_zero_lifetime_is_not_kept() {
        let cache = VerdictCache::new(CacheOptions {
            unavailable_ttl: Duration::ZERO,
            ..CacheOptions::default()
        });
        let k = key("r.example/app:1", vec![]);
        let first = cache
            .get_or_probe(k.clone(), || async {
                report("r.example/app:1", Verdict::Unavailable)
            })
            .await;
        assert!(!first.hit);
        let second = cache
            .get_or_probe(k, || async { report("r.example/app:1", Verdict::Pullable) })
            .await;
        assert_eq!(
            (second.report.verdict, second.hit),
            (Verdict::Pullable, false)
        );
    }
}
