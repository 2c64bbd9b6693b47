//! containerd's `config_path` (`ctr --hosts-dir`): one directory per registry host, each with
//! a `hosts.toml`, read the way `core/remotes/docker/config/hosts.go` reads it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::{
    Endpoint, Fallback, HostsError, MAX_DIR_ENTRIES, MAX_FILE_BYTES, RedactedHeaders, Route,
    Scheme, reference_domain,
};
use crate::io::{ReadError, read_file};
use crate::oci::reference::{DOCKER_HUB, DOCKER_HUB_API, ImageRef};

/// A containerd hosts directory, read into memory.
#[derive(Debug)]
pub(crate) struct ContainerdHosts {
    root: PathBuf,
    /// Host directory name as on disk (`docker.io`, `myreg_5000_`, `_default`) → its hosts.
    dirs: BTreeMap<String, HostDir>,
}

#[derive(Debug)]
struct HostDir {
    /// The `hosts.toml` path, or the directory when its certificate files were used.
    source: String,
    /// Never empty: `[host."…"]` entries in file order, then the server (containerd's
    /// `parseHostsFile` always appends it). An empty `host` is the image's own registry,
    /// filled in per image.
    hosts: Vec<HostConfig>,
}

/// containerd's `hostConfig`.
#[derive(Clone, Debug, Default)]
struct HostConfig {
    scheme: String,
    host: String,
    path: String,
    pull: bool,
    resolve: bool,
    /// `Some` when the file set `ca` (even to an empty list): that alone makes containerd
    /// build a TLS config for the host, which matters for `http` hosts.
    ca: Option<Vec<PathBuf>>,
    client: Option<Vec<(PathBuf, Option<PathBuf>)>>,
    skip_verify: Option<bool>,
    headers: Headers,
}

#[derive(Clone, Default)]
struct Headers(Vec<(HeaderName, HeaderValue)>);

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        RedactedHeaders(&self.0).fmt(f)
    }
}

/// containerd's `hostFileConfig`: the keys of the top level and of each `[host."…"]`. Keys it
/// does not know (`proxy`, `dial_timeout`, `dial_addr`, future ones) are ignored, as go-toml's
/// `Unmarshal` ignores them.
#[derive(Deserialize, Default)]
#[serde(default)]
struct HostFileConfig {
    capabilities: Vec<String>,
    ca: Option<toml::Value>,
    client: Option<toml::Value>,
    skip_verify: Option<bool>,
    header: Option<toml::Table>,
    override_path: bool,
}

impl ContainerdHosts {
    /// Reads every host directory under `root` (at most [`MAX_DIR_ENTRIES`] entries).
    pub(crate) fn load(root: &Path) -> Result<Self, HostsError> {
        let root = std::path::absolute(root).map_err(|source| HostsError::ListDir {
            dir: root.to_owned(),
            source,
        })?;
        let mut dirs = BTreeMap::new();
        for (name, path) in list_dir(&root)? {
            // containerd finds a host directory with os.Stat, which follows symlinks.
            if path.is_dir() {
                dirs.insert(name, load_host_dir(&path)?);
            }
        }
        Ok(ContainerdHosts { root, dirs })
    }

    /// containerd's `ConfigureHosts` for the image's registry.
    pub(crate) fn route(&self, image: &ImageRef) -> Route {
        let refhost = reference_domain(image);
        let found = host_paths(refhost)
            .into_iter()
            .find_map(|name| self.dirs.get(&name));
        let (mut hosts, source) = match found {
            Some(dir) => (dir.hosts.clone(), dir.source.clone()),
            None => (vec![HostConfig::default()], "default".to_owned()),
        };
        if let Some(last) = hosts.last_mut()
            && last.host.is_empty()
        {
            fill_default(last, refhost);
        }
        Route {
            blocked: None,
            endpoints: hosts
                .into_iter()
                .map(|host| endpoint(host, refhost, image.repository()))
                .collect(),
            source,
            fallback: Fallback::PerRequest,
        }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }
}

/// The server containerd uses when the file names none (or there is no file): the image's
/// registry, `registry-1.docker.io` for `docker.io`, with every capability and `/v2`. A
/// loopback registry gets https with verification off, and plain http (tried after https, see
/// [`endpoint`]) unless on port 443 or none; on port 80 plain http only.
fn fill_default(host: &mut HostConfig, refhost: &str) {
    if refhost == DOCKER_HUB {
        host.scheme = "https".to_owned();
        host.host = DOCKER_HUB_API.to_owned();
    } else if is_localhost(refhost) {
        host.host = refhost.to_owned();
        let port = split_host_port(refhost).map_or("", |(_, port)| port);
        host.scheme = if port.is_empty() || port == "443" {
            "https"
        } else {
            "http"
        }
        .to_owned();
        if port != "80" {
            host.skip_verify = Some(true);
        }
    } else {
        host.host = refhost.to_owned();
        host.scheme = "https".to_owned();
    }
    host.path = "/v2".to_owned();
    host.pull = true;
    host.resolve = true;
}

fn endpoint(host: HostConfig, refhost: &str, repository: &str) -> Endpoint {
    // ConfigureHosts: an http host with any TLS setting is tried over https first, through
    // NewHTTPFallback, unless its port says plain http (80).
    let explicit_tls = host.ca.is_some() || host.client.is_some() || host.skip_verify.is_some();
    let port = split_host_port(&host.host).map_or("", |(_, port)| port);
    let scheme = match host.scheme.as_str() {
        "http" if explicit_tls && port != "80" => Scheme::HttpsThenHttp,
        "http" => Scheme::Http,
        _ => Scheme::Https,
    };
    let namespace_query = is_proxy(&host.host, refhost).then(|| refhost.to_owned());
    Endpoint {
        scheme,
        mirror: namespace_query.is_some(),
        namespace_query,
        path_prefix: join_prefix(&host.path),
        host: host.host,
        repository: repository.to_owned(),
        resolve: host.resolve,
        pull: host.pull,
        skip_verify: host.skip_verify.unwrap_or(false),
        ca_files: host.ca.unwrap_or_default(),
        client_certs: host.client.unwrap_or_default(),
        headers: host.headers.0,
    }
}

/// `RegistryHost.isProxy`: any host but the image's registry (docker.io's API host counts as
/// docker.io) gets `?ns=`.
fn is_proxy(host: &str, refhost: &str) -> bool {
    refhost != host && !(refhost == DOCKER_HUB && host == DOCKER_HUB_API)
}

/// `hostPaths` (unix): `host_port_` when there is a port, then `host:port`, then `_default`.
fn host_paths(host: &str) -> Vec<String> {
    let mut paths = Vec::with_capacity(3);
    let converted = host_directory(host);
    if converted != host {
        paths.push(converted);
    }
    paths.push(host.to_owned());
    paths.push("_default".to_owned());
    paths
}

/// `hostDirectory`: the last `:port` becomes `_port_`.
fn host_directory(host: &str) -> String {
    match host.rfind(':') {
        Some(idx) if idx > 0 => format!("{}_{}_", &host[..idx], &host[idx + 1..]),
        _ => host.to_owned(),
    }
}

/// `docker.IsLocalhost`: `localhost` or a loopback address, port aside.
fn is_localhost(host: &str) -> bool {
    let name = split_host_port(host).map_or(host, |(name, _)| name);
    name == "localhost"
        || name
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Go's `net.SplitHostPort`, as far as containerd relies on it: `None` when there is no port
/// or the address is ambiguous (more than one colon outside brackets).
fn split_host_port(hostport: &str) -> Option<(&str, &str)> {
    if let Some(rest) = hostport.strip_prefix('[') {
        let (name, after) = rest.split_once(']')?;
        return after.strip_prefix(':').map(|port| (name, port));
    }
    let (name, port) = hostport.rsplit_once(':')?;
    (!name.contains(':')).then_some((name, port))
}

/// `loadHostDir`: `hosts.toml` when present and not empty, else the Docker certificate files.
fn load_host_dir(dir: &Path) -> Result<HostDir, HostsError> {
    let file = dir.join("hosts.toml");
    match read_file(&file, MAX_FILE_BYTES, "containerd hosts file") {
        Ok(bytes) if !bytes.is_empty() => Ok(HostDir {
            source: file.display().to_string(),
            hosts: parse_hosts_file(&file, dir, &bytes)?,
        }),
        Ok(_) => load_cert_files(dir),
        Err(ReadError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            load_cert_files(dir)
        }
        Err(err) => Err(err.into()),
    }
}

/// `loadCertFiles`: `*.crt` are CAs, `*.cert` client certificates with the `.key` beside
/// them when it exists; all for the image's own registry.
fn load_cert_files(dir: &Path) -> Result<HostDir, HostsError> {
    let mut server = HostConfig::default();
    for (name, path) in list_dir(dir)? {
        if path.is_dir() {
            continue;
        }
        if name.ends_with(".crt") {
            server.ca.get_or_insert_with(Vec::new).push(path.clone());
        }
        if let Some(stem) = name.strip_suffix(".cert") {
            let key = dir.join(format!("{stem}.key"));
            let key = key.exists().then_some(key);
            server.client.get_or_insert_with(Vec::new).push((path, key));
        }
    }
    Ok(HostDir {
        source: format!("{} (certificate files)", dir.display()),
        hosts: vec![server],
    })
}

/// The directory's entries with UTF-8 names, sorted like Go's `os.ReadDir`, at most
/// [`MAX_DIR_ENTRIES`].
fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, HostsError> {
    let list_err = |source| HostsError::ListDir {
        dir: dir.to_owned(),
        source,
    };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        if entries.len() == MAX_DIR_ENTRIES {
            return Err(HostsError::TooManyEntries {
                dir: dir.to_owned(),
                limit: MAX_DIR_ENTRIES,
            });
        }
        // A name that is not UTF-8 cannot be a registry host.
        if let Ok(name) = entry.file_name().into_string() {
            entries.push((name, entry.path()));
        }
    }
    entries.sort();
    Ok(entries)
}

/// `parseHostsFile`: the `[host."…"]` tables in file order, then the top level as the server.
fn parse_hosts_file(file: &Path, dir: &Path, bytes: &[u8]) -> Result<Vec<HostConfig>, HostsError> {
    let toml_err = |source| HostsError::Toml {
        path: file.to_owned(),
        source,
    };
    let invalid = |table: &str, reason: String| HostsError::Invalid {
        path: file.to_owned(),
        table: table.to_owned(),
        reason,
    };
    let mut top: toml::Table = toml::from_slice(bytes).map_err(toml_err)?;
    let server = match top.remove("server") {
        None => String::new(),
        Some(toml::Value::String(server)) => server,
        Some(other) => {
            return Err(invalid(
                "server",
                format!("a {} where a string belongs", other.type_str()),
            ));
        }
    };
    // With toml's `preserve_order`, the table keeps the order the hosts were written in,
    // as containerd's getSortedHosts reads it from the table headers.
    let host_tables = match top.remove("host") {
        None => toml::Table::new(),
        Some(toml::Value::Table(hosts)) => hosts,
        Some(_) => return Err(invalid("host", "not a table".to_owned())),
    };
    let mut hosts = Vec::with_capacity(host_tables.len() + 1);
    for (url, config) in host_tables {
        let table = format!("[host.{url:?}]");
        let config: HostFileConfig = config.try_into().map_err(toml_err)?;
        hosts.push(parse_host_config(&url, dir, config).map_err(|r| invalid(&table, r))?);
    }
    let config: HostFileConfig = toml::Value::Table(top).try_into().map_err(toml_err)?;
    hosts.push(parse_host_config(&server, dir, config).map_err(|r| invalid("top level", r))?);
    Ok(hosts)
}

/// `parseHostConfig`. An empty `server` leaves the host to be filled in per image.
fn parse_host_config(
    server: &str,
    dir: &Path,
    config: HostFileConfig,
) -> Result<HostConfig, String> {
    let mut result = HostConfig::default();
    if !server.is_empty() {
        // No scheme means https (containerd checks only for a leading "http").
        let url = if server.starts_with("http") {
            server.to_owned()
        } else {
            format!("https://{server}")
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("unable to parse server {url:?}"))?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("unsupported scheme {scheme:?} in {url:?}"));
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.is_empty() {
            return Err(format!("no host in {url:?}"));
        }
        let path = &tail[..tail.find(['?', '#']).unwrap_or(tail.len())];
        // A path is cleaned and gets /v2 appended unless it ends in /v2 or override_path.
        let mut path = if path.is_empty() {
            String::new()
        } else {
            clean(path)
        };
        if !config.override_path && !path.ends_with("/v2") {
            path.push_str("/v2");
        }
        result.scheme = scheme.to_owned();
        result.host = authority.to_owned();
        result.path = path;
    }
    result.skip_verify = config.skip_verify;
    if config.capabilities.is_empty() {
        (result.pull, result.resolve) = (true, true);
    }
    for capability in &config.capabilities {
        match capability.to_ascii_lowercase().as_str() {
            "pull" => result.pull = true,
            "resolve" => result.resolve = true,
            "push" => {}
            _ => return Err(format!("unknown capability {capability:?}")),
        }
    }
    if let Some(ca) = config.ca {
        result.ca = Some(match ca {
            toml::Value::String(path) => vec![make_abs(&path, dir)],
            toml::Value::Array(paths) => strings(&paths, "ca")?
                .iter()
                .map(|p| make_abs(p, dir))
                .collect(),
            other => return Err(format!("invalid type {} for \"ca\"", other.type_str())),
        });
    }
    if let Some(client) = config.client {
        result.client = Some(parse_client(client, dir)?);
    }
    if let Some(header) = config.header {
        result.headers = parse_headers(header)?;
    }
    Ok(result)
}

/// `client`: a path, a list of paths (key in the same file), or a list of [cert, key] pairs.
/// As in containerd an empty key path is made absolute too, which gives the host directory
/// itself (`filepath.Join(dir, "")`); containerd then fails to read it as a key.
fn parse_client(
    client: toml::Value,
    dir: &Path,
) -> Result<Vec<(PathBuf, Option<PathBuf>)>, String> {
    let pairs = match client {
        toml::Value::String(path) => return Ok(vec![(make_abs(&path, dir), None)]),
        toml::Value::Array(items) => items,
        other => return Err(format!("invalid type {} for \"client\"", other.type_str())),
    };
    pairs
        .iter()
        .map(|item| match item {
            toml::Value::String(path) => Ok((make_abs(path, dir), None)),
            toml::Value::Array(pair) => match strings(pair, "client")?.as_slice() {
                [cert, key] => Ok((make_abs(cert, dir), Some(make_abs(key, dir)))),
                _ => Err("a client pair must hold two paths".to_owned()),
            },
            other => Err(format!("invalid type {} for \"client\"", other.type_str())),
        })
        .collect()
}

/// `header`: each key a string or a list of strings; checked as HTTP here rather than when
/// the request fails.
fn parse_headers(header: toml::Table) -> Result<Headers, String> {
    let mut headers = Vec::new();
    for (key, value) in header {
        let name = HeaderName::from_bytes(key.as_bytes())
            .map_err(|_| format!("invalid header name {key:?}"))?;
        let values = match value {
            toml::Value::String(value) => vec![value],
            toml::Value::Array(values) => strings(&values, "header")?,
            other => {
                return Err(format!(
                    "invalid type {} for header {key:?}",
                    other.type_str()
                ));
            }
        };
        for value in values {
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| format!("invalid value for header {key:?}"))?;
            // Configured headers are often tokens: keep them out of HPACK tables.
            value.set_sensitive(true);
            headers.push((name.clone(), value));
        }
    }
    Ok(Headers(headers))
}

fn strings(values: &[toml::Value], key: &str) -> Result<Vec<String>, String> {
    values
        .iter()
        .map(|value| match value {
            toml::Value::String(s) => Ok(s.clone()),
            other => Err(format!(
                "a {} in {key:?} where a string belongs",
                other.type_str()
            )),
        })
        .collect()
}

/// `makeAbsPath`: absolute paths as they are, others joined to the host directory and
/// cleaned like `filepath.Join`.
fn make_abs(path: &str, dir: &Path) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        return path.to_owned();
    }
    let mut joined = PathBuf::new();
    for component in dir.join(path).components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                joined.pop();
            }
            other => joined.push(other),
        }
    }
    joined
}

/// Go's `path.Clean` for an absolute URL path.
fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The prefix as the request sees it after `path.Join("/", prefix, repository, …)`: cleaned,
/// `""` for the root.
fn join_prefix(path: &str) -> String {
    match clean(path).as_str() {
        "/" => String::new(),
        cleaned => cleaned.to_owned(),
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn host_directories_follow_host_paths() {
        assert_eq!(host_paths("docker.io"), ["docker.io", "_default"]);
        assert_eq!(
            host_paths("myreg:5000"),
            ["myreg_5000_", "myreg:5000", "_default"]
        );
    }

    #[test]
    fn localhost_and_loopback_addresses_are_local() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:80",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_localhost(host), "{host}");
        }
        for host in ["localhost.example", "10.0.0.1:5000", "[::1]"] {
            assert!(!is_localhost(host), "{host}");
        }
    }

    #[test]
    fn paths_are_cleaned_like_go() {
        assert_eq!(clean("/a//b/./c/../v2/"), "/a/b/v2");
        assert_eq!(join_prefix("//v2"), "/v2");
        assert_eq!(join_prefix(""), "");
        assert_eq!(
            make_abs("../x/ca.crt", Path::new("/etc/certs.d/h")),
            Path::new("/etc/certs.d/x/ca.crt")
        );
    }
}
