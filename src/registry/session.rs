//! The top layer: one image's registry, one credential, one deadline. It asks for what the
//! probe needs in OCI terms (the manifest, one byte of a blob), follows redirects itself (at
//! most [`MAX_REDIRECTS`], never from HTTPS to HTTP), sends the credential only to the
//! registry's own origin, counts every request it makes, and warms the registry's
//! connections beside them ([`Session::warmed`]).

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Instant;

use reqwest::{
    Method, StatusCode,
    header::{self, HeaderMap, HeaderValue},
};
use url::Url;

use super::Credential;
use super::auth::{Authenticator, origin};
use super::client::Shared;
use super::error::{FetchError, MAX_REDIRECTS, display_url};
use super::transport::{Exchange, Reply};
use super::warm::{Burst, Warming};
use crate::oci::digest::Digest;
use crate::oci::manifest;

/// One image, one credential, one deadline. Counts every HTTP request it makes.
pub struct Session<'a> {
    pub(super) shared: &'a Shared,
    /// `scheme://host[:port]/`.
    pub(super) base: Url,
    /// What comes before the repository in a request path: `v2/` normally, a node's
    /// `override_path` (`proxy/v2/`), or nothing.
    pub(super) prefix: String,
    /// Added to every request to the registry: `ns=<registry>` for a mirror, as containerd
    /// sends it.
    pub(super) query: Option<String>,
    /// Added to every request to the registry (a node's `header` settings).
    pub(super) headers: HeaderMap,
    /// The TLS profile of the host (see `Transport::profile`).
    pub(super) profile: usize,
    pub(super) repository: String,
    pub(super) credential: Option<&'a Credential>,
    pub(super) deadline: Instant,
    pub(super) requests: AtomicU32,
    pub(super) manifest_gets: AtomicU32,
    pub(super) manifest_heads: AtomicU32,
    /// Requests in flight now, and the most there were at once.
    pub(super) in_flight: AtomicUsize,
    pub(super) peak: AtomicUsize,
    pub(super) warming: Warming,
}

/// A request of the session in flight; counted while it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(now: &'a AtomicUsize, peak: &AtomicUsize) -> Self {
        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
        peak.fetch_max(n, Ordering::SeqCst);
        InFlight(now)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Session<'_> {
    /// HTTP requests made so far (token requests and redirect hops included), warm-ups not.
    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Warm-ups (`GET /v2/` without credentials, to open a connection ahead of need) sent
    /// so far.
    pub fn warmups(&self) -> u32 {
        self.warming.sent()
    }

    /// Runs `work`, the session's requests, with the registry's connections warmed beside it:
    /// over HTTP/1.1, the connections its later requests will need are opened while its first
    /// request is on its way (see `warm.rs`). Its first request should be sent first.
    pub async fn warmed<F: Future>(&self, work: F) -> F::Output {
        // Warm-ups go out with pullgate's own TLS settings and no extra headers: a host the
        // nodes configure otherwise is not warmed.
        if self.profile != 0 || !self.headers.is_empty() {
            return work.await;
        }
        let burst = Burst {
            transport: &self.shared.transport,
            base: &self.base,
            deadline: self.deadline,
            warming: &self.warming,
        };
        let out = burst.beside(work).await;
        self.shared
            .transport
            .origin(&self.base)
            .session_ended(self.peak.load(Ordering::SeqCst), Instant::now());
        out
    }

    /// Manifest GETs asked for so far; a GET answered after an auth challenge counts once.
    pub fn manifest_gets(&self) -> u32 {
        self.manifest_gets.load(Ordering::Relaxed)
    }

    /// Manifest HEADs asked for so far, counted like [`Session::manifest_gets`].
    pub fn manifest_heads(&self) -> u32 {
        self.manifest_heads.load(Ordering::Relaxed)
    }

    /// The registry's `host[:port]`, the repository and the credential: whose answers these
    /// are.
    pub fn scope(&self) -> (&str, &str, Option<&Credential>) {
        (self.base.authority(), &self.repository, self.credential)
    }

    /// GETs the manifest (or index) `reference` names, a tag or a digest, accepting every
    /// media type a runtime accepts.
    pub async fn manifest(&self, reference: &str) -> Result<Reply<'_>, FetchError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(manifest::ACCEPT));
        let path = format!("{}{}/manifests/{reference}", self.prefix, self.repository);
        self.manifest_gets.fetch_add(1, Ordering::Relaxed);
        self.send(&Method::GET, &path, &headers).await
    }

    /// HEADs the manifest `reference` names: its digest (`Docker-Content-Digest`), media type
    /// and status without its body. Docker Hub does not count a HEAD as a pull.
    pub async fn manifest_head(&self, reference: &str) -> Result<Reply<'_>, FetchError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(manifest::ACCEPT));
        let path = format!("{}{}/manifests/{reference}", self.prefix, self.repository);
        self.manifest_heads.fetch_add(1, Ordering::Relaxed);
        self.send(&Method::HEAD, &path, &headers).await
    }

    /// GETs the first byte of the blob `digest` (`Range: bytes=0-0`).
    pub async fn blob_range(&self, digest: &Digest) -> Result<Reply<'_>, FetchError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=0-0"));
        let path = format!("{}{}/blobs/{digest}", self.prefix, self.repository);
        self.send(&Method::GET, &path, &headers).await
    }

    /// GETs all `size` bytes of the blob `digest` as one range (`Range: bytes=0-<size-1>`),
    /// for a small blob whose content is wanted; the caller bounds what it reads.
    pub async fn blob_whole(&self, digest: &Digest, size: u64) -> Result<Reply<'_>, FetchError> {
        let mut headers = HeaderMap::new();
        let range = format!("bytes=0-{}", size.saturating_sub(1));
        headers.insert(
            header::RANGE,
            HeaderValue::from_str(&range).expect("a numeric range is a valid header"),
        );
        let path = format!("{}{}/blobs/{digest}", self.prefix, self.repository);
        self.send(&Method::GET, &path, &headers).await
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self
            .base
            .join(path)
            .expect("registry paths are relative URL paths");
        url.set_query(self.query.as_deref());
        url
    }

    /// Sends `method` to `path` on the registry, answering auth challenges and following
    /// redirects. The credential is only ever sent to the registry's own origin.
    async fn send(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Reply<'_>, FetchError> {
        let auth = Authenticator {
            transport: &self.shared.transport,
            challenges: &self.shared.challenges,
            tokens: &self.shared.tokens,
            repository: &self.repository,
            credential: self.credential,
            exchange: Exchange {
                deadline: self.deadline,
                requests: &self.requests,
                profile: self.profile,
            },
        };
        let registry = origin(&self.base);
        let first = self.warming.before_request().await;
        let started = Instant::now();
        let _in_flight = InFlight::enter(&self.in_flight, &self.peak);
        let mut url = self.url(path);
        let mut with_extra = headers.clone();
        with_extra.extend(self.headers.clone());
        for _ in 0..=MAX_REDIRECTS {
            let own = origin(&url) == registry;
            // The node's extra headers go to the registry only, like its credential.
            let sent = if own { &with_extra } else { headers };
            let resp = auth.send(method, &url, sent, own).await?;
            if first {
                self.warming.first_took(started.elapsed());
            }
            if !resp.status().is_redirection() || resp.status() == StatusCode::NOT_MODIFIED {
                return Ok(resp);
            }
            let Some(location) = resp.headers().get(header::LOCATION) else {
                return Ok(resp);
            };
            let next = location
                .to_str()
                .ok()
                .and_then(|l| url.join(l).ok())
                .ok_or_else(|| FetchError::Redirect {
                    url: display_url(&url),
                    reason: "Location is not a valid URL".to_owned(),
                })?;
            // Read to its end, the redirect's connection can carry another request.
            resp.drain().await;
            match (url.scheme(), next.scheme()) {
                ("https", "https") | ("http", "https" | "http") => {}
                (_, scheme) => {
                    return Err(FetchError::Redirect {
                        url: display_url(&url),
                        reason: format!("redirect to a {scheme} URL"),
                    });
                }
            }
            url = next;
        }
        Err(FetchError::TooManyRedirects {
            url: display_url(&self.url(path)),
        })
    }
}
