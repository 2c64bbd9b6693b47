//! Platforms (`os/arch[/variant]`) and which index entries a node of one accepts, in the
//! order its runtime prefers them: containerd's normalisation and its ordered fallback vector
//! (`platforms.Only`, which the CRI pulls with), or containers/image's `WantedPlatforms`
//! (CRI-O), whose variants are compared as written.

use std::fmt;

use serde::Deserialize;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid platform {0:?}: expected os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8")]
pub struct PlatformError(String);

/// The `platform` object of an index entry.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct DescriptorPlatform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        let os = normalize_os(os);
        let (architecture, variant) = normalize_arch(architecture, variant.unwrap_or(""));
        Platform {
            os,
            architecture,
            variant: (!variant.is_empty()).then_some(variant),
        }
    }

    pub fn parse(s: &str) -> Result<Self, PlatformError> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok_part = |p: &str| {
            !p.is_empty()
                && p.len() <= 64
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| ok_part(p)) {
            return Err(PlatformError(s.chars().take(80).collect()));
        }
        Ok(Platform::new(parts[0], parts[1], parts.get(2).copied()))
    }

    pub fn linux_amd64() -> Self {
        Platform::new("linux", "amd64", None)
    }

    pub fn os(&self) -> &str {
        &self.os
    }

    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    pub fn variant(&self) -> Option<&str> {
        self.variant.as_deref()
    }

    /// The platform an index entry names, normalised as containerd does.
    pub fn of_entry(entry: &DescriptorPlatform) -> Platform {
        Platform::new(&entry.os, &entry.architecture, entry.variant.as_deref())
    }

    fn with(&self, architecture: &str, variant: Option<&str>) -> Platform {
        Platform::new(&self.os, architecture, variant)
    }
}

/// Whose rules decide which index entries a node accepts: the runtime that pulls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PlatformRules {
    /// containerd's `platforms.Only` (the CRI plugin's default matcher): the exact platform
    /// first, then older variants of it, then the platforms its CPU also runs (`386` for
    /// `amd64`, `arm` for `arm64`), names normalised (`aarch64` is `arm64`).
    #[default]
    Containerd,
    /// containers/image's `WantedPlatforms` and `MatchesPlatform` (CRI-O, podman): the
    /// variant, then older `arm` variants, then no variant; names compared as written, and
    /// no other architecture.
    ContainersImage,
}

impl PlatformRules {
    /// Where an index entry's `platform` stands among what a node of `wanted` accepts: 0 is
    /// the runtime's first choice, `None` an entry it never takes (another platform, or an
    /// attestation's `unknown/unknown`).
    pub fn rank(self, wanted: &Platform, entry: &DescriptorPlatform) -> Option<usize> {
        if entry.os == "unknown" || entry.architecture == "unknown" {
            return None;
        }
        match self {
            PlatformRules::Containerd => {
                let offered = Platform::of_entry(entry);
                containerd_vector(wanted).iter().position(|p| *p == offered)
            }
            PlatformRules::ContainersImage => {
                let variant = entry.variant.as_deref().unwrap_or("");
                if entry.os != wanted.os || entry.architecture != wanted.architecture {
                    return None;
                }
                wanted_variants(wanted).iter().position(|v| *v == variant)
            }
        }
    }
}

/// containerd/platforms `platformVector`: `wanted`, then what a node of it also runs, best
/// first (its elements are normalised, as `NewMatcher` does with them).
fn containerd_vector(wanted: &Platform) -> Vec<Platform> {
    let mut vector = vec![wanted.clone()];
    let number = |v: &str| v.strip_prefix('v').unwrap_or(v).parse::<u32>().ok();
    match wanted.architecture.as_str() {
        "amd64" => {
            if let Some(n) = wanted.variant().and_then(number) {
                for k in (1..n).rev() {
                    vector.push(wanted.with("amd64", Some(&format!("v{k}"))));
                }
            }
            vector.push(wanted.with("386", None));
        }
        "arm" => {
            if let Some(n) = wanted.variant().and_then(number) {
                for k in (5..n).rev() {
                    vector.push(wanted.with("arm", Some(&format!("v{k}"))));
                }
            }
        }
        "arm64" => {
            let variant = wanted.variant().unwrap_or("v8");
            let (major, minor) = variant.split_once('.').unwrap_or((variant, ""));
            if let Some(mut major) = number(major).filter(|m| *m >= 8) {
                // Only a one-digit minor counts (`len(variant) == 4` in the source).
                let mut minor = match minor.parse::<u32>() {
                    Ok(m) if variant.len() == 4 => m,
                    _ => 0,
                };
                let arm64 = |major: u32, minor: u32| match minor {
                    0 => format!("v{major}"),
                    m => format!("v{major}.{m}"),
                };
                if major == 9 {
                    for m in (0..minor).rev() {
                        vector.push(wanted.with("arm64", Some(&arm64(9, m))));
                    }
                    // v9.0 diverged from v8.5: v9.x runs what v8.(x+5) runs.
                    minor += 5;
                    major = 8;
                    vector.push(wanted.with("arm64", Some(&format!("v8.{minor}"))));
                }
                for m in (0..minor).rev() {
                    vector.push(wanted.with("arm64", Some(&arm64(major, m))));
                }
            }
            let arm = if variant.starts_with("v8.") || variant.starts_with("v9.") {
                "v8"
            } else {
                variant
            };
            vector.extend(containerd_vector(&wanted.with("arm", Some(arm))));
        }
        _ => {}
    }
    vector
}

/// containers/image `WantedPlatforms` for a node of `wanted`: the variants it accepts, best
/// first. CRI-O detects an ARM node's variant from its CPU (`v8` on every arm64 node), which
/// `wanted` carries normalised away for arm64.
fn wanted_variants(wanted: &Platform) -> Vec<&str> {
    const ARM: [&str; 3] = ["v7", "v6", "v5"];
    let variant = match (wanted.architecture.as_str(), wanted.variant()) {
        ("arm64", None) => Some("v8"),
        (_, v) => v,
    };
    let mut variants: Vec<&str> = match (wanted.architecture.as_str(), variant) {
        (_, None) => Vec::new(),
        ("arm", Some(v)) => match ARM.iter().position(|a| *a == v) {
            Some(i) => ARM[i..].to_vec(),
            None => vec![v],
        },
        (_, Some(v)) => vec![v],
    };
    variants.push("");
    variants
}

fn normalize_os(os: &str) -> String {
    let os = os.to_ascii_lowercase();
    match os.as_str() {
        "macos" => "darwin".to_owned(),
        _ => os,
    }
}

/// containerd/platforms `normalizeArch`.
fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant.to_ascii_lowercase();
    let (a, v): (&str, &str) = match arch.as_str() {
        "i386" => ("386", ""),
        "x86_64" | "x86-64" | "amd64" => ("amd64", if variant == "v1" { "" } else { &variant }),
        "aarch64" | "arm64" => return ("arm64".to_owned(), normalize_arm64_variant(&variant)),
        "armhf" => ("arm", "v7"),
        "armel" => ("arm", "v6"),
        "arm" => (
            "arm",
            match variant.as_str() {
                "" | "7" => "v7",
                "5" | "6" | "8" => return ("arm".to_owned(), format!("v{variant}")),
                _ => &variant,
            },
        ),
        _ => (&arch, &variant),
    };
    (a.to_owned(), v.to_owned())
}

/// containerd/platforms' arm64 variants: `v8` (and `8`, `v8.0`) is no variant, a `.0` minor
/// is dropped, `9` is `v9`.
fn normalize_arm64_variant(variant: &str) -> String {
    let (major, minor) = variant
        .split_once('.')
        .map_or((variant, None), |(major, minor)| (major, Some(minor)));
    let minor = minor.filter(|m| *m != "0");
    let major = major.strip_prefix('v').unwrap_or(major);
    match (major, minor) {
        ("" | "8", None) => String::new(),
        (major, None) => format!("v{major}"),
        (major, Some(minor)) => format!("v{major}.{minor}"),
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Platform {
    type Err = PlatformError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::parse(s)
    }
}

impl serde::Serialize for Platform {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn entry(os: &str, arch: &str, variant: Option<&str>) -> DescriptorPlatform {
        DescriptorPlatform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        }
    }

    /// containerd/platforms `TestOnly`: what a node of each platform accepts and refuses.
    #[rstest]
    #[case("linux/amd64", &["linux/amd64", "linux/386"], &["linux/amd64/v2", "linux/arm/v7", "linux/arm64", "windows/amd64", "windows/arm"])]
    #[case("linux/amd64/v2", &["linux/amd64", "linux/amd64/v1", "linux/amd64/v2", "linux/386"], &["linux/amd64/v3", "linux/amd64/v4", "linux/arm/v7", "linux/arm64", "windows/amd64", "windows/arm"])]
    #[case("linux/386", &["linux/386"], &["linux/amd64", "linux/arm/v7", "linux/arm64", "windows/amd64", "windows/arm"])]
    #[case("windows/amd64", &["windows/amd64"], &["linux/amd64", "linux/arm/v7", "linux/arm64", "windows/arm"])]
    #[case("linux/arm/v8", &["linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7", "linux/arm/v8"], &["linux/amd64", "linux/arm/v4", "linux/arm64", "windows/amd64", "windows/arm"])]
    #[case("linux/arm/v7", &["linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7"], &["linux/amd64", "linux/arm/v4", "linux/arm/v8", "linux/arm64", "windows/amd64", "windows/arm"])]
    #[case("linux/arm/v6", &["linux/arm/v5", "linux/arm/v6"], &["linux/amd64", "linux/arm", "linux/arm/v4", "linux/arm/v7", "linux/arm/v8", "linux/arm64", "windows/amd64", "windows/arm"])]
    #[case("linux/arm/v5", &["linux/arm/v5"], &["linux/amd64", "linux/arm", "linux/arm/v4", "linux/arm/v6", "linux/arm/v7", "linux/arm/v8", "linux/arm64", "windows/amd64", "windows/arm"])]
    #[case("linux/arm/v4", &["linux/arm/v4"], &["linux/amd64", "linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7", "linux/arm/v8", "linux/arm64", "windows/amd64", "windows/arm"])]
    #[case("linux/arm64/v9", &["linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7", "linux/arm/v8", "linux/arm64", "linux/arm64/v8", "linux/arm64/v8.1", "linux/arm64/v8.2", "linux/arm64/v8.3", "linux/arm64/v8.4", "linux/arm64/v8.5", "linux/arm64/v9", "linux/arm64/v9.0"], &["linux/amd64", "linux/arm/v4", "windows/amd64", "windows/arm", "linux/arm64/v8.6"])]
    #[case("linux/arm64/v8.1", &["linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7", "linux/arm/v8", "linux/arm64", "linux/arm64/v8", "linux/arm64/v8.1"], &["linux/amd64", "linux/arm/v4", "linux/arm/v9", "linux/arm64/v9", "windows/amd64", "windows/arm"])]
    #[case("linux/arm64", &["linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7", "linux/arm/v8", "linux/arm64", "linux/arm64/v8"], &["linux/amd64", "linux/arm/v4", "linux/arm/v9", "linux/arm64/v9", "windows/amd64", "windows/arm"])]
    fn containerd_accepts_what_its_own_tests_say(
        #[case] node: &str,
        #[case] accepted: &[&str],
        #[case] refused: &[&str],
    ) {
        let node = Platform::parse(node).unwrap();
        for offered in accepted {
            let rank = PlatformRules::Containerd.rank(&node, &parsed_entry(offered));
            assert!(rank.is_some(), "{node} should take {offered}");
        }
        for offered in refused {
            let rank = PlatformRules::Containerd.rank(&node, &parsed_entry(offered));
            assert_eq!(rank, None, "{node} should not take {offered}");
        }
    }

    /// An entry as an index writes it: `os/arch[/variant]`, not normalised.
    fn parsed_entry(s: &str) -> DescriptorPlatform {
        let parts: Vec<&str> = s.split('/').collect();
        entry(parts[0], parts[1], parts.get(2).copied())
    }

    /// The order the runtime prefers, best first.
    fn preference(rules: PlatformRules, node: &str, offered: &[&str]) -> Vec<String> {
        let node = Platform::parse(node).unwrap();
        let mut ranked: Vec<(usize, &str)> = offered
            .iter()
            .filter_map(|o| Some((rules.rank(&node, &parsed_entry(o))?, *o)))
            .collect();
        ranked.sort();
        ranked.into_iter().map(|(_, o)| o.to_owned()).collect()
    }

    #[test]
    fn containerd_prefers_the_exact_platform_then_older_variants_then_other_architectures() {
        let all = [
            "linux/386",
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm64/v8",
            "linux/amd64",
            "linux/amd64/v2",
            "linux/amd64/v3",
        ];
        let c = PlatformRules::Containerd;
        assert_eq!(
            preference(c, "linux/arm/v7", &all),
            ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
        );
        assert_eq!(
            preference(c, "linux/arm64", &all),
            [
                "linux/arm64/v8",
                "linux/arm/v7",
                "linux/arm/v6",
                "linux/arm/v5"
            ]
        );
        assert_eq!(
            preference(c, "linux/amd64/v3", &all),
            [
                "linux/amd64/v3",
                "linux/amd64/v2",
                "linux/amd64",
                "linux/386"
            ]
        );
        assert_eq!(
            preference(c, "linux/amd64", &all),
            ["linux/amd64", "linux/386"]
        );
    }

    /// containers/image `WantedPlatforms` (platform_matcher.go): arm walks down v7, v6, v5 and
    /// then no variant; arm64 takes `v8` or no variant; nothing crosses architectures; names
    /// are compared as the index writes them.
    #[test]
    fn containers_image_walks_arm_variants_only_and_compares_names_as_written() {
        let ci = PlatformRules::ContainersImage;
        let all = [
            "linux/386",
            "linux/arm",
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/arm/v8",
            "linux/arm64",
            "linux/arm64/v8",
            "linux/aarch64",
            "linux/amd64",
            "linux/amd64/v2",
        ];
        assert_eq!(
            preference(ci, "linux/arm/v7", &all),
            ["linux/arm/v6", "linux/arm/v5", "linux/arm"]
        );
        assert_eq!(
            preference(ci, "linux/arm64", &all),
            ["linux/arm64/v8", "linux/arm64"]
        );
        assert_eq!(preference(ci, "linux/amd64", &all), ["linux/amd64"]);
        assert_eq!(
            preference(ci, "linux/amd64/v2", &all),
            ["linux/amd64/v2", "linux/amd64"]
        );
    }

    #[test]
    fn attestations_are_never_taken() {
        for rules in [PlatformRules::Containerd, PlatformRules::ContainersImage] {
            let rank = rules.rank(&Platform::linux_amd64(), &entry("unknown", "unknown", None));
            assert_eq!(rank, None);
        }
    }

    #[rstest]
    #[case("linux/arm64/v8", "linux/arm64")]
    #[case("linux/arm64/v8.0", "linux/arm64")]
    #[case("linux/arm64/v9.0", "linux/arm64/v9")]
    #[case("linux/arm64/9", "linux/arm64/v9")]
    #[case("linux/arm64/v8.2", "linux/arm64/v8.2")]
    #[case("linux/amd64/v1", "linux/amd64")]
    #[case("linux/armhf", "linux/arm/v7")]
    fn normalises_like_containerd(#[case] given: &str, #[case] normal: &str) {
        assert_eq!(Platform::parse(given).unwrap().to_string(), normal);
    }

    #[rstest]
    #[case("linux")]
    #[case("linux/amd64/v8/x")]
    #[case("linux//amd64")]
    #[case("linux/amd 64")]
    fn rejects(#[case] s: &str) {
        assert!(Platform::parse(s).is_err());
    }

    #[test]
    fn displays_normalised() {
        assert_eq!(
            Platform::parse("linux/aarch64/v8").unwrap().to_string(),
            "linux/arm64"
        );
        assert_eq!(
            Platform::parse("linux/arm").unwrap().to_string(),
            "linux/arm/v7"
        );
    }
}
