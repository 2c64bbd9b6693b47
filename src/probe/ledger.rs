//! What one probe attempt spends of a metered registry's pulls, and what it may reuse.
//! Docker Hub counts a pull for each manifest GET, an index and its first child together as
//! one; a HEAD costs nothing. On a metered registry the attempt asks the budget before each
//! counted GET, reads what every manifest answer says is left, keeps what it fetched in the
//! manifest store and notes which digest the tag resolved to. On other registries it only
//! counts nothing and stores nothing: they keep GETting, because policy engines (Harbor's
//! `PROJECTPOLICYVIOLATION`) may refuse a GET while a HEAD answers 200.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use super::budget::{Kept, PullBudgets};
use super::store::{ManifestStore, Stored};
use super::verdict::{Failure, Verdict};
use crate::oci::digest::Digest;
use crate::oci::reference::ImageRef;
use crate::registry::{CredentialId, RateLimit};

/// Which manifest a GET is for: the reference's own, or an index's child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fetch {
    Top,
    Child,
}

/// The pull economy of one attempt: one image, one credential.
pub(super) struct Ledger<'a> {
    store: &'a ManifestStore,
    budgets: &'a PullBudgets,
    metered: bool,
    /// The registry's one name (`docker.io`), the unit of the budget and the metrics.
    registry: &'a str,
    credential: CredentialId,
    /// Whether this attempt GOT the top manifest, and how many children it GOT.
    top_got: AtomicBool,
    children_got: AtomicU32,
    /// The last `ratelimit-*` statement seen.
    stated: Mutex<Option<RateLimit>>,
}

impl<'a> Ledger<'a> {
    pub(super) fn new(
        store: &'a ManifestStore,
        budgets: &'a PullBudgets,
        metered: bool,
        image: &'a ImageRef,
        credential: CredentialId,
    ) -> Self {
        Ledger {
            store,
            budgets,
            metered,
            registry: image.canonical_registry(),
            credential,
            top_got: AtomicBool::new(false),
            children_got: AtomicU32::new(0),
            stated: Mutex::new(None),
        }
    }

    /// Asks the budget before a manifest GET of `kind`. The first child after this attempt's
    /// own GET of the index is part of the same pull and is not asked for.
    pub(super) fn before_get(&self, kind: Fetch, what: &str) -> Result<(), Failure> {
        if !self.metered {
            return Ok(());
        }
        let paired = kind == Fetch::Child
            && self.top_got.load(Ordering::Relaxed)
            && self.children_got.load(Ordering::Relaxed) == 0;
        if paired {
            return Ok(());
        }
        self.budgets
            .spend(self.registry, self.credential)
            .map_err(|kept: Kept| Failure::new(Verdict::Unavailable, format!("{what}: {kept}")))
    }

    /// Reads a manifest answer (GET or HEAD) for what it says of the budget; notes a GET that
    /// served a manifest as spent.
    pub(super) fn after_answer(
        &self,
        kind: Option<Fetch>,
        status: StatusCode,
        headers: &HeaderMap,
    ) {
        if !self.metered {
            return;
        }
        let stated = RateLimit::from_headers(headers);
        if status == StatusCode::TOO_MANY_REQUESTS {
            self.budgets.exhausted(
                self.registry,
                self.credential,
                stated,
                RateLimit::DEFAULT_WINDOW,
            );
        } else if let Some(stated) = stated {
            self.budgets.observe(self.registry, self.credential, stated);
        }
        if let Some(stated) = stated {
            *self.stated.lock().unwrap_or_else(|e| e.into_inner()) = Some(stated);
        }
        if status.is_success() {
            match kind {
                Some(Fetch::Top) => self.top_got.store(true, Ordering::Relaxed),
                Some(Fetch::Child) => {
                    self.children_got.fetch_add(1, Ordering::Relaxed);
                }
                None => {}
            }
        }
    }

    /// Keeps a verified document, and the digest a tag resolved to, for later probes.
    pub(super) fn keep(
        &self,
        image: &ImageRef,
        kind: Fetch,
        digest: &Digest,
        bytes: &[u8],
        content_type: Option<&str>,
    ) {
        if !self.metered {
            return;
        }
        self.store.keep(digest, bytes, content_type);
        if kind == Fetch::Top {
            self.store.remember_tag(image, digest);
        }
    }

    /// The digest the reference names, or its tag last resolved to, on a metered registry.
    pub(super) fn known_digest(&self, image: &ImageRef) -> Option<Digest> {
        if !self.metered {
            return None;
        }
        image.digest().cloned().or_else(|| self.store.tag(image))
    }

    /// A stored document, on a metered registry.
    pub(super) fn stored(&self, digest: &Digest) -> Option<Stored> {
        if !self.metered {
            return None;
        }
        self.store.document(digest)
    }

    /// Pulls this attempt spent, as Docker Hub counts them: each child manifest GOT is one,
    /// the index GOT with the first of them together one.
    pub(super) fn pulls(&self) -> u32 {
        let top = u32::from(self.top_got.load(Ordering::Relaxed));
        self.children_got.load(Ordering::Relaxed).max(top)
    }

    /// What the registry last said is left, if it said.
    pub(super) fn stated(&self) -> Option<RateLimit> {
        *self.stated.lock().unwrap_or_else(|e| e.into_inner())
    }
}
