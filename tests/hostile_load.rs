//! Attacks on the webhook's resources, each as an attacker would run it: pods that can reach
//! the webhook's port, pod authors who write what they like into a spec, and registries that
//! answer as they like. The webhook fails open, so whatever stalls it or takes it past its
//! memory limit turns it off for the whole cluster. Each test holds the attack while an
//! ordinary review (or a health check) is timed, and checks the bound the attack runs into.
//!
//! The server runs as its own process (the real binary, `pullgate serve`) where the attack is
//! on descriptors, memory or CPU, so that they are its own and can be read from `/proc`.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The default review budget.
const BUDGET: Duration = Duration::from_secs(8);
/// What an answer may take beyond the budget on a loaded CI machine.
const MARGIN: Duration = Duration::from_secs(2);

fn message(response: &Value) -> String {
    response["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_lock_out_reviews_or_health_checks() {
    raise_own_fd_limit();
    // Deadlines longer than the test: here the caps must hold, not the timeouts.
    let server = ServerProcess::start(
        Some(1024),
        &["--request-header-timeout", "120s", "--idle-timeout", "120s"],
    );
    let tls = Arc::new(client_tls(&server.ca_pem));
    // 1,500 connections from ten source addresses, half of them sending the HTTP/2 preface:
    // more than the server's 1,024 descriptors.
    let mut held = Vec::new();
    for batch in 0..15 {
        let opened = join_all((0..100).map(|i| {
            let n = batch * 100 + i;
            let source = IpAddr::from([127, 0, 0, 2 + (n % 10) as u8]);
            idle_tls(source, server.webhook, tls.clone(), n % 2 == 0)
        }))
        .await;
        held.extend(opened.into_iter().flatten());
    }
    assert!(
        held.len() >= 348,
        "the attack got {} connections",
        held.len()
    );

    let asked = Instant::now();
    let healthz = tokio::time::timeout(
        Duration::from_secs(2),
        server.client.get(server.admin_url("/healthz")).send(),
    )
    .await;
    eprintln!(
        "measured: {} attack connections held, /healthz in {:?}",
        held.len(),
        asked.elapsed()
    );
    assert!(
        matches!(&healthz, Ok(Ok(r)) if r.status() == 200),
        "/healthz must answer within the liveness probe's 2 s: {healthz:?}\n{}",
        server.log()
    );
    let review = pod_with_spec("small-1", json!({"containers": []}));
    let answered = tokio::time::timeout(BUDGET + MARGIN, server.review(review)).await;
    let Ok((response, took)) = answered else {
        panic!("no answer to a review within the budget\n{}", server.log());
    };
    eprintln!("measured: a review in {took:?}");
    assert_eq!(response["allowed"], true, "{response}");
    assert!(took < BUDGET, "{took:?}");

    // Held idle, the connections cost no CPU: the accept loop does not spin.
    let before = server.cpu();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let spent = server.cpu() - before;
    eprintln!("measured: {spent:?} of CPU in 3 s with the connections held");
    assert!(spent < Duration::from_secs(1), "{spent:?} of CPU in 3 s");

    let metrics = server.metrics().await;
    let open = metric(&metrics, "pullgate_connections{listener=\"webhook\"}").unwrap();
    // The cap: 512, or what 1,024 descriptors leave for the webhook (348).
    assert!(open <= 348.0, "{open} connections open");
    let evicted = metric(
        &metrics,
        "pullgate_connections_closed_total{listener=\"webhook\",reason=\"evicted\"}",
    )
    .unwrap_or(0.0);
    eprintln!(
        "measured: {open} open, {evicted} evicted, {} descriptors",
        server.fds()
    );
    assert!(evicted >= 1000.0, "{evicted} evicted\n{metrics}");
    assert!(server.fds() < 1024 - 64, "{} descriptors", server.fds());
    drop(held);
}

/// Reads `stream` until the peer closes it; how long that took from `since`.
async fn closed_after(mut stream: impl tokio::io::AsyncRead + Unpin, since: Instant) -> Duration {
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server never closed the connection");
    since.elapsed()
}

fn alpn_only(pki: &Pki, protocol: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut config = pki.client_tls();
    config.alpn_protocols = vec![protocol.to_vec()];
    Arc::new(config)
}

async fn tls_to(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    TlsConnector::from(config).connect(name, tcp).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_closed_at_the_deadline_of_each_phase() {
    let pki = Pki::new();
    let mut config = test_config(&pki);
    let second = Duration::from_secs(1);
    config.connections.handshake_timeout = second;
    config.connections.request_header_timeout = second;
    config.connections.idle_timeout = second;
    let hook = Webhook::start(config, &pki).await;
    let within = |took: Duration, what: &str| {
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "{what}: closed after {took:?}"
        );
    };

    // TCP without a TLS handshake.
    let started = Instant::now();
    let tcp = TcpStream::connect(hook.addr).await.unwrap();
    within(closed_after(tcp, started).await, "no handshake");

    // A handshake, then nothing.
    let started = Instant::now();
    let tls = tls_to(hook.addr, alpn_only(&pki, b"h2")).await;
    within(closed_after(tls, started).await, "no request");

    // The HTTP/2 preface only.
    let started = Instant::now();
    let mut tls = tls_to(hook.addr, alpn_only(&pki, b"h2")).await;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    within(closed_after(tls, started).await, "HTTP/2 preface only");

    // Half a request's headers.
    let started = Instant::now();
    let mut tls = tls_to(hook.addr, alpn_only(&pki, b"http/1.1")).await;
    tls.write_all(b"POST /validate HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    within(closed_after(tls, started).await, "half the headers");

    // An HTTP/1.1 request answered, then the connection kept alive and idle.
    let mut tls = tls_to(hook.addr, alpn_only(&pki, b"http/1.1")).await;
    tls.write_all(b"GET /validate HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "an answer comes");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 405"), "{answer:?}");
    let started = Instant::now();
    within(closed_after(tls, started).await, "HTTP/1.1 keep-alive");

    // An HTTP/2 request answered, then the connection idle: GOAWAY, then closed.
    let tls = tls_to(hook.addr, alpn_only(&pki, b"h2")).await;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(conn);
    let request = http::Request::get(hook.url("/validate"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = send.send_request(request).await.unwrap();
    assert_eq!(response.status(), 405);
    drop(response);
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(ended.is_ok(), "the HTTP/2 connection is closed");
    within(started.elapsed(), "HTTP/2 idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_image_and_pull_secret_lists_do_not_delay_other_reviews() {
    let world = World::new();
    let app = world.push("team/app", "1", ImageSpec::new()).await;
    let server = ServerProcess::start(
        None,
        &[
            "--ca-file",
            world.pki.ca_path().to_str().unwrap(),
            "--egress-allow",
            "127.0.0.0/8",
        ],
    );
    // 70,000 distinct images (3 MiB) and 200,000 pull secret names (3.4 MiB): what fits in
    // the apiserver's 3 MiB request limit, give or take.
    let images: Vec<String> = (0..70_000).map(|i| format!("r.example/i{i}:1")).collect();
    let many_images = pod_with_spec("images", containers(&images));
    let secrets: Vec<Value> = (0..200_000)
        .map(|i| json!({"name": format!("s{i}")}))
        .collect();
    let many_secrets = pod_with_spec(
        "secrets",
        json!({"containers": [{"name": "c", "image": "r.example/a:1"}], "imagePullSecrets": secrets}),
    );
    // Four pods (127.0.0.2 … 127.0.0.5) send them; the apiserver (127.0.0.1) sends a small
    // review while they are read and parsed.
    let attackers: Vec<reqwest::Client> = (2..6)
        .map(|i| server.client_from(IpAddr::from([127, 0, 0, i])))
        .collect();
    let attacks = join_all([
        server.review_with(&attackers[0], many_images.clone()),
        server.review_with(&attackers[1], many_images),
        server.review_with(&attackers[2], many_secrets.clone()),
        server.review_with(&attackers[3], many_secrets),
    ]);
    let small = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let image = format!("{}/team/app:1", world.seed.host());
        server
            .review(pod_with_spec("small", containers(&[image])))
            .await
    };
    let (attacks, (small, small_took)) = tokio::join!(attacks, small);
    eprintln!(
        "measured: small review {small_took:?}; large ones {:?}",
        attacks.iter().map(|(_, t)| *t).collect::<Vec<_>>()
    );
    assert_eq!(small["allowed"], true, "{small}\n{}", server.log());
    assert!(
        small_took < BUDGET,
        "the small review took {small_took:?}\n{}",
        server.log()
    );
    assert!(small["warnings"].is_null(), "{small}");
    drop(app);
    for (response, took) in attacks {
        assert!(took < BUDGET + MARGIN, "{took:?}");
        assert_eq!(response["allowed"], false, "{response}");
        let says = message(&response);
        match response["uid"].as_str() {
            Some("images") => assert!(
                says.contains("lists 70000 images") && says.contains("at most 2048"),
                "{says}"
            ),
            Some("secrets") => assert!(
                says.contains("more than 64 distinct imagePullSecrets names"),
                "{says}"
            ),
            other => panic!("unexpected uid {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_whose_blobs_never_answer_cannot_take_every_socket() {
    raise_own_fd_limit();
    let world = World::new();
    world.push("team/app", "1", ImageSpec::new()).await;
    // The hostile registry: 64 ports on 127.0.0.2, each serving a manifest of 512 layers
    // whose blobs never answer, over HTTP/1.1.
    let ports = never_answering_registry(&world.pki, 64).await;
    let server = ServerProcess::start(
        Some(1024),
        &[
            "--ca-file",
            world.pki.ca_path().to_str().unwrap(),
            "--egress-allow",
            "127.0.0.0/8",
        ],
    );
    let hostile: Vec<String> = ports
        .iter()
        .map(|p| format!("{}/x/y:1", p.host()))
        .collect();
    let attack = server.review(pod_with_spec("hostile", containers(&hostile)));
    let watch = async {
        let (mut fds, mut rss) = (0usize, 0f64);
        let started = Instant::now();
        while started.elapsed() < BUDGET + MARGIN {
            fds = fds.max(server.fds());
            rss = rss.max(server.rss_mib());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (fds, rss)
    };
    let unrelated = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let image = format!("{}/team/app:1", world.seed.host());
        server
            .review(pod_with_spec("unrelated", containers(&[image])))
            .await
    };
    let ((hostile_answer, hostile_took), (answer, took), (fds, rss)) =
        tokio::join!(attack, unrelated, watch);
    eprintln!(
        "measured: hostile review {hostile_took:?}, unrelated review {took:?}, peak {fds} descriptors, peak {rss:.0} MiB"
    );
    assert!(hostile_took < BUDGET + MARGIN, "{hostile_took:?}");
    assert_eq!(
        hostile_answer["allowed"], true,
        "an outage only warns: {hostile_answer}"
    );
    assert_eq!(answer["allowed"], true, "{answer}\n{}", server.log());
    assert!(answer["warnings"].is_null(), "{answer}\n{}", server.log());
    assert!(took < BUDGET, "{took:?}");
    // The hostile host gets at most its 32 connections, whatever its ports.
    assert!(fds < 300, "{fds} descriptors at the peak");
    assert!(rss < 200.0, "{rss:.0} MiB at the peak");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_tokens_and_platform_lists_do_not_grow_memory() {
    let pki = Pki::new();
    let registry = bloating_registry(&pki).await;
    let server = ServerProcess::start(
        None,
        &[
            "--ca-file",
            pki.ca_path().to_str().unwrap(),
            "--egress-allow",
            "127.0.0.0/8",
            "--refusal-ttl",
            "3s",
            "--cache-bytes",
            "8MiB",
        ],
    );
    let warm = pod_with_spec(
        "warm",
        containers(&[format!("{}/tok/warm:1", registry.host())]),
    );
    server.review(warm).await;
    let baseline = server.rss_mib();
    let mut peak = baseline;
    // 2,000 tokens of 250 KB (half a gigabyte if they were kept), then 5,000 images whose
    // index names 1,024 platforms.
    for (repo, count) in [("tok", 2_000), ("idx", 5_000)] {
        for batch in 0..count / 250 {
            let images: Vec<String> = (0..250)
                .map(|i| format!("{}/{repo}/r{batch}-{i}:1", registry.host()))
                .collect();
            let (response, took) = server
                .review(pod_with_spec("bloat", containers(&images)))
                .await;
            assert!(took < BUDGET + MARGIN, "{took:?}");
            assert_eq!(response["allowed"], false, "{response}");
            peak = peak.max(server.rss_mib());
        }
    }
    let metrics = server.metrics().await;
    let cache_bytes = metric(&metrics, "pullgate_verdict_cache_bytes").unwrap();
    eprintln!(
        "measured: RSS {baseline:.0} MiB before, {peak:.0} MiB at the peak; cache {cache_bytes} bytes"
    );
    assert!(cache_bytes <= 8.0 * 1024.0 * 1024.0, "{cache_bytes}");
    assert!(
        peak - baseline < 64.0,
        "RSS grew from {baseline:.0} MiB to {peak:.0} MiB"
    );
    // The refusals expire after 3 s and are swept, not only hidden.
    let started = Instant::now();
    loop {
        let metrics = server.metrics().await;
        let entries = metric(&metrics, "pullgate_verdict_cache_entries").unwrap();
        if entries == 0.0 {
            eprintln!(
                "measured: swept {:?} after the last refusal",
                started.elapsed()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{entries} entries left 15 s after their lifetime"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_hosts_from_pod_specs_do_not_add_metric_series_without_bound() {
    let pki = Pki::new();
    let hook = Webhook::start(test_config(&pki), &pki).await;
    // 250 hosts (127.0.0.1 … 127.0.0.250), each refusing connections on port 1.
    let images: Vec<String> = (1..=250)
        .map(|i| format!("127.0.0.{i}:1/team/app:1"))
        .collect();
    let review: Value =
        serde_json::from_slice(&pod_with_spec("hosts", containers(&images))).unwrap();
    let response = hook.review(&review).await;
    assert_eq!(response["allowed"], true, "connection refused only warns");
    let metrics = hook.metrics().await;
    let hosts: std::collections::HashSet<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("pullgate_registry_requests_total{"))
        .filter_map(|l| l.split("host=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        hosts.len(),
        pullgate::metrics::MAX_HOST_LABELS + 1,
        "{hosts:?}"
    );
    assert!(hosts.contains("other"));
    // No label anywhere carries an image reference.
    assert!(!metrics.contains("team/app"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_clients_with_its_certificates_are_served() {
    let pki = Pki::new();
    let mut config = test_config(&pki);
    config.client_ca = Some(pki.ca_path().to_owned());
    let hook = Webhook::start(config, &pki).await;
    let review: Value =
        serde_json::from_slice(&pod_with_spec("ca", json!({"containers": []}))).unwrap();

    let body = serde_json::to_vec(&review).unwrap();
    let anonymous = hook
        .client
        .post(hook.url("/validate"))
        .body(body.clone())
        .send()
        .await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate gets no answer"
    );

    let apiserver = reqwest::Client::builder()
        .tls_backend_preconfigured(pki.client_tls_with_cert("kube-apiserver"))
        .no_proxy()
        .build()
        .unwrap();
    let answer = apiserver
        .post(hook.url("/validate"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .expect("the apiserver's certificate is accepted")
        .bytes()
        .await
        .unwrap();
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["response"]["allowed"], true, "{answer}");

    // A certificate from another CA is refused too.
    let stranger = Pki::new();
    let other = reqwest::Client::builder()
        .tls_backend_preconfigured({
            let mut config = stranger.client_tls_with_cert("mallory");
            // Trust the webhook's CA, present the stranger's certificate.
            let mut roots = rustls::RootCertStore::empty();
            roots.add(pki.ca_der().clone()).unwrap();
            config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_cert_resolver(config.client_auth_cert_resolver.clone());
            config
        })
        .no_proxy()
        .build()
        .unwrap();
    let refused = other.post(hook.url("/validate")).body(body).send().await;
    assert!(refused.is_err(), "a certificate of another CA is refused");
}
