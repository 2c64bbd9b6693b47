//! A stand-in for kube-apiserver, over TLS, serving genuine Kubernetes JSON on the real REST
//! paths (`/api/v1/...`, `/apis/{group}/v1/...`): one object, lists of every kind the audit reads,
//! cluster-wide and per namespace, paged as the real server pages them (see `cluster.rs`), Lease
//! create/update with optimistic concurrency, Event create and merge patch, the TokenRequest
//! subresource (`POST .../serviceaccounts/{name}/token`) issuing tokens the tests can trace back
//! to their ServiceAccount, and the `meta/v1` Status of every error the real server sends. RBAC
//! is the webhook's and the audit's: get and list anything, create and patch Events, create and
//! update Leases; other writes are 403. Tests change objects while it runs and count its calls.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::cluster::{Failure, Kind, ListQuery, Store, fresh, key, kind_of};
use super::pki::Pki;
use super::server::{TestServer, serve_tls};

/// The identity pullgate runs as in the 403 messages.
pub const WEBHOOK_USER: &str = "system:serviceaccount:pullgate:pullgate";

pub struct ApiServer {
    server: TestServer,
    state: Arc<ApiState>,
    ca_der: Vec<u8>,
}

/// One list request (one page) the server answered.
#[derive(Clone, Debug)]
pub struct ListCall {
    /// The path and query string, as [`ApiServer::calls`] has it.
    pub path: String,
    pub resource: String,
    /// `None` for a cluster-wide list.
    pub namespace: Option<String>,
    pub limit: Option<usize>,
    /// Whether it carried a continue token.
    pub continued: bool,
    /// Items in the page.
    pub items: usize,
    /// The HTTP status of the answer (200, 410, 400…).
    pub code: u16,
}

#[derive(Default)]
struct ApiState {
    /// (resource, namespace, name) → object JSON, and the resourceVersion counter.
    store: Mutex<Store>,
    forbidden_namespaces: Mutex<HashSet<String>>,
    forbidden_resources: Mutex<HashSet<String>>,
    /// Answer every call with this status instead (an API server in trouble).
    failing: Mutex<Option<u16>>,
    delay: Mutex<Option<Duration>>,
    calls: Mutex<Vec<String>>,
    lists: Mutex<Vec<ListCall>>,
    /// Every TokenRequest body received, with its namespace and ServiceAccount.
    token_requests: Mutex<Vec<(String, String, Value)>>,
    tokens_issued: AtomicU64,
}

impl ApiServer {
    pub async fn start(pki: &Pki) -> ApiServer {
        let state = Arc::new(ApiState::default());
        let router = Router::new().fallback(handle).with_state(state.clone());
        let server = serve_tls(router, pki.server_tls(&["127.0.0.1", "localhost"])).await;
        let ca_der = pki.ca_der().to_vec();
        ApiServer {
            server,
            state,
            ca_der,
        }
    }

    /// A kube client for this server, trusting the test CA, as in-cluster config would be.
    pub fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.server.base().parse().expect("server url"));
        config.root_cert = Some(vec![self.ca_der.clone()]);
        config.default_namespace = "pullgate".into();
        kube::Client::try_from(config).expect("kube client")
    }

    /// `https://127.0.0.1:PORT`, for plain HTTP clients that trust the test CA.
    pub fn base(&self) -> String {
        self.server.base()
    }

    /// Stores `object` (whose metadata may hold labels, annotations, ownerReferences, even a
    /// uid or creationTimestamp) as `namespace/name` of `resource` (namespace "" when
    /// cluster-scoped), with kind, apiVersion and a new resourceVersion filled in; an object
    /// already there is updated and keeps its uid. `api_version` must be the resource's (`v1`,
    /// `apps/v1`, `batch/v1`, `coordination.k8s.io/v1`). Returns the stored object.
    pub fn put(
        &self,
        api_version: &str,
        resource: &str,
        namespace: &str,
        name: &str,
        object: Value,
    ) -> Value {
        let kind = kind_of(resource).unwrap_or_else(|| panic!("no resource {resource} served"));
        let (version, scoped) = (kind.api_version(), kind.namespaced != namespace.is_empty());
        assert!(
            version == api_version && scoped,
            "{resource} is {version}, namespaced: {scoped}"
        );
        let fresh = fresh(kind, "2026-11-01T09:30:00Z", "kubectl-create");
        let mut store = self.state.store.lock().unwrap();
        store.store(kind, namespace, name, object, fresh)
    }

    /// The stored object, if any.
    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (resource.to_owned(), namespace.to_owned(), name.to_owned());
        self.state.store.lock().unwrap().objects.get(&key).cloned()
    }

    /// The Lease `namespace/name`, as a GET would return it.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.object("leases", namespace, name)
    }

    /// Every Event stored, by namespace then name.
    pub fn events(&self) -> Vec<Value> {
        let store = self.state.store.lock().unwrap();
        let events = store.objects.iter().filter(|(k, _)| k.0 == "events");
        events.map(|(_, v)| v.clone()).collect()
    }

    /// The current global resourceVersion (what a list started now reports).
    pub fn resource_version(&self) -> u64 {
        self.state.store.lock().unwrap().revision()
    }

    /// As an etcd compaction: every continue token handed out so far is answered with 410
    /// Expired (its Status carrying an inconsistent continue token, as the real server's does);
    /// lists started afterwards page normally.
    pub fn expire_continue_tokens(&self) {
        self.state.store.lock().unwrap().compact();
    }

    /// A `kubernetes.io/dockerconfigjson` secret holding `config` (a docker config document).
    pub fn put_dockerconfigjson(&self, namespace: &str, name: &str, config: &Value) {
        let bytes = serde_json::to_vec(config).unwrap();
        let data: &[(&str, &[u8])] = &[(".dockerconfigjson", &bytes)];
        self.put_secret(namespace, name, "kubernetes.io/dockerconfigjson", data);
    }

    /// A dockerconfigjson secret for one registry key with `auth`, as `kubectl create secret
    /// docker-registry` writes it.
    pub fn put_registry_secret(
        &self,
        namespace: &str,
        name: &str,
        registry: &str,
        user: &str,
        password: &str,
    ) {
        let auth = STANDARD.encode(format!("{user}:{password}"));
        let entry = json!({"username": user, "password": password, "auth": auth});
        self.put_dockerconfigjson(namespace, name, &json!({"auths": {registry: entry}}));
    }

    /// The put_* helpers for Secrets and ServiceAccounts recreate the object (a new uid).
    pub fn put_secret(
        &self,
        namespace: &str,
        name: &str,
        secret_type: &str,
        data: &[(&str, &[u8])],
    ) {
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(STANDARD.encode(v))))
            .collect();
        self.delete("secrets", namespace, name);
        let object = json!({"data": data, "type": secret_type});
        self.put("v1", "secrets", namespace, name, object);
    }

    pub fn put_service_account(&self, namespace: &str, name: &str, pull_secrets: &[&str]) {
        self.put_annotated_service_account(namespace, name, pull_secrets, &[]);
    }

    pub fn put_annotated_service_account(
        &self,
        namespace: &str,
        name: &str,
        pull_secrets: &[&str],
        annotations: &[(&str, &str)],
    ) {
        let mut object = json!({"metadata": {}});
        if !annotations.is_empty() {
            object["metadata"]["annotations"] = annotations
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        if !pull_secrets.is_empty() {
            object["imagePullSecrets"] = pull_secrets.iter().map(|n| json!({"name": n})).collect();
        }
        self.delete("serviceaccounts", namespace, name);
        self.put("v1", "serviceaccounts", namespace, name, object);
    }

    pub fn delete(&self, resource: &str, namespace: &str, name: &str) {
        let mut store = self.state.store.lock().unwrap();
        let key = (resource.to_owned(), namespace.to_owned(), name.to_owned());
        if store.objects.remove(&key).is_some() {
            store.next_revision();
        }
    }

    /// RBAC that does not let the webhook read anything in `namespace`.
    pub fn forbid_namespace(&self, namespace: &str) {
        let mut forbidden = self.state.forbidden_namespaces.lock().unwrap();
        forbidden.insert(namespace.into());
    }

    /// RBAC that grants nothing on `resource` (`cronjobs`…), anywhere.
    pub fn forbid_resource(&self, resource: &str) {
        let mut forbidden = self.state.forbidden_resources.lock().unwrap();
        forbidden.insert(resource.into());
    }

    /// Answer every call (after the delay) with this status and an InternalError Status.
    pub fn fail_with(&self, status: Option<u16>) {
        *self.state.failing.lock().unwrap() = status;
    }

    /// Wait this long before answering any call.
    pub fn set_delay(&self, delay: Option<Duration>) {
        *self.state.delay.lock().unwrap() = delay;
    }

    /// The UID the server gave `namespace/name` of `resource`.
    pub fn uid(&self, resource: &str, namespace: &str, name: &str) -> String {
        let object = self
            .object(resource, namespace, name)
            .expect("a stored object");
        object["metadata"]["uid"].as_str().unwrap().to_owned()
    }

    /// Every TokenRequest received: namespace, ServiceAccount and the request body.
    pub fn token_requests(&self) -> Vec<(String, String, Value)> {
        self.state.token_requests.lock().unwrap().clone()
    }

    /// Every request path, with its query string if it had one, in arrival order.
    pub fn calls(&self) -> Vec<String> {
        self.state.calls.lock().unwrap().clone()
    }

    pub fn count(&self, path_contains: &str) -> usize {
        let calls = self.calls();
        calls.iter().filter(|p| p.contains(path_contains)).count()
    }

    /// Every list request (page) answered, in arrival order.
    pub fn list_calls(&self) -> Vec<ListCall> {
        self.state.lists.lock().unwrap().clone()
    }
}

/// Where a request goes: a kind, and maybe a namespace, an object and a subresource.
struct Target<'a> {
    kind: &'static Kind,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
    subresource: Option<&'a str>,
}

impl<'a> Target<'a> {
    fn parse(path: &'a str) -> Option<Target<'a>> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest) = match segments.as_slice() {
            ["api", "v1", rest @ ..] => ("", rest),
            ["apis", group, "v1", rest @ ..] => (*group, rest),
            _ => return None,
        };
        let (namespace, resource, name, subresource) = match rest {
            ["namespaces", ns, resource, tail @ ..] if tail.len() <= 2 => (
                Some(*ns),
                *resource,
                tail.first().copied(),
                tail.get(1).copied(),
            ),
            [resource] => (None, *resource, None, None),
            [resource, name] => (None, *resource, Some(*name), None),
            _ => return None,
        };
        let kind = kind_of(resource).filter(|k| k.group == group)?;
        let scoped = match kind.namespaced {
            true => namespace.is_some() || name.is_none(),
            false => namespace.is_none(),
        };
        scoped.then_some(Target {
            kind,
            namespace,
            name,
            subresource,
        })
    }
}

const NO_SUCH_RESOURCE: &str = "the server could not find the requested resource";

/// A header's value up to `until`.
fn header(headers: &HeaderMap, name: header::HeaderName, until: char) -> &str {
    let value = headers.get(name).map_or("", |v| v.to_str().unwrap_or(""));
    value.split(until).next().unwrap_or("").trim()
}

async fn handle(
    State(state): State<Arc<ApiState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let called = match uri.query().filter(|q| !q.is_empty()) {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    state.calls.lock().unwrap().push(called.clone());
    let delay = *state.delay.lock().unwrap();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let no_such = || respond(Failure::new(404, "NotFound", NO_SUCH_RESOURCE));
    let Some(target) = Target::parse(path) else {
        return no_such();
    };
    let (kind, namespace, name) = (target.kind, target.namespace, target.name);
    if let Some(code) = *state.failing.lock().unwrap() {
        let failure = Failure::new(code, "InternalError", "etcdserver: request timed out");
        return respond(failure.about(kind, name));
    }
    let verb = match (&method, name, target.subresource) {
        (&Method::GET, Some(_), None) => "get",
        (&Method::GET, None, None) => "list",
        (&Method::POST, None, None) if namespace.is_some() || !kind.namespaced => "create",
        (&Method::POST, Some(name), Some("token")) if kind.resource == "serviceaccounts" => {
            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
            return create_token(&state, namespace.unwrap_or(""), name, body);
        }
        (_, _, Some(_)) => return no_such(),
        (&Method::PUT, Some(_), None) => "update",
        (&Method::PATCH, Some(_), None) => "patch",
        (&Method::DELETE, _, None) => "delete",
        _ => {
            let message = "the server does not allow this method on the requested resource";
            return respond(Failure::new(405, "MethodNotAllowed", message));
        }
    };
    let namespace_forbidden =
        namespace.is_some_and(|ns| state.forbidden_namespaces.lock().unwrap().contains(ns));
    let forbidden_resources = state.forbidden_resources.lock().unwrap().clone();
    let resource_forbidden = forbidden_resources.contains(kind.resource);
    let granted = matches!(verb, "get" | "list") || kind.writes.contains(&verb);
    if namespace_forbidden || resource_forbidden || !granted {
        let named = name.filter(|_| verb != "create");
        return respond(Failure::forbidden(kind, verb, namespace, named));
    }
    let (ns, name) = (namespace.unwrap_or(""), name.unwrap_or(""));
    if verb == "list" {
        return list(&state, kind, namespace, called, uri.query());
    } else if verb == "get" {
        let store = state.store.lock().unwrap();
        return match store.objects.get(&key(kind, ns, name)).cloned() {
            Some(object) => Json(object).into_response(),
            None => respond(Failure::not_found(kind, name)),
        };
    }
    // Writes: create, update (PUT) or patch. The field manager is the client's program.
    let manager = header(&headers, header::USER_AGENT, '/');
    let content_type = header(&headers, header::CONTENT_TYPE, ';');
    let merge = [
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
    ];
    if verb == "patch" && !merge.contains(&content_type) {
        let message = "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json";
        return respond(Failure::new(415, "UnsupportedMediaType", message));
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        let message = "the body of the request is not valid JSON";
        return respond(Failure::bad_request(message));
    };
    let mut store = state.store.lock().unwrap();
    let written = match verb {
        "create" => store.create(kind, ns, body, manager),
        "update" => store.update(kind, ns, name, body, manager),
        _ => store.patch(kind, ns, name, &body),
    };
    match written {
        Ok((code, object)) => (StatusCode::from_u16(code).unwrap(), Json(object)).into_response(),
        Err(failure) => respond(failure),
    }
}

fn list(
    state: &ApiState,
    kind: &Kind,
    ns: Option<&str>,
    path: String,
    q: Option<&str>,
) -> Response {
    let (namespace, parsed) = (ns, ListQuery::parse(q));
    let mut call = ListCall {
        path,
        resource: kind.resource.to_owned(),
        namespace: namespace.map(str::to_owned),
        limit: parsed.as_ref().ok().and_then(|q| q.limit),
        continued: parsed.as_ref().is_ok_and(|q| q.continue_token.is_some()),
        items: 0,
        code: 200,
    };
    let page = parsed.and_then(|query| match query.watch {
        true => Err(Failure::bad_request(
            "the stand-in apiserver serves no watch",
        )),
        false => state.store.lock().unwrap().list(kind, namespace, &query),
    });
    let response = match page {
        Ok((list, items)) => {
            call.items = items;
            Json(list).into_response()
        }
        Err(failure) => respond(failure),
    };
    call.code = response.status().as_u16();
    state.lists.lock().unwrap().push(call);
    response
}

/// The TokenRequest subresource as kube-apiserver answers it: 404 for an unknown
/// ServiceAccount, 409 when `metadata.uid` is not the account's (the UID precondition), else 201
/// with the request's spec and a token `sa-token.<namespace>.<name>.<n>` in `status`.
fn create_token(state: &ApiState, namespace: &str, name: &str, body: Value) -> Response {
    let request = (namespace.to_owned(), name.to_owned(), body.clone());
    state.token_requests.lock().unwrap().push(request);
    let kind = kind_of("serviceaccounts").unwrap();
    let account = state
        .store
        .lock()
        .unwrap()
        .objects
        .get(&key(kind, namespace, name))
        .cloned();
    let Some(account) = account else {
        return respond(Failure::not_found(kind, name));
    };
    let uid = account["metadata"]["uid"].as_str().unwrap_or_default();
    if let Some(asked) = body["metadata"]["uid"].as_str()
        && asked != uid
    {
        let message = format!(
            "Operation cannot be fulfilled on serviceaccounts \"{name}\": the UID in the precondition ({asked}) does not match the UID in record ({uid}). The object might have been deleted and then recreated"
        );
        return respond(Failure::new(409, "Conflict", message).about(kind, Some(name)));
    }
    let n = state.tokens_issued.fetch_add(1, Ordering::Relaxed) + 1;
    let seconds = body["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
    let expires = SystemTime::now() + Duration::from_secs(seconds as u64);
    let expires = humantime::format_rfc3339_seconds(expires).to_string();
    let answer = json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": null},
        "spec": {
            "audiences": body["spec"]["audiences"].clone(),
            "expirationSeconds": seconds,
            "boundObjectRef": body["spec"]["boundObjectRef"].clone(),
        },
        "status": {
            "token": format!("sa-token.{namespace}.{name}.{n}"),
            "expirationTimestamp": expires,
        }
    });
    (StatusCode::CREATED, Json(answer)).into_response()
}

/// A `meta/v1` Status, the body kube-apiserver sends with every error.
fn respond(Failure(code, body): Failure) -> Response {
    (StatusCode::from_u16(code).unwrap(), Json(body)).into_response()
}

// --- Workloads --------------------------------------------------------------------------------

/// A pod spec with one container per image (`c0`, `c1`, …).
pub fn pod_spec(images: &[&str]) -> Value {
    let containers: Vec<Value> = (images.iter().enumerate())
        .map(|(i, image)| json!({"name": format!("c{i}"), "image": image, "imagePullPolicy": "IfNotPresent"}))
        .collect();
    json!({"containers": containers, "restartPolicy": "Always", "serviceAccountName": "default"})
}

/// `object` with these labels added.
pub fn labelled(mut object: Value, labels: &[(&str, &str)]) -> Value {
    for (key, value) in labels {
        object["metadata"]["labels"][*key] = (*value).into();
    }
    object
}

/// `object` with a controller ownerReference to `owner` (an object [`ApiServer::put`] returned).
pub fn owned_by(mut object: Value, owner: &Value) -> Value {
    let meta = &owner["metadata"];
    let references = &mut object["metadata"]["ownerReferences"];
    let reference = json!({"apiVersion": owner["apiVersion"], "kind": owner["kind"],
        "name": meta["name"], "uid": meta["uid"], "controller": true, "blockOwnerDeletion": true});
    match references.as_array_mut() {
        Some(references) => references.push(reference),
        None => *references = json!([reference]),
    }
    object
}

/// The body of a workload of `resource` (pods, deployments, statefulsets, daemonsets,
/// replicasets, replicationcontrollers, jobs, cronjobs) labelled `app: <name>`, running `images`
/// with `replicas` replicas (DaemonSets: scheduled pods; Jobs: active pods, 0 when finished).
pub fn workload(resource: &str, name: &str, replicas: i64, images: &[&str]) -> Value {
    let labels = json!({"app": name});
    let template = json!({"metadata": {"labels": labels}, "spec": pod_spec(images)});
    let (selector, mut job) = (json!({"matchLabels": labels}), template.clone());
    job["spec"]["restartPolicy"] = "Never".into();
    let (spec, status) = match resource {
        "pods" => (pod_spec(images), json!({"phase": "Running"})),
        "deployments" | "statefulsets" | "replicasets" | "replicationcontrollers" => {
            let rc = resource == "replicationcontrollers";
            let selector = if rc { &labels } else { &selector };
            let spec = json!({"replicas": replicas, "selector": selector, "template": template});
            let status = json!({"replicas": replicas, "readyReplicas": replicas});
            (spec, status)
        }
        "daemonsets" => (
            json!({"selector": selector, "template": template}),
            json!({"desiredNumberScheduled": replicas, "currentNumberScheduled": replicas,
                "numberMisscheduled": 0, "numberReady": replicas}),
        ),
        "jobs" => (
            json!({"backoffLimit": 6, "template": job}),
            match replicas {
                0 => {
                    json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
                }
                active => json!({"active": active}),
            },
        ),
        "cronjobs" => {
            let spec =
                json!({"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": job}}});
            (spec, json!({}))
        }
        other => panic!("no workload builder for {other}"),
    };
    json!({"metadata": {"labels": labels}, "spec": spec, "status": status})
}

impl ApiServer {
    /// Stores a [`workload`] of `resource` in `namespace`; returns the stored object.
    pub fn put_workload(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        replicas: i64,
        images: &[&str],
    ) -> Value {
        let api_version = kind_of(resource).expect("a served kind").api_version();
        let body = workload(resource, name, replicas, images);
        self.put(&api_version, resource, namespace, name, body)
    }

    /// A Deployment as its controllers leave it: its ReplicaSet and `replicas` running pods,
    /// each owned by the one above. Returns (deployment, replicaset, pods).
    pub fn put_deployment_with_pods(
        &self,
        namespace: &str,
        name: &str,
        replicas: i64,
        images: &[&str],
    ) -> (Value, Value, Vec<Value>) {
        let deployment = self.put_workload("deployments", namespace, name, replicas, images);
        let (hash, rs) = ("5d8f7c9b4", format!("{name}-5d8f7c9b4"));
        let body = owned_by(workload("replicasets", name, replicas, images), &deployment);
        let body = labelled(body, &[("pod-template-hash", hash)]);
        let replicaset = self.put("apps/v1", "replicasets", namespace, &rs, body);
        let pods = (0..replicas).map(|i| {
            let body = owned_by(workload("pods", name, 0, images), &replicaset);
            let body = labelled(body, &[("pod-template-hash", hash)]);
            self.put("v1", "pods", namespace, &format!("{rs}-x{i:04}"), body)
        });
        (deployment, replicaset.clone(), pods.collect())
    }

    /// A Node with the well-known os/arch labels and `status.nodeInfo`.
    pub fn put_node(&self, name: &str, os: &str, arch: &str) -> Value {
        let labels = json!({"kubernetes.io/os": os, "kubernetes.io/arch": arch, "kubernetes.io/hostname": name});
        let info = json!({"operatingSystem": os, "architecture": arch, "kubeletVersion": "v1.35.0",
            "containerRuntimeVersion": "containerd://2.1.4"});
        let status = json!({"nodeInfo": info});
        let body = json!({"metadata": {"labels": labels}, "spec": {}, "status": status});
        self.put("v1", "nodes", "", name, body)
    }
}
