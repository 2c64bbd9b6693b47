//! Which addresses pullgate may connect to: the SSRF guard.
//!
//! Whoever may create a Pod chooses the image string, and so the host pullgate connects to
//! from the webhook's network position. The guard refuses loopback, link-local (cloud metadata
//! at 169.254.169.254), unspecified, multicast and broadcast addresses, also in their
//! IPv4-mapped IPv6 forms, after DNS resolution and on every hop (redirects, token realms),
//! unless an allow-list names them. Private ranges stay allowed, because in-cluster registries
//! are common; they can be denied by CIDR.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why an address was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{ip} is {why}; pullgate does not connect there (egress guard)")]
pub struct Refused {
    pub ip: IpAddr,
    pub why: &'static str,
}

/// The egress guard's rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Off: every address is allowed (`pullgate check` on a workstation, tests).
    pub enabled: bool,
    /// Always allowed, even when built-in rules or `deny` refuse them.
    pub allow: Vec<IpNet>,
    /// Refused in addition to the built-in rules (e.g. the node network).
    pub deny: Vec<IpNet>,
}

impl EgressPolicy {
    /// The guard with only its built-in rules.
    pub fn guarded() -> Self {
        EgressPolicy {
            enabled: true,
            ..EgressPolicy::default()
        }
    }

    /// Whether pullgate may connect to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        if !self.enabled {
            return Ok(());
        }
        // `::ffff:127.0.0.1` reaches 127.0.0.1; judge what the packet really reaches.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.allow.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        if let Some(why) = built_in(ip) {
            return Err(Refused { ip, why });
        }
        if self.deny.iter().any(|net| net.contains(&ip)) {
            return Err(Refused {
                ip,
                why: "in a denied range",
            });
        }
        Ok(())
    }
}

fn built_in(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Some("a loopback address"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("a link-local address"),
        IpAddr::V4(v4) if v4.is_unspecified() || v4.octets()[0] == 0 => {
            Some("an unspecified address")
        }
        IpAddr::V4(v4) if v4.is_multicast() || v4.is_broadcast() => {
            Some("a multicast or broadcast address")
        }
        IpAddr::V6(v6) if v6.is_loopback() => Some("a loopback address"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("an unspecified address"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("a link-local address"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("a multicast address"),
        _ => None,
    }
}

/// A DNS resolver that drops the addresses the policy refuses, so no connection is ever
/// opened to them; when nothing is left, the lookup fails with [`Refused`].
#[derive(Clone, Debug)]
pub(super) struct GuardedResolver {
    policy: Arc<EgressPolicy>,
}

impl GuardedResolver {
    pub(super) fn new(policy: Arc<EgressPolicy>) -> Self {
        GuardedResolver { policy }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            admit(&policy, found).map_err(|refused| {
                tracing::warn!(host, ip = %refused.ip, why = refused.why, "egress refused");
                Box::new(refused) as Box<dyn std::error::Error + Send + Sync>
            })
        })
    }
}

/// What is left of a name's addresses once the refused ones are dropped: a name resolving to
/// an allowed and a refused address (a DNS-rebinding setup) connects only to the allowed one.
/// An error, naming the first refused address, when none is left.
fn admit(
    policy: &EgressPolicy,
    found: impl IntoIterator<Item = SocketAddr>,
) -> Result<Addrs, Refused> {
    let mut refused = None;
    let allowed: Vec<SocketAddr> = found
        .into_iter()
        .filter(|addr| match policy.check(addr.ip()) {
            Ok(()) => true,
            Err(e) => {
                refused.get_or_insert(e);
                false
            }
        })
        .collect();
    match (allowed.is_empty(), refused) {
        (true, Some(refused)) => Err(refused),
        _ => Ok(Box::new(allowed.into_iter())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_built_in_rules_refuse_what_an_attacker_would_aim_at() {
        let guard = EgressPolicy::guarded();
        for refused in [
            "127.0.0.1",
            "127.255.0.9",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(
                guard.check(ip(refused)).is_err(),
                "{refused} must be refused"
            );
        }
        for allowed in [
            "10.0.0.5",
            "192.168.1.1",
            "172.16.0.1",
            "8.8.8.8",
            "fd00::1",
            "2001:db8::1",
        ] {
            assert!(
                guard.check(ip(allowed)).is_ok(),
                "{allowed} must be allowed"
            );
        }
        assert_eq!(
            guard.check(ip("169.254.169.254")).unwrap_err().to_string(),
            "169.254.169.254 is a link-local address; pullgate does not connect there (egress guard)"
        );
    }

    #[test]
    fn allow_beats_the_built_in_rules_and_deny_adds_ranges() {
        let guard = EgressPolicy {
            enabled: true,
            allow: vec!["127.0.0.1/32".parse().unwrap()],
            deny: vec!["10.0.0.0/8".parse().unwrap()],
        };
        assert!(guard.check(ip("127.0.0.1")).is_ok());
        assert!(guard.check(ip("::ffff:127.0.0.1")).is_ok());
        assert!(guard.check(ip("127.0.0.2")).is_err());
        assert_eq!(
            guard.check(ip("10.1.2.3")).unwrap_err().why,
            "in a denied range"
        );
        assert!(guard.check(ip("192.168.0.1")).is_ok());
    }

    #[test]
    fn a_disabled_guard_allows_everything() {
        assert!(EgressPolicy::default().check(ip("127.0.0.1")).is_ok());
    }

    #[tokio::test]
    async fn the_resolver_drops_refused_addresses() {
        let resolver = GuardedResolver::new(Arc::new(EgressPolicy::guarded()));
        let err = match resolver.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost must be refused"),
            Err(e) => e,
        };
        assert!(err.is::<Refused>(), "{err}");

        // Allowed by CIDR, the same name resolves.
        let allowing = EgressPolicy {
            allow: vec!["127.0.0.1/32".parse().unwrap()],
            ..EgressPolicy::guarded()
        };
        let resolver = GuardedResolver::new(Arc::new(allowing));
        let addrs: Vec<SocketAddr> = match resolver.resolve("localhost".parse().unwrap()).await {
            Ok(addrs) => addrs.collect(),
            Err(e) => panic!("allowed localhost refused: {e}"),
        };
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip() == ip("127.0.0.1")), "{addrs:?}");
    }

    #[test]
    fn a_name_with_allowed_and_refused_addresses_keeps_only_the_allowed() {
        let at = |s: &str| SocketAddr::new(ip(s), 0);
        let guard = EgressPolicy {
            deny: vec!["10.0.0.0/8".parse().unwrap()],
            ..EgressPolicy::guarded()
        };
        let mixed = [
            at("169.254.169.254"),
            at("192.168.1.10"),
            at("::1"),
            at("10.1.2.3"),
            at("2001:db8::7"),
            at("::ffff:127.0.0.1"),
        ];
        let kept: Vec<SocketAddr> = admit(&guard, mixed).expect("two are allowed").collect();
        assert_eq!(kept, [at("192.168.1.10"), at("2001:db8::7")]);

        let refused = match admit(&guard, [at("10.9.9.9"), at("127.0.0.53")]) {
            Ok(_) => panic!("nothing is allowed"),
            Err(refused) => refused,
        };
        assert_eq!(
            refused.ip,
            ip("10.9.9.9"),
            "the first refused address is named"
        );
        // A name with no address at all is the resolver's error, not the guard's.
        assert_eq!(admit(&guard, []).expect("nothing refused").count(), 0);
    }
}
