//! Loading the kubelet's config and its plugins, with the kubelet's own cases.

use super::*;

// ---- Loading (plugin.go RegisterCredentialProviderPlugins, config.go and config_test.go) ----

/// Writes `files` (name, text) into a temporary directory with a bin dir holding an executable
/// for every name in `plugins`, then loads `config` (relative to the directory).
fn load(
    files: &[(&str, &str)],
    plugins: &[&str],
    config: &str,
) -> Result<CredentialProviders, String> {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for name in plugins {
        write_plugin(&bin, name, "#!/usr/bin/env python3\n");
    }
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    CredentialProviders::load(&dir.path().join(config), &bin).map_err(|e| e.to_string())
}

fn load_one(yaml: &str) -> Result<CredentialProviders, String> {
    load(
        &[("config.yaml", yaml)],
        &["test", "test1", "test2", "foobar"],
        "config.yaml",
    )
}

fn provider_yaml(config_api: &str, provider: &str) -> String {
    format!(
        "kind: CredentialProviderConfig\napiVersion: kubelet.config.k8s.io/{config_api}\nproviders:\n{provider}"
    )
}

const FOOBAR: &str = "  - name: foobar\n    matchImages: [foobar.registry.io]\n    defaultCacheDuration: 1m\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n";

#[test]
fn the_kubelets_valid_configs_load() {
    let yaml_v1alpha1 = "---\nkind: CredentialProviderConfig\napiVersion: kubelet.config.k8s.io/v1alpha1\nproviders:\n  - name: test\n    matchImages:\n    - \"registry.io/foobar\"\n    defaultCacheDuration: 10m\n    apiVersion: credentialprovider.kubelet.k8s.io/v1alpha1\n    args:\n    - --v=5\n    env:\n    - name: FOO\n      value: BAR";
    // The kubelet's JSON fixture is indented with tabs, which JSON allows and YAML does not.
    let json = "{\n\t\"kind\": \"CredentialProviderConfig\",\n\t\"apiVersion\": \"kubelet.config.k8s.io/v1alpha1\",\n\t\"providers\": [\n\t\t{\n\t\t\t\"name\": \"test\",\n\t\t\t\"matchImages\": [\"registry.io/foobar\"],\n\t\t\t\"defaultCacheDuration\": \"10m\",\n\t\t\t\"apiVersion\": \"credentialprovider.kubelet.k8s.io/v1alpha1\",\n\t\t\t\"args\": [\"--v=5\"],\n\t\t\t\"env\": [{\"name\": \"FOO\", \"value\": \"BAR\"}]\n\t\t}\n\t]\n}";
    let two = |config_api: &str, api: &str| {
        provider_yaml(
            config_api,
            &format!(
                "  - name: test1\n    matchImages:\n    - \"registry.io/one\"\n    defaultCacheDuration: 10m\n    apiVersion: {api}\n  - name: test2\n    matchImages:\n    - \"registry.io/*\"\n    - \"foobar.registry.io/*\"\n    defaultCacheDuration: 10m\n    apiVersion: {api}\n    args:\n    - --v=5\n"
            ),
        )
    };
    for yaml in [
        yaml_v1alpha1.to_owned(),
        json.to_owned(),
        two("v1alpha1", "credentialprovider.kubelet.k8s.io/v1alpha1"),
        two("v1beta1", V1BETA1),
        two("v1", V1),
        provider_yaml(
            "v1",
            &format!(
                "{FOOBAR}    tokenAttributes:\n      serviceAccountTokenAudience: audience\n      requireServiceAccount: true\n      cacheType: Token\n      requiredServiceAccountAnnotationKeys: [now-with-dashes/simple-1, now-with-dashes/simple-2]\n      optionalServiceAccountAnnotationKeys: [now-with-dashes/simple-3]\n"
            ),
        ),
    ] {
        let loaded = load_one(&yaml).unwrap_or_else(|e| panic!("{yaml}\n{e}"));
        assert!(!loaded.is_empty());
    }
}

#[test]
fn the_kubelets_invalid_configs_are_refused_with_its_words() {
    let p = |name: &str, images: &str, duration: &str, api: &str| {
        provider_yaml(
            "v1",
            &format!(
                "  - name: {name}\n    matchImages: {images}\n{duration}    apiVersion: {api}\n"
            ),
        )
    };
    let minute = "    defaultCacheDuration: 1m\n";
    let alpha = "credentialprovider.kubelet.k8s.io/v1alpha1";
    let token =
        |attrs: &str| provider_yaml("v1", &format!("{FOOBAR}    tokenAttributes:\n{attrs}"));
    let cases: Vec<(String, &str)> = vec![
        (
            "kind: CredentialProviderConfig\napiVersion: kubelet.config.k8s.io/v1\nproviders: []\n"
                .into(),
            "providers: Required value: at least 1 item in plugins is required",
        ),
        (
            p("foobar", "[]", minute, alpha),
            "providers.matchImages: Required value: at least 1 item in matchImages is required",
        ),
        (
            p("foobar", "[foobar.registry.io]", "", alpha),
            "providers.defaultCacheDuration: Required value",
        ),
        (
            p("\"foo/../bar\"", "[foobar.registry.io]", minute, alpha),
            r#"providers.name: Invalid value: "foo/../bar": provider name cannot contain '/'"#,
        ),
        (
            p("\".\"", "[foobar.registry.io]", minute, alpha),
            r#"providers.name: Invalid value: ".": provider name cannot be '.'"#,
        ),
        (
            p("\"..\"", "[foobar.registry.io]", minute, alpha),
            r#"providers.name: Invalid value: "..": provider name cannot be '..'"#,
        ),
        (
            p("\"foo bar\"", "[foobar.registry.io]", minute, alpha),
            r#"providers.name: Invalid value: "foo bar": provider name cannot contain spaces"#,
        ),
        (
            p("foobar", "[foobar.registry.io]", minute, "\"\""),
            "providers.apiVersion: Required value",
        ),
        (
            p(
                "foobar",
                "[foobar.registry.io]",
                minute,
                "credentialprovider.kubelet.k8s.io/v1alpha0",
            ),
            r#"providers.apiVersion: Unsupported value: "credentialprovider.kubelet.k8s.io/v1alpha0": supported values: "credentialprovider.kubelet.k8s.io/v1", "credentialprovider.kubelet.k8s.io/v1alpha1", "credentialprovider.kubelet.k8s.io/v1beta1""#,
        ),
        (
            p(
                "foobar",
                "[foobar.registry.io]",
                "    defaultCacheDuration: -1m\n",
                alpha,
            ),
            "providers.defaultCacheDuration: Invalid value: -1m0s: defaultCacheDuration must be greater than or equal to 0",
        ),
        (
            p("foobar", "[\"%invalid%\"]", minute, alpha),
            r#"providers.matchImages: Invalid value: "%invalid%": match image is invalid: "#,
        ),
        (
            token(
                "      requiredServiceAccountAnnotationKeys: [prefix.io/annotation-1]\n      requireServiceAccount: true\n      cacheType: Token\n",
            ),
            "providers.tokenAttributes.serviceAccountTokenAudience: Required value",
        ),
        (
            token("      serviceAccountTokenAudience: audience\n      cacheType: Token\n"),
            "providers.tokenAttributes.requireServiceAccount: Required value",
        ),
        (
            token(
                "      serviceAccountTokenAudience: audience\n      requireServiceAccount: true\n      cacheType: Token\n      requiredServiceAccountAnnotationKeys: [cantendwithadash-, now-with-dashes/simple]\n",
            ),
            r#"providers.tokenAttributes.requiredServiceAccountAnnotationKeys: Invalid value: "cantendwithadash-": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"#,
        ),
        (
            token(
                "      serviceAccountTokenAudience: audience\n      requireServiceAccount: true\n      cacheType: Token\n      optionalServiceAccountAnnotationKeys: [now-with-dashes/simple, now-with-dashes/simple]\n",
            ),
            r#"providers.tokenAttributes.optionalServiceAccountAnnotationKeys: Duplicate value: "now-with-dashes/simple""#,
        ),
        (
            token(
                "      serviceAccountTokenAudience: audience\n      requireServiceAccount: true\n      cacheType: Token\n      requiredServiceAccountAnnotationKeys: [now-with-dashes/simple-1, now-with-dashes/simple-2]\n      optionalServiceAccountAnnotationKeys: [now-with-dashes/simple-2, now-with-dashes/simple-3]\n",
            ),
            r#"providers.tokenAttributes: Invalid value: []string{"now-with-dashes/simple-2"}: annotation keys cannot be both required and optional"#,
        ),
        (
            token(
                "      serviceAccountTokenAudience: audience\n      requireServiceAccount: false\n      cacheType: Token\n      requiredServiceAccountAnnotationKeys: [now-with-dashes/simple-1]\n",
            ),
            "providers.tokenAttributes.requiredServiceAccountAnnotationKeys: Forbidden: requireServiceAccount cannot be false when requiredServiceAccountAnnotationKeys is set",
        ),
        (
            token(
                "      serviceAccountTokenAudience: audience\n      requireServiceAccount: true\n",
            ),
            "providers.tokenAttributes.cacheType: Required value: cacheType is required to be set when tokenAttributes is specified. Supported values are: ServiceAccount, Token",
        ),
        (
            token(
                "      serviceAccountTokenAudience: audience\n      requireServiceAccount: true\n      cacheType: Pod\n",
            ),
            r#"providers.tokenAttributes.cacheType: Unsupported value: "Pod": supported values: "ServiceAccount", "Token""#,
        ),
        (
            provider_yaml(
                "v1",
                &format!(
                    "{}    tokenAttributes:\n      serviceAccountTokenAudience: audience\n      requireServiceAccount: true\n      cacheType: Token\n",
                    FOOBAR.replace(
                        "credentialprovider.kubelet.k8s.io/v1\n",
                        "credentialprovider.kubelet.k8s.io/v1beta1\n"
                    )
                ),
            ),
            "providers.tokenAttributes: Forbidden: tokenAttributes is only supported for credentialprovider.kubelet.k8s.io/v1 API version",
        ),
        // Decoding (config_test.go Test_readCredentialProviderConfig).
        (
            FOOBAR_CONFIG.replace("kind: CredentialProviderConfig", "kind: WrongKind"),
            r#"no kind "WrongKind" is registered for version "kubelet.config.k8s.io/v1""#,
        ),
        (
            FOOBAR_CONFIG.replace("kubelet.config.k8s.io/v1", "foobar/v1alpha1"),
            r#"no kind "CredentialProviderConfig" is registered for version "foobar/v1alpha1""#,
        ),
        (
            FOOBAR_CONFIG.replace(
                "    defaultCacheDuration: 1m\n",
                "    defaultCacheDuration: 1m\n    unknownField: should not be here\n",
            ),
            "unknownField",
        ),
        (
            provider_yaml(
                "v1beta1",
                &format!(
                    "{}    tokenAttributes:\n      serviceAccountTokenAudience: audience\n",
                    FOOBAR.replace("k8s.io/v1\n", "k8s.io/v1beta1\n")
                ),
            ),
            r#"strict decoding error: unknown field "providers[0].tokenAttributes""#,
        ),
        (
            provider_yaml("v1", &format!("{FOOBAR}{FOOBAR}")),
            r#"duplicate provider name "foobar" found in configuration file(s)"#,
        ),
        // metav1.Duration is a JSON string; an unquoted YAML number is not.
        (
            FOOBAR_CONFIG.replace("defaultCacheDuration: 1m", "defaultCacheDuration: 0"),
            "invalid type: integer `0`, expected a duration string",
        ),
        (
            FOOBAR_CONFIG.replace("defaultCacheDuration: 1m", "defaultCacheDuration: 1d"),
            "unknown unit",
        ),
    ];
    for (yaml, expected) in cases {
        let err = load_one(&yaml)
            .err()
            .unwrap_or_else(|| panic!("loaded:\n{yaml}"));
        assert!(
            err.contains(expected),
            "{yaml}\nwant: {expected}\ngot:  {err}"
        );
    }
}

const FOOBAR_CONFIG: &str = "kind: CredentialProviderConfig\napiVersion: kubelet.config.k8s.io/v1\nproviders:\n  - name: foobar\n    matchImages: [foobar.registry.io]\n    defaultCacheDuration: 1m\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n";

#[test]
fn a_config_directory_merges_its_files_in_lexical_order() {
    let one = FOOBAR_CONFIG.replace("foobar", "test1");
    let two_json = r#"{"kind": "CredentialProviderConfig", "apiVersion": "kubelet.config.k8s.io/v1", "providers": [{"name": "test2", "matchImages": ["registry.io/two"], "defaultCacheDuration": "5m", "apiVersion": "credentialprovider.kubelet.k8s.io/v1"}]}"#;
    let files = [
        ("d/config-003.json", two_json),
        ("d/config-002.txt", "not a config"),
        ("d/config-001.yaml", one.as_str()),
    ];
    let loaded = load(&files, &["test1", "test2"], "d").unwrap();
    assert_eq!(format!("{loaded:?}"), r#"["test1", "test2"]"#);

    let dup = [("d/a.yaml", one.as_str()), ("d/b.yml", one.as_str())];
    let err = load(&dup, &["test1"], "d").unwrap_err();
    assert!(err.contains(r#"duplicate provider name "test1""#), "{err}");

    let err = load(&[("d/readme.md", "x")], &[], "d").unwrap_err();
    assert!(
        err.contains("no configuration files found in directory"),
        "{err}"
    );

    let bad = FOOBAR_CONFIG.replace("kind: CredentialProviderConfig", "kind: WrongKind");
    let err = load(
        &[("d/a.yaml", one.as_str()), ("d/b.yaml", &bad)],
        &["test1"],
        "d",
    )
    .unwrap_err();
    assert!(err.contains("no kind \"WrongKind\""), "{err}");
}

#[test]
fn the_bin_dir_and_every_plugin_must_exist_and_be_executable() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(&config, FOOBAR_CONFIG).unwrap();
    let err = CredentialProviders::load(&config, &dir.path().join("nope")).unwrap_err();
    assert!(err.to_string().contains("plugin binary directory"), "{err}");
    assert!(err.to_string().ends_with("did not exist"), "{err}");

    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let err = CredentialProviders::load(&config, &bin).unwrap_err();
    assert!(matches!(err, ProviderError::PluginMissing { .. }), "{err}");

    std::fs::write(bin.join("foobar"), "#!/usr/bin/env python3\n").unwrap();
    let err = CredentialProviders::load(&config, &bin).unwrap_err();
    assert!(
        matches!(err, ProviderError::PluginNotExecutable { .. }),
        "{err}"
    );

    write_plugin(&bin, "foobar", "#!/usr/bin/env python3\n");
    assert!(CredentialProviders::load(&config, &bin).is_ok());
}
