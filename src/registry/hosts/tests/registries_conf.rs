//! CRI-O's registries.conf: prefixes, rewriting, mirrors, `blocked`, `insecure`, bounds.

use super::*;

#[test]
fn the_documented_example_rewrites_prefix_to_each_location() {
    let route =
        crio("registries.conf/docs-example.conf").route(&image("example.com/foo/image:latest"));
    assert_eq!(route.fallback, Fallback::PerSource);
    assert!(
        route
            .source
            .ends_with("docs-example.conf [[registry]] prefix \"example.com/foo\""),
        "{}",
        route.source
    );
    let got: Vec<_> = route
        .endpoints
        .iter()
        .map(|e| (e.host.as_str(), e.repository.as_str(), e.scheme, e.mirror))
        .collect();
    assert_eq!(
        got,
        [
            (
                "example-mirror-0.local",
                "mirror-for-foo/image",
                Scheme::Https,
                true
            ),
            (
                "example-mirror-1.local",
                "mirrors/foo/image",
                Scheme::HttpsThenHttp,
                true
            ),
            (
                "internal-registry-for-example.com",
                "bar/image",
                Scheme::Https,
                false
            ),
        ]
    );
    assert!(route.endpoints[1].skip_verify && !route.endpoints[0].skip_verify);
    assert_eq!(route.for_tag().count(), 3);

    let route = crio("registries.conf/docs-example.conf").route(&image("example.com/other:1"));
    assert_eq!(route.source, "default");
    assert_eq!(hosts(&route.endpoints), ["example.com"]);
}

#[test]
fn pull_from_mirror_picks_mirrors_for_tags_and_digests() {
    let conf = crio("registries.conf/crio.conf");
    let tag = conf.route(&image("nginx:1.27"));
    let got = hosts_and_repositories(&tag);
    assert_eq!(
        got,
        [
            ("mirror.gcr.example", "library/nginx"),
            ("tag-mirror.example:5000", "hub/library/nginx"),
            ("registry-1.docker.io", "library/nginx"),
        ]
    );
    assert_eq!(tag.endpoints[1].scheme, Scheme::HttpsThenHttp);
    let digest = conf.route(&image(&format!("nginx@{DIGEST}")));
    assert_eq!(
        hosts(&digest.endpoints),
        [
            "mirror.gcr.example",
            "digest-mirror.example",
            "registry-1.docker.io"
        ]
    );
    assert_eq!(digest.endpoints[1].repository, "hub/library/nginx");
}

#[test]
fn the_longest_prefix_wins() {
    let route = crio("registries.conf/crio.conf").route(&image("busybox:1.36"));
    assert!(
        route
            .source
            .ends_with("prefix \"docker.io/library/busybox\""),
        "{}",
        route.source
    );
    let [e] = &route.endpoints[..] else {
        panic!("{route:?}")
    };
    assert_eq!(
        (e.host.as_str(), e.repository.as_str(), e.mirror),
        ("busybox-registry.example", "mirrored/busybox", false)
    );
}

#[test]
fn a_wildcard_prefix_matches_subdomains_only() {
    let conf = crio("registries.conf/crio.conf");
    let route = conf.route(&image("a.internal.example/team/app:1"));
    let got = hosts_and_repositories(&route);
    assert_eq!(
        got,
        [
            ("cache.internal.example:5000", "team/app"),
            ("a.internal.example", "team/app")
        ]
    );
    assert_eq!(
        conf.route(&image("internal.example/team/app")).source,
        "default"
    );
}

#[test]
fn mirror_by_digest_only_keeps_tags_on_the_primary() {
    let conf = crio("registries.conf/crio.conf");
    assert_eq!(
        hosts(&conf.route(&image("quay.io/org/app:1")).endpoints),
        ["quay.io"]
    );
    assert_eq!(
        hosts(
            &conf
                .route(&image(&format!("quay.io/org/app@{DIGEST}")))
                .endpoints
        ),
        ["quay-mirror.example", "quay.io"]
    );
}

#[test]
fn blocked_registries_refuse_the_pull_and_say_where() {
    let conf = crio("registries.conf/crio.conf");
    let route = conf.route(&image("blocked.example/app:1"));
    assert!(route.endpoints.is_empty());
    let why = route.blocked.expect("blocked");
    assert!(
        why.contains("crio.conf") && why.contains("\"blocked.example\""),
        "{why}"
    );
    // Each source is checked on its own reference: an unblocked mirror still serves.
    let route = conf.route(&image("partly-blocked.example/app:1"));
    assert_eq!(route.blocked, None);
    assert_eq!(hosts(&route.endpoints), ["unblocked-mirror.example"]);
}

#[test]
fn insecure_means_https_then_http_without_verification() {
    let route = crio("registries.conf/crio.conf").route(&image("insecure.example:5000/app"));
    let [e] = &route.endpoints[..] else {
        panic!("{route:?}")
    };
    assert_eq!((e.scheme, e.skip_verify), (Scheme::HttpsThenHttp, true));
}

#[test]
fn a_rewrite_to_a_non_canonical_reference_refuses_the_pull() {
    let route = crio("registries.conf/crio.conf").route(&image("bad-rewrite.example/app:1"));
    assert!(route.endpoints.is_empty());
    assert!(
        route.blocked.as_deref().unwrap_or("").contains("canonical"),
        "{route:?}"
    );
}

#[test]
fn the_v1_format_converts_block_and_insecure() {
    let conf = crio("registries.conf/v1.conf");
    assert!(
        conf.route(&image("registry.untrusted.com/x"))
            .blocked
            .is_some()
    );
    let e = &conf.route(&image("registry3.com/x")).endpoints[0];
    assert_eq!(e.scheme, Scheme::HttpsThenHttp);
    assert_eq!(conf.route(&image("registry1.com/x")).source, "default");
}

#[test]
fn refused_registries_conf_values() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[registries.block]\nregistries = [\"a\"]\n[[registry]]\nlocation = \"b\"\n",
            "mixing",
        ),
        (
            "[[registry]]\nlocation = \"a\"\n[[registry.mirror]]\nlocation = \"m\"\npull-from-mirror = \"sometimes\"\n",
            "unsupported pull-from-mirror",
        ),
        (
            "[[registry]]\nlocation = \"a\"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = \"m\"\npull-from-mirror = \"all\"\n",
            "at the same time",
        ),
        (
            "[[registry]]\nlocation = \"a\"\npull-from-mirror = \"all\"\n",
            "non-mirror",
        ),
        ("[[registry]]\nlocation = \"https://a\"\n", "URI schemes"),
        ("[[registry]]\nprefix = \"*.a.com/x\"\n", "wildcarded"),
        (
            "[[registry]]\nlocation = \"a\"\ninsecure = true\n[[registry]]\nprefix = \"b\"\nlocation = \"a\"\n",
            "conflicting",
        ),
        ("short-name-mode = \"sometimes\"\n", "short-name mode"),
    ];
    for (text, want) in cases {
        let path = write(dir.path(), "registries.conf", text);
        let err = NodeHosts::load_registries_conf(&path).unwrap_err();
        assert!(matches!(err, HostsError::Invalid { .. }), "{text}: {err:?}");
        assert!(err.to_string().contains(want), "{text}: {err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}

#[test]
fn the_first_of_a_prefix_wins() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "registries.conf",
        "[[registry]]\nprefix = \"a.example\"\nlocation = \"first.example\"\n\
         [[registry]]\nprefix = \"a.example\"\nlocation = \"second.example\"\n",
    );
    let route = NodeHosts::load_registries_conf(&path)
        .unwrap()
        .route(&image("a.example/x"));
    assert_eq!(hosts(&route.endpoints), ["first.example"]);
}

#[test]
fn registries_conf_is_read_with_a_bound_and_named_when_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "registries.conf", "[[registry]\nlocation = ");
    let err = NodeHosts::load_registries_conf(&path).unwrap_err();
    assert!(matches!(err, HostsError::Toml { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );

    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(MAX_FILE_BYTES + 1)
        .unwrap();
    let err = NodeHosts::load_registries_conf(&path).unwrap_err();
    assert!(
        matches!(err, HostsError::Read(crate::io::ReadError::TooLarge { .. })),
        "{err:?}"
    );
}

#[test]
fn nothing_configured_is_the_plain_default() {
    let route = NodeHosts::default().route(&image("nginx"));
    assert_eq!(route.source, "default");
    assert_eq!(hosts(&route.endpoints), ["registry-1.docker.io"]);
    assert_eq!(route.endpoints[0].repository, "library/nginx");
}
