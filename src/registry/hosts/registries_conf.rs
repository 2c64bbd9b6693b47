//! containers-registries.conf(5) as CRI-O reads it through containers/image
//! (`pkg/sysregistriesv2/system_registries_v2.go`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{
    Endpoint, Fallback, HostsError, MAX_FILE_BYTES, Route, Scheme, api_host, reference_domain,
};
use crate::io::read_file;
use crate::oci::reference::ImageRef;

/// A registries.conf, validated and normalised as `postProcessRegistries` does.
#[derive(Debug)]
pub(crate) struct RegistriesConf {
    path: PathBuf,
    /// One per prefix (the first wins), sorted by prefix.
    registries: Vec<Registry>,
}

#[derive(Clone, Debug)]
struct Registry {
    prefix: String,
    /// Empty only for a wildcard prefix: the reference is used as it is.
    location: String,
    insecure: bool,
    blocked: bool,
    mirror_by_digest_only: bool,
    mirrors: Vec<Mirror>,
}

#[derive(Clone, Debug)]
struct Mirror {
    location: String,
    insecure: bool,
    pull_from: PullFromMirror,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PullFromMirror {
    All,
    DigestOnly,
    TagOnly,
}

/// The file: v2 keys, the deprecated v1 `[registries.*]` lists, and the keys pullgate parses
/// only to tell v1 from v2. Other keys are ignored, as BurntSushi/toml leaves undecoded keys.
#[derive(Deserialize, Default)]
#[serde(default)]
struct File {
    registry: Option<Vec<RawRegistry>>,
    #[serde(rename = "unqualified-search-registries")]
    unqualified_search_registries: Option<Vec<String>>,
    #[serde(rename = "short-name-mode")]
    short_name_mode: String,
    #[serde(rename = "credential-helpers")]
    credential_helpers: Option<Vec<String>>,
    #[serde(rename = "additional-layer-store-auth-helper")]
    additional_layer_store_auth_helper: String,
    aliases: Option<toml::Table>,
    registries: Option<V1>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct V1 {
    search: V1List,
    insecure: V1List,
    block: V1List,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct V1List {
    registries: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawRegistry {
    prefix: String,
    location: String,
    insecure: bool,
    blocked: bool,
    #[serde(rename = "mirror-by-digest-only")]
    mirror_by_digest_only: bool,
    #[serde(rename = "pull-from-mirror")]
    pull_from_mirror: String,
    mirror: Vec<RawMirror>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawMirror {
    location: String,
    insecure: bool,
    #[serde(rename = "pull-from-mirror")]
    pull_from_mirror: String,
}

impl RegistriesConf {
    pub(crate) fn load(path: &Path) -> Result<Self, HostsError> {
        let bytes = read_file(path, MAX_FILE_BYTES, "registries.conf")?;
        let file: File = toml::from_slice(&bytes).map_err(|source| HostsError::Toml {
            path: path.to_owned(),
            source,
        })?;
        let registries = post_process(file).map_err(|(table, reason)| HostsError::Invalid {
            path: path.to_owned(),
            table,
            reason,
        })?;
        Ok(RegistriesConf {
            path: path.to_owned(),
            registries,
        })
    }

    /// containers/image `newImageSource`: the matching `[[registry]]`'s pull sources, each
    /// rewritten to its location, minus the sources `newDockerClient` refuses as blocked.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn route(&self, image: &ImageRef) -> Route {
        let domain = reference_domain(image);
        let name = format!("{domain}/{}", image.repository());
        let Some(registry) = self.find(&name) else {
            return Route {
                blocked: None,
                endpoints: vec![Endpoint::plain(api_host(domain), image.repository())],
                source: "default".to_owned(),
                fallback: Fallback::PerSource,
            };
        };
        let source = format!(
            "{} [[registry]] prefix {:?}",
            self.path.display(),
            registry.prefix
        );
        let suffix = match (image.digest(), image.tag()) {
            (Some(digest), _) => format!("@{digest}"),
            (None, Some(tag)) => format!(":{tag}"),
            (None, None) => String::new(),
        };
        let mut endpoints = Vec::new();
        let mut blocked = None;
        for (location, insecure, mirror) in pull_sources(registry, image.digest().is_some()) {
            let physical = match rewrite(&name, &suffix, &registry.prefix, location) {
                Ok(physical) => physical,
                // PullSourcesFromReference fails, and with it the whole pull.
                Err(reason) => {
                    return Route {
                        blocked: Some(format!("{source}: {reason}")),
                        endpoints: Vec::new(),
                        source,
                        fallback: Fallback::PerSource,
                    };
                }
            };
            let physical_name = format!("{}/{}", physical.registry(), physical.repository());
            if let Some(refused) = self.find(&physical_name).filter(|r| r.blocked) {
                blocked.get_or_insert_with(|| {
                    format!(
                        "{} [[registry]] prefix {:?} has blocked = true",
                        self.path.display(),
                        refused.prefix
                    )
                });
                continue;
            }
            endpoints.push(Endpoint {
                // detectPropertiesHelper: https, then plain http if `insecure` and https failed.
                scheme: if insecure {
                    Scheme::HttpsThenHttp
                } else {
                    Scheme::Https
                },
                skip_verify: insecure,
                mirror,
                ..Endpoint::plain(api_host(physical.registry()), physical.repository())
            });
        }
        Route {
            blocked: if endpoints.is_empty() { blocked } else { None },
            endpoints,
            source,
            fallback: Fallback::PerSource,
        }
    }

    /// `FindRegistry`: the longest matching prefix; equal lengths go to the first in prefix
    /// order.
    fn find(&self, name: &str) -> Option<&Registry> {
        let mut found: Option<&Registry> = None;
        for registry in &self.registries {
            if ref_matching_prefix(name, &registry.prefix).is_some()
                && found.is_none_or(|f| registry.prefix.len() > f.prefix.len())
            {
                found = Some(registry);
            }
        }
        found
    }
}

/// `PullSourcesFromReference`: the mirrors that apply to a tag or digest reference, in order,
/// then the primary location. As (location, insecure, is a mirror).
fn pull_sources(registry: &Registry, digested: bool) -> Vec<(&str, bool, bool)> {
    let mirrors = registry.mirrors.iter().filter(|m| {
        if registry.mirror_by_digest_only {
            return digested;
        }
        match m.pull_from {
            PullFromMirror::All => true,
            PullFromMirror::DigestOnly => digested,
            PullFromMirror::TagOnly => !digested,
        }
    });
    mirrors
        .map(|m| (m.location.as_str(), m.insecure, true))
        .chain([(registry.location.as_str(), registry.insecure, false)])
        .collect()
}

/// `rewriteReference`: the matched prefix replaced by the location. The result must parse as
/// a canonical reference (`reference.ParseNamed`), else the pull fails.
fn rewrite(name: &str, suffix: &str, prefix: &str, location: &str) -> Result<ImageRef, String> {
    let full = format!("{name}{suffix}");
    let matched = ref_matching_prefix(&full, prefix)
        .ok_or_else(|| format!("invalid prefix {prefix:?} for reference {full:?}"))?;
    let (new_name, rewritten) = if location.is_empty() {
        (name.to_owned(), full.clone())
    } else {
        let new_name = format!("{location}{}", &name[matched.min(name.len())..]);
        (new_name.clone(), format!("{new_name}{suffix}"))
    };
    let parsed = ImageRef::parse(&rewritten)
        .map_err(|e| format!("rewriting {full:?} to {rewritten:?}: {e}"))?;
    if format!("{}/{}", parsed.registry(), parsed.repository()) != new_name {
        return Err(format!(
            "rewriting {full:?} to {rewritten:?}: repository name must be canonical"
        ));
    }
    Ok(parsed)
}

/// `refMatchingPrefix`: the length of the match, if `prefix` matches `reference` up to a
/// `:`, `/` or `@` (or the end); `*.example.com` matches any subdomain in the host part.
fn ref_matching_prefix(reference: &str, prefix: &str) -> Option<usize> {
    if let Some(domain) = prefix.strip_prefix('*') {
        // refMatchingSubdomainPrefix: the first ".example.com", with no "/" before it.
        let index = reference.find(domain)?;
        if reference[..index].contains('/') {
            return None;
        }
        let end = index + domain.len();
        return match reference.as_bytes().get(end) {
            None | Some(b':' | b'/' | b'@') => Some(end),
            Some(_) => None,
        };
    }
    let rest = reference.strip_prefix(prefix)?;
    match rest.as_bytes().first() {
        // Lets "example.com:5000" match "example.com": containers/image warns not to rely on it.
        None | Some(b':' | b'/' | b'@') => Some(prefix.len()),
        Some(_) => None,
    }
}

/// `parseLocation`: trailing slashes dropped, URL schemes refused.
fn parse_location(input: &str) -> Result<String, String> {
    let trimmed = input.trim_end_matches('/');
    if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
        return Err(format!(
            "invalid location {input:?}: URI schemes are not supported"
        ));
    }
    Ok(trimmed.to_owned())
}

type Invalid = (String, String);

/// `loadConfigFile` + `postProcessRegistries` (+ `ConvertToV2` for the v1 format).
fn post_process(file: File) -> Result<Vec<Registry>, Invalid> {
    let top = |reason: String| ("top level".to_owned(), reason);
    let v1 = file.registries.as_ref().filter(|v1| {
        v1.search.registries.is_some()
            || v1.insecure.registries.is_some()
            || v1.block.registries.is_some()
    });
    let v2_set = file.registry.is_some()
        || file.unqualified_search_registries.is_some()
        || file.credential_helpers.is_some()
        || !file.short_name_mode.is_empty()
        || !file.additional_layer_store_auth_helper.is_empty()
        || file.aliases.is_some();
    let raw = match v1 {
        Some(_) if v2_set => return Err(top("mixing sysregistry v1/v2 is not supported".into())),
        Some(v1) => convert_v1(v1).map_err(top)?,
        None => file.registry.unwrap_or_default(),
    };
    if !matches!(
        file.short_name_mode.as_str(),
        "" | "disabled" | "enforcing" | "permissive"
    ) {
        return Err(top(format!(
            "invalid short-name mode: {:?}",
            file.short_name_mode
        )));
    }
    for search in file.unqualified_search_registries.iter().flatten() {
        parse_location(search).map_err(top)?;
    }
    let mut registries = Vec::with_capacity(raw.len());
    for raw in raw {
        let table = format!(
            "[[registry]] prefix {:?} location {:?}",
            raw.prefix, raw.location
        );
        registries.push(post_process_registry(raw).map_err(|r| (table, r))?);
    }
    // The same location (or wildcard prefix) must agree on insecure and blocked.
    for (i, a) in registries.iter().enumerate() {
        let key = |r: &Registry| {
            if r.location.is_empty() {
                r.prefix.clone()
            } else {
                r.location.clone()
            }
        };
        for b in &registries[..i] {
            if key(a) == key(b) && (a.insecure != b.insecure || a.blocked != b.blocked) {
                let what = if a.insecure != b.insecure {
                    "insecure"
                } else {
                    "blocked"
                };
                return Err((
                    format!("[[registry]] location {:?}", a.location),
                    format!("defined multiple times with conflicting {what:?} setting"),
                ));
            }
        }
    }
    // The first of a prefix wins; sorted as containers/image keeps them.
    let mut unique: Vec<Registry> = Vec::with_capacity(registries.len());
    for registry in registries {
        if !unique.iter().any(|u| u.prefix == registry.prefix) {
            unique.push(registry);
        }
    }
    unique.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    Ok(unique)
}

fn post_process_registry(raw: RawRegistry) -> Result<Registry, String> {
    let location = parse_location(&raw.location)?;
    let prefix = if raw.prefix.is_empty() {
        if location.is_empty() {
            return Err("invalid condition: both location and prefix are unset".into());
        }
        location.clone()
    } else {
        let prefix = parse_location(&raw.prefix)?;
        if !prefix.starts_with("*.") && location.is_empty() {
            return Err(
                "invalid condition: location is unset and prefix is not in the format: *.example.com"
                    .into(),
            );
        }
        prefix
    };
    if prefix.starts_with("*.") && prefix.contains(['/', '@', ':']) {
        return Err(format!(
            "wildcarded prefix should be in the format: *.example.com; {prefix:?} is not"
        ));
    }
    if !raw.pull_from_mirror.is_empty() {
        return Err("pull-from-mirror must not be set for a non-mirror registry".into());
    }
    let mut mirrors = Vec::with_capacity(raw.mirror.len());
    for mirror in raw.mirror {
        let location = parse_location(&mirror.location)?;
        if location.is_empty() {
            return Err("invalid condition: mirror location is unset".into());
        }
        if raw.mirror_by_digest_only && !mirror.pull_from_mirror.is_empty() {
            return Err(format!(
                "cannot set mirror-by-digest-only for the registry and pull-from-mirror for mirror {location:?} at the same time"
            ));
        }
        let pull_from = match mirror.pull_from_mirror.as_str() {
            "" | "all" => PullFromMirror::All,
            "digest-only" => PullFromMirror::DigestOnly,
            "tag-only" => PullFromMirror::TagOnly,
            other => {
                return Err(format!(
                    "unsupported pull-from-mirror value {other:?} for mirror {location:?}"
                ));
            }
        };
        mirrors.push(Mirror {
            location,
            insecure: mirror.insecure,
            pull_from,
        });
    }
    Ok(Registry {
        prefix,
        location,
        insecure: raw.insecure,
        blocked: raw.blocked,
        mirror_by_digest_only: raw.mirror_by_digest_only,
        mirrors,
    })
}

/// `ConvertToV2`: one registry per location named in `block` or `insecure`, in first-seen
/// order (`search` only feeds unqualified search, which pullgate does not use).
fn convert_v1(v1: &V1) -> Result<Vec<RawRegistry>, String> {
    let mut out: Vec<RawRegistry> = Vec::new();
    let lists = [
        (&v1.block.registries, true),
        (&v1.insecure.registries, false),
    ];
    for (list, is_block) in lists {
        for location in list.iter().flatten() {
            let location = parse_location(location)?;
            let index = match out.iter().position(|r| r.location == location) {
                Some(index) => index,
                None => {
                    out.push(RawRegistry {
                        prefix: location.clone(),
                        location,
                        ..RawRegistry::default()
                    });
                    out.len() - 1
                }
            };
            if is_block {
                out[index].blocked = true;
            } else {
                out[index].insecure = true;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn prefixes_match_up_to_a_separator() {
        assert_eq!(
            ref_matching_prefix("example.com/foo/bar", "example.com/foo"),
            Some(15)
        );
        assert_eq!(
            ref_matching_prefix("example.com/foobar", "example.com/foo"),
            None
        );
        // The documented quirk: a prefix without port matches the host with a port.
        assert_eq!(
            ref_matching_prefix("example.com:5000/x", "example.com"),
            Some(11)
        );
        assert_eq!(
            ref_matching_prefix("a.example.com/x", "*.example.com"),
            Some(13)
        );
        assert_eq!(ref_matching_prefix("example.com/x", "*.example.com"), None);
        assert_eq!(
            ref_matching_prefix("a.example.com.evil/x", "*.example.com"),
            None
        );
        assert_eq!(
            ref_matching_prefix("evil.io/a.example.com", "*.example.com"),
            None
        );
    }
}
