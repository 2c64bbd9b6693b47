//! Docker Hub's pull accounting as its answers state it: `ratelimit-limit: 100;w=21600` and
//! `ratelimit-remaining: 76;w=21600` (the IETF RateLimit header draft's `N;w=SECONDS` form), on
//! manifest GETs and HEADs alike. Absent headers mean the pull is not limited (a paid plan, or
//! a registry that does not meter).

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde::Serialize;

/// Longest window believed: a day. A registry cannot switch pullgate's counted GETs off for
/// longer by claiming a longer one.
const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// What the registry says is left of a credential's (or an address's) pulls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    /// Pulls allowed in a window.
    pub limit: u32,
    /// Pulls left in the current window.
    pub remaining: u32,
    /// The window's length.
    #[serde(rename = "window_s", serialize_with = "seconds")]
    pub window: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

impl RateLimit {
    /// The window when a registry gives a count without one: Docker Hub's, since its 2025
    /// limits (10 or 100 pulls an hour).
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);

    /// The limit stated by `headers`, when both headers are there and readable.
    pub fn from_headers(headers: &HeaderMap) -> Option<RateLimit> {
        let (limit, limit_window) = quota(headers, "ratelimit-limit")?;
        let (remaining, remaining_window) = quota(headers, "ratelimit-remaining")?;
        let window = limit_window
            .or(remaining_window)
            .unwrap_or(Self::DEFAULT_WINDOW)
            .clamp(Duration::from_secs(1), MAX_WINDOW);
        Some(RateLimit {
            limit,
            remaining: remaining.min(limit),
            window,
        })
    }
}

/// `N` and the `w=SECONDS` parameter of a `N;w=SECONDS` header, the first value when there
/// are several.
fn quota(headers: &HeaderMap, name: &str) -> Option<(u32, Option<Duration>)> {
    let value = headers.get(name)?.to_str().ok()?;
    let first = value.split(',').next()?;
    let mut parts = first.split(';').map(str::trim);
    let count = parts.next()?.parse::<u32>().ok()?;
    let window = parts
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("w"))
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Some((count, window))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};
    use rstest::rstest;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn docker_hub_form() {
        let h = headers(&[
            ("ratelimit-limit", "100;w=21600"),
            ("ratelimit-remaining", "76;w=21600"),
            ("docker-ratelimit-source", "192.0.2.1"),
        ]);
        assert_eq!(
            RateLimit::from_headers(&h),
            Some(RateLimit {
                limit: 100,
                remaining: 76,
                window: Duration::from_secs(21600)
            })
        );
    }

    #[rstest]
    #[case::no_window(&[("ratelimit-limit", "10"), ("ratelimit-remaining", "3")], Some((10, 3, 3600)))]
    #[case::spaces(&[("RateLimit-Limit", " 10 ; w = 60 "), ("ratelimit-remaining", "0;w=60")], Some((10, 0, 60)))]
    #[case::window_on_remaining_only(&[("ratelimit-limit", "10"), ("ratelimit-remaining", "4;w=120")], Some((10, 4, 120)))]
    #[case::remaining_above_limit(&[("ratelimit-limit", "10;w=60"), ("ratelimit-remaining", "99;w=60")], Some((10, 10, 60)))]
    #[case::huge_window(&[("ratelimit-limit", "10;w=99999999"), ("ratelimit-remaining", "1;w=99999999")], Some((10, 1, 86400)))]
    #[case::zero_window(&[("ratelimit-limit", "10;w=0"), ("ratelimit-remaining", "1;w=0")], Some((10, 1, 1)))]
    #[case::list(&[("ratelimit-limit", "10;w=60, 1000;w=86400"), ("ratelimit-remaining", "5;w=60")], Some((10, 5, 60)))]
    #[case::only_limit(&[("ratelimit-limit", "10;w=60")], None)]
    #[case::garbage(&[("ratelimit-limit", "lots"), ("ratelimit-remaining", "some")], None)]
    #[case::negative(&[("ratelimit-limit", "10"), ("ratelimit-remaining", "-1")], None)]
    #[case::none(&[], None)]
    fn forms(#[case] pairs: &[(&'static str, &str)], #[case] want: Option<(u32, u32, u64)>) {
        let got = RateLimit::from_headers(&headers(pairs))
            .map(|r| (r.limit, r.remaining, r.window.as_secs()));
        assert_eq!(got, want);
    }
}
