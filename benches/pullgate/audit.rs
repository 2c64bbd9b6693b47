//! Item 9: the audit (issue 20). A stand-in cluster of 10,000 Pods pulling 500 distinct images
//! of the test registry, audited by `pullgate audit` (the release binary): the time for a full
//! pass, the registry requests against the minimum (one probe per distinct image: its
//! manifest, its config and its layer), and the process's peak RSS.

use std::process::Command;
use std::time::Instant;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::Ctx;
use crate::procs::pullgate_bin;
use crate::report::Status;
use crate::support::{ApiServer, ImageSpec, PolicyProxy};

const PODS: usize = 10_000;
const IMAGES: usize = 500;
/// The bound the audit test states for 10,000 pods.
const RSS_LIMIT_MIB: f64 = 256.0;

pub async fn audit(ctx: &mut Ctx) -> anyhow::Result<()> {
    println!("9. audit: {PODS} pods over {IMAGES} distinct images");
    for i in 0..IMAGES {
        ctx.w
            .push(
                &format!("audit/app{i:03}"),
                "1.0",
                ImageSpec::new().with_layers(&[512 + i]),
            )
            .await;
    }
    let front = PolicyProxy::start(&ctx.w.pki, &ctx.w.seed).await;
    let api = ApiServer::start(&ctx.w.pki).await;
    for p in 0..PODS {
        let image = format!("{}/audit/app{:03}:1.0", front.host(), p % IMAGES);
        api.put(
            "v1",
            "pods",
            &format!("team-{}", p % 20),
            &format!("pod-{p:05}"),
            json!({"spec": {"containers": [{"name": "app", "image": image}]}}),
        );
    }
    let kubeconfig = ctx.dir.path().join("audit-kubeconfig");
    let ca = base64::engine::general_purpose::STANDARD.encode(ctx.w.pki.ca_pem());
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: b\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: b\n  user:\n    token: bench\ncontexts:\n- name: b\n  context: {{cluster: b, user: b}}\ncurrent-context: b\n",
            api.base()
        ),
    )?;
    let started = Instant::now();
    let out = Command::new(pullgate_bin())
        .args(["audit", "-o", "json", "--ca-file"])
        .arg(ctx.w.pki.ca_path())
        .env("KUBECONFIG", &kubeconfig)
        .output()?;
    let took = started.elapsed();
    anyhow::ensure!(
        out.status.code() == Some(0),
        "pullgate audit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pass: Value = serde_json::from_slice(&out.stdout)?;
    anyhow::ensure!(pass["workloads"] == PODS, "audited {}", pass["workloads"]);
    let requests = front.requests().len();
    let minimum = IMAGES * 3;
    let rss = pass["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1_048_576.0;
    ctx.report.info(
        "9",
        format!("audit pass, {PODS} pods over {IMAGES} images (listing, probes, output)"),
        format!("{:.1} s", took.as_secs_f64()),
    );
    ctx.report.row(
        "9",
        "registry requests of the pass",
        format!("{requests}"),
        format!("≤ {minimum} (manifest, config, layer per image)"),
        Status::of(requests <= minimum),
    );
    ctx.report.row(
        "9",
        "peak RSS of `pullgate audit`",
        format!("{rss:.1} MiB"),
        format!("≤ {RSS_LIMIT_MIB:.0} MiB"),
        Status::of(rss > 0.0 && rss <= RSS_LIMIT_MIB),
    );
    ctx.report.note(format!(
        "9: {} list pages of 500; every Pod is a workload of its own (no controller), so {PODS} workloads are decided and {IMAGES} images probed.",
        pass["pages"]
    ));
    Ok(())
}
