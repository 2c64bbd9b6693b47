//! Credential providers that are sent the pod's service-account token (KEP-4412,
//! `tokenAttributes`), end to end: the stand-in API server issues tokens through its
//! TokenRequest path, a test plugin (a Python script the test writes, run without a shell)
//! turns a token of `shop`'s ServiceAccount into the real htpasswd registry's password and any
//! other token into a wrong one, and the webhook must never let one namespace's verdict come
//! from another's token.

mod support;

use serde_json::{Value, json};
use support::*;
use tempfile::TempDir;

const AUDIENCE: &str = "registry.example.com";
const ROLE: &str = "example.com/registry-role";

/// A plugin directory with `token-provider` and its config. The plugin logs each request
/// (image, token, annotations) to `runs` and answers `alice:s3cret` only for a token of a
/// ServiceAccount in `shop` whose `ROLE` annotation says `reader`; with `echo`, it answers the
/// token itself as the password.
struct TokenPlugin {
    dir: TempDir,
}

impl TokenPlugin {
    fn new(host: &str, cache_type: &str, echo: bool) -> TokenPlugin {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let script = format!(
            r#"#!/usr/bin/env python3
import json, os, sys
request = json.load(sys.stdin)
assert request["kind"] == "CredentialProviderRequest", request
token = request.get("serviceAccountToken", "")
annotations = request.get("serviceAccountAnnotations", {{}})
with open(os.environ["RUNS"], "a") as runs:
    runs.write(json.dumps({{"image": request["image"], "token": token, "annotations": annotations}}) + "\n")
parts = token.split(".")
if {echo}:
    user, password = "alice", token
elif len(parts) == 4 and parts[1] == "shop" and annotations.get("{ROLE}") == "reader":
    user, password = "alice", "s3cret"
else:
    user, password = "bob", "not-the-password"
print(json.dumps({{
    "apiVersion": request["apiVersion"],
    "kind": "CredentialProviderResponse",
    "cacheKeyType": "Registry",
    "cacheDuration": "1h",
    "auth": {{"{host}": {{"username": user, "password": password}}}},
}}))
"#,
            echo = if echo { "True" } else { "False" },
        );
        let path = bin.join("token-provider");
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = format!(
            r#"apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: token-provider
    matchImages: ["{host}"]
    defaultCacheDuration: "1h"
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    tokenAttributes:
      serviceAccountTokenAudience: {AUDIENCE}
      cacheType: {cache_type}
      requireServiceAccount: true
      requiredServiceAccountAnnotationKeys: ["{ROLE}"]
      optionalServiceAccountAnnotationKeys: ["example.com/unused"]
    env:
      - name: RUNS
        value: "{}"
"#,
            dir.path().join("runs").display()
        );
        std::fs::write(dir.path().join("config.yaml"), config).unwrap();
        TokenPlugin { dir }
    }

    fn providers(&self) -> pullgate::credentials::CredentialProviders {
        pullgate::credentials::CredentialProviders::load(
            &self.dir.path().join("config.yaml"),
            &self.dir.path().join("bin"),
        )
        .unwrap()
    }

    /// Every request the plugin got.
    fn runs(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("runs"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

struct Setup {
    _w: World,
    _registry: Registry,
    api: ApiServer,
    host: String,
}

async fn setup() -> Setup {
    let w = World::new();
    w.push("team/app", "v1", ImageSpec::new().with_layers(&[100]))
        .await;
    let registry = Registry::start(
        &w.pki,
        w.storage.path(),
        RegistryAuth::htpasswd(&[("alice", "s3cret")]),
    )
    .unwrap();
    let api = ApiServer::start(&w.pki).await;
    for namespace in ["shop", "other"] {
        api.put_annotated_service_account(namespace, "puller", &[], &[(ROLE, "reader")]);
    }
    api.put_service_account("shop", "plain", &[]);
    Setup {
        host: registry.host(),
        _w: w,
        _registry: registry,
        api,
    }
}

impl Setup {
    /// The webhook with `plugin`, requesting tokens when `tokens` is set.
    async fn webhook(&self, plugin: &TokenPlugin, tokens: bool) -> Webhook {
        let mut config = test_config(&self._w.pki);
        config.kube = Some(self.api.client());
        config.credential_providers = plugin.providers();
        config.provider_service_account_tokens = tokens;
        Webhook::start(config, &self._w.pki).await
    }
}

/// An AdmissionReview of a Pod in `namespace`, run as `account`, pulling `host/team/app:v1`.
fn review(uid: usize, namespace: &str, account: &str, host: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("uid-{uid}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": format!("p{uid}"), "namespace": namespace},
                "spec": {
                    "serviceAccountName": account,
                    "containers": [{"name": "app", "image": format!("{host}/team/app:v1")}]
                }
            }
        }
    })
}

fn denial(answer: &Value) -> &str {
    answer["status"]["message"].as_str().unwrap_or_default()
}

/// The heart of the isolation: `shop`'s token gives the registry's password, `other`'s does
/// not. Reviews of both, concurrent and then one after the other, must each get the verdict
/// of their own ServiceAccount's credential, with one TokenRequest and one plugin run per
/// ServiceAccount for the whole burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_never_gets_a_verdict_made_with_another_service_accounts_token() {
    let s = setup().await;
    let plugin = TokenPlugin::new(&s.host, "ServiceAccount", false);
    let hook = s.webhook(&plugin, true).await;
    let answers = futures_util::future::join_all((0..100).map(|i| {
        let namespace = if i % 2 == 0 { "shop" } else { "other" };
        let (hook, review) = (&hook, review(i, namespace, "puller", &s.host));
        async move { (namespace, hook.review(&review).await) }
    }))
    .await;
    for (namespace, answer) in &answers {
        if *namespace == "shop" {
            assert_eq!(answer["allowed"], true, "{answer}");
        } else {
            assert_eq!(answer["allowed"], false, "{answer}");
            assert!(denial(answer).contains("unauthorized"), "{answer}");
        }
        assert!(!answer.to_string().contains("sa-token"), "{answer}");
    }
    // Cached, one after the other, in both orders.
    for (i, namespace, allowed) in [
        (200, "other", false),
        (201, "shop", true),
        (202, "other", false),
    ] {
        let answer = hook.review(&review(i, namespace, "puller", &s.host)).await;
        assert_eq!(answer["allowed"], allowed, "{namespace}: {answer}");
    }

    // One token and one run per ServiceAccount; each token request as the kubelet makes it,
    // with the account's UID as precondition and the provider's audience.
    let requests = s.api.token_requests();
    let mut asked: Vec<&str> = requests.iter().map(|(ns, _, _)| ns.as_str()).collect();
    asked.sort_unstable();
    assert_eq!(asked, ["other", "shop"], "{requests:?}");
    for (namespace, name, body) in &requests {
        assert_eq!(name, "puller");
        assert_eq!(body["kind"], "TokenRequest");
        assert_eq!(body["spec"]["audiences"], json!([AUDIENCE]));
        assert_eq!(body["spec"]["expirationSeconds"], 600);
        assert_eq!(
            body["metadata"]["uid"],
            s.api.uid("serviceaccounts", namespace, "puller")
        );
    }
    let runs = plugin.runs();
    let mut tokens: Vec<&str> = runs.iter().map(|r| r["token"].as_str().unwrap()).collect();
    tokens.sort_unstable();
    assert_eq!(tokens.len(), 2, "{runs:?}");
    assert!(
        tokens[0].starts_with("sa-token.other.puller."),
        "{tokens:?}"
    );
    assert!(tokens[1].starts_with("sa-token.shop.puller."), "{tokens:?}");
    for run in &runs {
        assert_eq!(run["image"], format!("{}/team/app", s.host));
        // The required annotation, and no optional one the account lacks.
        assert_eq!(run["annotations"], json!({ROLE: "reader"}));
    }
}

/// The kubelet does not run the plugin for a ServiceAccount without a required annotation, so
/// the node gets no credential from it: the 401 is conclusive and nothing is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_required_annotation_the_plugin_is_not_run() {
    let s = setup().await;
    let plugin = TokenPlugin::new(&s.host, "ServiceAccount", false);
    let hook = s.webhook(&plugin, true).await;
    let answer = hook.review(&review(1, "shop", "plain", &s.host)).await;
    assert_eq!(answer["allowed"], false, "{answer}");
    assert!(denial(&answer).contains("unauthorized"), "{answer}");
    assert!(warnings(&answer).is_empty(), "{answer}");
    assert!(plugin.runs().is_empty());
    assert!(s.api.token_requests().is_empty());
}

/// Without `--provider-service-account-tokens` such a provider is skipped, and says how to
/// turn it on; its 401 is not a refusal, since the node will send the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_a_token_provider_is_a_warning_not_a_refusal() {
    let s = setup().await;
    let plugin = TokenPlugin::new(&s.host, "ServiceAccount", false);
    let hook = s.webhook(&plugin, false).await;
    let answer = hook.review(&review(1, "shop", "puller", &s.host)).await;
    assert_eq!(answer["allowed"], true, "{answer}");
    let said = warnings(&answer).join("\n");
    assert!(
        said.contains("credential provider token-provider failed"),
        "{said}"
    );
    assert!(said.contains("--provider-service-account-tokens"), "{said}");
    assert!(plugin.runs().is_empty());
    assert!(s.api.token_requests().is_empty());
}

/// A plugin that hands the token back as the password is refused unless answers are kept
/// per token (`cacheType: Token`), as the kubelet refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_as_a_password_is_accepted_only_when_kept_per_token() {
    let s = setup().await;
    let echo = TokenPlugin::new(&s.host, "ServiceAccount", true);
    let hook = s.webhook(&echo, true).await;
    let answer = hook.review(&review(1, "shop", "puller", &s.host)).await;
    let said = warnings(&answer).join("\n");
    assert!(
        said.contains("service-account token as a password"),
        "{said}"
    );
    assert!(!said.contains("sa-token"), "{said}");
    drop(hook);

    let per_token = TokenPlugin::new(&s.host, "Token", true);
    let hook = s.webhook(&per_token, true).await;
    let answer = hook.review(&review(2, "shop", "puller", &s.host)).await;
    let said = warnings(&answer).join("\n");
    assert!(!said.contains("as a password"), "{said}");
    assert_eq!(per_token.runs().len(), 1);
    // The registry refuses the token as a password: a credential the node also has, so the
    // 401 is conclusive.
    assert_eq!(answer["allowed"], false, "{answer}");
}

/// The providers that need a token are named in the start-up warning when the flag is off.
#[test]
fn token_providers_are_listed_for_the_start_up_warning() {
    let plugin = TokenPlugin::new("registry.example", "Token", false);
    assert_eq!(plugin.providers().token_providers(), ["token-provider"]);
}
