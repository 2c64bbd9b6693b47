//! A username and password for a registry, and its fingerprint: what the transport sends,
//! wherever the kubelet's rules found it.

use std::fmt;
use std::sync::OnceLock;

use ring::hmac;

use crate::fingerprint::{Fingerprint, random_hmac_key};

/// Opaque fingerprint of a credential: keyed SHA-256 (HMAC) over (username, password) with a
/// per-process random 32-byte key, truncated to 16 bytes.
///
/// Never reversible to the secret; used in cache keys so one namespace's secret never vouches
/// for another's. Ids are only comparable within one process.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CredentialId([u8; 16]);

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
