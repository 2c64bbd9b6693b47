//! containerd's `config_path`: which directory applies, host order, fields, defaults, bounds.

use super::*;

#[test]
fn docker_io_uses_its_directory_hosts_in_file_order_then_the_server() {
    let route = containerd("hosts/certs.d").route(&image("nginx"));
    assert!(
        route.source.ends_with("certs.d/docker.io/hosts.toml"),
        "{}",
        route.source
    );
    assert_eq!(route.fallback, Fallback::PerRequest);
    assert_eq!(
        hosts(&route.endpoints),
        [
            "public-mirror.example.com",
            "docker-mirror.internal",
            "registry-1.docker.io"
        ]
    );
    let [public, private, upstream] = &route.endpoints[..] else {
        panic!()
    };
    assert_eq!((public.pull, public.resolve), (true, false));
    assert_eq!((private.pull, private.resolve), (true, true));
    // The server without capabilities gets all of them.
    assert_eq!((upstream.pull, upstream.resolve), (true, true));
    for e in &route.endpoints {
        assert_eq!(e.repository, "library/nginx");
        assert_eq!(e.path_prefix, "/v2");
        assert_eq!(e.scheme, Scheme::Https);
    }
    // Mirrors get ?ns=docker.io; registry-1.docker.io is docker.io's own host.
    assert_eq!(public.namespace_query.as_deref(), Some("docker.io"));
    assert!(public.mirror && private.mirror && !upstream.mirror);
    assert_eq!(upstream.namespace_query, None);
    // A relative CA path is relative to the host directory, and absolute.
    assert_eq!(
        private.ca_files,
        [fixture("hosts/certs.d/docker.io/docker-mirror.crt")]
    );
    assert!(private.ca_files[0].is_absolute());
}

#[test]
fn capabilities_choose_the_hosts_for_tags_digests_and_fetches() {
    let route = containerd("hosts/certs.d").route(&image("nginx"));
    assert_eq!(
        hosts(route.for_tag()),
        ["docker-mirror.internal", "registry-1.docker.io"]
    );
    assert_eq!(hosts(route.for_manifest(&image("nginx:1.27"))).len(), 2);
    assert_eq!(hosts(route.for_digest()).len(), 3);
    assert_eq!(
        hosts(route.for_manifest(&image(&format!("nginx@{DIGEST}")))).len(),
        3
    );

    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "r.example/hosts.toml",
        "server = \"https://r.example\"\ncapabilities = [\"push\"]\n\
         [host.\"https://resolver.example\"]\ncapabilities = [\"resolve\"]\n",
    );
    let route = NodeHosts::load_hosts_dir(dir.path())
        .unwrap()
        .route(&image("r.example/a"));
    // Resolving a tag needs pull and resolve together; nothing here has pull.
    assert_eq!(route.for_tag().count(), 0);
    assert_eq!(route.for_digest().count(), 0);
    // Fetch loops over every host, but only when some host can pull.
    assert_eq!(route.for_fetch().count(), 0);
    write(
        dir.path(),
        "r.example/hosts.toml",
        "server = \"https://r.example\"\n[host.\"https://resolver.example\"]\ncapabilities = [\"RESOLVE\"]\n",
    );
    let route = NodeHosts::load_hosts_dir(dir.path())
        .unwrap()
        .route(&image("r.example/a"));
    assert_eq!(hosts(route.for_tag()), ["r.example"]);
    assert_eq!(hosts(route.for_fetch()), ["resolver.example", "r.example"]);
}

#[test]
fn a_host_without_a_directory_falls_back_to_default_dir() {
    let route = containerd("hosts/certs.d").route(&image("ghcr.io/org/app:1"));
    assert!(
        route.source.ends_with("certs.d/_default/hosts.toml"),
        "{}",
        route.source
    );
    assert_eq!(hosts(&route.endpoints), ["registry.example.com", "ghcr.io"]);
    assert_eq!(
        route.endpoints[0].namespace_query.as_deref(),
        Some("ghcr.io")
    );
    let upstream = &route.endpoints[1];
    assert_eq!(
        (upstream.scheme, upstream.path_prefix.as_str()),
        (Scheme::Https, "/v2")
    );
    assert_eq!(
        (upstream.pull, upstream.resolve, upstream.mirror),
        (true, true, false)
    );
}

#[test]
fn a_host_with_a_port_finds_its_directory_and_the_underscore_form_first() {
    let nodes = containerd("hosts/certs.d");
    let route = nodes.route(&image("myregistry.io:5000/team/app:1"));
    assert!(
        route.source.ends_with("myregistry.io:5000/hosts.toml"),
        "{}",
        route.source
    );
    assert_eq!(
        hosts(&route.endpoints),
        ["192.168.31.250:5000", "myregistry.io:5000"]
    );
    // An http host with skip_verify has TLS settings: containerd tries https first.
    assert_eq!(route.endpoints[0].scheme, Scheme::HttpsThenHttp);
    assert!(route.endpoints[0].skip_verify);
    assert_eq!(route.endpoints[1].namespace_query, None);

    let route = nodes.route(&image("myregistry.io:5001/app"));
    assert!(
        route.source.ends_with("myregistry.io_5001_/hosts.toml"),
        "{}",
        route.source
    );
    assert_eq!(hosts(&route.endpoints), ["underscore.example"]);
}

#[test]
fn the_documented_host_fields_parse() {
    let route = containerd("hosts/certs.d").route(&image("quay.io/org/app:1"));
    let dir = fixture("hosts/certs.d/quay.io");
    assert_eq!(
        hosts(&route.endpoints),
        [
            "mirror.registry",
            "mirror-bak.registry",
            "mirror.registry",
            "test-1.registry",
            "test-2.registry",
            "test-3.registry",
            "non-compliant-mirror.registry",
            "plain-mirror.registry:8443",
            "quay.io",
        ]
    );
    let e = &route.endpoints;
    // A header given as a list sends each value.
    let values: Vec<_> = e[0]
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
        .collect();
    assert_eq!(values, [("x-custom-2", "value1"), ("x-custom-2", "value2")]);
    assert!(e[0].headers[0].1.is_sensitive());
    assert!(!e[0].skip_verify);
    // A path gets /v2 appended; override_path keeps it as it is.
    assert_eq!(
        (e[1].path_prefix.as_str(), e[1].skip_verify),
        ("/us/v2", true)
    );
    assert_eq!(e[6].path_prefix, "/v2/upstream");
    assert_eq!((e[6].pull, e[6].resolve), (true, false));
    // http:// without TLS settings is plain HTTP; no scheme is https.
    assert_eq!(e[2].scheme, Scheme::Http);
    assert_eq!(
        (e[7].scheme, e[7].path_prefix.as_str()),
        (Scheme::Https, "/v2")
    );
    assert_eq!(
        e[3].ca_files,
        [
            PathBuf::from("/etc/certs/test-1-ca.pem"),
            dir.join("special.pem")
        ]
    );
    // The documented ["client.pem", ""] pair: containerd makes "" absolute, i.e. the dir.
    assert_eq!(
        e[3].client_certs,
        [
            (
                PathBuf::from("/etc/certs/client.cert"),
                Some(PathBuf::from("/etc/certs/client.key"))
            ),
            (PathBuf::from("/etc/certs/client.pem"), Some(dir.clone())),
        ]
    );
    assert_eq!(
        e[4].client_certs,
        [(PathBuf::from("/etc/certs/client.pem"), None)]
    );
    assert_eq!(e[5].client_certs.len(), 2);
    // The top-level header is the server's, given as a string.
    let server = &e[8];
    assert_eq!(server.headers.len(), 1);
    assert_eq!(server.headers[0].1.to_str().unwrap(), "Bearer s3cr3t-token");
    assert!(
        !format!("{route:?}").contains("s3cr3t"),
        "Debug leaks a header value"
    );
    assert!(format!("{route:?}").contains("authorization"));
}

#[test]
fn a_directory_without_hosts_toml_uses_its_certificate_files() {
    // Built here rather than committed: the repository commits no `*.key` file, even a
    // placeholder.
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("certsonly.example");
    std::fs::create_dir(&dir).unwrap();
    for file in [
        "ca.crt",
        "client.cert",
        "client.key",
        "other.cert",
        "notes.txt",
    ] {
        std::fs::write(dir.join(file), "placeholder, not PEM").unwrap();
    }
    let nodes = NodeHosts::load_hosts_dir(root.path()).unwrap();
    let route = nodes.route(&image("certsonly.example/app"));
    assert!(
        route.source.ends_with("(certificate files)"),
        "{}",
        route.source
    );
    let [server] = &route.endpoints[..] else {
        panic!("{route:?}")
    };
    assert_eq!(
        (server.host.as_str(), server.scheme),
        ("certsonly.example", Scheme::Https)
    );
    assert_eq!(server.ca_files, [dir.join("ca.crt")]);
    assert_eq!(
        server.client_certs,
        [
            (dir.join("client.cert"), Some(dir.join("client.key"))),
            (dir.join("other.cert"), None)
        ]
    );
}

#[test]
fn no_file_gives_the_default_server() {
    let nodes = containerd("hosts/no-default");
    let route = nodes.route(&image("example.com/app:1"));
    assert_eq!(route.source, "default");
    let [e] = &route.endpoints[..] else {
        panic!("{route:?}")
    };
    assert_eq!(
        (e.host.as_str(), e.scheme, e.path_prefix.as_str()),
        ("example.com", Scheme::Https, "/v2")
    );
    assert_eq!(
        (e.pull, e.resolve, e.mirror, e.skip_verify),
        (true, true, false, false)
    );
    assert_eq!(e.namespace_query, None);

    let route = nodes.route(&image("docker.io/library/busybox"));
    assert_eq!(hosts(&route.endpoints), ["registry-1.docker.io"]);
    assert_eq!(route.endpoints[0].namespace_query, None);
    assert_eq!(route.endpoints[0].repository, "library/busybox");
}

#[test]
fn a_loopback_registry_without_a_file_gets_https_then_http() {
    let nodes = containerd("hosts/no-default");
    let e = &nodes.route(&image("localhost:5000/app")).endpoints[0];
    assert_eq!((e.scheme, e.skip_verify), (Scheme::HttpsThenHttp, true));
    let e = &nodes.route(&image("127.0.0.1:80/app")).endpoints[0];
    assert_eq!((e.scheme, e.skip_verify), (Scheme::Http, false));
    let e = &nodes.route(&image("localhost/app")).endpoints[0];
    assert_eq!((e.scheme, e.skip_verify), (Scheme::Https, true));
    let e = &nodes.route(&image("registry.local:5000/app")).endpoints[0];
    assert_eq!((e.scheme, e.skip_verify), (Scheme::Https, false));
}

#[test]
fn a_server_only_file_replaces_the_upstream() {
    let route = containerd("hosts/no-default").route(&image("only-server.example/app"));
    let [e] = &route.endpoints[..] else {
        panic!("{route:?}")
    };
    assert_eq!(e.host, "registry.example.com");
    assert_eq!(e.namespace_query.as_deref(), Some("only-server.example"));
    assert!(e.mirror);
}

#[test]
fn http_hosts_are_plain_unless_they_carry_tls_settings() {
    let route = containerd("hosts/no-default").route(&image("plain.example/app"));
    let schemes: Vec<_> = route
        .endpoints
        .iter()
        .map(|e| (e.host.as_str(), e.scheme))
        .collect();
    assert_eq!(
        schemes,
        [
            ("tls.plain.example:5000", Scheme::HttpsThenHttp),
            // Port 80 says plain HTTP even with TLS settings.
            ("port80.plain.example:80", Scheme::Http),
            ("plain.example:8080", Scheme::Http),
        ]
    );
    assert_eq!(
        route.endpoints[0].ca_files,
        [fixture("hosts/no-default/plain.example/ca.pem")]
    );
}

#[test]
fn malformed_toml_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "bad.example/hosts.toml",
        "[host.\"https://x\"\ncapabilities = [",
    );
    let err = NodeHosts::load_hosts_dir(dir.path()).unwrap_err();
    assert!(
        matches!(err, HostsError::Toml { ref path, .. } if *path == file),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
}

#[test]
fn refused_values_name_the_file_and_table() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a/hosts.toml",
        "[host.\"https://m\"]\ncapabilities = [\"fetch\"]\n",
    );
    let err = NodeHosts::load_hosts_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("a/hosts.toml") && err.contains("[host.\"https://m\"]"),
        "{err}"
    );
    assert!(err.contains("unknown capability"), "{err}");

    write(
        dir.path(),
        "a/hosts.toml",
        "[header]\n\"bad header\" = \"x\"\n",
    );
    let err = NodeHosts::load_hosts_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid header name"), "{err}");

    write(dir.path(), "a/hosts.toml", "ca = 3\n");
    let err = NodeHosts::load_hosts_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"ca\""), "{err}");
}

#[test]
fn an_empty_hosts_toml_counts_as_missing() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "e.example/hosts.toml", "");
    write(dir.path(), "e.example/ca.crt", "x");
    let route = NodeHosts::load_hosts_dir(dir.path())
        .unwrap()
        .route(&image("e.example/a"));
    assert_eq!(route.endpoints[0].ca_files.len(), 1);
}

#[test]
fn files_and_directories_are_read_with_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "big.example/hosts.toml", "");
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(MAX_FILE_BYTES + 1)
        .unwrap();
    let err = NodeHosts::load_hosts_dir(dir.path()).unwrap_err();
    assert!(
        matches!(err, HostsError::Read(crate::io::ReadError::TooLarge { .. })),
        "{err:?}"
    );

    let many = tempfile::tempdir().unwrap();
    for i in 0..=MAX_DIR_ENTRIES {
        std::fs::create_dir(many.path().join(format!("h{i}.example"))).unwrap();
    }
    let err = NodeHosts::load_hosts_dir(many.path()).unwrap_err();
    assert!(matches!(err, HostsError::TooManyEntries { .. }), "{err:?}");
}

#[test]
fn a_missing_root_is_an_error() {
    let err = NodeHosts::load_hosts_dir(Path::new("/nonexistent/certs.d")).unwrap_err();
    assert!(matches!(err, HostsError::ListDir { .. }), "{err:?}");
}
