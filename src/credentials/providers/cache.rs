//! One provider's answers, kept as the kubelet's `pluginProvider` keeps them
//! (`getCachedCredentials`, `provide`): under the image, its registry host or `global`, as the
//! plugin's `cacheKeyType` says, until the plugin's `cacheDuration` (or the provider's
//! `defaultCacheDuration`) has passed; looked up image first, then registry, then global.
//!
//! Runs in flight are merged per image, as the kubelet's `singleflight` group merges them: the
//! key a run will be stored under is known only from its answer, so concurrent asks for two
//! images of one registry each run the plugin once, as on the node.
//!
//! Unlike the kubelet's unbounded store, entries are bounded in number and bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::{BoxFuture, Shared};
use moka::Expiry;
use moka::sync::Cache;
use tokio::time::Instant;

use super::account::{Scope, scoped};
use super::exec::CacheKeyType;
use crate::credentials::DockerConfig;

/// Bytes kept per provider, an estimate (keys and credentials).
const MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Entries kept per provider: each weighs at least `MAX_BYTES / MAX_ENTRIES`.
const MAX_ENTRIES: u64 = 16 * 1024;
/// moka refuses expiries too far away; past a year, nothing changes in practice.
const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// The kubelet's `globalCacheKey`.
const GLOBAL_KEY: &str = "global";

/// What a run ends with: the answer, or why there is none (shared by every merged ask).
pub(super) type Outcome = Result<Arc<DockerConfig>, Arc<str>>;
pub(super) type SharedRun = Shared<BoxFuture<'static, Outcome>>;

pub(super) enum Found {
    Cached(Arc<DockerConfig>),
    Running(SharedRun),
}

struct Entry {
    config: Arc<DockerConfig>,
    /// On tokio's clock, so tests can move it; the kubelet's `IsExpired` is `now.After(expiresAt)`.
    expires_at: Instant,
    ttl: Duration,
}

struct EntryExpiry;

impl Expiry<String, Arc<Entry>> for EntryExpiry {
    // Eviction only frees memory; `get` checks `expires_at` itself.
    fn expire_after_create(
        &self,
        _key: &String,
        entry: &Arc<Entry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(entry.ttl.min(MAX_TTL))
    }
}

pub(super) struct AuthCache {
    entries: Cache<String, Arc<Entry>>,
    /// Locked around both the lookup and the start of a run, and around storing an answer and
    /// ending its run, so no ask sees neither.
    in_flight: Mutex<HashMap<String, SharedRun>>,
}

impl AuthCache {
    pub(super) fn new() -> Self {
        AuthCache {
            entries: Cache::builder()
                .max_capacity(MAX_BYTES)
                .weigher(|key: &String, entry: &Arc<Entry>| {
                    let bytes =
                        key.len() as u64 + entry.config.weight() as u64 + MAX_BYTES / MAX_ENTRIES;
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .expire_after(EntryExpiry)
                .build(),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// The kept answer for `image` within `scope`, else the run in flight for it, else the run
    /// `start` makes.
    pub(super) fn find_or_start(
        &self,
        image: &str,
        scope: &Scope,
        start: impl FnOnce() -> SharedRun,
    ) -> Found {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for key in [image, registry_of(image), GLOBAL_KEY] {
            if let Some(config) = self.get(&scoped(key, &scope.cache)) {
                return Found::Cached(config);
            }
        }
        let run = in_flight
            .entry(scoped(image, &scope.flight))
            .or_insert_with(start)
            .clone();
        Found::Running(run)
    }

    /// Ends the run for `image`, first keeping its answer for `ttl` under the key its
    /// `cacheKeyType` names, when there is an answer to keep.
    pub(super) fn finish(
        &self,
        image: &str,
        scope: &Scope,
        keep: Option<(CacheKeyType, Arc<DockerConfig>, Duration)>,
    ) {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((key_type, config, ttl)) = keep {
            let now = Instant::now();
            let expires_at = now.checked_add(ttl).unwrap_or_else(|| now + MAX_TTL);
            self.entries.insert(
                scoped(cache_key(key_type, image), &scope.cache),
                Arc::new(Entry {
                    config,
                    expires_at,
                    ttl,
                }),
            );
        }
        in_flight.remove(&scoped(image, &scope.flight));
    }

    fn get(&self, key: &str) -> Option<Arc<DockerConfig>> {
        let entry = self.entries.get(key)?;
        if Instant::now() > entry.expires_at {
            self.entries.invalidate(key);
            return None;
        }
        Some(Arc::clone(&entry.config))
    }
}

/// The key an answer is kept under (`provide`'s switch on `cacheKeyType`).
fn cache_key(key_type: CacheKeyType, image: &str) -> &str {
    match key_type {
        CacheKeyType::Image => image,
        CacheKeyType::Registry => registry_of(image),
        CacheKeyType::Global => GLOBAL_KEY,
    }
}

/// kubelet's `parseRegistry`: everything before the first `/`, port included.
fn registry_of(image: &str) -> &str {
    image.split('/').next().unwrap_or(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn config(label: &str) -> Arc<DockerConfig> {
        Arc::new(DockerConfig::from_entries(label.to_owned(), Vec::new()))
    }

    fn never() -> SharedRun {
        std::future::pending::<Outcome>().boxed().shared()
    }

    fn cached(cache: &AuthCache, image: &str) -> Option<String> {
        match cache.find_or_start(image, &Scope::default(), never) {
            Found::Cached(c) => Some(c.source().to_owned()),
            Found::Running(_) => None,
        }
    }

    #[test]
    fn keys_are_the_kubelets() {
        assert_eq!(registry_of("registry.io:5000/team/app"), "registry.io:5000");
        assert_eq!(registry_of("app"), "app");
        assert_eq!(cache_key(CacheKeyType::Image, "r.io/a"), "r.io/a");
        assert_eq!(cache_key(CacheKeyType::Registry, "r.io/a"), "r.io");
        assert_eq!(cache_key(CacheKeyType::Global, "r.io/a"), "global");
    }

    #[tokio::test]
    async fn an_answer_serves_the_images_its_key_covers_until_it_expires() {
        tokio::time::pause();
        let cache = AuthCache::new();
        let hour = Duration::from_secs(3600);
        cache.finish(
            "r.io/a",
            &Scope::default(),
            Some((CacheKeyType::Registry, config("reg"), hour)),
        );
        cache.finish(
            "s.io/a",
            &Scope::default(),
            Some((CacheKeyType::Image, config("img"), hour)),
        );
        assert_eq!(cached(&cache, "r.io/b").as_deref(), Some("reg"));
        assert_eq!(cached(&cache, "s.io/a").as_deref(), Some("img"));
        assert_eq!(cached(&cache, "s.io/b"), None);
        // Not expired at the instant itself, only after it.
        tokio::time::advance(hour).await;
        assert_eq!(cached(&cache, "r.io/b").as_deref(), Some("reg"));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(cached(&cache, "r.io/b"), None);
    }

    #[tokio::test]
    async fn image_then_registry_then_global() {
        let cache = AuthCache::new();
        let hour = Duration::from_secs(3600);
        cache.finish(
            "x.io/a",
            &Scope::default(),
            Some((CacheKeyType::Global, config("global"), hour)),
        );
        cache.finish(
            "r.io/a",
            &Scope::default(),
            Some((CacheKeyType::Registry, config("reg"), hour)),
        );
        cache.finish(
            "r.io/a",
            &Scope::default(),
            Some((CacheKeyType::Image, config("img"), hour)),
        );
        assert_eq!(cached(&cache, "r.io/a").as_deref(), Some("img"));
        assert_eq!(cached(&cache, "r.io/b").as_deref(), Some("reg"));
        assert_eq!(cached(&cache, "q.io/b").as_deref(), Some("global"));
    }

    #[tokio::test]
    async fn a_run_in_flight_is_joined_and_ends_with_finish() {
        let cache = AuthCache::new();
        let mut started = 0;
        for _ in 0..3 {
            let found = cache.find_or_start("r.io/a", &Scope::default(), || {
                started += 1;
                never()
            });
            assert!(matches!(found, Found::Running(_)));
        }
        assert_eq!(started, 1);
        cache.finish("r.io/a", &Scope::default(), None);
        cache.find_or_start("r.io/a", &Scope::default(), || {
            started += 1;
            never()
        });
        assert_eq!(started, 2);
    }
}
