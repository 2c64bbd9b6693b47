//! `pullgate serve` as its own process, started the way a user starts it (the real binary,
//! its flags, a development certificate), optionally under a lowered open-files limit, with
//! its memory, descriptors and CPU time read from `/proc`. Attacks are measured against it:
//! in the test process the server would share its runtime, descriptors and memory with the
//! attacker.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

pub struct ServerProcess {
    child: Child,
    pub webhook: SocketAddr,
    pub admin: SocketAddr,
    /// The development CA the server wrote, for clients that must trust it.
    pub ca_pem: String,
    pub client: reqwest::Client,
    log: Arc<Mutex<String>>,
    _dir: TempDir,
}

/// Raises this process's soft open-files limit to its hard limit: an attack from the test
/// holds thousands of sockets.
pub fn raise_own_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).expect("raise the open-files limit")
}

impl ServerProcess {
    /// Starts `pullgate serve` on 127.0.0.1 (ports chosen by the system) with no Kubernetes
    /// API and no shutdown delay, plus `args`; with `fd_limit`, under `ulimit -n` of that.
    pub fn start(fd_limit: Option<u64>, args: &[&str]) -> ServerProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_path: PathBuf = dir.path().join("dev-ca.pem");
        let mut command = Command::new("sh");
        let limit = fd_limit.map_or_else(String::new, |n| format!("ulimit -n {n} && "));
        command
            .arg("-c")
            .arg(format!("{limit}exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_pullgate"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--no-kube",
                "--shutdown-delay",
                "0s",
                "--dev-ca-out",
            ])
            .arg(&ca_path)
            .args(args)
            .env("PULLGATE_LOG", "info")
            .env_remove("PULLGATE_POLICY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start pullgate serve");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.strip_prefix("pullgate: webhook on https://") {
                        let _ = tx.send(rest.to_owned());
                    }
                    let mut log = log.lock().unwrap();
                    // The last megabyte is enough to see what went wrong.
                    if log.len() > 1 << 20 {
                        log.drain(..1 << 19);
                    }
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let Ok(announced) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            panic!(
                "pullgate serve did not start:\n{}",
                log.lock().unwrap().as_str()
            );
        };
        // "127.0.0.1:PORT/validate, admin on http://127.0.0.1:PORT/"
        let (webhook, admin) = announced
            .split_once("/validate, admin on http://")
            .expect("the announcement names both addresses");
        let webhook: SocketAddr = webhook.parse().expect("webhook address");
        let admin: SocketAddr = admin.trim_end_matches('/').parse().expect("admin address");
        let ca_pem = std::fs::read_to_string(&ca_path).expect("the development CA is written");
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(client_tls(&ca_pem))
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        ServerProcess {
            child,
            webhook,
            admin,
            ca_pem,
            client,
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Resident memory now, in MiB.
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the server runs");
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kib / 1024.0
    }

    /// Descriptors open now.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// CPU time used so far (user and system).
    pub fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("the server runs");
        // The command name may hold spaces; the fields after its closing parenthesis do not.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .expect("stat has a command")
            .1
            .split_whitespace()
            .collect();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the command.
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // USER_HZ is 100 on every Linux this runs on.
        Duration::from_millis(ticks * 10)
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.webhook)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// A client like [`ServerProcess::client`] whose connections come from `source` (a
    /// loopback address such as 127.0.0.2): another pod, as the server counts.
    pub fn client_from(&self, source: std::net::IpAddr) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_backend_preconfigured(client_tls(&self.ca_pem))
            .local_address(source)
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    /// POSTs an AdmissionReview; the `response` and how long the answer took.
    pub async fn review(&self, body: Vec<u8>) -> (Value, Duration) {
        self.review_with(&self.client, body).await
    }

    /// [`ServerProcess::review`] through `client`.
    pub async fn review_with(&self, client: &reqwest::Client, body: Vec<u8>) -> (Value, Duration) {
        let started = Instant::now();
        let resp = client
            .post(self.url("/validate"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("the webhook answers: {e:?}\n{}", self.log()));
        assert_eq!(resp.status(), 200, "the webhook always answers 200");
        let bytes = resp.bytes().await.expect("a body");
        let review: Value = serde_json::from_slice(&bytes).expect("an AdmissionReview");
        (review["response"].clone(), started.elapsed())
    }

    /// The metrics exposition.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .unwrap()
    }
}

/// A TLS client configuration trusting only the CA in `ca_pem`, offering HTTP/2 and HTTP/1.1.
pub fn client_tls(ca_pem: &str) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("a PEM certificate")).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// The value of a metric line starting with `series` (name and labels), if it is there.
pub fn metric(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
