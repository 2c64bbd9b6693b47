//! The deep probe against a real registry (Debian's docker-registry, CNCF distribution) in
//! each auth mode, with policy layers and faults from a proxy in front of it.

mod support;

use std::time::{Duration, Instant};

use pullgate::{
    oci::platform::Platform,
    oci::reference::ImageRef,
    probe::Verdict,
    probe::{self, BlobKind, BlobMemory, ProbeOptions, Report},
    registry::Credential,
    registry::{ClientOptions, RegistryClient},
};
use support::*;

fn opts(platforms: &[&str], timeout: Duration) -> ProbeOptions {
    ProbeOptions {
        platforms: platforms
            .iter()
            .map(|p| Platform::parse(p).unwrap())
            .collect(),
        timeout,
        ..ProbeOptions::default()
    }
}

async fn check(client: &RegistryClient, reference: &str, creds: &[Credential]) -> Report {
    check_on(client, reference, creds, &["linux/amd64"]).await
}

async fn check_on(
    client: &RegistryClient,
    reference: &str,
    creds: &[Credential],
    platforms: &[&str],
) -> Report {
    let image = ImageRef::parse(reference).unwrap();
    probe::probe(
        client,
        &image,
        creds,
        &opts(platforms, Duration::from_secs(10)),
    )
    .await
}

fn cred(user: &str, pass: &str) -> Credential {
    Credential::new(user, pass, format!("test {user}"))
}

fn assert_verdict(r: &Report, v: Verdict) {
    assert_eq!(r.verdict, v, "unexpected verdict: {r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_single_arch_is_pullable_with_one_request_per_object() {
    let w = World::new();
    let img = w
        .push(
            "team/app",
            "v1",
            ImageSpec::new().with_layers(&[100, 200, 300]),
        )
        .await;
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    let r = check(&w.client(), &format!("{}/team/app:v1", proxy.host()), &[]).await;
    assert_verdict(&r, Verdict::Pullable);
    assert_eq!(r.digest.as_ref().unwrap().to_string(), img.manifest_digest);
    assert_eq!(r.blobs.len(), 4);
    assert_eq!(
        r.blobs
            .iter()
            .filter(|b| b.kind == BlobKind::Config)
            .count(),
        1
    );
    assert!(
        r.blobs.iter().all(|b| b.status == Some(206)),
        "{:?}",
        r.blobs
    );
    // 1 manifest + 4 blobs; never a /v2/ ping.
    assert_eq!(r.requests, 5);
    assert_eq!(proxy.requests().len(), 5);
    assert_eq!(proxy.count("=/v2/"), 0);
    // One byte of every layer; a single-platform image's config, which alone says what it
    // was built for, as one range of all its bytes.
    let config = r.blobs.iter().find(|b| b.kind == BlobKind::Config).unwrap();
    for s in proxy
        .requests()
        .iter()
        .filter(|s| s.path.contains("/blobs/"))
    {
        let want = if s.path.ends_with(&config.digest.to_string()) {
            format!("bytes=0-{}", config.size - 1)
        } else {
            "bytes=0-0".to_owned()
        };
        assert_eq!(s.range.as_deref(), Some(want.as_str()), "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_schema2_media_types_are_pullable() {
    let w = World::new();
    w.push(
        "legacy/app",
        "1",
        ImageSpec::new().docker().with_layers(&[10, 20]),
    )
    .await;
    let r = check(&w.client(), &format!("{}/legacy/app:1", w.seed.host()), &[]).await;
    assert_verdict(&r, Verdict::Pullable);
    assert_eq!(
        r.media_type.as_deref(),
        Some("application/vnd.docker.distribution.manifest.v2+json")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_cold_probe_makes_the_minimum_requests_and_reuses_the_token() {
    let w = World::new();
    w.push(
        "private/app",
        "v1",
        ImageSpec::new().with_layers(&[100, 200, 300]),
    )
    .await;
    let tokens = TokenServer::start(&w.pki).await;
    tokens.grant(Some(("alice", "s3cret")), "private/app", &["pull"]);
    let reg = w.registry(tokens.registry_auth());
    let proxy = PolicyProxy::start(&w.pki, &reg).await;
    let client = w.client();
    let reference = format!("{}/private/app:v1", proxy.host());
    let alice = [cred("alice", "s3cret")];

    let r = check(&client, &reference, &alice).await;
    assert_verdict(&r, Verdict::Pullable);
    // challenge (401 manifest) + token + manifest + config + 3 layers.
    assert_eq!(r.requests, 7, "{r:#?}");
    assert_eq!(tokens.requests(), 1);
    assert_eq!(
        tokens.token_requests()[0].scopes,
        vec!["repository:private/app:pull".to_owned()]
    );
    assert_eq!(tokens.seen_users(), vec![Some("alice".to_owned())]);

    // Warm: the realm is known and the token cached, so no challenge and no token request.
    let r = check(&client, &reference, &alice).await;
    assert_verdict(&r, Verdict::Pullable);
    assert_eq!(r.requests, 5);
    assert_eq!(tokens.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_refusals_are_unauthorized() {
    let w = World::new();
    w.push("private/app", "v1", ImageSpec::new()).await;
    w.push("public/app", "v1", ImageSpec::new()).await;
    let tokens = TokenServer::start(&w.pki).await;
    tokens.grant(Some(("alice", "s3cret")), "private/app", &["pull"]);
    tokens.grant(None, "public/*", &["pull"]);
    let reg = w.registry(tokens.registry_auth());
    let client = w.client();
    let private = format!("{}/private/app:v1", reg.host());

    // Anonymous: the token server grants nothing for this repository.
    let r = check(&client, &private, &[]).await;
    assert_verdict(&r, Verdict::Unauthorized);
    assert!(r.reason.contains("401"), "{}", r.reason);
    assert_eq!(
        r.registry.as_ref().unwrap().code.as_deref(),
        Some("UNAUTHORIZED")
    );

    // Wrong password: the token endpoint refuses.
    let r = check(&client, &private, &[cred("alice", "wrong")]).await;
    assert_verdict(&r, Verdict::Unauthorized);
    assert!(r.reason.contains("token endpoint"), "{}", r.reason);

    // A public image is pullable anonymously...
    let public = format!("{}/public/app:v1", reg.host());
    assert_verdict(&check(&client, &public, &[]).await, Verdict::Pullable);
    // ...but once a credential matched there is no anonymous attempt (the kubelet makes
    // none), so a stale secret fails the pull.
    let r = check(&client, &public, &[cred("alice", "stale")]).await;
    assert_verdict(&r, Verdict::Unauthorized);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_not_shared_across_credentials() {
    let w = World::new();
    w.push("private/app", "v1", ImageSpec::new()).await;
    let tokens = TokenServer::start(&w.pki).await;
    tokens.grant(Some(("alice", "s3cret")), "private/app", &["pull"]);
    let reg = w.registry(tokens.registry_auth());
    let client = w.client();
    let reference = format!("{}/private/app:v1", reg.host());
    assert_verdict(
        &check(&client, &reference, &[cred("alice", "s3cret")]).await,
        Verdict::Pullable,
    );
    // Same client, same registry, realm and scope: the anonymous probe must not reuse
    // alice's token.
    assert_verdict(
        &check(&client, &reference, &[]).await,
        Verdict::Unauthorized,
    );
    assert_eq!(tokens.seen_users().last().unwrap(), &None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_token_field_and_default_expiry_are_accepted() {
    let w = World::new();
    w.push("public/app", "v1", ImageSpec::new()).await;
    let tokens = TokenServer::start(&w.pki).await;
    tokens.grant(None, "public/app", &["pull"]);
    tokens.set_response_style(TokenStyle::AccessToken);
    tokens.set_expires_in(None);
    let reg = w.registry(tokens.registry_auth());
    let r = check(&w.client(), &format!("{}/public/app:v1", reg.host()), &[]).await;
    assert_verdict(&r, Verdict::Pullable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth() {
    let w = World::new();
    w.push("team/app", "v1", ImageSpec::new().with_layers(&[10, 10]))
        .await;
    let reg = w.registry(RegistryAuth::htpasswd(&[("bob", "hunter2")]));
    let client = w.client();
    let reference = format!("{}/team/app:v1", reg.host());
    let r = check(&client, &reference, &[cred("bob", "hunter2")]).await;
    assert_verdict(&r, Verdict::Pullable);
    assert_verdict(
        &check(&client, &reference, &[]).await,
        Verdict::Unauthorized,
    );
    assert_verdict(
        &check(&client, &reference, &[cred("bob", "nope")]).await,
        Verdict::Unauthorized,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_matching_credential_is_tried_in_order_until_one_pulls() {
    let w = World::new();
    w.push("team/app", "v1", ImageSpec::new()).await;
    let reg = w.registry(RegistryAuth::htpasswd(&[("bob", "hunter2")]));
    let reference = format!("{}/team/app:v1", reg.host());
    let creds = [cred("bob", "old-password"), cred("bob", "hunter2")];
    let r = check(&w.client(), &reference, &creds).await;
    assert_verdict(&r, Verdict::Pullable);
    assert_eq!(r.attempts, 2);
    assert_eq!(r.credential.as_deref(), Some("test bob"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_repository_challenge_when_ping_is_anonymous() {
    // /v2/ answers 200 without a challenge; the repository still demands Basic auth. A
    // client that decides auth from the ping never sends the credentials.
    let w = World::new();
    w.push("team/app", "v1", ImageSpec::new()).await;
    let reg = w.registry(RegistryAuth::htpasswd(&[("bob", "hunter2")]));
    let proxy = PolicyProxy::start(&w.pki, &reg).await;
    proxy.rule(Rule::new(None, "=/v2/", Action::json(200, "{}")));
    let r = check(
        &w.client(),
        &format!("{}/team/app:v1", proxy.host()),
        &[cred("bob", "hunter2")],
    )
    .await;
    assert_verdict(&r, Verdict::Pullable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_on_a_blob_is_answered_too() {
    // The manifest is served anonymously (a proxy rule answers it), the blobs need auth.
    let w = World::new();
    let img = w.push("team/app", "v1", ImageSpec::new()).await;
    let reg = w.registry(RegistryAuth::htpasswd(&[("bob", "hunter2")]));
    let proxy = PolicyProxy::start(&w.pki, &reg).await;
    proxy.rule(Rule::new(
        None,
        "/manifests/",
        Action::Respond {
            status: 200,
            headers: vec![("Content-Type".into(), img.manifest_media_type.clone())],
            body: String::from_utf8(img.manifest_bytes.clone()).unwrap(),
        },
    ));
    let client = w.client();
    let reference = format!("{}/team/app:v1", proxy.host());
    assert_verdict(
        &check(&client, &reference, &[cred("bob", "hunter2")]).await,
        Verdict::Pullable,
    );
    let r = check(&w.client(), &reference, &[]).await;
    assert_verdict(&r, Verdict::Unauthorized);
    assert!(r.failed_blob.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_arch_index_resolves_each_platform_and_skips_attestations() {
    let w = World::new();
    let (index, amd, arm) = w.push_multiarch("multi/app", "v1").await;
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    let client = w.client();
    let reference = format!("{}/multi/app:v1", proxy.host());

    let r = check_on(&client, &reference, &[], &["linux/amd64", "linux/arm64/v8"]).await;
    assert_verdict(&r, Verdict::Pullable);
    assert_eq!(r.digest.as_ref().unwrap().to_string(), index.digest);
    let digests: Vec<String> = r
        .platforms
        .iter()
        .map(|p| p.digest.as_ref().unwrap().to_string())
        .collect();
    assert_eq!(
        digests,
        vec![amd.manifest_digest.clone(), arm.manifest_digest.clone()]
    );
    // Both children's blobs, each probed once; the attestation's never.
    assert_eq!(
        r.blobs.len(),
        amd.uploaded_blobs().len() + arm.uploaded_blobs().len()
    );
    let att = index.attestation.as_ref().unwrap();
    for d in att.uploaded_blobs().iter().chain([&att.manifest_digest]) {
        assert_eq!(proxy.count(d), 0, "attestation object {d} was fetched");
    }

    let r = check_on(&client, &reference, &[], &["linux/s390x"]).await;
    assert_verdict(&r, Verdict::NotFound);
    assert!(
        r.reason.contains("no matching manifest for linux/s390x"),
        "{}",
        r.reason
    );
    assert!(r.reason.contains("linux/arm64"), "{}", r.reason);

    // Every platform must be pullable.
    let r = check_on(&client, &reference, &[], &["linux/amd64", "linux/s390x"]).await;
    assert_verdict(&r, Verdict::NotFound);
    assert_eq!(r.platforms[0].verdict, Verdict::Pullable);
    assert_eq!(r.platforms[1].verdict, Verdict::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harbor_policy_on_the_platform_manifest_is_blocked() {
    let w = World::new();
    let (_, amd, _) = w.push_multiarch("harbor/app", "v1").await;
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    let msg = "current image with 3 vulnerabilities cannot be pulled due to configured policy";
    proxy.rule(Rule::new(
        None,
        &format!("/manifests/{}", amd.manifest_digest),
        Action::harbor_policy_violation(msg),
    ));
    let client = w.client();
    let reference = format!("{}/harbor/app:v1", proxy.host());
    let r = check(&client, &reference, &[]).await;
    assert_verdict(&r, Verdict::Blocked);
    assert_eq!(
        r.registry.as_ref().unwrap().code.as_deref(),
        Some("PROJECTPOLICYVIOLATION")
    );
    assert!(
        r.reason.contains("412") && r.reason.contains(msg),
        "{}",
        r.reason
    );
    // The arm64 manifest is not gated.
    assert_verdict(
        &check_on(&client, &reference, &[], &["linux/arm64"]).await,
        Verdict::Pullable,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xray_refusing_one_layer_is_blocked_and_names_the_blob() {
    let w = World::new();
    let img = w
        .push(
            "xray/app",
            "v1",
            ImageSpec::new().with_layers(&[10, 20, 30]),
        )
        .await;
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    let bad = img.layer_digests[1].clone();
    let msg = "Artifact download request rejected: xray/app/v1 was not downloaded due to the download blocking policy configured in Xray";
    proxy.rule(Rule::new(
        None,
        &format!("/blobs/{bad}"),
        Action::denied(msg),
    ));
    let r = check(&w.client(), &format!("{}/xray/app:v1", proxy.host()), &[]).await;
    assert_verdict(&r, Verdict::Blocked);
    assert_eq!(r.failed_blob.as_ref().unwrap().to_string(), bad);
    assert!(
        r.reason.contains(msg) && r.reason.contains("403"),
        "{}",
        r.reason
    );
    let blob = r
        .blobs
        .iter()
        .find(|b| b.digest.to_string() == bad)
        .unwrap();
    assert_eq!((blob.status, blob.verdict), (Some(403), Verdict::Blocked));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_tag_and_deleted_blob_are_not_found() {
    let w = World::new();
    let img = w
        .push("gone/app", "v1", ImageSpec::new().with_layers(&[10, 20]))
        .await;
    let client = w.client();
    let r = check(&client, &format!("{}/gone/app:v2", w.seed.host()), &[]).await;
    assert_verdict(&r, Verdict::NotFound);
    assert_eq!(
        r.registry.as_ref().unwrap().code.as_deref(),
        Some("MANIFEST_UNKNOWN")
    );
    // The registry's code is named once, with its words: "…: MANIFEST_UNKNOWN: manifest unknown".
    assert_eq!(
        r.reason.matches("MANIFEST_UNKNOWN").count(),
        1,
        "{}",
        r.reason
    );
    assert!(
        r.reason.contains("MANIFEST_UNKNOWN: manifest unknown"),
        "{}",
        r.reason
    );

    let layer = &img.layer_digests[0];
    let resp = w
        .push
        .delete(w.seed.url(&format!("/v2/gone/app/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let r = check(&client, &format!("{}/gone/app:v1", w.seed.host()), &[]).await;
    assert_verdict(&r, Verdict::NotFound);
    assert_eq!(r.failed_blob.as_ref().unwrap().to_string(), *layer);
    assert_eq!(
        r.registry.as_ref().unwrap().code.as_deref(),
        Some("BLOB_UNKNOWN")
    );
    assert_eq!(r.reason.matches("BLOB_UNKNOWN").count(), 1, "{}", r.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_server_errors_are_unavailable() {
    let w = World::new();
    let img = w.push("busy/app", "v1", ImageSpec::new()).await;
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    let client = w.client();
    let reference = format!("{}/busy/app:v1", proxy.host());
    proxy.rule_times(
        Rule::new(
            None,
            "/manifests/",
            Action::json(429, r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}"#),
        ),
        1,
    );
    let r = check(&client, &reference, &[]).await;
    assert_verdict(&r, Verdict::Unavailable);
    assert!(r.reason.contains("pull rate limit"), "{}", r.reason);
    // This client now backs off from the host (tests/hostile.rs covers that); a fresh one
    // sees the next fault.
    let client = w.client();
    proxy.rule_times(
        Rule::new(
            None,
            &format!("/blobs/{}", img.config_digest),
            Action::json(503, ""),
        ),
        1,
    );
    let r = check(&client, &reference, &[]).await;
    assert_verdict(&r, Verdict::Unavailable);
    assert_eq!(
        r.failed_blob.as_ref().unwrap().to_string(),
        img.config_digest
    );
    assert_verdict(&check(&client, &reference, &[]).await, Verdict::Pullable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_registry_is_unavailable_within_the_deadline() {
    let w = World::new();
    let img = w.push("slow/app", "v1", ImageSpec::new()).await;
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    proxy.rule(Rule::new(
        None,
        &format!("/blobs/{}", img.layer_digests[0]),
        Action::Stall,
    ));
    let image = ImageRef::parse(&format!("{}/slow/app:v1", proxy.host())).unwrap();
    let started = Instant::now();
    let r = probe::probe(
        &w.client(),
        &image,
        &[],
        &opts(&["linux/amd64"], Duration::from_millis(1500)),
    )
    .await;
    assert_verdict(&r, Verdict::Unavailable);
    // The deadline is the bound; the slack only absorbs scheduling, not machine speed.
    assert!(started.elapsed() < Duration::from_millis(1500) + Duration::from_secs(2));
    assert!(
        r.reason.contains("deadline") || r.reason.contains("in time"),
        "{}",
        r.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_redirects_to_a_cdn_never_carry_the_credential() {
    let w = World::new();
    let img = w
        .push("cdn/app", "v1", ImageSpec::new().with_layers(&[10, 20]))
        .await;
    let reg = w.registry(RegistryAuth::htpasswd(&[("bob", "hunter2")]));
    let cdn = Cdn::start(&w.pki, Some(&reg)).await;
    let proxy = PolicyProxy::start(&w.pki, &reg).await;
    proxy.rule(Rule::new(
        None,
        "/blobs/",
        Action::RedirectTo { base: cdn.base() },
    ));
    let r = check(
        &w.client(),
        &format!("{}/cdn/app:v1", proxy.host()),
        &[cred("bob", "hunter2")],
    )
    .await;
    assert_verdict(&r, Verdict::Pullable);
    let seen = cdn.requests();
    assert_eq!(seen.len(), img.uploaded_blobs().len());
    assert!(seen.iter().all(|s| s.authorization.is_none()), "{seen:?}");
    // Each with its range (the config's is all of it: see the test above).
    assert!(
        seen.iter().all(|s| s
            .range
            .as_deref()
            .is_some_and(|r| r.starts_with("bytes=0-"))),
        "{seen:?}"
    );
    assert_eq!(
        seen.iter()
            .filter(|s| s.range.as_deref() == Some("bytes=0-0"))
            .count(),
        img.layer_digests.len()
    );
    // The registry itself did get the credential.
    assert!(proxy.requests().iter().any(|s| {
        s.authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Basic "))
    }));

    // Even a CDN that challenges for Basic auth gets nothing: the credential belongs to the
    // registry's origin alone.
    cdn.rule(Rule::new(
        None,
        "/blobs/",
        Action::Respond {
            status: 401,
            headers: vec![("WWW-Authenticate".into(), r#"Basic realm="cdn""#.into())],
            body: String::new(),
        },
    ));
    let reference = format!("{}/cdn/app:v1", proxy.host());
    let r = check(&w.client(), &reference, &[cred("bob", "hunter2")]).await;
    assert_verdict(&r, Verdict::Unauthorized);
    assert!(cdn.requests().iter().all(|s| s.authorization.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_loops_are_bounded() {
    let w = World::new();
    w.push("loop/app", "v1", ImageSpec::new()).await;
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    proxy.rule(Rule::new(
        None,
        "/blobs/",
        Action::RedirectTo { base: proxy.base() },
    ));
    let r = check(&w.client(), &format!("{}/loop/app:v1", proxy.host()), &[]).await;
    assert_verdict(&r, Verdict::Unavailable);
    assert!(r.reason.contains("redirects"), "{}", r.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_references_are_verified() {
    let w = World::new();
    let img = w.push("pinned/app", "v1", ImageSpec::new()).await;
    let other = w.push("pinned/app", "v2", ImageSpec::new()).await;
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    let client = w.client();
    // Digest wins over a tag that does not exist.
    let r = check(
        &client,
        &format!("{}/pinned/app:nope@{}", proxy.host(), img.manifest_digest),
        &[],
    )
    .await;
    assert_verdict(&r, Verdict::Pullable);
    assert_eq!(proxy.count("/manifests/nope"), 0);

    // A registry that serves other content for the digest is caught.
    proxy.rule(Rule::new(
        None,
        &format!("/manifests/{}", img.manifest_digest),
        Action::Respond {
            status: 200,
            headers: vec![("Content-Type".into(), other.manifest_media_type.clone())],
            body: String::from_utf8(other.manifest_bytes.clone()).unwrap(),
        },
    ));
    let r = check(
        &client,
        &format!("{}/pinned/app@{}", proxy.host(), img.manifest_digest),
        &[],
    )
    .await;
    assert_verdict(&r, Verdict::Invalid);
    assert!(r.reason.contains("digest mismatch"), "{}", r.reason);

    // So is a Docker-Content-Digest header that does not match the body of a tag.
    proxy.rule(Rule::new(
        None,
        "/manifests/v2",
        Action::Respond {
            status: 200,
            headers: vec![
                ("Content-Type".into(), other.manifest_media_type.clone()),
                ("Docker-Content-Digest".into(), img.manifest_digest.clone()),
            ],
            body: String::from_utf8(other.manifest_bytes.clone()).unwrap(),
        },
    ));
    let r = check(&client, &format!("{}/pinned/app:v2", proxy.host()), &[]).await;
    assert_verdict(&r, Verdict::Invalid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_ambiguous_manifests_are_invalid() {
    let w = World::new();
    w.push("odd/app", "v1", ImageSpec::new()).await;
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    let client = w.client();
    proxy.rule_times(
        Rule::new(None, "/manifests/", Action::json(200, "{not json")),
        1,
    );
    let reference = format!("{}/odd/app:v1", proxy.host());
    assert_verdict(&check(&client, &reference, &[]).await, Verdict::Invalid);
    let d = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    let both = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[],"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d}","size":1}},"layers":[]}}"#
    );
    proxy.rule_times(Rule::new(None, "/manifests/", Action::json(200, &both)), 1);
    let r = check(&client, &reference, &[]).await;
    assert_verdict(&r, Verdict::Invalid);
    assert!(r.reason.contains("ambiguous"), "{}", r.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_size_and_foreign_layers() {
    let w = World::new();
    let img = w
        .push(
            "edge/app",
            "v1",
            ImageSpec::new()
                .with_zero_size_layer()
                .with_foreign_layer(&["https://example.invalid/layer.tar.gz"]),
        )
        .await;
    let r = check(&w.client(), &format!("{}/edge/app:v1", w.seed.host()), &[]).await;
    assert_verdict(&r, Verdict::Pullable);
    let foreign = &img.foreign_layers[0].digest;
    assert!(
        r.blobs
            .iter()
            .any(|b| b.digest.to_string() == *foreign && b.skipped)
    );
    assert!(
        r.blobs
            .iter()
            .any(|b| b.size == 0 && b.status == Some(416) && b.verdict == Verdict::Pullable)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_sent_whole_despite_range_is_not_read_to_the_end() {
    let w = World::new();
    let img = w.push("norange/app", "v1", ImageSpec::new()).await;
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    // 8 MiB on 200: the probe must take the first bytes and drop the stream.
    proxy.rule(Rule::new(
        None,
        &format!("/blobs/{}", img.layer_digests[0]),
        Action::Respond {
            status: 200,
            headers: vec![],
            body: "x".repeat(8 << 20),
        },
    ));
    let r = check(
        &w.client(),
        &format!("{}/norange/app:v1", proxy.host()),
        &[],
    )
    .await;
    assert_verdict(&r, Verdict::Pullable);
    let b = r
        .blobs
        .iter()
        .find(|b| b.digest.to_string() == img.layer_digests[0])
        .unwrap();
    assert_eq!(b.status, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_connection_failures_are_unavailable() {
    let w = World::new();
    w.push("tls/app", "v1", ImageSpec::new()).await;
    // A client that does not trust the test CA.
    let untrusting = RegistryClient::new(ClientOptions::default()).unwrap();
    let r = check(&untrusting, &format!("{}/tls/app:v1", w.seed.host()), &[]).await;
    assert_verdict(&r, Verdict::Unavailable);
    // --insecure-skip-tls-verify gets through.
    let insecure = RegistryClient::new(ClientOptions {
        insecure_skip_tls_verify: true,
        ..ClientOptions::default()
    })
    .unwrap();
    assert_verdict(
        &check(&insecure, &format!("{}/tls/app:v1", w.seed.host()), &[]).await,
        Verdict::Pullable,
    );
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = check(&w.client(), &format!("127.0.0.1:{port}/tls/app:v1"), &[]).await;
    assert_verdict(&r, Verdict::Unavailable);
    assert!(r.reason.contains("cannot reach"), "{}", r.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_without_challenge_falls_back_to_the_ping_challenge() {
    // Old GCR answered resources with a bare 401; only then is /v2/ consulted.
    let w = World::new();
    w.push("public/app", "v1", ImageSpec::new()).await;
    let tokens = TokenServer::start(&w.pki).await;
    tokens.grant(None, "public/app", &["pull"]);
    let reg = w.registry(tokens.registry_auth());
    let proxy = PolicyProxy::start(&w.pki, &reg).await;
    proxy.rule_times(Rule::new(None, "/manifests/", Action::json(401, "")), 1);
    let r = check(&w.client(), &format!("{}/public/app:v1", proxy.host()), &[]).await;
    assert_verdict(&r, Verdict::Pullable);
    assert_eq!(proxy.count("=/v2/"), 1);
    assert_eq!(tokens.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_over_4_mib_are_refused() {
    let w = World::new();
    w.push("big/app", "v1", ImageSpec::new()).await;
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    let huge = format!(r#"{{"schemaVersion":2,"pad":"{}"}}"#, "x".repeat(5 << 20));
    proxy.rule(Rule::new(None, "/manifests/", Action::json(200, &huge)));
    let r = check(&w.client(), &format!("{}/big/app:v1", proxy.host()), &[]).await;
    assert_verdict(&r, Verdict::Invalid);
    assert!(
        r.reason.contains("larger than 4194304 bytes"),
        "{}",
        r.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_that_answered_are_not_asked_again_for_the_same_repository_and_credential() {
    let w = World::new();
    w.push("team/app", "v1", ImageSpec::new().with_layers(&[100, 200]))
        .await;
    let registry = w.registry(RegistryAuth::htpasswd(&[
        ("alice", "s3cret"),
        ("bob", "hunter2"),
    ]));
    let proxy = PolicyProxy::start(&w.pki, &registry).await;
    let client = w.client();
    let memory = BlobMemory::new(Duration::from_secs(60), 100_000);
    let check = |client: &RegistryClient, image: &str, creds: &[Credential]| {
        let (client, image, creds) = (
            client.clone(),
            ImageRef::parse(image).unwrap(),
            creds.to_vec(),
        );
        let options = ProbeOptions {
            blobs: memory.clone(),
            ..opts(&["linux/amd64"], Duration::from_secs(10))
        };
        async move { probe::probe(&client, &image, &creds, &options).await }
    };
    let image = format!("{}/team/app:v1", proxy.host());
    let alice = [cred("alice", "s3cret")];
    let first = check(&client, &image, &alice).await;
    assert_verdict(&first, Verdict::Pullable);
    assert_eq!(proxy.count("/blobs/"), 3);

    // The same repository and credential: only the manifest is fetched again.
    let again = check(&client, &image, &alice).await;
    assert_verdict(&again, Verdict::Pullable);
    assert!(again.blobs.iter().all(|b| b.cached), "{:?}", again.blobs);
    assert_eq!(proxy.count("/blobs/"), 3);

    // Another credential proves nothing by alice's answers: its blobs are asked for.
    let bob = check(&client, &image, &[cred("bob", "hunter2")]).await;
    assert_verdict(&bob, Verdict::Pullable);
    assert!(bob.blobs.iter().all(|b| !b.cached));
    assert_eq!(proxy.count("/blobs/"), 6);

    // A blob refused since is still caught for a credential that has not seen it pass.
    let layer = first.blobs[1].digest.to_string();
    proxy.rule(Rule::new(
        None,
        &format!("/blobs/{layer}"),
        Action::denied("quarantined"),
    ));
    let fresh_client = w.client();
    let refused = self::check(&fresh_client, &image, &alice).await;
    assert_verdict(&refused, Verdict::Blocked);
}
