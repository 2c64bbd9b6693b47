//! pullgate's reading of containerd, checked against Debian's real containerd: for each case,
//! `ctr images pull --hosts-dir DIR [--platform P]` on a containerd of the test's own (its own
//! root, state and socket) and pullgate's probe with the same hosts directory must agree on
//! whether the image pulls, and, where the pull took an index entry, on which.
//!
//! containerd needs root. `tests/run` installs containerd and runs these (they are ignored
//! otherwise) when it is root or has password-less sudo, and says so when it cannot.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pullgate::{
    oci::platform::Platform,
    oci::reference::ImageRef,
    probe::{self, ProbeOptions, Report, Verdict},
    registry::{NodeHosts, RegistryClient},
};
use support::*;
use tempfile::TempDir;

/// A containerd daemon of the test's own.
struct Containerd {
    child: Child,
    socket: PathBuf,
    _dir: TempDir,
}

/// `sudo -n` in front of a command unless the test runs as root.
fn privileged(program: &str) -> Command {
    if nix_is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg("-n").arg(program);
        c
    }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Containerd {
    fn start() -> Containerd {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{socket}\"\n",
                root = dir.path().join("root").display(),
                state = dir.path().join("state").display(),
                socket = socket.display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = privileged("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd starts (it needs root: run through tests/run)");
        let deadline = Instant::now() + Duration::from_secs(20);
        let ctd = Containerd {
            child,
            socket,
            _dir: dir,
        };
        while !ctd.ctr(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "containerd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        ctd
    }

    fn ctr(&self, args: &[&str]) -> Output {
        privileged("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// `ctr content fetch` (a pull without unpacking: the test layers are not tarballs):
    /// whether it got everything, with what it said.
    fn pull(&self, hosts: &Path, platform: Option<&str>, reference: &str) -> (bool, String) {
        let (fetched, said, _) = self.fetch(&["content", "fetch"], hosts, platform, reference);
        (fetched, said)
    }

    /// Runs `command` (`content fetch`, or `images pull`, which matches `--platform` with
    /// `platforms.Only` as the CRI does, where `content fetch` matches it strictly), with the
    /// digests it fetched.
    fn fetch(
        &self,
        command: &[&str],
        hosts: &Path,
        platform: Option<&str>,
        reference: &str,
    ) -> (bool, String, Vec<String>) {
        let hosts = hosts.display().to_string();
        let mut args = command.to_vec();
        args.extend(["--hosts-dir", hosts.as_str()]);
        if let Some(p) = platform {
            args.extend(["--platform", p]);
        }
        args.push(reference);
        let out = self.ctr(&args);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Each case starts from an empty content store.
        let fetched = self.content();
        self.ctr(&["images", "rm", "--sync", reference]);
        for digest in &fetched {
            self.ctr(&["content", "rm", digest]);
        }
        (out.status.success(), said, fetched)
    }

    /// Digests in the content store.
    fn content(&self) -> Vec<String> {
        let out = self.ctr(&["content", "ls", "-q"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if nix_is_root() {
            let _ = self.child.kill();
        } else {
            let _ = Command::new("sudo")
                .args(["-n", "kill", &self.child.id().to_string()])
                .status();
        }
        let _ = self.child.wait();
    }
}

/// A hosts directory: each registry host with the test CA (containerd must trust it too) and
/// the given extra lines.
fn hosts_dir(pki: &Pki, files: &[(&str, String)]) -> TempDir {
    let root = tempfile::tempdir().unwrap();
    for (host, body) in files {
        let dir = root.path().join(host);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("hosts.toml"),
            body.replace("{ca}", &pki.ca_path().display().to_string()),
        )
        .unwrap();
    }
    root
}

async fn pullgate(
    client: &RegistryClient,
    hosts: &Path,
    platform: &str,
    reference: &str,
) -> Report {
    let options = ProbeOptions {
        platforms: vec![Platform::parse(platform).unwrap()],
        hosts: Arc::new(NodeHosts::load_hosts_dir(hosts).unwrap()),
        timeout: Duration::from_secs(10),
        ..ProbeOptions::default()
    };
    probe::probe(client, &ImageRef::parse(reference).unwrap(), &[], &options).await
}

fn dead_host() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("127.0.0.1:{port}")
}

/// Both must agree; returns containerd's content store digests after its pull.
async fn agree(
    ctd: &Containerd,
    client: &RegistryClient,
    hosts: &Path,
    platform: &str,
    reference: &str,
    expect_pull: bool,
) -> Report {
    let report = pullgate(client, hosts, platform, reference).await;
    let (pulled, said) = ctd.pull(hosts, Some(platform), reference);
    assert_eq!(
        pulled, expect_pull,
        "ctr images pull --platform {platform} {reference}: {said}"
    );
    assert_eq!(
        report.verdict == Verdict::Pullable,
        pulled,
        "pullgate disagrees with containerd on {reference} for {platform}: {report:#?}\nctr said: {said}"
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd; tests/run runs it where it can"]
async fn pullgate_agrees_with_containerd_on_mirrors_and_fallback() {
    let ctd = Containerd::start();
    let w = World::new();
    let client = w.client();
    let registry = w.seed.host();
    let img = w
        .push("team/app", "v1", ImageSpec::new().with_layers(&[100, 200]))
        .await;

    // A mirror that refuses one layer; the registry behind it serves everything.
    let policy = PolicyProxy::start(&w.pki, &w.seed).await;
    policy.rule(Rule::new(
        None,
        &img.layer_digests[1],
        Action::json(
            403,
            r#"{"errors":[{"code":"DENIED","message":"blocked by policy"}]}"#,
        ),
    ));
    let dir = hosts_dir(
        &w.pki,
        &[(
            registry.as_str(),
            format!(
                "server = \"https://{registry}\"\nca = \"{{ca}}\"\n\n[host.\"https://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{{ca}}\"\n",
                policy.host()
            ),
        )],
    );
    let reference = format!("{registry}/team/app:v1");
    agree(&ctd, &client, dir.path(), "linux/amd64", &reference, true).await;

    // A mirror that is down, before the registry.
    let down = dead_host();
    let dir = hosts_dir(
        &w.pki,
        &[(
            registry.as_str(),
            format!(
                "server = \"https://{registry}\"\nca = \"{{ca}}\"\n\n[host.\"https://{down}\"]\n  ca = \"{{ca}}\"\n"
            ),
        )],
    );
    agree(&ctd, &client, dir.path(), "linux/amd64", &reference, true).await;

    // A mirror without `resolve` in front of a registry that is down: digests, not tags.
    let cache = tempfile::tempdir().unwrap();
    let mirror = Registry::start_mirror_of(&w.pki, cache.path(), &w.seed.base()).unwrap();
    let upstream = dead_host();
    let dir = hosts_dir(
        &w.pki,
        &[(
            upstream.as_str(),
            format!(
                "server = \"https://{upstream}\"\nca = \"{{ca}}\"\n\n[host.\"https://{}\"]\n  capabilities = [\"pull\"]\n  ca = \"{{ca}}\"\n",
                mirror.host()
            ),
        )],
    );
    agree(
        &ctd,
        &client,
        dir.path(),
        "linux/amd64",
        &format!("{upstream}/team/app:v1"),
        false,
    )
    .await;
    agree(
        &ctd,
        &client,
        dir.path(),
        "linux/amd64",
        &format!("{upstream}/team/app@{}", img.manifest_digest),
        true,
    )
    .await;

    // A plain-HTTP registry declared as an http host.
    let storage = tempfile::tempdir().unwrap();
    let plain = Registry::start_plain_http(storage.path()).unwrap();
    push_image(
        &plain.base(),
        &w.push,
        "team/plain",
        Some("1"),
        &ImageSpec::new().with_layers(&[100]),
    )
    .await
    .unwrap();
    let host = plain.host();
    let dir = hosts_dir(
        &w.pki,
        &[(
            host.as_str(),
            format!("server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n"),
        )],
    );
    agree(
        &ctd,
        &client,
        dir.path(),
        "linux/amd64",
        &format!("{host}/team/plain:1"),
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd; tests/run runs it where it can"]
async fn pullgate_agrees_with_containerd_on_platforms() {
    let ctd = Containerd::start();
    let w = World::new();
    let client = w.client();
    let registry = w.seed.host();
    let dir = hosts_dir(
        &w.pki,
        &[(
            registry.as_str(),
            format!(
                "server = \"https://{registry}\"\nca = \"{{ca}}\"\n\n[host.\"https://{registry}\"]\n  ca = \"{{ca}}\"\n"
            ),
        )],
    );
    let arm = |v: &str| PlatformSpec::new("linux", "arm", Some(v));
    let mut children = Vec::new();
    for p in [
        arm("v5"),
        arm("v6"),
        PlatformSpec::new("linux", "386", None),
    ] {
        let spec = ImageSpec::new()
            .with_layers(&[64])
            .with_platform_spec(p.clone());
        children.push((
            p,
            push_image(&w.seed.base(), &w.push, "team/multi", None, &spec)
                .await
                .unwrap(),
        ));
    }
    let refs: Vec<(PlatformSpec, &PushedImage)> =
        children.iter().map(|(p, i)| (p.clone(), i)).collect();
    push_index(
        &w.seed.base(),
        &w.push,
        "team/multi",
        Some("v1"),
        &refs,
        true,
        false,
    )
    .await
    .unwrap();
    let reference = format!("{registry}/team/multi:v1");

    // Which child each runtime takes: after `ctr images pull --platform P`, the child
    // manifest containerd fetched, or the one its unpack asked for (the unpack fails either
    // way: the test layers are not tarballs).
    let child = |digest: &str| {
        children
            .iter()
            .position(|(_, i)| i.manifest_digest == digest)
    };
    for (platform, takes) in [
        ("linux/arm/v7", Some(1)),
        ("linux/arm/v6", Some(1)),
        ("linux/arm/v5", Some(0)),
        ("linux/amd64", Some(2)),
        ("linux/arm64", Some(1)),
        ("linux/s390x", None),
        ("linux/arm/v4", None),
    ] {
        let report = pullgate(&client, dir.path(), platform, &reference).await;
        let (_, said, fetched) =
            ctd.fetch(&["images", "pull"], dir.path(), Some(platform), &reference);
        // ctr 1.6 fetches with a strict matcher, then unpacks with `platforms.Only` (the
        // CRI's): where they differ, the unpack names the child it chose and did not find.
        let named = said
            .split("content digest ")
            .nth(1)
            .and_then(|rest| rest.split(':').take(2).collect::<Vec<_>>().join(":").into());
        let by_containerd: Vec<usize> = fetched
            .iter()
            .chain(named.iter())
            .filter_map(|d| child(d))
            .collect();
        let by_pullgate = report.platforms[0]
            .digest
            .as_ref()
            .and_then(|d| child(&d.to_string()));
        eprintln!(
            "{platform}: containerd took {by_containerd:?}, pullgate {by_pullgate:?} ({})",
            report.reason
        );
        assert_eq!(
            by_containerd,
            Vec::from_iter(takes),
            "containerd on {platform}: {said}"
        );
        assert_eq!(by_pullgate, takes, "pullgate on {platform}: {report:#?}");
        assert_eq!(report.verdict == Verdict::Pullable, takes.is_some());
    }
}
