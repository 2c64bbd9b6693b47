//! The pullgate benchmark (issue 6): the webhook against its goals and against the tools a
//! user would pick instead, in one run, on this machine, over loopback.
//!
//! 1. hot path: reviews/s at saturation and latency at a fixed 1,000 reviews/s, all cached;
//! 2. cold probe: requests and wall time of `pullgate check` beside `skopeo inspect` / `copy`;
//! 3. round trips: the same with 25 ms each way on the registry, token realm and CDN hops,
//!    over HTTP/2 and over HTTP/1.1;
//! 4. herd: 1,000 concurrent reviews of one uncached image, manifest GETs counted upstream;
//! 5. fan-out: a Pod of 20 uncached images against a Pod of one;
//! 6. memory: peak RSS during the hot path, and RSS with 100,000 cached verdicts;
//! 7. hostile load: the p99 of cached reviews and the peak RSS while each attack runs;
//! 8. pull economy: Docker Hub pulls counted while 2 replicas re-probe 20 images 100 times;
//! 9. audit: `pullgate audit` of 10,000 pods over 500 images (time, registry requests, RSS).
//!
//! Run it with `bench/run` (installs what is missing and writes `BENCHMARKS.md`) or
//! `cargo bench --bench pullgate [-- SECTION...]` with sections `hot cold rtt herd fanout
//! memory hostile pulls audit`. Under `cargo test` (which runs bench targets in test mode, without `--bench`) it
//! does nothing: it is built so it cannot rot, never run as a test.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "pullgate/audit.rs"]
mod audit;
#[path = "pullgate/cold.rs"]
mod cold;
#[path = "pullgate/herd.rs"]
mod herd;
#[path = "pullgate/hostile.rs"]
mod hostile;
#[path = "pullgate/hot.rs"]
mod hot;
#[path = "pullgate/load.rs"]
mod load;
#[path = "pullgate/pod.rs"]
mod pod;
#[path = "pullgate/procs.rs"]
mod procs;
#[path = "pullgate/pulls.rs"]
mod pulls;
#[path = "pullgate/report.rs"]
mod report;
#[path = "pullgate/rtt.rs"]
mod rtt;

use std::time::Instant;

use report::Report;
use support::{Registry, TokenServer, World};
use tempfile::TempDir;

const SECTIONS: [&str; 9] = [
    "hot", "cold", "rtt", "herd", "fanout", "memory", "hostile", "pulls", "audit",
];

/// What every section shares: the test PKI, the anonymous seed registry images are pushed
/// through, the token server, and the token-auth registry pullgate and skopeo read from.
pub struct Ctx {
    pub w: World,
    pub tokens: TokenServer,
    pub reg: Registry,
    pub dir: TempDir,
    pub report: Report,
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "pullgate benchmark: not run under `cargo test`; run `bench/run` or \
             `cargo bench --bench pullgate`"
        );
        return std::process::ExitCode::SUCCESS;
    }
    let mut selected: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if let Some(bad) = selected.iter().find(|s| !SECTIONS.contains(s)) {
        eprintln!("unknown section {bad:?}; sections: {}", SECTIONS.join(" "));
        return std::process::ExitCode::from(2);
    }
    let full = selected.is_empty();
    if full {
        selected = SECTIONS.to_vec();
    }
    // reqwest is built without a default crypto provider (as pullgate is).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(&selected, full)) {
        // Missed goals are results, not failures of the benchmark.
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pullgate benchmark failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(selected: &[&str], full: bool) -> anyhow::Result<Report> {
    let started = Instant::now();
    let bin = procs::pullgate_bin();
    anyhow::ensure!(
        bin.exists(),
        "{} does not exist (build it with `cargo build --release`)",
        bin.display()
    );
    // Read first, so the load average is the machine's before the benchmark loads it.
    let machine = report::machine(&bin);
    let w = World::new();
    let tokens = TokenServer::start(&w.pki).await;
    tokens.grant(Some((procs::USER, procs::PASSWORD)), "*", &["pull"]);
    let reg = w.registry(tokens.registry_auth());
    let mut ctx = Ctx {
        w,
        tokens,
        reg,
        dir: tempfile::tempdir()?,
        report: Report::default(),
    };
    println!("pullgate benchmark: {}", bin.display());
    let wants = |s: &str| selected.contains(&s);

    let hot = if wants("hot") || wants("memory") {
        Some(hot::hot_path(&mut ctx).await?)
    } else {
        None
    };
    if wants("cold") || wants("rtt") {
        let images = cold::push_images(&ctx).await?;
        if wants("cold") {
            cold::cold_probe(&mut ctx, &images).await?;
        }
        if wants("rtt") {
            rtt::round_trips(&mut ctx, &images).await?;
        }
    }
    if wants("herd") {
        herd::herd(&mut ctx).await?;
    }
    if wants("fanout") {
        herd::fan_out(&mut ctx).await?;
    }
    if let Some(hot) = &hot
        && wants("memory")
    {
        hot::memory(&mut ctx, hot).await?;
    }
    drop(hot);
    if wants("hostile") {
        hostile::hostile(&mut ctx).await?;
    }
    if wants("pulls") {
        pulls::pulls(&mut ctx).await?;
    }
    if wants("audit") {
        audit::audit(&mut ctx).await?;
    }
    ctx.report.print_summary();

    let took = format!("{:.0} s", started.elapsed().as_secs_f64());
    let out = std::env::var_os("PULLGATE_BENCH_REPORT")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            full.then(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md"))
        });
    if let Some(out) = out {
        let command = std::env::var("PULLGATE_BENCH_COMMAND")
            .unwrap_or_else(|_| "cargo bench --bench pullgate".to_owned());
        let markdown = ctx.report.markdown(&machine, &command, &took);
        std::fs::write(&out, markdown)?;
        println!("wrote {}", out.display());
    }
    Ok(ctx.report)
}
