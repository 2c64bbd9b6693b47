//! Plugins are small Python 3 programs written into a temporary bin dir. Each checks the
//! request (kind, apiVersion, image), its arguments and its environment, exits 1 if anything is
//! off, appends the image to a runs file, then answers as the test says. Runs are counted from
//! that file, never timed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::join_all;
use tempfile::TempDir;

use super::*;

mod loading;
mod running;

const V1: &str = "credentialprovider.kubelet.k8s.io/v1";
const V1BETA1: &str = "credentialprovider.kubelet.k8s.io/v1beta1";

/// Checks the request, records the run, and defines `answer(...)`.
const PRELUDE: &str = r#"#!/usr/bin/env python3
import json, os, sys, time
req = json.loads(sys.stdin.read())
api = os.environ["EXPECT_API"]
if req != {"kind": "CredentialProviderRequest", "apiVersion": api, "image": req.get("image")}:
    sys.exit(1)
if sys.argv[1:] != ["--flag", "x y"] or "PATH" not in os.environ:
    sys.exit(1)
with open(os.environ["RUNS_FILE"], "a") as runs:
    runs.write(req["image"] + "\n")
def answer(key_type="Image", auth=None, duration=None, api=api, kind="CredentialProviderResponse"):
    resp = {"kind": kind, "apiVersion": api, "cacheKeyType": key_type}
    if duration is not None:
        resp["cacheDuration"] = duration
    if auth is not None:
        resp["auth"] = auth
    print(json.dumps(resp))
def cred(user):
    return {"username": user, "password": "pw-" + user}
"#;

/// One provider of a test configuration.
struct Fake<'a> {
    name: &'a str,
    match_images: &'a [&'a str],
    default_cache_duration: &'a str,
    api_version: &'a str,
    /// Python run after the prelude.
    body: &'a str,
}

impl<'a> Fake<'a> {
    fn new(name: &'a str, body: &'a str) -> Self {
        Fake {
            name,
            match_images: &["*.io", "*.*.io"],
            default_cache_duration: "0s",
            api_version: V1,
            body,
        }
    }
}

struct Setup {
    dir: TempDir,
    providers: CredentialProviders,
}

impl Setup {
    fn new(plugins: &[Fake<'_>]) -> Self {
        Self::with_extra(plugins, "")
    }

    /// `extra` is appended to the last provider's YAML (for `tokenAttributes`).
    fn with_extra(plugins: &[Fake<'_>], extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let mut yaml = String::from(
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n",
        );
        for p in plugins {
            write_plugin(&bin, p.name, &format!("{PRELUDE}{}\n", p.body));
            let runs = dir.path().join(format!("{}.runs", p.name));
            write!(
                yaml,
                "  - name: {}\n    matchImages: {:?}\n    defaultCacheDuration: \"{}\"\n    apiVersion: {}\n    args: [\"--flag\", \"x y\"]\n    env:\n      - name: RUNS_FILE\n        value: {}\n      - name: EXPECT_API\n        value: {}\n",
                p.name,
                p.match_images,
                p.default_cache_duration,
                p.api_version,
                runs.display(),
                p.api_version,
            )
            .unwrap();
        }
        yaml.push_str(extra);
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, yaml).unwrap();
        let providers = CredentialProviders::load(&config, &bin).unwrap();
        Setup { dir, providers }
    }

    fn runs(&self, name: &str) -> usize {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.runs")))
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }

    async fn ask(&self, image: &str) -> Provided {
        self.providers.credentials(image, None, in_secs(60)).await
    }
}

fn write_plugin(bin: &Path, name: &str, script: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = bin.join(name);
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn in_secs(secs: u64) -> std::time::Instant {
    std::time::Instant::now() + Duration::from_secs(secs)
}

fn users(provided: &Provided) -> Vec<&str> {
    provided.credentials.iter().map(|c| c.username()).collect()
}

fn only_failure(provided: &Provided) -> &str {
    assert!(provided.credentials.is_empty(), "{provided:?}");
    assert_eq!(provided.failures.len(), 1, "{provided:?}");
    &provided.failures[0].reason
}
