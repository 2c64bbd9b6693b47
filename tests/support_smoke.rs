//! Proves the shared harness works against the real distribution 2.8.2 binary, and pins down
//! the registry behaviours the probe's tests depend on.

mod support;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::{Method, StatusCode, Version};
use serde_json::Value;
use support::*;

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn json(resp: reqwest::Response) -> anyhow::Result<Value> {
    Ok(serde_json::from_slice(&resp.bytes().await?)?)
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_registry_round_trips_images_and_indexes() -> anyhow::Result<()> {
    let pki = Pki::new();
    let storage = tempfile::tempdir()?;
    let registry = Registry::start(&pki, storage.path(), RegistryAuth::Anonymous)?;
    let client = test_client(&pki);
    let base = registry.base();

    let amd64 = push_image(
        &base,
        &client,
        "smoke/app",
        Some("v1"),
        &ImageSpec::new().with_layers(&[1000, 2000, 3000]),
    )
    .await?;
    assert_eq!(amd64.layer_sizes, vec![1000, 2000, 3000]);
    let arm64 = push_image(
        &base,
        &client,
        "smoke/app",
        None,
        &ImageSpec::new().with_platform_spec(PlatformSpec::linux_arm64()),
    )
    .await?;
    let index = push_index(
        &base,
        &client,
        "smoke/app",
        Some("multi"),
        &[
            (PlatformSpec::linux_amd64(), &amd64),
            (PlatformSpec::linux_arm64(), &arm64),
        ],
        true,
        true,
    )
    .await?;

    let resp = client
        .get(registry.url("/v2/smoke/app/manifests/v1"))
        .header(ACCEPT, ACCEPT_ALL_MANIFESTS)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    // distribution 2.8.2 negotiates h2 over TLS, so the probe's HTTP/2 path is exercised.
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(header(&resp, "content-type"), OCI_MANIFEST);
    assert_eq!(
        header(&resp, "docker-content-digest"),
        amd64.manifest_digest
    );
    let body = resp.bytes().await?;
    assert_eq!(sha256_digest(&body), amd64.manifest_digest);
    assert_eq!(body.as_ref(), amd64.manifest_bytes.as_slice());

    let resp = client
        .get(registry.url("/v2/smoke/app/manifests/multi"))
        .header(ACCEPT, ACCEPT_ALL_MANIFESTS)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-type"), OCI_INDEX);
    assert_eq!(header(&resp, "docker-content-digest"), index.digest);
    let body: Value = serde_json::from_slice(&resp.bytes().await?)?;
    let manifests = body["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 3);
    assert_eq!(manifests[1]["digest"], arm64.manifest_digest.as_str());
    assert_eq!(manifests[1]["platform"]["variant"], "v8");
    let attestation = index.attestation.as_ref().unwrap();
    assert_eq!(manifests[2]["platform"]["os"], "unknown");
    assert_eq!(
        manifests[2]["annotations"]["vnd.docker.reference.digest"],
        amd64.manifest_digest.as_str()
    );
    for blob in attestation.uploaded_blobs() {
        let resp = client
            .head(registry.url(&format!("/v2/smoke/app/blobs/{blob}")))
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::OK, "attestation blob {blob}");
    }

    // distribution hides OCI manifests from clients that do not accept the OCI type.
    let resp = client
        .get(registry.url("/v2/smoke/app/manifests/v1"))
        .header(ACCEPT, DOCKER_MANIFEST)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let text = resp.text().await?;
    assert!(text.contains("MANIFEST_UNKNOWN"), "{text}");

    // One byte of a layer: the probe's blob check.
    let resp = client
        .get(registry.url(&format!("/v2/smoke/app/blobs/{}", amd64.layer_digests[0])))
        .header(RANGE, "bytes=0-0")
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&resp, "content-range"), "bytes 0-0/1000");
    assert_eq!(resp.bytes().await?.len(), 1);

    // Docker schema2 with a 0-byte layer and a foreign layer (accepted because the config
    // allows http(s) URLs), in a Docker manifest list without attestation.
    let docker = push_image(
        &base,
        &client,
        "smoke/docker",
        Some("v1"),
        &ImageSpec::new()
            .docker()
            .with_zero_size_layer()
            .with_foreign_layer(&["https://127.0.0.1:9/foreign/layer"]),
    )
    .await?;
    assert_eq!(docker.layer_digests.len(), 3);
    assert_eq!(docker.foreign_layers.len(), 1);
    let list = push_index(
        &base,
        &client,
        "smoke/docker",
        Some("list"),
        &[(PlatformSpec::linux_amd64(), &docker)],
        false,
        false,
    )
    .await?;
    let resp = client
        .get(registry.url("/v2/smoke/docker/manifests/list"))
        .header(ACCEPT, ACCEPT_ALL_MANIFESTS)
        .send()
        .await?;
    assert_eq!(header(&resp, "content-type"), DOCKER_MANIFEST_LIST);
    assert_eq!(header(&resp, "docker-content-digest"), list.digest);

    // A 0-byte blob cannot satisfy bytes=0-0: distribution answers 416.
    let resp = client
        .get(registry.url(&format!(
            "/v2/smoke/docker/blobs/{}",
            docker.layer_digests[1]
        )))
        .header(RANGE, "bytes=0-0")
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&resp, "content-range"), "bytes */0");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_registry_challenges_for_basic() -> anyhow::Result<()> {
    let pki = Pki::new();
    let storage = tempfile::tempdir()?;
    let registry = Registry::start(
        &pki,
        storage.path(),
        RegistryAuth::htpasswd(&[("alice", "wonderland")]),
    )?;
    let client = test_client(&pki);

    let resp = client.get(registry.url("/v2/")).send().await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&resp, "www-authenticate"),
        format!("Basic realm=\"{HTPASSWD_REALM}\"")
    );

    let resp = client
        .get(registry.url("/v2/"))
        .header(AUTHORIZATION, basic("alice", "wonderland"))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);

    let resp = client
        .get(registry.url("/v2/"))
        .header(AUTHORIZATION, basic("alice", "wrong"))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_registry_accepts_our_tokens() -> anyhow::Result<()> {
    let pki = Pki::new();
    let storage = tempfile::tempdir()?;
    let client = test_client(&pki);
    // Push through an anonymous registry, then serve the same storage with token auth.
    let image = {
        let open = Registry::start(&pki, storage.path(), RegistryAuth::Anonymous)?;
        for (repo, tag) in [("team/app", "v1"), ("other/app", "v1")] {
            push_image(&open.base(), &client, repo, Some(tag), &ImageSpec::new()).await?;
        }
        push_image(
            &open.base(),
            &client,
            "team/app",
            Some("v2"),
            &ImageSpec::new(),
        )
        .await?
    };
    let tokens = TokenServer::start(&pki).await;
    tokens.grant(Some(("alice", "s3cret")), "team/*", &["pull"]);
    tokens.add_user("bob", "hunter2");
    tokens.set_response_style(TokenStyle::Both);
    let registry = Registry::start(&pki, storage.path(), tokens.registry_auth())?;
    let manifest_url = registry.url("/v2/team/app/manifests/v2");

    let resp = client
        .get(&manifest_url)
        .header(ACCEPT, ACCEPT_ALL_MANIFESTS)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&resp, "www-authenticate"),
        format!(
            "Bearer realm=\"{}\",service=\"{TOKEN_SERVICE}\",scope=\"repository:team/app:pull\"",
            tokens.realm()
        )
    );

    let resp = client.get(registry.url("/v2/")).send().await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&resp, "www-authenticate"),
        format!(
            "Bearer realm=\"{}\",service=\"{TOKEN_SERVICE}\"",
            tokens.realm()
        )
    );

    let fetch = |user: &'static str, password: &'static str, repo: &'static str| {
        let client = client.clone();
        let mut url = url::Url::parse(&tokens.realm()).unwrap();
        url.query_pairs_mut()
            .append_pair("service", TOKEN_SERVICE)
            .append_pair("scope", &format!("repository:{repo}:pull"));
        async move {
            client
                .get(url)
                .header(AUTHORIZATION, basic(user, password))
                .send()
                .await
        }
    };
    let resp = fetch("alice", "s3cret", "team/app").await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = json(resp).await?;
    assert_eq!(body["token"], body["access_token"]);
    assert_eq!(body["expires_in"], 300);
    let token = body["token"].as_str().unwrap().to_string();

    let resp = client
        .get(&manifest_url)
        .header(ACCEPT, ACCEPT_ALL_MANIFESTS)
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK, "{}", registry.logs());
    assert_eq!(
        header(&resp, "docker-content-digest"),
        image.manifest_digest
    );

    // The token only covers team/app, so other/app is refused with insufficient_scope.
    let resp = client
        .get(registry.url("/v2/other/app/manifests/v1"))
        .header(ACCEPT, ACCEPT_ALL_MANIFESTS)
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&resp, "www-authenticate"),
        format!(
            "Bearer realm=\"{}\",service=\"{TOKEN_SERVICE}\",scope=\"repository:other/app:pull\",error=\"insufficient_scope\"",
            tokens.realm()
        )
    );

    // An expired token is refused as invalid_token, not insufficient_scope.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let expired = tokens.sign_claims(&serde_json::json!({
        "iss": TOKEN_ISSUER, "sub": "alice", "aud": TOKEN_SERVICE,
        "exp": now - 100, "nbf": now - 1000, "iat": now - 1000, "jti": "expired",
        "access": [{ "type": "repository", "name": "team/app", "actions": ["pull"] }],
    }));
    let resp = client
        .get(&manifest_url)
        .header(ACCEPT, ACCEPT_ALL_MANIFESTS)
        .bearer_auth(&expired)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(header(&resp, "www-authenticate").ends_with(",error=\"invalid_token\""));

    // Valid credentials without a grant still get a token, just an empty one.
    let resp = fetch("alice", "s3cret", "other/app").await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let empty: Value = json(resp).await?;
    let resp = client
        .get(registry.url("/v2/other/app/manifests/v1"))
        .header(ACCEPT, ACCEPT_ALL_MANIFESTS)
        .bearer_auth(empty["token"].as_str().unwrap())
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = fetch("bob", "hunter2", "team/app").await?;
    assert_eq!(resp.status(), StatusCode::OK);

    let resp = fetch("alice", "wrong", "team/app").await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let error: Value = json(resp).await?;
    assert_eq!(error["errors"][0]["code"], "UNAUTHORIZED");

    // The OAuth2 POST flow containerd tries first, with the access_token-only shape.
    tokens.set_response_style(TokenStyle::AccessToken);
    tokens.set_expires_in(None);
    let resp = client
        .post(tokens.realm())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("grant_type=password&username=alice&password=s3cret&service=pullgate-test-registry&scope=repository%3Ateam%2Fapp%3Apull&client_id=pullgate")
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = json(resp).await?;
    assert!(body.get("token").is_none() && body.get("expires_in").is_none());
    let resp = client
        .get(&manifest_url)
        .header(ACCEPT, ACCEPT_ALL_MANIFESTS)
        .bearer_auth(body["access_token"].as_str().unwrap())
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);

    assert_eq!(tokens.requests(), 5);
    assert_eq!(
        tokens.seen_users(),
        vec![
            Some("alice".to_string()),
            Some("alice".to_string()),
            Some("bob".to_string()),
            Some("alice".to_string()),
            Some("alice".to_string()),
        ]
    );
    assert_eq!(
        tokens.token_requests()[0].scopes,
        vec!["repository:team/app:pull".to_string()]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_proxy_and_cdn_emulate_registry_fronts() -> anyhow::Result<()> {
    let pki = Pki::new();
    let storage = tempfile::tempdir()?;
    let registry = Registry::start(&pki, storage.path(), RegistryAuth::Anonymous)?;
    let client = test_client(&pki);
    let image = push_image(
        &registry.base(),
        &client,
        "proj/app",
        Some("v1"),
        &ImageSpec::new().with_layers(&[4096]),
    )
    .await?;
    let proxy = PolicyProxy::start(&pki, &registry).await;
    let cdn = Cdn::start(&pki, Some(&registry)).await;
    proxy.rule(Rule {
        method: Some(Method::GET),
        path_contains: "/manifests/".into(),
        action: Action::harbor_policy_violation("blocked by vulnerability policy"),
    });

    let resp = client
        .get(proxy.url("/v2/proj/app/manifests/v1"))
        .header(ACCEPT, ACCEPT_ALL_MANIFESTS)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
    let body: Value = json(resp).await?;
    assert_eq!(body["errors"][0]["code"], "PROJECTPOLICYVIOLATION");

    // HEAD is not covered by the GET-only rule and passes through.
    let resp = client
        .head(proxy.url("/v2/proj/app/manifests/v1"))
        .header(ACCEPT, ACCEPT_ALL_MANIFESTS)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header(&resp, "docker-content-digest"),
        image.manifest_digest
    );
    let resp = client.get(proxy.url("/v2/")).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let layer = &image.layer_digests[0];
    let blob_path = format!("/v2/proj/app/blobs/{layer}");
    let resp = client.get(proxy.url(&blob_path)).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let full = resp.bytes().await?;
    assert_eq!(sha256_digest(&full), *layer);

    proxy.rule(Rule {
        method: None,
        path_contains: "/blobs/".into(),
        action: Action::RedirectTo { base: cdn.base() },
    });
    let resp = client
        .get(proxy.url(&blob_path))
        .header(AUTHORIZATION, "Bearer registry-token")
        .header(RANGE, "bytes=0-0")
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = header(&resp, LOCATION.as_str());
    assert_eq!(location, cdn.url(&blob_path));

    let resp = client
        .get(&location)
        .header(RANGE, "bytes=0-0")
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(&resp, CONTENT_RANGE.as_str()),
        format!("bytes 0-0/{}", full.len())
    );
    assert_eq!(resp.bytes().await?.as_ref(), &full[..1]);

    let resp = client
        .get(&location)
        .header(AUTHORIZATION, "Bearer registry-token")
        .header(RANGE, "bytes=0-0")
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(
        resp.text()
            .await?
            .contains("Only one auth mechanism allowed")
    );

    let seen = cdn.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].authorization.is_none());
    assert_eq!(seen[0].range.as_deref(), Some("bytes=0-0"));
    assert!(seen[1].authorization.is_some());
    let proxied = proxy.requests();
    assert_eq!(
        proxied.last().unwrap().authorization.as_deref(),
        Some("Bearer registry-token")
    );
    assert_eq!(proxy.count("/blobs/"), 2);
    assert_eq!(proxy.count("/manifests/"), 2);

    // A stall that fires once: the first request hangs, the retry is proxied.
    proxy.rule_times(Rule::new(None, "/v2/proj/stall", Action::Stall), 1);
    let stalled = tokio::time::timeout(
        Duration::from_millis(300),
        client.get(proxy.url("/v2/proj/stall/tags/list")).send(),
    )
    .await;
    assert!(stalled.is_err(), "stall rule answered");
    let resp = client
        .get(proxy.url("/v2/proj/stall/tags/list"))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_through_proxy_rewrites_location() -> anyhow::Result<()> {
    let pki = Pki::new();
    let storage = tempfile::tempdir()?;
    let registry = Registry::start(&pki, storage.path(), RegistryAuth::Anonymous)?;
    let proxy = PolicyProxy::start(&pki, &registry).await;
    let client = test_client(&pki);
    let image = push_image(
        &proxy.base(),
        &client,
        "via/proxy",
        Some("v1"),
        &ImageSpec::new(),
    )
    .await?;
    // Every hop of the push went through the proxy, none straight to the registry.
    assert!(proxy.count("/blobs/uploads/") >= 4);
    let resp = client
        .get(registry.url("/v2/via/proxy/manifests/v1"))
        .header(ACCEPT, ACCEPT_ALL_MANIFESTS)
        .send()
        .await?;
    assert_eq!(
        header(&resp, "docker-content-digest"),
        image.manifest_digest
    );
    assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    Ok(())
}
