//! The manifest store: manifests and indexes of metered registries, kept by the digest of
//! their bytes, and the digest each tag last resolved to. Content-addressed, so an entry never
//! goes stale; bounded in bytes; local to the replica. It is what lets a re-probe of an
//! unchanged Docker Hub tag confirm the digest with a `HEAD` (not counted as a pull) and read
//! the documents from here instead of GETting them again.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::oci::digest::Digest;
use crate::oci::reference::ImageRef;

/// The default bound on the documents' bytes: a few thousand manifests and indexes (most are
/// 1–10 KiB).
pub const DEFAULT_STORE_BYTES: u64 = 16 * 1024 * 1024;

/// What an entry costs besides its bytes (moka's bookkeeping, the key, the entry).
const ENTRY_OVERHEAD: usize = 256;

/// A tag is forgotten when no probe has used it for this long; a forgotten tag only costs a
/// manifest GET on its next probe.
const TAG_IDLE: Duration = Duration::from_secs(24 * 3600);

/// A stored document: its bytes, verified against its digest when kept, and the media type
/// the registry served it with.
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    pub(crate) bytes: Bytes,
    pub(crate) content_type: Option<Arc<str>>,
}

/// Documents by digest and the last digest of each tag; a cheap handle, shared by every probe
/// of a process. With no bytes allowed, it keeps nothing.
#[derive(Clone)]
pub struct ManifestStore(Option<Arc<Inner>>);

struct Inner {
    documents: moka::sync::Cache<Digest, Stored>,
    /// `host/repository:tag` → digest.
    tags: moka::sync::Cache<String, Digest>,
}

impl std::fmt::Debug for ManifestStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestStore")
            .field("bytes", &self.weighted_size())
            .finish_non_exhaustive()
    }
}

impl Default for ManifestStore {
    fn default() -> Self {
        ManifestStore::new(DEFAULT_STORE_BYTES)
    }
}

impl ManifestStore {
    /// A store of at most `bytes` of documents, plus an eighth of that for the tags.
    pub fn new(bytes: u64) -> Self {
        if bytes == 0 {
            return ManifestStore(None);
        }
        let weigh = |n: usize| u32::try_from(n + ENTRY_OVERHEAD).unwrap_or(u32::MAX);
        ManifestStore(Some(Arc::new(Inner {
            documents: moka::sync::Cache::builder()
                .max_capacity(bytes)
                .weigher(move |_: &Digest, s: &Stored| {
                    weigh(s.bytes.len() + s.content_type.as_deref().map_or(0, str::len))
                })
                .build(),
            tags: moka::sync::Cache::builder()
                .max_capacity((bytes / 8).max(64 * 1024))
                .weigher(move |k: &String, _: &Digest| weigh(k.len() + 80))
                .time_to_idle(TAG_IDLE)
                .build(),
        })))
    }

    /// The document whose digest is `digest`, when it is stored.
    pub(crate) fn document(&self, digest: &Digest) -> Option<Stored> {
        self.0.as_ref()?.documents.get(digest)
    }

    /// Keeps `bytes` under `digest`, unless they do not hash to it: an entry can only ever
    /// hold the document its digest names, whatever a registry served.
    pub(crate) fn keep(&self, digest: &Digest, bytes: &[u8], content_type: Option<&str>) {
        let Some(inner) = &self.0 else { return };
        if !digest.matches(bytes) || inner.documents.contains_key(digest) {
            return;
        }
        inner.documents.insert(
            digest.clone(),
            Stored {
                // Exactly the bytes: the buffer they were read into may be larger.
                bytes: Bytes::copy_from_slice(bytes),
                content_type: content_type.map(Arc::from),
            },
        );
    }

    /// The digest `image`'s tag resolved to when it was last fetched; `None` for a digest
    /// reference.
    pub(crate) fn tag(&self, image: &ImageRef) -> Option<Digest> {
        let inner = self.0.as_ref()?;
        inner.tags.get(&tag_key(image)?)
    }

    /// Notes that `image`'s tag resolved to `digest`.
    pub(crate) fn remember_tag(&self, image: &ImageRef, digest: &Digest) {
        let (Some(inner), Some(key)) = (&self.0, tag_key(image)) else {
            return;
        };
        if inner.tags.get(&key).as_ref() != Some(digest) {
            inner.tags.insert(key, digest.clone());
        }
    }

    /// Bytes held by documents and tags (an estimate: moka's bookkeeping included).
    pub fn weighted_size(&self) -> u64 {
        self.settle();
        self.0
            .as_ref()
            .map_or(0, |i| i.documents.weighted_size() + i.tags.weighted_size())
    }

    /// Documents held.
    pub fn documents(&self) -> u64 {
        self.settle();
        self.0.as_ref().map_or(0, |i| i.documents.entry_count())
    }

    /// Applies pending insertions and evictions, so that the counts are current.
    fn settle(&self) {
        if let Some(i) = &self.0 {
            i.documents.run_pending_tasks();
            i.tags.run_pending_tasks();
        }
    }
}

/// `host/repository:tag` for a tag reference (the API host, so every name of Docker Hub is
/// one key); `None` for a digest reference.
fn tag_key(image: &ImageRef) -> Option<String> {
    if image.digest().is_some() {
        return None;
    }
    let tag = image.tag()?;
    Some(format!("{}/{}:{tag}", image.api_host(), image.repository()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::digest::Algorithm;

    fn doc(n: usize) -> (Digest, Vec<u8>) {
        let bytes = format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(1000)).into_bytes();
        (Digest::compute(Algorithm::Sha256, &bytes), bytes)
    }

    #[test]
    fn keeps_only_what_hashes_to_its_digest() {
        let store = ManifestStore::new(1024 * 1024);
        let (digest, bytes) = doc(1);
        let (_, other) = doc(2);
        store.keep(&digest, &other, Some("application/json"));
        assert!(
            store.document(&digest).is_none(),
            "a lying body is not kept"
        );
        store.keep(&digest, &bytes, Some("application/json"));
        let stored = store.document(&digest).unwrap();
        assert_eq!(&stored.bytes[..], &bytes[..]);
        assert_eq!(stored.content_type.as_deref(), Some("application/json"));
        // Kept once: a later different body for the digest cannot replace it either.
        store.keep(&digest, &other, None);
        assert_eq!(&store.document(&digest).unwrap().bytes[..], &bytes[..]);
    }

    #[test]
    fn bounded_in_bytes() {
        let store = ManifestStore::new(64 * 1024);
        for n in 0..1000 {
            let (digest, bytes) = doc(n);
            store.keep(&digest, &bytes, None);
        }
        store.settle();
        let size = store.0.as_ref().unwrap().documents.weighted_size();
        assert!(size <= 64 * 1024, "{size}");
        assert!(store.documents() >= 40, "{}", store.documents());
        assert!(store.documents() < 1000);
    }

    #[test]
    fn tags_are_keyed_by_api_host_repository_and_tag() {
        let store = ManifestStore::new(1024 * 1024);
        let image = |r: &str| ImageRef::parse(r).unwrap();
        let (d1, _) = doc(1);
        let (d2, _) = doc(2);
        store.remember_tag(&image("nginx:1.27"), &d1);
        assert_eq!(
            store.tag(&image("docker.io/library/nginx:1.27")),
            Some(d1.clone())
        );
        assert_eq!(
            store.tag(&image("index.docker.io/library/nginx:1.27")),
            Some(d1.clone())
        );
        assert_eq!(store.tag(&image("nginx:1.28")), None);
        assert_eq!(store.tag(&image("nginx")), None);
        assert_eq!(store.tag(&image("other.example/library/nginx:1.27")), None);
        store.remember_tag(&image("nginx:1.27"), &d2);
        assert_eq!(store.tag(&image("nginx:1.27")), Some(d2.clone()));
        // A digest reference has no tag to remember.
        let pinned = image(&format!("nginx@{d1}"));
        store.remember_tag(&pinned, &d2);
        assert_eq!(store.tag(&pinned), None);
    }

    #[test]
    fn zero_bytes_keeps_nothing() {
        let store = ManifestStore::new(0);
        let (digest, bytes) = doc(1);
        store.keep(&digest, &bytes, None);
        store.remember_tag(&ImageRef::parse("nginx:1").unwrap(), &digest);
        assert!(store.document(&digest).is_none());
        assert!(store.tag(&ImageRef::parse("nginx:1").unwrap()).is_none());
        assert_eq!(store.weighted_size(), 0);
    }
}
