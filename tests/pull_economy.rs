//! The pull economy against a real registry behind a front that counts pulls the way Docker
//! Hub does (support/hub.rs): a re-probe of a known digest spends no pull, a cold probe and a
//! moved tag spend one, an index and its child one, the reserve of the budget is kept for the
//! nodes, a 429 empties it, registries that are not metered keep GETting, and the manifest
//! store cannot be poisoned.

mod support;

use std::sync::Arc;
use std::time::Duration;

use pullgate::{
    oci::platform::Platform,
    oci::reference::ImageRef,
    probe::{self, ManifestStore, ProbeOptions, PullBudgets, Report, Verdict},
    registry::RegistryClient,
    server::PolicySource,
};
use support::*;

/// Probe options for a metered registry, sharing one store and one budget book.
fn metered(store: &ManifestStore, budgets: &PullBudgets) -> ProbeOptions {
    ProbeOptions {
        platforms: vec![Platform::linux_amd64()],
        timeout: Duration::from_secs(10),
        metered: true,
        store: store.clone(),
        budgets: budgets.clone(),
        ..ProbeOptions::default()
    }
}

async fn probe_with(client: &RegistryClient, reference: &str, options: &ProbeOptions) -> Report {
    let image = ImageRef::parse(reference).unwrap();
    probe::probe(client, &image, &[], options).await
}

fn assert_verdict(r: &Report, v: Verdict) {
    assert_eq!(r.verdict, v, "unexpected verdict: {r:#?}");
}

/// The anonymous account of the front.
const ANON: &str = "";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reprobe_of_an_unchanged_tag_spends_no_pull_but_still_probes_every_blob() {
    let w = World::new();
    w.push("team/app", "v1", ImageSpec::new().with_layers(&[100, 200]))
        .await;
    let hub = Arc::new(Accounting::new(100, 3600));
    let front = PolicyProxy::start_metered(&w.pki, &w.seed, hub.clone()).await;
    let (store, budgets) = (ManifestStore::default(), PullBudgets::default());
    let options = metered(&store, &budgets);
    let client = w.client();
    let reference = format!("{}/team/app:v1", front.host());

    let cold = probe_with(&client, &reference, &options).await;
    assert_verdict(&cold, Verdict::Pullable);
    assert_eq!(
        (cold.manifest_gets, cold.manifest_heads, cold.pulls),
        (1, 0, 1)
    );
    assert_eq!(hub.account(ANON).pulls, 1);
    assert_eq!(front.count("/blobs/"), 3);
    let stated = cold.rate_limit.expect("the front states the budget");
    assert_eq!((stated.limit, stated.remaining), (100, 99));

    for round in 1..=3 {
        let again = probe_with(&client, &reference, &options).await;
        assert_verdict(&again, Verdict::Pullable);
        assert_eq!(
            (again.manifest_gets, again.manifest_heads, again.pulls),
            (0, 1, 0),
            "{again:#?}"
        );
        assert_eq!(again.digest, cold.digest);
        assert_eq!(again.blobs.len(), 3);
        // Blobs are still asked for: a policy may start blocking a layer at any time.
        assert_eq!(front.count("/blobs/"), 3 + 3 * round);
    }
    let account = hub.account(ANON);
    assert_eq!((account.gets, account.heads, account.pulls), (1, 3, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tag_costs_exactly_one_pull() {
    let w = World::new();
    let first = w
        .push("team/app", "stable", ImageSpec::new().with_layers(&[100]))
        .await;
    let hub = Arc::new(Accounting::new(100, 3600));
    let front = PolicyProxy::start_metered(&w.pki, &w.seed, hub.clone()).await;
    let (store, budgets) = (ManifestStore::default(), PullBudgets::default());
    let options = metered(&store, &budgets);
    let client = w.client();
    let reference = format!("{}/team/app:stable", front.host());

    let before = probe_with(&client, &reference, &options).await;
    assert_eq!(before.digest.unwrap().to_string(), first.manifest_digest);
    let moved = w
        .push(
            "team/app",
            "stable",
            ImageSpec::new().with_layers(&[300, 400]),
        )
        .await;
    let after = probe_with(&client, &reference, &options).await;
    assert_verdict(&after, Verdict::Pullable);
    assert_eq!(
        after.digest.as_ref().unwrap().to_string(),
        moved.manifest_digest
    );
    // HEAD says the digest changed; one GET fetches the new manifest.
    assert_eq!(
        (after.manifest_heads, after.manifest_gets, after.pulls),
        (1, 1, 1)
    );
    assert_eq!(after.blobs.len(), 3);
    assert_eq!(hub.account(ANON).pulls, 2);
    // And the new digest is then confirmed without a pull.
    let settled = probe_with(&client, &reference, &options).await;
    assert_eq!((settled.manifest_gets, settled.pulls), (0, 0));
    assert_eq!(hub.account(ANON).pulls, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_costs_one_pull_and_a_reprobe_none() {
    let w = World::new();
    let (index, amd, _arm) = w.push_multiarch("team/multi", "1.0").await;
    let hub = Arc::new(Accounting::new(100, 3600));
    let front = PolicyProxy::start_metered(&w.pki, &w.seed, hub.clone()).await;
    let (store, budgets) = (ManifestStore::default(), PullBudgets::default());
    let options = metered(&store, &budgets);
    let client = w.client();
    let reference = format!("{}/team/multi:1.0", front.host());

    let cold = probe_with(&client, &reference, &options).await;
    assert_verdict(&cold, Verdict::Pullable);
    assert_eq!(cold.digest.as_ref().unwrap().to_string(), index.digest);
    assert_eq!(
        cold.platforms[0].digest.as_ref().unwrap().to_string(),
        amd.manifest_digest
    );
    // The index and its child: two GETs, one pull, never a HEAD in front.
    assert_eq!(
        (cold.manifest_gets, cold.manifest_heads, cold.pulls),
        (2, 0, 1)
    );
    assert_eq!(hub.account(ANON).pulls, 1);

    let again = probe_with(&client, &reference, &options).await;
    assert_verdict(&again, Verdict::Pullable);
    assert_eq!(
        (again.manifest_gets, again.manifest_heads, again.pulls),
        (0, 1, 0)
    );
    assert_eq!(
        again.platforms[0].digest.as_ref().unwrap().to_string(),
        amd.manifest_digest
    );
    // A digest reference to the index is known as well: one HEAD, no GET.
    let pinned = format!("{}/team/multi@{}", front.host(), index.digest);
    let by_digest = probe_with(&client, &pinned, &options).await;
    assert_verdict(&by_digest, Verdict::Pullable);
    assert_eq!((by_digest.manifest_gets, by_digest.manifest_heads), (0, 1));
    let account = hub.account(ANON);
    assert_eq!((account.gets, account.heads, account.pulls), (2, 2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_is_not_metered_is_still_gotten_and_its_get_only_policy_seen() {
    // Harbor's vulnerability gate answers 412 to the GET while a HEAD passes.
    let w = World::new();
    w.push("team/app", "v1", ImageSpec::new().with_layers(&[100]))
        .await;
    let harbor = PolicyProxy::start(&w.pki, &w.seed).await;
    let options = ProbeOptions {
        metered: false,
        ..ProbeOptions::default()
    };
    let client = w.client();
    let reference = format!("{}/team/app:v1", harbor.host());
    let first = probe_with(&client, &reference, &options).await;
    assert_verdict(&first, Verdict::Pullable);
    harbor.rule(Rule::new(
        Some(axum::http::Method::GET),
        "/manifests/",
        Action::harbor_policy_violation("current image with 3 vulnerabilities cannot be pulled"),
    ));
    let again = probe_with(&client, &reference, &options).await;
    assert_verdict(&again, Verdict::Blocked);
    assert!(
        again.reason.contains("PROJECTPOLICYVIOLATION"),
        "{}",
        again.reason
    );
    assert_eq!((again.manifest_gets, again.manifest_heads), (1, 0));
    assert_eq!(
        harbor
            .requests()
            .iter()
            .filter(|s| s.method == "HEAD")
            .count(),
        0
    );
    assert!(again.rate_limit.is_none() && again.pulls == 0 && !again.metered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reserve_stops_counted_gets_and_says_so_while_known_digests_stay_checked() {
    let w = World::new();
    for name in ["a", "b"] {
        w.push(
            &format!("team/{name}"),
            "v1",
            ImageSpec::new().with_layers(&[100]),
        )
        .await;
    }
    // Limit 8, reserve 25 % = 2; the nodes have spent 5 already.
    let hub = Arc::new(Accounting::new(8, 3600));
    hub.spend(ANON, 5);
    let front = PolicyProxy::start_metered(&w.pki, &w.seed, hub.clone()).await;
    let (store, budgets) = (ManifestStore::default(), PullBudgets::new(25));
    let options = metered(&store, &budgets);
    let client = w.client();
    let a = format!("{}/team/a:v1", front.host());
    let b = format!("{}/team/b:v1", front.host());

    // 3 left: one GET is spent, which leaves the reserve.
    assert_verdict(&probe_with(&client, &a, &options).await, Verdict::Pullable);
    assert_eq!(hub.account(ANON).pulls, 6);
    let kept = probe_with(&client, &b, &options).await;
    assert_verdict(&kept, Verdict::Unavailable);
    assert!(
        kept.reason.contains("kept for the nodes") && kept.reason.contains("2 of 8 left"),
        "{}",
        kept.reason
    );
    assert_eq!(kept.manifest_gets, 0, "nothing was sent: {kept:#?}");
    assert_eq!(front.count("/team/b/manifests/"), 0);
    // A known digest is still confirmed and its blobs probed: a HEAD is free.
    let known = probe_with(&client, &a, &options).await;
    assert_verdict(&known, Verdict::Pullable);
    assert_eq!((known.manifest_gets, known.manifest_heads), (0, 1));
    assert_eq!(hub.account(ANON).pulls, 6, "the nodes keep their 2 pulls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_empties_the_budget_until_the_window_has_passed() {
    let w = World::new();
    for name in ["a", "b"] {
        w.push(
            &format!("team/{name}"),
            "v1",
            ImageSpec::new().with_layers(&[100]),
        )
        .await;
    }
    let hub = Arc::new(Accounting::new(10, 3600));
    hub.spend(ANON, 10);
    let front = PolicyProxy::start_metered(&w.pki, &w.seed, hub.clone()).await;
    // No reserve: only the registry's own 429 stops pullgate here.
    let (store, budgets) = (ManifestStore::default(), PullBudgets::new(0));
    let options = metered(&store, &budgets);
    let client = w.client();

    let refused = probe_with(&client, &format!("{}/team/a:v1", front.host()), &options).await;
    assert_verdict(&refused, Verdict::Unavailable);
    assert!(
        refused.reason.contains("TOOMANYREQUESTS"),
        "{}",
        refused.reason
    );
    assert_eq!(hub.account(ANON).refused, 1);
    let next = probe_with(&client, &format!("{}/team/b:v1", front.host()), &options).await;
    assert_verdict(&next, Verdict::Unavailable);
    assert!(
        next.reason.contains("kept for the nodes"),
        "{}",
        next.reason
    );
    assert_eq!(hub.account(ANON).gets, 1, "no second GET after the 429");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_registry_does_not_poison_the_store() {
    let w = World::new();
    let image = w
        .push("team/app", "v1", ImageSpec::new().with_layers(&[100]))
        .await;
    let other = w
        .push(
            "team/other",
            "v1",
            ImageSpec::new().with_layers(&[700, 800]),
        )
        .await;
    let hub = Arc::new(Accounting::new(100, 3600));
    let front = PolicyProxy::start_metered(&w.pki, &w.seed, hub.clone()).await;
    let (store, budgets) = (ManifestStore::default(), PullBudgets::default());
    let options = metered(&store, &budgets);
    let client = w.client();
    let pinned = format!("{}/team/app@{}", front.host(), image.manifest_digest);

    // The registry serves another manifest for the digest once: refused, and not kept.
    front.rule_times(
        Rule::new(
            None,
            &format!("/manifests/{}", image.manifest_digest),
            Action::Respond {
                status: 200,
                headers: vec![("Content-Type".into(), other.manifest_media_type.clone())],
                body: String::from_utf8(other.manifest_bytes.clone()).unwrap(),
            },
        ),
        1,
    );
    let lied = probe_with(&client, &pinned, &options).await;
    assert_verdict(&lied, Verdict::Invalid);
    assert!(lied.reason.contains("digest mismatch"), "{}", lied.reason);
    assert_eq!(store.documents(), 0);
    // The next probe fetches it again, and then the real document is kept.
    let honest = probe_with(&client, &pinned, &options).await;
    assert_verdict(&honest, Verdict::Pullable);
    assert_eq!((honest.manifest_gets, honest.manifest_heads), (1, 0));
    assert_eq!(store.documents(), 1);
    assert_eq!(honest.blobs.len(), 2);
    let known = probe_with(&client, &pinned, &options).await;
    assert_eq!((known.manifest_gets, known.manifest_heads), (0, 1));
    assert_eq!(
        known
            .blobs
            .iter()
            .map(|b| b.digest.to_string())
            .collect::<Vec<_>>(),
        [image.config_digest.clone(), image.layer_digests[0].clone()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tag_is_seen_by_the_head() {
    let w = World::new();
    w.push("team/app", "v1", ImageSpec::new().with_layers(&[100]))
        .await;
    let hub = Arc::new(Accounting::new(100, 3600));
    let front = PolicyProxy::start_metered(&w.pki, &w.seed, hub.clone()).await;
    let (store, budgets) = (ManifestStore::default(), PullBudgets::default());
    let options = metered(&store, &budgets);
    let client = w.client();
    let reference = format!("{}/team/app:v1", front.host());
    assert_verdict(
        &probe_with(&client, &reference, &options).await,
        Verdict::Pullable,
    );
    front.rule(Rule::new(
        Some(axum::http::Method::HEAD),
        "/manifests/v1",
        Action::Respond {
            status: 404,
            headers: vec![],
            body: String::new(),
        },
    ));
    let gone = probe_with(&client, &reference, &options).await;
    assert_verdict(&gone, Verdict::NotFound);
    assert!(
        gone.reason.contains("HEAD") && gone.reason.contains("404"),
        "{}",
        gone.reason
    );
    assert_eq!(hub.account(ANON).pulls, 1);
}

/// The webhook end to end: reviews of a metered registry's images, over several verdict
/// lifetimes, spend one pull per digest; the pulls and what is left are in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_spends_one_pull_per_digest_over_many_verdict_lifetimes() {
    let w = World::new();
    for name in ["a", "b", "c"] {
        w.push(
            &format!("team/{name}"),
            "v1",
            ImageSpec::new().with_layers(&[100]),
        )
        .await;
    }
    let hub = Arc::new(Accounting::new(200, 21600));
    let front = PolicyProxy::start_metered(&w.pki, &w.seed, hub.clone()).await;
    let dir = tempfile::TempDir::new().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "registries:\n  - registry: \"{}\"\n    metered: true\n",
            front.host()
        ),
    )
    .unwrap();
    let mut config = test_config(&w.pki);
    config.policy = PolicySource::File(policy);
    config.cache.pullable_ttl = Duration::from_millis(300);
    let webhook = Webhook::start(config, &w.pki).await;
    let images: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| format!("{}/team/{n}:v1", front.host()))
        .collect();
    for round in 0..4 {
        let response = webhook
            .review(&pod_review_with_spec(
                &format!("uid-{round}"),
                containers(&images),
            ))
            .await;
        assert_eq!(response["allowed"], true, "{response}");
        // Let every verdict expire before the next round.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let account = hub.account(ANON);
    assert_eq!(account.pulls, 3, "{account:?}");
    assert_eq!(account.heads, 9, "{account:?}");
    let text = webhook.metrics().await;
    let host = front.host();
    assert!(
        text.contains(&format!(
            "pullgate_registry_pulls_total{{registry=\"{host}\"}} 3"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "pullgate_registry_pulls_remaining{{registry=\"{host}\"}} 197"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "pullgate_registry_pulls_limit{{registry=\"{host}\"}} 200"
        )),
        "{text}"
    );
    assert!(
        text.contains("pullgate_manifest_store_documents 3"),
        "{text}"
    );
}
