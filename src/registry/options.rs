//! How the registry client is set up: trusted CAs, timeouts, the egress guard, the per-host
//! probe limit and the bounds on sockets, parsed from flags at the edge, and the TLS
//! configuration built from them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::{RootCertStore, pki_types::CertificateDer};
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

pub(super) fn tls_config(options: &ClientOptions) -> Result<rustls::ClientConfig, ClientError> {
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
