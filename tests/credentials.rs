//! Credentials found the way the kubelet finds them: pull secrets and ServiceAccounts read
//! through a kube client from a stand-in API server, node credentials from a docker config,
//! and the probe run with them against a real registry.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pullgate::{
    credentials::{Keyring, docker_config},
    credentials::{PodCredentials, PullSecretRefs, SecretOptions, SecretStore},
    oci::reference::ImageRef,
    probe::Verdict,
    probe::{self, ProbeOptions, Report},
};
use serde_json::json;
use support::*;

const USER: &str = "alice";
const PASSWORD: &str = "s3cret-Kp2Wq9";
const STALE: &str = "stale-Zx81Lm";

/// A world with a registry that wants alice's password, and an API server.
struct Cluster {
    w: World,
    registry: Registry,
    api: ApiServer,
}

impl Cluster {
    async fn new() -> Cluster {
        let w = World::new();
        let registry = w.registry(RegistryAuth::htpasswd(&[(USER, PASSWORD)]));
        let api = ApiServer::start(&w.pki).await;
        Cluster { w, registry, api }
    }

    fn store(&self) -> SecretStore {
        self.store_with(SecretOptions::default())
    }

    fn store_with(&self, options: SecretOptions) -> SecretStore {
        SecretStore::new(self.api.client(), options)
    }

    fn image(&self, repo: &str) -> String {
        format!("{}/{repo}:v1", self.registry.host())
    }

    /// A dockerconfigjson secret for this registry (or `key`, when given) in `namespace`.
    fn secret(&self, namespace: &str, name: &str, key: Option<&str>, password: &str) {
        let key = key.map_or_else(|| self.registry.host(), str::to_owned);
        self.api
            .put_registry_secret(namespace, name, &key, USER, password);
    }

    /// What the webhook does for one image of a pod: find its credentials, then probe.
    async fn probe(
        &self,
        store: &SecretStore,
        node: &Keyring,
        namespace: &str,
        refs: &PullSecretRefs,
        image: &str,
    ) -> (Report, PodCredentials) {
        let credentials = store.for_pod(namespace, refs).await;
        let image = ImageRef::parse(image).unwrap();
        let report = probe::probe(
            &self.w.client(),
            &image,
            &credentials.lookup(node, &image),
            &ProbeOptions::default(),
        )
        .await;
        (report, credentials)
    }
}

fn pod(names: &[&str]) -> PullSecretRefs {
    PullSecretRefs {
        names: names.iter().map(|n| n.to_string()).collect(),
        service_account: "default".into(),
        is_template: false,
    }
}

fn template(names: &[&str], service_account: &str) -> PullSecretRefs {
    PullSecretRefs {
        is_template: true,
        service_account: service_account.into(),
        ..pod(names)
    }
}

fn assert_verdict(r: &Report, v: Verdict) {
    assert_eq!(r.verdict, v, "unexpected verdict: {r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_secrets_are_tried_in_the_kubelets_order_until_one_pulls() {
    let c = Cluster::new().await;
    c.w.push("team-a/app", "v1", ImageSpec::new()).await;
    c.secret("team-a", "stale", None, STALE);
    c.secret("team-a", "good", None, PASSWORD);
    let store = c.store();
    let node = Keyring::default();
    let image = c.image("team-a/app");

    // The first matching credential is refused; the second is not the verdict's loser.
    let (r, _) = c
        .probe(&store, &node, "team-a", &pod(&["stale", "good"]), &image)
        .await;
    assert_verdict(&r, Verdict::Pullable);
    assert_eq!(r.attempts, 2);
    assert_eq!(r.credential.as_deref(), Some("secret team-a/good"));

    let (r, _) = c
        .probe(&store, &node, "team-a", &pod(&["good", "stale"]), &image)
        .await;
    assert_verdict(&r, Verdict::Pullable);
    assert_eq!(r.attempts, 1);

    // With only the stale one, the refusal is the verdict: no anonymous attempt follows.
    let (r, _) = c
        .probe(&store, &node, "team-a", &pod(&["stale"]), &image)
        .await;
    assert_verdict(&r, Verdict::Unauthorized);
    assert_eq!(r.attempts, 1);
    assert_eq!(r.credential.as_deref(), Some("secret team-a/stale"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_merged_so_the_most_specific_key_goes_first() {
    let c = Cluster::new().await;
    c.w.push("team-a/app", "v1", ImageSpec::new()).await;
    let host = c.registry.host();
    // Listed second, but its key is more specific: the kubelet's merged keyring tries it
    // first, and it is wrong.
    c.secret("ns", "broad", Some(&host), PASSWORD);
    c.secret("ns", "specific", Some(&format!("{host}/team-a")), STALE);
    let (r, _) = c
        .probe(
            &c.store(),
            &Keyring::default(),
            "ns",
            &pod(&["broad", "specific"]),
            &c.image("team-a/app"),
        )
        .await;
    assert_verdict(&r, Verdict::Pullable);
    assert_eq!(r.attempts, 2);
    assert_eq!(r.credential.as_deref(), Some("secret ns/broad"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_match_by_path_prefix_scheme_and_port() {
    let c = Cluster::new().await;
    c.w.push("team-a/app", "v1", ImageSpec::new()).await;
    c.w.push("team-b/app", "v1", ImageSpec::new()).await;
    let host = c.registry.host();
    let port = c.registry.addr.port();
    c.api.put_dockerconfigjson(
        "ns",
        "regcred",
        &json!({"auths": {
            // The scheme is dropped when the key is normalised; the path is a prefix.
            format!("https://{host}/team-a"): {"username": USER, "password": PASSWORD},
            // `/v1/` is stripped only right after the host, so this key is the path
            // `team-a/v1/` and matches nothing here.
            format!("{host}/team-a/v1/"): {"username": USER, "password": STALE},
            // Another port of the same host never matches.
            format!("127.0.0.1:{}", port.wrapping_add(1)): {"username": USER, "password": PASSWORD},
        }}),
    );
    let store = c.store();
    let node = Keyring::default();
    let refs = pod(&["regcred"]);
    let (r, _) = c
        .probe(&store, &node, "ns", &refs, &c.image("team-a/app"))
        .await;
    assert_verdict(&r, Verdict::Pullable);
    assert_eq!(r.attempts, 1);
    // team-b is outside the key's subtree: no credential matches, so the probe is anonymous.
    let (r, _) = c
        .probe(&store, &node, "ns", &refs, &c.image("team-b/app"))
        .await;
    assert_verdict(&r, Verdict::Unauthorized);
    assert_eq!(r.credential, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_dockercfg_secrets_and_glob_hosts_work() {
    let c = Cluster::new().await;
    c.w.push("app", "v1", ImageSpec::new()).await;
    let auth = base64_encode(&format!("{USER}:{PASSWORD}"));
    // `*.0.0.1` globs one DNS label, as filepath.Match does for the kubelet.
    let port = c.registry.addr.port();
    c.api.put_secret(
        "ns",
        "legacy",
        "kubernetes.io/dockercfg",
        &[(
            ".dockercfg",
            json!({format!("127.*.0.1:{port}"): {"auth": auth, "email": "a@example.com"}})
                .to_string()
                .as_bytes(),
        )],
    );
    let (r, credentials) = c
        .probe(
            &c.store(),
            &Keyring::default(),
            "ns",
            &pod(&["legacy"]),
            &c.image("app"),
        )
        .await;
    assert_verdict(&r, Verdict::Pullable);
    assert_eq!(credentials.secrets, ["ns/legacy"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_tokens_in_pull_secrets_are_ignored_like_the_kubelet() {
    let c = Cluster::new().await;
    c.w.push("app", "v1", ImageSpec::new()).await;
    c.api.put_dockerconfigjson(
        "ns",
        "oauth",
        &json!({"auths": {c.registry.host(): {"identitytoken": PASSWORD, "registrytoken": PASSWORD}}}),
    );
    let (r, _) = c
        .probe(
            &c.store(),
            &Keyring::default(),
            "ns",
            &pod(&["oauth"]),
            &c.image("app"),
        )
        .await;
    // The entry matched with an empty username and password, which the kubelet treats as
    // no credential at all: the node pulls anonymously and is refused.
    assert_verdict(&r, Verdict::Unauthorized);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_use_their_service_accounts_secrets_and_pods_do_not() {
    let c = Cluster::new().await;
    c.w.push("app", "v1", ImageSpec::new()).await;
    c.secret("ns", "builder-pull", None, PASSWORD);
    c.api
        .put_service_account("ns", "builder", &["builder-pull"]);
    c.api.put_service_account("ns", "default", &[]);
    let store = c.store();
    let node = Keyring::default();
    let image = c.image("app");

    // A Deployment's template running as `builder`, naming no secrets itself.
    let (r, credentials) = c
        .probe(&store, &node, "ns", &template(&[], "builder"), &image)
        .await;
    assert_verdict(&r, Verdict::Pullable);
    assert_eq!(credentials.secrets, ["ns/builder-pull"]);
    assert_eq!(c.api.count("/serviceaccounts/builder"), 1);

    // A Pod already carries what the ServiceAccount plugin copied in: the account is not read.
    let mut as_pod = template(&[], "builder");
    as_pod.is_template = false;
    let (r, _) = c.probe(&store, &node, "ns", &as_pod, &image).await;
    assert_verdict(&r, Verdict::Unauthorized);
    // A template that names its own secrets does not get the account's (the plugin copies
    // only into an empty list).
    let (r, _) = c
        .probe(
            &store,
            &node,
            "ns",
            &template(&["other"], "builder"),
            &image,
        )
        .await;
    assert_verdict(&r, Verdict::Unauthorized);
    assert_eq!(c.api.count("/serviceaccounts/"), 1, "{:?}", c.api.calls());

    // The `default` account has none: anonymous.
    let (r, credentials) = c
        .probe(&store, &node, "ns", &template(&[], "default"), &image)
        .await;
    assert_verdict(&r, Verdict::Unauthorized);
    assert!(
        credentials.warnings.is_empty(),
        "{:?}",
        credentials.warnings
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_secrets_are_warnings_and_the_review_goes_on() {
    let c = Cluster::new().await;
    c.w.push("app", "v1", ImageSpec::new()).await;
    c.secret("ns", "good", None, PASSWORD);
    c.api.put_secret(
        "ns",
        "opaque",
        "Opaque",
        &[("password", PASSWORD.as_bytes())],
    );
    c.api.put_secret(
        "ns",
        "broken",
        "kubernetes.io/dockerconfigjson",
        &[(
            ".dockerconfigjson",
            format!("{{\"auths\": {{\"x\": \"{PASSWORD}").as_bytes(),
        )],
    );
    c.api.put_secret(
        "ns",
        "huge",
        "kubernetes.io/dockerconfigjson",
        &[(".dockerconfigjson", &vec![b' '; 3 << 20])],
    );
    let store = c.store();
    let refs = pod(&["gone", "opaque", "broken", "huge", "good"]);
    let (r, credentials) = c
        .probe(&store, &Keyring::default(), "ns", &refs, &c.image("app"))
        .await;
    assert_verdict(&r, Verdict::Pullable);
    assert_eq!(credentials.secrets, ["ns/good"]);
    let warnings = credentials.warnings.join("\n");
    for expected in [
        "secret \"ns/gone\" not found; the kubelet will pull without it",
        "secret \"ns/opaque\" is not a docker registry secret (type Opaque)",
        "secret \"ns/broken\" is malformed",
        "secret \"ns/huge\" is malformed: larger than",
    ] {
        assert!(
            warnings.contains(expected),
            "missing {expected:?} in:\n{warnings}"
        );
    }
    assert!(!warnings.contains(PASSWORD));
    assert!(!credentials.incomplete);

    // RBAC that forbids reading: a warning naming the fix, not a failed review.
    c.api.forbid_namespace("locked");
    let (r, credentials) = c
        .probe(
            &store,
            &Keyring::default(),
            "locked",
            &template(&[], "deployer"),
            &c.image("app"),
        )
        .await;
    assert_verdict(&r, Verdict::Unauthorized);
    assert_eq!(
        credentials.warnings,
        [
            "serviceaccount \"locked/deployer\" cannot be read: forbidden (check pullgate's RBAC); the kubelet will pull without it"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_credentials_are_tried_after_the_pods_own() {
    let c = Cluster::new().await;
    c.w.push("app", "v1", ImageSpec::new()).await;
    c.secret("ns", "stale", None, STALE);
    let node_config = json!({"auths": {c.registry.host(): {"auth": base64_encode(&format!("{USER}:{PASSWORD}"))}}});
    let mut node = Keyring::default();
    node.add(
        &docker_config::parse_docker_config(node_config.to_string().as_bytes(), "node config.json")
            .unwrap(),
    );
    let store = c.store();
    let (r, _) = c
        .probe(&store, &node, "ns", &pod(&["stale"]), &c.image("app"))
        .await;
    assert_verdict(&r, Verdict::Pullable);
    assert_eq!(r.attempts, 2);
    assert_eq!(r.credential.as_deref(), Some("node config.json"));
    // Without pod secrets the node's credential is the only one.
    let (r, _) = c
        .probe(&store, &node, "ns", &pod(&[]), &c.image("app"))
        .await;
    assert_verdict(&r, Verdict::Pullable);
    assert_eq!(r.attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_secret_for_a_public_image_fails_like_the_kubelet() {
    let w = World::new();
    w.push("public/app", "v1", ImageSpec::new()).await;
    let tokens = TokenServer::start(&w.pki).await;
    tokens.grant(None, "public/*", &["pull"]);
    tokens.grant(Some((USER, PASSWORD)), "private/*", &["pull"]);
    let registry = w.registry(tokens.registry_auth());
    let api = ApiServer::start(&w.pki).await;
    api.put_registry_secret("ns", "stale", &registry.host(), USER, STALE);
    let store = SecretStore::new(api.client(), SecretOptions::default());
    let image = ImageRef::parse(&format!("{}/public/app:v1", registry.host())).unwrap();
    let run = |refs: PullSecretRefs| {
        let (store, image, client) = (&store, &image, w.client());
        async move {
            let credentials = store.for_pod("ns", &refs).await;
            let found = credentials.lookup(&Keyring::default(), image);
            probe::probe(&client, image, &found, &ProbeOptions::default()).await
        }
    };
    assert_verdict(&run(pod(&[])).await, Verdict::Pullable);
    assert_verdict(&run(pod(&["stale"])).await, Verdict::Unauthorized);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_reviews_reads_each_object_once() {
    let c = Cluster::new().await;
    c.secret("ns", "one", None, PASSWORD);
    c.secret("ns", "two", None, STALE);
    c.api.put_service_account("ns", "builder", &["one", "two"]);
    // Slow answers keep every call of the burst in flight together.
    c.api.set_delay(Some(Duration::from_millis(200)));
    let store = c.store();
    let refs = template(&[], "builder");
    let burst = (0..500).map(|_| store.for_pod("ns", &refs));
    let results = futures_util::future::join_all(burst).await;
    assert!(results.iter().all(|r| r.secrets == ["ns/one", "ns/two"]));
    assert_eq!(c.api.calls().len(), 3, "{:?}", c.api.calls());
    // And the next reviews are served from the cache.
    store.for_pod("ns", &refs).await;
    assert_eq!(c.api.calls().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_and_deleted_secrets_apply_after_the_ttl() {
    let c = Cluster::new().await;
    c.w.push("app", "v1", ImageSpec::new()).await;
    c.secret("ns", "regcred", None, STALE);
    let ttl = Duration::from_millis(300);
    let store = c.store_with(SecretOptions {
        ttl,
        ..SecretOptions::default()
    });
    let node = Keyring::default();
    let refs = pod(&["regcred"]);
    let (r, _) = c.probe(&store, &node, "ns", &refs, &c.image("app")).await;
    assert_verdict(&r, Verdict::Unauthorized);

    // The fix is applied; within the TTL the old read may still be used, after it never.
    c.secret("ns", "regcred", None, PASSWORD);
    tokio::time::sleep(ttl * 2).await;
    let (r, _) = c.probe(&store, &node, "ns", &refs, &c.image("app")).await;
    assert_verdict(&r, Verdict::Pullable);

    c.api.delete("secrets", "ns", "regcred");
    tokio::time::sleep(ttl * 2).await;
    let (r, credentials) = c.probe(&store, &node, "ns", &refs, &c.image("app")).await;
    assert_verdict(&r, Verdict::Unauthorized);
    assert_eq!(credentials.warnings.len(), 1, "{:?}", credentials.warnings);
    assert!(credentials.warnings[0].contains("not found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_trouble_marks_the_credentials_incomplete() {
    let c = Cluster::new().await;
    c.secret("ns", "regcred", None, PASSWORD);
    let store = c.store_with(SecretOptions {
        error_ttl: Duration::from_millis(200),
        request_timeout: Duration::from_millis(300),
        ..SecretOptions::default()
    });
    c.api.fail_with(Some(500));
    let credentials = store.for_pod("ns", &pod(&["regcred"])).await;
    assert!(credentials.incomplete);
    assert_eq!(
        credentials.warnings,
        ["secret \"ns/regcred\" could not be read: API server answered HTTP 500"]
    );

    // A stalled API server is cut off at the request deadline.
    c.api.fail_with(None);
    c.api.set_delay(Some(Duration::from_secs(30)));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let credentials = store.for_pod("ns", &pod(&["regcred"])).await;
    assert!(credentials.incomplete);
    assert!(
        credentials.warnings[0].contains("no answer within 300ms"),
        "{:?}",
        credentials.warnings
    );

    // Errors are kept only briefly: once the server recovers, the secret is read again.
    c.api.set_delay(None);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let credentials = store.for_pod("ns", &pod(&["regcred"])).await;
    assert!(!credentials.incomplete);
    assert_eq!(credentials.secrets, ["ns/regcred"]);
}

/// Collects everything tracing writes, at every level, for one test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn secrets_never_reach_logs_debug_output_or_warnings() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let c = Cluster::new().await;
    c.w.push("app", "v1", ImageSpec::new()).await;
    c.secret("ns", "stale", None, STALE);
    c.secret("ns", "good", None, PASSWORD);
    c.api.put_secret(
        "ns",
        "broken",
        "kubernetes.io/dockerconfigjson",
        &[(
            ".dockerconfigjson",
            format!("{{\"auths\":{{\"{PASSWORD}\":").as_bytes(),
        )],
    );
    let store = c.store();
    let (r, credentials) = c
        .probe(
            &store,
            &Keyring::default(),
            "ns",
            &pod(&["broken", "stale", "good"]),
            &c.image("app"),
        )
        .await;
    assert_verdict(&r, Verdict::Pullable);

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("ns/broken"),
        "the secret's name is logged:\n{logs}"
    );
    let outputs = [
        logs,
        format!("{credentials:?}"),
        format!("{store:?}"),
        format!("{r:?}"),
        serde_json::to_string(&r).unwrap(),
        credentials.warnings.join("\n"),
    ];
    let basic = base64_encode(&format!("{USER}:{PASSWORD}"));
    for output in outputs {
        for secret in [PASSWORD, STALE, basic.as_str()] {
            assert!(!output.contains(secret), "{secret} leaked into:\n{output}");
        }
    }
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}
