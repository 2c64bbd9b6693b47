//! Reading `--image-credential-provider-config` as the kubelet's
//! `pkg/credentialprovider/plugin/config.go` does (`readCredentialProviderConfig`, `decode`): a
//! file, or a directory whose `*.json`, `*.yaml` and `*.yml` files are merged in lexical order; each a
//! `CredentialProviderConfig` of `kubelet.config.k8s.io/v1`, `v1beta1` or `v1alpha1`, decoded
//! strictly (an unknown field is an error). Validation is in [`super::validate`].

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ProviderError;
use super::duration::GoDuration;
use crate::io::read_file;

/// A config file bigger than this is a mistake; the kubelet's are a few hundred bytes.
const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;

const CONFIG_GROUP: &str = "kubelet.config.k8s.io";
const CONFIG_VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha1"];
const CONFIG_KIND: &str = "CredentialProviderConfig";

/// One `providers[]` entry as written, before validation. Every field is optional here because
/// the kubelet reports a missing one as a validation error, not a decoding error.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ProviderDoc {
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) match_images: Option<Vec<String>>,
    #[serde(default)]
    pub(super) default_cache_duration: Option<GoDuration>,
    #[serde(default)]
    pub(super) api_version: Option<String>,
    #[serde(default)]
    pub(super) args: Option<Vec<String>>,
    #[serde(default)]
    pub(super) env: Option<Vec<EnvVar>>,
    #[serde(default)]
    pub(super) token_attributes: Option<TokenAttributesDoc>,
}

/// `ExecEnvVar`. Its value may be a secret, so `Debug` leaves it out.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnvVar {
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) value: Option<String>,
}

impl fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvVar")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// `ServiceAccountTokenAttributes` (KEP-4412), only in `kubelet.config.k8s.io/v1`.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct TokenAttributesDoc {
    #[serde(default)]
    pub(crate) service_account_token_audience: Option<String>,
    #[serde(default)]
    pub(crate) cache_type: Option<String>,
    #[serde(default)]
    pub(crate) require_service_account: Option<bool>,
    #[serde(default)]
    pub(crate) required_service_account_annotation_keys: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) optional_service_account_annotation_keys: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConfigDoc {
    #[serde(default, rename = "kind")]
    _kind: Option<String>,
    #[serde(default, rename = "apiVersion")]
    _api_version: Option<String>,
    #[serde(default)]
    providers: Option<Vec<ProviderDoc>>,
}

/// What the decoder reads first to choose the type, as `runtime.Decode` does before decoding
/// strictly: a wrong kind is reported as such, not as unknown fields.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    api_version: Option<String>,
}

/// kubelet's `readCredentialProviderConfig`: the providers of every file, in order, a name seen
/// twice (in one file or across files) refused before validation.
pub(super) fn read_config(path: &Path) -> Result<Vec<ProviderDoc>, ProviderError> {
    let meta = std::fs::metadata(path).map_err(|source| ProviderError::ConfigAccess {
        path: path.to_owned(),
        source,
    })?;
    let files = if meta.is_dir() {
        config_files_in(path)?
    } else {
        vec![path.to_owned()]
    };
    let mut merged: Vec<ProviderDoc> = Vec::new();
    for file in &files {
        let bytes = read_file(file, MAX_CONFIG_FILE_BYTES, "credential provider config")?;
        for provider in decode(&bytes, file)? {
            let name = provider.name.clone().unwrap_or_default();
            if merged
                .iter()
                .any(|p| p.name.as_deref().unwrap_or("") == name)
            {
                return Err(ProviderError::DuplicateName { name });
            }
            merged.push(provider);
        }
    }
    Ok(merged)
}

/// The `*.json`, `*.yaml` and `*.yml` entries that are not directories, sorted bytewise as Go's
/// `sort.Strings` sorts them.
fn config_files_in(dir: &Path) -> Result<Vec<PathBuf>, ProviderError> {
    let read_dir = |source| ProviderError::ConfigAccess {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir)? {
        let entry = entry.map_err(read_dir)?;
        // Go's DirEntry.IsDir does not follow symlinks; a link to a directory is kept, and then
        // fails to read, as in the kubelet.
        let is_dir = entry.file_type().map_err(read_dir)?.is_dir();
        let path = entry.path();
        let wanted = path
            .extension()
            .is_some_and(|ext| ext == "json" || ext == "yaml" || ext == "yml");
        if !is_dir && wanted {
            files.push(path);
        }
    }
    files.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    if files.is_empty() {
        return Err(ProviderError::NoConfigFiles {
            dir: dir.to_owned(),
        });
    }
    Ok(files)
}

/// kubelet's `decode`: JSON when the text opens with `{` (the universal decoder's test), YAML
/// otherwise; the kind and group checked, then the body decoded strictly.
fn decode(bytes: &[u8], file: &Path) -> Result<Vec<ProviderDoc>, ProviderError> {
    let syntax = |detail: String| ProviderError::Syntax {
        file: file.to_owned(),
        detail,
    };
    let is_json = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{');
    let meta: TypeMeta = parse(bytes, is_json, file).map_err(syntax)?;
    let wrong = |message: String| ProviderError::Kind {
        file: file.to_owned(),
        message,
    };
    let kind = meta
        .kind
        .filter(|k| !k.is_empty())
        .ok_or_else(|| wrong("Object 'Kind' is missing".to_owned()))?;
    let api_version = meta
        .api_version
        .filter(|v| !v.is_empty())
        .ok_or_else(|| wrong("Object 'apiVersion' is missing".to_owned()))?;
    let version = api_version
        .strip_prefix(CONFIG_GROUP)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|v| CONFIG_VERSIONS.contains(v));
    if version.is_none() || kind != CONFIG_KIND {
        return Err(wrong(format!(
            "no kind {kind:?} is registered for version {api_version:?}"
        )));
    }
    let config: ConfigDoc = parse(bytes, is_json, file).map_err(syntax)?;
    let providers = config.providers.unwrap_or_default();
    // tokenAttributes exists only in v1: an older config naming it fails strict decoding.
    if version != Some("v1")
        && let Some(at) = providers.iter().position(|p| p.token_attributes.is_some())
    {
        return Err(syntax(format!(
            "strict decoding error: unknown field \"providers[{at}].tokenAttributes\""
        )));
    }
    Ok(providers)
}

fn parse<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    is_json: bool,
    file: &Path,
) -> Result<T, String> {
    if is_json {
        return serde_json::from_slice(bytes).map_err(|e| e.to_string());
    }
    crate::io::parse_yaml(bytes, &file.display().to_string())
}
