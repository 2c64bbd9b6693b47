//! Image references, parsed by the distribution grammar (`reference/regexp.go`) and normalised
//! the way the kubelet and containerd see them: `nginx` is `docker.io/library/nginx:latest`,
//! and a digest wins over a tag.
//!
//! The grammar is checked by hand rather than with a regex: compiling the distribution regex
//! cost every process ~70 ms at start (more than a whole probe on a near registry), and
//! matching it was the largest single cost of a cached admission review.

use std::fmt;

use crate::oci::digest::{Digest, DigestError};

/// The namespace Docker Hub images live under.
pub const DOCKER_HUB: &str = "docker.io";
/// The host Docker Hub's API is served from.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// No valid reference comes near this; a longer one is refused before it is parsed.
const MAX_REFERENCE_LEN: usize = 1024;
/// distribution's `NameTotalLengthMax`, applied to the repository path.
const MAX_NAME_LEN: usize = 255;
/// A tag is one word character then at most 127 more of `[\w.-]`.
const MAX_TAG_LEN: usize = 128;
/// How much of a refused reference its error quotes.
const MAX_QUOTED: usize = 96;
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const OFFICIAL_NAMESPACE: &str = "library";
const DEFAULT_TAG: &str = "latest";

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
        // Errors quote the input, bounded: a hostile string must not crowd out the reason.
        let owned = || match input.char_indices().nth(MAX_QUOTED) {
            Some((cut, _)) => format!("{}…", &input[..cut]),
            None => input.to_owned(),
        };
        // distribution refuses these so that an image ID is never mistaken for a name.
        if input.len() == 64
            && input
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(ReferenceError::HexName(owned()));
        }
        // name [":" tag] ["@" digest]; a tag's colon comes after the last slash, a port's
        // before it.
        let (name_tag, digest) = match input.split_once('@') {
            Some((name_tag, digest)) => (name_tag, Some(digest)),
            None => (input, None),
        };
        let (name, tag) = match name_tag.rfind(':') {
            Some(colon) if !name_tag[colon..].contains('/') => {
                (&name_tag[..colon], Some(&name_tag[colon + 1..]))
            }
            _ => (name_tag, None),
        };
        if !is_name(name) {
            return Err(if has_uppercase_path(name) {
                ReferenceError::Uppercase(owned())
            } else {
                ReferenceError::Format(owned())
            });
        }
        if tag.is_some_and(|t| !is_tag(t)) {
            return Err(ReferenceError::Tag(owned()));
        }
        let digest = digest
            .map(|d| {
                if is_digest_shape(d) {
                    Digest::parse(d).map_err(|e| ReferenceError::Digest(owned(), e))
                } else {
                    Err(ReferenceError::Format(owned()))
                }
            })
            .transpose()?;
        let (registry, repository) = split_domain(name);
        if repository.len() > MAX_NAME_LEN {
            return Err(ReferenceError::NameTooLong(owned()));
        }
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase(owned()));
        }
        // A first component that may be a domain but does not look like one ("[0]/app") is
        // part of the Docker Hub path, and there it must be a valid path component: distribution
        // checks the normalised name, not the input.
        if !is_path(&repository) {
            return Err(ReferenceError::Format(owned()));
        }
        // containerd's ParseDockerRef keeps only the digest when both are given, and that is
        // what the node will fetch.
        let tag = match (&digest, tag) {
            (Some(_), _) => None,
            (None, Some(tag)) => Some(tag.to_owned()),
            (None, None) => Some(DEFAULT_TAG.to_owned()),
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry as the reference names it (`docker.io` for Docker Hub).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The registry's one name: `docker.io` for every name of Docker Hub
    /// (`index.docker.io`, `registry-1.docker.io`), otherwise as the reference names it.
    pub fn canonical_registry(&self) -> &str {
        match self.api_host() {
            DOCKER_HUB_API => DOCKER_HUB,
            other => other,
        }
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

/// `[domain "/"] path`: a name whose first component is a valid domain and whose rest is a
/// valid path, or a name that is a valid path as a whole (the regex's two ways to match).
fn is_name(name: &str) -> bool {
    if is_path(name) {
        return true;
    }
    match name.split_once('/') {
        Some((domain, path)) => is_domain(domain) && is_path(path),
        None => false,
    }
}

/// `path-component ("/" path-component)*`
fn is_path(path: &str) -> bool {
    !path.is_empty() && path.split('/').all(is_path_component)
}

/// `[a-z0-9]+ (separator [a-z0-9]+)*` with separator `.`, `_`, `__` or one or more `-`.
fn is_path_component(component: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    bytes
        .split(|&b| alnum(b))
        .filter(|separator| !separator.is_empty())
        .all(|separator| {
            matches!(separator, b"." | b"_" | b"__") || separator.iter().all(|&b| b == b'-')
        })
}

/// `host [":" port]`, the host a DNS name (`label ("." label)*`) or a bracketed IPv6 address.
fn is_domain(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let Some((address, after)) = rest.split_once(']') else {
            return false;
        };
        let valid = !address.is_empty()
            && address
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !valid {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        }
    };
    let label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
    };
    let host_ok = domain.starts_with('[') || host.split('.').all(label);
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// `[\w][\w.-]{0,127}`, with `\w` the ASCII word characters as in Go.
fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_TAG_LEN
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

/// `algorithm ":" hex` with at least 32 hex digits; [`Digest::parse`] then accepts only the
/// algorithms and lengths a registry can verify.
fn is_digest_shape(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let component = |c: &str| {
        let b = c.as_bytes();
        !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(u8::is_ascii_alphanumeric)
    };
    algorithm.split(['-', '_', '+', '.']).all(component)
        && hex.len() >= 32
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// distribution's `splitDockerDomain`: the first component names a registry only when it
/// looks like a host (a dot, a port or `localhost`); Docker Hub's official images live under
/// `library/`.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, remainder) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first, rest),
        _ => (DOCKER_HUB, name),
    };
    if domain == DOCKER_HUB_LEGACY {
        domain = DOCKER_HUB;
    }
    let repository = if domain == DOCKER_HUB && !remainder.contains('/') {
        format!("{OFFICIAL_NAMESPACE}/{remainder}")
    } else {
        remainder.to_owned()
    };
    (domain.to_owned(), repository)
}

/// Whether the repository part (after a registry component, if any) has uppercase letters:
/// said plainly, since "invalid format" is what users get wrong most.
fn has_uppercase_path(name: &str) -> bool {
    let path = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => rest,
        _ => name,
    };
    path.bytes().any(|b| b.is_ascii_uppercase()) && is_path(&path.to_ascii_lowercase())
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
    #[case::ipv6("[::1]:5000/team/app:v1", "[::1]:5000/team/app:v1", "[::1]:5000")]
    #[case::separators("r.io/a__b/c-d--e/f.g_h", "r.io/a__b/c-d--e/f.g_h:latest", "r.io")]
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
    #[case::bracketed_hub_path("[00000]/581p:v1")]
    #[case::bracketed_hub_path_no_tag("[abc]/app")]
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
    #[case::two_digests(&format!("nginx@{D}@{D}"))]
    #[case::triple_underscore("r.io/a___b")]
    #[case::dot_dot("r.io/a..b")]
    #[case::trailing_separator("r.io/a-")]
    #[case::bad_port("r.io:50a/app")]
    #[case::empty_port("r.io:/app")]
    #[case::unclosed_ipv6("[::1:5000/app")]
    #[case::tag_starting_with_dot("nginx:.v1")]
    #[case::unicode_tag("nginx:v\u{e9}")]
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
    fn errors_quote_at_most_a_bounded_part_of_the_input() {
        let long = format!("quay.io/A{}", "a".repeat(200));
        let message = ImageRef::parse(&long).unwrap_err().to_string();
        assert!(message.len() < 200 && message.contains("…"), "{message}");
        assert!(
            message.ends_with("repository name must be lowercase"),
            "{message}"
        );
    }

    #[test]
    fn uppercase_error_says_so() {
        let err = ImageRef::parse("quay.io/Org/app:v1").unwrap_err();
        assert!(matches!(err, ReferenceError::Uppercase(_)), "{err:?}");
        assert!(err.to_string().contains("lowercase"));
    }
}

#[cfg(test)]
mod differential {
    use super::*;

    /// The hand-written grammar accepts exactly what oci-spec's regex (distribution's grammar)
    /// accepts, and normalises alike, over many generated ASCII references.
    #[test]
    fn agrees_with_the_distribution_regex() {
        const ALPHABET: &[u8] = b"ab0Z.-_:/@9[]";
        const PIECES: [&str; 12] = [
            "quay.io/",
            "localhost:5000/",
            "nginx",
            "library/",
            ":v1.2",
            "@sha256:",
            "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "a__b",
            "a--b",
            "x.y",
            "[::1]:5000/",
            "index.docker.io/",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut compared = 0;
        for _ in 0..20_000 {
            let mut input = String::new();
            for _ in 0..1 + next(6) {
                if next(3) == 0 {
                    input.push(ALPHABET[next(ALPHABET.len())] as char);
                } else {
                    input.push_str(PIECES[next(PIECES.len())]);
                }
            }
            let ours = ImageRef::parse(&input);
            let theirs = oci_spec::distribution::Reference::try_from(input.as_str());
            // oci-spec has no IPv6 hosts; distribution (and so containerd) has.
            if input.contains('[') {
                continue;
            }
            compared += 1;
            match (&ours, &theirs) {
                (Ok(ours), Ok(theirs)) => {
                    assert_eq!(ours.registry(), theirs.registry(), "{input}");
                    assert_eq!(ours.repository(), theirs.repository(), "{input}");
                    if ours.digest().is_none() {
                        assert_eq!(ours.tag(), theirs.tag(), "{input}");
                    }
                }
                (Err(_), Err(_)) => {}
                // Checked after the grammar: uppercase repositories (oci-spec lets a
                // registry-less uppercase first component through), digests of unknown
                // algorithms or lengths, and the 64-hex name.
                (Err(_), Ok(t)) if t.repository().bytes().any(|b| b.is_ascii_uppercase()) => {}
                (Err(ReferenceError::Digest(..) | ReferenceError::HexName(_)), Ok(_)) => {}
                _ => panic!("{input:?}: ours {ours:?}, oci-spec {theirs:?}"),
            }
        }
        assert!(compared > 12_000, "{compared}");
    }
}
