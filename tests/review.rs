//! `pullgate review` as a CI pipeline runs it: the real binary, manifests on disk or stdin, and
//! a real registry behind a test CA.

mod support;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use support::*;
use tempfile::TempDir;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `pullgate review ARGS`, with `stdin` piped in when given.
fn review(args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pullgate"))
        .arg("review")
        .args(args)
        // The developer's environment must not change what the test asked for.
        .env_remove("PULLGATE_POLICY")
        .env_remove("PULLGATE_NAMESPACE")
        .env_remove("PULLGATE_DOCKER_CONFIG")
        .env_remove("PULLGATE_JSON")
        .env_remove("PULLGATE_REVIEW_FILES")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(pipe);
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A Deployment whose image exists, a CronJob whose image does not, and a Service.
fn manifests(host: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  namespace: shop
spec:
  selector: {{matchLabels: {{app: api}}}}
  template:
    metadata: {{labels: {{app: api}}}}
    spec:
      containers:
        - name: api
          image: {host}/team/app:v1
---
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: shop
spec:
  ports: [{{port: 80}}]
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          imagePullSecrets: [{{name: regcred}}]
          containers:
            - name: job
              image: {host}/team/missing:v1
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_are_decided_per_workload_and_a_denial_exits_1() {
    let world = World::new();
    world.push("team/app", "v1", ImageSpec::new()).await;
    let host = world.seed.host();
    let ca = world.pki.ca_path().to_str().unwrap().to_owned();
    let dir = TempDir::new().unwrap();
    let file = write(dir.path(), "app.yaml", &manifests(&host));

    let run = review(&["-f", &file, "--ca-file", &ca, "--namespace", "ci"], None);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], "Deployment shop/api: allow", "{}", run.stdout);
    assert!(
        lines[1].starts_with(&format!(
            "  container \"api\"  {host}/team/app:v1  pullable"
        )),
        "{}",
        run.stdout
    );
    let cronjob = lines
        .iter()
        .position(|l| *l == "CronJob ci/nightly: deny")
        .unwrap_or_else(|| panic!("no CronJob header in\n{}", run.stdout));
    assert!(
        lines[cronjob + 1].starts_with(&format!(
            "  container \"job\"  {host}/team/missing:v1  not_found"
        )),
        "{}",
        run.stdout
    );
    assert!(
        lines[cronjob + 2..]
            .iter()
            .any(|l| l.starts_with("  pullgate: 1 of 1 image cannot be pulled")),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("Service"), "{}", run.stdout);
    assert!(
        run.stderr
            .contains(&format!("{file} document 2: skipped Service api")),
        "{}",
        run.stderr
    );
    // The CronJob names a pull secret, which cannot be read offline: said once.
    assert_eq!(
        run.stderr
            .matches("imagePullSecrets cannot be read")
            .count(),
        1,
        "{}",
        run.stderr
    );
    // Logs on a pipe carry no colour codes.
    assert!(!run.stderr.contains('\u{1b}'), "{}", run.stderr);

    // The same manifests on stdin, only the allowed Deployment: exit 0.
    let deployment = manifests(&host).split("---").next().unwrap().to_owned();
    let run = review(&["-f", "-", "--ca-file", &ca], Some(&deployment));
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.starts_with("Deployment shop/api: allow\n"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_has_every_field() {
    let world = World::new();
    world.push("team/app", "v1", ImageSpec::new()).await;
    let host = world.seed.host();
    let ca = world.pki.ca_path().to_str().unwrap().to_owned();
    let dir = TempDir::new().unwrap();
    let file = write(dir.path(), "app.yaml", &manifests(&host));

    let run = review(&["--json", "-f", &file, "--ca-file", &ca], None);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let results: Value = serde_json::from_str(&run.stdout).unwrap();
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 2, "{results:#?}");

    let deployment = &results[0];
    assert_eq!(deployment["file"], file.as_str());
    assert_eq!(deployment["document"], 1);
    assert_eq!(deployment["kind"], "Deployment");
    assert_eq!(deployment["namespace"], "shop");
    assert_eq!(deployment["name"], "api");
    assert_eq!(deployment["decision"], "allow");
    assert_eq!(deployment["allowed"], true);
    assert_eq!(deployment["message"], Value::Null);
    assert_eq!(deployment["warnings"], serde_json::json!([]));
    let finding = &deployment["findings"][0];
    assert_eq!(finding["image"], format!("{host}/team/app:v1"));
    assert_eq!(finding["reference"], format!("{host}/team/app:v1"));
    assert_eq!(finding["container"], "api");
    assert_eq!(finding["location"], "container");
    assert_eq!(finding["verdict"], "pullable");
    for field in ["reason", "failed_blob", "registry_message"] {
        assert!(finding.get(field).is_some(), "{field} missing in {finding}");
    }

    let cronjob = &results[1];
    assert_eq!(cronjob["document"], 3);
    assert_eq!(cronjob["kind"], "CronJob");
    assert_eq!(cronjob["namespace"], "default");
    assert_eq!(cronjob["decision"], "deny");
    assert_eq!(cronjob["allowed"], false);
    assert!(
        cronjob["message"]
            .as_str()
            .unwrap()
            .contains(&format!("{host}/team/missing:v1")),
        "{cronjob}"
    );
    let finding = &cronjob["findings"][0];
    assert_eq!(finding["verdict"], "not_found");
    assert!(!finding["reason"].as_str().unwrap().is_empty(), "{finding}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_review_is_decided_as_the_webhook_decides_it() {
    let world = World::new();
    world.push("team/api", "3.2.1", ImageSpec::new()).await;
    let host = world.seed.host();
    let ca = world.pki.ca_path().to_str().unwrap().to_owned();
    let dir = TempDir::new().unwrap();
    let fixture = include_str!("fixtures/admission/deployment.json");
    let file = write(
        dir.path(),
        "review.json",
        &fixture.replace("registry.example.com", &host),
    );

    let run = review(&["-f", &file, "--ca-file", &ca], None);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.starts_with("Deployment shop/api: allow\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains(&format!("\"api\"  {host}/team/api:3.2.1  pullable")),
        "{}",
        run.stdout
    );

    // The same review for an image that is not there is refused.
    let missing = write(
        dir.path(),
        "missing.json",
        &fixture.replace(
            "registry.example.com/team/api",
            &format!("{host}/team/gone"),
        ),
    );
    let run = review(&["--json", "-f", &missing, "--ca-file", &ca], None);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let results: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(results[0]["decision"], "deny");
    assert_eq!(results[0]["findings"][0]["verdict"], "not_found");
}

#[test]
fn an_unparseable_file_exits_2_naming_the_file_and_the_document() {
    let dir = TempDir::new().unwrap();
    let good = write(
        dir.path(),
        "good.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
    );
    let bad = write(
        dir.path(),
        "broken.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nspec: {containers: [\n",
    );
    let run = review(&["-f", &good, "-f", &bad], None);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr.contains(&format!("{bad}: document 2:")),
        "{}",
        run.stderr
    );

    // Usage and configuration errors are exit 2 as well.
    assert_eq!(review(&[], None).code, 2);
    let run = review(&["-f", "/nonexistent/app.yaml"], None);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("/nonexistent/app.yaml"),
        "{}",
        run.stderr
    );
    let run = review(&["-f", &good, "--policy", &good], None);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("invalid policy"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warn_policy_admits_with_the_warning_printed() {
    let world = World::new();
    let host = world.seed.host();
    let ca = world.pki.ca_path().to_str().unwrap().to_owned();
    let dir = TempDir::new().unwrap();
    let policy = write(dir.path(), "policy.yaml", "mode: warn\n");
    let pod = write(
        dir.path(),
        "pod.json",
        &serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"containers": [{"name": "web", "image": format!("{host}/team/missing:v1")}]}
        })
        .to_string(),
    );

    let run = review(&["-f", &pod, "--ca-file", &ca, "--policy", &policy], None);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], "Pod shop/web: warn", "{}", run.stdout);
    assert!(lines[1].contains("not_found"), "{}", run.stdout);
    assert!(
        lines[2].starts_with("  warning: pullgate: container \"web\""),
        "{}",
        run.stdout
    );
}

/// A Pod whose image is not a reference: denied without any registry request.
const BAD_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: bad, namespace: shop}\nspec: {containers: [{name: app, image: \"Not/A:Ref:\"}]}\n";
const CONFIG_MAP: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n";

/// `-f DIR` reads the directory's manifests recursively, as kubectl users expect; input with
/// no workload is an error unless `--allow-empty`, so a broken generator fails the pipeline.
#[test]
fn a_directory_is_read_recursively_and_an_empty_input_is_an_error() {
    let dir = TempDir::new().unwrap();
    std::fs::create_dir_all(dir.path().join("apps/nested")).unwrap();
    write(dir.path(), "apps/nested/pod.yml", BAD_POD);
    write(
        dir.path(),
        "apps/config.json",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"j"}}"#,
    );
    write(dir.path(), "apps/README.md", "not: a manifest\n");
    let root = dir.path().to_str().unwrap();
    let run = review(&["-f", root], None);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("Pod shop/bad"), "{}", run.stdout);
    assert!(
        run.stderr.contains("config.json"),
        "the ConfigMap is reported skipped: {}",
        run.stderr
    );

    let empty = TempDir::new().unwrap();
    let only_config = write(empty.path(), "cm.yaml", CONFIG_MAP);
    for (args, stdin) in [
        (vec!["-f", only_config.as_str()], None),
        (vec!["-f", empty.path().to_str().unwrap()], None),
        (vec!["-f", "-"], Some("")),
    ] {
        let run = review(&args, stdin);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("no workloads to review"),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains("--allow-empty"), "{}", run.stderr);
        let mut allowed = args.clone();
        allowed.push("--allow-empty");
        let run = review(&allowed, stdin);
        assert_eq!(run.code, 0, "{allowed:?}: {}", run.stderr);
    }
}

/// `pullgate review … 2>&1 | true`: the reader is gone before anything is written. The run
/// ends quietly with a SIGPIPE's status, as Unix tools do, never with a panic.
#[test]
fn a_closed_output_ends_quietly() {
    let dir = TempDir::new().unwrap();
    let file = write(dir.path(), "pod.yaml", BAD_POD);
    for closed_stderr in [false, true] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let stderr = if closed_stderr {
            Stdio::from(writer.try_clone().unwrap())
        } else {
            Stdio::piped()
        };
        let out = Command::new(env!("CARGO_BIN_EXE_pullgate"))
            .args(["review", "-f", &file])
            .stdout(Stdio::from(writer))
            .stderr(stderr)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(141),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
}
