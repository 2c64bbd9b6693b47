//! A throw-away certificate authority so every TLS endpoint in a test (registries, token
//! servers, proxies, CDNs) is verified for real instead of with "accept invalid certs".

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tempfile::TempDir;

/// The HTTP versions a test server offers in ALPN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocols {
    /// `h2` and `http/1.1`, the client choosing, as most registries and CDNs do.
    #[default]
    Http2AndHttp1,
    /// `http/1.1` only, as nginx without `http2`, Nexus and older Harbor setups.
    Http1Only,
}

impl Protocols {
    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Protocols::Http2AndHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Protocols::Http1Only => vec![b"http/1.1".to_vec()],
        }
    }
}

pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    ca_path: PathBuf,
    // Held only so the CA file outlives every process that was pointed at it.
    _dir: TempDir,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    pub fn new() -> Pki {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "pullgate test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign CA");
        let ca_pem = cert.pem();
        let ca_der = cert.der().clone();
        let dir = tempfile::tempdir().expect("CA tempdir");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, &ca_pem).expect("write CA PEM");
        Pki {
            issuer: Issuer::new(params, key),
            ca_pem,
            ca_der,
            ca_path,
            _dir: dir,
        }
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// A serving certificate for `hosts`; strings that parse as IP addresses become IP SANs
    /// (rcgen decides), everything else a DNS SAN. Returns `(cert_pem, key_pem)`.
    pub fn issue(&self, hosts: &[&str]) -> (String, String) {
        let (cert, key) = self.issue_raw(hosts);
        (cert.pem(), key.serialize_pem())
    }

    /// Like [`Pki::issue`] but in the DER form rustls wants, so in-process servers never
    /// round-trip through PEM.
    pub fn issue_der(&self, hosts: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let (cert, key) = self.issue_raw(hosts);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (cert.der().clone(), key)
    }

    fn issue_raw(&self, hosts: &[&str]) -> (rcgen::Certificate, KeyPair) {
        self.issue_with(hosts, |_| {})
    }

    fn issue_with(
        &self,
        hosts: &[&str],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().expect("generate leaf key");
        let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            hosts.first().copied().unwrap_or("pullgate test server"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        adjust(&mut params);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign leaf certificate");
        (cert, key)
    }

    /// Trusts only this CA, so a test that accidentally talks to something else fails loudly.
    pub fn client_tls(&self) -> ClientConfig {
        let mut config = self.client_builder().with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }

    /// A client configuration trusting only this CA, before its client authentication.
    fn client_builder(
        &self,
    ) -> rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca_der.clone())
            .expect("add CA to root store");
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
    }

    /// A client configuration that trusts this CA and presents a client certificate it
    /// signed for `name` (the apiserver's, when a webhook requires one).
    pub fn client_tls_with_cert(&self, name: &str) -> ClientConfig {
        let (cert, key) = self.issue_with(&[name], |params| {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        });
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = self
            .client_builder()
            .with_client_auth_cert(vec![cert.der().clone()], key)
            .expect("client certificate and key match");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }

    pub fn server_tls(&self, hosts: &[&str]) -> Arc<ServerConfig> {
        self.server_tls_speaking(hosts, Protocols::default())
    }

    /// [`Pki::server_tls`] offering only `protocols`.
    pub fn server_tls_speaking(&self, hosts: &[&str], protocols: Protocols) -> Arc<ServerConfig> {
        let (cert, key) = self.issue_der(hosts);
        server_config(cert, key, protocols)
    }

    /// A server certificate from this CA that expired yesterday.
    pub fn expired_server_tls(&self, hosts: &[&str]) -> Arc<ServerConfig> {
        let (cert, key) = self.issue_with(hosts, |params| {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        });
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        server_config(cert.der().clone(), key, Protocols::default())
    }
}

/// A server certificate that no CA signed.
pub fn self_signed_server_tls(hosts: &[&str]) -> Arc<ServerConfig> {
    let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    let certified = rcgen::generate_simple_self_signed(names).expect("self-signed certificate");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    server_config(certified.cert.der().clone(), key, Protocols::default())
}

fn server_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    protocols: Protocols,
) -> Arc<ServerConfig> {
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("server certificate and key match");
    config.alpn_protocols = protocols.alpn();
    Arc::new(config)
}

/// A reqwest client that trusts only the test CA. Redirects are not followed because the
/// tests need to see (and assert on) every hop themselves; environment proxies are ignored
/// because all traffic must stay on 127.0.0.1.
pub fn test_client(pki: &Pki) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(pki.client_tls())
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("build test reqwest client")
}
