//! The kubelet's `validateCredentialProviderConfig` (`pkg/credentialprovider/plugin/config.go`),
//! rule for rule and in its order, with its field-error wording (`providers.name: Invalid value:
//! ...`), so an operator sees here what the kubelet would say on the node.
//!
//! The `KubeletServiceAccountTokenForCredentialProviders` feature gate is taken as on (beta and
//! on by default since Kubernetes 1.34), so `tokenAttributes` is validated, not forbidden.

use std::collections::HashSet;

use super::config::{EnvVar, ProviderDoc, TokenAttributesDoc};
use super::duration::GoDuration;
use crate::credentials::keyring::check_schemeless_url;

/// The plugin API a provider speaks (`providers[].apiVersion`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PluginApiVersion {
    V1Alpha1,
    V1Beta1,
    V1,
}

/// Sorted, as the kubelet lists them in its "supported values".
const PLUGIN_API_VERSIONS: [(&str, PluginApiVersion); 3] = [
    ("credentialprovider.kubelet.k8s.io/v1", PluginApiVersion::V1),
    (
        "credentialprovider.kubelet.k8s.io/v1alpha1",
        PluginApiVersion::V1Alpha1,
    ),
    (
        "credentialprovider.kubelet.k8s.io/v1beta1",
        PluginApiVersion::V1Beta1,
    ),
];

impl PluginApiVersion {
    fn parse(text: &str) -> Option<Self> {
        PLUGIN_API_VERSIONS
            .iter()
            .find(|(name, _)| *name == text)
            .map(|&(_, v)| v)
    }

    pub(crate) fn as_str(self) -> &'static str {
        PLUGIN_API_VERSIONS
            .iter()
            .find(|&&(_, v)| v == self)
            .map(|&(name, _)| name)
            .expect("every version is listed")
    }
}

/// The service-account token cache types `tokenAttributes.cacheType` may name, sorted.
const TOKEN_CACHE_TYPES: [&str; 2] = ["ServiceAccount", "Token"];

/// One validated provider.
#[derive(Debug)]
pub(crate) struct ProviderSpec {
    pub(crate) name: String,
    pub(crate) match_images: Vec<String>,
    pub(crate) default_cache_duration: GoDuration,
    pub(crate) api_version: PluginApiVersion,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<EnvVar>,
    pub(crate) token_attributes: Option<TokenAttributesDoc>,
}

/// kubelet's `validateCredentialProviderConfig`; the errors are its field errors, in its order.
pub(super) fn validate(providers: Vec<ProviderDoc>) -> Result<Vec<ProviderSpec>, Vec<String>> {
    let mut errs = Vec::new();
    if providers.is_empty() {
        errs.push(required(
            "providers",
            "at least 1 item in plugins is required",
        ));
    }
    let mut seen = HashSet::new();
    let mut specs = Vec::with_capacity(providers.len());
    for provider in providers {
        let name = provider.name.unwrap_or_default();
        if name.contains('/') {
            errs.push(invalid(
                "providers.name",
                &name,
                "provider name cannot contain '/'",
            ));
        }
        if name.contains(' ') {
            errs.push(invalid(
                "providers.name",
                &name,
                "provider name cannot contain spaces",
            ));
        }
        if name == "." {
            errs.push(invalid(
                "providers.name",
                &name,
                "provider name cannot be '.'",
            ));
        }
        if name == ".." {
            errs.push(invalid(
                "providers.name",
                &name,
                "provider name cannot be '..'",
            ));
        }
        if !seen.insert(name.clone()) {
            errs.push(format!("providers.name: Duplicate value: {name:?}"));
        }

        let api_version_text = provider.api_version.unwrap_or_default();
        let api_version = PluginApiVersion::parse(&api_version_text);
        if api_version_text.is_empty() {
            errs.push(required("providers.apiVersion", ""));
        } else if api_version.is_none() {
            let supported: Vec<String> = PLUGIN_API_VERSIONS
                .iter()
                .map(|(n, _)| format!("{n:?}"))
                .collect();
            errs.push(format!(
                "providers.apiVersion: Unsupported value: {api_version_text:?}: supported values: {}",
                supported.join(", ")
            ));
        }

        let match_images = provider.match_images.unwrap_or_default();
        if match_images.is_empty() {
            errs.push(required(
                "providers.matchImages",
                "at least 1 item in matchImages is required",
            ));
        }
        for image in &match_images {
            if let Err(reason) = check_schemeless_url(image) {
                let detail = format!("match image is invalid: {reason}");
                errs.push(invalid("providers.matchImages", image, &detail));
            }
        }

        match provider.default_cache_duration {
            None => errs.push(required("providers.defaultCacheDuration", "")),
            Some(d) if d.is_negative() => errs.push(format!(
                "providers.defaultCacheDuration: Invalid value: {d}: defaultCacheDuration must be greater than or equal to 0"
            )),
            Some(_) => {}
        }

        if let Some(attrs) = &provider.token_attributes {
            validate_token_attributes(attrs, &api_version_text, &mut errs);
        }

        if let (Some(api_version), Some(default_cache_duration)) =
            (api_version, provider.default_cache_duration)
        {
            specs.push(ProviderSpec {
                name,
                match_images,
                default_cache_duration,
                api_version,
                args: provider.args.unwrap_or_default(),
                env: provider.env.unwrap_or_default(),
                token_attributes: provider.token_attributes,
            });
        }
    }
    if errs.is_empty() {
        Ok(specs)
    } else {
        Err(errs)
    }
}

fn validate_token_attributes(
    attrs: &TokenAttributesDoc,
    api_version: &str,
    errs: &mut Vec<String>,
) {
    const PATH: &str = "providers.tokenAttributes";
    if attrs
        .service_account_token_audience
        .as_deref()
        .unwrap_or("")
        .is_empty()
    {
        errs.push(required(&format!("{PATH}.serviceAccountTokenAudience"), ""));
    }
    if attrs.require_service_account.is_none() {
        errs.push(required(&format!("{PATH}.requireServiceAccount"), ""));
    }
    if api_version != PluginApiVersion::V1.as_str() {
        errs.push(format!(
            "{PATH}: Forbidden: tokenAttributes is only supported for {} API version",
            PluginApiVersion::V1.as_str()
        ));
    }
    let required_keys = attrs
        .required_service_account_annotation_keys
        .as_deref()
        .unwrap_or_default();
    let optional_keys = attrs
        .optional_service_account_annotation_keys
        .as_deref()
        .unwrap_or_default();
    if attrs.require_service_account == Some(false) && !required_keys.is_empty() {
        errs.push(format!(
            "{PATH}.requiredServiceAccountAnnotationKeys: Forbidden: requireServiceAccount cannot be false when requiredServiceAccountAnnotationKeys is set"
        ));
    }
    annotation_keys(
        &format!("{PATH}.requiredServiceAccountAnnotationKeys"),
        required_keys,
        errs,
    );
    annotation_keys(
        &format!("{PATH}.optionalServiceAccountAnnotationKeys"),
        optional_keys,
        errs,
    );
    let mut both: Vec<&String> = required_keys
        .iter()
        .filter(|k| optional_keys.contains(*k))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if !both.is_empty() {
        both.sort();
        let listed: Vec<String> = both.iter().map(|k| format!("{k:?}")).collect();
        errs.push(format!(
            "{PATH}: Invalid value: []string{{{}}}: annotation keys cannot be both required and optional",
            listed.join(", ")
        ));
    }
    match attrs.cache_type.as_deref().unwrap_or("") {
        "" => errs.push(required(
            &format!("{PATH}.cacheType"),
            &format!(
                "cacheType is required to be set when tokenAttributes is specified. Supported values are: {}",
                TOKEN_CACHE_TYPES.join(", ")
            ),
        )),
        known if TOKEN_CACHE_TYPES.contains(&known) => {}
        other => {
            let supported: Vec<String> = TOKEN_CACHE_TYPES.iter().map(|t| format!("{t:?}")).collect();
            errs.push(format!(
                "{PATH}.cacheType: Unsupported value: {other:?}: supported values: {}",
                supported.join(", ")
            ));
        }
    }
}

/// kubelet's `validateServiceAccountAnnotationKeys`: each a qualified name (case-insensitive, as
/// for object annotations), none twice.
fn annotation_keys(path: &str, keys: &[String], errs: &mut Vec<String>) {
    let mut seen = HashSet::new();
    for key in keys {
        for msg in qualified_name_errors(&key.to_lowercase()) {
            errs.push(invalid(path, key, &msg));
        }
        if !seen.insert(key) {
            errs.push(format!("{path}: Duplicate value: {key:?}"));
        }
    }
}

const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// apimachinery's `IsQualifiedName`: an optional DNS-subdomain prefix and `/`, then a name of at
/// most 63 bytes.
fn qualified_name_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_owned());
            } else {
                if prefix.len() > 253 {
                    errs.push("prefix part must be no more than 253 bytes".to_owned());
                }
                if !is_dns1123_subdomain(prefix) {
                    errs.push(format!("prefix part {DNS1123_SUBDOMAIN_MSG}"));
                }
            }
            *name
        }
        _ => {
            return vec![format!(
                "a qualified name {QUALIFIED_NAME_MSG} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            )];
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 bytes".to_owned());
    }
    if !is_qualified_name_part(name) {
        errs.push(format!("name part {QUALIFIED_NAME_MSG}"));
    }
    errs
}

/// `^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$`
fn is_qualified_name_part(name: &str) -> bool {
    let bytes = name.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// `^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
fn is_dns1123_subdomain(value: &str) -> bool {
    let lower_alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    value.split('.').all(|label| {
        let bytes = label.as_bytes();
        match (bytes.first(), bytes.last()) {
            (Some(first), Some(last)) => {
                lower_alnum(first)
                    && lower_alnum(last)
                    && bytes.iter().all(|b| lower_alnum(b) || *b == b'-')
            }
            _ => false,
        }
    })
}

/// `field.Required`.
fn required(path: &str, detail: &str) -> String {
    if detail.is_empty() {
        format!("{path}: Required value")
    } else {
        format!("{path}: Required value: {detail}")
    }
}

/// `field.Invalid` of a string value.
fn invalid(path: &str, value: &str, detail: &str) -> String {
    format!("{path}: Invalid value: {value:?}: {detail}")
}
