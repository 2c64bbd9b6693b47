//! The webhook's serving certificate: read from PEM files and re-read when they change, or
//! generated for development.
//!
//! A mounted Secret changes by a `..data` symlink swap; [`crate::server::reload`] notices it, and a new
//! pair that does not load keeps the old one serving.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::reload::{ReloadError, Reloading};

/// PEM files for a certificate chain and key are a few KiB; this is generous.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path}: invalid PEM certificate: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    // The key's own error is left out on purpose: only where it was and what kind of problem.
    #[error("{path} holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM expected)")]
    BadKey { path: PathBuf },
    #[error("the key in {key} does not belong to the certificate in {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot generate the development certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Where the serving certificate and its key live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses a PEM chain and key and checks that they belong together.
pub(super) fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    files: &CertFiles,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: files.cert.clone(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::BadKey {
        path: files.key.clone(),
    })?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) | rustls::Error::InvalidCertificate(_) => {
            TlsError::Mismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
                reason: e.to_string(),
            }
        }
        _ => TlsError::BadKey {
            path: files.key.clone(),
        },
    })?;
    Ok(Arc::new(certified))
}

/// The certificate new connections get; swapped in place when the files change.
#[derive(Debug)]
pub struct CertStore(Arc<Reloading<Arc<CertifiedKey>, TlsError>>);

impl CertStore {
    /// Loads the pair from `files`; [`CertStore::watch`] keeps it in step with them.
    pub fn from_files(files: CertFiles) -> Result<Self, ReloadError<TlsError>> {
        let paths = vec![files.cert.clone(), files.key.clone()];
        Reloading::load("serving certificate", paths, MAX_PEM_BYTES, move |pem| {
            certified_key(&pem[0], &pem[1], &files)
        })
        .map(|r| CertStore(Arc::new(r)))
    }

    /// A fixed certificate that is never reloaded (the development certificate).
    pub fn fixed(key: Arc<CertifiedKey>) -> Self {
        CertStore(Arc::new(Reloading::fixed("serving certificate", key)))
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.0.current())
    }

    /// Swaps the certificate when the files changed and the new pair loads.
    #[cfg(test)]
    fn reload_if_changed(&self) -> Result<bool, ReloadError<TlsError>> {
        self.0.reload_if_changed()
    }

    /// Polls the files every `interval` until `shutdown` resolves.
    pub async fn watch(&self, interval: Duration, shutdown: impl Future<Output = ()>) {
        self.0.clone().watch(interval, shutdown).await
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// TLS 1.2 and 1.3 only, HTTP/2 and HTTP/1.1, the certificate from `store`; with `clients`,
/// only clients presenting a certificate signed by its CAs get past the handshake.
pub(super) fn server_config(
    store: Arc<CertStore>,
    clients: Option<Arc<ClientCa>>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match clients {
        Some(clients) => builder.with_client_cert_verifier(clients),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `--client-ca`: the CAs whose client certificates are accepted, re-read when the file
/// changes. The apiserver presents a client certificate to a webhook when its
/// AdmissionConfiguration gives a kubeconfig for the webhook's host; requiring one means that
/// pods, which reach the webhook's port too, cannot post reviews at all.
pub struct ClientCa(Arc<Reloading<Arc<dyn ClientCertVerifier>, TlsError>>);

impl fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ClientCa").field(&self.0).finish()
    }
}

impl ClientCa {
    /// Loads the CA bundle at `path`.
    pub fn from_file(path: PathBuf) -> Result<Self, ReloadError<TlsError>> {
        let shown = path.clone();
        Reloading::load("client CA", vec![path], MAX_PEM_BYTES, move |pem| {
            client_verifier(&pem[0], &shown)
        })
        .map(|r| ClientCa(Arc::new(r)))
    }

    /// Polls the file every `interval` until `shutdown` resolves.
    pub async fn watch(&self, interval: Duration, shutdown: impl Future<Output = ()>) {
        self.0.clone().watch(interval, shutdown).await
    }

    /// Re-reads the file when it changed; a bundle that does not load keeps the old one.
    pub fn reload_if_changed(&self) -> Result<bool, ReloadError<TlsError>> {
        self.0.reload_if_changed()
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::clone(&self.0.current())
    }
}

/// A verifier requiring a client certificate that chains to one of the CAs in `pem`.
fn client_verifier(pem: &[u8], path: &Path) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| TlsError::BadCertificate {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        roots.add(cert).map_err(|e| TlsError::BadCertificate {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::BadCertificate {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// Each handshake asks the CA bundle in force at that moment. No CA names are sent as hints
/// (they would have to outlive a reload); clients with one certificate, like the apiserver,
/// present it anyway.
impl ClientCertVerifier for ClientCa {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// A throw-away CA and a serving certificate signed by it, for `pullgate serve` without
/// `--tls-cert`. Never for production: the CA key is discarded.
pub struct DevCertificate {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for DevCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCertificate").finish_non_exhaustive()
    }
}

impl DevCertificate {
    /// Valid for `hosts` (DNS names or IP addresses) for 30 days.
    pub fn generate(hosts: &[String]) -> Result<Self, TlsError> {
        let now = time::OffsetDateTime::now_utc();
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "pullgate development CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_before = now - time::Duration::hours(1);
        ca.not_after = now + time::Duration::days(30);
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(hosts.to_vec())?;
        leaf.distinguished_name.push(DnType::CommonName, "pullgate");
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.not_before = now - time::Duration::hours(1);
        leaf.not_after = now + time::Duration::days(30);
        let cert = leaf.signed_by(&key, &issuer)?;
        Ok(DevCertificate {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let files = CertFiles {
            cert: "<development certificate>".into(),
            key: "<development key>".into(),
        };
        certified_key(self.cert_pem.as_bytes(), self.key_pem.as_bytes(), &files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &std::path::Path, name: &str, dev: &DevCertificate) -> CertFiles {
        let files = CertFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, &dev.cert_pem).unwrap();
        std::fs::write(&files.key, &dev.key_pem).unwrap();
        files
    }

    #[test]
    fn a_pair_loads_and_a_mismatched_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = DevCertificate::generate(&["localhost".into()]).unwrap();
        let b = DevCertificate::generate(&["localhost".into()]).unwrap();
        let files = write_pair(dir.path(), "a", &a);
        assert!(CertStore::from_files(files.clone()).is_ok());
        std::fs::write(&files.key, &b.key_pem).unwrap();
        let err = CertStore::from_files(files.clone()).unwrap_err();
        assert!(
            matches!(err, ReloadError::Invalid(TlsError::Mismatch { .. })),
            "{err}"
        );
        std::fs::write(&files.key, "not a key").unwrap();
        let err = CertStore::from_files(files).unwrap_err();
        assert!(
            matches!(err, ReloadError::Invalid(TlsError::BadKey { .. })),
            "{err}"
        );
        assert!(!format!("{err:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn an_empty_or_missing_certificate_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let a = DevCertificate::generate(&["localhost".into()]).unwrap();
        let files = write_pair(dir.path(), "a", &a);
        std::fs::write(&files.cert, "").unwrap();
        assert!(matches!(
            CertStore::from_files(files.clone()).unwrap_err(),
            ReloadError::Invalid(TlsError::NoCertificate { .. })
        ));
        std::fs::remove_file(&files.cert).unwrap();
        assert!(matches!(
            CertStore::from_files(files).unwrap_err(),
            ReloadError::Read(_)
        ));
    }

    #[test]
    fn reload_swaps_only_for_a_good_new_pair() {
        let dir = tempfile::tempdir().unwrap();
        let a = DevCertificate::generate(&["localhost".into()]).unwrap();
        let b = DevCertificate::generate(&["localhost".into()]).unwrap();
        let files = write_pair(dir.path(), "live", &a);
        let store = CertStore::from_files(files.clone()).unwrap();
        let first = store.current().cert[0].clone();
        assert!(!store.reload_if_changed().unwrap());

        // Half an update (new cert, old key): refused, the old pair keeps serving.
        std::fs::write(&files.cert, &b.cert_pem).unwrap();
        assert!(store.reload_if_changed().is_err());
        assert_eq!(store.current().cert[0], first);

        std::fs::write(&files.key, &b.key_pem).unwrap();
        assert!(store.reload_if_changed().unwrap());
        assert_ne!(store.current().cert[0], first);
    }

    #[test]
    fn server_config_offers_h2_and_http1() {
        let dev = DevCertificate::generate(&["127.0.0.1".into()]).unwrap();
        let store = Arc::new(CertStore::fixed(dev.certified_key().unwrap()));
        let config = server_config(store, None).unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }
}
