//! The bottom layer: one request (GET or HEAD), as it goes on the wire. It refuses what the egress guard or a
//! host's 429 back-off forbids before a byte is sent, takes a connection slot, sends with the
//! exchange's timeout, notes the answer's protocol and any back-off, and hands back the answer
//! with its slot ([`Reply`]), whose body is read within a bound of bytes and of the memory
//! for answers. It knows nothing of authentication.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use reqwest::{
    Method, Response, StatusCode,
    header::{self, HeaderMap, HeaderValue},
};
use tokio::sync::OwnedSemaphorePermit;
use url::Url;

use super::egress::GuardedResolver;
use super::error::{FetchError, classify_reqwest, display_url};
use super::message::RegistryMessage;
use super::options::{ClientError, ClientOptions, tls_config};
use super::slots::{FdGuardLayer, Outbound, Slot};

/// Error bodies are read only for the registry's message.
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// The longest a 429's `Retry-After` is honoured; a registry cannot switch pullgate off.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The back-off after a 429 without a usable `Retry-After`.
const DEFAULT_BACKOFF: Duration = Duration::from_secs(5);
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

/// Told about every registry request: the host, and the HTTP status (`None` when no answer
/// came). For metrics; it must be quick.
pub type RequestObserver = Arc<dyn Fn(&str, Option<u16>) + Send + Sync>;

/// The HTTP client, the connection slots and the back-offs, shared by every session.
pub(super) struct Transport {
    /// The HTTP client and its pool; replaced by a fresh one when descriptors run short, so
    /// that the old pool's idle connections close.
    http: RwLock<reqwest::Client>,
    /// What a fresh client is built from.
    tls: rustls::ClientConfig,
    fd_guard: Option<FdGuardLayer>,
    /// When the client was last replaced.
    renewed: Mutex<Instant>,
    outbound: Outbound,
    /// Hosts that answered 429, with when they may be asked again.
    backoff: moka::sync::Cache<String, Instant>,
    options: ClientOptions,
    observer: Option<RequestObserver>,
}

/// What one exchange is sent within: its deadline, and the counter of its session's requests.
#[derive(Clone, Copy)]
pub(super) struct Exchange<'a> {
    pub(super) deadline: Instant,
    pub(super) requests: &'a AtomicU32,
}

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

impl Transport {
    pub(super) fn new(
        options: ClientOptions,
        observer: Option<RequestObserver>,
    ) -> Result<Self, ClientError> {
        let tls = tls_config(&options)?;
        let fd_guard = options.outbound.fd_ceiling.map(FdGuardLayer::new);
        let http = http_client(&options, tls.clone(), fd_guard.clone())?;
        Ok(Transport {
            http: RwLock::new(http),
            tls,
            fd_guard,
            renewed: Mutex::new(Instant::now()),
            outbound: Outbound::new(&options.outbound),
            backoff: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(MAX_BACKOFF)
                .build(),
            options,
            observer,
        })
    }

    pub(super) fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// The HTTP client in service. When the descriptor guard refused a connection, a fresh
    /// client (and pool) replaces it first, at most every few seconds: the old one is dropped
    /// when its last request ends, and its idle connections close with it.
    fn http(&self) -> reqwest::Client {
        if let Some(guard) = &self.fd_guard
            && guard.pressed.swap(false, Ordering::SeqCst)
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

    /// Sends `method` (GET or HEAD) to `url` with `headers` and, when given, `auth` as its
    /// `Authorization`.
    pub(super) async fn send(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        auth: Option<&HeaderValue>,
        exchange: Exchange<'_>,
    ) -> Result<Reply<'_>, FetchError> {
        let deadline = exchange.deadline;
        if Instant::now() >= deadline {
            return Err(FetchError::Timeout {
                url: display_url(url),
            });
        }
        self.admit(url)?;
        let slot = tokio::time::timeout_at(deadline.into(), self.outbound.slot(url))
            .await
            .map_err(|_| FetchError::Busy {
                url: display_url(url),
                reason: "every connection pullgate may open to this host, or in all, is in use",
            })?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let timeout = remaining.min(self.options.request_timeout);
        let mut req = self
            .http()
            .request(method.clone(), url.clone())
            .headers(headers.clone())
            .timeout(timeout);
        if let Some(auth) = auth {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        exchange.requests.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(url = %display_url(url), "registry request");
        let result = req.send().await;
        if let Some(observe) = &self.observer {
            observe(
                url.host_str().unwrap_or_default(),
                result.as_ref().ok().map(|r| r.status().as_u16()),
            );
        }
        if let Ok(resp) = &result {
            self.outbound.learn(url, resp.version());
            if resp.status() == StatusCode::TOO_MANY_REQUESTS {
                self.backoff
                    .insert(host_key(url), Instant::now() + retry_after(resp.headers()));
            }
        }
        let response = result.map_err(|e| classify_reqwest(url, &e))?;
        Ok(Reply {
            response,
            url: url.clone(),
            transport: self,
            deadline,
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
            self.options
                .egress
                .check(ip)
                .map_err(|refused| FetchError::Egress {
                    url: display_url(url),
                    refused,
                })?;
        }
        let host = host_key(url);
        if let Some(until) = self.backoff.get(&host) {
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

/// host[:port], the unit of back-off.
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

/// A registry's answer, with the connection slot it holds until it is dropped.
pub struct Reply<'a> {
    response: Response,
    /// Where the answer came from (after redirects).
    url: Url,
    transport: &'a Transport,
    deadline: Instant,
    _slot: Slot,
}

/// A body read whole, with its share of the memory for answers, held while the bytes (and
/// what is parsed from them) are in use.
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
    /// Reads the body, up to `limit` bytes; more is an error, not a truncation. The body's
    /// share of the memory for answers is taken before a byte is read: three times its
    /// declared length (or `limit`), for the bytes and what is parsed from them while the
    /// share is held.
    pub async fn read_body(&mut self, limit: usize) -> Result<Body, FetchError> {
        let declared = self.response.content_length();
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(FetchError::TooLarge {
                url: display_url(&self.url),
                limit,
            });
        }
        let share = 3 * declared.map_or(limit, |n| n as usize);
        let share = tokio::time::timeout_at(
            self.deadline.into(),
            self.transport.outbound.body_share(share),
        )
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
