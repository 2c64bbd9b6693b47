//! Running one plugin as the kubelet's `execPlugin.ExecPlugin` does
//! (`pkg/credentialprovider/plugin/plugin.go`): `bin_dir/name args...`, no shell, the process
//! environment plus the configured `env`, the `CredentialProviderRequest` on stdin, the
//! `CredentialProviderResponse` read from stdout, whose `apiVersion` must be the request's.
//!
//! Unlike the kubelet, which puts stderr into its error, nothing the plugin writes is ever put in
//! an error or a log line: plugins have printed tokens on either stream. Errors give the exit
//! status, the byte counts, and for a response that does not decode, only the position.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::time::Instant;

use super::account::Identity;
use super::config::EnvVar;
use super::duration::GoDuration;
use super::validate::PluginApiVersion;

/// A response bigger than this is refused: real ones are a few hundred bytes.
pub(super) const MAX_STDOUT_BYTES: usize = 1024 * 1024;

/// The kubelet's catch-all timeout for one plugin run.
pub(super) const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a run gave nothing. The text is what [`super::ProviderFailure::reason`] says.
#[derive(Debug, thiserror::Error)]
pub(super) enum RunError {
    #[error("cannot start {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no answer before the deadline ({after:?} after it started); the plugin was killed")]
    Timeout { after: Duration },
    #[error("reading its output failed: {0}")]
    Io(#[source] io::Error),
    #[error("output larger than {limit} bytes; the plugin was killed")]
    OutputTooLarge { limit: usize },
    #[error("{status} ({stderr_bytes} bytes on stderr)")]
    Exit {
        status: ExitStatus,
        stderr_bytes: u64,
    },
    #[error("invalid JSON at line {line} column {column} ({problem})")]
    InvalidJson {
        problem: &'static str,
        line: usize,
        column: usize,
    },
    #[error(
        "apiVersion from credential plugin response did not match expected apiVersion:{expected}, actual apiVersion:{actual}"
    )]
    ApiVersion {
        expected: &'static str,
        actual: String,
    },
    #[error("the response is not a {expected} (kind {actual:?})")]
    Kind {
        expected: &'static str,
        actual: String,
    },
    #[error(
        "the response does not decode as a CredentialProviderResponse at line {line} column {column} ({problem})"
    )]
    Decode {
        problem: &'static str,
        line: usize,
        column: usize,
    },
    #[error("the response's cacheKeyType {0:?} is not Image, Registry or Global")]
    CacheKeyType(String),
}

/// `cacheKeyType`: what a response may be reused for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CacheKeyType {
    Image,
    Registry,
    Global,
}

/// A checked response. `auth` holds secrets; `Debug` shows only its keys.
pub(super) struct Response {
    pub(super) cache_key_type: CacheKeyType,
    pub(super) cache_duration: Option<GoDuration>,
    /// The `auth` map in the order written: match key, username, password.
    pub(super) auth: Vec<(String, String, String)>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("cache_key_type", &self.cache_key_type)
            .field("cache_duration", &self.cache_duration)
            .field(
                "auth_keys",
                &self.auth.iter().map(|a| &a.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// One configured plugin executable.
#[derive(Debug)]
pub(super) struct Plugin {
    pub(super) path: PathBuf,
    pub(super) api_version: PluginApiVersion,
    pub(super) args: Vec<String>,
    pub(super) env: Vec<EnvVar>,
}

const REQUEST_KIND: &str = "CredentialProviderRequest";
const RESPONSE_KIND: &str = "CredentialProviderResponse";

impl Plugin {
    /// kubelet's `ExecPlugin`, with `deadline` in place of its one-minute context.
    pub(super) async fn run(
        &self,
        image: &str,
        identity: Option<&Identity>,
        deadline: Instant,
    ) -> Result<Response, RunError> {
        let started = Instant::now();
        let request = request_json(self.api_version, image, identity);
        let mut command = Command::new(&self.path);
        command
            .args(&self.args)
            // Appended to the inherited environment, so a configured name wins, as in Go's exec.
            .envs(self.env.iter().map(|v| {
                (
                    v.name.clone().unwrap_or_default(),
                    v.value.clone().unwrap_or_default(),
                )
            }))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A timeout, an oversized answer, or the caller going away ends the child.
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| RunError::Spawn {
            path: self.path.clone(),
            source,
        })?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            unreachable!("all three streams were piped");
        };
        let write = async move {
            // Go's exec ignores a plugin that exits without reading its stdin (EPIPE).
            match stdin.write_all(&request).await {
                Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(RunError::Io(e)),
                _ => Ok(()),
            }
        };
        let work = async {
            let (_, out, stderr_bytes) =
                tokio::try_join!(write, read_bounded(stdout), count_bytes(stderr))?;
            let status = child.wait().await.map_err(RunError::Io)?;
            if !status.success() {
                return Err(RunError::Exit {
                    status,
                    stderr_bytes,
                });
            }
            Ok(out)
        };
        let stdout = match tokio::time::timeout_at(deadline, work).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(RunError::Timeout {
                    after: started.elapsed(),
                });
            }
        };
        parse_response(&stdout, self.api_version)
    }
}

/// The request as the kubelet encodes it: `kind`, `apiVersion`, `image`, for a provider with
/// `tokenAttributes` the `serviceAccountToken` and `serviceAccountAnnotations` (each left out
/// when empty), and a newline.
fn request_json(
    api_version: PluginApiVersion,
    image: &str,
    identity: Option<&Identity>,
) -> Vec<u8> {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Request<'a> {
        kind: &'static str,
        api_version: &'static str,
        image: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        service_account_token: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        service_account_annotations: Option<&'a BTreeMap<String, String>>,
    }
    let request = Request {
        kind: REQUEST_KIND,
        api_version: api_version.as_str(),
        image,
        service_account_token: identity.map_or("", |i| i.token.expose()),
        service_account_annotations: identity.map(|i| &i.annotations).filter(|a| !a.is_empty()),
    };
    let mut bytes = serde_json::to_vec(&request).expect("a struct of strings serialises");
    bytes.push(b'\n');
    bytes
}

async fn read_bounded(stream: impl AsyncRead + Unpin) -> Result<Vec<u8>, RunError> {
    let mut bytes = Vec::new();
    stream
        .take(MAX_STDOUT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(RunError::Io)?;
    if bytes.len() > MAX_STDOUT_BYTES {
        return Err(RunError::OutputTooLarge {
            limit: MAX_STDOUT_BYTES,
        });
    }
    Ok(bytes)
}

/// Drains stderr so the plugin never blocks on it, keeping nothing but its length.
async fn count_bytes(stream: impl AsyncRead + Unpin) -> Result<u64, RunError> {
    tokio::io::copy(
        &mut tokio::io::BufReader::new(stream),
        &mut tokio::io::sink(),
    )
    .await
    .map_err(RunError::Io)
}

/// What `json.DefaultMetaFactory.Interpret` reads before anything else.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

/// The response body, decoded strictly as the kubelet's codec does (unknown fields refused).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ResponseDoc {
    #[serde(default, rename = "kind")]
    _kind: Option<String>,
    #[serde(default, rename = "apiVersion")]
    _api_version: Option<String>,
    #[serde(default)]
    cache_key_type: Option<String>,
    #[serde(default)]
    cache_duration: Option<GoDuration>,
    /// Only in `credentialprovider.kubelet.k8s.io/v1`; checked below for the older versions.
    #[serde(default)]
    service_account_token_cache_type: Option<String>,
    #[serde(default)]
    auth: Option<AuthMap>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthConfig {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The `auth` object in document order; a key given twice is refused, as strict decoding does.
struct AuthMap(Vec<(String, String, String)>);

impl<'de> Deserialize<'de> for AuthMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AuthVisitor;
        impl<'de> Visitor<'de> for AuthVisitor {
            type Value = AuthMap;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map from image match keys to username and password")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AuthMap, A::Error> {
                let mut entries: Vec<(String, String, String)> = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, Option<AuthConfig>>()? {
                    if entries.iter().any(|(k, _, _)| *k == key) {
                        return Err(de::Error::custom("duplicate key in auth"));
                    }
                    let value = value.unwrap_or(AuthConfig {
                        username: None,
                        password: None,
                    });
                    entries.push((
                        key,
                        value.username.unwrap_or_default(),
                        value.password.unwrap_or_default(),
                    ));
                }
                Ok(AuthMap(entries))
            }
        }
        deserializer.deserialize_map(AuthVisitor)
    }
}

fn json_problem(err: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match err.classify() {
        Category::Io => "read error",
        Category::Syntax => "syntax error",
        Category::Data => "unexpected field or value",
        Category::Eof => "unexpected end of input",
    }
}

/// The checks of `ExecPlugin` and `decodeResponse`, then `provide`'s `cacheKeyType` check. serde's
/// messages are never kept: they can quote a value, and values here are passwords.
fn parse_response(stdout: &[u8], api_version: PluginApiVersion) -> Result<Response, RunError> {
    let meta: TypeMeta = serde_json::from_slice(stdout).map_err(|e| RunError::InvalidJson {
        problem: json_problem(&e),
        line: e.line(),
        column: e.column(),
    })?;
    let actual = meta.api_version.unwrap_or_default();
    if actual != api_version.as_str() {
        return Err(RunError::ApiVersion {
            expected: api_version.as_str(),
            actual,
        });
    }
    let kind = meta.kind.unwrap_or_default();
    if kind != RESPONSE_KIND {
        return Err(RunError::Kind {
            expected: RESPONSE_KIND,
            actual: kind,
        });
    }
    let doc: ResponseDoc = serde_json::from_slice(stdout).map_err(|e| RunError::Decode {
        problem: json_problem(&e),
        line: e.line(),
        column: e.column(),
    })?;
    if doc.service_account_token_cache_type.is_some() && api_version != PluginApiVersion::V1 {
        return Err(RunError::Decode {
            problem: "unknown field serviceAccountTokenCacheType",
            line: 1,
            column: 1,
        });
    }
    let cache_key_type = match doc.cache_key_type.as_deref().unwrap_or("") {
        "Image" => CacheKeyType::Image,
        "Registry" => CacheKeyType::Registry,
        "Global" => CacheKeyType::Global,
        other => return Err(RunError::CacheKeyType(other.to_owned())),
    };
    Ok(Response {
        cache_key_type,
        cache_duration: doc.cache_duration,
        auth: doc.auth.map(|a| a.0).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: PluginApiVersion = PluginApiVersion::V1;

    #[test]
    fn the_request_is_what_the_kubelet_writes() {
        assert_eq!(
            String::from_utf8(request_json(V1, "registry.io/app", None)).unwrap(),
            "{\"kind\":\"CredentialProviderRequest\",\"apiVersion\":\"credentialprovider.kubelet.k8s.io/v1\",\"image\":\"registry.io/app\"}\n"
        );
    }

    #[test]
    fn a_token_request_carries_the_token_and_the_annotations_sent() {
        use super::super::account::{Identity, Scope};
        let mut annotations = BTreeMap::new();
        annotations.insert("example.com/role".to_owned(), "reader".to_owned());
        let identity = Identity {
            token: crate::credentials::tokens::AccountToken::new("eyJ.t".to_owned()),
            annotations,
            scope: Scope::default(),
        };
        assert_eq!(
            String::from_utf8(request_json(V1, "registry.io/app", Some(&identity))).unwrap(),
            "{\"kind\":\"CredentialProviderRequest\",\"apiVersion\":\"credentialprovider.kubelet.k8s.io/v1\",\"image\":\"registry.io/app\",\"serviceAccountToken\":\"eyJ.t\",\"serviceAccountAnnotations\":{\"example.com/role\":\"reader\"}}\n"
        );
    }

    #[test]
    fn a_response_keeps_auth_order_and_reads_null_as_empty() {
        let r = parse_response(
            br#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1",
                "cacheKeyType":"Registry","cacheDuration":"5m","auth":{"b.io":{"username":"u","password":"p"},"a.io":null,"c.io":{"username":"x"}}}"#,
            V1,
        )
        .unwrap();
        assert_eq!(r.cache_key_type, CacheKeyType::Registry);
        assert_eq!(r.cache_duration, Some(GoDuration::parse("5m").unwrap()));
        let keys: Vec<_> = r.auth.iter().map(|a| a.0.as_str()).collect();
        assert_eq!(keys, ["b.io", "a.io", "c.io"]);
        assert_eq!(r.auth[1], ("a.io".into(), String::new(), String::new()));
        assert_eq!(r.auth[2].1, "x");
        assert!(!format!("{r:?}").contains("\"p\""));
    }

    #[test]
    fn responses_the_kubelet_refuses_are_refused_without_quoting_them() {
        let ok_head = r#""kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1""#;
        let cases = [
            (r#"{"auth": {"x": {"password": "hunter2"#.to_owned(), "invalid JSON at line 1"),
            ("not json".to_owned(), "invalid JSON at line 1 column 2"),
            (
                r#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1beta1","cacheKeyType":"Image"}"#.to_owned(),
                "actual apiVersion:credentialprovider.kubelet.k8s.io/v1beta1",
            ),
            (
                r#"{"kind":"Other","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Image"}"#.to_owned(),
                "not a CredentialProviderResponse",
            ),
            (format!(r#"{{{ok_head},"cacheKeyType":"Image","extra":"hunter2"}}"#), "does not decode"),
            (format!(r#"{{{ok_head},"cacheKeyType":"Image","cacheDuration":5}}"#), "does not decode"),
            (
                format!(r#"{{{ok_head},"cacheKeyType":"Image","auth":{{"a":{{"password":"hunter2","token":"hunter2"}}}}}}"#),
                "does not decode",
            ),
            (
                format!(r#"{{{ok_head},"cacheKeyType":"Image","auth":{{"a":{{}},"a":{{"password":"hunter2"}}}}}}"#),
                "does not decode",
            ),
            (format!(r#"{{{ok_head},"cacheKeyType":"image"}}"#), "cacheKeyType \"image\""),
            (format!(r#"{{{ok_head}}}"#), "cacheKeyType \"\""),
        ];
        for (body, expected) in cases {
            let err = parse_response(body.as_bytes(), V1).unwrap_err().to_string();
            assert!(err.contains(expected), "{body}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn the_token_cache_type_is_v1_only() {
        let body = |v: &str| {
            format!(
                r#"{{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/{v}","cacheKeyType":"Image","serviceAccountTokenCacheType":"Token"}}"#
            )
        };
        assert!(parse_response(body("v1").as_bytes(), V1).is_ok());
        assert!(parse_response(body("v1beta1").as_bytes(), PluginApiVersion::V1Beta1).is_err());
    }
}
