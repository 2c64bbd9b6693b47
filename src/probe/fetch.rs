//! One manifest, fetched and verified: GET by tag or digest within a bound of bytes, the
//! digest checked against the one asked for and against the registry's own
//! `Docker-Content-Digest`, and parsed. On a metered registry the GET is asked of the pull
//! budget first and the verified document kept in the manifest store; or the document is read
//! from the store, for a digest the registry has just confirmed with a HEAD.

use reqwest::header::{self, HeaderMap};

use super::ledger::{Fetch, Ledger};
use super::store::Stored;
use super::verdict::{Failure, Verdict};
use crate::oci::digest::{Algorithm, Digest, DigestError};
use crate::oci::manifest::{self, Document};
use crate::oci::reference::ImageRef;
use crate::registry::{FetchError, RegistryMessage, Session};

/// A verified manifest or index.
pub(super) struct Fetched {
    pub(super) digest: Digest,
    pub(super) media_type: String,
    pub(super) document: Document,
}

/// GETs the manifest `reference` names (`image`'s own for [`Fetch::Top`], an index entry's
/// for [`Fetch::Child`]), bounded, verified against `expected` and against the registry's
/// own `Docker-Content-Digest`.
pub(super) async fn fetch_manifest(
    session: &Session<'_>,
    ledger: &Ledger<'_>,
    image: &ImageRef,
    kind: Fetch,
    reference: &str,
    expected: Option<&Digest>,
    what: &str,
) -> Result<Fetched, Failure> {
    ledger.before_get(kind, what)?;
    let mut resp = session
        .manifest(reference)
        .await
        .map_err(|e| Failure::from_fetch(what, &e))?;
    let status = resp.status();
    ledger.after_answer(Some(kind), status, resp.headers());
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
        .map_or(Algorithm::Sha256, Digest::algorithm);
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
    let fetched = parse(actual, body, content_type.as_deref(), what)?;
    ledger.keep(image, kind, &fetched.digest, body, content_type.as_deref());
    Ok(fetched)
}

/// A stored document, parsed; `None` if it no longer parses (it did when it was kept).
pub(super) fn from_store(digest: &Digest, stored: &Stored) -> Option<Fetched> {
    parse(
        digest.clone(),
        &stored.bytes,
        stored.content_type.as_deref(),
        "stored manifest",
    )
    .ok()
}

fn parse(
    digest: Digest,
    body: &[u8],
    content_type: Option<&str>,
    what: &str,
) -> Result<Fetched, Failure> {
    let document = manifest::parse(body, content_type)
        .map_err(|e| Failure::new(Verdict::Invalid, format!("{what}: {e}")))?;
    let media_type = match &document {
        Document::Image(m) => m.media_type.clone(),
        Document::Index(i) => i.media_type.clone(),
    };
    Ok(Fetched {
        digest,
        media_type,
        document,
    })
}

/// What a HEAD on the reference says of a digest the probe already knows.
pub(super) enum Confirmed {
    /// The reference still names it.
    Same,
    /// The reference names another digest now (a moved tag), or the registry did not say
    /// which: the manifest must be fetched.
    Changed,
    /// The registry refused the HEAD; a HEAD's answer has no body, so only the status speaks.
    Refused(Failure),
}

/// HEADs `image`'s manifest, which Docker Hub does not count as a pull, and compares the
/// digest it names with `known`.
pub(super) async fn confirm(
    session: &Session<'_>,
    ledger: &Ledger<'_>,
    image: &ImageRef,
    known: &Digest,
) -> Confirmed {
    let what = "manifest (HEAD)";
    let resp = match session.manifest_head(&image.manifest_reference()).await {
        Ok(resp) => resp,
        Err(e) => return Confirmed::Refused(Failure::from_fetch(what, &e)),
    };
    let status = resp.status();
    ledger.after_answer(None, status, resp.headers());
    if !status.is_success() {
        return Confirmed::Refused(Failure::refused(what, status, RegistryMessage::default()));
    }
    let named =
        header_str(resp.headers(), "docker-content-digest").and_then(|d| Digest::parse(&d).ok());
    match named {
        Some(named) if named == *known => Confirmed::Same,
        _ => Confirmed::Changed,
    }
}

pub(super) fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
