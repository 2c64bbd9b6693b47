//! Hostile registries: the SSRF guard, back-off, per-host limits, and servers that misbehave
//! in ways no real registry does. Each case asserts the verdict and that the answer comes
//! within the probe's deadline.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use pullgate::{
    oci::reference::ImageRef,
    probe::Verdict,
    probe::{self, ProbeOptions, Report},
    registry::EgressPolicy,
    registry::{ClientOptions, RegistryClient},
};
use support::*;
use tokio::net::TcpListener;

/// A listener that only counts the connections it gets.
struct Tripwire {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl Tripwire {
    async fn on(ip: &str) -> Tripwire {
        let listener = TcpListener::bind(format!("{ip}:0")).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(conn);
            }
        });
        Tripwire {
            addr,
            hits,
            _task: task,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn client(pki: &Pki, egress: EgressPolicy) -> RegistryClient {
    RegistryClient::new(ClientOptions {
        extra_roots: vec![pki.ca_der().clone()],
        egress,
        ..ClientOptions::default()
    })
    .unwrap()
}

/// The guard with 127.0.0.1 allowed (where the test registries are) and nothing else.
fn guard_allowing_127_0_0_1() -> EgressPolicy {
    EgressPolicy {
        allow: vec!["127.0.0.1/32".parse().unwrap()],
        ..EgressPolicy::guarded()
    }
}

async fn probe_within(client: &RegistryClient, reference: &str, timeout: Duration) -> Report {
    let image = ImageRef::parse(reference).unwrap();
    let options = ProbeOptions {
        timeout,
        ..ProbeOptions::default()
    };
    let started = Instant::now();
    let report = probe::probe(client, &image, &[], &options).await;
    // The deadline holds whatever the server does (a little slack for the runtime).
    assert!(
        started.elapsed() < timeout + Duration::from_secs(1),
        "took {:?} for {reference}",
        started.elapsed()
    );
    report
}

fn assert_verdict(r: &Report, v: Verdict, reason_contains: &str) {
    assert_eq!(r.verdict, v, "{r:#?}");
    assert!(
        r.reason.contains(reason_contains),
        "{:?} lacks {reason_contains:?}",
        r.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_egress_guard_refuses_loopback_before_any_connection() {
    let pki = Pki::new();
    let wire = Tripwire::on("127.0.0.1").await;
    let guarded = client(&pki, EgressPolicy::guarded());
    let port = wire.addr.port();
    // An address literal, its IPv4-mapped form, and a name that resolves to loopback.
    for reference in [
        format!("127.0.0.1:{port}/team/app:1"),
        format!("[::ffff:127.0.0.1]:{port}/team/app:1"),
        format!("localhost:{port}/team/app:1"),
    ] {
        let Ok(image) = ImageRef::parse(&reference) else {
            // Every form here parses; a reference that did not would have nothing to reach.
            continue;
        };
        let r = probe::probe(&guarded, &image, &[], &ProbeOptions::default()).await;
        assert_verdict(&r, Verdict::Invalid, "loopback");
        assert!(r.reason.contains("egress guard"), "{}", r.reason);
    }
    assert_eq!(wire.hits(), 0, "no connection may reach a refused address");

    // Without the guard the same probe does connect: the tripwire works.
    let open = client(&pki, EgressPolicy::default());
    let r = probe_within(
        &open,
        &format!("127.0.0.1:{port}/team/app:1"),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(r.verdict, Verdict::Unavailable, "{r:#?}");
    assert!(wire.hits() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_and_token_realms_to_refused_addresses_are_not_followed() {
    let w = World::new();
    let image = w.push("team/app", "v1", ImageSpec::new()).await;
    let wire = Tripwire::on("127.0.0.2").await;
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    let guarded = client(&w.pki, guard_allowing_127_0_0_1());

    // A blob redirected to a CDN on a refused address (as if to 169.254.169.254).
    let layer = &image.layer_digests[0];
    proxy.rule(Rule::new(
        None,
        &format!("/blobs/{layer}"),
        Action::RedirectTo {
            base: format!("https://{}", wire.addr),
        },
    ));
    let r = probe_within(
        &guarded,
        &format!("{}/team/app:v1", proxy.host()),
        Duration::from_secs(5),
    )
    .await;
    assert_verdict(&r, Verdict::Invalid, "loopback");
    assert_eq!(
        r.failed_blob.as_ref().map(ToString::to_string).as_deref(),
        Some(layer.as_str())
    );

    // A Bearer challenge whose realm is on a refused address.
    proxy.clear_rules();
    proxy.rule(Rule::new(
        None,
        "/manifests/",
        Action::Respond {
            status: 401,
            headers: vec![(
                "WWW-Authenticate".into(),
                format!("Bearer realm=\"https://{}/token\",service=\"x\"", wire.addr),
            )],
            body: String::new(),
        },
    ));
    let r = probe_within(
        &guarded,
        &format!("{}/team/app:v1", proxy.host()),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(r.verdict, Verdict::Invalid, "{r:#?}");
    assert!(r.reason.contains("egress guard"), "{}", r.reason);
    assert_eq!(wire.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_not_asked_again_until_then() {
    let w = World::new();
    w.push("team/app", "v1", ImageSpec::new()).await;
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    proxy.rule(Rule::new(
        None,
        "/manifests/",
        Action::Respond {
            status: 429,
            headers: vec![("Retry-After".into(), "30".into())],
            body: r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#.into(),
        },
    ));
    let c = client(&w.pki, EgressPolicy::default());
    let image = format!("{}/team/app:v1", proxy.host());
    let first = probe_within(&c, &image, Duration::from_secs(5)).await;
    assert_verdict(&first, Verdict::Unavailable, "429");
    let second = probe_within(&c, &image, Duration::from_secs(5)).await;
    assert_verdict(&second, Verdict::Unavailable, "back off");
    assert_eq!(
        proxy.count("/manifests/"),
        1,
        "the registry must not be asked again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_per_host_are_bounded() {
    let w = World::new();
    for tag in ["a", "b", "c"] {
        w.push("team/app", tag, ImageSpec::new()).await;
    }
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    let delay = Duration::from_millis(300);
    proxy.rule(Rule::new(None, "/manifests/", Action::Delay(delay)));
    let one_at_a_time = RegistryClient::new(ClientOptions {
        extra_roots: vec![w.pki.ca_der().clone()],
        probes_per_host: 1,
        ..ClientOptions::default()
    })
    .unwrap();
    let started = Instant::now();
    let reports = futures_util::future::join_all(["a", "b", "c"].map(|tag| {
        let image = format!("{}/team/app:{tag}", proxy.host());
        let c = one_at_a_time.clone();
        async move { probe_within(&c, &image, Duration::from_secs(10)).await }
    }))
    .await;
    assert!(reports.iter().all(|r| r.verdict == Verdict::Pullable));
    // One at a time, each waiting out the delay: never faster than three delays.
    assert!(started.elapsed() >= delay * 3, "{:?}", started.elapsed());
}

/// Probes `team/app:1` on a hostile `server` with an unguarded client.
async fn probe_server(pki: &Pki, server: &TestServer, timeout: Duration) -> Report {
    let c = client(pki, EgressPolicy::default());
    probe_within(&c, &format!("{}/team/app:1", server.host()), timeout).await
}

/// A TLS server on 127.0.0.1 answering every request with `respond`.
async fn hostile(
    pki: &Pki,
    respond: impl Fn() -> Response + Clone + Send + Sync + 'static,
) -> TestServer {
    let router = Router::new().fallback(move || {
        let respond = respond.clone();
        async move { respond() }
    });
    serve_tls(router, pki.server_tls(&["127.0.0.1"])).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_trickle_forever_end_at_the_deadline() {
    let pki = Pki::new();
    let server = hostile(&pki, || {
        let drip = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Some((Ok::<_, std::io::Error>(bytes::Bytes::from_static(b" ")), ()))
        });
        (
            [(
                header::CONTENT_TYPE,
                "application/vnd.oci.image.manifest.v1+json",
            )],
            Body::from_stream(drip),
        )
            .into_response()
    })
    .await;
    let r = probe_server(&pki, &server, Duration::from_secs(2)).await;
    assert_eq!(r.verdict, Verdict::Unavailable, "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_manifests_are_invalid() {
    let pki = Pki::new();
    let cases: [(&'static str, &'static str, &str); 3] = [
        (
            "application/vnd.oci.image.manifest.v1+json",
            "{not json",
            "manifest",
        ),
        ("application/x-unknown", "{}", "manifest"),
        (
            "application/vnd.oci.image.manifest.v1+json",
            r#"{"schemaVersion":2,"manifests":[],"layers":[],"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":1}}"#,
            "manifest",
        ),
    ];
    for (content_type, body, reason) in cases {
        let server = hostile(&pki, move || {
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        })
        .await;
        let r = probe_server(&pki, &server, Duration::from_secs(5)).await;
        assert_verdict(&r, Verdict::Invalid, reason);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_headers_are_refused_not_buffered() {
    let pki = Pki::new();
    let server = hostile(&pki, || {
        let mut response = StatusCode::OK.into_response();
        for i in 0..2000 {
            response.headers_mut().insert(
                header::HeaderName::from_bytes(format!("x-junk-{i}").as_bytes()).unwrap(),
                header::HeaderValue::from_static(
                    "0123456789abcdef0123456789abcdef0123456789abcdef",
                ),
            );
        }
        response
    })
    .await;
    let r = probe_server(&pki, &server, Duration::from_secs(5)).await;
    assert_ne!(r.verdict, Verdict::Pullable, "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_that_never_answers_ends_at_the_deadline() {
    let w = World::new();
    w.push("team/app", "v1", ImageSpec::new()).await;
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    let silent = hostile(&w.pki, || StatusCode::OK.into_response()).await;
    // The token server accepts and then never answers.
    let stall = PolicyProxy::start_for(&w.pki, &silent.base()).await;
    stall.rule(Rule::new(None, "/token", Action::Stall));
    proxy.rule(Rule::new(
        None,
        "/manifests/",
        Action::Respond {
            status: 401,
            headers: vec![(
                "WWW-Authenticate".into(),
                format!("Bearer realm=\"{}\",service=\"x\"", stall.url("/token")),
            )],
            body: String::new(),
        },
    ));
    let c = client(&w.pki, EgressPolicy::default());
    let r = probe_within(
        &c,
        &format!("{}/team/app:v1", proxy.host()),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(r.verdict, Verdict::Unavailable, "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_say_what_is_wrong_with_the_certificate() {
    let pki = Pki::new();
    let router = || Router::new().fallback(|| async { StatusCode::NOT_FOUND });
    let servers = [
        (
            serve_tls(router(), pki.expired_server_tls(&["127.0.0.1"])).await,
            "expired",
        ),
        (
            serve_tls(router(), pki.server_tls(&["registry.other.example"])).await,
            "not valid for",
        ),
        (
            serve_tls(router(), self_signed_server_tls(&["127.0.0.1"])).await,
            "UnknownIssuer",
        ),
    ];
    for (server, problem) in &servers {
        let r = probe_server(&pki, server, Duration::from_secs(5)).await;
        assert_eq!(r.verdict, Verdict::Unavailable, "{r:#?}");
        assert!(
            r.reason.to_lowercase().contains(&problem.to_lowercase()),
            "{problem}: {}",
            r.reason
        );
    }
}
