//! Registry credentials found the way the kubelet finds them.
//!
//! Docker config files (`config.json`, `.dockerconfigjson`, the legacy `.dockercfg`) are parsed
//! like `k8s.io/kubernetes/pkg/credentialprovider/config.go` parses them, and [`Keyring`]
//! reproduces `BasicDockerKeyring` from `keyring.go`: the same key normalisation, the same
//! reverse-sorted index, the same host globbing and the same Docker Hub fallback. Being exact
//! matters here: if pullgate picked a credential the kubelet would not send, it would admit pods
//! that cannot pull, or refuse pods that can.
//!
//! Go's `net/url.Parse`, `net.SplitHostPort` and `path/filepath.Match` are ported rather than
//! replaced by the `url` crate, because WHATWG parsing lowercases, IDNA-maps and re-encodes hosts
//! and paths, which would change which keys match.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Docker configs are small; anything bigger is a mistake or an attack on the webhook's memory.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// The key the kubelet falls back to for Docker Hub images (`https://index.docker.io/v1/` once
/// normalised).
const DEFAULT_REGISTRY_HOST: &str = "index.docker.io";

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

/// Opaque fingerprint of a credential: keyed SHA-256 (HMAC) over (username, password) with a
/// per-process random 32-byte key, truncated to 16 bytes.
///
/// Never reversible to the secret; used in cache keys so one namespace's secret never vouches
/// for another's. Ids are only comparable within one process.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CredentialId([u8; 16]);

/// An HMAC-SHA256 key drawn at random, never leaving the process: what makes fingerprints
/// and cache keys neither reversible nor predictable.
pub(crate) fn random_hmac_key() -> hmac::Key {
    let mut bytes = [0u8; 32];
    // Without randomness ids would be plain hashes of passwords and cache keys guessable;
    // refusing to run is the only safe answer, and an OS without a working RNG cannot do TLS
    // either.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random number generator failed");
    hmac::Key::new(hmac::HMAC_SHA256, &bytes)
}

/// A keyed hash of a sequence of fields, cut to 128 bits: what names a cache entry without
/// the entry holding (or anyone outside the process predicting) what it depends on.
///
/// Variable-length fields are length-prefixed and lists counted, so two different sequences
/// never feed the same bytes.
pub(crate) struct Fingerprint(hmac::Context);

impl Fingerprint {
    pub(crate) fn new(key: &hmac::Key) -> Self {
        Fingerprint(hmac::Context::with_key(key))
    }

    /// A field of any length.
    pub(crate) fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.count(bytes.len());
        self.0.update(bytes);
        self
    }

    /// A field whose length its place tells: fixed-size, or the last of the sequence.
    pub(crate) fn fixed(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update(bytes);
        self
    }

    /// The number of items of a list that follows.
    pub(crate) fn count(&mut self, n: usize) -> &mut Self {
        self.0.update(&(n as u64).to_le_bytes());
        self
    }

    pub(crate) fn finish(self) -> [u8; 16] {
        let mut bits = [0u8; 16];
        bits.copy_from_slice(&self.0.sign().as_ref()[..16]);
        bits
    }
}

impl CredentialId {
    /// The id of the empty username and password, for which containerd sends no auth at all.
    pub const ANONYMOUS: CredentialId = CredentialId([0; 16]);

    fn of(username: &str, password: &str) -> Self {
        if username.is_empty() && password.is_empty() {
            return Self::ANONYMOUS;
        }
        static KEY: OnceLock<hmac::Key> = OnceLock::new();
        let mut f = Fingerprint::new(KEY.get_or_init(random_hmac_key));
        // The length prefix keeps ("a:b", "c") and ("a", "b:c") apart.
        f.field(username.as_bytes()).fixed(password.as_bytes());
        CredentialId(f.finish())
    }

    /// The id itself, for hashing into a cache key.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::ANONYMOUS {
            return f.write_str("anonymous");
        }
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A username and password for a registry, with a label saying where it came from.
#[derive(Clone)]
pub struct Credential {
    username: String,
    password: String,
    source: String,
    id: CredentialId,
}

impl Credential {
    pub fn new(
        username: impl Into<String>,
        password: impl Into<String>,
        source: impl Into<String>,
    ) -> Self {
        let username = username.into();
        let password = password.into();
        let id = CredentialId::of(&username, &password);
        Self {
            username,
            password,
            source: source.into(),
            id,
        }
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// Human label such as `secret team-a/regcred` or `--docker-config /etc/x.json`; never secret.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// [`CredentialId::ANONYMOUS`] when both username and password are empty.
    pub fn id(&self) -> CredentialId {
        self.id
    }

    /// Both username and password empty: containerd sends no `Authorization` header then, so an
    /// entry holding only an `identitytoken` pulls anonymously.
    pub fn is_anonymous(&self) -> bool {
        self.id == CredentialId::ANONYMOUS
    }
}

/// Two credentials are the same when they would send the same auth, wherever they came from.
impl PartialEq for Credential {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Credential {}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("source", &self.source)
            .field("id", &self.id)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
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
                    96 + key.len() + c.username.len() + c.password.len() + c.source.len()
                })
                .sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
fn redact_userinfo(key: &str) -> Cow<'_, str> {
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

/// kubelet's `BasicDockerKeyring`: credentials indexed by normalised registry key.
#[derive(Debug, Default, Clone)]
pub struct Keyring {
    // A BTreeMap orders keys bytewise like Go's sort.Strings; lookups walk it in reverse so
    // `quay.io/coreos` is tried before `quay.io`.
    slots: BTreeMap<String, Slot>,
}

#[derive(Debug, Clone)]
struct Slot {
    /// The key parsed as a glob, once; `None` when it does not re-parse, so it never matches.
    glob: Option<SchemelessUrl>,
    /// Every contributing config's credential, in the order the configs were added.
    creds: Vec<Credential>,
}

impl Keyring {
    /// kubelet's `BasicDockerKeyring.Add`.
    pub fn add(&mut self, config: &DockerConfig) {
        for (key, cred) in &config.entries {
            let normalised = match normalise_key(key) {
                Ok(normalised) => normalised,
                Err(reason) => {
                    tracing::warn!(
                        source = config.source(),
                        key = %redact_userinfo(key),
                        reason,
                        "ignoring docker config entry whose key is not a valid URL, as the kubelet does"
                    );
                    continue;
                }
            };
            self.slots
                .entry(normalised)
                .or_insert_with_key(|key| Slot {
                    glob: SchemelessUrl::parse(key).ok(),
                    creds: Vec::new(),
                })
                .creds
                .push(cred.clone());
        }
    }

    /// kubelet's `BasicDockerKeyring.Lookup`. `image` is the repository without tag or digest,
    /// e.g. `docker.io/library/nginx`. Returns the credentials to try, in order.
    pub fn lookup(&self, image: &str) -> Vec<Credential> {
        // The kubelet ignores the parse error and simply matches nothing.
        let mut found = Vec::new();
        if let Ok(target) = SchemelessUrl::parse(image) {
            for slot in self.slots.values().rev() {
                if slot
                    .glob
                    .as_ref()
                    .is_some_and(|glob| urls_match(glob, &target))
                {
                    found.extend(slot.creds.iter().cloned());
                }
            }
        }
        if found.is_empty()
            && is_default_registry_match(image)
            && let Some(slot) = self.slots.get(DEFAULT_REGISTRY_HOST)
        {
            found.extend(slot.creds.iter().cloned());
        }
        found
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// kubelet's `UnionDockerKeyring`: pass the pod-secret keyring first, then node keyrings; results
/// are concatenated in that order.
pub fn lookup_all(keyrings: &[&Keyring], image: &str) -> Vec<Credential> {
    keyrings
        .iter()
        .flat_map(|keyring| keyring.lookup(image))
        .collect()
}

/// The index key `BasicDockerKeyring.Add` derives from a config key.
fn normalise_key(key: &str) -> Result<String, &'static str> {
    let with_scheme = if key.starts_with("https://") || key.starts_with("http://") {
        Cow::Borrowed(key)
    } else {
        Cow::Owned(format!("https://{key}"))
    };
    let parsed = GoUrl::parse(&with_scheme)?;
    // Docker treats `/v1/` and `/v2/` as the bare host (ResolveAuthConfig).
    let path = if parsed.path.starts_with("/v2/") || parsed.path.starts_with("/v1/") {
        &parsed.path[3..]
    } else {
        parsed.path.as_str()
    };
    Ok(if !path.is_empty() && path != "/" {
        format!("{}{}", parsed.host, path)
    } else {
        parsed.host
    })
}

/// kubelet's `isDefaultRegistryMatch`.
fn is_default_registry_match(image: &str) -> bool {
    let Some((first, _)) = image.split_once('/') else {
        return !image.is_empty();
    };
    if first.is_empty() {
        return false;
    }
    if first == "docker.io" || first == "index.docker.io" {
        return true;
    }
    !first.contains(['.', ':'])
}

/// A schemeless URL as `URLsMatch` sees it (`ParseSchemelessURL` then `SplitURL`).
#[derive(Debug, Clone)]
struct SchemelessUrl {
    labels: Vec<String>,
    port: String,
    path: String,
}

impl SchemelessUrl {
    fn parse(schemeless: &str) -> Result<Self, &'static str> {
        let url = GoUrl::parse(&format!("https://{schemeless}"))?;
        let (hostname, port) = split_host_port(&url.host).unwrap_or((&url.host, ""));
        Ok(Self {
            labels: hostname.split('.').map(str::to_owned).collect(),
            port: port.to_owned(),
            path: url.path,
        })
    }
}

/// kubelet's `URLsMatch`: same port, same number of host labels each matching as a glob, and the
/// glob's path a plain string prefix of the target's (so `example.com/team` covers
/// `example.com/teamx`, as it does in the kubelet).
fn urls_match(glob: &SchemelessUrl, target: &SchemelessUrl) -> bool {
    glob.port == target.port
        && glob.labels.len() == target.labels.len()
        && target.path.starts_with(&glob.path)
        && glob
            .labels
            .iter()
            .zip(&target.labels)
            // A malformed pattern is an error in Go, which the kubelet treats as no match.
            .all(|(pattern, name)| go_match(pattern.as_bytes(), name.as_bytes()) == Ok(true))
}

/// The parts of Go's `*url.URL` the kubelet uses, from `url.Parse` of an `http(s)://` URL.
struct GoUrl {
    /// Unescaped, including any `:port` and IPv6 brackets, like Go's `URL.Host`.
    host: String,
    /// Unescaped.
    path: String,
}

impl GoUrl {
    /// Go's `url.Parse`, restricted to inputs that start with `http://` or `https://` (the only
    /// ones the kubelet hands it here).
    fn parse(raw: &str) -> Result<Self, &'static str> {
        let (url, fragment) = raw.split_once('#').unwrap_or((raw, ""));
        if url.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err("invalid control character in URL");
        }
        let rest = url
            .strip_prefix("https:")
            .or_else(|| url.strip_prefix("http:"))
            .ok_or("missing http(s) scheme")?;
        let rest = rest.split_once('?').map_or(rest, |(before, _)| before);
        let rest = rest.strip_prefix("//").ok_or("missing authority")?;
        let (authority, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
        let host = parse_authority(authority)?;
        let path = utf8(unescape(path, Escape::Path)?)?;
        if !fragment.is_empty() {
            unescape(fragment, Escape::Fragment)?;
        }
        Ok(Self { host, path })
    }
}

/// Go's `parseAuthority`, keeping only the host: the userinfo is validated, then dropped.
fn parse_authority(authority: &str) -> Result<String, &'static str> {
    let host = match authority.rfind('@') {
        None => authority,
        Some(at) => {
            let userinfo = &authority[..at];
            let valid = userinfo
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._:~!$&'()*+,;=%@".contains(c));
            if !valid {
                return Err("invalid userinfo");
            }
            unescape(userinfo, Escape::UserPassword)?;
            &authority[at + 1..]
        }
    };
    parse_host(host)
}

/// Go's `parseHost`.
fn parse_host(host: &str) -> Result<String, &'static str> {
    if host.starts_with('[') {
        let close = host.rfind(']').ok_or("missing ']' in host")?;
        if !valid_optional_port(&host[close + 1..]) {
            return Err("invalid port after host");
        }
        if let Some(zone) = host[..close].find("%25") {
            let mut out = unescape(&host[..zone], Escape::Host)?;
            out.extend(unescape(&host[zone..close], Escape::Zone)?);
            out.extend(unescape(&host[close..], Escape::Host)?);
            return utf8(out);
        }
    } else if let Some(colon) = host.rfind(':')
        && !valid_optional_port(&host[colon..])
    {
        return Err("invalid port after host");
    }
    utf8(unescape(host, Escape::Host)?)
}

fn valid_optional_port(port: &str) -> bool {
    match port.strip_prefix(':') {
        None => port.is_empty(),
        Some(digits) => digits.bytes().all(|b| b.is_ascii_digit()),
    }
}

// Go strings may hold any bytes after unescaping; a key whose escapes decode to invalid UTF-8 is
// treated as unparseable instead, which no normalised image reference could have matched anyway.
fn utf8(bytes: Vec<u8>) -> Result<String, &'static str> {
    String::from_utf8(bytes).map_err(|_| "escapes decode to invalid UTF-8")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Escape {
    Host,
    Zone,
    UserPassword,
    Path,
    Fragment,
}

/// Go's `url.unescape`, with its per-component validation.
fn unescape(s: &str, mode: Escape) -> Result<Vec<u8>, &'static str> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            if matches!(mode, Escape::Host | Escape::Zone) && b < 0x80 && host_must_escape(b) {
                return Err("invalid character in host name");
            }
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).and_then(|&h| hex_value(h)),
            bytes.get(i + 2).and_then(|&l| hex_value(l)),
        ) else {
            return Err("invalid URL escape");
        };
        let is_escaped_percent = &bytes[i..i + 3] == b"%25";
        let value = (hi << 4) | lo;
        // RFC 3986 lets a host %-encode only non-ASCII bytes, RFC 6874 adds %25 for zones.
        if mode == Escape::Host && hi < 8 && !is_escaped_percent {
            return Err("invalid URL escape in host");
        }
        if mode == Escape::Zone && !is_escaped_percent && value != b' ' && host_must_escape(value) {
            return Err("invalid URL escape in zone");
        }
        out.push(value);
        i += 3;
    }
    Ok(out)
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Go's `shouldEscape(c, encodeHost)`: what a host may not contain unescaped.
fn host_must_escape(c: u8) -> bool {
    !(c.is_ascii_alphanumeric() || b"!$&'()*+,;=:[]<>\"-_.~".contains(&c))
}

/// Go's `net.SplitHostPort`; `None` where Go returns an error.
fn split_host_port(hostport: &str) -> Option<(&str, &str)> {
    let colon = hostport.rfind(':')?;
    let (host, no_open_from, no_close_from) = if hostport.starts_with('[') {
        let close = hostport.find(']')?;
        // The first ']' must sit right before the last ':'.
        if close + 1 != colon {
            return None;
        }
        (&hostport[1..close], 1, close + 1)
    } else {
        let host = &hostport[..colon];
        if host.contains(':') {
            return None;
        }
        (host, 0, 0)
    };
    if hostport[no_open_from..].contains('[') || hostport[no_close_from..].contains(']') {
        return None;
    }
    Some((host, &hostport[colon + 1..]))
}

/// Malformed glob, Go's `filepath.ErrBadPattern`.
#[derive(Debug, PartialEq, Eq)]
struct BadPattern;

/// Go's `path/filepath.Match` on Unix, byte for byte: `*` matches any run of non-`/` bytes, `?`
/// one character, `[...]` a class (`^` negates, `a-z` ranges), `\` escapes.
fn go_match(mut pattern: &[u8], mut name: &[u8]) -> Result<bool, BadPattern> {
    'chunks: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            return Ok(!name.contains(&b'/'));
        }
        if let Some(after) = match_chunk(chunk, name)? {
            // The last chunk must consume the whole name.
            if after.is_empty() || !pattern.is_empty() {
                name = after;
                continue;
            }
        }
        if star {
            let mut skip = 0;
            while skip < name.len() && name[skip] != b'/' {
                if let Some(after) = match_chunk(chunk, &name[skip + 1..])? {
                    if pattern.is_empty() && !after.is_empty() {
                        skip += 1;
                        continue;
                    }
                    name = after;
                    continue 'chunks;
                }
                skip += 1;
            }
        }
        // Go reports a malformed remainder even when the match has already failed.
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            match_chunk(chunk, b"")?;
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

/// Go's `scanChunk`: leading stars, then everything up to the next star outside a class.
fn scan_chunk(mut pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut star = false;
    while let Some(rest) = pattern.strip_prefix(b"*") {
        pattern = rest;
        star = true;
    }
    let mut in_range = false;
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'\\' if i + 1 < pattern.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &pattern[..i], &pattern[i..])
}

/// Go's `matchChunk`: `Some(rest of name)` on a match. After a mismatch it keeps walking the
/// chunk so that a malformed pattern is still reported.
fn match_chunk<'n>(mut chunk: &[u8], mut name: &'n [u8]) -> Result<Option<&'n [u8]>, BadPattern> {
    let mut failed = false;
    while let Some(&c) = chunk.first() {
        if !failed && name.is_empty() {
            failed = true;
        }
        match c {
            b'[' => {
                let mut r = 0;
                if !failed {
                    let (rune, width) = decode_rune(name);
                    r = rune;
                    name = &name[width..];
                }
                chunk = &chunk[1..];
                let negated = chunk.first() == Some(&b'^');
                if negated {
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut ranges = 0;
                loop {
                    if ranges > 0 && chunk.first() == Some(&b']') {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = class_char(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if chunk.first() == Some(&b'-') {
                        (hi, chunk) = class_char(&chunk[1..])?;
                    }
                    if lo <= r && r <= hi {
                        matched = true;
                    }
                    ranges += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if name[0] == b'/' {
                        failed = true;
                    }
                    let (_, width) = decode_rune(name);
                    name = &name[width..];
                }
                chunk = &chunk[1..];
            }
            _ => {
                let mut literal = c;
                if c == b'\\' {
                    chunk = &chunk[1..];
                    literal = *chunk.first().ok_or(BadPattern)?;
                }
                if !failed {
                    if literal != name[0] {
                        failed = true;
                    }
                    name = &name[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    Ok(if failed { None } else { Some(name) })
}

/// Go's `getEsc`: one possibly escaped character of a class, which must not end the pattern.
fn class_char(chunk: &[u8]) -> Result<(u32, &[u8]), BadPattern> {
    let mut chunk = match chunk.first() {
        None | Some(b'-' | b']') => return Err(BadPattern),
        Some(_) => chunk,
    };
    if chunk[0] == b'\\' {
        chunk = &chunk[1..];
        if chunk.is_empty() {
            return Err(BadPattern);
        }
    }
    let (rune, width) = decode_rune(chunk);
    if rune == u32::from(char::REPLACEMENT_CHARACTER) && width == 1 {
        return Err(BadPattern);
    }
    let rest = &chunk[width..];
    if rest.is_empty() {
        return Err(BadPattern);
    }
    Ok((rune, rest))
}

/// Go's `utf8.DecodeRune`: U+FFFD with width 1 for invalid input, width 0 for none.
fn decode_rune(bytes: &[u8]) -> (u32, usize) {
    const INVALID: (u32, usize) = (0xFFFD, 1);
    let width = match bytes.first() {
        None => return (0xFFFD, 0),
        Some(0x00..=0x7f) => 1,
        Some(0xc2..=0xdf) => 2,
        Some(0xe0..=0xef) => 3,
        Some(0xf0..=0xf4) => 4,
        Some(_) => return INVALID,
    };
    bytes
        .get(..width)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| s.chars().next())
        .map_or(INVALID, |c| (u32::from(c), width))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use rstest::rstest;

    const SECRET: &str = "hunter2-TOP-SECRET";

    /// A keyring where each key's username is the key itself, so lookups can be read back.
    fn keyring_of(keys: &[&str]) -> Keyring {
        let auths: serde_json::Map<String, serde_json::Value> = keys
            .iter()
            .map(|key| {
                let entry = serde_json::json!({ "username": key, "password": SECRET });
                ((*key).to_owned(), entry)
            })
            .collect();
        let doc = serde_json::json!({ "auths": auths });
        let config = parse_docker_config(doc.to_string().as_bytes(), "test").unwrap();
        let mut keyring = Keyring::default();
        keyring.add(&config);
        keyring
    }

    fn usernames(creds: &[Credential]) -> Vec<&str> {
        creds.iter().map(Credential::username).collect()
    }

    fn one(json: &str) -> Credential {
        let config = parse_docker_config(json.as_bytes(), "test").unwrap();
        assert_eq!(config.len(), 1);
        config.entries().next().unwrap().1.clone()
    }

    #[rstest]
    #[case::v1_key_via_default_registry(
        &["https://index.docker.io/v1/"], "docker.io/library/nginx", &["https://index.docker.io/v1/"]
    )]
    #[case::bare_index_key_via_default_registry(
        &["index.docker.io"], "docker.io/myorg/private", &["index.docker.io"]
    )]
    #[case::docker_io_key_direct(&["docker.io"], "docker.io/library/nginx", &["docker.io"])]
    #[case::registry_1_is_not_docker_io(&["registry-1.docker.io"], "docker.io/myorg/private", &[])]
    #[case::default_registry_only_when_nothing_matched(
        &["index.docker.io", "docker.io"], "docker.io/library/nginx", &["docker.io"]
    )]
    #[case::default_registry_not_for_other_hosts(
        &["index.docker.io"], "quay.io/coreos/etcd", &[]
    )]
    #[case::star_one_label(&["*.example.com"], "a.example.com/app", &["*.example.com"])]
    #[case::star_not_two_labels(&["*.example.com"], "a.b.example.com/app", &[])]
    #[case::star_not_zero_labels(&["*.example.com"], "example.com/app", &[])]
    #[case::star_inside_label(&["k8s.*.io"], "k8s.gcr.io/pause", &["k8s.*.io"])]
    #[case::star_inside_label_other_host(&["k8s.*.io"], "registry.k8s.io/pause", &[])]
    // url.Parse takes `?` as the start of the query, so the key is just `registry`.
    #[case::question_mark_is_a_query(&["registry?.example.com"], "registry1.example.com/app", &[])]
    #[case::class_range(&["r[0-9].example.com"], "r7.example.com/app", &["r[0-9].example.com"])]
    #[case::negated_class(&["r[^0-9].example.com"], "r7.example.com/app", &[])]
    #[case::malformed_class_matches_nothing(&["r[.example.com"], "r1.example.com/app", &[])]
    #[case::no_port_key_vs_port_image(&["registry.example.com"], "registry.example.com:5000/app", &[])]
    #[case::port_key(
        &["registry.example.com:5000"], "registry.example.com:5000/app", &["registry.example.com:5000"]
    )]
    #[case::port_key_vs_no_port_image(&["registry.example.com:5000"], "registry.example.com/app", &[])]
    #[case::ip_port(&["127.0.0.1:5000"], "127.0.0.1:5000/app", &["127.0.0.1:5000"])]
    #[case::ip_other_port(&["127.0.0.1:5000"], "127.0.0.1:5001/app", &[])]
    #[case::ip_no_port(&["127.0.0.1:5000"], "127.0.0.1/app", &[])]
    #[case::ipv6_port(&["[::1]:5000"], "[::1]:5000/app", &["[::1]:5000"])]
    #[case::path_is_string_prefix(&["example.com/team"], "example.com/teamx/app", &["example.com/team"])]
    #[case::path_prefix(
        &["registry.example.com/team-a"], "registry.example.com/team-a/app", &["registry.example.com/team-a"]
    )]
    #[case::path_other_team(&["registry.example.com/team-a"], "registry.example.com/team-b/app", &[])]
    #[case::http_scheme(
        &["http://registry.example.com"], "registry.example.com/app", &["http://registry.example.com"]
    )]
    #[case::v2_suffix(
        &["https://registry.example.com/v2/"], "registry.example.com/app", &["https://registry.example.com/v2/"]
    )]
    #[case::v2_then_path(
        &["registry.example.com/v2/team-a"], "registry.example.com/team-a/app", &["registry.example.com/v2/team-a"]
    )]
    #[case::v1_without_slash_is_a_path(&["registry.example.com/v1"], "registry.example.com/app", &[])]
    #[case::userinfo_in_key_dropped(
        &["https://me:pw@registry.example.com"], "registry.example.com/app", &["https://me:pw@registry.example.com"]
    )]
    #[case::hosts_are_case_sensitive(&["Registry.Example.com"], "registry.example.com/app", &[])]
    #[case::most_specific_first(
        &["quay.io", "quay.io/coreos/etcd", "quay.io/coreos"],
        "quay.io/coreos/etcd",
        &["quay.io/coreos/etcd", "quay.io/coreos", "quay.io"]
    )]
    #[case::reverse_sort_puts_globs_last(
        &["*.example.com", "a.example.com"], "a.example.com/app", &["a.example.com", "*.example.com"]
    )]
    fn lookup_matches_like_the_kubelet(
        #[case] keys: &[&str],
        #[case] image: &str,
        #[case] expected: &[&str],
    ) {
        assert_eq!(usernames(&keyring_of(keys).lookup(image)), expected);
    }

    #[rstest]
    #[case::v1("https://index.docker.io/v1/", Ok("index.docker.io"))]
    #[case::v2_path("http://r.example.com/v2/team", Ok("r.example.com/team"))]
    #[case::trailing_slash("r.example.com/", Ok("r.example.com"))]
    #[case::query_and_fragment("r.example.com/a?x=1#frag", Ok("r.example.com/a"))]
    #[case::question_mark_glob_is_a_query("registry?.example.com", Ok("registry"))]
    #[case::escaped_path("r.example.com/team%2Fa", Ok("r.example.com/team/a"))]
    #[case::userinfo("user:pw@r.example.com/a", Ok("r.example.com/a"))]
    #[case::empty("", Ok(""))]
    #[case::bad_port("r.example.com:http", Err(()))]
    #[case::glob_port("r.example.com:*", Err(()))]
    #[case::bad_escape("r.example.com/%zz", Err(()))]
    #[case::ascii_escape_in_host("r%41.example.com", Err(()))]
    #[case::space_in_host("bad host.com", Err(()))]
    #[case::control_character("r.example.com/\u{7f}", Err(()))]
    #[case::class_at_host_start("[a-z].example.com", Err(()))]
    fn normalise_key_like_add(#[case] key: &str, #[case] expected: Result<&str, ()>) {
        assert_eq!(normalise_key(key).as_deref().map_err(|_| ()), expected);
    }

    #[test]
    fn unparseable_keys_are_skipped() {
        let keyring = keyring_of(&["registry.example.com:port", "bad host"]);
        assert!(keyring.is_empty());
        assert!(keyring.lookup("registry.example.com/app").is_empty());
    }

    #[rstest]
    #[case::bare_name("nginx", true)]
    #[case::library("library/nginx", true)]
    #[case::docker_io("docker.io/library/nginx", true)]
    #[case::index_docker_io("index.docker.io/library/nginx", true)]
    #[case::dotless_first_part("myorg/app", true)]
    #[case::dotted_host("quay.io/coreos/etcd", false)]
    #[case::port_host("localhost:5000/app", false)]
    #[case::empty("", false)]
    #[case::leading_slash("/app", false)]
    fn default_registry_match(#[case] image: &str, #[case] expected: bool) {
        assert_eq!(is_default_registry_match(image), expected);
    }

    #[rstest]
    #[case::literal("abc", "abc", Ok(true))]
    #[case::literal_mismatch("abc", "abd", Ok(false))]
    #[case::star_all("*", "anything", Ok(true))]
    #[case::star_empty("*", "", Ok(true))]
    #[case::star_middle("a*c", "abbbc", Ok(true))]
    #[case::star_last_chunk_must_end("a*b", "abab_", Ok(false))]
    #[case::star_backtracks("a*b", "abab", Ok(true))]
    #[case::question("a?c", "abc", Ok(true))]
    #[case::question_unicode("a?c", "aéc", Ok(true))]
    #[case::class("[abc]x", "bx", Ok(true))]
    #[case::class_range_miss("[a-c]", "d", Ok(false))]
    #[case::negated("[^a-c]", "d", Ok(true))]
    #[case::escape(r"a\*", "a*", Ok(true))]
    #[case::escape_not_star(r"a\*", "ab", Ok(false))]
    #[case::unterminated_class("[a", "a", Err(BadPattern))]
    #[case::empty_class("[]a]", "a", Err(BadPattern))]
    #[case::trailing_backslash("a\\", "a", Err(BadPattern))]
    #[case::bad_after_mismatch("x[", "y", Err(BadPattern))]
    fn glob_matches_like_go(
        #[case] pattern: &str,
        #[case] name: &str,
        #[case] expected: Result<bool, BadPattern>,
    ) {
        assert_eq!(go_match(pattern.as_bytes(), name.as_bytes()), expected);
    }

    #[test]
    fn configs_adding_the_same_key_keep_insertion_order() {
        let first = from_dockercfg(
            br#"{"quay.io": {"username": "first", "password": "a"}}"#,
            "one",
        )
        .unwrap();
        let second = from_dockerconfigjson(
            br#"{"auths": {"https://quay.io/v1/": {"username": "second", "password": "b"}}}"#,
            "two",
        )
        .unwrap();
        let mut keyring = Keyring::default();
        keyring.add(&first);
        keyring.add(&second);
        let found = keyring.lookup("quay.io/coreos/etcd");
        assert_eq!(usernames(&found), ["first", "second"]);
        assert_eq!(found[0].source(), "one");
        assert_eq!(found[1].source(), "two");

        let mut reversed = Keyring::default();
        reversed.add(&second);
        reversed.add(&first);
        assert_eq!(
            usernames(&reversed.lookup("quay.io/coreos/etcd")),
            ["second", "first"]
        );
    }

    #[test]
    fn lookup_all_puts_pod_credentials_before_node_credentials() {
        let pod = keyring_of(&["quay.io"]);
        let node = keyring_of(&["quay.io/coreos"]);
        assert_eq!(
            usernames(&lookup_all(&[&pod, &node], "quay.io/coreos/etcd")),
            ["quay.io", "quay.io/coreos"]
        );
        let empty = Keyring::default();
        assert_eq!(
            usernames(&lookup_all(&[&empty, &node], "quay.io/coreos/etcd")),
            ["quay.io/coreos"]
        );
    }

    #[rstest]
    #[case::padded("alice:secret!", STANDARD.encode("alice:secret!"), "alice", "secret!")]
    #[case::unpadded("alice:secret!", STANDARD_NO_PAD.encode("alice:secret!"), "alice", "secret!")]
    #[case::first_colon_splits("u:pa:ss", STANDARD.encode("u:pa:ss"), "u", "pa:ss")]
    #[case::newlines_ignored("alice:secret!", format!("{}\n", STANDARD.encode("alice:secret!")), "alice", "secret!")]
    #[case::empty_password("bob:", STANDARD.encode("bob:"), "bob", "")]
    fn auth_field_decodes(
        #[case] plain: &str,
        #[case] auth: String,
        #[case] username: &str,
        #[case] password: &str,
    ) {
        assert!(plain.contains(':'));
        let json = serde_json::json!({ "auths": { "r.example.com": { "auth": auth } } });
        let cred = one(&json.to_string());
        assert_eq!((cred.username(), cred.password()), (username, password));
    }

    #[test]
    fn auth_overrides_username_and_password() {
        let auth = STANDARD.encode("fromauth:authpw");
        let cred = one(&format!(
            r#"{{"auths": {{"r.example.com": {{"username": "u", "password": "p", "email": "e@x", "auth": "{auth}"}}}}}}"#
        ));
        assert_eq!((cred.username(), cred.password()), ("fromauth", "authpw"));
    }

    #[test]
    fn empty_or_null_auth_keeps_username_and_password() {
        let cred =
            one(r#"{"auths": {"r.example.com": {"username": "u", "password": "p", "auth": ""}}}"#);
        assert_eq!((cred.username(), cred.password()), ("u", "p"));
        let cred = one(
            r#"{"auths": {"r.example.com": {"username": "u", "password": "p", "auth": null}}}"#,
        );
        assert_eq!((cred.username(), cred.password()), ("u", "p"));
    }

    #[test]
    fn field_names_match_case_insensitively_like_encoding_json() {
        let cred = one(r#"{"Auths": {"r.example.com": {"Username": "u", "PASSWORD": "p"}}}"#);
        assert_eq!((cred.username(), cred.password()), ("u", "p"));
    }

    #[test]
    fn identity_token_only_is_anonymous() {
        let cred =
            one(r#"{"auths": {"r.example.com": {"identitytoken": "tok", "registrytoken": "rt"}}}"#);
        assert!(cred.is_anonymous());
        assert_eq!(cred.id(), CredentialId::ANONYMOUS);
        assert_eq!(cred.id().to_string(), "anonymous");
    }

    #[test]
    fn null_entry_is_anonymous() {
        assert!(one(r#"{"r.example.com": null}"#).is_anonymous());
    }

    #[test]
    fn dockercfg_flat_format() {
        let auth = STANDARD.encode("a:b");
        let json = format!(
            r#"{{"quay.io": {{"auth": "{auth}", "email": "x@y"}}, "https://index.docker.io/v1/": {{"username": "c", "password": "d"}}}}"#
        );
        for config in [
            parse_docker_config(json.as_bytes(), "cfg").unwrap(),
            from_dockercfg(json.as_bytes(), "cfg").unwrap(),
        ] {
            let entries: Vec<_> = config
                .entries()
                .map(|(key, cred)| (key, cred.username(), cred.password(), cred.source()))
                .collect();
            assert_eq!(
                entries,
                [
                    ("quay.io", "a", "b", "cfg"),
                    ("https://index.docker.io/v1/", "c", "d", "cfg")
                ]
            );
        }
    }

    #[test]
    fn config_json_settings_are_ignored() {
        let json = r#"{
            "credsStore": "desktop",
            "credHelpers": {"gcr.io": "gcloud"},
            "auths": {"z.example.com": {"username": "z", "password": "1"}, "a.example.com": {}},
            "HttpHeaders": {"User-Agent": "x"}
        }"#;
        let config = parse_docker_config(json.as_bytes(), "cfg").unwrap();
        let keys: Vec<_> = config.entries().map(|(key, _)| key).collect();
        assert_eq!(keys, ["z.example.com", "a.example.com"]);
        assert_eq!(
            from_dockerconfigjson(json.as_bytes(), "cfg").unwrap().len(),
            2
        );
    }

    #[rstest]
    #[case::creds_store_only(r#"{"credsStore": "desktop"}"#)]
    #[case::cred_helpers_only(r#"{"credHelpers": {"gcr.io": "gcloud"}}"#)]
    #[case::null_auths(r#"{"auths": null}"#)]
    #[case::null("null")]
    #[case::empty("{}")]
    fn configs_without_credentials(#[case] json: &str) {
        assert!(
            parse_docker_config(json.as_bytes(), "cfg")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn dockerconfigjson_reads_only_auths() {
        let flat = br#"{"r.example.com": {"username": "u", "password": "p"}}"#;
        assert!(from_dockerconfigjson(flat, "cfg").unwrap().is_empty());
    }

    #[test]
    fn repeated_key_keeps_last_value_at_first_position() {
        let json =
            r#"{"auths": {"a.io": {"username": "1"}, "b.io": {}, "a.io": {"username": "2"}}}"#;
        let config = parse_docker_config(json.as_bytes(), "cfg").unwrap();
        let entries: Vec<_> = config
            .entries()
            .map(|(key, cred)| (key, cred.username()))
            .collect();
        assert_eq!(entries, [("a.io", "2"), ("b.io", "")]);
    }

    #[test]
    fn oversize_input_is_rejected() {
        let padding = " ".repeat(MAX_CONFIG_BYTES);
        let json = format!("{{}}{padding}");
        let err = parse_docker_config(json.as_bytes(), "big").unwrap_err();
        assert!(matches!(err, KeyringError::TooLarge { size, .. } if size == MAX_CONFIG_BYTES + 2));
    }

    /// Every error path, fed the secret in the most tempting place; none may echo it.
    #[rstest]
    #[case::bad_base64(
        format!(r#"{{"auths": {{"secret.example.com": {{"auth": "{SECRET}!!"}}}}}}"#),
        "AuthNotBase64"
    )]
    #[case::no_colon(
        format!(r#"{{"auths": {{"secret.example.com": {{"auth": "{}"}}}}}}"#, STANDARD.encode(SECRET)),
        "AuthMissingColon"
    )]
    #[case::not_utf8(
        format!(r#"{{"auths": {{"secret.example.com": {{"auth": "{}"}}}}}}"#, STANDARD.encode(b"u:\xff\xfe")),
        "AuthNotUtf8"
    )]
    #[case::bad_auth_in_dockercfg(
        format!(r#"{{"secret.example.com": {{"auth": "{SECRET}"}}}}"#),
        "AuthNotBase64"
    )]
    #[case::field_not_string(
        format!(r#"{{"auths": {{"secret.example.com": {{"username": "{SECRET}", "password": ["{SECRET}"]}}}}}}"#),
        "FieldNotString"
    )]
    #[case::entry_not_object(
        format!(r#"{{"auths": {{"secret.example.com": "{SECRET}"}}}}"#),
        "NotAnObject"
    )]
    #[case::auths_not_object(format!(r#"{{"auths": "{SECRET}"}}"#), "NotAnObject")]
    #[case::top_level_string(format!(r#""{SECRET}""#), "NotAnObject")]
    #[case::truncated(
        format!(r#"{{"auths": {{"secret.example.com": {{"password": "{SECRET}"#),
        "InvalidJson"
    )]
    #[case::trailing_garbage(format!(r#"{{"password": "{SECRET}"}} {SECRET}"#), "InvalidJson")]
    #[case::userinfo_key(
        format!(r#"{{"auths": {{"https://user:{SECRET}@r.example.com": {{"auth": "x"}}}}}}"#),
        "AuthNotBase64"
    )]
    fn errors_never_contain_secrets(#[case] json: String, #[case] variant: &str) {
        let err = parse_docker_config(json.as_bytes(), "secret team-a/regcred").unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(shown.starts_with("secret team-a/regcred: "), "{shown}");
        assert!(format!("{err:?}").starts_with(variant), "{shown}");
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(!shown.contains(&STANDARD.encode(SECRET)), "{shown}");
        if json.contains("secret.example.com") && variant != "InvalidJson" {
            assert!(shown.contains("`secret.example.com`"), "{shown}");
        }
    }

    #[test]
    fn debug_redacts_password() {
        let cred = Credential::new("alice", SECRET, "secret team-a/regcred");
        let shown = format!("{cred:?} {cred:#?}");
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(
            shown.contains("alice") && shown.contains("team-a/regcred"),
            "{shown}"
        );
        assert!(shown.contains(&cred.id().to_string()), "{shown}");

        let config = from_dockercfg(
            format!(r#"{{"r.io": {{"username": "u", "password": "{SECRET}"}}}}"#).as_bytes(),
            "cfg",
        )
        .unwrap();
        let mut keyring = Keyring::default();
        keyring.add(&config);
        let shown = format!("{config:?} {keyring:?}");
        assert!(!shown.contains(SECRET), "{shown}");
    }

    #[test]
    fn credential_ids() {
        let a = Credential::new("alice", "one", "x");
        let same = Credential::new("alice", "one", "y");
        let other_password = Credential::new("alice", "two", "x");
        let shifted_colon = Credential::new("alice:o", "ne", "x");
        assert_eq!(a.id(), same.id());
        assert_eq!(a, same, "equality ignores the source");
        assert_ne!(a.id(), other_password.id());
        assert_ne!(a, other_password);
        assert_ne!(a.id(), shifted_colon.id());
        assert_ne!(a.id(), CredentialId::ANONYMOUS);
        assert!(!a.is_anonymous());

        let secret = Credential::new("alice", SECRET, "x");
        let shown = secret.id().to_string();
        assert_eq!(shown.len(), 32);
        assert!(shown.bytes().all(|b| b.is_ascii_hexdigit()), "{shown}");
        assert!(!shown.contains(SECRET));
        assert_eq!(format!("{:?}", secret.id()), shown);

        let anonymous = Credential::new("", "", "x");
        assert!(anonymous.is_anonymous());
        assert_eq!(format!("{:?}", anonymous.id()), "anonymous");
        assert!(!Credential::new("", "p", "x").is_anonymous());
        assert!(!Credential::new("u", "", "x").is_anonymous());
    }
}
