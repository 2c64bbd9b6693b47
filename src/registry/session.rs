//! The top layer: one image's registry, one credential, one deadline. It asks for what the
//! probe needs in OCI terms (the manifest, one byte of a blob), follows redirects itself (at
//! most [`MAX_REDIRECTS`], never from HTTPS to HTTP), sends the credential only to the
//! registry's own origin, and counts every request it makes.

use std::sync::atomic::{AtomicU32, Ordering};
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
use crate::oci::digest::Digest;
use crate::oci::manifest;

/// One image, one credential, one deadline. Counts every HTTP request it makes.
pub struct Session<'a> {
    pub(super) shared: &'a Shared,
    pub(super) base: Url,
    pub(super) repository: String,
    pub(super) credential: Option<&'a Credential>,
    pub(super) deadline: Instant,
    pub(super) requests: AtomicU32,
    pub(super) manifest_gets: AtomicU32,
    pub(super) manifest_heads: AtomicU32,
}

impl Session<'_> {
    /// HTTP requests made so far (token requests and redirect hops included).
    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::Relaxed)
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
        let path = format!("v2/{}/manifests/{reference}", self.repository);
        self.manifest_gets.fetch_add(1, Ordering::Relaxed);
        self.send(&Method::GET, &path, &headers).await
    }

    /// HEADs the manifest `reference` names: its digest (`Docker-Content-Digest`), media type
    /// and status without its body. Docker Hub does not count a HEAD as a pull.
    pub async fn manifest_head(&self, reference: &str) -> Result<Reply<'_>, FetchError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(manifest::ACCEPT));
        let path = format!("v2/{}/manifests/{reference}", self.repository);
        self.manifest_heads.fetch_add(1, Ordering::Relaxed);
        self.send(&Method::HEAD, &path, &headers).await
    }

    /// GETs the first byte of the blob `digest` (`Range: bytes=0-0`).
    pub async fn blob_range(&self, digest: &Digest) -> Result<Reply<'_>, FetchError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=0-0"));
        let path = format!("v2/{}/blobs/{digest}", self.repository);
        self.send(&Method::GET, &path, &headers).await
    }

    fn url(&self, path: &str) -> Url {
        self.base
            .join(path)
            .expect("registry paths are relative URL paths")
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
            },
        };
        let registry = origin(&self.base);
        let mut url = self.url(path);
        for _ in 0..=MAX_REDIRECTS {
            let resp = auth
                .send(method, &url, headers, origin(&url) == registry)
                .await?;
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
