//! How the registry client is set up: trusted CAs, timeouts, the egress guard, the per-host
//! probe limit and the bounds on sockets, parsed from flags at the edge, and the TLS
//! configuration built from them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer},
};
use rustls_pki_types::pem::PemObject;

use super::egress::EgressPolicy;
use super::slots::OutboundLimits;

/// Settings of the registry client, parsed from flags at the edge.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Extra trusted CAs (`--ca-file`), added to the system and webpki roots.
    pub extra_roots: Vec<CertificateDer<'static>>,
    pub insecure_skip_tls_verify: bool,
    /// Upper bound for one HTTP exchange, body included.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept for the next request to its origin.
    pub pool_idle: Duration,
    /// The SSRF guard: which addresses may be connected to.
    pub egress: EgressPolicy,
    /// Probes running at once against one registry host (all its ports together); more
    /// wait for a turn.
    pub probes_per_host: usize,
    /// Bounds on sockets and body bytes.
    pub outbound: OutboundLimits,
}

/// What a node's `hosts.toml` says about TLS for one host (`ca`, `client`, `skip_verify`), on
/// top of pullgate's own trust (`--ca-file`, the system roots).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct HostTls {
    pub ca_files: Vec<PathBuf>,
    /// Certificate and key files; without a key file, the key is in the certificate's.
    pub client_certs: Vec<(PathBuf, Option<PathBuf>)>,
    pub skip_verify: bool,
}

impl HostTls {
    /// Nothing beyond pullgate's own settings.
    pub fn is_default(&self) -> bool {
        *self == HostTls::default()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            extra_roots: Vec::new(),
            insecure_skip_tls_verify: false,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            pool_idle: Duration::from_secs(30),
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
    #[error("cannot read client certificate or key {path}: {reason}")]
    ClientCert { path: String, reason: String },
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

/// The TLS configuration for the registries pullgate's own settings cover, or with `host`,
/// for a host the nodes' configuration gives TLS settings of its own.
pub(super) fn tls_config(
    options: &ClientOptions,
    host: Option<&HostTls>,
) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let skip_verify = options.insecure_skip_tls_verify || host.is_some_and(|h| h.skip_verify);
    let builder = if skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(insecure::NoVerify(provider)))
    } else {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        roots.add_parsable_certificates(options.extra_roots.iter().cloned());
        for path in host.map_or(&[][..], |h| &h.ca_files[..]) {
            roots.add_parsable_certificates(ClientOptions::load_ca_file(path)?);
        }
        builder.with_root_certificates(roots)
    };
    // rustls presents one client certificate; containerd's list is tried in order, and the
    // first pair is the one a host is normally given.
    let mut config = match host.and_then(|h| h.client_certs.first()) {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let key_file = key.as_deref().unwrap_or(cert);
            let unreadable = |path: &Path, e: &dyn std::fmt::Display| ClientError::ClientCert {
                path: path.display().to_string(),
                reason: e.to_string(),
            };
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| unreadable(cert, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| unreadable(cert, &e))?;
            let key =
                PrivateKeyDer::from_pem_file(key_file).map_err(|e| unreadable(key_file, &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| unreadable(cert, &e))?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
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
    pub(super) struct NoVerify(pub Arc<CryptoProvider>);

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
