//! The HTTPS server kube-apiserver calls (`POST /validate`), and the plain-HTTP admin server
//! beside it (`/healthz`, `/readyz`, `/metrics`). Handlers are glue: decisions are made in
//! [`crate::admission`].

mod connection;
mod intake;
mod plain_http;
mod routes;
mod tls;
mod tracker;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

pub use connection::ConnectionLimits;
pub use routes::{HEALTHZ_PATH, METRICS_PATH, READYZ_PATH, WEBHOOK_PATH, review_budget};
pub use tls::{CertFiles, CertStore, ClientCa, DevCertificate, TlsError};

use crate::admission::{Reviewer, ReviewerConfig};
use crate::audit::{AuditSettings, Continuous};
use crate::credentials::CredentialProviders;
use crate::credentials::{Keyring, SecretOptions, SecretStore, ServiceAccountTokens};
use crate::metrics::Metrics;
use crate::policy::{Policy, PolicyError};
use crate::probe::{CacheOptions, ManifestStore, PullBudgets, PullOptions};
use crate::registry::{ClientError, ClientOptions, NodeHosts, RegistryClient};
use crate::reload::{ReloadError, Reloading};
use intake::Intake;
use routes::{App, admin_router, webhook_router};
use tracker::Tracker;

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
    /// The manifest store and the pull reserve of metered registries.
    pub pulls: PullOptions,
    pub secrets: SecretOptions,
    /// Reads pull secrets; `None` probes with node credentials only.
    pub kube: Option<kube::Client>,
    /// Node-level credentials (mounted docker configs).
    pub node_keyring: Keyring,
    /// The hosts the nodes pull from (mirrors), as their runtime's configuration says.
    pub node_hosts: NodeHosts,
    /// The kubelet's credential-provider plugins (`--image-credential-provider-config`).
    pub credential_providers: CredentialProviders,
    /// Request ServiceAccount tokens for the providers with `tokenAttributes` (needs `kube`).
    pub provider_service_account_tokens: bool,
    /// Audit what already runs in the background (`--audit-interval`; needs `kube`).
    pub audit: Option<AuditSettings>,
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
                egress: crate::registry::EgressPolicy::guarded(),
                ..ClientOptions::default()
            },
            cache: CacheOptions::default(),
            pulls: PullOptions::default(),
            secrets: SecretOptions::default(),
            kube: None,
            node_keyring: Keyring::default(),
            node_hosts: NodeHosts::default(),
            credential_providers: CredentialProviders::default(),
            provider_service_account_tokens: false,
            audit: None,
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
    #[error("service-account tokens for credential providers need a Kubernetes API client")]
    TokensWithoutApi,
    #[error("the background audit needs a Kubernetes API client")]
    AuditWithoutApi,
}

/// Runs the webhook until `shutdown` resolves, then drains: readiness turns false, serving
/// goes on for `shutdown_delay`, accepting stops, in-flight reviews finish (at most
/// `drain_timeout`), idle connections close.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    run_announced(config, listeners, shutdown, || {}).await
}

/// [`run`], calling `announce` once the whole configuration (certificates, client CA, policy,
/// registry client) has loaded and just before serving starts, so that nothing is announced
/// for a configuration that then fails.
pub async fn run_announced(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
    announce: impl FnOnce(),
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
    if config.node_hosts.is_configured() {
        tracing::info!(hosts = %config.node_hosts.describe(), "probing through the nodes' registry hosts");
    }
    let metrics = Arc::new(Metrics::new());
    let registry = RegistryClient::with_observer(config.registry, metrics.request_observer())?;
    let audit = match (config.audit, &config.kube) {
        (Some(settings), Some(client)) => Some((settings, client.clone())),
        (Some(_), None) => return Err(ServerError::AuditWithoutApi),
        (None, _) => None,
    };
    let secrets = config
        .kube
        .map(|client| SecretStore::new(client, config.secrets));
    let mut providers = config.credential_providers;
    if config.provider_service_account_tokens {
        let store = secrets.clone().ok_or(ServerError::TokensWithoutApi)?;
        providers = providers.with_service_account_tokens(ServiceAccountTokens::new(store));
    }
    let app = Arc::new(App {
        reviewer: Reviewer::new(ReviewerConfig {
            registry,
            secrets,
            node: Arc::new(config.node_keyring),
            cache: config.cache,
            policy: policy.clone(),
            metrics: metrics.clone(),
            probe_timeout: config.probe_timeout,
            store: ManifestStore::new(config.pulls.store_bytes),
            budgets: PullBudgets::new(config.pulls.reserve_percent),
            rules: config.node_hosts.platform_rules(),
            hosts: Arc::new(config.node_hosts),
            providers,
        }),
        metrics: metrics.clone(),
        budget: config.review_budget,
        intake: Intake::new(config.max_body_bytes, config.reviews_memory),
        ready: AtomicBool::new(true),
    });
    announce();

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
        policy.clone().watch(config.reload_interval, done)
    });
    if let Some(clients) = &client_ca {
        let clients = clients.clone();
        let done = stopped(&stop_rx);
        background.spawn(async move { clients.watch(config.reload_interval, done).await });
    }
    if let Some((settings, client)) = audit {
        let (app, policy, done) = (app.clone(), policy.clone(), stopped(&stop_rx));
        background.spawn(async move {
            Continuous::run(settings, client, &app.reviewer, &policy, &app.metrics, done).await;
        });
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

    let acceptor = TlsAcceptor::from(crate::server::tls::server_config(certs, client_ca)?);
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
        move |tcp| plain_http::accept(acceptor.clone(), tcp),
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
