//! Real CNCF distribution (`docker-registry`, Debian's 2.8.2) processes, because the probe
//! must be judged against a registry's real answers rather than our idea of them.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rustls::ClientConnection;
use rustls::pki_types::ServerName;
use tempfile::TempDir;

use super::pki::{Pki, Protocols};

pub const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";

/// The realm distribution puts in its `Basic` challenge for [`RegistryAuth::Htpasswd`].
pub const HTPASSWD_REALM: &str = "pullgate-test";

#[derive(Clone, Debug)]
pub enum RegistryAuth {
    Anonymous,
    /// `(user, password)` pairs, written as a bcrypt htpasswd file.
    Htpasswd(Vec<(String, String)>),
    /// Distribution's token auth; [`super::TokenServer::registry_auth`] builds one.
    Token {
        realm: String,
        service: String,
        issuer: String,
        rootcertbundle_pem: String,
    },
}

impl RegistryAuth {
    pub fn htpasswd(users: &[(&str, &str)]) -> RegistryAuth {
        RegistryAuth::Htpasswd(
            users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
        )
    }
}

/// How a registry is started; [`Registry::start`] is the default.
#[derive(Clone, Debug)]
pub struct Options {
    pub auth: RegistryAuth,
    pub protocols: Protocols,
    /// No TLS at all.
    pub plain_http: bool,
    /// A pull-through cache of this upstream base URL.
    pub mirror_of: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            auth: RegistryAuth::Anonymous,
            protocols: Protocols::default(),
            plain_http: false,
            mirror_of: None,
        }
    }
}

/// Whether a plain-HTTP registry on `addr` answers `GET /v2/`.
fn plain_ping(addr: SocketAddr) -> bool {
    use std::io::Write as _;
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream
        .write_all(b"GET /v2/ HTTP/1.0\r\nHost: registry\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

pub struct Registry {
    pub addr: SocketAddr,
    pub storage: PathBuf,
    pub log_path: PathBuf,
    child: Child,
    plain_http: bool,
    // Holds config.yml, the TLS key pair, htpasswd/bundle files and the log.
    _dir: TempDir,
}

impl Registry {
    /// The `docker-registry` process, for the benchmark's CPU accounting.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `docker-registry serve` on a free 127.0.0.1 port with a certificate from `pki`,
    /// storing blobs under `storage`. Several registries may share one storage directory:
    /// tests push through an anonymous one and probe through an authenticated one.
    ///
    /// Blocking (it waits for the TLS port), but only for the ~100 ms the registry needs, so
    /// calling it from an async test is fine.
    pub fn start(pki: &Pki, storage: &Path, auth: RegistryAuth) -> anyhow::Result<Registry> {
        Self::start_speaking(pki, storage, auth, Protocols::default())
    }

    /// [`Registry::start`] offering only `protocols` in ALPN. distribution's own switch
    /// (`http.http2.disabled`) is used: `GODEBUG=http2server=0` does not do it, since the
    /// registry sets its TLS `NextProtos` itself, so it would still accept `h2` and then
    /// answer in HTTP/1.1.
    pub fn start_speaking(
        pki: &Pki,
        storage: &Path,
        auth: RegistryAuth,
        protocols: Protocols,
    ) -> anyhow::Result<Registry> {
        Self::start_with(
            pki,
            storage,
            Options {
                auth,
                protocols,
                ..Options::default()
            },
        )
    }

    /// A registry that speaks plain HTTP (no TLS at all), as in-cluster and lab registries do.
    pub fn start_plain_http(storage: &Path) -> anyhow::Result<Registry> {
        let unused = Pki::new();
        Self::start_with(
            &unused,
            storage,
            Options {
                plain_http: true,
                ..Options::default()
            },
        )
    }

    /// A pull-through cache of `upstream` (distribution's `proxy: remoteurl`): a real mirror,
    /// as a Harbor proxy-cache project or a `registry:2` mirror is. It fetches from the
    /// upstream on a miss, trusting `pki`'s CA.
    pub fn start_mirror_of(pki: &Pki, storage: &Path, upstream: &str) -> anyhow::Result<Registry> {
        Self::start_with(
            pki,
            storage,
            Options {
                mirror_of: Some(upstream.to_owned()),
                ..Options::default()
            },
        )
    }

    pub fn start_with(pki: &Pki, storage: &Path, options: Options) -> anyhow::Result<Registry> {
        let mut last_error = None;
        // The free port is found by binding and releasing it, so another process can grab
        // it in between; a fresh port on retry makes that race harmless.
        for _ in 0..3 {
            match Self::try_start(pki, storage, &options) {
                Ok(registry) => return Ok(registry),
                Err(StartError::PortTaken(e)) => last_error = Some(e),
                Err(StartError::Other(e)) => return Err(e),
            }
        }
        Err(last_error
            .expect("at least one attempt")
            .context("registry could not bind a port"))
    }

    fn try_start(pki: &Pki, storage: &Path, options: &Options) -> Result<Registry, StartError> {
        let (auth, protocols) = (&options.auth, options.protocols);
        let dir = tempfile::tempdir().context("registry tempdir")?;
        let (cert_pem, key_pem) = pki.issue(&["127.0.0.1", "localhost"]);
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, cert_pem).context("write registry cert")?;
        std::fs::write(&key_path, key_pem).context("write registry key")?;
        let auth_yaml = write_auth_files(dir.path(), auth)?;
        let log_path = dir.path().join("registry.log");
        let config_path = dir.path().join("config.yml");

        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").context("find free port")?;
            listener.local_addr().context("free port addr")?.port()
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let http2 = match protocols {
            Protocols::Http2AndHttp1 => "false",
            Protocols::Http1Only => "true",
        };
        let tls = if options.plain_http {
            String::new()
        } else {
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n  http2:\n    disabled: {http2}\n",
                yaml_str(&cert_path),
                yaml_str(&key_path)
            )
        };
        let proxy = match &options.mirror_of {
            Some(upstream) => format!("proxy:\n  remoteurl: {upstream}\n"),
            None => String::new(),
        };
        let config = format!(
            r#"version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
  secret: pullgate-test-secret
{tls}{proxy}validation:
  manifests:
    urls:
      allow:
        - '^https?://'
{auth_yaml}"#,
            storage = yaml_str(storage),
        );
        std::fs::write(&config_path, config).context("write config.yml")?;

        let log = File::create(&log_path).context("create registry log")?;
        let mut command = Command::new(REGISTRY_BINARY);
        // A mirror reaches its upstream over TLS signed by the test CA; Go reads extra roots
        // from SSL_CERT_FILE.
        command.env("SSL_CERT_FILE", pki.ca_path());
        command
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("dup log handle")?)
            .stderr(log);
        // distribution lets REGISTRY_* variables override any config key; an inherited one
        // would silently change what the test thinks it configured.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("REGISTRY_") {
                command.env_remove(name);
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("spawn {REGISTRY_BINARY}"))?;
        let mut registry = Registry {
            addr,
            storage: storage.to_path_buf(),
            log_path,
            child,
            plain_http: options.plain_http,
            _dir: dir,
        };
        registry.wait_ready(pki)?;
        Ok(registry)
    }

    fn wait_ready(&mut self, pki: &Pki) -> Result<(), StartError> {
        let tls = Arc::new(pki.client_tls());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().context("poll registry")? {
                let logs = self.logs();
                let err = anyhow::anyhow!("docker-registry exited with {status}; log:\n{logs}");
                return Err(if logs.contains("address already in use") {
                    StartError::PortTaken(err)
                } else {
                    StartError::Other(err)
                });
            }
            // A completed TLS handshake, not just an accepted TCP connection, proves the
            // registry loaded its certificate and is serving (plain HTTP: an answer to /v2/).
            let ready = if self.plain_http {
                plain_ping(self.addr)
            } else {
                tls_handshake(self.addr, tls.clone()).is_ok()
            };
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(StartError::Other(anyhow::anyhow!(
                    "docker-registry on {} not ready after 10 s; log:\n{}",
                    self.addr,
                    self.logs()
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.addr.port())
    }

    /// `https://127.0.0.1:PORT` (`http://` for a plain-HTTP one), without a trailing slash.
    pub fn base(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}", self.host())
    }

    /// Stops the registry (a mirror that is down); its port then refuses connections.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// Everything the registry logged so far (level warn), for assertion messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_string(&mut out);
        }
        out
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum StartError {
    PortTaken(anyhow::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> Self {
        StartError::Other(e)
    }
}

fn tls_handshake(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<()> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    tcp.set_read_timeout(Some(Duration::from_secs(1)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(1)))?;
    let name = ServerName::IpAddress(addr.ip().into());
    let mut conn = ClientConnection::new(tls, name)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    Ok(())
}

/// Writes whatever files the auth mode needs and returns its `auth:` YAML section.
fn write_auth_files(dir: &Path, auth: &RegistryAuth) -> anyhow::Result<String> {
    Ok(match auth {
        RegistryAuth::Anonymous => String::new(),
        RegistryAuth::Htpasswd(users) => {
            let mut file = String::new();
            for (user, password) in users {
                // Cost 4 is bcrypt's minimum: the registry verifies on every request and the
                // default cost would add ~50 ms each time. `$2y$` is what `htpasswd -B` writes.
                let hash = bcrypt::hash_with_result(password, 4)
                    .context("bcrypt")?
                    .format_for_version(bcrypt::Version::TwoY);
                writeln!(file, "{user}:{hash}").expect("write to String");
            }
            let path = dir.join("htpasswd");
            std::fs::write(&path, file).context("write htpasswd")?;
            format!(
                "auth:\n  htpasswd:\n    realm: {HTPASSWD_REALM}\n    path: {}\n",
                yaml_str(&path)
            )
        }
        RegistryAuth::Token {
            realm,
            service,
            issuer,
            rootcertbundle_pem,
        } => {
            let path = dir.join("token-bundle.pem");
            std::fs::write(&path, rootcertbundle_pem).context("write rootcertbundle")?;
            format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                yaml_str(realm),
                yaml_str(service),
                yaml_str(issuer),
                yaml_str(&path)
            )
        }
    })
}

/// JSON strings are valid YAML scalars, and quoting keeps odd tempdir paths literal.
fn yaml_str(value: impl AsRef<std::ffi::OsStr>) -> String {
    serde_json::to_string(&value.as_ref().to_string_lossy()).expect("serialize string")
}
