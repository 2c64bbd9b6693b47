//! The keyring and docker config parsing against the kubelet's behaviour.

use super::docker_config::*;
use super::go_glob::*;
use super::keyring::*;
use crate::registry::{Credential, CredentialId};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use rstest::rstest;

const SECRET: &str = "hunter2-TOP-SECRET";

/// A keyring where each key's username is the key itself, so lookups can be read back.
fn keyring_of(keys: &[&str]) -> Keyring {
    let auths: serde_json::Map<String, serde_json::Value> = keys
        .iter()
        .map(|key| {
            let entry = serde_json::json!({ "username": key, "password": SECRET });
            ((*key).to_owned(), entry)
        })
        .collect();
    let doc = serde_json::json!({ "auths": auths });
    let config = parse_docker_config(doc.to_string().as_bytes(), "test").unwrap();
    let mut keyring = Keyring::default();
    keyring.add(&config);
    keyring
}

fn usernames(creds: &[Credential]) -> Vec<&str> {
    creds.iter().map(Credential::username).collect()
}

fn one(json: &str) -> Credential {
    let config = parse_docker_config(json.as_bytes(), "test").unwrap();
    assert_eq!(config.len(), 1);
    config.entries().next().unwrap().1.clone()
}

#[rstest]
#[case::v1_key_via_default_registry(
        &["https://index.docker.io/v1/"], "docker.io/library/nginx", &["https://index.docker.io/v1/"]
    )]
#[case::bare_index_key_via_default_registry(
        &["index.docker.io"], "docker.io/myorg/private", &["index.docker.io"]
    )]
#[case::docker_io_key_direct(&["docker.io"], "docker.io/library/nginx", &["docker.io"])]
#[case::registry_1_is_not_docker_io(&["registry-1.docker.io"], "docker.io/myorg/private", &[])]
#[case::default_registry_only_when_nothing_matched(
        &["index.docker.io", "docker.io"], "docker.io/library/nginx", &["docker.io"]
    )]
#[case::default_registry_not_for_other_hosts(
        &["index.docker.io"], "quay.io/coreos/etcd", &[]
    )]
#[case::star_one_label(&["*.example.com"], "a.example.com/app", &["*.example.com"])]
#[case::star_not_two_labels(&["*.example.com"], "a.b.example.com/app", &[])]
#[case::star_not_zero_labels(&["*.example.com"], "example.com/app", &[])]
#[case::star_inside_label(&["k8s.*.io"], "k8s.gcr.io/pause", &["k8s.*.io"])]
#[case::star_inside_label_other_host(&["k8s.*.io"], "registry.k8s.io/pause", &[])]
// url.Parse takes `?` as the start of the query, so the key is just `registry`.
#[case::question_mark_is_a_query(&["registry?.example.com"], "registry1.example.com/app", &[])]
#[case::class_range(&["r[0-9].example.com"], "r7.example.com/app", &["r[0-9].example.com"])]
#[case::negated_class(&["r[^0-9].example.com"], "r7.example.com/app", &[])]
#[case::malformed_class_matches_nothing(&["r[.example.com"], "r1.example.com/app", &[])]
#[case::no_port_key_vs_port_image(&["registry.example.com"], "registry.example.com:5000/app", &[])]
#[case::port_key(
        &["registry.example.com:5000"], "registry.example.com:5000/app", &["registry.example.com:5000"]
    )]
#[case::port_key_vs_no_port_image(&["registry.example.com:5000"], "registry.example.com/app", &[])]
#[case::ip_port(&["127.0.0.1:5000"], "127.0.0.1:5000/app", &["127.0.0.1:5000"])]
#[case::ip_other_port(&["127.0.0.1:5000"], "127.0.0.1:5001/app", &[])]
#[case::ip_no_port(&["127.0.0.1:5000"], "127.0.0.1/app", &[])]
#[case::ipv6_port(&["[::1]:5000"], "[::1]:5000/app", &["[::1]:5000"])]
#[case::path_is_string_prefix(&["example.com/team"], "example.com/teamx/app", &["example.com/team"])]
#[case::path_prefix(
        &["registry.example.com/team-a"], "registry.example.com/team-a/app", &["registry.example.com/team-a"]
    )]
#[case::path_other_team(&["registry.example.com/team-a"], "registry.example.com/team-b/app", &[])]
#[case::http_scheme(
        &["http://registry.example.com"], "registry.example.com/app", &["http://registry.example.com"]
    )]
#[case::v2_suffix(
        &["https://registry.example.com/v2/"], "registry.example.com/app", &["https://registry.example.com/v2/"]
    )]
#[case::v2_then_path(
        &["registry.example.com/v2/team-a"], "registry.example.com/team-a/app", &["registry.example.com/v2/team-a"]
    )]
#[case::v1_without_slash_is_a_path(&["registry.example.com/v1"], "registry.example.com/app", &[])]
#[case::userinfo_in_key_dropped(
        &["https://me:pw@registry.example.com"], "registry.example.com/app", &["https://me:pw@registry.example.com"]
    )]
#[case::hosts_are_case_sensitive(&["Registry.Example.com"], "registry.example.com/app", &[])]
#[case::most_specific_first(
        &["quay.io", "quay.io/coreos/etcd", "quay.io/coreos"],
        "quay.io/coreos/etcd",
        &["quay.io/coreos/etcd", "quay.io/coreos", "quay.io"]
    )]
#[case::reverse_sort_puts_globs_last(
        &["*.example.com", "a.example.com"], "a.example.com/app", &["a.example.com", "*.example.com"]
    )]
fn lookup_matches_like_the_kubelet(
    #[case] keys: &[&str],
    #[case] image: &str,
    #[case] expected: &[&str],
) {
    assert_eq!(usernames(&keyring_of(keys).lookup(image)), expected);
}

#[rstest]
#[case::v1("https://index.docker.io/v1/", Ok("index.docker.io"))]
#[case::v2_path("http://r.example.com/v2/team", Ok("r.example.com/team"))]
#[case::trailing_slash("r.example.com/", Ok("r.example.com"))]
#[case::query_and_fragment("r.example.com/a?x=1#frag", Ok("r.example.com/a"))]
#[case::question_mark_glob_is_a_query("registry?.example.com", Ok("registry"))]
#[case::escaped_path("r.example.com/team%2Fa", Ok("r.example.com/team/a"))]
#[case::userinfo("user:pw@r.example.com/a", Ok("r.example.com/a"))]
#[case::empty("", Ok(""))]
#[case::bad_port("r.example.com:http", Err(()))]
#[case::glob_port("r.example.com:*", Err(()))]
#[case::bad_escape("r.example.com/%zz", Err(()))]
#[case::ascii_escape_in_host("r%41.example.com", Err(()))]
#[case::space_in_host("bad host.com", Err(()))]
#[case::control_character("r.example.com/\u{7f}", Err(()))]
#[case::class_at_host_start("[a-z].example.com", Err(()))]
fn normalise_key_like_add(#[case] key: &str, #[case] expected: Result<&str, ()>) {
    assert_eq!(normalise_key(key).as_deref().map_err(|_| ()), expected);
}

#[test]
fn unparseable_keys_are_skipped() {
    let keyring = keyring_of(&["registry.example.com:port", "bad host"]);
    assert!(keyring.is_empty());
    assert!(keyring.lookup("registry.example.com/app").is_empty());
}

#[rstest]
#[case::bare_name("nginx", true)]
#[case::library("library/nginx", true)]
#[case::docker_io("docker.io/library/nginx", true)]
#[case::index_docker_io("index.docker.io/library/nginx", true)]
#[case::dotless_first_part("myorg/app", true)]
#[case::dotted_host("quay.io/coreos/etcd", false)]
#[case::port_host("localhost:5000/app", false)]
#[case::empty("", false)]
#[case::leading_slash("/app", false)]
fn default_registry_match(#[case] image: &str, #[case] expected: bool) {
    assert_eq!(is_default_registry_match(image), expected);
}

#[rstest]
#[case::literal("abc", "abc", Ok(true))]
#[case::literal_mismatch("abc", "abd", Ok(false))]
#[case::star_all("*", "anything", Ok(true))]
#[case::star_empty("*", "", Ok(true))]
#[case::star_middle("a*c", "abbbc", Ok(true))]
#[case::star_last_chunk_must_end("a*b", "abab_", Ok(false))]
#[case::star_backtracks("a*b", "abab", Ok(true))]
#[case::question("a?c", "abc", Ok(true))]
#[case::question_unicode("a?c", "aéc", Ok(true))]
#[case::class("[abc]x", "bx", Ok(true))]
#[case::class_range_miss("[a-c]", "d", Ok(false))]
#[case::negated("[^a-c]", "d", Ok(true))]
#[case::escape(r"a\*", "a*", Ok(true))]
#[case::escape_not_star(r"a\*", "ab", Ok(false))]
#[case::unterminated_class("[a", "a", Err(BadPattern))]
#[case::empty_class("[]a]", "a", Err(BadPattern))]
#[case::trailing_backslash("a\\", "a", Err(BadPattern))]
#[case::bad_after_mismatch("x[", "y", Err(BadPattern))]
fn glob_matches_like_go(
    #[case] pattern: &str,
    #[case] name: &str,
    #[case] expected: Result<bool, BadPattern>,
) {
    assert_eq!(go_match(pattern.as_bytes(), name.as_bytes()), expected);
}

#[test]
fn configs_adding_the_same_key_keep_insertion_order() {
    let first = from_dockercfg(
        br#"{"quay.io": {"username": "first", "password": "a"}}"#,
        "one",
    )
    .unwrap();
    let second = from_dockerconfigjson(
        br#"{"auths": {"https://quay.io/v1/": {"username": "second", "password": "b"}}}"#,
        "two",
    )
    .unwrap();
    let mut keyring = Keyring::default();
    keyring.add(&first);
    keyring.add(&second);
    let found = keyring.lookup("quay.io/coreos/etcd");
    assert_eq!(usernames(&found), ["first", "second"]);
    assert_eq!(found[0].source(), "one");
    assert_eq!(found[1].source(), "two");

    let mut reversed = Keyring::default();
    reversed.add(&second);
    reversed.add(&first);
    assert_eq!(
        usernames(&reversed.lookup("quay.io/coreos/etcd")),
        ["second", "first"]
    );
}

#[test]
fn lookup_all_puts_pod_credentials_before_node_credentials() {
    let pod = keyring_of(&["quay.io"]);
    let node = keyring_of(&["quay.io/coreos"]);
    assert_eq!(
        usernames(&lookup_all(&[&pod, &node], "quay.io/coreos/etcd")),
        ["quay.io", "quay.io/coreos"]
    );
    let empty = Keyring::default();
    assert_eq!(
        usernames(&lookup_all(&[&empty, &node], "quay.io/coreos/etcd")),
        ["quay.io/coreos"]
    );
}

#[rstest]
#[case::padded("alice:secret!", STANDARD.encode("alice:secret!"), "alice", "secret!")]
#[case::unpadded("alice:secret!", STANDARD_NO_PAD.encode("alice:secret!"), "alice", "secret!")]
#[case::first_colon_splits("u:pa:ss", STANDARD.encode("u:pa:ss"), "u", "pa:ss")]
#[case::newlines_ignored("alice:secret!", format!("{}\n", STANDARD.encode("alice:secret!")), "alice", "secret!")]
#[case::empty_password("bob:", STANDARD.encode("bob:"), "bob", "")]
fn auth_field_decodes(
    #[case] plain: &str,
    #[case] auth: String,
    #[case] username: &str,
    #[case] password: &str,
) {
    assert!(plain.contains(':'));
    let json = serde_json::json!({ "auths": { "r.example.com": { "auth": auth } } });
    let cred = one(&json.to_string());
    assert_eq!((cred.username(), cred.password()), (username, password));
}

#[test]
fn auth_overrides_username_and_password() {
    let auth = STANDARD.encode("fromauth:authpw");
    let cred = one(&format!(
        r#"{{"auths": {{"r.example.com": {{"username": "u", "password": "p", "email": "e@x", "auth": "{auth}"}}}}}}"#
    ));
    assert_eq!((cred.username(), cred.password()), ("fromauth", "authpw"));
}

#[test]
fn empty_or_null_auth_keeps_username_and_password() {
    let cred =
        one(r#"{"auths": {"r.example.com": {"username": "u", "password": "p", "auth": ""}}}"#);
    assert_eq!((cred.username(), cred.password()), ("u", "p"));
    let cred =
        one(r#"{"auths": {"r.example.com": {"username": "u", "password": "p", "auth": null}}}"#);
    assert_eq!((cred.username(), cred.password()), ("u", "p"));
}

#[test]
fn field_names_match_case_insensitively_like_encoding_json() {
    let cred = one(r#"{"Auths": {"r.example.com": {"Username": "u", "PASSWORD": "p"}}}"#);
    assert_eq!((cred.username(), cred.password()), ("u", "p"));
}

#[test]
fn identity_token_only_is_anonymous() {
    let cred =
        one(r#"{"auths": {"r.example.com": {"identitytoken": "tok", "registrytoken": "rt"}}}"#);
    assert!(cred.is_anonymous());
    assert_eq!(cred.id(), CredentialId::ANONYMOUS);
    assert_eq!(cred.id().to_string(), "anonymous");
}

#[test]
fn null_entry_is_anonymous() {
    assert!(one(r#"{"r.example.com": null}"#).is_anonymous());
}

#[test]
fn dockercfg_flat_format() {
    let auth = STANDARD.encode("a:b");
    let json = format!(
        r#"{{"quay.io": {{"auth": "{auth}", "email": "x@y"}}, "https://index.docker.io/v1/": {{"username": "c", "password": "d"}}}}"#
    );
    for config in [
        parse_docker_config(json.as_bytes(), "cfg").unwrap(),
        from_dockercfg(json.as_bytes(), "cfg").unwrap(),
    ] {
        let entries: Vec<_> = config
            .entries()
            .map(|(key, cred)| (key, cred.username(), cred.password(), cred.source()))
            .collect();
        assert_eq!(
            entries,
            [
                ("quay.io", "a", "b", "cfg"),
                ("https://index.docker.io/v1/", "c", "d", "cfg")
            ]
        );
    }
}

#[test]
fn config_json_settings_are_ignored() {
    let json = r#"{
            "credsStore": "desktop",
            "credHelpers": {"gcr.io": "gcloud"},
            "auths": {"z.example.com": {"username": "z", "password": "1"}, "a.example.com": {}},
            "HttpHeaders": {"User-Agent": "x"}
        }"#;
    let config = parse_docker_config(json.as_bytes(), "cfg").unwrap();
    let keys: Vec<_> = config.entries().map(|(key, _)| key).collect();
    assert_eq!(keys, ["z.example.com", "a.example.com"]);
    assert_eq!(
        from_dockerconfigjson(json.as_bytes(), "cfg").unwrap().len(),
        2
    );
}

#[rstest]
#[case::creds_store_only(r#"{"credsStore": "desktop"}"#)]
#[case::cred_helpers_only(r#"{"credHelpers": {"gcr.io": "gcloud"}}"#)]
#[case::null_auths(r#"{"auths": null}"#)]
#[case::null("null")]
#[case::empty("{}")]
fn configs_without_credentials(#[case] json: &str) {
    assert!(
        parse_docker_config(json.as_bytes(), "cfg")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn dockerconfigjson_reads_only_auths() {
    let flat = br#"{"r.example.com": {"username": "u", "password": "p"}}"#;
    assert!(from_dockerconfigjson(flat, "cfg").unwrap().is_empty());
}

#[test]
fn repeated_key_keeps_last_value_at_first_position() {
    let json = r#"{"auths": {"a.io": {"username": "1"}, "b.io": {}, "a.io": {"username": "2"}}}"#;
    let config = parse_docker_config(json.as_bytes(), "cfg").unwrap();
    let entries: Vec<_> = config
        .entries()
        .map(|(key, cred)| (key, cred.username()))
        .collect();
    assert_eq!(entries, [("a.io", "2"), ("b.io", "")]);
}

#[test]
fn oversize_input_is_rejected() {
    let padding = " ".repeat(MAX_CONFIG_BYTES);
    let json = format!("{{}}{padding}");
    let err = parse_docker_config(json.as_bytes(), "big").unwrap_err();
    assert!(matches!(err, KeyringError::TooLarge { size, .. } if size == MAX_CONFIG_BYTES + 2));
}

/// Every error path, fed the secret in the most tempting place; none may echo it.
#[rstest]
#[case::bad_base64(
        format!(r#"{{"auths": {{"secret.example.com": {{"auth": "{SECRET}!!"}}}}}}"#),
        "AuthNotBase64"
    )]
#[case::no_colon(
        format!(r#"{{"auths": {{"secret.example.com": {{"auth": "{}"}}}}}}"#, STANDARD.encode(SECRET)),
        "AuthMissingColon"
    )]
#[case::not_utf8(
        format!(r#"{{"auths": {{"secret.example.com": {{"auth": "{}"}}}}}}"#, STANDARD.encode(b"u:\xff\xfe")),
        "AuthNotUtf8"
    )]
#[case::bad_auth_in_dockercfg(
        format!(r#"{{"secret.example.com": {{"auth": "{SECRET}"}}}}"#),
        "AuthNotBase64"
    )]
#[case::field_not_string(
        format!(r#"{{"auths": {{"secret.example.com": {{"username": "{SECRET}", "password": ["{SECRET}"]}}}}}}"#),
        "FieldNotString"
    )]
#[case::entry_not_object(
        format!(r#"{{"auths": {{"secret.example.com": "{SECRET}"}}}}"#),
        "NotAnObject"
    )]
#[case::auths_not_object(format!(r#"{{"auths": "{SECRET}"}}"#), "NotAnObject")]
#[case::top_level_string(format!(r#""{SECRET}""#), "NotAnObject")]
#[case::truncated(
        format!(r#"{{"auths": {{"secret.example.com": {{"password": "{SECRET}"#),
        "InvalidJson"
    )]
#[case::trailing_garbage(format!(r#"{{"password": "{SECRET}"}} {SECRET}"#), "InvalidJson")]
#[case::userinfo_key(
        format!(r#"{{"auths": {{"https://user:{SECRET}@r.example.com": {{"auth": "x"}}}}}}"#),
        "AuthNotBase64"
    )]
fn errors_never_contain_secrets(#[case] json: String, #[case] variant: &str) {
    let err = parse_docker_config(json.as_bytes(), "secret team-a/regcred").unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(shown.starts_with("secret team-a/regcred: "), "{shown}");
    assert!(format!("{err:?}").starts_with(variant), "{shown}");
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(!shown.contains(&STANDARD.encode(SECRET)), "{shown}");
    if json.contains("secret.example.com") && variant != "InvalidJson" {
        assert!(shown.contains("`secret.example.com`"), "{shown}");
    }
}

#[test]
fn debug_redacts_password() {
    let cred = Credential::new("alice", SECRET, "secret team-a/regcred");
    let shown = format!("{cred:?} {cred:#?}");
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    assert!(
        shown.contains("alice") && shown.contains("team-a/regcred"),
        "{shown}"
    );
    assert!(shown.contains(&cred.id().to_string()), "{shown}");

    let config = from_dockercfg(
        format!(r#"{{"r.io": {{"username": "u", "password": "{SECRET}"}}}}"#).as_bytes(),
        "cfg",
    )
    .unwrap();
    let mut keyring = Keyring::default();
    keyring.add(&config);
    let shown = format!("{config:?} {keyring:?}");
    assert!(!shown.contains(SECRET), "{shown}");
}

#[test]
fn credential_ids() {
    let a = Credential::new("alice", "one", "x");
    let same = Credential::new("alice", "one", "y");
    let other_password = Credential::new("alice", "two", "x");
    let shifted_colon = Credential::new("alice:o", "ne", "x");
    assert_eq!(a.id(), same.id());
    assert_eq!(a, same, "equality ignores the source");
    assert_ne!(a.id(), other_password.id());
    assert_ne!(a, other_password);
    assert_ne!(a.id(), shifted_colon.id());
    assert_ne!(a.id(), CredentialId::ANONYMOUS);
    assert!(!a.is_anonymous());

    let secret = Credential::new("alice", SECRET, "x");
    let shown = secret.id().to_string();
    assert_eq!(shown.len(), 32);
    assert!(shown.bytes().all(|b| b.is_ascii_hexdigit()), "{shown}");
    assert!(!shown.contains(SECRET));
    assert_eq!(format!("{:?}", secret.id()), shown);

    let anonymous = Credential::new("", "", "x");
    assert!(anonymous.is_anonymous());
    assert_eq!(format!("{:?}", anonymous.id()), "anonymous");
    assert!(!Credential::new("", "p", "x").is_anonymous());
    assert!(!Credential::new("u", "", "x").is_anonymous());
}
