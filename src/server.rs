//! The HTTPS server kube-apiserver calls (`POST /validate`), and the plain-HTTP admin server
//! beside it (`/healthz`, `/readyz`, `/metrics`). Handlers are glue: decisions are made in
//! [`crate::admission`].

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::admission::{Reviewer, ReviewerConfig};
use crate::cache::CacheOptions;
use crate::client::{ClientError, ClientOptions, RegistryClient};
use crate::connection::{self, ConnectionLimits, Peer, Tracker};
use crate::intake::Intake;
use crate::keyring::Keyring;
use crate::metrics::Metrics;
use crate::policy::{Policy, PolicyError};
use crate::pullsecrets::{SecretOptions, SecretStore};
use crate::reload::{ReloadError, Reloading};
use crate::tls::{CertFiles, CertStore, ClientCa, DevCertificate, TlsError};

/// The path kube-apiserver POSTs AdmissionReviews to (the webhook's `clientConfig.service.path`).
pub const WEBHOOK_PATH: &str = "/validate";
/// Liveness, on the admin listener: 200 while the process serves.
pub const HEALTHZ_PATH: &str = "/healthz";
/// Readiness, on the admin listener: 503 once shutting down.
pub const READYZ_PATH: &str = "/readyz";
/// Prometheus metrics, on the admin listener.
pub const METRICS_PATH: &str = "/metrics";

/// Where the serving certificate comes from.
#[derive(Debug)]
pub enum TlsSource {
    /// PEM files, re-read when they change.
    Files(CertFiles),
    /// A generated development certificate.
    Development(DevCertificate),
}

/// Where the policy comes from.
#[derive(Clone, Debug)]
pub enum PolicySource {
    /// The built-in default policy.
    Embedded,
    /// A YAML file, re-read when it changes.
    File(PathBuf),
}

/// Everything the server needs, parsed and typed.
pub struct Config {
    pub tls: TlsSource,
    pub policy: PolicySource,
    /// Most time a review may take; the apiserver's `?timeout=` can only shorten it.
    pub review_budget: Duration,
    /// Most time a probe may take. Probes outlive the review that started them (the result is
    /// cached for the next review), so this may exceed the budget.
    pub probe_timeout: Duration,
    pub registry: ClientOptions,
    pub cache: CacheOptions,
    pub secrets: SecretOptions,
    /// Reads pull secrets; `None` probes with node credentials only.
    pub kube: Option<kube::Client>,
    /// Node-level credentials (mounted docker configs).
    pub node_keyring: Keyring,
    /// How often the policy and certificate files are checked for changes.
    pub reload_interval: Duration,
    /// Largest AdmissionReview body accepted.
    pub max_body_bytes: usize,
    /// After a shutdown signal, how long the server goes on serving while reporting not ready,
    /// so the Service stops sending it traffic before it stops accepting.
    pub shutdown_delay: Duration,
    /// How long in-flight reviews get to finish once accepting has stopped.
    pub drain_timeout: Duration,
    /// Caps and deadlines of the webhook port's connections.
    pub connections: ConnectionLimits,
    /// Caps and deadlines of the admin port's connections.
    pub admin_connections: ConnectionLimits,
    /// CAs whose client certificates the webhook port requires (`--client-ca`); without it,
    /// any client may connect.
    pub client_ca: Option<PathBuf>,
    /// Memory for the reviews in flight: each holds its body's size plus a fixed allowance
    /// (for what is read from the body and for its probes' bookkeeping) until it is answered,
    /// and waits, within its budget, while the rest is taken.
    pub reviews_memory: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tls: TlsSource::Files(CertFiles {
                cert: "/etc/pullgate/tls/tls.crt".into(),
                key: "/etc/pullgate/tls/tls.key".into(),
            }),
            policy: PolicySource::Embedded,
            review_budget: Duration::from_secs(8),
            probe_timeout: Duration::from_secs(20),
            registry: ClientOptions {
                blob_ttl: Duration::from_secs(10 * 60),
                egress: crate::egress::EgressPolicy::guarded(),
                ..ClientOptions::default()
            },
            cache: CacheOptions::default(),
            secrets: SecretOptions::default(),
            kube: None,
            node_keyring: Keyring::default(),
            reload_interval: Duration::from_secs(10),
            max_body_bytes: 8 * 1024 * 1024,
            shutdown_delay: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(15),
            connections: ConnectionLimits::webhook(),
            admin_connections: ConnectionLimits::admin(),
            client_ca: None,
            reviews_memory: 64 * 1024 * 1024,
        }
    }
}

/// The sockets the server answers on; bound by the caller so tests can use port 0.
#[derive(Debug)]
pub struct Listeners {
    /// HTTPS, for kube-apiserver.
    pub webhook: TcpListener,
    /// Plain HTTP, for probes and Prometheus.
    pub admin: TcpListener,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("serving certificate: {0}")]
    Certificate(#[from] ReloadError<TlsError>),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("policy: {0}")]
    Policy(#[from] ReloadError<PolicyError>),
    #[error("registry client: {0}")]
    Registry(#[from] ClientError),
}

/// What the handlers share.
struct App {
    reviewer: Reviewer,
    metrics: Arc<Metrics>,
    budget: Duration,
    /// How bodies are read, within memory and time.
    intake: Intake,
    ready: AtomicBool,
}

/// Runs the webhook until `shutdown` resolves, then drains: readiness turns false, serving
/// goes on for `shutdown_delay`, accepting stops, in-flight reviews finish (at most
/// `drain_timeout`), idle connections close.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let certs = Arc::new(match config.tls {
        TlsSource::Files(files) => CertStore::from_files(files)?,
        TlsSource::Development(dev) => CertStore::fixed(dev.certified_key()?),
    });
    let client_ca = config
        .client_ca
        .map(ClientCa::from_file)
        .transpose()?
        .map(Arc::new);
    let policy = Arc::new(match &config.policy {
        PolicySource::Embedded => Reloading::fixed("policy", Policy::default()),
        PolicySource::File(path) => {
            let shown = path.display().to_string();
            Reloading::load(
                "policy",
                vec![path.clone()],
                crate::policy::MAX_POLICY_BYTES as u64,
                move |bytes| Policy::from_slice(&bytes[0], &shown),
            )?
        }
    });
    let metrics = Arc::new(Metrics::new());
    let registry = RegistryClient::with_observer(config.registry, metrics.request_observer())?;
    let app = Arc::new(App {
        reviewer: Reviewer::new(ReviewerConfig {
            registry,
            secrets: config
                .kube
                .map(|client| SecretStore::new(client, config.secrets)),
            node: Arc::new(config.node_keyring),
            cache: config.cache,
            policy: policy.clone(),
            metrics: metrics.clone(),
            probe_timeout: config.probe_timeout,
        }),
        metrics: metrics.clone(),
        budget: config.review_budget,
        intake: Intake::new(config.max_body_bytes, config.reviews_memory),
        ready: AtomicBool::new(true),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |rx: &watch::Receiver<bool>| {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let mut background = JoinSet::new();
    background.spawn({
        let certs = certs.clone();
        let done = stopped(&stop_rx);
        async move { certs.watch(config.reload_interval, done).await }
    });
    background.spawn({
        let done = stopped(&stop_rx);
        policy.watch(config.reload_interval, done)
    });
    if let Some(clients) = &client_ca {
        let clients = clients.clone();
        let done = stopped(&stop_rx);
        background.spawn(async move { clients.watch(config.reload_interval, done).await });
    }
    background.spawn(
        app.reviewer
            .cache()
            .clone()
            .sweep_expired_until(stopped(&stop_rx)),
    );

    // The admin port has connections of its own, so no flood of the webhook port can keep
    // the kubelet's probes out; it stops after the webhook has drained.
    let admin = tokio::spawn(connection::accept_until(
        listeners.admin,
        Tracker::new("admin", config.admin_connections, metrics.clone()),
        |tcp| std::future::ready(Ok(tcp)),
        admin_router(app.clone()),
        stop_rx.clone(),
        stopped(&stop_rx),
    ));

    let acceptor = TlsAcceptor::from(crate::tls::server_config(certs, client_ca)?);
    let (drain_tx, drain_rx) = watch::channel(false);
    tracing::info!(
        addr = ?listeners.webhook.local_addr().ok(),
        "serving admission reviews"
    );
    let until_shutdown = {
        let app = app.clone();
        let delay = config.shutdown_delay;
        async move {
            shutdown.await;
            tracing::info!(delay = ?delay, "shutting down: not ready any more");
            app.ready.store(false, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
        }
    };
    let mut connections = connection::accept_until(
        listeners.webhook,
        Tracker::new("webhook", config.connections, metrics),
        move |tcp| acceptor.accept(tcp),
        webhook_router(app.clone()),
        drain_rx,
        until_shutdown,
    )
    .await;
    let _ = drain_tx.send(true);
    let drained = tokio::time::timeout(config.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "drain timeout: closing connections"
        );
        connections.shutdown().await;
    }
    let _ = stop_tx.send(true);
    while background.join_next().await.is_some() {}
    match admin.await {
        Ok(mut admin) => {
            let closed = tokio::time::timeout(Duration::from_secs(1), async {
                while admin.join_next().await.is_some() {}
            });
            if closed.await.is_err() {
                admin.shutdown().await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "admin server task failed"),
    }
    tracing::info!("stopped");
    Ok(())
}

fn webhook_router(app: Arc<App>) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(validate))
        .with_state(app)
}

fn admin_router(app: Arc<App>) -> Router {
    Router::new()
        .route(HEALTHZ_PATH, get(|| async { "ok" }))
        .route(READYZ_PATH, get(readyz))
        .route(METRICS_PATH, get(metrics))
        .with_state(app)
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.ready.load(Ordering::SeqCst) {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let cache = app.reviewer.cache();
    app.metrics
        .verdict_cache(cache.entry_count(), cache.weighted_size());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct ValidateQuery {
    /// The apiserver's own deadline for this call, e.g. `10s` (the webhook's timeoutSeconds).
    timeout: Option<String>,
}

/// The time a review may take: the configured budget, shortened to leave the apiserver a
/// margin when its own timeout is tighter.
pub fn review_budget(configured: Duration, apiserver_timeout: Option<&str>) -> Duration {
    let Some(timeout) = apiserver_timeout.and_then(|t| humantime::parse_duration(t).ok()) else {
        return configured;
    };
    // A fifth of the apiserver's timeout, at least 300 ms, is left for the network and for
    // writing the answer.
    let margin = (timeout / 5).max(Duration::from_millis(300));
    configured.min(
        timeout
            .saturating_sub(margin)
            .max(Duration::from_millis(100)),
    )
}

async fn validate(
    State(app): State<Arc<App>>,
    Query(query): Query<ValidateQuery>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let budget = review_budget(app.budget, query.timeout.as_deref());
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let read = app
        .intake
        .read(peer.ip(), declared, body, started + budget)
        .await;
    let response = match read {
        Ok(admitted) => {
            app.reviewer
                .review_read(&admitted.request, admitted.read, budget)
                .await
        }
        Err(invalid) => {
            app.metrics.review("unknown", "error", started.elapsed());
            *invalid
        }
    };
    axum::Json(response.into_review()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apiservers_timeout_shortens_the_budget_with_a_margin() {
        let eight = Duration::from_secs(8);
        assert_eq!(review_budget(eight, None), eight);
        assert_eq!(review_budget(eight, Some("30s")), eight);
        assert_eq!(review_budget(eight, Some("10s")), eight);
        assert_eq!(review_budget(eight, Some("5s")), Duration::from_secs(4));
        assert_eq!(review_budget(eight, Some("1s")), Duration::from_millis(700));
        assert_eq!(review_budget(eight, Some("garbage")), eight);
    }
}
