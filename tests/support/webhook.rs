//! pullgate's own server, started in-process through `pullgate::run` on 127.0.0.1, with a
//! client that trusts its certificate, and the AdmissionReview fixtures pointed at a test
//! registry.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pullgate::server::DevCertificate;
use pullgate::server::{Config, Listeners, TlsSource};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::pki::Pki;

pub struct Webhook {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), pullgate::server::ServerError>>>,
}

/// A config for tests: a serving certificate from `pki` for 127.0.0.1, trusts `pki` for
/// registries, no shutdown delay, short reloads. Tests that serve from files replace `tls`.
pub fn test_config(pki: &Pki) -> Config {
    let (cert_pem, key_pem) = pki.issue(&["127.0.0.1", "localhost"]);
    let mut config = Config {
        tls: TlsSource::Development(DevCertificate {
            ca_pem: pki.ca_pem().to_owned(),
            cert_pem,
            key_pem,
        }),
        ..Config::default()
    };
    config.registry.extra_roots = vec![pki.ca_der().clone()];
    // Every registry of the tests is on loopback, which the egress guard refuses by default.
    config.registry.egress.allow = vec!["127.0.0.0/8".parse().unwrap()];
    config.shutdown_delay = Duration::ZERO;
    config.reload_interval = Duration::from_millis(100);
    config
}

impl Webhook {
    /// Starts the server with `config` on fresh 127.0.0.1 ports; `pki` must have issued its
    /// serving certificate, so the returned client trusts it.
    pub async fn start(config: Config, pki: &Pki) -> Webhook {
        let webhook = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (webhook.local_addr().unwrap(), admin.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(pullgate::run(
            config,
            Listeners { webhook, admin },
            async move {
                let _ = stopped.await;
            },
        ));
        Webhook {
            addr,
            admin: admin_addr,
            client: super::pki::test_client(pki),
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin.port())
    }

    /// POSTs an AdmissionReview and returns the `response` object.
    pub async fn review(&self, review: &Value) -> Value {
        self.review_raw(serde_json::to_vec(review).unwrap(), "")
            .await
    }

    pub async fn review_raw(&self, body: Vec<u8>, query: &str) -> Value {
        let resp = self
            .client
            .post(self.url(&format!("/validate{query}")))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("webhook answers");
        assert_eq!(resp.status(), 200, "the webhook always answers 200");
        let bytes = resp.bytes().await.expect("a body");
        let body: Value = serde_json::from_slice(&bytes).expect("an AdmissionReview");
        assert_eq!(body["kind"], "AdmissionReview");
        body["response"].clone()
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Sends the shutdown signal and waits for `run` to return.
    pub async fn shutdown(&mut self) -> Result<(), pullgate::server::ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task
            .take()
            .expect("running")
            .await
            .expect("run does not panic")
    }

    /// Sends the shutdown signal without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub fn take_task(&mut self) -> JoinHandle<Result<(), pullgate::server::ServerError>> {
        self.task.take().expect("running")
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// An AdmissionReview fixture from `tests/fixtures/admission/`, with every
/// `registry.example.com` image moved to `registry` (a `127.0.0.1:PORT` host).
pub fn fixture(name: &str, registry: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/admission")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text.replace("registry.example.com", registry)).expect("fixture is JSON")
}

/// The deny message of an AdmissionResponse (empty when there is none).
pub fn message(response: &Value) -> String {
    response["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The warnings of an AdmissionResponse.
pub fn warnings(response: &Value) -> Vec<String> {
    response["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
