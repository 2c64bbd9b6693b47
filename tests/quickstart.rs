//! The README's first minutes, with the real binary: `pullgate serve` with no flags on a machine
//! with no cluster, a second one started by mistake, a plain-HTTP request to the TLS port, a
//! request that is not an AdmissionReview, and a configuration that cannot work.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A `pullgate serve` child in an environment without any cluster: an empty HOME, no
/// KUBECONFIG, no in-cluster variables, its temporary directory its own.
struct Served {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn serve(home: &Path, args: &[&str]) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pullgate"))
        .arg("serve")
        .args(args)
        .env("HOME", home)
        .env("TMPDIR", home)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("PULLGATE_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let lines = stderr.clone();
    let pipe = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    });
    Served { child, stderr }
}

impl Served {
    /// Waits (at most a minute, for a loaded machine) for a stderr line containing `text`.
    fn wait_for(&self, text: &str) -> String {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(line) = self.stderr().iter().find(|l| l.contains(text)) {
                return line.clone();
            }
            assert!(
                Instant::now() < until,
                "no {text:?} in:\n{}",
                self.stderr().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// The webhook and admin addresses of the announcement.
    fn addresses(&self) -> (String, String) {
        let line = self.wait_for("webhook on https://");
        let webhook = line
            .split("https://")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        let admin = line
            .split("http://")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        (webhook.to_owned(), admin.to_owned())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const EPHEMERAL: [&str; 4] = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];

/// A raw HTTP/1.1 exchange on `addr`: the whole answer, read until the server closes.
fn exchange(addr: &str, request: &str) -> String {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    tcp.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    answer
}

#[test]
fn serve_with_no_flags_and_no_cluster_starts_quietly_and_answers() {
    let home = TempDir::new().unwrap();
    let first = serve(home.path(), &EPHEMERAL);
    let (webhook, admin) = first.addresses();
    // One INFO line says what happens without a cluster; nothing is a warning.
    first.wait_for("no kubeconfig and not in a cluster");
    let said = first.stderr();
    assert!(
        said.iter().all(|l| !l.contains("WARN")),
        "{}",
        said.join("\n")
    );
    // The CA is in the file named for the webhook's address, as the announcement says.
    let port = webhook.rsplit(':').next().unwrap();
    let ca_file = home
        .path()
        .join(format!("pullgate-dev-ca-127.0.0.1-{port}.pem"));
    let ca = std::fs::read_to_string(&ca_file).unwrap();
    assert!(ca.contains("BEGIN CERTIFICATE"));
    assert!(said.iter().any(|l| l.contains(ca_file.to_str().unwrap())));
    assert!(
        exchange(
            &admin,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .starts_with("HTTP/1.1 200")
    );

    // A second server on the same port fails on the port and leaves the first's CA alone.
    let files_before = std::fs::read_dir(home.path()).unwrap().count();
    let second = Command::new(env!("CARGO_BIN_EXE_pullgate"))
        .args([
            "serve",
            "--listen",
            &webhook,
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env("HOME", home.path())
        .env("TMPDIR", home.path())
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let second_err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{second_err}");
    assert!(second_err.contains("cannot listen on"), "{second_err}");
    assert!(!second_err.contains("webhook on"), "{second_err}");
    assert_eq!(std::fs::read_to_string(&ca_file).unwrap(), ca);
    assert_eq!(
        std::fs::read_dir(home.path()).unwrap().count(),
        files_before
    );

    // Plain HTTP on the TLS port is told to use https://.
    let answer = exchange(
        &webhook,
        "POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("use https://"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_request_is_logged_with_its_reason_and_no_content() {
    let home = TempDir::new().unwrap();
    let served = serve(home.path(), &EPHEMERAL);
    let (webhook, _) = served.addresses();
    let port = webhook.rsplit(':').next().unwrap();
    let ca = std::fs::read(
        home.path()
            .join(format!("pullgate-dev-ca-127.0.0.1-{port}.pem")),
    )
    .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let body = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","kind":"secret-looking-value"}}"#;
    let answer = client
        .post(format!("https://{webhook}/validate"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    let line = served.wait_for("invalid admission request");
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("not a valid"), "{line}");
    assert!(!line.contains("secret-looking-value"), "{line}");
}

#[test]
fn a_configuration_that_cannot_work_is_refused_before_anything_is_announced() {
    let home = TempDir::new().unwrap();
    for args in [
        vec!["--policy", "/nonexistent/policy.yaml"],
        vec!["--docker-config", "/nonexistent/config.json"],
        vec![
            "--tls-cert",
            "/nonexistent/tls.crt",
            "--tls-key",
            "/nonexistent/tls.key",
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_pullgate"))
            .arg("serve")
            .args(EPHEMERAL)
            .args(&args)
            .env("HOME", home.path())
            .env("TMPDIR", home.path())
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("/nonexistent/"), "{args:?}: {stderr}");
        assert!(!stderr.contains("webhook on"), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("development certificate"),
            "{args:?}: {stderr}"
        );
    }
}
