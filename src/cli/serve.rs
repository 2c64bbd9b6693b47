//! `pullgate serve`: the webhook's flags (each with an environment variable), turned once into
//! the server's typed configuration, and the process around the server (the open-files limit,
//! the listeners, SIGTERM).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tokio::net::TcpListener;

use super::CliError;
use super::registry::{RegistryArgs, SetupError, load_keyring};
use crate::audit::AuditSettings;
use crate::credentials::SecretOptions;
use crate::fds::FdBudget;
use crate::probe::{CacheOptions, PullOptions};
use crate::registry::{ClientOptions, EgressPolicy, OutboundLimits};
use crate::server::{
    CertFiles, Config, ConnectionLimits, DevCertificate, Listeners, PolicySource, TlsSource,
};

/// Flags of `pullgate serve`; every one has an environment variable.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the HTTPS webhook endpoint.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "0.0.0.0:8443",
        env = "PULLGATE_LISTEN"
    )]
    pub listen: SocketAddr,
    /// Address of the plain-HTTP admin endpoint (/healthz, /readyz, /metrics).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "0.0.0.0:8080",
        env = "PULLGATE_ADMIN_LISTEN"
    )]
    pub admin_listen: SocketAddr,
    /// Serving certificate (PEM chain), re-read when it changes. Without it, a development
    /// certificate is generated.
    #[arg(
        long,
        value_name = "PEM",
        env = "PULLGATE_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Private key of the serving certificate (PEM).
    #[arg(
        long,
        value_name = "PEM",
        env = "PULLGATE_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Names and addresses the development certificate is valid for.
    #[arg(
        long = "dev-host",
        value_name = "HOST",
        default_values = ["localhost", "127.0.0.1", "::1"],
        env = "PULLGATE_DEV_HOSTS",
        value_delimiter = ','
    )]
    pub dev_hosts: Vec<String>,
    /// Where the development CA is written, for `curl --cacert` [default: pullgate-dev-ca-<ADDRESS>-<PORT>.pem
    /// in the temporary directory, one per listen address, so two servers never overwrite
    /// each other's CA].
    #[arg(long, value_name = "FILE", env = "PULLGATE_DEV_CA_OUT")]
    pub dev_ca_out: Option<PathBuf>,
    /// Policy file (YAML), re-read when it changes. Without it, the embedded default policy.
    #[arg(long, value_name = "FILE", env = "PULLGATE_POLICY")]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Turn the egress (SSRF) guard off: connect to any address, loopback and link-local
    /// (cloud metadata) included.
    #[arg(long, env = "PULLGATE_NO_EGRESS_GUARD")]
    pub no_egress_guard: bool,
    /// Addresses the egress guard allows although its rules refuse them (CIDR, repeatable),
    /// e.g. a registry reached through a node-local proxy on 127.0.0.1/32.
    #[arg(
        long = "egress-allow",
        value_name = "CIDR",
        env = "PULLGATE_EGRESS_ALLOW",
        value_delimiter = ','
    )]
    pub egress_allow: Vec<ipnet::IpNet>,
    /// Addresses the egress guard refuses besides loopback, link-local and unspecified (CIDR,
    /// repeatable), e.g. the node network.
    #[arg(
        long = "egress-deny",
        value_name = "CIDR",
        env = "PULLGATE_EGRESS_DENY",
        value_delimiter = ','
    )]
    pub egress_deny: Vec<ipnet::IpNet>,
    /// Probes running at once against one registry host.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 32,
        env = "PULLGATE_PROBES_PER_HOST"
    )]
    pub probes_per_host: usize,
    /// Do not read pull secrets from the Kubernetes API (probe with node credentials only).
    #[arg(long, env = "PULLGATE_NO_KUBE")]
    pub no_kube: bool,
    /// Request a token of the workload's ServiceAccount (TokenRequest API, 10-minute lifetime,
    /// the provider's audience) for credential providers whose config has `tokenAttributes`,
    /// as the kubelet does (KEP-4412). Needs `create` on `serviceaccounts/token`; without this
    /// flag such providers are skipped with a warning.
    #[arg(long, env = "PULLGATE_PROVIDER_SERVICE_ACCOUNT_TOKENS")]
    pub provider_service_account_tokens: bool,
    /// Audit what already runs every DUR (e.g. 1h), in the background, on the replica that
    /// holds the `pullgate-audit` Lease; results in /metrics and as Events. Needs the audit
    /// RBAC (deploy/audit).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration, env = "PULLGATE_AUDIT_INTERVAL")]
    pub audit_interval: Option<Duration>,
    /// Namespace of the audit Lease [default: the POD_NAMESPACE variable, else the
    /// kubeconfig's namespace].
    #[arg(long, value_name = "NAMESPACE", env = "PULLGATE_AUDIT_LEASE_NAMESPACE")]
    pub audit_lease_namespace: Option<String>,
    /// This replica's name in the audit Lease [default: the POD_NAME variable, else HOSTNAME].
    #[arg(long, value_name = "NAME", env = "PULLGATE_AUDIT_IDENTITY")]
    pub audit_identity: Option<String>,
    /// Most time one review may take; keep it below the webhook's timeoutSeconds.
    #[arg(long, value_name = "DUR", default_value = "8s", value_parser = humantime::parse_duration, env = "PULLGATE_REVIEW_BUDGET")]
    pub review_budget: Duration,
    /// Most time one probe may take; it goes on after its review answered, to fill the cache.
    #[arg(long, value_name = "DUR", default_value = "20s", value_parser = humantime::parse_duration, env = "PULLGATE_PROBE_TIMEOUT")]
    pub probe_timeout: Duration,
    /// How long a read pull secret or ServiceAccount is reused: the delay before a changed
    /// secret applies.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = humantime::parse_duration, env = "PULLGATE_SECRET_TTL")]
    pub secret_ttl: Duration,
    /// How long a pullable tag stays cached.
    #[arg(long, value_name = "DUR", default_value = "10m", value_parser = humantime::parse_duration, env = "PULLGATE_PULLABLE_TTL")]
    pub pullable_ttl: Duration,
    /// How long a pullable digest reference stays cached.
    #[arg(long, value_name = "DUR", default_value = "1h", value_parser = humantime::parse_duration, env = "PULLGATE_DIGEST_TTL")]
    pub digest_ttl: Duration,
    /// How long blocked, not_found, unauthorized and invalid verdicts stay cached.
    #[arg(long, value_name = "DUR", default_value = "1m", value_parser = humantime::parse_duration, env = "PULLGATE_REFUSAL_TTL")]
    pub refusal_ttl: Duration,
    /// How long an unavailable verdict stays cached (0s: only concurrent reviews share it).
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = humantime::parse_duration, env = "PULLGATE_UNAVAILABLE_TTL")]
    pub unavailable_ttl: Duration,
    /// Verdicts kept at most.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100_000,
        env = "PULLGATE_CACHE_ENTRIES"
    )]
    pub cache_entries: u64,
    /// Memory the verdict cache may take (e.g. 64MiB), whatever the verdicts' texts; the cache
    /// holds at most this and at most --cache-entries.
    #[arg(long, value_name = "BYTES", default_value = "64MiB", value_parser = parse_bytes, env = "PULLGATE_CACHE_BYTES")]
    pub cache_bytes: u64,
    /// Memory for the manifests and indexes of metered registries (Docker Hub), kept by
    /// digest so that a re-probe of an unchanged tag spends no pull; 0 keeps none.
    #[arg(long, value_name = "BYTES", default_value = "16MiB", value_parser = parse_bytes, env = "PULLGATE_MANIFEST_STORE_BYTES")]
    pub manifest_store_bytes: u64,
    /// Share of a metered registry's pull limit kept for the nodes, in percent: when the
    /// registry reports this little left (ratelimit-remaining), pullgate sends no manifest
    /// GET that counts until the window has passed, and says so in the image's verdict.
    #[arg(long, value_name = "PERCENT", default_value_t = 25, value_parser = clap::value_parser!(u8).range(0..=100), env = "PULLGATE_PULL_RESERVE")]
    pub pull_reserve: u8,
    /// Connections the webhook port keeps open at once; at the cap the oldest idle one is
    /// closed for a new one. Lowered to fit the open-files limit.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 512,
        env = "PULLGATE_MAX_CONNECTIONS"
    )]
    pub max_connections: usize,
    /// Connections one source address may keep open on the webhook port.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 256,
        env = "PULLGATE_MAX_CONNECTIONS_PER_SOURCE"
    )]
    pub max_connections_per_source: usize,
    /// Most time a client may take to finish the TLS handshake.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = humantime::parse_duration, env = "PULLGATE_TLS_HANDSHAKE_TIMEOUT")]
    pub tls_handshake_timeout: Duration,
    /// Most time from the handshake to the first request's headers, and for any request's
    /// headers.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = humantime::parse_duration, env = "PULLGATE_REQUEST_HEADER_TIMEOUT")]
    pub request_header_timeout: Duration,
    /// How long a connection stays open with no request after answering one (HTTP/1.1 and
    /// HTTP/2).
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = humantime::parse_duration, env = "PULLGATE_IDLE_TIMEOUT")]
    pub idle_timeout: Duration,
    /// Connections to registries, token endpoints and blob hosts at once, in total; lowered
    /// to fit the open-files limit.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 128,
        env = "PULLGATE_MAX_REGISTRY_CONNECTIONS"
    )]
    pub max_registry_connections: usize,
    /// Connections to one registry host at once (all its ports together).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 32,
        env = "PULLGATE_MAX_REGISTRY_CONNECTIONS_PER_HOST"
    )]
    pub max_registry_connections_per_host: usize,
    /// Require a client certificate signed by a CA in this PEM bundle on the webhook port (the
    /// apiserver presents one when its AdmissionConfiguration names a kubeconfig for the
    /// webhook); re-read when it changes.
    #[arg(long, value_name = "PEM", env = "PULLGATE_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// How often the policy and certificate files are checked for changes.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = humantime::parse_duration, env = "PULLGATE_RELOAD_INTERVAL")]
    pub reload_interval: Duration,
    /// After SIGTERM, how long to keep serving while not ready.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = humantime::parse_duration, env = "PULLGATE_SHUTDOWN_DELAY")]
    pub shutdown_delay: Duration,
}

/// The server configuration for `args`: the typed, validated form of the flags. The
/// connection caps are lowered to fit the process's open-files limit. `webhook` is the bound
/// webhook address, which names the development CA's file; what to tell the user once the
/// server has started is added to `notices`.
pub(crate) async fn serve_config(
    args: ServeArgs,
    webhook: SocketAddr,
    notices: &mut Vec<String>,
) -> Result<Config, CliError> {
    let defaults = Config::default();
    let budget = FdBudget::split(
        crate::fds::limit(),
        args.max_connections,
        ConnectionLimits::admin().max_connections,
        args.max_registry_connections,
    );
    let kube = if args.no_kube {
        notices.push(
            "--no-kube: pull secrets are not read; probing with node credentials only".to_owned(),
        );
        if args.provider_service_account_tokens {
            return Err(SetupError::TokensWithoutApi {
                reason: "--no-kube is given".to_owned(),
            }
            .into());
        }
        None
    } else {
        match kube::Client::try_default().await {
            Ok(client) => Some(client),
            Err(_) if !args.provider_service_account_tokens && !kube_configured() => {
                tracing::info!(
                    "no kubeconfig and not in a cluster: pull secrets are not read; probing with node credentials only"
                );
                None
            }
            Err(e) if args.provider_service_account_tokens => {
                return Err(SetupError::TokensWithoutApi {
                    reason: e.to_string(),
                }
                .into());
            }
            Err(e) => {
                tracing::warn!(error = %e, "no Kubernetes API: pull secrets will not be read");
                None
            }
        }
    };
    let audit = match (args.audit_interval, &kube) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(SetupError::NoApi {
                reason: "--audit-interval lists workloads through the API".to_owned(),
            }
            .into());
        }
        (Some(interval), Some(client)) => {
            let namespace = args
                .audit_lease_namespace
                .clone()
                .or_else(|| {
                    std::env::var("POD_NAMESPACE")
                        .ok()
                        .filter(|v| !v.is_empty())
                })
                .unwrap_or_else(|| client.default_namespace().to_owned());
            let identity = args
                .audit_identity
                .clone()
                .or_else(|| std::env::var("POD_NAME").ok().filter(|v| !v.is_empty()))
                .or_else(|| std::env::var("HOSTNAME").ok().filter(|v| !v.is_empty()))
                .unwrap_or_else(|| format!("pullgate-{}", std::process::id()));
            Some(AuditSettings::every(interval, &namespace, &identity))
        }
    };
    let credential_providers = args.registry.credential_providers()?;
    let token_providers = credential_providers.token_providers().join(", ");
    if !token_providers.is_empty() && !args.provider_service_account_tokens {
        tracing::warn!(
            providers = %token_providers,
            "these credential providers are sent the pod's service-account token, which pullgate requests only with --provider-service-account-tokens: they are skipped"
        );
    }
    let node_keyring = load_keyring(&args.registry.docker_configs)?;
    let node_hosts = args.registry.node_hosts()?;
    let client_options = args.registry.client_options()?;
    // Written only once everything else has been checked.
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => TlsSource::Files(CertFiles { cert, key }),
        _ => {
            let dev = DevCertificate::generate(&args.dev_hosts)?;
            let out = args
                .dev_ca_out
                .unwrap_or_else(|| std::env::temp_dir().join(dev_ca_name(webhook)));
            std::fs::write(&out, &dev.ca_pem).map_err(|source| CliError::DevCa {
                path: out.clone(),
                source,
            })?;
            let hosts = args.dev_hosts.join(", ");
            let ca = out.display();
            notices.push(format!(
                "no --tls-cert given: serving a development certificate for {hosts}.\n\
                 Its CA is in {ca} (curl --cacert {ca} ...):\n{}",
                dev.ca_pem.trim_end()
            ));
            TlsSource::Development(dev)
        }
    };
    Ok(Config {
        tls,
        policy: args
            .policy
            .map_or(PolicySource::Embedded, PolicySource::File),
        review_budget: args.review_budget,
        probe_timeout: args.probe_timeout,
        registry: ClientOptions {
            egress: EgressPolicy {
                enabled: !args.no_egress_guard,
                allow: args.egress_allow,
                deny: args.egress_deny,
            },
            probes_per_host: args.probes_per_host,
            outbound: OutboundLimits {
                max_connections: budget.outbound_connections,
                max_connections_per_host: args.max_registry_connections_per_host,
                fd_ceiling: budget.outbound_ceiling,
                ..OutboundLimits::default()
            },
            ..client_options
        },
        cache: CacheOptions {
            pullable_ttl: args.pullable_ttl,
            digest_pullable_ttl: args.digest_ttl,
            refusal_ttl: args.refusal_ttl,
            unavailable_ttl: args.unavailable_ttl,
            max_entries: args.cache_entries,
            max_bytes: args.cache_bytes,
        },
        pulls: PullOptions {
            store_bytes: args.manifest_store_bytes,
            reserve_percent: args.pull_reserve,
        },
        secrets: SecretOptions {
            ttl: args.secret_ttl,
            ..SecretOptions::default()
        },
        kube,
        node_keyring,
        node_hosts,
        credential_providers,
        provider_service_account_tokens: args.provider_service_account_tokens,
        audit,
        reload_interval: args.reload_interval,
        shutdown_delay: args.shutdown_delay,
        connections: ConnectionLimits {
            max_connections: budget.webhook_connections,
            max_per_source: args.max_connections_per_source,
            handshake_timeout: args.tls_handshake_timeout,
            request_header_timeout: args.request_header_timeout,
            idle_timeout: args.idle_timeout,
        },
        admin_connections: ConnectionLimits {
            max_connections: budget.admin_connections,
            ..ConnectionLimits::admin()
        },
        client_ca: args.client_ca,
        ..defaults
    })
}

/// A size in bytes: a number, optionally followed by KiB, MiB or GiB (or K, M, G, the same).
fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 64MiB)"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        other => return Err(format!("unknown unit {other:?} (KiB, MiB or GiB)")),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Runs `pullgate serve` until SIGTERM or Ctrl-C. The ports are bound first (so a second
/// server on a busy port changes nothing, not even the development CA's file), then the whole
/// configuration is read and checked, and only then is the server announced.
pub async fn serve(args: Box<ServeArgs>) -> Result<ExitCode, CliError> {
    let (listen, admin_listen) = (args.listen, args.admin_listen);
    // As Go's runtime does: a server has every descriptor the hard limit allows.
    let limit = crate::fds::raise_limit();
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| CliError::Bind { addr, source: e })
    };
    let listeners = Listeners {
        webhook: bind(listen).await?,
        admin: bind(admin_listen).await?,
    };
    // The bound addresses: with port 0, the ports the system chose.
    let shown = |l: &TcpListener, asked: SocketAddr| l.local_addr().unwrap_or(asked);
    let (webhook, admin) = (
        shown(&listeners.webhook, listen),
        shown(&listeners.admin, admin_listen),
    );
    let mut notices = Vec::new();
    let config = serve_config(*args, webhook, &mut notices).await?;
    tracing::info!(
        open_files_limit = limit,
        webhook_connections = config.connections.max_connections,
        registry_connections = config.registry.outbound.max_connections,
        "connection caps"
    );
    crate::server::run_announced(config, listeners, shutdown_signal(), || {
        for notice in &notices {
            super::say(format_args!("{notice}"));
        }
        super::say(format_args!(
            "webhook on https://{webhook}/validate, admin on http://{admin}/"
        ));
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// The development CA's default file name for a webhook bound at `addr`.
fn dev_ca_name(addr: SocketAddr) -> String {
    let ip = addr.ip().to_string().replace(':', "_");
    format!("pullgate-dev-ca-{ip}-{}.pem", addr.port())
}

/// Whether kube-rs has anything to find: a kubeconfig (`KUBECONFIG` or `~/.kube/config`) or
/// the in-cluster environment. Without either, no API is the expected quick-start case, not
/// a problem worth a warning.
fn kube_configured() -> bool {
    std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty())
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || std::env::var_os("HOME")
            .is_some_and(|home| PathBuf::from(home).join(".kube/config").exists())
}

/// Resolves on SIGTERM (what the kubelet sends) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("512K"), Ok(512 << 10));
        assert_eq!(parse_bytes("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("64MB").is_err());
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("99999999999999GiB").is_err());
    }
}
