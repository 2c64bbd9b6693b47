//! The node runtime's registry host configuration, parsed into typed routes: which hosts the
//! container runtime on the node would contact for an image, in which order, with which
//! scheme, TLS settings, headers and repository. Registry layer: endpoints, never verdicts.
//!
//! Two sources, one per runtime:
//!
//! - **containerd** `config_path` (`ctr --hosts-dir DIR`): one directory per registry host,
//!   each with a `hosts.toml` ([`ContainerdHosts`], `containerd.rs`). Semantics read in
//!   containerd's `core/remotes/docker/config/hosts.go` (`ConfigureHosts`, `HostDirFromRoot`,
//!   `hostDirectory`, `loadHostDir`, `parseHostsFile`, `parseHostConfig`, `getSortedHosts`,
//!   `loadCertFiles`), `config_unix.go` (`hostPaths`), `core/remotes/docker/registry.go`
//!   (`RegistryHost.isProxy`, `HostCapabilities.Has`) and `resolver.go` (`IsLocalhost`,
//!   `NewHTTPFallback`); 1.6/1.7 differences from `remotes/docker/config/hosts.go`.
//! - **CRI-O** `registries.conf` v2 ([`RegistriesConf`], `registries_conf.rs`). Semantics read
//!   in containers/image `pkg/sysregistriesv2/system_registries_v2.go` (`postProcessRegistries`,
//!   `FindRegistry`, `refMatchingPrefix`, `refMatchingSubdomainPrefix`,
//!   `PullSourcesFromReference`, `rewriteReference`, `loadConfigFile`), `docker/docker_client.go`
//!   (`newDockerClient`, `detectPropertiesHelper`) and `docker/docker_image_src.go`
//!   (`newImageSource`, `newImageSourceAttempt`, `newPullClient`, `GetBlob`).
//!
//! **Loaded once.** containerd re-reads the host directory on every pull and containers/image
//! caches registries.conf per process; pullgate reads either at startup into memory (at most
//! [`MAX_FILE_BYTES`] per file and [`MAX_DIR_ENTRIES`] entries per directory), so a change on
//! the node is seen after a restart of pullgate. Where the runtime would log and ignore a
//! broken file (containerd falls back to the Docker certificate-file layout when `hosts.toml`
//! does not parse), pullgate refuses to load instead: an operator who points pullgate at a
//! file wants to hear that it is broken.
//!
//! # Fallback: which failures move the runtime to the next host, which end the pull
//!
//! Research for the probe; read in the files and functions named. "Continue" means the
//! runtime tries the next endpoint of the [`Route`] in order.
//!
//! ## containerd ([`Fallback::PerRequest`]): every request walks the host list on its own
//!
//! - **Resolving** (`core/remotes/docker/resolver.go`, `dockerResolver.Resolve`). A tag
//!   uses the hosts that have *both* `pull` and `resolve` (`filterHosts(Pull|Resolve)`,
//!   `HostCapabilities.Has` is `c&t == t`): [`Route::for_tag`]. A digest uses the hosts with
//!   `pull` ([`Route::for_digest`]) and tries `manifests/<digest>` on every host, then
//!   `blobs/<digest>` on every host. No such host: "no resolve hosts: not found". Per host a
//!   `HEAD` (retried by `request.retryRequest`: 401 re-authorises, 405 on a manifest HEAD turns
//!   into GET, 408/429 retried, 500/503/504 retried only on the *last* host and not twice in a
//!   row; at most 6 responses), then:
//!   - transport error or failed authorisation (`doWithRetries` error): **continue**;
//!   - 404: **continue**; any status > 399: **continue**;
//!   - a status 300–399 that was not followed: **ends** (`unexpectedResponseErr`);
//!   - 2xx without `Docker-Content-Digest` or `Content-Length`: a `GET` on the same host, and
//!     any error of that GET **ends** the resolve (it is not tried on the next host);
//!   - a manifest larger than `MaxManifestSize` (4·1048·1048 bytes): **continue**.
//!
//!   The error returned when every host failed is the one that got furthest
//!   (`firstErrPriority`: transport 1 < 404 2 < other 4xx/5xx 3 < too large 4), the first of
//!   that rank.
//! - **Fetching by digest** (`core/remotes/docker/fetcher.go`, `dockerFetcher.Fetch`: child
//!   manifests, config, layers). Needs at least one `pull` host ("no pull hosts"), but then
//!   loops over **all** hosts of the namespace (`r.hosts`, not the filtered list — a host
//!   without `pull` is tried too): [`Route::for_fetch`]. Manifest media types try
//!   `manifests/<digest>` on each host and return the first error without falling through to
//!   `blobs/`; other types try `blobs/<digest>` on each host. **Any** error from `open`
//!   (transport, 401/403, 404, 5xx after retries, bad `Content-Range`) **continues**; when all
//!   fail the **first** error is returned (a 404 is reworded as "could not fetch content
//!   descriptor … not found"). `FetchByDigest` does the same with `HEAD` then `GET`, blobs
//!   endpoint first, then manifests endpoint.
//! - Requests to a host other than the image's own registry carry `?ns=<registry>`
//!   (`RegistryHost.isProxy`; `docker.io` → `registry-1.docker.io` is not a proxy):
//!   [`Endpoint::namespace_query`].
//! - Very old containerd (the pre-1.5 `remotes/docker/fetcher.go`) continued only on "not
//!   found"; the node-runtime note checked with containerd 1.6.20 that a mirror answering 403
//!   on one layer falls through to the upstream, matching the current code.
//!
//! ## containers/image / CRI-O ([`Fallback::PerSource`]): the manifest picks the source
//!
//! - `docker/docker_image_src.go` `newImageSource` tries the pull sources in order (mirrors,
//!   then the primary location) with `newImageSourceAttempt`, which builds a client
//!   (`newDockerClient`: fails if the source's *physical* reference falls under a `blocked`
//!   prefix) and loads the manifest of the tag or digest (`ensureManifestIsLoaded`: ping
//!   `GET /v2/` — 200 or 401 pass — then `GET manifests/<ref>`). **Any** error there
//!   (connection, TLS, ping status, 401/403/404 on the manifest, 429 after its 5 back-offs)
//!   **continues** to the next source. All fail: the primary's error, with the mirrors'
//!   errors listed ("Mirrors also failed").
//! - Once a source served the manifest, child manifests (`GetManifest` with an instance
//!   digest) come from **that source only**, no fallback. Blobs: in released containers/image
//!   v5 (`GetBlob` → `s.c.getBlob`) from that source only. The newest stored snapshot
//!   (`go.podman.io/image/v5`) adds a blob fallback to the *later* sources only
//!   (`getBlobWithMirrorFallback`) on `BLOB_UNKNOWN`, `TOOMANYREQUESTS`
//!   (`isMirrorFallbackError`), 5xx or a network timeout (`isMirrorTransientError`, retried
//!   once after ~1 s first); any other blob error ends the pull. Which CRI-O release carries
//!   that snapshot was not confirmed.
//! - `insecure` (`detectPropertiesHelper`): ping over https; on **any** ping error, ping over
//!   plain http; TLS verification is skipped ([`Scheme::HttpsThenHttp`], `skip_verify`).
//!
//! # containerd versions
//!
//! The routes follow containerd 2.x (`core/remotes/docker/config/hosts.go`). containerd
//! 1.6/1.7 (`remotes/docker/config/hosts.go` as stored) differ: no loopback default (a
//! registry without a file is plain `https://<host>`), no `NewHTTPFallback` (an `http` host
//! stays plain HTTP whatever its TLS settings), and `getSortedHosts` rejects a file without a
//! `[host]` table ("invalid `host` tree"), so a server-only `hosts.toml` is ignored in favour
//! of the directory's certificate files.
//!
//! # Not modelled
//!
//! Host order is the order of the `host` table's keys (toml's `preserve_order`), which is
//! containerd's `getSortedHosts` order for files written with `[host."…"]` headers; a host
//! table reopened after another (`[host."a"]`, `[host."b"]`, `[host."a".header]`) counts once
//! here and twice in containerd.
//!
//! containerd `proxy`, `dial_timeout`, `dial_addr` (parsed as unknown keys, ignored); several
//! `config_path` roots (CRI's `hostDirFromRoots` takes the first root having *any* candidate
//! directory, `_default` included); the host-suffix directories (`.docker.io`) seen in a stored
//! containerd main-branch `config_unix.go` (`hostSuffix`), which the docs do not mention yet;
//! containers/image `registries.conf.d` drop-ins, `/etc/containers/certs.d`, credential
//! helpers, short-name aliases; the newest snapshot's per-endpoint `NamespaceProxy`.

mod containerd;
mod registries_conf;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;

use http::{HeaderName, HeaderValue};

use crate::io::ReadError;
use crate::oci::platform::PlatformRules;
use crate::oci::reference::{DOCKER_HUB, DOCKER_HUB_API, ImageRef};

pub(crate) use containerd::ContainerdHosts;
pub(crate) use registries_conf::RegistriesConf;

/// Largest `hosts.toml` or `registries.conf` read; real ones are a few hundred bytes.
pub(crate) const MAX_FILE_BYTES: u64 = 1 << 20;
/// Most entries read from one directory (host directories under the containerd root, files
/// in one host directory); a node has a handful.
pub(crate) const MAX_DIR_ENTRIES: usize = 1024;

/// What the nodes' runtime is configured with (`--hosts-dir` or `--registries-conf`),
/// loaded once at startup; by default nothing, and every image goes to its registry.
#[derive(Debug, Default)]
pub struct NodeHosts(Config);

#[derive(Debug, Default)]
enum Config {
    #[default]
    None,
    Containerd(ContainerdHosts),
    CriO(RegistriesConf),
}

impl NodeHosts {
    /// Reads a containerd `config_path` directory.
    pub fn load_hosts_dir(dir: &std::path::Path) -> Result<Self, HostsError> {
        ContainerdHosts::load(dir).map(|h| NodeHosts(Config::Containerd(h)))
    }

    /// Reads a containers-registries.conf(5) file as CRI-O does.
    pub fn load_registries_conf(path: &std::path::Path) -> Result<Self, HostsError> {
        RegistriesConf::load(path).map(|c| NodeHosts(Config::CriO(c)))
    }

    /// Whose rules pick an index entry on these nodes: containers/image's with a
    /// registries.conf (CRI-O), containerd's otherwise.
    pub fn platform_rules(&self) -> PlatformRules {
        match self.0 {
            Config::CriO(_) => PlatformRules::ContainersImage,
            _ => PlatformRules::Containerd,
        }
    }

    /// What was loaded, for the startup log.
    pub fn describe(&self) -> String {
        match &self.0 {
            Config::None => "none: every image goes to its registry".to_owned(),
            Config::Containerd(h) => format!("containerd hosts directory {}", h.root().display()),
            Config::CriO(c) => format!("registries.conf {}", c.path().display()),
        }
    }

    /// Whether anything was loaded.
    pub fn is_configured(&self) -> bool {
        !matches!(self.0, Config::None)
    }

    /// The hosts the node's runtime tries for `image`, in its order.
    pub(crate) fn route(&self, image: &ImageRef) -> Route {
        match &self.0 {
            Config::None => Route {
                blocked: None,
                endpoints: vec![Endpoint::plain(image.api_host(), image.repository())],
                source: "default".to_owned(),
                fallback: Fallback::PerRequest,
            },
            Config::Containerd(hosts) => hosts.route(image),
            Config::CriO(conf) => conf.route(image),
        }
    }
}

/// How the runtime moves between the endpoints of a route (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// containerd: each request (resolve, each manifest or blob fetch) walks the endpoints on
    /// its own; different blobs may come from different hosts.
    PerRequest,
    /// containers/image: the first endpoint that serves the manifest serves the rest.
    PerSource,
}

/// The endpoints the runtime tries for one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    /// Set when the runtime refuses the image before any request: registries.conf
    /// `blocked = true` on every source, or a prefix rewrite that gives no valid reference.
    /// Says which file and which `[[registry]]` prefix.
    pub(crate) blocked: Option<String>,
    pub(crate) endpoints: Vec<Endpoint>,
    /// Where the route came from, for messages ("/etc/containerd/certs.d/docker.io/hosts.toml",
    /// "/etc/containers/registries.conf [[registry]] prefix \"docker.io\"", or "default").
    pub(crate) source: String,
    pub(crate) fallback: Fallback,
}

/// What a host may be asked for (containerd's `capabilities`; every CRI-O source may be
/// asked for everything its route was computed for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Capabilities {
    /// `resolve`: may turn a tag into a digest.
    pub(crate) resolve: bool,
    /// `pull`: may serve content by digest.
    pub(crate) pull: bool,
}

impl Capabilities {
    /// Whether the host may serve the image's own manifest (containerd `Resolve`: a tag
    /// goes to hosts with `pull` *and* `resolve`, `filterHosts(Pull|Resolve)` with
    /// `HostCapabilities.Has` being `c&t == t`; a digest to hosts with `pull`).
    pub(crate) fn serves_manifest(self, digest: bool) -> bool {
        self.pull && (digest || self.resolve)
    }
}

/// The hosts containerd's `dockerFetcher.Fetch` tries for child manifests and blobs: every
/// one, in order, as long as one has `pull` (it checks the filtered list for emptiness but
/// loops over `r.hosts`); none when none has.
pub(crate) fn fetch_hosts<T>(hosts: &[T], caps: impl Fn(&T) -> Capabilities) -> Vec<&T> {
    if hosts.iter().any(|h| caps(h).pull) {
        hosts.iter().collect()
    } else {
        Vec::new()
    }
}

#[cfg(test)]
impl Route {
    pub(crate) fn for_tag(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints
            .iter()
            .filter(|e| e.capabilities().serves_manifest(false))
    }

    pub(crate) fn for_digest(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints
            .iter()
            .filter(|e| e.capabilities().serves_manifest(true))
    }

    pub(crate) fn for_manifest<'a>(
        &'a self,
        image: &ImageRef,
    ) -> Box<dyn Iterator<Item = &'a Endpoint> + 'a> {
        if image.digest().is_some() {
            Box::new(self.for_digest())
        } else {
            Box::new(self.for_tag())
        }
    }

    pub(crate) fn for_fetch(&self) -> impl Iterator<Item = &Endpoint> {
        fetch_hosts(&self.endpoints, Endpoint::capabilities).into_iter()
    }
}

/// How an endpoint is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    Https,
    Http,
    /// Try https first and fall back to plain http. containerd (`NewHTTPFallback`): an `http`
    /// host with TLS settings, or a defaulted loopback registry on a port other than 443/80;
    /// it falls back only when the https attempt fails with a TLS record header "HTTP/" (the
    /// server speaks plain HTTP), a TLS handshake timeout, or a connection error on a host
    /// without a port. containers/image `insecure`: falls back after *any* failed https ping.
    HttpsThenHttp,
}

/// One host the runtime may contact for the image.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) scheme: Scheme,
    /// `host[:port]` to connect to.
    pub(crate) host: String,
    /// `/v2` normally; the `override_path` path when set; no trailing slash, `""` for the root.
    /// Request paths are joined like Go's `path.Join(prefix, repository, "manifests", ref)`.
    pub(crate) path_prefix: String,
    /// Repository to request on this endpoint: containerd keeps the image's; CRI-O rewrites
    /// the `prefix` to the `location`.
    pub(crate) repository: String,
    /// containerd capability `resolve` (may turn a tag into a digest).
    pub(crate) resolve: bool,
    /// containerd capability `pull` (may serve content by digest).
    pub(crate) pull: bool,
    pub(crate) skip_verify: bool,
    /// CA bundles to trust on top of the system roots, absolute.
    pub(crate) ca_files: Vec<PathBuf>,
    /// Client certificate and key files; no key file means the key is in the certificate file.
    pub(crate) client_certs: Vec<(PathBuf, Option<PathBuf>)>,
    /// Extra headers, validated at load and marked sensitive (they may hold tokens).
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// False for the image's own registry (or CRI-O's primary location), true for mirrors.
    pub(crate) mirror: bool,
    /// containerd sends `?ns=<image registry>` to hosts other than the image's registry.
    pub(crate) namespace_query: Option<String>,
}

impl Endpoint {
    pub(crate) fn capabilities(&self) -> Capabilities {
        Capabilities {
            resolve: self.resolve,
            pull: self.pull,
        }
    }

    /// `https://<host>/v2` with every capability: both runtimes' default.
    fn plain(host: &str, repository: &str) -> Self {
        Endpoint {
            scheme: Scheme::Https,
            host: host.to_owned(),
            path_prefix: "/v2".to_owned(),
            repository: repository.to_owned(),
            resolve: true,
            pull: true,
            skip_verify: false,
            ca_files: Vec::new(),
            client_certs: Vec::new(),
            headers: Vec::new(),
            mirror: false,
            namespace_query: None,
        }
    }
}

// By hand: header values may be tokens, so only their names are printed.
impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("scheme", &self.scheme)
            .field("host", &self.host)
            .field("path_prefix", &self.path_prefix)
            .field("repository", &self.repository)
            .field("resolve", &self.resolve)
            .field("pull", &self.pull)
            .field("skip_verify", &self.skip_verify)
            .field("ca_files", &self.ca_files)
            .field("client_certs", &self.client_certs)
            .field("headers", &RedactedHeaders(&self.headers))
            .field("mirror", &self.mirror)
            .field("namespace_query", &self.namespace_query)
            .finish()
    }
}

/// Prints `name: <redacted>` for each header.
pub(crate) struct RedactedHeaders<'a>(pub(crate) &'a [(HeaderName, HeaderValue)]);

impl fmt::Debug for RedactedHeaders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(name, _)| (name.as_str(), "<redacted>")))
            .finish()
    }
}

/// Why the node's host configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// A file could not be read or is larger than [`MAX_FILE_BYTES`] (the error names it).
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("cannot list {}: {source}", dir.display())]
    ListDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds more than {limit} entries; pullgate reads at most {limit}", dir.display())]
    TooManyEntries { dir: PathBuf, limit: usize },
    #[error("malformed TOML in {}: {source}", path.display())]
    Toml {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// The file parses but a value is refused, as the runtime would refuse it.
    #[error("{}: {table}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        /// The table or key at fault (`[host."https://mirror"]`, `[[registry]] prefix "x"`).
        table: String,
        reason: String,
    },
}

/// The reference's domain as both runtimes normalise it: `index.docker.io` is `docker.io`
/// (distribution's `splitDockerDomain`); `registry-1.docker.io` stays as written.
fn reference_domain(image: &ImageRef) -> &str {
    match image.registry() {
        "index.docker.io" => DOCKER_HUB,
        other => other,
    }
}

/// The host to connect to for a reference domain (`docker.io` is served by
/// `registry-1.docker.io`: containerd `DefaultHost`, containers/image `newDockerClient`).
fn api_host(domain: &str) -> &str {
    if domain == DOCKER_HUB {
        DOCKER_HUB_API
    } else {
        domain
    }
}
