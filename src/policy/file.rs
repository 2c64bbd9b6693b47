//! The policy file as written (YAML, through serde-saphyr), before it is validated into a
//! [`super::Policy`]: sections, exemption and registry patterns, platforms.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use super::{ActionTable, Mode, PolicyError};
use crate::oci::platform::Platform;

/// The policy file as written. Sections are `Option`s so that a section whose entries are all
/// commented out (YAML null) means "defaults", like an absent one.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyFile {
    pub(super) mode: Option<Mode>,
    pub(super) platforms: Option<Vec<String>>,
    pub(super) actions: Option<ActionTable>,
    pub(super) exemptions: Option<ExemptionsFile>,
    pub(super) registries: Option<Vec<RegistryFile>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExemptionsFile {
    pub(super) namespaces: Option<Vec<String>>,
    pub(super) images: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RegistryFile {
    pub(super) registry: String,
    pub(super) actions: Option<ActionTable>,
    /// Counts manifest GETs as pulls against a limit (Docker Hub does, by default).
    pub(super) metered: Option<bool>,
}

/// Compiled globs, compared by their source so that policies can be compared.
#[derive(Clone, Debug)]
pub(super) struct Patterns {
    globs: Vec<Glob>,
    set: GlobSet,
}

impl PartialEq for Patterns {
    fn eq(&self, other: &Self) -> bool {
        self.globs == other.globs
    }
}

impl Eq for Patterns {}

impl Patterns {
    /// Compiles the list `field`; errors name an entry as `{field}[i]{suffix}`.
    pub(super) fn compile(
        file: &str,
        field: &str,
        suffix: &str,
        patterns: &[String],
        case_insensitive: bool,
    ) -> Result<Self, PolicyError> {
        let error = |field: String| {
            let file = file.to_owned();
            move |source| PolicyError::Glob {
                file,
                field,
                source,
            }
        };
        let mut builder = GlobSetBuilder::new();
        let mut globs = Vec::with_capacity(patterns.len());
        for (i, pattern) in patterns.iter().enumerate() {
            let glob = GlobBuilder::new(pattern)
                // `*` crosses `/`, so one pattern covers a registry's nested repositories.
                .literal_separator(false)
                .case_insensitive(case_insensitive)
                .build()
                .map_err(error(format!("{field}[{i}]{suffix}")))?;
            builder.add(glob.clone());
            globs.push(glob);
        }
        let set = builder.build().map_err(error(field.to_owned()))?;
        Ok(Patterns { globs, set })
    }

    pub(super) fn is_match(&self, text: &str) -> bool {
        self.set.is_match(text)
    }

    /// The index of the first pattern, in file order, that matches.
    pub(super) fn first_match(&self, text: &str) -> Option<usize> {
        self.set.matches(text).into_iter().min()
    }
}

/// The platforms as given, or linux/amd64 when none are.
pub(super) fn parse_platforms(
    file: &str,
    given: Option<Vec<String>>,
) -> Result<Vec<Platform>, PolicyError> {
    let Some(given) = given else {
        return Ok(vec![Platform::linux_amd64()]);
    };
    if given.is_empty() {
        return Err(PolicyError::NoPlatforms {
            file: file.to_owned(),
        });
    }
    let mut platforms: Vec<Platform> = Vec::with_capacity(given.len());
    for (index, text) in given.iter().enumerate() {
        let platform = Platform::parse(text).map_err(|source| PolicyError::Platform {
            file: file.to_owned(),
            index,
            source,
        })?;
        // `linux/arm64` and `linux/aarch64` are one platform; probing it twice is waste.
        if !platforms.contains(&platform) {
            platforms.push(platform);
        }
    }
    Ok(platforms)
}
