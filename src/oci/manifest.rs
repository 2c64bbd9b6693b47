//! Manifests and indexes: the media types a runtime accepts, parsing that refuses ambiguous
//! or unusable documents, and the choice of an index entry for a platform.

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::{
    oci::digest::{Digest, DigestError},
    oci::platform::{DescriptorPlatform, Platform, PlatformRules},
};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Sent on every manifest GET. Without the index types, distribution answers 404 for an OCI
/// index and silently down-converts a Docker list to its linux/amd64 entry. No q-values:
/// Nexus does not honour them.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest read, as containers/image and oras bound it.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// More entries than any real index has; more is refused rather than fetched.
pub const MAX_INDEX_ENTRIES: usize = 1024;
/// More layers than any runnable image has (overlayfs stacks stop far below this).
pub const MAX_LAYERS: usize = 512;

/// Longest platform name quoted in a message.
const MAX_PLATFORM_NAME: usize = 64;

/// Config media types that mark an artifact (Helm chart, empty OCI artifact) rather than a
/// container image: a runtime cannot start it.
const ARTIFACT_CONFIGS: &[&str] = &[
    "application/vnd.cncf.helm.config.v1+json",
    "application/vnd.oci.empty.v1+json",
];

/// A content reference inside a manifest (config or layer): what the probe needs of it, and
/// nothing a registry could make large.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRef {
    pub digest: Digest,
    pub size: u64,
    /// A foreign / non-distributable layer: it lists `urls` it is served from instead of
    /// the registry.
    pub foreign: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageManifest {
    pub media_type: String,
    pub config: BlobRef,
    pub layers: Vec<BlobRef>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub digest: Digest,
    pub platform: Option<DescriptorPlatform>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    pub media_type: String,
    pub entries: Vec<IndexEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Document {
    Image(ImageManifest),
    Index(Index),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("manifest is ambiguous: it has both {0}")]
    Ambiguous(&'static str),
    #[error("schema 1 manifests are not supported by containerd 2.x; rebuild or re-push the image")]
    Schema1,
    #[error("unsupported manifest media type {0:?}")]
    MediaType(String),
    #[error("manifest has neither layers nor manifests")]
    Empty,
    #[error("manifest {what} has an invalid digest: {source}")]
    Digest {
        what: &'static str,
        #[source]
        source: DigestError,
    },
    #[error("manifest {0} has a negative size")]
    Size(&'static str),
    #[error("manifest lists {0} entries, more than {1} allowed")]
    TooMany(usize, usize),
    #[error("not a container image: its config media type is {0:?}")]
    NotAnImage(String),
    #[error("index entry {0} is itself an index; nested indexes are not supported")]
    NestedIndex(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDocument {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    manifests: Option<Vec<RawDescriptor>>,
    /// Only whether it is there: schema 1.
    #[serde(default)]
    fs_layers: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    urls: Option<Vec<String>>,
    #[serde(default)]
    platform: Option<DescriptorPlatform>,
}

fn is_index_type(t: &str) -> bool {
    t == OCI_INDEX || t == DOCKER_LIST
}

fn is_image_type(t: &str) -> bool {
    t == OCI_MANIFEST || t == DOCKER_MANIFEST
}

/// Parses a manifest or index. `content_type` is the response's Content-Type, used when the
/// body does not name its own media type.
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Document, ManifestError> {
    let raw: RawDocument =
        serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
    let header_type = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|c| is_index_type(c) || is_image_type(c) || c.contains("manifest.v1"));
    let body_type = raw.media_type.clone().filter(|t| !t.is_empty());
    if raw.schema_version == Some(1)
        || raw.fs_layers.is_some()
        || [&body_type, &header_type]
            .iter()
            .any(|t| matches!(t.as_deref(), Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED)))
    {
        return Err(ManifestError::Schema1);
    }
    if raw.manifests.is_some() && (raw.layers.is_some() || raw.config.is_some()) {
        return Err(ManifestError::Ambiguous("manifests and layers/config"));
    }
    if let (Some(b), Some(h)) = (&body_type, &header_type)
        && b != h
        && (is_index_type(b) != is_index_type(h))
    {
        return Err(ManifestError::Ambiguous("an index and an image media type"));
    }
    let media_type = body_type.or(header_type).unwrap_or_default();
    let as_index = match media_type.as_str() {
        t if is_index_type(t) => true,
        t if is_image_type(t) => false,
        "" => raw.manifests.is_some(),
        other => return Err(ManifestError::MediaType(other.chars().take(120).collect())),
    };
    if as_index {
        let manifests = raw.manifests.ok_or(ManifestError::Empty)?;
        if manifests.len() > MAX_INDEX_ENTRIES {
            return Err(ManifestError::TooMany(manifests.len(), MAX_INDEX_ENTRIES));
        }
        let entries = manifests
            .into_iter()
            .map(|d| {
                Ok(IndexEntry {
                    digest: Digest::parse(&d.digest).map_err(|source| ManifestError::Digest {
                        what: "entry",
                        source,
                    })?,
                    platform: d.platform,
                })
            })
            .collect::<Result<_, ManifestError>>()?;
        return Ok(Document::Index(Index {
            media_type,
            entries,
        }));
    }
    let config = raw.config.ok_or(ManifestError::Empty)?;
    let layers = raw.layers.unwrap_or_default();
    if layers.len() > MAX_LAYERS {
        return Err(ManifestError::TooMany(layers.len(), MAX_LAYERS));
    }
    if ARTIFACT_CONFIGS.contains(&config.media_type.as_str()) {
        return Err(ManifestError::NotAnImage(
            config.media_type.chars().take(120).collect(),
        ));
    }
    Ok(Document::Image(ImageManifest {
        media_type,
        config: blob(config, "config")?,
        layers: layers
            .into_iter()
            .map(|l| blob(l, "layer"))
            .collect::<Result<_, _>>()?,
    }))
}

fn blob(d: RawDescriptor, what: &'static str) -> Result<BlobRef, ManifestError> {
    Ok(BlobRef {
        digest: Digest::parse(&d.digest)
            .map_err(|source| ManifestError::Digest { what, source })?,
        size: u64::try_from(d.size).map_err(|_| ManifestError::Size(what))?,
        foreign: d.urls.is_some_and(|urls| !urls.is_empty()),
    })
}

impl Index {
    /// The entry a node of `platform` pulls under its runtime's `rules`: the entry the rules
    /// rank best, the first in index order among equals; else the first entry without a
    /// platform (containerd and containers/image both rank those last but keep them).
    pub fn select(&self, platform: &Platform, rules: PlatformRules) -> Option<&IndexEntry> {
        self.entries
            .iter()
            .filter_map(|e| Some((rules.rank(platform, e.platform.as_ref()?)?, e)))
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, e)| e)
            .or_else(|| self.entries.iter().find(|e| e.platform.is_none()))
    }

    /// The platforms the index offers, for a "no matching manifest" message: the first `named`
    /// by name, the rest counted ("linux/amd64, linux/arm64 and 3,998 more"), "nothing" for
    /// none. An index may list a thousand entries; the message, and the verdict cache that
    /// keeps it, must not grow with them.
    pub fn offered(&self, named: usize) -> String {
        let platforms = self
            .entries
            .iter()
            .filter_map(|e| e.platform.as_ref())
            .filter(|p| p.os != "unknown");
        let mut names: Vec<String> = Vec::new();
        let mut more = 0usize;
        for p in platforms {
            if names.len() < named {
                let name = Platform::new(&p.os, &p.architecture, p.variant.as_deref()).to_string();
                // A platform's parts are a registry's words: a few dozen characters each.
                names.push(name.chars().take(MAX_PLATFORM_NAME).collect());
            } else {
                more += 1;
            }
        }
        match (names.is_empty(), more) {
            (true, _) => "nothing".to_owned(),
            (false, 0) => names.join(", "),
            (false, more) => format!("{} and {more} more", names.join(", ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    fn image(media_type: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media_type}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":10}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":20}}]}}"#
        )
    }

    fn index(json: &str) -> Index {
        let Document::Index(ix) = parse(json.as_bytes(), None).unwrap() else {
            panic!("not an index: {json}")
        };
        ix
    }

    /// The digest of the entry `platform` selects.
    fn selected(ix: &Index, platform: &Platform) -> String {
        ix.select(platform, PlatformRules::Containerd)
            .unwrap()
            .digest
            .to_string()
    }

    #[test]
    fn parses_image_and_index() {
        let Document::Image(m) = parse(image(OCI_MANIFEST).as_bytes(), None).unwrap() else {
            panic!()
        };
        assert_eq!(m.config.digest.to_string(), D1);
        assert_eq!(m.layers[0].size, 20);
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[
              {{"mediaType":"{DOCKER_MANIFEST}","digest":"{D1}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
              {{"mediaType":"{DOCKER_MANIFEST}","digest":"{D3}","size":1,"platform":{{"os":"unknown","architecture":"unknown"}}}},
              {{"mediaType":"{DOCKER_MANIFEST}","digest":"{D2}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
        );
        let ix = index(&idx);
        assert_eq!(selected(&ix, &Platform::linux_amd64()), D2);
        assert_eq!(selected(&ix, &Platform::parse("linux/arm64").unwrap()), D1);
        assert!(
            ix.select(
                &Platform::parse("linux/s390x").unwrap(),
                PlatformRules::Containerd
            )
            .is_none()
        );
        assert_eq!(ix.offered(12), "linux/arm64, linux/amd64");
        assert_eq!(ix.offered(1), "linux/arm64 and 1 more");
    }

    #[test]
    fn a_thousand_platforms_are_named_in_a_short_line() {
        let entries: Vec<String> = (0..MAX_INDEX_ENTRIES)
            .map(|i| {
                format!(
                    r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":1,"platform":{{"os":"linux","architecture":"arch{i}"}}}}"#
                )
            })
            .collect();
        let idx = format!(
            r#"{{"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
            entries.join(",")
        );
        let offered = index(&idx).offered(12);
        assert!(offered.ends_with(" and 1012 more"), "{offered}");
        assert!(offered.len() < 200, "{offered}");
        let empty = Index {
            media_type: OCI_INDEX.to_owned(),
            entries: Vec::new(),
        };
        assert_eq!(empty.offered(12), "nothing");
    }

    #[test]
    fn media_type_from_content_type_when_body_has_none() {
        let body = image("").replace(r#""mediaType":"","#, "");
        assert!(matches!(
            parse(
                body.as_bytes(),
                Some("application/vnd.docker.distribution.manifest.v2+json; charset=utf-8")
            ),
            Ok(Document::Image(_))
        ));
        assert!(matches!(
            parse(body.as_bytes(), Some("application/json")),
            Ok(Document::Image(_))
        ));
    }

    #[test]
    fn refusals() {
        let ambiguous = image(OCI_MANIFEST).replace(r#""layers""#, r#""manifests":[],"layers""#);
        assert!(matches!(
            parse(ambiguous.as_bytes(), None),
            Err(ManifestError::Ambiguous(_))
        ));
        assert!(matches!(
            parse(image(OCI_MANIFEST).as_bytes(), Some(OCI_INDEX)),
            Err(ManifestError::Ambiguous(_))
        ));
        assert_eq!(
            parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, None),
            Err(ManifestError::Schema1)
        );
        assert!(matches!(
            parse(image("application/vnd.example+json").as_bytes(), None),
            Err(ManifestError::MediaType(_))
        ));
        assert!(matches!(
            parse(b"not json", None),
            Err(ManifestError::Json(_))
        ));
        assert_eq!(
            parse(br#"{"schemaVersion":2}"#, None),
            Err(ManifestError::Empty)
        );
        let helm = image(OCI_MANIFEST).replace(
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.cncf.helm.config.v1+json",
        );
        assert!(matches!(
            parse(helm.as_bytes(), None),
            Err(ManifestError::NotAnImage(_))
        ));
        let bad_digest = image(OCI_MANIFEST).replace(D2, "sha256:../../etc/passwd");
        assert!(matches!(
            parse(bad_digest.as_bytes(), None),
            Err(ManifestError::Digest { .. })
        ));
        let negative = image(OCI_MANIFEST).replace(r#""size":20"#, r#""size":-1"#);
        assert_eq!(
            parse(negative.as_bytes(), None),
            Err(ManifestError::Size("layer"))
        );
    }

    #[test]
    fn entry_without_platform_is_a_fallback() {
        let idx = format!(
            r#"{{"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":1}}]}}"#
        );
        assert_eq!(selected(&index(&idx), &Platform::linux_amd64()), D1);
    }

    #[test]
    fn the_runtime_takes_the_best_ranked_entry_not_the_first_listed() {
        let entry = |d: &str, arch: &str, variant: &str| {
            format!(
                r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":1,"platform":{{"os":"linux","architecture":"{arch}","variant":"{variant}"}}}}"#
            )
        };
        let idx = format!(
            r#"{{"mediaType":"{OCI_INDEX}","manifests":[{},{},{},{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":1}}]}}"#,
            entry(D2, "arm", "v5"),
            entry(D3, "arm", "v6"),
            entry(D2, "amd64", ""),
        );
        let ix = index(&idx);
        let arm7 = Platform::parse("linux/arm/v7").unwrap();
        // v6 ranks before v5 for an arm/v7 node although v5 is listed first.
        assert_eq!(selected(&ix, &arm7), D3);
        assert_eq!(
            ix.select(&arm7, PlatformRules::ContainersImage)
                .unwrap()
                .digest
                .to_string(),
            D3
        );
        let arm6 = Platform::parse("linux/arm/v6").unwrap();
        assert_eq!(selected(&ix, &arm6), D3);
        // No entry for s390x: the entry without a platform, ranked after every match.
        let s390x = Platform::parse("linux/s390x").unwrap();
        assert_eq!(selected(&ix, &s390x), D1);
    }
}
