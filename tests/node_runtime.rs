//! Probing as the node's runtime pulls, against real registries (Debian's docker-registry):
//! the platform an index entry is chosen for (containerd's ordered fallback, containers/image's
//! rules), a single-platform image built for another architecture, and the hosts the nodes
//! pull from (a real pull-through mirror, a mirror that is down or refuses, a plain-HTTP
//! registry) as containerd's hosts.toml and CRI-O's registries.conf list them.

mod support;

use std::sync::Arc;
use std::time::Duration;

use pullgate::{
    oci::platform::{Platform, PlatformRules},
    oci::reference::ImageRef,
    probe::{self, ProbeOptions, Report, Verdict},
    registry::{Credential, NodeHosts, RegistryClient},
};
use support::*;

async fn probe_on(
    client: &RegistryClient,
    reference: &str,
    platforms: &[&str],
    rules: PlatformRules,
) -> Report {
    let options = ProbeOptions {
        platforms: platforms
            .iter()
            .map(|p| Platform::parse(p).unwrap())
            .collect(),
        rules,
        timeout: Duration::from_secs(10),
        ..ProbeOptions::default()
    };
    probe::probe(client, &ImageRef::parse(reference).unwrap(), &[], &options).await
}

/// Pushes one small image per platform and an OCI index over them, in the order given.
async fn push_platforms(w: &World, repo: &str, platforms: &[PlatformSpec]) -> Vec<PushedImage> {
    let mut images = Vec::new();
    for p in platforms {
        let spec = ImageSpec::new()
            .with_layers(&[64])
            .with_platform_spec(p.clone());
        images.push(
            push_image(&w.seed.base(), &w.push, repo, None, &spec)
                .await
                .unwrap(),
        );
    }
    let children: Vec<(PlatformSpec, &PushedImage)> =
        platforms.iter().cloned().zip(images.iter()).collect();
    push_index(
        &w.seed.base(),
        &w.push,
        repo,
        Some("v1"),
        &children,
        true,
        false,
    )
    .await
    .unwrap();
    images
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arm_v7_node_takes_the_best_older_variant_and_the_report_says_which() {
    let w = World::new();
    let arm = |v: &str| PlatformSpec::new("linux", "arm", Some(v));
    // v5 listed before v6: the runtime's order, not the index's, decides.
    let images = push_platforms(
        &w,
        "fallback/arm",
        &[PlatformSpec::linux_amd64(), arm("v5"), arm("v6")],
    )
    .await;
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    let reference = format!("{}/fallback/arm:v1", proxy.host());
    let client = w.client();

    for rules in [PlatformRules::Containerd, PlatformRules::ContainersImage] {
        let r = probe_on(&client, &reference, &["linux/arm/v7"], rules).await;
        assert_eq!(r.verdict, Verdict::Pullable, "{rules:?}: {r:#?}");
        let p = &r.platforms[0];
        assert_eq!(
            p.digest.as_ref().unwrap().to_string(),
            images[2].manifest_digest,
            "{rules:?}"
        );
        assert_eq!(p.entry.as_ref().unwrap().to_string(), "linux/arm/v6");
        assert!(
            r.reason.contains("linux/arm/v6 for linux/arm/v7"),
            "{}",
            r.reason
        );
        assert_eq!(
            serde_json::to_value(&r).unwrap()["platforms"][0]["entry"],
            "linux/arm/v6"
        );
    }
    // The v5 entry was never fetched: only the chosen child is.
    assert_eq!(proxy.count(&images[1].manifest_digest), 0);

    // The exact platform needs no word about a fallback.
    let r = probe_on(
        &client,
        &reference,
        &["linux/arm/v6"],
        PlatformRules::Containerd,
    )
    .await;
    assert_eq!(r.verdict, Verdict::Pullable);
    assert_eq!(r.platforms[0].entry, None);
    assert!(!r.reason.contains(" for "), "{}", r.reason);

    // Nothing a v5 node runs is newer than v5.
    let r = probe_on(
        &client,
        &reference,
        &["linux/arm/v5"],
        PlatformRules::Containerd,
    )
    .await;
    assert_eq!(
        r.platforms[0].digest.as_ref().unwrap().to_string(),
        images[1].manifest_digest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_runs_386_and_arm_on_bigger_cpus_and_containers_image_does_not() {
    let w = World::new();
    push_platforms(
        &w,
        "fallback/narrow",
        &[
            PlatformSpec::new("linux", "386", None),
            PlatformSpec::new("linux", "arm", Some("v7")),
        ],
    )
    .await;
    let reference = format!("{}/fallback/narrow:v1", w.seed.host());
    let client = w.client();

    let r = probe_on(
        &client,
        &reference,
        &["linux/amd64", "linux/arm64"],
        PlatformRules::Containerd,
    )
    .await;
    assert_eq!(r.verdict, Verdict::Pullable, "{r:#?}");
    let chosen: Vec<String> = r.platforms.iter().filter_map(|p| p.chosen()).collect();
    assert_eq!(
        chosen,
        ["linux/386 for linux/amd64", "linux/arm/v7 for linux/arm64"]
    );

    // CRI-O's containers/image crosses no architecture.
    let r = probe_on(
        &client,
        &reference,
        &["linux/amd64"],
        PlatformRules::ContainersImage,
    )
    .await;
    assert_eq!(r.verdict, Verdict::NotFound, "{r:#?}");
    assert!(
        r.reason.contains("no matching manifest for linux/amd64"),
        "{}",
        r.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_platform_image_for_another_architecture_is_pullable_with_a_caution() {
    let w = World::new();
    let amd = w
        .push("single/amd", "v1", ImageSpec::new().with_layers(&[128]))
        .await;
    let reference = format!("{}/single/amd:v1", w.seed.host());
    let client = w.client();

    let r = probe_on(
        &client,
        &reference,
        &["linux/amd64", "linux/arm64"],
        PlatformRules::Containerd,
    )
    .await;
    assert_eq!(r.verdict, Verdict::Pullable, "{r:#?}");
    let caution = r.caution.as_deref().expect("a caution for the arm64 nodes");
    assert!(caution.contains("built for linux/amd64 only"), "{caution}");
    assert!(caution.contains("a linux/arm64 node"), "{caution}");
    assert!(caution.contains("exec format error"), "{caution}");
    // The config was read whole, in its one request, and says what it was built for.
    let config = r
        .blobs
        .iter()
        .find(|b| b.digest.to_string() == amd.config_digest)
        .unwrap();
    assert_eq!(config.platform.as_ref().unwrap().to_string(), "linux/amd64");
    assert_eq!(r.requests as usize, 1 + amd.uploaded_blobs().len());

    // Where every node runs it, there is nothing to say.
    let r = probe_on(
        &client,
        &reference,
        &["linux/amd64"],
        PlatformRules::Containerd,
    )
    .await;
    assert_eq!((r.verdict, r.caution.as_deref()), (Verdict::Pullable, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_whose_bytes_do_not_match_its_digest_is_invalid() {
    let w = World::new();
    let amd = w
        .push("single/lying", "v1", ImageSpec::new().with_layers(&[128]))
        .await;
    // The front serves other bytes for the config, with the right status and headers.
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    proxy.rule(Rule::new(
        None,
        &amd.config_digest,
        Action::Respond {
            status: 200,
            headers: vec![("Content-Type".into(), "application/octet-stream".into())],
            body: r#"{"architecture":"arm64","os":"linux"}"#.into(),
        },
    ));
    let reference = format!("{}/single/lying:v1", proxy.host());
    let r = probe_on(
        &w.client(),
        &reference,
        &["linux/arm64"],
        PlatformRules::Containerd,
    )
    .await;
    assert_eq!(r.verdict, Verdict::Invalid, "{r:#?}");
    assert!(
        r.reason
            .contains("whose digest is not the one the manifest names"),
        "{}",
        r.reason
    );
}

// ---------------------------------------------------------------------------------------------
// Mirrors, as the nodes' containerd hosts.toml or CRI-O registries.conf list them.
// ---------------------------------------------------------------------------------------------

/// A port nothing listens on: a registry or mirror that is down.
fn dead_host() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("127.0.0.1:{port}")
}

/// A containerd `config_path` with one `hosts.toml` per `(registry host, contents)`.
fn hosts_dir(files: &[(&str, String)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (host, toml) in files {
        let dir = root.path().join(host);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts.toml"), toml).unwrap();
    }
    root
}

fn registries_conf(contents: &str) -> (tempfile::TempDir, NodeHosts) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registries.conf");
    std::fs::write(&path, contents).unwrap();
    let hosts = NodeHosts::load_registries_conf(&path).unwrap();
    (dir, hosts)
}

async fn probe_through(
    client: &RegistryClient,
    reference: &str,
    hosts: NodeHosts,
    credentials: &[Credential],
) -> Report {
    let options = ProbeOptions {
        rules: hosts.platform_rules(),
        hosts: Arc::new(hosts),
        timeout: Duration::from_secs(10),
        ..ProbeOptions::default()
    };
    probe::probe(
        client,
        &ImageRef::parse(reference).unwrap(),
        credentials,
        &options,
    )
    .await
}

fn answers(r: &Report, host: &str) -> Vec<String> {
    r.hosts
        .iter()
        .find(|h| h.host.contains(host))
        .map(|h| h.answers.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_pull_through_mirror_serves_an_image_whose_registry_is_down() {
    let w = World::new();
    let img = w
        .push("team/app", "v1", ImageSpec::new().with_layers(&[100, 200]))
        .await;
    let cache = tempfile::tempdir().unwrap();
    let mirror = Registry::start_mirror_of(&w.pki, cache.path(), &w.seed.base()).unwrap();
    // The image names a registry that is down; the nodes pull it from the mirror.
    let upstream = dead_host();
    let reference = format!("{upstream}/team/app:v1");
    let client = w.client();

    let without = probe_through(&client, &reference, NodeHosts::default(), &[]).await;
    assert_eq!(without.verdict, Verdict::Unavailable, "{without:#?}");

    let dir = hosts_dir(&[(
        upstream.as_str(),
        format!(
            "server = \"https://{upstream}\"\n\n[host.\"https://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            mirror.host()
        ),
    )]);
    let hosts = NodeHosts::load_hosts_dir(dir.path()).unwrap();
    let r = probe_through(&client, &reference, hosts, &[]).await;
    assert_eq!(r.verdict, Verdict::Pullable, "{r:#?}");
    assert_eq!(
        r.host.as_deref(),
        Some(format!("https://{}/v2", mirror.host()).as_str())
    );
    assert_eq!(r.digest.as_ref().unwrap().to_string(), img.manifest_digest);
    assert_eq!(
        answers(&r, &mirror.host()),
        ["manifest: served", "3 more object(s) served"]
    );
    // The registry that is down was never needed.
    assert!(answers(&r, &upstream).is_empty(), "{:?}", r.hosts);
    assert!(
        r.blobs
            .iter()
            .all(|b| b.host.as_deref() == r.host.as_deref())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_is_down_falls_back_to_the_registry_and_the_report_says_so() {
    let w = World::new();
    w.push("team/app", "v1", ImageSpec::new().with_layers(&[100]))
        .await;
    let down = dead_host();
    let registry = w.seed.host();
    let dir = hosts_dir(&[(
        registry.as_str(),
        format!("server = \"https://{registry}\"\n\n[host.\"https://{down}\"]\n"),
    )]);
    let hosts = NodeHosts::load_hosts_dir(dir.path()).unwrap();
    let r = probe_through(&w.client(), &format!("{registry}/team/app:v1"), hosts, &[]).await;
    assert_eq!(r.verdict, Verdict::Pullable, "{r:#?}");
    assert_eq!(
        r.host.as_deref(),
        Some(format!("https://{registry}/v2").as_str())
    );
    let mirror = answers(&r, &down);
    assert!(
        mirror[0].starts_with("manifest: cannot reach"),
        "{mirror:?}"
    );
    assert_eq!(answers(&r, &registry)[0], "manifest: served");
}

/// A policy front on the mirror (a Harbor proxy-cache project with a vulnerability policy)
/// refuses one layer. containerd asks the next host for that layer and pulls; containers/image
/// took the manifest from the mirror and takes every blob from it, so CRI-O's pull fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_the_mirror_refuses_comes_from_the_registry_on_containerd_not_on_cri_o() {
    let w = World::new();
    let img = w
        .push("team/app", "v1", ImageSpec::new().with_layers(&[100, 200]))
        .await;
    let cache = tempfile::tempdir().unwrap();
    let mirror = Registry::start_mirror_of(&w.pki, cache.path(), &w.seed.base()).unwrap();
    let policy = PolicyProxy::start(&w.pki, &mirror).await;
    let refused = img.layer_digests[1].clone();
    policy.rule(Rule::new(
        None,
        &refused,
        Action::json(
            403,
            r#"{"errors":[{"code":"DENIED","message":"blocked by a vulnerability policy"}]}"#,
        ),
    ));
    let registry = w.seed.host();
    let reference = format!("{registry}/team/app:v1");
    let client = w.client();

    let dir = hosts_dir(&[(
        registry.as_str(),
        format!(
            "server = \"https://{registry}\"\n\n[host.\"https://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            policy.host()
        ),
    )]);
    let r = probe_through(
        &client,
        &reference,
        NodeHosts::load_hosts_dir(dir.path()).unwrap(),
        &[],
    )
    .await;
    assert_eq!(r.verdict, Verdict::Pullable, "containerd: {r:#?}");
    assert_eq!(
        r.host.as_deref(),
        Some(format!("https://{}/v2", policy.host()).as_str())
    );
    let layer = r
        .blobs
        .iter()
        .find(|b| b.digest.to_string() == refused)
        .unwrap();
    assert_eq!(
        layer.host.as_deref(),
        Some(format!("https://{registry}/v2").as_str())
    );
    assert!(
        answers(&r, &policy.host())
            .iter()
            .any(|a| a.contains("HTTP 403") && a.contains("vulnerability policy")),
        "{:?}",
        r.hosts
    );
    // containerd sends the image's registry to a mirror as `ns`.
    let asked: Vec<Seen> = policy.requests();
    assert!(
        asked
            .iter()
            .filter(|s| s.path.contains("/team/app/"))
            .all(|s| s.query.as_deref()
                == Some(format!("ns={}", registry.replace(':', "%3A")).as_str())),
        "{asked:?}"
    );

    let (_conf, crio) = registries_conf(&format!(
        "[[registry]]\nlocation = \"{registry}\"\n\n[[registry.mirror]]\nlocation = \"{}\"\n",
        policy.host()
    ));
    let r = probe_through(&client, &reference, crio, &[]).await;
    assert_eq!(r.verdict, Verdict::Blocked, "CRI-O: {r:#?}");
    assert!(r.reason.contains("vulnerability policy"), "{}", r.reason);

    // A mirror that refuses the manifest itself sends both runtimes to the registry.
    policy.clear_rules();
    policy.rule(Rule::new(
        None,
        "/manifests/",
        Action::json(
            403,
            r#"{"errors":[{"code":"DENIED","message":"not cached here"}]}"#,
        ),
    ));
    let (_conf, crio) = registries_conf(&format!(
        "[[registry]]\nlocation = \"{registry}\"\n\n[[registry.mirror]]\nlocation = \"{}\"\n",
        policy.host()
    ));
    let r = probe_through(&client, &reference, crio, &[]).await;
    assert_eq!(
        r.verdict,
        Verdict::Pullable,
        "CRI-O after a refused manifest: {r:#?}"
    );
    assert_eq!(
        r.host.as_deref(),
        Some(format!("https://{registry}/v2").as_str())
    );
    let r = probe_through(
        &client,
        &reference,
        NodeHosts::load_hosts_dir(dir.path()).unwrap(),
        &[],
    )
    .await;
    assert_eq!(
        r.verdict,
        Verdict::Pullable,
        "containerd after a refused manifest: {r:#?}"
    );
}

/// containerd resolves a tag only on hosts with `resolve`; a mirror with `pull` alone serves
/// digest references.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_without_resolve_serves_digests_but_not_tags() {
    let w = World::new();
    let img = w
        .push("team/app", "v1", ImageSpec::new().with_layers(&[100]))
        .await;
    let cache = tempfile::tempdir().unwrap();
    let mirror = Registry::start_mirror_of(&w.pki, cache.path(), &w.seed.base()).unwrap();
    let upstream = dead_host();
    let dir = hosts_dir(&[(
        upstream.as_str(),
        format!(
            "server = \"https://{upstream}\"\n\n[host.\"https://{}\"]\n  capabilities = [\"pull\"]\n",
            mirror.host()
        ),
    )]);
    let client = w.client();
    let by_tag = probe_through(
        &client,
        &format!("{upstream}/team/app:v1"),
        NodeHosts::load_hosts_dir(dir.path()).unwrap(),
        &[],
    )
    .await;
    assert_eq!(by_tag.verdict, Verdict::Unavailable, "{by_tag:#?}");
    assert!(
        answers(&by_tag, &mirror.host()).is_empty(),
        "{:?}",
        by_tag.hosts
    );

    let by_digest = probe_through(
        &client,
        &format!("{upstream}/team/app@{}", img.manifest_digest),
        NodeHosts::load_hosts_dir(dir.path()).unwrap(),
        &[],
    )
    .await;
    assert_eq!(by_digest.verdict, Verdict::Pullable, "{by_digest:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_registry_is_named_as_such_and_probed_where_the_nodes_declare_it() {
    let w = World::new();
    let storage = tempfile::tempdir().unwrap();
    let plain = Registry::start_plain_http(storage.path()).unwrap();
    push_image(
        &plain.base(),
        &w.push,
        "team/app",
        Some("1.0"),
        &ImageSpec::new().with_layers(&[100]),
    )
    .await
    .unwrap();
    let host = plain.host();
    let reference = format!("{host}/team/app:1.0");
    let client = w.client();

    let r = probe_through(&client, &reference, NodeHosts::default(), &[]).await;
    assert_eq!(r.verdict, Verdict::Unavailable, "{r:#?}");
    assert!(r.reason.contains("plain HTTP"), "{}", r.reason);
    assert!(
        r.reason.contains(&format!("server = \"http://{host}\"")),
        "{}",
        r.reason
    );
    assert!(r.reason.contains("insecure = true"), "{}", r.reason);
    assert!(!r.reason.contains("InvalidContentType"), "{}", r.reason);

    let dir = hosts_dir(&[(host.as_str(), format!("server = \"http://{host}\"\n"))]);
    let r = probe_through(
        &client,
        &reference,
        NodeHosts::load_hosts_dir(dir.path()).unwrap(),
        &[],
    )
    .await;
    assert_eq!(r.verdict, Verdict::Pullable, "hosts.toml: {r:#?}");
    assert_eq!(
        r.host.as_deref(),
        Some(format!("http://{host}/v2").as_str())
    );

    let (_conf, crio) = registries_conf(&format!(
        "[[registry]]\nlocation = \"{host}\"\ninsecure = true\n"
    ));
    let r = probe_through(&client, &reference, crio, &[]).await;
    assert_eq!(
        r.verdict,
        Verdict::Pullable,
        "registries.conf insecure: {r:#?}"
    );
    assert_eq!(
        r.host.as_deref(),
        Some(format!("http://{host}/v2").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registries_conf_blocked_refuses_without_a_request() {
    let w = World::new();
    let registry = w.seed.host();
    let (_conf, crio) = registries_conf(&format!(
        "[[registry]]\nlocation = \"{registry}\"\nblocked = true\n"
    ));
    let r = probe_through(&w.client(), &format!("{registry}/team/app:v1"), crio, &[]).await;
    assert_eq!(r.verdict, Verdict::Blocked, "{r:#?}");
    assert!(r.reason.contains("registries.conf"), "{}", r.reason);
    assert_eq!(r.requests, 0);
}

/// The kubelet picks the credential by the image's own registry and the runtime sends it to
/// every host it asks, the mirror too; a credential filed under the mirror's name is not the
/// image's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_images_credential_goes_to_its_mirror() {
    let w = World::new();
    w.push("team/app", "v1", ImageSpec::new().with_layers(&[100]))
        .await;
    let guarded = Registry::start(
        &w.pki,
        w.storage.path(),
        RegistryAuth::htpasswd(&[("alice", "s3cret")]),
    )
    .unwrap();
    let front = PolicyProxy::start(&w.pki, &guarded).await;
    let upstream = dead_host();
    let dir = hosts_dir(&[(
        upstream.as_str(),
        format!(
            "server = \"https://{upstream}\"\n\n[host.\"https://{}\"]\n",
            front.host()
        ),
    )]);
    let reference = format!("{upstream}/team/app:v1");
    let client = w.client();
    let alice = Credential::new("alice", "s3cret", "pull secret for the image's registry");
    let r = probe_through(
        &client,
        &reference,
        NodeHosts::load_hosts_dir(dir.path()).unwrap(),
        &[alice],
    )
    .await;
    assert_eq!(r.verdict, Verdict::Pullable, "{r:#?}");
    assert!(front.requests().iter().any(|s| s.authorization.is_some()));

    // Without the image's credential the mirror's 401 speaks (it got further than the
    // registry that is down).
    let r = probe_through(
        &client,
        &reference,
        NodeHosts::load_hosts_dir(dir.path()).unwrap(),
        &[],
    )
    .await;
    assert_eq!(r.verdict, Verdict::Unauthorized, "{r:#?}");
}

/// A host's own `ca` is trusted for that host only (pullgate's client is not given the test
/// CA here), and `override_path` puts the API under the path the host names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_ca_and_override_path_are_used_for_that_host() {
    let w = World::new();
    w.push("team/app", "v1", ImageSpec::new().with_layers(&[100]))
        .await;
    let registry = w.seed.host();
    let reference = format!("{registry}/team/app:v1");
    let untrusting = RegistryClient::new(pullgate::registry::ClientOptions::default()).unwrap();
    let ca = w.pki.ca_path().display().to_string();

    let without = hosts_dir(&[(
        registry.as_str(),
        format!("server = \"https://{registry}\"\n"),
    )]);
    let r = probe_through(
        &untrusting,
        &reference,
        NodeHosts::load_hosts_dir(without.path()).unwrap(),
        &[],
    )
    .await;
    assert_eq!(r.verdict, Verdict::Unavailable, "{r:#?}");

    let with = hosts_dir(&[(
        registry.as_str(),
        format!("server = \"https://{registry}\"\nca = \"{ca}\"\n"),
    )]);
    let r = probe_through(
        &untrusting,
        &reference,
        NodeHosts::load_hosts_dir(with.path()).unwrap(),
        &[],
    )
    .await;
    assert_eq!(r.verdict, Verdict::Pullable, "{r:#?}");

    // A mirror under a path of its own: the requests go to that path, with the header the
    // nodes send it (and not to the registry after it).
    let front = PolicyProxy::start(&w.pki, &w.seed).await;
    let dir = hosts_dir(&[(
        registry.as_str(),
        format!(
            "server = \"https://{registry}\"\n\n[host.\"https://{}/mirror/v2\"]\n  override_path = true\n  [host.\"https://{}/mirror/v2\".header]\n    x-mirror-key = \"secret-value\"\n",
            front.host(),
            front.host()
        ),
    )]);
    let r = probe_through(
        &w.client(),
        &reference,
        NodeHosts::load_hosts_dir(dir.path()).unwrap(),
        &[],
    )
    .await;
    assert_eq!(r.verdict, Verdict::Pullable, "{r:#?}");
    let asked = front.requests();
    let manifest = asked
        .iter()
        .find(|s| s.path == "/mirror/v2/team/app/manifests/v1")
        .unwrap_or_else(|| panic!("{asked:?}"));
    assert_eq!(manifest.headers["x-mirror-key"], "secret-value");
    // The mirror (a plain distribution behind the front) has no such path: the registry served.
    assert_eq!(
        r.host.as_deref(),
        Some(format!("https://{registry}/v2").as_str())
    );
    assert!(!format!("{r:?}").contains("secret-value"));
}
