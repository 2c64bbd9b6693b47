//! Platforms (`os/arch[/variant]`) and how an index entry is chosen for one, following
//! containerd's normalisation and its strict matcher (the default pull path of containerd 2.x).

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

    /// Whether an index entry with this `platform` object serves this platform. Entries
    /// without a platform match (containerd keeps them), attestation entries
    /// (`unknown/unknown`) never do.
    pub fn matches(&self, entry: Option<&DescriptorPlatform>) -> bool {
        let Some(p) = entry else { return true };
        if p.os == "unknown" || p.architecture == "unknown" {
            return false;
        }
        *self == Platform::new(&p.os, &p.architecture, p.variant.as_deref())
    }
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
        "aarch64" | "arm64" => (
            "arm64",
            match variant.as_str() {
                "8" | "v8" | "v8.0" => "",
                "9" => "v9",
                "9.0" => "v9",
                _ => &variant,
            },
        ),
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

    #[rstest]
    #[case::exact("linux/amd64", "linux", "amd64", None, true)]
    #[case::arm64_v8_equiv("linux/arm64", "linux", "arm64", Some("v8"), true)]
    #[case::arm64_v8_requested("linux/arm64/v8", "linux", "arm64", None, true)]
    #[case::aarch64_alias("linux/aarch64", "linux", "arm64", None, true)]
    #[case::x86_64_alias("linux/x86_64", "linux", "amd64", None, true)]
    #[case::arm_default_v7("linux/arm", "linux", "arm", Some("v7"), true)]
    #[case::arm_v6_not_v7("linux/arm/v6", "linux", "arm", Some("v7"), false)]
    #[case::amd64_v3_not_plain("linux/amd64", "linux", "amd64", Some("v3"), false)]
    #[case::amd64_v1_is_plain("linux/amd64", "linux", "amd64", Some("v1"), true)]
    #[case::other_arch("linux/amd64", "linux", "arm64", None, false)]
    #[case::other_os("linux/amd64", "windows", "amd64", None, false)]
    #[case::attestation("linux/amd64", "unknown", "unknown", None, false)]
    fn matching(
        #[case] want: &str,
        #[case] os: &str,
        #[case] arch: &str,
        #[case] variant: Option<&str>,
        #[case] expect: bool,
    ) {
        let p = Platform::parse(want).unwrap();
        assert_eq!(p.matches(Some(&entry(os, arch, variant))), expect);
    }

    #[test]
    fn entry_without_platform_matches() {
        assert!(Platform::linux_amd64().matches(None));
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
