//! Synthetic images pushed over the real distribution API, so the registry stores exactly
//! what a `docker push` would have left behind and tests know every digest in advance.

use anyhow::{Context as _, bail, ensure};
use reqwest::StatusCode;
use ring::rand::{SecureRandom as _, SystemRandom};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_FOREIGN_LAYER: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
pub const IN_TOTO: &str = "application/vnd.in-toto+json";

/// What `docker pull` sends; distribution 2.8 answers 404 for an OCI manifest when the
/// Accept header does not list the OCI type, so tests should use this unless they test that.
pub const ACCEPT_ALL_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformSpec {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl PlatformSpec {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> PlatformSpec {
        PlatformSpec {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    pub fn linux_amd64() -> PlatformSpec {
        PlatformSpec::new("linux", "amd64", None)
    }

    pub fn linux_arm64() -> PlatformSpec {
        PlatformSpec::new("linux", "arm64", Some("v8"))
    }

    fn to_json(&self) -> Value {
        let mut platform = json!({ "architecture": self.architecture, "os": self.os });
        if let Some(variant) = &self.variant {
            platform["variant"] = json!(variant);
        }
        platform
    }
}

/// Describes an image to synthesise. Layer contents are random so that two tests sharing a
/// storage directory never collide on digests.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// Sizes in bytes of the ordinary (uploaded) layers, in manifest order.
    pub layer_sizes: Vec<usize>,
    /// OCI media types when true, Docker schema2 otherwise.
    pub oci: bool,
    /// Written into the config blob (`os`, `architecture`, `variant`).
    pub platform: PlatformSpec,
    /// Appends an uploaded 0-byte layer after the ordinary ones.
    pub zero_size_layer: bool,
    /// Appends a foreign / non-distributable layer with these `urls`; it is not uploaded.
    pub foreign_layer_urls: Option<Vec<String>>,
    pub foreign_layer_size: usize,
}

impl Default for ImageSpec {
    fn default() -> Self {
        ImageSpec {
            layer_sizes: vec![1024],
            oci: true,
            platform: PlatformSpec::linux_amd64(),
            zero_size_layer: false,
            foreign_layer_urls: None,
            foreign_layer_size: 512,
        }
    }
}

impl ImageSpec {
    /// One 1 KiB layer, OCI, linux/amd64.
    pub fn new() -> ImageSpec {
        ImageSpec::default()
    }

    pub fn with_layers(mut self, sizes: &[usize]) -> ImageSpec {
        self.layer_sizes = sizes.to_vec();
        self
    }

    pub fn with_oci(mut self, oci: bool) -> ImageSpec {
        self.oci = oci;
        self
    }

    pub fn docker(self) -> ImageSpec {
        self.with_oci(false)
    }

    pub fn with_platform(
        mut self,
        os: &str,
        architecture: &str,
        variant: Option<&str>,
    ) -> ImageSpec {
        self.platform = PlatformSpec::new(os, architecture, variant);
        self
    }

    pub fn with_platform_spec(mut self, platform: PlatformSpec) -> ImageSpec {
        self.platform = platform;
        self
    }

    pub fn with_zero_size_layer(mut self) -> ImageSpec {
        self.zero_size_layer = true;
        self
    }

    pub fn with_foreign_layer(mut self, urls: &[&str]) -> ImageSpec {
        self.foreign_layer_urls = Some(urls.iter().map(|u| u.to_string()).collect());
        self
    }
}

/// A layer that the manifest references by URL only; `bytes` is its would-be content so a
/// test can serve it from a [`super::Cdn`].
#[derive(Clone, Debug)]
pub struct ForeignBlob {
    pub digest: String,
    pub size: usize,
    pub urls: Vec<String>,
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct PushedImage {
    pub repo: String,
    pub tag: Option<String>,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub manifest_bytes: Vec<u8>,
    pub config_digest: String,
    pub config_bytes: Vec<u8>,
    /// Every layer in manifest order, including the zero-size and foreign ones.
    pub layer_digests: Vec<String>,
    pub layer_sizes: Vec<usize>,
    pub layer_media_types: Vec<String>,
    pub foreign_layers: Vec<ForeignBlob>,
}

impl PushedImage {
    /// Digests of every blob that was actually uploaded (config first, then layers).
    pub fn uploaded_blobs(&self) -> Vec<String> {
        let foreign: Vec<&str> = self
            .foreign_layers
            .iter()
            .map(|f| f.digest.as_str())
            .collect();
        std::iter::once(self.config_digest.clone())
            .chain(
                self.layer_digests
                    .iter()
                    .filter(|d| !foreign.contains(&d.as_str()))
                    .cloned(),
            )
            .collect()
    }

    /// `repo@sha256:...` relative to a registry host, e.g. for building references.
    pub fn by_digest(&self) -> String {
        format!("{}@{}", self.repo, self.manifest_digest)
    }
}

#[derive(Clone, Debug)]
pub struct PushedIndex {
    pub repo: String,
    pub tag: Option<String>,
    pub digest: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub attestation: Option<PushedImage>,
}

/// `sha256:<lowercase hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in hash {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    SystemRandom::new()
        .fill(&mut buf)
        .expect("system randomness");
    buf
}

fn descriptor(media_type: &str, bytes_len: usize, digest: &str) -> Value {
    json!({ "mediaType": media_type, "size": bytes_len, "digest": digest })
}

/// Pushes `spec` to `base` (`https://127.0.0.1:PORT`) anonymously, tagging it with `tag` or,
/// without one, putting the manifest by digest.
pub async fn push_image(
    base: &str,
    client: &reqwest::Client,
    repo: &str,
    tag: Option<&str>,
    spec: &ImageSpec,
) -> anyhow::Result<PushedImage> {
    let (manifest_type, config_type, layer_type, foreign_type) = if spec.oci {
        (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER, OCI_FOREIGN_LAYER)
    } else {
        (
            DOCKER_MANIFEST,
            DOCKER_CONFIG,
            DOCKER_LAYER,
            DOCKER_FOREIGN_LAYER,
        )
    };

    let mut layer_descriptors = Vec::new();
    let mut layer_digests = Vec::new();
    let mut layer_sizes = Vec::new();
    let mut layer_media_types = Vec::new();
    let mut foreign_layers = Vec::new();

    let mut uploaded: Vec<Vec<u8>> = spec.layer_sizes.iter().map(|&n| random_bytes(n)).collect();
    if spec.zero_size_layer {
        uploaded.push(Vec::new());
    }
    for bytes in &uploaded {
        let digest = upload_blob(base, client, repo, bytes).await?;
        layer_descriptors.push(descriptor(layer_type, bytes.len(), &digest));
        layer_digests.push(digest);
        layer_sizes.push(bytes.len());
        layer_media_types.push(layer_type.to_string());
    }
    if let Some(urls) = &spec.foreign_layer_urls {
        let bytes = random_bytes(spec.foreign_layer_size);
        let digest = sha256_digest(&bytes);
        let mut d = descriptor(foreign_type, bytes.len(), &digest);
        d["urls"] = json!(urls);
        layer_descriptors.push(d);
        layer_digests.push(digest.clone());
        layer_sizes.push(bytes.len());
        layer_media_types.push(foreign_type.to_string());
        foreign_layers.push(ForeignBlob {
            digest,
            size: bytes.len(),
            urls: urls.clone(),
            bytes,
        });
    }

    let mut config = json!({
        "architecture": spec.platform.architecture,
        "os": spec.platform.os,
        "config": {},
        // The layers are random bytes, not tarballs, so there is no real diff ID to compute;
        // the registry never checks, and the probe must not either.
        "rootfs": { "type": "layers", "diff_ids": layer_digests },
        "created": "2024-01-01T00:00:00Z",
    });
    if let Some(variant) = &spec.platform.variant {
        config["variant"] = json!(variant);
    }
    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = upload_blob(base, client, repo, &config_bytes).await?;

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": descriptor(config_type, config_bytes.len(), &config_digest),
        "layers": layer_descriptors,
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest =
        put_manifest(base, client, repo, tag, manifest_type, &manifest_bytes).await?;

    Ok(PushedImage {
        repo: repo.to_string(),
        tag: tag.map(str::to_string),
        manifest_digest,
        manifest_media_type: manifest_type.to_string(),
        manifest_bytes,
        config_digest,
        config_bytes,
        layer_digests,
        layer_sizes,
        layer_media_types,
        foreign_layers,
    })
}

/// Pushes an OCI index (or Docker manifest list) over already-pushed `children`. With
/// `with_attestation` it adds what BuildKit adds for provenance/SBOM: an OCI manifest for
/// platform unknown/unknown annotated as an attestation of the first child, with its config
/// and in-toto layer uploaded, so tests can assert the probe never fetches them.
pub async fn push_index(
    base: &str,
    client: &reqwest::Client,
    repo: &str,
    tag: Option<&str>,
    children: &[(PlatformSpec, &PushedImage)],
    oci: bool,
    with_attestation: bool,
) -> anyhow::Result<PushedIndex> {
    let media_type = if oci { OCI_INDEX } else { DOCKER_MANIFEST_LIST };
    let mut manifests: Vec<Value> = children
        .iter()
        .map(|(platform, image)| {
            let mut d = descriptor(
                &image.manifest_media_type,
                image.manifest_bytes.len(),
                &image.manifest_digest,
            );
            d["platform"] = platform.to_json();
            d
        })
        .collect();

    let attestation = if with_attestation {
        let subject = children
            .first()
            .context("an attestation needs at least one child to refer to")?
            .1;
        let attestation = push_attestation(base, client, repo, subject).await?;
        let mut d = descriptor(
            &attestation.manifest_media_type,
            attestation.manifest_bytes.len(),
            &attestation.manifest_digest,
        );
        d["platform"] = json!({ "architecture": "unknown", "os": "unknown" });
        d["annotations"] = json!({
            "vnd.docker.reference.type": "attestation-manifest",
            "vnd.docker.reference.digest": subject.manifest_digest,
        });
        manifests.push(d);
        Some(attestation)
    } else {
        None
    };

    let index = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": manifests,
    });
    let bytes = serde_json::to_vec(&index)?;
    let digest = put_manifest(base, client, repo, tag, media_type, &bytes).await?;
    Ok(PushedIndex {
        repo: repo.to_string(),
        tag: tag.map(str::to_string),
        digest,
        media_type: media_type.to_string(),
        bytes,
        attestation,
    })
}

async fn push_attestation(
    base: &str,
    client: &reqwest::Client,
    repo: &str,
    subject: &PushedImage,
) -> anyhow::Result<PushedImage> {
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://slsa.dev/provenance/v0.2",
        "subject": [{
            "name": format!("pkg:docker/{repo}"),
            "digest": { "sha256": subject.manifest_digest.trim_start_matches("sha256:") },
        }],
        "predicate": { "nonce": sha256_digest(&random_bytes(16)) },
    });
    let layer = serde_json::to_vec(&statement)?;
    let layer_digest = upload_blob(base, client, repo, &layer).await?;
    let config = json!({
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    });
    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = upload_blob(base, client, repo, &config_bytes).await?;
    let mut layer_descriptor = descriptor(IN_TOTO, layer.len(), &layer_digest);
    layer_descriptor["annotations"] =
        json!({ "in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2" });
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config_bytes.len(), &config_digest),
        "layers": [layer_descriptor],
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest =
        put_manifest(base, client, repo, None, OCI_MANIFEST, &manifest_bytes).await?;
    Ok(PushedImage {
        repo: repo.to_string(),
        tag: None,
        manifest_digest,
        manifest_media_type: OCI_MANIFEST.to_string(),
        manifest_bytes,
        config_digest,
        config_bytes,
        layer_digests: vec![layer_digest],
        layer_sizes: vec![layer.len()],
        layer_media_types: vec![IN_TOTO.to_string()],
        foreign_layers: Vec::new(),
    })
}

/// Monolithic upload: POST to open a session, then PUT the whole blob to its Location.
/// Returns the blob's digest.
pub async fn upload_blob(
    base: &str,
    client: &reqwest::Client,
    repo: &str,
    bytes: &[u8],
) -> anyhow::Result<String> {
    let base = base.trim_end_matches('/');
    let digest = sha256_digest(bytes);
    let start = format!("{base}/v2/{repo}/blobs/uploads/");
    let resp = client
        .post(&start)
        .send()
        .await
        .with_context(|| format!("POST {start}"))?;
    let status = resp.status();
    if status != StatusCode::ACCEPTED {
        let body = resp.text().await.unwrap_or_default();
        bail!("POST {start}: expected 202, got {status}: {body}");
    }
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .context("upload POST without Location")?
        .to_str()
        .context("non-ASCII Location")?;
    // Location may be absolute (distribution builds it from the Host header) or relative,
    // and already carries a `_state` query that must be kept.
    let mut put_url = url::Url::parse(&start)?
        .join(location)
        .with_context(|| format!("resolve upload Location {location}"))?;
    put_url.query_pairs_mut().append_pair("digest", &digest);
    let resp = client
        .put(put_url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .with_context(|| format!("PUT {put_url}"))?;
    let status = resp.status();
    if status != StatusCode::CREATED {
        let body = resp.text().await.unwrap_or_default();
        bail!("PUT blob {digest} to {repo}: expected 201, got {status}: {body}");
    }
    Ok(digest)
}

/// PUTs a manifest by tag (or by its own digest) and checks the registry agrees on the
/// digest, which catches accidental re-serialisation.
pub async fn put_manifest(
    base: &str,
    client: &reqwest::Client,
    repo: &str,
    tag: Option<&str>,
    media_type: &str,
    bytes: &[u8],
) -> anyhow::Result<String> {
    let base = base.trim_end_matches('/');
    let digest = sha256_digest(bytes);
    let reference = tag.unwrap_or(&digest);
    let url = format!("{base}/v2/{repo}/manifests/{reference}");
    let resp = client
        .put(&url)
        .header(reqwest::header::CONTENT_TYPE, media_type)
        .body(bytes.to_vec())
        .send()
        .await
        .with_context(|| format!("PUT {url}"))?;
    let status = resp.status();
    let returned = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if status != StatusCode::CREATED {
        let body = resp.text().await.unwrap_or_default();
        bail!("PUT {url}: expected 201, got {status}: {body}");
    }
    if let Some(returned) = returned {
        ensure!(
            returned == digest,
            "registry computed {returned} for manifest, expected {digest}"
        );
    }
    Ok(digest)
}
