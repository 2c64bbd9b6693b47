//! The webhook end to end: `pullgate::run` over real TLS, real AdmissionReview fixtures, the
//! real registry behind it (with a policy proxy for refusals and faults), and the stand-in API
//! server for pull secrets.

mod support;

use std::time::{Duration, Instant};

use pullgate::server::CertFiles;
use pullgate::server::{PolicySource, TlsSource};
use serde_json::{Value, json};
use support::*;

const USER: &str = "alice";
const PASSWORD: &str = "s3cret-Hq7Zt2";

/// The images of `pod-create.json` (pinned to arm64 by its nodeSelector), pushed.
async fn push_pod_images(w: &World) -> PushedImage {
    let arm = || ImageSpec::new().with_platform_spec(PlatformSpec::linux_arm64());
    w.push("team/migrate", "2.3", arm()).await;
    w.push("ml/models", "2026.03", arm()).await;
    w.push("team/app", "1.0", arm().with_layers(&[300, 400]))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_layer_denies_the_pod_with_the_registrys_own_words() {
    let w = World::new();
    let app = push_pod_images(&w).await;
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    let layer = app.layer_digests[1].clone();
    proxy.rule(Rule::new(
        None,
        &format!("/blobs/{layer}"),
        Action::denied("current image with 3 critical vulnerabilities cannot be pulled"),
    ));
    let hook = Webhook::start(test_config(&w.pki), &w.pki).await;
    let review = fixture("pod-create.json", &proxy.host());
    let response = hook.review(&review).await;

    assert_eq!(response["uid"], review["request"]["uid"]);
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 403);
    let text = message(&response);
    let short = &layer.split(':').nth(1).unwrap()[..12];
    for expected in [
        "container \"app\"",
        &format!("{}/team/app:1.0", proxy.host()),
        "blocked",
        short,
        "current image with 3 critical vulnerabilities cannot be pulled",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    // The other images (init container, image volume) pulled fine and are not blamed, and
    // the `Never` container was not probed at all.
    assert!(
        !text.contains("migrate") && !text.contains("models"),
        "{text}"
    );
    assert_eq!(proxy.count("cache-warmer"), 0);
    assert_eq!(response["auditAnnotations"]["decision"], "deny");

    // A server dry-run (kubectl apply --dry-run=server) gets exactly the same answer.
    let mut dry = review.clone();
    dry["request"]["dryRun"] = json!(true);
    dry["request"]["uid"] = json!("0d9b6f0e-dry-run");
    let dry_response = hook.review(&dry).await;
    assert_eq!(dry_response["uid"], "0d9b6f0e-dry-run");
    for field in ["allowed", "status", "warnings", "auditAnnotations"] {
        assert_eq!(dry_response[field], response[field], "{field}");
    }

    // Lift the policy: once the refusal's cache lifetime is over... a fresh server shows the
    // pod allowed with no warnings.
    proxy.clear_rules();
    let fresh = Webhook::start(test_config(&w.pki), &w.pki).await;
    let response = fresh.review(&review).await;
    assert_eq!(response["allowed"], true, "{response:#}");
    assert_eq!(warnings(&response), Vec::<String>::new());
    assert!(
        fresh
            .metrics()
            .await
            .contains("pullgate_reviews_total{decision=\"allow\",kind=\"Pod\"} 1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_namespaces_secret_never_vouches_for_another() {
    let w = World::new();
    w.push("team/api", "3.2.1", ImageSpec::new()).await;
    let registry = w.registry(RegistryAuth::htpasswd(&[(USER, PASSWORD)]));
    let api = ApiServer::start(&w.pki).await;
    api.put_registry_secret("team-a", "regcred", &registry.host(), USER, PASSWORD);
    api.put_service_account("team-a", "default", &["regcred"]);
    api.put_service_account("team-b", "default", &[]);
    let mut config = test_config(&w.pki);
    config.kube = Some(api.client());
    let hook = Webhook::start(config, &w.pki).await;
    let in_namespace = |ns: &str| {
        let mut review = fixture("deployment.json", &registry.host());
        review["request"]["namespace"] = json!(ns);
        review["request"]["object"]["metadata"]["namespace"] = json!(ns);
        review
    };
    // B first, then A, then B again: neither order lets B borrow A's verdict.
    for (ns, allowed) in [("team-b", false), ("team-a", true), ("team-b", false)] {
        let response = hook.review(&in_namespace(ns)).await;
        assert_eq!(response["allowed"], allowed, "{ns}: {response:#}");
        if !allowed {
            assert!(message(&response).contains("unauthorized"), "{response:#}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_identical_reviews_makes_one_probe() {
    let w = World::new();
    w.push(
        "team/api",
        "3.2.1",
        ImageSpec::new().with_layers(&[100, 200]),
    )
    .await;
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    // Slow manifests keep the whole burst waiting on one probe.
    proxy.rule(Rule::new(
        None,
        "/manifests/",
        Action::Delay(Duration::from_millis(300)),
    ));
    let hook = Webhook::start(test_config(&w.pki), &w.pki).await;
    // One review of an image not in the burst first: the client then has its HTTP/2
    // connection, and the burst is 300 streams on it, as the apiserver's would be (a cold
    // client dials a connection for each request in flight, past the per-source cap).
    let other = fixture("pod-dry-run.json", "127.0.0.1:1");
    hook.review(&other).await;
    let review = fixture("deployment.json", &proxy.host());
    let burst = (0..300).map(|_| hook.review(&review));
    let responses = futures_util::future::join_all(burst).await;
    assert!(responses.iter().all(|r| r["allowed"] == true));
    assert_eq!(
        proxy.count("/manifests/"),
        1,
        "{:?}",
        proxy.requests().len()
    );
    assert_eq!(proxy.count("/blobs/"), 3);
    let metrics = hook.metrics().await;
    assert!(
        metrics.contains("pullgate_probes_total{verdict=\"pullable\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_registry_gets_an_answer_before_the_apiservers_timeout() {
    let w = World::new();
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    proxy.rule(Rule::new(None, "/manifests/", Action::Stall));
    let hook = Webhook::start(test_config(&w.pki), &w.pki).await;
    let review = serde_json::to_vec(&fixture("deployment.json", &proxy.host())).unwrap();
    let started = Instant::now();
    let response = hook.review_raw(review, "?timeout=3s").await;
    // The apiserver would give up at 3 s; the answer must come before that.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // unavailable → allowed with a warning, by default.
    assert_eq!(response["allowed"], true, "{response:#}");
    let warnings = warnings(&response).join("\n");
    assert!(warnings.contains("deadline"), "{warnings}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_mode_admits_with_one_warning_per_bad_image() {
    let w = World::new();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "mode: warn\n").unwrap();
    let mut config = test_config(&w.pki);
    config.policy = PolicySource::File(policy.clone());
    let hook = Webhook::start(config, &w.pki).await;
    // Nothing was pushed: all three probed images are not found.
    let review = fixture("pod-create.json", &w.seed.host());
    let response = hook.review(&review).await;
    assert_eq!(response["allowed"], true, "{response:#}");
    let warnings = warnings(&response);
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    assert!(
        warnings
            .iter()
            .all(|w| w.starts_with("pullgate: ") && w.len() <= 256)
    );

    // The policy file is reloaded when it changes: enforce again.
    std::fs::write(&policy, "mode: enforce\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = hook.review(&review).await;
        if response["allowed"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "policy not reloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_reviews_get_a_clear_answer() {
    let w = World::new();
    let mut config = test_config(&w.pki);
    config.max_body_bytes = 64 * 1024;
    let hook = Webhook::start(config, &w.pki).await;

    let response = hook.review_raw(b"{not json".to_vec(), "").await;
    assert_eq!(response["allowed"], false);
    assert!(message(&response).contains("not a valid"), "{response:#}");

    // A review whose object is garbage: its uid is still echoed.
    let malformed = fixture("malformed.json", &w.seed.host());
    let response = hook.review(&malformed).await;
    assert_eq!(response["uid"], malformed["request"]["uid"]);
    assert_eq!(response["allowed"], false, "{response:#}");

    let mut huge = fixture("deployment.json", &w.seed.host());
    huge["request"]["object"]["metadata"]["annotations"] = json!({"big": "x".repeat(100_000)});
    let response = hook.review(&huge).await;
    assert_eq!(response["allowed"], false);
    assert!(message(&response).contains("65536 bytes"), "{response:#}");
}

/// The certificate a fresh TLS connection to `addr` is served.
async fn served_certificate(pki: &Pki, addr: std::net::SocketAddr) -> Vec<u8> {
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(pki.client_tls()));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Lays out a Secret volume the way the kubelet does: files are links into `..data`, itself
/// a link to a timestamped directory, swapped atomically on update.
fn write_secret_volume(dir: &std::path::Path, version: &str, cert: &str, key: &str) {
    let data = dir.join(version);
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("tls.crt"), cert).unwrap();
    std::fs::write(data.join("tls.key"), key).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for file in ["tls.crt", "tls.key"] {
        let link = dir.join(file);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{file}"), &link).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_reloaded_after_a_secret_volume_symlink_swap() {
    let w = World::new();
    let volume = tempfile::tempdir().unwrap();
    let (cert_a, key_a) = w.pki.issue(&["127.0.0.1"]);
    write_secret_volume(volume.path(), "..2026_11_23_a", &cert_a, &key_a);
    let mut config = test_config(&w.pki);
    config.tls = TlsSource::Files(CertFiles {
        cert: volume.path().join("tls.crt"),
        key: volume.path().join("tls.key"),
    });
    let hook = Webhook::start(config, &w.pki).await;
    let first = served_certificate(&w.pki, hook.addr).await;

    let (cert_b, key_b) = w.pki.issue(&["127.0.0.1"]);
    write_secret_volume(volume.path(), "..2026_11_23_b", &cert_b, &key_b);
    let deadline = Instant::now() + Duration::from_secs(10);
    let second = loop {
        let now = served_certificate(&w.pki, hook.addr).await;
        if now != first {
            break now;
        }
        assert!(Instant::now() < deadline, "certificate not reloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // A broken update (a key that does not match) keeps the working pair.
    let (_, other_key) = w.pki.issue(&["127.0.0.1"]);
    let (cert_c, _) = w.pki.issue(&["127.0.0.1"]);
    write_secret_volume(volume.path(), "..2026_11_23_c", &cert_c, &other_key);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(served_certificate(&w.pki, hook.addr).await, second);
    // And the server still answers reviews.
    let response = hook
        .review(&fixture("pod-delete.json", &w.seed.host()))
        .await;
    assert_eq!(response["allowed"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_turns_unready_and_finishes_the_review_in_flight() {
    let w = World::new();
    w.push("team/api", "3.2.1", ImageSpec::new()).await;
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    proxy.rule(Rule::new(
        None,
        "/manifests/",
        Action::Delay(Duration::from_millis(800)),
    ));
    let mut config = test_config(&w.pki);
    config.shutdown_delay = Duration::from_millis(300);
    let mut hook = Webhook::start(config, &w.pki).await;
    assert_eq!(
        hook.client
            .get(hook.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let review = fixture("deployment.json", &proxy.host());
    let in_flight = {
        let client = hook.client.clone();
        let url = hook.url("/validate");
        let body = serde_json::to_vec(&review).unwrap();
        tokio::spawn(async move { client.post(url).body(body).send().await })
    };
    // Let the review reach the stalled registry, then ask the server to stop.
    while proxy.count("/manifests/") == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    hook.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = hook
        .client
        .get(hook.admin_url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);

    let answered = in_flight
        .await
        .unwrap()
        .expect("the review in flight is answered");
    assert_eq!(answered.status(), 200);
    let body: Value = serde_json::from_slice(&answered.bytes().await.unwrap()).unwrap();
    assert_eq!(body["response"]["allowed"], true, "{body:#}");
    hook.take_task()
        .await
        .unwrap()
        .expect("run returns cleanly");
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(hook.addr).await.is_err());
}

/// Every fixture through the server against an empty registry: exactly the images each request
/// adds are probed, and each is named in the denial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_and_operation_probes_exactly_the_images_it_adds() {
    let w = World::new();
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    let hook = Webhook::start(test_config(&w.pki), &w.pki).await;
    // fixture → (container, repository:tag) pairs that must be probed and denied.
    let cases: &[(&str, &[(&str, &str)])] = &[
        (
            "pod-create.json",
            &[
                ("migrate", "team/migrate:2.3"),
                ("app", "team/app:1.0"),
                ("models", "ml/models:2026.03"),
            ],
        ),
        ("pod-dry-run.json", &[("tmp", "tools/busybox:1.36")]),
        ("pod-update.json", &[("app", "team/app:1.1")]),
        (
            "pod-ephemeralcontainers.json",
            &[("debugger-k2m9x", "tools/netshoot:0.13")],
        ),
        ("deployment.json", &[("api", "team/api:3.2.1")]),
        ("replicaset.json", &[("api", "team/api:3.2.1")]),
        (
            "statefulset.json",
            &[
                ("init-perms", "infra/toolbox:1.2"),
                ("postgres", "db/postgres:16.4"),
            ],
        ),
        (
            "daemonset.json",
            &[("node-exporter", "monitoring/node-exporter:1.8.2")],
        ),
        (
            "job.json",
            &[
                ("report", "team/report:2.0"),
                ("fonts", "assets/fonts:2025.1"),
            ],
        ),
        ("cronjob.json", &[("backup", "ops/backup:5.2")]),
        ("replicationcontroller.json", &[("web", "legacy/web:0.9")]),
        (
            "podtemplate.json",
            &[(
                "worker",
                "team/worker@sha256:4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a4c6e8b0d2f4a6c8e0b2d4f6a",
            )],
        ),
    ];
    // Verdicts are cached: an image already probed by an earlier case is not asked again.
    let mut probed = std::collections::HashSet::new();
    for (name, expected) in cases {
        let before = proxy.requests().len();
        let review = fixture(name, &proxy.host());
        let response = hook.review(&review).await;
        assert_eq!(response["uid"], review["request"]["uid"], "{name}");
        assert_eq!(response["allowed"], false, "{name}: {response:#}");
        let text = message(&response);
        for (container, image) in *expected {
            assert!(
                text.contains(&format!("\"{container}\"")) && text.contains(image),
                "{name}: {container} {image} missing from:\n{text}"
            );
            assert!(text.contains("not found"), "{name}: {text}");
        }
        let asked: Vec<String> = proxy.requests()[before..]
            .iter()
            .map(|r| r.path.clone())
            .collect();
        let manifests = asked.iter().filter(|p| p.contains("/manifests/")).count();
        let new = expected
            .iter()
            .filter(|(_, image)| probed.insert(*image))
            .count();
        assert_eq!(manifests, new, "{name}: {asked:?}");
    }

    // Nothing to add: DELETE is allowed without a probe.
    let before = proxy.requests().len();
    let response = hook
        .review(&fixture("pod-delete.json", &proxy.host()))
        .await;
    assert_eq!(response["allowed"], true);
    assert_eq!(proxy.requests().len(), before);

    // A kind pullgate does not know (a misconfigured rule) is admitted with a warning.
    let response = hook.review(&fixture("rollout.json", &proxy.host())).await;
    assert_eq!(response["allowed"], true, "{response:#}");
    assert!(
        warnings(&response)[0].contains("unsupported kind Rollout"),
        "{response:#}"
    );
}
