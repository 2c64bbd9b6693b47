//! One test's world: a CA, a storage directory shared by every registry of the test, and an
//! anonymous registry to push images through.

use pullgate::registry::{ClientOptions, RegistryClient};
use tempfile::TempDir;

use super::image::{ImageSpec, PlatformSpec, PushedImage, PushedIndex, push_image, push_index};
use super::pki::{Pki, Protocols, test_client};
use super::registry::{Registry, RegistryAuth};

/// One test's world: a CA, a storage directory, and an anonymous registry to push through.
pub struct World {
    pub pki: Pki,
    pub storage: TempDir,
    pub seed: Registry,
    pub push: reqwest::Client,
}

impl World {
    pub fn new() -> World {
        let pki = Pki::new();
        let storage = TempDir::new().unwrap();
        let seed = Registry::start(&pki, storage.path(), RegistryAuth::Anonymous).unwrap();
        let push = test_client(&pki);
        World {
            pki,
            storage,
            seed,
            push,
        }
    }

    pub async fn push(&self, repo: &str, tag: &str, spec: ImageSpec) -> PushedImage {
        push_image(&self.seed.base(), &self.push, repo, Some(tag), &spec)
            .await
            .unwrap()
    }

    pub async fn push_multiarch(
        &self,
        repo: &str,
        tag: &str,
    ) -> (PushedIndex, PushedImage, PushedImage) {
        let amd = push_image(
            &self.seed.base(),
            &self.push,
            repo,
            None,
            &ImageSpec::new().with_layers(&[300, 400]),
        )
        .await
        .unwrap();
        let arm = push_image(
            &self.seed.base(),
            &self.push,
            repo,
            None,
            &ImageSpec::new()
                .with_layers(&[500])
                .with_platform_spec(PlatformSpec::linux_arm64()),
        )
        .await
        .unwrap();
        let index = push_index(
            &self.seed.base(),
            &self.push,
            repo,
            Some(tag),
            &[
                (PlatformSpec::linux_amd64(), &amd),
                (PlatformSpec::linux_arm64(), &arm),
            ],
            true,
            true,
        )
        .await
        .unwrap();
        (index, amd, arm)
    }

    pub fn registry(&self, auth: RegistryAuth) -> Registry {
        Registry::start(&self.pki, self.storage.path(), auth).unwrap()
    }

    /// [`World::registry`] offering only `protocols`.
    pub fn registry_speaking(&self, auth: RegistryAuth, protocols: Protocols) -> Registry {
        Registry::start_speaking(&self.pki, self.storage.path(), auth, protocols).unwrap()
    }

    pub fn client(&self) -> RegistryClient {
        RegistryClient::new(ClientOptions {
            extra_roots: vec![self.pki.ca_der().clone()],
            ..ClientOptions::default()
        })
        .unwrap()
    }
}
