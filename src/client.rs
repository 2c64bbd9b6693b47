//! The HTTP layer of the probe. It answers the `WWW-Authenticate` challenge of whichever
//! request gets a 401 (never trusting a `/v2/` ping), answers a challenge it already knows up
//! front to save a round trip, follows redirects itself so that credentials never leave the
//! registry's origin, and bounds every body it reads.

use std::{
    path::Path,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicU32, Ordering, Ordering as AtomicOrdering},
    },
    time::{Duration, Instant},
};

use std::net::IpAddr;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use reqwest::{
    Response, StatusCode,
    header::{self, HeaderMap, HeaderValue},
};
use ring::hmac;
use rustls::{RootCertStore, pki_types::CertificateDer};
use rustls_pki_types::pem::PemObject;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use url::Url;

use crate::{
    challenge::{self, Challenge, ChallengeError},
    digest::Digest,
    egress::{EgressPolicy, GuardedResolver, Refused},
    keyring::{Credential, CredentialId, Fingerprint, random_hmac_key},
    outbound::{self, FdGuardLayer, OutOfDescriptors, Outbound, OutboundLimits, Slot},
    reference::ImageRef,
    token::{self, Token, TokenCache, TokenError, TokenKey},
    verdict::{RegistryMessage, Verdict},
};

/// Redirects followed for one request (blob → CDN → presigned URL is two).
pub const MAX_REDIRECTS: usize = 5;
/// Error bodies are read only for the registry's message.
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// Settings of the registry client, parsed from flags at the edge.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Extra trusted CAs (`--ca-file`), added to the system and webpki roots.
    pub extra_roots: Vec<CertificateDer<'static>>,
    pub insecure_skip_tls_verify: bool,
    /// Upper bound for one HTTP exchange, body included.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long a blob that answered its probe is trusted for the same repository and
    /// credential; zero turns the blob cache off. Blobs are content-addressed, so only a
    /// registry policy change can turn the answer, like it can for a cached verdict.
    pub blob_ttl: Duration,
    /// Blobs remembered at most.
    pub blob_capacity: u64,
    /// The SSRF guard: which addresses may be connected to.
    pub egress: EgressPolicy,
    /// Probes running at once against one registry host (all its ports together); more
    /// wait for a turn.
    pub probes_per_host: usize,
    /// Bounds on sockets and body bytes.
    pub outbound: OutboundLimits,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            extra_roots: Vec::new(),
            insecure_skip_tls_verify: false,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            blob_ttl: Duration::ZERO,
            blob_capacity: 100_000,
            egress: EgressPolicy::default(),
            probes_per_host: 32,
            outbound: OutboundLimits::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("CA file {path} holds no PEM certificate")]
    CaFileEmpty { path: String },
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot build the HTTP client: {0}")]
    Http(#[source] reqwest::Error),
}

impl ClientOptions {
    /// Reads PEM certificates from a CA bundle file.
    pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
        let shown = path.display().to_string();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| ClientError::CaFile {
                path: shown.clone(),
                reason: e.to_string(),
            })?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::CaFile {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(ClientError::CaFileEmpty { path: shown });
        }
        Ok(certs)
    }
}

/// Why a request did not produce a response worth classifying by status.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot reach {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("{url} did not answer in time")]
    Timeout { url: String },
    #[error("more than {MAX_REDIRECTS} redirects from {url}")]
    TooManyRedirects { url: String },
    #[error("refused redirect from {url}: {reason}")]
    Redirect { url: String, reason: String },
    #[error("{url} sent an unusable auth challenge: {source}")]
    Challenge {
        url: String,
        #[source]
        source: ChallengeError,
    },
    #[error("refused token realm {realm}: {reason}")]
    Realm { realm: String, reason: String },
    #[error(transparent)]
    Token(Arc<TokenError>),
    #[error("{url} sent more than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("refused to connect for {url}: {refused}")]
    Egress { url: String, refused: Refused },
    #[error(
        "{host} asked clients to back off (HTTP 429) for {seconds} more second(s); not asked again until then"
    )]
    Backoff { host: String, seconds: u64 },
    #[error("cannot connect for {url}: {source}")]
    Descriptors {
        url: String,
        #[source]
        source: OutOfDescriptors,
    },
    #[error("no connection to {url} became free in time: {reason}")]
    Busy { url: String, reason: &'static str },
}

impl FetchError {
    pub fn verdict(&self) -> Verdict {
        match self {
            FetchError::Transport { .. }
            | FetchError::Timeout { .. }
            | FetchError::TooManyRedirects { .. }
            | FetchError::Backoff { .. }
            | FetchError::Descriptors { .. }
            | FetchError::Busy { .. } => Verdict::Unavailable,
            FetchError::Egress { .. } => Verdict::Invalid,
            FetchError::Token(e) => match &**e {
                TokenError::Refused {
                    status: 401 | 403, ..
                } => Verdict::Unauthorized,
                TokenError::NoToken { .. }
                | TokenError::Malformed { .. }
                | TokenError::Egress { .. } => Verdict::Invalid,
                _ => Verdict::Unavailable,
            },
            FetchError::Redirect { .. }
            | FetchError::Challenge { .. }
            | FetchError::Realm { .. }
            | FetchError::TooLarge { .. } => Verdict::Invalid,
        }
    }

    /// The registry's (or token endpoint's) own words, when it sent any.
    pub fn registry_message(&self) -> Option<&RegistryMessage> {
        match self {
            FetchError::Token(e) => match &**e {
                TokenError::Refused { message, .. } if !message.is_empty() => Some(message),
                _ => None,
            },
            _ => None,
        }
    }
}

/// What a 401 offers to be answered with.
enum Offered {
    Challenge(Challenge),
    /// Only schemes pullgate does not speak: the 401 is the answer.
    Unsupported,
    Unusable(ChallengeError),
    /// No `WWW-Authenticate` at all.
    Nothing,
}

fn offered_challenge(resp: &Response) -> Offered {
    let values: Vec<&str> = resp
        .headers()
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() {
        return Offered::Nothing;
    }
    match challenge::select(values) {
        Ok(c) => Offered::Challenge(c),
        Err(ChallengeError::Unsupported(_)) => Offered::Unsupported,
        Err(source) => Offered::Unusable(source),
    }
}

/// A URL for messages and logs: no query string, which may carry a presigned signature.
pub fn display_url(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// scheme://host:port, the unit credentials and known challenges belong to.
fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

fn describe(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        // reqwest's own top message repeats the URL with its query; ours is redacted.
        if !s.starts_with("error sending request") && !parts.contains(&s) {
            parts.push(s);
        }
        cur = err.source();
    }
    if parts.is_empty() {
        "request failed".to_owned()
    } else {
        parts.join(": ")
    }
}

/// A shared registry client: connection pool, token cache and known challenges.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// The HTTP client and its pool; replaced by a fresh one when descriptors run short, so
    /// that the old pool's idle connections close.
    http: RwLock<reqwest::Client>,
    /// What a fresh client is built from.
    tls: rustls::ClientConfig,
    fd_guard: Option<FdGuardLayer>,
    /// When the client was last replaced.
    renewed: Mutex<Instant>,
    outbound: Outbound,
    tokens: TokenCache,
    challenges: moka::sync::Cache<String, Challenge>,
    blobs: moka::sync::Cache<BlobKey, ()>,
    /// The key of the keyed hash that names remembered blobs; never leaves the process.
    secret: hmac::Key,
    /// Hosts that answered 429, with when they may be asked again.
    backoff: moka::sync::Cache<String, Instant>,
    /// One semaphore per registry host, bounding concurrent probes.
    hosts: moka::sync::Cache<String, Arc<Semaphore>>,
    options: ClientOptions,
    observer: Option<RequestObserver>,
}

/// The longest a 429's `Retry-After` is honoured; a registry cannot switch pullgate off.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The back-off after a 429 without a usable `Retry-After`.
const DEFAULT_BACKOFF: Duration = Duration::from_secs(5);

/// Told about every registry request: the host, and the HTTP status (`None` when no answer
/// came). For metrics; it must be quick.
pub type RequestObserver = Arc<dyn Fn(&str, Option<u16>) + Send + Sync>;

/// A blob that was served: the same bytes in the same repository with the same credential,
/// as a 128-bit keyed hash of the four (see [`Fingerprint`]). Held that way, 100,000
/// remembered blobs cost moka's bookkeeping and 16 bytes each, not three more strings.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct BlobKey(u128);

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
        let tls = tls_config(&options)?;
        let fd_guard = options.outbound.fd_ceiling.map(FdGuardLayer::new);
        let http = http_client(&options, tls.clone(), fd_guard.clone())?;
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                http: RwLock::new(http),
                tls,
                fd_guard,
                renewed: Mutex::new(Instant::now()),
                outbound: Outbound::new(&options.outbound),
                tokens: TokenCache::new(token::CACHE_BYTES),
                challenges: moka::sync::Cache::builder()
                    .max_capacity(CHALLENGE_CACHE_BYTES)
                    .weigher(|origin: &String, c: &Challenge| {
                        u32::try_from(origin.len() + c.weight()).unwrap_or(u32::MAX)
                    })
                    .time_to_live(Duration::from_secs(3600))
                    .build(),
                blobs: moka::sync::Cache::builder()
                    .max_capacity(options.blob_capacity)
                    .time_to_live(options.blob_ttl.max(Duration::from_millis(1)))
                    .build(),
                secret: random_hmac_key(),
                backoff: moka::sync::Cache::builder()
                    .max_capacity(10_000)
                    .time_to_live(MAX_BACKOFF)
                    .build(),
                hosts: moka::sync::Cache::builder()
                    .max_capacity(10_000)
                    .time_to_idle(Duration::from_secs(600))
                    .build(),
                options,
                observer,
            }),
        })
    }

    /// Waits for a turn to probe `image`'s registry: at most `probes_per_host` probes run at
    /// once against one host (its ports counted together), so one slow registry cannot take
    /// every connection and task.
    pub async fn host_turn(&self, image: &ImageRef) -> OwnedSemaphorePermit {
        let limit = self.inner.options.probes_per_host.max(1);
        let host = outbound::host_of(&registry_base(image));
        let semaphore = self
            .inner
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
        let base = registry_base(image);
        Session {
            inner: &self.inner,
            base,
            repository: image.repository().to_owned(),
            credential: credential.filter(|c| !c.is_anonymous()),
            deadline,
            requests: AtomicU32::new(0),
        }
    }
}

/// `https://host[:port]/` of `image`'s registry.
fn registry_base(image: &ImageRef) -> Url {
    Url::parse(&format!("https://{}/", image.api_host()))
        .expect("a validated registry host forms a URL")
}

/// Challenges kept, by bytes: a few hundred bytes each for real registries.
const CHALLENGE_CACHE_BYTES: u64 = 2 * 1024 * 1024;

/// Idle pooled connections are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(30);
/// Idle connections kept per origin: as many as one image's blob probes use at once.
const POOL_IDLE_PER_ORIGIN: usize = 16;
/// A fresh pool is started at most this often when descriptors run short.
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// HTTP/2 flow-control windows: a manifest flows in a round trip or two, and a registry that
/// ignores `Range: bytes=0-0` cannot park more than this per stream in the process.
const H2_STREAM_WINDOW: u32 = 128 * 1024;
const H2_CONNECTION_WINDOW: u32 = 256 * 1024;

fn http_client(
    options: &ClientOptions,
    tls: rustls::ClientConfig,
    fd_guard: Option<FdGuardLayer>,
) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder();
    if options.egress.enabled {
        builder = builder.dns_resolver(Arc::new(GuardedResolver::new(Arc::new(
            options.egress.clone(),
        ))));
    }
    if let Some(guard) = fd_guard {
        builder = builder.connector_layer(guard);
    }
    builder
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(options.connect_timeout)
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_IDLE_PER_ORIGIN)
        .http2_initial_stream_window_size(H2_STREAM_WINDOW)
        .http2_initial_connection_window_size(H2_CONNECTION_WINDOW)
        .tcp_nodelay(true)
        .user_agent(concat!("pullgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(ClientError::Http)
}

impl Inner {
    /// The HTTP client in service. When the descriptor guard refused a connection, a fresh
    /// client (and pool) replaces it first, at most every few seconds: the old one is dropped
    /// when its last request ends, and its idle connections close with it.
    fn http(&self) -> reqwest::Client {
        if let Some(guard) = &self.fd_guard
            && guard.pressed.swap(false, AtomicOrdering::SeqCst)
        {
            let mut renewed = self.renewed.lock().unwrap_or_else(PoisonError::into_inner);
            if renewed.elapsed() >= RENEW_EVERY {
                match http_client(&self.options, self.tls.clone(), Some(guard.clone())) {
                    Ok(fresh) => {
                        *renewed = Instant::now();
                        tracing::warn!("file descriptors short: registry connection pool renewed");
                        *self.http.write().unwrap_or_else(PoisonError::into_inner) = fresh;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot renew the registry client"),
                }
            }
        }
        self.http
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn tls_config(options: &ClientOptions) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = if options.insecure_skip_tls_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(insecure::NoVerify(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        roots.add_parsable_certificates(options.extra_roots.iter().cloned());
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// What authorization a request carried, so a 401 can tell a stale token from a refusal.
#[derive(PartialEq)]
enum Sent {
    Nothing,
    Basic,
    CachedToken(TokenKey),
    FreshToken(TokenKey),
}

/// One image, one credential, one deadline. Counts every HTTP request it makes.
pub struct Session<'a> {
    inner: &'a Inner,
    base: Url,
    repository: String,
    credential: Option<&'a Credential>,
    deadline: Instant,
    requests: AtomicU32,
}

impl Session<'_> {
    /// HTTP requests made so far (token requests and redirect hops included).
    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    fn blob_key(&self, digest: &Digest) -> BlobKey {
        let mut f = Fingerprint::new(&self.inner.secret);
        f.field(self.base.authority().as_bytes())
            .field(self.repository.as_bytes())
            .field(digest.to_string().as_bytes());
        match self.credential {
            None => f.fixed(&[0]),
            Some(c) => f.fixed(&[1]).fixed(c.id().as_bytes()),
        };
        BlobKey(u128::from_le_bytes(f.finish()))
    }

    /// Whether this blob answered a probe recently, in this repository with this credential.
    pub fn blob_known(&self, digest: &Digest) -> bool {
        !self.inner.options.blob_ttl.is_zero()
            && self.inner.blobs.contains_key(&self.blob_key(digest))
    }

    /// Remembers a blob that answered its probe.
    pub fn remember_blob(&self, digest: &Digest) {
        if !self.inner.options.blob_ttl.is_zero() {
            self.inner.blobs.insert(self.blob_key(digest), ());
        }
    }

    /// The registry URL of `path` (relative to `https://host/`).
    pub fn url(&self, path: &str) -> Url {
        self.base
            .join(path)
            .expect("registry paths are relative URL paths")
    }

    /// GET `path` on the registry, answering auth challenges and following redirects. The
    /// credential is only ever sent to the registry's own origin.
    pub async fn get(&self, path: &str, headers: &HeaderMap) -> Result<Reply<'_>, FetchError> {
        let registry = origin(&self.base);
        let mut url = self.url(path);
        for _ in 0..=MAX_REDIRECTS {
            let credential = if origin(&url) == registry {
                self.credential
            } else {
                None
            };
            let resp = self.send_authorized(&url, headers, credential).await?;
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

    async fn send_authorized(
        &self,
        url: &Url,
        headers: &HeaderMap,
        credential: Option<&Credential>,
    ) -> Result<Reply<'_>, FetchError> {
        let origin = origin(url);
        let (auth, sent) = match self.inner.challenges.get(&origin) {
            Some(known) => self.authorize(url, &known, credential).await?,
            None => (None, Sent::Nothing),
        };
        let resp = self.send(url, headers, auth.as_ref()).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        // The 401 is let go before any other request: its connection slot may be the last
        // one to this host, which the ping or the token request would then wait for forever.
        // `kept` is `None` once it is gone; where it is the answer, it is asked for again.
        let (challenge, kept) = match offered_challenge(&resp) {
            Offered::Challenge(challenge) => (challenge, Some(resp)),
            Offered::Unsupported => return Ok(resp),
            Offered::Unusable(source) => {
                return Err(FetchError::Challenge {
                    url: display_url(url),
                    source,
                });
            }
            Offered::Nothing => {
                drop(resp);
                match self.ping_challenge(url).await? {
                    Some(challenge) => (challenge, None),
                    None => return self.send(url, headers, auth.as_ref()).await,
                }
            }
        };
        self.inner.challenges.insert(origin, challenge.clone());
        let retry = match (&sent, &challenge) {
            (Sent::Nothing, _) => true,
            (Sent::Basic, Challenge::Basic) => false,
            (Sent::CachedToken(key), Challenge::Bearer { .. }) => {
                // The registry no longer takes a token we cached: fetch a fresh one, once.
                self.inner.tokens.invalidate(key).await;
                true
            }
            (Sent::FreshToken(key), Challenge::Bearer { .. }) => {
                self.token_key(url, &challenge, credential)?.as_ref() != Some(key)
            }
            _ => true,
        };
        // Basic without credentials has nothing to answer with: the 401 is the answer.
        let answerable =
            credential.is_some() || self.token_key(url, &challenge, credential)?.is_some();
        if !retry || !answerable {
            return match kept {
                Some(resp) => Ok(resp),
                None => self.send(url, headers, auth.as_ref()).await,
            };
        }
        drop(kept);
        let (auth, _) = self.authorize(url, &challenge, credential).await?;
        self.send(url, headers, auth.as_ref()).await
    }

    /// The challenge of a 401 from the resource itself. Old GCR sent 401 without
    /// `WWW-Authenticate` on resources; only then is the `/v2/` challenge consulted.
    async fn ping_challenge(&self, url: &Url) -> Result<Option<Challenge>, FetchError> {
        let ping = url.join("/v2/").expect("absolute path joins");
        let resp = self.send(&ping, &HeaderMap::new(), None).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(None);
        }
        let values = resp
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok());
        Ok(challenge::select(values).ok())
    }

    fn token_key(
        &self,
        url: &Url,
        challenge: &Challenge,
        credential: Option<&Credential>,
    ) -> Result<Option<TokenKey>, FetchError> {
        let Challenge::Bearer {
            realm,
            service,
            scope,
            ..
        } = challenge
        else {
            return Ok(None);
        };
        let realm_url = Url::parse(realm).map_err(|e| FetchError::Realm {
            realm: realm.chars().take(200).collect(),
            reason: e.to_string(),
        })?;
        // A token for an https registry fetched over http could be read and replayed by
        // anyone on the path, and the Basic credentials with it.
        let allowed = matches!(
            (url.scheme(), realm_url.scheme()),
            (_, "https") | ("http", "http")
        );
        if !allowed {
            return Err(FetchError::Realm {
                realm: display_url(&realm_url),
                reason: format!(
                    "a {} realm for an {} registry",
                    realm_url.scheme(),
                    url.scheme()
                ),
            });
        }
        let mut scopes = vec![format!("repository:{}:pull", self.repository)];
        if let Some(s) = scope.as_ref().filter(|s| !s.is_empty() && s.len() <= 512)
            && !scopes.contains(s)
        {
            scopes.push(s.clone());
        }
        Ok(Some(TokenKey {
            realm: realm.clone(),
            service: service.clone(),
            scopes,
            credential: credential.map_or(CredentialId::ANONYMOUS, Credential::id),
        }))
    }

    /// The Authorization header for `challenge`, fetching a token when needed.
    async fn authorize(
        &self,
        url: &Url,
        challenge: &Challenge,
        credential: Option<&Credential>,
    ) -> Result<(Option<HeaderValue>, Sent), FetchError> {
        let Some(key) = self.token_key(url, challenge, credential)? else {
            return Ok(match credential {
                Some(c) => (Some(basic_header(c)), Sent::Basic),
                None => (None, Sent::Nothing),
            });
        };
        let fetch = self.fetch_token(key.clone(), credential);
        let (token, cached) = self
            .inner
            .tokens
            .get_or_fetch(key.clone(), fetch)
            .await
            .map_err(FetchError::Token)?;
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.value()))
            .expect("token characters were checked when it was parsed");
        value.set_sensitive(true);
        Ok((
            Some(value),
            if cached {
                Sent::CachedToken(key)
            } else {
                Sent::FreshToken(key)
            },
        ))
    }

    async fn fetch_token(
        &self,
        key: TokenKey,
        credential: Option<&Credential>,
    ) -> Result<Token, TokenError> {
        let realm = key.realm.clone();
        let mut url = Url::parse(&realm).map_err(|e| TokenError::Malformed {
            realm: realm.clone(),
            reason: e.to_string(),
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = &key.service {
                q.append_pair("service", service);
            }
            for scope in &key.scopes {
                q.append_pair("scope", scope);
            }
        }
        let shown = display_url(&url);
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let auth = credential.map(basic_header);
        let mut resp = self
            .send(&url, &headers, auth.as_ref())
            .await
            .map_err(|e| match e {
                FetchError::Timeout { .. } => TokenError::Timeout {
                    realm: shown.clone(),
                },
                FetchError::Egress { refused, .. } => TokenError::Egress {
                    realm: shown.clone(),
                    reason: refused.to_string(),
                },
                other => TokenError::Transport {
                    realm: shown.clone(),
                    reason: other.to_string(),
                },
            })?;
        let status = resp.status();
        let limit = if status.is_success() {
            token::MAX_TOKEN_BODY
        } else {
            MAX_ERROR_BODY
        };
        let body = resp
            .read_body(limit)
            .await
            .map(|body| body.bytes)
            .map_err(|e| match e {
                FetchError::Timeout { .. } => TokenError::Timeout {
                    realm: shown.clone(),
                },
                FetchError::TooLarge { limit, .. } => TokenError::Malformed {
                    realm: shown.clone(),
                    reason: format!("the answer is larger than {limit} bytes"),
                },
                other => TokenError::Transport {
                    realm: shown.clone(),
                    reason: other.to_string(),
                },
            })?;
        if !status.is_success() {
            return Err(TokenError::Refused {
                realm: shown,
                status: status.as_u16(),
                message: RegistryMessage::from_body(&body),
            });
        }
        let token = token::parse_token_response(&shown, &body)?;
        tracing::debug!(realm = %shown, lifetime = ?token.lifetime(), "fetched registry token");
        Ok(token)
    }

    async fn send(
        &self,
        url: &Url,
        headers: &HeaderMap,
        auth: Option<&HeaderValue>,
    ) -> Result<Reply<'_>, FetchError> {
        if Instant::now() >= self.deadline {
            return Err(FetchError::Timeout {
                url: display_url(url),
            });
        }
        self.admit(url)?;
        let slot = tokio::time::timeout_at(self.deadline.into(), self.inner.outbound.slot(url))
            .await
            .map_err(|_| FetchError::Busy {
                url: display_url(url),
                reason: "every connection pullgate may open to this host, or in all, is in use",
            })?;
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let timeout = remaining.min(self.inner.options.request_timeout);
        let mut req = self
            .inner
            .http()
            .get(url.clone())
            .headers(headers.clone())
            .timeout(timeout);
        if let Some(auth) = auth {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(url = %display_url(url), "registry request");
        let result = req.send().await;
        if let Some(observe) = &self.inner.observer {
            observe(
                url.host_str().unwrap_or_default(),
                result.as_ref().ok().map(|r| r.status().as_u16()),
            );
        }
        if let Ok(resp) = &result {
            self.inner.outbound.learn(url, resp.version());
            if resp.status() == StatusCode::TOO_MANY_REQUESTS {
                self.inner
                    .backoff
                    .insert(host_key(url), Instant::now() + retry_after(resp.headers()));
            }
        }
        let response = result.map_err(|e| classify_reqwest(url, &e))?;
        Ok(Reply {
            response,
            url: url.clone(),
            inner: self.inner,
            deadline: self.deadline,
            _slot: slot,
        })
    }

    /// Refuses a request the egress guard or a host's back-off forbids, before any byte is
    /// sent. Host names are checked after resolution by the client's resolver; only address
    /// literals, which skip resolution, are checked here.
    fn admit(&self, url: &Url) -> Result<(), FetchError> {
        let literal = match url.host() {
            Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
            _ => None,
        };
        if let Some(ip) = literal {
            self.inner
                .options
                .egress
                .check(ip)
                .map_err(|refused| FetchError::Egress {
                    url: display_url(url),
                    refused,
                })?;
        }
        let host = host_key(url);
        if let Some(until) = self.inner.backoff.get(&host) {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                return Err(FetchError::Backoff {
                    host,
                    seconds: left.as_secs().max(1),
                });
            }
        }
        Ok(())
    }
}

/// host[:port], the unit of back-off and of the per-host probe limit.
fn host_key(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        _ => String::new(),
    }
}

/// How long a 429 asks clients to wait: `Retry-After` in seconds, bounded; an HTTP date or
/// nothing gets the default.
fn retry_after(headers: &HeaderMap) -> Duration {
    headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_BACKOFF, Duration::from_secs)
        .clamp(Duration::from_secs(1), MAX_BACKOFF)
}

fn classify_reqwest(url: &Url, e: &reqwest::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<Refused>() {
            return FetchError::Egress {
                url: display_url(url),
                refused: refused.clone(),
            };
        }
        if let Some(short) = err.downcast_ref::<OutOfDescriptors>() {
            return FetchError::Descriptors {
                url: display_url(url),
                source: OutOfDescriptors {
                    open: short.open,
                    ceiling: short.ceiling,
                },
            };
        }
        source = err.source();
    }
    if e.is_timeout() {
        FetchError::Timeout {
            url: display_url(url),
        }
    } else {
        FetchError::Transport {
            url: display_url(url),
            reason: describe(e),
        }
    }
}

fn basic_header(c: &Credential) -> HeaderValue {
    let raw = format!("{}:{}", c.username(), c.password());
    let mut v = HeaderValue::from_str(&format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
    .expect("base64 is a valid header value");
    v.set_sensitive(true);
    v
}

/// A registry's answer, with the connection slot it holds until it is dropped.
pub struct Reply<'a> {
    response: Response,
    /// Where the answer came from (after redirects).
    url: Url,
    inner: &'a Inner,
    deadline: Instant,
    _slot: Slot,
}

/// A body read whole, with its share of the body budget, held while the bytes (and what is
/// parsed from them) are in use.
pub struct Body {
    pub bytes: Bytes,
    _share: OwnedSemaphorePermit,
}

impl std::ops::Deref for Reply<'_> {
    type Target = Response;

    fn deref(&self) -> &Response {
        &self.response
    }
}

impl std::ops::DerefMut for Reply<'_> {
    fn deref_mut(&mut self) -> &mut Response {
        &mut self.response
    }
}

impl Reply<'_> {
    /// The URL that answered.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Reads the body, up to `limit` bytes; more is an error, not a truncation. The body's
    /// share of the budget is taken before a byte is read: three times its declared length
    /// (or `limit`), for the bytes and what is parsed from them while the share is held.
    pub async fn read_body(&mut self, limit: usize) -> Result<Body, FetchError> {
        let declared = self.response.content_length();
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(FetchError::TooLarge {
                url: display_url(&self.url),
                limit,
            });
        }
        let share = 3 * declared.map_or(limit, |n| n as usize);
        let share =
            tokio::time::timeout_at(self.deadline.into(), self.inner.outbound.body_share(share))
                .await
                .map_err(|_| FetchError::Busy {
                    url: display_url(&self.url),
                    reason: "the memory for registry answers being read is in use",
                })?;
        let mut buf = BytesMut::new();
        while let Some(chunk) = self
            .response
            .chunk()
            .await
            .map_err(|e| classify_reqwest(&self.url, &e))?
        {
            if buf.len() + chunk.len() > limit {
                return Err(FetchError::TooLarge {
                    url: display_url(&self.url),
                    limit,
                });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Body {
            bytes: buf.freeze(),
            _share: share,
        })
    }

    /// Reads an error body for its message; a failure to read it just means no message.
    pub async fn error_message(&mut self) -> RegistryMessage {
        match self.read_body(MAX_ERROR_BODY).await {
            Ok(body) => RegistryMessage::from_body(&body.bytes),
            Err(_) => RegistryMessage::default(),
        }
    }
}

mod insecure {
    //! `--insecure-skip-tls-verify`: accepts any certificate but still checks signatures of
    //! the handshake itself.
    use std::sync::Arc;

    use rustls::{
        DigitallySignedStruct, SignatureScheme,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::CryptoProvider,
        pki_types::{CertificateDer, ServerName, UnixTime},
    };

    #[derive(Debug)]
    pub struct NoVerify(pub Arc<CryptoProvider>);

    impl ServerCertVerifier for NoVerify {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_blobs_are_told_apart_by_host_repository_digest_and_credential() {
        let client = RegistryClient::new(ClientOptions::default()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let (alice, bob) = (
            Credential::new("alice", "p", "test"),
            Credential::new("bob", "p", "test"),
        );
        let image = |r: &str| ImageRef::parse(r).unwrap();
        let digest =
            |c: char| Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap();
        let key = |r: &str, c: Option<&Credential>, d: char| {
            client.session(&image(r), c, deadline).blob_key(&digest(d))
        };
        let keys = [
            key("r.example/a/b:1", None, 'a'),
            key("r.example/a/b:1", None, 'b'),
            key("r.example/a/c:1", None, 'a'),
            key("r.example/a:1", None, 'a'),
            key("q.example/a/b:1", None, 'a'),
            key("r.example:5000/a/b:1", None, 'a'),
            key("r.example/a/b:1", Some(&alice), 'a'),
            key("r.example/a/b:1", Some(&bob), 'a'),
        ];
        for (i, x) in keys.iter().enumerate() {
            for y in &keys[i + 1..] {
                assert!(x != y, "{i}");
            }
        }
        // The tag does not matter, nor the default port spelled out, and an anonymous
        // credential is no credential.
        assert!(key("r.example/a/b:1", None, 'a') == key("r.example:443/a/b:2", None, 'a'));
        let anonymous = Credential::new("", "", "test");
        assert!(key("r.example/a/b:1", None, 'a') == key("r.example/a/b:2", Some(&anonymous), 'a'));
        // Another client names the same blob apart: keys are keyed per process (and client).
        let other = RegistryClient::new(ClientOptions::default()).unwrap();
        assert!(
            key("r.example/a/b:1", None, 'a')
                != other
                    .session(&image("r.example/a/b:1"), None, deadline)
                    .blob_key(&digest('a'))
        );
    }
}
