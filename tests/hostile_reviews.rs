//! Hostile AdmissionReviews through the real server (`pullgate::run` over TLS): bodies that are
//! not JSON, JSON of the wrong shape, oversized and deeply nested bodies, duplicate keys, Pods
//! with a thousand images, absurd image strings. Each gets HTTP 200, an AdmissionReview, its
//! uid echoed whenever it could be read, a decision with a message saying what was wrong, and
//! all within the review budget: never a panic, never a hang.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;
use tokio::net::TcpListener;

/// The default review budget (`Config::default().review_budget`).
const BUDGET: Duration = Duration::from_secs(8);
/// What an answer may take beyond the budget: the server's own guard is 200 ms, the rest is
/// for a loaded CI machine.
const MARGIN: Duration = Duration::from_secs(3);

const UID: &str = "3f0c2a7e-hostile-0001";

/// The AdmissionReview the server answers `body` with, and how long it took. Panics unless the
/// answer is an HTTP 200 carrying JSON with a `response` that decides, within `within`.
async fn exchange(hook: &Webhook, body: Vec<u8>, within: Duration) -> (Value, Duration) {
    let started = Instant::now();
    let answer = tokio::time::timeout(within, async {
        let resp = hook
            .client
            .post(hook.url("/validate"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the webhook answers");
        let status = resp.status();
        (status, resp.bytes().await.expect("a body"))
    })
    .await;
    let took = started.elapsed();
    let (status, bytes) = answer.unwrap_or_else(|_| panic!("no answer within {within:?}"));
    assert_eq!(status, 200, "the webhook always answers 200");
    let review: Value = serde_json::from_slice(&bytes).expect("the answer is JSON");
    assert!(review["response"].is_object(), "{review:#}");
    assert!(review["response"]["allowed"].is_boolean(), "{review:#}");
    (review, took)
}

/// The `response` of an admission.k8s.io/v1 AdmissionReview answering `body`, and the time.
async fn post_within(hook: &Webhook, body: Vec<u8>, within: Duration) -> (Value, Duration) {
    let (review, took) = exchange(hook, body, within).await;
    assert_eq!(review["kind"], "AdmissionReview", "{review:#}");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1", "{review:#}");
    (review["response"].clone(), took)
}

async fn post(hook: &Webhook, body: Vec<u8>) -> Value {
    post_within(hook, body, BUDGET + MARGIN).await.0
}

async fn post_json(hook: &Webhook, review: &Value) -> Value {
    post(hook, serde_json::to_vec(review).unwrap()).await
}

/// The per-image records of the audit annotation.
fn audited(response: &Value) -> Vec<Value> {
    response["auditAnnotations"]["images"]
        .as_str()
        .map(|s| serde_json::from_str(s).expect("the images annotation is JSON"))
        .unwrap_or_default()
}

/// Asserts a refusal whose message contains every one of `expected`.
#[track_caller]
fn assert_refused(response: &Value, expected: &[&str]) {
    assert_eq!(response["allowed"], false, "{response:#}");
    let text = message(response);
    for e in expected {
        assert!(text.contains(e), "{e:?} missing from:\n{text}");
    }
}

/// A CREATE review of a Pod in namespace `shop` whose containers `c0`, `c1`… use `images`.
fn pod_review(uid: &str, images: &[String]) -> Value {
    let containers: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            json!({"name": format!("c{i}"), "image": image, "imagePullPolicy": "Always"})
        })
        .collect();
    pod_review_with_spec(uid, json!({"containers": containers}))
}

/// The server for one test, with the default configuration and no registry behind it.
async fn hook() -> (Pki, Webhook) {
    let pki = Pki::new();
    let hook = Webhook::start(test_config(&pki), &pki).await;
    (pki, hook)
}

/// A registry that never answers: it accepts TCP connections and holds them open without a
/// byte, so a probe of it runs into its timeouts and the review into its deadline.
async fn silent_registry() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (host, task)
}

/// `n` distinct images, none pullable: half on a registry that never answers, half on the
/// closed port 1 of loopback (connection refused).
fn unreachable_images(n: usize, silent: &str) -> Vec<String> {
    (0..n)
        .map(|i| match i % 2 {
            0 => format!("{silent}/hostile/app-{i}:v{i}"),
            _ => format!("127.0.0.1:1/hostile/app-{i}:v{i}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_are_not_json_are_refused_as_invalid() {
    let (_pki, hook) = hook().await;
    for body in [
        &b""[..],
        b"{not json",
        b"\xff\xfe\x00garbage",
        b"<?xml version=\"1.0\"?><AdmissionReview/>",
        b"apiVersion: admission.k8s.io/v1\nkind: AdmissionReview\n",
        b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":\"x\"",
    ] {
        let response = post(&hook, body.to_vec()).await;
        assert_refused(
            &response,
            &["not a valid admission.k8s.io/v1 AdmissionReview"],
        );
        assert_eq!(response["uid"], "", "{response:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_of_the_wrong_shape_is_refused_with_its_uid_when_it_has_one() {
    let (_pki, hook) = hook().await;
    let v1 = |request: Value| json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request});
    for (body, uid, problem) in [
        (json!([]), "", "expected struct AdmissionReview"),
        (
            json!("AdmissionReview"),
            "",
            "expected struct AdmissionReview",
        ),
        (json!(42), "", "expected struct AdmissionReview"),
        (json!(null), "", "expected struct AdmissionReview"),
        (json!({}), "", "missing field"),
        (
            v1(json!("a string")),
            "",
            "expected struct AdmissionRequest",
        ),
        (v1(json!([])), "", "expected struct AdmissionRequest"),
        (v1(json!({"uid": UID, "kind": 5})), UID, "invalid type"),
        (v1(json!({"uid": 7})), "", "invalid type"),
        (
            v1(
                json!({"uid": UID, "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": "EXPLODE", "userInfo": {}}),
            ),
            UID,
            "unknown variant `EXPLODE`",
        ),
    ] {
        let response = post_json(&hook, &body).await;
        assert_refused(
            &response,
            &["not a valid admission.k8s.io/v1 AdmissionReview", problem],
        );
        assert_eq!(response["uid"], uid, "{body}: {response:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_without_a_request_or_a_uid_is_refused() {
    let (_pki, hook) = hook().await;
    for body in [
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": null}),
    ] {
        let response = post_json(&hook, &body).await;
        assert_refused(
            &response,
            &["not a valid admission.k8s.io/v1 AdmissionReview"],
        );
    }

    let mut review = pod_review(UID, &["nginx:1.27".to_owned()]);
    review["request"].as_object_mut().unwrap().remove("uid");
    let response = post_json(&hook, &review).await;
    assert_refused(&response, &["not a valid", "missing field `uid`"]);
    assert_eq!(response["uid"], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_api_version_or_kind_is_answered_and_never_admits_unchecked() {
    let (_pki, hook) = hook().await;
    // The apiserver sends exactly the versions the webhook configuration lists (v1 only), and
    // checks that the answer is of the version it sent. Today the server answers in whatever
    // apiVersion/kind the body named (kube-rs echoes them) and reviews the request; refusing
    // them as not v1 would pass this test as well. Either way the uid is echoed and nothing is
    // admitted unchecked: the image here is invalid, so an answer that read the Pod refuses it.
    for (api_version, kind) in [
        ("admission.k8s.io/v1beta1", "AdmissionReview"),
        ("admission.k8s.io/v2", "AdmissionReview"),
        ("v1", "Pod"),
        ("", ""),
    ] {
        let mut review = pod_review(UID, &["Invalid/UPPERCASE:tag".to_owned()]);
        review["apiVersion"] = json!(api_version);
        review["kind"] = json!(kind);
        let (answer, _) =
            exchange(&hook, serde_json::to_vec(&review).unwrap(), BUDGET + MARGIN).await;
        let response = &answer["response"];
        assert_eq!(response["uid"], UID, "{api_version} {kind}: {answer:#}");
        assert_eq!(
            response["allowed"], false,
            "{api_version} {kind}: {answer:#}"
        );
        assert!(!message(response).is_empty(), "{answer:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_megabyte_body_is_refused_without_being_read() {
    let (_pki, hook) = hook().await;
    let mut review = pod_review(UID, &["nginx:1.27".to_owned()]);
    review["request"]["object"]["metadata"]["annotations"] =
        json!({"padding": "x".repeat(10 * 1024 * 1024)});
    let body = serde_json::to_vec(&review).unwrap();
    assert!(body.len() > 10 * 1024 * 1024);
    let (response, took) = post_within(&hook, body, BUDGET + MARGIN).await;
    assert_refused(
        &response,
        &["cannot read the AdmissionReview", "over 8388608 bytes"],
    );
    // The body is not read past the limit, so its uid is unknown. The apiserver never sends
    // such a body (its own request limit is 3 MiB) and takes the mismatch as a failed call.
    assert_eq!(response["uid"], "");
    assert!(took < BUDGET, "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_with_a_thousand_images_is_answered_within_the_budget() {
    let (_pki, hook) = hook().await;
    let (silent, _registry) = silent_registry().await;
    let images = unreachable_images(1000, &silent);
    let body = serde_json::to_vec(&pod_review(UID, &images)).unwrap();
    let (response, took) = post_within(&hook, body, BUDGET + MARGIN).await;
    assert!(took < BUDGET + MARGIN, "{took:?}");
    assert_eq!(response["uid"], UID);
    // Either the server refuses the review outright for having too many images, with a
    // message naming the count, or it answers per image: none is pullable, so they are
    // refused ("N of 1000 images cannot be pulled") or warned about.
    assert!(
        (response["allowed"] == false && message(&response).contains("1000"))
            || (response["allowed"] == true && !warnings(&response).is_empty()),
        "neither a refusal naming the count nor a verdict per image: {response:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_unpullable_images_each_get_a_verdict_within_the_budget() {
    let (_pki, hook) = hook().await;
    let (silent, _registry) = silent_registry().await;
    // Below any cap on images per review, so every image is really probed; half of them
    // against a registry that never answers, so the review runs into its deadline.
    let images = unreachable_images(200, &silent);
    let body = serde_json::to_vec(&pod_review(UID, &images)).unwrap();
    let (response, took) = post_within(&hook, body, BUDGET + MARGIN).await;
    assert!(took < BUDGET + MARGIN, "{took:?}");
    assert_eq!(response["uid"], UID);
    // None is pullable: refused ("N of 200 images cannot be pulled", as with an egress
    // guard refusing loopback) or, as unavailable, admitted with a warning for each.
    match response["allowed"].as_bool() {
        Some(false) => assert_refused(&response, &["of 200 images cannot be pulled"]),
        _ => {
            let warned = warnings(&response);
            assert_eq!(warned.len(), 13, "12 listed and a count: {response:#}");
            assert!(
                warned[12].contains("188 more images with problems not listed"),
                "{response:#}"
            );
        }
    }
    let decision = response["auditAnnotations"]["decision"].as_str();
    assert!(matches!(decision, Some("deny" | "warn")), "{response:#}");
    assert_eq!(audited(&response).len(), 20, "{response:#}");
    assert_eq!(response["auditAnnotations"]["images_omitted"], "180");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_containers_of_one_image_are_one_probe() {
    let (_pki, hook) = hook().await;
    let images = vec!["Hostile/ONE:v1".to_owned(); 1000];
    let body = serde_json::to_vec(&pod_review(UID, &images)).unwrap();
    let (response, took) = post_within(&hook, body, BUDGET + MARGIN).await;
    assert!(took < BUDGET, "{took:?}");
    assert_eq!(response["uid"], UID);
    // Every container is refused for the one invalid image; the message lists the first
    // ones and counts the rest.
    assert_refused(
        &response,
        &[
            "1000 of 1000 images",
            "Hostile/ONE:v1",
            "lowercase",
            "and 980 more",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_image_strings_are_refused_as_invalid_references() {
    let (_pki, hook) = hook().await;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "10 KB",
            format!("registry.example.com/{}:v1", "a".repeat(10 * 1024)),
            // The image is shown cut, so the reason still fits on the denial's line.
            "longer than 1024 characters",
        ),
        (
            "control characters",
            "nginx\u{0}\u{7}\r\n:latest".to_owned(),
            "not of the form",
        ),
        (
            "escape sequence",
            "\u{1b}[31mnginx\u{1b}[0m".to_owned(),
            "not of the form",
        ),
        (
            "unicode",
            "régistry.example.com/ñginx/😀:v1".to_owned(),
            "not of the form",
        ),
        (
            "right-to-left override",
            "nginx\u{202e}1.0:".to_owned(),
            "not of the form",
        ),
        (
            "bad digest hex",
            format!("nginx@sha256:{}", "z".repeat(64)),
            "not of the form",
        ),
        (
            "uppercase digest hex",
            format!("nginx@sha256:{}", "F".repeat(64)),
            "",
        ),
        (
            "short digest",
            "nginx@sha256:abc".to_owned(),
            "not of the form",
        ),
        (
            "unknown digest algorithm",
            format!("nginx@md5:{}", "f".repeat(32)),
            "",
        ),
        (
            "empty digest",
            "nginx@sha256:".to_owned(),
            "not of the form",
        ),
        (
            "uppercase",
            "Registry.Example.com/Team/APP:V1".to_owned(),
            "must be lowercase",
        ),
        (
            "uppercase repository",
            "docker.io/Library/Nginx".to_owned(),
            "must be lowercase",
        ),
        ("whitespace", "   \t ".to_owned(), "not of the form"),
        ("colons", ":::".to_owned(), "not of the form"),
        ("slashes", "///".to_owned(), "not of the form"),
        ("at signs", "@@@".to_owned(), "not of the form"),
        (
            "scheme",
            "https://registry.example.com/app:v1".to_owned(),
            "not of the form",
        ),
        ("bare hex id", "f".repeat(64), "64-character hex"),
        (
            "tag too long",
            format!("nginx:{}", "t".repeat(129)),
            "invalid tag",
        ),
    ];
    for (what, image, reason) in &cases {
        let response = post_json(&hook, &pod_review(UID, std::slice::from_ref(image))).await;
        assert_eq!(response["uid"], UID, "{what}: {response:#}");
        assert_refused(
            &response,
            &["1 of 1 image cannot be pulled", "container \"c0\"", reason],
        );
        let audit = audited(&response);
        assert_eq!(audit.len(), 1, "{what}: {response:#}");
        assert_eq!(audit[0]["verdict"], "invalid", "{what}: {response:#}");
        assert_eq!(audit[0]["action"], "deny", "{what}: {response:#}");
        // What the user wrote is shown, control characters escaped, never raw.
        let text = message(&response);
        assert!(
            !text.contains(['\u{0}', '\u{7}', '\u{1b}', '\r']),
            "{what}: {text:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_image_is_not_an_image_to_check() {
    let (_pki, hook) = hook().await;
    // The apiserver's own validation refuses a Pod container without an image before any
    // validating webhook runs, and a template may leave it empty for a controller or config
    // tool to fill in: there is nothing to pull, so nothing is probed or refused.
    let response = post_json(&hook, &pod_review(UID, &[String::new()])).await;
    assert_eq!(response["uid"], UID);
    assert_eq!(response["allowed"], true, "{response:#}");
    assert!(audited(&response).is_empty(), "{response:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_out_of_range_are_answered_within_the_budget() {
    let (_pki, hook) = hook().await;
    // The reference grammar takes any digits as a port; no connection can be made to it.
    for image in ["localhost:99999/x", "127.0.0.1:0/x:v1", "[::1]:65536/x"] {
        let body = serde_json::to_vec(&pod_review(UID, &[image.to_owned()])).unwrap();
        let (response, took) = post_within(&hook, body, BUDGET + MARGIN).await;
        assert!(took < BUDGET + MARGIN, "{image}: {took:?}");
        assert_eq!(response["uid"], UID);
        let audit = audited(&response);
        assert_eq!(audit.len(), 1, "{image}: {response:#}");
        assert_ne!(audit[0]["verdict"], "pullable", "{image}: {response:#}");
        // Not pullable: refused, or warned about as unavailable, naming the image.
        let text = format!("{}{}", message(&response), warnings(&response).join("\n"));
        assert!(text.contains(image), "{image}: {response:#}");
        assert!(
            response["allowed"] == false || !warnings(&response).is_empty(),
            "{image}: {response:#}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_is_refused_without_overflowing_the_stack() {
    let (_pki, hook) = hook().await;
    let depth = 100_000;
    for (what, body) in [
        (
            "arrays",
            format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
        ),
        ("unclosed arrays", "[".repeat(depth)),
        (
            "objects",
            format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth)),
        ),
        (
            "objects in the request",
            format!(
                "{{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{}1{}}}",
                "{\"a\":".repeat(depth),
                "}".repeat(depth)
            ),
        ),
    ] {
        let response = post(&hook, body.into_bytes()).await;
        assert_refused(
            &response,
            &["not a valid admission.k8s.io/v1 AdmissionReview"],
        );
        assert_eq!(response["uid"], "", "{what}: {response:#}");
    }

    // Deep nesting inside an otherwise valid review, after its uid. Where the field is not
    // read (unknown metadata), the parser skips it without recursing: the review is answered.
    let review = serde_json::to_string(&pod_review(UID, &["Deep/SKIPPED:v1".to_owned()])).unwrap();
    let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let skipped = review.replacen(
        "\"metadata\":{",
        &format!("\"metadata\":{{\"deep\":{nested},"),
        1,
    );
    assert!(skipped.len() > 2 * depth);
    let response = post(&hook, skipped.into_bytes()).await;
    assert_eq!(response["uid"], UID, "{response:#}");
    assert_refused(&response, &["Deep/SKIPPED:v1", "lowercase"]);
    // Unread fields of the object's spec are skipped the same way: the review is answered.
    let unread = review.replacen("\"spec\":{", &format!("\"spec\":{{\"deep\":{nested},"), 1);
    let response = post(&hook, unread.into_bytes()).await;
    assert_eq!(response["uid"], UID, "{response:#}");
    assert_refused(&response, &["Deep/SKIPPED:v1", "lowercase"]);
    // Where the nesting sits in a field that is read (the container list), the object is
    // malformed: refused, naming the kind, with the uid echoed.
    let read = review.replacen("\"containers\":[", &format!("\"containers\":[{nested},"), 1);
    let response = post(&hook, read.into_bytes()).await;
    assert_eq!(response["uid"], UID, "{response:#}");
    assert_refused(&response, &["malformed Pod"]);

    // The server still serves.
    let response = post_json(&hook, &pod_review(UID, &["Still/SERVING".to_owned()])).await;
    assert_refused(&response, &["Still/SERVING"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_are_refused_or_answered_deterministically() {
    let (_pki, hook) = hook().await;
    let review = pod_review(UID, &["dup/first:v1".to_owned()]);
    let request = serde_json::to_string(&review["request"]).unwrap();

    // The request written twice: refused (serde refuses a struct's field written twice), so
    // which of two requests is meant is never guessed, not even for the uid.
    let other = request.replace(UID, "other-uid");
    let twice = format!(
        "{{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{other},\"request\":{request}}}"
    );
    let response = post(&hook, twice.into_bytes()).await;
    assert_refused(&response, &["not a valid", "duplicate field `request`"]);
    assert_eq!(response["uid"], "", "{response:#}");

    // The uid written twice inside the request: refused the same way.
    let uid_twice = serde_json::to_string(&review).unwrap().replacen(
        &format!("\"uid\":\"{UID}\""),
        &format!("\"uid\":\"first-uid\",\"uid\":\"{UID}\""),
        1,
    );
    let response = post(&hook, uid_twice.into_bytes()).await;
    assert_refused(&response, &["not a valid", "duplicate field `uid`"]);
    assert_eq!(
        response["uid"], "",
        "an ambiguous uid is not echoed: {response:#}"
    );

    // Inside the object, a container's image written twice: which one the kubelet would see
    // is not guessed either (kube-apiserver never writes a key twice); the Pod is refused as
    // malformed, with the uid echoed.
    let image_twice = serde_json::to_string(&review).unwrap().replacen(
        "\"image\":\"dup/first:v1\"",
        "\"image\":\"dup/first:v1\",\"image\":\"Dup/LAST:v2\"",
        1,
    );
    let response = post(&hook, image_twice.into_bytes()).await;
    assert_eq!(response["uid"], UID, "{response:#}");
    assert_refused(&response, &["malformed Pod", "duplicate field `image`"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_without_an_object_is_refused() {
    let (_pki, hook) = hook().await;
    let mut review = pod_review(UID, &["nginx:1.27".to_owned()]);
    review["request"]["object"] = Value::Null;
    let response = post_json(&hook, &review).await;
    assert_eq!(response["uid"], UID);
    assert_refused(
        &response,
        &["admission request to create or update a Pod carries no object"],
    );

    review["request"].as_object_mut().unwrap().remove("object");
    let response = post_json(&hook, &review).await;
    assert_eq!(response["uid"], UID);
    assert_refused(&response, &["carries no object"]);

    // An object that is no object at all.
    for object in [json!("a Pod, honestly"), json!([1, 2]), json!(42)] {
        review["request"]["object"] = object;
        let response = post_json(&hook, &review).await;
        assert_eq!(response["uid"], UID, "{response:#}");
        assert_eq!(response["allowed"], false, "{response:#}");
        assert!(!message(&response).is_empty(), "{response:#}");
    }

    // A Pod whose containers are not a list, and a container that is not an object.
    for spec in [json!({"containers": "nginx"}), json!({"containers": [7]})] {
        let mut review = pod_review(UID, &[]);
        review["request"]["object"]["spec"] = spec;
        let response = post_json(&hook, &review).await;
        assert_eq!(response["uid"], UID, "{response:#}");
        assert_refused(&response, &["malformed Pod in admission request"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_is_answered_or_dropped_within_the_budget() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (pki, hook) = hook().await;
    let mut tls = pki.client_tls();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(hook.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    // Headers promising 100 bytes, then 5 of them, then nothing.
    stream
        .write_all(
            b"POST /validate HTTP/1.1\r\nhost: pullgate\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"a\":",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(BUDGET + MARGIN, stream.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok() || !answer.is_empty(),
        "neither an answer nor a closed connection within {:?}",
        BUDGET + MARGIN
    );
}
