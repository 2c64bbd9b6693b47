//! Docker config files (`config.json`, `.dockerconfigjson`, the legacy `.dockercfg`), parsed
//! like `k8s.io/kubernetes/pkg/credentialprovider/config.go` parses them.
//!
//! No error carries secret material: registry keys are shown with any `user:pass@` removed,
//! and JSON errors keep only their position, because serde's messages can quote values.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::registry::Credential;

/// Docker configs are small; anything bigger is a mistake or an attack on the webhook's memory.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// Everything that can go wrong while reading a docker config.
///
/// No variant carries secret material: registry keys are shown with any `user:pass@` removed,
/// and JSON errors keep only their position, because serde's messages can quote values.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("{origin}: docker config is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        origin: String,
        size: usize,
        limit: usize,
    },
    #[error(
        "{origin}: docker config is not valid JSON ({problem} at line {line}, column {column})"
    )]
    InvalidJson {
        origin: String,
        problem: &'static str,
        line: usize,
        column: usize,
    },
    #[error("{origin}: {location} must be a JSON object, found {found}")]
    NotAnObject {
        origin: String,
        location: String,
        found: &'static str,
    },
    #[error("{origin}: registry `{registry}`: field `{field}` must be a string, found {found}")]
    FieldNotString {
        origin: String,
        registry: String,
        field: &'static str,
        found: &'static str,
    },
    #[error("{origin}: registry `{registry}`: `auth` is not valid base64")]
    AuthNotBase64 { origin: String, registry: String },
    #[error("{origin}: registry `{registry}`: `auth` does not decode to UTF-8 text")]
    AuthNotUtf8 { origin: String, registry: String },
    #[error("{origin}: registry `{registry}`: `auth` must be base64 of `username:password`")]
    AuthMissingColon { origin: String, registry: String },
}

/// One parsed docker config: registry keys exactly as written, each with its credential.
///
/// Entries keep the order of the JSON document; a key written twice keeps its first position and
/// its last value, as decoding into a Go map would.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    source: String,
    entries: Vec<(String, Credential)>,
}

impl DockerConfig {
    /// The label every credential of this config carries.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn entries(&self) -> impl ExactSizeIterator<Item = (&str, &Credential)> {
        self.entries.iter().map(|(key, cred)| (key.as_str(), cred))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Roughly the bytes it holds, for caches bounded by size.
    pub fn weight(&self) -> usize {
        self.source.len()
            + self
                .entries
                .iter()
                .map(|(key, c)| {
                    96 + key.len() + c.username().len() + c.password().len() + c.source().len()
                })
                .sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A config built from entries already parsed elsewhere (a credential provider plugin's
    /// `auth` map), in the order given; each credential should carry `source`.
    pub(crate) fn from_entries(source: String, entries: Vec<(String, Credential)>) -> Self {
        DockerConfig { source, entries }
    }
}

/// Parses either a docker `config.json` / `.dockerconfigjson` (`{"auths": {...}, ...}`) or a
/// legacy `.dockercfg` flat map, telling them apart by their top-level keys.
///
/// It is the `config.json` form when there is an `auths` key, any docker CLI setting
/// (`credsStore`, `credHelpers`, `HttpHeaders`, `proxies`, ...), or any top-level value that is
/// not an object; otherwise it is a `.dockercfg`. A valid `.dockercfg` holds only entry objects
/// keyed by registry, so only files the kubelet would reject are ambiguous.
pub fn parse_docker_config(bytes: &[u8], source: &str) -> Result<DockerConfig, KeyringError> {
    let top = parse_top_level(bytes, source)?;
    let looks_like_config_json = top.iter().any(|(key, value)| {
        !matches!(value, Node::Object(_) | Node::Null)
            || DOCKER_CLI_OBJECT_KEYS
                .iter()
                .any(|known| key.eq_ignore_ascii_case(known))
    });
    let map = if looks_like_config_json {
        auths_of(top, source)?
    } else {
        top
    };
    build_config(map, source)
}

/// Top-level keys of the docker CLI's `config.json` whose values are objects, so that a file
/// holding only, say, `credHelpers` is not mistaken for a `.dockercfg` naming a registry
/// `credHelpers`.
const DOCKER_CLI_OBJECT_KEYS: &[&str] = &[
    "auths",
    "credHelpers",
    "HttpHeaders",
    "proxies",
    "plugins",
    "aliases",
    "features",
];

/// Parses the `.dockerconfigjson` key of a `kubernetes.io/dockerconfigjson` secret: only the
/// `auths` object is read.
///
/// Like the kubelet, a document without `auths` is not an error; it just holds no credentials.
pub fn from_dockerconfigjson(bytes: &[u8], source: &str) -> Result<DockerConfig, KeyringError> {
    let top = parse_top_level(bytes, source)?;
    build_config(auths_of(top, source)?, source)
}

/// Parses the `.dockercfg` key of a `kubernetes.io/dockercfg` secret: a flat map from registry
/// key to entry.
pub fn from_dockercfg(bytes: &[u8], source: &str) -> Result<DockerConfig, KeyringError> {
    let top = parse_top_level(bytes, source)?;
    build_config(top, source)
}

fn parse_top_level(bytes: &[u8], origin: &str) -> Result<Vec<(String, Node)>, KeyringError> {
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(KeyringError::TooLarge {
            origin: origin.to_owned(),
            size: bytes.len(),
            limit: MAX_CONFIG_BYTES,
        });
    }
    let node: Node = serde_json::from_slice(bytes).map_err(|err| {
        use serde_json::error::Category;
        KeyringError::InvalidJson {
            origin: origin.to_owned(),
            problem: match err.classify() {
                Category::Io => "read error",
                Category::Syntax => "syntax error",
                Category::Data => "unexpected value",
                Category::Eof => "unexpected end of input",
            },
            line: err.line(),
            column: err.column(),
        }
    })?;
    match node {
        Node::Object(map) => Ok(map),
        // encoding/json decodes `null` into a struct or map as a no-op.
        Node::Null => Ok(Vec::new()),
        other => Err(KeyringError::NotAnObject {
            origin: origin.to_owned(),
            location: "the top level".to_owned(),
            found: other.kind(),
        }),
    }
}

/// The merged `auths` object(s): encoding/json matches field names case-insensitively, merges a
/// repeated object key into the same map, and resets the map on `null`.
fn auths_of(top: Vec<(String, Node)>, origin: &str) -> Result<Vec<(String, Node)>, KeyringError> {
    let mut merged = Vec::new();
    let mut found = false;
    for (key, value) in top {
        if !key.eq_ignore_ascii_case("auths") {
            continue;
        }
        found = true;
        match value {
            Node::Object(map) => merged.extend(map),
            Node::Null => merged.clear(),
            other => {
                return Err(KeyringError::NotAnObject {
                    origin: origin.to_owned(),
                    location: "`auths`".to_owned(),
                    found: other.kind(),
                });
            }
        }
    }
    if !found {
        tracing::debug!(
            source = origin,
            "docker config has no `auths`, so no credentials"
        );
    }
    Ok(merged)
}

fn build_config(map: Vec<(String, Node)>, origin: &str) -> Result<DockerConfig, KeyringError> {
    let mut entries: Vec<(String, Credential)> = Vec::with_capacity(map.len());
    let mut positions: HashMap<String, usize> = HashMap::with_capacity(map.len());
    for (key, node) in map {
        let cred = parse_entry(&key, node, origin)?;
        match positions.get(&key) {
            Some(&at) => entries[at].1 = cred,
            None => {
                positions.insert(key.clone(), entries.len());
                entries.push((key, cred));
            }
        }
    }
    Ok(DockerConfig {
        source: origin.to_owned(),
        entries,
    })
}

/// One entry, as `DockerConfigEntry.UnmarshalJSON` reads it. `identitytoken` and `registrytoken`
/// are ignored because the kubelet ignores them.
fn parse_entry(key: &str, node: Node, origin: &str) -> Result<Credential, KeyringError> {
    const FIELDS: [&str; 4] = ["username", "password", "email", "auth"];
    let fields = match node {
        Node::Object(fields) => fields,
        Node::Null => return Ok(Credential::new("", "", origin)),
        other => {
            return Err(KeyringError::NotAnObject {
                origin: origin.to_owned(),
                location: format!("registry `{}`", redact_userinfo(key)),
                found: other.kind(),
            });
        }
    };
    let mut values: [String; 4] = Default::default();
    for (name, value) in fields {
        let Some(at) = FIELDS.iter().position(|f| name.eq_ignore_ascii_case(f)) else {
            continue;
        };
        match value {
            Node::Str(s) => values[at] = s,
            Node::Null => {}
            other => {
                return Err(KeyringError::FieldNotString {
                    origin: origin.to_owned(),
                    registry: redact_userinfo(key).into_owned(),
                    field: FIELDS[at],
                    found: other.kind(),
                });
            }
        }
    }
    let [mut username, mut password, _email, auth] = values;
    if !auth.is_empty() {
        (username, password) = decode_auth(&auth).map_err(|problem| {
            let origin = origin.to_owned();
            let registry = redact_userinfo(key).into_owned();
            match problem {
                AuthProblem::Base64 => KeyringError::AuthNotBase64 { origin, registry },
                AuthProblem::Utf8 => KeyringError::AuthNotUtf8 { origin, registry },
                AuthProblem::MissingColon => KeyringError::AuthMissingColon { origin, registry },
            }
        })?;
    }
    Ok(Credential::new(username, password, origin))
}

enum AuthProblem {
    Base64,
    Utf8,
    MissingColon,
}

/// Go's `base64.StdEncoding`: padding required, non-zero trailing bits tolerated (not `Strict`).
const GO_STD_ENCODING: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// Go's `base64.RawStdEncoding`: padding forbidden.
const GO_RAW_STD_ENCODING: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// kubelet's `decodeDockerConfigFieldAuth`.
fn decode_auth(field: &str) -> Result<(String, String), AuthProblem> {
    // Go's decoders skip CR and LF anywhere in the input, but nothing else.
    let cleaned: Cow<'_, str> = if field.contains(['\r', '\n']) {
        Cow::Owned(field.replace(['\r', '\n'], ""))
    } else {
        Cow::Borrowed(field)
    };
    let engine = if field.trim().ends_with('=') {
        &GO_STD_ENCODING
    } else {
        &GO_RAW_STD_ENCODING
    };
    let decoded = engine
        .decode(cleaned.as_bytes())
        .map_err(|_| AuthProblem::Base64)?;
    // Go keeps arbitrary bytes in a string; ours must be UTF-8, so refuse rather than alter a
    // password.
    let decoded = String::from_utf8(decoded).map_err(|_| AuthProblem::Utf8)?;
    let (username, password) = decoded.split_once(':').ok_or(AuthProblem::MissingColon)?;
    Ok((username.to_owned(), password.to_owned()))
}

/// A registry key fit for logs and errors: people do write `https://user:pass@host` keys.
pub(super) fn redact_userinfo(key: &str) -> Cow<'_, str> {
    let authority_start = key.find("://").map_or(0, |at| at + 3);
    let authority_end = key[authority_start..]
        .find(['/', '?', '#'])
        .map_or(key.len(), |at| authority_start + at);
    match key[authority_start..authority_end].rfind('@') {
        Some(at) => Cow::Owned(format!(
            "{}<redacted>{}",
            &key[..authority_start],
            &key[authority_start + at..]
        )),
        None => Cow::Borrowed(key),
    }
}

/// A JSON value, keeping object members in document order (serde_json's `Value` would sort them
/// without the `preserve_order` feature) and dropping everything the configs never use.
enum Node {
    Null,
    Str(String),
    Object(Vec<(String, Node)>),
    Other(&'static str),
}

impl Node {
    /// What the value is, for error messages that must not quote it.
    fn kind(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Str(_) => "a string",
            Node::Object(_) => "an object",
            Node::Other(kind) => kind,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Other("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Other("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Other("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Other("a number"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Node::Other("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut members = Vec::new();
        while let Some(member) = map.next_entry::<String, Node>()? {
            members.push(member);
        }
        Ok(Node::Object(members))
    }
}
