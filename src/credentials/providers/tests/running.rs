//! Asking providers: cache keys and durations, the auth map, failures.

use super::*;

// ---- Cache keys and durations (plugin.go: provide, getCachedCredentials) ----

#[tokio::test]
async fn an_image_key_answer_serves_that_image_only() {
    let s = Setup::new(&[Fake::new(
        "p",
        r#"answer("Image", {"*.io": cred("u")}, "1h")"#,
    )]);
    assert_eq!(users(&s.ask("r.io/a").await), ["u"]);
    assert_eq!(users(&s.ask("r.io/a").await), ["u"]);
    assert_eq!(s.runs("p"), 1);
    s.ask("r.io/b").await;
    assert_eq!(s.runs("p"), 2);
}

#[tokio::test]
async fn a_registry_key_answer_serves_every_image_of_the_host() {
    let s = Setup::new(&[Fake::new(
        "p",
        r#"answer("Registry", {"*.io": cred("u")}, "1h")"#,
    )]);
    s.ask("r.io/a").await;
    assert_eq!(users(&s.ask("r.io/team/b").await), ["u"]);
    assert_eq!(s.runs("p"), 1);
    s.ask("s.io/a").await;
    assert_eq!(s.runs("p"), 2);
}

#[tokio::test]
async fn a_global_key_answer_serves_every_image() {
    let s = Setup::new(&[Fake::new(
        "p",
        r#"answer("Global", {"*.io": cred("u")}, "1h")"#,
    )]);
    s.ask("r.io/a").await;
    assert_eq!(users(&s.ask("s.io/b").await), ["u"]);
    assert_eq!(s.runs("p"), 1);
}

#[tokio::test]
async fn a_zero_duration_is_not_kept_and_absent_falls_back_to_the_default() {
    let zero = "answer(\"Global\", {\"*.io\": cred(\"u\")}, \"0s\")";
    let absent = "answer(\"Global\", {\"*.io\": cred(\"u\")})";
    let s = Setup::new(&[
        Fake {
            default_cache_duration: "1h",
            match_images: &["zero.io"],
            ..Fake::new("zero", zero)
        },
        Fake {
            match_images: &["absent.io"],
            ..Fake::new("absent_no_default", absent)
        },
        Fake {
            default_cache_duration: "1h",
            match_images: &["default.io"],
            ..Fake::new("absent_default", absent)
        },
    ]);
    for image in ["zero.io/a", "absent.io/a", "default.io/a"] {
        for _ in 0..2 {
            assert_eq!(users(&s.ask(image).await), ["u"]);
        }
    }
    assert_eq!(s.runs("zero"), 2);
    assert_eq!(s.runs("absent_no_default"), 2);
    assert_eq!(s.runs("absent_default"), 1);
}

#[tokio::test]
async fn a_kept_answer_is_reused_until_it_expires() {
    let s = Setup::new(&[Fake::new(
        "p",
        r#"answer("Image", {"*.io": cred("u")}, "1h")"#,
    )]);
    s.ask("r.io/a").await;
    tokio::time::pause();
    s.ask("r.io/a").await;
    assert_eq!(s.runs("p"), 1);
    tokio::time::advance(Duration::from_secs(3601)).await;
    tokio::time::resume();
    assert_eq!(users(&s.ask("r.io/a").await), ["u"]);
    assert_eq!(s.runs("p"), 2);
}

#[tokio::test]
async fn five_hundred_concurrent_asks_run_the_plugin_once() {
    // A duration of 0 keeps nothing, so one run means the asks were merged, not cached. On this
    // single-threaded test runtime every ask joins before the run's task is first polled.
    let s = Setup::new(&[Fake::new(
        "p",
        r#"answer("Image", {"*.io": cred("u")}, "0s")"#,
    )]);
    let asks = join_all((0..500).map(|_| s.ask("r.io/a"))).await;
    assert!(asks.iter().all(|p| users(p) == ["u"]));
    assert_eq!(s.runs("p"), 1);
}

// ---- The auth map (plugins.go: one BasicDockerKeyring over every provider's answer) ----

#[tokio::test]
async fn auth_keys_match_like_keyring_keys_most_specific_first() {
    let s = Setup::new(&[Fake::new(
        "p",
        r#"answer("Image", {
            "*.registry.io": cred("glob"),
            "team.registry.io/app": cred("path"),
            "team.registry.io": cred("host"),
            "team.registry.io:5000": cred("port"),
            "other.io": cred("other"),
        })"#,
    )]);
    let provided = s.ask("team.registry.io/app/web").await;
    assert_eq!(users(&provided), ["path", "host", "glob"]);
    assert_eq!(provided.credentials[0].password(), "pw-path");
    assert!(
        provided
            .credentials
            .iter()
            .all(|c| c.source() == "credential provider p")
    );
    assert_eq!(
        users(&s.ask("team.registry.io/other").await),
        ["host", "glob"]
    );
}

#[tokio::test]
async fn providers_combine_in_config_order_and_only_matching_ones_run() {
    let s = Setup::new(&[
        Fake::new("first", r#"answer("Image", {"r.io": cred("first")})"#),
        Fake::new("second", r#"answer("Image", {"r.io": cred("second")})"#),
        Fake {
            match_images: &["elsewhere.io"],
            ..Fake::new(
                "unmatched",
                r#"answer("Image", {"r.io": cred("unmatched")})"#,
            )
        },
    ]);
    let provided = s.ask("r.io/a").await;
    assert_eq!(users(&provided), ["first", "second"]);
    assert!(provided.failures.is_empty());
    assert_eq!(s.runs("unmatched"), 0);
}

#[tokio::test]
async fn a_v1beta1_provider_is_asked_in_v1beta1() {
    let s = Setup::new(&[Fake {
        api_version: V1BETA1,
        ..Fake::new("p", r#"answer("Image", {"*.io": cred("u")})"#)
    }]);
    assert_eq!(users(&s.ask("r.io/a").await), ["u"]);
}

// ---- Failures: the kubelet logs them and uses no credentials from that provider ----

#[tokio::test]
async fn a_failing_plugin_gives_a_failure_and_the_others_still_count() {
    let s = Setup::new(&[
        Fake::new("broken", "sys.stderr.write('token hunter2'); sys.exit(3)"),
        Fake::new("good", r#"answer("Image", {"*.io": cred("u")})"#),
    ]);
    let provided = s.ask("r.io/a").await;
    assert_eq!(users(&provided), ["u"]);
    let failure = &provided.failures[0];
    assert_eq!(failure.provider, "broken");
    assert!(failure.reason.contains("exit status: 3"), "{failure}");
    assert!(failure.reason.contains("13 bytes on stderr"), "{failure}");
    assert!(!failure.reason.contains("hunter2"));
}

#[tokio::test]
async fn a_plugin_that_hangs_is_killed_at_the_deadline() {
    let s = Setup::new(&[Fake::new(
        "p",
        "open(os.environ['RUNS_FILE'] + '.pid', 'w').write(str(os.getpid())); time.sleep(3600)",
    )]);
    let provided = s.providers.credentials("r.io/a", None, in_secs(2)).await;
    assert!(only_failure(&provided).contains("deadline"), "{provided:?}");
    // A plugin killed before it wrote its pid is gone as well.
    let Ok(pid) = std::fs::read_to_string(s.dir.path().join("p.runs.pid")) else {
        return;
    };
    let stat = format!("/proc/{pid}/stat");
    for _ in 0..400 {
        match std::fs::read_to_string(&stat) {
            // Gone, or dead and not yet reaped.
            Err(_) => return,
            Ok(text)
                if text
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z') =>
            {
                return;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("plugin {pid} still running after its deadline");
}

#[tokio::test]
async fn answers_the_kubelet_refuses_give_failures_that_quote_nothing() {
    let cases = [
        (
            "sys.stdout.write('{\"password\": \"hunter2\"' * 60000)",
            "output larger than 1048576 bytes",
        ),
        (
            "print('{not json hunter2')",
            "invalid JSON at line 1 column 2",
        ),
        (
            r#"answer("Image", {"*.io": {"username": "u", "password": "hunter2"}}, api="credentialprovider.kubelet.k8s.io/v1beta1")"#,
            "did not match expected apiVersion:credentialprovider.kubelet.k8s.io/v1, actual apiVersion:credentialprovider.kubelet.k8s.io/v1beta1",
        ),
        (
            r#"answer("Image", kind="CredentialProviderRequest")"#,
            "not a CredentialProviderResponse",
        ),
        (r#"answer("Images")"#, "cacheKeyType \"Images\""),
        (
            r#"answer("Image", {"*.io": {"username": "u", "password": "hunter2", "auth": "x"}})"#,
            "does not decode",
        ),
    ];
    for (body, expected) in cases {
        let s = Setup::new(&[Fake::new("p", body)]);
        let provided = s.ask("r.io/a").await;
        let reason = only_failure(&provided);
        assert!(reason.contains(expected), "{body}: {reason}");
        assert!(!reason.contains("hunter2"), "{reason}");
    }
}

#[tokio::test]
async fn failures_are_not_kept() {
    let s = Setup::new(&[Fake {
        default_cache_duration: "1h",
        ..Fake::new("p", "sys.exit(1)")
    }]);
    s.ask("r.io/a").await;
    s.ask("r.io/a").await;
    assert_eq!(s.runs("p"), 2);
}

#[tokio::test]
async fn a_provider_with_token_attributes_is_skipped_with_a_failure() {
    let s = Setup::with_extra(
        &[Fake::new("p", r#"answer("Image", {"*.io": cred("u")})"#)],
        "    tokenAttributes:\n      serviceAccountTokenAudience: aud\n      requireServiceAccount: true\n      cacheType: ServiceAccount\n",
    );
    let provided = s.ask("r.io/a").await;
    assert!(only_failure(&provided).contains("service-account token"));
    assert_eq!(s.runs("p"), 0);
    assert!(s.ask("nomatch.example.com/a").await.failures.is_empty());
}

/// kubelet: a pod without a ServiceAccount still runs a token provider that does not require
/// one, without a token; a pod with one needs the token, which only the flag allows.
#[tokio::test]
async fn a_token_provider_without_a_service_account_runs_unless_it_requires_one() {
    let s = Setup::with_extra(
        // The prelude refuses a request with any field besides kind, apiVersion and image.
        &[Fake::new("p", r#"answer("Image", {"*.io": cred("u")})"#)],
        "    tokenAttributes:\n      serviceAccountTokenAudience: aud\n      requireServiceAccount: false\n      cacheType: Token\n",
    );
    let provided = s.ask("r.io/a").await;
    assert!(provided.failures.is_empty(), "{:?}", provided.failures);
    assert_eq!(provided.credentials.len(), 1);
    assert_eq!(s.runs("p"), 1);

    let account = crate::credentials::PodAccount {
        namespace: "shop".into(),
        service_account: "default".into(),
    };
    let provided = s
        .providers
        .credentials("r.io/b", Some(&account), in_secs(5))
        .await;
    assert!(
        only_failure(&provided).contains("--provider-service-account-tokens"),
        "{:?}",
        provided.failures
    );
    assert_eq!(s.runs("p"), 1);
}

#[tokio::test]
async fn debug_output_holds_no_password() {
    let s = Setup::new(&[Fake::new(
        "p",
        r#"answer("Image", {"*.io": {"username": "u", "password": "hunter2"}})"#,
    )]);
    let provided = s.ask("r.io/a").await;
    assert_eq!(provided.credentials[0].password(), "hunter2");
    assert!(!format!("{provided:?} {:?}", s.providers).contains("hunter2"));
}

#[tokio::test]
async fn no_providers_give_nothing() {
    let none = CredentialProviders::default();
    assert!(none.is_empty());
    let provided = none.credentials("r.io/a", None, in_secs(1)).await;
    assert!(provided.credentials.is_empty() && provided.failures.is_empty());
}
