//! Routes from the runtimes' documented examples (`tests/fixtures/hosts/`,
//! `tests/fixtures/registries.conf/`) and from files made on the spot for the failure cases.

use std::path::{Path, PathBuf};

use super::*;

mod containerd;
mod registries_conf;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn image(reference: &str) -> ImageRef {
    ImageRef::parse(reference).expect("test references are valid")
}

fn containerd(root: &str) -> NodeHosts {
    NodeHosts::load_hosts_dir(&fixture(root)).expect("fixture loads")
}

fn crio(file: &str) -> NodeHosts {
    NodeHosts::load_registries_conf(&fixture(file)).expect("fixture loads")
}

fn hosts<'a>(endpoints: impl IntoIterator<Item = &'a Endpoint>) -> Vec<&'a str> {
    endpoints.into_iter().map(|e| e.host.as_str()).collect()
}

/// Each endpoint's host and the repository asked of it.
fn hosts_and_repositories(route: &Route) -> Vec<(&str, &str)> {
    route
        .endpoints
        .iter()
        .map(|e| (e.host.as_str(), e.repository.as_str()))
        .collect()
}

fn write(dir: &Path, rel: &str, text: &str) -> PathBuf {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}
