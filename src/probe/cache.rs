//! The verdict cache: one probe per image, platform set and credential set, shared by every
//! review that asks within the entry's lifetime, and one probe for a burst of identical asks.
//!
//! The key carries the fingerprints of the credentials the probe used (never the secrets), so
//! a verdict obtained with one namespace's pull secret is never handed to a pod that lacks it.
//!
//! It is sized for 100,000 entries in a few tens of MiB: moka holds a 128-bit keyed hash of
//! the key, the few words of the report a review reads and a deadline, with refusal texts
//! shared between entries that say the same thing. moka's own bookkeeping, about 310 bytes an
//! entry, is most of what is left.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::ops::compute::Op;
use ring::hmac;

use crate::fingerprint::{Fingerprint, random_hmac_key};
use crate::oci::platform::Platform;
use crate::probe::Report;
use crate::probe::verdict::Verdict;
use crate::registry::CredentialId;

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
    /// Bytes the entries may take, moka's bookkeeping and the answers' texts included (an
    /// estimate); the bound that holds whatever the texts are.
    pub max_bytes: u64,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            pullable_ttl: Duration::from_secs(10 * 60),
            digest_pullable_ttl: Duration::from_secs(60 * 60),
            refusal_ttl: Duration::from_secs(60),
            unavailable_ttl: Duration::from_secs(5),
            max_entries: 100_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

impl CacheOptions {
    /// How long `verdict` is kept; `pinned` when the reference names a digest.
    pub fn ttl(&self, verdict: Verdict, pinned: bool) -> Duration {
        match verdict {
            Verdict::Pullable if pinned => self.digest_pullable_ttl,
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
pub(crate) struct ProbeKey {
    /// The normalised reference.
    pub reference: String,
    pub platforms: Vec<Platform>,
    /// The credentials tried, in order; empty for an anonymous probe.
    pub credentials: Vec<CredentialId>,
}

/// A [`ProbeKey`] as the cache holds it: 128 bits of an HMAC-SHA256, under a key drawn at
/// random for each cache, of an unambiguous encoding of every field. Two keys share an entry
/// only by chance (about 2^-128 a pair), and nobody can search for a pair that does without
/// the process's key, so the credentials and platforms still decide who is handed a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct KeyId(u128);

impl ProbeKey {
    fn id(&self, secret: &hmac::Key) -> KeyId {
        let mut f = Fingerprint::new(secret);
        f.field(self.reference.as_bytes())
            .count(self.platforms.len());
        for p in &self.platforms {
            f.field(p.os().as_bytes())
                .field(p.architecture().as_bytes());
            match p.variant() {
                None => f.fixed(&[0]),
                Some(v) => f.fixed(&[1]).field(v.as_bytes()),
            };
        }
        f.count(self.credentials.len());
        for c in &self.credentials {
            f.fixed(c.as_bytes());
        }
        KeyId(u128::from_le_bytes(f.finish()))
    }
}

/// What a review reads from a probe's report, and all the cache keeps of it: the verdict, the
/// reason, the failed blob and the registry's message. The rest of the report (blobs,
/// platforms, counters) is for `pullgate check`, which does not go through the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The reason, then the failed blob, then the registry's message unless the reason
    /// already quotes it (the probe's reasons usually do); `None` when all three are empty,
    /// as for every pullable image.
    text: Option<Arc<str>>,
    reason_end: u16,
    blob_end: u16,
    /// Where the registry's message is in `text`; `from > to` when there is none.
    registry: (u16, u16),
    verdict: Verdict,
    /// Pullable, and the reason is a caution (see `Report::caution`).
    caution: bool,
    /// Where the host that answered starts in `text` (it runs to the end); at the end when
    /// there is none.
    host_from: u16,
}

/// Longest reason, failed blob or registry message kept. A reason quotes at most a registry
/// message (600 characters), a URL and a dozen platform names, below this; the bound keeps
/// any entry's text to a few KiB and the three parts in u16 offsets.
const MAX_TEXT: usize = 2 * 1024;

/// What an entry costs besides its text: moka's bookkeeping, the key and the entry itself,
/// as measured with 100,000 entries (BENCHMARKS.md: about 315 bytes an entry).
pub(super) const ENTRY_BYTES: u64 = 320;

impl Answer {
    pub(crate) fn new(
        verdict: Verdict,
        reason: &str,
        failed_blob: Option<&str>,
        registry_message: Option<&str>,
    ) -> Self {
        let reason = bounded(reason);
        let blob = bounded(failed_blob.unwrap_or_default());
        let mut text = String::with_capacity(reason.len() + blob.len());
        text.push_str(reason);
        text.push_str(blob);
        let registry = registry_message
            .map(bounded)
            .map(|m| match reason.rfind(m) {
                Some(at) => (at, at + m.len()),
                None => {
                    text.push_str(m);
                    (text.len() - m.len(), text.len())
                }
            });
        // Each of the three parts is at most MAX_TEXT bytes, so every offset fits.
        let offset = |n: usize| u16::try_from(n).expect("answer text is bounded");
        Answer {
            reason_end: offset(reason.len()),
            blob_end: offset(reason.len() + blob.len()),
            registry: registry.map_or((1, 0), |(from, to)| (offset(from), offset(to))),
            verdict,
            caution: false,
            host_from: offset(text.len()),
            text: (!text.is_empty()).then(|| text.into()),
        }
    }

    /// The same answer, naming the host of the nodes' configuration that served the
    /// manifest (a mirror).
    fn with_host(self, host: Option<&str>) -> Self {
        let Some(host) = host.map(bounded).filter(|h| !h.is_empty()) else {
            return self;
        };
        let mut text = self.text().to_owned();
        let from = text.len();
        text.push_str(host);
        Answer {
            host_from: u16::try_from(from).expect("answer text is bounded"),
            text: Some(text.into()),
            ..self
        }
    }

    /// The part of `report` a review reads.
    pub(crate) fn of(report: &Report) -> Self {
        if report.verdict == Verdict::Pullable
            && let Some(caution) = &report.caution
        {
            return Answer {
                caution: true,
                ..Answer::new(Verdict::Pullable, caution, None, None)
            }
            .with_host(report.host.as_deref());
        }
        let blob = report.failed_blob.as_ref().map(ToString::to_string);
        let registry = report.registry.as_ref().map(ToString::to_string);
        Answer::new(
            report.verdict,
            &report.reason,
            blob.as_deref(),
            registry.as_deref(),
        )
        .with_host(report.host.as_deref())
    }

    /// The host of the nodes' configuration that served the manifest, when it named hosts.
    pub(crate) fn host(&self) -> Option<&str> {
        let host = &self.text()[usize::from(self.host_from).min(self.text_len())..];
        (!host.is_empty()).then_some(host)
    }

    /// Pullable, but the node would trip over it after the pull: the reason says how.
    pub(crate) fn is_caution(&self) -> bool {
        self.caution
    }

    pub(crate) fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// The bytes of its text (shared texts counted in full by every holder).
    fn text_len(&self) -> usize {
        self.text.as_deref().map_or(0, str::len)
    }

    fn text(&self) -> &str {
        self.text.as_deref().unwrap_or_default()
    }

    /// One sentence a user can act on.
    pub(crate) fn reason(&self) -> &str {
        &self.text()[..usize::from(self.reason_end)]
    }

    /// The blob whose refusal decided the verdict.
    pub(crate) fn failed_blob(&self) -> Option<&str> {
        let blob = &self.text()[usize::from(self.reason_end)..usize::from(self.blob_end)];
        (!blob.is_empty()).then_some(blob)
    }

    /// The registry's code and message (`DENIED: …`), when it sent one.
    pub(crate) fn registry_message(&self) -> Option<&str> {
        let (from, to) = self.registry;
        (from <= to).then(|| &self.text()[usize::from(from)..usize::from(to)])
    }
}

/// `s`, cut to at most [`MAX_TEXT`] bytes at a character boundary.
fn bounded(s: &str) -> &str {
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `d` in whole milliseconds, saturating (a lifetime of centuries is as good as forever).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Answer texts held by live entries, each once. Refusals repeat: every missing tag of a
/// registry gets the same "HTTP 404 Not Found: MANIFEST_UNKNOWN…", every image a policy
/// blocks the same explanation; sharing one copy saves about 100 bytes an entry.
#[derive(Default)]
struct Texts {
    held: Mutex<TextSet>,
}

#[derive(Default)]
struct TextSet {
    texts: HashSet<Arc<str>>,
    /// Texts no entry uses any more (their only holder is the set) are dropped when the set
    /// grows to this size; doubling keeps the sweeps' cost constant per insertion.
    sweep_at: usize,
}

/// The smallest set swept.
const MIN_SWEEP: usize = 1024;

impl Texts {
    /// `answer`, with its text replaced by the shared copy of the same text.
    fn share(&self, mut answer: Answer) -> Answer {
        let Some(text) = answer.text.take() else {
            return answer;
        };
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(shared) = held.texts.get(&*text) {
            answer.text = Some(shared.clone());
            return answer;
        }
        if held.texts.len() >= held.sweep_at {
            held.texts.retain(|t| Arc::strong_count(t) > 1);
            held.sweep_at = (2 * held.texts.len()).max(MIN_SWEEP);
        }
        held.texts.insert(text.clone());
        answer.text = Some(text);
        answer
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .texts
            .len()
    }
}

/// A cached (or freshly probed) answer.
#[derive(Clone, Debug)]
pub(crate) struct Cached {
    pub answer: Answer,
    /// Answered from the cache, or by joining a probe another review started.
    pub hit: bool,
}

/// An entry: the answer and the moment it stops being trusted.
///
/// The deadline lives in the entry rather than in moka's per-entry expiry: moka's timer wheel
/// costs about 64 bytes an entry (a sixth of all it keeps), and a stale entry is as good as
/// gone once lookups ignore it; capacity eviction still bounds what stale entries hold.
#[derive(Clone)]
struct Entry {
    answer: Answer,
    /// Milliseconds since the cache's epoch.
    expires: u64,
}

/// Verdicts by [`ProbeKey`], with per-verdict lifetimes and merged concurrent probes.
#[derive(Clone)]
pub(crate) struct VerdictCache {
    cache: Cache<KeyId, Entry>,
    options: Arc<CacheOptions>,
    /// When the cache was made; deadlines count from here.
    epoch: Instant,
    /// The key of the keyed hash that names entries; never leaves the process.
    secret: Arc<hmac::Key>,
    texts: Arc<Texts>,
}

impl VerdictCache {
    pub(crate) fn new(options: CacheOptions) -> Self {
        // Each entry weighs at least the bytes budget divided by the entry cap, so that the one
        // weighted capacity bounds both; an entry with a long text weighs its text too.
        let floor = (options.max_bytes / options.max_entries.max(1)).max(ENTRY_BYTES);
        VerdictCache {
            cache: Cache::builder()
                .max_capacity(options.max_bytes)
                .weigher(move |_: &KeyId, entry: &Entry| {
                    let weight = (ENTRY_BYTES + entry.answer.text_len() as u64).max(floor);
                    u32::try_from(weight).unwrap_or(u32::MAX)
                })
                .build(),
            options: Arc::new(options),
            epoch: Instant::now(),
            secret: Arc::new(random_hmac_key()),
            texts: Arc::default(),
        }
    }

    fn now(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    /// Entries held, expired ones not yet swept included.
    pub(crate) fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// The entries' weight: an estimate of the bytes they hold.
    pub(crate) fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Removes every expired entry, so what they held is freed rather than only hidden from
    /// lookups; returns how many went.
    pub(crate) async fn sweep_expired(&self) -> usize {
        let now = self.now();
        let stale: Vec<KeyId> = self
            .cache
            .iter()
            .filter(|(_, entry)| entry.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &stale {
            // Only if still stale: a probe may have put a fresh answer there meanwhile.
            self.cache
                .entry_by_ref(id)
                .and_compute_with(|entry| async move {
                    match entry {
                        Some(entry) if entry.value().expires <= now => Op::Remove,
                        _ => Op::Nop,
                    }
                })
                .await;
        }
        self.cache.run_pending_tasks().await;
        stale.len()
    }

    /// How often [`VerdictCache::sweep_expired_until`] sweeps: half the shortest lifetime,
    /// between one second and a minute.
    fn sweep_interval(&self) -> Duration {
        let o = &self.options;
        [
            o.pullable_ttl,
            o.digest_pullable_ttl,
            o.refusal_ttl,
            o.unavailable_ttl,
        ]
        .into_iter()
        .filter(|ttl| !ttl.is_zero())
        .min()
        .map_or(Duration::from_secs(60), |ttl| ttl / 2)
        .clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// Sweeps expired entries regularly until `stop` resolves.
    pub(crate) async fn sweep_expired_until(self, stop: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.sweep_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => {
                    let swept = self.sweep_expired().await;
                    if swept > 0 {
                        tracing::debug!(swept, "expired verdicts swept");
                    }
                }
            }
        }
    }

    /// The cached answer for `key`, or the answer of the report of `probe`, run once however
    /// many reviews ask at the same time.
    ///
    /// The probe runs in its own task: a review that stops waiting at its deadline does not
    /// cancel it, so the answer still lands in the cache for the next review.
    pub(crate) async fn get_or_probe<P, F>(&self, key: ProbeKey, probe: P) -> Cached
    where
        P: FnOnce() -> F,
        F: Future<Output = Report> + Send + 'static,
    {
        let id = key.id(&self.secret);
        if let Some(entry) = self.cache.get(&id).await
            && entry.expires > self.now()
        {
            return Cached {
                answer: entry.answer,
                hit: true,
            };
        }
        let this = self.clone();
        let probe = probe();
        let task = tokio::spawn(async move {
            let asked = this.now();
            let entry = this
                .cache
                .entry(id)
                .or_insert_with_if(
                    async {
                        let report = probe.await;
                        let pinned = report.reference.contains('@');
                        let ttl = this.options.ttl(report.verdict, pinned);
                        Entry {
                            answer: this.texts.share(Answer::of(&report)),
                            expires: this.now().saturating_add(millis(ttl)),
                        }
                    },
                    // A stale entry is replaced, with concurrent asks still merged into one
                    // probe. An entry that expired while this ask waited for it (zero
                    // lifetimes) is still the answer of the probe this ask joined.
                    |stale| stale.expires <= asked,
                )
                .await;
            let fresh = entry.is_fresh();
            (entry.into_value().answer, fresh)
        });
        match task.await {
            Ok((answer, fresh)) => Cached {
                answer,
                hit: !fresh,
            },
            // The probe never panics; if it ever did, this review must still get an answer.
            Err(e) => Cached {
                answer: Answer::of(&crate::probe::internal_error(&e.to_string())),
                hit: false,
            },
        }
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

    /// Asks `cache` for `k` with a probe that reports `verdict` at once: the verdict answered,
    /// and whether it came from the cache.
    async fn ask(cache: &VerdictCache, k: &ProbeKey, verdict: Verdict) -> (Verdict, bool) {
        let reference = k.reference.clone();
        let cached = cache
            .get_or_probe(
                k.clone(),
                move || async move { report(&reference, verdict) },
            )
            .await;
        (cached.answer.verdict(), cached.hit)
    }

    /// Asks `cache` for `k` `n` times at once, with probes that take 50 ms to report
    /// `verdict`: how many probes ran, and the answers.
    async fn burst(
        cache: &VerdictCache,
        k: &ProbeKey,
        n: usize,
        verdict: Verdict,
    ) -> (u32, Vec<Cached>) {
        let probes = Arc::new(AtomicU32::new(0));
        let asks = (0..n).map(|_| {
            let (probes, reference) = (probes.clone(), k.reference.clone());
            cache.get_or_probe(k.clone(), move || async move {
                probes.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                report(&reference, verdict)
            })
        });
        let answers = futures_util::future::join_all(asks).await;
        (probes.load(Ordering::SeqCst), answers)
    }

    #[test]
    fn lifetimes_follow_the_verdict() {
        let o = CacheOptions::default();
        assert_eq!(o.ttl(Verdict::Pullable, false), o.pullable_ttl);
        assert_eq!(o.ttl(Verdict::Pullable, true), o.digest_pullable_ttl);
        assert!(o.digest_pullable_ttl > o.pullable_ttl);
        for v in [
            Verdict::Blocked,
            Verdict::NotFound,
            Verdict::Unauthorized,
            Verdict::Invalid,
        ] {
            assert_eq!(o.ttl(v, true), o.refusal_ttl);
            assert_eq!(o.ttl(v, false), o.refusal_ttl);
        }
        assert_eq!(o.ttl(Verdict::Unavailable, false), o.unavailable_ttl);
        assert!(o.refusal_ttl < o.pullable_ttl && o.unavailable_ttl < o.refusal_ttl);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_identical_asks_probes_once() {
        let cache = VerdictCache::new(CacheOptions::default());
        let k = key("r.example/app:1", vec![]);
        let (probes, answers) = burst(&cache, &k, 1000, Verdict::Pullable).await;
        assert_eq!(probes, 1);
        assert_eq!(answers.iter().filter(|a| !a.hit).count(), 1);
    }

    #[tokio::test]
    async fn credentials_are_part_of_the_key() {
        let cache = VerdictCache::new(CacheOptions::default());
        let with = crate::registry::Credential::new("u", "p", "test").id();
        let a = ask(
            &cache,
            &key("r.example/app:1", vec![with]),
            Verdict::Pullable,
        )
        .await;
        let b = ask(
            &cache,
            &key("r.example/app:1", vec![]),
            Verdict::Unauthorized,
        )
        .await;
        assert_eq!(a, (Verdict::Pullable, false));
        assert_eq!(b, (Verdict::Unauthorized, false));
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
        let again = ask(&cache, &k, Verdict::Blocked).await;
        assert_eq!(again, (Verdict::Pullable, true));
    }

    #[tokio::test]
    async fn unavailable_with_zero_lifetime_is_not_kept() {
        let cache = VerdictCache::new(CacheOptions {
            unavailable_ttl: Duration::ZERO,
            ..CacheOptions::default()
        });
        let k = key("r.example/app:1", vec![]);
        let (_, first_hit) = ask(&cache, &k, Verdict::Unavailable).await;
        assert!(!first_hit);
        let second = ask(&cache, &k, Verdict::Pullable).await;
        assert_eq!(second, (Verdict::Pullable, false));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_answer_is_probed_again_once_for_a_burst() {
        let cache = VerdictCache::new(CacheOptions {
            refusal_ttl: Duration::from_millis(50),
            ..CacheOptions::default()
        });
        let k = key("r.example/app:1", vec![]);
        let first = ask(&cache, &k, Verdict::NotFound).await;
        assert_eq!(first, (Verdict::NotFound, false));
        let held = ask(&cache, &k, Verdict::Pullable).await;
        assert_eq!(held, (Verdict::NotFound, true));

        tokio::time::sleep(Duration::from_millis(150)).await;
        let (probes, answers) = burst(&cache, &k, 200, Verdict::Pullable).await;
        assert_eq!(probes, 1);
        assert!(
            answers
                .iter()
                .all(|a| a.answer.verdict() == Verdict::Pullable)
        );
        assert_eq!(answers.iter().filter(|a| !a.hit).count(), 1);
    }

    #[tokio::test]
    async fn a_pinned_pullable_answer_outlives_a_tag() {
        let cache = VerdictCache::new(CacheOptions {
            pullable_ttl: Duration::from_millis(50),
            digest_pullable_ttl: Duration::from_secs(3600),
            ..CacheOptions::default()
        });
        let tag = "r.example/app:1".to_owned();
        let pinned = format!("r.example/app@sha256:{}", "a".repeat(64));
        let (tag, pinned) = (key(&tag, vec![]), key(&pinned, vec![]));
        for k in [&tag, &pinned] {
            ask(&cache, k, Verdict::Pullable).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = ask(&cache, &tag, Verdict::Blocked).await;
        let p = ask(&cache, &pinned, Verdict::Blocked).await;
        assert_eq!(t, (Verdict::Blocked, false));
        assert_eq!(p, (Verdict::Pullable, true));
    }

    fn id(reference: &str, platforms: &[&str], credentials: &[CredentialId]) -> KeyId {
        ProbeKey {
            reference: reference.to_owned(),
            platforms: platforms
                .iter()
                .map(|p| Platform::parse(p).unwrap())
                .collect(),
            credentials: credentials.to_vec(),
        }
        .id(&secret())
    }

    fn secret() -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &[7; 32])
    }

    #[test]
    fn keys_tell_credentials_and_platforms_apart() {
        let a = crate::registry::Credential::new("a", "p", "test").id();
        let b = crate::registry::Credential::new("b", "p", "test").id();
        let r = "r.example/app:1";
        let amd = "linux/amd64";
        let keys = [
            id(r, &[amd], &[]),
            id(r, &[amd], &[a]),
            id(r, &[amd], &[b]),
            id(r, &[amd], &[a, b]),
            id(r, &[amd], &[b, a]),
            id(r, &[amd], &[CredentialId::ANONYMOUS]),
            id(r, &["linux/arm64"], &[]),
            id(r, &["linux/arm/v7"], &[]),
            id(r, &["linux/arm/v6"], &[]),
            id(r, &[amd, "linux/arm64"], &[]),
            id(r, &[], &[]),
            id("r.example/app:2", &[amd], &[]),
            id("r.example/app:1 ", &[amd], &[]),
        ];
        for (i, x) in keys.iter().enumerate() {
            for y in &keys[i + 1..] {
                assert_ne!(x, y);
            }
        }
        // The same key always lands on the same entry, and another secret names it apart.
        assert_eq!(id(r, &[amd], &[a, b]), id(r, &[amd], &[a, b]));
        assert_eq!(id(r, &[amd], &[]), key(r, vec![]).id(&secret()));
        let other = hmac::Key::new(hmac::HMAC_SHA256, &[8; 32]);
        assert_ne!(key(r, vec![]).id(&other), key(r, vec![]).id(&secret()));
    }

    #[test]
    fn answers_keep_what_a_review_reads() {
        let blob = format!("sha256:{}", "b".repeat(64));
        let quoted = "DENIED: pulling is forbidden";
        let reason = format!("layer sha256:bbbbbbbbbbbb: HTTP 403 Forbidden: {quoted}");
        for (reason, blob, registry) in [
            ("", None, None),
            ("the probe did not finish", None, None),
            (reason.as_str(), Some(blob.as_str()), Some(quoted)),
            (
                reason.as_str(),
                None,
                Some("UNAUTHORIZED: authentication required"),
            ),
            ("token refused", Some(blob.as_str()), Some("")),
            ("ümlaut ✓", Some(blob.as_str()), Some("ümlaut")),
        ] {
            let a = Answer::new(Verdict::Blocked, reason, blob, registry);
            assert_eq!(
                (
                    a.verdict(),
                    a.reason(),
                    a.failed_blob(),
                    a.registry_message()
                ),
                (Verdict::Blocked, reason, blob, registry)
            );
        }
        // A message the reason quotes is not stored twice; a pullable answer stores nothing.
        let a = Answer::new(Verdict::Blocked, &reason, None, Some(quoted));
        assert_eq!(a.text().len(), reason.len());
        assert!(
            Answer::new(Verdict::Pullable, "", None, None)
                .text
                .is_none()
        );
    }

    #[test]
    fn answers_of_reports() {
        let mut r = report("r.example/app:1", Verdict::Blocked);
        r.reason = "layer sha256:cccccccccccc: HTTP 412: PROJECTPOLICYVIOLATION: 3 CVEs".into();
        r.failed_blob =
            Some(crate::oci::digest::Digest::parse(&format!("sha256:{}", "c".repeat(64))).unwrap());
        r.registry = Some(crate::registry::RegistryMessage::from_body(
            br#"{"errors":[{"code":"PROJECTPOLICYVIOLATION","message":"3 CVEs"}]}"#,
        ));
        let a = Answer::of(&r);
        assert_eq!(a.verdict(), Verdict::Blocked);
        assert_eq!(a.reason(), r.reason);
        assert_eq!(
            a.failed_blob(),
            Some(format!("sha256:{}", "c".repeat(64)).as_str())
        );
        assert_eq!(a.registry_message(), Some("PROJECTPOLICYVIOLATION: 3 CVEs"));
        let plain = Answer::of(&report("r.example/app:1", Verdict::Pullable));
        assert_eq!(
            (plain.failed_blob(), plain.registry_message()),
            (None, None)
        );
        assert!(!plain.is_caution() && !a.is_caution());
        // A pullable image's caution is what a review reads of it, through the cache too.
        let mut cautioned = report("r.example/app:1", Verdict::Pullable);
        cautioned.caution = Some("built for linux/amd64 only".into());
        let c = Answer::of(&cautioned);
        assert!(c.is_caution());
        assert_eq!(c.host(), None);
        cautioned.host = Some("https://mirror.example/v2".into());
        let c = Answer::of(&cautioned);
        assert_eq!(c.host(), Some("https://mirror.example/v2"));
        assert_eq!(c.reason(), "built for linux/amd64 only");
        let mut refused = r.clone();
        refused.host = Some("https://mirror.example/v2".into());
        let a = Answer::of(&refused);
        assert_eq!(a.host(), Some("https://mirror.example/v2"));
        assert_eq!(a.registry_message(), Some("PROJECTPOLICYVIOLATION: 3 CVEs"));
        assert_eq!(a.reason(), r.reason);
        assert_eq!(
            (c.verdict(), c.reason()),
            (Verdict::Pullable, "built for linux/amd64 only")
        );
    }

    #[test]
    fn overlong_text_is_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_TEXT);
        let a = Answer::new(Verdict::Invalid, &long, None, Some(&long));
        assert!(a.reason().len() <= MAX_TEXT && long.starts_with(a.reason()));
        assert_eq!(a.registry_message(), Some(a.reason()));
    }

    #[test]
    fn equal_texts_are_held_once_and_dropped_with_their_entries() {
        let texts = Texts::default();
        let refusal =
            |n: usize| Answer::new(Verdict::NotFound, &format!("HTTP 404 #{n}"), None, None);
        let a = texts.share(refusal(1));
        let b = texts.share(refusal(1));
        assert!(Arc::ptr_eq(
            a.text.as_ref().unwrap(),
            b.text.as_ref().unwrap()
        ));
        assert_eq!(
            texts
                .share(Answer::new(Verdict::Pullable, "", None, None))
                .text,
            None
        );
        assert_eq!(texts.len(), 1);
        // Texts nobody holds any more go at the next sweep; held ones stay.
        let many: Vec<Answer> = (2..=MIN_SWEEP).map(|n| texts.share(refusal(n))).collect();
        assert_eq!(texts.len(), MIN_SWEEP);
        drop(many);
        let c = texts.share(refusal(0));
        assert_eq!(texts.len(), 2, "text 1 (held) and text 0 (new)");
        assert_eq!(texts.share(refusal(1)).text, a.text);
        drop((b, c));
    }

    #[tokio::test]
    async fn cached_refusals_share_their_text() {
        let cache = VerdictCache::new(CacheOptions::default());
        let mut answers = Vec::new();
        for n in 0..3 {
            let r = format!("r.example/gone:{n}");
            let r2 = r.clone();
            let cached = cache
                .get_or_probe(key(&r, vec![]), || async move {
                    let mut report = report(&r2, Verdict::NotFound);
                    report.reason = "manifest: HTTP 404 Not Found: MANIFEST_UNKNOWN".into();
                    report
                })
                .await;
            answers.push(cached.answer);
        }
        assert!(
            answers
                .windows(2)
                .all(|w| Arc::ptr_eq(w[0].text.as_ref().unwrap(), w[1].text.as_ref().unwrap()))
        );
        assert_eq!(cache.texts.len(), 1);
    }
}
