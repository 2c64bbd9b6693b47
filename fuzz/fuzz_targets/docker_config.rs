//! The docker config parsers (pull secrets are written by namespace admins), then the
//! kubelet's keyring over what parses. Input: the config, then NUL-separated images to look up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullgate::credentials::{DockerConfig, Keyring, KeyringError, docker_config, lookup_all};
use pullgate::oci::reference::ImageRef;
use pullgate::registry::Credential;

fn check_redacted(cred: &Credential) {
    let shown = format!("{cred:?}");
    let secret = cred.password();
    // A password long enough not to turn up by chance never shows in Debug output.
    if secret.len() >= 12 && !cred.username().contains(secret) && !cred.source().contains(secret) {
        assert!(!shown.contains(secret), "password in {shown}");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0);
    let config = parts.next().unwrap_or_default();
    let images: Vec<String> = parts
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();

    let parsed: [Result<DockerConfig, KeyringError>; 3] = [
        docker_config::parse_docker_config(config, "fuzz"),
        docker_config::from_dockerconfigjson(config, "fuzz"),
        docker_config::from_dockercfg(config, "fuzz"),
    ];
    let mut ring = Keyring::default();
    for result in &parsed {
        match result {
            Ok(config) => {
                let _ = format!("{config:?}");
                for (_, cred) in config.entries() {
                    check_redacted(cred);
                    let _ = (cred.id().to_string(), cred.is_anonymous());
                }
                ring.add(config);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    let mut lookups: Vec<String> = images.clone();
    for image in &images {
        if let Ok(r) = ImageRef::parse(image) {
            lookups.push(r.name());
        }
    }
    // Every key of the configs is looked up as an image too, so matching gets exercised even
    // when the fuzzer has not found a registry key and an image that agree.
    for config in parsed.iter().flatten() {
        lookups.extend(config.entries().map(|(key, _)| key.to_owned()));
    }
    for image in &lookups {
        for cred in ring.lookup(image) {
            check_redacted(&cred);
        }
    }
    let _ = lookup_all(&[&ring, &Keyring::default()], "docker.io/library/nginx");
});
