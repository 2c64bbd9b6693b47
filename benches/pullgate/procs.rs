//! The processes the benchmark measures: `pullgate serve` (the release binary, its own
//! process, as in a cluster), and the one-shot commands `pullgate check`, `skopeo inspect` and
//! `skopeo copy`, each timed from spawn to exit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::Pki;

/// The pullgate binary: `PULLGATE_BIN`, or the one cargo built for this benchmark (the
/// release profile under `cargo bench`).
pub fn pullgate_bin() -> PathBuf {
    std::env::var_os("PULLGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pullgate")))
}

pub const USER: &str = "bench";
pub const PASSWORD: &str = "bench-Pw7Kq2";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A docker config.json with the benchmark user's credentials for each of `hosts`.
pub fn write_docker_config(dir: &Path, hosts: &[String]) -> PathBuf {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let auths: serde_json::Map<String, Value> = hosts
        .iter()
        .map(|h| (h.clone(), json!({ "auth": auth })))
        .collect();
    let path = dir.join(format!("docker-config-{}.json", free_port()));
    std::fs::write(&path, json!({ "auths": auths }).to_string()).expect("write docker config");
    path
}

/// Every registry of the benchmark is on 127.0.0.1. A `pullgate serve` with an egress guard
/// refuses loopback unless allowed, as for a node-local registry proxy.
fn loopback_allowed() -> &'static [&'static str] {
    static HELP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let guarded = HELP.get_or_init(|| {
        Command::new(pullgate_bin())
            .args(["serve", "--help"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--egress-allow"))
    });
    if *guarded {
        &["--egress-allow", "127.0.0.0/8"]
    } else {
        &[]
    }
}

/// A running `pullgate serve`.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl Server {
    /// Starts `pullgate serve` on 127.0.0.1 with a certificate from `pki`, trusting `pki`
    /// for registries, without a Kubernetes API, node credentials from `docker_config`, and
    /// `extra` flags; waits until `/readyz` answers.
    pub async fn start(
        dir: &Path,
        pki: &Pki,
        docker_config: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Server> {
        let (cert, key) = pki.issue(&["127.0.0.1", "localhost"]);
        let tag = free_port();
        let cert_path = dir.join(format!("serve-{tag}.crt"));
        let key_path = dir.join(format!("serve-{tag}-key.pem"));
        std::fs::write(&cert_path, cert)?;
        std::fs::write(&key_path, key)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = match std::env::var_os("PULLGATE_BENCH_SERVER_LOG") {
            Some(_) => std::env::temp_dir().join(format!("pullgate-bench-serve-{tag}.log")),
            None => dir.join(format!("serve-{tag}.log")),
        };
        let mut command = Command::new(pullgate_bin());
        command
            .arg("serve")
            .args(["--listen", &addr.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .arg("--tls-cert")
            .arg(&cert_path)
            .arg("--tls-key")
            .arg(&key_path)
            .arg("--ca-file")
            .arg(pki.ca_path())
            .arg("--docker-config")
            .arg(docker_config)
            .args(["--no-kube", "--shutdown-delay", "0s"])
            .args(loopback_allowed())
            .args(extra)
            .stdin(Stdio::null());
        let file = std::fs::File::create(&log)?;
        command.stdout(file.try_clone()?).stderr(file);
        clean_env(&mut command, "PULLGATE_");
        // PULLGATE_BENCH_SERVER_LOG=debug keeps the servers' logs (their paths are printed).
        let keep_log = std::env::var("PULLGATE_BENCH_SERVER_LOG").ok();
        if let Some(level) = &keep_log {
            command.env("PULLGATE_LOG", level);
            println!("  pullgate serve log: {}", log.display());
        }
        let child = command
            .spawn()
            .with_context(|| format!("spawn {}", pullgate_bin().display()))?;
        let mut server = Server {
            child,
            addr,
            admin,
            log,
        };
        let http = reqwest::Client::builder().no_proxy().build()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("pullgate serve exited with {status}:\n{}", server.logs());
            }
            let ready = http
                .get(format!("http://{admin}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready && tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("pullgate serve not ready after 20 s:\n{}", server.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub async fn metrics(&self) -> String {
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        match http
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The value of one sample line of the exposition (`name{labels}`), 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }

    pub fn logs(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("PULLGATE_BENCH_SERVER_LOG").is_none() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Total CPU time (user + system) process `pid` has used.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (in parentheses), utime and stime are the 12th and 13th
    // fields, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

pub fn metric_value(exposition: &str, sample: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Removes inherited variables starting with `prefix`, which would silently change flags.
fn clean_env(command: &mut Command, prefix: &str) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with(prefix) {
            command.env_remove(name);
        }
    }
}

/// Runs `command` to completion off the async runtime (the in-process servers it talks to
/// keep running) and returns its wall time from spawn to exit.
pub async fn timed(mut command: Command) -> anyhow::Result<(Duration, Output)> {
    command.stdin(Stdio::null());
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let output = command.output().context("spawn")?;
        Ok((started.elapsed(), output))
    })
    .await?
}

/// One `pullgate check` of `reference` with the benchmark user's credentials.
pub struct Check {
    pub wall: Duration,
    pub verdict: String,
    pub requests: u64,
    /// Warm-ups sent (`GET /v2/` opening connections ahead of need), not in `requests`.
    pub warmups: u64,
    pub elapsed_ms: u64,
}

pub async fn pullgate_check(pki: &Pki, reference: &str) -> anyhow::Result<Check> {
    let mut command = Command::new(pullgate_bin());
    clean_env(&mut command, "PULLGATE_");
    command
        .args(["check", "--json", "--timeout", "60s", "--ca-file"])
        .arg(pki.ca_path())
        .arg(reference)
        .env("PULLGATE_CREDS", format!("{USER}:{PASSWORD}"));
    let (wall, output) = timed(command).await?;
    let reports: Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "pullgate check output: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    let report = &reports[0];
    let check = Check {
        wall,
        verdict: report["verdict"].as_str().unwrap_or_default().to_owned(),
        requests: report["requests"].as_u64().unwrap_or(0),
        warmups: report["warmups"].as_u64().unwrap_or(0),
        elapsed_ms: report["elapsed_ms"].as_u64().unwrap_or(0),
    };
    if check.verdict != "pullable" {
        bail!("pullgate check {reference}: {report:#}");
    }
    Ok(check)
}

/// Every way skopeo is asked.
pub const SKOPEO: [Skopeo; 3] = [Skopeo::InspectRaw, Skopeo::Inspect, Skopeo::Copy];

/// What skopeo is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skopeo {
    /// `skopeo inspect --raw`: the manifest (the index for a multi-arch image) only.
    InspectRaw,
    /// `skopeo inspect`: manifest, platform manifest and config blob, no layers.
    Inspect,
    /// `skopeo copy docker://… dir:…`: a real pull of the linux/amd64 image.
    Copy,
}

impl Skopeo {
    pub fn label(self) -> &'static str {
        match self {
            Skopeo::InspectRaw => "skopeo inspect --raw",
            Skopeo::Inspect => "skopeo inspect",
            Skopeo::Copy => "skopeo copy (to dir:)",
        }
    }
}

/// skopeo's trust of the test CA: `--cert-dir` for the registry, `SSL_CERT_FILE` for the
/// token realm and CDN hosts it reaches through the same Go TLS stack.
pub struct SkopeoEnv {
    pub cert_dir: PathBuf,
    pub ca_file: PathBuf,
    pub home: PathBuf,
    pub scratch: PathBuf,
}

impl SkopeoEnv {
    pub fn new(dir: &Path, pki: &Pki) -> SkopeoEnv {
        let cert_dir = dir.join("skopeo-certs");
        let home = dir.join("skopeo-home");
        let scratch = dir.join("skopeo-scratch");
        for d in [&cert_dir, &home, &scratch] {
            std::fs::create_dir_all(d).expect("create skopeo dirs");
        }
        std::fs::write(cert_dir.join("ca.crt"), pki.ca_pem()).expect("write ca.crt");
        SkopeoEnv {
            cert_dir,
            ca_file: pki.ca_path().to_path_buf(),
            home,
            scratch,
        }
    }

    pub async fn run(&self, what: Skopeo, reference: &str) -> anyhow::Result<Duration> {
        let creds = format!("{USER}:{PASSWORD}");
        let mut command = Command::new("skopeo");
        let target = self.scratch.join(format!("copy-{}", free_port()));
        match what {
            Skopeo::InspectRaw | Skopeo::Inspect => {
                command.arg("inspect");
                if what == Skopeo::InspectRaw {
                    command.arg("--raw");
                }
                command
                    .arg("--cert-dir")
                    .arg(&self.cert_dir)
                    .args(["--creds", &creds])
                    .arg(format!("docker://{reference}"));
            }
            Skopeo::Copy => {
                command
                    .args(["copy", "--quiet", "--insecure-policy", "--src-cert-dir"])
                    .arg(&self.cert_dir)
                    .args(["--src-creds", &creds])
                    .arg(format!("docker://{reference}"))
                    .arg(format!("dir:{}", target.display()));
            }
        }
        command
            .env("SSL_CERT_FILE", &self.ca_file)
            .env("HOME", &self.home)
            .env("XDG_RUNTIME_DIR", &self.home)
            .env_remove("REGISTRY_AUTH_FILE");
        let (wall, output) = timed(command).await?;
        let _ = std::fs::remove_dir_all(&target);
        if !output.status.success() {
            bail!(
                "{} {reference} failed: {}",
                what.label(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(wall)
    }
}

/// The first line of `program --version`.
pub fn version(program: &Path, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| "not found".to_owned())
}

/// The median of `values` (which must not be empty).
pub fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}
