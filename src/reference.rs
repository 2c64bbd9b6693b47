//! Image references, parsed with oci-spec's implementation of the distribution grammar and
//! normalised the way the kubelet and containerd see them: `nginx` is
//! `docker.io/library/nginx:latest`, and a digest wins over a tag.

use std::fmt;

use oci_spec::distribution::{ParseError, Reference};

use crate::digest::{Digest, DigestError};

/// The namespace Docker Hub images live under.
pub const DOCKER_HUB: &str = "docker.io";
/// The host Docker Hub's API is served from.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// No valid reference comes near this; a longer one is refused before the regex sees it.
const MAX_REFERENCE_LEN: usize = 1024;

/// A normalised, validated image reference.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("image reference is empty")]
    Empty,
    #[error("image reference is longer than {MAX_REFERENCE_LEN} characters")]
    TooLong,
    #[error("invalid image reference {0:?}: repository name must be lowercase")]
    Uppercase(String),
    #[error(
        "invalid image reference {0:?}: a bare 64-character hex string is not a repository name"
    )]
    HexName(String),
    #[error("invalid image reference {0:?}: repository name is longer than 255 characters")]
    NameTooLong(String),
    #[error("invalid image reference {0:?}: invalid tag")]
    Tag(String),
    #[error("invalid image reference {0:?}: {1}")]
    Digest(String, DigestError),
    #[error("invalid image reference {0:?}: not of the form [registry/]repository[:tag][@digest]")]
    Format(String),
}

impl ImageRef {
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if input.len() > MAX_REFERENCE_LEN {
            return Err(ReferenceError::TooLong);
        }
        let owned = || input.to_owned();
        // distribution refuses these so that an image ID is never mistaken for a name.
        if input.len() == 64
            && input
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(ReferenceError::HexName(owned()));
        }
        let parsed = Reference::try_from(input).map_err(|e| match e {
            ParseError::NameContainsUppercase => ReferenceError::Uppercase(owned()),
            ParseError::NameTooLong => ReferenceError::NameTooLong(owned()),
            ParseError::TagInvalidFormat => ReferenceError::Tag(owned()),
            ParseError::ReferenceInvalidFormat if has_uppercase_path(input) => {
                ReferenceError::Uppercase(owned())
            }
            _ => ReferenceError::Format(owned()),
        })?;
        let digest = parsed
            .digest()
            .map(Digest::parse)
            .transpose()
            .map_err(|e| ReferenceError::Digest(owned(), e))?;
        // containerd's ParseDockerRef keeps only the digest when both are given, and that is
        // what the node will fetch.
        let tag = match digest {
            Some(_) => None,
            None => parsed.tag().map(str::to_owned),
        };
        if parsed.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase(owned()));
        }
        Ok(ImageRef {
            registry: parsed.registry().to_owned(),
            repository: parsed.repository().to_owned(),
            tag,
            digest,
        })
    }

    /// The registry as the reference names it (`docker.io` for Docker Hub).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The `host[:port]` the registry API is reached at.
    pub fn api_host(&self) -> &str {
        match self.registry.as_str() {
            DOCKER_HUB | "index.docker.io" | DOCKER_HUB_API => DOCKER_HUB_API,
            other => other,
        }
    }

    /// The repository path inside the registry (`library/nginx`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What goes after `/manifests/`: the digest when there is one, otherwise the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// `registry/repository`, the form the kubelet's keyring matches against.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

/// Whether the path part (after a registry component, if any) has uppercase letters, which
/// oci-spec reports only as a generic format error.
fn has_uppercase_path(input: &str) -> bool {
    let name = input.split(['@']).next().unwrap_or(input);
    let path = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => rest,
        _ => name,
    };
    // A tag may contain uppercase; only the repository part counts.
    let repo = match path.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => path,
    };
    repo.bytes().any(|b| b.is_ascii_uppercase())
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const D: &str = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    #[rstest]
    #[case::official("nginx", "docker.io/library/nginx:latest", "registry-1.docker.io")]
    #[case::official_tag("nginx:1.27", "docker.io/library/nginx:1.27", "registry-1.docker.io")]
    #[case::hub_user(
        "bitnami/redis",
        "docker.io/bitnami/redis:latest",
        "registry-1.docker.io"
    )]
    #[case::hub_explicit(
        "docker.io/nginx",
        "docker.io/library/nginx:latest",
        "registry-1.docker.io"
    )]
    #[case::hub_legacy(
        "index.docker.io/library/nginx:1",
        "docker.io/library/nginx:1",
        "registry-1.docker.io"
    )]
    #[case::hub_api_host(
        "registry-1.docker.io/library/nginx",
        "registry-1.docker.io/library/nginx:latest",
        "registry-1.docker.io"
    )]
    #[case::host_with_dot("quay.io/coreos/etcd:v3", "quay.io/coreos/etcd:v3", "quay.io")]
    #[case::host_with_port(
        "registry.local:5000/team/app",
        "registry.local:5000/team/app:latest",
        "registry.local:5000"
    )]
    #[case::localhost("localhost/app", "localhost/app:latest", "localhost")]
    #[case::ip_port("127.0.0.1:5000/a/b:c", "127.0.0.1:5000/a/b:c", "127.0.0.1:5000")]
    #[case::no_dot_first_component("team/app", "docker.io/team/app:latest", "registry-1.docker.io")]
    #[case::tag_uppercase_ok(
        "nginx:Latest",
        "docker.io/library/nginx:Latest",
        "registry-1.docker.io"
    )]
    fn normalises(#[case] input: &str, #[case] canonical: &str, #[case] api: &str) {
        let r = ImageRef::parse(input).unwrap();
        assert_eq!(r.to_string(), canonical);
        assert_eq!(r.api_host(), api);
    }

    #[test]
    fn digest_wins_over_tag() {
        let r = ImageRef::parse(&format!("ghcr.io/org/app:1.0@{D}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.manifest_reference(), D);
        assert_eq!(r.to_string(), format!("ghcr.io/org/app@{D}"));
        assert_eq!(r.name(), "ghcr.io/org/app");
    }

    #[rstest]
    #[case::uppercase_repo("Nginx:latest")]
    #[case::uppercase_path("quay.io/Org/app")]
    #[case::uppercase_hex_digest(
        "nginx@sha256:FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
    )]
    #[case::short_digest("nginx@sha256:ffff")]
    #[case::unknown_digest_alg("nginx@md5:ffffffffffffffffffffffffffffffff")]
    #[case::long_tag(&format!("nginx:{}", "a".repeat(129)))]
    #[case::long_name(&format!("quay.io/{}", "a".repeat(256)))]
    #[case::hex_name("ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff")]
    #[case::empty("")]
    #[case::spaces("nginx latest")]
    #[case::scheme("https://quay.io/app")]
    #[case::huge(&"a/".repeat(100_000))]
    #[case::double_slash("quay.io//app")]
    #[case::control_characters("nginx\u{0}\u{7}\r\n:latest")]
    #[case::escape_sequence("\u{1b}[31mnginx")]
    #[case::unicode("r\u{e9}gistry.example.com/app:v1")]
    #[case::right_to_left_override("nginx\u{202e}1.0")]
    #[case::bad_digest_hex(&format!("nginx@sha256:{}", "z".repeat(64)))]
    #[case::empty_digest("nginx@sha256:")]
    #[case::only_whitespace("   \t ")]
    #[case::colons(":::")]
    #[case::at_signs("@@@")]
    #[case::too_long(&format!("quay.io/app:{}", "a".repeat(MAX_REFERENCE_LEN)))]
    fn rejects(#[case] input: &str) {
        let err = ImageRef::parse(input).unwrap_err();
        assert!(!err.to_string().is_empty());
    }

    /// The canonical form (what messages and cache keys show) is itself a reference naming
    /// the same image; the `reference` fuzz target checks this for any input.
    #[rstest]
    #[case("nginx")]
    #[case("team/app:1.0")]
    #[case("registry.local:5000/team/app")]
    #[case(&format!("ghcr.io/org/app:1.0@{D}"))]
    fn canonical_form_reparses(#[case] input: &str) {
        let image = ImageRef::parse(input).unwrap();
        assert_eq!(ImageRef::parse(&image.to_string()).unwrap(), image);
    }

    #[test]
    fn uppercase_error_says_so() {
        let err = ImageRef::parse("quay.io/Org/app:v1").unwrap_err();
        assert!(matches!(err, ReferenceError::Uppercase(_)), "{err:?}");
        assert!(err.to_string().contains("lowercase"));
    }
}
