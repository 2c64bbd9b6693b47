//! Listing what already runs, page by page (`limit` and `continue`, as `kubectl get` pages),
//! with every page's body bounded and each object read into a [`Workload`] as the page
//! arrives, so a cluster of 100,000 pods is never held as JSON at once.
//!
//! What pulls images: the pod templates of Deployments, StatefulSets, DaemonSets, CronJobs
//! and ReplicationControllers; ReplicaSets with replicas that no Deployment owns; Jobs still
//! running that no CronJob owns; and Pods no controller owns. Pods that a controller owns are
//! read only for the node they run on, whose platform is then the one their workload is
//! checked for.

use std::collections::{BTreeSet, HashMap, HashSet};

use http_body_util::{BodyExt, LengthLimitError, Limited};
use kube::core::GroupVersionKind;
use kube::core::admission::Operation;
use kube::core::params::ListParams;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::AuditError;
use crate::admission::workload::{self, RequestParts, Workload};
use crate::oci::platform::Platform;

/// Objects a page holds at most, as `kubectl get --chunk-size` defaults.
pub(crate) const PAGE_SIZE: u32 = 500;
/// A page body larger than this is refused: 500 pods are a few MiB.
const MAX_PAGE_BYTES: usize = 64 * 1024 * 1024;
/// A list restarted this often after its continue token expired fails.
const MAX_RESTARTS: usize = 3;
/// Most time one page may take, retries of kube's client (on 429, 503, 504) included.
const PAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// One kind that is listed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Listed {
    pub(crate) group: &'static str,
    pub(crate) version: &'static str,
    pub(crate) resource: &'static str,
    pub(crate) kind: &'static str,
}

const fn listed(
    group: &'static str,
    version: &'static str,
    resource: &'static str,
    kind: &'static str,
) -> Listed {
    Listed {
        group,
        version,
        resource,
        kind,
    }
}

pub(crate) const NODES: Listed = listed("", "v1", "nodes", "Node");
pub(crate) const PODS: Listed = listed("", "v1", "pods", "Pod");
/// The controllers, listed after the Pods (whose nodes they need).
pub(crate) const CONTROLLERS: [Listed; 7] = [
    listed("apps", "v1", "deployments", "Deployment"),
    listed("apps", "v1", "statefulsets", "StatefulSet"),
    listed("apps", "v1", "daemonsets", "DaemonSet"),
    listed("apps", "v1", "replicasets", "ReplicaSet"),
    listed("batch", "v1", "jobs", "Job"),
    listed("batch", "v1", "cronjobs", "CronJob"),
    listed("", "v1", "replicationcontrollers", "ReplicationController"),
];

impl Listed {
    fn path(&self, namespace: Option<&str>) -> String {
        let base = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match namespace {
            Some(ns) => format!("{base}/namespaces/{ns}/{}", self.resource),
            None => format!("{base}/{}", self.resource),
        }
    }

    fn gvk(&self) -> GroupVersionKind {
        GroupVersionKind::gvk(self.group, self.version, self.kind)
    }
}

/// Where and what to list.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Namespaces to list; empty for all.
    pub namespaces: Vec<String>,
    /// A label selector (`app=web,tier!=db`) for the workloads (not for nodes).
    pub selector: Option<String>,
    /// Objects a list page holds at most; 0 for [`PAGE_SIZE`].
    pub page_size: u32,
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    metadata: PageMeta,
    #[serde(default)]
    items: Vec<Box<RawValue>>,
}

#[derive(Deserialize, Default)]
struct PageMeta {
    #[serde(default, rename = "continue")]
    next: Option<String>,
}

/// The fields read from any listed object besides its pod spec.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Meta {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Counts,
    #[serde(default)]
    status: Status,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ObjectMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    owner_references: Vec<OwnerRef>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct OwnerRef {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    controller: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Counts {
    #[serde(default)]
    replicas: Option<i64>,
    #[serde(default)]
    node_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Status {
    #[serde(default)]
    active: Option<i64>,
    #[serde(default)]
    completion_time: Option<String>,
    #[serde(default)]
    node_info: Option<NodeInfo>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct NodeInfo {
    #[serde(default)]
    operating_system: String,
    #[serde(default)]
    architecture: String,
}

/// A workload found running, with what the audit reports about it.
#[derive(Debug)]
pub(crate) struct Found {
    pub(crate) workload: Workload,
    pub(crate) uid: String,
    pub(crate) api_version: String,
    /// The platforms of the nodes its pods run on, when any are known.
    pub(crate) running_on: Vec<Platform>,
}

/// Everything one listing found.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub(crate) found: Vec<Found>,
    /// Objects that could not be read as workloads (`kind ns/name: why`).
    pub(crate) unreadable: Vec<String>,
    /// Pages fetched, all kinds.
    pub(crate) pages: usize,
}

/// Lists the workloads of `scope` through `client`.
pub(crate) async fn list(client: &kube::Client, scope: &Scope) -> Result<Listing, AuditError> {
    let mut listing = Listing::default();
    // Node → platform, then controller uid → the platforms its pods run on.
    let mut nodes: HashMap<String, Platform> = HashMap::new();
    let page_size = if scope.page_size == 0 {
        PAGE_SIZE
    } else {
        scope.page_size
    };
    listing.pages += each(client, &NODES, None, None, page_size, |_raw, meta| {
        if let Some(info) = &meta.status.node_info
            && let Ok(platform) =
                Platform::parse(&format!("{}/{}", info.operating_system, info.architecture))
        {
            nodes.insert(meta.metadata.name.clone(), platform);
        }
    })
    .await?;
    let mut running: HashMap<String, BTreeSet<Platform>> = HashMap::new();
    for namespace in namespaces(scope) {
        let ns = namespace.as_deref();
        let mut found = Vec::new();
        listing.pages += each(
            client,
            &PODS,
            ns,
            scope.selector.as_deref(),
            page_size,
            |raw, meta| match meta.metadata.owner_references.iter().find(|o| o.controller) {
                Some(owner) => {
                    if let Some(platform) = meta.spec.node_name.as_ref().and_then(|n| nodes.get(n))
                    {
                        running
                            .entry(owner.uid.clone())
                            .or_default()
                            .insert(platform.clone());
                    }
                }
                None => found.push(read(&PODS, raw, meta, Vec::new())),
            },
        )
        .await?;
        for kind in &CONTROLLERS {
            listing.pages += each(
                client,
                kind,
                ns,
                scope.selector.as_deref(),
                page_size,
                |raw, meta| {
                    let owner = meta.metadata.owner_references.iter().find(|o| o.controller);
                    let keep = match kind.kind {
                        // A Deployment's ReplicaSets are its history: the Deployment is audited.
                        "ReplicaSet" => {
                            if let Some(owner) = owner.filter(|o| o.kind == "Deployment") {
                                if let Some(on) = running.remove(&meta.metadata.uid) {
                                    running.entry(owner.uid.clone()).or_default().extend(on);
                                }
                                false
                            } else {
                                meta.spec.replicas.unwrap_or(1) > 0
                            }
                        }
                        // A CronJob's Jobs pull what its template says; a finished Job pulls nothing.
                        "Job" => {
                            owner.is_none_or(|o| o.kind != "CronJob")
                                && meta.status.completion_time.is_none()
                                && meta.status.active.unwrap_or(0) > 0
                        }
                        _ => true,
                    };
                    if keep {
                        let on = running
                            .get(&meta.metadata.uid)
                            .map(|s| s.iter().cloned().collect())
                            .unwrap_or_default();
                        found.push(read(kind, raw, meta, on));
                    }
                },
            )
            .await?;
        }
        for read in found {
            match read {
                Ok(Some(f)) => listing.found.push(f),
                Ok(None) => {}
                Err(e) => listing.unreadable.push(e),
            }
        }
    }
    // Deployments were listed before their ReplicaSets: give them their pods' nodes now.
    for found in &mut listing.found {
        if found.running_on.is_empty()
            && let Some(on) = running.get(&found.uid)
        {
            found.running_on = on.iter().cloned().collect();
        }
    }
    Ok(listing)
}

/// `None` for all namespaces, else each one named.
fn namespaces(scope: &Scope) -> Vec<Option<String>> {
    if scope.namespaces.is_empty() {
        vec![None]
    } else {
        scope.namespaces.iter().cloned().map(Some).collect()
    }
}

/// Reads one object as the workload a CREATE of it would be.
fn read(
    kind: &Listed,
    raw: &RawValue,
    meta: &Meta,
    running_on: Vec<Platform>,
) -> Result<Option<Found>, String> {
    let gvk = kind.gvk();
    let parts = RequestParts {
        kind: &gvk,
        sub_resource: None,
        operation: &Operation::Create,
        namespace: Some(&meta.metadata.namespace),
        object: Some(raw),
        old_object: None,
    };
    match workload::from_parts(&parts) {
        Ok(Some(workload)) => Ok(Some(Found {
            workload,
            uid: meta.metadata.uid.clone(),
            api_version: if kind.group.is_empty() {
                kind.version.to_owned()
            } else {
                format!("{}/{}", kind.group, kind.version)
            },
            running_on,
        })),
        Ok(None) => Ok(None),
        Err(e) => Err(format!(
            "{} {}/{}: {e}",
            kind.kind, meta.metadata.namespace, meta.metadata.name
        )),
    }
}

/// Calls `visit` with every object of `kind`, page by page; a list whose continue token
/// expires (410) is started again, at most [`MAX_RESTARTS`] times, with what was visited
/// before kept (objects are told apart later by uid where that matters).
async fn each(
    client: &kube::Client,
    kind: &Listed,
    namespace: Option<&str>,
    selector: Option<&str>,
    page_size: u32,
    mut visit: impl FnMut(&RawValue, &Meta),
) -> Result<usize, AuditError> {
    let mut pages = 0;
    let path = kind.path(namespace);
    let mut restarts = 0;
    let mut next: Option<String> = None;
    let mut seen: HashSet<String> = HashSet::new();
    loop {
        let mut params = ListParams::default().limit(page_size);
        if let Some(selector) = selector.filter(|_| kind.resource != "nodes") {
            params = params.labels(selector);
        }
        if let Some(token) = &next {
            params = params.continue_token(token);
        }
        let request =
            kube::core::Request::new(&path)
                .list(&params)
                .map_err(|e| AuditError::List {
                    what: path.clone(),
                    problem: e.to_string(),
                })?;
        let page = match fetch(client, request, &path).await {
            Ok(page) => page,
            Err(AuditError::Expired { .. }) if restarts < MAX_RESTARTS => {
                restarts += 1;
                tracing::info!(list = %path, "continue token expired; listing again from the start");
                next = None;
                continue;
            }
            Err(e) => return Err(e),
        };
        pages += 1;
        for item in &page.items {
            // After a restart, what was visited before is skipped.
            let meta: Meta = serde_json::from_str(item.get()).unwrap_or_default();
            if meta.metadata.uid.is_empty() || seen.insert(meta.metadata.uid.clone()) {
                visit(item, &meta);
            }
        }
        match page.metadata.next.filter(|t| !t.is_empty()) {
            Some(token) => next = Some(token),
            None => return Ok(pages),
        }
    }
}

async fn fetch(
    client: &kube::Client,
    request: http::Request<Vec<u8>>,
    path: &str,
) -> Result<Page, AuditError> {
    let problem = |problem: String| AuditError::List {
        what: path.to_owned(),
        problem,
    };
    let fetch = async {
        let response = client
            .send(request.map(kube::client::Body::from))
            .await
            .map_err(|e| problem(e.to_string()))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_PAGE_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<LengthLimitError>() {
                    problem(format!("a page larger than {MAX_PAGE_BYTES} bytes"))
                } else {
                    problem(format!("reading the page: {e}"))
                }
            })?
            .to_bytes();
        Ok::<_, AuditError>((status, body))
    };
    let (status, body) = tokio::time::timeout(PAGE_TIMEOUT, fetch)
        .await
        .map_err(|_| problem(format!("no page within {}s", PAGE_TIMEOUT.as_secs())))??;
    match status {
        200 => serde_json::from_slice(&body).map_err(|e| {
            problem(format!(
                "invalid JSON at line {}, column {}",
                e.line(),
                e.column()
            ))
        }),
        410 => Err(AuditError::Expired {
            what: path.to_owned(),
        }),
        401 | 403 => Err(problem(
            "forbidden: pullgate's audit needs `list` on it (see deploy/audit)".to_owned(),
        )),
        other => Err(problem(format!("the API server answered HTTP {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_the_real_rest_paths() {
        assert_eq!(PODS.path(None), "/api/v1/pods");
        assert_eq!(PODS.path(Some("shop")), "/api/v1/namespaces/shop/pods");
        assert_eq!(
            CONTROLLERS[0].path(Some("shop")),
            "/apis/apps/v1/namespaces/shop/deployments"
        );
        assert_eq!(CONTROLLERS[5].path(None), "/apis/batch/v1/cronjobs");
    }
}
