//! The pull budget of metered registries, per registry and credential (anonymous pulls count
//! per address, so all of a replica's anonymous probes share one). Each manifest answer's
//! `ratelimit-*` headers say what is left; every counted GET sent since is taken off that, so
//! probes running at once cannot overshoot it. When what is left falls to the reserve, no
//! counted GET goes out until the window has passed or a later answer (a `HEAD`, which costs
//! nothing) shows more: the rest of the budget is the nodes', whose real pulls would fail
//! with 429 `toomanyrequests` without it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::registry::{CredentialId, RateLimit};

/// The default share of each window's pulls kept for the nodes, in percent.
pub const DEFAULT_RESERVE_PERCENT: u8 = 25;

/// What is known of one registry's budget for one credential.
#[derive(Clone, Copy, Debug)]
struct Budget {
    limit: u32,
    /// What the last answer said was left.
    remaining: u32,
    /// Counted GETs sent since that answer.
    spent: u32,
    /// When the window of that answer ends.
    until: Instant,
    window: Duration,
}

impl Budget {
    fn left(&self) -> u32 {
        self.remaining.saturating_sub(self.spent)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    registry: String,
    credential: CredentialId,
}

/// Why a counted GET was not sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Kept {
    pub(crate) registry: String,
    pub(crate) anonymous: bool,
    pub(crate) left: u32,
    pub(crate) limit: u32,
    pub(crate) reserve: u32,
    /// Until the window ends.
    pub(crate) wait: Duration,
}

impl std::fmt::Display for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whose = if self.anonymous {
            "this address's anonymous pulls"
        } else {
            "this credential's pulls"
        };
        write!(
            f,
            "not fetched: {whose} on {} are kept for the nodes ({} of {} left in the window, \
             pullgate keeps {}; it fetches again in {} or when the registry reports more)",
            self.registry,
            self.left,
            self.limit,
            self.reserve,
            humantime::format_duration(Duration::from_secs(self.wait.as_secs().max(1)))
        )
    }
}

/// The budgets of every metered registry and credential seen; a cheap handle shared by every
/// probe of a process.
#[derive(Clone)]
pub struct PullBudgets(Arc<Inner>);

struct Inner {
    reserve_percent: u8,
    budgets: moka::sync::Cache<Key, Arc<Mutex<Budget>>>,
}

impl std::fmt::Debug for PullBudgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullBudgets")
            .field("reserve_percent", &self.0.reserve_percent)
            .finish_non_exhaustive()
    }
}

impl Default for PullBudgets {
    fn default() -> Self {
        PullBudgets::new(DEFAULT_RESERVE_PERCENT)
    }
}

impl PullBudgets {
    /// Budgets that keep `reserve_percent` of each window's pulls (at most 100) for the nodes.
    pub fn new(reserve_percent: u8) -> Self {
        PullBudgets(Arc::new(Inner {
            reserve_percent: reserve_percent.min(100),
            budgets: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_idle(Duration::from_secs(24 * 3600))
                .build(),
        }))
    }

    fn reserve(&self, limit: u32) -> u32 {
        (u64::from(limit) * u64::from(self.0.reserve_percent))
            .div_ceil(100)
            .try_into()
            .unwrap_or(u32::MAX)
    }

    fn key(registry: &str, credential: CredentialId) -> Key {
        Key {
            registry: registry.to_owned(),
            credential,
        }
    }

    /// Notes what a manifest answer said is left.
    pub(crate) fn observe(&self, registry: &str, credential: CredentialId, stated: RateLimit) {
        self.set(registry, credential, stated, Instant::now());
    }

    fn set(&self, registry: &str, credential: CredentialId, stated: RateLimit, now: Instant) {
        let budget = Budget {
            limit: stated.limit,
            remaining: stated.remaining,
            spent: 0,
            until: now + stated.window,
            window: stated.window,
        };
        let key = Self::key(registry, credential);
        match self.0.budgets.get(&key) {
            Some(held) => *held.lock().unwrap_or_else(PoisonError::into_inner) = budget,
            None => self.0.budgets.insert(key, Arc::new(Mutex::new(budget))),
        }
    }

    /// Notes a 429 `toomanyrequests`: nothing is left until the window (the answer's own, when
    /// it states one) has passed.
    pub(crate) fn exhausted(
        &self,
        registry: &str,
        credential: CredentialId,
        stated: Option<RateLimit>,
        window: Duration,
    ) {
        let stated = RateLimit {
            limit: stated.map_or(0, |s| s.limit),
            remaining: 0,
            window: stated.map_or(window, |s| s.window),
        };
        self.observe(registry, credential, stated);
    }

    /// Takes one counted GET from the budget, or says why the nodes need it more. Nothing
    /// known, nothing kept: a registry that sends no `ratelimit-*` headers is not limited.
    pub(crate) fn spend(&self, registry: &str, credential: CredentialId) -> Result<(), Kept> {
        self.spend_at(registry, credential, Instant::now())
    }

    fn spend_at(&self, registry: &str, credential: CredentialId, now: Instant) -> Result<(), Kept> {
        let Some(held) = self.0.budgets.get(&Self::key(registry, credential)) else {
            return Ok(());
        };
        let mut budget = held.lock().unwrap_or_else(PoisonError::into_inner);
        if now >= budget.until {
            // A new window: assume it is whole until an answer says otherwise.
            budget.remaining = budget.limit;
            budget.spent = 0;
            budget.until = now + budget.window;
        }
        let reserve = self.reserve(budget.limit);
        if budget.left() <= reserve {
            return Err(Kept {
                registry: registry.to_owned(),
                anonymous: credential == CredentialId::ANONYMOUS,
                left: budget.left(),
                limit: budget.limit,
                reserve,
                wait: budget.until.saturating_duration_since(now),
            });
        }
        budget.spent += 1;
        Ok(())
    }

    /// Per registry, the least left over its credentials and that budget's limit, for the
    /// metrics.
    pub fn remaining(&self) -> Vec<(String, u32, u32)> {
        let now = Instant::now();
        let mut least: Vec<(String, u32, u32)> = Vec::new();
        for (key, held) in &self.0.budgets {
            let b = *held.lock().unwrap_or_else(PoisonError::into_inner);
            let left = if now >= b.until { b.limit } else { b.left() };
            match least.iter_mut().find(|(r, _, _)| *r == key.registry) {
                Some(entry) if entry.1 > left => *entry = (key.registry.clone(), left, b.limit),
                Some(_) => {}
                None => least.push((key.registry.clone(), left, b.limit)),
            }
        }
        least.sort();
        least
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Credential;

    fn stated(limit: u32, remaining: u32, window: u64) -> RateLimit {
        RateLimit {
            limit,
            remaining,
            window: Duration::from_secs(window),
        }
    }

    const HUB: &str = "docker.io";
    const ANON: CredentialId = CredentialId::ANONYMOUS;

    #[test]
    fn nothing_known_nothing_kept() {
        let budgets = PullBudgets::default();
        for _ in 0..1000 {
            budgets.spend(HUB, ANON).unwrap();
        }
    }

    #[test]
    fn stops_at_the_reserve_counting_gets_sent_since_the_answer() {
        let budgets = PullBudgets::new(25);
        budgets.observe(HUB, ANON, stated(10, 6, 3600));
        // 25 % of 10, rounded up, is 3: 6 → 5 → 4 → 3 sends three, the fourth is kept.
        for _ in 0..3 {
            budgets.spend(HUB, ANON).unwrap();
        }
        let kept = budgets.spend(HUB, ANON).unwrap_err();
        assert_eq!((kept.left, kept.limit, kept.reserve), (3, 10, 3));
        assert!(kept.anonymous);
        let text = kept.to_string();
        assert!(
            text.contains("kept for the nodes") && text.contains("3 of 10 left"),
            "{text}"
        );
        // A later answer (a HEAD, free) that shows more opens it again.
        budgets.observe(HUB, ANON, stated(10, 8, 3600));
        budgets.spend(HUB, ANON).unwrap();
    }

    #[test]
    fn per_registry_and_credential() {
        let budgets = PullBudgets::new(25);
        let alice = Credential::new("alice", "pw", "test").id();
        budgets.observe(HUB, ANON, stated(10, 0, 3600));
        assert!(budgets.spend(HUB, ANON).is_err());
        budgets.spend(HUB, alice).unwrap();
        budgets.spend("quay.io", ANON).unwrap();
        let kept = {
            budgets.observe(HUB, alice, stated(100, 25, 3600));
            budgets.spend(HUB, alice).unwrap_err()
        };
        assert!(!kept.anonymous);
        assert!(kept.to_string().contains("this credential's pulls"));
    }

    #[test]
    fn a_new_window_opens_it_again() {
        let budgets = PullBudgets::new(25);
        let t0 = Instant::now();
        budgets.set(HUB, ANON, stated(10, 1, 60), t0);
        let kept = budgets.spend_at(HUB, ANON, t0).unwrap_err();
        assert_eq!(kept.wait, Duration::from_secs(60));
        assert!(
            budgets
                .spend_at(HUB, ANON, t0 + Duration::from_secs(59))
                .is_err()
        );
        budgets
            .spend_at(HUB, ANON, t0 + Duration::from_secs(60))
            .unwrap();
    }

    #[test]
    fn too_many_requests_keeps_everything_for_the_window() {
        let budgets = PullBudgets::new(0);
        budgets.exhausted(HUB, ANON, None, Duration::from_secs(3600));
        let kept = budgets.spend(HUB, ANON).unwrap_err();
        assert_eq!((kept.left, kept.limit), (0, 0));
        budgets.exhausted(
            HUB,
            ANON,
            Some(stated(10, 4, 60)),
            Duration::from_secs(3600),
        );
        let kept = budgets.spend(HUB, ANON).unwrap_err();
        assert_eq!((kept.left, kept.limit), (0, 10));
        assert!(kept.wait <= Duration::from_secs(60));
    }

    #[test]
    fn reserve_bounds() {
        let none = PullBudgets::new(0);
        none.observe(HUB, ANON, stated(10, 1, 60));
        none.spend(HUB, ANON).unwrap();
        assert!(
            none.spend(HUB, ANON).is_err(),
            "the last pull is never taken twice"
        );
        let all = PullBudgets::new(200);
        all.observe(HUB, ANON, stated(10, 10, 60));
        assert!(
            all.spend(HUB, ANON).is_err(),
            "a reserve of 100 % keeps every pull"
        );
    }

    #[test]
    fn remaining_is_the_least_per_registry() {
        let budgets = PullBudgets::new(25);
        let alice = Credential::new("alice", "pw", "test").id();
        budgets.observe(HUB, ANON, stated(10, 7, 3600));
        budgets.observe(HUB, alice, stated(100, 50, 3600));
        budgets.observe("quay.io", ANON, stated(50, 49, 3600));
        budgets.spend(HUB, ANON).unwrap();
        budgets.0.budgets.run_pending_tasks();
        assert_eq!(
            budgets.remaining(),
            vec![("docker.io".into(), 6, 10), ("quay.io".into(), 49, 50)]
        );
    }
}
