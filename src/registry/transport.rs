//! The bottom layer: one request (GET or HEAD), as it goes on the wire. It refuses what the egress guard or a
//! host's 429 back-off forbids before a byte is sent, takes a connection slot, sends with the
//! exchange's timeout, notes the answer's protocol and any back-off, and hands back the answer
//! with its slot ([`Reply`]), whose body is read within a bound of bytes and of the memory
//! for answers, or drained so that an HTTP/1.1 connection goes back to the pool. It also
//! sends warm-ups ([`Transport::warm_up`]). It knows nothing of authentication.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
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
use super::options::{ClientError, ClientOptions, HostTls, tls_config};
use super::origins::{Dial, HandshakeLayer, Origin, Origins, WarmUpOnHttp2};
use super::slots::{FdGuardLayer, Outbound, Slot};

/// Error bodies are read only for the registry's message.
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// The longest a 429's `Retry-After` is honoured; a registry cannot switch pullgate off.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The back-off after a 429 without a usable `Retry-After`.
const DEFAULT_BACKOFF: Duration = Duration::from_secs(5);
/// Idle connections kept per origin: as many as one image's blob probes use at once.
pub(super) const POOL_IDLE_PER_ORIGIN: usize = 16;
/// The most of an answer that is read only so that its connection can be used again, and
/// the longest it is waited for; a longer or slower answer's connection is closed instead.
/// (Bodies read only to be let go are short, and come with their head.)
const MAX_DRAIN: usize = MAX_ERROR_BODY;
const DRAIN_WAIT: Duration = Duration::from_secs(1);
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
    /// One client per TLS profile: 0 for pullgate's own settings, then one for each TLS
    /// setting the nodes' host configuration gives a host, made when first needed.
    http: RwLock<Vec<reqwest::Client>>,
    /// What fresh clients are built from, by profile, and the host settings of each profile
    /// past 0.
    tls: RwLock<(Vec<rustls::ClientConfig>, Vec<HostTls>)>,
    fd_guard: Option<FdGuardLayer>,
    /// When the client was last replaced.
    renewed: Mutex<Instant>,
    outbound: Outbound,
    /// What is known of each origin: its protocol, its use.
    origins: Origins,
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
    /// The TLS profile of the session's host (0: pullgate's own settings).
    pub(super) profile: usize,
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
        .connector_layer(HandshakeLayer)
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(options.connect_timeout)
        .pool_idle_timeout(options.pool_idle)
        .pool_max_idle_per_host(POOL_IDLE_PER_ORIGIN)
        .http2_initial_stream_window_size(H2_STREAM_WINDOW)
        .http2_initial_connection_window_size(H2_CONNECTION_WINDOW)
        .tcp_nodelay(true)
        .user_agent(concat!("pullgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(ClientError::Http)
}

fn clients(
    options: &ClientOptions,
    tls: &[rustls::ClientConfig],
    fd_guard: Option<&FdGuardLayer>,
) -> Result<Vec<reqwest::Client>, ClientError> {
    tls.iter()
        .map(|t| http_client(options, t.clone(), fd_guard.cloned()))
        .collect()
}

impl Transport {
    /// The TLS profile for a host with `tls` settings: 0 unless it has some of its own, whose
    /// client is made the first time they are seen (the settings come from the nodes'
    /// configuration, a handful of hosts).
    pub(super) fn profile(&self, tls: &HostTls) -> Result<usize, ClientError> {
        if tls.is_default() {
            return Ok(0);
        }
        let known = |t: &(Vec<rustls::ClientConfig>, Vec<HostTls>)| {
            t.1.iter().position(|h| h == tls).map(|i| i + 1)
        };
        if let Some(i) = known(&self.tls.read().unwrap_or_else(PoisonError::into_inner)) {
            return Ok(i);
        }
        let mut profiles = self.tls.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = known(&profiles) {
            return Ok(i);
        }
        let config = tls_config(&self.options, Some(tls))?;
        let client = http_client(&self.options, config.clone(), self.fd_guard.clone())?;
        let mut http = self.http.write().unwrap_or_else(PoisonError::into_inner);
        profiles.0.push(config);
        profiles.1.push(tls.clone());
        http.push(client);
        Ok(profiles.1.len())
    }

    pub(super) fn new(
        options: ClientOptions,
        observer: Option<RequestObserver>,
    ) -> Result<Self, ClientError> {
        let tls = vec![tls_config(&options, None)?];
        let fd_guard = options.outbound.fd_ceiling.map(FdGuardLayer::new);
        let http = clients(&options, &tls, fd_guard.as_ref())?;
        let tls = RwLock::new((tls, Vec::new()));
        Ok(Transport {
            http: RwLock::new(http),
            tls,
            fd_guard,
            renewed: Mutex::new(Instant::now()),
            outbound: Outbound::new(&options.outbound),
            origins: Origins::new(),
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

    /// What is known of `url`'s origin.
    pub(super) fn origin(&self, url: &Url) -> Arc<Origin> {
        self.origins.of(url)
    }

    /// The HTTP client in service. When the descriptor guard refused a connection, a fresh
    /// client (and pool) replaces it first, at most every few seconds: the old one is dropped
    /// when its last request ends, and its idle connections close with it.
    fn http(&self, profile: usize) -> reqwest::Client {
        if let Some(guard) = &self.fd_guard
            && guard.pressed.swap(false, Ordering::SeqCst)
        {
            let mut renewed = self.renewed.lock().unwrap_or_else(PoisonError::into_inner);
            if renewed.elapsed() >= RENEW_EVERY {
                let tls = self.tls.read().unwrap_or_else(PoisonError::into_inner);
                match clients(&self.options, &tls.0, Some(guard)) {
                    Ok(fresh) => {
                        *renewed = Instant::now();
                        tracing::warn!("file descriptors short: registry connection pool renewed");
                        *self.http.write().unwrap_or_else(PoisonError::into_inner) = fresh;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot renew the registry client"),
                }
            }
        }
        let clients = self.http.read().unwrap_or_else(PoisonError::into_inner);
        clients.get(profile).unwrap_or(&clients[0]).clone()
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
            .http(exchange.profile)
            .request(method.clone(), url.clone())
            .headers(headers.clone())
            .timeout(timeout);
        if let Some(auth) = auth {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        exchange.requests.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(url = %display_url(url), "registry request");
        let dial = Dial {
            origin: self.origins.of(url),
            warm_up: None,
        };
        let result = dial.run(req.send()).await;
        self.answered(url, &result);
        let response = result.map_err(|e| classify_reqwest(url, &e))?;
        Ok(Reply {
            response,
            url: url.clone(),
            transport: self,
            deadline,
            _slot: slot,
        })
    }

    /// Sends one warm-up to `ping` (the registry's `/v2/`): without credentials, only when a
    /// spare connection slot is free, and reads the answer to its end, so that its connection
    /// goes back to the pool for the requests that follow; `Ok(true)` when it did. Adds one
    /// to `sent` once it is on the wire (also when it is let go unanswered); not when it was
    /// never sent: no spare slot, or its connection negotiated HTTP/2 and was closed unused.
    pub(super) async fn warm_up(
        &self,
        ping: &Url,
        deadline: Instant,
        sent: &AtomicU32,
    ) -> Result<bool, FetchError> {
        if Instant::now() >= deadline {
            return Ok(false);
        }
        self.admit(ping)?;
        let Some(slot) = self.outbound.spare_slot(ping) else {
            return Ok(false);
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let req = self
            .http(0)
            .get(ping.clone())
            .timeout(remaining.min(self.options.request_timeout));
        let on_wire = Arc::new(AtomicBool::new(false));
        let _count = CountIfSent {
            on_wire: on_wire.clone(),
            sent,
        };
        let dial = Dial {
            origin: self.origins.of(ping),
            warm_up: Some(on_wire.clone()),
        };
        let result = dial.run(req.send()).await;
        if let Err(e) = &result
            && refused_on_http2(e)
        {
            return Ok(false);
        }
        // Also when it went on a pooled connection, which the connector did not see.
        on_wire.store(true, Ordering::SeqCst);
        self.answered(ping, &result);
        let response = result.map_err(|e| classify_reqwest(ping, &e))?;
        let drained = Reply {
            response,
            url: ping.clone(),
            transport: self,
            deadline,
            _slot: slot,
        }
        .drain()
        .await;
        // The connection goes back to the pool from a task of the client's, woken as the
        // body ended; a turn of the scheduler lets it run before a request is told the
        // connection is ready, which would otherwise find none idle and open one.
        tokio::task::yield_now().await;
        Ok(drained)
    }

    /// Notes what an answer (or its absence) tells: the observer's count, the origin's
    /// protocol for connection slots, a 429's back-off.
    fn answered(&self, url: &Url, result: &Result<Response, reqwest::Error>) {
        if let Some(observe) = &self.observer {
            observe(
                url.host_str().unwrap_or_default(),
                result.as_ref().ok().map(|r| r.status().as_u16()),
            );
        }
        if let Ok(resp) = result {
            self.outbound.learn(url, resp.version());
            if resp.status() == StatusCode::TOO_MANY_REQUESTS {
                self.backoff
                    .insert(host_key(url), Instant::now() + retry_after(resp.headers()));
            }
        }
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

/// Counts a warm-up when it is done or let go, if it went on the wire.
struct CountIfSent<'a> {
    on_wire: Arc<AtomicBool>,
    sent: &'a AtomicU32,
}

impl Drop for CountIfSent<'_> {
    fn drop(&mut self) {
        if self.on_wire.load(Ordering::SeqCst) {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether the connector closed this request's connection unused: a warm-up on HTTP/2.
fn refused_on_http2(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<WarmUpOnHttp2>() {
            return true;
        }
        source = err.source();
    }
    false
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

    /// Reads the rest of the body and lets it go, so that an HTTP/1.1 connection goes back to
    /// the pool rather than being closed. Bounded by [`MAX_DRAIN`] bytes, [`DRAIN_WAIT`] and
    /// the deadline; past any of them the connection is closed, which costs only a new one
    /// later. The bytes are not kept, so no memory for answers is taken. Returns whether the
    /// body was read to its end.
    pub async fn drain(mut self) -> bool {
        let mut read = 0;
        let until = self.deadline.min(Instant::now() + DRAIN_WAIT);
        let drained = tokio::time::timeout_at(until.into(), async {
            loop {
                match self.response.chunk().await {
                    Ok(Some(chunk)) => read += chunk.len(),
                    Ok(None) => return true,
                    Err(_) => return false,
                }
                if read > MAX_DRAIN {
                    return false;
                }
            }
        })
        .await;
        let drained = matches!(drained, Ok(true));
        if !drained {
            tracing::debug!(url = %display_url(&self.url), "answer not drained: its connection is closed");
        }
        drained
    }

    /// Reads an error body for its message; a failure to read it just means no message.
    pub async fn error_message(&mut self) -> RegistryMessage {
        match self.read_body(MAX_ERROR_BODY).await {
            Ok(body) => RegistryMessage::from_body(&body.bytes),
            Err(_) => RegistryMessage::default(),
        }
    }
}
