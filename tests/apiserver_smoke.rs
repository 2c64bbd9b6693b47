//! Proves the stand-in kube-apiserver (tests/support/apiserver.rs and cluster.rs) answers as the
//! real one does: kube's typed clients read its lists and objects, paging with continue tokens
//! sees every object once, stale tokens get the real 410, Leases honour optimistic concurrency
//! and Events take merge patches.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::*;

const EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

async fn api_server() -> (Pki, ApiServer) {
    let pki = Pki::new();
    let api = ApiServer::start(&pki).await;
    (pki, api)
}

async fn raw(http: &reqwest::Client, url: String) -> (u16, Value) {
    let response = http.get(url).send().await.expect("an answer");
    let code = response.status().as_u16();
    let body = response.bytes().await.unwrap();
    (code, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn names<K: kube::ResourceExt>(items: &[K]) -> Vec<String> {
    items.iter().map(|o| o.name_any()).collect()
}

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> Box<kube::core::Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Every page of `api` with `params`: (names, remainingItemCount, resourceVersion) of each.
async fn pages<K>(api: &Api<K>, params: ListParams) -> Vec<(Vec<String>, Option<i64>, String)>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut pages = Vec::new();
    let mut params = params;
    loop {
        let list = api.list(&params).await.expect("a page");
        let names = list.items.iter().map(|o| {
            let meta = o.meta();
            format!(
                "{}/{}",
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap()
            )
        });
        let rv = list.metadata.resource_version.clone().unwrap_or_default();
        pages.push((names.collect(), list.metadata.remaining_item_count, rv));
        match list.metadata.continue_.filter(|t| !t.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return pages,
        }
    }
}

#[tokio::test]
async fn paging_gives_every_object_once_in_order_with_the_remaining_count() {
    let (_pki, api) = api_server().await;
    let mut expected = Vec::new();
    for i in 0..1050 {
        let (ns, name) = (format!("ns-{}", i % 7), format!("pod-{i:04}"));
        api.put_workload("pods", &ns, &name, 0, &["r/app:v1"]);
        expected.push(format!("{ns}/{name}"));
    }
    expected.sort();
    let rv = api.resource_version().to_string();
    let pods: Api<Pod> = Api::all(api.client());
    let pages = pages(&pods, ListParams::default().limit(100)).await;
    assert_eq!(pages.len(), 11);
    let seen: Vec<String> = pages.iter().flat_map(|p| p.0.clone()).collect();
    assert_eq!(seen, expected, "every pod once, by namespace then name");
    let remaining: Vec<Option<i64>> = pages.iter().map(|p| p.1).collect();
    let mut counting_down: Vec<Option<i64>> = (1..=10).rev().map(|n| Some(n * 100 - 50)).collect();
    counting_down.push(None);
    assert_eq!(remaining, counting_down);
    assert!(
        pages.iter().all(|p| p.2 == rv),
        "all at the first page's resourceVersion"
    );
    let calls = api.list_calls();
    assert_eq!(calls.len(), 11);
    let paged = |c: &ListCall| c.limit == Some(100) && c.code == 200 && c.namespace.is_none();
    assert!(calls.iter().all(paged));
    assert_eq!(calls.iter().filter(|c| c.continued).count(), 10);
    assert_eq!(api.count("/api/v1/pods?"), 11);
    // Without a limit: one page, no continue token.
    let all = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 1050);
    assert_eq!(all.metadata.continue_, None);
    assert_eq!(all.metadata.remaining_item_count, None);
}

#[tokio::test]
async fn a_continued_list_goes_on_after_its_last_key_while_objects_change() {
    let (_pki, api) = api_server().await;
    for i in 0..30 {
        api.put_workload("pods", "shop", &format!("p{i:02}"), 0, &["r/app:v1"]);
    }
    let pods: Api<Pod> = Api::namespaced(api.client(), "shop");
    let first = pods.list(&ListParams::default().limit(10)).await.unwrap();
    let token = first.metadata.continue_.clone().unwrap();
    api.delete("pods", "shop", "p15");
    api.put_workload("pods", "shop", "p00a", 0, &["r/app:v1"]); // before the cursor: not seen
    api.put_workload("pods", "shop", "p25a", 0, &["r/app:v1"]); // after it: seen
    let params = ListParams::default().limit(10).continue_token(&token);
    let second = pods.list(&params).await.unwrap();
    let names: Vec<_> = names(&second.items);
    assert_eq!(names.first().map(String::as_str), Some("p10"));
    assert!(!names.contains(&"p15".to_owned()));
    assert_eq!(
        second.metadata.resource_version,
        first.metadata.resource_version
    );
    let rest = pages(
        &pods,
        params.continue_token(&second.metadata.continue_.unwrap()),
    )
    .await;
    let rest: Vec<String> = rest.into_iter().flat_map(|p| p.0).collect();
    assert!(rest.contains(&"shop/p25a".to_owned()) && !rest.contains(&"shop/p00a".to_owned()));
}

#[tokio::test]
async fn lists_are_typed_per_namespace_or_cluster_wide_and_objects_are_on_their_paths() {
    let (pki, api) = api_server().await;
    let (deployment, replicaset, pods) =
        api.put_deployment_with_pods("shop", "web", 3, &["r/web:v1", "r/sidecar:v2"]);
    api.put_workload("deployments", "blog", "cms", 2, &["r/cms:v1"]);
    api.put_workload("statefulsets", "shop", "db", 1, &["r/db:v1"]);
    api.put_workload("daemonsets", "kube-system", "agent", 4, &["r/agent:v1"]);
    api.put_workload("jobs", "shop", "migrate", 1, &["r/migrate:v1"]);
    api.put_workload("cronjobs", "shop", "report", 0, &["r/report:v1"]);
    api.put_workload("replicationcontrollers", "legacy", "old", 1, &["r/old:v1"]);
    api.put_node("node-a", "linux", "arm64");
    api.put_node("node-b", "linux", "amd64");
    let client = api.client();

    let everywhere = Api::<Deployment>::all(client.clone())
        .list(&Default::default())
        .await
        .unwrap();
    let names: Vec<_> = names(&everywhere.items);
    assert_eq!(names, ["cms", "web"]); // blog before shop
    let shop = Api::<Deployment>::namespaced(client.clone(), "shop")
        .list(&Default::default())
        .await;
    let shop = shop.unwrap();
    assert_eq!(shop.items.len(), 1);
    let web = &shop.items[0];
    assert_eq!(
        web.metadata.uid.as_deref(),
        deployment["metadata"]["uid"].as_str()
    );
    assert_eq!(web.spec.as_ref().unwrap().replicas, Some(3));
    let containers = &web
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers;
    assert_eq!(containers[1].image.as_deref(), Some("r/sidecar:v2"));
    let rs = Api::<ReplicaSet>::namespaced(client.clone(), "shop")
        .get("web-5d8f7c9b4")
        .await;
    let owner = &rs.unwrap().metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("Deployment", Some(true))
    );
    let pod = Api::<Pod>::namespaced(client.clone(), "shop")
        .get("web-5d8f7c9b4-x0002")
        .await;
    let pod_owner = pod.unwrap().metadata.owner_references.unwrap()[0]
        .uid
        .clone();
    assert_eq!(pod_owner, replicaset["metadata"]["uid"].as_str().unwrap());
    assert_eq!(pods.len(), 3);
    let nodes = Api::<Node>::all(client.clone())
        .list(&Default::default())
        .await
        .unwrap();
    assert_eq!(nodes.items.len(), 2);
    let node_b = Api::<Node>::all(client.clone())
        .get("node-b")
        .await
        .unwrap();
    assert_eq!(
        node_b.status.unwrap().node_info.unwrap().architecture,
        "amd64"
    );
    let params = ListParams::default();
    let c = || client.clone();
    assert_eq!(
        Api::<StatefulSet>::all(c())
            .list(&params)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        Api::<DaemonSet>::all(c())
            .list(&params)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        Api::<Job>::all(c())
            .list(&params)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        Api::<CronJob>::all(c())
            .list(&params)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    let rcs = Api::<ReplicationController>::all(c())
        .list(&params)
        .await
        .unwrap();
    assert_eq!(rcs.items.len(), 1);
    let nowhere = Api::<Pod>::namespaced(c(), "nowhere")
        .list(&params)
        .await
        .unwrap();
    assert!(nowhere.items.is_empty());

    // The raw JSON: a typed list, items without kind/apiVersion, as the real server sends.
    let http = test_client(&pki);
    let get = |path: &str| raw(&http, format!("{}{path}", api.base()));
    let (_, list) = get("/apis/apps/v1/namespaces/shop/replicasets").await;
    assert_eq!(
        [&list["kind"], &list["apiVersion"]],
        ["ReplicaSetList", "apps/v1"]
    );
    assert_eq!(
        list["metadata"]["resourceVersion"],
        api.resource_version().to_string()
    );
    assert_eq!(
        [
            list["items"][0].get("kind"),
            list["items"][0].get("apiVersion")
        ],
        [None, None]
    );
    let (_, one) = get("/api/v1/nodes/node-a").await;
    assert_eq!([&one["kind"], &one["apiVersion"]], ["Node", "v1"]);
    let (code, status) = get("/apis/batch/v1/namespaces/shop/jobs/nope").await;
    assert_eq!(
        (code, &status["message"]),
        (404, &json!("jobs.batch \"nope\" not found"))
    );
    assert_eq!(
        status["details"],
        json!({"name": "nope", "group": "batch", "kind": "jobs"})
    );
    for wrong in [
        "/apis/apps/v1/namespaces/shop/pods",
        "/api/v1/pods/x",
        "/api/v1/namespaces/a/nodes",
    ] {
        assert_eq!(get(wrong).await.0, 404, "{wrong}");
    }
}

#[tokio::test]
async fn label_selectors_pick_by_equality_and_sets() {
    let (_pki, api) = api_server().await;
    let labels: [(&str, &[(&str, &str)]); 5] = [
        ("a", &[("tier", "web"), ("env", "prod")]),
        ("b", &[("tier", "web"), ("env", "dev")]),
        ("c", &[("tier", "db"), ("env", "prod")]),
        ("d", &[("tier", "db")]),
        ("e", &[]),
    ];
    for (name, labels) in labels {
        let body = labelled(
            json!({"metadata": {}, "spec": pod_spec(&["r/x:v1"])}),
            labels,
        );
        api.put("v1", "pods", "ns", name, body);
    }
    let pods: Api<Pod> = Api::namespaced(api.client(), "ns");
    for (selector, expected) in [
        ("tier=web", "ab"),
        ("tier==web", "ab"),
        ("tier!=web", "cde"),
        ("env", "abc"),
        ("!env", "de"),
        ("tier=db,env=prod", "c"),
        ("tier in (web, db),!env", "d"),
        ("env notin (dev)", "acde"),
        ("tier=web, env!=prod", "b"),
        ("nothing=here", ""),
    ] {
        let list = pods
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap();
        let names: String = names(&list.items).concat();
        assert_eq!(names, expected, "{selector}");
    }
    // With a limit, pages are filled from the matches; no count when a selector is set.
    let first = pods
        .list(&ListParams::default().labels("env").limit(2))
        .await
        .unwrap();
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.metadata.remaining_item_count, None);
    let next = ListParams::default().labels("env").limit(2);
    let rest = pods
        .list(&next.continue_token(&first.metadata.continue_.unwrap()))
        .await
        .unwrap();
    assert_eq!(rest.items[0].metadata.name.as_deref(), Some("c"));
    let bad = api_error(
        pods.list(&ListParams::default().labels("tier in web"))
            .await,
    );
    assert_eq!((bad.code, bad.reason.as_str()), (400, "BadRequest"));
}

#[tokio::test]
async fn continue_tokens_expire_with_the_real_410() {
    let (_pki, api) = api_server().await;
    for i in 0..25 {
        api.put_workload("deployments", "shop", &format!("d{i:02}"), 1, &["r/app:v1"]);
    }
    let deployments: Api<Deployment> = Api::all(api.client());
    let first = deployments
        .list(&ListParams::default().limit(10))
        .await
        .unwrap();
    let token = first.metadata.continue_.unwrap();
    api.expire_continue_tokens();
    let params = ListParams::default().limit(10).continue_token(&token);
    let expired = api_error(deployments.list(&params).await);
    assert_eq!((expired.code, expired.reason.as_str()), (410, "Expired"));
    assert_eq!(expired.message, EXPIRED);
    assert_eq!(api.list_calls().last().unwrap().code, 410);
    // The Status's own token continues, inconsistently, at the latest resourceVersion.
    let inconsistent = expired.metadata.unwrap().continue_.unwrap();
    let params = ListParams::default()
        .limit(10)
        .continue_token(&inconsistent);
    let rest = pages(&deployments, params).await;
    assert_eq!(rest.iter().map(|p| p.0.len()).sum::<usize>(), 15);
    assert_eq!(rest[0].0[0], "shop/d10");
    // A new list pages normally.
    assert_eq!(
        pages(&deployments, ListParams::default().limit(10))
            .await
            .len(),
        3
    );
    let garbage = api_error(
        deployments
            .list(&ListParams::default().continue_token("zzz"))
            .await,
    );
    assert_eq!(garbage.code, 400);
}

const LEASE: &str = "pullgate-audit";

/// PUT (or, without `write`, POST) the Lease held by `holder`, carrying `resource_version`.
async fn write(api: &Api<Lease>, put: bool, holder: &str, rv: Option<&str>) -> kube::Result<Lease> {
    let mut lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": LEASE},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15},
    }))
    .unwrap();
    lease.metadata.resource_version = rv.map(str::to_owned);
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    lease.spec.as_mut().unwrap().renew_time = Some(now);
    match put {
        true => api.replace(LEASE, &PostParams::default(), &lease).await,
        false => api.create(&PostParams::default(), &lease).await,
    }
}

#[tokio::test]
async fn leases_are_created_once_and_updated_only_at_their_resource_version() {
    let (_pki, api) = api_server().await;
    let leases: Api<Lease> = Api::namespaced(api.client(), "pullgate");
    assert!(leases.get_opt(LEASE).await.unwrap().is_none());
    let missing = api_error(leases.get(LEASE).await);
    assert_eq!(
        missing.message,
        format!("leases.coordination.k8s.io \"{LEASE}\" not found")
    );

    let created = write(&leases, false, "a", None).await.unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    let again = api_error(write(&leases, false, "b", None).await);
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(
        again.message,
        format!("leases.coordination.k8s.io \"{LEASE}\" already exists")
    );

    let renewed = write(&leases, true, "a", Some(&rv)).await.unwrap();
    let new_rv = renewed.metadata.resource_version.clone().unwrap();
    assert!(new_rv.parse::<u64>().unwrap() > rv.parse::<u64>().unwrap());
    assert_eq!(renewed.metadata.uid, created.metadata.uid);
    // A second replica with what it read before the renewal loses.
    let stale = api_error(write(&leases, true, "b", Some(&rv)).await);
    assert_eq!((stale.code, stale.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        stale.message,
        format!(
            "Operation cannot be fulfilled on leases.coordination.k8s.io \"{LEASE}\": the object has been modified; please apply your changes to the latest version and try again"
        )
    );
    assert_eq!(api_error(write(&leases, true, "b", None).await).code, 422);
    let stored = api.lease("pullgate", LEASE).unwrap();
    assert_eq!(stored["spec"]["holderIdentity"], "a");
    assert_eq!(stored["metadata"]["resourceVersion"], new_rv.as_str());
    // Writing back what was read changes nothing: no new resourceVersion (as etcd3).
    let read = leases.get(LEASE).await.unwrap();
    let same = leases
        .replace(LEASE, &PostParams::default(), &read)
        .await
        .unwrap();
    assert_eq!(same.metadata.resource_version, Some(new_rv));
    // RBAC: get, create and update; no patch or delete.
    let patch = Patch::Merge(json!({"spec": {"holderIdentity": "b"}}));
    let refused = api_error(leases.patch(LEASE, &PatchParams::default(), &patch).await);
    assert_eq!((refused.code, refused.reason.as_str()), (403, "Forbidden"));
    let deleting = leases.delete(LEASE, &Default::default()).await.map(|_| ());
    assert_eq!(api_error(deleting).code, 403);
}

#[tokio::test]
async fn events_are_created_and_merge_patched() {
    let (_pki, api) = api_server().await;
    let events: Api<Event> = Api::namespaced(api.client(), "shop");
    let event: Event = serde_json::from_value(json!({
        "metadata": {"name": "web.image-not-pullable"},
        "involvedObject": {"kind": "Deployment", "namespace": "shop", "name": "web", "apiVersion": "apps/v1"},
        "reason": "ImageNotPullable", "type": "Warning", "message": "r/web:v1: manifest unknown",
        "count": 1, "source": {"component": "pullgate-audit"},
    }))
    .unwrap();
    let created = events.create(&PostParams::default(), &event).await.unwrap();
    assert_eq!(created.reason.as_deref(), Some("ImageNotPullable"));
    let again = api_error(events.create(&PostParams::default(), &event).await);
    assert_eq!(again.code, 409);

    let params = PatchParams::default();
    let merge = Patch::Merge(json!({"count": 2, "lastTimestamp": "2026-12-06T10:00:00Z"}));
    let patched = events
        .patch("web.image-not-pullable", &params, &merge)
        .await
        .unwrap();
    assert_eq!(patched.count, Some(2));
    assert_eq!(
        patched.message.as_deref(),
        Some("r/web:v1: manifest unknown")
    );
    let strategic = Patch::Strategic(json!({"count": 3, "source": {"host": null}}));
    let patched = events
        .patch("web.image-not-pullable", &params, &strategic)
        .await
        .unwrap();
    assert_eq!(patched.count, Some(3));
    assert_ne!(
        patched.metadata.resource_version,
        created.metadata.resource_version
    );
    let missing = events.patch("nope", &params, &merge).await;
    assert_eq!(api_error(missing).code, 404);
    let apply = Patch::Apply(json!({"apiVersion": "v1", "kind": "Event", "count": 4}));
    let unsupported = events
        .patch("web.image-not-pullable", &PatchParams::apply("t"), &apply)
        .await;
    assert_eq!(api_error(unsupported).code, 415);
    let mut elsewhere = event.clone();
    elsewhere.metadata.name = Some("other".into());
    elsewhere.involved_object.namespace = Some("blog".into());
    let invalid = api_error(events.create(&PostParams::default(), &elsewhere).await);
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));

    let stored = api.events();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["count"], 3);
    assert_eq!(stored[0]["involvedObject"]["name"], "web");
}

#[tokio::test]
async fn failures_delays_and_rbac_reach_the_new_routes() {
    let (_pki, api) = api_server().await;
    api.put_workload("cronjobs", "shop", "report", 0, &["r/report:v1"]);
    api.put_workload("pods", "locked", "p", 0, &["r/x:v1"]);
    let client = api.client();
    api.fail_with(Some(500));
    let failed = api_error(
        Api::<Pod>::all(client.clone())
            .list(&Default::default())
            .await,
    );
    assert_eq!(
        (failed.code, failed.reason.as_str()),
        (500, "InternalError")
    );
    api.fail_with(None);
    api.set_delay(Some(Duration::from_millis(300)));
    let started = Instant::now();
    let leases = Api::<Lease>::namespaced(client.clone(), "pullgate");
    assert!(leases.get_opt("x").await.unwrap().is_none());
    assert!(started.elapsed() >= Duration::from_millis(300));
    api.set_delay(None);

    api.forbid_resource("cronjobs");
    let forbidden = api_error(
        Api::<CronJob>::all(client.clone())
            .list(&Default::default())
            .await,
    );
    assert_eq!(forbidden.code, 403);
    assert_eq!(
        forbidden.message,
        format!(
            "cronjobs.batch is forbidden: User \"{WEBHOOK_USER}\" cannot list resource \"cronjobs\" in API group \"batch\" at the cluster scope"
        )
    );
    api.forbid_namespace("locked");
    let locked = Api::<Pod>::namespaced(client.clone(), "locked")
        .list(&Default::default())
        .await;
    assert!(
        api_error(locked).message.contains(
            "cannot list resource \"pods\" in API group \"\" in the namespace \"locked\""
        )
    );
    let delete = Api::<Pod>::namespaced(client, "shop")
        .delete("p", &Default::default())
        .await;
    assert_eq!(api_error(delete.map(|_| ())).code, 403);
    assert!(api.object("pods", "locked", "p").is_some());
}

#[tokio::test]
async fn ten_thousand_pods_list_in_pages_quickly() {
    let (_pki, api) = api_server().await;
    let started = Instant::now();
    for i in 0..10_000 {
        let name = format!("pod-{i:05}");
        let ns = format!("ns-{:03}", i % 200);
        api.put_workload("pods", &ns, &name, 0, &["r/app:v1"]);
    }
    let stored = started.elapsed();
    let pods: Api<Pod> = Api::all(api.client());
    let started = Instant::now();
    let pages = pages(&pods, ListParams::default().limit(500)).await;
    let listed = started.elapsed();
    assert_eq!(pages.len(), 20);
    let names: BTreeSet<String> = pages.iter().flat_map(|p| p.0.clone()).collect();
    assert_eq!(names.len(), 10_000);
    eprintln!("stored 10,000 pods in {stored:?}, listed them in pages of 500 in {listed:?}");
    // Debug builds on two cores: about a second; quadratic paging would take far longer.
    assert!(
        listed < Duration::from_secs(15),
        "listing took {listed:?} (storing {stored:?})"
    );
}
