//! What the attacks of the hostile-load tests and benchmark are made of: idle TLS
//! connections, AdmissionReviews with what a pod author likes in them, and registries that
//! answer as their owner likes (HTTP/1.1 blobs that never answer, 250 KB tokens, indexes of a
//! thousand platforms).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::pki::Pki;
use super::server::{TestServer, serve_tls_on};

/// A CREATE review of a Pod `hostile` in `shop`, made by user `mallory`, with `spec`.
pub fn pod_review_with_spec(uid: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "hostile",
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "mallory", "groups": ["system:authenticated"]},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "hostile", "namespace": "shop"},
                "spec": spec
            },
            "oldObject": null,
            "dryRun": false
        }
    })
}

/// [`pod_review_with_spec`], as the bytes of a body.
pub fn pod_with_spec(uid: &str, spec: Value) -> Vec<u8> {
    serde_json::to_vec(&pod_review_with_spec(uid, spec)).unwrap()
}

/// A pod spec whose containers use `images`.
pub fn containers(images: &[String]) -> Value {
    let list: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
        .collect();
    json!({ "containers": list })
}

/// A TLS connection from `source` (a loopback address) to `server`, handshake done; with
/// `preface`, the HTTP/2 connection preface sent too. `None` when the server refused it.
pub async fn idle_tls(
    source: IpAddr,
    server: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    preface: bool,
) -> Option<TlsStream<TcpStream>> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(source, 0)).ok()?;
    let tcp = socket.connect(server).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let connect = TlsConnector::from(tls).connect(name, tcp);
    let mut stream = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .ok()?
        .ok()?;
    if preface {
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .ok()?;
    }
    Some(stream)
}

/// An OCI manifest with a config and `layers` layers, all made-up digests.
pub fn manifest_with_layers(layers: usize) -> Bytes {
    let descriptor = |i: usize| {
        json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{:064x}", i + 1),
            "size": 1000
        })
    };
    let body = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{:064x}", 0),
            "size": 100
        },
        "layers": (0..layers).map(descriptor).collect::<Vec<_>>()
    });
    Bytes::from(serde_json::to_vec(&body).unwrap())
}

/// A registry on `ports` ports of 127.0.0.2 that speaks HTTP/1.1 only, as many self-hosted
/// registries behind proxies do (each request in flight needs a connection of its own), and
/// serves every manifest with 512 layers whose blobs never answer.
pub async fn never_answering_registry(pki: &Pki, ports: usize) -> Vec<TestServer> {
    let manifest = manifest_with_layers(512);
    let mut tls = (*pki.server_tls(&["127.0.0.2"])).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = Arc::new(tls);
    let router = Router::new()
        .route("/v2/", get(|| async { "{}" }))
        .route(
            "/v2/{repo}/{name}/manifests/{reference}",
            get(move || {
                let manifest = manifest.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/vnd.oci.image.manifest.v1+json",
                        )],
                        manifest,
                    )
                }
            }),
        )
        .route(
            "/v2/{repo}/{name}/blobs/{digest}",
            get(std::future::pending::<&'static str>),
        );
    let mut servers = Vec::new();
    for _ in 0..ports {
        servers.push(serve_tls_on("127.0.0.2", router.clone(), tls.clone()).await);
    }
    servers
}

/// The registry of the memory attacks, on 127.0.0.3; see [`bloating_router`].
pub async fn bloating_registry(pki: &Pki) -> TestServer {
    // The realm's address is known once the server listens: serve a router that forwards
    // to one built with it.
    let built = Arc::new(std::sync::OnceLock::<Router>::new());
    let forward = {
        let built = built.clone();
        Router::new().fallback(move |request: axum::extract::Request| {
            let router = built.get().expect("built before any request").clone();
            async move { tower::ServiceExt::oneshot(router, request).await }
        })
    };
    let registry = serve_tls_on("127.0.0.3", forward, pki.server_tls(&["127.0.0.3"])).await;
    let _ = built.set(bloating_router(registry.url("/token")));
    registry
}

/// The hostile registry of the memory attacks: a token endpoint that issues 250 KB tokens
/// valid for a day (for repositories under `tok/`), and, under `idx/`, an index of 1,024
/// platforms none of which is linux/amd64.
fn bloating_router(realm: String) -> Router {
    let token = Bytes::from(
        serde_json::to_vec(&json!({"token": "t".repeat(250_000), "expires_in": 86_400})).unwrap(),
    );
    let entries: Vec<Value> = (0..1024)
        .map(|i| {
            json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{:064x}", i + 1),
                "size": 500,
                "platform": {"os": "linux", "architecture": format!("architecture-of-a-long-name-{i}")}
            })
        })
        .collect();
    let index = Bytes::from(
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": entries
        }))
        .unwrap(),
    );
    Router::new()
        .route(
            "/token",
            get(move || {
                let token = token.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], token) }
            }),
        )
        .route(
            "/v2/{repo}/{name}/manifests/{reference}",
            get(
                move |Path((repo, _name, _reference)): Path<(String, String, String)>,
                      headers: axum::http::HeaderMap| {
                    let (index, realm) = (index.clone(), realm.clone());
                    async move {
                        if repo == "idx" {
                            return (
                                [(
                                    header::CONTENT_TYPE,
                                    "application/vnd.oci.image.index.v1+json",
                                )],
                                index,
                            )
                                .into_response();
                        }
                        if headers.contains_key(header::AUTHORIZATION) {
                            return StatusCode::NOT_FOUND.into_response();
                        }
                        Response::builder()
                            .status(StatusCode::UNAUTHORIZED)
                            .header(
                                header::WWW_AUTHENTICATE,
                                format!(r#"Bearer realm="{realm}",service="bloat""#),
                            )
                            .body(Body::empty())
                            .unwrap()
                    }
                },
            ),
        )
}
