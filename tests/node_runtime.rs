//! Probing as the node's runtime pulls, against a real registry (Debian's docker-registry):
//! the platform an index entry is chosen for (containerd's ordered fallback, containers/image's
//! rules), and a single-platform image built for another architecture.

mod support;

use std::time::Duration;

use pullgate::{
    oci::platform::{Platform, PlatformRules},
    oci::reference::ImageRef,
    probe::{self, ProbeOptions, Report, Verdict},
    registry::RegistryClient,
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
