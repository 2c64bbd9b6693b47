//! The registry client every probe shares: the transport (connection pool, slots,
//! back-offs), the caches of known challenges and tokens, and the per-host turns of probes.
//! Each image gets a [`Session`] of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use url::Url;

use super::Credential;
use super::challenge::Challenge;
use super::options::{ClientError, ClientOptions, HostTls};
use super::session::Session;
use super::slots::host_of;
use super::token::{self, TokenCache};
use super::transport::{RequestObserver, Transport};
use super::warm::Warming;
use crate::oci::reference::ImageRef;
use reqwest::header::HeaderMap;

/// Challenges kept, by bytes: a few hundred bytes each for real registries.
const CHALLENGE_CACHE_BYTES: u64 = 2 * 1024 * 1024;

/// A shared registry client: connection pool, token cache and known challenges.
#[derive(Clone)]
pub struct RegistryClient {
    shared: Arc<Shared>,
}

/// What every session of a client uses.
pub(super) struct Shared {
    pub(super) transport: Transport,
    pub(super) tokens: TokenCache,
    pub(super) challenges: moka::sync::Cache<String, Challenge>,
    /// One semaphore per registry host, bounding concurrent probes.
    hosts: moka::sync::Cache<String, Arc<Semaphore>>,
}

impl RegistryClient {
    pub fn new(options: ClientOptions) -> Result<Self, ClientError> {
        Self::build(options, None)
    }

    /// A client that reports every request to `observer`.
    pub fn with_observer(
        options: ClientOptions,
        observer: RequestObserver,
    ) -> Result<Self, ClientError> {
        Self::build(options, Some(observer))
    }

    fn build(
        options: ClientOptions,
        observer: Option<RequestObserver>,
    ) -> Result<Self, ClientError> {
        Ok(RegistryClient {
            shared: Arc::new(Shared {
                transport: Transport::new(options, observer)?,
                tokens: TokenCache::new(token::CACHE_BYTES),
                challenges: moka::sync::Cache::builder()
                    .max_capacity(CHALLENGE_CACHE_BYTES)
                    .weigher(|origin: &String, c: &Challenge| {
                        u32::try_from(origin.len() + c.weight()).unwrap_or(u32::MAX)
                    })
                    .time_to_live(Duration::from_secs(3600))
                    .build(),
                hosts: moka::sync::Cache::builder()
                    .max_capacity(10_000)
                    .time_to_idle(Duration::from_secs(600))
                    .build(),
            }),
        })
    }

    /// Waits for a turn to probe `image`'s registry: at most `probes_per_host` probes run at
    /// once against one host (its ports counted together), so one slow registry cannot take
    /// every connection and task.
    pub async fn host_turn(&self, image: &ImageRef) -> OwnedSemaphorePermit {
        let limit = self.shared.transport.options().probes_per_host.max(1);
        let host = host_of(&registry_base(image));
        let semaphore = self
            .shared
            .hosts
            .get_with(host, || Arc::new(Semaphore::new(limit)));
        semaphore
            .acquire_owned()
            .await
            .expect("per-host semaphores are never closed")
    }

    /// A session for one image and one credential (or none), ending at `deadline`.
    pub fn session<'a>(
        &'a self,
        image: &ImageRef,
        credential: Option<&'a Credential>,
        deadline: Instant,
    ) -> Session<'a> {
        self.open(
            SessionTarget {
                base: registry_base(image),
                prefix: "v2/".to_owned(),
                query: None,
                headers: HeaderMap::new(),
                tls: HostTls::default(),
                repository: image.repository().to_owned(),
            },
            0,
            credential,
            deadline,
        )
    }

    /// A session with a host the nodes' configuration names for an image (a mirror, or the
    /// registry with settings of its own): its scheme, path, query, headers and TLS. Fails
    /// only when the host's TLS files cannot be read.
    pub fn session_at<'a>(
        &'a self,
        target: SessionTarget,
        credential: Option<&'a Credential>,
        deadline: Instant,
    ) -> Result<Session<'a>, ClientError> {
        let profile = self.shared.transport.profile(&target.tls)?;
        Ok(self.open(target, profile, credential, deadline))
    }

    fn open<'a>(
        &'a self,
        target: SessionTarget,
        profile: usize,
        credential: Option<&'a Credential>,
        deadline: Instant,
    ) -> Session<'a> {
        Session {
            shared: &self.shared,
            base: target.base,
            prefix: target.prefix,
            query: target.query,
            headers: target.headers,
            profile,
            repository: target.repository,
            credential: credential.filter(|c| !c.is_anonymous()),
            deadline,
            requests: AtomicU32::new(0),
            manifest_gets: AtomicU32::new(0),
            manifest_heads: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            warming: Warming::default(),
        }
    }
}

/// Where a session sends its requests.
#[derive(Clone, Debug)]
pub struct SessionTarget {
    /// `scheme://host[:port]/`.
    pub base: Url,
    /// Before the repository in request paths: `v2/`, an override (`proxy/v2/`), or empty.
    pub prefix: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub tls: HostTls,
    pub repository: String,
}

/// `https://host[:port]/` of `image`'s registry.
fn registry_base(image: &ImageRef) -> Url {
    Url::parse(&format!("https://{}/", image.api_host()))
        .expect("a validated registry host forms a URL")
}
