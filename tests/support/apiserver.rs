//! A stand-in for kube-apiserver: genuine Kubernetes JSON for Secrets and ServiceAccounts on
//! their real REST paths, over TLS, with the 404 and 403 `Status` bodies the real server sends,
//! and the TokenRequest subresource (`POST .../serviceaccounts/{name}/token`) issuing tokens
//! the tests can trace back to their ServiceAccount. Tests change objects while it runs and
//! count the calls it gets.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::pki::Pki;
use super::server::{TestServer, serve_tls};

/// The identity pullgate runs as in the 403 messages.
pub const WEBHOOK_USER: &str = "system:serviceaccount:pullgate:pullgate";

pub struct ApiServer {
    server: TestServer,
    state: Arc<ApiState>,
    ca_der: Vec<u8>,
}

#[derive(Default)]
struct ApiState {
    /// (resource, namespace, name) → object JSON.
    objects: Mutex<HashMap<(String, String, String), Value>>,
    forbidden_namespaces: Mutex<HashSet<String>>,
    /// Answer every call with this status instead (an API server in trouble).
    failing: Mutex<Option<u16>>,
    delay: Mutex<Option<Duration>>,
    calls: Mutex<Vec<String>>,
    resource_version: AtomicU64,
    /// Every TokenRequest body received, with its namespace and ServiceAccount.
    token_requests: Mutex<Vec<(String, String, Value)>>,
    tokens_issued: AtomicU64,
}

impl ApiServer {
    pub async fn start(pki: &Pki) -> ApiServer {
        let state = Arc::new(ApiState::default());
        let router = Router::new()
            .route(
                "/api/v1/namespaces/{namespace}/{resource}/{name}",
                axum::routing::get(get_object),
            )
            .route(
                "/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                axum::routing::post(create_token),
            )
            .fallback(|| async {
                status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                    None,
                )
            })
            .with_state(state.clone());
        let server = serve_tls(router, pki.server_tls(&["127.0.0.1", "localhost"])).await;
        ApiServer {
            server,
            state,
            ca_der: pki.ca_der().to_vec(),
        }
    }

    /// A kube client for this server, trusting the test CA, as in-cluster config would be.
    pub fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.server.base().parse().expect("server url"));
        config.root_cert = Some(vec![self.ca_der.clone()]);
        config.default_namespace = "pullgate".into();
        kube::Client::try_from(config).expect("kube client")
    }

    /// A `kubernetes.io/dockerconfigjson` secret holding `config` (a docker config document).
    pub fn put_dockerconfigjson(&self, namespace: &str, name: &str, config: &Value) {
        let bytes = serde_json::to_vec(config).unwrap();
        self.put_secret(
            namespace,
            name,
            "kubernetes.io/dockerconfigjson",
            &[(".dockerconfigjson", &bytes)],
        );
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
        self.put_dockerconfigjson(
            namespace,
            name,
            &json!({"auths": {registry: {"username": user, "password": password, "auth": auth}}}),
        );
    }

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
        let object = json!({
            "kind": "Secret",
            "apiVersion": "v1",
            "metadata": self.metadata(namespace, name),
            "data": data,
            "type": secret_type,
        });
        self.insert("secrets", namespace, name, object);
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
        let mut object = json!({
            "kind": "ServiceAccount",
            "apiVersion": "v1",
            "metadata": self.metadata(namespace, name),
        });
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
        self.insert("serviceaccounts", namespace, name, object);
    }

    pub fn delete(&self, resource: &str, namespace: &str, name: &str) {
        self.state.objects.lock().unwrap().remove(&(
            resource.into(),
            namespace.into(),
            name.into(),
        ));
    }

    /// RBAC that does not let the webhook read anything in `namespace`.
    pub fn forbid_namespace(&self, namespace: &str) {
        self.state
            .forbidden_namespaces
            .lock()
            .unwrap()
            .insert(namespace.into());
    }

    pub fn fail_with(&self, status: Option<u16>) {
        *self.state.failing.lock().unwrap() = status;
    }

    pub fn set_delay(&self, delay: Option<Duration>) {
        *self.state.delay.lock().unwrap() = delay;
    }

    /// The UID the server gave `namespace/name` of `resource`.
    pub fn uid(&self, resource: &str, namespace: &str, name: &str) -> String {
        self.state.objects.lock().unwrap()[&(resource.into(), namespace.into(), name.into())]
            ["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Every TokenRequest received: namespace, ServiceAccount and the request body.
    pub fn token_requests(&self) -> Vec<(String, String, Value)> {
        self.state.token_requests.lock().unwrap().clone()
    }

    /// Every request path, in arrival order.
    pub fn calls(&self) -> Vec<String> {
        self.state.calls.lock().unwrap().clone()
    }

    pub fn count(&self, path_contains: &str) -> usize {
        self.calls()
            .iter()
            .filter(|p| p.contains(path_contains))
            .count()
    }

    fn insert(&self, resource: &str, namespace: &str, name: &str, object: Value) {
        self.state
            .objects
            .lock()
            .unwrap()
            .insert((resource.into(), namespace.into(), name.into()), object);
    }

    fn metadata(&self, namespace: &str, name: &str) -> Value {
        let version = self.state.resource_version.fetch_add(1, Ordering::Relaxed) + 1000;
        json!({
            "name": name,
            "namespace": namespace,
            "uid": format!("6f1c2a7e-0000-4000-8000-{version:012}"),
            "resourceVersion": version.to_string(),
            "creationTimestamp": "2026-11-01T09:30:00Z",
            "managedFields": [{
                "manager": "kubectl-create",
                "operation": "Update",
                "apiVersion": "v1",
                "time": "2026-11-01T09:30:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:type": {}}
            }]
        })
    }
}

async fn get_object(
    State(state): State<Arc<ApiState>>,
    Path((namespace, resource, name)): Path<(String, String, String)>,
) -> Response {
    state
        .calls
        .lock()
        .unwrap()
        .push(format!("/api/v1/namespaces/{namespace}/{resource}/{name}"));
    let delay = *state.delay.lock().unwrap();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let details = json!({"name": name, "kind": resource});
    if let Some(code) = *state.failing.lock().unwrap() {
        return status(
            code,
            "InternalError",
            "etcdserver: request timed out",
            Some(details),
        );
    }
    if state
        .forbidden_namespaces
        .lock()
        .unwrap()
        .contains(&namespace)
    {
        let message = format!(
            "{resource} \"{name}\" is forbidden: User \"{WEBHOOK_USER}\" cannot get resource \"{resource}\" in API group \"\" in the namespace \"{namespace}\""
        );
        return status(403, "Forbidden", &message, Some(details));
    }
    let found = state
        .objects
        .lock()
        .unwrap()
        .get(&(resource.clone(), namespace, name.clone()))
        .cloned();
    match found {
        Some(object) => Json(object).into_response(),
        None => status(
            404,
            "NotFound",
            &format!("{resource} \"{name}\" not found"),
            Some(details),
        ),
    }
}

/// The TokenRequest subresource as kube-apiserver answers it: 404 for an unknown
/// ServiceAccount, 409 when `metadata.uid` is not the account's (the UID precondition), else 201
/// with the request's spec and a token `sa-token.<namespace>.<name>.<n>` in `status`.
async fn create_token(
    State(state): State<Arc<ApiState>>,
    Path((namespace, name)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Response {
    state.calls.lock().unwrap().push(format!(
        "/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
    ));
    state
        .token_requests
        .lock()
        .unwrap()
        .push((namespace.clone(), name.clone(), body.clone()));
    let details = json!({"name": name, "kind": "serviceaccounts"});
    let account = state
        .objects
        .lock()
        .unwrap()
        .get(&(
            "serviceaccounts".to_owned(),
            namespace.clone(),
            name.clone(),
        ))
        .cloned();
    let Some(account) = account else {
        return status(
            404,
            "NotFound",
            &format!("serviceaccounts \"{name}\" not found"),
            Some(details),
        );
    };
    let uid = account["metadata"]["uid"].as_str().unwrap_or_default();
    if let Some(asked) = body["metadata"]["uid"].as_str()
        && asked != uid
    {
        return status(
            409,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on serviceaccounts \"{name}\": the UID in the precondition ({asked}) does not match the UID in record ({uid}). The object might have been deleted and then recreated"
            ),
            Some(details),
        );
    }
    let n = state.tokens_issued.fetch_add(1, Ordering::Relaxed) + 1;
    let seconds = body["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
    let expires = std::time::SystemTime::now() + Duration::from_secs(seconds as u64);
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
fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Response {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(details) = details {
        body["details"] = details;
    }
    (StatusCode::from_u16(code).unwrap(), Json(body)).into_response()
}
